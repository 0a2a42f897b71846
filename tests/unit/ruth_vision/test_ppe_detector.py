"""The PPE detector path on a real ONNX Runtime session: a tiny synthetic graph that returns a fixed YOLOv8-detect
output [1, 4+2, A], with boxes placed (by hand, in canvas pixels) on two synthetic people."""

from __future__ import annotations

import hashlib
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from backend_support import make_runtime
from onnx import TensorProto, helper, numpy_helper
from support import load_model_module

from python_backends import triton
from python_backends.errors import ModelLoadError
from ruth_vision import ppe
from ruth_vision.pose import Letterbox, PoseResult
from ruth_vision.ppe_detector import (
    PpeBox,
    PpeDetectorConfig,
    assess_frame_detected,
    assign_items,
    build_ppe_detector,
    decode_yolo_detect,
    parse_class_map,
)
from ruthctl.render import config_to_json, parse_pbtxt

REPO = Path(__file__).resolve().parents[3]
WIDTH, HEIGHT, SIZE = 640, 480, 320  # letterbox: scale 0.5, pad_x 0, pad_y 40
CLASSES = {"hardhat": 0, "vest": 1}


def person(dx: float, score: float = 0.9, face: bool = True) -> PoseResult:
    """Upright, facing the camera: head around x=150+dx, shoulders at y=160, hips at y=300."""
    kp = np.zeros((17, 3), np.float32)
    points = {
        0: (150, 100),
        1: (140, 95),
        2: (160, 95),
        3: (130, 100),
        4: (170, 100),
        5: (110, 160),
        6: (190, 160),
        11: (120, 300),
        12: (180, 300),
    }
    for index, (x, y) in points.items():
        visible = face or index >= 5
        kp[index] = (x + dx, y, 0.9 if visible else 0.0)
    return PoseResult((90 + dx, 40, 210 + dx, 460), kp, score)


def canvas(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    """A frame box as the network reports it: cx, cy, w, h on the 320 canvas."""
    return [(x1 + x2) / 4, (y1 + y2) / 4 + 40, (x2 - x1) / 2, (y2 - y1) / 2]


HAT_A = (125.0, 40.0, 175.0, 90.0)  # covers person A's head region
VEST_B = (405.0, 150.0, 495.0, 310.0)  # covers person B's torso (A shifted by 300)
SHELF_HAT = (560.0, 400.0, 600.0, 440.0)  # a helmet nobody wears
ANCHORS = [
    [*canvas(*HAT_A), 0.9, 0.0],
    [*canvas(127, 42, 177, 92), 0.8, 0.0],  # a duplicate of HAT_A: NMS removes it
    [*canvas(*VEST_B), 0.05, 0.85],
    [*canvas(300, 40, 340, 80), 0.1, 0.0],  # under min_score
    [*canvas(*SHELF_HAT), 0.9, 0.0],
    [160.0, 10.0, 20.0, 10.0, 0.0, 0.9],  # wholly in the letterbox padding
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
]
RAW = np.asarray(ANCHORS, np.float32).T[np.newaxis]  # [1, 6, 8], channels first as exported


def write_constant_detector(path: Path, output: np.ndarray = RAW) -> Path:
    """An ONNX graph with Ultralytics' interface (images [1, 3, S, S] -> output0) that ignores its input."""
    node = helper.make_node("Constant", [], ["output0"], value=numpy_helper.from_array(output, "raw"))
    graph = helper.make_graph(
        [node],
        "constant_ppe_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    return write_constant_detector(tmp_path / "ppe.onnx")


def frame() -> np.ndarray:
    return np.zeros((HEIGHT, WIDTH, 3), np.uint8)


def config(weights: Path, **overrides: Any) -> PpeDetectorConfig:
    return PpeDetectorConfig(weights=weights, classes=json.dumps(CLASSES), input_size=SIZE, **overrides)  # type: ignore[arg-type]


def statuses(payload: dict[str, Any]) -> list[dict[str, str]]:
    return [{item["item"]: item["status"] for item in p["items"]} for p in payload["detections"]]


def test_decoding_keeps_the_mapped_scored_boxes_once_and_maps_them_back_through_the_letterbox(weights: Path) -> None:
    found = build_ppe_detector(config(weights)).detect(frame())
    assert [(f.item, f.class_id, round(f.score, 2)) for f in found] == [
        ("hardhat", 0, 0.9),
        ("hardhat", 0, 0.9),
        ("vest", 1, 0.85),
    ]  # duplicate suppressed, low score and padding-only boxes dropped
    boxes = {f.box for f in found}
    for expected in (HAT_A, SHELF_HAT, VEST_B):
        assert any(np.allclose(b, expected, atol=1e-3) for b in boxes), expected


def test_the_anchor_major_layout_decodes_the_same() -> None:
    box = Letterbox.fit(WIDTH, HEIGHT, SIZE)
    classes = parse_class_map(CLASSES)
    channels_first = decode_yolo_detect(RAW, box, classes, 0.35)
    anchors_first = decode_yolo_detect(RAW.transpose(0, 2, 1), box, classes, 0.35)
    assert channels_first == anchors_first and len(channels_first) == 3


def test_nms_is_per_class_so_a_vest_box_does_not_swallow_an_identical_hat_box() -> None:
    anchors = [[*canvas(*HAT_A), 0.9, 0.0], [*canvas(*HAT_A), 0.0, 0.8]] + [[0.0] * 6] * 6  # anchors outnumber 4+nc
    raw = np.asarray(anchors, np.float32).T[np.newaxis]
    found = decode_yolo_detect(raw, Letterbox.fit(WIDTH, HEIGHT, SIZE), parse_class_map(CLASSES), 0.35)
    assert sorted(f.item for f in found) == ["hardhat", "vest"]


def test_each_item_goes_to_the_person_it_sits_on_and_the_hard_hat_outranks_the_vest(weights: Path) -> None:
    detector = build_ppe_detector(config(weights))
    payload = assess_frame_detected(frame(), [person(0), person(300)], ppe.PpeConfig(), detector)
    assert statuses(payload) == [
        {"hardhat": "present", "vest": "missing"},  # A: the hat box, nothing on the torso
        {"hardhat": "missing", "vest": "present"},  # B: the shelf helmet is nobody's
    ]
    assert payload["violation_type"] == "missing_hardhat" and payload["severity"] == "critical"
    assert [d["violation_type"] for d in payload["detections"]] == ["missing_vest", "missing_hardhat"]
    assert {(v["person"], v["item"]) for v in payload["violations"]} == {(0, "vest"), (1, "hardhat")}
    hat = payload["detections"][0]["items"][0]
    assert hat["evidence"] == 1.0 and hat["confidence"] == 0.9  # the whole head region covered; pose support 1
    assert set(payload) == set(ppe.assess_frame(frame(), [person(0)], ppe.PpeConfig()))  # the colour path's fields


def test_full_ppe_is_compliant_and_missing_only_the_vest_reports_missing_vest() -> None:
    people = [person(0)]
    hat = PpeBox("hardhat", HAT_A, 0.9, 0)
    vest = PpeBox("vest", (105.0, 150.0, 195.0, 310.0), 0.8, 1)
    cfg = ppe.PpeConfig()
    full = ppe.frame_payload(people, assign_items(frame().shape, people, [hat, vest], cfg), cfg)
    assert full["violation_detected"] is False and full["severity"] == "low"
    assert {p["item"] for p in full["ppe_present"]} == {"hardhat", "vest"}
    hat_only = ppe.frame_payload(people, assign_items(frame().shape, people, [hat], cfg), cfg)
    assert hat_only["violation_type"] == "missing_vest" and hat_only["detections"][0]["missing"] == ["vest"]


def test_a_box_that_barely_touches_the_region_does_not_count() -> None:
    grazing = PpeBox("hardhat", (165.0, 40.0, 175.0, 90.0), 0.95, 0)  # ~1/6 of the 44 px wide head region
    (judged,) = assign_items(frame().shape, [person(0)], [grazing], ppe.PpeConfig())
    assert judged[0].status == "missing"


def test_one_helmet_makes_only_the_person_it_covers_most_compliant() -> None:
    near = person(0)
    overlapping = person(30)  # heads overlap; the hat is centred on `near`
    judged = assign_items(frame().shape, [near, overlapping], [PpeBox("hardhat", HAT_A, 0.9, 0)], ppe.PpeConfig())
    assert [j[0].status for j in judged] == ["present", "missing"]


def test_an_unplaceable_region_is_unknown_never_missing(weights: Path) -> None:
    detector = build_ppe_detector(config(weights))
    payload = assess_frame_detected(frame(), [person(300, face=False)], ppe.PpeConfig(), detector)
    assert statuses(payload) == [{"hardhat": "unknown", "vest": "present"}]
    assert payload["violation_detected"] is False


def test_required_items_and_min_person_score_come_from_the_request_config(weights: Path) -> None:
    detector = build_ppe_detector(config(weights))
    cfg = ppe.PpeConfig(required_items=["vest"], min_person_score=0.5)
    payload = assess_frame_detected(frame(), [person(0), person(300, score=0.3)], cfg, detector)
    assert statuses(payload) == [{"vest": "missing"}]
    assert payload["violation_type"] == "missing_vest"


def test_the_class_map_accepts_dataset_names_and_refuses_anything_else() -> None:
    assert parse_class_map('{"Helmet": 2, "hi-vis": 0, "Safety_Vest": 5}') == {2: "hardhat", 0: "vest", 5: "vest"}
    for bad in ('{"person": 0}', '{"hardhat": -1}', "{}", "not json", '{"hardhat": 0, "helmet": 0}'):
        with pytest.raises(ValueError):
            parse_class_map(bad)


def test_a_class_index_beyond_the_network_fails_the_build(weights: Path) -> None:
    cfg = PpeDetectorConfig(weights=weights, classes={0: "hardhat", 7: "vest"}, input_size=SIZE)
    with pytest.raises(ValueError, match=r"2 classes .* index 7"):
        build_ppe_detector(cfg)


# --- the ppe_detection model's load ----------------------------------------------------------------------------------


@pytest.fixture()
def host(tmp_path: Path) -> Iterator[Path]:
    """A CPU host; returns the weights dir."""
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    triton.use_backend_module(types.SimpleNamespace())
    yield weights_dir
    triton.use_backend_module(None)


def _initialize(host: Path, params: dict[str, str], pinned: list[dict[str, str]]) -> Any:
    config = json.loads(config_to_json(parse_pbtxt((REPO / "model_repository/ppe_detection/config.pbtxt").read_text())))
    config["parameters"] = {
        **config["parameters"],
        **{f"model.{k}": {"string_value": v} for k, v in params.items()},
        "ruth.weights": {"string_value": json.dumps(pinned)},
    }
    model = load_model_module("ppe_detection").TritonPythonModel(make_runtime(host.parent, weights_dir=host))
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_name": "ppe_detection",
            "model_version": "1",
            "model_instance_name": "ppe_detection_0_0",
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
        }
    )
    return model


ONNX_PARAMS = {
    "detector": "onnx",
    "detector_weights": "ppe.onnx",
    "detector_classes": json.dumps(CLASSES),
    "detector_input_size": str(SIZE),
}


def test_the_model_loads_a_pinned_detector_and_judges_with_it(host: Path) -> None:
    digest = hashlib.sha256(write_constant_detector(host / "ppe.onnx").read_bytes()).hexdigest()
    model = _initialize(host, ONNX_PARAMS, [{"path": "ppe.onnx", "sha256": digest}])
    ctx = types.SimpleNamespace(config=ppe.PpeConfig())
    payload = model.judge(frame(), [person(0), person(300)], ctx)
    assert statuses(payload)[0] == {"hardhat": "present", "vest": "missing"}
    model.finalize()


def test_the_default_colour_path_needs_no_detector(host: Path) -> None:
    model = _initialize(host, {}, [])
    assert model.detector is None
    model.finalize()


@pytest.mark.parametrize(
    ("params", "pinned", "reason"),
    [
        (ONNX_PARAMS, [], r"ppe\.onnx is not pinned"),
        (ONNX_PARAMS, [{"path": "ppe.onnx", "sha256": "0" * 64}], r"corrupt or not the pinned version"),
        ({**ONNX_PARAMS, "detector_weights": ""}, [], r"detector_weights names no file"),
        ({**ONNX_PARAMS, "detector": "yolo"}, [], r"must be colour or onnx"),
    ],
)
def test_a_detector_that_is_not_pinned_or_not_valid_fails_the_load_with_the_reason(
    host: Path, params: dict[str, str], pinned: list[dict[str, str]], reason: str
) -> None:
    write_constant_detector(host / "ppe.onnx")
    with pytest.raises(ModelLoadError, match=reason):
        _initialize(host, params, pinned)


def test_a_class_map_the_network_cannot_serve_fails_the_load(host: Path) -> None:
    digest = hashlib.sha256(write_constant_detector(host / "ppe.onnx").read_bytes()).hexdigest()
    params = {**ONNX_PARAMS, "detector_classes": '{"hardhat": 0, "vest": 9}'}
    with pytest.raises(ModelLoadError, match=r"PPE detector ppe\.onnx: .*index 9"):
        _initialize(host, params, [{"path": "ppe.onnx", "sha256": digest}])
