"""`ruthctl deactivate MODEL`: unload everywhere, letting Triton finish in-flight requests, and record it."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ruthctl.commands._common import adapters, preflight, registry, render_server_results, resolve
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
    processes exit (triton-2.51-behaviour.md §3); this waits for that, up to --timeout.

    Exit codes: 0 unloaded everywhere, 1 refused or failed, 4 a server unreachable or still draining at the timeout.
    """
    from ruthctl.lifecycle import DrainTimeout, unload_on
    from ruthctl.registry import Desired, RegistryError, State
    from ruthctl.triton_client import TritonAPIError, Unreachable

    name, _ = parse_model_ref(model)
    env = resolve(ctx)
    reg = registry(env, f"deactivate {name}")
    results: list[dict[str, Any]] = []
    code = ExitCode.OK
    with adapters(env) as clients, progress_display(not json_out) as progress:
        preflight(clients)
        reg.set_desired(name, Desired.INACTIVE, reason="deactivate")
        for client in clients:
            server = str(client.endpoint)
            entry = reg.get(name)
            state = entry.on(server).state if entry is not None else State.UNLOADED
            try:
                loaded = any(e.name == name and e.state in ("READY", "LOADING") for e in client.index())
                if state is State.LOADING:
                    detail = f"refused: being loaded by {entry.on(server).actor if entry else '?'}; try again"
                    results.append({"server": server, "state": state.value, "detail": detail})
                    code = max(code, ExitCode.ERROR)
                    continue
                if not loaded and state in (State.UNLOADED, State.DISABLED):
                    results.append({"server": server, "state": state.value, "detail": "not loaded"})
                    continue
                done = unload_on(client, reg, name, timeout_s=timeout, reason="deactivate", progress=progress)
                results.append({"server": server, "state": done.state.value, "detail": "unloaded (drained)"})
            except DrainTimeout as exc:
                results.append({"server": server, "state": "UNLOADING", "detail": str(exc)})
                code = max(code, ExitCode.UNREACHABLE)
            except Unreachable as exc:
                results.append({"server": server, "state": state.value, "detail": str(exc)})
                code = max(code, ExitCode.UNREACHABLE)
            except (TritonAPIError, RegistryError) as exc:
                results.append({"server": server, "state": "UNKNOWN", "detail": str(exc)})
                code = max(code, ExitCode.ERROR)
    render_server_results(f"deactivate {name}", results, code, {"model": name} if json_out else None)
