"""``metarec promote`` / ``metarec rollback`` on real exports: the gate on the exports' own
evaluations and on a fresh evaluation of both models on the same episodes (``--evaluate-on``),
refusals (no metrics, different data, a tampered export), rollback and status."""

from __future__ import annotations

import json

import pytest

from components.cli import main
from components.promotion import registry
from tests.trainer.exported.runs import train
from tests.trainer.run_helpers import write_episodes
from trainer.exported import evaluate_exported, export_checkpoint, load_exported

NAME = "click-dlrm"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data A and B (same feature spec); run A exported at step 2 (v1: no eval.json, the run
    evaluated step 4 only) and step 4 (v2); run B exported as v3 (evaluated on B)."""
    base = tmp_path_factory.mktemp("promote")
    a, b = write_episodes(base / "a"), write_episodes(base / "b", seed=5)
    run_a, run_b = train(a, base / "run-a"), train(b, base / "run-b")
    models = base / "models"
    for ckpt in (run_a / "checkpoints" / "step-00000002", run_a, run_b):
        export_checkpoint(ckpt, models)
    return models, a


def _cli(capsys, *args: str) -> tuple[int, dict]:
    code = main([*args])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def test_gate_promotion_rollback_end_to_end(setup, capsys, tmp_path):
    models, data_a = setup
    base = ["promote", "--models", str(models), "--name", NAME, "--tolerance", "0"]
    base += ["--gauc-tolerance", "inf", "--calibration-tolerance", "inf"]  # the primary verdicts
    evaluate = ["--evaluate-on", str(data_a), "--batch-episodes", "8"]

    code, out = _cli(capsys, *base, "--version", "v1")  # no metrics of its own
    assert code == 1 and out["decision"]["verdict"] == "failed_validation"
    assert registry.read_champion(models, NAME) is None

    code, out = _cli(capsys, *base, "--version", "v1", *evaluate)
    assert (code, out["decision"]["verdict"], out["champion"]) == (0, "no_champion", "v1")

    code, out = _cli(capsys, *base, "--version", "v2")  # the champion has no eval.json to compare
    assert code == 1 and out["decision"]["verdict"] == "failed_validation"
    assert "--evaluate-on" in out["decision"]["reason"]

    code, out = _cli(capsys, *base, "--version", "v2", *evaluate)
    d = out["decision"]
    value = {v: evaluate_exported(load_exported(models / NAME / v), str(data_a), ("test_cold",), 8)
             ["splits"]["test_cold"]["after"]["auc"] for v in ("v1", "v2")}  # fmt: skip
    assert (d["challenger"], d["champion"]) == pytest.approx((value["v2"], value["v1"]))
    assert d["verdict"] == (
        "better" if value["v2"] > value["v1"] else "worse" if value["v2"] < value["v1"] else "equal"
    )
    assert code == (0 if d["verdict"] == "better" else 1)
    if code == 1:  # make v2 the champion either way, to go on
        registry.promote(models, NAME, "v2", reason="test setup")
    assert registry.read_champion(models, NAME).version == "v2"

    code, out = _cli(capsys, *base, "--version", "v3")  # v3's eval.json is of data B
    assert code == 1 and out["decision"]["verdict"] == "different_data"
    code, out = _cli(capsys, *base, "--version", "v3", *evaluate, "--dry-run")
    assert out["decision"]["verdict"] in ("better", "worse", "equal") and not out["promoted"]
    assert registry.read_champion(models, NAME).version == "v2"

    code, out = _cli(capsys, *base, "--version", "v2")
    assert code == 0 and out["decision"]["verdict"] == "already_champion"

    rollback = ["rollback", "--models", str(models), "--name", NAME, "--reason", "test"]
    assert main([*rollback, "--expect", "v1"]) == 2  # v2 serves: refused, nothing changes
    assert "the champion is v2, expected v1" in capsys.readouterr().err
    code, out = _cli(capsys, *rollback, "--expect", "v2")
    assert (code, out["champion"], out["rolled_back"]) == (0, "v1", "v2")
    assert main([*rollback, "--expect", "v2"]) == 2  # a retry of that rollback: not a second one
    assert "the champion is v1, expected v2" in capsys.readouterr().err
    assert registry.read_champion(models, NAME).version == "v1"
    code, out = _cli(capsys, *base, "--status")
    assert out["champion"] == "v1" and out["versions"] == ["v1", "v2", "v3"]
    assert [r["action"] for r in out["history"]][-1] == "rollback"
    assert out["history"][-1]["reason"] == "test"


def test_a_tampered_challenger_fails_validation(setup, capsys, tmp_path):
    import shutil

    models, data_a = setup
    copy = tmp_path / "models"
    shutil.copytree(
        models / NAME, copy / NAME, ignore=shutil.ignore_patterns("CHAMPION", "HISTORY.jsonl")
    )
    emb = copy / NAME / "v2" / "tables" / "emb.npy"
    emb.write_bytes(emb.read_bytes()[:-4] + b"\0\0\0\1")
    for extra in ([], ["--evaluate-on", str(data_a)]):
        code, out = _cli(
            capsys, "promote", "--models", str(copy), "--name", NAME, "--version", "v2", *extra
        )
        assert code == 1 and out["decision"]["verdict"] == "failed_validation"
        assert "tables/emb.npy does not match its checksum" in out["decision"]["reason"]
    assert registry.read_champion(copy, NAME) is None


def test_user_errors(setup, capsys, tmp_path):
    models, _ = setup
    cases = [
        (["promote", "--models", str(tmp_path), "--name", NAME], "holds no exported version"),
        (
            ["promote", "--models", str(models), "--name", NAME, "--version", "v9"],
            "no version 'v9'",
        ),
        (["promote", "--models", str(models), "--name", NAME, "--metric", "auc"], "--metric"),
        (["rollback", "--models", str(tmp_path), "--name", NAME], "holds no exported version"),
        (
            ["promote", "--models", str(models), "--name", "click-dlrn", "--status"],
            f"(models under {models}: {NAME})",
        ),
        (["promote", "--models", str(models), "--name", NAME, "--expect", "v9"], "expected v9"),
        (["promote", "--models", str(models), "--name", "../x"], "model name"),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit, match="2"):  # argparse: usage and the error
        main(["rollback", "--models", str(models), "--name", NAME, "--expect", "latest"])
    assert "'latest' is not a version (v<N>) nor 'none'" in capsys.readouterr().err
