"""What ruthctl reads and repairs in the state dir the models write: breaker files and the GPU ledger.

The paths come from `python_backends.state.StateLayout`; each file is read and changed through the same code the
models use to write it (`FileBreakerStorage`, `GpuLedger`), so a reader can't disagree with its writer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from python_backends.breaker import BreakerPolicy, CircuitBreaker
from python_backends.breaker_storage import FileBreakerStorage
from python_backends.gpu_ledger import GpuLedger
from python_backends.state import StateLayout, lock_file_of

__all__ = ["BreakerFile", "breaker_files", "reap_ledger", "remove_breaker", "reset_breaker", "stale_ledger_entries"]


@dataclasses.dataclass(frozen=True)
class BreakerFile:
    model: str
    version: int
    path: Path
    state: str | None  # closed | half_open | open, None when unreadable
    retry_at: float | None
    consecutive_failures: int
    total_trips: int

    def retry_in_s(self, now: float) -> float | None:
        """Seconds (0.1 s steps) until an open breaker lets the next trial through; None unless open."""
        return None if self.retry_at is None or self.state != "open" else round(max(self.retry_at - now, 0.0), 1)

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "state": self.state or "unreadable",
            "consecutive_failures": self.consecutive_failures,
            "total_trips": self.total_trips,
            "retry_in_s": self.retry_in_s(now),
            "path": str(self.path),
        }


def breaker_files(state_dir: Path, ref: str | None = None) -> list[BreakerFile]:
    """Every breaker file of the state dir (`StateLayout.breaker_files`), as its breaker reads it; with `ref`
    (MODEL or MODEL:VERSION) only that model's (every version of it, or the one version)."""
    name, _, version = (ref or "").partition(":")
    found: list[BreakerFile] = []
    for entry in StateLayout(state_dir).breaker_files():
        if ref is not None and (entry.model != name or (version and str(entry.version) != version)):
            continue
        snap = FileBreakerStorage(entry.path).load()
        found.append(
            BreakerFile(
                model=entry.model,
                version=entry.version,
                path=entry.path,
                state=None if snap is None else snap.state.value,
                retry_at=None if snap is None else snap.retry_at,
                consecutive_failures=0 if snap is None else snap.consecutive_failures,
                total_trips=0 if snap is None else snap.total_trips,
            )
        )
    return found


def reset_breaker(path: Path, name: str) -> None:
    """Operator reset to CLOSED through the breaker's own code path (so its history fields stay consistent)."""
    CircuitBreaker(name, BreakerPolicy(), FileBreakerStorage(path)).reset()


def remove_breaker(state_dir: Path, path: Path) -> None:
    """Delete one breaker file of `state_dir` and its lock; ValueError for any other path."""
    if not StateLayout(state_dir).is_breaker_file(path):
        raise ValueError(f"refusing to remove {path}: not a breaker file of {state_dir}")
    path.unlink(missing_ok=True)
    lock_file_of(path).unlink(missing_ok=True)


def stale_ledger_entries(state_dir: Path) -> list[dict[str, Any]]:
    """Reservations in the GPU ledger whose process is gone (the ledger's own liveness rule)."""
    path = StateLayout(state_dir).gpu_ledger
    if not path.exists():
        return []
    return [r.to_json() for r in GpuLedger(path).stale()]


def reap_ledger(state_dir: Path) -> int:
    return len(GpuLedger(StateLayout(state_dir).gpu_ledger).reap())
