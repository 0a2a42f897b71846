"""Desired vs actual: gather the facts, find the violated invariants, plan repairs, carry them out.

The three steps are kept apart so the rules are pure functions over plain facts (`find_violations`,
`plan_repairs`), testable without a server, while `Reconciler` does the I/O: it reads specs, the registry,
the disk, this host's processes and every server's index/configs/metrics, and later executes the plan through
`lifecycle`. `verify` is gather + find; `repair` adds plan + execute; `watch` runs them in a loop.
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

from google.protobuf.text_format import ParseError

from ruthctl import host, lifecycle
from ruthctl.registry import Desired, ModelEntry, Registry, RegistryError, RegistryFile, ServerEntry, State, utc_now
from ruthctl.render import (
    config_differences,
    expected_instance_count,
    instance_names,
    parse_pbtxt,
    render_files,
    stale_generated_files,
    sync_files,
)
from ruthctl.server import order_for_loading, pid_alive
from ruthctl.settings import Profile
from ruthctl.spec import ModelSpec, ProfileSpec, SpecError, load_profiles, load_specs
from ruthctl.triton_client import Forbidden, IndexEntry, TritonAdapter, TritonAPIError

__all__ = [
    "Action",
    "ActionKind",
    "ActionResult",
    "Check",
    "Kind",
    "LocalFacts",
    "Paths",
    "Reconciler",
    "ServerFacts",
    "Violation",
    "find_violations",
    "plan_repairs",
]


@dataclasses.dataclass(frozen=True)
class Paths:
    specs: Path
    profiles: Path
    repository: Path
    weights: Path
    state: Path


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


class ActionKind(str, enum.Enum):
    REBUILD_REGISTRY = "rebuild_registry"
    ADOPT = "adopt"
    REGENERATE = "regenerate"
    RESOLVE_STUCK = "resolve_stuck"
    REMOVE_BREAKER = "remove_breaker"
    REAP_LEDGER = "reap_ledger"
    RECORD = "record"
    UNLOAD = "unload"
    LOAD = "load"
    DISABLE = "disable"
    FORGET = "forget"


@dataclasses.dataclass(frozen=True)
class Action:
    kind: ActionKind
    model: str | None = None
    server: str | None = None
    detail: str = ""
    causes: tuple[Kind, ...] = ()
    subject: str | None = None

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
    weights: Sequence[host.WeightProblem] = ()
    breakers: Sequence[host.BreakerFile] = ()
    stale_ledger: Sequence[Mapping[str, Any]] = ()


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    server: str
    error: str | None = None  # set when the server couldn't be asked
    forbidden: bool = False  # ...because it refused the admin token
    index: Mapping[str, IndexEntry] = dataclasses.field(default_factory=dict)
    live_drift: Mapping[str, list[str]] = dataclasses.field(default_factory=dict)
    stubs: Mapping[str, tuple[int, int]] | None = None  # model -> (alive, expected); None: not on this host
    gauges: Mapping[str, host.HealthGauges] = dataclasses.field(default_factory=dict)


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
        if facts.error is not None and facts.forbidden:
            found.append(
                Violation(
                    Kind.ACCESS_DENIED,
                    facts.error,
                    server=facts.server,
                    fixable=False,
                    fix="give ruthctl the server's token (RUTH_ADMIN_TOKEN or <state-dir>/admin-token)",
                )
            )
            continue
        if facts.error is not None:
            found.append(
                Violation(
                    Kind.SERVER_UNREACHABLE,
                    facts.error,
                    server=facts.server,
                    fixable=False,
                    fix="start the server, or check --url and the admin token",
                )
            )
            continue
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
        if facts.stubs is not None and name in facts.stubs:
            alive, expected = facts.stubs[name]
            if alive < expected:
                found.append(
                    violation(
                        Kind.STUB_DEAD,
                        f"{alive} of {expected} stub processes alive "
                        "(requests to the dead ones fail: 'Stub process ... is not healthy')",
                        "reload it",
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


def _hung(gauges: host.HealthGauges, zombie_limit: int | None) -> bool:
    """Zombies over the limit, as the model reports it: `ruth_model_health` -1 while its breaker isn't open.

    A health of -1 with the breaker open is the breaker doing its job, not a hang. `ruth_zombie_threads` alone is
    not trusted: it is only refreshed after a request, so a restarted instance shows its predecessor's count.
    `zombie_limit` is reported alongside for the operator.
    """
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


# -- I/O ---------------------------------------------------------------------------------------------------------------
class Reconciler:
    """Gathers facts and executes plans for one state dir and a fleet of servers."""

    def __init__(
        self,
        paths: Paths,
        profile: Profile,
        registry: Registry,
        adapters: Sequence[TritonAdapter],
        *,
        processes: host.ProcessTable | None = None,
        digest: Callable[[Path], str] = host.sha256_of,
        clock: Callable[[], dt.datetime] = utc_now,
        stuck_after_s: float = 300.0,
        load_timeout_s: float = 120.0,
        unload_timeout_s: float = 60.0,
    ) -> None:
        self.paths = paths
        self.profile = profile
        self.registry = registry
        self.adapters = {str(a.endpoint): a for a in adapters}
        self.processes = processes or host.ProcessTable()
        self.digest = digest
        self.clock = clock
        self.stuck_after_s = stuck_after_s
        self.load_timeout_s = load_timeout_s
        self.unload_timeout_s = unload_timeout_s
        self._profiles: Mapping[Profile, ProfileSpec] | None = None

    @property
    def profiles(self) -> Mapping[Profile, ProfileSpec]:
        if self._profiles is None:
            self._profiles = load_profiles(self.paths.profiles)
        return self._profiles

    # -- gather -------------------------------------------------------------------------------------------------------
    def gather_local(self, *, thorough: bool = True) -> LocalFacts:
        """Specs, registry, breakers, ledger; `thorough` adds the on-disk configs and weight checksums (slower)."""
        specs, spec_errors = load_specs(self.paths.specs)
        try:
            profiles = self.profiles
        except SpecError as exc:
            return LocalFacts(specs={}, spec_errors={"profiles": str(exc)})
        registry: RegistryFile | None = None
        registry_error: str | None = None
        if self.registry.exists():
            try:
                registry = self.registry.read()
            except RegistryError as exc:
                registry_error = str(exc)
        drift: dict[str, list[str]] = {}
        for name, spec in specs.items():
            try:
                differences = self._disk_differences(spec, profiles) if thorough else []
            except SpecError as exc:
                spec_errors = {**spec_errors, f"{name}.yaml": str(exc)}
                continue
            if differences:
                drift[name] = differences
        valid = {n: s for n, s in specs.items() if f"{n}.yaml" not in spec_errors}
        return LocalFacts(
            specs=valid,
            spec_errors=spec_errors,
            registry=registry,
            registry_error=registry_error,
            disk_drift=drift,
            weights=host.check_weights(valid.values(), self.paths.weights, self.digest) if thorough else (),
            breakers=host.breaker_files(self.paths.state),
            stale_ledger=host.stale_ledger_entries(self.paths.state),
        )

    def _disk_differences(self, spec: ModelSpec, profiles: Mapping[Profile, ProfileSpec]) -> list[str]:
        differences: list[str] = []
        for relative, text in render_files(spec, profiles).items():
            path = self.paths.repository / relative
            try:
                on_disk = parse_pbtxt(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                differences.append(f"{relative}: missing")
                continue
            except (OSError, ParseError) as exc:
                differences.append(f"{relative}: unreadable ({exc})")
                continue
            wanted = parse_pbtxt(text)
            if on_disk != wanted:
                diff = config_differences(wanted, on_disk) or config_differences(on_disk, wanted)
                differences.append(f"{relative}: " + ("; ".join(diff[:3]) if diff else "differs"))
        return differences

    def target(self, spec: ModelSpec, entry: ModelEntry | None) -> lifecycle.Target:
        return lifecycle.Target(
            spec=spec,
            profile=self.profiles[self.profile],
            version=desired_version(spec.name, spec, entry),
            overrides=dict(entry.overrides) if entry is not None else {},
        )

    def gather_server(self, adapter: TritonAdapter, local: LocalFacts) -> ServerFacts:
        server = str(adapter.endpoint)
        try:
            index = {e.name: e for e in adapter.index()}
        except TritonAPIError as exc:
            return ServerFacts(server=server, error=str(exc), forbidden=isinstance(exc, Forbidden))
        drift: dict[str, list[str]] = {}
        expected: dict[str, int | None] = {}
        instances: dict[str, list[str]] = {}
        for name, entry in index.items():
            spec = local.specs.get(name)
            if not entry.ready or spec is None:
                continue
            try:
                live = adapter.model_config(name)
            except TritonAPIError:
                continue  # unloaded meanwhile; the next round sees it
            registry_entry = local.registry.models.get(name) if local.registry else None
            try:
                differences = config_differences(self.target(spec, registry_entry).config(), live)
            except SpecError as exc:  # a spec this profile can't place: reported as SPEC_INVALID by `verify`
                differences = [str(exc)]
            if differences:
                drift[name] = differences
            expected[name] = expected_instance_count(live)
            names = instance_names(live)
            if names is not None:
                instances[name] = names
        return ServerFacts(
            server=server,
            index=index,
            live_drift=drift,
            stubs=self._stubs(adapter, expected),
            gauges=host.parse_health_gauges(adapter.metrics(), instances),
        )

    def _stubs(self, adapter: TritonAdapter, expected: Mapping[str, int | None]) -> dict[str, tuple[int, int]] | None:
        if not adapter.endpoint.is_local:
            return None
        processes = self.processes.processes()
        pid = self.processes.server_pid(adapter.endpoint.host, adapter.endpoint.port, processes)
        if pid is None:
            return None
        instances = self.processes.stubs(pid, processes)
        return {name: (host.stubs_of(name, instances), count) for name, count in expected.items() if count is not None}

    def check(self) -> Check:
        local = self.gather_local()
        servers = [self.gather_server(adapter, local) for adapter in self.adapters.values()]
        violations = find_violations(local, servers, now=self.clock(), stuck_after_s=self.stuck_after_s)
        return Check(local, servers, violations)

    def verify(self) -> list[Violation]:
        return list(self.check().violations)

    # -- execute ------------------------------------------------------------------------------------------------------
    def execute(self, actions: Iterable[Action]) -> list[ActionResult]:
        results: list[ActionResult] = []
        for action in actions:
            try:
                detail = self._execute(action)
                results.append(ActionResult(action, True, detail))
            except (
                lifecycle.ActivationFailed,
                lifecycle.DrainTimeout,
                TritonAPIError,
                RegistryError,
                SpecError,
                OSError,
                TimeoutError,
                ValueError,
            ) as exc:
                results.append(ActionResult(action, False, str(exc)))
        return results

    def _execute(self, action: Action) -> str:  # noqa: PLR0911 - one branch per action kind
        kind, name = action.kind, action.model or ""
        if kind is ActionKind.REBUILD_REGISTRY:
            data = self.registry.rebuild_from_audit()
            return f"rebuilt {len(data.models)} models from {self.registry.audit_path.name}"
        if kind is ActionKind.ADOPT:
            return self._adopt()
        if kind is ActionKind.REGENERATE:
            spec = self._spec(name)
            rendered = render_files(spec, self.profiles)
            changes = sync_files(
                self.paths.repository,
                rendered,
                write=True,
                stale=stale_generated_files(self.paths.repository, name, rendered),
            )
            return ", ".join(f"{c.path} {c.status}" for c in changes if c.status != "unchanged") or "already current"
        if kind is ActionKind.REMOVE_BREAKER:
            path = Path(action.subject or "")
            if path.parent != self.paths.state / "breakers":
                raise ValueError(f"refusing to remove {path}: not a breaker file of {self.paths.state}")
            host.remove_breaker(path)
            return f"removed {path}"
        if kind is ActionKind.REAP_LEDGER:
            return f"reaped {host.reap_ledger(self.paths.state)} reservations"
        if kind is ActionKind.FORGET:
            for adapter in self.adapters.values():
                try:
                    if any(e.name == name and e.ready for e in adapter.index()):
                        adapter.unload(name)
                except TritonAPIError:
                    pass  # unreachable servers are reported on their own
            self.registry.forget(name, "repair: no spec")
            return "unloaded and forgotten"
        adapter = self.adapters[action.server or ""]
        if kind is ActionKind.RESOLVE_STUCK:
            return self._resolve_stuck(adapter, name)
        if kind is ActionKind.RECORD:
            return self._record(adapter, name)
        if kind is ActionKind.UNLOAD:
            entry = self.registry.get(name)
            state = entry.on(str(adapter.endpoint)).state if entry else State.UNLOADED
            if state is State.DISABLED or entry is None:
                adapter.unload(name)  # keep DISABLED (or no entry) as it is: just take it off the server
                return "unloaded"
            lifecycle.unload_on(
                adapter, self.registry, name, timeout_s=self.unload_timeout_s, reason="repair: unwanted"
            )
            return "unloaded"
        if kind is ActionKind.LOAD:
            spec = self._spec(name)
            entry = self.registry.get(name)
            causes = ", ".join(c.value for c in action.causes)
            lifecycle.load_on(
                adapter,
                self.registry,
                self.target(spec, entry),
                timeout_s=self.load_timeout_s,
                reason=f"repair: {causes}",
                restart=bool(RESTART_CAUSES & set(action.causes)),
            )
            return f"READY at version {self.target(spec, entry).version}"
        if kind is ActionKind.DISABLE:
            lifecycle.disable_on(adapter, self.registry, name, action.detail)
            return "disabled"
        raise ValueError(f"unknown action {kind}")  # pragma: no cover

    def gather_specs(self) -> dict[str, ModelSpec]:
        specs, _ = load_specs(self.paths.specs)
        return specs

    def _spec(self, name: str) -> ModelSpec:
        spec = self.gather_specs().get(name)
        if spec is None:
            raise SpecError(f"{name}: no valid spec in {self.paths.specs}")
        return spec

    def _adopt(self) -> str:
        specs = self.gather_specs()
        adopted: list[str] = []
        for name, spec in sorted(specs.items()):
            self.registry.set_desired(name, Desired.ACTIVE, version=spec.version, reason="adopt: no registry yet")
            for server, adapter in self.adapters.items():
                try:
                    entry = next((e for e in adapter.index() if e.name == name), None)
                except TritonAPIError:
                    continue
                if entry is not None and entry.ready:
                    self.registry.transition(name, server, State.LOADING, reason="adopt")
                    self.registry.transition(
                        name,
                        server,
                        State.READY,
                        reason="adopt: READY on Triton",
                        version=int(entry.version or spec.version),
                    )
                    adopted.append(f"{name}@{server}")
        return f"desired ACTIVE: {', '.join(sorted(specs)) or 'none'}; READY: {', '.join(adopted) or 'none'}"

    def _record(self, adapter: TritonAdapter, name: str) -> str:
        server = str(adapter.endpoint)
        entry = next((e for e in adapter.index() if e.name == name), None)
        current = self.registry.get(name)
        state = current.on(server).state if current is not None else State.UNLOADED
        if entry is not None and entry.ready:
            if state is not State.LOADING:
                self.registry.transition(name, server, State.LOADING, reason="repair: observed READY on Triton")
            self.registry.transition(
                name,
                server,
                State.READY,
                reason="repair: observed READY on Triton",
                version=int(entry.version) if entry.version and entry.version.isdigit() else None,
            )
            return "recorded READY"
        if state is State.READY:
            self.registry.transition(name, server, State.UNLOADING, reason="repair: observed not loaded on Triton")
        self.registry.transition(
            name,
            server,
            State.UNLOADED,
            reason=f"repair: Triton says {(entry.state if entry else None) or 'not loaded'}",
        )
        return "recorded UNLOADED"

    def _resolve_stuck(self, adapter: TritonAdapter, name: str) -> str:
        server = str(adapter.endpoint)
        entry = next((e for e in adapter.index() if e.name == name), None)
        current = self.registry.get(name)
        state = current.on(server).state if current is not None else State.UNLOADED
        if entry is not None and entry.ready and state is State.LOADING:
            self.registry.transition(name, server, State.READY, reason="repair: stuck LOADING, Triton has it READY")
            return "recorded READY"
        if state is State.UNLOADING and (entry is None or entry.state not in ("READY", "UNLOADING", "LOADING")):
            self.registry.transition(name, server, State.UNLOADED, reason="repair: stuck UNLOADING, Triton let go")
            return "recorded UNLOADED"
        triton_says = "not loaded" if entry is None else f"{entry.state} {entry.reason}".strip()
        self.registry.transition(
            name, server, State.FAILED, reason=f"repair: stuck {state.value}; Triton says {triton_says}"
        )
        return "recorded FAILED (the next round loads it again if it is wanted)"
