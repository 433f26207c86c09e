"""The scorer's input listing refuses files that a symbolic link leads outside its input folder,
by the ETL's rule (issue 18 item 11: one function, ``components.inputs.refuse_links_out``, for
both readers); a link that stays under the folder is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.etl import extract
from components.score.events import list_event_files
from tests.components.etl import rawdata
from tests.components.etl.test_job import make_config


@pytest.fixture
def raw(tmp_path) -> Path:
    root = tmp_path / "raw"
    rawdata.hours_of(root, range(3), rows_per_hour=3)  # make_config: 3 hours
    return root


def test_a_linked_file_outside_the_input_is_refused_by_name(raw, tmp_path) -> None:
    secret = tmp_path / "elsewhere" / "secret.jsonl"
    secret.parent.mkdir()
    secret.write_text(json.dumps(rawdata.record(1, hour=1)) + "\n")
    (rawdata.part_dir(raw, 1) / "part-00001.jsonl").symlink_to(secret)
    with pytest.raises(ValueError, match=r"1 input file\(s\) lead outside the input root") as e:
        list_event_files(str(raw))
    assert f"dt=2026-11-01/hr=01/part-00001.jsonl -> {secret}" in str(e.value)


def test_a_linked_folder_outside_the_input_is_refused_as_the_etl_refuses_it(raw, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    rawdata.hours_of(elsewhere, range(3, 4), rows_per_hour=3)
    hour = rawdata.part_dir(raw, 1)
    for f in hour.iterdir():
        f.unlink()
    hour.rmdir()
    hour.symlink_to(rawdata.part_dir(elsewhere, 3), target_is_directory=True)
    with pytest.raises(ValueError) as scorer:
        list_event_files(str(raw))
    with pytest.raises(ValueError) as etl:
        extract.list_input(make_config(raw, tmp_path / "out"))
    # The same rule, the same words: only the URI as given differs.
    assert str(scorer.value).split(": ", 1)[1] == str(etl.value).split(": ", 1)[1]
    assert "dt=2026-11-01/hr=01/part-00000.jsonl -> " in str(scorer.value)


def test_links_that_stay_under_the_input_are_read(raw) -> None:
    kept = raw / "_backfill" / "late.jsonl"  # skipped by its name, reached through a link
    kept.parent.mkdir()
    kept.write_text(json.dumps(rawdata.record(7, hour=0)) + "\n")
    (rawdata.part_dir(raw, 0) / "part-00009.jsonl").symlink_to(kept)
    _, files = list_event_files(str(raw))
    assert [f.rel for f in files] == [
        "dt=2026-11-01/hr=00/part-00000.jsonl",
        "dt=2026-11-01/hr=00/part-00009.jsonl",
        "dt=2026-11-01/hr=01/part-00000.jsonl",
        "dt=2026-11-01/hr=02/part-00000.jsonl",
    ]


def test_a_named_file_is_read_wherever_its_link_leads(raw, tmp_path) -> None:
    """A file named on the command line is the input itself: there is no root to leave."""
    link = tmp_path / "events.jsonl"
    link.symlink_to(rawdata.part_dir(raw, 0) / "part-00000.jsonl")
    _, files = list_event_files(str(link))
    assert [f.rel for f in files] == ["events.jsonl"]
