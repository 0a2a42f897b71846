"""`ruthctl status`: one table of every model on every server: desired, actual, version, device, breaker, errors."""

from __future__ import annotations

import typer

from ruthctl.app import app_of
from ruthctl.commands._common import JsonOption, print_json, state_style


def register(app: typer.Typer) -> None:
    app.command("status")(status)


def status(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Desired state (registry), actual state (Triton's index), version, device, breaker and the latest error.

    Exit codes: 0 shown, 4 a server unreachable (its rows say so).
    """
    from ruthctl.status import fleet_status

    app = app_of(ctx)
    env = app.env()
    with app.adapters(env) as clients:
        report = fleet_status(app.reconciler(env, clients, "status"), clients)
    if json_out:
        print_json(app.out(), report.to_json())
    else:
        from rich.table import Table

        table = Table(title=f"ruthctl status (profile {report.profile.value})")
        for column in ("server", "model", "version", "desired", "state", "triton", "device", "breaker", "recent error"):
            table.add_column(column, overflow="fold")
        for row in report.rows:
            table.add_row(
                row.server,
                row.model,
                str(row.version or "-"),
                row.desired,
                state_style(row.state),
                state_style(row.triton),
                row.device,
                row.breaker,
                row.error,
            )
        app.out().print(table)
    raise typer.Exit(int(report.exit_code))
