"""EpisodeReader: sharding, equal steps, padding, determinism, resume, decoding, threads."""

from __future__ import annotations

import threading
import traceback
from collections import Counter

import numpy as np
import pytest
import torch

from tests.trainer.data.episodes import (
    batch_fingerprints,
    decode_direct,
    direct_fingerprints,
)
from trainer.data.reader import EpisodeReader


def _reader(root, **kw) -> EpisodeReader:
    kw.setdefault("batch_episodes", 16)
    kw.setdefault("prefetch", 0)
    return EpisodeReader(str(root), kw.pop("split", "train"), **kw)


def _stream(reader, limit=None) -> list:
    out = []
    for batch in reader:
        out.append(batch)
        if limit is not None and len(out) == limit:
            break
    return out


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("metarec-reader")]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_episode_exactly_once_per_epoch_with_equal_steps(small_root, world_size, shuffle):
    expected = direct_fingerprints(small_root, "train")
    for epoch in range(2):
        seen, steps = Counter(), set()
        for rank in range(world_size):
            r = _reader(small_root, rank=rank, world_size=world_size, shuffle=shuffle, seed=7)
            r.load_state_dict(
                {"epoch": epoch, "step_in_epoch": 0, "seed": 7, "world_size": world_size}
            )
            batches = _stream(r, limit=r.steps_per_epoch)
            assert r.state_dict()["epoch"] == epoch + 1  # exactly one epoch consumed
            steps.add(len(batches))
            for b in batches:
                assert b.num_episodes == 16  # always T episodes
                seen.update(batch_fingerprints(b))
        assert steps == {r.steps_per_epoch}
        assert seen == expected


def test_padding_episodes_are_masked_and_inert(small_root):
    r = _reader(small_root, world_size=3, rank=0, batch_episodes=32, epochs=1)
    pads = 0
    for b in r:
        pad = ~b.episode_mask
        pads += int(pad.sum())
        assert not b.support_mask[pad].any() and not b.query_mask[pad].any()
        assert (b.n_support[pad] == 0).all() and (b.n_query[pad] == 0).all()
        assert (b.task_ids[pad] == 0).all()
        assert (b.click[pad] == 0).all() and (b.conversion[pad] == 0).all()
        assert (b.dense[pad] == 0).all()
        # padding episodes point at every feature's padding row (local id 0)
        slot_rows = r.layout.slot_offsets.expand_as(b.inverse[pad])
        assert torch.equal(b.ids[b.inverse[pad]], slot_rows)
        # real episodes: masks follow n_support / n_query
        real = b.episode_mask
        assert torch.equal(b.support_mask[real].sum(1), b.n_support[real])
        assert torch.equal(b.query_mask[real].sum(1), b.n_query[real])
    assert pads == r.steps_per_epoch * 32 - r.rank_episodes(0)
    assert pads > 0


def test_steps_per_epoch_is_the_same_on_all_ranks_and_epochs(small_root):
    steps = {_reader(small_root, rank=k, world_size=3).steps_per_epoch for k in range(3)}
    assert len(steps) == 1
    r = _reader(small_root, world_size=3)
    loads = [
        sorted(_reader(small_root, rank=k, world_size=3).rank_episodes(e) for k in range(3))
        for e in range(5)
    ]
    assert all(x == loads[0] for x in loads)
    assert r.steps_per_epoch == -(-max(loads[0]) // 16)


def test_shuffle_is_deterministic_per_seed_and_epoch(small_root):
    def order(seed, epoch):
        r = _reader(small_root, seed=seed)
        r.load_state_dict({"epoch": epoch, "step_in_epoch": 0, "seed": seed, "world_size": 1})
        return [fp for b in _stream(r, r.steps_per_epoch) for fp in batch_fingerprints(b)]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    assert Counter(order(1, 0)) == Counter(order(1, 1))


def test_unshuffled_single_rank_is_file_order_and_equals_direct_decoding(small_root):
    direct = decode_direct(small_root, "train")
    r = _reader(small_root, shuffle=False, epochs=1, task_local_rows=True)
    got = []
    for b in r:
        gids = b.ids[b.inverse]
        assert torch.equal(b.ids, torch.unique(gids))  # sorted unique ids
        N = b.inverse.shape[1]
        for t in range(b.num_episodes):
            if b.episode_mask[t]:
                got.append((b, t, gids[t]))
            # task-local rows: distinct rows of episode t, in ascending order, mapping back exactly
            rows = b.task_rows[t][b.task_rows_mask[t]]
            if b.episode_mask[t]:
                assert torch.equal(rows, torch.unique(b.inverse[t]))
            else:
                assert rows.numel() == 0
            assert torch.equal(b.task_rows[t][b.task_inverse[t]], b.inverse[t])
        assert b.inverse.shape == (16, N, r.layout.sparse_width)
    assert len(got) == len(direct)
    for (b, t, gids), e in zip(got, direct, strict=True):
        assert int(b.task_ids[t]) == e["task_id"]
        assert int(b.n_support[t]) == e["n_support"] and int(b.n_query[t]) == e["n_query"]
        np.testing.assert_array_equal(gids.numpy(), e["global_ids"])
        np.testing.assert_array_equal(b.dense[t].numpy(), e["dense"])
        np.testing.assert_array_equal(b.click[t].numpy(), e["click"])
        np.testing.assert_array_equal(b.conversion[t].numpy(), e["conversion"])
    assert {b.dense.dtype, b.click.dtype, b.conversion.dtype} == {torch.float32}
    assert {b.ids.dtype, b.inverse.dtype, b.n_support.dtype, b.task_ids.dtype} == {torch.int64}
    assert b.episode_mask.dtype == torch.bool


@pytest.mark.parametrize(
    "shuffle,shuffle_buffer,world_size,rank",
    [(True, 0, 1, 0), (False, 0, 1, 0), (True, 40, 2, 1), (False, 0, 3, 2), (True, 1000, 1, 0)],
)
def test_resume_continues_the_same_stream(small_root, shuffle, shuffle_buffer, world_size, rank):
    kw = dict(
        shuffle=shuffle, shuffle_buffer=shuffle_buffer, world_size=world_size, rank=rank, seed=5
    )
    full = _reader(small_root, **kw)
    steps = full.steps_per_epoch
    reference = [batch_fingerprints(b) for b in _stream(full, 2 * steps + 1)]
    for cut in sorted({1, steps // 2, steps - 1, steps, steps + 3}):
        first = _reader(small_root, **kw)
        _stream(first, cut)
        state = first.state_dict()
        first.close()
        resumed = _reader(small_root, prefetch=2, **kw)
        resumed.load_state_dict(state)
        rest = [batch_fingerprints(b) for b in _stream(resumed, len(reference) - cut)]
        resumed.close()
        assert rest == reference[cut:], f"cut at {cut}"


def test_resume_skips_row_groups_without_reading_them(small_root):
    r = _reader(small_root, shuffle=False, batch_episodes=7)  # row groups hold 7 episodes
    reads = []
    original = r._read_unit
    r._read_unit = lambda u: reads.append(u) or original(u)
    r.load_state_dict({"epoch": 0, "step_in_epoch": 10, "seed": 0, "world_size": 1})
    next(iter(r))
    assert len(reads) <= 2  # the row group(s) of step 10 only, not the 10 before


def test_state_dict_refuses_another_world_size_or_seed(small_root):
    state = _reader(small_root, world_size=2, seed=1).state_dict()
    assert state == {"epoch": 0, "step_in_epoch": 0, "seed": 1, "world_size": 2}
    with pytest.raises(ValueError, match="world_size=2"):
        _reader(small_root, world_size=3, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=1"):
        _reader(small_root, world_size=2, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks"):
        _reader(small_root).load_state_dict({"epoch": 0})


def test_eval_iterates_once_with_disjoint_ranks(small_root):
    expected = direct_fingerprints(small_root, "test_cold")
    seen = Counter()
    steps = []
    for rank in range(2):
        r = _reader(
            small_root,
            split="test_cold",
            rank=rank,
            world_size=2,
            epochs=1,
            shuffle=False,
            prefetch=2,
        )
        batches = _stream(r)
        steps.append(len(batches))
        seen.update(fp for b in batches for fp in batch_fingerprints(b))
        assert _stream(r) == []  # exhausted
    assert steps[0] == steps[1] == r.steps_per_epoch
    assert seen == expected


def test_prefetch_on_and_off_give_the_same_stream(small_root):
    a = [batch_fingerprints(b) for b in _stream(_reader(small_root, prefetch=0, epochs=2))]
    b = [batch_fingerprints(b) for b in _stream(_reader(small_root, prefetch=3, epochs=2))]
    assert a == b and len(a) > 0


def test_file_uri(small_root):
    uri = small_root.resolve().as_uri()
    a = [batch_fingerprints(b) for b in _stream(_reader(uri, epochs=1))]
    b = [batch_fingerprints(b) for b in _stream(_reader(small_root, epochs=1))]
    assert a == b


def test_thread_exception_reaches_the_consumer_with_its_traceback(small_root):
    r = _reader(small_root, prefetch=2)
    calls = []

    def failing_read(unit):
        calls.append(unit)
        if len(calls) == 2:
            raise OSError("disk on fire")
        return original(unit)

    original = r._read_unit
    r._read_unit = failing_read
    with pytest.raises(OSError, match="disk on fire") as info:
        _stream(r, 100)
    assert "failing_read" in "".join(traceback.format_tb(info.value.__traceback__))
    r.close()
    assert not _reader_threads()


def test_close_stops_the_threads(small_root):
    r = _reader(small_root, prefetch=2)
    _stream(r, 2)
    assert _reader_threads()
    r.close()
    assert not _reader_threads()
    with _reader(small_root, prefetch=4) as r2:
        _stream(r2, 1)
    assert not _reader_threads()
    # iterating again after close restarts from the position
    before = r.state_dict()
    again = _stream(r, 1)
    assert len(again) == 1 and r.state_dict()["step_in_epoch"] == before["step_in_epoch"] + 1
    r.close()
    assert not _reader_threads()


def test_pin_memory_and_to(small_root):
    if not torch.cuda.is_available():
        b = _stream(_reader(small_root, pin_memory=False), 1)[0]
        assert not b.ids.is_pinned()
        assert b.to("cpu").ids.data_ptr() == b.ids.data_ptr()
        pytest.skip("CUDA not available: pinned-memory path not exercised")
    r = _reader(small_root, prefetch=2, task_local_rows=True)
    assert r.pin_memory
    b = _stream(r, 1)[0]
    r.close()
    assert all(t.is_pinned() for t in (b.ids, b.inverse, b.dense, b.click, b.task_rows))
    g = b.to("cuda")
    assert g.inverse.is_cuda and torch.equal(g.ids[g.inverse].cpu(), b.ids[b.inverse])


def test_bad_arguments(small_root):
    with pytest.raises(ValueError, match="rank"):
        _reader(small_root, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_episodes"):
        _reader(small_root, batch_episodes=0)
