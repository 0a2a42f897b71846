from __future__ import annotations

import json
import logging
import multiprocessing
import os
import stat
import threading
from pathlib import Path
from typing import Any

import filelock
import pytest

from python_backends.storage import JsonFileStore, atomic_write_bytes


def test_atomic_write_creates_parents_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "state.json"

    atomic_write_bytes(target, b"hello")

    assert target.read_bytes() == b"hello"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_atomic_write_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"x" * 1000)

    atomic_write_bytes(target, b"short")

    assert target.read_bytes() == b"short"


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]

    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_missing_file_reads_as_empty(tmp_path: Path) -> None:
    assert JsonFileStore(tmp_path / "missing.json").read() == {}


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_a_damaged_file_reads_as_empty_with_one_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    store = JsonFileStore(path)

    with caplog.at_level(logging.WARNING, logger="python_backends.storage"):
        assert store.read() == {}
        assert store.read() == {}

    assert len(caplog.records) == 1
    assert str(path) in caplog.records[0].getMessage()


def test_update_persists_the_result_and_returns_it(tmp_path: Path) -> None:
    store = JsonFileStore(tmp_path / "state.json")

    result = store.update(lambda data: {**data, "n": data.get("n", 0) + 1})
    result = store.update(lambda data: {**data, "n": data.get("n", 0) + 1})

    assert result == {"n": 2}
    assert json.loads((tmp_path / "state.json").read_text()) == {"n": 2}
    assert JsonFileStore(tmp_path / "state.json").read() == {"n": 2}


def test_update_hands_the_function_a_private_copy(tmp_path: Path) -> None:
    store = JsonFileStore(tmp_path / "state.json")
    store.write({"items": [1]})
    seen: list[dict[str, Any]] = []

    def mutate_then_fail(data: dict[str, Any]) -> dict[str, Any]:
        data["items"].append(2)
        seen.append(data)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.update(mutate_then_fail)

    assert seen == [{"items": [1, 2]}]
    assert store.read() == {"items": [1]}


def test_an_update_that_changes_nothing_does_not_rewrite_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = JsonFileStore(path)
    store.write({"n": 1})
    inode = path.stat().st_ino

    store.update(lambda data: data)

    assert path.stat().st_ino == inode


def test_an_update_repairs_a_damaged_file_even_when_the_result_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{garbage")
    store = JsonFileStore(path)

    store.update(lambda data: data)

    assert json.loads(path.read_text()) == {}


def test_update_rejects_a_non_dict_result_and_keeps_the_file(tmp_path: Path) -> None:
    store = JsonFileStore(tmp_path / "state.json")
    store.write({"n": 1})

    with pytest.raises(TypeError, match="must return a dict"):
        store.update(lambda data: [1])  # type: ignore[arg-type,return-value]

    assert store.read() == {"n": 1}


def test_update_times_out_while_another_holder_keeps_the_lock(tmp_path: Path) -> None:
    store = JsonFileStore(tmp_path / "state.json", lock_timeout_s=0.1)
    other = filelock.FileLock(str(store.lock_path))
    acquired = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with other:
            acquired.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert acquired.wait(5)
        with pytest.raises(TimeoutError):
            store.update(lambda data: {"n": 1})
    finally:
        release.set()
        holder.join(5)
    assert store.read() == {}
    store.update(lambda data: {"n": 1})  # the lock is usable again
    assert store.read() == {"n": 1}


def _increment(path: str, times: int) -> None:
    store = JsonFileStore(Path(path))
    for _ in range(times):
        store.update(lambda data: {"n": data.get("n", 0) + 1})


def test_two_processes_incrementing_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "counter.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_increment, args=(str(path), 150)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0

    assert JsonFileStore(path).read() == {"n": 300}


def test_threads_of_one_process_incrementing_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "counter.json"
    store = JsonFileStore(path)
    threads = [threading.Thread(target=_increment_store, args=(store, 50)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert store.read() == {"n": 200}
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def _increment_store(store: JsonFileStore, times: int) -> None:
    for _ in range(times):
        store.update(lambda data: {"n": data.get("n", 0) + 1})


def test_state_files_are_owner_only(tmp_path: Path) -> None:
    store = JsonFileStore(tmp_path / "breaker.json")
    store.update(lambda current: {**current, "state": "closed"})
    assert stat.S_IMODE((tmp_path / "breaker.json").stat().st_mode) == 0o600
