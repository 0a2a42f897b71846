"""The cross-process GPU ledger: which instance reserved how much memory on which device.

Every Triton instance is its own process and loads on its own schedule; the ledger (a JSON file in the state dir,
under a file lock) lets all of them see each other's reservations. Entries of dead processes are reaped on every
reserve, with the process start time guarding against reused pids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from python_backends.state import Reservation
from python_backends.storage import JsonFileStore

__all__ = [
    "GpuLedger",
    "LedgerFullError",
    "Reservation",
    "pid_alive",
    "process_token",
]

log = logging.getLogger(__name__)

MIB = 1024 * 1024


def mib_text(n_bytes: int) -> str:
    return f"{n_bytes / MIB:.0f} MiB"


# ---------------------------------------------------------------------------------------------------------------
# Ledger


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (in this pid namespace)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_token(pid: int) -> str | None:
    """Boot id + start time of `pid`: unlike the pid, it changes when the pid is reused (e.g. by the stubs of a
    restarted container sharing the state dir), so a stale reservation can't pass as alive. None off Linux."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces, so split after its closing parenthesis.
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20:
        return None
    return f"{boot_id}:{fields[19]}"


class LedgerFullError(Exception):
    """A conditional reservation didn't fit; the message gives the numbers."""


class GpuLedger:
    """Reservations of every instance process on this host, in one JSON file under a file lock.

    The pid check only means something within one pid namespace: give each host (or container) its own ledger file.
    """

    def __init__(
        self,
        path: Path,
        is_alive: Callable[[int], bool] = pid_alive,
        token_of: Callable[[int], str | None] = process_token,
    ) -> None:
        self.path = Path(path)
        self._store = JsonFileStore(self.path)
        self._is_alive = is_alive
        self._token_of = token_of

    def token_of(self, pid: int) -> str | None:
        """The identity token to store with a reservation of `pid` (see `process_token`)."""
        return self._token_of(pid)

    def reserve(
        self, reservation: Reservation, *, check: Callable[[list[Reservation]], None] | None = None
    ) -> list[Reservation]:
        """Record `reservation` (replacing one with the same owner) after reaping dead entries.

        `check`, if given, sees the live reservations of *other* owners on the same device inside the same
        transaction and raises to refuse; that is how the allocator makes "does it fit" and "book it" one step.
        Returns the reservations reaped.
        """
        reaped: list[Reservation] = []

        def apply(data: dict[str, Any]) -> dict[str, Any]:
            live, dead = self._split(data)
            reaped[:] = dead
            if check is not None:
                check([r for r in live if r.device_index == reservation.device_index and r.owner != reservation.owner])
            entries = {r.owner: r.to_json() for r in live}
            entries[reservation.owner] = reservation.to_json()
            return {"reservations": entries}

        self._store.update(apply)
        self._log_reaped(reaped)
        return reaped

    def release(self, owner: str) -> bool:
        """Drop `owner`'s reservation; False if it had none (release is idempotent)."""
        released = [False]

        def apply(data: dict[str, Any]) -> dict[str, Any]:
            entries = dict(data.get("reservations") or {})
            released[0] = entries.pop(owner, None) is not None
            return {"reservations": entries}

        self._store.update(apply)
        return released[0]

    def settle(self, owner: str) -> bool:
        """Mark `owner`'s reservation as allocated (its model loaded); False if it has none."""
        settled = [False]

        def apply(data: dict[str, Any]) -> dict[str, Any]:
            entries = dict(data.get("reservations") or {})
            entry = entries.get(owner)
            if isinstance(entry, dict):
                entries[owner] = {**entry, "settled": True}
                settled[0] = True
            return {"reservations": entries}

        self._store.update(apply)
        return settled[0]

    def reservations(self, device_index: int | None = None) -> list[Reservation]:
        """Live reservations (dead processes' entries are filtered out, not removed: reading takes no lock)."""
        live, _ = self._split(self._store.read())
        return [r for r in live if device_index is None or r.device_index == device_index]

    def stale(self) -> list[Reservation]:
        """The entries of dead processes, not removed (reading takes no lock)."""
        _, dead = self._split(self._store.read())
        return dead

    def reap(self) -> list[Reservation]:
        """Remove the entries of dead processes and return them."""
        reaped: list[Reservation] = []

        def apply(data: dict[str, Any]) -> dict[str, Any]:
            live, dead = self._split(data)
            reaped[:] = dead
            return {"reservations": {r.owner: r.to_json() for r in live}}

        self._store.update(apply)
        self._log_reaped(reaped)
        return reaped

    def _split(self, data: Mapping[str, Any]) -> tuple[list[Reservation], list[Reservation]]:
        live: list[Reservation] = []
        dead: list[Reservation] = []
        entries = data.get("reservations") or {}
        if not isinstance(entries, dict):
            log.warning("GPU ledger %s: 'reservations' is not an object; ignoring it", self.path)
            return live, dead
        for owner, raw in entries.items():
            try:
                reservation = Reservation.from_json(raw)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("GPU ledger %s: dropping unreadable entry %r (%s)", self.path, owner, exc)
                continue
            (live if self._alive(reservation) else dead).append(reservation)
        return live, dead

    def _alive(self, reservation: Reservation) -> bool:
        if not self._is_alive(reservation.pid):
            return False
        return reservation.token is None or self._token_of(reservation.pid) in (None, reservation.token)

    def _log_reaped(self, reaped: list[Reservation]) -> None:
        for r in reaped:
            log.info(
                "GPU ledger: reaped %s of dead pid %d (%s on cuda:%d)",
                r.owner,
                r.pid,
                mib_text(r.bytes),
                r.device_index,
            )
