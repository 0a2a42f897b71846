"""`ruthctl verify`: check every invariant between the specs, the registry, this host and the servers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer

from ruthctl.app import app_of
from ruthctl.commands._common import JsonOption, StuckAfterOption, print_json

if TYPE_CHECKING:
    from rich.console import Console

    from ruthctl.invariants import Violation


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)


def verify(
    ctx: typer.Context,
    stuck_after: StuckAfterOption = 300.0,
    json_out: JsonOption = False,
) -> None:
    """Report every violated invariant (read-only).

    Checked: registry READY <=> Triton READY at the same version; nothing loaded that the registry doesn't want;
    config files on disk equal to the rendered specs; each server's live config equal to the spec; weights present
    with the right checksums; breaker state only for known models; GPU ledger reservations only for live processes;
    no model stuck LOADING/UNLOADING; every stub process of a READY model alive (servers on this host); no model
    hung past its zombie limit (from its metrics).

    Exit codes: 0 no violation, 1 violations found, 4 only unreachable servers.
    """
    from ruthctl.invariants import VerifyReport

    app = app_of(ctx)
    env = app.env()
    with app.adapters(env) as clients:
        report = VerifyReport(env.urls, app.reconciler(env, clients, "verify", stuck_after_s=stuck_after).verify())
    if json_out:
        print_json(app.out(), report.to_json())
    else:
        render_violations(app.out(), report.violations, title=f"verify ({', '.join(env.urls)})")
    raise typer.Exit(int(report.exit_code))


def render_violations(console: Console, violations: Sequence[Violation], title: str) -> None:
    from rich.table import Table

    if not violations:
        console.print(f"[green]ok[/green]: no violations ({title})")
        return
    table = Table(title=f"{len(violations)} violation(s): {title}")
    for column in ("kind", "model", "server", "detail", "repair"):
        table.add_column(column, overflow="fold")
    for v in violations:
        fix = v.fix if v.fixable else f"[red]can't:[/red] {v.fix}"
        table.add_row(v.kind.value, v.model or "-", v.server or "-", v.detail, fix)
    console.print(table)
