"""Full disks and refused writes as one line naming the path and what was being written.

A write that fails for lack of space or permission surfaces from Spark as a ``Py4JJavaError``
whose text is the whole Java stack (hundreds of lines, the cause buried in the middle), and from
pyarrow or the OS as an ``OSError``. :func:`storage_error` recognises the cause in either (the
errno, or the JVM's words for it: ``No space left on device``, ``Permission denied``...) and
returns a :class:`StorageError` that says, in one line, what failed where::

    no space left on device while writing the episode files to /data/episodes/_staging/... (at
    /data/episodes/_staging/.../part-00003.parquet); free space there or write elsewhere
    (--output). The interval's previous version, if any, is untouched.
"""

from __future__ import annotations

import errno
import re

# (errno, the words the JVM or the OS uses for it, how we say it)
_CAUSES = (
    (errno.ENOSPC, ("No space left on device",), "no space left on device"),
    (errno.EDQUOT, ("Disk quota exceeded",), "disk quota exceeded"),
    (errno.EROFS, ("Read-only file system",), "read-only file system"),
    (errno.EACCES, ("Permission denied", "AccessDeniedException"), "permission denied"),
    (errno.EPERM, ("Operation not permitted",), "operation not permitted"),
)
_FIX = {
    errno.ENOSPC: "free space there or write elsewhere (--output)",
    errno.EDQUOT: "free space in the quota or write elsewhere (--output)",
    errno.EROFS: "write to a writable filesystem (--output)",
    errno.EACCES: "give this user write access there or write elsewhere (--output)",
    errno.EPERM: "give this user write access there or write elsewhere (--output)",
}
# Where the JVM names the file it could not write.
_JAVA_PATHS = (
    re.compile(r"FileNotFoundException: (\S+) \("),
    re.compile(r"Mkdirs failed to create (\S+)"),
    re.compile(r"AccessDeniedException: (\S+)"),
)


class StorageError(OSError, ValueError):
    """The output could not be written (full disk, quota, permission, read-only filesystem).

    A ``ValueError`` too, so ``metarec etl`` prints it as its one-line error (like ``io``'s
    ``UnsupportedOperation``, both an ``OSError`` and a ``ValueError``)."""


def storage_error(error: BaseException, doing: str, where: str) -> StorageError | None:
    """A one-line :class:`StorageError` for ``error`` if a full disk or a refused write caused
    it, else None.

    Args:
        error: what the write raised (a ``Py4JJavaError``, an ``OSError``...).
        doing: what was being written, e.g. ``"writing the episode files to"``.
        where: the folder it was written to.
    """
    for link in _chain(error):
        code = getattr(link, "errno", None)
        text = _text(link)
        for cause, words, said in _CAUSES:
            if code == cause or any(w in text for w in words):
                path = _java_path(text) or getattr(link, "filename", None)
                at = f" (at {path})" if path and path != where else ""
                err = StorageError(
                    f"{said} while {doing} {where}{at}; {_FIX[cause]}. The interval's previous "
                    "version, if any, is untouched"
                )
                err.errno = cause
                return err
    return None


def _chain(error: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while error is not None and error not in out:
        out.append(error)
        error = error.__cause__ or error.__context__
    return out


def _text(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:  # a Py4J error whose JVM is gone cannot render its Java side
        return type(error).__name__


def _java_path(text: str) -> str | None:
    for pattern in _JAVA_PATHS:
        if m := pattern.search(text):
            return m.group(1).rstrip(".,:;")
    return None
