"""The `torch` pose engine: the pinned MoveNet ONNX converted to PyTorch gives ONNX Runtime's answers (CPU here; the
same module runs on CUDA in scripts/gpu_device_check.py). Needs torch and onnx2torch: `nox -s gpu_dryrun` installs
them and runs this file; the default suite skips it with that reason."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from ruth_vision.pose import EngineLoadError, OnnxRunner, PoseEngineConfig, PoseNetwork, build_engine

torch = pytest.importorskip("torch", reason="torch is not installed: `nox -s gpu_dryrun` runs these tests")
if importlib.util.find_spec("onnx2torch") is None:
    pytest.skip("onnx2torch is not installed: `nox -s gpu_dryrun` runs these tests", allow_module_level=True)

from ruth_vision.pose_torch import TorchRunner, explicit_pads  # noqa: E402

ONNX = Path(__file__).resolve().parents[3] / "models" / "movenet_multipose_lightning.onnx"


def astronaut_frame() -> np.ndarray:
    frame = np.full((540, 960, 3), 120, np.uint8)
    frame[14:526, 224:736] = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    return frame


def test_people_equal_onnx_runtime_within_a_pixel() -> None:
    frame = astronaut_frame()
    mine = PoseNetwork(TorchRunner(ONNX, 256, "cpu"), "movenet", 256, 0.2).infer(frame)
    want = PoseNetwork(OnnxRunner(ONNX, "cpu"), "movenet", 256, 0.2).infer(frame)
    assert len(mine) == len(want) == 1
    sure = want[0].keypoints[:, 2] >= 0.3
    assert sure.sum() >= 10
    assert np.abs(mine[0].keypoints[sure, :2] - want[0].keypoints[sure, :2]).max() <= 1.0
    assert abs(mine[0].score - want[0].score) < 0.01


def test_engine_torch_through_build_engine_finds_the_astronaut() -> None:
    network = build_engine(PoseEngineConfig(engine="torch", weights=ONNX), "cpu")
    people = network.infer(astronaut_frame())
    assert len(people) == 1 and people[0].score > 0.3


def test_explicit_pads_removes_every_same_auto_pad() -> None:
    import onnx

    model = explicit_pads(onnx.load(str(ONNX)), (1, 256, 256, 3))
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name == "auto_pad":
                assert attr.s.decode() not in ("SAME_UPPER", "SAME_LOWER"), node.name


def test_no_cuda_device_is_a_load_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    with pytest.raises(EngineLoadError, match="no CUDA device"):
        build_engine(PoseEngineConfig(engine="torch", weights=ONNX), "cuda:0")


def test_capture_is_a_no_op_on_the_cpu() -> None:
    runner = TorchRunner(ONNX, 256, "cpu")
    assert runner.capture_cuda_graph() == "eager"
