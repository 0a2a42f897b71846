"""Per-stream state (smoothing, tracks, ...) shared by every instance process of a model.

Triton may send consecutive frames of one stream to different instances, and each instance is a process, so the
state can't live in the model object (the runtime we replace kept one smoother for all streams in a module global).
SQLite in WAL mode gives cross-process transactions with readers that don't block: each `update` is one
`BEGIN IMMEDIATE` read-modify-write, so two instances updating one stream serialise instead of losing a frame.

The store is bounded: streams idle for `idle_ttl_s` are evicted, and beyond `max_streams` the least recently seen
go first, so clients that invent a stream id per request can't grow it without limit.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

__all__ = ["StreamStateStore"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    stream_id  TEXT PRIMARY KEY,
    config_key TEXT NOT NULL,
    state      TEXT NOT NULL,
    last_seen  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS streams_last_seen ON streams (last_seen);
"""

#: run idle eviction every this many updates (plus whenever a new stream pushes the count over the bound)
EVICT_EVERY = 100


class StreamStateStore:
    """`update(stream_id, config_key, fn)` is the whole interface models need; the rest is for tests and tooling.

    One connection per store, guarded by a lock: sqlite3 objects aren't safe to share between threads, and the
    watchdog may run inference on a different thread per call. `fn` runs inside the write transaction, so it must be
    quick (update a dict, not run a model): siblings wait for the database meanwhile.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_streams: int = 10000,
        idle_ttl_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 10.0,
    ) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        if not idle_ttl_s > 0:
            raise ValueError(f"idle_ttl_s must be > 0, got {idle_ttl_s}")
        self.path = Path(path)
        self.max_streams = max_streams
        self.idle_ttl_s = idle_ttl_s
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()
        self._updates = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        try:
            # Every instance of a model opens the store at the same moment when Triton loads it, and switching a new
            # database to WAL takes a lock that SQLite's busy handler does not wait for ("database is locked" at
            # load, seen in CI): the set-up is serialised across processes by a file lock instead.
            with FileLock(str(self.path) + ".init.lock", timeout=busy_timeout_s):
                conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                # WAL + NORMAL: a power cut may lose the last updates, never corrupt the file; per-stream smoothing
                # state isn't worth an fsync per frame.
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    def update(
        self, stream_id: str, config_key: str, fn: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]:
        """Read-modify-write one stream's state atomically across processes, and return the new state.

        `fn` gets None for a new stream, and also when `config_key` differs from the stored one: a CONFIG change
        (e.g. new zones) restarts that stream's state rather than mixing the old configuration's state into it.
        """
        now = self._clock()
        with self._locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT config_key, state FROM streams WHERE stream_id = ?", (stream_id,)).fetchone()
                previous = self._decode(stream_id, row[1]) if row is not None and row[0] == config_key else None
                new = fn(previous)
                if not isinstance(new, dict):
                    raise TypeError(f"stream state must be a dict, got {type(new).__name__}")
                conn.execute(
                    "INSERT INTO streams (stream_id, config_key, state, last_seen) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (stream_id) DO UPDATE SET "
                    "config_key = excluded.config_key, state = excluded.state, last_seen = excluded.last_seen",
                    (stream_id, config_key, json.dumps(new, separators=(",", ":")), now),
                )
                if row is None:
                    self._evict_over_bound(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._updates += 1
            if self._updates % EVICT_EVERY == 0:
                self._evict_idle(conn, now)
        return new

    def get(self, stream_id: str) -> dict[str, Any] | None:
        with self._locked() as conn:
            row = conn.execute("SELECT state FROM streams WHERE stream_id = ?", (stream_id,)).fetchone()
        return None if row is None else self._decode(stream_id, row[0])

    def reset(self, stream_id: str) -> bool:
        """Forget one stream; False if it wasn't stored."""
        with self._locked() as conn:
            return conn.execute("DELETE FROM streams WHERE stream_id = ?", (stream_id,)).rowcount > 0

    def count(self) -> int:
        with self._locked() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM streams").fetchone()[0])

    def evict_idle(self) -> int:
        """Remove streams idle for `idle_ttl_s`, then the least recently seen beyond `max_streams`; returns how many."""
        now = self._clock()
        with self._locked() as conn:
            return self._evict_idle(conn, now)

    def close(self) -> None:
        """Close the connection; safe to call twice. Later calls raise RuntimeError."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # internals -------------------------------------------------------------------------------------------------

    def _locked(self) -> _Locked:
        return _Locked(self)

    def _evict_idle(self, conn: sqlite3.Connection, now: float) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            removed = conn.execute("DELETE FROM streams WHERE last_seen < ?", (now - self.idle_ttl_s,)).rowcount
            removed += self._evict_over_bound(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if removed:
            log.info("stream store %s: evicted %d stream(s)", self.path, removed)
        return removed

    def _evict_over_bound(self, conn: sqlite3.Connection) -> int:
        excess = int(conn.execute("SELECT COUNT(*) FROM streams").fetchone()[0]) - self.max_streams
        if excess <= 0:
            return 0
        return conn.execute(
            "DELETE FROM streams WHERE rowid IN (SELECT rowid FROM streams ORDER BY last_seen ASC, rowid ASC LIMIT ?)",
            (excess,),
        ).rowcount

    def _decode(self, stream_id: str, raw: str) -> dict[str, Any] | None:
        try:
            state = json.loads(raw)
        except ValueError:
            state = None
        if not isinstance(state, dict):
            log.warning("stream store %s: unreadable state for stream %s; starting it afresh", self.path, stream_id)
            return None
        return state


class _Locked:
    """The store's lock plus its open connection (with a timeout, so a wedged thread can't stall others forever)."""

    def __init__(self, store: StreamStateStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        if not store._lock.acquire(timeout=store._busy_timeout_s):
            raise TimeoutError(f"stream store {store.path}: lock not acquired within {store._busy_timeout_s}s")
        if store._conn is None:
            store._lock.release()
            raise RuntimeError(f"stream store {store.path} is closed")
        return store._conn

    def __exit__(self, *exc_info: object) -> None:
        self._store._lock.release()
