"""The exported-model directory on disk: layout, checksums and atomic, versioned publication.

Standard library only, so the promotion gate (``components/promotion``) can verify an export
without torch. One export is one immutable directory::

    <models root>/<name>/
      v1/  v2/  ...           one directory per export, never overwritten
      CHAMPION                the serving pointer (``components/promotion/registry.py``)
      .tmp-<id>/              an export being written (ignored by readers; renamed into place);
                              its writer holds an ``flock`` on it, so the next export removes
                              the ones whose writer died (:func:`remove_stale_temps`)

    <models root>/<name>/v3/
      model.json              what to rebuild: model config, feature layout, adaptation settings,
                              the index of tensor files (shape, dtype) and of the dense graph
      feature_spec.json       the manifest's feature spec and hash contract (encoding at serving)
      dense/graph.pt2         the dense network (``torch.export``): gathered rows in, logits out
      dense/<param>.npy       the dense parameters as plain arrays (eager rebuild + adaptation)
      tables/emb.npy          the embedding table merged from every rank's shard (+ linear.npy)
      tables/id_map/          with dynamic tables, each one's id -> row map (``id_maps.py``)
      eval.json               the training run's evaluation (before/after adaptation)
      lineage.json            data interval, manifest content hash, config, code version, source
      CHECKSUMS               ``sha256sum`` format, written LAST: its presence marks completeness

Writing goes to ``.tmp-<id>/`` and ends with one ``rename`` to the next free ``v<N>`` under a lock,
so a crash leaves either no version or a complete one (and a temp folder that the next export
removes). A version may be a delta on an earlier one (:mod:`trainer.exported.delta`). ``sha256sum -c CHECKSUMS`` run inside a
version directory checks it by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trainer.durable import fsync_dir, fsync_write, sha256_file

FORMAT = "metarec.model"
FORMAT_VERSION = 1
MODEL_FILE = "model.json"
FEATURES_FILE = "feature_spec.json"
METRICS_FILE = "eval.json"
LINEAGE_FILE = "lineage.json"
CHECKSUMS_FILE = "CHECKSUMS"
GRAPH_FILE = "dense/graph.pt2"
REQUIRED_FILES = (MODEL_FILE, FEATURES_FILE, LINEAGE_FILE)
VERSION_RE = re.compile(r"^v(\d+)$")
LOCK_FILE = ".lock"
log = logging.getLogger(__name__)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ExportError(ValueError):
    """An export is incomplete, tampered with, unsafe to load, or of an unknown format."""


def check_name(name: str) -> str:
    """Return ``name`` if it can name a model directory (letters, digits, ``.``, ``_``, ``-``)."""
    if not _NAME_RE.match(name) or VERSION_RE.match(name):
        raise ValueError(
            f"model name {name!r} must be 1-128 letters, digits, '.', '_' or '-' (starting with a "
            "letter or digit, not of the form v<N>)"
        )
    return name


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fsync_write(path, (json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path} is missing: the export is incomplete; re-export it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is not valid JSON ({e}); re-export the model") from None


# ---------------------------------------------------------------------------------- checksums


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """Every entry under ``root`` as ``(relative posix path, path)``; refuses links and specials."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                raise ExportError(f"{root}: {rel} is a symbolic link; an export holds plain files")
            if name in filenames and not path.is_file():
                raise ExportError(f"{root}: {rel} is not a regular file")
            if name in filenames:
                yield rel, path


def write_checksums(root: Path) -> dict[str, str]:
    """Hash every file under ``root`` and write ``CHECKSUMS`` (last). Returns path -> sha256."""
    sums = {rel: sha256_file(p) for rel, p in _walk(root) if rel != CHECKSUMS_FILE}
    body = "".join(f"{digest}  {rel}\n" for rel, digest in sorted(sums.items()))
    fsync_write(root / CHECKSUMS_FILE, body.encode())
    return sums


def read_checksums(root: Path) -> dict[str, str]:
    """Parse ``CHECKSUMS`` of an export (path -> sha256) without hashing anything."""
    path = root / CHECKSUMS_FILE
    if not path.is_file():
        raise ExportError(
            f"{root} is an incomplete export: it has no {CHECKSUMS_FILE} file (written last, so "
            "the export did not finish or the file was removed); re-export the checkpoint"
        )
    sums: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        m = re.fullmatch(r"([0-9a-f]{64})  (\S.*)", line)
        if not m or ".." in m.group(2).split("/") or m.group(2).startswith("/"):
            raise ExportError(f"{path}:{n} is malformed ({line[:80]!r}); re-export the model")
        sums[m.group(2)] = m.group(1)
    return sums


def verify_checksums(root: str | os.PathLike[str]) -> dict[str, str]:
    """Check that ``root`` holds exactly the files of its ``CHECKSUMS``, each with its sha256.

    Returns:
        relative path -> sha256 of every verified file.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ExportError: no checksum file (incomplete), a listed file missing, a file that is not
            listed (planted), a link, or a file whose content does not match; the message names
            the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"exported model {root} does not exist or is not a directory")
    sums = read_checksums(root)
    present = {rel: p for rel, p in _walk(root) if rel != CHECKSUMS_FILE}
    for rel in sorted(present.keys() - sums.keys()):
        raise ExportError(
            f"{root}: {rel} is not listed in {CHECKSUMS_FILE}; an export is immutable, so an extra "
            "file means it was tampered with. Remove the file or re-export"
        )
    for rel in sorted(sums.keys() - present.keys()):
        raise ExportError(f"{root}: {rel} is listed in {CHECKSUMS_FILE} but missing; re-export")
    for rel, expected in sorted(sums.items()):
        if sha256_file(present[rel]) != expected:
            raise ExportError(
                f"{root}: {rel} does not match its checksum (modified or corrupted); re-export "
                "the model or restore the file"
            )
    for rel in REQUIRED_FILES:
        if rel not in sums:
            raise ExportError(f"{root}: {rel} is missing from the export; re-export it")
    return sums


# ------------------------------------------------------------------------ versions and publish


def list_versions(model_dir: str | os.PathLike[str]) -> list[str]:
    """The published versions of a model, oldest first (``["v1", "v2", ...]``)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p.name) for p in model_dir.iterdir() if (m := VERSION_RE.match(p.name))
    ]
    return [name for _, name in sorted(found)]


@contextlib.contextmanager
def locked(model_dir: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``<model_dir>/.lock`` (released when the process dies)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(model_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


TMP_PREFIX = ".tmp-"


def _lock_dir(path: Path, block: bool) -> int | None:
    """An open descriptor of directory ``path`` holding an exclusive ``flock`` on it, or None when
    another live process holds it (``block=False``). The kernel drops the lock when the holder
    dies, which is how a dead export's temp folder is told from a live one."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_stale_temps(model_dir: Path) -> list[str]:
    """Remove the ``.tmp-*`` folders of exports that died (no process holds their ``flock``);
    call with :func:`locked` held. Returns the names removed."""
    removed = []
    for path in sorted(model_dir.glob(f"{TMP_PREFIX}*")):
        if path.is_symlink() or not path.is_dir():
            continue
        fd = _lock_dir(path, block=False)
        if fd is None:
            continue  # a live export is writing it
        try:
            shutil.rmtree(path)
            removed.append(path.name)
        finally:
            os.close(fd)
    return removed


def publish(model_dir: Path, write: Callable[[Path], None]) -> Path:
    """Write a new version with ``write(tmp_dir)`` and rename it to the next free ``v<N>``.

    ``write`` must leave every file in ``tmp_dir``; ``CHECKSUMS`` is added here, last. On any
    error the temporary directory is removed and no version appears. The temp folders of exports
    that were killed (their ``flock`` is gone) are removed first.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    with locked(model_dir):
        for name in remove_stale_temps(model_dir):
            log.warning("%s: removed %s, left by an export that died", model_dir, name)
        tmp = model_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        fd = _lock_dir(tmp, block=True)
    try:
        write(tmp)
        write_checksums(tmp)
        fsync_dir(tmp)
        with locked(model_dir):
            versions = list_versions(model_dir)
            number = int(versions[-1][1:]) + 1 if versions else 1
            final = model_dir / f"v{number}"
            assert not final.exists(), f"{final} exists although it is not a listed version"
            os.rename(tmp, final)
            fsync_dir(model_dir)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)
