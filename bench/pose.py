"""The pose network's cost, measured two ways (`python -m bench.pose`, `nox -s bench_pose`; `--smoke` for a minute):

1. **Engines side by side** (in process, the same frames, the same pre- and post-processing): LiteRT (today's CPU
   engine), ONNX Runtime, OpenVINO (when installed) and ONNX Runtime on a dynamically quantised int8 copy, each at
   1 and 2 threads. Cost is CPU time per frame (robust on a shared machine); accuracy is the people count and the
   largest keypoint difference against LiteRT, the engine every person model was validated on.
2. **One frame, three analytics** through the real tritonserver: each camera frame sent to fall_detection,
   geo_fencing and ppe_detection (at once, as a platform does), with pose_estimator's frame cache off and on.
   Cost is the CPU of the whole server tree (tritonserver + every stub) per camera frame, read from /proc.

Writes docs/bench/pose.md (and its raw JSON beside it). Numbers are ratios within one run: the machine is noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench import cpu, machine
from bench.harness import MODEL_REPOSITORY, REPO_ROOT, TritonHandle, jpeg, now_iso, result_of, start_triton
from bench.harness import vision_inputs as _vision_inputs
from python_backends.weights import default_weights_dir
from ruth_vision.pose import LiteRTRunner, OnnxRunner, PoseNetwork, PoseResult, TensorRunner

MOVENET_TFLITE = "movenet_multipose_lightning_fp16.tflite"
MOVENET_ONNX = "movenet_multipose_lightning.onnx"
ANALYTICS = ("fall_detection", "geo_fencing", "ppe_detection")
KEYPOINT_SCORE = 0.3  # keypoints compared between engines: those LiteRT itself is fairly sure of
DOC = REPO_ROOT / "docs" / "bench" / "pose.md"


# ---- frames -----------------------------------------------------------------------------------------------------
def person_frames() -> list[tuple[str, np.ndarray]]:
    """Real photographs that ship in scikit-image (people and not), placed as a camera would see them."""
    import skimage.data

    def bgr(rgb: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(rgb if rgb.ndim == 3 else cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB), cv2.COLOR_RGB2BGR)

    def canvas(image: np.ndarray, size: tuple[int, int] = (960, 540), scale: float = 1.0) -> np.ndarray:
        image = cv2.resize(image, None, fx=scale, fy=scale) if scale != 1.0 else image
        width, height = size
        out = np.full((height, width, 3), 120, np.uint8)
        h, w = min(image.shape[0], height), min(image.shape[1], width)
        y, x = (height - h) // 2, (width - w) // 2
        out[y : y + h, x : x + w] = image[:h, :w]
        return out

    astronaut, cameraman = bgr(skimage.data.astronaut()), bgr(skimage.data.camera())
    return [
        ("astronaut 512 px", canvas(astronaut)),
        ("astronaut 256 px", canvas(astronaut, scale=0.5)),
        ("astronaut lying", canvas(cv2.rotate(astronaut, cv2.ROTATE_90_CLOCKWISE))),
        ("cameraman", canvas(cameraman)),
        ("two people", np.hstack([canvas(astronaut, (480, 540), 0.9), canvas(cameraman, (480, 540), 0.9)])),
        ("coffee (nobody)", canvas(bgr(skimage.data.coffee()))),
    ]


# ---- engines ----------------------------------------------------------------------------------------------------
class OpenVinoRunner:
    """OpenVINO on the CPU, from the same ONNX file as ONNX Runtime (reshaped to the fixed input size)."""

    def __init__(self, weights: Path, size: int, threads: int, precision: str = "f32") -> None:
        import openvino as ov

        core = ov.Core()
        network = core.read_model(str(weights))
        network.reshape([1, size, size, 3])
        settings: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if precision != "default":  # the CPU plugin picks bf16 by itself where the CPU has it
            settings["INFERENCE_PRECISION_HINT"] = precision
        compiled = core.compile_model(network, "CPU", settings)
        self._request = compiled.create_infer_request()

    def run(self, tensor: np.ndarray) -> np.ndarray:
        self._request.infer({0: tensor})
        return np.array(self._request.get_output_tensor(0).data)


def quantized_copy(onnx: Path, workdir: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = workdir / "movenet_int8_dynamic.onnx"
    if not out.exists():
        quantize_dynamic(str(onnx), str(out), weight_type=QuantType.QUInt8)
    return out


def engine_factories(weights: Path, workdir: Path, size: int = 256) -> dict[str, Callable[[int], TensorRunner]]:
    factories: dict[str, Callable[[int], TensorRunner]] = {
        "litert": lambda t: LiteRTRunner(weights / MOVENET_TFLITE, size, t),
        "onnxruntime": lambda t: OnnxRunner(weights / MOVENET_ONNX, "cpu", t),
    }
    try:
        import openvino  # noqa: F401

        factories["openvino f32"] = lambda t: OpenVinoRunner(weights / MOVENET_ONNX, size, t)
        factories["openvino (plugin's precision)"] = lambda t: OpenVinoRunner(
            weights / MOVENET_ONNX, size, t, "default"
        )
    except ImportError:
        pass
    factories["onnxruntime int8"] = lambda t: OnnxRunner(quantized_copy(weights / MOVENET_ONNX, workdir), "cpu", t)
    return factories


def keypoint_gap(reference: Sequence[PoseResult], other: Sequence[PoseResult]) -> float | None:
    """Largest pixel distance between matching keypoints (people paired in order of score), None if none compare."""
    gaps = []
    for a, b in zip(reference, other, strict=False):
        sure = a.keypoints[:, 2] >= KEYPOINT_SCORE
        if sure.any():
            gaps.append(float(np.abs(a.keypoints[sure, :2] - b.keypoints[sure, :2]).max()))
    return max(gaps) if gaps else None


@dataclasses.dataclass
class EngineRow:
    engine: str
    threads: int
    cpu_ms: float
    wall_ms: float
    counts_equal: int
    frames: int
    max_keypoint_gap_px: float | None
    error: str | None = None


def compare_engines(
    weights: Path, frames: Sequence[tuple[str, np.ndarray]], rounds: int, threads: Sequence[int] = (1, 2)
) -> list[EngineRow]:
    """Every engine x thread count on the same frames, rounds interleaved so drift in the machine hits all alike."""
    with tempfile.TemporaryDirectory() as tmp:
        nets: dict[tuple[str, int], PoseNetwork] = {}
        errors: dict[tuple[str, int], str] = {}
        for name, factory in engine_factories(weights, Path(tmp)).items():
            for t in threads:
                try:
                    nets[(name, t)] = PoseNetwork(factory(t), "movenet", 256, 0.2)
                except Exception as exc:  # noqa: BLE001 - an engine that can't load is reported, not fatal
                    errors[(name, t)] = str(exc).splitlines()[0][:120]
        reference = nets[("litert", 2)]
        expected = [reference.infer(f) for _, f in frames]
        for net in nets.values():  # warm-up
            for _, f in frames:
                net.infer(f)
        cpu_s = dict.fromkeys(nets, 0.0)
        wall_s = dict.fromkeys(nets, 0.0)
        for _ in range(rounds):
            for key, net in nets.items():
                c, w = time.process_time(), time.perf_counter()
                for _, f in frames:
                    net.infer(f)
                cpu_s[key] += time.process_time() - c
                wall_s[key] += time.perf_counter() - w
        n = rounds * len(frames)
        rows = []
        for key, net in nets.items():
            got = [net.infer(f) for _, f in frames]
            gaps = [g for g in (keypoint_gap(e, o) for e, o in zip(expected, got, strict=True)) if g is not None]
            rows.append(
                EngineRow(
                    engine=key[0],
                    threads=key[1],
                    cpu_ms=1000 * cpu_s[key] / n,
                    wall_ms=1000 * wall_s[key] / n,
                    counts_equal=sum(len(e) == len(o) for e, o in zip(expected, got, strict=True)),
                    frames=len(frames),
                    max_keypoint_gap_px=max(gaps) if gaps else None,
                )
            )
        rows += [EngineRow(k[0], k[1], float("nan"), float("nan"), 0, len(frames), None, e) for k, e in errors.items()]
        return rows


# ---- one frame, three analytics --------------------------------------------------------------------------------
@contextlib.contextmanager
def person_server(weights: Path) -> Iterator[TritonHandle]:
    with tempfile.TemporaryDirectory() as tmp:
        handle = start_triton(
            Path(tmp),
            ["pose_estimator", *ANALYTICS],
            repository=MODEL_REPOSITORY,
            env={"RUTH_WEIGHTS_DIR": str(weights)},
        )
        try:
            yield handle
        finally:
            handle.server.stop(grace_s=30)


def set_cache(handle: TritonHandle, entries: int) -> None:
    """Reload pose_estimator with its frame cache on (`entries` > 0) or off, through the repository API."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    text = (handle.repository / "pose_estimator" / "config.pbtxt").read_text()
    config = json_format.MessageToDict(
        text_format.Parse(text, model_config_pb2.ModelConfig()), preserving_proto_field_name=True
    )
    config["parameters"]["model.cache_entries"] = {"string_value": str(entries)}
    handle.load("pose_estimator", config=config)


def camera_frame(raw: np.ndarray, index: int) -> bytes:
    """A camera never sends the same pixels twice: each frame gets its own corner pixel, so the cache can only
    answer the repeats of one frame across analytics, never a previous frame."""
    frame = raw.copy()
    frame[0, 0] = (index % 256, index // 256 % 256, index // 65536 % 256)
    return jpeg(frame)


def cache_hits(handle: TritonHandle) -> float:
    from support import metric_value

    return metric_value(handle.metrics_text(), "ruth_pose_cache_total", model="pose_estimator", result="hit")


def three_analytics(handle: TritonHandle, frames: Sequence[np.ndarray], seconds: float) -> dict[str, float]:
    """Camera frames, each sent to the three analytics at once, for `seconds`: frames/s and server CPU per frame."""
    import tritonclient.http as httpclient

    stream = str(uuid.uuid4())
    local = threading.local()  # a tritonclient HTTP client belongs to the thread that made it (gevent)

    def one(model: str, image: bytes, stamp: str) -> None:
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(handle.http_url, network_timeout=60)
        inputs = _vision_inputs(httpclient, image=image, stream_id=stream, timestamp=stamp)
        result_of(local.client.infer(model, inputs))

    pid = handle.server.process.pid
    sent = 0
    serial = int(time.monotonic() * 1000) % 10_000_000  # distinct from every earlier round's frames
    with ThreadPoolExecutor(len(ANALYTICS)) as pool:
        for n in range(2):  # warm-up
            image = camera_frame(frames[n % len(frames)], serial + n)
            list(pool.map(one, ANALYTICS, [image] * 3, [now_iso()] * 3))
        hits0 = cache_hits(handle)
        cpu0, busy0, started = tree_cpu(pid), cpu.system_busy_s(), time.monotonic()
        while time.monotonic() - started < seconds:
            image, stamp = camera_frame(frames[sent % len(frames)], serial + 10 + sent), now_iso()
            list(pool.map(one, ANALYTICS, [image] * 3, [stamp] * 3))
            sent += 1
        wall = time.monotonic() - started
        server_cpu, busy = cpu_since(cpu0, tree_cpu(pid)), cpu.system_busy_s() - busy0
        hits = cache_hits(handle) - hits0
        for _ in ANALYTICS:  # each worker closes its own client
            pool.submit(lambda: local.client.close() if hasattr(local, "client") else None).result()
    return {
        "camera_frames": sent,
        "frames_per_s": sent / wall,
        "tree_cpu_ms_per_frame": 1000 * server_cpu / max(sent, 1),
        "other_cores": max(busy - server_cpu, 0.0) / wall,  # the client and everything else on the machine
        "cache_hits_per_frame": hits / max(sent, 1),  # 2 with the cache on (the second and third analytic), 0 off
    }


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of the server and each of its processes (stubs), by pid."""
    return {p: cpu.process_cpu_s(p) for p in [pid, *cpu.children_of(pid)]}


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two `tree_cpu` readings by the processes alive at the second: a stub that exited in
    between (a reloaded model's old instance) counts nothing instead of taking its whole life's CPU away."""
    return sum(seconds - before.get(p, 0.0) for p, seconds in after.items())


def compare_cache(weights: Path, seconds: float, rounds: int) -> dict[str, Any]:
    from skimage import data

    frames = [f for _, f in person_frames()] + [cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)]
    out: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    with person_server(weights) as handle:
        for _ in range(rounds):  # off, on, off, on...: drift in the machine hits both alike
            for mode, entries in (("off", 0), ("on", 16)):
                set_cache(handle, entries)
                time.sleep(2)  # the previous instance's stub goes away
                out[mode].append(three_analytics(handle, frames, seconds))
    summary: dict[str, Any] = {"rounds": out}
    for mode, points in out.items():
        frames_total = sum(p["camera_frames"] for p in points)
        cpu_ms = sum(p["tree_cpu_ms_per_frame"] * p["camera_frames"] for p in points) / max(frames_total, 1)
        summary[mode] = {
            "camera_frames": frames_total,
            "tree_cpu_ms_per_frame": cpu_ms,
            "frames_per_core_s": 1000 / cpu_ms if cpu_ms else float("nan"),
            "frames_per_s": float(np.median([p["frames_per_s"] for p in points])),
            "cache_hits_per_frame": sum(p["cache_hits_per_frame"] * p["camera_frames"] for p in points)
            / max(frames_total, 1),
        }
    summary["saving"] = 1 - summary["on"]["tree_cpu_ms_per_frame"] / summary["off"]["tree_cpu_ms_per_frame"]
    return summary


# ---- report -----------------------------------------------------------------------------------------------------
def render(engines: Sequence[EngineRow], cache: dict[str, Any] | None, meta: dict[str, Any]) -> str:
    def num(v: float | None, fmt: str = "{:.1f}") -> str:
        return "-" if v is None or v != v else fmt.format(v)

    lines = [
        "# Pose network cost (generated by `python -m bench.pose`; do not edit)",
        "",
        f"Run {meta['date']} on {meta['cpu']} ({meta['cores']} cores), commit {meta['commit']}, "
        f"{meta['rounds']} rounds. {meta['note']}",
        "",
        "## Engines side by side (in process, MoveNet MultiPose Lightning, 256 px input)",
        "",
        f"The same {engines[0].frames if engines else 0} frames for every engine (photographs from scikit-image "
        "placed on a 960x540 canvas: one, two and no people, upright and lying); rounds interleaved. *CPU ms* is "
        "process CPU time per frame (what a core pays), *wall ms* the latency of one frame. Accuracy against LiteRT "
        f"at 2 threads: frames with the same people count, and the largest keypoint gap (keypoints LiteRT scores "
        f">= {KEYPOINT_SCORE}).",
        "",
        "| engine | threads | CPU ms / frame | wall ms / frame | frames/s per core | same count | max keypoint gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(engines, key=lambda r: (r.error is not None, r.cpu_ms)):
        if r.error:
            lines.append(f"| {r.engine} | {r.threads} | failed: {r.error} | | | | |")
            continue
        lines.append(
            f"| {r.engine} | {r.threads} | {num(r.cpu_ms)} | {num(r.wall_ms)} | {num(1000 / r.cpu_ms)} | "
            f"{r.counts_equal}/{r.frames} | {num(r.max_keypoint_gap_px, '{:.2f}')} px |"
        )
    if cache:
        off, on = cache["off"], cache["on"]
        lines += [
            "",
            "## One camera frame, three analytics (real tritonserver)",
            "",
            "Each camera frame goes to fall_detection, geo_fencing and ppe_detection at once, as a platform sends it; "
            "pose_estimator's frame cache (docs/pose-estimator.md) off, then on, alternately. Every camera frame is "
            "new pixels (a camera never repeats itself), so the cache can answer only the second and third analytic "
            "of the same frame. Cost is the CPU of the whole server (tritonserver and every stub) per camera frame; "
            "the cpu profile's pose passes (256 px + the YOLOX person detector).",
            "",
            "| frame cache | camera frames | server CPU ms / frame | camera frames/s per core | frames/s (wall) | "
            "cache hits / frame |",
            "|---|---|---|---|---|---|",
            f"| off (before) | {off['camera_frames']} | {num(off['tree_cpu_ms_per_frame'])} | "
            f"{num(off['frames_per_core_s'], '{:.2f}')} | {num(off['frames_per_s'])} | "
            f"{num(off['cache_hits_per_frame'], '{:.2f}')} |",
            f"| on (after) | {on['camera_frames']} | {num(on['tree_cpu_ms_per_frame'])} | "
            f"{num(on['frames_per_core_s'], '{:.2f}')} | {num(on['frames_per_s'])} | "
            f"{num(on['cache_hits_per_frame'], '{:.2f}')} |",
            "",
            f"Saving: **{100 * cache['saving']:.0f} %** of the server's CPU per camera frame.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="one short round of each, report to --out only")
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--no-server", action="store_true", help="engines only")
    args = parser.parse_args(argv)
    rounds, seconds = (1, 3.0) if args.smoke else (6, 20.0)
    weights = default_weights_dir()
    engines = compare_engines(weights, person_frames(), rounds=rounds if args.smoke else 10)
    cache = None if args.no_server else compare_cache(weights, seconds, 1 if args.smoke else 3)
    info = machine.describe(REPO_ROOT, server_version=None, perf_analyzer=None)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": info.get("cpu", "?"),
        "cores": info.get("cores", "?"),
        "commit": (info.get("git_commit") or "?")[:10],
        "rounds": rounds,
        "note": "Smoke run: numbers are indicative only." if args.smoke else "",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(engines, cache, meta))
    raw = {"meta": meta, "engines": [dataclasses.asdict(r) for r in engines], "cache": cache}
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
