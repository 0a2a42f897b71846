"""The registry: explicit lifecycle transitions, atomic cross-process updates, and an audit log of each one."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from ruthctl.registry import (
    ALLOWED,
    Desired,
    IllegalTransition,
    Registry,
    RegistryCorrupt,
    State,
)

SERVER = "127.0.0.1:8000"
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path, actor="tester@host pid 1: ruthctl test", clock=Clock())


def test_without_a_file_there_is_no_desired_state_so_serve_loads_everything(registry: Registry) -> None:
    assert registry.desired_active() is None
    registry.set_desired("b", Desired.ACTIVE)
    registry.set_desired("a", Desired.ACTIVE)
    registry.set_desired("c", Desired.INACTIVE)
    assert registry.desired_active() == ["a", "b"]


def test_the_lifecycle_of_an_activation_is_recorded_with_who_and_why(registry: Registry) -> None:
    registry.transition("m", SERVER, State.LOADING, version=3, reason="activate")
    entry = registry.transition("m", SERVER, State.READY, reason="activate")
    assert (entry.state, entry.version, entry.actor) == (State.READY, 3, "tester@host pid 1: ruthctl test")
    assert entry.since == "2026-01-02T03:04:05.000Z"
    audit = registry.audit("m")
    assert [(a.from_state, a.to_state) for a in audit] == [("UNLOADED", "LOADING"), ("LOADING", "READY")]
    assert all(a.actor.startswith("tester@host") and a.server == SERVER and a.version == 3 for a in audit)


@pytest.mark.parametrize("current", list(State))
@pytest.mark.parametrize("target", list(State))
def test_only_the_allowed_transitions_are_accepted(tmp_path: Path, current: State, target: State) -> None:
    registry = Registry(tmp_path, actor="t")
    path = {
        State.UNLOADED: [],
        State.LOADING: [State.LOADING],
        State.READY: [State.LOADING, State.READY],
        State.UNLOADING: [State.LOADING, State.READY, State.UNLOADING],
        State.FAILED: [State.LOADING, State.FAILED],
        State.DISABLED: [State.DISABLED],
    }[current]
    for step in path:
        registry.transition("m", SERVER, step)
    if target in ALLOWED[current]:
        assert registry.transition("m", SERVER, target).state is target
    else:
        with pytest.raises(IllegalTransition, match=f"{current.value} -> {target.value} is not allowed"):
            registry.transition("m", SERVER, target)
        assert registry.get("m") is None or registry.get("m").on(SERVER).state is current  # type: ignore[union-attr]


def test_a_second_claim_of_a_load_names_the_owner(registry: Registry) -> None:
    registry.transition("m", SERVER, State.LOADING)
    with pytest.raises(IllegalTransition, match="by tester@host pid 1"):
        registry.transition("m", SERVER, State.LOADING)


def test_expect_refuses_a_transition_from_another_state(registry: Registry) -> None:
    registry.transition("m", SERVER, State.LOADING)
    registry.transition("m", SERVER, State.FAILED, reason="boom")
    with pytest.raises(IllegalTransition):
        registry.transition("m", SERVER, State.LOADING, expect=State.READY)


def test_each_server_has_its_own_state(registry: Registry) -> None:
    registry.transition("m", "a:1", State.LOADING)
    registry.transition("m", "b:1", State.DISABLED, reason="gave up")
    entry = registry.get("m")
    assert entry is not None
    assert (entry.on("a:1").state, entry.on("b:1").state, entry.on("c:1").state) == (
        State.LOADING,
        State.DISABLED,
        State.UNLOADED,
    )


def test_set_desired_is_audited_only_when_it_changes(registry: Registry) -> None:
    registry.set_desired("m", Desired.ACTIVE, version=2, overrides={"ruth.fault.fail_rate": "0.5"})
    registry.set_desired("m", Desired.ACTIVE, version=2, overrides={"ruth.fault.fail_rate": "0.5"})
    entry = registry.get("m")
    assert entry is not None and entry.overrides == {"ruth.fault.fail_rate": "0.5"} and entry.version == 2
    assert [a.event for a in registry.audit()] == ["desired"]


def test_observations_are_recorded_but_are_not_transitions(registry: Registry) -> None:
    registry.set_desired("m", Desired.ACTIVE)
    registry.observe("m", SERVER, "UNAVAILABLE", "unloaded")
    entry = registry.get("m")
    assert entry is not None
    assert (entry.on(SERVER).observed, entry.on(SERVER).observed_reason, entry.on(SERVER).state) == (
        "UNAVAILABLE",
        "unloaded",
        State.UNLOADED,
    )
    assert [a.event for a in registry.audit()] == ["desired"]
    registry.observe("unknown", SERVER, "READY")
    assert registry.get("unknown") is None


def test_recoveries_count_up_and_reset(registry: Registry) -> None:
    registry.transition("m", SERVER, State.LOADING)
    assert registry.count_recovery("m", SERVER) == 1
    assert registry.count_recovery("m", SERVER) == 2
    assert registry.get("m").on(SERVER).last_recovery == "2026-01-02T03:04:05.000Z"  # type: ignore[union-attr]
    assert registry.count_recovery("m", SERVER, reset=True) == 0


def test_renew_restamps_only_this_actors_loading_claims(tmp_path: Path) -> None:
    clock = Clock()
    mine = Registry(tmp_path, actor="me@host pid 1: ruthctl serve", clock=clock)
    other = Registry(tmp_path, actor="you@host pid 2: ruthctl deactivate x", clock=clock)
    for name in ("queued", "taken", "done"):
        mine.transition(name, SERVER, State.LOADING, reason="queued")
    mine.transition("done", SERVER, State.READY)
    other.transition("taken", SERVER, State.UNLOADING)
    other.transition("taken", SERVER, State.UNLOADED)
    before = len(mine.audit())
    clock.now = T0 + dt.timedelta(minutes=10)
    held = mine.renew({"queued": "still queued", "taken": "x", "done": "x", "absent": "x"}, SERVER)
    assert held == {"queued"}
    queued = mine.get("queued").on(SERVER)  # type: ignore[union-attr]
    assert (queued.state, queued.since, queued.reason) == (State.LOADING, "2026-01-02T03:14:05.000Z", "still queued")
    assert mine.get("done").on(SERVER).since == "2026-01-02T03:04:05.000Z"  # type: ignore[union-attr]
    assert other.renew({"queued": "x"}, SERVER) == set()  # not its claim
    assert len(mine.audit()) == before  # not a lifecycle move


def test_forget_removes_the_model_and_says_so_in_the_audit(registry: Registry) -> None:
    registry.set_desired("m", Desired.ACTIVE)
    registry.forget("m", "no spec")
    assert registry.get("m") is None
    assert registry.audit()[-1].event == "forget"


def test_a_damaged_registry_is_an_error_not_an_empty_registry(registry: Registry) -> None:
    registry.set_desired("m", Desired.ACTIVE)
    registry.path.write_text("{ not json")
    with pytest.raises(RegistryCorrupt, match="rebuilds it from the audit log"):
        registry.read()
    with pytest.raises(RegistryCorrupt):
        registry.set_desired("n", Desired.ACTIVE)  # a write never papers over the damage
    assert registry.path.read_text() == "{ not json"


def test_rebuild_from_the_audit_log_restores_desired_and_lifecycle_states(registry: Registry) -> None:
    registry.set_desired("m", Desired.ACTIVE, version=2)
    registry.transition("m", SERVER, State.LOADING, version=2)
    registry.transition("m", SERVER, State.READY)
    registry.set_desired("gone", Desired.ACTIVE)
    registry.forget("gone", "test")
    before = registry.read()
    registry.path.write_bytes(b"\x00garbage")
    rebuilt = registry.rebuild_from_audit()
    assert set(rebuilt.models) == {"m"}
    assert rebuilt.models["m"].desired is Desired.ACTIVE and rebuilt.models["m"].version == 2
    assert rebuilt.models["m"].on(SERVER).state is State.READY
    assert rebuilt.models["m"].on(SERVER).state == before.models["m"].on(SERVER).state
    assert (registry.path.parent / "registry.json.bad").read_bytes() == b"\x00garbage"
    assert registry.audit()[-1].event == "rebuild"


def test_a_torn_last_audit_line_is_skipped(registry: Registry) -> None:
    registry.set_desired("m", Desired.ACTIVE)
    with registry.audit_path.open("a") as handle:
        handle.write('{"ts": "2026-01-0')
    assert [a.event for a in registry.audit()] == ["desired"]


def test_the_file_is_valid_json_after_every_write(registry: Registry) -> None:
    registry.set_desired("m", Desired.ACTIVE)
    data = json.loads(registry.path.read_text())
    assert data["schema_version"] == 1 and data["models"]["m"]["desired"] == "ACTIVE"


def _bump(state_dir: str, worker: int, rounds: int) -> None:
    registry = Registry(Path(state_dir), actor=f"worker {worker}")
    for i in range(rounds):
        registry.set_desired(f"w{worker}-{i}", Desired.ACTIVE)
        registry.count_recovery("shared", SERVER)


def test_concurrent_processes_never_lose_an_update(tmp_path: Path) -> None:
    workers, rounds = 4, 15
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_bump, args=(str(tmp_path), w, rounds)) for w in range(workers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
        assert p.exitcode == 0
    data = Registry(tmp_path).read()
    assert len([m for m in data.models if m.startswith("w")]) == workers * rounds
    assert data.models["shared"].on(SERVER).recoveries == workers * rounds
    assert len(Registry(tmp_path).audit()) == workers * rounds  # one "desired" line each, none torn


def _claim(state_dir: str, worker: int, start: Any, results: Any) -> None:
    registry = Registry(Path(state_dir), actor=f"worker {worker}")
    start.wait()
    try:
        registry.transition("m", SERVER, State.LOADING)
        results.put(worker)
    except IllegalTransition:
        results.put(-1)


def test_of_processes_racing_to_claim_a_load_exactly_one_wins(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    processes = [context.Process(target=_claim, args=(str(tmp_path), w, start, results)) for w in range(4)]
    for p in processes:
        p.start()
    start.set()
    for p in processes:
        p.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in processes)
    assert outcomes.count(-1) == 3
    winner = max(outcomes)
    assert Registry(tmp_path).read().models["m"].on(SERVER).actor == f"worker {winner}"
    assert len(Registry(tmp_path).audit()) == 1


def test_rebuild_twice_restores_overrides_and_invents_no_models(registry: Registry) -> None:
    registry.set_desired("m", Desired.ACTIVE, overrides={"ruth.fault.fail_rate": "0.1"})
    registry.path.write_text("x")
    registry.rebuild_from_audit()
    registry.path.write_text("x")
    rebuilt = registry.rebuild_from_audit()
    assert set(rebuilt.models) == {"m"}
    assert rebuilt.models["m"].overrides == {"ruth.fault.fail_rate": "0.1"}


def test_serve_still_gets_its_model_list_from_a_damaged_registry(registry: Registry) -> None:
    registry.set_desired("a", Desired.ACTIVE)
    registry.set_desired("b", Desired.INACTIVE)
    registry.path.write_text("{")
    assert registry.desired_active() == ["a"]
    assert registry.path.read_text() == "{"  # reading never writes


def test_a_model_disabled_everywhere_is_not_loaded_by_serve(registry: Registry) -> None:
    registry.set_desired("a", Desired.ACTIVE)
    registry.set_desired("b", Desired.ACTIVE)
    registry.transition("a", "s1", State.DISABLED, reason="3 recoveries failed")
    registry.transition("b", "s1", State.DISABLED, reason="3 recoveries failed")
    registry.transition("b", "s2", State.LOADING)
    assert registry.desired_active() == ["b"]


def test_a_desired_change_moves_with_its_claim_and_a_refused_claim_writes_nothing(registry: Registry) -> None:
    from ruthctl.registry import Want

    registry.transition("m", "s", State.LOADING, want=Want(Desired.ACTIVE, 2, {"ruth.fault.fail_rate": "0.1"}))
    entry = registry.get("m")
    assert entry is not None and (entry.desired, entry.version, entry.overrides) == (
        Desired.ACTIVE,
        2,
        {"ruth.fault.fail_rate": "0.1"},
    )
    events = [a.event for a in registry.audit("m")]
    with pytest.raises(IllegalTransition):  # deactivate finds it LOADING: refused, desired untouched
        registry.transition("m", "s", State.UNLOADING, unless=frozenset({State.LOADING}), want=Want(Desired.INACTIVE))
    assert registry.get("m").desired is Desired.ACTIVE  # type: ignore[union-attr]
    assert [a.event for a in registry.audit("m")] == events
    registry.transition("m", "s", State.FAILED, want=Want.of(None))  # rollback restores, in the same transaction
    assert registry.get("m").desired is Desired.INACTIVE  # type: ignore[union-attr]


def test_one_command_per_model_at_a_time(registry: Registry) -> None:
    from ruthctl.registry import ModelBusy

    with registry.command_lock("m"):
        with pytest.raises(ModelBusy, match="another ruthctl command"):
            with Registry(registry.state_dir).command_lock("m", timeout_s=0.1):
                pass
        with Registry(registry.state_dir).command_lock("other"):
            pass  # other models are not held up
    with Registry(registry.state_dir).command_lock("m"):
        pass


def test_audit_lines_it_cannot_replay_are_skipped_and_counted(registry: Registry) -> None:
    registry.set_desired("m", Desired.ACTIVE)
    with registry.audit_path.open("a") as audit:
        audit.write('{"ts": "x", "model": "m", "server": "s", "event": "transition", "to_state": "EXPLODED"}\n')
        audit.write('{"ts": "x", "model": "m", "event": "desired", "desired": "MAYBE"}\n{torn\n')
    registry.path.write_text("{")
    rebuilt = registry.rebuild_from_audit()
    assert rebuilt.models["m"].desired is Desired.ACTIVE
    assert len(registry.audit_skipped) == 3 and "unknown state 'EXPLODED'" in registry.audit_skipped[0]
