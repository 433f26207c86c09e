"""One writer per interval: an exclusive lock that a run of the ETL holds from its staging setup
to its swap, so two runs of one interval never delete or replace each other's work.

The lock is ``<output>/_staging/<interval>.lock``, held with ``flock``: the kernel releases it
when its holder exits, however it dies, so a lock is never stale. A run that finds the lock held
stops at once with :class:`IntervalBusy` naming the holder (pid, host, start time), having
written nothing. The file holds its owner as JSON for that message and is removed on release;
a run that took the lock checks the path still names the file it locked (a releasing holder may
have removed it in between), else it tries again.

``flock`` needs a local (or NFS) filesystem. On an object store there is no lock: one run per
interval is then the scheduler's job (the delivery DAG runs one interval once at a time), and a
run removes no other staging folder there (see :func:`components.etl.load.open_staging`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass


class IntervalBusy(ValueError):
    """Another live run is writing this interval; this run wrote nothing."""


@dataclass
class IntervalLock:
    """A held lock (from :func:`lock_interval`); :meth:`release` it when the run ends."""

    path: str
    fd: int | None

    def release(self) -> None:
        """Remove the lock file, then unlock (in this order: see the module docstring)."""
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)  # closing the last descriptor releases the flock
        self.fd = None


def lock_interval(path: str, interval_id: str) -> IntervalLock:
    """Take the lock file ``path`` without waiting.

    Raises:
        IntervalBusy: another live process holds it (the message names it).
    """
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise IntervalBusy(
                f"interval {interval_id} is being written by another ETL run ({owner}; lock "
                f"{path}): this run stops without writing anything. Its result will be the same "
                "episodes; rerun after it ends if you need a fresh version"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # we locked a file its holder had just removed: try again
    owner = {"pid": os.getpid(), "host": socket.gethostname(),
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner).encode(), 0)
    return IntervalLock(path, fd)


def _read_owner(fd: int) -> str:
    try:
        owner = json.loads(os.pread(fd, 4096, 0))
        return f"pid {owner['pid']} on host {owner['host']}, started {owner['started']}"
    except (ValueError, KeyError, TypeError):  # the holder is writing it right now
        return "owner not yet recorded"
