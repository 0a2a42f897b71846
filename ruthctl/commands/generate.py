"""`ruthctl generate [--check]`: render every spec into config.pbtxt and configs/<profile>.pbtxt."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ruthctl.app import app_of
from ruthctl.commands._common import JsonOption, fail, print_json


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)


def generate(
    ctx: typer.Context,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 3 if any generated file would change.")
    ] = False,
    json_out: JsonOption = False,
    specs: Annotated[
        Path | None, typer.Option(help="Spec folder (default: config/models next to the repository).")
    ] = None,
    profiles: Annotated[Path | None, typer.Option(help="Profile folder (default: config/profiles).")] = None,
    repository: Annotated[Path | None, typer.Option(envvar="MODELS_ROOT", help="Model repository to write.")] = None,
) -> None:
    """Render each model's Triton config from its YAML spec (through the ModelConfig protobuf schema).

    Exit codes: 0 up to date (or written), 1 a spec or profile is invalid, 3 drift found with --check.
    """
    from ruthctl.render import generate_repository
    from ruthctl.spec import SpecError

    app = app_of(ctx)
    env = app.env(token=False)
    repo = (repository or env.repository).resolve()
    try:
        report = generate_repository(specs or env.specs, profiles or env.profiles, repo, check=check)
    except SpecError as exc:
        fail(str(exc))
    if json_out:
        print_json(app.out(), report.to_json())
    else:
        from rich.table import Table

        table = Table(title=f"generated configs in {repo}" + (" (check only)" if check else ""))
        for column in ("model", "file", "status"):
            table.add_column(column)
        colours = {"unchanged": "dim", "created": "green", "changed": "yellow", "removed": "red"}
        for row in report.files:
            status = row.status if not check or row.status == "unchanged" else f"would be {row.status}"
            table.add_row(row.model, row.path, f"[{colours[row.status]}]{status}[/]")
        app.out().print(table)
        for file, error in sorted(report.errors.items()):
            app.err.print(f"[red]invalid spec[/red] {file}: {error}", highlight=False)
        if check and report.drift:
            app.err.print(f"{len(report.drift)} generated file(s) out of date: run `ruthctl generate`")
    raise typer.Exit(int(report.exit_code))
