"""A model whose features are raw-log columns, trained on synthetic episodes (no Spark needed).

The synthetic writer names each feature's source after the feature; the manifest is rewritten so
that ``hour_of_day`` derives from ``event_time`` and the three dense columns are the raw schema's
(with the ETL's default transforms). The data files, and so the content hash, are unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.exported.runs import train
from trainer.data.contract import MANIFEST_NAME
from trainer.data.synthetic import write_synthetic_episodes
from trainer.exported import export_checkpoint

RAW_FEATURES = [("user_id", 101, 1), ("ad_id", 53, 1), ("campaign_id", 31, 1),
                ("hour_of_day", 29, 1), ("user_interests", 37, 3), ("ad_tags", 17, 2)]  # fmt: skip
RAW_DENSE = [("bid_price", "log1p"), ("item_price", "log1p"), ("user_hist_ctr", "identity")]


def raw_compatible_episodes(root: Path) -> Path:
    write_synthetic_episodes(root, num_tasks=60, k_support=4, q_query=4, features=RAW_FEATURES,
                             dense_width=3, max_episodes_per_task=6, rows_per_group=16)  # fmt: skip
    path = root / MANIFEST_NAME
    m = json.loads(path.read_text())
    for f in m["features"]:
        if f["name"] == "hour_of_day":
            f["source"] = "event_time"
    m["dense_features"] = [{"name": n, "source": n, "transform": t, "index": i}
                           for i, (n, t) in enumerate(RAW_DENSE)]  # fmt: skip
    m["task_key"] = "campaign_id"
    path.write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    return root


@pytest.fixture(scope="session")
def raw_model(tmp_path_factory) -> Path:
    """An export (DLRM, MAML adapting the dense layers) of a run on raw-compatible episodes."""
    base = tmp_path_factory.mktemp("score-model")
    data = raw_compatible_episodes(base / "episodes")
    run = train(data, base / "run")
    return export_checkpoint(run, base / "models").path
