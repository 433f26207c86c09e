"""bench/reader.py's profile helpers run on a small output and report every stage."""

from __future__ import annotations

from bench import reader as bench


def test_stage_profile_and_decode_micro(small_root):
    stages = bench._stages(small_root, shuffle=True, task_local_rows=True)
    assert set(stages) == {"read", "assemble", "vsi", "total", "cpu"}
    assert set(stages["cpu"]) == {"read", "assemble", "vsi", "total"}
    for spent in (stages, stages["cpu"]):  # VSI runs within assembling, both within the epoch
        assert 0 < spent["vsi"] <= spent["assemble"] <= spent["total"]
    decode = bench._decode_micro(small_root, groups=3, rounds=1)
    assert {"raw_read_row_group", "raw_read_row_group_one_thread", "episode_files_read"} <= set(
        decode
    )
    assert decode["episodes_per_row_group"] == 7
