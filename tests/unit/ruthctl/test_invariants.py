"""The invariants as pure rules over facts, and the repair plan (no server, no disk)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from python_backends.weights import WeightProblem
from ruthctl.gauges import HealthGauges
from ruthctl.invariants import (
    ActionKind,
    Kind,
    LocalFacts,
    ServerFacts,
    find_violations,
    owner_gone,
    plan_repairs,
)
from ruthctl.registry import Desired, ModelEntry, RegistryFile, ServerEntry, State
from ruthctl.spec import parse_spec
from ruthctl.state_files import BreakerFile
from ruthctl.triton_client import IndexEntry

S = "127.0.0.1:8000"
NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
TANK = parse_spec({"name": "tank", "version": 1, "watchdog": {"zombie_limit": 2}})
POSE = parse_spec(
    {
        "name": "pose",
        "contract": "raw",
        "inputs": [{"name": "F", "data_type": "TYPE_UINT8", "dims": [1]}],
        "outputs": [{"name": "P", "data_type": "TYPE_FP32", "dims": [1]}],
    }
)


def registry_of(**models: tuple[Desired, State]) -> RegistryFile:
    return RegistryFile(
        models={
            name: ModelEntry(
                desired=desired,
                version=1,
                servers={S: ServerEntry(state=state, since="2026-01-01T11:59:00Z", actor="me@otherhost pid 1: x")},
            )
            for name, (desired, state) in models.items()
        }
    )


def local(registry: RegistryFile | None = None, **kwargs: Any) -> LocalFacts:
    return LocalFacts(specs={"tank": TANK, "pose": POSE}, registry=registry, **kwargs)


def server(**index: str | None) -> ServerFacts:
    return ServerFacts(server=S, index={n: IndexEntry(n, "1", state) for n, state in index.items()})


def kinds(local_facts: LocalFacts, *servers: ServerFacts, **kwargs: Any) -> list[tuple[Kind, str | None]]:
    violations = find_violations(local_facts, list(servers), now=NOW, owner_gone=lambda actor: False, **kwargs)
    return [(v.kind, v.model) for v in violations]


def test_a_consistent_deployment_has_no_violations() -> None:
    reg = registry_of(tank=(Desired.ACTIVE, State.READY), pose=(Desired.INACTIVE, State.UNLOADED))
    assert kinds(local(reg), server(tank="READY", pose=None)) == []


def test_registry_ready_but_triton_not_is_not_ready() -> None:
    reg = registry_of(tank=(Desired.ACTIVE, State.READY), pose=(Desired.INACTIVE, State.UNLOADED))
    violations = find_violations(local(reg), [server(tank="UNAVAILABLE")], now=NOW)
    assert [(v.kind, v.model, v.server) for v in violations] == [(Kind.NOT_READY, "tank", S)]
    assert "registry says READY" in violations[0].detail


def test_triton_ready_but_registry_not_is_stale_state() -> None:
    reg = registry_of(tank=(Desired.ACTIVE, State.FAILED), pose=(Desired.INACTIVE, State.UNLOADED))
    assert kinds(local(reg), server(tank="READY")) == [(Kind.STATE_STALE, "tank")]


def test_registry_ready_for_an_undesired_model_that_triton_dropped_is_stale_state() -> None:
    reg = registry_of(tank=(Desired.INACTIVE, State.READY), pose=(Desired.INACTIVE, State.UNLOADED))
    assert kinds(local(reg), server()) == [(Kind.STATE_STALE, "tank")]


@pytest.mark.parametrize(
    ("desired", "state"),
    [(Desired.INACTIVE, State.UNLOADED), (Desired.ACTIVE, State.DISABLED), (None, None)],
)
def test_anything_loaded_that_is_not_wanted_is_unwanted(desired: Desired | None, state: State | None) -> None:
    reg = registry_of(pose=(Desired.INACTIVE, State.UNLOADED))
    if desired is not None and state is not None:
        reg = registry_of(tank=(desired, state), pose=(Desired.INACTIVE, State.UNLOADED))
    assert (Kind.UNWANTED, "tank") in kinds(local(reg), server(tank="READY"))
    assert (Kind.UNWANTED, "stranger") in kinds(local(reg), server(stranger="READY"))


def test_a_disabled_model_that_is_still_desired_needs_a_person() -> None:
    reg = registry_of(tank=(Desired.ACTIVE, State.DISABLED), pose=(Desired.INACTIVE, State.UNLOADED))
    [violation] = find_violations(local(reg), [server()], now=NOW)
    assert violation.kind is Kind.DISABLED and not violation.fixable


def test_a_version_other_than_the_wanted_one_is_a_mismatch() -> None:
    reg = registry_of(tank=(Desired.ACTIVE, State.READY), pose=(Desired.INACTIVE, State.UNLOADED))
    facts = ServerFacts(server=S, index={"tank": IndexEntry("tank", "2", "READY")})
    assert kinds(local(reg), facts) == [(Kind.VERSION_MISMATCH, "tank")]


def test_live_config_drift_dead_stubs_and_zombies_are_reported_for_ready_models() -> None:
    reg = registry_of(tank=(Desired.ACTIVE, State.READY), pose=(Desired.ACTIVE, State.READY))
    facts = ServerFacts(
        server=S,
        index={n: IndexEntry(n, "1", "READY") for n in ("tank", "pose")},
        live_drift={"tank": ["instance_group[0].count: 2 != 1"]},
        stubs={"tank": (1, 2), "pose": (1, 1)},
        gauges={"tank": HealthGauges(health=-1, zombies=3, breaker=0), "pose": HealthGauges(health=-1, breaker=0)},
    )
    assert kinds(local(reg), facts) == [
        (Kind.HUNG, "pose"),
        (Kind.LIVE_DRIFT, "tank"),
        (Kind.STUB_DEAD, "tank"),
        (Kind.HUNG, "tank"),
    ]


@pytest.mark.parametrize(
    ("zombies", "breaker", "hung"),
    [(1, 0, False), (2, 0, True), (9, 0, True), (1, 2, True), (0, 2, False), (1, 1, False)],
)
def test_zombies_at_the_limit_or_behind_an_open_breaker_are_a_hang(zombies: int, breaker: int, hung: bool) -> None:
    """The zombie gauge is refreshed on a timer by every live instance (and only live instances are read), so it
    is trusted: at the spec's limit (2 here), or any zombie while the breaker is open (it hides the hang)."""
    reg = registry_of(tank=(Desired.ACTIVE, State.READY), pose=(Desired.INACTIVE, State.UNLOADED))
    facts = ServerFacts(
        server=S,
        index={"tank": IndexEntry("tank", "1", "READY")},
        gauges={"tank": HealthGauges(health=(1, 0, -1)[breaker], zombies=zombies, breaker=breaker)},
    )
    assert kinds(local(reg), facts) == ([(Kind.HUNG, "tank")] if hung else [])


def test_an_open_breaker_is_not_a_hang() -> None:
    reg = registry_of(tank=(Desired.ACTIVE, State.READY), pose=(Desired.INACTIVE, State.UNLOADED))
    facts = ServerFacts(
        server=S,
        index={"tank": IndexEntry("tank", "1", "READY")},
        gauges={"tank": HealthGauges(health=-1, zombies=0, breaker=2)},
    )
    assert kinds(local(reg), facts) == []


def test_loading_is_left_alone_until_stuck_or_its_owner_is_gone() -> None:
    reg = registry_of(tank=(Desired.ACTIVE, State.LOADING), pose=(Desired.INACTIVE, State.UNLOADED))
    assert kinds(local(reg), server(tank="LOADING"), stuck_after_s=300) == []
    assert kinds(local(reg), server(tank="LOADING"), stuck_after_s=30) == [(Kind.STUCK, "tank")]
    gone = find_violations(local(reg), [server()], now=NOW, owner_gone=lambda actor: True)
    assert [(v.kind, "owner exited" in v.detail) for v in gone] == [(Kind.STUCK, True)]


def test_owner_gone_only_judges_processes_of_this_host() -> None:
    assert owner_gone("me@box pid 123: ruthctl activate", hostname="box", alive=lambda pid: False)
    assert not owner_gone("me@box pid 123: ruthctl activate", hostname="box", alive=lambda pid: True)
    assert not owner_gone("me@elsewhere pid 123: ruthctl activate", hostname="box", alive=lambda pid: False)
    assert not owner_gone("someone", hostname="box", alive=lambda pid: False)


def test_without_a_registry_every_spec_is_wanted_and_adoption_is_planned() -> None:
    violations = find_violations(local(None), [server(tank="READY")], now=NOW)
    assert [(v.kind, v.model) for v in violations] == [(Kind.REGISTRY_MISSING, None), (Kind.NOT_READY, "pose")]
    assert [a.kind for a in plan_repairs(violations)] == [ActionKind.ADOPT]  # the rest waits for a registry


def test_host_facts_become_violations() -> None:
    facts = local(
        registry_of(
            tank=(Desired.INACTIVE, State.UNLOADED),
            pose=(Desired.INACTIVE, State.UNLOADED),
            ghost=(Desired.ACTIVE, State.UNLOADED),
        ),
        spec_errors={"broken.yaml": "broken.yaml: name: bad"},
        disk_drift={"tank": ["tank/config.pbtxt: missing"]},
        weights=[
            WeightProblem("pose", Path("/w/p.bin"), True, "fetch", "missing"),
            WeightProblem("tank", Path("/w/t.bin"), False, "", "bad sha"),
        ],
        breakers=[
            BreakerFile("tank", 1, Path("/s/breakers/tank-1.json"), "closed", None, 0, 0),
            BreakerFile("tank", 7, Path("/s/breakers/tank-7.json"), "open", 1.0, 5, 1),
            BreakerFile("nobody", 1, Path("/s/breakers/nobody-1.json"), "closed", None, 0, 0),
        ],
        stale_ledger=[{"owner": "x", "pid": 4, "model": "tank"}],
    )
    found = find_violations(facts, [server()], now=NOW)
    assert sorted((v.kind.value, v.model, v.fixable) for v in found) == sorted(
        [
            ("spec_invalid", "broken", False),
            ("disk_drift", "tank", True),
            ("weight_missing", "pose", False),
            ("weight_corrupt", "tank", False),
            ("breaker_orphan", "tank", True),
            ("breaker_orphan", "nobody", True),
            ("ledger_stale", "tank", True),
            ("unknown_model", "ghost", True),
        ]
    )


def test_a_model_whose_spec_is_broken_is_not_unloaded_for_it() -> None:
    facts = LocalFacts(
        specs={}, spec_errors={"tank.yaml": "typo"}, registry=registry_of(tank=(Desired.ACTIVE, State.READY))
    )
    assert kinds(facts, server(tank="READY")) == [(Kind.SPEC_INVALID, "tank")]


def test_an_unreachable_server_is_one_unfixable_violation() -> None:
    facts = ServerFacts(server=S, error="connection refused")
    [violation] = find_violations(local(registry_of()), [facts], now=NOW)
    assert violation.kind is Kind.SERVER_UNREACHABLE and not violation.fixable


def test_the_plan_merges_causes_and_orders_safely() -> None:
    reg = registry_of(tank=(Desired.ACTIVE, State.READY), pose=(Desired.ACTIVE, State.FAILED))
    facts = ServerFacts(
        server=S,
        index={"tank": IndexEntry("tank", "1", "READY"), "stranger": IndexEntry("stranger", "1", "READY")},
        live_drift={"tank": ["x"]},
        stubs={"tank": (0, 2)},
    )
    violations = find_violations(local(reg, disk_drift={"tank": ["d"]}), [facts], now=NOW)
    plan = plan_repairs(violations)
    assert [(a.kind, a.model) for a in plan] == [
        (ActionKind.REGENERATE, "tank"),
        (ActionKind.UNLOAD, "stranger"),
        (ActionKind.LOAD, "pose"),
        (ActionKind.LOAD, "tank"),
    ]
    assert plan[-1].causes == (Kind.LIVE_DRIFT, Kind.STUB_DEAD)


def test_callees_load_before_their_callers() -> None:
    violations = find_violations(
        local(registry_of(tank=(Desired.ACTIVE, State.UNLOADED), pose_estimator=(Desired.ACTIVE, State.UNLOADED))),
        [server()],
        now=NOW,
    )
    facts = LocalFacts(
        specs={"tank": TANK, "pose_estimator": POSE.model_copy(update={"name": "pose_estimator"})},
        registry=registry_of(tank=(Desired.ACTIVE, State.UNLOADED), pose_estimator=(Desired.ACTIVE, State.UNLOADED)),
    )
    violations = find_violations(facts, [server()], now=NOW)
    assert [a.model for a in plan_repairs(violations)] == ["pose_estimator", "tank"]


def test_unfixable_violations_get_no_action() -> None:
    facts = local(registry_of(), weights=[WeightProblem("tank", Path("/w"), True, "", "missing")])
    assert plan_repairs(find_violations(facts, [], now=NOW)) == []


def test_the_verify_report_exits_4_only_when_every_violation_is_an_unreachable_server() -> None:
    from ruthctl.exit_codes import ExitCode
    from ruthctl.invariants import Kind, VerifyReport, Violation

    down = Violation(Kind.SERVER_UNREACHABLE, "connection refused", server="b:1", fixable=False)
    stuck = Violation(Kind.STUCK, "LOADING for 400s", model="alpha", server="a:1")
    assert VerifyReport(("a:1",), ()).exit_code is ExitCode.OK
    assert VerifyReport(("a:1", "b:1"), (down,)).exit_code is ExitCode.UNREACHABLE
    assert VerifyReport(("a:1", "b:1"), (down, stuck)).exit_code is ExitCode.ERROR
    document = VerifyReport(("a:1", "b:1"), (stuck,)).to_json()
    assert document == {"ok": False, "servers": ["a:1", "b:1"], "violations": [stuck.to_json()]}
    assert document["violations"][0]["kind"] == "stuck"
