"""The per-epoch plan: a partition of the units, balanced, with epoch-independent loads."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data import sharding


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_plan_is_a_balanced_partition(world_size):
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in rng.choice([100, 100, 100, 37, 5], 23)]
    loads0 = sorted(sharding.rank_loads(sizes, world_size))
    for epoch in range(6):
        bins = sharding.assign_units(sizes, world_size, seed=3, epoch=epoch, shuffle=True)
        assert sorted(u for b in bins for u in b) == list(range(len(sizes)))
        assert sorted(sum(sizes[u] for u in b) for b in bins) == loads0
        assert max(loads0) - min(loads0) <= max(sizes)
    a = sharding.assign_units(sizes, world_size, seed=3, epoch=0, shuffle=True)
    assert a == sharding.assign_units(sizes, world_size, seed=3, epoch=0, shuffle=True)
    if world_size > 1:
        assert a != sharding.assign_units(sizes, world_size, seed=3, epoch=1, shuffle=True)


def test_docstring_example():
    assert sorted(sharding.rank_loads([5, 5, 3, 3], 2)) == [8, 8]
    assert sharding.steps_per_epoch([5, 5, 3, 3], 2, 4) == 2
    assert sorted(sharding.rank_loads([5, 5, 3, 3], 3)) == [5, 5, 6]
    assert sharding.steps_per_epoch([5, 5, 3, 3], 3, 4) == 2
    assert sharding.steps_per_epoch([], 3, 4) == 0


def test_unshuffled_plan_keeps_manifest_order():
    bins = sharding.assign_units([4, 4, 4, 4, 4], 2, seed=0, epoch=5, shuffle=False)
    assert bins == [[0, 2, 4], [1, 3]]
    assert sharding.assign_units([4] * 3, 1, 0, 0, False) == [[0, 1, 2]]


def test_blocks():
    assert sharding.group_blocks([3, 1, 2, 0], [5, 5, 5, 5], 1) == [[3], [1], [2], [0]]
    assert sharding.group_blocks([3, 1, 2, 0], [5, 5, 5, 5], 9) == [[3, 1], [2, 0]]
    assert sharding.group_blocks([3, 1, 2], [5, 5, 5, 5], 100) == [[3, 1, 2]]
    p = sharding.block_permutation(10, 1, 2, 3, 4)
    assert sorted(p) == list(range(10)) and (p == sharding.block_permutation(10, 1, 2, 3, 4)).all()
