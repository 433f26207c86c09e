"""A partition has landed when it holds a data file or an explicit ``_SUCCESS`` marker (issue 18,
item 9): an empty ``hr=`` folder (what a producer leaves between ``mkdir`` and its first file) is a
missing hour for the sensor (``check_raw``) and for the ETL (``missing_hours``) alike. Before, the
sensor said ready and the ETL processed the partial interval with ``missing_hours: []``."""

from __future__ import annotations

import pytest

from components.etl import extract
from components.steps.config import DeliveryConfig
from components.steps.data import check_raw
from components.steps.layout import Interval
from tests.components.etl import rawdata
from tests.components.etl.test_job import make_config

EMPTY_HOUR = "dt=2026-11-01/hr=02"


@pytest.fixture
def raw(tmp_path):
    """Hours 0 and 1 with data; hour 2's folder exists but is empty."""
    root = tmp_path / "raw"
    rawdata.hours_of(root, range(2), rows_per_hour=5)
    rawdata.part_dir(root, 2)
    return root


def test_an_empty_hour_folder_is_missing_for_the_etl(raw, tmp_path) -> None:
    with pytest.raises(ValueError, match="1 of them are empty folders") as e:
        extract.list_input(make_config(raw, tmp_path / "out"))
    assert f"are missing: {EMPTY_HOUR}. " in str(e.value)
    listing = extract.list_input(make_config(raw, tmp_path / "out", allow_missing=True))
    assert listing.missing_hours == [EMPTY_HOUR] and len(listing.files) == 2
    # hidden files and unknown names do not make an hour landed either
    (rawdata.part_dir(raw, 2) / ".part-00000.jsonl.crc").write_text("x")
    (rawdata.part_dir(raw, 2) / "notes.txt").write_text("x")
    assert extract.list_input(make_config(raw, tmp_path / "out", allow_missing=True)).missing_hours


def test_the_sensor_agrees_with_the_etl(raw, tmp_path) -> None:
    cfg = DeliveryConfig(run_root=str(tmp_path / "run"), raw_root=str(raw))
    interval = Interval.parse("2026-11-01T00/3h")
    status = check_raw(cfg, interval)
    assert not status.ready and status.missing == [EMPTY_HOUR] and status.files == 2
    (rawdata.part_dir(raw, 2) / extract.SUCCESS_MARKER).write_text("")  # an hour without traffic
    assert check_raw(cfg, interval).ready
    listing = extract.list_input(make_config(raw, tmp_path / "out"))
    assert listing.missing_hours == [] and len(listing.files) == 2


def test_a_data_file_lands_the_hour(raw, tmp_path) -> None:
    cfg = DeliveryConfig(run_root=str(tmp_path / "run"), raw_root=str(raw))
    rawdata.hours_of(raw, range(2, 3), rows_per_hour=5)
    assert check_raw(cfg, Interval.parse("2026-11-01T00/3h")).ready
    assert extract.list_input(make_config(raw, tmp_path / "out")).missing_hours == []


def test_an_interval_of_empty_folders_is_empty(tmp_path) -> None:
    for h in range(3):
        rawdata.part_dir(tmp_path, h)
    with pytest.raises(ValueError, match=r"is empty: no data files .* and no _SUCCESS marker"):
        extract.list_input(make_config(tmp_path, tmp_path / "out"))
    status = check_raw(DeliveryConfig(raw_root=str(tmp_path)), Interval.parse("2026-11-01T00/3h"))
    assert not status.ready and status.files == 0
