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


# Fluorescent yellow-green and orange (EN ISO 20471 background colours), as seen after `Lighting` (white balance
# and brightness relative to the surroundings). Real vests in shade or haze are far less saturated than the
# fabric's specification (S 110-160 measured on the tune photographs, docs/accuracy.md); the orange still needs
# more saturation than skin or a tan jacket reach.
DEFAULT_VEST_COLOURS: tuple[HsvRange, ...] = (
    HsvRange(name="fluorescent yellow", h_min=20, h_max=45, s_min=90, v_min=110),
    HsvRange(name="fluorescent orange", h_min=0, h_max=19, s_min=115, v_min=120),
)
# EN 397 helmet shell colours, same lighting. White: low saturation and bright against the person's surroundings.
DEFAULT_HARDHAT_COLOURS: tuple[HsvRange, ...] = (
    HsvRange(name="yellow", h_min=18, h_max=35, s_min=100, v_min=130),
    HsvRange(name="orange", h_min=0, h_max=17, s_min=170, v_min=140),
    HsvRange(name="red", h_min=168, h_max=5, s_min=140, v_min=90),
    HsvRange(name="blue", h_min=95, h_max=130, s_min=120, v_min=70),
    HsvRange(name="green", h_min=45, h_max=85, s_min=110, v_min=70),
    HsvRange(name="white", h_min=0, h_max=179, s_max=45, v_min=175),
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
    # What an item that can't be judged (region not placeable, out of frame, hat colour in the backdrop) means:
    # `alert`: a violation like `missing` (safety first: a worker whose vest can't be seen is not cleared);
    # `report`: listed in `unverified`, no violation; `ignore`: the original behaviour, not listed at all.
    unknown_policy: Literal["alert", "report", "ignore"] = "report"
    # Light: the frame is white-balanced from its own grey world, and each region's brightness is compared with
    # the person's surroundings, so shade and washed-out daylight don't push a vest outside its colour range.
    white_balance: bool = True
    relative_brightness: bool = True

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
    return Region(_rectangle(centre + up * 0.5 * head_w, up, along=0.6 * head_w, across=0.9 * head_w), support)


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


@dataclasses.dataclass(frozen=True)
class Lighting:
    """How to see a region's colours as they would look in neutral, even light.

    `gains` (B, G, R) white-balance the frame from its own grey world (a bluish overcast scene or a yellow sodium
    lamp shifts every hue and greys every white); `brightness` scales V so that the bright end of the person's
    surroundings reads as daylight (a vest in shade has V ~ 130, not 200)."""

    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    brightness: float = 1.0


NEUTRAL = Lighting()


def scene_gains(frame_bgr: np.ndarray) -> tuple[float, float, float]:
    """White balance from the scene's near-neutral pixels (grey world over what is nearly grey: concrete, sky
    haze, walls), each gain within 0.8 .. 1.25. Saturated areas (a blue sky, a red wall) don't vote, so a scene that
    really is mostly one colour is not bleached; with under 5 % near-neutral pixels the frame is left as it is."""
    small = frame_bgr[:: max(1, frame_bgr.shape[0] // 128), :: max(1, frame_bgr.shape[1] // 128)]
    hsv = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_BGR2HSV).reshape(-1, 3)
    neutral = (hsv[:, 1] < 70) & (hsv[:, 2] > 30) & (hsv[:, 2] < 245)
    if int(neutral.sum()) < 0.05 * len(hsv):
        return (1.0, 1.0, 1.0)
    means = small.reshape(-1, 3)[neutral].astype(np.float64).mean(axis=0) + 1e-6
    gains = np.clip(means.mean() / means, 0.8, 1.25)
    return float(gains[0]), float(gains[1]), float(gains[2])


def person_brightness(frame_bgr: np.ndarray, box: tuple[float, float, float, float], gains: Sequence[float]) -> float:
    """V gain from the person's surroundings (the box grown by half its size): their 90th-percentile brightness
    is brought to 220, never darkened, at most doubled."""
    height, width = frame_bgr.shape[:2]
    x1, y1, x2, y2 = box
    gw, gh = (x2 - x1) / 2, (y2 - y1) / 2
    xa, ya = max(0, int(x1 - gw)), max(0, int(y1 - gh))
    xb, yb = min(width, int(x2 + gw) + 1), min(height, int(y2 + gh) + 1)
    if xb - xa < 4 or yb - ya < 4:
        return 1.0
    patch = frame_bgr[ya:yb:2, xa:xb:2].astype(np.float32) * np.asarray(gains, np.float32)
    value = float(np.percentile(patch.max(axis=2), 90))
    return float(np.clip(220.0 / max(value, 1.0), 1.0, 2.0))


def _hsv(crop_bgr: np.ndarray, lighting: Lighting) -> np.ndarray:
    if lighting == NEUTRAL:
        return cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2HSV)
    balanced = crop_bgr.astype(np.float32) * (np.asarray(lighting.gains, np.float32) * lighting.brightness)
    return cv2.cvtColor(np.clip(balanced, 0, 255).astype(np.uint8), cv2.COLOR_BGR2HSV)


def colour_fractions(
    frame_bgr: np.ndarray, polygon: np.ndarray, colours: Sequence[HsvRange], lighting: Lighting = NEUTRAL
) -> tuple[float, list[float]] | None:
    """(share of the polygon's in-frame pixels matching any colour, share per colour); None if under 32 pixels
    are in frame."""
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
    hsv = _hsv(frame_bgr[y1:y2, x1:x2], lighting)
    hit = np.zeros(inside.shape, dtype=bool)
    each = []
    for colour in colours:
        match = colour.mask(hsv) & inside
        each.append(float(match.sum()) / count)
        hit |= match
    return float(hit.sum()) / count, each


def colour_fraction(
    frame_bgr: np.ndarray, polygon: np.ndarray, colours: Sequence[HsvRange], lighting: Lighting = NEUTRAL
) -> float | None:
    """Share of the polygon's in-frame pixels that match any colour; None if under 32 pixels are in frame."""
    shares = colour_fractions(frame_bgr, polygon, colours, lighting)
    return None if shares is None else shares[0]


def _stands_out(
    frame: np.ndarray,
    background: Region,
    colours: Sequence[HsvRange],
    lighting: Lighting,
    each: Sequence[float],
    need: float,
) -> bool:
    """A colour is evidence only if the region has clearly more of it than the backdrop above the head: a white
    hat under a grey sky counts, a "white hat" that is the white wall or ceiling behind a bare head does not. When
    every colour of the region is the backdrop's too, colour can't tell (the caller says unknown)."""
    behind = colour_fractions(frame, background.polygon, colours, lighting)
    if behind is None:
        return True
    return any(mine >= need and mine >= theirs + need / 2 for mine, theirs in zip(each, behind[1], strict=True))


def _judge(
    item: Item,
    region: Region | None,
    frame: np.ndarray,
    colours: Sequence[HsvRange],
    need: float,
    background: Region | None = None,
    lighting: Lighting = NEUTRAL,
) -> ItemJudgement:
    if region is None:
        return ItemJudgement(item, "unknown", 0.0, None, None)
    shares = colour_fractions(frame, region.polygon, colours, lighting)
    box = [round(float(v), 2) for v in (*region.polygon.min(axis=0), *region.polygon.max(axis=0))]
    if shares is None:
        return ItemJudgement(item, "unknown", 0.0, None, box)
    fraction, each = shares
    if (
        fraction >= need
        and background is not None
        and not _stands_out(frame, background, colours, lighting, each, need)
    ):
        return ItemJudgement(item, "unknown", 0.0, round(fraction, 4), box)
    present = fraction >= need
    margin = min(1.0, abs(fraction - need) / need)  # how far the evidence is from the decision line
    support = min(1.0, region.support / 0.6)  # how sure the pose is about where the region is
    confidence = round(support * (0.5 + 0.5 * margin), 4)
    return ItemJudgement(item, "present" if present else "missing", confidence, round(fraction, 4), box)


def judge_person(
    frame_bgr: np.ndarray, pose: PoseResult, config: PpeConfig, gains: tuple[float, float, float] | None = None
) -> list[ItemJudgement]:
    """One judgement per required item, in `VIOLATION_ORDER`. `gains`: the frame's white balance, when the
    caller judges several people of one frame (`scene_gains` once)."""
    judgements = []
    threshold = config.keypoint_threshold
    gains = (gains or scene_gains(frame_bgr)) if config.white_balance else (1.0, 1.0, 1.0)
    brightness = person_brightness(frame_bgr, pose.box, gains) if config.relative_brightness else 1.0
    lighting = Lighting(gains, brightness)
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
                    lighting,
                )
            )
        else:
            region = vest_region(pose, threshold)
            judgements.append(
                _judge(item, region, frame_bgr, config.vest_colours, config.vest_min_fraction, None, lighting)
            )
    return judgements


def eligible_people(poses: Sequence[PoseResult], config: PpeConfig) -> list[PoseResult]:
    """The people scored well enough to be judged; their order is the `person` index of the payload."""
    return [p for p in poses if p.score >= config.min_person_score]


def assess_frame(frame_bgr: np.ndarray, poses: Sequence[PoseResult], config: PpeConfig) -> dict[str, Any]:
    """One frame -> RESULT payload. Stateless: each frame is judged on its own pixels."""
    people = eligible_people(poses, config)
    gains = scene_gains(frame_bgr) if config.white_balance else None
    return frame_payload(people, [judge_person(frame_bgr, pose, config, gains) for pose in people], config)


def frame_payload(
    people: Sequence[PoseResult], judged: Sequence[Sequence[ItemJudgement]], config: PpeConfig
) -> dict[str, Any]:
    """The RESULT payload from each person's judgements, whatever judged them (colour here, or a PPE detector in
    ruth_vision.ppe_detector): both paths share one violation precedence and one set of fields."""
    detections: list[dict[str, Any]] = []
    violations: list[dict[str, Any]] = []
    present: list[dict[str, Any]] = []
    unverified: list[dict[str, Any]] = []
    alert_unknown = config.unknown_policy == "alert"
    for index, (pose, judgements) in enumerate(zip(people, judged, strict=True)):
        missing = [j.item for j in judgements if j.status == "missing"]
        unknown = [j.item for j in judgements if j.status == "unknown"]
        for j in judgements:
            entry = {"person": index, "item": j.item, "confidence": j.confidence}
            if j.status == "missing":
                violations.append({**entry, "status": "missing"})
            elif j.status == "present":
                present.append(entry)
            elif alert_unknown:
                violations.append({**entry, "status": "unknown"})
            elif config.unknown_policy == "report":
                unverified.append(entry)
        alerted = missing + (unknown if alert_unknown else [])
        detections.append(
            {
                "bbox": [round(float(v), 2) for v in pose.box],
                "confidence": round(pose.score, 4),
                "person": index,
                "keypoints": keypoints_json(pose.keypoints),
                "items": [j.as_json() for j in judgements],
                "missing": missing,
                "present": [j.item for j in judgements if j.status == "present"],
                "unknown": unknown,
                "alerted": alerted,
                "violation_type": _violation_type(missing, unknown if alert_unknown else []),
            }
        )
    missing_items = [v["item"] for v in violations if v["status"] == "missing"]
    unknown_items = [v["item"] for v in violations if v["status"] == "unknown"]
    first = _violation_type(missing_items, unknown_items)
    evidence = violations if violations else present
    payload: dict[str, Any] = {
        "violation_detected": first is not None,
        "violation_type": first,
        "severity": "critical" if missing_items else "high" if unknown_items else "low",
        "confidence": round(float(np.mean([e["confidence"] for e in evidence])), 4) if evidence else 0.0,
        "detections": detections,
        "persons_detected": len(detections),
        "violations": violations,
        "ppe_present": present,
        "required_items": list(config.required_items),
        "unknown_policy": config.unknown_policy,
    }
    if config.unknown_policy == "report":
        payload["unverified"] = unverified
    return payload


def _violation_type(missing: Sequence[str], unknown: Sequence[str]) -> str | None:
    """`missing_hardhat` > `missing_vest` > `unverified_hardhat` > `unverified_vest` (the original's precedence,
    evidence before doubt)."""
    for prefix, items in (("missing", missing), ("unverified", unknown)):
        for item in VIOLATION_ORDER:
            if item in items:
                return f"{prefix}_{item}"
    return None
