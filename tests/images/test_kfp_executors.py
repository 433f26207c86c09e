"""Every executor of the compiled KFP pipeline runs in the image it names: a real small run.

``pipelines/compiled/training_pipeline.yaml`` (what a KFP UI launch runs) is executed by
``kfp.local``'s own orchestrator (DAG order, conditions, executor inputs with the previous tasks'
real artifacts and parameters, outputs read back), with one change: each task's exact container
command (``sh -ec ... python3 -m kfp.dsl.executor_main ...``, ``{{$}}`` replaced by the executor
input) runs in the environment of the image the YAML names for it, ``python3`` found on that
environment's PATH, instead of kfp.local's ``python3`` -> this interpreter. An executor that the
small run does not reach (the other branch of a ``dsl.If``) is covered when a reached executor
runs the same program in the same image (today: the cluster-launcher branch of ``train`` and the
no-promotion ``report``); the test fails naming any other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.images.dockerfile import REPO
from tests.images.image_env import ImageEnv

pytestmark = [pytest.mark.image_contract, pytest.mark.spark]
PIPELINE = REPO / "pipelines" / "compiled" / "training_pipeline.yaml"
START, END = "2026-11-01T00", "2026-11-01T01"
INTERVAL = "interval=20261101T00-20261101T01"
BACKEND_FILLS = {"{{$.pipeline_job_schedule_time_utc}}": "2026-11-01T01:00:00Z",
                 "{{$.pipeline_job_create_time_utc}}": "2026-11-01T01:00:05Z"}  # fmt: skip
ETL = {"k_support": 4, "q_query": 4, "min_support": 2, "min_query": 2, "num_buckets": 2,
       "shuffle_partitions": 4, "cold_fraction": 0.3}  # fmt: skip
TRAINER = ["train.log_every=2", "data.batch_episodes=16", "model.mlp=[16, 8]",
           "model.bottom_mlp=[8]", "eval.max_episodes=64", "checkpoint.every=0"]  # fmt: skip


@dataclass(frozen=True)
class Program:
    """What an executor runs: its image, its component code and the function it calls."""

    image: str
    code: str
    function: str

    @classmethod
    def of(cls, image: str, words: list[str]) -> Program:
        return cls(image, words[3], words[words.index("--function_to_execute") + 1])


def _compiled() -> dict[str, Any]:
    """The compiled pipeline with the run-time values the KFP backend fills in (kfp.local fails
    on ``{{$.pipeline_job_schedule_time_utc}}``: IndexError in its placeholder_utils), and without
    retry policies, so that a failing executor fails the test at once (kfp.local sleeps through
    the retries' backoff)."""
    text = PIPELINE.read_text()
    for placeholder, value in BACKEND_FILLS.items():
        text = text.replace(placeholder, value)
    spec = next(yaml.safe_load_all(text))
    dags = [spec["root"], *spec["components"].values()]
    for dag in (d["dag"] for d in dags if "dag" in d):
        for task in dag["tasks"].values():
            task.pop("retryPolicy", None)
    return spec


def _executors() -> dict[str, Program]:
    spec = _compiled()
    return {
        name: Program.of(e["container"]["image"], [*e["container"]["command"],
                                                   *e["container"]["args"]])
        for name, e in spec["deploymentSpec"]["executors"].items()
    }  # fmt: skip


def _arguments(raw: Path, run: Path, delivery: Path) -> dict[str, Any]:
    """The pipeline's parameters for a small local run (those the compiled pipeline has)."""
    inputs = _compiled()["root"]["inputDefinitions"]["parameters"]
    small = {
        "interval_start": START, "interval_end": END, "raw_root": str(raw), "run_root": str(run),
        "backend": "local", "nproc": 1, "trainer_config": "debug", "spark_master": "local[2]",
        "delivery_config": str(delivery), "model_arch": "dlrm", "embedding_dim": 4,
        "meta_mode": "fomaml", "inner_steps": 1, "inner_lr": 0.05, "train_steps": 4,
    }  # fmt: skip
    # kfp.local cannot leave an optional parameter without a default unset (a UI launch can).
    unset = [k for k, d in inputs.items() if k not in small and "defaultValue" not in d]
    assert not unset, f"no value for the pipeline parameters {unset}: add them to `small`"
    return {k: v for k, v in small.items() if k in inputs}


def _handler(images: Mapping[str, ImageEnv], ran: list[Program]) -> type:
    """A kfp.local task handler running each task's command in its image's environment."""
    from kfp.local import status, task_handler_interface

    class ImageTaskHandler(task_handler_interface.ITaskHandler):
        def __init__(self, image: str, full_command: list[str], pipeline_root: str, runner: Any,
                     env_vars: dict[str, str] | None = None) -> None:  # fmt: skip
            if image not in images:
                raise ValueError(f"{image}: no Dockerfile builds it (tests/images/conftest.py)")
            self.image, self.command, self.env_vars = image, full_command, env_vars or {}

        def run(self) -> status.Status:
            proc = images[self.image].run(self.command, extra_env=self.env_vars, timeout=900)
            print(proc.stdout)
            if proc.returncode != 0:
                return status.Status.FAILURE
            missing = _missing_outputs(self.command)
            assert not missing, f"{self.command[-1]} exited 0 without writing {missing}"
            ran.append(Program.of(self.image, self.command))
            return status.Status.SUCCESS

    return ImageTaskHandler


FILE_ARTIFACTS = {"system.Dataset", "system.Model", "system.Markdown"}
"""Artifacts that are files the component writes (Metrics live in the executor output)."""


def _missing_outputs(command: list[str]) -> list[str]:
    """The outputs an executor was asked for (its executor input) that it did not write."""
    outputs = json.loads(command[command.index("--executor_input") + 1])["outputs"]
    missing = [] if Path(outputs["outputFile"]).is_file() else [outputs["outputFile"]]
    for name, value in outputs.get("artifacts", {}).items():
        for artifact in value["artifacts"]:
            if artifact["type"]["schemaTitle"] in FILE_ARTIFACTS:
                missing += [] if Path(artifact["uri"]).is_file() else [name]
    return missing


def test_every_executor_runs_in_its_image(
    images: dict[str, ImageEnv], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from google.protobuf import json_format
    from kfp import local
    from kfp.local import pipeline_orchestrator, subprocess_task_handler
    from kfp.pipeline_spec import pipeline_spec_pb2

    from components.generate import GeneratorConfig, generate

    generate(GeneratorConfig(out=str(tmp_path / "raw"), rows=8000, hours=1, num_users=600,
                             num_campaigns=60, seed=4))  # fmt: skip
    delivery = tmp_path / "delivery.json"
    delivery.write_text(json.dumps({"etl": ETL, "trainer_overrides": TRAINER}))
    run = tmp_path / "run"
    ran: list[Program] = []
    # kfp.local picks the handler class of SubprocessRunner here, at each task.
    monkeypatch.setattr(subprocess_task_handler, "SubprocessTaskHandler", _handler(images, ran))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    spec = json_format.ParseDict(_compiled(), pipeline_spec_pb2.PipelineSpec())
    pipeline_orchestrator.run_local_pipeline(spec, _arguments(tmp_path / "raw", run, delivery))

    executors = _executors()
    assert {p.image for p in ran} == set(images), "each image runs at least one task"
    assert set(executors.values()) >= set(ran)
    records = {p.stem: json.loads(p.read_text())
               for p in (run / "intervals" / INTERVAL).glob("*.json")}  # fmt: skip
    assert records["promote"]["result"]["champion"] == "v1", records.keys()

    # An executor the run did not reach (the other branch of a dsl.If) runs the same program in
    # the same image as one it reached.
    unreached = sorted(name for name, program in executors.items() if program not in ran)
    assert not unreached, f"{unreached} ran nowhere: give the small run a second pass reaching them"
