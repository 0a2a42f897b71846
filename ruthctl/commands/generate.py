"""`ruthctl generate [--check]`: render every spec into config.pbtxt and configs/<profile>.pbtxt."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ruthctl.app import app_of
from ruthctl.commands._common import JsonOption, fail, print_json
from ruthctl.exit_codes import ExitCode


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
    from ruthctl.render import render_files, stale_generated_files, sync_files
    from ruthctl.spec import SpecError, load_profiles, load_specs

    app = app_of(ctx)
    env = app.env(token=False)
    spec_dir = specs or env.specs
    repo = (repository or env.repository).resolve()
    try:
        profile_specs = load_profiles(profiles or env.profiles)
    except SpecError as exc:
        fail(str(exc))
    models, errors = load_specs(spec_dir)
    if not models and not errors:
        fail(f"no specs in {spec_dir}")
    rows: list[dict[str, str]] = []
    for name, spec in sorted(models.items()):
        try:
            rendered = render_files(spec, profile_specs)
        except SpecError as exc:
            errors[f"{name}.yaml"] = str(exc)
            continue
        stale = stale_generated_files(repo, name, rendered)
        for change in sync_files(repo, rendered, write=not check, stale=stale):
            rows.append({"model": name, "path": str(change.path), "status": change.status})
    drift = [r for r in rows if r["status"] != "unchanged"]
    code = ExitCode.ERROR if errors else (ExitCode.DRIFT if check and drift else ExitCode.OK)
    if json_out:
        print_json(
            app.out(), {"repository": str(repo), "check": check, "files": rows, "errors": errors, "drift": bool(drift)}
        )
    else:
        from rich.table import Table

        table = Table(title=f"generated configs in {repo}" + (" (check only)" if check else ""))
        for column in ("model", "file", "status"):
            table.add_column(column)
        colours = {"unchanged": "dim", "created": "green", "changed": "yellow", "removed": "red"}
        for row in rows:
            status = row["status"] if not check or row["status"] == "unchanged" else f"would be {row['status']}"
            table.add_row(row["model"], row["path"], f"[{colours[row['status']]}]{status}[/]")
        app.out().print(table)
        for file, error in sorted(errors.items()):
            app.err.print(f"[red]invalid spec[/red] {file}: {error}", highlight=False)
        if check and drift:
            app.err.print(f"{len(drift)} generated file(s) out of date: run `ruthctl generate`")
    raise typer.Exit(int(code))
