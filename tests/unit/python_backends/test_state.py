"""The state dir's one layout and its shared file formats: strict, and the same model for writer and reader."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from python_backends.breaker import BreakerSnapshot, BreakerState
from python_backends.gpu_ledger import GpuLedger, Reservation
from python_backends.state import (
    DEFAULT_STATE_DIR,
    StateLayout,
    default_state_dir,
    lock_file_of,
)


def test_the_layout_names_every_file_once(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    assert layout.breaker("fall_detection", "2") == tmp_path / "breakers" / "fall_detection-2.json"
    assert layout.gpu_ledger == tmp_path / "gpu-ledger.json"
    assert layout.stream_db("fall_detection-2") == tmp_path / "streams" / "fall_detection-2.sqlite"
    assert (layout.registry.name, layout.audit_log.name, layout.admin_token.name) == (
        "registry.json",
        "registry-audit.jsonl",
        "admin-token",
    )
    assert layout.command_lock("tank") == tmp_path / "locks" / "tank.lock"
    assert lock_file_of(layout.gpu_ledger) == tmp_path / "gpu-ledger.json.lock"
    assert default_state_dir({}) == DEFAULT_STATE_DIR and default_state_dir({"RUTH_STATE_DIR": "/s"}) == Path("/s")


def test_breaker_files_are_found_by_name_only_in_breakers(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    layout.breakers.mkdir()
    for name in ("tank-1.json", "fall_detection-12.json", "notes.txt", "bad-name.json", "tank-1.json.lock"):
        (layout.breakers / name).write_text("{}")
    assert [(b.model, b.version) for b in layout.breaker_files()] == [("fall_detection", 12), ("tank", 1)]
    assert layout.is_breaker_file(layout.breaker("tank", 1))
    assert not layout.is_breaker_file(tmp_path / "tank-1.json")  # right name, wrong folder
    assert not layout.is_breaker_file(layout.breakers / "notes.txt")


def test_a_breaker_snapshot_round_trips_through_its_record() -> None:
    snap = BreakerSnapshot(
        state=BreakerState.OPEN, consecutive_failures=3, trips=1, total_trips=4, opened_at=10.0, retry_at=40.0, seq=9
    )
    stored = json.loads(json.dumps(snap.to_json()))
    assert stored["schema"] == 1 and stored["state"] == "open"
    assert BreakerSnapshot.from_json(stored) == snap


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"consecutive_failures": True}, "consecutive_failures"),  # a bool is not a count
        ({"trips": -1}, "trips"),
        ({"seq": "3"}, "seq"),  # strict: no coercion of a damaged value
        ({"retry_at": None}, "OPEN without retry_at"),
        ({"opened_at": math.nan}, "finite"),
        ({"state": "ajar"}, "state"),
        ({"extra": 1}, "extra"),
        ({"schema": 2}, "schema"),
    ],
)
def test_a_damaged_breaker_file_is_not_a_snapshot(change: dict[str, object], reason: str) -> None:
    good = {"schema": 1, "state": "open", "retry_at": 5, "opened_at": 1.0}
    BreakerSnapshot.from_json(good)  # ints are fine where the record wants a float
    with pytest.raises(ValueError, match=reason):
        BreakerSnapshot.from_json({**good, **change})


def test_a_ledger_entry_round_trips_and_a_damaged_one_is_dropped_not_fatal(tmp_path: Path) -> None:
    mine = Reservation(
        owner="m_0_0", pid=os.getpid(), device_index=0, bytes=1 << 20, model="m", version="1", instance="m_0_0",
        created_at=1.0,
    )  # fmt: skip
    assert Reservation.from_json(json.loads(json.dumps(mine.to_json()))) == mine
    with pytest.raises(ValueError, match="pid"):
        Reservation.from_json({**mine.to_json(), "pid": "12"})
    path = tmp_path / "gpu-ledger.json"
    path.write_text(json.dumps({"reservations": {"m_0_0": mine.to_json(), "junk": {**mine.to_json(), "bytes": -1}}}))
    assert GpuLedger(path).reservations() == [mine]
