"""Airflow 3 test setup: a throwaway AIRFLOW_HOME (SQLite), ``dags/`` as the DAG folder, and a
delivery config pointing at a temporary run root, all set BEFORE airflow is imported (Airflow
reads its configuration once, at import). The metadata DB is created once per test session."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.pipelines.flow_inputs import ETL  # the small ETL settings of every flow test

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
WORK = Path(tempfile.mkdtemp(prefix="metarec-airflow-"))
atexit.register(shutil.rmtree, WORK, True)  # also when no test here used it
RAW, RUN = WORK / "raw", WORK / "run"
START = "2026-11-01T00"
TRAINER = [
    "train.steps=4",
    "train.log_every=2",
    "data.batch_episodes=16",
    "model.embedding_dim=4",
    "model.mlp=[16, 8]",
    "model.bottom_mlp=[8]",
    "eval.max_episodes=64",
    "checkpoint.every=0",
]
DELIVERY = {
    "run_root": str(RUN),
    "raw_root": str(RAW),
    "schedule": "hourly",
    "start_date": START,
    "etl": ETL,
    "trainer_overrides": TRAINER,
    "raw_poke_interval_s": 5,
    "raw_wait_timeout_s": 60,
}

(WORK / "delivery.json").write_text(json.dumps(DELIVERY))
os.environ.update(
    {
        "AIRFLOW_HOME": str(WORK / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        # Tests parse the DAGs with several delivery configs (other run roots, other Asset URIs)
        # seconds apart. A DAG version without runs is rewritten in place, and the execution API's
        # cache re-checks a version only after this interval (30 s by default): a run could get
        # the DAG of the previous config, with its Assets.
        "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "0",
        "METAREC_DELIVERY_CONFIG": str(WORK / "delivery.json"),
    }
)


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Create the SQLite metadata DB (once; ~6 s)."""
    from airflow.utils.db import initdb

    initdb()


@pytest.fixture
def fresh_assets(airflow_db) -> None:
    """Forget the assets earlier tests activated. An Asset's name is unique among active assets, and
    the DAGs' Asset URIs follow the delivery config's run root, which differs from test to test: as
    when a deployment changes its run root, the scheduler would orphan the old ones; ``dag.test``
    does not, so without this a second run root's Asset stays inactive and its task fails."""
    from airflow.models.asset import AssetActive
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(AssetActive).delete()


@pytest.fixture(scope="session")
def dag_bag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))
