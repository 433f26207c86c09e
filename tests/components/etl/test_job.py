"""End to end on tiny corrupted intervals: accounting, episode invariants, idempotent reruns."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from components.etl.config import EtlConfig
from tests.components.etl import rawdata

pytestmark = pytest.mark.spark


def make_config(raw: Path, out: Path, **over) -> EtlConfig:
    base = dict(
        input=str(raw), output=str(out), start="2026-11-01T00", end="2026-11-01T03",
        k_support=rawdata.ETL_K, q_query=rawdata.ETL_Q, min_support=2, min_query=2,
        num_buckets=4, cold_fraction=0.3, valid_fraction=0.2, shuffle_partitions=4,
    )  # fmt: skip
    base.update(over)
    return EtlConfig(**base)


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def jsonl_run(spark, tmp_path_factory):
    from components.etl import run_etl

    raw = tmp_path_factory.mktemp("raw-jsonl")
    expected = rawdata.corrupted_interval(raw, "jsonl")
    out = tmp_path_factory.mktemp("out-jsonl")
    config = make_config(raw, out)
    result = run_etl(config, spark)
    return expected, result, config, snapshot(Path(result.output))


@pytest.fixture(scope="module")
def parquet_run(spark, tmp_path_factory):
    from components.etl import run_etl

    raw = tmp_path_factory.mktemp("raw-parquet")
    expected = rawdata.corrupted_interval(raw, "parquet")
    out = tmp_path_factory.mktemp("out-parquet")
    config = make_config(raw, out)
    return expected, run_etl(config, spark), config


CLEAN_ROWS = 3 * rawdata.CLEAN_PER_HOUR


@pytest.mark.parametrize("run", ["jsonl_run", "parquet_run"])
def test_accounting_is_exact(run, request):
    expected, result, *_ = request.getfixturevalue(run)
    rows_read = expected.pop("_rows_read")
    assert result.rows_read == rows_read
    assert result.reasons == expected
    assert result.rows_kept == CLEAN_ROWS
    assert result.rows_read == result.rows_kept + result.rows_quarantined
    acc = result.manifest.accounting
    assert (acc["rows_read"], acc["rows_kept"], acc["rows_quarantined"]) == (
        result.rows_read, result.rows_kept, result.rows_quarantined,
    )  # fmt: skip
    assert acc["per_reason"] == expected
    expected["_rows_read"] = rows_read  # the fixture is shared


def test_blank_lines_and_truncated_last_line(jsonl_run):
    import pyarrow.parquet as pq

    _, result, *_ = jsonl_run
    assert result.manifest.accounting["blank_lines_skipped"] == 2
    q = pq.read_table(Path(result.output) / "_quarantine").to_pylist()
    truncated = [r for r in q if r["raw"] == '{"event_id": "e-trunc", "ev']
    assert truncated == [{"reason": "malformed_record", "event_id": None,
                          "source_file": "dt=2026-11-01/hr=02/part-00001.jsonl",
                          "raw": '{"event_id": "e-trunc", "ev'}]  # fmt: skip
    assert any(r["raw"] == "this is not json" for r in q)
    yes = [r for r in q if r["reason"] == "bad_type:click"]
    assert len(yes) == 1 and json.loads(yes[0]["raw"])["click"] == "yes"  # the original line
    reasons = json.loads((Path(result.output) / "_quarantine" / "_reasons.json").read_text())
    assert reasons == result.reasons


def test_parquet_quarantine_renders_rows(parquet_run):
    import pyarrow.parquet as pq

    _, result, _ = parquet_run
    q = pq.read_table(Path(result.output) / "_quarantine").to_pylist()
    nan = next(r for r in q if r["reason"] == "bad_value:bid_price")
    assert json.loads(nan["raw"].replace("NaN", "null"))["event_id"] == nan["event_id"]
    assert {r["source_file"] for r in q} <= {
        f"dt=2026-11-01/hr=0{h}/part-00000.parquet" for h in range(3)
    }


def test_big_list_columns_are_written_without_a_dictionary(parquet_run):
    import pyarrow.parquet as pq

    from components.etl.load import PLAIN_LISTS

    _, result, _ = parquet_run
    plain = {f"{name}.list.element" for name in PLAIN_LISTS}
    with_dictionary = set()
    for f in result.manifest.files:
        meta = pq.ParquetFile(Path(result.output) / f["path"]).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                column = meta.row_group(g).column(c)
                if any("DICTIONARY" in e for e in column.encodings):
                    with_dictionary.add(column.path_in_schema)
    assert not with_dictionary & plain
    assert {"task_key", "click.list.element"} <= with_dictionary  # the others keep theirs


@pytest.mark.parametrize("run", ["jsonl_run", "parquet_run"])
def test_episode_invariants(run, request):
    _, result, config, *_ = request.getfixturevalue(run)
    check_episode_output(Path(result.output), config, result)


def check_episode_output(root: Path, config: EtlConfig, result) -> None:
    """Read every episode file back with pyarrow and check the contract's promises."""
    import pyarrow.parquet as pq

    from components.etl.config import epoch_ms
    from components.etl.splits import task_bucket
    from trainer.data import hashing
    from trainer.data.contract import EPISODE_COLUMNS, load_manifest

    manifest = load_manifest(str(root))
    assert manifest.to_json() == result.manifest.to_json()
    K, Q, W, Dn = config.k_support, config.q_query, manifest.sparse_width, manifest.dense_width
    assert W == 22 and Dn == 3
    seen, splits_of_task, samples, kept_times = set(), {}, 0, []
    cutoff = epoch_ms(config.warm_cutoff)
    for entry in manifest.files:
        path = root / entry["path"]
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
        meta = pq.ParquetFile(path).metadata
        assert (meta.num_rows, meta.num_row_groups) == (entry["rows"], entry["row_groups"])
        t = pq.read_table(path)
        assert tuple(t.column_names) == EPISODE_COLUMNS
        rows = t.to_pylist()
        assert [(r["task_key"], r["episode"]) for r in rows] == sorted(
            (r["task_key"], r["episode"]) for r in rows
        )
        for r in rows:
            key = (r["task_key"], r["episode"])
            assert key not in seen
            seen.add(key)
            ns, nq = r["n_support"], r["n_query"]
            assert config.min_support <= ns <= K and config.min_query <= nq <= Q
            assert len(r["sparse"]) == (K + Q) * W and len(r["dense"]) == (K + Q) * Dn
            assert len(r["click"]) == len(r["conversion"]) == len(r["event_time_ms"]) == K + Q
            times = r["event_time_ms"]
            support, query = times[:ns], times[K : K + nq]
            assert support == sorted(support) and query == sorted(query)
            assert max(support) < min(query), "support must be strictly older than query"
            for lo, hi in ((ns, K), (K + nq, K + Q)):  # padding is zeros everywhere
                assert times[lo:hi] == [0] * (hi - lo)
                assert r["sparse"][lo * W : hi * W] == [0] * ((hi - lo) * W)
                assert r["dense"][lo * Dn : hi * Dn] == [0.0] * ((hi - lo) * Dn)
                assert r["click"][lo:hi] == [0] * (hi - lo) and r["conversion"][lo:hi] == [0] * (
                    hi - lo
                )
            for j in [*range(ns), *range(K, K + nq)]:
                ids = r["sparse"][j * W : (j + 1) * W]
                for f in manifest.features:
                    for s in range(f.slots):
                        assert 0 <= ids[f.offset + s] < f.buckets
                assert all(ids[f.offset] > 0 for f in manifest.features if f.kind == "categorical")
                assert r["click"][j] in (0, 1) and r["conversion"][j] in (-1, 0, 1)
            assert r["task_id"] == hashing.signed_hash("task", r["task_key"])
            assert entry["bucket"] == task_bucket(r["task_key"], config.num_buckets)
            split = entry["split"]
            cold = hashing.unit_interval("split", r["task_key"]) < config.cold_fraction
            assert (split == "test_cold") == cold
            if not cold:
                assert (split == "valid") == (query[0] >= cutoff)
            splits_of_task.setdefault(r["task_key"], set()).add(split)
            samples += ns + nq
            kept_times += support + query
    for task, splits in splits_of_task.items():  # no task in both cold and warm evaluation
        assert not ("test_cold" in splits and splits & {"train", "valid"}), task
    assert samples == result.rows_kept == sum(s["samples"] for s in manifest.splits.values())
    assert len(seen) == sum(s["episodes"] for s in manifest.splits.values())
    assert manifest.time_range["min_event_time_ms"] == str(min(kept_times))
    lines = "".join(
        f"{e['path']}\t{e['data_sha256']}\n"
        for e in sorted(manifest.files, key=lambda e: e["path"])
    )
    assert manifest.content_hash == hashlib.sha256(lines.encode()).hexdigest()


def test_rerun_is_byte_identical_and_leaves_other_intervals(spark, jsonl_run):
    from components.etl import run_etl

    _, result, config, before = jsonl_run
    out = Path(config.output)
    rawdata.hours_of(Path(config.input), range(3, 4), rows_per_hour=40)  # another interval's data
    other = run_etl(
        make_config(Path(config.input), out, start="2026-11-01T03", end="2026-11-01T04"), spark
    )
    other_before = snapshot(Path(other.output))
    again = run_etl(config, spark)
    assert again.output == result.output
    assert snapshot(Path(again.output)) == before  # data, quarantine AND manifest
    assert snapshot(Path(other.output)) == other_before
    names = {p.name for p in out.iterdir()} - {"_staging", "_trash"}
    assert names == {"interval=20261101T00-20261101T03", "interval=20261101T03-20261101T04"}
    assert not any((out / "_staging").iterdir())  # no leftovers
    assert not (out / "_trash").exists() or not any((out / "_trash").iterdir())


def test_crash_before_swap_keeps_the_previous_version(spark, jsonl_run, monkeypatch):
    from components.etl import load, run_etl

    _, result, config, before = jsonl_run

    def boom(staging):
        raise RuntimeError("simulated crash before the swap")

    monkeypatch.setattr(load, "swap_into_place", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_etl(config, spark)
    assert snapshot(Path(result.output)) == before
    assert not any((Path(config.output) / "_staging").iterdir())


class _CrashInsideTheSwap:
    """A pyarrow filesystem that fails the move of the staging folder into place right after the
    previous version was moved to the trash (the process dies between the swap's two renames)."""

    def __init__(self, fs) -> None:
        self._fs, self.trashed = fs, False

    def move(self, src: str, dst: str) -> None:
        if self.trashed and "/_staging/" in src and "/_staging/" not in dst:
            raise OSError("simulated crash inside the swap")
        self._fs.move(src, dst)
        self.trashed = self.trashed or "/_trash/" in dst

    def __getattr__(self, name: str):
        return getattr(self._fs, name)


def test_etl_crash_inside_the_swap_never_shows_a_partial_interval(spark, jsonl_run, monkeypatch):
    """The two renames of the swap are not one atomic step: killed between them, the interval is
    ABSENT (never partial; its previous version is kept whole under ``_trash``) until the rerun,
    which writes the same bytes as before. The previous version is the module's run (the last
    test to read it: the rerun restores it, byte for byte)."""
    from components.etl import load, run_etl
    from trainer.data.contract import load_manifest

    _, result, config, before = jsonl_run
    out, first = Path(config.output), Path(result.output)
    assert snapshot(first) == before
    real = load.filesystem
    monkeypatch.setattr(
        load,
        "filesystem",
        lambda uri: (lambda fs, base: (_CrashInsideTheSwap(fs), base))(*real(uri)),
    )
    with pytest.raises(OSError, match="inside the swap"):
        run_etl(config, spark)
    monkeypatch.undo()
    assert not first.exists()  # absent, not partial: readers find no _manifest.json
    trashed = [p for p in (out / "_trash").iterdir() if p.is_dir()]
    assert len(trashed) == 1 and snapshot(trashed[0]) == before
    again = Path(run_etl(config, spark).output)
    assert again == first and snapshot(again) == before
    assert load_manifest(str(again)).files  # and the trainer's contract accepts it


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_generator_ground_truth(spark, tmp_path, fmt):
    """Per-reason counts equal the generator's own count of what it corrupted (another writer)."""
    from components.etl import run_etl
    from components.generate import GeneratorConfig, generate

    raw = tmp_path / "raw"
    # 10,000 rows: every corruption kind the format can carry occurs (seed 3; as at 20,000)
    generate(GeneratorConfig(out=str(raw), rows=10_000, format=fmt, seed=3, corrupt=0.03, hours=6))
    truth = json.loads((raw / "_generation.json").read_text())
    config = make_config(raw, tmp_path / "out", end="2026-11-01T06", k_support=8, q_query=8)
    result = run_etl(config, spark)
    assert result.rows_read == truth["rows_written"] == 10_000
    expected = truth["corruption"]["reasons"]
    assert len(expected) == {"jsonl": 22, "parquet": 15}[fmt]
    row_level = {r: n for r, n in result.reasons.items() if r in expected}
    assert row_level == expected
    interval_level = set(result.reasons) - set(expected)
    assert interval_level <= {"task_too_small", "episode_too_small", "episode_tie_overflow"}
    assert (
        result.rows_kept + sum(row_level.values()) + sum(result.reasons[r] for r in interval_level)
        == result.rows_read
    )
