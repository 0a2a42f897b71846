"""Geo-fencing: is each person standing inside a restricted zone, or outside the zone they must stay in?

A person stands where their feet are, so the test point is the ankles (the box bottom-centre when the ankles
are not visible), not the box centre the original runtime used, which puts a tall person "inside" a floor zone
they are only standing in front of. Every violating zone is reported, and a zone may require a minimum dwell
(frame time, per tracked person) before it counts, which filters people just walking past its edge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ruth_vision import MAX_COORD_PX
from ruth_vision.pose import PoseResult, keypoints_json
from ruth_vision.tracking import DEFAULT_TRACKER, Observation, TrackerConfig, history_until, update_tracks

__all__ = ["GeoConfig", "Zone", "assess_frame", "dwell_s", "foot_point", "point_in_zone", "zone_polygon"]

L_ANKLE, R_ANKLE = 15, 16
LEGACY_ZONE_KEYS = ("tank_corners", "geofence_points")


class Zone(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64)
    name: str = Field(default="", max_length=128)
    points: list[tuple[float, float]] = Field(min_length=3, max_length=256)
    type: Literal["restricted", "allowed"] = "restricted"
    min_dwell_s: float | None = Field(default=None, ge=0.0, le=3600.0, description="overrides the stream's")

    @field_validator("points")
    @classmethod
    def _finite_non_negative(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for x, y in points:
            if not (np.isfinite(x) and np.isfinite(y)) or x < 0 or y < 0:
                raise ValueError(f"zone points must be finite and non-negative, got [{x}, {y}]")
            if x > MAX_COORD_PX or y > MAX_COORD_PX:
                raise ValueError(f"zone points must be at most {MAX_COORD_PX:.0f} px, got [{x}, {y}]")
        return points


def _points_as_tuples(zone: Any) -> Any:
    if not isinstance(zone, Mapping) or not isinstance(zone.get("points"), list):
        return zone
    points = [tuple(p) if isinstance(p, list) else p for p in zone["points"]]
    return {**zone, "points": points}


class GeoConfig(BaseModel):
    """Per-stream settings (the request's CONFIG). The original's `tank_corners` / `geofence_points` (one point
    list) are still accepted and become one restricted zone `zone_1`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zones: list[Zone] = Field(default_factory=list, max_length=64)
    coordinates: Literal["auto", "pixels", "normalized"] = Field(
        default="auto", description="auto: a zone whose coordinates are all within 0..1 is normalised to the frame"
    )
    min_dwell_s: float = Field(default=0.0, ge=0.0, le=3600.0)
    keypoint_threshold: float = Field(default=0.25, ge=0.0, le=1.0)
    min_person_score: float = Field(default=0.2, ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _legacy_points(cls, data: Any) -> Any:
        """Legacy point lists become zone `zone_1`; each [x, y] becomes a tuple.

        A before-validator hands the rest of validation Python objects even for JSON input, and strict mode (how
        request CONFIGs are validated, python_backends.validation) accepts only a tuple for a tuple field.
        """
        if not isinstance(data, Mapping):
            return data
        legacy = [k for k in LEGACY_ZONE_KEYS if k in data]
        converted = {k: v for k, v in data.items() if k not in LEGACY_ZONE_KEYS}
        if legacy and not converted.get("zones"):
            converted["zones"] = [{"id": "zone_1", "name": "zone_1", "points": data[legacy[0]]}]
        zones = converted.get("zones")
        if isinstance(zones, list):
            converted["zones"] = [_points_as_tuples(zone) for zone in zones]
        return converted

    @field_validator("zones")
    @classmethod
    def _unique_ids(cls, zones: list[Zone]) -> list[Zone]:
        ids = [z.id for z in zones]
        if len(ids) != len(set(ids)):
            raise ValueError(f"zone ids must be unique, got {ids}")
        return zones


def zone_polygon(zone: Zone, width: int, height: int, coordinates: str = "auto") -> np.ndarray:
    """The zone in frame pixels, float32 [N, 2]."""
    pts = np.asarray(zone.points, dtype=np.float32)
    normalised = coordinates == "normalized" or (coordinates == "auto" and float(pts.max()) <= 1.0)
    if normalised:
        pts = pts * np.asarray([width, height], dtype=np.float32)
    return pts


def point_in_zone(polygon: np.ndarray, point: tuple[float, float]) -> bool:
    """Inside or on the edge."""
    return cv2.pointPolygonTest(polygon.reshape(-1, 1, 2), (float(point[0]), float(point[1])), False) >= 0


def foot_point(pose: PoseResult, threshold: float) -> tuple[tuple[float, float], Literal["ankles", "box"]]:
    ankles = pose.keypoints[[L_ANKLE, R_ANKLE]]
    visible = ankles[ankles[:, 2] >= threshold]
    if len(visible):
        return (float(visible[:, 0].mean()), float(visible[:, 1].max())), "ankles"
    x1, _, x2, y2 = pose.box
    return ((x1 + x2) / 2, y2), "box"


def dwell_s(history: Sequence[Observation], zone_id: str, t: float) -> float:
    """How long (frame time, up to t) the track has been violating `zone_id` without a break."""
    start = None
    for obs in reversed([o for o in history if o.t <= t]):
        if zone_id not in obs.data.get("violating", ()):
            break
        start = obs.t
    return 0.0 if start is None else t - start


def _severity(offenders: int, top_confidence: float) -> str:
    """The original runtime's rule: how many people are in violation, and how sure the best detection is."""
    if not offenders:
        return "low"
    if offenders >= 3 or top_confidence > 0.85:
        return "critical"
    if offenders >= 2 or top_confidence > 0.7:
        return "high"
    return "medium"


def assess_frame(
    state: Mapping[str, Any] | None,
    t: float,
    poses: Sequence[PoseResult],
    frame_size: tuple[int, int],
    config: GeoConfig,
    tracker: TrackerConfig = DEFAULT_TRACKER,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One frame of one stream -> (new tracker state, RESULT payload). `frame_size` is (width, height)."""
    width, height = frame_size
    polygons = [(zone, zone_polygon(zone, width, height, config.coordinates)) for zone in config.zones]
    people = [p for p in poses if p.score >= config.min_person_score]
    feet = [foot_point(p, config.keypoint_threshold) for p in people]
    inside = [[point_in_zone(poly, point) for _, poly in polygons] for point, _ in feet]
    violating = [
        [zone.id for (zone, _), hit in zip(polygons, flags, strict=True) if hit == (zone.type == "restricted")]
        for flags in inside
    ]
    new_state, ids = update_tracks(state, t, [p.box for p in people], [{"violating": v} for v in violating], tracker)

    detections: list[dict[str, Any]] = []
    for pose, (point, source), flags, track_id in zip(people, feet, inside, ids, strict=True):
        history = history_until(new_state, track_id, t)
        zone_hits = []
        for (zone, _), hit in zip(polygons, flags, strict=True):
            if hit != (zone.type == "restricted"):
                continue
            dwell = dwell_s(history, zone.id, t)
            needed = zone.min_dwell_s if zone.min_dwell_s is not None else config.min_dwell_s
            if dwell >= needed:
                zone_hits.append(
                    {
                        "zone_id": zone.id,
                        "zone_name": zone.name or zone.id,
                        "zone_type": zone.type,
                        "violation_type": "zone_intrusion" if zone.type == "restricted" else "zone_exit",
                        "dwell_s": round(dwell, 3),
                    }
                )
        containing = [zone.id for (zone, _), hit in zip(polygons, flags, strict=True) if hit]
        zone_id = zone_hits[0]["zone_id"] if zone_hits else (containing[0] if containing else None)
        detections.append(
            {
                "bbox": [round(float(v), 2) for v in pose.box],
                "confidence": round(pose.score, 4),
                "track_id": track_id,
                "keypoints": keypoints_json(pose.keypoints),
                "foot_point": [round(point[0], 2), round(point[1], 2)],
                "foot_source": source,
                "zone_id": zone_id,
                "in_zone": zone_id is not None and zone_id in containing,
                "zones_inside": containing,
                "violation": bool(zone_hits),
                "violations": zone_hits,
            }
        )

    offenders = [d for d in detections if d["violation"]]
    kinds = {hit["violation_type"] for d in offenders for hit in d["violations"]}
    top = max((d["confidence"] for d in offenders), default=0.0)
    severity = _severity(len(offenders), top)
    payload = {
        "violation_detected": bool(offenders),
        "violation_type": "zone_intrusion" if "zone_intrusion" in kinds else "zone_exit" if kinds else None,
        "severity": severity,
        "confidence": top,
        "detections": detections,
        "zones_violated": sorted({hit["zone_id"] for d in offenders for hit in d["violations"]}),
        "metadata": {
            "persons_detected": len(detections),
            "persons_in_zone": len(offenders),
            "zones_configured": len(config.zones),
            "frame_shape": [height, width, 3],
        },
    }
    return new_state, payload
