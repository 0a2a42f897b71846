"""`ruthctl deactivate MODEL`: unload everywhere, letting Triton finish in-flight requests, and record it."""

from __future__ import annotations

from typing import Annotated

import typer

from ruthctl.app import app_of
from ruthctl.commands._common import JsonOption, fail, preflight, render_server_results
from ruthctl.commands.activate import parse_model_ref, progress_display


def register(app: typer.Typer) -> None:
    app.command("deactivate")(deactivate)


def deactivate(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="MODEL (a :VERSION suffix is accepted and ignored).")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the drain on each server.")] = 60.0,
    json_out: JsonOption = False,
) -> None:
    """Mark a model INACTIVE and unload it from every server.

    Triton stops routing new requests to it at once and finishes the queued and running ones before the model's
    processes exit (docs/triton-notes.md §3); this waits for that, up to --timeout.

    Exit codes: 0 unloaded everywhere, 1 refused or failed, 4 a server unreachable or still draining at the timeout.
    """
    from ruthctl import activation
    from ruthctl.registry import ModelBusy

    name, _ = parse_model_ref(model)
    app = app_of(ctx)
    env = app.env()
    reg = app.registry(env, f"deactivate {name}")
    with app.adapters(env) as clients, progress_display(app.err, not json_out) as progress:
        preflight(clients)
        try:
            results = activation.deactivate(clients, reg, name, timeout, progress)
        except ModelBusy as exc:
            fail(f"refused: {exc}")
    render_server_results(
        app, f"deactivate {name}", results, activation.exit_code(results), {"model": name} if json_out else None
    )
