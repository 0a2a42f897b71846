from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from python_backends.streams import EVICT_EVERY, SqliteStreamStore


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[SqliteStreamStore]:
    s = SqliteStreamStore(tmp_path / "streams.sqlite", clock=clock)
    yield s
    s.close()


def bump(state: dict[str, Any] | None) -> dict[str, Any]:
    return {"n": (state or {}).get("n", 0) + 1}


def test_a_new_stream_starts_from_none(store: SqliteStreamStore) -> None:
    seen: list[dict[str, Any] | None] = []

    def fn(state: dict[str, Any] | None) -> dict[str, Any]:
        seen.append(state)
        return {"n": 1}

    assert store.update("s1", "cfg", fn) == {"n": 1}
    assert seen == [None]
    assert store.get("s1") == {"n": 1}


def test_streams_are_isolated(store: SqliteStreamStore) -> None:
    for _ in range(3):
        store.update("s1", "cfg", bump)
    store.update("s2", "cfg", bump)

    assert (store.get("s1"), store.get("s2"), store.get("s3")) == ({"n": 3}, {"n": 1}, None)


def test_a_config_change_resets_that_streams_state_only(store: SqliteStreamStore) -> None:
    store.update("s1", "zones-v1", bump)
    store.update("s1", "zones-v1", bump)
    store.update("s2", "zones-v1", bump)

    assert store.update("s1", "zones-v2", bump) == {"n": 1}
    assert store.update("s1", "zones-v2", bump) == {"n": 2}
    assert store.get("s2") == {"n": 1}


def test_a_failing_update_changes_nothing(store: SqliteStreamStore) -> None:
    store.update("s1", "cfg", bump)

    def fail(state: dict[str, Any] | None) -> dict[str, Any]:
        raise RuntimeError("bad frame")

    with pytest.raises(RuntimeError):
        store.update("s1", "cfg", fail)
    with pytest.raises(TypeError, match="must be a dict"):
        store.update("s1", "cfg", lambda state: [1])  # type: ignore[arg-type,return-value]

    assert store.get("s1") == {"n": 1}
    assert store.update("s1", "cfg", bump) == {"n": 2}  # no transaction left open


def test_reset_and_count(store: SqliteStreamStore) -> None:
    store.update("s1", "cfg", bump)
    store.update("s2", "cfg", bump)

    assert store.reset("s1") is True
    assert store.reset("s1") is False
    assert store.count() == 1
    assert store.update("s1", "cfg", bump) == {"n": 1}


def test_state_survives_reopening(tmp_path: Path, clock: FakeClock) -> None:
    first = SqliteStreamStore(tmp_path / "s.sqlite", clock=clock)
    first.update("s1", "cfg", bump)
    first.close()

    second = SqliteStreamStore(tmp_path / "s.sqlite", clock=clock)
    assert second.get("s1") == {"n": 1}
    second.close()


def test_idle_streams_are_evicted(store: SqliteStreamStore, clock: FakeClock) -> None:
    store.update("old", "cfg", bump)
    clock.now += 200
    store.update("recent", "cfg", bump)
    clock.now += 101  # "old" idle for 301 s, "recent" for 101 s

    assert store.evict_idle() == 1
    assert (store.get("old"), store.get("recent")) == (None, {"n": 1})


def test_idle_eviction_runs_by_itself_every_so_many_updates(store: SqliteStreamStore, clock: FakeClock) -> None:
    store.update("old", "cfg", bump)
    clock.now += 301
    for _ in range(EVICT_EVERY):
        store.update("busy", "cfg", bump)

    assert store.get("old") is None


def test_short_lived_streams_stay_bounded_by_max_streams(tmp_path: Path, clock: FakeClock) -> None:
    store = SqliteStreamStore(tmp_path / "s.sqlite", max_streams=100, clock=clock)
    try:
        for i in range(5000):
            clock.now += 0.001
            store.update(f"stream-{i}", "cfg", bump)
            if i % 500 == 0:
                assert store.count() <= 100
        assert store.count() == 100
        assert store.get("stream-4999") == {"n": 1}  # the newest stay
        assert store.get("stream-4899") is None  # the least recently seen go
        assert store.get("stream-4900") == {"n": 1}
    finally:
        store.close()


def test_eviction_keeps_the_streams_seen_most_recently(tmp_path: Path, clock: FakeClock) -> None:
    store = SqliteStreamStore(tmp_path / "s.sqlite", max_streams=2, clock=clock)
    store.update("a", "cfg", bump)
    clock.now += 1
    store.update("b", "cfg", bump)
    clock.now += 1
    store.update("a", "cfg", bump)  # "a" is now more recent than "b"
    clock.now += 1
    store.update("c", "cfg", bump)

    assert (store.get("a"), store.get("b"), store.get("c")) == ({"n": 2}, None, {"n": 1})
    store.close()


def _increment(path: str, times: int) -> None:
    store = SqliteStreamStore(Path(path))
    for _ in range(times):
        store.update("shared", "cfg", bump)
    store.close()


def test_two_processes_updating_one_stream_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    SqliteStreamStore(path).close()  # create the schema before the race
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_increment, args=(str(path), 200)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0

    reader = SqliteStreamStore(path)
    assert reader.get("shared") == {"n": 400}
    reader.close()


def test_threads_sharing_one_store_lose_nothing(store: SqliteStreamStore) -> None:
    def work() -> None:
        for _ in range(100):
            store.update("shared", "cfg", bump)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert store.get("shared") == {"n": 400}


def test_an_unreadable_row_restarts_that_stream(
    tmp_path: Path, store: SqliteStreamStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.update("s1", "cfg", bump)
    with sqlite3.connect(store.path) as raw:
        raw.execute("UPDATE streams SET state = '{torn' WHERE stream_id = 's1'")

    with caplog.at_level(logging.WARNING, logger="python_backends.streams"):
        assert store.get("s1") is None
        assert store.update("s1", "cfg", bump) == {"n": 1}
    assert "s1" in caplog.text


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    store = SqliteStreamStore(tmp_path / "s.sqlite")
    store.close()
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.update("s1", "cfg", bump)


def test_the_database_runs_in_wal_mode(store: SqliteStreamStore) -> None:
    with sqlite3.connect(store.path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("kwargs", [{"max_streams": 0}, {"idle_ttl_s": 0}])
def test_nonsense_bounds_are_rejected(tmp_path: Path, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SqliteStreamStore(tmp_path / "s.sqlite", **kwargs)  # type: ignore[arg-type]


def _open_and_update(path: str, barrier: Any, queue: Any) -> None:
    try:
        barrier.wait(timeout=60)
        store = SqliteStreamStore(Path(path))
        store.update("s", "k", lambda s: {"n": (s or {}).get("n", 0) + 1})
        store.close()
        queue.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        queue.put(f"{type(exc).__name__}: {exc}")


def test_instances_opening_a_new_store_at_the_same_moment_all_succeed(tmp_path: Path) -> None:
    """Triton starts every instance of a model together; a fresh database must not fail any of their loads.

    The instances are started by a fork server, not forked from pytest: a fork copies whatever lock another thread of
    this process holds at that moment (earlier tests leave model threads running), and the child can hang on it."""
    ctx = multiprocessing.get_context("forkserver")
    for attempt in range(20):  # without the set-up lock, about 1 attempt in 15 failed here
        path = tmp_path / f"fresh-{attempt}.sqlite"
        queue, barrier = ctx.Queue(), ctx.Barrier(4)
        procs = [ctx.Process(target=_open_and_update, args=(str(path), barrier, queue)) for _ in range(4)]
        for proc in procs:
            proc.start()
        outcomes = [queue.get(timeout=90) for _ in procs]
        for proc in procs:
            proc.join(timeout=10)
        assert outcomes == ["ok"] * 4
        assert SqliteStreamStore(path).get("s") == {"n": 4}


@pytest.mark.parametrize(
    "damage",
    [
        b"this is not a database at all" * 100,  # overwritten by something else
        b"SQLite format 3\x00" + b"\xff" * 4000,  # a header, then garbage (torn write, bad disk)
    ],
)
def test_a_damaged_database_is_moved_aside_and_started_afresh(
    tmp_path: Path, damage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "streams" / "m-1.sqlite"
    path.parent.mkdir()
    path.write_bytes(damage)

    with caplog.at_level(logging.WARNING, logger="python_backends.streams"):
        store = SqliteStreamStore(path)
    assert store.update("s1", "cfg", bump) == {"n": 1}
    store.close()
    aside = [p for p in path.parent.iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == damage  # kept for a post-mortem, not deleted
    assert "damaged" in caplog.text and str(aside[0]) in caplog.text


def test_a_busy_database_is_not_mistaken_for_a_damaged_one(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    SqliteStreamStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        store = SqliteStreamStore(path, busy_timeout_s=0.2)  # another process mid-transaction: opens all the same
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.update("s", "cfg", bump)  # and waits (here: gives up) instead of throwing the file away
        store.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not [p for p in tmp_path.iterdir() if ".damaged-" in p.name]
