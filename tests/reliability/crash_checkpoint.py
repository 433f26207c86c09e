"""Save checkpoint step 1, then die by SIGKILL at one point of saving step 2 (no cleanup runs).

    python -m tests.reliability.crash_checkpoint <root> <point>

Points (in the order a save passes them):
  shard    half of the rank's shard bytes are on disk (``torch.save`` cut short);
  meta     the shards are complete, half of ``meta.json`` is written in the staging directory;
  commit   ``step-00000002`` has been renamed into place, ``latest`` still names step 1;
  pointer  half of ``latest``'s temporary file is written, ``latest`` not yet replaced.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

import torch

import trainer.checkpoint as ck
import trainer.durable as durable


def state(v: float) -> dict:
    return {"w": torch.full((64, 8), float(v)), "step": int(v), "opt": {"buf": [torch.ones(4) * v]}}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _half(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    _die()


def main(root: str, point: str) -> None:
    saver = ck.Checkpointer(root)
    saver.save(1, state(1), meta={"note": "one"})
    real_write, real_replace, real_save = ck.fsync_write, os.replace, torch.save

    if point == "shard":

        def cut_save(obj: object, file: io.BufferedWriter) -> None:  # the shard's open file
            buf = io.BytesIO()
            real_save(obj, buf)
            _half(Path(file.name), buf.getvalue())

        ck.torch.save = cut_save  # type: ignore[assignment]
    elif point == "meta":

        def cut_write(path: Path, data: bytes) -> None:
            (_half if path.name == ck.META else real_write)(path, data)

        ck.fsync_write = cut_write  # type: ignore[assignment]
    elif point == "pointer":  # latest is replaced by trainer.durable.write_atomic
        real_create = durable.create_temp

        class HalfThenDie:
            """``latest``'s temp file: half of its bytes reach the disk, then the process dies."""

            def __init__(self, f: io.BufferedWriter) -> None:
                self.f = f

            def __enter__(self) -> HalfThenDie:
                return self

            def __exit__(self, *exc: object) -> None:
                self.f.close()

            def write(self, data: bytes) -> None:
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                os.fsync(self.f.fileno())
                _die()

        def cut_pointer(path: Path, prefix: str = ".") -> tuple[Path, object]:
            tmp, f = real_create(path, prefix)
            return tmp, (HalfThenDie(f) if path.name == ck.LATEST else f)

        durable.create_temp = cut_pointer  # type: ignore[assignment]
    elif point == "commit":

        def replace_then_die(src: str, dst: str) -> None:
            real_replace(src, dst)
            if str(src).endswith("step-00000002.tmp"):
                _die()

        ck.os.replace = replace_then_die  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown point {point}")
    saver.save(2, state(2), meta={"note": "two"})
    raise SystemExit("not killed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
