"""The commands the rendered manifests run, in the environment of the image they name, and the
launcher's render of them in the images whose KFP tasks submit runs (``backend = "kubernetes"``).

PyTorchJob (trainer image): the rendered pods of a tiny ``pytorchjob-cpu`` run, started as local
processes by :mod:`components.launchers.local_cluster` (operator env, volumes -> directories,
``$(VAR)`` expansion) with the image's environment, train one step. SparkApplication (components
image): ``mainApplicationFile`` exists where the image links it and runs as the driver's Python
program; with :mod:`components.launchers.local_spark` (when present), the rendered driver command
(spark-submit, local master) runs the ETL of a small interval.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from pathlib import Path

import pytest

from tests.images.image_env import ImageEnv

pytestmark = pytest.mark.image_contract
DATA = "/data/episodes/interval=2026110100-2026110200"
ONE_STEP = ("train.steps=1", "train.log_every=1", "eval.max_episodes=8", "checkpoint.every=0")


RENDER = """
import json
from components.launchers.render import TrainRunParams, job_of, manifests_dir, render_run
from components.launchers.render_etl import EtlRunParams, render_etl_run

job = job_of(render_run(TrainRunParams(run_id="image", variant="pytorchjob-gpu")))
(app,) = render_etl_run(EtlRunParams(run_id="r1", input="/data/raw", output="/data/episodes",
                                                  start="2026-11-01T00", end="2026-11-01T01"))
print(json.dumps({"manifests": str(manifests_dir()), "kinds": [job["kind"], app["kind"]]}))
"""


@pytest.mark.parametrize("name", ["trainer", "components"])
def test_launcher_renders_the_runs_in_the_image(name: str, request: pytest.FixtureRequest):
    # With backend = "kubernetes" the KFP launcher tasks (train on the trainer image, the ETL on
    # the components image) render manifests/ with kubectl kustomize before they submit.
    image: ImageEnv = request.getfixturevalue(f"{name}_image")
    proc = image.run(["python", "-c", RENDER], timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    rendered = json.loads(proc.stdout.splitlines()[-1])
    assert rendered["manifests"] == image.env["METAREC_MANIFESTS"]  # the image's copy
    assert rendered["kinds"] == ["PyTorchJob", "SparkApplication"]


def _tiny_run() -> list[dict]:
    from components.launchers.render import TrainRunParams, render_run

    params = TrainRunParams(run_id="image", variant="pytorchjob-cpu",
                            overrides=(f"data.path={DATA}", *ONE_STEP))  # fmt: skip
    return render_run(params)


def test_trainer_module_of_the_rendered_pods_answers_help(trainer_image: ImageEnv):
    from components.launchers.render import job_of, trainer_containers

    for _, _, container in trainer_containers(job_of(_tiny_run())):
        args = container["args"]
        module = args[args.index("-m") + 1]  # the program torchrun starts in every rank
        proc = trainer_image.run(["python", "-m", module, "--help"], timeout=120)
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.multiprocess
def test_rendered_pytorchjob_trains_one_step_in_the_trainer_image(
    trainer_image: ImageEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from components.launchers import local_cluster
    from components.launchers.render import job_of
    from trainer.data.synthetic import write_synthetic_episodes

    write_synthetic_episodes(tmp_path / "data" / DATA.removeprefix("/data/"), num_tasks=40,
                             episodes_per_task=2, num_buckets=2)  # fmt: skip
    (tmp_path / "runs").mkdir()
    claims = {"metarec-data": str(tmp_path / "data"), "metarec-runs": str(tmp_path / "runs")}
    objs = _tiny_run()
    options = {}
    if "python" in inspect.signature(local_cluster.run_job_locally).parameters:
        options["python"] = trainer_image.python
    else:  # the rendered command must then be found on the image's PATH
        for pod, words, _ in local_cluster.pod_commands(objs, claims, tmp_path / "v", 1):
            assert words[0] != sys.executable, f"{pod} would run this interpreter: {words[:3]}"
    monkeypatch.chdir(trainer_image.workdir)  # `python -m` puts the cwd first on sys.path
    codes = local_cluster.run_job_locally(objs, claims, timeout_s=420, log_dir=tmp_path / "logs",
                                          extra_env=trainer_image.process_env(), **options)  # fmt: skip
    logs = {p.name: p.read_text()[-3000:] for p in (tmp_path / "logs").glob("*.log")}
    assert codes == [0] * len(codes), logs
    run_dir = tmp_path / "runs" / job_of(objs)["metadata"]["name"]
    steps = [json.loads(line).get("step", 0) for line in (run_dir / "metrics.jsonl").open()]
    assert max(steps) == 1, logs


def _etl_app(raw: Path, out: Path) -> dict:
    from components.launchers.render_etl import EtlRunParams, render_etl_run

    params = EtlRunParams(run_id="r1", input=str(raw), output=str(out), start="2026-11-01T00",
                                       end="2026-11-01T01")  # fmt: skip
    (app,) = render_etl_run(params)
    return app


def test_spark_application_main_file_is_the_etl_job_in_the_components_image(
    components_image: ImageEnv, tmp_path: Path
):
    app = _etl_app(tmp_path / "raw", tmp_path / "episodes")
    main = components_image.path(app["spec"]["mainApplicationFile"].removeprefix("local://"))
    assert main.is_file(), f"{main}: the image has no mainApplicationFile (components/Dockerfile)"
    assert main.resolve().is_relative_to(components_image.venv)  # the installed wheel's
    # The driver's Python program, as spark-submit runs it (a file, not a module).
    proc = components_image.run(["python", str(main), "--help"], timeout=120)
    assert proc.returncode == 0 and "--input" in proc.stdout, proc.stdout[-3000:]
    proc = components_image.run(["metarec", "etl", "--help"], timeout=120)
    assert proc.returncode == 0 and "--input" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.spark
@pytest.mark.skipif(
    importlib.util.find_spec("components.launchers.local_spark") is None,
    reason="components/launchers/local_spark.py (the rendered driver command) is not written yet",
)
def test_rendered_spark_driver_runs_the_etl_in_the_components_image(
    components_image: ImageEnv, tmp_path: Path
):
    from components.generate import GeneratorConfig, generate
    from components.launchers import local_spark

    volume = tmp_path / "volume"
    generate(GeneratorConfig(out=str(volume / "raw"), rows=4000, hours=1, num_users=300,
                             num_campaigns=30, seed=5))  # fmt: skip
    app = _etl_app(Path("/data/raw"), Path("/data/episodes"))
    where = {"volumes": {"metarec-data": str(volume)}, "scratch": tmp_path / "scratch"}
    command = local_spark.spark_submit_command(app, master="local[2]", **where)
    # The image's spark-submit (SPARK_HOME) and application file, not this checkout's.
    main = app["spec"]["mainApplicationFile"].removeprefix("local://")
    spark_submit = Path(components_image.env["SPARK_HOME"]) / "bin" / "spark-submit"
    image_files = {
        str(local_spark.spark_submit_path()): str(spark_submit),
        str(local_spark.IMAGE_FILES[main]): str(components_image.path(main)),
    }
    command = [image_files.get(word, word) for word in command]
    assert set(image_files.values()) <= set(command), command
    env = local_spark.driver_env(app, python=components_image.python, **where)
    proc = components_image.run(command, extra_env=env, cwd=Path(env.get("HOME", tmp_path)),
                                timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    (found,) = (volume / "episodes").rglob("_manifest.json")  # written last: output complete
    manifest = json.loads(found.read_text())
    assert manifest["files"] and manifest["content_hash"], manifest
