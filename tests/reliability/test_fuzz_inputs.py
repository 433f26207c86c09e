"""Fuzz the other entry points of untrusted input: the trainer's config loader, the episode reader
(malformed manifest and Parquet files) and an adapter (MovieLens-100K, on generated files).

Properties: only the documented exception types, each with a message (``ValueError`` -- which
includes the reader's ``ContractError`` -- and ``FileNotFoundError``), never another crash; with
checksum verification on, a damaged episode file is always detected; the adapter accounts for
every input line (rows in = written + rejected, and the files hold the written rows).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import typing
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.reliability.fuzz import CASES, JSON_VALUES, TEXT, examples, report
from tests.trainer.run_helpers import write_episodes
from trainer.config import TrainerConfig, load_trainer_config

USER_ERRORS = (ValueError, FileNotFoundError)


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    yield
    for title in ("config", "reader", "adapter"):
        report(title)


def _expect_user_error(fn: typing.Callable[[], object]) -> str:
    """Run ``fn``; ``"ok"``, or the name of the documented error it raised (with a message)."""
    try:
        fn()
    except USER_ERRORS as e:
        assert str(e).strip(), f"{type(e).__name__} without a message"
        return type(e).__name__
    return "ok"


# ------------------------------------------------------------------------------------ config
def _keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of the config tree (``train.steps``, ``parallel.cache.rows``, ...)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _keys(tp, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


KEYS = _keys(TrainerConfig)
_toml_literals = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: repr(x).replace("inf", "inf")),
    st.sampled_from(["true", "false", '""', '"x"', "[]", "[1, 2]", '["a", 1]', "{a = 1}",
                     "1979-05-27", "07:32:00", "nan", "-inf", "0x1F", "[[1]]", "'lit'", "1_000"]),
    st.text(TEXT, max_size=10),
)  # fmt: skip
_overrides = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from(KEYS),
            st.text(TEXT, max_size=12),
            st.sampled_from(
                ["train", "train.steps.x", "model.mlp.0", ".", "a..b", "parallel.cache"]
            ),
        ),
        _toml_literals,
    ).map(lambda kv: f"{kv[0]}={kv[1]}"),
    max_size=3,
)


@examples(300)
@given(overrides=_overrides, garbage=st.one_of(st.none(), st.none(), st.text(TEXT, max_size=60)))
def test_config_loader_fails_only_with_a_message(overrides, garbage, tmp_path_factory) -> None:
    source: str = "debug"
    if garbage is not None:  # a config file that is not (valid) TOML, or TOML of the wrong shape
        source = str(tmp_path_factory.mktemp("cfg") / "run.toml")
        Path(source).write_text(garbage, encoding="utf-8")
    outcome = _expect_user_error(
        lambda: load_trainer_config(source, ["data.path=/tmp/episodes", *overrides])
    )
    CASES[f"config: {outcome}"] += 1


# ------------------------------------------------------------------------------------ reader
@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    return write_episodes(tmp_path_factory.mktemp("fuzz-episodes") / "interval", num_tasks=12)


def _mutate_json(data: object, rnd: random.Random, value: object) -> object:
    """``data`` with one random node replaced by ``value`` or removed."""
    if isinstance(data, dict) and data:
        key = rnd.choice(sorted(data))
        if rnd.random() < 0.3:
            return {k: v for k, v in data.items() if k != key}
        return {**data, key: _mutate_json(data[key], rnd, value)}
    if isinstance(data, list) and data:
        i = rnd.randrange(len(data))
        return [*data[:i], _mutate_json(data[i], rnd, value), *data[i + 1 :]]
    return value


def _read_all(root: Path, verify: bool) -> None:
    from trainer.data.reader import EpisodeReader

    for split in ("train", "valid", "test_cold"):
        with EpisodeReader(str(root), split, 8, prefetch=1, epochs=1, verify_checksums=verify,
                           shuffle=split == "train") as reader:  # fmt: skip
            for _ in reader:
                pass


@examples(60)
@given(
    target=st.sampled_from(["manifest_json", "manifest_bytes", "parquet"]),
    how=st.sampled_from(["truncate", "flip", "garbage", "delete"]),
    seed=st.integers(0, 2**32 - 1),
    value=JSON_VALUES,
    verify=st.booleans(),
)
def test_episode_reader_rejects_damage_with_a_message(
    episodes, tmp_path_factory, target, how, seed, value, verify
) -> None:
    root = tmp_path_factory.mktemp("damaged") / "interval"
    shutil.copytree(episodes, root)
    rnd = random.Random(seed)
    manifest = root / "_manifest.json"
    if target == "manifest_json":
        manifest.write_text(json.dumps(_mutate_json(json.loads(manifest.read_text()), rnd, value)))
        path = manifest
    else:
        path = (
            manifest if target == "manifest_bytes" else rnd.choice(sorted(root.rglob("*.parquet")))
        )
        data = bytearray(path.read_bytes())
        if how == "truncate":
            data = data[: rnd.randrange(len(data))]
        elif how == "flip":
            data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
        elif how == "garbage":
            data = bytearray(rnd.randbytes(rnd.randrange(1, 200)))
        if how == "delete":
            path.unlink()
        else:
            path.write_bytes(bytes(data))
    outcome = _expect_user_error(lambda: _read_all(root, verify))
    if verify and target == "parquet" and path.name.endswith(".parquet"):
        assert outcome != "ok", f"{how} of {path.relative_to(root)} went unnoticed"
    CASES[f"reader: {target}/{how}: {outcome}"] += 1


# ----------------------------------------------------------------------------------- adapter
USERS = "".join(f"{u}|{20 + u}|{'MF'[u % 2]}|student|{10000 + u}\n" for u in range(1, 6))
ITEMS = "".join(
    f"{i}|Movie {i} (1995)|01-Jan-1995||http://x/{i}|{'|'.join('1' if g == i % 19 else '0' for g in range(19))}\n"
    for i in range(1, 8)
)  # fmt: skip
# Times within MovieLens' first three days: hours with and without ratings (the empty ones
# filled), ~70 files at most; its whole 215 days wrote thousands of empty-hour files per example.
_good_rating = st.builds(
    lambda u, i, r, t: f"{u}\t{i}\t{r}\t{t}",
    st.integers(1, 7), st.integers(1, 9), st.integers(0, 6), st.integers(874_724_710, 874_983_910),
)  # fmt: skip
_rating_lines = st.lists(
    st.one_of(_good_rating, _good_rating, st.text(TEXT, max_size=30).map(
        lambda s: s.replace("\n", " ").replace("\r", " "))),
    min_size=1, max_size=40,
)  # fmt: skip


@examples(15)
@given(lines=_rating_lines)
@example(lines=["\x85"])  # a hypothesis finding: a NEL is not a line break in the adapter's log
def test_adapter_accounts_for_every_line(lines, tmp_path_factory) -> None:
    from components.adapters import AdapterConfig, adapt

    src = tmp_path_factory.mktemp("ml") / "ml-100k"
    src.mkdir()
    (src / "u.user").write_text(USERS)
    (src / "u.item").write_text(ITEMS, encoding="latin-1")
    (src / "u.data").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    out = src.parent / "out"
    try:
        summary = adapt("movielens", AdapterConfig(src=str(src), out=str(out)))
    except USER_ERRORS as e:  # "no rows written ... all rejected": each line still in the log
        assert "all rejected" in str(e), e
        # bytes: str.splitlines would also split at a NEL (\x85) inside a rejected line
        assert len((out / "_rejected.jsonl").read_bytes().splitlines()) == len(lines)
        CASES["adapter: all rejected (ValueError)"] += 1
        return
    acc = summary.report["accounting"]
    assert acc["rows_in"] == len(lines)
    assert acc["rows_written"] + acc["rows_rejected"] == acc["rows_in"]
    assert sum(acc["rejected_by_reason"].values()) == acc["rows_rejected"]
    written = ds.dataset(out, format="parquet").count_rows() if acc["rows_written"] else 0
    assert written == acc["rows_written"]
    CASES["adapter: examples"] += 1
    CASES["adapter: lines"] += len(lines)
    CASES["adapter: rejected"] += acc["rows_rejected"]
