"""`ruthctl deactivate MODEL`: unload everywhere, letting Triton finish in-flight requests, and record it."""

from __future__ import annotations

from typing import Annotated

import typer

from ruthctl.app import app_of
from ruthctl.commands._common import JsonOption
from ruthctl.commands.activate import change_servers, parse_model_ref


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

    name, _ = parse_model_ref(model)
    app = app_of(ctx)
    change_servers(
        app,
        app.env(),
        f"deactivate {name}",
        lambda clients, reg, progress: activation.deactivate(clients, reg, name, timeout, progress),
        {"model": name} if json_out else None,
    )
