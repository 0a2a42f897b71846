"""`ruthctl ppe calibrate`'s work: run the pose network over a site's labelled frames and fit the PPE colours.

FRAMES.yaml lists a few frames from the site's cameras and, per worker, where the head is and what they wear (the
format is in ruthctl/commands/ppe.py). The pose network runs here (LiteRT, the pinned MoveNet in RUTH_WEIGHTS_DIR,
256 + 512 as the cpu profile).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import yaml

from python_backends.weights import default_weights_dir, pin_named, verify
from ruth_vision import ppe
from ruth_vision.pose import PoseEngineConfig, build_engine
from ruth_vision.ppe_calibration import CalibrationReport, LabelledWorker, fit_colours, match_heads
from ruthctl.app import config_root
from ruthctl.settings import load_settings
from ruthctl.spec import weight_pins


def calibrate_file(
    frames_yaml: Path,
    weights_dir: Path | None = None,
    on_skipped: Callable[[Path, Any], None] = lambda path, head: None,
) -> CalibrationReport:
    """The calibration for the frames a YAML file lists; `on_skipped(frame, head)` hears of each labelled head the
    pose network found no person at (that label is left out of the fit)."""
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
                on_skipped(path, label["head"])
                continue
            workers.append(LabelledWorker(frame, pose, label.get("hardhat"), label.get("vest")))
    if not workers:
        raise ValueError("no labelled worker was found by the pose network: nothing to fit")
    return fit_colours(workers, ppe.PpeConfig())
