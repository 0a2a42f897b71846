"""`ruthctl repair [--dry-run]`: fix what `verify` finds (ruthctl/repair.py), report what can't be fixed and why."""

from __future__ import annotations

from typing import Annotated

import typer

from ruthctl.app import app_of
from ruthctl.commands._common import ChangeTimeoutOption, JsonOption, StuckAfterOption, print_json
from ruthctl.commands.verify import render_violations


def register(app: typer.Typer) -> None:
    app.command("repair")(repair_command)


def repair_command(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan; change nothing.")] = False,
    stuck_after: StuckAfterOption = 300.0,
    timeout: ChangeTimeoutOption = 120.0,
    json_out: JsonOption = False,
) -> None:
    """Verify, plan one action per violation, carry the plan out, and verify again. Safe to run twice.

    Actions: rebuild a damaged registry from its audit log, adopt a deployment without one, regenerate drifted
    config files, record states Triton already reached, unload unwanted models, (re)load wanted ones with the
    spec's config, remove orphaned breaker files, reap dead GPU ledger entries. Missing or corrupt weights,
    invalid specs, disabled models and unreachable servers need a person: they are reported, not touched.

    Exit codes: 0 nothing left to fix, 1 violations remain (unfixable or a repair failed), 3 --dry-run found work.
    """
    from ruthctl.invariants import ActionResult
    from ruthctl.repair import repair

    app = app_of(ctx)
    env = app.env()
    with app.adapters(env, load_timeout_s=timeout) as clients:
        rec = app.reconciler(
            env, clients, "repair", stuck_after_s=stuck_after, load_timeout_s=timeout, unload_timeout_s=timeout
        )
        report = repair(rec, dry_run=dry_run)
    if json_out:
        print_json(app.out(), report.to_json())
    else:
        from rich.table import Table

        def shown(result: ActionResult | None) -> str:
            if result is None:
                return "-"
            return f"[green]ok[/green] {result.detail}" if result.ok else f"[red]failed[/red] {result.detail}"

        console = app.out()
        if not report.found:
            console.print("[green]ok[/green]: nothing to repair")
        else:
            table = Table(title="repair plan" + (" (dry run: nothing changed)" if dry_run else ""))
            for column in ("action", "model", "server", "because", "result"):
                table.add_column(column, overflow="fold")
            done = {id(r.action): r for r in report.results}
            rows = [(action, done.get(id(action))) for action in report.plan]
            rows += [(r.action, r) for r in report.results[len(report.plan) :]]
            for action, result in rows:
                causes = ", ".join(c.value for c in action.causes)
                table.add_row(action.kind.value, action.model or "-", action.server or "-", causes, shown(result))
            console.print(table)
            if not dry_run and report.remaining:
                render_violations(console, report.remaining, title="still violated after repair")
        if report.unfixable:
            app.err.print(f"{len(report.unfixable)} violation(s) need a person (see the repair column)")
    raise typer.Exit(int(report.exit_code))
