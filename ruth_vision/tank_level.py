"""Liquid level in a tank from its surface line (the `tank_overflow_monitoring` algorithm), as pure functions.

The pipeline follows the original runtime's (gray -> contrast -> 5x5 blur -> Canny(30, 100) -> HoughLinesP ->
topmost near-horizontal line -> level = distance from the ROI bottom), with its bugs fixed:

* The original's `equalizeHist` turned sensor noise in large uniform areas into edges (on a synthetic tank with
  noise sigma 3, a third of the ROI became edge pixels and the surface was lost); a blur followed by a linear
  percentile stretch lifts dim scenes without that. Each Hough line is then snapped to the strongest brightness step
  next to it and kept only if that step is large against the pixel noise, and the minimum line length grows with
  the ROI width (a quarter of it), so texture can't pass for a surface.
* A region that shows no surface (blank, dark, featureless, or no long horizontal edge) is reported as
  "no surface visible" with level ``None`` and confidence 0.0, never as level 0 with a critical-low alarm.
* Smoothing state is per stream, kept by the caller as a JSON-serialisable dict, and ordered by the frame's own
  timestamp (a late frame lands where it belongs; a retried frame replaces itself instead of counting twice).
* The status text and the violation come from one classification with the configured thresholds.
* ``surface_y`` is in frame coordinates (the original reported it relative to the ROI).

Heavy pixel work (`measure_surface`) is separate from the cheap state update (`smooth`) so that the model can run
the latter inside the state store's atomic read-modify-write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ruth_vision import MAX_COORD_PX

#: One corner coordinate in frame pixels (outside the frame is clamped; bounded so nothing overflows).
Coordinate = Annotated[float, Field(ge=-MAX_COORD_PX, le=MAX_COORD_PX)]

__all__ = [
    "DEFAULT_ROI_MARGIN",
    "MIN_ROI_SIDE_PX",
    "NO_SURFACE_CONFIDENCE",
    "STATUS_CRITICAL_HIGH",
    "STATUS_CRITICAL_LOW",
    "STATUS_HIGH",
    "STATUS_LOW",
    "STATUS_NORMAL",
    "STATUS_NO_SURFACE",
    "STATUS_WARNING",
    "Classification",
    "RoiOutsideFrame",
    "SurfaceMeasurement",
    "TankConfig",
    "build_result",
    "classify",
    "measure_surface",
    "resolve_roi",
    "smooth",
    "window_mean",
]

#: Without `tank_corners` the tank is assumed to fill the centre 60% of the frame (20% margin on every side),
#: as in the original runtime. Operators should always configure corners; this default only suits a camera
#: aimed squarely at the tank.
DEFAULT_ROI_MARGIN = 0.20
#: A region narrower or shorter than this can't hold a measurable surface line.
MIN_ROI_SIDE_PX = 10
#: Confidence reported when no surface is visible: the level was not measured at all.
NO_SURFACE_CONFIDENCE = 0.0

# Original pipeline constants (tank_detector.py). The minimum line length is additionally scaled with the ROI
# width (see `_min_line_length`) so that texture or sensor noise can't pass for a surface.
_CANNY_LOW, _CANNY_HIGH = 30, 100
_HOUGH_THRESHOLD, _HOUGH_MIN_LINE_PX, _HOUGH_MAX_GAP_PX = 30, 20, 10
_MIN_LINE_WIDTH_FRACTION = 0.25
_HORIZONTAL_TOLERANCE = 0.10  # |y1 - y2| < 10% of the ROI height counts as horizontal
# Checks in the original gray levels that keep noise and texture from passing for a surface: the ROI's row-mean
# profile must span _MIN_CONTRAST_LEVELS (a surface is a horizontal feature, and row means average noise away), and
# a candidate line must separate bands of _STEP_BAND_PX rows whose means differ by _MIN_STEP_LEVELS and by
# _MIN_STEP_SNR standard errors, along its own length.
_MIN_CONTRAST_LEVELS = 12.0
_MIN_STEP_LEVELS = 10.0
_MIN_STEP_SNR = 8.0
_STEP_BAND_PX = 4
_REFINE_PX = 4  # a Hough segment is snapped to the strongest step within this many rows
_COVERAGE_BAND_PX = 3  # segments within this many rows of the surface count towards its coverage

STATUS_CRITICAL_HIGH = "CRITICAL - OVERFLOW RISK"
STATUS_WARNING = "WARNING - NEARLY FULL"
STATUS_HIGH = "HIGH"
STATUS_NORMAL = "NORMAL"
STATUS_LOW = "LOW"
STATUS_CRITICAL_LOW = "CRITICAL LOW"
STATUS_NO_SURFACE = "NO SURFACE VISIBLE"


class RoiOutsideFrame(ValueError):
    """`tank_corners` leave less than a measurable region inside the frame: a configuration mistake."""


class TankConfig(BaseModel):
    """The request's CONFIG for tank_overflow_monitoring. Thresholds are percent of capacity, inclusive."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    tank_corners: tuple[tuple[Coordinate, Coordinate], ...] | None = Field(
        default=None,
        min_length=4,
        max_length=4,
        description="Four [x, y] frame-pixel corners of the tank interior; their bounding box is the ROI.",
    )
    capacity_liters: float = Field(default=1000.0, gt=0, le=1e9)
    alert_threshold: float = Field(default=90.0, ge=0, le=100, description="Level that raises the overflow warning.")
    critical_high: float = Field(default=95.0, ge=0, le=100)
    high: float = Field(
        default=75.0, ge=0, le=100, description="Status 'HIGH' from here up to alert_threshold; no violation."
    )
    low: float = Field(default=25.0, ge=0, le=100, description="Status 'LOW' at or below; no violation.")
    critical_low: float = Field(default=10.0, ge=0, le=100)
    smoothing_window: int = Field(default=5, ge=1, le=600, description="Frames in the moving mean.")

    @model_validator(mode="after")
    def _thresholds_are_ordered(self) -> TankConfig:
        """Overlapping alarm bands would make one level both 'low' and 'nearly full', so refuse them.

        `high` only names a status band and may sit anywhere: above `alert_threshold` the band is simply empty.
        """
        if not (self.critical_low < self.low < self.alert_threshold <= self.critical_high):
            raise ValueError(
                "thresholds must satisfy critical_low < low < alert_threshold <= critical_high, got "
                f"{self.critical_low} / {self.low} / {self.alert_threshold} / {self.critical_high}"
            )
        return self


@dataclass(frozen=True)
class SurfaceMeasurement:
    """One frame's reading. `level_percent` is None when no surface could be seen (`reason` says why)."""

    level_percent: float | None
    surface_y: int | None  # frame row of the surface line
    roi: tuple[int, int, int, int]  # x1, y1, x2, y2 in frame pixels (exclusive end)
    confidence: float
    reason: str | None = None  # "low_contrast" | "no_horizontal_edge" when not visible

    @property
    def visible(self) -> bool:
        return self.level_percent is not None


@dataclass(frozen=True)
class Classification:
    violation_detected: bool
    violation_type: str | None
    severity: str
    status: str


def resolve_roi(frame_shape: tuple[int, ...], cfg: TankConfig) -> tuple[int, int, int, int]:
    """ROI box (x1, y1, x2, y2), clamped to the frame. Raises RoiOutsideFrame when too little of it is inside."""
    height, width = int(frame_shape[0]), int(frame_shape[1])
    if cfg.tank_corners is None:
        mx, my = round(width * DEFAULT_ROI_MARGIN), round(height * DEFAULT_ROI_MARGIN)
        box = (mx, my, width - mx, height - my)
    else:
        xs = [p[0] for p in cfg.tank_corners]
        ys = [p[1] for p in cfg.tank_corners]
        box = (
            max(0, math.floor(min(xs))),
            max(0, math.floor(min(ys))),
            min(width, math.ceil(max(xs))),
            min(height, math.ceil(max(ys))),
        )
    x1, y1, x2, y2 = box
    if x2 - x1 <= MIN_ROI_SIDE_PX or y2 - y1 <= MIN_ROI_SIDE_PX:
        raise RoiOutsideFrame(
            f"tank region {list(box)} inside a {width}x{height} frame is under {MIN_ROI_SIDE_PX + 1} px on a side; "
            "check tank_corners against the camera resolution"
        )
    return box


def _min_line_length(roi_width: int) -> int:
    return max(_HOUGH_MIN_LINE_PX, round(roi_width * _MIN_LINE_WIDTH_FRACTION))


def _stretch(gray: np.ndarray) -> np.ndarray:
    """Linear contrast stretch (1st..99th percentile to 0..255): lifts a dim scene without amplifying noise."""
    low, high = (float(v) for v in np.percentile(gray, (1, 99)))
    if high - low < 1.0:
        return gray
    scale = 255.0 / (high - low)
    return cv2.convertScaleAbs(gray, alpha=scale, beta=-low * scale)


def _refine_step(gray: np.ndarray, segment: tuple[int, ...]) -> tuple[int, float] | None:
    """Snap a Hough segment to the strongest brightness step near it; None if that step isn't a real edge.

    Returns (boundary row: first row below the surface, step in gray levels). The step must be both large in gray
    levels and large against the pixel noise of the two bands, so texture and sensor noise can't pass for a surface.
    """
    x1, y1, x2, y2 = segment
    xa, xb = min(x1, x2), max(x1, x2) + 1
    h = gray.shape[0]
    band = _STEP_BAND_PX
    centre = round((y1 + y2) / 2)
    rows = range(max(band, centre - _REFINE_PX), min(h - band, centre + _REFINE_PX + 1) + 1)
    if len(rows) == 0:
        return None  # on the ROI border: nothing on one side to compare against
    profile = gray[:, xa:xb].mean(axis=1)
    best = max(rows, key=lambda y: abs(float(profile[y - band : y].mean() - profile[y : y + band].mean())))
    above = gray[best - band : best, xa:xb].astype(np.float64)
    below = gray[best : best + band, xa:xb].astype(np.float64)
    step = abs(float(above.mean() - below.mean()))
    noise = math.sqrt(float(above.var()) / above.size + float(below.var()) / below.size) + 1e-6
    if step < _MIN_STEP_LEVELS or step / noise < _MIN_STEP_SNR:
        return None
    return best, step


def measure_surface(frame_bgr: np.ndarray, cfg: TankConfig) -> SurfaceMeasurement:
    """Find the liquid surface in the tank ROI of an HxWx3 uint8 BGR frame (no state, no smoothing)."""
    roi = resolve_roi(frame_bgr.shape, cfg)
    x1, y1, x2, y2 = roi
    crop = np.ascontiguousarray(frame_bgr[y1:y2, x1:x2])
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    profile = gray.mean(axis=1)
    if float(profile.max() - profile.min()) < _MIN_CONTRAST_LEVELS:
        return SurfaceMeasurement(None, None, roi, NO_SURFACE_CONFIDENCE, "low_contrast")

    h, w = gray.shape
    edges = cv2.Canny(_stretch(cv2.GaussianBlur(gray, (5, 5), 0)), _CANNY_LOW, _CANNY_HIGH)
    lines = cv2.HoughLinesP(
        edges,
        rho=1,
        theta=np.pi / 180,
        threshold=_HOUGH_THRESHOLD,
        minLineLength=_min_line_length(w),
        maxLineGap=_HOUGH_MAX_GAP_PX,
    )
    segments = [] if lines is None else [tuple(int(v) for v in line[0]) for line in lines]
    surfaces: list[tuple[int, int]] = []  # (boundary row, segment length)
    for seg in segments:
        if abs(seg[1] - seg[3]) >= _HORIZONTAL_TOLERANCE * h:
            continue
        refined = _refine_step(gray, seg)
        if refined is not None:
            surfaces.append((refined[0], abs(seg[2] - seg[0]) + 1))
    if not surfaces:
        return SurfaceMeasurement(None, None, roi, NO_SURFACE_CONFIDENCE, "no_horizontal_edge")

    boundary = min(row for row, _ in surfaces)  # topmost: liquid below, empty tank above
    covered = sum(length for row, length in surfaces if abs(row - boundary) <= _COVERAGE_BAND_PX)
    coverage = min(1.0, covered / w)
    level = float(np.clip((h - boundary) / h * 100.0, 0.0, 100.0))
    # A surface seen across the whole tank width is trustworthy; a short segment much less so.
    confidence = round(0.5 + 0.45 * coverage, 3)
    return SurfaceMeasurement(level, y1 + boundary, roi, confidence)


def _epoch(timestamp: datetime | float) -> float:
    return timestamp.timestamp() if isinstance(timestamp, datetime) else float(timestamp)


def window_mean(state: dict[str, Any] | None) -> float | None:
    """Mean level of the state's window, or None for a stream with no visible surface yet."""
    samples = (state or {}).get("samples") or []
    if not samples:
        return None
    return float(sum(level for _, level in samples) / len(samples))


def smooth(
    state: dict[str, Any] | None,
    measurement: SurfaceMeasurement,
    timestamp: datetime | float,
    cfg: TankConfig,
) -> tuple[dict[str, Any], float | None]:
    """Add one reading to a stream's moving-mean window; return the new state and the smoothed level.

    The window holds the `smoothing_window` newest samples *by frame timestamp*, so the result depends on which
    frames were seen, not on the order requests happened to arrive in (several instances may serve one stream).
    A sample with a timestamp already in the window replaces it: a client's retry of a frame doesn't count twice.
    A frame without a visible surface leaves the window alone and yields None: there is nothing to smooth.
    The state is plain JSON (lists of [epoch_seconds, level]).
    """
    samples: list[list[float]] = [list(s) for s in (state or {}).get("samples") or []]
    if not measurement.visible:
        return {"samples": samples}, None
    assert measurement.level_percent is not None
    ts = _epoch(timestamp)
    samples = [s for s in samples if s[0] != ts]
    samples.append([ts, float(measurement.level_percent)])
    samples.sort(key=lambda s: s[0])
    samples = samples[-cfg.smoothing_window :]
    new_state = {"samples": samples}
    return new_state, window_mean(new_state)


def classify(level: float | None, cfg: TankConfig) -> Classification:
    """Violation and status text from one set of bands, so the two can never disagree."""
    if level is None:
        return Classification(False, None, "low", STATUS_NO_SURFACE)
    if level >= cfg.critical_high:
        return Classification(True, "tank_critical_high", "critical", STATUS_CRITICAL_HIGH)
    if level >= cfg.alert_threshold:
        return Classification(True, "tank_overflow_warning", "high", STATUS_WARNING)
    if level <= cfg.critical_low:
        return Classification(True, "tank_critical_low", "critical", STATUS_CRITICAL_LOW)
    if level <= cfg.low:
        return Classification(False, None, "medium", STATUS_LOW)
    if level >= cfg.high:
        return Classification(False, None, "low", STATUS_HIGH)
    return Classification(False, None, "low", STATUS_NORMAL)


def build_result(measurement: SurfaceMeasurement, smoothed: float | None, cfg: TankConfig) -> dict[str, Any]:
    """The RESULT payload (model fields plus the common ones); the base class adds `metadata`.

    `level_percent` is the smoothed level when this frame showed a surface and None when it did not: a frame that
    can't see the surface must not repeat an older reading as if it had measured it.
    """
    level = smoothed if measurement.visible else None
    verdict = classify(level, cfg)
    x1, y1, x2, y2 = measurement.roi
    detections = (
        [{"surface_y": measurement.surface_y, "bbox": [x1, y1, x2, y2], "confidence": measurement.confidence}]
        if measurement.visible
        else []
    )
    return {
        "violation_detected": verdict.violation_detected,
        "violation_type": verdict.violation_type,
        "severity": verdict.severity,
        "confidence": measurement.confidence,
        "detections": detections,
        "level_percent": None if level is None else round(level, 2),
        "level_percent_raw": None if measurement.level_percent is None else round(measurement.level_percent, 2),
        "level_liters": None if level is None else round(level / 100.0 * cfg.capacity_liters, 2),
        "capacity_liters": cfg.capacity_liters,
        "alert_threshold": cfg.alert_threshold,
        "status": verdict.status,
        "surface_visible": measurement.visible,
        "surface_reason": measurement.reason,
        "roi": [x1, y1, x2, y2],
    }
