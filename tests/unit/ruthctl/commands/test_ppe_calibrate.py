"""`ruthctl ppe calibrate`: a site whose vests are a dull yellow the default ranges miss, fitted from two labelled
frames (real photograph, real MoveNet), then judged with the preset on a frame it did not see."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from support import fetch_weights
from typer.testing import CliRunner

from ruth_vision import ppe
from ruth_vision.pose import PoseEngineConfig, build_engine
from ruthctl.cli import app

DULL_YELLOW = tuple(int(v) for v in cv2.cvtColor(np.uint8([[[28, 80, 200]]]), cv2.COLOR_HSV2BGR)[0, 0])  # S 80


def plain_astronaut() -> np.ndarray:
    image = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    hsv[250:, :, 1] = (hsv[250:, :, 1] * 0.35).astype(np.uint8)  # ordinary clothes, not an orange suit
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def with_vest(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    cv2.fillPoly(out, [np.array([[95, 250], [330, 250], [350, 512], [80, 512]], np.int32)], DULL_YELLOW)
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("weights")
    fetch_weights(directory)
    return directory


def test_calibration_fits_the_site_vest_and_keeps_plain_clothes_out(tmp_path: Path, weights: Path) -> None:
    cv2.imwrite(str(tmp_path / "worn.png"), with_vest(plain_astronaut()))
    cv2.imwrite(str(tmp_path / "bare.png"), plain_astronaut())
    (tmp_path / "frames.yaml").write_text(
        "frames:\n"
        "  - {image: worn.png, workers: [{head: [0.45, 0.2], hardhat: false, vest: true}]}\n"
        "  - {image: bare.png, workers: [{head: [0.45, 0.2], hardhat: false, vest: false}]}\n"
    )
    preset_path = tmp_path / "site" / "preset.json"
    result = CliRunner().invoke(
        app,
        [
            "ppe",
            "calibrate",
            str(tmp_path / "frames.yaml"),
            "--out",
            str(preset_path),
            "--weights-dir",
            str(weights),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    vest = next(i for i in report["items"] if i["item"] == "vest")
    assert vest["worn_passing_before"] == 0 and vest["worn_passing_after"] == 1
    assert vest["not_worn_matching_after"] == 0 and "fluorescent yellow" in vest["changed"]
    preset = json.loads(preset_path.read_text())
    assert set(preset) == {"vest_colours"}  # nobody wore a hat: the hat ranges stay the defaults

    # a frame the calibration never saw: the same vest on a person placed elsewhere, smaller
    unseen = np.full((700, 900, 3), 110, np.uint8)
    unseen[150:560, 400:810] = cv2.resize(with_vest(plain_astronaut()), (410, 410))
    engine = build_engine(PoseEngineConfig(weights=weights / "movenet_multipose_lightning_fp16.tflite"))
    people = engine.infer(unseen)
    default = ppe.assess_frame(unseen, people, ppe.PpeConfig())
    fitted = ppe.assess_frame(unseen, people, ppe.PpeConfig.model_validate(preset))
    assert default["detections"][0]["missing"] == ["hardhat", "vest"]
    assert fitted["detections"][0]["missing"] == ["hardhat"]


def test_calibration_without_frames_is_a_usage_error(tmp_path: Path, weights: Path) -> None:
    (tmp_path / "frames.yaml").write_text("frames: []\n")
    result = CliRunner().invoke(
        app,
        [
            "ppe",
            "calibrate",
            str(tmp_path / "frames.yaml"),
            "--out",
            str(tmp_path / "p.json"),
            "--weights-dir",
            str(weights),
        ],
    )
    assert result.exit_code == 2 and "at least one entry" in result.output
