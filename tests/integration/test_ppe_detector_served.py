"""The `detector: onnx` path of ppe_detection inside the real tritonserver with a real trained network: YOLOX-Nano
(Apache-2.0, COCO; models/yolox_nano.onnx, pinned) re-shaped into the YOLOv8-detect layout by
ruth_vision.detector_export, its `person` class mapped to the vest item as a stand-in (no permissively licensed
hard-hat/vest detector exists). A person's box covers their own torso region, so each person must be judged on
their own box: decoding, letterbox, NMS and assignment, end to end, on real photographs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
import skimage.data
import tritonclient.http as httpclient
import yaml
from matplotlib import cbook
from support import REPO_ROOT, TritonHandle, person_weights, result_of, start_triton, vision_inputs
from typer.testing import CliRunner

from python_backends.storage import atomic_write_bytes
from ruth_vision.detector_export import export_yolox_as_yolov8
from ruthctl.cli import app

pytestmark = pytest.mark.integration

MODELS = ["pose_estimator", "ppe_detection"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonHandle]:
    root = tmp_path_factory.mktemp("detector")
    weights = root / "weights"
    weights.mkdir()
    person_weights(weights)
    detector = weights / "yolox_nano_v8.onnx"
    atomic_write_bytes(detector, export_yolox_as_yolov8(weights / "yolox_nano.onnx"))  # its source checked by fetch
    digest = hashlib.sha256(detector.read_bytes()).hexdigest()
    specs, repository = root / "specs", root / "repository"
    specs.mkdir()
    for name in MODELS:
        shutil.copy(REPO_ROOT / "config" / "models" / f"{name}.yaml", specs)
        shutil.copytree(REPO_ROOT / "model_repository" / name / "1", repository / name / "1")
    spec = yaml.safe_load((specs / "ppe_detection.yaml").read_text())
    spec["weights"] = [{"path": detector.name, "sha256": digest, "source": "ruth_vision.detector_export (test)"}]
    spec["parameters"].update(
        {
            "detector": "onnx",
            "detector_weights": detector.name,
            "detector_classes": json.dumps({"vest": 0}),
            "detector_input_size": 416,
            "detector_min_score": 0.3,
        }
    )
    (specs / "ppe_detection.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--specs",
            str(specs),
            "--profiles",
            str(REPO_ROOT / "config" / "profiles"),
            "--repository",
            str(repository),
        ],
    )
    assert result.exit_code == 0, result.output
    handle = start_triton(root, MODELS, repository=repository, env={"RUTH_WEIGHTS_DIR": str(weights)})
    try:
        yield handle
    finally:
        handle.server.stop(grace_s=30)


def infer(handle: TritonHandle, frame: np.ndarray) -> dict[str, object]:
    with contextlib.closing(httpclient.InferenceServerClient(handle.http_url)) as client:
        inputs = vision_inputs(httpclient, frame=frame, config={"required_items": ["vest"], "unknown_policy": "report"})
        return result_of(client.infer("ppe_detection", inputs))


def test_the_served_detector_finds_each_person_on_their_own_box(served: TritonHandle) -> None:
    assert "PPE detector yolox_nano_v8.onnx" in served.log_text()
    astronaut = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
    frame = np.full((640, 1280, 3), 120, np.uint8)
    frame[64:576, 40:552] = astronaut
    frame[40:640, 700:1212] = hopper[:600]
    result = infer(served, frame)
    detections = result["detections"]
    assert isinstance(detections, list) and len(detections) == 2
    for detection in detections:
        (vest,) = detection["items"]
        assert vest["status"] == "present" and vest["evidence"] > 0.5, detection
        region = vest["region"]  # inside that person's own box, not the other's
        x1, _, x2, _ = detection["bbox"]
        assert x1 - 10 <= region[0] and region[2] <= x2 + 10
    assert result["violation_detected"] is False


def test_an_empty_frame_has_no_one_and_a_lone_person_is_judged_on_their_box(served: TritonHandle) -> None:
    astronaut = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    empty = infer(served, np.full((480, 640, 3), 120, np.uint8))
    assert empty["persons_detected"] == 0 and empty["violation_detected"] is False
    assert infer(served, astronaut)["detections"][0]["items"][0]["status"] == "present"
