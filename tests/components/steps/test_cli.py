"""``python -m components.steps``: interval splitting for backfills, status, check-raw, errors."""

from __future__ import annotations

import json

import pytest

from components.steps.__main__ import _intervals, main


def test_a_backfill_range_is_split_in_order():
    ids = [i.id for i in _intervals("2026-11-01T22/2026-11-02T01", "1h")]
    assert ids == ["interval=20261101T22-20261101T23", "interval=20261101T23-20261102T00",
                   "interval=20261102T00-20261102T01"]  # fmt: skip
    assert [i.id for i in _intervals("2026-11-01T00/1d", None)] == [
        "interval=20261101T00-20261102T00"
    ]
    with pytest.raises(ValueError, match="--each"):
        _intervals("2026-11-01T00/1d", "90m")


def test_status_check_raw_and_a_user_error(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps({"run_root": str(tmp_path / "run"), "raw_root": str(tmp_path / "raw")})
    )
    assert main(["--config", str(cfg), "status"]) == 0
    assert json.loads(capsys.readouterr().out) == {"champion": None, "stack": [], "history": []}
    assert main(["--config", str(cfg), "check-raw", "--interval", "2026-11-01T00/1h"]) == 1
    assert json.loads(capsys.readouterr().out)["ready"] is False
    assert main(["--config", str(cfg), "rollback"]) == 2
    assert "no previous champion" in capsys.readouterr().err
