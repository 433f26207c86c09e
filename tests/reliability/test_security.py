"""Security: nothing we load can run code, and names from configs and data files stay inside their
root. Container and manifest hardening (non-root, read-only root filesystem, no secrets, Secrets by
name, least-privilege RBAC) is tested in ``tests/manifests/`` (see README.md here); the planted
pickle in a bare checkpoint shard and in an export are in ``tests/trainer/test_checkpoint.py`` and
``tests/trainer/exported/test_integrity.py``. Added here: a static scan of every load call in the
code, the planted payload through the trainer's own resume and warm-start paths, and path checks.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
import torch

from tests.trainer.run_helpers import tiny_config, write_episodes
from trainer.checkpoint import Checkpointer, CheckpointError, sha256_file
from trainer.data.contract import ContractError, load_manifest
from trainer.paths import check_relative, safe_join
from trainer.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
CODE_DIRS = ("trainer", "components", "pipelines", "dags")
UNPICKLERS = ("pickle", "cPickle", "_pickle", "marshal", "dill", "joblib", "cloudpickle")
YAML_LOADS = tuple(
    f"yaml.{f}{a}" for f in ("load", "unsafe_load", "full_load") for a in ("", "_all")
)
# bench/ is not scanned: two benchmarks read back the reports their own child processes just
# wrote (torch.load of their own temp files), never a model, a checkpoint or user input.


# ------------------------------------------------------------------------ no pickled code, ever
def unsafe_loads(source: str) -> list[str]:
    """Calls in ``source`` that can unpickle: ``torch.load`` without ``weights_only=True``,
    ``numpy.load`` without ``allow_pickle=False``, any ``pickle``/``marshal``/``dill``/``joblib``
    load, ``yaml.load`` / ``yaml.unsafe_load``; and ``torch.export.load`` (unpickles unless its
    archive was checked first: allowed only in ``trainer/exported/tensors.py``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
        unsafe = (
            (name == "torch.load" and kw.get("weights_only") != "True")
            or (name in ("np.load", "numpy.load") and kw.get("allow_pickle") != "False")
            or (name.split(".")[0] in UNPICKLERS and name.endswith(("load", "loads", "Unpickler")))
            or (name in YAML_LOADS and "SafeLoader" not in kw.get("Loader", ""))
            or name == "torch.export.load"
        )
        if unsafe:
            found.append(f"{name} (line {node.lineno})")
    return found


def test_no_code_path_can_unpickle() -> None:
    problems = {}
    for folder in CODE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            found = unsafe_loads(path.read_text())
            if rel == "trainer/exported/tensors.py":  # loads the graph only after checking it
                found = [f for f in found if not f.startswith("torch.export.load")]
            if found:
                problems[rel] = found
    assert not problems, problems


def test_the_scan_can_fail() -> None:
    assert len(unsafe_loads(
        "torch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p)\npickle.loads(b)\n"
        "yaml.load(s)\ntorch.export.load(p)\ntorch.load(p, weights_only=True)\n"
        "np.load(p, allow_pickle=False)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
        "yaml.load_all(s)\nyaml.load_all(s, Loader=getattr(yaml, 'CSafeLoader', yaml.SafeLoader))\n"
    )) == 7  # fmt: skip


class _Payload:
    """Unpickling it creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(ckpt: Path, marker: Path) -> None:
    """Replace rank 0's shard with a pickle payload and re-sign it (checksums cannot help here)."""
    shard = ckpt / "rank-00000.pt"
    torch.save({"model": _Payload(marker)}, shard)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["shards"][shard.name] = {"sha256": sha256_file(shard), "bytes": shard.stat().st_size}
    (ckpt / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Episodes and a finished 4-step run (one process)."""
    root = tmp_path_factory.mktemp("security")
    data = write_episodes(root / "interval", num_tasks=12)
    trainer = Trainer(tiny_config(data, root / "run")).build()
    try:
        trainer.fit()
    finally:
        trainer.close()
    return data, root / "run"


@pytest.mark.parametrize("path", ["resume", "warm_start"])
def test_a_planted_pickle_is_refused_by_resume_and_warm_start(trained, tmp_path, path) -> None:
    import shutil

    data, run = trained
    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    ckpt = Checkpointer(victim / "checkpoints").latest()
    marker = tmp_path / "PWNED"
    _plant(ckpt, marker)
    if path == "resume":
        cfg = tiny_config(data, victim, **{"train.steps": 6})
    else:
        cfg = tiny_config(data, tmp_path / "new", **{"checkpoint.warm_start": str(victim)})
    trainer = Trainer(cfg)
    try:
        with pytest.raises(CheckpointError, match="cannot be loaded safely"):
            trainer.build()
    finally:
        trainer.close()
    assert not marker.exists(), "the payload ran"


# ------------------------------------------------------------------- names stay inside roots
@pytest.mark.parametrize(
    "name", ["../x", "a/../../x", "/etc/passwd", "", "a\\..\\b", "s3://bucket/x", "a\x00b", ".."]
)
def test_relative_names_that_lead_out_are_refused(tmp_path, name) -> None:
    with pytest.raises(ValueError, match=r"relative path|leads outside"):
        check_relative(name, "files[0].path")
    with pytest.raises(ValueError):
        safe_join(tmp_path, name)


def test_plain_relative_names_are_kept(tmp_path) -> None:
    assert safe_join(tmp_path, "checkpoints") == tmp_path / "checkpoints"
    assert safe_join(tmp_path, "split=train/bucket=00001/p.parquet").name == "p.parquet"
    assert safe_join(tmp_path / "not-yet", "a/b") == tmp_path / "not-yet" / "a" / "b"


def test_a_symlink_out_of_the_run_directory_is_refused(trained, tmp_path) -> None:
    data, _ = trained
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, run / "checkpoints")  # a planted link: checkpoints would land outside
    trainer = Trainer(tiny_config(data, run))
    try:
        with pytest.raises(ValueError, match="outside"):
            trainer.build()
    finally:
        trainer.close()
    assert not any(elsewhere.iterdir())


def test_a_manifest_naming_files_outside_its_root_is_refused(trained, tmp_path) -> None:
    import shutil

    data, _ = trained
    root = tmp_path / "interval"
    shutil.copytree(data, root)
    manifest = json.loads((root / "_manifest.json").read_text())
    manifest["files"][0]["path"] = "../../../etc/passwd"
    (root / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ContractError, match="leads outside"):
        load_manifest(str(root))


@pytest.mark.parametrize("pointer", ["../other/step-00000004", "/tmp/step-00000004"])
def test_a_checkpoint_pointer_out_of_its_root_is_refused(trained, tmp_path, pointer) -> None:
    import shutil

    data, run = trained
    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    (victim / "checkpoints" / "latest").write_text(pointer)
    for cfg in (
        tiny_config(data, victim, **{"train.steps": 6}),  # resume
        tiny_config(data, tmp_path / "new", **{"checkpoint.warm_start": str(victim)}),
    ):
        trainer = Trainer(cfg)
        try:
            with pytest.raises(CheckpointError, match="damaged"):
                trainer.build()
        finally:
            trainer.close()


# ------------------------------------------------------------------- the ETL's Spark pods
def _spark_pods() -> list[tuple[str, dict]]:
    from tests.manifests.conftest import rendered

    (app,) = rendered("spark-etl")
    return [(role, app["spec"][role]) for role in ("driver", "executor")]


def test_spark_pods_run_as_non_root_without_privileges() -> None:
    """``tests/manifests/test_conventions.py`` locks down the trainer's pods; the same for the
    SparkApplication's driver and executors."""
    for role, pod in _spark_pods():
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, role
        assert sc["allowPrivilegeEscalation"] is False, role
        assert sc["capabilities"]["drop"] == ["ALL"] and "privileged" not in sc, role
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", role
        assert all("secretRef" in e for e in pod.get("envFrom", [])), role  # by name only
        assert not [e for e in pod.get("env", []) if "value" in e and "SECRET" in e["name"]]


def test_spark_pods_have_a_read_only_root_filesystem() -> None:
    """Read-only root, with Spark's local dir, /tmp and the work dir on emptyDirs."""
    from tests.manifests.conftest import rendered

    (app,) = rendered("spark-etl")
    empty = {v["name"] for v in app["spec"]["volumes"] if "emptyDir" in v}
    for role, pod in _spark_pods():
        assert pod["securityContext"].get("readOnlyRootFilesystem") is True, role
        mounts = {m["mountPath"]: m["name"] for m in pod["volumeMounts"]}
        assert {mounts.get(p) for p in ("/tmp", "/opt/metarec/work")} <= empty, role
        local = [n for n in mounts.values() if n.startswith("spark-local-dir-")]
        assert local and set(local) <= empty, role
