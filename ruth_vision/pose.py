"""Multi-person pose estimation: one network pass gives each person's box and 17 COCO keypoints.

The three person-centric models (fall, geo-fencing, PPE) all start from the same poses, so the network sits behind
one small interface (`PoseEngine`) and everything about it that varies (runtime, weights, output layout) is data in
the model spec, not code: MoveNet MultiPose on LiteRT out of the box, the same network (or a user's YOLO-pose export)
on ONNX Runtime, with the CUDA execution provider on a GPU.

Every coordinate that leaves this module is in the ORIGINAL frame's pixels: the letterbox is undone here, once.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "KEYPOINT_NAMES",
    "POSE_ROW_WIDTH",
    "EngineLoadError",
    "Letterbox",
    "LiteRTRunner",
    "MultiScalePose",
    "OnnxRunner",
    "PoseEngine",
    "PoseEngineConfig",
    "PoseNetwork",
    "PoseResult",
    "YoloxPersonDetector",
    "build_engine",
    "decode_movenet",
    "decode_yolo_pose",
    "estimate_via",
    "keypoints_json",
    "merge_people",
    "pack_pose_outputs",
    "poses_from_array",
    "poses_to_array",
    "split_pose_outputs",
]

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
#: One person on the wire (pose_estimator's POSES row): 17 x (x, y, score), then x1, y1, x2, y2, then score.
POSE_ROW_WIDTH = NUM_KEYPOINTS * 3 + 4 + 1


class EngineLoadError(RuntimeError):
    """The pose network can't be loaded (missing runtime, unreadable weights, unsupported device)."""


@dataclasses.dataclass(frozen=True)
class PoseResult:
    """One person. `keypoints` is (17, 3) float32: x, y in original-frame pixels, and the keypoint's score."""

    box: tuple[float, float, float, float]
    keypoints: np.ndarray
    score: float

    def to_row(self) -> np.ndarray:
        row = np.empty(POSE_ROW_WIDTH, dtype=np.float32)
        row[: NUM_KEYPOINTS * 3] = self.keypoints.reshape(-1)
        row[NUM_KEYPOINTS * 3 : NUM_KEYPOINTS * 3 + 4] = self.box
        row[-1] = self.score
        return row

    @classmethod
    def from_row(cls, row: np.ndarray) -> PoseResult:
        if row.shape != (POSE_ROW_WIDTH,):
            raise ValueError(f"a pose row has {POSE_ROW_WIDTH} values, got shape {row.shape}")
        keypoints = np.asarray(row[: NUM_KEYPOINTS * 3], dtype=np.float32).reshape(NUM_KEYPOINTS, 3).copy()
        x1, y1, x2, y2 = (float(v) for v in row[NUM_KEYPOINTS * 3 : NUM_KEYPOINTS * 3 + 4])
        return cls(box=(x1, y1, x2, y2), keypoints=keypoints, score=float(row[-1]))


def keypoints_json(keypoints: np.ndarray) -> list[dict[str, Any]]:
    """Keypoints as the original runtime's detections carried them ({x, y, confidence}), plus the name."""
    return [
        {"name": name, "x": round(float(x), 2), "y": round(float(y), 2), "confidence": round(float(s), 4)}
        for name, (x, y, s) in zip(KEYPOINT_NAMES, keypoints, strict=True)
    ]


def poses_to_array(poses: Sequence[PoseResult]) -> np.ndarray:
    """The POSES tensor of one frame: float32 [N, 56] (N may be 0)."""
    if not poses:
        return np.zeros((0, POSE_ROW_WIDTH), dtype=np.float32)
    return np.stack([p.to_row() for p in poses])


def poses_from_array(array: np.ndarray) -> list[PoseResult]:
    """Inverse of `poses_to_array`; accepts a leading batch axis of 1 (what a BLS response carries)."""
    rows = np.asarray(array, dtype=np.float32)
    if rows.ndim == 3 and rows.shape[0] == 1:
        rows = rows[0]
    if rows.ndim != 2 or rows.shape[1] != POSE_ROW_WIDTH:
        raise ValueError(f"POSES must be [N, {POSE_ROW_WIDTH}], got shape {rows.shape}")
    return [PoseResult.from_row(r) for r in rows]


def pack_pose_outputs(per_frame: Sequence[Sequence[PoseResult]]) -> dict[str, np.ndarray]:
    """pose_estimator's outputs for a batch of B frames: POSES float32 [B, N, 56] (N = the most people in any
    frame, shorter frames zero-padded) and COUNT int32 [B, 1] (how many rows of each frame are real)."""
    most = max((len(people) for people in per_frame), default=0)
    poses = np.zeros((len(per_frame), most, POSE_ROW_WIDTH), dtype=np.float32)
    for i, people in enumerate(per_frame):
        if people:
            poses[i, : len(people)] = poses_to_array(people)
    count = np.asarray([[len(people)] for people in per_frame], dtype=np.int32).reshape(len(per_frame), 1)
    return {"POSES": poses, "COUNT": count}


def split_pose_outputs(poses: np.ndarray, count: np.ndarray) -> list[list[PoseResult]]:
    """Inverse of `pack_pose_outputs`."""
    rows = np.asarray(poses, dtype=np.float32)
    counts = np.asarray(count).reshape(-1)
    if rows.ndim != 3 or rows.shape[0] != counts.shape[0] or rows.shape[2] != POSE_ROW_WIDTH:
        raise ValueError(f"POSES {rows.shape} and COUNT {np.asarray(count).shape} do not describe one batch")
    if (counts < 0).any() or (counts > rows.shape[1]).any():
        raise ValueError(f"COUNT {counts.tolist()} exceeds the {rows.shape[1]} rows of POSES")
    return [poses_from_array(rows[i, : int(n)]) for i, n in enumerate(counts)]


def estimate_via(
    call: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]], frames: Sequence[np.ndarray]
) -> list[list[PoseResult] | Exception]:
    """Poses for `frames` through a callee shaped like pose_estimator (FRAME [B, H, W, 3] -> POSES, COUNT): one
    call per distinct frame size, so a batch from same-sized cameras costs one round trip. A failed call fails
    only the frames it carried (their slot holds the exception)."""
    results: list[list[PoseResult] | Exception] = [ValueError("not estimated")] * len(frames)
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, frame in enumerate(frames):
        groups.setdefault(tuple(frame.shape), []).append(index)
    for indices in groups.values():
        try:
            outputs = call({"FRAME": np.stack([frames[i] for i in indices])})
            per_frame = split_pose_outputs(outputs["POSES"], outputs["COUNT"])
            if len(per_frame) != len(indices):
                raise ValueError(f"the pose model answered {len(per_frame)} frames for {len(indices)}")
        except Exception as exc:  # handed back per frame: the caller turns it into that frame's error
            for i in indices:
                results[i] = exc
            continue
        for i, people in zip(indices, per_frame, strict=True):
            results[i] = people
    return results


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """Aspect-preserving resize into a `size` x `size` canvas, centred; remembers how to map back.

    A plain resize (what the original runtime did) squashes people and returns coordinates in the wrong space.
    """

    scale: float
    pad_x: int
    pad_y: int
    size: int
    width: int
    height: int

    @classmethod
    def fit(cls, width: int, height: int, size: int) -> Letterbox:
        if width <= 0 or height <= 0 or size <= 0:
            raise ValueError(f"cannot letterbox a {width}x{height} frame into {size}")
        scale = min(size / width, size / height)
        resized_w, resized_h = max(1, round(width * scale)), max(1, round(height * scale))
        return cls(scale, (size - resized_w) // 2, (size - resized_h) // 2, size, width, height)

    def apply(self, frame: np.ndarray, pad_value: int = 0) -> np.ndarray:
        resized_w = max(1, round(self.width * self.scale))
        resized_h = max(1, round(self.height * self.scale))
        interpolation = cv2.INTER_AREA if self.scale < 1.0 else cv2.INTER_LINEAR
        resized = cv2.resize(frame, (resized_w, resized_h), interpolation=interpolation)
        canvas = np.full((self.size, self.size, 3), pad_value, dtype=np.uint8)
        canvas[self.pad_y : self.pad_y + resized_h, self.pad_x : self.pad_x + resized_w] = resized
        return canvas

    def to_frame(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canvas pixels -> original-frame pixels, clipped to the frame."""
        fx = np.clip((np.asarray(x, dtype=np.float32) - self.pad_x) / self.scale, 0.0, self.width - 1)
        fy = np.clip((np.asarray(y, dtype=np.float32) - self.pad_y) / self.scale, 0.0, self.height - 1)
        return fx, fy


def decode_movenet(raw: np.ndarray, box: Letterbox, min_score: float) -> list[PoseResult]:
    """MoveNet MultiPose output [1, 6, 56]: per person 17 x (y, x, score) normalised to the canvas, then
    (ymin, xmin, ymax, xmax), then the person score."""
    rows = np.asarray(raw, dtype=np.float32).reshape(-1, POSE_ROW_WIDTH)
    results: list[PoseResult] = []
    for row in rows:
        score = float(row[55])
        if score < min_score:
            continue
        yxs = row[:51].reshape(NUM_KEYPOINTS, 3)
        kx, ky = box.to_frame(yxs[:, 1] * box.size, yxs[:, 0] * box.size)
        bx, by = box.to_frame(row[[52, 54]] * box.size, row[[51, 53]] * box.size)
        if bx[1] <= bx[0] or by[1] <= by[0]:
            continue
        keypoints = np.stack([kx, ky, yxs[:, 2]], axis=1).astype(np.float32)
        results.append(PoseResult((float(bx[0]), float(by[0]), float(bx[1]), float(by[1])), keypoints, score))
    results.sort(key=lambda p: -p.score)
    return results


def _nms(boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    order = np.argsort(-scores)
    keep: list[int] = []
    areas = np.maximum(0, boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * np.maximum(0, boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        ix1 = np.maximum(boxes_xyxy[i, 0], boxes_xyxy[rest, 0])
        iy1 = np.maximum(boxes_xyxy[i, 1], boxes_xyxy[rest, 1])
        ix2 = np.minimum(boxes_xyxy[i, 2], boxes_xyxy[rest, 2])
        iy2 = np.minimum(boxes_xyxy[i, 3], boxes_xyxy[rest, 3])
        inter = np.maximum(0, ix2 - ix1) * np.maximum(0, iy2 - iy1)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return keep


def decode_yolo_pose(
    raw: np.ndarray, box: Letterbox, min_score: float, iou_threshold: float = 0.45, max_people: int = 20
) -> list[PoseResult]:
    """Ultralytics YOLO-pose ONNX output [1, 56, A] (or [1, A, 56]): cx, cy, w, h in canvas pixels, person score,
    then 17 x (x, y, visibility). Non-maximum suppression here, because the export leaves it out."""
    preds = np.asarray(raw, dtype=np.float32)
    preds = preds.reshape(preds.shape[-2], preds.shape[-1])
    if preds.shape[0] == POSE_ROW_WIDTH and preds.shape[1] != POSE_ROW_WIDTH:
        preds = preds.T
    if preds.shape[1] != POSE_ROW_WIDTH:
        raise ValueError(f"YOLO-pose output must have {POSE_ROW_WIDTH} values per anchor, got {raw.shape}")
    preds = preds[preds[:, 4] >= min_score]
    if preds.size == 0:
        return []
    xyxy = np.stack(
        [
            preds[:, 0] - preds[:, 2] / 2,
            preds[:, 1] - preds[:, 3] / 2,
            preds[:, 0] + preds[:, 2] / 2,
            preds[:, 1] + preds[:, 3] / 2,
        ],
        axis=1,
    )
    results: list[PoseResult] = []
    for i in _nms(xyxy, preds[:, 4], iou_threshold)[:max_people]:
        kps = preds[i, 5:].reshape(NUM_KEYPOINTS, 3)
        kx, ky = box.to_frame(kps[:, 0], kps[:, 1])
        bx, by = box.to_frame(xyxy[i, [0, 2]], xyxy[i, [1, 3]])
        keypoints = np.stack([kx, ky, kps[:, 2]], axis=1).astype(np.float32)
        xyxy_frame = (float(bx[0]), float(by[0]), float(bx[1]), float(by[1]))
        results.append(PoseResult(xyxy_frame, keypoints, float(preds[i, 4])))
    return results


class TensorRunner(Protocol):
    """Runs the network on one prepared input tensor and returns its first output."""

    def run(self, tensor: np.ndarray) -> np.ndarray: ...


class LiteRTRunner:
    """TensorFlow Lite (LiteRT) on the CPU. The MultiPose graph is built for batch 1 (its SQUEEZE ops refuse
    anything else), so a batch is a loop of invokes."""

    def __init__(self, weights: Path, size: int, threads: int = 2) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # pragma: no cover - ai-edge-litert is a core dependency
            raise EngineLoadError(f"ai-edge-litert is not installed ({exc}); `pip install ai-edge-litert`") from exc
        try:
            self._interpreter = Interpreter(model_path=str(weights), num_threads=threads)
            index = self._interpreter.get_input_details()[0]["index"]
            self._interpreter.resize_tensor_input(index, (1, size, size, 3))
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EngineLoadError(f"LiteRT cannot load {weights}: {exc}") from exc
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]

    def run(self, tensor: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._input, tensor)
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output))  # copy: the next invoke reuses the buffer


def onnx_providers(device: str) -> list[Any]:
    """Execution providers for a device string from the allocator ('cpu', 'cuda', 'cuda:N')."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return [("CUDAExecutionProvider", {"device_id": int(index or 0)})]
    raise EngineLoadError(f"unsupported device {device!r} for ONNX Runtime (expected cpu or cuda:N)")


class OnnxRunner:
    """ONNX Runtime, imported only when a spec asks for it. On `cuda:N` the CUDA execution provider is REQUIRED:
    if ONNX Runtime silently fell back to the CPU, a GPU deployment would run at CPU speed unnoticed."""

    def __init__(
        self,
        weights: Path,
        device: str = "cpu",
        threads: int = 2,
        importer: Callable[[str], Any] = importlib.import_module,
    ) -> None:
        try:
            ort = importer("onnxruntime")
        except ImportError as exc:
            raise EngineLoadError(
                "the spec selects the ONNX engine but onnxruntime is not installed: install `onnxruntime` "
                "(CPU) or `onnxruntime-gpu` (CUDA), or set model.engine to litert"
            ) from exc
        providers = onnx_providers(device)
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        preload = getattr(ort, "preload_dlls", None)
        if wanted == "CUDAExecutionProvider" and callable(preload):
            preload()  # CUDA/cuDNN from the nvidia-* wheels of onnxruntime-gpu[cuda,cudnn]; else the system's
        if wanted not in ort.get_available_providers():
            raise EngineLoadError(
                f"{wanted} is not available in this onnxruntime build (has {ort.get_available_providers()}); "
                "install onnxruntime-gpu matching the CUDA runtime for a cuda device"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(weights), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            raise EngineLoadError(f"ONNX Runtime cannot load {weights}: {exc}") from exc
        if wanted not in self._session.get_providers():
            enabled = self._session.get_providers()
            raise EngineLoadError(f"ONNX Runtime did not enable {wanted} for {weights} (enabled: {enabled})")
        self._input = self._session.get_inputs()[0]
        self.providers: list[str] = list(self._session.get_providers())

    @property
    def input_type(self) -> str:
        return str(self._input.type)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self._input.name: tensor})[0])


class PoseEngine(Protocol):
    """What the models need from a pose network; any runtime/weights pair that returns `PoseResult`s fits."""

    def infer(self, frame_bgr: np.ndarray) -> list[PoseResult]: ...

    def infer_batch(self, frames_bgr: Sequence[np.ndarray]) -> list[list[PoseResult]]: ...


class PoseNetwork:
    """A runner plus the pre- and post-processing of one output layout (`movenet` or `yolo_pose`)."""

    def __init__(
        self,
        runner: TensorRunner,
        layout: Literal["movenet", "yolo_pose"],
        input_size: int,
        min_score: float,
        iou_threshold: float = 0.45,
        max_people: int = 6,
    ) -> None:
        self._runner = runner
        self.layout = layout
        self.input_size = input_size
        self.min_score = min_score
        self.iou_threshold = iou_threshold
        self.max_people = max_people

    def prepare(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR frame, got {frame_bgr.shape} {frame_bgr.dtype}")
        box = Letterbox.fit(frame_bgr.shape[1], frame_bgr.shape[0], self.input_size)
        if self.layout == "movenet":  # uint8 RGB NHWC, black padding (as the model was trained)
            rgb = cv2.cvtColor(box.apply(frame_bgr, 0), cv2.COLOR_BGR2RGB)
            return rgb[np.newaxis], box
        rgb = cv2.cvtColor(box.apply(frame_bgr, 114), cv2.COLOR_BGR2RGB)  # ultralytics: grey 114, NCHW float 0-1
        return (rgb.transpose(2, 0, 1)[np.newaxis].astype(np.float32) / 255.0), box

    def infer(self, frame_bgr: np.ndarray) -> list[PoseResult]:
        tensor, box = self.prepare(frame_bgr)
        raw = self._runner.run(tensor)
        if self.layout == "movenet":
            return decode_movenet(raw, box, self.min_score)[: self.max_people]
        return decode_yolo_pose(raw, box, self.min_score, self.iou_threshold, self.max_people)

    def infer_batch(self, frames_bgr: Sequence[np.ndarray]) -> list[list[PoseResult]]:
        return [self.infer(frame) for frame in frames_bgr]


class PoseEngineConfig(BaseModel):
    """How to build the pose network; filled from the spec's `model.*` parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["litert", "onnx", "torch"] = "litert"
    layout: Literal["movenet", "yolo_pose"] = "movenet"
    weights: Path
    input_size: int = Field(default=256, ge=32, le=2048, multiple_of=32)
    min_score: float = Field(default=0.2, ge=0.0, le=1.0)
    iou_threshold: float = Field(default=0.45, gt=0.0, le=1.0)
    max_people: int = Field(default=6, ge=1, le=100)
    threads: int = Field(default=2, ge=1, le=64)
    # People at every scale (docs/pose-estimator.md, "Scales, tiles and rotation"): more full-frame passes at other
    # input sizes, a grid of overlapping tiles (tiles x tiles, each at input_size) for crowds and distant people,
    # and one pass on a copy turned 90 degrees when the upright frame shows nobody. All merged, duplicates dropped.
    extra_input_sizes: tuple[int, ...] = Field(default=(), max_length=4)
    tiles: int = Field(default=0, ge=0, le=4, description="0: off; n: an n x n grid of overlapping tiles")
    tile_overlap: float = Field(default=0.25, ge=0.0, le=0.5, description="share of a tile shared with the next")
    tile_min_score: float = Field(default=0.3, ge=0.0, le=1.0, description="tiles see less context: stricter")
    rotated_retry: bool = False
    # Per person: one that lies across the frame (box wider than tall) or whose joints are unsure (mean score
    # under 0.3) is posed again on a crop turned 90 degrees each way; the more confident pose is kept.
    rotated_people: bool = False
    merge_iou: float = Field(default=0.5, gt=0.0, le=1.0)
    # A person detector (YOLOX-Nano ONNX, raw [1, A, 85] output) for crowds: each person it finds that no pose
    # pass found gets a pose from a crop around them; one found by neither stays a box with no joints.
    person_detector: Path | None = None
    person_detector_size: int = Field(default=416, ge=32, le=2048, multiple_of=32)
    person_detector_min_score: float = Field(default=0.4, gt=0.0, le=1.0)

    @field_validator("extra_input_sizes", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("extra_input_sizes")
    @classmethod
    def _multiples(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for size in value:
            if size < 32 or size > 2048 or size % 32:
                raise ValueError(f"extra input size {size}: a multiple of 32 from 32 to 2048")
        return value

    @property
    def multi(self) -> bool:
        return bool(
            self.extra_input_sizes or self.tiles or self.rotated_retry or self.rotated_people or self.person_detector
        )


def build_engine(
    config: PoseEngineConfig,
    device: str = "cpu",
    importer: Callable[[str], Any] = importlib.import_module,
) -> PoseNetwork | MultiScalePose:
    """The engine the spec describes, on `device`. Refuses combinations that would not run where asked."""
    if not config.weights.is_file():
        raise EngineLoadError(f"pose weights {config.weights} do not exist")
    if config.engine == "litert":
        if device != "cpu":
            raise EngineLoadError(
                f"the litert engine runs on the CPU only, but {device} was granted: use model.engine=onnx with "
                "ONNX weights on a GPU profile (docs/pose-estimator.md)"
            )
        if config.layout != "movenet":
            raise EngineLoadError("the litert engine supports the movenet layout only; YOLO-pose needs engine onnx")
        runner: TensorRunner = LiteRTRunner(config.weights, config.input_size, config.threads)
    elif config.engine == "torch":  # the ONNX file converted to torch: GPU hosts with PyTorch, no onnxruntime-gpu
        from ruth_vision.pose_torch import TorchEngineError, TorchRunner

        if config.layout != "movenet":
            raise EngineLoadError("the torch engine supports the movenet layout only")
        try:
            runner = TorchRunner(config.weights, config.input_size, device, config.threads)
        except TorchEngineError as exc:
            raise EngineLoadError(str(exc)) from exc
    else:
        runner = OnnxRunner(config.weights, device, config.threads, importer)
    network = PoseNetwork(
        runner, config.layout, config.input_size, config.min_score, config.iou_threshold, config.max_people
    )
    if not config.multi:
        return network
    extra = []
    for size in config.extra_input_sizes:
        # LiteRT's graph is resized once per interpreter; ONNX Runtime takes any size on the one session
        sized = LiteRTRunner(config.weights, size, config.threads) if config.engine == "litert" else runner
        extra.append(PoseNetwork(sized, config.layout, size, config.min_score, config.iou_threshold, config.max_people))
    detector = None
    if config.person_detector is not None:
        if not config.person_detector.is_file():
            raise EngineLoadError(f"person detector weights {config.person_detector} do not exist")
        detector = YoloxPersonDetector(
            OnnxRunner(config.person_detector, device, config.threads, importer),
            config.person_detector_size,
            config.person_detector_min_score,
        )
    return MultiScalePose(network, extra, config, detector)


def _same_person(a: PoseResult, b: PoseResult, iou_threshold: float, keypoint_threshold: float = 0.3) -> bool:
    """Two detections of one person? Keypoints decide when both saw at least three of the same joints (two people
    overlapping in depth have overlapping boxes but different joints; a person cut by a tile edge has a smaller box
    but the same joints); otherwise the boxes' IoU does."""
    both = (a.keypoints[:, 2] >= keypoint_threshold) & (b.keypoints[:, 2] >= keypoint_threshold)
    if int(both.sum()) >= 3:
        small = min((a.box[2] - a.box[0]) * (a.box[3] - a.box[1]), (b.box[2] - b.box[0]) * (b.box[3] - b.box[1]))
        scale = max(float(np.sqrt(max(small, 1.0))), 1.0)
        distance = np.hypot(*(a.keypoints[both, :2] - b.keypoints[both, :2]).T)
        return bool(float(np.median(distance)) / scale < 0.12)
    ix = max(0.0, min(a.box[2], b.box[2]) - max(a.box[0], b.box[0]))
    iy = max(0.0, min(a.box[3], b.box[3]) - max(a.box[1], b.box[1]))
    inter = ix * iy
    union = (a.box[2] - a.box[0]) * (a.box[3] - a.box[1]) + (b.box[2] - b.box[0]) * (b.box[3] - b.box[1]) - inter
    return inter / max(union, 1e-9) > iou_threshold


def merge_people(people: Sequence[PoseResult], iou_threshold: float = 0.5, max_people: int = 100) -> list[PoseResult]:
    """Greedy non-maximum suppression over passes at several scales/tiles: the strongest detection of a person
    is kept, the others dropped (`_same_person`)."""
    kept: list[PoseResult] = []
    for person in sorted(people, key=lambda p: -p.score):
        if not any(_same_person(person, other, iou_threshold) for other in kept):
            kept.append(person)
            if len(kept) >= max_people:
                break
    return kept


def _moved(person: PoseResult, dx: float, dy: float, width: int, height: int) -> PoseResult:
    keypoints = person.keypoints.copy()
    keypoints[:, 0] = np.clip(keypoints[:, 0] + dx, 0, width - 1)
    keypoints[:, 1] = np.clip(keypoints[:, 1] + dy, 0, height - 1)
    x1, y1, x2, y2 = person.box
    return PoseResult((x1 + dx, y1 + dy, x2 + dx, y2 + dy), keypoints, person.score)


def _unrotated(person: PoseResult, height: int) -> PoseResult:
    """A person found on the frame turned 90 degrees clockwise, mapped back: (xr, yr) -> (yr, height - 1 - xr)."""
    keypoints = person.keypoints.copy()
    keypoints[:, 0] = person.keypoints[:, 1]
    keypoints[:, 1] = (height - 1) - person.keypoints[:, 0]
    x1, y1, x2, y2 = person.box
    return PoseResult((y1, height - 1 - x2, y2, height - 1 - x1), keypoints, person.score)


def tile_grid(width: int, height: int, tiles: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """x, y, w, h of an n x n grid of tiles that cover the frame, neighbours sharing `overlap` of a tile."""
    if tiles < 2:
        return [(0, 0, width, height)]
    tile_w = int(np.ceil(width / (tiles - (tiles - 1) * overlap)))
    tile_h = int(np.ceil(height / (tiles - (tiles - 1) * overlap)))
    tile_w, tile_h = min(tile_w, width), min(tile_h, height)
    xs = [round((width - tile_w) * i / (tiles - 1)) for i in range(tiles)]
    ys = [round((height - tile_h) * i / (tiles - 1)) for i in range(tiles)]
    return [(x, y, tile_w, tile_h) for y in ys for x in xs]


class MultiScalePose:
    """The pose network run several ways on one frame, the people merged (`merge_people`):

    * the frame at `input_size` and at each of `extra_input_sizes` (a 60-px pedestrian is ~25 px at 256, ~50 at 512;
      512 alone loses people who fill a close-up frame, so both run);
    * `tiles` x `tiles` overlapping crops at `input_size`: each crop can hold MoveNet's 6 people, so crowds go past
      the single-pass cap, and distant people are seen larger. Tile detections need `tile_min_score`;
    * when all of that found nobody and `rotated_retry` is on, the frame turned 90 degrees: MoveNet is weak on
      bodies lying across the frame, and a fallen person may be the only one in view.
    """

    def __init__(
        self,
        network: PoseNetwork,
        extra: Sequence[PoseNetwork],
        config: PoseEngineConfig,
        detector: YoloxPersonDetector | None = None,
    ) -> None:
        self.network = network
        self.extra = list(extra)
        self.config = config
        self.detector = detector
        self.max_people = max(config.max_people, 6 * max(1, config.tiles) ** 2) if config.tiles else config.max_people
        if detector is not None:
            self.max_people = max(self.max_people, 100)

    @property
    def input_size(self) -> int:
        return self.network.input_size

    def infer(self, frame_bgr: np.ndarray) -> list[PoseResult]:
        height, width = frame_bgr.shape[:2]
        people = list(self.network.infer(frame_bgr))
        for network in self.extra:
            people += network.infer(frame_bgr)
        if self.config.tiles >= 2:
            for x, y, w, h in tile_grid(width, height, self.config.tiles, self.config.tile_overlap):
                crop = np.ascontiguousarray(frame_bgr[y : y + h, x : x + w])
                people += [
                    _moved(p, x, y, width, height)
                    for p in self.network.infer(crop)
                    if p.score >= self.config.tile_min_score
                ]
        merged = merge_people(people, self.config.merge_iou, self.max_people)
        if self.detector is not None:
            merged = self._add_detected(frame_bgr, merged)
        if not merged and self.config.rotated_retry:
            turned = np.ascontiguousarray(cv2.rotate(frame_bgr, cv2.ROTATE_90_CLOCKWISE))
            merged = [_unrotated(p, height) for p in self.network.infer(turned)]
        if self.config.rotated_people:
            merged = self._rotated_people(frame_bgr, merged)
        return merged

    def _rotated_people(self, frame_bgr: np.ndarray, people: list[PoseResult], most: int = 4) -> list[PoseResult]:
        """MoveNet was trained on upright people: a lying body's joints come out unsure or wrong. Each person
        whose box is wider than tall, or whose joints average under 0.3, is posed again on a crop around them
        turned 90 degrees clockwise and anticlockwise; the most confident of the three poses is kept. At most
        `most` people a frame, so a crowd of sitting people can't multiply the cost."""
        out, tried = list(people), 0
        for index, person in enumerate(people):
            x1, y1, x2, y2 = person.box
            confidence = float(person.keypoints[:, 2].mean())
            if tried >= most or (x2 - x1 <= y2 - y1 and confidence >= 0.3):
                continue
            tried += 1
            best, best_confidence = person, confidence
            for clockwise in (True, False):
                candidate = _pose_on_turned_crop(self.network, frame_bgr, person.box, clockwise)
                if candidate is not None and float(candidate.keypoints[:, 2].mean()) > best_confidence:
                    best, best_confidence = candidate, float(candidate.keypoints[:, 2].mean())
            out[index] = best
        return out

    def _add_detected(self, frame_bgr: np.ndarray, people: list[PoseResult]) -> list[PoseResult]:
        """People the detector found and no pose pass did: a pose from a crop around each, else the box alone."""
        assert self.detector is not None
        height, width = frame_bgr.shape[:2]
        out = list(people)
        for box, score in self.detector.detect(frame_bgr):
            if any(_covers(box, p) for p in out) or len(out) >= self.max_people:
                continue
            x1, y1, x2, y2 = box
            gx, gy = 0.2 * (x2 - x1), 0.1 * (y2 - y1)
            cx1, cy1 = max(0, int(x1 - gx)), max(0, int(y1 - gy))
            cx2, cy2 = min(width, int(x2 + gx) + 1), min(height, int(y2 + gy) + 1)
            found = None
            if cx2 - cx1 >= 16 and cy2 - cy1 >= 16:
                crop = np.ascontiguousarray(frame_bgr[cy1:cy2, cx1:cx2])
                inside = [
                    q for q in (_moved(p, cx1, cy1, width, height) for p in self.network.infer(crop)) if _covers(box, q)
                ]
                found = max(inside, key=lambda q: q.score, default=None)
            if found is None:  # counted, placed (feet at the box's bottom), but no joints to judge posture or PPE
                found = PoseResult(box, np.zeros((NUM_KEYPOINTS, 3), np.float32), score)
            out.append(found)
        return out

    def infer_batch(self, frames_bgr: Sequence[np.ndarray]) -> list[list[PoseResult]]:
        return [self.infer(frame) for frame in frames_bgr]


def _pose_on_turned_crop(
    network: PoseNetwork, frame_bgr: np.ndarray, box: tuple[float, float, float, float], clockwise: bool
) -> PoseResult | None:
    """The strongest pose on the box's crop (grown by 15 %) turned 90 degrees, mapped back to frame pixels."""
    height, width = frame_bgr.shape[:2]
    x1, y1, x2, y2 = box
    gx, gy = 0.15 * (x2 - x1), 0.15 * (y2 - y1)
    cx1, cy1 = max(0, int(x1 - gx)), max(0, int(y1 - gy))
    cx2, cy2 = min(width, int(x2 + gx) + 1), min(height, int(y2 + gy) + 1)
    if cx2 - cx1 < 16 or cy2 - cy1 < 16:
        return None
    crop = np.ascontiguousarray(frame_bgr[cy1:cy2, cx1:cx2])
    crop_h, crop_w = crop.shape[:2]
    turn = cv2.ROTATE_90_CLOCKWISE if clockwise else cv2.ROTATE_90_COUNTERCLOCKWISE
    found = network.infer(np.ascontiguousarray(cv2.rotate(crop, turn)))
    if not found:
        return None
    pose = found[0]
    keypoints = pose.keypoints.copy()
    if clockwise:  # turned (xr, yr) -> crop (yr, crop_h - 1 - xr)
        keypoints[:, 0], keypoints[:, 1] = pose.keypoints[:, 1], crop_h - 1 - pose.keypoints[:, 0]
    else:  # anticlockwise: (xr, yr) -> (crop_w - 1 - yr, xr)
        keypoints[:, 0], keypoints[:, 1] = crop_w - 1 - pose.keypoints[:, 1], pose.keypoints[:, 0]
    keypoints[:, 0] += cx1
    keypoints[:, 1] += cy1
    bx1, by1, bx2, by2 = pose.box
    corners = np.asarray([[bx1, by1], [bx2, by2]], np.float32)
    if clockwise:
        xs, ys = corners[:, 1], crop_h - 1 - corners[:, 0]
    else:
        xs, ys = crop_w - 1 - corners[:, 1], corners[:, 0]
    frame_box = (float(xs.min() + cx1), float(ys.min() + cy1), float(xs.max() + cx1), float(ys.max() + cy1))
    return PoseResult(frame_box, keypoints, pose.score)


def _covers(box: tuple[float, float, float, float], person: PoseResult) -> bool:
    """Is `person` the one in `box`? Their box overlaps it by IoU 0.3, or their joints' centre lies inside it."""
    x1, y1, x2, y2 = box
    seen = person.keypoints[person.keypoints[:, 2] >= 0.3]
    if len(seen) >= 3:
        cx, cy = float(seen[:, 0].mean()), float(seen[:, 1].mean())
        if x1 <= cx <= x2 and y1 <= cy <= y2:
            return True
    px1, py1, px2, py2 = person.box
    ix = max(0.0, min(x2, px2) - max(x1, px1))
    iy = max(0.0, min(y2, py2) - max(y1, py1))
    inter = ix * iy
    union = (x2 - x1) * (y2 - y1) + (px2 - px1) * (py2 - py1) - inter
    return inter / max(union, 1e-9) > 0.3


class YoloxPersonDetector:
    """YOLOX (raw ONNX export: BGR 0-255 NCHW in, [1, A, 5 + C] grid outputs) keeping COCO class 0, person.
    Letterboxed like the YOLO family (grey 114), decoded on the strides 8/16/32 grid, NMS at IoU 0.45."""

    STRIDES = (8, 16, 32)

    def __init__(self, runner: TensorRunner, size: int, min_score: float) -> None:
        self.runner = runner
        self.size = size
        self.min_score = min_score
        cells, scale = [], []
        for stride in self.STRIDES:
            side = size // stride
            ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
            cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
            scale.append(np.full((side * side, 1), stride))
        self._cells = np.concatenate(cells).astype(np.float32)
        self._scale = np.concatenate(scale).astype(np.float32)

    def detect(self, frame_bgr: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        box = Letterbox.fit(frame_bgr.shape[1], frame_bgr.shape[0], self.size)
        tensor = box.apply(frame_bgr, 114).transpose(2, 0, 1)[np.newaxis].astype(np.float32)
        raw = np.asarray(self.runner.run(tensor), dtype=np.float32).reshape(-1, self._cells.shape[0], 85)[0]
        scores = raw[:, 4] * raw[:, 5]
        keep = scores >= self.min_score
        if not keep.any():
            return []
        xy = (raw[keep, :2] + self._cells[keep]) * self._scale[keep]
        wh = np.exp(np.clip(raw[keep, 2:4], -10, 10)) * self._scale[keep]
        xyxy = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
        found = []
        for i in _nms(xyxy, scores[keep], 0.45):
            bx, by = box.to_frame(xyxy[i, [0, 2]], xyxy[i, [1, 3]])
            if bx[1] > bx[0] and by[1] > by[0]:
                found.append(((float(bx[0]), float(by[0]), float(bx[1]), float(by[1])), float(scores[keep][i])))
        return found
