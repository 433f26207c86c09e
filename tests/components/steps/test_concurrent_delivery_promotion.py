"""The delivery step's promotion decides under the model's lock (issue 18 item 7, the DAG's and
the pipeline's path): two promotion steps at once, each gated against v1 before either ran, end
with the better challenger as champion, and every swap was compared with the champion it replaced;
a history that cannot be appended after the swap is a warning in the step's record (item 8).

Real processes (each calling ``promote_step``) on small real exports; the evaluations are written
as the evaluation step writes them, each version on each interval's episodes (same data hash).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from components.promotion import registry
from components.steps.config import DeliveryConfig
from components.steps.delivery import gate_step, promote_step
from components.steps.layout import Interval, RunLayout
from tests.components.steps.test_gate_and_promotion_steps import (
    I1,
    I2,
    _decision,
    _evaluation,
    _export,
)
from tests.reliability.test_promotion_race import _lock_waiters
from tests.reliability.unprivileged import REPO, python, run_as_user
from trainer.exported.artifact import LOCK_FILE, locked

I3 = Interval.parse("2026-11-01T02/1h")
AUC = {"v1": 0.60, "v2": 0.80, "v3": 0.70}  # v2 and v3 both beat v1; v2 beats v3
PROMOTE = """
import json, sys
from components.steps.config import DeliveryConfig
from components.steps.delivery import GateResult, promote_step
from components.steps.layout import Interval
cfg = DeliveryConfig.from_dict(json.loads(open(sys.argv[1]).read()))
gate = GateResult(**json.loads(sys.argv[3]))
print(json.dumps(promote_step(cfg, Interval.parse(sys.argv[2]), gate).to_dict()))
"""


@pytest.fixture()
def cfg(tmp_path) -> DeliveryConfig:
    """v1 champion; v2 (I2's challenger) and v3 (I3's) gated against it, both "better"."""
    c = DeliveryConfig.from_dict({"run_root": str(tmp_path / "run"), "gate": {"tolerance": 0.01}})
    for v in AUC:
        _export(c, v)
    promote_step(c, I1, _decision("v1", None))
    (tmp_path / "delivery.json").write_text(json.dumps(c.to_dict()))
    return c


def _gate(cfg: DeliveryConfig, interval, challenger: str) -> dict:
    """The evaluation (every version on this interval: what the evaluation step would write for
    whichever champion it meets) and the gate step's decision against v1."""
    for version, auc in AUC.items():
        _evaluation(cfg, interval, {version: auc})
    g = gate_step(
        cfg, interval, _evaluation(cfg, interval, {challenger: AUC[challenger], "v1": 0.6})
    )
    assert (g.verdict, g.champion) == ("better", "v1")
    return g.to_dict()


@pytest.mark.multiprocess  # two promotion processes racing for the lock
def test_two_concurrent_promotion_steps_leave_the_better_one_champion(cfg, tmp_path) -> None:
    gates = {"v2": (I2, _gate(cfg, I2, "v2")), "v3": (I3, _gate(cfg, I3, "v3"))}
    mdir = RunLayout.of(cfg.run_root).models_root / cfg.model_name
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with locked(mdir):  # both steps start, and block on the lock, before either can promote
        procs = {v: subprocess.Popen(python("-c", PROMOTE, str(tmp_path / "delivery.json"),
                                            i.start.strftime("%Y-%m-%dT%H") + "/1h", json.dumps(g)),
                                     cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
                 for v, (i, g) in gates.items()}  # fmt: skip
        deadline = time.monotonic() + 60
        while _lock_waiters(mdir / LOCK_FILE) != {p.pid for p in procs.values()}:
            assert time.monotonic() < deadline, "the steps never waited on the model's lock"
            time.sleep(0.05)
    out = {v: json.loads(p.communicate(timeout=60)[0]) for v, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values())

    models = RunLayout.of(cfg.run_root).models_root
    assert registry.read_champion(models, cfg.model_name).version == "v2"
    promotions = registry.read_history(models, cfg.model_name)[1:]
    for r in promotions:  # each swap compared with the champion it replaced
        assert r["details"]["gate"]["champion"] == r["from"], r
    assert promotions[-1]["to"] == "v2" and out["v2"]["promoted"]
    if out["v3"]["promoted"]:  # v3 went first: v2 then beat v3, not v1
        assert [(r["from"], r["to"]) for r in promotions] == [("v1", "v3"), ("v3", "v2")]
        assert (out["v3"]["decided_against"], out["v2"]["decided_against"]) == ("v1", "v3")
    else:  # v2 went first: v3 was gated again against v2, and lost
        assert [(r["from"], r["to"]) for r in promotions] == [("v1", "v2")]
        assert (out["v2"]["decided_against"], out["v3"]["decided_against"]) == ("v1", "v2")
        assert out["v3"]["reason"].startswith("gate: ") and "worse" in out["v3"]["reason"]


def test_a_history_that_cannot_be_appended_is_a_warning_in_the_step_record(cfg, tmp_path) -> None:
    g = _gate(cfg, I2, "v2")
    models = RunLayout.of(cfg.run_root).models_root
    history = models / cfg.model_name / registry.HISTORY
    history.chmod(0o444)
    try:
        proc = run_as_user(python("-c", PROMOTE, str(tmp_path / "delivery.json"),
                                  "2026-11-01T01/1h", json.dumps(g)))  # fmt: skip
    finally:
        history.chmod(0o644)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["promoted"], out["champion"], out["previous"]) == (True, "v2", "v1")
    assert out["warning"].startswith(
        f"promoted v2; history not recorded: cannot append to {history}"
    )
    record = json.loads(RunLayout.of(cfg.run_root).record_path(I2, "promote").read_text())
    assert record["result"]["warning"] == out["warning"]
    assert registry.read_champion(models, cfg.model_name).version == "v2"
    # A retry finds the step's record: it does not promote again, and keeps the warning.
    again = promote_step(cfg, I2, gate_step(cfg, I2, _evaluation(cfg, I2, {"v2": 0.8, "v1": 0.6})))
    assert again.reused and again.warning == out["warning"]
    assert [r["to"] for r in registry.read_history(models, cfg.model_name)] == ["v1", "v2"]
