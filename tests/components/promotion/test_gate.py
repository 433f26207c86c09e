"""The gate's decisions, one test per verdict, on hand-written evaluations."""

from __future__ import annotations

import pytest

from components.promotion.gate import Candidate, GatePolicy, Verdict, decide, metric_value

POLICY = GatePolicy("test_cold.after.auc", tolerance=0.001)


def evaluation(auc: float | None, logloss: float = 0.5) -> dict:
    return {"splits": {"test_cold": {"after": {"auc": auc, "logloss": logloss}, "auc_lift": 0.01}}}


def cand(version: str, auc: float | None, data: str | None = "h1", logloss: float = 0.5,
         problems: tuple[str, ...] = ()) -> Candidate:  # fmt: skip
    return Candidate(version, evaluation(auc, logloss), data, problems)


def test_better_worse_equal():
    d = decide(cand("v2", 0.71), cand("v1", 0.70), POLICY)
    assert (d.verdict, d.promote) == (Verdict.BETTER, True)
    assert d.delta == pytest.approx(0.01) and (d.challenger, d.champion) == (0.71, 0.70)
    d = decide(cand("v2", 0.69), cand("v1", 0.70), POLICY)
    assert (d.verdict, d.promote) == (Verdict.WORSE, False) and d.delta == pytest.approx(-0.01)
    d = decide(cand("v2", 0.7005), cand("v1", 0.70), POLICY)
    assert (d.verdict, d.promote) == (Verdict.EQUAL, False)
    eager = GatePolicy("test_cold.after.auc", tolerance=0.001, promote_on_equal=True)
    assert decide(cand("v2", 0.6995), cand("v1", 0.70), eager).promote


def test_lower_is_better_for_logloss():
    policy = GatePolicy("test_cold.after.logloss", tolerance=0.0)
    d = decide(cand("v2", 0.7, logloss=0.40), cand("v1", 0.7, logloss=0.45), policy)
    assert d.verdict == Verdict.BETTER and d.delta == pytest.approx(0.05)
    assert (
        decide(cand("v2", 0.7, logloss=0.5), cand("v1", 0.7, logloss=0.45), policy).verdict
        == Verdict.WORSE
    )


def test_missing_champion_promotes_a_valid_challenger():
    d = decide(cand("v1", 0.7), None, POLICY)
    assert (d.verdict, d.promote) == (Verdict.NO_CHAMPION, True)


def test_already_champion_is_a_no_op():
    d = decide(cand("v3", 0.7), cand("v3", 0.7), POLICY)
    assert (d.verdict, d.promote) == (Verdict.ALREADY_CHAMPION, False)


@pytest.mark.parametrize(
    "challenger",
    [
        cand("v2", 0.9, problems=("tables/emb.npy does not match its checksum",)),
        cand("v2", None),  # the metric is absent
        cand("v2", float("nan")),  # e.g. AUC of a split with one class
        Candidate("v2", None, None, ()),  # no evaluation at all
    ],
)
def test_failed_validation_never_promotes(challenger):
    for champion in (None, cand("v1", 0.5)):
        d = decide(challenger, champion, POLICY)
        assert (d.verdict, d.promote) == (Verdict.FAILED_VALIDATION, False)
        assert "challenger v2 failed validation" in d.reason


def test_a_champion_without_the_metric_is_not_compared():
    d = decide(cand("v2", 0.7), cand("v1", None), POLICY)
    assert (d.verdict, d.promote) == (Verdict.FAILED_VALIDATION, False)
    assert "champion v1 cannot be compared" in d.reason and "--evaluate-on" in d.reason


def test_metrics_of_different_data_are_refused():
    d = decide(cand("v2", 0.9, data="h2"), cand("v1", 0.5, data="h1"), POLICY)
    assert (d.verdict, d.promote) == (Verdict.DIFFERENT_DATA, False)
    assert "--evaluate-on" in d.reason
    assert decide(cand("v2", 0.9, data=None), cand("v1", 0.5, data=None), POLICY).verdict == (
        Verdict.DIFFERENT_DATA)  # fmt: skip


def test_metric_names_and_policy_validation():
    e = evaluation(0.7)
    assert metric_value(e, "test_cold.after.auc") == 0.7
    assert metric_value(e, "test_cold.auc_lift") == 0.01
    assert metric_value(e, "valid.after.auc") is None
    for bad in ("auc", "test_cold.middle.auc", "a.b.c.d"):
        with pytest.raises(ValueError, match="--metric"):
            GatePolicy(bad)
    with pytest.raises(ValueError, match="--tolerance"):
        GatePolicy(tolerance=-1)
    assert decide(cand("v2", 0.7), None, POLICY).to_dict()["verdict"] == "no_champion"
