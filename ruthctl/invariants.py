"""The invariants between desired and actual state, as pure rules over plain facts, and the repair plan.

`reconcile.Reconciler` gathers the facts (specs, registry, disk, this host's processes, every server's index,
configs and metrics) and carries the plan out; everything here is a function of those facts and a clock, so each
rule is tested without a server and `verify`, `repair` and `watch` share one judgement.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from python_backends.weights import WeightProblem
from ruthctl.exit_codes import ExitCode
from ruthctl.gauges import HealthGauges
from ruthctl.procs import StubMatch
from ruthctl.registry import Desired, ModelEntry, RegistryFile, ServerEntry, State
from ruthctl.server import order_for_loading, pid_alive
from ruthctl.spec import ModelSpec
from ruthctl.state_files import BreakerFile
from ruthctl.triton_client import IndexEntry

__all__ = [
    "RESTART_CAUSES",
    "Action",
    "ActionKind",
    "ActionResult",
    "Check",
    "Kind",
    "LocalFacts",
    "ServerFacts",
    "Violation",
    "desired_version",
    "find_violations",
    "owner_gone",
    "plan_repairs",
]


class Kind(str, enum.Enum):
    REGISTRY_MISSING = "registry_missing"
    REGISTRY_CORRUPT = "registry_corrupt"
    SPEC_INVALID = "spec_invalid"
    SERVER_UNREACHABLE = "server_unreachable"
    ACCESS_DENIED = "access_denied"  # the server refused our admin token
    NOT_READY = "not_ready"  # wanted, but Triton doesn't have it READY
    STATE_STALE = "state_stale"  # the registry's state disagrees with Triton's, the desired state is met
    VERSION_MISMATCH = "version_mismatch"
    UNWANTED = "unwanted"  # loaded, but the registry doesn't want it
    UNKNOWN_MODEL = "unknown_model"  # in the registry, no spec
    DISABLED = "disabled"  # wanted, but recovery gave up
    DISK_DRIFT = "disk_drift"
    LIVE_DRIFT = "live_drift"
    WEIGHT_MISSING = "weight_missing"
    WEIGHT_CORRUPT = "weight_corrupt"
    BREAKER_ORPHAN = "breaker_orphan"
    LEDGER_STALE = "ledger_stale"
    STUCK = "stuck"
    STUB_DEAD = "stub_dead"
    STUB_ORPHAN = "stub_orphan"  # more stub processes than instances: a leftover of an earlier episode
    STUBS_UNSEEN = "stubs_unseen"  # a server on this host whose processes this ruthctl can't see
    HUNG = "hung"


@dataclasses.dataclass(frozen=True)
class Violation:
    kind: Kind
    detail: str
    model: str | None = None
    server: str | None = None
    fixable: bool = True
    fix: str = ""  # what repair does about it, or why it can't
    subject: str | None = None  # the file or entry concerned, when it isn't the model itself

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "kind": self.kind.value}


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """What `ruthctl verify` found on the servers it asked."""

    servers: Sequence[str]
    violations: Sequence[Violation]

    @property
    def exit_code(self) -> ExitCode:
        """0 no violation, 4 when the only violations are unreachable servers, else 1."""
        if not self.violations:
            return ExitCode.OK
        if all(v.kind is Kind.SERVER_UNREACHABLE for v in self.violations):
            return ExitCode.UNREACHABLE
        return ExitCode.ERROR

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.violations,
            "servers": list(self.servers),
            "violations": [v.to_json() for v in self.violations],
        }


class ActionKind(str, enum.Enum):
    """What `repair` and `watch` do about a violation (`_FIX` maps one to the other)."""

    REBUILD_REGISTRY = "rebuild_registry"  # damaged registry: moved aside, rebuilt from the servers
    ADOPT = "adopt"  # no registry: record what the servers run
    REGENERATE = "regenerate"  # config.pbtxt differs from the spec: render it again
    RESOLVE_STUCK = "resolve_stuck"  # LOADING/UNLOADING whose owner is gone
    REMOVE_BREAKER = "remove_breaker"  # a breaker file no model owns
    REAP_LEDGER = "reap_ledger"  # GPU reservations of dead processes
    RECORD = "record"  # the registry's state catches up with Triton's
    UNLOAD = "unload"
    LOAD = "load"  # (re)load: not READY, wrong version, live drift, dead stub, hung
    DISABLE = "disable"  # watch gives up on a model that keeps failing
    FORGET = "forget"  # a registry entry with no spec


@dataclasses.dataclass(frozen=True)
class Action:
    """One step of a repair plan (`plan_repairs`)."""

    kind: ActionKind
    model: str | None = None  # None: not about one model (the registry, the ledger)
    server: str | None = None  # None: not about one server (local files)
    detail: str = ""
    causes: tuple[Kind, ...] = ()  # the violations it repairs
    subject: str | None = None  # the file or entry concerned, when it isn't the model itself

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "model": self.model,
            "server": self.server,
            "subject": self.subject,
            "detail": self.detail,
            "causes": [c.value for c in self.causes],
        }


@dataclasses.dataclass(frozen=True)
class ActionResult:
    action: Action
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {**self.action.to_json(), "ok": self.ok, "result": self.detail}


@dataclasses.dataclass(frozen=True)
class LocalFacts:
    """What this host knows without asking a server."""

    specs: Mapping[str, ModelSpec]
    spec_errors: Mapping[str, str] = dataclasses.field(default_factory=dict)  # file name -> error
    registry: RegistryFile | None = None  # None: missing or corrupt
    registry_error: str | None = None  # set when corrupt
    disk_drift: Mapping[str, list[str]] = dataclasses.field(default_factory=dict)
    weights: Sequence[WeightProblem] = ()
    breakers: Sequence[BreakerFile] = ()
    stale_ledger: Sequence[Mapping[str, Any]] = ()


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    server: str
    error: str | None = None  # set when the server couldn't be asked
    forbidden: bool = False  # ...because it refused the admin token
    index: Mapping[str, IndexEntry] = dataclasses.field(default_factory=dict)
    live_drift: Mapping[str, list[str]] = dataclasses.field(default_factory=dict)
    stubs: Mapping[str, tuple[int, int]] | None = None  # model -> (alive, expected); None: not on this host
    stub_matches: Mapping[str, StubMatch] = dataclasses.field(default_factory=dict)  # by instance name
    stubs_unseen: str | None = None  # why a server on this host has no stub facts (no shared process namespace)
    gauges: Mapping[str, HealthGauges] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Check:
    """The facts of one verify round and what they violate."""

    local: LocalFacts
    servers: Sequence[ServerFacts]
    violations: Sequence[Violation]

    @classmethod
    def empty(cls) -> Check:
        return cls(LocalFacts(specs={}), (), ())


_ACTOR = re.compile(r"@(?P<host>\S+) pid (?P<pid>\d+)")


def owner_gone(actor: str, hostname: str | None = None, alive: Callable[[int], bool] = pid_alive) -> bool:
    """Whether the process named in `actor` ran on this host and has exited."""
    match = _ACTOR.search(actor)
    if match is None or match["host"] != (hostname or socket.gethostname()):
        return False
    return not alive(int(match["pid"]))


def desired_version(name: str, spec: ModelSpec | None, entry: ModelEntry | None) -> int:
    if entry is not None and entry.version:
        return entry.version
    return spec.version if spec is not None else 1


#: a server whose facts carry an error, by whether it refused our key: what it is and how to fix it
_UNANSWERED: Mapping[bool, tuple[Kind, str]] = {
    True: (Kind.ACCESS_DENIED, "give ruthctl the server's token (RUTH_ADMIN_TOKEN or <state-dir>/admin-token)"),
    False: (Kind.SERVER_UNREACHABLE, "start the server, or check --url and the admin token"),
}


# -- rules -------------------------------------------------------------------------------------------------------------
def find_violations(
    local: LocalFacts,
    servers: Sequence[ServerFacts],
    *,
    now: dt.datetime,
    stuck_after_s: float = 300.0,
    owner_gone: Callable[[str], bool] = owner_gone,
) -> list[Violation]:
    """Every violated invariant (pure: no I/O)."""
    found: list[Violation] = []
    found += _local_violations(local)
    registry = local.registry
    for facts in servers:
        if facts.error is not None:  # nothing more to judge on a server that doesn't answer us
            kind, fix = _UNANSWERED[facts.forbidden]
            found.append(Violation(kind, facts.error, server=facts.server, fixable=False, fix=fix))
            continue
        if facts.stubs_unseen is not None:
            found.append(
                Violation(
                    Kind.STUBS_UNSEEN,
                    facts.stubs_unseen,
                    server=facts.server,
                    fixable=False,
                    fix="run ruthctl in the server's process namespace: `shareProcessNamespace: true` in the pod, "
                    '`pid: "service:<triton service>"` in compose (deploy/)',
                )
            )
        if local.registry_error is not None:
            continue  # what is wanted is unknown until the registry is rebuilt: judge no model meanwhile
        names = set(facts.index) | set(local.specs) | (set(registry.models) if registry else set())
        for name in sorted(names):
            if name not in local.specs and f"{name}.yaml" in local.spec_errors:
                continue  # its spec is broken: SPEC_INVALID says so, and we don't unload it for a typo
            found += _model_violations(name, local, facts, now, stuck_after_s, owner_gone)
    return found


def _local_violations(local: LocalFacts) -> list[Violation]:
    found: list[Violation] = []
    if local.registry_error is not None:
        found.append(Violation(Kind.REGISTRY_CORRUPT, local.registry_error, fix="rebuild it from the audit log"))
    elif local.registry is None:
        found.append(
            Violation(
                Kind.REGISTRY_MISSING,
                "no registry yet: every model with a spec counts as wanted",
                fix="adopt: record every model with a spec as ACTIVE, and what Triton has loaded",
            )
        )
    for file, error in sorted(local.spec_errors.items()):
        found.append(Violation(Kind.SPEC_INVALID, error, model=Path(file).stem, fixable=False, fix="fix the spec file"))
    for name, differences in sorted(local.disk_drift.items()):
        found.append(Violation(Kind.DISK_DRIFT, "; ".join(differences), model=name, fix="regenerate its config files"))
    for problem in local.weights:
        kind = Kind.WEIGHT_MISSING if problem.missing else Kind.WEIGHT_CORRUPT
        found.append(
            Violation(
                kind,
                problem.detail,
                model=problem.model,
                fixable=False,
                fix=f"restore {problem.path}" + (f" ({problem.source})" if problem.source else ""),
            )
        )
    registry_models = local.registry.models if local.registry else {}
    for breaker in local.breakers:
        spec = local.specs.get(breaker.model)
        known = spec is not None and breaker.version in {
            spec.version,
            desired_version(breaker.model, spec, registry_models.get(breaker.model)),
        }
        if not known:
            found.append(
                Violation(
                    Kind.BREAKER_ORPHAN,
                    f"{breaker.path.name}: no model {breaker.model} version {breaker.version} is known",
                    model=breaker.model,
                    fix="remove the state file",
                    subject=str(breaker.path),
                )
            )
    for entry in local.stale_ledger:
        found.append(
            Violation(
                Kind.LEDGER_STALE,
                f"GPU ledger holds {entry.get('owner')} for dead pid {entry.get('pid')}",
                model=str(entry.get("model") or "") or None,
                fix="reap dead reservations",
            )
        )
    if local.registry is not None:
        for name in sorted(set(local.registry.models) - set(local.specs)):
            if f"{name}.yaml" in local.spec_errors:
                continue
            found.append(
                Violation(
                    Kind.UNKNOWN_MODEL,
                    f"{name} is in the registry but has no spec",
                    model=name,
                    fix="unload it everywhere and forget it",
                )
            )
    return found


def _model_violations(
    name: str,
    local: LocalFacts,
    facts: ServerFacts,
    now: dt.datetime,
    stuck_after_s: float,
    owner_gone: Callable[[str], bool],
) -> list[Violation]:
    server = facts.server
    spec = local.specs.get(name)
    entry = local.registry.models.get(name) if local.registry is not None else None
    mine = entry.on(server) if entry is not None else ServerEntry()
    triton = facts.index.get(name)
    ready = triton is not None and triton.ready
    triton_says = (
        "absent" if triton is None else (f"{triton.state} {triton.reason}".strip() if triton.state else "not loaded")
    )

    def violation(kind: Kind, detail: str, fix: str, fixable: bool = True) -> Violation:
        return Violation(kind, detail, model=name, server=server, fixable=fixable, fix=fix)

    if mine.state in (State.LOADING, State.UNLOADING):
        age = (now - _parse(mine.since)).total_seconds() if mine.since else float("inf")
        if age > stuck_after_s or owner_gone(mine.actor):
            why = "its owner exited" if age <= stuck_after_s else f"for {age:.0f}s"
            return [
                violation(
                    Kind.STUCK,
                    f"{mine.state.value} {why} ({mine.actor}); Triton says {triton_says}",
                    "record what Triton says now",
                )
            ]
        return []  # someone is working on it right now

    if local.registry is None:
        wanted = spec is not None  # `serve` loads every model when there is no registry
    else:
        wanted = (
            entry is not None
            and spec is not None
            and entry.desired is Desired.ACTIVE
            and mine.state is not State.DISABLED
        )
    if spec is None and entry is not None:
        wanted = False  # UNKNOWN_MODEL (reported once, locally) unloads it

    version = desired_version(name, spec, entry)
    found: list[Violation] = []
    if ready and not wanted:
        why = "DISABLED" if mine.state is State.DISABLED else ("no spec" if spec is None else "not desired")
        found.append(violation(Kind.UNWANTED, f"loaded on Triton but {why}", "unload it"))
    elif ready:
        if triton is not None and triton.version != str(version):
            found.append(
                violation(
                    Kind.VERSION_MISMATCH,
                    f"Triton runs version {triton.version}, wanted {version}",
                    "reload at the wanted version",
                )
            )
        elif local.registry is not None and mine.state is not State.READY:
            found.append(
                violation(Kind.STATE_STALE, f"registry says {mine.state.value}, Triton says READY", "record READY")
            )
        if name in facts.live_drift:
            found.append(
                violation(Kind.LIVE_DRIFT, "; ".join(facts.live_drift[name][:5]), "reload with the spec's config")
            )
        match = facts.stub_matches.get(name)
        if match is not None and match.dead:
            found.append(
                violation(
                    Kind.STUB_DEAD,
                    f"{match.alive} of {len(match.expected)} stub processes alive (requests routed to the dead "
                    "instance fail: 'Stub process ... is not healthy')",
                    "reload it",
                )
            )
        elif facts.stubs is not None and name in facts.stubs and not facts.stub_matches:
            alive, expected = facts.stubs[name]  # facts without processes (older callers): counted
            if alive < expected:
                found.append(
                    violation(
                        Kind.STUB_DEAD,
                        f"{alive} of {expected} stub processes alive "
                        "(requests to the dead ones fail: 'Stub process ... is not healthy')",
                        "reload it",
                    )
                )
        if match is not None and match.orphans:
            found.append(
                violation(
                    Kind.STUB_ORPHAN,
                    f"stub processes Triton doesn't use: {'; '.join(match.orphans)}; an orphan can hide the death "
                    "of a stub Triton really uses",
                    "find the orphan (`ps` of the stub's instance name, the older process) and kill it, or restart "
                    "the server",
                    fixable=False,
                )
            )
        gauges = facts.gauges.get(name)
        zombie_limit = spec.watchdog.zombie_limit if spec is not None else None
        if gauges is not None and _hung(gauges, zombie_limit):
            found.append(
                violation(
                    Kind.HUNG,
                    f"ruth_model_health {gauges.health}, ruth_zombie_threads {gauges.zombies} (limit {zombie_limit})",
                    "reload it",
                )
            )
    elif wanted:
        detail = f"wanted at version {version}, Triton says {triton_says}"
        if mine.state is State.READY:
            detail = f"registry says READY, Triton says {triton_says}"
        found.append(violation(Kind.NOT_READY, detail, "load it"))
    elif entry is not None and entry.desired is Desired.ACTIVE and mine.state is State.DISABLED and spec is not None:
        found.append(violation(Kind.DISABLED, f"disabled: {mine.reason}", "`ruthctl activate` to try again", False))
    elif local.registry is not None and mine.state is State.READY:
        found.append(violation(Kind.STATE_STALE, f"registry says READY, Triton says {triton_says}", "record UNLOADED"))
    return found


def _hung(gauges: HealthGauges, zombie_limit: int | None) -> bool:
    """Zombies at the model's limit on a live instance, or any zombie behind an open breaker.

    A hang opens the breaker too (every hung call is a timeout, a failure), and with the shipped settings (5
    failures to trip, 4 zombies per instance, 2 instances) it usually opens before any one instance collects its
    limit: measured at 50 % hangs, 1 to 4 zombies per instance (a hung batch is one zombie but several failures).
    An open breaker stops new calls but not the hung ones, so it must not hide them: a call still running past its
    deadline while nothing new is admitted is the hang itself, and only a restart ends it (a breaker opened by
    plain errors has no zombies). The gauges are refreshed by every instance on a timer (python_backends.base), so
    they are current without traffic. The model's own verdict counts too (its limit may differ from the spec on
    disk): `ruth_model_health` -1 while its breaker isn't open.
    """

    if gauges.breaker is not None and gauges.breaker >= 2 and gauges.zombies >= 1:
        return True
    if zombie_limit is not None and gauges.zombies >= zombie_limit:
        return True
    return gauges.health is not None and gauges.health <= -1 and (gauges.breaker is None or gauges.breaker < 2)


def _parse(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


# -- plan --------------------------------------------------------------------------------------------------------------
_FIX: Mapping[Kind, ActionKind] = {
    Kind.REGISTRY_CORRUPT: ActionKind.REBUILD_REGISTRY,
    Kind.REGISTRY_MISSING: ActionKind.ADOPT,
    Kind.DISK_DRIFT: ActionKind.REGENERATE,
    Kind.STUCK: ActionKind.RESOLVE_STUCK,
    Kind.BREAKER_ORPHAN: ActionKind.REMOVE_BREAKER,
    Kind.LEDGER_STALE: ActionKind.REAP_LEDGER,
    Kind.STATE_STALE: ActionKind.RECORD,
    Kind.UNWANTED: ActionKind.UNLOAD,
    Kind.UNKNOWN_MODEL: ActionKind.FORGET,
    Kind.NOT_READY: ActionKind.LOAD,
    Kind.VERSION_MISMATCH: ActionKind.LOAD,
    Kind.LIVE_DRIFT: ActionKind.LOAD,
    Kind.STUB_DEAD: ActionKind.LOAD,
    Kind.HUNG: ActionKind.LOAD,
}
#: causes a reload with an unchanged config can't cure: Triton keeps the instances, so the model is restarted
RESTART_CAUSES = frozenset({Kind.STUB_DEAD, Kind.HUNG})
_ORDER = [
    ActionKind.REBUILD_REGISTRY,
    ActionKind.ADOPT,
    ActionKind.REGENERATE,
    ActionKind.RESOLVE_STUCK,
    ActionKind.REMOVE_BREAKER,
    ActionKind.REAP_LEDGER,
    ActionKind.RECORD,
    ActionKind.UNLOAD,
    ActionKind.FORGET,
    ActionKind.DISABLE,
    ActionKind.LOAD,
]


def plan_repairs(violations: Iterable[Violation]) -> list[Action]:
    """One action per (kind, model, server), in a safe order; unfixable violations get none.

    When the registry itself is missing or damaged, only that is fixed this round: every other decision depends
    on it, so the next round (or the next `repair`) plans from the restored registry.
    """
    fixable = [v for v in violations if v.fixable and v.kind in _FIX]
    if any(v.kind in (Kind.REGISTRY_CORRUPT, Kind.REGISTRY_MISSING) for v in fixable):
        fixable = [v for v in fixable if v.kind in (Kind.REGISTRY_CORRUPT, Kind.REGISTRY_MISSING)]
    merged: dict[tuple[ActionKind, str | None, str | None, str | None], list[Violation]] = {}
    for v in fixable:
        merged.setdefault((_FIX[v.kind], v.model, v.server, v.subject), []).append(v)
    if any(kind is ActionKind.REAP_LEDGER for kind, *_ in merged):  # one reap covers every dead reservation
        ledger = [key for key in merged if key[0] is ActionKind.REAP_LEDGER]
        merged[(ActionKind.REAP_LEDGER, None, None, None)] = [v for key in ledger for v in merged.pop(key)]
    actions = [
        Action(
            kind,
            model,
            server,
            detail="; ".join(v.detail for v in vs),
            causes=tuple(dict.fromkeys(v.kind for v in vs)),
            subject=subject,
        )
        for (kind, model, server, subject), vs in merged.items()
    ]
    loads = order_for_loading([a.model or "" for a in actions if a.kind is ActionKind.LOAD])
    return sorted(
        actions,
        key=lambda a: (
            _ORDER.index(a.kind),
            loads.index(a.model or "") if a.kind is ActionKind.LOAD else 0,
            a.model or "",
            a.server or "",
        ),
    )
