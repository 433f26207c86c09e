"""Datasets shared by the distribution tests (generated once per test session)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.generate import GeneratorConfig, generate
from components.raw_schema import arrow_schema

TRAFFIC = {
    "rows": 120_000,
    "hours": 24,
    "num_users": 20_000,
    "num_campaigns": 2_000,
    "num_advertisers": 200,
    "format": "parquet",
    "seed": 21,
}
# Fewer, bigger campaigns and a higher CTR give the per-campaign statistics power.
LABELS = {
    "rows": 200_000,
    "hours": 24,
    "num_users": 20_000,
    "num_campaigns": 300,
    "num_advertisers": 60,
    "ctr": 0.05,
    "format": "parquet",
    "seed": 1,
}


def _dataset(tmp_path_factory, name: str, **kw) -> tuple[pa.Table, pa.Table, dict]:
    root = tmp_path_factory.mktemp(name)
    generate(GeneratorConfig(out=str(root), **kw))
    table = pq.read_table(root, schema=arrow_schema())
    campaigns = pq.read_table(root / "_campaigns.parquet")
    import json

    return table, campaigns, json.loads((root / "_generation.json").read_text())


@pytest.fixture(scope="session")
def traffic(tmp_path_factory):
    """(rows, per-campaign truth, _generation.json) of a default-shaped population."""
    return _dataset(tmp_path_factory, "traffic", **TRAFFIC)


@pytest.fixture(scope="session")
def labelled(tmp_path_factory):
    return _dataset(tmp_path_factory, "labelled", **LABELS)


@pytest.fixture(scope="session")
def ablated(tmp_path_factory):
    """Same as ``labelled`` with the per-campaign effects switched off."""
    return _dataset(
        tmp_path_factory, "ablated", **LABELS, preference_strength=0.0, campaign_bias_std=0.0
    )
