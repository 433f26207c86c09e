"""The gate and promotion steps on real (small, hand-built) exports: the verdicts, and that a
promotion happens once per interval whatever is rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.promotion import registry
from components.steps.config import DeliveryConfig
from components.steps.delivery import (
    EvaluationResult,
    GateResult,
    gate_step,
    promote_step,
    rollback_step,
)
from components.steps.layout import Interval, RunLayout
from trainer.exported.artifact import write_checksums

HASH = "c0ffee" * 10
I1, I2 = Interval.parse("2026-11-01T00/1h"), Interval.parse("2026-11-01T01/1h")


def _export(cfg: DeliveryConfig, version: str) -> Path:
    """A complete export as far as the gate checks it: required files + CHECKSUMS."""
    d = RunLayout.of(cfg.run_root).models_root / cfg.model_name / version
    d.mkdir(parents=True)
    for name in ("model.json", "feature_spec.json", "lineage.json"):
        (d / name).write_text(json.dumps({"version": version}))
    write_checksums(d)
    return d


def _evaluation(cfg, interval, values: dict[str, float | None], data_hash=HASH) -> EvaluationResult:
    files = {}
    for version, auc in values.items():
        path = RunLayout.of(cfg.run_root).records(interval) / "evaluation" / f"{version}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        after = {} if auc is None else {"auc": auc}
        path.write_text(
            json.dumps(
                {"data": {"content_hash": data_hash}, "splits": {"test_cold": {"after": after}}}
            )
        )
        files[version] = str(path)
    challenger, *champion = list(values)
    return EvaluationResult(
        data_hash=data_hash,
        metric="test_cold.after.auc",
        challenger=challenger,
        challenger_value=values[challenger],
        champion=champion[0] if champion else None,
        champion_value=None,
        files=files,
        roc={},
        confusion=[],
    )


@pytest.fixture()
def cfg(tmp_path) -> DeliveryConfig:
    c = DeliveryConfig.from_dict({"run_root": str(tmp_path / "run"), "gate": {"tolerance": 0.01}})
    for v in ("v1", "v2"):
        _export(c, v)
    return c


@pytest.mark.parametrize(
    ("challenger", "champion", "verdict", "promote"),
    [
        (0.70, 0.60, "better", True),
        (0.60, 0.70, "worse", False),
        (0.705, 0.70, "equal", False),
        (None, 0.70, "failed_validation", False),
    ],
)
def test_gate_verdicts(cfg, challenger, champion, verdict, promote):
    g = gate_step(cfg, I2, _evaluation(cfg, I2, {"v2": challenger, "v1": champion}))
    assert (g.verdict, g.promote, g.challenger, g.champion) == (verdict, promote, "v2", "v1")


def test_gate_without_champion_promotes_and_a_damaged_challenger_is_refused(cfg):
    assert gate_step(cfg, I1, _evaluation(cfg, I1, {"v1": 0.6})).verdict == "no_champion"
    (RunLayout.of(cfg.run_root).models_root / cfg.model_name / "v2" / "model.json").write_text("{}")
    g = gate_step(cfg, I2, _evaluation(cfg, I2, {"v2": 0.9}))
    assert (g.verdict, g.promote) == ("failed_validation", False)
    assert "checksum" in g.reason


def test_a_recorded_decision_is_reused_and_force_re_decides(cfg):
    first = gate_step(cfg, I2, _evaluation(cfg, I2, {"v2": 0.70, "v1": 0.60}))
    again = gate_step(cfg, I2, _evaluation(cfg, I2, {"v2": 0.50, "v1": 0.60}))
    assert again.reused and again.verdict == first.verdict == "better"
    forced = gate_step(cfg, I2, _evaluation(cfg, I2, {"v2": 0.50, "v1": 0.60}), force=True)
    assert (forced.verdict, forced.reused) == ("worse", False)


def _decision(version: str, champion: str | None, promote: bool = True) -> GateResult:
    verdict = "better" if promote else "worse"
    return GateResult(verdict=verdict, promote=promote, reason="test", metric="test_cold.after.auc",
                      challenger=version, champion=champion)  # fmt: skip


def test_promotion_happens_once_per_interval(cfg):
    models = RunLayout.of(cfg.run_root).models_root
    p1 = promote_step(cfg, I1, _decision("v1", None))
    p2 = promote_step(cfg, I2, _decision("v2", "v1"))
    assert (p1.champion, p2.champion, p2.previous) == ("v1", "v2", "v1")
    history = registry.read_history(models, cfg.model_name)
    # Rerunning the first interval must not bring v1 back, nor add history.
    again = promote_step(cfg, I1, _decision("v1", None))
    assert again.reused and again.champion == "v1"  # what was decided then
    assert registry.read_champion(models, cfg.model_name).version == "v2"
    assert registry.read_history(models, cfg.model_name) == history


def test_a_crash_after_the_swap_is_not_promoted_twice(cfg):
    models = RunLayout.of(cfg.run_root).models_root
    promote_step(cfg, I1, _decision("v1", None))
    promote_step(cfg, I2, _decision("v2", "v1"))
    RunLayout.of(cfg.run_root).record_path(I1, "promote").unlink()  # as if the record was lost
    history = registry.read_history(models, cfg.model_name)
    p = promote_step(cfg, I1, _decision("v1", None))
    assert p.reused and "earlier attempt" in p.reason
    assert registry.read_champion(models, cfg.model_name).version == "v2"
    assert registry.read_history(models, cfg.model_name) == history


def test_a_kept_champion_is_recorded_without_a_pointer_change(cfg):
    models = RunLayout.of(cfg.run_root).models_root
    promote_step(cfg, I1, _decision("v1", None))
    p = promote_step(cfg, I2, _decision("v2", "v1", promote=False))
    assert (p.promoted, p.champion) == (False, "v1")
    assert len(registry.read_history(models, cfg.model_name)) == 1


@pytest.mark.parametrize(("v3_auc", "champion"), [(0.80, "v3"), (0.65, "v2")])
def test_a_promotion_whose_champion_moved_meanwhile_is_decided_against_the_new_one(
    cfg, v3_auc, champion
):
    """I2's challenger v2 was gated against v1; a manual promotion of v3 came in between: the
    promotion step gates v2 again, under the lock, against v3 (its evaluation on I2's data)."""
    models = RunLayout.of(cfg.run_root).models_root
    _export(cfg, "v3")
    promote_step(cfg, I1, _decision("v1", None))
    g = gate_step(cfg, I2, _evaluation(cfg, I2, {"v2": 0.70, "v1": 0.60}))
    assert (g.verdict, g.champion) == ("better", "v1")
    registry.promote(models, cfg.model_name, "v3", reason="manual")
    _evaluation(cfg, I2, {"v3": v3_auc})  # v3 evaluated on I2's episodes
    p = promote_step(cfg, I2, g)
    assert (p.promoted, p.champion, p.decided_against) == (champion == "v2", champion, "v3")
    assert registry.read_champion(models, cfg.model_name).version == champion
    last = registry.read_history(models, cfg.model_name)[-1]
    if champion == "v2":
        assert (last["from"], last["to"], last["details"]["gate"]["champion"]) == ("v3", "v2", "v3")
    else:
        assert "worse" in p.reason and last["to"] == "v3"  # the manual promotion stays the last


def test_a_moved_champion_that_cannot_be_evaluated_is_a_clear_error(cfg):
    models = RunLayout.of(cfg.run_root).models_root
    _export(cfg, "v3")
    promote_step(cfg, I1, _decision("v1", None))
    g = gate_step(cfg, I2, _evaluation(cfg, I2, {"v2": 0.70, "v1": 0.60}))
    registry.promote(models, cfg.model_name, "v3", reason="manual")
    with pytest.raises(ValueError, match=r"champion is now v3 .* no ETL record"):
        promote_step(cfg, I2, g)  # no evaluation of v3 on I2, no episodes to evaluate it on
    assert registry.read_champion(models, cfg.model_name).version == "v3"
    assert not RunLayout.of(cfg.run_root).record_path(I2, "promote").exists()


def test_a_rollback_step_run_twice_with_its_key_rolls_back_once(cfg):
    """What a retried ``model_ops`` rollback task does: the same run id, the same expectation."""
    models = RunLayout.of(cfg.run_root).models_root
    promote_step(cfg, I1, _decision("v1", None))
    promote_step(cfg, I2, _decision("v2", "v1"))
    first = rollback_step(cfg, "bad CTR", expect="v2", key="model_ops manual__1")
    retry = rollback_step(cfg, "bad CTR", expect="v2", key="model_ops manual__1")
    assert (first.champion, first.previous, first.reused) == ("v1", "v2", False)
    assert (retry.champion, retry.previous, retry.reused) == ("v1", "v2", True)
    assert registry.read_champion(models, cfg.model_name).stack == ["v1"]
    assert [r["action"] for r in registry.read_history(models, cfg.model_name)] == [
        "promote",
        "promote",
        "rollback",
    ]


def test_the_steps_cli_rolls_back_only_over_the_expected_champion(cfg, tmp_path, capsys):
    from components.steps.__main__ import main

    promote_step(cfg, I1, _decision("v1", None))
    promote_step(cfg, I2, _decision("v2", "v1"))
    path = tmp_path / "delivery.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert main(["--config", str(path), "rollback", "--expect", "v1"]) == 2  # v2 serves
    assert "champion is v2, expected v1" in capsys.readouterr().err
    assert main(["--config", str(path), "rollback", "--expect", "v2"]) == 0
    assert json.loads(capsys.readouterr().out)["champion"] == "v1"
