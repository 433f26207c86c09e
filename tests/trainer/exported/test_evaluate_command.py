"""``metarec evaluate``: a checkpoint and its export give the same metrics for the same adaptation
(and the episode level equals the run's own eval.json); task-level adaptation and the
calibration-only baseline equal direct, per-task references; the command writes its JSON and
nothing else, runs on a folder without a train split, and refuses bad inputs clearly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from components.cli import main
from tests.trainer.exported.runs import run_eval
from tests.trainer.run_helpers import FEATURES, write_episodes
from trainer.data.reader import EpisodeReader
from trainer.evaluation import Settings, evaluate_model, load_model
from trainer.exported import export_checkpoint
from trainer.metrics import split_metrics
from trainer.sparse import SparseOut

# the run evaluated its first 40 test_cold episodes in batches of 8, adapting 2 steps of lr 0.05
SETTINGS = Settings(steps=(2,), lrs=(0.05,), scopes=("dense",), tune_split="valid",
                    batch_episodes=8, max_episodes=40)  # fmt: skip


def _row(result: dict, row: str, level: str) -> dict:
    return next(r for r in result["rows"] if (r["row"], r["level"]) == (row, level))["metrics"]


@pytest.fixture(scope="module")
def both(single_run: Path, episodes: Path, tmp_path_factory) -> dict[str, dict]:
    export = export_checkpoint(single_run, tmp_path_factory.mktemp("eval-models")).path
    return {
        source: evaluate_model(
            load_model(path, str(episodes)), str(episodes), "test_cold", SETTINGS
        )
        for source, path in (("checkpoint", single_run), ("export", export))
    }


def test_checkpoint_and_export_give_the_same_metrics(both, single_run: Path) -> None:
    ck, ex = both["checkpoint"], both["export"]
    assert (ck["model"]["source"], ex["model"]["source"]) == ("checkpoint", "export")
    assert [(r["row"], r["level"], r["setting"]) for r in ck["rows"]] == [
        (r["row"], r["level"], r["setting"]) for r in ex["rows"]
    ]
    assert len(ck["rows"]) == 1 + 2 * 4  # no adaptation + (calibration, training, grid, tuned) x 2
    for a, b in zip(ck["rows"], ex["rows"], strict=True):
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6, nan_ok=True), a["row"]
    # the episode level IS the trainer's evaluation: the run's eval.json, same setting
    want = run_eval(single_run)["test_cold"]
    assert ck["data"]["episodes"] == want["episodes"] == 40
    for row, when in (("no adaptation", "before"), ("grid", "after")):
        got = _row(ck, row, "-" if row == "no adaptation" else "episode")
        for key, value in want[when].items():
            assert got[key] == pytest.approx(value, abs=1e-6, nan_ok=True), (row, key)
    assert ck["tuning"]["task"]["chosen"] == {"steps": 2, "lr": 0.05, "scope": "dense"}


def _per_episode(model, root: Path) -> list[dict]:
    """The first 40 test_cold episodes, one by one: pooled support / query rows and labels."""
    out = []
    with EpisodeReader(str(root), "test_cold", 8, shuffle=False, epochs=1, prefetch=0) as reader:
        for batch in reader:
            sparse = model.embeddings.read(batch)
            K = batch.k_support
            for t in range(batch.num_episodes):
                if not batch.episode_mask[t] or len(out) == 40:
                    continue
                ns, nq = int(batch.n_support[t]), int(batch.n_query[t])
                s, q = slice(0, ns), slice(K, K + nq)
                out.append({
                    "task": int(batch.task_ids[t]), "position": len(out),
                    "s_sparse": sparse.apply(lambda x, t=t, s=s: x[t, s]),
                    "q_sparse": sparse.apply(lambda x, t=t, q=q: x[t, q]),
                    "s_dense": batch.dense[t, s], "q_dense": batch.dense[t, q],
                    "s_y": batch.click[t, s], "q_y": batch.click[t, q],
                })  # fmt: skip
    return out


def _cat(parts: list[SparseOut]) -> SparseOut:
    dicts = [p.as_dict() for p in parts]
    return SparseOut.from_dict({k: torch.cat([d[k] for d in dicts]) for k in dicts[0]})


def test_task_level_adaptation_equals_a_per_task_sgd_reference(both, single_run, episodes) -> None:
    """Each task: explicit SGD (2 steps, lr 0.05) on a copy of every dense parameter over the
    support samples of all its episodes, then its query samples. No vmap, no low-rank trick."""
    model = load_model(single_run, str(episodes)).model
    eps = _per_episode(model, episodes)
    labels, logits, tasks, positions = [], [], [], []
    for task in dict.fromkeys(e["task"] for e in eps):
        mine = [e for e in eps if e["task"] == task]
        s_args = (_cat([e["s_sparse"] for e in mine]), torch.cat([e["s_dense"] for e in mine]))
        params = {k: v.detach().clone() for k, v in model.dense_half.named_parameters()}
        for _ in range(2):
            params = {k: v.requires_grad_() for k, v in params.items()}
            loss = F.binary_cross_entropy_with_logits(
                functional_call(model.dense_half, params, s_args),
                torch.cat([e["s_y"] for e in mine]),
            )
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {
                k: (v - 0.05 * g).detach() for (k, v), g in zip(params.items(), grads, strict=True)
            }
        with torch.no_grad():
            for e in mine:
                logits.append(
                    functional_call(model.dense_half, params, (e["q_sparse"], e["q_dense"]))
                )
                labels.append(e["q_y"])
                tasks.append(torch.full_like(e["q_y"], task, dtype=torch.int64))
                positions.append(torch.full_like(e["q_y"], e["position"], dtype=torch.int64))
    want = split_metrics(*(torch.cat(v).numpy() for v in (labels, logits, tasks, positions)))
    got = _row(both["checkpoint"], "grid", "task")
    for key in ("samples", "positives", "tasks", "tasks_skipped"):
        assert got[key] == want[key], key
    for key in ("auc", "gauc", "episode_gauc"):  # rank statistics: a near-tie may flip
        assert got[key] == pytest.approx(want[key], abs=1e-4), key
    for key in ("logloss", "ne", "calibration", "task_calibration_error"):
        assert got[key] == pytest.approx(want[key], abs=1e-5), key
    # tasks with several episodes make the two levels differ
    assert got["auc"] != pytest.approx(_row(both["checkpoint"], "grid", "episode")["auc"], abs=1e-6)


def test_calibration_only_baseline_equals_the_documented_formula(both, single_run, episodes):
    model = load_model(single_run, str(episodes)).model
    eps = _per_episode(model, episodes)
    rate = sum(float(e["s_y"].sum()) for e in eps) / sum(len(e["s_y"]) for e in eps)
    for level in ("episode", "task"):
        groups: dict[int, list[dict]] = {}
        for e in eps:
            groups.setdefault(e["task"] if level == "task" else e["position"], []).append(e)
        y, z, tasks, positions = [], [], [], []
        for members in groups.values():
            k = sum(float(e["s_y"].sum()) for e in members)
            n = sum(len(e["s_y"]) for e in members)
            shrunk = (k + 10.0 * rate) / (n + 10.0)
            shift = math.log(shrunk / (1 - shrunk)) - math.log(rate / (1 - rate))
            for e in members:
                with torch.no_grad():
                    base = model(e["q_sparse"], e["q_dense"]).double()
                z.append(base + shift)
                y.append(e["q_y"])
                tasks.append(torch.full_like(e["q_y"], e["task"], dtype=torch.int64))
                positions.append(torch.full_like(e["q_y"], e["position"], dtype=torch.int64))
        want = split_metrics(*(torch.cat(v).numpy() for v in (y, z, tasks, positions)))
        got = _row(both["checkpoint"], "calibration only", level)
        assert got == pytest.approx(want, abs=1e-9, nan_ok=True), level
    none = _row(both["checkpoint"], "no adaptation", "-")
    # one shift per task: within-task ranking (GAUC) is untouched at the task level
    assert _row(both["checkpoint"], "calibration only", "task")["gauc"] == pytest.approx(
        none["gauc"]
    )


def test_command_writes_json_only_and_runs_without_a_train_split(single_run, tmp_path, capsys):
    data = write_episodes(tmp_path / "no-train", splits=("valid", "test_cold"))
    before = {p: p.stat().st_mtime_ns for p in single_run.rglob("*")}
    out = tmp_path / "result.json"
    code = main(["evaluate", str(single_run), "--data", str(data), "--steps", "0,1",
                 "--lr", "0.1", "--level", "task", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    result = json.loads(out.read_text())
    assert [r["row"] for r in result["rows"]] == [
        "no adaptation",
        "calibration only",
        "training setting",
        "grid",
    ]
    assert "no valid_cold split" in result["tuning"]["task"]["skipped"]
    for r in result["rows"]:
        assert f"{r['metrics']['auc']:.4f}" in printed and r["row"] in printed
    assert {p: p.stat().st_mtime_ns for p in single_run.rglob("*")} == before  # wrote nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-train", "result.json"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing split", "has no episodes in split 'train'"),
        ("spec mismatch", "another feature spec"),
        ("not a model", "is neither an exported model"),
        ("tune on the evaluated split", "tuning on the data it reports is no baseline"),
    ],
)
def test_clear_errors(case, message, single_run, tmp_path, capsys) -> None:
    data = write_episodes(tmp_path / "data", splits=("valid", "test_cold"), num_tasks=30)
    args = [str(single_run), "--data", str(data), "--steps", "1", "--lr", "0.1"]
    if case == "missing split":
        args += ["--split", "train"]
    elif case == "spec mismatch":
        other = [(name, buckets + 1, slots) for name, buckets, slots in FEATURES]
        args[2] = str(write_episodes(tmp_path / "other", features=other, num_tasks=12))
    elif case == "not a model":
        (tmp_path / "empty").mkdir()
        args[0] = str(tmp_path / "empty")
    else:
        args += ["--tune-split", "test_cold"]
    assert main(["evaluate", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_sharded_checkpoint_equals_its_export(sharded_run, episodes, tmp_path) -> None:
    """A 2-rank checkpoint (one shard per rank, rows merged on load) and its export."""
    settings = Settings(steps=(1,), lrs=(0.1,), batch_episodes=8, max_episodes=40)
    export = export_checkpoint(sharded_run, tmp_path / "models").path
    ck, ex = (
        evaluate_model(load_model(path, str(episodes)), str(episodes), "test_cold", settings)
        for path in (sharded_run, export)
    )
    for a, b in zip(ck["rows"], ex["rows"], strict=True):
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6, nan_ok=True), a["row"]
    want = run_eval(sharded_run)["test_cold"]["before"]  # the 2-rank run's own evaluation
    got = _row(ck, "no adaptation", "-")
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-5, nan_ok=True), key
