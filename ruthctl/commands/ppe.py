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
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import cv2
import typer
import yaml
from rich.table import Table

from python_backends.storage import atomic_write_bytes
from ruthctl.app import app_of
from ruthctl.exit_codes import ExitCode

app = typer.Typer(help="PPE: fit the colour ranges to a site.", no_args_is_help=True)


def calibrate_file(
    frames_yaml: Path, weights_dir: Path | None = None, warn: Callable[[str], None] = lambda message: None
) -> Any:
    """The CalibrationReport for the frames a YAML file lists (see the module doc); `warn` gets each skipped label
    (rich markup)."""
    from python_backends.weights import default_weights_dir, pin_named, verify
    from ruth_vision import ppe
    from ruth_vision.pose import PoseEngineConfig, build_engine
    from ruth_vision.ppe_calibration import LabelledWorker, fit_colours, match_heads
    from ruthctl.app import config_root
    from ruthctl.settings import load_settings
    from ruthctl.spec import weight_pins

    data = yaml.safe_load(frames_yaml.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) or not data["frames"]:
        raise ValueError(f"{frames_yaml}: expected `frames:` with at least one entry")
    movenet = pin_named(weight_pins(config_root(load_settings().models_root.resolve()) / "models"), "movenet")
    weights = verify((weights_dir or default_weights_dir()) / movenet.path, movenet)
    engine = build_engine(PoseEngineConfig(weights=weights, extra_input_sizes=(512,)))
    workers: list[LabelledWorker] = []
    for entry in data["frames"]:
        path = frames_yaml.parent / str(entry["image"])
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise ValueError(f"{path}: not a readable image")
        labels = entry.get("workers") or []
        heads = [(float(w["head"][0]), float(w["head"][1])) for w in labels]
        poses = match_heads(heads, engine.infer(frame), frame.shape[1], frame.shape[0])
        for label, pose in zip(labels, poses, strict=True):
            if pose is None:
                warn(f"[yellow]{path}[/]: no person found at head {label['head']}; skipped")
                continue
            workers.append(LabelledWorker(frame, pose, label.get("hardhat"), label.get("vest")))
    if not workers:
        raise ValueError("no labelled worker was found by the pose network: nothing to fit")
    return fit_colours(workers, ppe.PpeConfig())


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
    app = app_of(ctx)
    try:
        report = calibrate_file(frames, weights_dir, app.err.print)
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
