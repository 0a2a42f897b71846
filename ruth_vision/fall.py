"""Fall detection from poses over time: posture per frame, then a rule per tracked person on FRAME time.

One frame can say "this person is lying"; only time can say "this person fell": upright, then lying within
`max_transition_s`, then still down `min_down_s` later -> `fall_detected` (critical). Lying without that evidence
(a slow lie-down, a person first seen lying, or not down long enough yet) -> `possible_fall` (high).

The original runtime thresholded absolute pixel distances in a 640x640 squashed frame, so the same scene gave
different answers at different resolutions. Every feature here is an angle or a ratio, scale-free.
Decisions use frame timestamps and the observations at or before the frame being judged, so frames that arrive
late or out of order are judged as if they had come in order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ruth_vision.pose import PoseResult, keypoints_json
from ruth_vision.tracking import DEFAULT_TRACKER, Observation, TrackerConfig, history_until, update_tracks

__all__ = [
    "FallConfig",
    "FallDecision",
    "Posture",
    "assess_frame",
    "decide",
    "posture_of",
]

NOSE, L_EYE, R_EYE, L_EAR, R_EAR, L_SHOULDER, R_SHOULDER = 0, 1, 2, 3, 4, 5, 6
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 11, 12, 13, 14, 15, 16
HEAD = (NOSE, L_EYE, R_EYE, L_EAR, R_EAR)

PostureState = Literal["upright", "lying", "unclear"]
EventType = Literal["fall_detected", "possible_fall"]


class FallConfig(BaseModel):
    """Per-stream settings (the request's CONFIG)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_down_s: float = Field(default=2.0, ge=0.0, le=600.0, description="down this long after a fast fall")
    max_transition_s: float = Field(default=2.0, gt=0.0, le=30.0, description="upright -> lying within: fast")
    lying_threshold: float = Field(default=0.65, gt=0.0, le=1.0, description="lying score at or above: lying")
    upright_threshold: float = Field(default=0.35, ge=0.0, lt=1.0, description="lying score below: upright")
    keypoint_threshold: float = Field(default=0.25, ge=0.0, le=1.0, description="keypoint score for visible")
    min_person_score: float = Field(default=0.2, ge=0.0, le=1.0, description="ignore poses scored below")
    report_possible_falls: bool = True
    # A person lying this long without a break (unclear frames allowed, an upright one ends it) is a confirmed
    # fall even though nobody saw them go down: the camera may have joined late, or the fall was too quick or
    # too blurred to catch. None: only a seen upright -> lying transition confirms.
    confirm_lying_s: float | None = Field(default=8.0, gt=0.0, le=3600.0)
    # ... and only on stronger evidence than a flag needs: the run's mean lying score at least this (a worker bent
    # into a trench, legs hidden, scored 0.75 for as long as he worked; lying people 0.75-1.0; docs/accuracy.md).
    confirm_min_lying: float = Field(default=0.8, gt=0.0, le=1.0)
    # A person tracked on the way down and not found in the next frame is looked for again on a crop around their
    # last box (ruth_vision.fall_search) for this long after they were last seen; 0: never.
    search_lost_s: float = Field(default=1.0, ge=0.0, le=10.0)
    search_grow: float = Field(default=2.0, ge=1.0, le=4.0, description="search square side / last box's side")
    search_size: int = Field(default=256, ge=64, le=1024, multiple_of=32, description="search crop scaled to, px")
    # A person seen to fall fast (upright -> lying within max_transition_s) who then vanished where they lay (not at
    # the frame's edge, nobody new seen there since) is a confirmed fall once min_down_s has passed since they went
    # down, reported as a detection with posture "lost" at their last box, for as long as the track is kept.
    confirm_vanished: bool = True

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> FallConfig:
        if self.upright_threshold >= self.lying_threshold:
            raise ValueError("upright_threshold must be below lying_threshold")
        return self


@dataclasses.dataclass(frozen=True)
class Posture:
    """Scale-free posture features of one person in one frame."""

    torso_angle: float | None  # degrees between the hips->shoulders (or shoulders->head) axis and "up"; 90 = flat
    aspect: float  # box width / height
    head_height: float | None  # (torso reference y - head y) / box's longer side; > 0 = head above, < 0 = below
    lying_score: float  # 0 = clearly upright .. 1 = clearly lying
    state: PostureState
    # Foreshortening (a body lying along the camera's line of sight looks near-vertical but short):
    torso_ratio: float | None = None  # shoulders-hips length / the body's width (shoulders, else 1.4 x hips)
    legs_ratio: float | None = None  # hips-ankles length (else 2 x hips-knees) / the same width
    foreshortened: float = 0.0  # 0 .. 1: torso and legs both short for the body's width, in one straight line


#: Body proportions measured in body widths (MoveNet's shoulder keypoints): an upright person's torso is 1.1-3.6
#: widths long and legs 1.5-4 on the `tune` photographs (sitting and kneeling people have short legs but a full
#: torso; people bent towards the camera a short torso but a bend at the hips of 40 degrees or more). A body
#: lying along the camera's line of sight keeps its width while its length shrinks with the camera's elevation
#: (about halved at 30 degrees): torso under ~0.8 widths, legs under ~1.4, torso and legs in one line.
FORESHORTENED_TORSO = (0.9, 0.6)  # torso ratio: ramp 0 at the first, 1 at the second
FORESHORTENED_LEGS = (1.6, 1.0)  # legs ratio: the same
STRAIGHT_BODY_DEG = (25.0, 40.0)  # bend between torso and legs: 1 up to the first, 0 from the second
#: A torso pointing this far down (head below the hips) in a box taller than wide, with nothing foreshortened,
#: is a pose with shoulders and hips swapped (a walking person read upside down), not someone lying.
UPSIDE_DOWN_DEG = 135.0


def _mean_visible(keypoints: np.ndarray, indices: Sequence[int], threshold: float) -> np.ndarray | None:
    pts = keypoints[list(indices)]
    visible = pts[pts[:, 2] >= threshold]
    return visible[:, :2].mean(axis=0) if len(visible) else None


def _ramp(value: float, zero_at: float, one_at: float) -> float:
    """0 at `zero_at`, 1 at `one_at`, linear between (either direction)."""
    return float(np.clip((value - zero_at) / (one_at - zero_at), 0.0, 1.0))


def _direction(vector: np.ndarray) -> float:
    """Degrees of `vector` from image-up, signed (-180 .. 180]."""
    return math.degrees(math.atan2(float(vector[0]), -float(vector[1])))


def _foreshortening(
    kp: np.ndarray,
    shoulders: np.ndarray | None,
    hips: np.ndarray | None,
    feet: np.ndarray | None,
    from_knees: bool,
    threshold: float,
) -> tuple[float | None, float | None, float]:
    """(torso ratio, legs ratio, foreshortened 0..1): lengths in units of the body's width, which lying along
    the line of sight does not shrink. Needs both shoulders (or both hips) for the width."""
    width = None
    if kp[L_SHOULDER, 2] >= threshold and kp[R_SHOULDER, 2] >= threshold:
        width = float(np.hypot(*(kp[L_SHOULDER, :2] - kp[R_SHOULDER, :2])))
    elif kp[L_HIP, 2] >= threshold and kp[R_HIP, 2] >= threshold:
        width = 1.4 * float(np.hypot(*(kp[L_HIP, :2] - kp[R_HIP, :2])))
    if width is None or width < 1e-3 or shoulders is None or hips is None:
        return None, None, 0.0
    torso = shoulders - hips
    torso_ratio = float(np.hypot(*torso)) / width
    if feet is None:
        return torso_ratio, None, 0.0
    legs = hips - feet
    legs_ratio = (2.0 if from_knees else 1.0) * float(np.hypot(*legs)) / width
    bend = abs((_direction(torso) - _direction(legs) + 180.0) % 360.0 - 180.0)
    straight = _ramp(bend, STRAIGHT_BODY_DEG[1], STRAIGHT_BODY_DEG[0])
    short = min(_ramp(torso_ratio, *FORESHORTENED_TORSO), _ramp(legs_ratio, *FORESHORTENED_LEGS))
    return torso_ratio, legs_ratio, min(short, straight)


def posture_of(pose: PoseResult, config: FallConfig) -> Posture:
    kp = pose.keypoints
    shoulders = _mean_visible(kp, (L_SHOULDER, R_SHOULDER), config.keypoint_threshold)
    hips = _mean_visible(kp, (L_HIP, R_HIP), config.keypoint_threshold)
    head = _mean_visible(kp, HEAD, config.keypoint_threshold)
    x1, y1, x2, y2 = pose.box
    width, height = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    aspect = width / height

    # Torso axis: hips -> shoulders; without hips (upper-body shots) the neck axis shoulders -> head.
    lower, upper = (hips, shoulders) if hips is not None and shoulders is not None else (shoulders, head)
    angle = None
    if lower is not None and upper is not None and float(np.hypot(*(upper - lower))) > 1e-3:
        dx, dy = upper - lower
        angle = math.degrees(math.atan2(abs(float(dx)), -float(dy)))  # 0 = upright, 90 = flat, 180 = upside down
    # Legs: hips -> ankles (else knees). A person bent double at the waist has a flat torso but legs still
    # standing; a lying person's legs lie too. Sitting people have upright torsos, so the torso term keeps them out.
    feet = _mean_visible(kp, (L_ANKLE, R_ANKLE), config.keypoint_threshold)
    from_knees = feet is None
    if feet is None:
        feet = _mean_visible(kp, (L_KNEE, R_KNEE), config.keypoint_threshold)
    legs_angle = None
    if hips is not None and feet is not None and float(np.hypot(*(feet - hips))) > 1e-3:
        ldx, ldy = hips - feet
        legs_angle = math.degrees(math.atan2(abs(float(ldx)), -float(ldy)))
    reference = hips if hips is not None else shoulders
    head_height = None
    if head is not None and reference is not None:
        head_height = float(reference[1] - head[1]) / max(width, height)

    torso_ratio, legs_ratio, short = _foreshortening(kp, shoulders, hips, feet, from_knees, config.keypoint_threshold)

    # A foreshortened body's box, angle and head height say little (it looks near-vertical and narrow): its
    # short, straight length stands in for all three, so `short` alone at or above lying_threshold reads lying.
    terms: list[tuple[float, float]] = [(max(_ramp(aspect, 0.8, 1.4), short), 0.25)]
    if angle is not None:
        terms.append((max(_ramp(angle, 30.0, 70.0), short), 0.5))
    elif short:
        terms.append((short, 0.5))
    if head_height is not None:
        terms.append((max(_ramp(head_height, 0.15, -0.05), short), 0.25))
    total = sum(w for _, w in terms)
    score = sum(v * w for v, w in terms) / total
    if legs_angle is not None and legs_angle < 35.0 and short < 0.5:
        score *= 0.5  # standing legs (long and vertical): bending or reaching, not lying
    if angle is not None and angle > UPSIDE_DOWN_DEG and aspect < 0.8 and short < 0.5:
        score = min(score, (config.upright_threshold + config.lying_threshold) / 2)  # an upside-down misread
    state: PostureState = (
        "lying" if score >= config.lying_threshold else "upright" if score < config.upright_threshold else "unclear"
    )
    return Posture(
        angle,
        aspect,
        head_height,
        round(score, 4),
        state,
        None if torso_ratio is None else round(torso_ratio, 3),
        None if legs_ratio is None else round(legs_ratio, 3),
        round(short, 3),
    )


@dataclasses.dataclass(frozen=True)
class FallDecision:
    event: EventType | None
    confidence: float
    down_for_s: float | None  # frame time since the person was first seen lying in this run
    transition_s: float | None  # frame time between the last upright and the first lying observation


def decide(history: Sequence[Observation], t: float, config: FallConfig) -> FallDecision:
    """The verdict for a track at frame time `t` from its observations at or before `t` (`data["state"]`,
    `data["lying"]`). A run of lying continues through 'unclear' frames and ends at an upright one."""
    past = [o for o in history if o.t <= t]
    if not past or past[-1].data.get("state") != "lying":
        return FallDecision(None, 0.0, None, None)
    run: list[Observation] = []
    last_upright: Observation | None = None
    for obs in reversed(past):
        if obs.data.get("state") == "upright":
            last_upright = obs
            break
        run.append(obs)
    lying = [o for o in run if o.data.get("state") == "lying"]
    first_down = lying[-1]  # run is newest-first
    down_for = t - first_down.t
    transition = first_down.t - last_upright.t if last_upright is not None else None
    evidence = float(np.mean([float(o.data.get("lying", 0.0)) for o in lying]))
    fast = transition is not None and transition <= config.max_transition_s
    if fast and down_for >= config.min_down_s:
        return FallDecision("fall_detected", round(0.5 + 0.5 * evidence, 4), down_for, transition)
    if (
        config.confirm_lying_s is not None
        and down_for >= config.confirm_lying_s
        and evidence >= config.confirm_min_lying
        and _flat(lying)
    ):
        return FallDecision("fall_detected", round(0.5 + 0.4 * evidence, 4), down_for, transition)
    if config.report_possible_falls:
        return FallDecision("possible_fall", round(0.5 * evidence, 4), down_for, transition)
    return FallDecision(None, 0.0, down_for, transition)


#: A torso pointing further down than this (head well below the hips) is someone bent over, not lying flat. Lying
#: people measured 71-107 degrees on the tune photographs, a worker bent into a trench 124 (docs/accuracy.md).
BENT_OVER_DEG = 115.0


def _flat(lying: Sequence[Observation]) -> bool:
    """Confirming a fall nobody saw needs a body lying flat: the run's median torso angle at most BENT_OVER_DEG
    (unknown angles don't veto). A seen upright -> lying fall is confirmed without this."""
    angles = [float(o.data["angle"]) for o in lying if o.data.get("angle") is not None]
    return not angles or float(np.median(angles)) <= BENT_OVER_DEG


#: a box within this share of the frame's side from an edge: the person may have walked out of view
EDGE_MARGIN = 0.02


def at_edge(box: Sequence[float], width: int, height: int) -> bool:
    x1, y1, x2, y2 = box
    mx, my = EDGE_MARGIN * width, EDGE_MARGIN * height
    return x1 <= mx or y1 <= my or x2 >= width - mx or y2 >= height - my


def search_square(box: Sequence[float], config: FallConfig) -> tuple[float, float, float]:
    """(x, y, side) of the square around a person's last box where they are looked for (and where a person seen
    later means they may have got up): `search_grow` times the box's longer side, at least 32 px."""
    x1, y1, x2, y2 = box
    side = max(config.search_grow * max(x2 - x1, y2 - y1), 32.0)
    return (x1 + x2 - side) / 2, (y1 + y2 - side) / 2, side


def _vanished(
    state: Mapping[str, Any], t: float, seen: set[int], width: int, height: int, config: FallConfig
) -> list[dict[str, Any]]:
    """Detections (posture "lost") for people seen to fall fast who vanished where they lay for min_down_s."""
    out = []
    for track in state.get("tracks", []):
        if track["id"] in seen:
            continue
        history = history_until(state, track["id"], t)
        if not history or history[-1].t >= t or history[-1].data.get("state") != "lying":
            continue
        last = history[-1]
        if at_edge(last.box, width, height):
            continue
        verdict = decide(history, last.t, config)
        if verdict.transition_s is None or verdict.transition_s > config.max_transition_s:
            continue  # not seen going down fast: a slow lie-down, or first seen lying
        down_for = (verdict.down_for_s or 0.0) + (t - last.t)
        if down_for < config.min_down_s or _someone_came(state, track["id"], last, t, config):
            continue
        out.append(
            {
                "bbox": [round(float(v), 2) for v in last.box],
                "confidence": 0.0,
                "track_id": int(track["id"]),
                "keypoints": [],
                "posture": "lost",
                "torso_angle": last.data.get("angle"),
                "aspect_ratio": None,
                "lying_score": float(last.data.get("lying", 0.0)),
                "event": "fall_detected",
                "event_confidence": round(0.5 + 0.3 * float(last.data.get("lying", 0.0)), 4),
                "down_for_s": round(down_for, 3),
                "transition_s": round(verdict.transition_s, 3),
                "recovered": False,
                "lost_for_s": round(t - last.t, 3),
            }
        )
    return out


def _someone_came(state: Mapping[str, Any], track_id: int, last: Observation, t: float, config: FallConfig) -> bool:
    """Was a person who was not already tracked when `track_id` vanished seen where it lay since (the fallen person
    getting up, read as someone new)?"""
    x, y, side = search_square(last.box, config)
    for track in state.get("tracks", []):
        if track["id"] == track_id or any(e["t"] <= last.t for e in track["history"]):
            continue
        for entry in track["history"]:
            bx1, by1, bx2, by2 = entry["box"]
            cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2
            if last.t < entry["t"] <= t and x <= cx <= x + side and y <= cy <= y + side:
                return True
    return False


def _bbox(pose: PoseResult) -> list[float]:
    return [round(float(v), 2) for v in pose.box]


def assess_frame(
    state: Mapping[str, Any] | None,
    t: float,
    poses: Sequence[PoseResult],
    config: FallConfig,
    tracker: TrackerConfig = DEFAULT_TRACKER,
    recovered: Mapping[int, PoseResult] | None = None,
    frame_shape: Sequence[int] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One frame of one stream: returns (new tracker state, RESULT payload). Pure: call it inside
    `ctx.update_state` so the read-modify-write of the stream's tracks is atomic across instances.
    `recovered`: track id -> a person the full-frame passes lost and a search found again (ruth_vision.fall_search);
    each continues its own track. `frame_shape` (height, width, ...): with it, people seen to fall who then
    vanished where they lay are reported too (`confirm_vanished`)."""
    people = [p for p in poses if p.score >= config.min_person_score]
    hints: list[int | None] = [None] * len(people)
    for track_id, pose in (recovered or {}).items():
        people.append(pose)
        hints.append(track_id)
    postures = [posture_of(p, config) for p in people]
    data = [
        {"state": q.state, "lying": q.lying_score, "angle": None if q.torso_angle is None else round(q.torso_angle, 1)}
        | ({"recovered": True} if hint is not None else {})
        for q, hint in zip(postures, hints, strict=True)
    ]
    new_state, ids = update_tracks(state, t, [p.box for p in people], data, tracker, hints)
    detections: list[dict[str, Any]] = []
    for pose, posture, track_id, hint in zip(people, postures, ids, hints, strict=True):
        verdict = decide(history_until(new_state, track_id, t), t, config)
        detections.append(
            {
                "bbox": _bbox(pose),
                "confidence": round(pose.score, 4),
                "track_id": track_id,
                "keypoints": keypoints_json(pose.keypoints),
                "posture": posture.state,
                "torso_angle": None if posture.torso_angle is None else round(posture.torso_angle, 1),
                "aspect_ratio": round(posture.aspect, 3),
                "lying_score": posture.lying_score,
                "event": verdict.event,
                "event_confidence": verdict.confidence,
                "down_for_s": None if verdict.down_for_s is None else round(verdict.down_for_s, 3),
                "transition_s": None if verdict.transition_s is None else round(verdict.transition_s, 3),
                "recovered": hint is not None,
                "lost_for_s": None,
            }
        )
    if frame_shape is not None and config.confirm_vanished:
        detections += _vanished(new_state, t, set(ids), int(frame_shape[1]), int(frame_shape[0]), config)
    falls = [d for d in detections if d["event"] == "fall_detected"]
    possible = [d for d in detections if d["event"] == "possible_fall"]
    flagged = falls or possible
    violation_type = "fall_detected" if falls else "possible_fall" if possible else None
    payload = {
        "violation_detected": bool(flagged),
        "violation_type": violation_type,
        "severity": "critical" if falls else "high" if possible else "low",
        "confidence": max((d["event_confidence"] for d in flagged), default=0.0),
        "detections": detections,
        "detection_count": len(detections),
        "falls_detected": len(falls),
        "possible_falls": len(possible),
    }
    return new_state, payload
