"""Activate and deactivate a model across the fleet: the checks before any server, then one result per server.

`activate` is atomic from the operator's view: each server ends READY or is rolled back (lifecycle.load_on); the
new desired state is written with each LOADING claim and taken back with the rollback while no server runs the
new config, so it never names a change that didn't happen. `deactivate` writes INACTIVE with each UNLOADING claim.
Both run under the model's command lock (a concurrent activate/deactivate of it waits, then decides on what this
one left). The CLI commands (ruthctl/commands/activate.py, deactivate.py) only parse and render.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ruthctl.exit_codes import ExitCode, worst
from ruthctl.lifecycle import ActivationFailed, DrainTimeout, Pace, Progress, Target, load_on, unload_on
from ruthctl.reconcile import Paths
from ruthctl.registry import Desired, IllegalTransition, Registry, RegistryError, State, Want
from ruthctl.settings import Profile
from ruthctl.triton_client import TritonAdapter, TritonAPIError, Unreachable

#: parameters an operator may set at activation (game days); everything else comes from the spec
OVERRIDABLE_PREFIXES = ("ruth.fault.",)


class NotActivatable(Exception):
    """A check before any server failed (no spec, invalid spec, missing version or weights)."""


class StaleFiles(NotActivatable):
    """The generated config files on disk are not what the spec renders: run `ruthctl generate`."""


@dataclasses.dataclass(frozen=True)
class ServerResult:
    """What happened on one server, and the exit code it calls for."""

    server: str
    state: str
    detail: str
    code: ExitCode = ExitCode.OK

    def to_json(self) -> dict[str, str]:
        return {"server": self.server, "state": self.state, "detail": self.detail}


def exit_code(results: Sequence[ServerResult]) -> ExitCode:
    return worst(r.code for r in results)


def prepare(paths: Paths, profile: Profile, name: str, version: int | None, overrides: dict[str, str]) -> Target:
    """Everything checkable before touching a server: the spec, the version directory, the weights' checksums and
    the generated files (StaleFiles when they differ from the rendering)."""
    from python_backends.weights import check_models
    from ruthctl.render import parse_pbtxt, render_files
    from ruthctl.spec import SpecError, load_profiles, load_spec

    repository = paths.repository
    path = paths.specs / f"{name}.yaml"
    if not path.exists():
        raise NotActivatable(f"no spec for {name} ({path})")
    try:
        spec = load_spec(path)
        profiles = load_profiles(paths.profiles)
        rendered = render_files(spec, profiles)
    except SpecError as exc:
        raise NotActivatable(str(exc)) from None
    chosen = version or spec.version
    if not (repository / name / str(chosen)).is_dir():
        raise NotActivatable(f"{name}: no version directory {repository / name / str(chosen)}")
    problems = check_models([spec], paths.weights)
    if problems:
        raise NotActivatable("; ".join(p.detail for p in problems))
    for relative, text in rendered.items():
        disk = repository / relative
        try:
            current = parse_pbtxt(disk.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            current = None
        if current != parse_pbtxt(text):
            raise StaleFiles(f"{disk} is not what {path.name} renders: run `ruthctl generate`")
    return Target(spec=spec, profile=profiles[profile], version=chosen, overrides=overrides)


def activate(
    clients: Sequence[TritonAdapter], reg: Registry, target: Target, timeout_s: float, progress: Progress
) -> list[ServerResult]:
    """Load `target` on every server under the model's command lock (ModelBusy when another command holds it)."""
    with reg.command_lock(target.name, timeout_s=timeout_s):
        return _activate_locked(clients, reg, target, timeout_s, progress)


def _activate_locked(
    clients: Sequence[TritonAdapter], reg: Registry, target: Target, timeout_s: float, progress: Progress
) -> list[ServerResult]:
    results: list[ServerResult] = []
    want = Want(Desired.ACTIVE, target.version, dict(target.overrides))
    restore = Want.of(reg.get(target.name))
    done = False  # some server runs the new config: from then on the new desired state stays
    for client in clients:
        server = str(client.endpoint)
        try:
            if already_active(client, reg, target):
                reg.set_desired(
                    target.name, want.desired, version=want.version, overrides=want.overrides, reason="activate"
                )
                done = True
                results.append(ServerResult(server, "READY", "already active with this config"))
                continue
            entry = load_on(
                client,
                reg,
                target,
                timeout_s=timeout_s,
                reason="activate",
                want=want,
                restore=None if done else restore,
                pace=Pace(progress),
            )
            done = True
            results.append(ServerResult(server, entry.state.value, f"READY at v{entry.version}"))
        except ActivationFailed as exc:
            kept = "" if done else "; desired state unchanged"
            code = ExitCode.UNREACHABLE if exc.unreachable else ExitCode.ERROR
            results.append(ServerResult(server, exc.outcome.value, f"rolled back: {exc.reason}{kept}", code))
        except IllegalTransition as exc:
            results.append(ServerResult(server, exc.current.value, f"refused: {exc}", ExitCode.ERROR))
        except (Unreachable, TimeoutError) as exc:
            results.append(ServerResult(server, "UNKNOWN", str(exc), ExitCode.UNREACHABLE))
        except (TritonAPIError, RegistryError) as exc:
            results.append(ServerResult(server, "UNKNOWN", str(exc), ExitCode.ERROR))
    return results


def already_active(client: TritonAdapter, reg: Registry, target: Target) -> bool:
    """READY in the registry and on Triton, at the version, with the live config equal to the rendered one."""
    from ruthctl.render import config_differences

    entry = reg.get(target.name)
    if entry is None or entry.on(str(client.endpoint)).state is not State.READY:
        return False
    triton = next((e for e in client.index() if e.name == target.name), None)
    if triton is None or not triton.ready or triton.version != str(target.version):
        return False
    return not config_differences(target.config(), client.model_config(target.name))


def deactivate(
    clients: Sequence[TritonAdapter], reg: Registry, name: str, timeout_s: float, progress: Progress
) -> list[ServerResult]:
    """Unload `name` everywhere under its command lock (ModelBusy when another command holds it)."""
    with reg.command_lock(name, timeout_s=timeout_s):
        return _deactivate_locked(clients, reg, name, timeout_s, progress)


def _deactivate_locked(
    clients: Sequence[TritonAdapter], reg: Registry, name: str, timeout_s: float, progress: Progress
) -> list[ServerResult]:
    """Per server, the decision and its desired state in one registry transaction: a model another process is
    LOADING is refused with nothing written; otherwise INACTIVE is written with the UNLOADING claim (or on its own
    where there is nothing to unload)."""
    want = Want(Desired.INACTIVE)
    results: list[ServerResult] = []
    for client in clients:
        server = str(client.endpoint)
        entry = reg.get(name)
        state = entry.on(server).state if entry is not None else State.UNLOADED
        try:
            loaded = any(e.name == name and e.state in ("READY", "LOADING") for e in client.index())
            if not loaded and state in (State.UNLOADED, State.DISABLED):
                reg.set_desired(name, want.desired, reason="deactivate")
                results.append(ServerResult(server, state.value, "not loaded"))
                continue
            done = unload_on(
                client, reg, name, timeout_s=timeout_s, reason="deactivate", want=want, pace=Pace(progress)
            )
            results.append(ServerResult(server, done.state.value, "unloaded (drained)"))
        except IllegalTransition as exc:
            detail = f"refused: being loaded ({exc}); try again"
            results.append(ServerResult(server, exc.current.value, detail, ExitCode.ERROR))
        except DrainTimeout as exc:
            results.append(ServerResult(server, "UNLOADING", str(exc), ExitCode.UNREACHABLE))
        except Unreachable as exc:
            results.append(ServerResult(server, state.value, str(exc), ExitCode.UNREACHABLE))
        except (TritonAPIError, RegistryError) as exc:
            results.append(ServerResult(server, "UNKNOWN", str(exc), ExitCode.ERROR))
    return results
