"""Run the demo's stages in order, skipping those already done with the same inputs.

Rerun policy (idempotent reruns into the same ``--out``): every stage has a *fingerprint*, a hash
of its settings and of the fingerprints of the stages it reads. When a stage completes, its record
``<out>/_stages/<stage>.json`` is written last (fingerprint, result, seconds). On a rerun a stage
whose record has the same fingerprint and whose outputs all exist is skipped with a message, and
its recorded result is used; any other stage first deletes its outputs and runs again (a clean
replace), which changes nothing downstream that was not stale already, because a changed
fingerprint changes every later one too. ``--fresh`` ignores the records.

    runner = StageRunner(paths["stages"], total=10, fresh=False)
    result = runner.run("etl", fp, outputs=[episodes_dir], work=lambda: do_etl())
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("metarec.demo")


class DemoStopped(RuntimeError):
    """A stage refused to go on (e.g. validation failed closed); the message says why."""


def remove(path: Path) -> None:
    """Delete a file or a directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class StageRunner:
    """Runs stages, logs their progress, and keeps their records (module docstring).

    Args:
        records: directory of the stage records.
        total: number of stages (for the ``[i/n]`` prefix).
        fresh: ignore existing records (every stage runs).
    """

    def __init__(self, records: Path, total: int, fresh: bool = False) -> None:
        self.records, self.total, self.fresh = records, total, fresh
        self.index = 0
        self.seconds: dict[str, float] = {}
        """Wall time of each stage (of its last run, for a skipped stage)."""
        self.skipped: list[str] = []
        self.results: dict[str, Any] = {}
        records.mkdir(parents=True, exist_ok=True)

    def _record_path(self, name: str) -> Path:
        return self.records / f"{name}.json"

    def _done(self, name: str, fp: str, outputs: Sequence[Path]) -> dict[str, Any] | None:
        path = self._record_path(name)
        if self.fresh or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        if record.get("fingerprint") != fp or not all(Path(p).exists() for p in outputs):
            return None
        return record

    def run(
        self,
        name: str,
        fp: str,
        outputs: Sequence[Path],
        work: Callable[[], dict[str, Any]],
        describe: Callable[[dict[str, Any]], str] = lambda r: "",
    ) -> dict[str, Any]:
        """Run ``work`` (or skip it, see the module docstring) and return its JSON-able result.

        Args:
            name: the stage name (also its record's file name).
            fp: the stage's fingerprint.
            outputs: files and directories the stage owns: deleted before it runs, and required
                to exist for a skip.
            work: does the stage; returns its result (stored in the record).
            describe: one line saying what the result is, for the progress output.
        """
        self.index += 1
        prefix = f"[{self.index}/{self.total}] {name}"
        record = self._done(name, fp, outputs)
        if record is not None:
            self.seconds[name] = float(record.get("seconds", 0.0))  # when it last ran
            self.skipped.append(name)
            self.results[name] = record["result"]
            log.info(
                "%s: up to date (fingerprint %s, done in %.1f s earlier), skipped: %s "
                "(--fresh redoes every stage)",
                prefix, fp, record.get("seconds", 0.0), describe(record["result"]),
            )  # fmt: skip
            return record["result"]
        self._record_path(name).unlink(missing_ok=True)
        for path in outputs:
            remove(Path(path))
        log.info("%s ...", prefix)
        t0 = time.perf_counter()
        result = work()
        seconds = round(time.perf_counter() - t0, 2)
        self.seconds[name] = seconds
        self.results[name] = result
        body = {"stage": name, "fingerprint": fp, "seconds": seconds, "result": result,
                "outputs": [str(p) for p in outputs]}  # fmt: skip
        tmp = self._record_path(name).with_suffix(".json.tmp")
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self._record_path(name))
        log.info("%s done in %.1f s: %s", prefix, seconds, describe(result))
        return result
