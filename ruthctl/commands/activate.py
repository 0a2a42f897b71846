"""`ruthctl activate MODEL[:VERSION]`: validate, load with the rendered config, wait for READY, record it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from ruthctl.commands._common import (
    Env,
    adapters,
    err,
    fail,
    preflight,
    registry,
    render_server_results,
    resolve,
)
from ruthctl.exit_codes import ExitCode

#: parameters an operator may set at activation (game days); everything else comes from the spec
OVERRIDABLE_PREFIXES = ("ruth.fault.",)


def register(app: typer.Typer) -> None:
    app.command("activate")(activate)


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    name, _, version = ref.partition(":")
    if not name:
        fail(f"{ref!r}: expected MODEL or MODEL:VERSION", ExitCode.USAGE)
    if version and not version.isdigit():
        fail(f"{ref!r}: the version must be a number", ExitCode.USAGE)
    return name, int(version) if version else None


def parse_overrides(items: list[str]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith(OVERRIDABLE_PREFIXES):
            fail(f"--set {item!r}: expected KEY=VALUE with KEY under {', '.join(OVERRIDABLE_PREFIXES)}", ExitCode.USAGE)
        overrides[key] = value
    return overrides


@contextlib.contextmanager
def progress_display(enabled: bool) -> Iterator[Any]:
    """A spinner on stderr (people) or nothing (--json, pipes); yields the callback lifecycle reports through."""
    if not enabled or not err.is_terminal:
        yield lambda message: None
        return
    with err.status("starting") as status:
        yield lambda message: status.update(message)


def activate(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="MODEL or MODEL:VERSION (default: the spec's version).")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for READY on each server.")] = 120.0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Parameter override for this activation, e.g. ruth.fault.fail_rate=0.2"),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Load a model on every server, atomically from the operator's view: it ends READY or is rolled back.

    Checks first: the spec is valid, its weights exist with the right checksums, and the generated config files
    are current. Then, per server: record LOADING, load through the repository API with the rendered config, wait
    for READY, record READY. A failed load is unloaded and recorded FAILED with Triton's reason (a failed reload of
    a READY model leaves the previous version serving).

    Exit codes: 0 READY everywhere, 1 validation or load failed (rolled back), 3 generated files out of date
    (run `ruthctl generate`), 4 a server unreachable or timed out.
    """
    name, version = parse_model_ref(model)
    overrides = parse_overrides(set_ or [])
    env = resolve(ctx)
    target = prepare(env, name, version, overrides)
    reg = registry(env, f"activate {model}")
    results, code = run_activation(env, reg, target, timeout, json_out)
    render_server_results(
        f"activate {name} v{target.version}",
        results,
        code,
        {"model": name, "version": target.version} if json_out else None,
    )


def prepare(env: Env, name: str, version: int | None, overrides: dict[str, str]) -> Any:
    """Everything checkable before touching a server; fails with the exit code the check calls for."""
    from python_backends.weights import check_models
    from ruthctl.lifecycle import Target
    from ruthctl.render import parse_pbtxt, render_files
    from ruthctl.spec import SpecError, load_profiles, load_spec

    path = env.specs / f"{name}.yaml"
    if not path.exists():
        fail(f"no spec for {name} ({path})")
    try:
        spec = load_spec(path)
        profiles = load_profiles(env.profiles)
        rendered = render_files(spec, profiles)
    except SpecError as exc:
        fail(str(exc))
    chosen = version or spec.version
    if not (env.repository / name / str(chosen)).is_dir():
        fail(f"{name}: no version directory {env.repository / name / str(chosen)}")
    problems = check_models([spec], env.weights)
    if problems:
        fail("; ".join(p.detail for p in problems))
    for relative, text in rendered.items():
        disk = env.repository / relative
        try:
            current = parse_pbtxt(disk.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            current = None
        if current != parse_pbtxt(text):
            fail(f"{disk} is not what {path.name} renders: run `ruthctl generate`", ExitCode.DRIFT)
    return Target(spec=spec, profile=profiles[env.profile], version=chosen, overrides=overrides)


def run_activation(
    env: Env, reg: Any, target: Any, timeout_s: float, json_out: bool
) -> tuple[list[dict[str, str]], int]:
    """Activate under the model's command lock (a concurrent activate/deactivate of it waits, then decides on what
    this one left). The new desired state is written with each LOADING claim and taken back with the rollback while
    no server runs the new config, so it never names a change that didn't happen."""
    from ruthctl.registry import ModelBusy

    with adapters(env, load_timeout_s=timeout_s) as clients, progress_display(not json_out) as progress:
        preflight(clients)
        try:
            with reg.command_lock(target.name, timeout_s=timeout_s):
                return _activate_locked(clients, reg, target, timeout_s, progress)
        except ModelBusy as exc:
            fail(f"refused: {exc}")


def _activate_locked(
    clients: list[Any], reg: Any, target: Any, timeout_s: float, progress: Any
) -> tuple[list[dict[str, str]], int]:
    from ruthctl.lifecycle import ActivationFailed, load_on
    from ruthctl.registry import Desired, IllegalTransition, RegistryError, Want
    from ruthctl.triton_client import TritonAPIError, Unreachable

    results: list[dict[str, str]] = []
    code = ExitCode.OK
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
                results.append({"server": server, "state": "READY", "detail": "already active with this config"})
                continue
            entry = load_on(
                client,
                reg,
                target,
                timeout_s=timeout_s,
                reason="activate",
                want=want,
                restore=None if done else restore,
                progress=progress,
            )
            done = True
            results.append({"server": server, "state": entry.state.value, "detail": f"READY at v{entry.version}"})
        except ActivationFailed as exc:
            kept = "" if done else "; desired state unchanged"
            results.append({"server": server, "state": exc.outcome.value, "detail": f"rolled back: {exc.reason}{kept}"})
            code = max(code, ExitCode.UNREACHABLE if exc.unreachable else ExitCode.ERROR)
        except IllegalTransition as exc:
            results.append({"server": server, "state": exc.current.value, "detail": f"refused: {exc}"})
            code = max(code, ExitCode.ERROR)
        except (Unreachable, TimeoutError) as exc:
            results.append({"server": server, "state": "UNKNOWN", "detail": str(exc)})
            code = max(code, ExitCode.UNREACHABLE)
        except (TritonAPIError, RegistryError) as exc:
            results.append({"server": server, "state": "UNKNOWN", "detail": str(exc)})
            code = max(code, ExitCode.ERROR)
    return results, int(code)


def already_active(client: Any, reg: Any, target: Any) -> bool:
    """READY in the registry and on Triton, at the version, with the live config equal to the rendered one."""
    from ruthctl.registry import State
    from ruthctl.render import config_differences

    entry = reg.get(target.name)
    if entry is None or entry.on(str(client.endpoint)).state is not State.READY:
        return False
    triton = next((e for e in client.index() if e.name == target.name), None)
    if triton is None or not triton.ready or triton.version != str(target.version):
        return False
    return not config_differences(target.config(), client.model_config(target.name))
