"""Synthetic ad logs that look like production traffic, in the canonical raw schema.

    from components.generate import GeneratorConfig, generate
    summary = generate(GeneratorConfig(out="out/raw", rows=1_000_000, format="parquet", seed=7))

or ``metarec generate --rows 1000000 --out out/raw --format parquet --seed 7``.

What the data looks like, and where each part lives:

- ``population.py``: users, advertisers, campaigns (the default task key), ads and scenes with
  fixed attributes; Zipf-Mandelbrot traffic shares, so a few campaigns, advertisers and users are
  huge and most are small; a share of campaigns is born inside the range (cold start).
- ``traffic.py``: hourly volume on a diurnal curve, chunked time slices, who sees what and when.
- ``labels.py``: the generative model of clicks and conversions, including the per-campaign
  preference over user attributes that makes adapting to a task pay off (read its docstring).
- ``corruption.py``: the corruption kinds, how they are injected, and the ETL reason each maps to.
- ``render.py`` / ``writer.py``: vectorised Arrow/JSON rendering and the ``dt=/hr=`` files.
- ``run.py``: the streaming loop and ``<out>/_generation.json`` (config, rows per hour and file,
  exact corruption counts, label rates) plus ``<out>/_campaigns.parquet`` (per-campaign truth:
  birth time, cold start, traffic share, click bias, clean rows).

The same config writes byte-identical files; memory is bounded by ``chunk_rows``, not ``rows``.
"""

from __future__ import annotations

from components.generate.config import CORRUPTION_KINDS, GenerationSummary, GeneratorConfig

__all__ = ["CORRUPTION_KINDS", "GenerationSummary", "GeneratorConfig", "generate"]


def generate(config: GeneratorConfig) -> GenerationSummary:
    """Write the logs described by ``config``; see :func:`components.generate.run.generate`."""
    from components.generate.run import generate as _generate  # numpy/pyarrow, imported on use

    return _generate(config)
