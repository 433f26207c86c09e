"""Run an iterator in a background thread with a bounded queue (torch-free).

The producer puts at most ``depth`` items ahead of the consumer. An exception in the producer is
re-raised in the consumer (the same exception object, so its traceback still shows the
producer's frames). :meth:`Prefetcher.close` stops the thread: the producer checks a stop flag
between items and never blocks on a full queue for more than ``_POLL_S``; the thread is a daemon
and a ``weakref.finalize`` hook stops it at interpreter exit, so nothing hangs there.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)
_POLL_S = 0.05
_JOIN_S = 60.0


class _End:
    pass


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(q: queue.Queue, stop: threading.Event, item: Any) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _produce(it: Iterator[Any], q: queue.Queue, stop: threading.Event) -> None:
    try:
        for item in it:
            if not _put(q, stop, item):
                return
        _put(q, stop, _End())
    except BaseException as e:
        _put(q, stop, _Failure(e))
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _shutdown(stop: threading.Event, q: queue.Queue, thread: threading.Thread) -> None:
    stop.set()
    while True:  # unblock a producer waiting on a full queue, drop what it made
        try:
            q.get_nowait()
        except queue.Empty:
            break
    if thread.is_alive() and thread is not threading.current_thread():
        thread.join(_JOIN_S)
        if thread.is_alive():
            log.warning("prefetch thread %s did not stop within %.0f s", thread.name, _JOIN_S)


class Prefetcher:
    """Iterate ``it`` in a daemon thread, ``depth`` items ahead (``depth`` >= 1)."""

    def __init__(self, it: Iterator[Any], depth: int, name: str = "metarec-prefetch") -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.thread = threading.Thread(
            target=_produce, args=(it, self._queue, self._stop), name=name, daemon=True
        )
        self._finalizer = weakref.finalize(self, _shutdown, self._stop, self._queue, self.thread)
        self._done = False
        self.thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self._queue.empty():
                    self._done = True
                    raise RuntimeError("the prefetch thread stopped without a result") from None
        if isinstance(item, _End):
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the producer thread and wait for it (idempotent)."""
        self._done = True
        self._finalizer()
