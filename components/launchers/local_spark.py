"""Run a rendered SparkApplication's driver on this machine: ``spark-submit`` of its application
file with its arguments and the settings that apply locally, on a ``local[N]`` master.

    (app,) = render_etl_run(EtlRunParams(run_id="r1", input="/data/raw", output="/data/episodes",
                                                      start="2026-11-01T00", end="2026-11-01T03"))
    code = run_driver_locally(app, volumes={"metarec-data": "out/volume"}, log_path=Path("d.log"))
    # 0: out/volume/episodes/interval=2026110100-2026110103/ written, as the cluster would

What spark-operator would do and this does instead (its ``spark-submit`` flags:
``buildSparkSubmitArgs`` in ``internal/controller/sparkapplication/submission.go``):
``--master k8s://...`` becomes a local master; ``--name``, ``sparkConf`` and ``hadoopConf`` (``spark.hadoop.*``) are passed as ``--conf``
except the ``spark.kubernetes.*`` keys, which only a Kubernetes master reads; the driver's memory,
Java options and env are kept, the executors' settings have no local meaning (local mode runs
tasks in the driver) but their env is passed as ``spark.executorEnv.*``; the volumes become
local directories as in :mod:`.local_cluster` (PVC -> the directory given for its claim,
emptyDir -> a fresh one) and mount paths in arguments and values are rewritten to them; a
``spark-local-dir-*`` volume is Spark's local dir, as on Kubernetes; ``local://`` application
files are looked up in what the image ships (:data:`IMAGE_FILES`). Images, the operator's
retries and the Kubernetes scheduler backend are what it cannot show.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.launchers.local_cluster import map_paths, mount_dirs

REPO = Path(__file__).resolve().parents[2]
IMAGE_FILES = {"/opt/metarec/etl_job.py": REPO / "components" / "etl" / "job.py"}
"""Files of the components image -> this checkout (components/Dockerfile links the first)."""
LOCAL_DIR_PREFIX = "spark-local-dir-"


def spark_submit_path() -> Path:
    """``bin/spark-submit`` of the installed pyspark wheel (the image's SPARK_HOME is the same)."""
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-submit"


def _volumes(app: dict[str, Any], volumes: Mapping[str, str], scratch: Path) -> dict[str, str]:
    """Mount path -> local directory for the driver's mounts."""
    spec = app["spec"]
    pod = {"volumes": spec.get("volumes", [])}
    return mount_dirs(pod, spec["driver"], [app], volumes, scratch)


def _application_file(spec: dict[str, Any]) -> str:
    if spec.get("type") != "Python":
        raise ValueError(f"only Python applications run locally, not type {spec.get('type')!r}")
    uri = spec["mainApplicationFile"]
    if not uri.startswith("local://"):
        raise ValueError(f"mainApplicationFile {uri}: only local:// (in the image) runs locally")
    path = uri.removeprefix("local://")
    if path not in IMAGE_FILES:
        raise ValueError(f"{uri}: not a file the image ships ({', '.join(IMAGE_FILES)})")
    if spec.get("deps"):
        raise ValueError("spec.deps (jars, packages, pyFiles ...) is not run locally")
    return str(IMAGE_FILES[path])


def _conf(app: dict[str, Any], mounts: Mapping[str, str]) -> dict[str, str]:
    spec = app["spec"]
    conf = {k: str(v) for k, v in (spec.get("sparkConf") or {}).items()}
    conf.update({f"spark.hadoop.{k}": str(v) for k, v in (spec.get("hadoopConf") or {}).items()})
    driver, executor = spec["driver"], spec.get("executor", {})
    for key, value in (
        ("spark.driver.memory", driver.get("memory")),
        ("spark.driver.extraJavaOptions", driver.get("javaOptions")),
    ):
        if value is not None:
            conf[key] = str(value)
    for e in executor.get("env", []):
        conf[f"spark.executorEnv.{e['name']}"] = e.get("value", "")
    local_dirs = [v["name"] for v in spec.get("volumes", [])
                  if v["name"].startswith(LOCAL_DIR_PREFIX)]  # fmt: skip
    mount_of = {m["name"]: m["mountPath"] for m in driver.get("volumeMounts", [])}
    if local_dirs:
        conf["spark.local.dir"] = ",".join(mount_of[n] for n in local_dirs)
    return {
        k: map_paths(v, mounts) for k, v in conf.items() if not k.startswith("spark.kubernetes.")
    }


def spark_submit_command(
    app: dict[str, Any],
    *,
    master: str = "local[2]",
    volumes: Mapping[str, str],
    scratch: Path,
) -> list[str]:
    """The driver's ``spark-submit`` command line, run here.

    Args:
        app: a rendered SparkApplication.
        master: the local master that replaces the cluster.
        volumes: local directory for each PVC claim name the driver mounts.
        scratch: where the emptyDir volumes are made.

    Raises:
        ValueError: a non-Python or non-``local://`` application, a PVC without a directory.
    """
    spec = app["spec"]
    mounts = _volumes(app, volumes, scratch)
    command = [str(spark_submit_path()), "--master", master, "--name", app["metadata"]["name"]]
    for key, value in _conf(app, mounts).items():
        command += ["--conf", f"{key}={value}"]
    command.append(_application_file(spec))
    return command + [map_paths(str(a), mounts) for a in spec.get("arguments", [])]


def driver_env(
    app: dict[str, Any],
    *,
    python: str = sys.executable,
    volumes: Mapping[str, str],
    scratch: Path,
) -> dict[str, str]:
    """The driver's environment: its ``env`` (mount paths mapped), the Python that runs the
    application, TMPDIR on the ``/tmp`` mount, HOME on the image's work dir when mounted."""
    spec = app["spec"]
    mounts = _volumes(app, volumes, scratch)
    env = {e["name"]: map_paths(e.get("value", ""), mounts) for e in spec["driver"].get("env", [])}
    for source in spec["driver"].get("envFrom", []):
        ref = source.get("secretRef") or source.get("configMapRef") or {}
        if not ref.get("optional"):
            raise ValueError(f"envFrom {ref.get('name')} is required and there is no cluster")
    env.update({"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python})
    if "/tmp" in mounts:
        env["TMPDIR"] = mounts["/tmp"]
    if "/opt/metarec/work" in mounts:  # the image's WORKDIR and the metarec user's HOME
        env["HOME"] = mounts["/opt/metarec/work"]
    return env


def run_driver_locally(
    app: dict[str, Any],
    volumes: Mapping[str, str],
    *,
    master: str = "local[2]",
    log_path: Path,
    timeout_s: float = 600.0,
) -> int:
    """Run the driver's ``spark-submit`` here and return its exit code (output to ``log_path``).

    The process gets this machine's PATH and JAVA_HOME (the JVM), nothing else of its
    environment, as in a container."""
    scratch = Path(tempfile.mkdtemp(prefix="metarec-spark-volumes-"))
    command = spark_submit_command(app, master=master, volumes=volumes, scratch=scratch)
    env = driver_env(app, volumes=volumes, scratch=scratch)
    base = {k: os.environ[k] for k in ("PATH", "JAVA_HOME") if k in os.environ}
    with log_path.open("w") as log:
        proc = subprocess.run(
            command,
            env={**base, **env},
            cwd=env.get("HOME"),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
    return proc.returncode
