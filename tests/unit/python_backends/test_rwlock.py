from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from python_backends.rwlock import FairRWLock


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for a state the test can observe (not a guess at how long something takes)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.001)


def start(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


class ReadHolder:
    """Holds the read lock on its own thread until `release()`."""

    def __init__(self, lock: FairRWLock) -> None:
        self._held, self._release = threading.Event(), threading.Event()

        def hold() -> None:
            with lock.read():
                self._held.set()
                self._release.wait(30)

        self._thread = start(hold)
        assert self._held.wait(5)

    def release(self) -> None:
        self._release.set()
        self._thread.join(5)


def test_readers_share_the_lock() -> None:
    lock = FairRWLock()
    inside = threading.Barrier(3, timeout=5)  # breaks (and fails the test) unless all 3 are inside together
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            with lock.read():
                inside.wait()
        except BaseException as exc:
            errors.append(exc)

    threads = [start(reader) for _ in range(3)]
    for thread in threads:
        thread.join(10)
    assert errors == []


def test_writers_exclude_readers_and_each_other() -> None:
    lock = FairRWLock()
    counter = [0]
    violations: list[str] = []

    def writer() -> None:
        for _ in range(200):
            with lock.write():
                if lock.readers:
                    violations.append("reader inside a write")
                value = counter[0]
                time.sleep(0)  # invite a lost update if the lock weren't exclusive
                counter[0] = value + 1

    def reader() -> None:
        for _ in range(200):
            with lock.read():
                before = counter[0]
                time.sleep(0)
                if counter[0] != before:
                    violations.append("write during a read")

    threads = [start(writer) for _ in range(3)] + [start(reader) for _ in range(3)]
    for thread in threads:
        thread.join(30)
    assert counter[0] == 600
    assert violations == []


def test_a_waiting_writer_holds_back_new_readers() -> None:
    lock = FairRWLock()
    holder = ReadHolder(lock)
    writer_in = threading.Event()

    def writer() -> None:
        with lock.write():
            writer_in.set()

    start(writer)
    wait_until(lambda: lock.writers_waiting == 1)

    with pytest.raises(TimeoutError):
        lock.acquire_read(timeout=0.05)  # free for readers, but a writer is waiting
    assert not writer_in.is_set()

    holder.release()
    assert writer_in.wait(5)


def test_a_writer_is_not_starved_by_a_stream_of_readers() -> None:
    lock = FairRWLock()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with lock.read():
                time.sleep(0.001)

    readers = [start(reader) for _ in range(4)]
    wait_until(lambda: lock.readers > 0)
    try:
        with lock.write(timeout=5):
            assert lock.readers == 0
    finally:
        stop.set()
        for thread in readers:
            thread.join(5)


def test_read_times_out_while_a_writer_holds_the_lock() -> None:
    lock = FairRWLock()
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with lock.write():
            held.set()
            release.wait(10)

    start(writer)
    assert held.wait(5)
    try:
        with pytest.raises(TimeoutError), lock.read(timeout=0.05):
            pass
    finally:
        release.set()
    with lock.read(timeout=5):
        pass


def test_write_times_out_while_readers_hold_the_lock_and_leaves_it_consistent() -> None:
    lock = FairRWLock()
    holder = ReadHolder(lock)

    with pytest.raises(TimeoutError):
        lock.acquire_write(timeout=0.05)

    assert lock.writers_waiting == 0
    assert not lock.write_locked
    with lock.read(timeout=0):  # readers aren't held back by a writer that gave up
        pass
    holder.release()
    with lock.write(timeout=1):
        pass


def test_a_writer_that_gives_up_wakes_the_readers_queued_behind_it() -> None:
    lock = FairRWLock()
    holder = ReadHolder(lock)  # keeps the writer waiting until it times out
    writer_outcome: list[str] = []
    reader_in = threading.Event()

    def writer() -> None:
        try:
            lock.acquire_write(timeout=0.3)
            writer_outcome.append("acquired")
        except TimeoutError:
            writer_outcome.append("timed out")

    def late_reader() -> None:
        with lock.read():  # no timeout: it must be woken, not time out
            reader_in.set()

    writer_thread = start(writer)
    wait_until(lambda: lock.writers_waiting == 1)
    start(late_reader)

    writer_thread.join(5)
    assert writer_outcome == ["timed out"]
    assert reader_in.wait(5), "reader stayed blocked behind a writer that had given up"
    holder.release()


def test_nested_reads_do_not_deadlock_behind_a_waiting_writer() -> None:
    lock = FairRWLock()
    writer_in = threading.Event()
    with lock.read():

        def writer() -> None:
            with lock.write():
                writer_in.set()

        start(writer)
        wait_until(lambda: lock.writers_waiting == 1)
        with lock.read(timeout=1):
            assert lock.readers == 1
    assert writer_in.wait(5)


def test_upgrading_or_reentering_the_write_lock_is_refused_instead_of_deadlocking() -> None:
    lock = FairRWLock()
    with lock.read(), pytest.raises(RuntimeError, match="would deadlock"):
        lock.acquire_write(timeout=1)
    with lock.write():
        with pytest.raises(RuntimeError):
            lock.acquire_write(timeout=1)
        with pytest.raises(RuntimeError):
            lock.acquire_read(timeout=1)
    assert lock.writers_waiting == 0 and not lock.write_locked


def test_releasing_a_lock_not_held_is_an_error() -> None:
    lock = FairRWLock()
    with pytest.raises(RuntimeError):
        lock.release_read()
    with pytest.raises(RuntimeError):
        lock.release_write()


def test_a_negative_timeout_is_rejected() -> None:
    with pytest.raises(ValueError):
        FairRWLock().acquire_read(timeout=-1)
