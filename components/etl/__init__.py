"""The Meta-IO offline stage: raw ad logs -> validated, task-partitioned Parquet episodes.

    from components.etl import EtlConfig, run_etl
    result = run_etl(EtlConfig(input="out/raw", output="out/episodes",
                               start="2026-11-01T00", end="2026-11-02T00"))

``extract.py`` lists and checks the hourly partitions; ``rows.py``, ``dedup.py``, ``encode.py``,
``episodes.py`` and ``splits.py`` are the transform (pure DataFrame functions; ``transform.py``
chains them and explains the plan); ``load.py`` writes atomically; ``job.py`` runs it all
(also under spark-submit); ``command.py`` is ``metarec etl``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from components.etl.config import EtlConfig

if TYPE_CHECKING:
    from components.etl.job import EtlResult

__all__ = ["EtlConfig", "EtlResult", "run_etl"]


def run_etl(config: EtlConfig, spark=None) -> EtlResult:
    """Run the ETL; see :func:`components.etl.job.run_etl` (imported here lazily: no Spark at import)."""
    from components.etl.job import run_etl as _run

    return _run(config, spark)


def __getattr__(name: str):
    if name == "EtlResult":
        from components.etl.job import EtlResult

        return EtlResult
    raise AttributeError(name)
