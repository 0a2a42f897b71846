"""PPE from a user-supplied object detector: hard hats and vests found as boxes, then given to the person they sit on.

The colour rules of ruth_vision.ppe need no weights; a site with its own trained detector (an Ultralytics YOLOv8
detect export to ONNX) gets the same per-person answer from it instead. The pose still decides WHERE an item has to
be: a box counts for a person only when it covers that person's head region (hard hat) or torso region (vest), so a
helmet lying on a shelf or worn by the neighbour never makes someone compliant. A region that can't be placed is
`unknown`; a placed region that no detected item covers is `missing`. The payload is `ppe.frame_payload`'s, so
violation precedence and fields are those of the colour path.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ruth_vision.pose import Letterbox, OnnxRunner, PoseResult, TensorRunner
from ruth_vision.pose import _nms as nms  # the one NMS of the package, shared with the YOLO-pose decoder
from ruth_vision.ppe import (
    VIOLATION_ORDER,
    Item,
    ItemJudgement,
    PpeConfig,
    Region,
    eligible_people,
    frame_payload,
    hardhat_region,
    vest_region,
)

__all__ = [
    "ItemDetector",
    "PpeBox",
    "PpeDetector",
    "PpeDetectorConfig",
    "assess_frame_detected",
    "assign_items",
    "build_ppe_detector",
    "decode_yolo_detect",
    "parse_class_map",
]

# Class names as PPE datasets spell them, folded (lower case, letters and digits only) -> the item they show.
_ALIASES: dict[str, Item] = {
    **dict.fromkeys(("hardhat", "hardhats", "helmet", "helmets", "safetyhelmet", "hat", "hardcap"), "hardhat"),
    **dict.fromkeys(
        ("vest", "vests", "hivis", "hiviz", "highvis", "safetyvest", "reflectivevest", "highvisibilityvest"), "vest"
    ),
}
_MIN_REGION_AREA = 32.0  # px², the colour path's "under 32 pixels in frame" rule


def parse_class_map(raw: Mapping[str, int] | str) -> dict[int, Item]:
    """`{"hardhat": 0, "vest": 1}` (or `"helmet"`, `"hi-vis"`, ...) -> class index -> item. Several classes may show
    one item; a name that isn't a hard hat or a vest is refused rather than silently ignored."""
    try:
        mapping = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        mapping = None
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(f'detector_classes must be a non-empty JSON object like {{"hardhat": 0, "vest": 1}}: {raw!r}')
    classes: dict[int, Item] = {}
    for name, index in mapping.items():
        item = _ALIASES.get(re.sub(r"[^a-z0-9]", "", str(name).lower()))
        if item is None:
            raise ValueError(f"detector class {name!r} is neither a hard hat nor a vest (names: {sorted(_ALIASES)})")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"detector class {name!r} needs a class index >= 0, got {index!r}")
        if index in classes:
            raise ValueError(f"class index {index} is named twice in detector_classes")
        classes[index] = item
    return classes


class PpeDetectorConfig(BaseModel):
    """The spec's `detector_*` parameters (deployment-wide: the network is not a per-request choice)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: Path
    classes: dict[int, Item]
    input_size: int = Field(default=640, ge=32, le=2048, multiple_of=32)
    min_score: float = Field(default=0.35, gt=0.0, le=1.0)
    iou_threshold: float = Field(default=0.45, gt=0.0, le=1.0)
    min_overlap: float = Field(default=0.25, gt=0.0, le=1.0, description="share of the region a box must cover")
    max_detections: int = Field(default=100, ge=1, le=1000)
    threads: int = Field(default=2, ge=1, le=64)

    @field_validator("classes", mode="before")
    @classmethod
    def _parse_classes(cls, value: Any) -> Any:
        if isinstance(value, str) or (isinstance(value, Mapping) and all(isinstance(k, str) for k in value)):
            return parse_class_map(value)
        return value

    @classmethod
    def from_params(cls, weights: Path, params: Mapping[str, str]) -> PpeDetectorConfig:
        """From config.pbtxt's `model.detector_<key>` strings (JSON where they parse)."""
        values: dict[str, Any] = {"weights": weights, "classes": params.get("detector_classes", "")}
        for key in ("input_size", "min_score", "iou_threshold", "min_overlap", "max_detections", "threads"):
            if f"detector_{key}" in params:
                values[key] = json.loads(params[f"detector_{key}"])
        return cls.model_validate(values)


@dataclasses.dataclass(frozen=True)
class PpeBox:
    """One detected item, in frame pixels."""

    item: Item
    box: tuple[float, float, float, float]
    score: float
    class_id: int

    def polygon(self) -> np.ndarray:
        x1, y1, x2, y2 = self.box
        return np.asarray([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float32)


def decode_yolo_detect(
    raw: np.ndarray,
    box: Letterbox,
    classes: Mapping[int, Item],
    min_score: float,
    iou_threshold: float = 0.45,
    max_detections: int = 100,
) -> list[PpeBox]:
    """Ultralytics YOLOv8-detect ONNX output [1, 4+nc, A] (or [1, A, 4+nc]): cx, cy, w, h in canvas pixels, then one
    score per class. Only the mapped classes count; NMS is per class (a vest box must not suppress the hat inside
    it), done here because the export leaves it out."""
    preds = np.asarray(raw, dtype=np.float32)
    if preds.ndim != 3 or preds.shape[0] != 1:
        raise ValueError(f"a YOLO-detect output is [1, 4+nc, A], got shape {preds.shape}")
    preds = preds[0]
    if preds.shape[0] < preds.shape[1]:  # channels first, as exported: a real export's anchors (2100 at 320 px,
        # 8400 at 640) always outnumber its 4+nc channels, which is how the two layouts are told apart
        preds = preds.T
    num_classes = preds.shape[1] - 4
    if num_classes < 1 or max(classes) >= num_classes:
        raise ValueError(
            f"the detector has {max(num_classes, 0)} classes (output {raw.shape}), but detector_classes uses index "
            f"{max(classes)}"
        )
    ids = np.asarray(sorted(classes), dtype=np.int64)
    scores = preds[:, 4 + ids]
    best = scores.argmax(axis=1)
    score = scores[np.arange(len(scores)), best]
    keep = score >= min_score
    if not keep.any():
        return []
    centre, size, score, class_id = preds[keep, :2], preds[keep, 2:4], score[keep], ids[best[keep]]
    xyxy = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    offset = class_id[:, None].astype(np.float32) * (4.0 * box.size)  # classes far apart: one NMS call per class
    results: list[PpeBox] = []
    for i in nms(xyxy + offset, score, iou_threshold)[:max_detections]:
        bx, by = box.to_frame(xyxy[i, [0, 2]], xyxy[i, [1, 3]])
        if bx[1] <= bx[0] or by[1] <= by[0]:  # wholly in the padding
            continue
        frame_box = (float(bx[0]), float(by[0]), float(bx[1]), float(by[1]))
        results.append(PpeBox(classes[int(class_id[i])], frame_box, float(score[i]), int(class_id[i])))
    return results


class ItemDetector(Protocol):
    """What `assess_frame_detected` needs: any detector that returns items in frame pixels."""

    def detect(self, frame_bgr: np.ndarray) -> list[PpeBox]: ...


class PpeDetector:
    """A runner plus the Ultralytics pre-processing (grey-114 letterbox, RGB, NCHW, 0..1) and decoding."""

    def __init__(
        self,
        runner: TensorRunner,
        classes: Mapping[int, Item],
        input_size: int = 640,
        min_score: float = 0.35,
        iou_threshold: float = 0.45,
        max_detections: int = 100,
        half: bool = False,
    ) -> None:
        self._runner = runner
        self.classes = dict(classes)
        self.input_size = input_size
        self.min_score = min_score
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        self._dtype = np.float16 if half else np.float32

    def prepare(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR frame, got {frame_bgr.shape} {frame_bgr.dtype}")
        box = Letterbox.fit(frame_bgr.shape[1], frame_bgr.shape[0], self.input_size)
        rgb = cv2.cvtColor(box.apply(frame_bgr, 114), cv2.COLOR_BGR2RGB)
        return (rgb.transpose(2, 0, 1)[np.newaxis].astype(np.float32) / 255.0).astype(self._dtype), box

    def detect(self, frame_bgr: np.ndarray) -> list[PpeBox]:
        tensor, box = self.prepare(frame_bgr)
        raw = self._runner.run(tensor)
        return decode_yolo_detect(raw, box, self.classes, self.min_score, self.iou_threshold, self.max_detections)


def build_ppe_detector(
    config: PpeDetectorConfig, device: str = "cpu", importer: Callable[[str], Any] = importlib.import_module
) -> PpeDetector:
    """The detector the spec names, checked by one run on a blank frame: an output that doesn't fit the class map
    fails the load instead of every request."""
    if not config.weights.is_file():
        raise FileNotFoundError(f"PPE detector weights {config.weights} do not exist")
    runner = OnnxRunner(config.weights, device, config.threads, importer)
    detector = PpeDetector(
        runner,
        config.classes,
        config.input_size,
        config.min_score,
        config.iou_threshold,
        config.max_detections,
        half="float16" in runner.input_type,
    )
    detector.detect(np.zeros((config.input_size, config.input_size, 3), np.uint8))
    return detector


def _in_frame(polygon: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """The region's convex hull clipped to the frame; None when under 32 px² of it are in frame."""
    height, width = shape[:2]
    frame = np.asarray([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    hull = cv2.convexHull(polygon.astype(np.float32))  # a twisted torso quad is not convex
    area, clipped = cv2.intersectConvexConvex(hull, frame)
    if area < _MIN_REGION_AREA or clipped is None:
        return None
    return np.asarray(clipped, dtype=np.float32).reshape(-1, 2)


def _coverage(region: np.ndarray, item: PpeBox) -> float:
    """Share of the region's area that the item's box covers."""
    area, _ = cv2.intersectConvexConvex(region, item.polygon())
    return float(area) / max(float(cv2.contourArea(region)), 1e-9)


def _region(item: Item, pose: PoseResult, threshold: float) -> Region | None:
    return hardhat_region(pose, threshold) if item == "hardhat" else vest_region(pose, threshold)


def _region_box(region: Region) -> list[float]:
    return [round(float(v), 2) for v in (*region.polygon.min(axis=0), *region.polygon.max(axis=0))]


def assign_items(
    frame_shape: tuple[int, ...],
    people: Sequence[PoseResult],
    items: Sequence[PpeBox],
    config: PpeConfig,
    min_overlap: float = 0.25,
) -> list[list[ItemJudgement]]:
    """One judgement per required item per person, in `VIOLATION_ORDER`. Each detected item goes to the ONE person
    whose region of that kind it covers most (at least `min_overlap` of it): in a crowd, one helmet can't make two
    people compliant. Present: confidence is the box score times the pose's support for the region; evidence is
    the share of the region covered. Missing: nothing covers the region; confidence is the pose's support alone (the
    detector's silence is as trustworthy as the place it looked at)."""
    threshold = config.keypoint_threshold
    wanted = [item for item in VIOLATION_ORDER if item in config.required_items]
    # Each region is placed once and reused for every box.
    regions = {(p, item): _region(item, pose, threshold) for p, pose in enumerate(people) for item in wanted}
    in_frame = {key: _in_frame(r.polygon, frame_shape) if r is not None else None for key, r in regions.items()}
    best: dict[tuple[int, Item], tuple[float, float]] = {}  # (person, item) -> (coverage, score) of its best box
    for found in items:
        if found.item not in wanted:
            continue
        cover = {
            p: _coverage(poly, found) for (p, it), poly in in_frame.items() if it == found.item and poly is not None
        }
        if not cover:
            continue
        owner = max(cover, key=lambda p: cover[p])
        if cover[owner] < min_overlap:
            continue
        previous = best.get((owner, found.item))
        if previous is None or found.score > previous[1]:
            best[(owner, found.item)] = (cover[owner], found.score)
    judged: list[list[ItemJudgement]] = []
    for p in range(len(people)):
        row = []
        for item in wanted:
            region = regions[(p, item)]
            if region is None:
                row.append(ItemJudgement(item, "unknown", 0.0, None, None))
                continue
            if in_frame[(p, item)] is None:
                row.append(ItemJudgement(item, "unknown", 0.0, None, _region_box(region)))
                continue
            support = min(1.0, region.support / 0.6)  # the colour path's scale
            if (p, item) in best:
                share, score = best[(p, item)]
                row.append(
                    ItemJudgement(item, "present", round(support * score, 4), round(share, 4), _region_box(region))
                )
            else:
                row.append(ItemJudgement(item, "missing", round(support, 4), 0.0, _region_box(region)))
        judged.append(row)
    return judged


def assess_frame_detected(
    frame_bgr: np.ndarray,
    poses: Sequence[PoseResult],
    config: PpeConfig,
    detector: ItemDetector,
    min_overlap: float = 0.25,
) -> dict[str, Any]:
    """One frame -> the RESULT payload of `ppe.assess_frame`, judged by `detector` instead of colour. The detector
    doesn't run on a frame with nobody to judge."""
    people = eligible_people(poses, config)
    items = detector.detect(frame_bgr) if people else []
    return frame_payload(people, assign_items(frame_bgr.shape, people, items, config, min_overlap), config)
