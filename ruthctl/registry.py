"""The desired state of the deployment and the last observed state of every model on every server.

Triton's repository index is the actual state; this file is ours. Per model it holds what the operator wants
(ACTIVE or INACTIVE, at which version, with which activation-time parameter overrides), and per (model, server)
a lifecycle state that moves only along `ALLOWED`: an illegal move raises instead of overwriting, which is how
two `ruthctl activate`s of one model can't both believe they own the load. Every change happens under one
cross-process file lock as read-modify-write of the whole file, written atomically (temp + fsync + rename), and
every transition is appended to an audit log (JSON lines) naming who or what caused it.

Unlike the breaker's storage, an unreadable registry is an error, not an empty one: silently starting over would
unload every model on the next repair. `rebuild_from_audit` restores it from the audit log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import getpass
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import filelock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from python_backends.state import STATE_DIR_MODE, STATE_FILE_MODE, StateLayout, lock_file_of
from python_backends.storage import atomic_write_bytes

__all__ = [
    "ALLOWED",
    "AuditEntry",
    "Desired",
    "IllegalTransition",
    "ModelBusy",
    "ModelEntry",
    "Registry",
    "RegistryCorrupt",
    "RegistryError",
    "RegistryFile",
    "ServerEntry",
    "State",
    "Want",
    "default_actor",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class State(str, enum.Enum):
    """Lifecycle of one model on one server. Triton's index vocabulary, plus FAILED and DISABLED."""

    UNLOADED = "UNLOADED"  # known, not loaded (the start state)
    LOADING = "LOADING"  # a ruthctl process is loading it (owner in `actor`)
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"  # the load failed or the model died; `reason` says why
    DISABLED = "DISABLED"  # recovery gave up (or an operator said so); only an explicit activate brings it back


class Desired(str, enum.Enum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"


#: The only moves `transition` accepts. Same-state moves are not in it: a second `activate` racing the first
#: finds LOADING and fails instead of loading twice.
ALLOWED: Mapping[State, frozenset[State]] = {
    State.UNLOADED: frozenset({State.LOADING, State.UNLOADING, State.DISABLED}),
    State.LOADING: frozenset({State.READY, State.FAILED, State.UNLOADING}),
    State.READY: frozenset({State.LOADING, State.UNLOADING, State.FAILED, State.DISABLED}),
    State.UNLOADING: frozenset({State.UNLOADED, State.FAILED}),
    State.FAILED: frozenset({State.LOADING, State.UNLOADING, State.UNLOADED, State.DISABLED}),
    State.DISABLED: frozenset({State.LOADING, State.UNLOADING, State.UNLOADED}),
}


class RegistryError(Exception):
    """Root of the registry's errors."""


class IllegalTransition(RegistryError):
    def __init__(self, model: str, server: str, current: State, target: State, entry: ServerEntry | None) -> None:
        owner = f" by {entry.actor} since {entry.since}" if entry is not None and entry.actor else ""
        super().__init__(
            f"{model} on {server}: {current.value} -> {target.value} is not allowed (state {current.value}{owner})"
        )
        self.model = model
        self.server = server
        self.current = current
        self.target = target


class ModelBusy(RegistryError):
    """Another ruthctl command holds the model's command lock (it is changing that model right now)."""


class RegistryCorrupt(RegistryError):
    """The registry file exists but can't be read; `ruthctl repair` rebuilds it from the audit log."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_stamp(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def default_actor(command: str) -> str:
    """Who did it: user@host, the process and the command (the audit log's `actor`)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}: ruthctl {command}"


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerEntry(_Record):
    state: State = State.UNLOADED
    version: int | None = None
    since: str = ""  # when `state` was entered (UTC ISO)
    reason: str = ""  # why (Triton's reason on FAILED)
    actor: str = ""  # who moved it there; for LOADING/UNLOADING the process doing it
    recoveries: int = 0  # reloads by `watch`/`repair` since the model was last stable
    last_recovery: str | None = None
    observed: str | None = None  # Triton's index state when last looked at (None = not in the index)
    observed_reason: str = ""
    observed_at: str | None = None


class ModelEntry(_Record):
    desired: Desired = Desired.INACTIVE
    version: int = 1
    overrides: dict[str, str] = Field(default_factory=dict)  # `parameters` set at activation (game days)
    updated: str = ""
    servers: dict[str, ServerEntry] = Field(default_factory=dict)

    def on(self, server: str) -> ServerEntry:
        return self.servers.get(server, ServerEntry())


class RegistryFile(_Record):
    schema_version: int = SCHEMA_VERSION
    models: dict[str, ModelEntry] = Field(default_factory=dict)


class AuditEntry(_Record):
    ts: str
    model: str
    server: str | None = None
    version: int | None = None
    event: str  # "transition" | "desired" | "forget" | "rebuild"
    from_state: str | None = None
    to_state: str | None = None
    desired: str | None = None
    overrides: dict[str, str] | None = None
    reason: str = ""
    actor: str = ""


@dataclasses.dataclass(frozen=True)
class Want:
    """A desired-state change: written in the same transaction as the lifecycle move it belongs to, so that what
    the registry wants never runs ahead of what a command actually did (or is doing)."""

    desired: Desired
    version: int | None = None
    overrides: Mapping[str, str] | None = None

    @classmethod
    def of(cls, entry: ModelEntry | None) -> Want:
        """The desired state `entry` holds now (a model never seen is INACTIVE): what a failed change restores."""
        if entry is None:
            return cls(Desired.INACTIVE)
        return cls(entry.desired, entry.version, dict(entry.overrides))


class Registry:
    """The registry in `<state_dir>/registry.json` with its audit log `<state_dir>/registry-audit.jsonl`."""

    def __init__(
        self,
        state_dir: Path,
        *,
        actor: str | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        lock_timeout_s: float = 30.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.layout = StateLayout(self.state_dir)
        self.path = self.layout.registry
        self.audit_path = self.layout.audit_log
        self.actor = actor or default_actor("")
        self.clock = clock
        self._lock = filelock.FileLock(str(lock_file_of(self.path)), timeout=lock_timeout_s)
        #: what the last `audit()` skipped ("line N: why"), for reports
        self.audit_skipped: list[str] = []

    # -- reading ------------------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> RegistryFile:
        """The current registry (empty when there is none). Lock-free: the file is only ever replaced atomically."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return RegistryFile()
        except OSError as exc:
            raise RegistryCorrupt(f"{self.path}: cannot read: {exc}") from exc
        try:
            data = RegistryFile.model_validate_json(raw)
        except ValidationError as exc:
            raise RegistryCorrupt(
                f"{self.path} is damaged ({exc.errors(include_url=False)[0]['msg']}); "
                "`ruthctl repair` rebuilds it from the audit log"
            ) from None
        if data.schema_version != SCHEMA_VERSION:
            raise RegistryCorrupt(f"{self.path}: schema {data.schema_version}, this ruthctl reads {SCHEMA_VERSION}")
        return data

    def get(self, model: str) -> ModelEntry | None:
        return self.read().models.get(model)

    def read_or_replay(self, using: str) -> Mapping[str, ModelEntry] | None:
        """The entries, None when there is no registry yet. A damaged file is read through its audit log instead
        (read-only; the next `repair` rewrites the file), with a warning that ends in `using`."""
        if not self.exists():
            return None
        try:
            return self.read().models
        except RegistryCorrupt as exc:
            log.warning("%s; %s", exc, using)
            return replay(self.audit())

    def desired_active(self) -> list[str] | None:
        """Models `serve` should load: None when there is no registry yet (then it loads every model).

        A model DISABLED on every server it was tried on stays off until an explicit `activate`. A damaged file
        doesn't stop a server from starting: the answer then comes from replaying the audit log (read-only; the
        next `repair` rewrites the file).
        """
        models = self.read_or_replay("using the audit log to decide which models to load")
        if models is None:
            return None
        return sorted(
            name
            for name, entry in models.items()
            if entry.desired is Desired.ACTIVE
            and not (entry.servers and all(s.state is State.DISABLED for s in entry.servers.values()))
        )

    # -- writing ------------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self._lock:
                yield
        except filelock.Timeout as exc:
            raise RegistryError(f"registry lock {self._lock.lock_file} held for over {self._lock.timeout}s") from exc

    def _commit(self, data: RegistryFile, events: list[AuditEntry]) -> None:
        atomic_write_bytes(self.path, data.model_dump_json(indent=1).encode(), mode=STATE_FILE_MODE)
        self._append_audit(events)

    def _append_audit(self, events: list[AuditEntry]) -> None:
        if not events:
            return
        payload = "".join(event.model_dump_json(exclude_none=True) + "\n" for event in events).encode()
        fd = os.open(self.audit_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, STATE_FILE_MODE)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _event(self, model: str, event: str, **fields: Any) -> AuditEntry:
        return AuditEntry(ts=_stamp(self.clock()), model=model, event=event, actor=self.actor, **fields)

    def update(self, fn: Callable[[RegistryFile], tuple[RegistryFile, list[AuditEntry]]]) -> RegistryFile:
        """Apply `fn` under the lock and commit its result with its audit events (the general write path)."""
        with self._locked():
            current = self.read()
            result, events = fn(current)
            if result != current or events:
                self._commit(result, events)
            return result

    def transition(
        self,
        model: str,
        server: str,
        target: State,
        *,
        reason: str = "",
        version: int | None = None,
        expect: State | None = None,
        unless: frozenset[State] = frozenset(),
        want: Want | None = None,
    ) -> ServerEntry:
        """Move `model` on `server` to `target`, if `ALLOWED` (and, with `expect`, only from that state; never from a
        state in `unless`). With `want`, the desired state changes in the same transaction: a refused move changes
        nothing, so a command that loses a race leaves no desired state behind."""

        def apply(data: RegistryFile) -> tuple[RegistryFile, list[AuditEntry]]:
            entry = data.models.get(model) or ModelEntry(version=version or 1)
            current = entry.on(server)
            if (
                target not in ALLOWED[current.state]
                or (expect is not None and current.state is not expect)
                or current.state in unless
            ):
                raise IllegalTransition(model, server, current.state, target, current)
            events: list[AuditEntry] = []
            if want is not None:
                data, events = self._apply_want(data, model, want, reason)
                entry = data.models[model]
            now = _stamp(self.clock())
            moved = current.model_copy(
                update={
                    "state": target,
                    "since": now,
                    "reason": reason,
                    "actor": self.actor,
                    "version": version if version is not None else (current.version or entry.version),
                }
            )
            servers = {**entry.servers, server: moved}
            event = self._event(
                model,
                "transition",
                server=server,
                version=moved.version,
                from_state=current.state.value,
                to_state=target.value,
                reason=reason,
            )
            return _with_model(data, model, entry.model_copy(update={"servers": servers, "updated": now})), [
                *events,
                event,
            ]

        return self.update(apply).models[model].on(server)

    def set_desired(
        self,
        model: str,
        desired: Desired,
        *,
        version: int | None = None,
        overrides: Mapping[str, str] | None = None,
        reason: str = "",
    ) -> ModelEntry:
        want = Want(desired, version, overrides)
        return self.update(lambda data: self._apply_want(data, model, want, reason)).models[model]

    def _apply_want(
        self, data: RegistryFile, model: str, want: Want, reason: str
    ) -> tuple[RegistryFile, list[AuditEntry]]:
        entry = data.models.get(model) or ModelEntry()
        changes: dict[str, Any] = {"desired": want.desired}
        if want.version is not None:
            changes["version"] = want.version
        if want.overrides is not None:
            changes["overrides"] = dict(want.overrides)
        updated = entry.model_copy(update=changes)
        if updated == entry and model in data.models:
            return data, []
        updated = updated.model_copy(update={"updated": _stamp(self.clock())})
        event = self._event(
            model,
            "desired",
            version=updated.version,
            desired=want.desired.value,
            overrides=dict(updated.overrides),
            reason=reason,
        )
        return _with_model(data, model, updated), [event]

    @contextlib.contextmanager
    def command_lock(self, model: str, timeout_s: float = 0.0) -> Iterator[None]:
        """Serialise the commands that change one model (activate, deactivate, and each repair of it).

        Held for a whole command, so a second command on the same model waits (up to `timeout_s`) and then decides
        on what the first one left, instead of interleaving with it; `ModelBusy` when it isn't free in time. This
        is not the registry lock: reads and other models' changes go on meanwhile.
        """
        self.layout.locks.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.layout.command_lock(model)), timeout=timeout_s, mode=STATE_FILE_MODE)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise ModelBusy(f"{model}: another ruthctl command is changing it (lock {lock.lock_file})") from None
        try:
            yield
        finally:
            lock.release()

    def observe(self, model: str, server: str, observed: str | None, reason: str = "") -> None:
        """Record what Triton's index said (not a lifecycle move: no audit line, no transition rules)."""

        def apply(data: RegistryFile) -> tuple[RegistryFile, list[AuditEntry]]:
            entry = data.models.get(model)
            if entry is None:
                return data, []
            current = entry.on(server)
            if current.observed == observed and current.observed_reason == reason:
                return data, []
            seen = current.model_copy(
                update={"observed": observed, "observed_reason": reason, "observed_at": _stamp(self.clock())}
            )
            return _with_model(data, model, entry.model_copy(update={"servers": {**entry.servers, server: seen}})), []

        self.update(apply)

    def renew(self, claims: Mapping[str, str], server: str) -> set[str]:
        """Re-stamp this actor's LOADING claims on `server` (model -> reason) and return the models still claimed by
        it (another process may have moved one meanwhile). A process that claims a queue of loads up front (`serve`
        at start) keeps every claim as fresh as the load in progress, so none is judged stuck while it waits. Not a
        lifecycle move: no audit line, no transition rules."""
        held: set[str] = set()

        def apply(data: RegistryFile) -> tuple[RegistryFile, list[AuditEntry]]:
            held.clear()
            now = _stamp(self.clock())
            models = dict(data.models)
            for model, reason in claims.items():
                entry = models.get(model)
                current = entry.on(server) if entry is not None else None
                if entry is None or current is None or current.state is not State.LOADING:
                    continue
                if current.actor != self.actor:
                    continue
                held.add(model)
                renewed = current.model_copy(update={"since": now, "reason": reason})
                models[model] = entry.model_copy(update={"servers": {**entry.servers, server: renewed}})
            return data.model_copy(update={"models": models}), []

        self.update(apply)
        return held

    def count_recovery(self, model: str, server: str, *, reset: bool = False) -> int:
        """Count one recovery attempt (or reset the count once the model is stable); returns the new count."""

        def apply(data: RegistryFile) -> tuple[RegistryFile, list[AuditEntry]]:
            entry = data.models.get(model) or ModelEntry()
            current = entry.on(server)
            if reset:
                changed = current.model_copy(update={"recoveries": 0, "last_recovery": None})
            else:
                changed = current.model_copy(
                    update={"recoveries": current.recoveries + 1, "last_recovery": _stamp(self.clock())}
                )
            if changed == current:
                return data, []
            return _with_model(
                data, model, entry.model_copy(update={"servers": {**entry.servers, server: changed}})
            ), []

        return self.update(apply).models[model].on(server).recoveries

    def forget(self, model: str, reason: str) -> None:
        def apply(data: RegistryFile) -> tuple[RegistryFile, list[AuditEntry]]:
            if model not in data.models:
                return data, []
            models = {k: v for k, v in data.models.items() if k != model}
            return data.model_copy(update={"models": models}), [self._event(model, "forget", reason=reason)]

        self.update(apply)

    # -- audit --------------------------------------------------------------------------------------------------------
    def audit(self, model: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries, oldest first. A line that isn't an entry (a torn last line from a crash, a hand edit, a
        newer writer) is skipped with a warning and counted in `audit_skipped`, never fatal: the audit log is what
        recovery rebuilds from."""
        entries: list[AuditEntry] = []
        self.audit_skipped = []
        try:
            lines = self.audit_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return entries
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = AuditEntry.model_validate_json(line)
            except ValidationError as exc:
                self.audit_skipped.append(f"line {number}: {exc.errors(include_url=False)[0]['msg']}")
                continue
            if _known(entry) is not None:
                self.audit_skipped.append(f"line {number}: {_known(entry)}")
                continue
            if model is None or entry.model == model:
                entries.append(entry)
        if self.audit_skipped:
            log.warning(
                "%s: skipped %d damaged or unknown line(s) (%s)",
                self.audit_path,
                len(self.audit_skipped),
                "; ".join(self.audit_skipped[:3]) + (" ..." if len(self.audit_skipped) > 3 else ""),
            )
        return entries[-limit:] if limit else entries

    def rebuild_from_audit(self) -> RegistryFile:
        """Replace a damaged registry by replaying the audit log; the damaged file is kept as `registry.json.bad`."""
        with self._locked():
            data = RegistryFile(models=replay(self.audit()))
            if self.path.exists():
                with contextlib.suppress(OSError):
                    os.replace(self.path, self.path.with_name(self.path.name + ".bad"))
            skipped = f", {len(self.audit_skipped)} damaged line(s) skipped" if self.audit_skipped else ""
            event = self._event("*", "rebuild", reason=f"rebuilt {len(data.models)} models from the audit log{skipped}")
            self._commit(data, [event])
            return data


def _known(entry: AuditEntry) -> str | None:
    """Why this reader can't replay `entry` (a state or desired value it doesn't know), or None."""
    if entry.to_state is not None and entry.to_state not in State.__members__:
        return f"unknown state {entry.to_state!r}"
    if entry.desired is not None and entry.desired not in Desired.__members__:
        return f"unknown desired state {entry.desired!r}"
    return None


def replay(events: list[AuditEntry]) -> dict[str, ModelEntry]:
    """The registry as the audit log tells it: desired state, version, overrides and each server's last state."""
    models: dict[str, ModelEntry] = {}
    for event in events:
        if _known(event) is not None:
            continue  # `Registry.audit` already skipped and counted it; a caller's own list gets the same rule
        if event.event == "forget":
            models.pop(event.model, None)
            continue
        entry = models.get(event.model, ModelEntry())
        if event.event == "desired" and event.desired:
            update: dict[str, Any] = {"desired": Desired(event.desired), "version": event.version or entry.version}
            if event.overrides is not None:
                update["overrides"] = dict(event.overrides)
            entry = entry.model_copy(update=update)
        elif event.event == "transition" and event.server and event.to_state:
            server = entry.on(event.server).model_copy(
                update={
                    "state": State(event.to_state),
                    "since": event.ts,
                    "reason": event.reason,
                    "actor": event.actor,
                    "version": event.version,
                }
            )
            entry = entry.model_copy(update={"servers": {**entry.servers, event.server: server}})
        else:
            continue  # "rebuild" markers and anything newer than this reader
        models[event.model] = entry.model_copy(update={"updated": event.ts})
    return models


def _with_model(data: RegistryFile, name: str, entry: ModelEntry) -> RegistryFile:
    return data.model_copy(update={"models": {**data.models, name: entry}})
