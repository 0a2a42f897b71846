"""The watch loop: recovery policy (backoff, DISABLED after max attempts), metrics, and the loop's own backoff."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from ruthctl.invariants import Action, ActionKind, Check, Kind, Violation
from ruthctl.procs import ProcessTable
from ruthctl.reconcile import Reconciler
from ruthctl.registry import Desired, ModelEntry, Registry, RegistryFile, ServerEntry, State
from ruthctl.settings import Profile
from ruthctl.triton_client import IndexEntry
from ruthctl.watch import RecoveryPolicy, Watcher, WatchMetrics, apply_policy

S = "127.0.0.1:8000"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def test_the_recovery_backoff_doubles_up_to_its_cap() -> None:
    policy = RecoveryPolicy(backoff_s=10, max_backoff_s=35)
    assert [policy.backoff_for(n) for n in range(5)] == [0, 10, 20, 35, 35]
    with pytest.raises(ValueError):
        RecoveryPolicy(max_attempts=0)


def registry_with(recoveries: int, last: dt.datetime | None) -> RegistryFile:
    stamp = None if last is None else last.isoformat().replace("+00:00", "Z")
    server = ServerEntry(state=State.READY, recoveries=recoveries, last_recovery=stamp)
    return RegistryFile(models={"m": ModelEntry(desired=Desired.ACTIVE, servers={S: server})})


LOAD = Action(ActionKind.LOAD, "m", S, "1 of 2 stub processes alive", (Kind.STUB_DEAD,))


def test_a_first_recovery_goes_ahead() -> None:
    kept, deferred = apply_policy([LOAD], registry_with(0, None), T0, RecoveryPolicy())
    assert kept == [LOAD] and deferred == []


def test_a_recovery_inside_its_backoff_is_deferred() -> None:
    policy = RecoveryPolicy(backoff_s=10)
    kept, deferred = apply_policy([LOAD], registry_with(2, T0), T0 + dt.timedelta(seconds=15), policy)
    assert kept == [] and "backing off 5s after attempt 2" in deferred[0].why
    kept, _ = apply_policy([LOAD], registry_with(2, T0), T0 + dt.timedelta(seconds=21), policy)
    assert kept == [LOAD]


def test_after_max_attempts_the_model_is_disabled_instead() -> None:
    kept, _ = apply_policy([LOAD], registry_with(3, T0), T0 + dt.timedelta(hours=1), RecoveryPolicy(max_attempts=3))
    [disable] = kept
    assert disable.kind is ActionKind.DISABLE and disable.model == "m" and "3 recoveries" in disable.detail


@pytest.mark.parametrize(
    "causes", [(Kind.LIVE_DRIFT,), (Kind.VERSION_MISMATCH,), (Kind.LIVE_DRIFT, Kind.VERSION_MISMATCH)]
)
def test_a_serving_model_whose_reloads_keep_failing_is_left_serving_not_disabled(causes: tuple[Kind, ...]) -> None:
    reload = Action(ActionKind.LOAD, "m", S, "parameters differ", causes)
    kept, deferred = apply_policy([reload], registry_with(3, T0), T0 + dt.timedelta(hours=1), RecoveryPolicy())
    assert kept == [] and "gave up after 3 failed reloads" in deferred[0].why
    hung_too = Action(ActionKind.LOAD, "m", S, "zombies", (*causes, Kind.HUNG))  # sick, not just drifted
    kept, _ = apply_policy([hung_too], registry_with(3, T0), T0 + dt.timedelta(hours=1), RecoveryPolicy())
    assert [a.kind for a in kept] == [ActionKind.DISABLE]


def test_other_actions_pass_through_the_policy() -> None:
    unload = Action(ActionKind.UNLOAD, "x", S)
    assert apply_policy([unload], registry_with(9, T0), T0, RecoveryPolicy()) == ([unload], [])
    assert apply_policy([LOAD], None, T0, RecoveryPolicy()) == ([LOAD], [])


class Wall:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def setup(deployment: Any, fake_triton: Any, tmp_path: Path) -> tuple[Watcher, Any, Registry, Wall]:
    wall = Wall()
    registry = Registry(deployment.state, actor="watch", clock=wall)
    registry.set_desired("alpha", Desired.ACTIVE)
    registry.set_desired("beta", Desired.INACTIVE)
    triton = fake_triton(S)
    reconciler = Reconciler(
        deployment.paths(), Profile.CPU, registry, [triton], processes=ProcessTable(tmp_path / "noproc"), clock=wall
    )

    @contextlib.contextmanager
    def connect() -> Iterator[Reconciler]:
        yield reconciler

    watcher = Watcher(
        connect,
        RecoveryPolicy(max_attempts=2, backoff_s=10, stable_after_s=60),
        WatchMetrics(),
        interval_s=1,
        max_interval_s=8,
        wall=wall,
    )
    return watcher, triton, registry, wall


def test_a_round_loads_a_wanted_model_and_counts_the_recovery(setup: Any) -> None:
    watcher, triton, registry, _ = setup
    cycle = watcher.cycle()
    assert [(r.action.kind, r.action.model, r.ok) for r in cycle.actions] == [(ActionKind.LOAD, "alpha", True)]
    assert triton.entries["alpha"].ready
    assert registry.get("alpha").on(S).recoveries == 1
    assert registry.get("alpha").on(S).observed is None  # observed before the repair: not loaded then
    assert watcher.cycle().actions == []
    assert registry.get("alpha").on(S).observed == "READY"


def test_a_model_that_keeps_failing_is_backed_off_then_disabled(setup: Any) -> None:
    watcher, triton, registry, wall = setup
    triton.fail_load["alpha"] = "Internal: weights missing"
    assert not watcher.cycle().actions[0].ok  # attempt 1
    assert watcher.cycle().deferred  # inside the 10 s backoff
    wall.now += dt.timedelta(seconds=11)
    assert not watcher.cycle().actions[0].ok  # attempt 2
    wall.now += dt.timedelta(seconds=21)
    [disable] = watcher.cycle().actions
    assert disable.action.kind is ActionKind.DISABLE and disable.ok
    entry = registry.get("alpha").on(S)
    assert entry.state is State.DISABLED and "2 recoveries" in entry.reason
    wall.now += dt.timedelta(hours=1)
    cycle = watcher.cycle()
    assert cycle.actions == [] and [v.kind for v in cycle.violations] == [Kind.DISABLED]
    assert triton.calls.count(("load", "alpha")) == 2


def test_a_model_that_stays_healthy_gets_its_recovery_count_back(setup: Any) -> None:
    watcher, _triton, registry, wall = setup
    watcher.cycle()
    assert registry.get("alpha").on(S).recoveries == 1
    wall.now += dt.timedelta(seconds=30)
    watcher.cycle()
    assert registry.get("alpha").on(S).recoveries == 1  # not stable long enough yet
    wall.now += dt.timedelta(seconds=31)
    watcher.cycle()
    assert registry.get("alpha").on(S).recoveries == 0


def test_the_metrics_show_desired_actual_drift_and_repairs(setup: Any) -> None:
    watcher, triton, _, wall = setup
    watcher.metrics.record(watcher.cycle(), 1.7e9)
    triton.entries["alpha"] = IndexEntry("alpha", "1", "UNAVAILABLE", "unloaded")
    wall.now += dt.timedelta(seconds=11)
    watcher.metrics.record(cycle := watcher.cycle(), 1.7e9 + 1)
    assert cycle.actions[0].action.kind is ActionKind.LOAD
    text = generate_latest(watcher.metrics.registry).decode()
    assert 'ruthctl_model_desired{model="alpha",version="1"} 1.0' in text
    assert 'ruthctl_model_desired{model="beta",version="1"} 0.0' in text
    assert f'ruthctl_model_state{{model="alpha",server="{S}",state="READY"}} 1.0' in text
    assert f'ruthctl_model_ready{{model="alpha",server="{S}"}} 0.0' in text  # as seen when the round started
    assert f'ruthctl_model_drift{{model="alpha",server="{S}"}} 1.0' in text
    assert 'ruthctl_violations{kind="not_ready"} 1.0' in text
    assert 'ruthctl_repairs_total{action="load",outcome="ok"} 2.0' in text
    assert f'ruthctl_recoveries_total{{model="alpha",server="{S}"}} 2.0' in text
    assert f'ruthctl_server_up{{server="{S}"}} 1.0' in text
    assert "ruthctl_last_reconcile_timestamp_seconds 1.700000001e+09" in text


def test_the_loop_runs_its_rounds_and_backs_off_after_errors(setup: Any) -> None:
    watcher, _, _, _ = setup
    rounds: list[Any] = []
    waits: list[float] = []
    watcher.on_cycle = rounds.append
    watcher.wait = lambda stop, seconds: waits.append(seconds)
    assert watcher.run(threading.Event(), iterations=2) == 2
    assert len(rounds) == 2 and rounds[0].error is None and waits == [1]

    @contextlib.contextmanager
    def broken() -> Iterator[Reconciler]:
        raise OSError("disk full")
        yield  # pragma: no cover

    watcher.connect = broken
    watcher.run(threading.Event(), iterations=3)
    assert rounds[-1].error == "disk full"
    assert waits[1:] == [2, 4]  # the loop backs off: 1 s doubled per failed round
    assert watcher.failures == 3 and watcher.next_wait() == 8  # and is capped at max_interval_s


def test_a_set_stop_event_ends_the_loop_before_a_round() -> None:
    stop = threading.Event()
    stop.set()

    def never() -> Any:
        raise AssertionError("no round expected")

    watcher = Watcher(never, RecoveryPolicy(), WatchMetrics())
    assert watcher.run(stop) == 0


class Scripted:
    """A reconciler whose checks are given in order; records what it is asked to execute."""

    def __init__(self, *checks: Check) -> None:
        self.checks = list(checks)
        self.executed: list[Action] = []
        self.registry = Registry(Path("/nonexistent/state"))  # no registry file: no recovery bookkeeping

    def check(self) -> Check:
        return self.checks.pop(0)

    def execute(self, actions: Any, *, count_recoveries: bool = False) -> list[Any]:
        self.executed += list(actions)
        return []


def dead(model: str) -> Check:
    violation = Violation(Kind.STUB_DEAD, "1 of 2 stub processes alive", model=model, server=S, fix="reload it")
    return dataclasses.replace(Check.empty(), violations=(violation,))


@pytest.mark.parametrize(("second", "restarted"), [(Check.empty(), False), (dead("m"), True)])
def test_a_missing_stub_is_looked_at_twice_before_the_model_is_restarted(second: Check, restarted: bool) -> None:
    scripted = Scripted(dead("m"), second)
    slept: list[float] = []

    @contextlib.contextmanager
    def connect() -> Iterator[Any]:
        yield scripted

    watcher = Watcher(connect, RecoveryPolicy(), WatchMetrics(), confirm_s=3.0, sleep=slept.append)
    cycle = watcher.cycle()
    assert slept == [3.0] and scripted.checks == []
    assert [(a.kind, a.model) for a in scripted.executed] == ([(ActionKind.LOAD, "m")] if restarted else [])
    assert [v.kind for v in cycle.violations] == ([Kind.STUB_DEAD] if restarted else [])
