"""Same config -> identical bytes; another seed -> other data."""

from __future__ import annotations

import pytest

from tests.components.generate.helpers import all_bytes, data_files, make


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet"])
def test_same_config_writes_identical_bytes(tmp_path, fmt):
    kw = {"format": fmt, "seed": 11, "corrupt": 0.05, "files_per_hour": 2}
    _, a = make(tmp_path / "a", **kw)
    _, b = make(tmp_path / "b", **kw)
    files_a, files_b = all_bytes(a), all_bytes(b)
    assert files_a.keys() == files_b.keys()
    assert len(data_files(a)) == 6 * 2
    for name in files_a:
        if name == "_generation.json":  # records `out`, which differs here
            continue
        assert files_a[name] == files_b[name], name


def test_rerun_into_same_directory_is_byte_identical(tmp_path):
    _, root = make(tmp_path / "raw", seed=3, corrupt=0.02)
    first = all_bytes(root)
    make(tmp_path / "raw", seed=3, corrupt=0.02, overwrite=True)
    assert all_bytes(root) == first  # _generation.json included: no wall-clock values in it


def test_other_seed_gives_other_data(tmp_path):
    _, a = make(tmp_path / "a", seed=1)
    _, b = make(tmp_path / "b", seed=2)
    bytes_a, bytes_b = all_bytes(a), all_bytes(b)
    differing = [n for n in bytes_a if n.startswith("dt=") and bytes_a[n] != bytes_b.get(n)]
    assert len(differing) == len(data_files(a))


def test_corruption_leaves_other_rows_alone(tmp_path):
    """Corruption draws from its own stream: clean rows are the same as in a clean run."""
    _, clean = make(tmp_path / "clean", seed=5)
    _, dirty = make(tmp_path / "dirty", seed=5, corrupt=0.05)
    same = different = 0
    for path in data_files(clean):
        a = path.read_text().splitlines()
        b = (dirty / path.relative_to(clean)).read_text().split("\n")
        assert len(b) in (len(a), len(a) + 1)  # +1: the empty string after a final newline
        for x, y in zip(a, b, strict=False):
            same += x == y
            different += x != y
    assert different > 0
    assert different / (same + different) < 0.09  # ~5 % corrupted (+ replaced by duplicates)
