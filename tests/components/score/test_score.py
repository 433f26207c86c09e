"""``metarec score`` end to end: accounting (rows read = scored + rejected, the ETL's reason codes),
adaptation per task from support events, batch-size independence, idempotent reruns, the
champion pointer, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from components.cli import main
from components.promotion import registry
from components.score.run import score_events
from tests.components.etl import rawdata

ROW_LEVEL = ("malformed_record", "missing:", "bad_type:", "bad_value:", "duplicate_event_id")


def _score(model: Path, input_: Path, out: Path, *extra: str) -> dict:
    code = main(["score", "--model", str(model), "--input", str(input_), "--out", str(out), *extra])
    assert code == 0
    return json.loads(
        out.with_name(out.name.removesuffix(".parquet") + ".summary.json").read_text()
    )


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet"])
def test_every_row_is_scored_or_rejected_with_the_etls_reason(fmt, raw_model, tmp_path):
    expected = rawdata.corrupted_interval(tmp_path / "raw", fmt)
    out = tmp_path / "scores" / "predictions.parquet"
    summary = _score(raw_model, tmp_path / "raw", out)
    rows_read = expected.pop("_rows_read")
    # the ETL's row-level reasons; its interval rules (time window, small tasks) do not apply here
    row_level = {k: v for k, v in expected.items() if k.startswith(ROW_LEVEL)}
    assert summary["rows_read"] == rows_read
    assert summary["reasons"] == row_level
    assert summary["rows_scored"] + summary["rows_rejected"] == rows_read
    predictions = pq.read_table(out)
    rejected = pq.read_table(tmp_path / "scores" / "predictions.rejected.parquet")
    assert predictions.num_rows == summary["rows_scored"]
    assert rejected.num_rows == summary["rows_rejected"]
    ids = predictions.column("event_id").to_pylist()
    assert len(set(ids)) == len(ids)
    reasons = rejected.column("reason").to_pylist()
    assert {r: reasons.count(r) for r in set(reasons)} == row_level
    scores, logits = predictions.column("score").to_numpy(), predictions.column("logit").to_numpy()
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits.astype(np.float64))), rtol=1e-6)
    assert not predictions.column("adapted").to_numpy().any()
    assert summary["metrics"]["labelled_rows"] == summary["rows_scored"]
    if fmt == "jsonl":
        lines = (tmp_path / "raw" / "dt=2026-11-01" / "hr=01" / "part-00000.jsonl").read_text()
        bad = [
            r
            for r in rejected.to_pylist()
            if r["source_file"].startswith("dt=2026-11-01/hr=01/part-00000")
        ]
        assert all(lines.splitlines()[r["line"] - 1] == r["raw"] for r in bad)


def _traffic(root: Path, campaigns: list[str], hours: range, per_hour: int, start: int) -> None:
    for h in hours:
        rows = [rawdata.record(start + h * 1000 + j, campaign=campaigns[j % len(campaigns)], hour=h,
                               second=j * 3600 / per_hour, user_id=f"u-{j % 11}")
                for j in range(per_hour)]  # fmt: skip
        rawdata.write_jsonl(root, h, rows)


def test_adapting_to_support_events(raw_model, tmp_path):
    """Events of campaigns with support are adapted (and scored differently), the others not;
    the newest K support events of a task are what counts; batching changes nothing."""
    _traffic(tmp_path / "support", ["c-0", "c-1"], range(0, 2), 24, 0)  # 24 support rows each
    _traffic(tmp_path / "query", ["c-0", "c-1", "c-new"], range(2, 3), 30, 500_000)
    out = tmp_path / "adapted.parquet"
    summary = _score(raw_model, tmp_path / "query", out, "--adapt-on", str(tmp_path / "support"))
    t = pq.read_table(out).to_pandas()
    assert summary["support"]["tasks"] == 2 and summary["support"]["rows_read"] == 48
    assert summary["support"]["rows_used"] == 2 * 4  # K = 4 newest per task
    assert summary["tasks_adapted"] == 2
    assert t.groupby("task_key")["adapted"].all().to_dict() == {
        "c-0": True,
        "c-1": True,
        "c-new": False,
    }
    plain = pq.read_table(
        _score_path(raw_model, tmp_path / "query", tmp_path / "plain.parquet")
    ).to_pandas()
    assert (t["event_id"] == plain["event_id"]).all()
    changed = np.abs(t["logit"] - plain["logit"]) > 1e-6
    assert changed[t["adapted"]].all() and not changed[~t["adapted"]].any()

    # only the newest 4 support events per campaign: the same scores
    newest = [json.loads(x) for x in (tmp_path / "support" / "dt=2026-11-01" / "hr=01" /
                                      "part-00000.jsonl").read_text().splitlines()][-8:]  # fmt: skip
    rawdata.write_jsonl(tmp_path / "newest", 1, newest)
    again = score_events(raw_model, str(tmp_path / "query"), tmp_path / "newest.parquet",
                         adapt_on=str(tmp_path / "newest"), batch_rows=7)  # fmt: skip
    other = pq.read_table(tmp_path / "newest.parquet").to_pandas()
    assert again.rows_adapted == int(t["adapted"].sum())
    np.testing.assert_allclose(other["logit"], t["logit"], rtol=1e-6, atol=1e-6)


def _score_path(model: Path, input_: Path, out: Path) -> Path:
    _score(model, input_, out)
    return out


def test_rerun_replaces_outputs_whole(raw_model, tmp_path):
    _traffic(tmp_path / "raw", ["c-0", "c-1"], range(0, 1), 20, 0)
    out = tmp_path / "p.parquet"
    first = pq.read_table(_score_path(raw_model, tmp_path / "raw", out))
    second = pq.read_table(_score_path(raw_model, tmp_path / "raw", out))
    assert first.equals(second)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "p.parquet", "p.rejected.parquet", "p.summary.json"]  # fmt: skip


def test_the_champion_pointer_names_the_model(raw_model, tmp_path):
    _traffic(tmp_path / "raw", ["c-0"], range(0, 1), 10, 0)
    root, name = raw_model.parent.parent, raw_model.parent.name
    registry.promote(root, name, raw_model.name, reason="test")
    summary = _score(root / name, tmp_path / "raw", tmp_path / "p.parquet")
    assert summary["model"] == str(raw_model) and summary["rows_scored"] == 10


def test_user_errors_are_one_line(raw_model, tmp_path, capsys):
    _traffic(tmp_path / "raw", ["c-0"], range(0, 1), 5, 0)
    cases = [
        (["--input", str(tmp_path / "nope")], "does not exist"),
        (["--input", str(tmp_path / "raw"), "--task-key", "user_gender"], "unknown task key"),
        (["--input", str(tmp_path / "raw"), "--batch-rows", "0"], "--batch-rows"),
    ]
    for args, message in cases:
        code = main(
            ["score", "--model", str(raw_model), "--out", str(tmp_path / "x.parquet"), *args]
        )
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_rejects_equal_the_generators_ground_truth(fmt, raw_model, tmp_path):
    """Generated traffic with every corruption kind: each corrupted row gets the reason the ETL
    must give it (the generator's exact counts), except two kinds that are scored: times outside
    the window (serving has no interval) and a missing click (traffic to score has no label)."""
    from components.generate import GeneratorConfig, generate

    gen = generate(GeneratorConfig(out=str(tmp_path / "raw"), rows=3000, hours=3, seed=11,
                                   format=fmt, corrupt=0.15, num_users=500, num_campaigns=40,
                                   num_advertisers=8))  # fmt: skip
    summary = _score(raw_model, tmp_path / "raw", tmp_path / "p.parquet", "--batch-rows", "500")
    expected = {k: v for k, v in gen.expected_reasons.items()
                if k.startswith(ROW_LEVEL) and k != "missing:click"}  # fmt: skip
    assert summary["rows_read"] == gen.rows_written == 3000
    assert summary["reasons"] == expected and sum(expected.values()) > 100
    scored_anyway = [
        gen.expected_reasons.get(k, 0) for k in ("event_time_out_of_range", "missing:click")
    ]
    assert summary["rows_scored"] == 3000 - sum(expected.values()) and scored_anyway[0] > 0
    unlabelled = pq.read_table(tmp_path / "p.parquet").column("click").null_count
    labelled = summary["metrics"]["labelled_rows"]
    assert unlabelled == scored_anyway[1] == summary["rows_scored"] - labelled


def test_hostile_events_and_a_damaged_file_do_not_stop_a_run(raw_model, tmp_path):
    """Issue 18 item 5: a lone surrogate in an id, 10k-deep nesting, two objects on a line and a
    truncated .jsonl.gz are each rejected with their reason (the file named) and the run goes
    on; rows read = scored + rejected."""
    import gzip

    _traffic(tmp_path / "raw", ["c-0"], range(0, 2), 10, 0)
    good = json.dumps(rawdata.record(5000, hour=0, campaign="c-0"))
    hostile = [good.replace('"e-', '"\\ud800e-', 1), good[:-1] + ', "x": ' + "[" * 10_000 + "}",
               good + good, good[:-1] + ', "n": ' + "9" * 1000 + "}"]  # fmt: skip
    folder = tmp_path / "raw" / "dt=2026-11-01" / "hr=00"
    (folder / "part-00001.jsonl").write_text("\n".join(hostile) + "\n")
    whole = gzip.compress("".join(good + "\n" for _ in range(30_000)).encode(), compresslevel=1)
    (folder / "part-00002.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    summary = _score(raw_model, tmp_path / "raw", tmp_path / "p.parquet")
    reasons = summary["reasons"]
    assert {k: reasons[k] for k in ("lone_surrogate", "too_deep", "multiple_objects",
                                    "number_too_long", "damaged_file")} == {
        "lone_surrogate": 1, "too_deep": 1, "multiple_objects": 1, "number_too_long": 1,
        "damaged_file": 1}  # fmt: skip
    assert summary["rows_read"] == summary["rows_scored"] + summary["rows_rejected"]
    rejected = pq.read_table(tmp_path / "p.rejected.parquet").to_pylist()
    damaged = [r for r in rejected if r["reason"] == "damaged_file"]
    assert damaged[0]["source_file"] == "dt=2026-11-01/hr=00/part-00002.jsonl.gz"
    assert "Truncated" in damaged[0]["raw"] or "unreadable" in damaged[0]["raw"]
    assert summary["rows_scored"] >= 20  # the 20 good events of hr=00 and hr=01 at least
