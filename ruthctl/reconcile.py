"""Desired vs actual, the I/O half: gather the facts, and carry out the repair plan.

The rules themselves are pure functions in `invariants` (`find_violations`, `plan_repairs`); `Reconciler` reads
specs, the registry, the disk, this host's processes and every server's index/configs/metrics, and executes a
plan through `lifecycle`. `verify` is gather + find; `repair` adds plan + execute; `watch` runs them in a loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from google.protobuf.text_format import ParseError

from python_backends import weights
from ruthctl import gauges, lifecycle, procs, state_files
from ruthctl.invariants import (
    RESTART_CAUSES,
    Action,
    ActionKind,
    ActionResult,
    Check,
    LocalFacts,
    ServerFacts,
    Violation,
    desired_version,
    find_violations,
)
from ruthctl.registry import Desired, ModelEntry, Registry, RegistryError, RegistryFile, State, utc_now
from ruthctl.render import (
    config_differences,
    instance_names,
    parse_pbtxt,
    render_files,
    stale_generated_files,
    sync_files,
)
from ruthctl.settings import Profile
from ruthctl.spec import ModelSpec, ProfileSpec, SpecError, load_profiles, load_specs
from ruthctl.triton_client import Forbidden, TritonAdapter, TritonAPIError

__all__ = ["Paths", "Reconciler"]

#: actions that change one model: run under its command lock, like `activate`/`deactivate`
_MODEL_ACTIONS = frozenset(
    {
        ActionKind.RESOLVE_STUCK,
        ActionKind.RECORD,
        ActionKind.UNLOAD,
        ActionKind.LOAD,
        ActionKind.DISABLE,
        ActionKind.FORGET,
    }
)


@dataclasses.dataclass(frozen=True)
class Paths:
    specs: Path
    profiles: Path
    repository: Path
    weights: Path
    state: Path


class Reconciler:
    """Gathers facts and executes plans for one state dir and a fleet of servers."""

    def __init__(
        self,
        paths: Paths,
        profile: Profile,
        registry: Registry,
        adapters: Sequence[TritonAdapter],
        *,
        processes: procs.ProcessTable | None = None,
        digest: Callable[[Path], str] = weights.sha256_of,
        clock: Callable[[], dt.datetime] = utc_now,
        stuck_after_s: float = 300.0,
        load_timeout_s: float = 120.0,
        unload_timeout_s: float = 60.0,
    ) -> None:
        self.paths = paths
        self.profile = profile
        self.registry = registry
        self.adapters = {str(a.endpoint): a for a in adapters}
        self.processes = processes or procs.ProcessTable()
        self.digest = digest
        self.clock = clock
        self.stuck_after_s = stuck_after_s
        self.load_timeout_s = load_timeout_s
        self.unload_timeout_s = unload_timeout_s
        self._profiles: Mapping[Profile, ProfileSpec] | None = None
        self._seen: RegistryFile | None = None  # the registry the last gather judged (what the plan was made from)

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
        self._seen = registry
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
            weights=weights.check_models(valid.values(), self.paths.weights, self.digest) if thorough else (),
            breakers=state_files.breaker_files(self.paths.state),
            stale_ledger=state_files.stale_ledger_entries(self.paths.state),
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
            names = instance_names(live)
            if names is not None:
                instances[name] = names
        matches, unseen = self._stubs(adapter, instances)
        return ServerFacts(
            server=server,
            index=index,
            live_drift=drift,
            stubs=None if matches is None else {m: (s.alive, len(s.expected)) for m, s in matches.items()},
            stub_matches=matches or {},
            stubs_unseen=unseen,
            gauges=gauges.parse_health_gauges(adapter.metrics(), instances),
        )

    def _stubs(
        self, adapter: TritonAdapter, instances: Mapping[str, list[str]]
    ) -> tuple[dict[str, procs.StubMatch] | None, str | None]:
        """Each READY model's stubs matched to its instance names; or None, and why when that hides something.

        The server's process is found by its port among the processes this one can see: on this host, or in a
        container whose process namespace we share (compose `pid: "service:..."`) and whose network namespace holds
        the address the URL names. A server that listens in our network namespace but whose process we can't see
        means we run beside it without its process namespace (a Kubernetes sidecar without
        `shareProcessNamespace`): dead stubs would go unnoticed, so that is reported, not skipped. Other servers
        are remote: their gauges are what is judged.
        """
        endpoint = adapter.endpoint
        processes = self.processes.processes()
        if endpoint.is_local:
            pid = self.processes.server_pid(endpoint.host, endpoint.port, processes)
            if pid is None:
                if not self.processes.listening(endpoint.port):
                    return None, None  # nothing of ours listens there: not a server on this host after all
                return None, (
                    f"port {endpoint.port} listens here but no tritonserver process serving it is visible in "
                    f"{self.processes.proc}: this process runs outside the server's process namespace, so dead "
                    "stub processes go unnoticed"
                )
        else:
            pid = self._visible_remote(endpoint.host, endpoint.port, processes)
            if pid is None:
                return None, None
        running = self.processes.stub_processes(pid, processes)
        return {name: procs.match_stubs(name, names, running) for name, names in instances.items()}, None

    def _visible_remote(self, hostname: str, port: int, processes: list[procs.Process]) -> int | None:
        """A tritonserver we can see (shared process namespace) that really is `hostname`:`port`."""
        candidates = [pid for pid in self.processes.server_pids(port, processes)]
        if not candidates:
            return None
        try:
            wanted = {info[4][0] for info in socket.getaddrinfo(hostname, port, proto=socket.IPPROTO_TCP)}
        except OSError:
            return None
        return next((pid for pid in candidates if wanted & self.processes.addresses(pid)), None)

    def check(self) -> Check:
        local = self.gather_local()
        servers = [self.gather_server(adapter, local) for adapter in self.adapters.values()]
        violations = find_violations(local, servers, now=self.clock(), stuck_after_s=self.stuck_after_s)
        return Check(local, servers, violations)

    def verify(self) -> list[Violation]:
        return list(self.check().violations)

    # -- execute ------------------------------------------------------------------------------------------------------
    def execute(self, actions: Iterable[Action], *, count_recoveries: bool = False) -> list[ActionResult]:
        """Carry the plan out. An action on a model runs under that model's command lock and only if the model's
        registry entry is still what the plan was made from: a command that changed it meanwhile (an operator's
        activate, say) wins, and the next round plans again. `count_recoveries` counts each LOAD as a recovery
        attempt of its model (`watch`), once it is really going to run."""
        results: list[ActionResult] = []
        for action in actions:
            try:
                with contextlib.ExitStack() as stack:
                    if action.model and action.kind in _MODEL_ACTIONS:
                        stack.enter_context(self.registry.command_lock(action.model))
                        changed = self._changed_since_plan(action)
                        if changed:
                            results.append(ActionResult(action, False, f"skipped: {changed}; planned again next round"))
                            continue
                        if count_recoveries and action.kind is ActionKind.LOAD and action.server:
                            self.registry.count_recovery(action.model, action.server)
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

    def _changed_since_plan(self, action: Action) -> str | None:
        """Why the plan for `action.model` is stale (its registry entry changed since the gather), or None."""
        if self._seen is None or action.model is None:
            return None
        try:
            now = self.registry.read().models.get(action.model)
        except RegistryError:
            return None  # REBUILD_REGISTRY's business
        before = self._seen.models.get(action.model)
        if before is None or now is None:
            return None if before is now else "its registry entry appeared or went away meanwhile"
        if (before.desired, before.version, before.overrides) != (now.desired, now.version, now.overrides):
            return "its desired state changed meanwhile"
        if action.server and before.on(action.server).state is not now.on(action.server).state:
            was, became = before.on(action.server).state.value, now.on(action.server).state.value
            return f"its state changed meanwhile ({was} -> {became})"
        return None

    def _execute(self, action: Action) -> str:  # noqa: PLR0911 - one branch per action kind
        kind, name = action.kind, action.model or ""
        if kind is ActionKind.REBUILD_REGISTRY:
            data = self.registry.rebuild_from_audit()
            skipped = self.registry.audit_skipped
            note = f" ({len(skipped)} damaged line(s) skipped: {'; '.join(skipped[:3])})" if skipped else ""
            return f"rebuilt {len(data.models)} models from {self.registry.audit_path.name}{note}"
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
            state_files.remove_breaker(self.paths.state, path)
            return f"removed {path}"
        if kind is ActionKind.REAP_LEDGER:
            return f"reaped {state_files.reap_ledger(self.paths.state)} reservations"
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
                    version = int(entry.version or spec.version)
                    self._observed_ready(name, server, version, "adopt: READY on Triton", via="adopt")
                    adopted.append(f"{name}@{server}")
        return f"desired ACTIVE: {', '.join(sorted(specs)) or 'none'}; READY: {', '.join(adopted) or 'none'}"

    def _observed_ready(self, name: str, server: str, version: int | None, reason: str, *, via: str | None) -> None:
        """Record READY as Triton shows it, through LOADING (the only way into READY) with the reason `via`; None
        when the registry is at LOADING already."""
        if via is not None:
            self.registry.transition(name, server, State.LOADING, reason=via)
        self.registry.transition(name, server, State.READY, reason=reason, version=version)

    def _record(self, adapter: TritonAdapter, name: str) -> str:
        server = str(adapter.endpoint)
        entry = next((e for e in adapter.index() if e.name == name), None)
        current = self.registry.get(name)
        state = current.on(server).state if current is not None else State.UNLOADED
        if entry is not None and entry.ready:
            why = "repair: observed READY on Triton"
            version = int(entry.version) if entry.version and entry.version.isdigit() else None
            self._observed_ready(name, server, version, why, via=None if state is State.LOADING else why)
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
