"""`ruthctl health`: healthy | degraded | unhealthy (ruthctl/health.py), with exit codes 0/1/5, usable as a probe."""

from __future__ import annotations

import typer

from ruthctl.app import app_of
from ruthctl.commands._common import JsonOption, print_json


def register(app: typer.Typer) -> None:
    app.command("health")(health)


def health(
    ctx: typer.Context,
    json_out: JsonOption = False,
) -> None:
    """Server liveness, readiness of every wanted model, breakers, dead stubs and zombies, rolled up.

    unhealthy: a server is unreachable or not live, or none of its wanted models is ready.
    degraded: some wanted model is not ready, a breaker is open or half-open, a stub process died, or a model
    reports zombies or ill health. Triton's own /v2/health/ready is shown but not used: in explicit mode it stays
    red after any failed load (docs/triton-notes.md §3).

    Exit codes: 0 healthy, 1 degraded, 5 unhealthy.
    """
    from ruthctl.health import Health, fleet_health

    app = app_of(ctx)
    env = app.env()
    with app.adapters(env, timeout_s=5.0) as clients:
        report = fleet_health(app.reconciler(env, clients, "health"), clients)
    overall = report.status
    if json_out:
        print_json(app.out(), report.to_json())
    else:
        from rich.table import Table

        colour = {Health.HEALTHY: "green", Health.DEGRADED: "yellow", Health.UNHEALTHY: "red"}[overall]
        table = Table(title=f"health: [{colour}]{overall.value}[/{colour}]")
        for column in ("server", "status", "live", "triton ready", "models ready", "problems"):
            table.add_column(column, overflow="fold")
        for r in report.servers:
            ready = sum(1 for m in r.models if m.ready)
            table.add_row(
                r.server,
                r.status.value,
                str(r.live),
                str(r.server_ready),
                f"{ready}/{len(r.models)}",
                "; ".join(r.problems) or "-",
            )
        app.out().print(table)
    raise typer.Exit(int(overall.exit_code))
