"""`ruthctl breaker list|reset`: the circuit breakers' persisted state in `<state_dir>/breakers/`.

Every instance process of a model shares one state file (python_backends.breaker_storage.FileBreakerStorage), so a reset
here is seen by all of them at their next request. Breakers are per host: run this on each server's host (or
with its state dir).
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from ruthctl.app import app_of
from ruthctl.commands._common import JsonOption, fail, print_json
from ruthctl.exit_codes import ExitCode

app = typer.Typer(help="Circuit breakers: list their state, reset them.", no_args_is_help=True)


@app.command("list")
def list_breakers(
    ctx: typer.Context,
    json_out: JsonOption = False,
) -> None:
    """Every breaker with a state file: closed, half_open or open, failures, trips, time to the next trial."""
    from ruthctl.state_files import breaker_files

    app = app_of(ctx)
    env = app.env(token=False)
    now = time.time()
    found = [b.to_json(now) for b in breaker_files(env.state_dir)]
    if json_out:
        print_json(app.out(), {"state_dir": str(env.state_dir), "breakers": found})
        return
    from rich.table import Table

    table = Table(title=f"breakers in {env.state_dir / 'breakers'}")
    for column in ("model", "version", "state", "failures", "trips", "retry in"):
        table.add_column(column)
    colours = {"closed": "green", "half_open": "yellow", "open": "red"}
    for row in found:
        colour = colours.get(row["state"], "red")
        retry = "-" if row["retry_in_s"] is None else f"{row['retry_in_s']}s"
        table.add_row(
            row["model"],
            str(row["version"]),
            f"[{colour}]{row['state']}[/{colour}]",
            str(row["consecutive_failures"]),
            str(row["total_trips"]),
            retry,
        )
    app.out().print(table)


@app.command("reset")
def reset(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Argument(help="MODEL or MODEL:VERSION (all versions of MODEL by default).")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Reset every breaker.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Close breakers now (the operator knows the cause is fixed). Exit 1 if none matched, 2 without MODEL/--all."""
    from ruthctl.state_files import breaker_files, reset_breaker

    if (model is None) == (not all_):
        fail("give MODEL[:VERSION] or --all (not both)", ExitCode.USAGE)
    app = app_of(ctx)
    env = app.env(token=False)
    matched = breaker_files(env.state_dir, None if all_ else model)
    if not matched:
        fail(f"no breaker state for {model} in {env.state_dir / 'breakers'}")
    for b in matched:
        try:
            reset_breaker(b.path, f"{b.model}:{b.version}")
        except OSError as exc:
            fail(f"{b.path}: {exc}")
    done = [{"model": b.model, "version": b.version, "was": b.state, "now": "closed"} for b in matched]
    if json_out:
        print_json(app.out(), {"reset": done})
    else:
        console = app.out()
        for row in done:
            console.print(f"{row['model']} v{row['version']}: {row['was']} -> closed")
