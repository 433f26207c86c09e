"""Adapters: real public datasets -> the canonical raw ad-log schema, in the production layout.

Each adapter reads the ORIGINAL files of a dataset as published (what a user downloads), streams
them (pyarrow's CSV reader, block by block: the full datasets have tens of millions of rows), maps
each row onto ``components/raw_schema.py`` and writes hourly partitions
``<out>/dt=YYYY-MM-DD/hr=HH/part-NNNNN.<parquet|jsonl>``, so ``metarec etl`` runs on them
unchanged. Every input row is accounted for: rows in = rows written + rows rejected (with a
reason code; see ``accounting.py``), reported in ``<out>/_adapter.json``, written last.

Sources (``metarec adapt <source> --help`` for files, download links and the field mapping):
    movielens       MovieLens-100K (u.data, u.user, u.item); task = user
    movielens-1m    MovieLens-1M (ratings.dat, users.dat, movies.dat); task = user
    taobao          Taobao display ads, Tianchi layout (raw_sample + ad_feature + user_profile)
    taobao-fuxictr  Taobao display ads, FuxiCTR joined CSV (with the click sequence)
    taobao-dmr      Taobao display ads, PaddleRec DMR 267-column rows (no timestamps)
    aliccp          Ali-CCP click + purchase, torch-rechub CSVs (no timestamps)
    talkingdata     TalkingData AdTracking clicks, label = download; task = app or channel

Python API:
    from components.adapters import AdapterConfig, adapt
    summary = adapt("movielens", AdapterConfig(src="ml-100k", out="data/raw-ml"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.adapters.run import AdapterConfig, AdapterSummary, Source

SOURCE_NAMES = (
    "movielens",
    "movielens-1m",
    "taobao",
    "taobao-fuxictr",
    "taobao-dmr",
    "aliccp",
    "talkingdata",
)


def sources() -> dict[str, Source]:
    """The adapters by name (imports pyarrow, hence a function)."""
    from components.adapters.aliccp import ALICCP
    from components.adapters.movielens import MOVIELENS
    from components.adapters.movielens_1m import MOVIELENS_1M
    from components.adapters.talkingdata import TALKINGDATA
    from components.adapters.taobao import FUXICTR, TIANCHI
    from components.adapters.taobao_dmr import DMR

    table = {
        s.name: s for s in (MOVIELENS, MOVIELENS_1M, TIANCHI, FUXICTR, DMR, ALICCP, TALKINGDATA)
    }
    assert tuple(table) == SOURCE_NAMES
    return table


def adapt(source: str, config: AdapterConfig) -> AdapterSummary:
    """Run the adapter ``source`` (one of :data:`SOURCE_NAMES`) with ``config``."""
    from components.adapters.run import adapt as run_adapter

    table = sources()
    if source not in table:
        raise ValueError(f"unknown source {source!r}: choose one of {', '.join(SOURCE_NAMES)}")
    return run_adapter(table[source], config)


def __getattr__(name: str):  # AdapterConfig & co. without importing pyarrow at package import
    if name in ("AdapterConfig", "AdapterSummary", "Source"):
        from components.adapters import run

        return getattr(run, name)
    raise AttributeError(name)
