"""A fair, writer-preferring readers-writer lock for in-process shared state (e.g. weights swapped under readers).

Writer preference: once a writer waits, new readers wait behind it, so a steady stream of readers can't starve a
writer. Writes are meant to be rare (a reload), so readers can't be starved in practice. Timeouts leave the lock
consistent: a writer that gives up stops blocking the readers queued behind it.

Reads are re-entrant per thread (a nested read while a writer waits would otherwise deadlock); a thread that asks
for the write lock while holding either lock gets `RuntimeError` instead of a deadlock.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

__all__ = ["FairRWLock"]


class FairRWLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers: dict[int, int] = {}  # thread ident -> read depth
        self._writer: int | None = None  # thread ident holding the write lock
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self, timeout: float | None = None) -> Iterator[None]:
        """Shared access; `TimeoutError` if not granted within `timeout` seconds (None waits forever)."""
        self.acquire_read(timeout)
        try:
            yield
        finally:
            self.release_read()

    @contextlib.contextmanager
    def write(self, timeout: float | None = None) -> Iterator[None]:
        """Exclusive access; `TimeoutError` if not granted within `timeout` seconds (None waits forever)."""
        self.acquire_write(timeout)
        try:
            yield
        finally:
            self.release_write()

    def acquire_read(self, timeout: float | None = None) -> None:
        me = threading.get_ident()
        deadline = _deadline(timeout)
        with self._cond:
            if self._writer == me:
                raise RuntimeError("read lock requested by the thread holding the write lock")
            if me not in self._readers:  # a nested read goes straight through
                while self._writer is not None or self._writers_waiting:
                    if not self._cond.wait(_remaining(deadline)) and _expired(deadline):
                        raise TimeoutError(f"read lock not granted within {timeout}s")
            self._readers[me] = self._readers.get(me, 0) + 1

    def release_read(self) -> None:
        me = threading.get_ident()
        with self._cond:
            depth = self._readers.get(me, 0)
            if depth == 0:
                raise RuntimeError("release_read by a thread that holds no read lock")
            if depth == 1:
                del self._readers[me]
                if not self._readers:
                    self._cond.notify_all()
            else:
                self._readers[me] = depth - 1

    def acquire_write(self, timeout: float | None = None) -> None:
        me = threading.get_ident()
        deadline = _deadline(timeout)
        with self._cond:
            if self._writer == me or me in self._readers:
                raise RuntimeError("write lock requested by a thread that already holds this lock (would deadlock)")
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    if not self._cond.wait(_remaining(deadline)) and _expired(deadline):
                        raise TimeoutError(f"write lock not granted within {timeout}s")
            except BaseException:
                self._writers_waiting -= 1
                if self._writer is None and not self._writers_waiting:
                    self._cond.notify_all()  # readers that queued behind this writer may go now
                raise
            self._writers_waiting -= 1
            self._writer = me

    def release_write(self) -> None:
        with self._cond:
            if self._writer != threading.get_ident():
                raise RuntimeError("release_write by a thread that doesn't hold the write lock")
            self._writer = None
            self._cond.notify_all()

    @property
    def readers(self) -> int:
        """Threads holding the read lock now (for tests and diagnostics)."""
        with self._cond:
            return len(self._readers)

    @property
    def writers_waiting(self) -> int:
        with self._cond:
            return self._writers_waiting

    @property
    def write_locked(self) -> bool:
        with self._cond:
            return self._writer is not None


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, got {timeout}")
    return time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
