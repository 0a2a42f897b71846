"""`ruthctl repair [--dry-run]`: fix what `verify` finds, report what can't be fixed and why."""

from __future__ import annotations

from typing import Annotated

import typer

from ruthctl.commands._common import adapters, err, out, print_json, reconciler, resolve
from ruthctl.commands.verify import render_violations
from ruthctl.exit_codes import ExitCode


def register(app: typer.Typer) -> None:
    app.command("repair")(repair)


def repair(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan; change nothing.")] = False,
    stuck_after: Annotated[float, typer.Option(help="Seconds after which LOADING/UNLOADING counts as stuck.")] = 300.0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each load or unload.")] = 120.0,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Verify, plan one action per violation, carry the plan out, and verify again. Safe to run twice.

    Actions: rebuild a damaged registry from its audit log, adopt a deployment without one, regenerate drifted
    config files, record states Triton already reached, unload unwanted models, (re)load wanted ones with the
    spec's config, remove orphaned breaker files, reap dead GPU ledger entries. Missing or corrupt weights,
    invalid specs, disabled models and unreachable servers need a person: they are reported, not touched.

    Exit codes: 0 nothing left to fix, 1 violations remain (unfixable or a repair failed), 3 --dry-run found work.
    """
    from ruthctl.invariants import plan_repairs

    env = resolve(ctx)
    with adapters(env, load_timeout_s=timeout) as clients:
        rec = reconciler(
            env, clients, "repair", stuck_after_s=stuck_after, load_timeout_s=timeout, unload_timeout_s=timeout
        )
        before = rec.verify()
        plan = plan_repairs(before)
        results = [] if dry_run else rec.execute(plan)
        # a missing/damaged registry is fixed alone first (everything else depends on it): then plan again
        if not dry_run and plan and all(a.kind.value in ("rebuild_registry", "adopt") for a in plan):
            results += rec.execute(plan_repairs(rec.verify()))
        after = before if dry_run else rec.verify()
    unfixable = [v for v in after if not v.fixable]
    if dry_run:
        code = ExitCode.DRIFT if plan else (ExitCode.ERROR if unfixable else ExitCode.OK)
    else:
        code = ExitCode.OK if not after else ExitCode.ERROR
    if json_out:
        print_json(
            {
                "dry_run": dry_run,
                "found": [v.to_json() for v in before],
                "plan": [a.to_json() for a in plan],
                "results": [r.to_json() for r in results],
                "remaining": [v.to_json() for v in after],
            }
        )
    else:
        from rich.table import Table

        console = out()
        if not before:
            console.print("[green]ok[/green]: nothing to repair")
        else:
            table = Table(title="repair plan" + (" (dry run: nothing changed)" if dry_run else ""))
            for column in ("action", "model", "server", "because", "result"):
                table.add_column(column, overflow="fold")
            done = {id(r.action): r for r in results}
            for action in plan:
                result = done.get(id(action))
                shown = (
                    "-"
                    if result is None
                    else (f"[green]ok[/green] {result.detail}" if result.ok else f"[red]failed[/red] {result.detail}")
                )
                table.add_row(
                    action.kind.value,
                    action.model or "-",
                    action.server or "-",
                    ", ".join(c.value for c in action.causes),
                    shown,
                )
            for result in results[len(plan) :]:
                table.add_row(
                    result.action.kind.value,
                    result.action.model or "-",
                    result.action.server or "-",
                    ", ".join(c.value for c in result.action.causes),
                    f"[green]ok[/green] {result.detail}" if result.ok else f"[red]failed[/red] {result.detail}",
                )
            console.print(table)
            if not dry_run and after:
                render_violations(after, title="still violated after repair")
        if unfixable:
            err.print(f"{len(unfixable)} violation(s) need a person (see the repair column)")
    raise typer.Exit(int(code))
