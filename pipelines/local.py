"""Run the training pipeline with ``kfp.local`` (this virtualenv, no cluster).

    from kfp import local
    from pipelines.local import scheduled_at
    from pipelines.training_pipeline import training_pipeline

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root="out/kfp")
    with scheduled_at("2026-11-01T01:00:00Z"):
        training_pipeline(interval_start="2026-11-01T00", interval_end="2026-11-01T01", ...)

kfp.local 2.17 leaves two things to the caller that the KFP backend does itself:

- the scheduled time: kfp.local cannot resolve ``dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER``
  (it fails with an IndexError); :func:`scheduled_at` fills it in, as the backend does;
- unset ``Optional`` parameters: kfp.local fails on a parameter without a default (the backend
  passes None), so a local run passes every one, the interval included.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def scheduled_at(time: str) -> Iterator[None]:
    """Within the block, kfp.local resolves the scheduled-time placeholder to ``time`` (RFC 3339
    UTC, as KFP passes it: ``2026-11-01T01:00:00Z``)."""
    from kfp import dsl
    from kfp.local import placeholder_utils

    original = placeholder_utils.resolve_individual_placeholder

    def resolve(element: str, *args, **kwargs):
        element = element.replace(dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER, time)
        return original(element, *args, **kwargs)

    placeholder_utils.resolve_individual_placeholder = resolve
    try:
        yield
    finally:
        placeholder_utils.resolve_individual_placeholder = original
