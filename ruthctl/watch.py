"""The reconcile loop behind `ruthctl watch`: verify + repair on an interval, a recovery policy, and metrics.

Every load that `watch` does is a recovery attempt for that model on that server, counted in the registry (so a
restarted watcher keeps counting). Attempts back off exponentially; after `max_attempts` without the model
staying healthy for `stable_after_s`, the model is DISABLED (the seed's recovery policy, which the runtime we
replace had only on paper) and stays off until an operator activates it again. Triton has no load-state
metrics, so the loop exports the registry's view itself, on its own port.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ruthctl.invariants import Action, ActionKind, ActionResult, Check, Kind, Violation, plan_repairs
from ruthctl.reconcile import Reconciler
from ruthctl.registry import Desired, RegistryError, RegistryFile, State, parse_stamp, utc_now

__all__ = ["Cycle", "RecoveryPolicy", "WatchMetrics", "Watcher", "apply_policy"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RecoveryPolicy:
    max_attempts: int = 3
    backoff_s: float = 10.0
    max_backoff_s: float = 300.0
    stable_after_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError("max_attempts >= 1 and 0 <= backoff_s <= max_backoff_s")

    def backoff_for(self, attempts: int) -> float:
        """Wait before attempt `attempts + 1`: backoff_s, 2x, 4x ... capped."""
        if attempts <= 0:
            return 0.0
        return float(min(self.backoff_s * 2 ** (attempts - 1), self.max_backoff_s))


@dataclasses.dataclass(frozen=True)
class Deferred:
    action: Action
    why: str


#: LOAD causes that mean Triton is serving the model, only not with the wanted config: a reload that fails leaves it
#: serving, so exhausted attempts stop retrying instead of disabling (unloading) it
RELOAD_CAUSES = frozenset({Kind.LIVE_DRIFT, Kind.VERSION_MISMATCH})


def apply_policy(
    actions: Iterable[Action], registry: RegistryFile | None, now: dt.datetime, policy: RecoveryPolicy
) -> tuple[list[Action], list[Deferred]]:
    """Turn LOADs into DISABLEs once attempts are exhausted (except for a model that is serving, whose failed reloads
    just stop), and hold back those still in their backoff (pure)."""
    kept: list[Action] = []
    deferred: list[Deferred] = []
    for action in actions:
        if action.kind is not ActionKind.LOAD or registry is None or action.model not in registry.models:
            kept.append(action)
            continue
        entry = registry.models[action.model].on(action.server or "")
        if entry.recoveries >= policy.max_attempts and set(action.causes) <= RELOAD_CAUSES:
            # Triton still serves the model (a failed reload keeps the previous config running): giving up must
            # not unload it. The violation stays reported until someone fixes the spec or activates again.
            why = (
                f"gave up after {entry.recoveries} failed reloads; the running config keeps serving "
                "(fix the cause, then `ruthctl activate` it)"
            )
            deferred.append(Deferred(action, why))
            continue
        if entry.recoveries >= policy.max_attempts:
            reason = f"{entry.recoveries} recoveries did not keep it healthy; last problem: {action.detail}"
            kept.append(dataclasses.replace(action, kind=ActionKind.DISABLE, detail=reason))
            continue
        if entry.last_recovery is not None:
            wait = policy.backoff_for(entry.recoveries) - (now - parse_stamp(entry.last_recovery)).total_seconds()
            if wait > 0:
                deferred.append(Deferred(action, f"backing off {wait:.0f}s after attempt {entry.recoveries}"))
                continue
        kept.append(action)
    return kept, deferred


@dataclasses.dataclass(frozen=True)
class Cycle:
    """One round of the loop, as reported and exported."""

    check: Check
    actions: Sequence[ActionResult]
    deferred: Sequence[Deferred]
    duration_s: float
    error: str | None = None

    @property
    def violations(self) -> Sequence[Violation]:
        return self.check.violations


class WatchMetrics:
    """`ruthctl_*` families on a private prometheus-client registry (one process, one port)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self._last: Cycle | None = None
        self.repairs = Counter(
            "ruthctl_repairs", "Repair actions by kind and outcome", ["action", "outcome"], registry=self.registry
        )
        self.recoveries = Counter(
            "ruthctl_recoveries",
            "Reloads of a model by watch (zombie/dead stub/not ready)",
            ["server", "model"],
            registry=self.registry,
        )
        self.disabled = Counter(
            "ruthctl_disabled",
            "Models disabled after exhausting recoveries",
            ["server", "model"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "ruthctl_reconcile_duration_seconds",
            "Time of one verify+repair round",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.last_run = Gauge(
            "ruthctl_last_reconcile_timestamp_seconds", "Unix time of the last finished round", registry=self.registry
        )
        self.registry.register(_SnapshotCollector(self))

    def record(self, cycle: Cycle, wall: float) -> None:
        self._last = cycle
        for result in cycle.actions:
            self.repairs.labels(result.action.kind.value, "ok" if result.ok else "failed").inc()
            if result.action.kind is ActionKind.LOAD:
                self.recoveries.labels(result.action.server or "", result.action.model or "").inc()
            if result.action.kind is ActionKind.DISABLE and result.ok:
                self.disabled.labels(result.action.server or "", result.action.model or "").inc()
        self.duration.observe(cycle.duration_s)
        self.last_run.set(wall)

    @property
    def last(self) -> Cycle | None:
        return self._last

    def serve(self, port: int, addr: str = "127.0.0.1") -> Any:
        from prometheus_client import start_http_server

        return start_http_server(port, addr=addr, registry=self.registry)


class _SnapshotCollector:
    """Gauges of the last round, rebuilt on each scrape so models that went away leave no stale series."""

    def __init__(self, metrics: WatchMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        cycle = self.metrics.last
        desired = GaugeMetricFamily(
            "ruthctl_model_desired", "1 when the registry wants the model active", labels=["model", "version"]
        )
        state = GaugeMetricFamily(
            "ruthctl_model_state",
            "1 for the registry's lifecycle state of a model on a server",
            labels=["server", "model", "state"],
        )
        actual = GaugeMetricFamily(
            "ruthctl_model_ready", "1 when Triton's index says READY", labels=["server", "model"]
        )
        drift = GaugeMetricFamily(
            "ruthctl_model_drift", "Invariant violations of a model on a server", labels=["server", "model"]
        )
        violations = GaugeMetricFamily("ruthctl_violations", "Current violations by kind", labels=["kind"])
        up = GaugeMetricFamily("ruthctl_server_up", "1 when the server answered the last round", labels=["server"])
        stubs_seen = GaugeMetricFamily(
            "ruthctl_stub_check",
            "1 when the stub processes of a server on this host are checked, 0 when they can't be seen",
            labels=["server"],
        )
        if cycle is not None:
            registry = cycle.check.local.registry
            for name, entry in sorted((registry.models if registry else {}).items()):
                desired.add_metric([name, str(entry.version)], 1.0 if entry.desired is Desired.ACTIVE else 0.0)
                for server, server_entry in entry.servers.items():
                    for s in State:
                        state.add_metric([server, name, s.value], 1.0 if server_entry.state is s else 0.0)
            per_model: dict[tuple[str, str], int] = {}
            by_kind: dict[str, int] = {k.value: 0 for k in Kind}
            for v in cycle.violations:
                by_kind[v.kind.value] += 1
                if v.model:
                    key = (v.server or "", v.model)
                    per_model[key] = per_model.get(key, 0) + 1
            for facts in cycle.check.servers:
                up.add_metric([facts.server], 0.0 if facts.error else 1.0)
                if facts.stubs_unseen is not None:
                    stubs_seen.add_metric([facts.server], 0.0)
                elif facts.stubs is not None:
                    stubs_seen.add_metric([facts.server], 1.0)
                for name, index_entry in sorted(facts.index.items()):
                    actual.add_metric([facts.server, name], 1.0 if index_entry.ready else 0.0)
                    per_model.setdefault((facts.server, name), 0)
            for (server, name), count in sorted(per_model.items()):
                drift.add_metric([server, name], float(count))
            for kind, count in sorted(by_kind.items()):
                violations.add_metric([kind], float(count))
        yield from (desired, state, actual, drift, violations, up, stubs_seen)


class Watcher:
    """verify -> plan -> recovery policy -> repair, every `interval_s`; errors back the loop off exponentially."""

    def __init__(
        self,
        connect: Callable[[], AbstractContextManager[Reconciler]],
        policy: RecoveryPolicy,
        metrics: WatchMetrics,
        *,
        interval_s: float = 10.0,
        max_interval_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = utc_now,
        on_cycle: Callable[[Cycle], None] | None = None,
        wait: Callable[[threading.Event, float], object] = threading.Event.wait,
        confirm_s: float = 3.0,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.connect = connect
        self.policy = policy
        self.metrics = metrics
        self.interval_s = interval_s
        self.max_interval_s = max_interval_s
        self.clock = clock
        self.wall = wall
        self.on_cycle = on_cycle
        self.wait = wait
        self.confirm_s = confirm_s
        self.sleep = sleep
        self.failures = 0
        self._unseen: dict[str, str] = {}  # servers whose stubs this process can't see, as last logged

    def cycle(self) -> Cycle:
        """One round, on fresh connections (`connect` closes them: an idle keep-alive holds up Triton's shutdown)."""
        started = self.clock()
        with self.connect() as reconciler:
            check = reconciler.check()
            if self.confirm_s > 0 and any(v.kind is Kind.STUB_DEAD for v in check.violations):
                # a reload that only changes the instance count keeps the model READY while Triton starts the new
                # stubs (docs/triton-notes.md §8.1): a stub missing for a moment is not dead. Restarting on it
                # would cause the outage `watch` is there to heal, so a missing stub is looked at twice.
                self.sleep(self.confirm_s)
                check = reconciler.check()
            self._observe(reconciler, check)
            self._reset_stable(reconciler, check)
            planned = plan_repairs(check.violations)
            actions, deferred = apply_policy(planned, _read(reconciler.registry), self.wall(), self.policy)
            results = reconciler.execute(actions, count_recoveries=True)
        self._say_unseen(check)
        for result in results:
            level = logging.INFO if result.ok else logging.WARNING
            log.log(
                level,
                "%s %s on %s: %s",
                result.action.kind.value,
                result.action.model,
                result.action.server,
                result.detail,
            )
        return Cycle(check, results, deferred, self.clock() - started)

    def _say_unseen(self, check: Check) -> None:
        """Log (once per change, at ERROR) a local server whose stub processes can't be checked: the dead-stub
        recovery is off there, and that must not be silent (also `ruthctl_stub_check` 0 and a STUBS_UNSEEN
        violation, which `verify` exits 1 for)."""
        unseen = {f.server: f.stubs_unseen for f in check.servers if f.stubs_unseen is not None}
        for server, why in unseen.items():
            if self._unseen.get(server) != why:
                log.error("%s: dead stub processes can't be detected: %s", server, why)
        for server in set(self._unseen) - set(unseen):
            log.warning("%s: stub processes are visible again; dead stubs are detected", server)
        self._unseen = unseen

    def _observe(self, reconciler: Reconciler, check: Check) -> None:
        """Record what each server's index said, as the registry's `observed` state."""
        registry = check.local.registry
        if registry is None:
            return
        for facts in check.servers:
            if facts.error:
                continue
            for name in registry.models:
                entry = facts.index.get(name)
                reconciler.registry.observe(
                    name, facts.server, entry.state if entry else None, entry.reason if entry else ""
                )

    def _reset_stable(self, reconciler: Reconciler, check: Check) -> None:
        """Forget past recoveries of models that have been healthy for `stable_after_s` since the last one."""
        registry = check.local.registry
        if registry is None:
            return
        troubled = {(v.model, v.server) for v in check.violations}
        now = self.wall()
        for name, entry in registry.models.items():
            for server, server_entry in entry.servers.items():
                if not server_entry.recoveries or server_entry.last_recovery is None or (name, server) in troubled:
                    continue
                if (
                    server_entry.state is State.READY
                    and (now - parse_stamp(server_entry.last_recovery)).total_seconds() >= self.policy.stable_after_s
                ):
                    reconciler.registry.count_recovery(name, server, reset=True)

    def run(self, stop: threading.Event, iterations: int | None = None) -> int:
        """Loop until `stop` is set (or `iterations` rounds ran); returns the number of rounds."""
        rounds = 0
        while not stop.is_set() and (iterations is None or rounds < iterations):
            started = self.clock()
            try:
                cycle = self.cycle()
                self.failures = 0
            except Exception as exc:  # noqa: BLE001 - a daemon loop outlives any one bad round; it backs off instead
                self.failures += 1
                log.error(
                    "reconcile round failed (%d in a row): %s",
                    self.failures,
                    exc,
                    exc_info=not isinstance(exc, (RegistryError, OSError)),
                )
                cycle = Cycle(Check.empty(), (), (), self.clock() - started, error=str(exc))
            self.metrics.record(cycle, self.wall().timestamp())
            if self.on_cycle is not None:
                self.on_cycle(cycle)
            rounds += 1
            if iterations is not None and rounds >= iterations:
                break
            self.wait(stop, self.next_wait())
        return rounds

    def next_wait(self) -> float:
        if self.failures == 0:
            return self.interval_s
        return float(min(self.interval_s * 2**self.failures, self.max_interval_s))


def _read(registry: Any) -> RegistryFile | None:
    try:
        return registry.read() if registry.exists() else None
    except RegistryError:
        return None


def summary(cycle: Cycle) -> Mapping[str, Any]:
    return {
        "violations": [v.to_json() for v in cycle.violations],
        "actions": [r.to_json() for r in cycle.actions],
        "deferred": [{**d.action.to_json(), "why": d.why} for d in cycle.deferred],
        "duration_s": round(cycle.duration_s, 3),
        "error": cycle.error,
    }
