"""The committed ONNX conversion of MoveNet (gpu profile) and the GPU path of pose_estimator, without a GPU.

The real file runs on ONNX Runtime's CPU execution provider, which executes the same graph the CUDA provider
does, and must find what LiteRT finds on the TFLite original. The CUDA side of pose_estimator's load (which
provider is asked for, that a silent CPU fallback inside ONNX Runtime is refused, what the allocator's
`fallback` placement runs) is checked with a stand-in `onnxruntime` module, since this machine has no GPU.
scripts/gpu_check.sh runs the real thing on a GPU host.

Tolerance: the conversion widens fp16 weights to fp32 and both runtimes compute in fp32, so LiteRT and ONNX
Runtime agree to about 0.0002 px on these frames (measured). The tests allow 0.01 px, the bar the conversion
script itself enforces, and 0.001 on scores: far below anything that moves a decision, far above float noise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data
import yaml
from backend_support import make_runtime
from matplotlib import cbook
from support import fetch_weights, load_model_module, pinned

from python_backends import logs, triton
from python_backends.errors import ModelLoadError
from python_backends.gpu_ledger import GpuLedger
from python_backends.gpu_probe import DeviceInfo, FakeProbe
from ruth_vision import pose
from ruthctl.render import config_to_json, parse_pbtxt

REPO = Path(__file__).resolve().parents[3]
SPEC = REPO / "config" / "models" / "pose_estimator.yaml"
TOLERANCE_PX = 0.01
TOLERANCE_SCORE = 1e-3
GIB = 1024**3
MOVENET = pinned("movenet")
MOVENET_ONNX = pinned("movenet_onnx")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("weights")
    for label in ("movenet", "movenet_onnx", "yolox_nano"):  # yolox_nano: the gpu profile's person detector
        fetch_weights(directory, label)
    return directory


@pytest.fixture(scope="module")
def engines(weights_dir: Path) -> tuple[pose.PoseNetwork, pose.PoseNetwork]:
    lite = pose.build_engine(pose.PoseEngineConfig(engine="litert", weights=weights_dir / MOVENET.path))
    onnx = pose.build_engine(pose.PoseEngineConfig(engine="onnx", weights=weights_dir / MOVENET_ONNX.path))
    return lite, onnx


def frames() -> dict[str, np.ndarray]:
    astronaut = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    return {
        "astronaut": astronaut,
        "grace_hopper": cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))),
        "astronaut_lying": cv2.rotate(astronaut, cv2.ROTATE_90_CLOCKWISE),
    }


# --- the committed file -------------------------------------------------------------------------------------------


def test_the_committed_onnx_file_is_the_one_pinned_in_the_spec() -> None:
    committed = REPO / "models" / MOVENET_ONNX.path
    assert hashlib.sha256(committed.read_bytes()).hexdigest() == MOVENET_ONNX.sha256
    assert committed.stat().st_size == MOVENET_ONNX.size
    spec = yaml.safe_load(SPEC.read_text())
    assert spec["parameters"]["onnx_weights"] == MOVENET_ONNX.path


def test_the_onnx_file_takes_the_frame_as_litert_does_and_runs_on_the_cpu_provider(weights_dir: Path) -> None:
    runner = pose.OnnxRunner(weights_dir / MOVENET_ONNX.path, "cpu")
    assert runner.providers == ["CPUExecutionProvider"]
    assert runner.input_type == "tensor(uint8)"  # uint8 RGB NHWC, the same tensor LiteRT gets
    raw = runner.run(np.zeros((1, 256, 256, 3), np.uint8))
    assert raw.shape == (1, 6, pose.POSE_ROW_WIDTH) and raw.dtype == np.float32


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper", "astronaut_lying"])
def test_onnx_runtime_finds_the_same_people_as_litert(
    engines: tuple[pose.PoseNetwork, pose.PoseNetwork], name: str
) -> None:
    lite, onnx = engines
    frame = frames()[name]
    expected, actual = lite.infer(frame), onnx.infer(frame)
    assert len(expected) >= 1
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a.box, e.box, atol=TOLERANCE_PX)
        np.testing.assert_allclose(a.keypoints[:, :2], e.keypoints[:, :2], atol=TOLERANCE_PX)
        np.testing.assert_allclose(a.keypoints[:, 2], e.keypoints[:, 2], atol=TOLERANCE_SCORE)
        assert a.score == pytest.approx(e.score, abs=TOLERANCE_SCORE)


# --- pose_estimator's load on a GPU instance, with a stand-in onnxruntime -------------------------------------------


class FakeOrt:
    """Enough of `onnxruntime` for OnnxRunner: records each session's providers; `enables` is what a session
    reports it actually enabled (ONNX Runtime drops a provider it can't initialise and carries on with the CPU)."""

    def __init__(self, available: list[str], enables: list[str] | None = None) -> None:
        self.available = available
        self.enables = enables
        self.sessions: list[dict[str, Any]] = []
        self.preloads = 0

    def get_available_providers(self) -> list[str]:
        return list(self.available)

    def SessionOptions(self) -> types.SimpleNamespace:  # noqa: N802 - onnxruntime's name
        return types.SimpleNamespace(intra_op_num_threads=0)

    def preload_dlls(self) -> None:
        self.preloads += 1

    def InferenceSession(self, path: str, sess_options: Any, providers: list[Any]) -> Any:  # noqa: N802
        names = [p if isinstance(p, str) else p[0] for p in providers]
        self.sessions.append({"path": path, "providers": providers, "threads": sess_options.intra_op_num_threads})
        enabled = self.enables if self.enables is not None else names
        return types.SimpleNamespace(
            get_providers=lambda: list(enabled),
            get_inputs=lambda: [types.SimpleNamespace(name="serving_default_input:0", type="tensor(uint8)")],
            run=lambda outputs, feeds: [np.zeros((1, 6, pose.POSE_ROW_WIDTH), np.float32)],
        )


class GpuHost:
    """A host with two 80 GiB GPUs as NVML would report them (`devices` may be changed); `state` holds the ledger."""

    def __init__(self, root: Path, weights_dir: Path) -> None:
        self.state = root / "state"
        self.devices = [DeviceInfo(i, "Fake H100", 80 * GIB, 70 * GIB) for i in (0, 1)]
        self.runtime = make_runtime(root, weights_dir=weights_dir, enable_gpu=True, probe=self.probe)

    def probe(self) -> FakeProbe:
        return FakeProbe(self.devices)


@pytest.fixture()
def gpu_host(tmp_path: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GpuHost]:
    triton.use_backend_module(types.SimpleNamespace())
    logs.configure()  # a model process does it (Runtime.from_process): `ruth` records stop propagating, so
    monkeypatch.setattr(logging.getLogger("ruth"), "propagate", True)  # caplog would see none without this
    yield GpuHost(tmp_path, weights_dir)
    triton.use_backend_module(None)


def _initialize(host: GpuHost, device_id: int, kind: str = "GPU") -> Any:
    text = (REPO / "model_repository/pose_estimator/configs/gpu.pbtxt").read_text()
    parsed = json.loads(config_to_json(parse_pbtxt(text)))
    # these tests are about MoveNet's provider; the profile's person detector would share the stand-in onnxruntime
    parsed["parameters"]["model.person_detector"] = {"string_value": ""}
    config = json.dumps(parsed)
    model = load_model_module("pose_estimator").TritonPythonModel(host.runtime)
    model.initialize(
        {
            "model_config": config,
            "model_name": "pose_estimator",
            "model_version": "1",
            "model_instance_name": f"pose_estimator_0_{device_id}",
            "model_instance_kind": kind,
            "model_instance_device_id": str(device_id),
        }
    )
    return model


def test_a_gpu_instance_runs_onnx_on_the_cuda_provider_of_its_granted_device(
    gpu_host: GpuHost, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ort = FakeOrt(["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    with caplog.at_level(logging.INFO):
        model = _initialize(gpu_host, device_id=1)
    (record,) = [r for r in caplog.records if r.name == "ruth.model.pose_estimator"]
    assert "engine onnx" in record.getMessage() and "'device_id': 1" in record.getMessage()
    assert record.getMessage().endswith("on cuda:1")
    assert (model.device.device, model.device.placement) == ("cuda:1", "gpu")
    (session,) = ort.sessions
    assert session["providers"] == [("CUDAExecutionProvider", {"device_id": 1})]  # no CPU provider to fall back to
    assert Path(session["path"]).name == MOVENET_ONNX.path
    assert ort.preloads == 1
    (entry,) = GpuLedger(gpu_host.state / "gpu-ledger.json").reservations()
    assert (entry.device_index, entry.model, entry.bytes) == (1, "pose_estimator", 512 * 1024 * 1024)
    model.finalize()
    assert GpuLedger(gpu_host.state / "gpu-ledger.json").reservations() == []


def test_a_gpu_instance_refuses_an_onnx_runtime_that_quietly_fell_back_to_the_cpu(
    gpu_host: GpuHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    ort = FakeOrt(["CUDAExecutionProvider", "CPUExecutionProvider"], enables=["CPUExecutionProvider"])
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    with pytest.raises(ModelLoadError, match=r"did not enable CUDAExecutionProvider"):
        _initialize(gpu_host, device_id=0)
    assert GpuLedger(gpu_host.state / "gpu-ledger.json").reservations() == []  # the failed load gave its booking back


def test_a_gpu_instance_with_the_cpu_only_onnxruntime_fails_its_load_naming_onnxruntime_gpu(
    gpu_host: GpuHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", FakeOrt(["CPUExecutionProvider"]))
    with pytest.raises(ModelLoadError, match=r"CUDAExecutionProvider is not available.*onnxruntime-gpu"):
        _initialize(gpu_host, device_id=0)


def test_a_gpu_instance_the_allocator_put_on_the_cpu_runs_litert_and_logs_the_fallback(
    gpu_host: GpuHost, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    full = [DeviceInfo(0, "Fake H100", 80 * GIB, 256 * 1024 * 1024)]  # 256 MiB free: the 512 MiB estimate can't fit
    gpu_host.devices[:] = full
    ort = FakeOrt(["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    with caplog.at_level(logging.INFO):
        model = _initialize(gpu_host, device_id=0)
    assert (model.device.device, model.device.placement) == ("cpu", "fallback")
    assert ort.sessions == []  # engine auto chose LiteRT, not ONNX Runtime
    (record,) = [r for r in caplog.records if r.name == "ruth.model.pose_estimator"]
    assert record.levelno == logging.WARNING
    assert "engine litert" in record.getMessage() and "because the allocator fell back" in record.getMessage()
    assert "not enough GPU memory" in record.getMessage()  # the allocator's reason travels with it
    people = model.engine.infer(frames()["astronaut"])  # the real network, on the CPU
    assert len(people) == 1
    assert GpuLedger(gpu_host.state / "gpu-ledger.json").reservations() == []  # nothing booked for a CPU placement
    model.finalize()


def test_the_gpu_profile_config_asks_for_a_gpu_instance_and_pins_the_onnx_file() -> None:
    config = json.loads(
        config_to_json(parse_pbtxt((REPO / "model_repository/pose_estimator/configs/gpu.pbtxt").read_text()))
    )
    assert [group["kind"] for group in config["instance_group"]] == ["KIND_GPU"]
    pinned = json.loads(config["parameters"]["ruth.weights"]["string_value"])
    assert {entry["path"]: entry["sha256"] for entry in pinned}[MOVENET_ONNX.path] == MOVENET_ONNX.sha256
