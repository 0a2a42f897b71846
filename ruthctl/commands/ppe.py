"""`ruthctl ppe calibrate FRAMES.yaml --out preset.json`: fit the PPE colour ranges to one site's light.

FRAMES.yaml lists a few frames from the site's cameras and, per worker, where the head is and what they wear:

    frames:
      - image: cam1-0800.jpg                  # relative to the YAML file
        workers:
          - {head: [0.42, 0.31], hardhat: true, vest: true}    # head centre, fractions of width and height
          - {head: [0.70, 0.35], hardhat: false, vest: true}   # false: not worn; null: not visible

The pose network runs here (LiteRT, the pinned MoveNet in RUTH_WEIGHTS_DIR, 256 + 512 as the cpu profile). The
preset is a CONFIG fragment (`hardhat_colours`, `vest_colours`): send it as a request's CONFIG, or copy it into
config/models/ppe_detection.yaml's `parameters` and run `ruthctl generate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from python_backends.storage import atomic_write_bytes
from ruthctl.app import app_of
from ruthctl.exit_codes import ExitCode

app = typer.Typer(help="PPE: fit the colour ranges to a site.", no_args_is_help=True)


@app.command()
def calibrate(
    ctx: typer.Context,
    frames: Annotated[Path, typer.Argument(help="YAML listing the frames and their labelled workers.")],
    output: Annotated[Path, typer.Option("--out", help="Where to write the CONFIG preset (JSON).")],
    weights_dir: Annotated[
        Path | None, typer.Option("--weights-dir", envvar="RUTH_WEIGHTS_DIR", help="Pinned weights directory.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Fit the hard-hat and vest colour ranges from labelled frames; write a CONFIG preset."""
    from ruthctl.calibrate import calibrate_file

    app = app_of(ctx)

    def skipped(path: Path, head: object) -> None:
        app.err.print(f"[yellow]{path}[/]: no person found at head {head}; skipped")

    try:
        report = calibrate_file(frames, weights_dir, skipped)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        app.err.print(f"[red]calibration failed[/]: {exc}")
        raise typer.Exit(ExitCode.USAGE) from None
    atomic_write_bytes(output, json.dumps(report.preset(), indent=1).encode(), mode=0o600)
    if as_json:
        app.out().print_json(json.dumps({"preset": str(output), **report.model_dump()}))
        return
    table = Table(title=f"PPE calibration -> {output}")
    for column in ("item", "worn", "not worn", "worn passing", "not-worn matching", "refitted"):
        table.add_column(column)
    for fit in report.items:
        table.add_row(
            fit.item,
            str(fit.worn_samples),
            str(fit.not_worn_samples),
            f"{fit.worn_passing_before} -> {fit.worn_passing_after}",
            f"{fit.not_worn_matching_before} -> {fit.not_worn_matching_after}",
            ", ".join(fit.changed) or "-",
        )
    app.out().print(table)
