"""The state directory: its one layout, its permissions and the formats of the files in it.

Both sides of the runtime share one state dir (`RUTH_STATE_DIR`): the models inside Triton write breaker files,
the GPU ledger and the stream store; ruthctl writes the registry, its audit log, command locks, the admin key,
the private backends folder and the key shim, and reads (or repairs) what the models wrote. Every path of it is
spelled here and nowhere else, so a reader and its writer can't drift apart:

    <state>/                          0700, owner-only (docs/security.md); files in it 0600
      breakers/<model>-<version>.json   one circuit breaker, shared by the model's instances (+ `.lock`)
      gpu-ledger.json                   the cross-process GPU reservations (+ `.lock`)
      streams/<model>-<version>.sqlite  per-stream state (the sqlite stream store)
      registry.json                     which model should be where (+ `.lock`)
      registry-audit.jsonl              every registry transition, append-only
      locks/<model>.lock                one ruthctl command per model at a time
      admin-token                       the generated admin key
      backends/                         symlinks completing the wheel's Python backend
      lib/keyshim-<hash>.so             the key shim compiled from this checkout

The formats of the files that more than one process reads are defined once, beside this layout, and serve the
writer and every reader: the breaker file (`BreakerSnapshot`) and the GPU ledger's entries (`Reservation`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError, field_validator, model_validator

from python_backends.errors import first_error

__all__ = [
    "DEFAULT_STATE_DIR",
    "STATE_DIR_MODE",
    "STATE_FILE_MODE",
    "BreakerSnapshot",
    "BreakerState",
    "Reservation",
    "StateLayout",
    "default_state_dir",
    "lock_file_of",
]

#: the one default of RUTH_STATE_DIR: relative, i.e. in the working directory of whoever starts the server
DEFAULT_STATE_DIR = Path(".ruth-state")
#: the state dir and every directory in it: owner only
STATE_DIR_MODE = 0o700
#: files in the state dir (breakers, ledger, registry, audit log, key): readable by their owner only
STATE_FILE_MODE = 0o600

_BREAKER_NAME = re.compile(r"^(?P<model>[A-Za-z0-9_]+)-(?P<version>\d+)\.json$")


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`RUTH_STATE_DIR`, else `.ruth-state` in the working directory."""
    env = os.environ if environ is None else environ
    value = env.get("RUTH_STATE_DIR", "").strip()
    return Path(value) if value else DEFAULT_STATE_DIR


def lock_file_of(path: Path) -> Path:
    """The OS lock beside a shared state file: `<name>.lock`."""
    return path.with_name(path.name + ".lock")


@dataclasses.dataclass(frozen=True)
class BreakerFileName:
    model: str
    version: int
    path: Path


class _Below:
    """A path below the state dir's root, read as an attribute of a `StateLayout`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, layout: StateLayout | None, owner: type | None = None) -> Path:
        if layout is None:
            raise AttributeError(f"{self.name} is a path of a StateLayout instance")
        return layout.root / self.name


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Where each thing lives in one state dir. Paths only: nothing is created or read here."""

    root: Path

    # written by the models
    breakers = _Below("breakers")
    gpu_ledger = _Below("gpu-ledger.json")
    streams = _Below("streams")
    # written by ruthctl
    registry = _Below("registry.json")
    audit_log = _Below("registry-audit.jsonl")
    locks = _Below("locks")
    admin_token = _Below("admin-token")
    backends = _Below("backends")
    lib = _Below("lib")

    def breaker(self, model: str, version: str | int) -> Path:
        return self.breakers / f"{model}-{version}.json"

    def breaker_files(self) -> list[BreakerFileName]:
        """Every breaker file in `breakers/` whose name parses (`<model>-<version>.json`), sorted."""
        found: list[BreakerFileName] = []
        for path in sorted(self.breakers.glob("*.json")):
            match = _BREAKER_NAME.match(path.name)
            if match is not None:
                found.append(BreakerFileName(match["model"], int(match["version"]), path))
        return found

    def is_breaker_file(self, path: Path) -> bool:
        return path.parent == self.breakers and _BREAKER_NAME.match(path.name) is not None

    def stream_db(self, namespace: str) -> Path:
        """The sqlite stream store of one model version (`namespace`, e.g. `fall_detection-1`)."""
        return self.streams / f"{namespace}.sqlite"

    def command_lock(self, model: str) -> Path:
        """Held by the ruthctl command that changes `model` (activate, deactivate, a repair of it)."""
        return self.locks / f"{model}.lock"

    def key_shim(self, digest: str) -> Path:
        """The key shim compiled from the keyshim.c whose SHA-256 starts with `digest`."""
        return self.lib / f"keyshim-{digest}.so"


# -- file formats --------------------------------------------------------------------------------------------------
class _Record(BaseModel):
    """A state file's content: frozen, strict (no coercion of a damaged value), unknown keys refused. Whatever
    fails validation is damaged state: its reader sets it aside with a warning, never crashes."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return value


class BreakerState(str, enum.Enum):
    """The persisted spelling of each state (the value is what the breaker file holds)."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


class BreakerSnapshot(_Record):
    """Everything a circuit breaker knows, as stored in `breakers/<model>-<version>.json`: written by
    `FileBreakerStorage`, read by it and by ruthctl. Immutable: the breaker's transitions
    (`python_backends.breaker`) return a new snapshot.

    `trips` counts consecutive trips (it drives the exponential cooldown and is reset on close); `total_trips` only
    grows, so it also identifies a half-open episode. `seq` grows with every stored change (a cheap "has anything
    changed" check for tooling). `last_trial_at` is when the newest half-open trial was admitted.
    """

    schema_version: Literal[1] = Field(default=1, alias="schema")
    state: BreakerState
    consecutive_failures: NonNegativeInt = 0
    trips: NonNegativeInt = 0
    total_trips: NonNegativeInt = 0
    opened_at: float | None = None
    retry_at: float | None = None
    trials_in_flight: NonNegativeInt = 0
    updated_at: float = 0.0
    last_trial_at: float | None = None
    seq: NonNegativeInt = 0

    _finite_times = field_validator("opened_at", "retry_at", "updated_at", "last_trial_at")(_finite)

    @field_validator("state", mode="before")
    @classmethod
    def _state_text(cls, value: object) -> object:
        return BreakerState(value) if isinstance(value, str) and not isinstance(value, BreakerState) else value

    @model_validator(mode="after")
    def _open_has_retry(self) -> BreakerSnapshot:
        if self.state is BreakerState.OPEN and self.retry_at is None:
            raise ValueError("OPEN without retry_at")
        return self

    @classmethod
    def initial(cls, now: float) -> BreakerSnapshot:
        """A breaker that has never failed."""
        return cls(state=BreakerState.CLOSED, updated_at=now)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BreakerSnapshot:
        """Parse a stored snapshot; `ValueError` for anything that isn't one (callers fall back to CLOSED)."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"not a breaker snapshot: {first_error(exc)}") from None


class Reservation(_Record):
    """Memory one instance process holds (or will hold) on one device: an entry of `gpu-ledger.json`
    (`{"reservations": {<owner>: <entry>}}`), written and read by `python_backends.gpu_ledger.GpuLedger` (ruthctl
    reads and reaps through it too)."""

    owner: str
    pid: int
    device_index: NonNegativeInt
    bytes: NonNegativeInt
    model: str
    version: str
    instance: str
    created_at: float
    #: `process_token(pid)` when reserved; None skips the pid-reuse check
    token: str | None = None
    #: the instance has loaded: its memory is now gone from the device's free memory (see DeviceAllocator)
    settled: bool = False

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reservation:
        """Parse a stored entry; `ValueError` (a pydantic ValidationError) for anything that isn't one."""
        return cls.model_validate(data)
