"""GPU check for a bare GPU machine with PyTorch and no tritonserver (the device machines lent to some sessions).

What it proves on a real GPU, in one call, into one report ($OUT/gpu-device-check.txt):
  1. the machine: GPU name, driver, torch and CUDA versions;
  2. the allocator's GPU path from real NVML numbers (python_backends.gpu_probe.NvmlProbe): pose_estimator's
     instance (512 MiB estimate, KIND_GPU) is placed on cuda:0, booked in a GpuLedger, released on unload;
  3. the gpu profile's pose network on CUDA: the pinned MoveNet ONNX (checksum checked against the spec) run by
     the `torch` engine (ruth_vision/pose_torch.py) on cuda:0, as one CUDA graph where it can be captured; its people
     and keypoints equal the CPU reference (ONNX Runtime, or LiteRT) within 1 px on real photographs;
  4. throughput: the pose network alone, and fall_detection's judgement per frame (pose + ruth_vision.fall over
     several camera streams, the model's code path without Triton), against the >= 100 frames/s target.
Triton itself is not there (the lent machines have no network and the pytriton wheel is ~145 MB, over the 64 MiB a
call carries): scripts/gpu_check.sh is the same check through tritonserver, for a GPU host that has it.

Carried to the machine (docs/benchmarks.md, "GPU"): the working tree (~21 MB) and, in `.whl/`, the wheels it lacks
(pydantic, pydantic-core, annotated-types, typing-inspection, onnx2torch): about 3 MB. torch, onnx, onnxruntime,
opencv-python-headless, nvidia-ml-py, scikit-image and numpy are already there.

    python3 scripts/gpu_device_check.py                 # on the GPU machine; exit 0 only if every check passed
    python3 scripts/gpu_device_check.py --allow-cpu     # rehearsal on a CPU host (CI): CUDA verdicts are SKIPped
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

MIB = 1024 * 1024
ONNX = REPO / "models" / "movenet_multipose_lightning.onnx"


class Report:
    def __init__(self, out: Path, allow_cpu: bool) -> None:
        self.path = out / "gpu-device-check.txt"
        self.allow_cpu = allow_cpu
        self.failures: list[str] = []
        self._lines: list[str] = []

    def say(self, line: str) -> None:
        print(line, flush=True)
        self._lines.append(line)
        self.path.write_text("\n".join(self._lines) + "\n")

    def verdict(self, ok: bool, what: str, *, cuda_only: bool = False) -> None:
        if cuda_only and self.allow_cpu:
            self.say(f"SKIP {what} (no GPU: --allow-cpu)")
            return
        self.say(f"{'PASS' if ok else 'FAIL'} {what}")
        if not ok:
            self.failures.append(what)


def pinned_sha256(name: str) -> str:
    spec = yaml.safe_load((REPO / "config" / "models" / "pose_estimator.yaml").read_text())
    return next(w["sha256"] for w in spec["weights"] if w["path"] == name)


def photographs() -> list[tuple[str, np.ndarray]]:
    import skimage.data

    astronaut = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    canvas = np.full((540, 960, 3), 120, np.uint8)
    canvas[14:526, 224:736] = astronaut
    lying = np.full((540, 960, 3), 120, np.uint8)
    lying[14:526, 224:736] = cv2.rotate(astronaut, cv2.ROTATE_90_CLOCKWISE)
    coffee = cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2BGR)
    return [("astronaut", canvas), ("astronaut lying", lying), ("coffee (nobody)", coffee)]


def reference_engine() -> tuple[str, Callable[[np.ndarray], list[Any]]]:
    """The CPU network the person models were validated on: ONNX Runtime on the same file (LiteRT is not needed)."""
    from ruth_vision.pose import OnnxRunner, PoseNetwork

    network = PoseNetwork(OnnxRunner(ONNX, "cpu", 2), "movenet", 256, 0.2)
    return "ONNX Runtime (CPU)", network.infer


def keypoint_gap(a: list[Any], b: list[Any]) -> float:
    gaps = [0.0]
    for p, q in zip(a, b, strict=False):
        sure = p.keypoints[:, 2] >= 0.3
        if sure.any():
            gaps.append(float(np.abs(p.keypoints[sure, :2] - q.keypoints[sure, :2]).max()))
    return max(gaps)


def machine(report: Report) -> str:
    import torch

    report.say(f"== gpu_device_check {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} on {platform.node()}")
    report.say(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, torch {torch.__version__}, cv2 {cv2.__version__}"
    )
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total,memory.free", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        report.say(f"nvidia-smi: {smi.stdout.strip() or smi.stderr.strip()}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        report.say(f"nvidia-smi: unavailable ({exc})")
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "none"
    report.say(f"torch CUDA {torch.version.cuda}, device cuda:0 = {name}")
    report.verdict(cuda, f"torch sees a CUDA device ({name})", cuda_only=True)
    return "cuda:0" if cuda else "cpu"


def allocation(report: Report, state: Path) -> None:
    from python_backends.gpu import DeviceAllocator
    from python_backends.gpu_ledger import GpuLedger
    from python_backends.gpu_probe import NvmlProbe, ProbeUnavailable
    from python_backends.state import StateLayout

    try:
        devices = NvmlProbe().devices()
        for d in devices:
            report.say(
                f"NVML cuda:{d.index} {d.name}: total {d.total_bytes // MIB} MiB, free {d.free_bytes // MIB} MiB"
            )
    except ProbeUnavailable as exc:
        report.say(f"NVML: unavailable ({exc})")
    ledger = GpuLedger(StateLayout(state).gpu_ledger)
    allocator = DeviceAllocator(NvmlProbe(), ledger, fallback_to_cpu=True)
    placed = allocator.allocate(
        model="pose_estimator",
        version="1",
        instance="pose_estimator_0_0",
        instance_kind="KIND_GPU",
        device_id=0,
        memory_estimate_mb=512,
    )
    report.say(f"allocator: {placed.device} ({placed.placement}): {placed.reason}")
    report.verdict(
        placed.device == "cuda:0" and placed.placement == "gpu", "pose_estimator placed on cuda:0", cuda_only=True
    )
    booked = [(r.model, r.device_index, r.bytes // MIB) for r in ledger.reservations()]
    report.verdict(
        booked == [("pose_estimator", 0, 512)], f"ledger holds its 512 MiB booking ({booked})", cuda_only=True
    )
    allocator.release(placed)
    report.verdict(ledger.reservations() == [], "release empties the ledger")


def pose_on_device(report: Report, device: str, frames_n: int) -> Any:
    from ruth_vision.pose import PoseNetwork
    from ruth_vision.pose_torch import TorchRunner

    digest = hashlib.sha256(ONNX.read_bytes()).hexdigest()
    report.verdict(digest == pinned_sha256(ONNX.name), f"{ONNX.name} matches the spec's pin ({digest[:16]}…)")
    started = time.monotonic()
    runner = TorchRunner(ONNX, 256, device)
    mode = runner.capture_cuda_graph()
    report.say(f"torch engine on {device} built in {time.monotonic() - started:.1f} s, mode: {mode}")
    network = PoseNetwork(runner, "movenet", 256, 0.2)
    label, reference = reference_engine()
    for name, frame in photographs():
        want, got = reference(frame), network.infer(frame)
        gap = keypoint_gap(want, got)
        report.verdict(
            len(want) == len(got) and gap <= 1.0,
            f"{name}: {len(got)} people on {device} vs {len(want)} on {label}, keypoints within {gap:.3f} px",
        )
    frame = photographs()[0][1]
    for _ in range(10):
        network.infer(frame)
    times = []
    for i in range(frames_n):
        f = frame.copy()
        f[0, 0] = (i % 256, i // 256 % 256, 0)
        t0 = time.perf_counter()
        network.infer(f)
        times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times))
    report.say(f"pose alone on {device}: median {ms:.2f} ms/frame, {frames_n / sum(times):.1f} frames/s ({mode})")
    return network


def fall_throughput(report: Report, network: Any, frames_n: int, streams: int) -> None:
    """fall_detection's per-frame path without Triton: decode the JPEG, pose, judge per stream (ruth_vision.fall)."""
    from ruth_vision.fall import FallConfig, assess_frame

    frame = photographs()[0][1]
    jpegs = []
    for i in range(max(frames_n, 1)):
        f = frame.copy()
        f[0, 0] = (i % 256, i // 256 % 256, 7)
        jpegs.append(cv2.imencode(".jpg", f)[1].tobytes())
    config = FallConfig()
    states: list[Any] = [None] * streams
    found = []
    started = time.perf_counter()
    for i, data in enumerate(jpegs):
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        people = network.infer(decoded)
        s = i % streams
        states[s], payload = assess_frame(states[s], 0.1 * (i // streams), people, config)
        found.append(len(payload["detections"]))
    elapsed = time.perf_counter() - started
    rate = len(jpegs) / elapsed
    report.say(f"fall_detection path, {len(jpegs)} frames over {streams} streams: {rate:.1f} frames/s")
    report.verdict(set(found) == {1}, f"the person was found in every frame ({sorted(set(found))})")
    report.verdict(rate >= 100, f"fall_detection path >= 100 frames/s (got {rate:.1f})", cuda_only=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GPU check without tritonserver (see the module docstring)")
    parser.add_argument("--allow-cpu", action="store_true", help="rehearse on a CPU host: CUDA verdicts SKIP")
    parser.add_argument("--frames", type=int, default=int(os.environ.get("FRAMES", "300")))
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "gpu-check-out")))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report(args.out, args.allow_cpu)
    try:
        device = machine(report)
        if device == "cpu" and not args.allow_cpu:
            report.verdict(False, "a CUDA device is required (use --allow-cpu to rehearse)")
        else:
            with tempfile.TemporaryDirectory() as state:
                allocation(report, Path(state))
            network = pose_on_device(report, device, args.frames)
            fall_throughput(report, network, args.frames, args.streams)
    except Exception:  # noqa: BLE001 - the report must say what broke
        report.say(traceback.format_exc())
        report.failures.append("unexpected error (traceback above)")
    report.say("== ALL CHECKS PASSED" if not report.failures else f"== FAILED: {report.failures}")
    return 0 if not report.failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
