"""Breaker files and the GPU ledger, read and repaired by ruthctl through the code that writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ruthctl.state_files import breaker_files, reap_ledger, remove_breaker, reset_breaker, stale_ledger_entries


def test_breaker_files_are_read_through_the_breakers_own_storage_and_reset(tmp_path: Path) -> None:
    from python_backends.breaker import BreakerPolicy, CircuitBreaker
    from python_backends.breaker_storage import FileBreakerStorage

    path = tmp_path / "breakers" / "tank-1.json"
    breaker = CircuitBreaker("tank:1", BreakerPolicy(failure_threshold=1), FileBreakerStorage(path), clock=lambda: 1e9)
    breaker.record_failure(breaker.admit())
    (tmp_path / "breakers" / "notes.txt").write_text("ignored")
    (tmp_path / "breakers" / "garbage-2.json").write_text("{")
    files = {b.model: b for b in breaker_files(tmp_path)}
    assert files["tank"].state == "open" and files["tank"].version == 1 and files["tank"].total_trips == 1
    assert files["garbage"].state is None
    reset_breaker(path, "tank:1")
    assert {b.model: b.state for b in breaker_files(tmp_path)}["tank"] == "closed"
    with pytest.raises(ValueError, match="not a breaker file"):
        remove_breaker(tmp_path, tmp_path / "gpu-ledger.json")
    remove_breaker(tmp_path, path)
    assert not path.exists() and not path.with_name("tank-1.json.lock").exists()


def test_ledger_entries_of_dead_processes_are_stale_and_reaped(tmp_path: Path) -> None:
    import os

    entry = {
        "pid": 0,
        "device_index": 0,
        "bytes": 1,
        "model": "m",
        "version": "1",
        "instance": "m_0_0",
        "created_at": 1.0,
        "token": None,
    }
    live = {**entry, "pid": os.getpid(), "instance": "m_0_1"}
    (tmp_path / "gpu-ledger.json").write_text(
        json.dumps({"reservations": {"dead": {**entry, "owner": "dead"}, "live": {**live, "owner": "live"}}})
    )
    assert [e["owner"] for e in stale_ledger_entries(tmp_path)] == ["dead"]
    assert reap_ledger(tmp_path) == 1
    assert stale_ledger_entries(tmp_path) == []
    assert stale_ledger_entries(tmp_path / "nowhere") == []


def test_breaker_files_of_one_model_or_version_and_their_time_to_retry(tmp_path: Path) -> None:
    from python_backends.breaker import BreakerPolicy, CircuitBreaker
    from python_backends.breaker_storage import FileBreakerStorage

    for model, version in (("tank", 1), ("tank", 2), ("fall", 1)):
        storage = FileBreakerStorage(tmp_path / "breakers" / f"{model}-{version}.json")
        policy = BreakerPolicy(failure_threshold=1, cooldown_s=30.0)
        breaker = CircuitBreaker(f"{model}:{version}", policy, storage, clock=lambda: 1000.0)
        breaker.record_failure(breaker.admit())
    assert sorted((b.model, b.version) for b in breaker_files(tmp_path, "tank")) == [("tank", 1), ("tank", 2)]
    assert [(b.model, b.version) for b in breaker_files(tmp_path, "tank:2")] == [("tank", 2)]
    assert breaker_files(tmp_path, "tank:3") == [] and breaker_files(tmp_path, "tan") == []
    [fall] = breaker_files(tmp_path, "fall:1")
    assert fall.retry_in_s(1000.0 + 12.34) == 17.7 and fall.retry_in_s(2000.0) == 0.0
    assert fall.to_json(1010.0) == {
        "model": "fall",
        "version": 1,
        "state": "open",
        "consecutive_failures": 1,
        "total_trips": 1,
        "retry_in_s": 20.0,
        "path": str(tmp_path / "breakers" / "fall-1.json"),
    }
    reset_breaker(fall.path, "fall:1")
    [closed] = breaker_files(tmp_path, "fall")
    assert closed.retry_in_s(1000.0) is None and closed.to_json(1000.0)["state"] == "closed"
