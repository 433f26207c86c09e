"""Atomic, checksummed checkpoints that load without unpickling arbitrary objects.

Layout (one directory per saved step; each rank writes its own shard)::

    <root>/
      step-00000100/
        rank-00000.pt      torch.save of plain containers of tensors/numbers/strings
        rank-00001.pt
        meta.json          written last: step, world size, sha256 + size of every shard, extra metadata
      latest               the name of the newest complete step directory (replaced atomically)

Saving writes into ``step-XXXXXXXX.tmp``, fsyncs, then renames it into place and swaps ``latest``,
so a crash at any point leaves the previous checkpoint readable and the partial one invisible.
Loading verifies the shard's sha256 against ``meta.json`` (a truncated or bit-flipped file is
reported, never half-loaded) and uses ``torch.load(weights_only=True)``, which refuses pickled code.

Multi-rank saves take a ``barrier`` callable (the trainer passes the process group's barrier), so
this module stays free of ``torch.distributed``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from trainer.durable import fsync_dir, fsync_write, sha256_file, write_atomic
from trainer.paths import output_file, safe_join

LATEST = "latest"
META = "meta.json"
FORMAT = "metarec.checkpoint"
FORMAT_VERSION = 1
STEP_NAME = re.compile(r"step-\d{8}")
"""The name of a committed step directory (what ``latest`` may hold)."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or incompatible with this run."""


def _shard_name(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def _step_name(step: int) -> str:
    return f"step-{step:08d}"


def _noop() -> None:
    return None


def _os_error(e: BaseException) -> OSError | None:
    """The ``OSError`` behind ``e``: itself, or one torch's writer raised inside (``torch.save``
    to a file object reports a failed write as ``enforce fail ... unexpected pos``, with the
    file's own ``OSError`` as the context)."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


@contextlib.contextmanager
def writing(what: str, path: Path, error: type[Exception] = CheckpointError) -> Iterator[None]:
    """Turn a failed write (a full disk, a read-only directory, torch's ``enforce fail ...``) into
    one ``error`` line naming ``path`` and what was being written (the trainer's other outputs
    use it with ``ValueError``: both are the trainer's one-line user errors, exit 2)."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        cause = _os_error(e)
        if cause is None and "unexpected pos" not in str(e) and "write failed" not in str(e):
            raise  # not a write failure
        if cause is not None:
            why = cause.strerror or str(cause)
        else:  # torch wrote through its own file handle: no errno; free space tells
            why = f"the write failed ({str(e).splitlines()[0]})"
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(path.parent).free
                why += f"; {free} bytes free on that filesystem"
        raise error(
            f"cannot write {what} {path}: {why}; free space (or lower checkpoint.keep) or make "
            "the run directory writable, then rerun (it resumes from its last checkpoint)"
        ) from e


class Checkpointer:
    """Saves and loads the per-rank state of a run under ``root``.

    Args:
        root: local directory (a PVC mount on a cluster).
        rank: this process's rank; ``world_size``: number of shards per checkpoint.
        keep: complete checkpoints to keep (older ones are deleted after a successful save).
        barrier: called where all ranks must meet; required when ``world_size > 1``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        rank: int = 0,
        world_size: int = 1,
        keep: int = 3,
        barrier: Callable[[], None] | None = None,
    ) -> None:
        if world_size > 1 and barrier is None:
            raise ValueError("a multi-rank Checkpointer needs a barrier")
        if keep < 1:
            raise ValueError(f"checkpoint keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.rank, self.world_size, self.keep = rank, world_size, keep
        self.barrier = barrier or _noop

    # ----------------------------------------------------------------------------------- save
    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any] | None = None) -> Path:
        """Write this rank's ``state`` for ``step``; rank 0 commits once every shard is written."""
        # A symlink planted at one of these names is refused (trainer.paths), never written through.
        final = output_file(self.root, _step_name(step), "checkpoint directory")
        tmp = output_file(self.root, _step_name(step) + ".tmp", "checkpoint directory")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a crashed save
            with writing(f"the step {step} checkpoint directory", tmp):
                tmp.mkdir(parents=True)
        self.barrier()
        shard = tmp / _shard_name(self.rank)
        with writing(f"the step {step} checkpoint of rank {self.rank}", shard):
            try:
                with open(shard, "wb") as f:  # a file object: a failed write keeps its OSError
                    torch.save(state, f)
                    f.flush()
                    os.fsync(f.fileno())
                fsync_write(shard.with_suffix(".sha256"), sha256_file(shard).encode())
            except BaseException:
                shard.unlink(missing_ok=True)  # a partial shard would keep a full disk full
                raise
        self.barrier()
        if self.rank == 0:
            shards = {}
            for r in range(self.world_size):
                path = tmp / _shard_name(r)
                sidecar = path.with_suffix(".sha256")
                shards[path.name] = {"sha256": sidecar.read_text(), "bytes": path.stat().st_size}
                sidecar.unlink()
            body = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "step": step,
                "world_size": self.world_size,
                "shards": shards,
                "meta": meta or {},
            }
            with writing(f"the step {step} checkpoint's metadata", tmp / META):
                fsync_write(tmp / META, json.dumps(body, indent=2, sort_keys=True).encode())
            if final.exists():  # re-saving the same step (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.root)
            latest = output_file(self.root, LATEST, "checkpoint pointer")
            with writing("the checkpoint pointer", latest):
                write_atomic(latest, final.name)
            self._prune()
        self.barrier()
        return final

    def _prune(self) -> None:
        steps = sorted(
            p for p in self.root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")
        )
        for old in steps[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    # ----------------------------------------------------------------------------------- load
    def latest(self) -> Path | None:
        """The newest complete checkpoint directory, or None if none was ever committed."""
        pointer = self.root / LATEST
        if not pointer.exists():
            return None
        path = read_latest(self.root)
        if not (path / META).exists():
            raise CheckpointError(
                f"{pointer} names {path.name}, which is missing or incomplete; "
                "restore that directory or delete the pointer to start from scratch"
            )
        return path

    def load(
        self, path: str | os.PathLike[str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load this rank's shard of ``path`` (default: the latest) after verifying its checksum.

        Returns:
            ``(state, info)`` where ``info`` holds ``step``, ``world_size`` and the saved ``meta``.
        """
        ckpt = Path(path) if path is not None else self.latest()
        if ckpt is None:
            raise CheckpointError(f"no checkpoint under {self.root}")
        info = read_meta(ckpt)
        if info["world_size"] != self.world_size:
            raise CheckpointError(
                f"{ckpt} was saved by {info['world_size']} ranks but this run has {self.world_size}; "
                "resume with the same world size (or reshard it explicitly)"
            )
        return load_shard(ckpt, self.rank, info), info


def read_latest(root: str | os.PathLike[str]) -> Path:
    """The step directory that ``<root>/latest`` names (it may be incomplete: check ``meta.json``).

    Raises:
        CheckpointError: the pointer is damaged, or names anything but a ``step-XXXXXXXX``
            directory of ``root`` (e.g. ``../other-run/step-00000001``).
        ValueError: the pointer is a symlink leading outside ``root``.
    """
    pointer = safe_join(root, LATEST, "checkpoint pointer")  # a link leading out: refused
    name = pointer.read_bytes().decode("utf-8", errors="replace").strip()
    if not STEP_NAME.fullmatch(name):  # garbage, or a path leading out of the root
        raise CheckpointError(
            f"{pointer} is damaged (it holds {name[:60]!r}, not a step-XXXXXXXX name); "
            "write the newest complete step directory's name into it, or delete it"
        )
    return Path(root) / name


def read_meta(ckpt: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``meta.json`` of a checkpoint directory."""
    meta_path = Path(ckpt) / META
    try:
        info = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt} is not a complete checkpoint (no {META})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path} is corrupt: {e}") from e
    if info.get("format") != FORMAT or info.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{ckpt}: unsupported checkpoint format {info.get('format')!r}")
    return info


def load_shard(ckpt: str | os.PathLike[str], rank: int, info: dict[str, Any]) -> dict[str, Any]:
    """Verify and load one rank's shard with ``weights_only=True``."""
    name = _shard_name(rank)
    path = Path(ckpt) / name
    expected = info["shards"].get(name)
    if expected is None or not path.exists():
        raise CheckpointError(f"{ckpt} has no shard for rank {rank}")
    if path.stat().st_size != expected["bytes"] or sha256_file(path) != expected["sha256"]:
        raise CheckpointError(
            f"{path} does not match its checksum (truncated or corrupted); "
            "resume from an earlier checkpoint"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses pickled code: say so plainly
        raise CheckpointError(f"{path} cannot be loaded safely: {e}") from e
