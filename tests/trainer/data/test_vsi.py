"""VSI unique/inverse and task-local rows against direct computations."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.vsi import TaskLocalRows, UniqueInverse, task_local_rows


@pytest.mark.parametrize("method", ["table", "sort"])
@pytest.mark.parametrize("n,total", [(1, 5), (1000, 50), (70_000, 1_000_000), (4096, 3)])
@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_unique_inverse(method, n, total, dtype):
    rng = np.random.default_rng(n)
    u = UniqueInverse(total)
    for _ in range(3):  # the reused table must not leak state between calls
        flat = (rng.zipf(1.3, n).astype(np.int64) % total).astype(dtype)
        ids, inverse = u(flat.reshape(-1, 1), method)
        np.testing.assert_array_equal(ids, np.unique(flat))
        assert inverse.shape == (n, 1) and inverse.dtype == np.int64 and ids.dtype == np.int64
        np.testing.assert_array_equal(ids[inverse].ravel(), flat)


def test_huge_id_space_falls_back_to_sort():
    u = UniqueInverse(1 << 40)
    assert u.method == "sort"
    flat = np.array([1 << 39, 5, 1 << 39, 7], np.int64)
    ids, inverse = u(flat)
    assert ids.tolist() == [5, 7, 1 << 39] and inverse.tolist() == [2, 0, 2, 1]


def test_task_local_rows_docstring_example():
    inverse = np.array([[[0, 2], [2, 2]], [[1, 1], [0, 1]]])
    rows, mask, tinv = task_local_rows(inverse, 3)
    assert rows.tolist() == [[0, 2], [0, 1]] and mask.all()
    assert tinv.tolist() == [[[0, 1], [1, 1]], [[1, 1], [0, 1]]]


def test_task_local_rows_against_a_loop():
    rng = np.random.default_rng(0)
    T, N, S, U = 9, 6, 4, 40
    inverse = rng.integers(0, U, (T, N, S))
    inverse[3] = 7  # an episode with a single row
    rows, mask, tinv = task_local_rows(inverse, U)
    assert rows.shape[1] == max(len(np.unique(inverse[t])) for t in range(T))
    for t in range(T):
        distinct = np.unique(inverse[t])
        np.testing.assert_array_equal(rows[t][mask[t]], distinct)
        assert not mask[t][len(distinct) :].any() and (rows[t][~mask[t]] == 0).all()
        np.testing.assert_array_equal(rows[t][tinv[t]], inverse[t])


def test_task_local_rows_scratch_reuse_across_shapes():
    rng = np.random.default_rng(1)
    kept = TaskLocalRows()
    for T, N, S, U in [(4, 3, 2, 10), (9, 6, 4, 40), (2, 2, 1, 3), (9, 6, 4, 200)]:
        inverse = rng.integers(0, U, (T, N, S))
        for a, b in zip(kept(inverse, U), task_local_rows(inverse, U), strict=True):
            np.testing.assert_array_equal(a, b)
        rows, _, tinv = kept(inverse, U)
        for t in range(T):
            np.testing.assert_array_equal(rows[t][tinv[t]], inverse[t])
