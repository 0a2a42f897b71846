"""Load, unload and disable one model on one server, moving its registry state along with Triton's.

Shared by `activate`/`deactivate` and by `repair`/`watch`, so an operator's activation and an automatic recovery
follow the same steps and leave the same audit trail: claim the transition in the registry first (a concurrent
claimant gets `IllegalTransition`), then talk to Triton, then record the outcome, including on failure. The load
sends the config ruthctl rendered with the request (the repository API's config override), so
what runs is what was validated, whatever the file on disk says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping

from tritonclient.grpc import model_config_pb2 as pb

from ruthctl.registry import Registry, ServerEntry, State, Want
from ruthctl.render import render_config
from ruthctl.spec import ModelSpec, ProfileSpec
from ruthctl.triton_client import IndexEntry, LoadFailed, TritonAdapter, TritonAPIError, Unreachable

__all__ = ["ActivationFailed", "DrainTimeout", "Pace", "Target", "disable_on", "load_on", "unload_on", "wait_for"]

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Pace:
    """How a step waits for Triton: where it reports progress, the clock it reads and how it sleeps between polls
    of the repository index (tests pass a fake clock)."""

    progress: Progress = _quiet
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    interval_s: float = 0.2


PACE = Pace()


@dataclasses.dataclass(frozen=True)
class Target:
    """What to load: a spec on a profile, at a version, with activation-time parameter overrides."""

    spec: ModelSpec
    profile: ProfileSpec
    version: int
    overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def config(self) -> pb.ModelConfig:
        return render_config(self.spec, self.profile, version=self.version, overrides=self.overrides)


class ActivationFailed(Exception):
    """The load failed and was rolled back; `reason` is Triton's own message where it gave one."""

    def __init__(self, model: str, server: str, reason: str, outcome: State, *, unreachable: bool = False) -> None:
        super().__init__(f"{model} on {server}: {reason}")
        self.model = model
        self.server = server
        self.reason = reason
        self.outcome = outcome  # FAILED (unloaded), or READY when the previous version kept serving
        self.unreachable = unreachable  # the server didn't answer (or not in time), rather than refusing


class DrainTimeout(Exception):
    """Triton was still unloading (draining in-flight requests) when the timeout ran out."""


def _entry(adapter: TritonAdapter, name: str) -> IndexEntry | None:
    return next((e for e in adapter.index() if e.name == name), None)


def wait_for(
    adapter: TritonAdapter,
    name: str,
    done: Callable[[IndexEntry | None], bool],
    *,
    timeout_s: float,
    what: str,
    pace: Pace = PACE,
) -> IndexEntry | None:
    """Poll the repository index until `done(entry)`; `TimeoutError` after `timeout_s`."""
    progress, clock, sleep, interval_s = pace.progress, pace.clock, pace.sleep, pace.interval_s
    start = clock()
    while True:
        entry = _entry(adapter, name)
        if done(entry):
            return entry
        elapsed = clock() - start
        if elapsed >= timeout_s:
            state = "absent" if entry is None else f"{entry.state} {entry.reason}".strip()
            raise TimeoutError(f"{name}: not {what} after {timeout_s:.0f}s (Triton says {state})")
        progress(f"{name}: waiting for {what} ({(entry.state if entry else None) or 'unknown'}, {elapsed:.1f}s)")
        sleep(min(interval_s, max(timeout_s - elapsed, 0.0)))


def _gone(entry: IndexEntry | None) -> bool:
    return entry is None or entry.state not in ("READY", "UNLOADING", "LOADING")


def load_on(
    adapter: TritonAdapter,
    registry: Registry,
    target: Target,
    *,
    restart: bool = False,
    timeout_s: float = 120.0,
    reason: str = "activate",
    want: Want | None = None,
    restore: Want | None = None,
    pace: Pace = PACE,
) -> ServerEntry:
    """Load (or reload) `target` and wait for READY at its version. Raises `ActivationFailed` after rolling back.

    Rollback: if the model was READY before and Triton still serves it (a failed reload leaves the previous
    version running), the registry goes back to READY and says so; otherwise the model is unloaded and FAILED.

    `want` (an activation's new desired state) is written with the LOADING claim, and `restore` with the rollback,
    each in one registry transaction: a refused claim writes nothing, and a failed load doesn't leave behind a
    desired state that nothing runs (which `watch` would then "repair" by reloading what just failed).

    `restart` unloads first: Triton 2.51 treats a load with an unchanged config as done without touching the
    instances, so a model whose stub died or hung must be unloaded (its live instances drain) and loaded anew.
    """
    server = str(adapter.endpoint)
    before = registry.get(target.name)
    was_ready = before is not None and before.on(server).state is State.READY
    registry.transition(target.name, server, State.LOADING, version=target.version, reason=reason, want=want)
    version = str(target.version)
    try:
        if restart:
            pace.progress(f"{target.name}: unloading on {server} to restart its processes")
            adapter.unload(target.name)
            wait_for(adapter, target.name, _gone, timeout_s=timeout_s, what="unloaded", pace=pace)
            was_ready = False  # nothing is left serving to roll back to
        pace.progress(f"{target.name}: loading version {version} on {server}")
        adapter.load(target.name, target.config())

        def ready(entry: IndexEntry | None) -> bool:
            if entry is not None and entry.state == "UNAVAILABLE" and entry.reason and entry.reason != "unloaded":
                raise LoadFailed(target.name, entry.reason)
            return entry is not None and entry.ready and entry.version == version

        wait_for(adapter, target.name, ready, timeout_s=timeout_s, what="READY", pace=pace)
    except (TritonAPIError, TimeoutError) as exc:
        why = exc.reason if isinstance(exc, LoadFailed) else str(exc)
        outcome = _roll_back(adapter, registry, target.name, server, why, was_ready, restore)
        raise ActivationFailed(
            target.name, server, why, outcome, unreachable=isinstance(exc, (Unreachable, TimeoutError))
        ) from None
    except BaseException:  # Ctrl-C mid-load: don't leave a LOADING claim behind
        _roll_back(adapter, registry, target.name, server, "interrupted", False, restore)
        raise
    return registry.transition(target.name, server, State.READY, reason=reason, version=target.version)


def _roll_back(
    adapter: TritonAdapter,
    registry: Registry,
    name: str,
    server: str,
    why: str,
    was_ready: bool,
    restore: Want | None = None,
) -> State:
    try:
        still = _entry(adapter, name)
    except TritonAPIError:
        still = None
    if was_ready and still is not None and still.ready:
        registry.transition(
            name,
            server,
            State.READY,
            reason=f"reload failed, previous version kept serving: {why}",
            version=int(still.version) if still.version and still.version.isdigit() else None,
            want=restore,
        )
        return State.READY
    with contextlib.suppress(TritonAPIError):  # unreachable or gone: FAILED below still records why the load failed
        adapter.unload(name)
    registry.transition(name, server, State.FAILED, reason=why, want=restore)
    return State.FAILED


def unload_on(
    adapter: TritonAdapter,
    registry: Registry,
    name: str,
    *,
    timeout_s: float = 60.0,
    reason: str = "deactivate",
    want: Want | None = None,
    pace: Pace = PACE,
) -> ServerEntry:
    """Unload and wait while Triton drains in-flight requests; UNLOADED when it's gone.

    The UNLOADING claim is refused while another process is LOADING the model (`IllegalTransition`, nothing
    written); `want` (a deactivation's INACTIVE) is written with the claim. `DrainTimeout` leaves the registry at
    UNLOADING (Triton is still finishing requests); the next `repair` or `watch` records UNLOADED once Triton has
    let go.
    """
    server = str(adapter.endpoint)
    registry.transition(name, server, State.UNLOADING, reason=reason, unless=frozenset({State.LOADING}), want=want)
    try:
        adapter.unload(name)
        wait_for(adapter, name, _gone, timeout_s=timeout_s, what="unloaded", pace=pace)
    except TimeoutError as exc:
        raise DrainTimeout(str(exc)) from None
    except TritonAPIError as exc:
        registry.transition(name, server, State.FAILED, reason=f"unload failed: {exc}")
        raise
    return registry.transition(name, server, State.UNLOADED, reason=reason)


def disable_on(
    adapter: TritonAdapter,
    registry: Registry,
    name: str,
    reason: str,
    *,
    timeout_s: float = 30.0,
    pace: Pace = PACE,
) -> ServerEntry:
    """Give up on a model: unload it (best effort) and record DISABLED; only an explicit activate reloads it."""
    server = str(adapter.endpoint)
    try:
        adapter.unload(name)
        wait_for(adapter, name, _gone, timeout_s=timeout_s, what="unloaded", pace=pace)
    except (TritonAPIError, TimeoutError):
        pass  # disabling must not depend on the sick model cooperating
    current = registry.get(name)
    entry = ServerEntry() if current is None else current.on(server)
    if entry.state is State.DISABLED:
        return entry
    if entry.state in (State.LOADING, State.UNLOADING):
        registry.transition(name, server, State.FAILED, reason=reason)
    return registry.transition(name, server, State.DISABLED, reason=reason)
