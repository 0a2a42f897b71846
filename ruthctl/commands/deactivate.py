"""`ruthctl deactivate MODEL`: unload everywhere, letting Triton finish in-flight requests, and record it."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ruthctl.commands._common import adapters, fail, preflight, registry, render_server_results, resolve
from ruthctl.commands.activate import parse_model_ref, progress_display
from ruthctl.exit_codes import ExitCode


def register(app: typer.Typer) -> None:
    app.command("deactivate")(deactivate)


def deactivate(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="MODEL (a :VERSION suffix is accepted and ignored).")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the drain on each server.")] = 60.0,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Mark a model INACTIVE and unload it from every server.

    Triton stops routing new requests to it at once and finishes the queued and running ones before the model's
    processes exit (docs/triton-notes.md §3); this waits for that, up to --timeout.

    Exit codes: 0 unloaded everywhere, 1 refused or failed, 4 a server unreachable or still draining at the timeout.
    """
    from ruthctl.registry import ModelBusy

    name, _ = parse_model_ref(model)
    env = resolve(ctx)
    reg = registry(env, f"deactivate {name}")
    with adapters(env) as clients, progress_display(not json_out) as progress:
        preflight(clients)
        try:
            with reg.command_lock(name, timeout_s=timeout):
                results, code = _deactivate_locked(clients, reg, name, timeout, progress)
        except ModelBusy as exc:
            fail(f"refused: {exc}")
    render_server_results(f"deactivate {name}", results, code, {"model": name} if json_out else None)


def _deactivate_locked(
    clients: list[Any], reg: Any, name: str, timeout: float, progress: Any
) -> tuple[list[dict[str, Any]], int]:
    """Per server, the decision and its desired state in one registry transaction: a model another process is
    LOADING is refused with nothing written; otherwise INACTIVE is written with the UNLOADING claim (or on its own
    where there is nothing to unload)."""
    from ruthctl.lifecycle import DrainTimeout, unload_on
    from ruthctl.registry import Desired, IllegalTransition, RegistryError, State, Want
    from ruthctl.triton_client import TritonAPIError, Unreachable

    want = Want(Desired.INACTIVE)
    results: list[dict[str, Any]] = []
    code = ExitCode.OK
    for client in clients:
        server = str(client.endpoint)
        entry = reg.get(name)
        state = entry.on(server).state if entry is not None else State.UNLOADED
        try:
            loaded = any(e.name == name and e.state in ("READY", "LOADING") for e in client.index())
            if not loaded and state in (State.UNLOADED, State.DISABLED):
                reg.set_desired(name, want.desired, reason="deactivate")
                results.append({"server": server, "state": state.value, "detail": "not loaded"})
                continue
            done = unload_on(client, reg, name, timeout_s=timeout, reason="deactivate", want=want, progress=progress)
            results.append({"server": server, "state": done.state.value, "detail": "unloaded (drained)"})
        except IllegalTransition as exc:
            results.append(
                {"server": server, "state": exc.current.value, "detail": f"refused: being loaded ({exc}); try again"}
            )
            code = max(code, ExitCode.ERROR)
        except DrainTimeout as exc:
            results.append({"server": server, "state": "UNLOADING", "detail": str(exc)})
            code = max(code, ExitCode.UNREACHABLE)
        except Unreachable as exc:
            results.append({"server": server, "state": state.value, "detail": str(exc)})
            code = max(code, ExitCode.UNREACHABLE)
        except (TritonAPIError, RegistryError) as exc:
            results.append({"server": server, "state": "UNKNOWN", "detail": str(exc)})
            code = max(code, ExitCode.ERROR)
    return results, int(code)
