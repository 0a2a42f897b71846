"""Per-stream state (smoothing, tracks, ...) shared by every instance process of a model, or by a whole fleet.

Triton may send consecutive frames of one stream to different instances, and each instance is a process, so the
state can't live in the model object (the runtime we replace kept one smoother for all streams in a module global).
Behind a load balancer, consecutive frames may even land on different servers. `StreamStore` is the one interface
models use (through `ctx.advance`); `RUTH_STREAM_STORE` picks its backend:

- `sqlite` (default): one SQLite file per model in the server's state dir. WAL mode gives cross-process
  transactions with readers that don't block: each `update` is one `BEGIN IMMEDIATE` read-modify-write, so two
  instances updating one stream serialise instead of losing a frame. Enough for one server.
- `redis://host:port/db` (or `rediss://` for TLS): one Redis shared by every server of a fleet; see
  `python_backends/streams_redis.py` (optimistic read-modify-write, TTL-native idle expiry).

Both are bounded the same way: streams idle for `idle_ttl_s` are evicted, and beyond `max_streams` the least recently
seen go first, so clients that invent a stream id per request can't grow the store without limit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from filelock import FileLock

from python_backends.bounds import above, at_least
from python_backends.errors import ModelLoadError
from python_backends.params import DEFAULTS
from python_backends.state import StateLayout

__all__ = [
    "SqliteStreamStore",
    "StreamStore",
    "StreamStoreSpec",
    "open_stream_store",
]

log = logging.getLogger(__name__)

StepFn = Callable[[dict[str, Any] | None], dict[str, Any]]

#: connection options a redis:// URL may carry (everything else is refused, so a typo isn't silently ignored)
REDIS_URL_OPTIONS = frozenset({"socket_timeout", "socket_connect_timeout"})


class StreamStore(Protocol):
    """What a stateful model needs. `update` is the whole hot path; the rest serves metrics, tests and tooling.

    `update(stream_id, config_key, fn)` reads the stream's state, calls `fn(state)` (None for a new stream, or when
    `config_key` differs from the stored one) and stores what it returns, atomically with respect to every other
    instance sharing the store. `fn` may be called more than once for one update (Redis retries when another server
    wrote the stream in between), so it must be a pure function of its argument, and quick.
    """

    def update(self, stream_id: str, config_key: str, fn: StepFn) -> dict[str, Any]: ...

    def get(self, stream_id: str) -> dict[str, Any] | None: ...

    def reset(self, stream_id: str) -> bool: ...

    def count(self) -> int: ...

    def evict_idle(self) -> int: ...

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class StreamStoreSpec:
    """`RUTH_STREAM_STORE` (+ `RUTH_STREAM_STORE_PASSWORD_FILE`), validated: where stream state lives.

    The Redis password never travels in the URL (it would show in `ps e`, `kubectl describe`, `docker inspect`):
    it is read from a file, normally a mounted secret.
    """

    kind: str  # "sqlite" | "redis"
    url: str = ""  # redis only, without any password
    password_file: Path | None = None
    socket_timeout_s: float = 1.0
    connect_timeout_s: float = 1.0

    @classmethod
    def parse(cls, value: str | None, password_file: str | Path | None = None) -> StreamStoreSpec:
        """ValueError with the fix for anything but `sqlite` or a well-formed, password-free redis URL."""
        text = (value or "sqlite").strip()
        if text.lower() == "sqlite":
            return cls(kind="sqlite")  # a password file set for later use is harmless
        parts = urlsplit(text)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(
                f"RUTH_STREAM_STORE must be 'sqlite' or a redis:// / rediss:// URL, got scheme {parts.scheme!r}"
            )
        if parts.password is not None:
            raise ValueError(
                "RUTH_STREAM_STORE must not carry a password (it would be visible in process and environment "
                "listings): put it in a file (mode 0600) named by RUTH_STREAM_STORE_PASSWORD_FILE"
            )
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"RUTH_STREAM_STORE has an invalid port: {exc}") from exc
        if not parts.hostname:
            raise ValueError("RUTH_STREAM_STORE redis URL needs a host, e.g. redis://redis:6379/0")
        db = parts.path.strip("/") or "0"
        if not db.isdigit():
            raise ValueError(f"RUTH_STREAM_STORE redis database must be a number, got {db!r}")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(options) - REDIS_URL_OPTIONS)
        if unknown:
            raise ValueError(
                f"RUTH_STREAM_STORE: unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(REDIS_URL_OPTIONS))}"
            )
        timeouts = {}
        for key in REDIS_URL_OPTIONS & set(options):
            try:
                timeouts[key] = float(options[key])
            except ValueError as exc:
                raise ValueError(f"RUTH_STREAM_STORE option {key} must be seconds, got {options[key]!r}") from exc
            if not 0 < timeouts[key] <= 60:
                raise ValueError(f"RUTH_STREAM_STORE option {key} must be in (0, 60] seconds")
        path = Path(password_file) if password_file else None
        if path is not None and not path.is_file():
            raise ValueError(f"RUTH_STREAM_STORE_PASSWORD_FILE {path} is not a readable file")
        user = f"{parts.username}@" if parts.username else ""
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(
            kind="redis",
            url=f"{parts.scheme}://{user}{host}:{port or 6379}/{db}",
            password_file=path,
            socket_timeout_s=timeouts.get("socket_timeout", 1.0),
            connect_timeout_s=timeouts.get("socket_connect_timeout", 1.0),
        )

    def describe(self) -> str:
        """For logs and error messages: never the password."""
        return "sqlite" if self.kind == "sqlite" else self.url

    def read_password(self) -> str | None:
        if self.password_file is None:
            return None
        try:
            mode = self.password_file.stat().st_mode
            text = self.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelLoadError(f"RUTH_STREAM_STORE_PASSWORD_FILE {self.password_file}: {exc.strerror}") from exc
        if mode & 0o007:
            log.warning(
                "RUTH_STREAM_STORE_PASSWORD_FILE %s is readable by every user (mode %o); make it 0600/0400",
                self.password_file,
                mode & 0o777,
            )
        password = text.strip("\r\n")
        if not password:
            raise ModelLoadError(f"RUTH_STREAM_STORE_PASSWORD_FILE {self.password_file} is empty")
        return password


def open_stream_store(
    spec: StreamStoreSpec, *, state_dir: Path, namespace: str, max_streams: int, idle_ttl_s: float
) -> StreamStore:
    """The configured store for one model version (`namespace`, e.g. `fall_detection-1`)."""
    if spec.kind == "redis":
        from python_backends.streams_redis import RedisStreamStore  # the redis client only where it is configured

        return RedisStreamStore(spec, namespace, max_streams=max_streams, idle_ttl_s=idle_ttl_s)
    return SqliteStreamStore(
        StateLayout(state_dir).stream_db(namespace), max_streams=max_streams, idle_ttl_s=idle_ttl_s
    )


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


class SqliteStreamStore:
    """`update(stream_id, config_key, fn)` is the whole interface models need; the rest is for tests and tooling.

    One connection per store, guarded by a lock: sqlite3 objects aren't safe to share between threads, and the
    watchdog may run inference on a different thread per call. `fn` runs inside the write transaction, so it must be
    quick (update a dict, not run a model): siblings wait for the database meanwhile.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_streams: int = DEFAULTS.state.max_streams,
        idle_ttl_s: float = DEFAULTS.state.idle_ttl_s,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.max_streams = at_least("max_streams", max_streams, 1)
        self.idle_ttl_s = above("idle_ttl_s", idle_ttl_s, 0)
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()
        self._updates = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Every instance of a model opens the store at the same moment when Triton loads it, and switching a new
        # database to WAL takes a lock that SQLite's busy handler does not wait for ("database is locked" at load,
        # seen in CI): the set-up (and moving a damaged file aside) is serialised across processes by a file lock.
        with FileLock(str(self.path) + ".init.lock", timeout=busy_timeout_s):
            try:
                conn = self._open()
            except sqlite3.DatabaseError as exc:
                if not _is_damage(exc):
                    raise
                aside = self._move_aside()
                log.warning(
                    "stream store %s is damaged (%s): moved aside to %s; every stream of this model starts afresh",
                    self.path,
                    exc,
                    aside,
                )
                conn = self._open()
        self._conn: sqlite3.Connection | None = conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(self.path), timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a power cut may lose the last updates, never corrupt the file; per-stream smoothing
            # state isn't worth an fsync per frame.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
            # a damaged page deep in the file would otherwise fail frames one by one later; the store is small
            # (bounded by max_streams), so checking it once per load is cheap
            verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {verdict}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(self.path) + suffix)
            if source.exists():
                source.replace(Path(str(aside) + suffix))
        return aside

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
        return decode_state(raw, where=self.path, stream_id=stream_id)


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """A file that is not a database or a malformed one, as opposed to a busy/locked/unwritable one."""
    name = getattr(exc, "sqlite_errorname", "")
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return True
    text = str(exc)
    return "malformed" in text or "not a database" in text


class _Locked:
    """The store's lock plus its open connection (with a timeout, so a wedged thread can't stall others forever)."""

    def __init__(self, store: SqliteStreamStore) -> None:
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


def decode_state(raw: str, *, where: object, stream_id: str) -> dict[str, Any] | None:
    """A stored state, or None (with a warning) when it isn't a JSON object: that stream starts afresh."""
    try:
        state = json.loads(raw)
    except ValueError:
        state = None
    if not isinstance(state, dict):
        log.warning("stream store %s: unreadable state for stream %s; starting it afresh", where, stream_id)
        return None
    return state
