"""Names read from configs and data files must not lead outside the root they are meant for.

    safe_join("out/train/run", "checkpoints")        # -> out/train/run/checkpoints
    safe_join("out/train/run", "../other")           # ValueError: leads outside
    check_relative("split=train/bucket=00001/part-00000.parquet", "files[3].path")   # ok

:func:`check_relative` is a pure text check (it also suits ``s3://`` roots): not absolute, no
``..`` component, no backslash or NUL. :func:`safe_join` adds the file-system check for a local root:
after resolving symlinks the path is still inside the resolved root, so a planted symlink cannot
redirect writes elsewhere. Used where the trainer names an output or opens a path that came from a
config or a data file: the run's ``checkpoints`` directory, the checkpoint ``latest`` pointer, the
episode manifest's file paths.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


def check_relative(name: str, what: str) -> str:
    """Return ``name`` if it is a plain relative path below its root (text check only).

    Raises:
        ValueError: ``name`` is empty, absolute, has a ``..`` component, a backslash or a NUL.
    """
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise ValueError(f"{what} must be a relative path, got {name!r}")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        raise ValueError(
            f"{what} = {name!r} leads outside its root (absolute, '..' or a scheme); "
            "only paths below the root are allowed"
        )
    return name


def safe_join(root: str | os.PathLike[str], relative: str, what: str = "path") -> Path:
    """``root / relative``, refused when it leads outside ``root`` (also through symlinks).

    Args:
        root: a local directory (it need not exist yet).
        relative: a relative path from a config or a data file.
        what: how to name ``relative`` in the error (e.g. ``"checkpoints directory"``).

    Raises:
        ValueError: see :func:`check_relative`; or the joined path resolves outside ``root``.
    """
    check_relative(relative, what)
    base = Path(root)
    path = base / relative
    real_base, real = base.resolve(), path.resolve()
    if real != real_base and real_base not in real.parents:
        raise ValueError(
            f"{what} {path} resolves to {real}, outside {real_base} (a symlink leads out); "
            "remove the link or choose another output directory"
        )
    return path


def output_file(root: str | os.PathLike[str], name: str, what: str) -> Path:
    """``root / name`` for writing: refused when a symlink there (or on the way) leads outside
    ``root``, or when the file itself is a symlink (a write would go through it, or replace it).

    Raises:
        ValueError: names the planted link and where it points.
    """
    path = safe_join(root, name, what)
    if path.is_symlink():
        raise ValueError(
            f"{what} {path} is a symlink (to {os.readlink(path)}); the trainer writes its outputs "
            "as plain files inside the run directory and never through a link: remove the link"
        )
    return path


def check_apart(output: str | os.PathLike[str], source: str | os.PathLike[str],
                out_what: str, in_what: str) -> None:  # fmt: skip
    """Refuse an output that is, lies inside or contains an input (paths resolved, symlinks
    followed), so a run never overwrites or re-reads what it reads.

    Raises:
        ValueError: names both paths and what to change.
    """
    out, src = Path(output).resolve(), Path(source).resolve()
    if out == src:
        how = "is"
    elif src in out.parents:
        how = "lies inside"
    elif out in src.parents:
        how = "contains"
    else:
        return
    raise ValueError(
        f"{out_what} {output} {how} {in_what} {source} (resolved: {out} and {src}): the run would "
        f"overwrite or re-read its own input; write {out_what} outside {in_what}"
    )
