"""Where a circuit breaker's state lives: in memory (tests) or in a JSON file shared by every instance of a model.

`FileBreakerStorage` re-reads the file on every decision and writes it atomically under a file lock, so a trip made by
one instance (process) stops its siblings too and survives a kill -9 and restart.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from python_backends.breaker import BreakerSnapshot
from python_backends.storage import JsonFileStore

__all__ = [
    "BreakerStorage",
    "FileBreakerStorage",
    "MemoryBreakerStorage",
]

log = logging.getLogger(__name__)

R = TypeVar("R")

# ---------------------------------------------------------------------------------------------------------------
# Storage


class BreakerStorage(Protocol):
    """Where a breaker's snapshot lives. `transact` must run `fn` atomically with respect to every other user of the
    same storage (threads and, for shared storage, processes) and store the snapshot it returns."""

    def load(self) -> BreakerSnapshot | None: ...

    def transact(self, fn: Callable[[BreakerSnapshot | None], tuple[BreakerSnapshot, R]]) -> R: ...


class MemoryBreakerStorage:
    """Process-local storage: tests, and models that run a single instance."""

    def __init__(self, snapshot: BreakerSnapshot | None = None) -> None:
        self._lock = threading.Lock()
        self._snapshot = snapshot

    def load(self) -> BreakerSnapshot | None:
        return self._snapshot

    def transact(self, fn: Callable[[BreakerSnapshot | None], tuple[BreakerSnapshot, R]]) -> R:
        with self._lock:
            self._snapshot, result = fn(self._snapshot)
            return result


class FileBreakerStorage:
    """One JSON file per breaker, shared by every process that opens the same path.

    A damaged or foreign file reads as "no state" (the breaker starts CLOSED) with one warning, and the next change
    overwrites it: a corrupt state file must never take the request path down. Unchanged snapshots aren't rewritten,
    so the steady CLOSED state costs a file read per call and no fsync.
    """

    def __init__(self, path: Path, lock_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._store = JsonFileStore(self.path, lock_timeout_s=lock_timeout_s)
        self._warned = False
        self._cached: tuple[tuple[int, int, int], BreakerSnapshot | None] | None = None

    def load(self) -> BreakerSnapshot | None:
        """The stored snapshot. Re-parsed only when the file changed: every write is a rename (new inode), so a stat
        tells whether anything happened since the last read; the steady state costs one stat per call."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._cached = None
            return None
        except OSError:
            return self._parse(self._store.read())
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        snap = self._parse(self._store.read())
        self._cached = (key, snap)
        return snap

    def transact(self, fn: Callable[[BreakerSnapshot | None], tuple[BreakerSnapshot, R]]) -> R:
        results: list[R] = []

        def apply(data: dict[str, Any]) -> dict[str, Any]:
            current = self._parse(data)
            new, result = fn(current)
            results.append(result)
            return data if new == current else new.to_json()

        self._store.update(apply)
        return results[-1]

    def _parse(self, data: dict[str, Any]) -> BreakerSnapshot | None:
        if not data:
            return None
        try:
            snap = BreakerSnapshot.from_json(data)
        except ValueError as exc:
            if not self._warned:
                log.warning("breaker state file %s is unusable (%s); starting CLOSED", self.path, exc)
                self._warned = True
            return None
        self._warned = False
        return snap
