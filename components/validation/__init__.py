"""Data validation with great-expectations 1.x: the raw-log suite and the episode suite.

    from components.validation import validate_episodes, validate_raw
    report = validate_episodes("out/episodes/interval=20261101T00-20261102T00")
    report.success, report.failed, report.to_text()

Modules: ``sources`` (listing/reading raw partitions and episode files), ``profile`` (derived
columns: GX checks scalars, so list columns are profiled per episode first, with pyarrow and
numpy; the raw profile is a Spark frame), ``suites`` (the expectations, as code), ``metrics``
(each expectation's metrics as Spark aggregates, and its verdict on them), ``table_metrics`` (the
same metrics on an in-memory Arrow table), ``runner`` (one pass per suite: every metric in one
Spark aggregation, or on the in-memory episode profile),
``gx_reference`` (GX's own run: the oracle of the tests, the baseline of ``bench/validation.py``),
``report`` (text/JSON/Markdown),
``record`` (the atomic manifest update), ``episodes`` and ``raw`` (the two entry points),
``command`` (the CLI).
Nothing here imports Spark or GX at module level; the episode suite needs no Spark.
"""

from .episodes import validate_episodes
from .raw import validate_raw
from .report import CheckResult, ValidationReport
from .suites import Thresholds

__all__ = ["CheckResult", "Thresholds", "ValidationReport", "validate_episodes", "validate_raw"]
