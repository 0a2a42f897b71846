#!/usr/bin/env bash
# GPU check for the `gpu` profile: pose_estimator must run MoveNet on ONNX Runtime's CUDA execution provider, on the
# device the allocator granted, through the real tritonserver. One prepared script for a machine with an NVIDIA GPU;
# it proves what the CPU-only test suite can't (docs/pose-estimator.md, "GPU check").
#
#   scripts/gpu_check.sh               on a GPU host; exit 0 only if every check passed
#   scripts/gpu_check.sh --allow-cpu   plumbing rehearsal on a CPU host: cpu profile, CUDA checks reported as SKIP
#
# Environment: OUT (default ./gpu-check-out) receives gpu-check.txt (everything printed here) and tritonserver.log.
# FRAMES (200) requests per measurement, CLIENTS (8) concurrent clients. WHEELHOUSE: a folder of wheels to install
# from when there is no .venv (the host may have no network); without it pip uses its index.
#
# Steps: preflight (driver, Python, numpy < 2, onnxruntime-gpu with CUDAExecutionProvider, tritonserver) -> weights
# -> start Triton (gpu profile) -> NVML numbers -> load pose_estimator (KIND_GPU) -> the allocator's decision and the
# engine from the log -> GPU ledger entry -> 200 frames: latency and throughput -> fall_detection end to end
# (target >= 100 frames/s) -> unload -> ledger released -> restart with no GPU memory to spare: the fallback runs
# LiteRT on the CPU and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
OUT="${OUT:-$REPO/gpu-check-out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.txt") 2>&1
ALLOW_CPU=0
if [ "${1:-}" = "--allow-cpu" ]; then ALLOW_CPU=1; fi
export ALLOW_CPU OUT REPO FRAMES="${FRAMES:-200}" CLIENTS="${CLIENTS:-8}" PYTHONUNBUFFERED=1

echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), allow_cpu=$ALLOW_CPU"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,memory.free --format=csv || true
elif [ "$ALLOW_CPU" = 0 ]; then
  echo "FAIL nvidia-smi not found: this is not a GPU host (use --allow-cpu to rehearse)"; exit 2
fi

# --- Python environment ---------------------------------------------------------------------------------------
pip_source=()
if [ -n "${WHEELHOUSE:-}" ]; then pip_source=(--no-index --find-links "$WHEELHOUSE"); fi
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import ruthctl' 2>/dev/null; then
  PY="$REPO/.venv/bin/python"
else
  echo "== no usable .venv: installing .[dev,gpu,weights] into /tmp/ruth-gpu-venv"
  python3 -m venv /tmp/ruth-gpu-venv
  PY=/tmp/ruth-gpu-venv/bin/python
  "$PY" -m pip install -q ${pip_source[@]+"${pip_source[@]}"} -e '.[dev,gpu,weights]'
fi
if [ "$ALLOW_CPU" = 0 ] && ! "$PY" -m pip show -q onnxruntime-gpu >/dev/null 2>&1; then
  echo "== onnxruntime-gpu missing: installing the gpu extra"
  "$PY" -m pip install -q ${pip_source[@]+"${pip_source[@]}"} -e '.[gpu]'
fi
# onnxruntime (CPU, from the dev extra and the MoveNet wheel's pin) and onnxruntime-gpu both own the `onnxruntime`
# package: whichever was installed last wins its files. Keep only the GPU build.
if [ "$ALLOW_CPU" = 0 ] && "$PY" -m pip show -q onnxruntime >/dev/null 2>&1; then
  ort_gpu="$("$PY" -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))')"
  echo "== removing the CPU onnxruntime; reinstalling onnxruntime-gpu==$ort_gpu over it"
  "$PY" -m pip uninstall -y -q onnxruntime
  "$PY" -m pip install -q --force-reinstall --no-deps ${pip_source[@]+"${pip_source[@]}"} "onnxruntime-gpu==$ort_gpu"
fi
"$PY" - <<'EOF'
import os, sys
import numpy
print(f"python {sys.version.split()[0]} at {sys.executable}; numpy {numpy.__version__}")
if not numpy.__version__.startswith("1."):
    sys.exit("FAIL numpy must be < 2 (Triton 2.51's Python backend misreads BYTES tensors under numpy 2)")
import onnxruntime as ort
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
providers = ort.get_available_providers()
print(f"onnxruntime {ort.__version__} ({ort.get_device()}): {providers}")
if "CUDAExecutionProvider" not in providers and os.environ["ALLOW_CPU"] != "1":
    sys.exit("FAIL this onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu[cuda,cudnn] (the gpu extra)")
from ruthctl.server import TritonInstall
print(f"tritonserver: {TritonInstall.locate()}")
EOF
"$(dirname "$PY")/ruthctl" weights fetch

# --- the check itself -------------------------------------------------------------------------------------------
"$PY" - <<'EOF'
"""Drives a real tritonserver through the project's own launcher; prints every number it judges by."""

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import tritonclient.http as httpclient

from python_backends.gpu_ledger import GpuLedger
from python_backends.gpu_probe import NvmlProbe, ProbeUnavailable
from python_backends.weights import default_weights_dir
from ruthctl.supervise import build_server
from ruthctl.settings import Settings

REPO, OUT = Path(os.environ["REPO"]), Path(os.environ["OUT"])
FRAMES, CLIENTS = int(os.environ["FRAMES"]), int(os.environ["CLIENTS"])
ALLOW_CPU = os.environ["ALLOW_CPU"] == "1"
MIB = 1024 * 1024
failures: list[str] = []


def verdict(ok: bool, what: str, *, cuda_only: bool = False) -> None:
    if cuda_only and ALLOW_CPU:
        print(f"SKIP {what} (no GPU: --allow-cpu)")
        return
    print(f"{'PASS' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nvml(label: str) -> float:
    """Prints what the allocator's probe sees; returns MiB used on cuda:0 (0 without NVML)."""
    try:
        devices = NvmlProbe().devices()
    except ProbeUnavailable as exc:
        print(f"NVML {label}: unavailable ({exc})")
        return 0.0
    for d in devices:
        used = (d.total_bytes - d.free_bytes) / MIB
        print(f"NVML {label}: cuda:{d.index} {d.name}: total {d.total_bytes / MIB:.0f} MiB, free "
              f"{d.free_bytes / MIB:.0f} MiB, used {used:.0f} MiB")
    return next(((d.total_bytes - d.free_bytes) / MIB for d in devices if d.index == 0), 0.0)


def start(tag: str, **overrides: object):
    state = Path(tempfile.mkdtemp(prefix=f"ruth-gpu-{tag}-"))
    settings = Settings(
        models_root=REPO / "model_repository",
        ruth_state_dir=state,
        ruth_weights_dir=default_weights_dir(),
        ruth_http_port=free_port(),
        ruth_grpc_port=free_port(),
        ruth_metrics_port=free_port(),
        ruth_ai_profile="cpu" if ALLOW_CPU else "gpu",
        ai_runtime_hardware="cpu" if ALLOW_CPU else "gpu",
        graceful_shutdown_timeout_seconds=15,
        **overrides,
    )
    log = state / "tritonserver.log"
    server = build_server(settings, log_file=log)
    server.start()
    server.wait_live(timeout_s=120)
    print(f"== tritonserver ({tag}) live at {server.http_url}, profile {settings.ruth_ai_profile.value}, state {state}")
    return server, state, log


def client(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url, network_timeout=120.0, connection_timeout=120.0)


def load(server, name: str) -> float:
    started = time.monotonic()
    with contextlib.closing(client(server)) as c:
        c.load_model(name, headers={"ruth-admin-token": server.flags.admin_token or ""})
    return time.monotonic() - started


def unload(server, name: str) -> None:
    headers = {"ruth-admin-token": server.flags.admin_token or ""}
    with contextlib.closing(client(server)) as c:
        c.unload_model(name, headers=headers)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            entry = next((e for e in c.get_model_repository_index(headers=headers) if e.get("name") == name), {})
            if entry.get("state") != "READY":
                return
            time.sleep(0.2)
    raise RuntimeError(f"{name} still READY 60 s after unload")


def log_lines(log: Path, *needles: str) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [line for line in text.splitlines() if all(n in line for n in needles)]


def ledger(state: Path, label: str) -> list:
    path = state / "gpu-ledger.json"
    raw = path.read_text() if path.exists() else "(no ledger file)"
    print(f"GPU ledger {label} ({path}):\n{raw}")
    return GpuLedger(path).reservations()


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    return f"mean {statistics.fmean(ms):.2f} ms, p50 {pick(0.5):.2f}, p95 {pick(0.95):.2f}, p99 {pick(0.99):.2f}"


def unique(frame: np.ndarray, i: int) -> np.ndarray:
    """The frame with a corner pixel set from `i`: every request is a new frame, so pose_estimator's frame cache
    (docs/pose-estimator.md) can't answer it and the network really runs."""
    out = frame.copy()
    out[0, 0] = (i % 256, (i // 256) % 256, (i // 65536) % 256)
    return out


def frame_input(frames: np.ndarray) -> list:
    tensor = httpclient.InferInput("FRAME", list(frames.shape), "UINT8")
    tensor.set_data_from_numpy(frames)
    return [tensor]


def vision_inputs(frame: np.ndarray, stream: str, timestamp: str) -> list:
    inputs = frame_input(frame[np.newaxis])
    for name, value in (("STREAM_ID", stream), ("TIMESTAMP", timestamp)):
        tensor = httpclient.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value.encode()]], dtype=np.object_))
        inputs.append(tensor)
    return inputs


def concurrently(server, jobs: list, run) -> float:
    """Runs `run(client, job)` for every job on CLIENTS threads, each with its own connection; returns seconds.
    The first failure is raised."""
    local = threading.local()

    def work(job):
        if not hasattr(local, "client"):
            local.client = client(server)
        return run(local.client, job)

    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(work, jobs))
    return time.monotonic() - started


def server_stats(server, name: str) -> None:
    with contextlib.closing(client(server)) as c:
        stats = c.get_inference_statistics(name)["model_stats"][0]
    executions = max(1, int(stats.get("execution_count", 0)))
    compute = int(stats["inference_stats"]["compute_infer"]["ns"]) / executions / 1e6
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}
    print(f"server side {name}: {stats.get('inference_count')} frames in {executions} executions, "
          f"compute_infer {compute:.2f} ms per execution, batch sizes {dict(sorted(batches.items()))}")


person = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)  # 512x512, one person

# --- 1. gpu profile: pose_estimator on the granted device ------------------------------------------------------
used_before = nvml("before the server")
server, state, log = start("gpu")
try:
    took = load(server, "pose_estimator")
    print(f"pose_estimator loaded in {took:.1f} s")
    # base.py logs the allocator's decision with its numbers (NVML free/total, reserve, ledger bookings); the model
    # logs the engine it built on that device.
    for line in log_lines(log, "[ruth.model ", "pose_estimator", ": device ") + log_lines(log, "ruth.model.pose_est"):
        print(f"log: {line.strip()}")
    placed = log_lines(log, "[ruth.model ", "pose_estimator", ": device cuda:0 (gpu)", "fits: estimate 512 MiB")
    engine = log_lines(log, "ruth.model.pose_estimator", "engine onnx", "CUDAExecutionProvider", "on cuda:0")
    verdict(bool(placed), "the allocator placed pose_estimator on cuda:0 from NVML numbers (log above)", cuda_only=True)
    verdict(bool(engine), "pose_estimator runs engine onnx with CUDAExecutionProvider on cuda:0", cuda_only=True)
    grown = nvml("after loading pose_estimator") - used_before
    verdict(grown >= 50, f"GPU memory in use grew by {grown:.0f} MiB with the model loaded (a CUDA session)",
            cuda_only=True)
    if not ALLOW_CPU:
        apps = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv"],
            capture_output=True, text=True, check=False,
        )
        print(f"nvidia-smi compute apps:\n{apps.stdout.strip()}")
    booked = ledger(state, "after load")
    verdict(
        [(r.model, r.device_index, r.bytes // MIB) for r in booked] == [("pose_estimator", 0, 512)],
        "the ledger holds one 512 MiB reservation of pose_estimator on cuda:0",
        cuda_only=True,
    )

    # pose_estimator alone: latency one frame at a time, then throughput with CLIENTS clients (dynamic batching)
    with contextlib.closing(client(server)) as c:
        for i in range(10):
            c.infer("pose_estimator", frame_input(unique(person, i)[np.newaxis]))
        latencies, people = [], []
        for i in range(FRAMES):
            single = unique(person, 1000 + i)[np.newaxis]
            t0 = time.monotonic()
            response = c.infer("pose_estimator", frame_input(single))
            latencies.append(time.monotonic() - t0)
            people.append(int(response.as_numpy("COUNT")[0][0]))
    print(f"pose_estimator, {FRAMES} frames one at a time (512x512, HTTP): {percentiles(latencies)}; "
          f"{FRAMES / sum(latencies):.1f} frames/s")
    verdict(set(people) == {1}, f"every frame found the one person (counts seen: {sorted(set(people))})")
    elapsed = concurrently(
        server, list(range(FRAMES)), lambda c, i: c.infer("pose_estimator", frame_input(unique(person, 5000 + i)[np.newaxis]))
    )
    print(f"pose_estimator, {FRAMES} frames from {CLIENTS} clients: {FRAMES / elapsed:.1f} frames/s")
    server_stats(server, "pose_estimator")

    # fall_detection end to end (KIND_CPU instances calling pose_estimator through BLS), one stream per client
    took = load(server, "fall_detection")
    print(f"fall_detection loaded in {took:.1f} s")
    base = datetime.now(timezone.utc) - timedelta(minutes=10)
    per_stream = max(1, FRAMES // CLIENTS)
    found: list[int] = []

    def camera(c, job):
        """One camera: its frames in order, 10 frames/s of frame time."""
        stream, first, count = job
        for i in range(first, first + count):
            stamp = (base + timedelta(seconds=0.1 * i)).isoformat()
            response = c.infer("fall_detection", vision_inputs(unique(person, 10000 * (1 + streams.index(stream)) + i), stream, stamp))
            found.append(len(json.loads(response.as_numpy("RESULT")[0][0])["detections"]))

    streams = [str(uuid.uuid4()) for _ in range(CLIENTS)]
    concurrently(server, [(s, 0, 2) for s in streams], camera)  # warm-up: each stream's first frames
    found.clear()
    elapsed = concurrently(server, [(s, 2, per_stream) for s in streams], camera)
    rate = len(found) / elapsed
    print(f"fall_detection end to end, {len(found)} frames over {CLIENTS} streams: {rate:.1f} frames/s "
          f"({elapsed * 1000 / len(found):.2f} ms a frame)")
    verdict(set(found) == {1}, f"fall_detection saw the person in every frame (detections: {sorted(set(found))})")
    verdict(rate >= 100, f"fall_detection end to end >= 100 frames/s (got {rate:.1f})", cuda_only=True)
    server_stats(server, "fall_detection")

    unload(server, "fall_detection")
    unload(server, "pose_estimator")
    left = ledger(state, "after unload")
    verdict(left == [], "unloading pose_estimator released its ledger reservation")
    nvml("after unload")
finally:
    server.stop(grace_s=30)
    (OUT / "tritonserver.log").write_text(log.read_text(errors="replace")[-4_000_000:] if log.exists() else "")

# --- 2. no GPU memory to spare: the allocator falls back and the model says which engine runs ------------------
if not ALLOW_CPU:
    server, state, log = start("fallback", gpu_memory_reserve_mb=1_000_000)
    try:
        load(server, "pose_estimator")
        for line in log_lines(log, "ruth.model.pose_estimator"):
            print(f"log: {line.strip()}")
        verdict(
            bool(log_lines(log, "ruth.model.pose_estimator", "engine litert", "because the allocator fell back")),
            "with no GPU memory to spare pose_estimator falls back to LiteRT on the CPU and logs it (WARNING)",
        )
        with contextlib.closing(client(server)) as c:
            count = int(c.infer("pose_estimator", frame_input(person[np.newaxis])).as_numpy("COUNT")[0][0])
        verdict(count == 1, "the fallback instance still finds the person")
        verdict(ledger(state, "fallback") == [], "a CPU fallback books nothing in the ledger")
    finally:
        server.stop(grace_s=30)

print(f"\n== {'ALL CHECKS PASSED' if not failures else f'{len(failures)} FAILED: ' + '; '.join(failures)}")
sys.exit(1 if failures else 0)
EOF
