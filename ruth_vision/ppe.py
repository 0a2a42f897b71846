"""PPE per person: hard hat and high-visibility vest, judged from the pixels where they must be.

No pretrained PPE detector ships with a usable licence (docs/pose-estimator.md), so the pose places the regions
and colour decides: the hard-hat region is above the eyes along the body's own "up" (so it follows a bent or
lying person), the vest region is the torso between the shoulders and the hips. Hard hats and hi-vis garments are
made in a few saturated safety colours (and white, for hats) that skin, hair and ordinary clothes rarely reach;
the colour ranges are configurable per stream. An item whose region can't be placed (keypoints not visible) is
`unknown`, never `missing`: a violation is only reported on evidence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ruth_vision.pose import PoseResult, keypoints_json

__all__ = [
    "DEFAULT_HARDHAT_COLOURS",
    "DEFAULT_VEST_COLOURS",
    "VIOLATION_ORDER",
    "HsvRange",
    "Item",
    "ItemJudgement",
    "PpeConfig",
    "Region",
    "assess_frame",
    "background_region",
    "colour_fraction",
    "eligible_people",
    "frame_payload",
    "hardhat_region",
    "judge_person",
    "vest_region",
]

NOSE, L_EYE, R_EYE, L_EAR, R_EAR, L_SHOULDER, R_SHOULDER = 0, 1, 2, 3, 4, 5, 6
L_HIP, R_HIP = 11, 12
Item = Literal["hardhat", "vest"]
Status = Literal["present", "missing", "unknown"]
#: The original's precedence: a missing hard hat outranks a missing vest.
VIOLATION_ORDER: tuple[Item, ...] = ("hardhat", "vest")


class HsvRange(BaseModel):
    """One colour in OpenCV's HSV (H 0-179, S and V 0-255). `h_min > h_max` wraps through red (e.g. 170..8)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    h_min: int = Field(ge=0, le=179)
    h_max: int = Field(ge=0, le=179)
    s_min: int = Field(default=0, ge=0, le=255)
    s_max: int = Field(default=255, ge=0, le=255)
    v_min: int = Field(default=0, ge=0, le=255)
    v_max: int = Field(default=255, ge=0, le=255)

    def mask(self, hsv: np.ndarray) -> np.ndarray:
        h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
        if self.h_min <= self.h_max:
            hue = (h >= self.h_min) & (h <= self.h_max)
        else:
            hue = (h >= self.h_min) | (h <= self.h_max)
        return hue & (s >= self.s_min) & (s <= self.s_max) & (v >= self.v_min) & (v <= self.v_max)


# Fluorescent yellow-green and orange (EN ISO 20471 background colours); the orange needs more saturation than
# skin or a tan jacket reach.
DEFAULT_VEST_COLOURS: tuple[HsvRange, ...] = (
    HsvRange(name="fluorescent yellow", h_min=22, h_max=45, s_min=150, v_min=150),
    HsvRange(name="fluorescent orange", h_min=0, h_max=17, s_min=200, v_min=170),
)
# EN 397 helmet shell colours.
DEFAULT_HARDHAT_COLOURS: tuple[HsvRange, ...] = (
    HsvRange(name="yellow", h_min=18, h_max=35, s_min=140, v_min=140),
    HsvRange(name="orange", h_min=0, h_max=17, s_min=200, v_min=150),
    HsvRange(name="red", h_min=170, h_max=4, s_min=170, v_min=100),
    HsvRange(name="blue", h_min=95, h_max=130, s_min=150, v_min=80),
    HsvRange(name="green", h_min=45, h_max=85, s_min=140, v_min=80),
    HsvRange(name="white", h_min=0, h_max=179, s_max=30, v_min=215),
)


class PpeConfig(BaseModel):
    """Per-stream settings (the request's CONFIG)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    required_items: list[Item] = Field(default_factory=lambda: list(VIOLATION_ORDER), min_length=1)
    # Accepted so the original runtime's clients keep working; colour analysis always judges presence AND absence.
    detection_mode: Literal["presence", "violation", "full"] = "full"
    hardhat_min_fraction: float = Field(default=0.3, gt=0.0, le=1.0, description="hat-coloured share for present")
    vest_min_fraction: float = Field(default=0.25, gt=0.0, le=1.0, description="hi-vis share for present")
    keypoint_threshold: float = Field(default=0.3, ge=0.0, le=1.0)
    min_person_score: float = Field(default=0.2, ge=0.0, le=1.0)
    hardhat_colours: list[HsvRange] = Field(default_factory=lambda: list(DEFAULT_HARDHAT_COLOURS), max_length=32)
    vest_colours: list[HsvRange] = Field(default_factory=lambda: list(DEFAULT_VEST_COLOURS), max_length=32)

    @model_validator(mode="after")
    def _unique_items(self) -> PpeConfig:
        if len(set(self.required_items)) != len(self.required_items):
            raise ValueError("required_items must not repeat an item")
        return self


@dataclasses.dataclass(frozen=True)
class Region:
    polygon: np.ndarray  # float32 [N, 2], frame pixels
    support: float  # mean score of the keypoints that placed it


@dataclasses.dataclass(frozen=True)
class ItemJudgement:
    item: Item
    status: Status
    confidence: float
    evidence: float | None  # share of matching pixels in the region
    region: list[float] | None  # the region's bounding box, x1 y1 x2 y2

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _visible(kp: np.ndarray, indices: Sequence[int], threshold: float) -> np.ndarray:
    pts = kp[list(indices)]
    return pts[pts[:, 2] >= threshold]


def _unit(v: np.ndarray) -> np.ndarray | None:
    n = float(np.hypot(*v))
    return v / n if n > 1e-6 else None


def _up_vector(kp: np.ndarray, threshold: float) -> np.ndarray:
    """The body's own "up" in the image: hips -> shoulders, else shoulders -> head, else image up."""
    shoulders = _visible(kp, (L_SHOULDER, R_SHOULDER), threshold)
    hips = _visible(kp, (L_HIP, R_HIP), threshold)
    head = _visible(kp, (NOSE, L_EYE, R_EYE, L_EAR, R_EAR), threshold)
    for lower, upper in ((hips, shoulders), (shoulders, head)):
        if len(lower) and len(upper):
            u = _unit(upper[:, :2].mean(axis=0) - lower[:, :2].mean(axis=0))
            if u is not None:
                return u
    return np.asarray([0.0, -1.0])


def _rectangle(centre: np.ndarray, up: np.ndarray, along: float, across: float) -> np.ndarray:
    side = np.asarray([-up[1], up[0]])
    half_a, half_c = up * along / 2, side * across / 2
    return np.asarray(
        [centre + half_a - half_c, centre + half_a + half_c, centre - half_a + half_c, centre - half_a - half_c],
        dtype=np.float32,
    )


def _head_frame(pose: PoseResult, threshold: float) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """(eye-level head centre, body up, head width, support) from the face keypoints; None if under two visible.

    The centre averages eyes AND ears, so a profile view lands mid-head rather than on the face. The width is the
    largest of several estimates: any single one collapses in some view (eyes in profile, ears facing front)."""
    kp = pose.keypoints
    face = _visible(kp, (NOSE, L_EYE, R_EYE, L_EAR, R_EAR), threshold)
    if len(face) < 2:
        return None
    eyes = _visible(kp, (L_EYE, R_EYE), threshold)
    ears = _visible(kp, (L_EAR, R_EAR), threshold)
    shoulders = _visible(kp, (L_SHOULDER, R_SHOULDER), threshold)
    nose = kp[NOSE]

    def span(points: np.ndarray) -> float:
        return float(np.hypot(*(points[0, :2] - points[1, :2])))

    widths = []
    if len(ears) == 2:
        widths.append(span(ears))
    if len(eyes) == 2:
        widths.append(2.2 * span(eyes))
    if nose[2] >= threshold:
        widths += [1.3 * float(np.hypot(*(ear[:2] - nose[:2]))) for ear in ears]
    if len(shoulders) == 2:
        widths.append(0.45 * span(shoulders))
    if not widths:
        return None
    up = _up_vector(kp, threshold)
    side_points = np.concatenate([eyes, ears]) if len(eyes) + len(ears) else face
    centre = side_points[:, :2].mean(axis=0)
    if not len(eyes):  # ears/nose only: eye level is a little above them
        centre = centre + up * 0.1 * max(widths)
    return centre, up, max(widths), float(face[:, 2].mean())


def hardhat_region(pose: PoseResult, threshold: float) -> Region | None:
    """0.3 .. 1.0 head widths above eye level along the body's up: where a hard hat's shell sits (and, on a bare
    head, mostly hair)."""
    frame = _head_frame(pose, threshold)
    if frame is None:
        return None
    centre, up, head_w, support = frame
    return Region(_rectangle(centre + up * 0.65 * head_w, up, along=0.7 * head_w, across=1.0 * head_w), support)


def background_region(pose: PoseResult, threshold: float) -> Region | None:
    """A band above any hat (1.25 .. 1.65 head widths above eye level): if it has hat colours too (sky, a white
    wall), colour can't tell a hat from the background."""
    frame = _head_frame(pose, threshold)
    if frame is None:
        return None
    centre, up, head_w, support = frame
    return Region(_rectangle(centre + up * 1.45 * head_w, up, along=0.4 * head_w, across=1.0 * head_w), support)


def vest_region(pose: PoseResult, threshold: float) -> Region | None:
    """The torso between shoulders and hips, pulled 15% towards its middle (arms and background stay out).
    Without hips (an upper-body shot) the torso is taken as 1.2 shoulder widths long, cut at the box."""
    kp = pose.keypoints
    ls, rs, lh, rh = kp[L_SHOULDER], kp[R_SHOULDER], kp[L_HIP], kp[R_HIP]
    if ls[2] < threshold or rs[2] < threshold:
        return None
    shoulder_w = float(np.hypot(*(ls[:2] - rs[:2])))
    if shoulder_w < 4.0:
        return None
    used = [ls[2], rs[2]]
    if lh[2] >= threshold and rh[2] >= threshold:
        corners = np.asarray([ls[:2], rs[:2], rh[:2], lh[:2]], dtype=np.float32)
        used += [lh[2], rh[2]]
    else:
        down = -_up_vector(kp, threshold) * 1.2 * shoulder_w
        corners = np.asarray([ls[:2], rs[:2], rs[:2] + down, ls[:2] + down], dtype=np.float32)
        x1, y1, x2, y2 = pose.box
        corners[:, 0] = np.clip(corners[:, 0], x1, x2)
        corners[:, 1] = np.clip(corners[:, 1], y1, y2)
    middle = corners.mean(axis=0)
    return Region((middle + 0.85 * (corners - middle)).astype(np.float32), float(np.mean(used)))


def colour_fraction(frame_bgr: np.ndarray, polygon: np.ndarray, colours: Sequence[HsvRange]) -> float | None:
    """Share of the polygon's in-frame pixels that match any colour; None if under 32 pixels are in frame."""
    height, width = frame_bgr.shape[:2]
    x1, y1 = np.floor(polygon.min(axis=0)).astype(int)
    x2, y2 = np.ceil(polygon.max(axis=0)).astype(int)
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if x2 <= x1 or y2 <= y1:
        return None
    mask = np.zeros((y2 - y1, x2 - x1), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(polygon - [x1, y1]).astype(np.int32)], (1,))
    inside = mask.astype(bool)
    count = int(inside.sum())
    if count < 32:
        return None
    hsv = cv2.cvtColor(frame_bgr[y1:y2, x1:x2], cv2.COLOR_BGR2HSV)
    hit = np.zeros(inside.shape, dtype=bool)
    for colour in colours:
        hit |= colour.mask(hsv)
    return float((hit & inside).sum()) / count


def _judge(
    item: Item,
    region: Region | None,
    frame: np.ndarray,
    colours: Sequence[HsvRange],
    need: float,
    background: Region | None = None,
) -> ItemJudgement:
    if region is None:
        return ItemJudgement(item, "unknown", 0.0, None, None)
    fraction = colour_fraction(frame, region.polygon, colours)
    box = [round(float(v), 2) for v in (*region.polygon.min(axis=0), *region.polygon.max(axis=0))]
    if fraction is None:
        return ItemJudgement(item, "unknown", 0.0, None, box)
    if fraction >= need and background is not None:
        behind = colour_fraction(frame, background.polygon, colours)
        if behind is not None and behind >= need:  # the "hat" colour is the backdrop's: no evidence either way
            return ItemJudgement(item, "unknown", 0.0, round(fraction, 4), box)
    present = fraction >= need
    margin = min(1.0, abs(fraction - need) / need)  # how far the evidence is from the decision line
    support = min(1.0, region.support / 0.6)  # how sure the pose is about where the region is
    confidence = round(support * (0.5 + 0.5 * margin), 4)
    return ItemJudgement(item, "present" if present else "missing", confidence, round(fraction, 4), box)


def judge_person(frame_bgr: np.ndarray, pose: PoseResult, config: PpeConfig) -> list[ItemJudgement]:
    """One judgement per required item, in `VIOLATION_ORDER`."""
    judgements = []
    threshold = config.keypoint_threshold
    for item in VIOLATION_ORDER:
        if item not in config.required_items:
            continue
        if item == "hardhat":
            judgements.append(
                _judge(
                    item,
                    hardhat_region(pose, threshold),
                    frame_bgr,
                    config.hardhat_colours,
                    config.hardhat_min_fraction,
                    background_region(pose, threshold),
                )
            )
        else:
            region = vest_region(pose, threshold)
            judgements.append(_judge(item, region, frame_bgr, config.vest_colours, config.vest_min_fraction))
    return judgements


def eligible_people(poses: Sequence[PoseResult], config: PpeConfig) -> list[PoseResult]:
    """The people scored well enough to be judged; their order is the `person` index of the payload."""
    return [p for p in poses if p.score >= config.min_person_score]


def assess_frame(frame_bgr: np.ndarray, poses: Sequence[PoseResult], config: PpeConfig) -> dict[str, Any]:
    """One frame -> RESULT payload. Stateless: each frame is judged on its own pixels."""
    people = eligible_people(poses, config)
    return frame_payload(people, [judge_person(frame_bgr, pose, config) for pose in people], config)


def frame_payload(
    people: Sequence[PoseResult], judged: Sequence[Sequence[ItemJudgement]], config: PpeConfig
) -> dict[str, Any]:
    """The RESULT payload from each person's judgements, whatever judged them (colour here, or a PPE detector in
    ruth_vision.ppe_detector): both paths share one violation precedence and one set of fields."""
    detections: list[dict[str, Any]] = []
    violations: list[dict[str, Any]] = []
    present: list[dict[str, Any]] = []
    for index, (pose, judgements) in enumerate(zip(people, judged, strict=True)):
        missing = [j.item for j in judgements if j.status == "missing"]
        for j in judgements:
            entry = {"person": index, "item": j.item, "confidence": j.confidence}
            if j.status == "missing":
                violations.append(entry)
            elif j.status == "present":
                present.append(entry)
        detections.append(
            {
                "bbox": [round(float(v), 2) for v in pose.box],
                "confidence": round(pose.score, 4),
                "person": index,
                "keypoints": keypoints_json(pose.keypoints),
                "items": [j.as_json() for j in judgements],
                "missing": missing,
                "present": [j.item for j in judgements if j.status == "present"],
                "unknown": [j.item for j in judgements if j.status == "unknown"],
                "violation_type": f"missing_{missing[0]}" if missing else None,
            }
        )
    missing_items = {v["item"] for v in violations}
    first = next((item for item in VIOLATION_ORDER if item in missing_items), None)
    evidence = violations if violations else present
    return {
        "violation_detected": first is not None,
        "violation_type": f"missing_{first}" if first else None,
        "severity": "critical" if first else "low",
        "confidence": round(float(np.mean([e["confidence"] for e in evidence])), 4) if evidence else 0.0,
        "detections": detections,
        "persons_detected": len(detections),
        "violations": violations,
        "ppe_present": present,
        "required_items": list(config.required_items),
    }
