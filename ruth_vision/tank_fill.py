"""Fill of a top-down circular tank from the bright-pixel share of a circular ROI (the `chane_tank_monitor` algorithm).

As such a tank fills, the reflective liquid surface covers more of the opening, so the share of "bright" pixels in
the opening rises. Per frame: the share of ROI pixels brighter than `brightness_threshold`; per stream: a moving
mean ordered by frame timestamp, a linear map between two calibration points (fixed, or learned from the stream's
own first frames), and a slew-limited display value.

Differences from the original runtime, on purpose:

* State is per stream, kept by the caller as a JSON-serialisable dict (the original had one global session, which
  a 320x240 warm-up frame could create and lock onto a wrong ROI).
* The ROI is resolved on every frame from CONFIG or the documented fallback (frame centre, r = 0.30*min(H, W)); a
  CONFIG change resets the stream's state in the model base. The original's hard-coded demo ROI for 1920x1080
  frames is gone: it was measured on one clip and would silently apply to every other 1080p camera.
* The circle mask is centred on the real circle even when it is clipped at the frame edge.
* Default calibration is the original's generic one (threshold 180, window 15, map 0..1 -> 0..100%, slew 1.5), not
  its "DEMO CALIBRATION" (40 / 51 / 0.2052..0.66 / 0.5), which its own comments say was fitted to one clip and does
  not transfer. Installations calibrate through CONFIG (fixed points or `auto_calibrate`).
* No time-based fill ramp (it reported fill without looking at the video), no threshold sweep and no CSV on the
  request path, and no motion signal (it fed only the CSV).
* A uniform ROI (lens cap, blank or frozen feed) reports "ROI not visible" instead of a fill of 0% or 100%.
* The result carries `violation_detected` / `violation_type` / `severity` from configurable fill thresholds, judged
  on the measured fill (`fill_raw`), not on the slew-limited display value, so an alarm is never delayed by a
  cosmetic rate limit (nor suppressed by a monotonic display).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ruth_vision import MAX_COORD_PX
from ruth_vision.tank_level import RoiOutsideFrame

__all__ = [
    "FALLBACK_RADIUS_FRACTION",
    "ChaneConfig",
    "FillSignals",
    "ResolvedRoi",
    "RoiCircle",
    "RoiOutsideFrame",
    "bright_fraction",
    "resolve_roi",
    "update",
]

#: Without `roi_circle` the opening is assumed centred in the frame with radius 0.30*min(H, W) (as the original's
#: non-demo fallback). Operators should configure the circle; the fallback only suits a camera centred on it.
FALLBACK_RADIUS_FRACTION = 0.30
#: Fewer ROI pixels than this inside the frame can't give a meaningful share.
MIN_ROI_PIXELS = 50
#: A ROI whose gray levels span less than this (1st..99th percentile) shows nothing: blank, covered or frozen.
_MIN_ROI_SPREAD = 3.0
_CONFIDENCE_CALIBRATED = 0.8
_CONFIDENCE_WARMUP = 0.3  # auto-calibration still learning the empty level: the fill is on the fixed fallback map


class RoiCircle(BaseModel):
    """The tank opening in frame pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    cx: float = Field(ge=0, le=MAX_COORD_PX)
    cy: float = Field(ge=0, le=MAX_COORD_PX)
    r: float = Field(gt=0, le=MAX_COORD_PX)


class ChaneConfig(BaseModel):
    """The request's CONFIG for chane_tank_monitor. Fractions are 0..1 shares of ROI pixels; fills are percent."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    roi_circle: RoiCircle | None = None
    brightness_threshold: int = Field(default=180, ge=0, le=254, description="Gray level above which a pixel is lit.")
    smoothing_window: int = Field(default=15, ge=1, le=600, description="Frames in the moving mean of the share.")
    fill_calib_min: float = Field(default=0.0, ge=0, le=1, description="Bright share read as 0% full.")
    fill_calib_max: float = Field(default=1.0, ge=0, le=1, description="Bright share read as 100% full.")
    auto_calibrate: bool = False
    auto_warmup_frames: int = Field(default=30, ge=1, le=600, description="First frames, assumed empty: the 0% anchor.")
    auto_prior_span: float = Field(default=0.05, gt=0, le=1, description="Expected share rise from empty to full.")
    auto_min_span: float = Field(default=0.02, gt=0, le=1, description="Floor on the learned span (noise guard).")
    auto_max_grow_rate: float = Field(default=0.02, ge=0, le=1, description="Most the 100% point may grow per frame.")
    display_slew_pct: float = Field(default=1.5, ge=0, le=100, description="Most the display moves per frame; 0=off.")
    display_monotonic: bool = Field(default=False, description="Display follows the running max (fill-only clips).")
    session_idle_reset_s: float = Field(
        default=5.0, ge=0, description="A gap this long in frame timestamps restarts the stream's state; 0 = never."
    )
    fill_warning_percent: float = Field(default=90.0, ge=0, le=100)
    fill_critical_percent: float = Field(default=95.0, ge=0, le=100)

    def check_frame(self, width: int, height: int) -> None:
        """The circle's centre inside the frame and its radius at most the frame's diagonal (ValueError otherwise)."""
        c = self.roi_circle
        if c is None:
            return
        if c.cx > width or c.cy > height:
            raise ValueError(f"roi_circle: centre ({c.cx:g}, {c.cy:g}) is outside the {width}x{height} frame")
        diagonal = math.hypot(width, height)
        if c.r > diagonal:
            raise ValueError(f"roi_circle: r {c.r:g} exceeds the {width}x{height} frame's diagonal ({diagonal:.0f} px)")

    @model_validator(mode="after")
    def _consistent(self) -> ChaneConfig:
        """Refuse settings the original silently turned into a constant 0% (max <= min) or overlapping alarms."""
        if self.fill_calib_max <= self.fill_calib_min:
            raise ValueError(
                f"fill_calib_max ({self.fill_calib_max}) must exceed fill_calib_min ({self.fill_calib_min})"
            )
        if self.fill_warning_percent > self.fill_critical_percent:
            raise ValueError(
                f"fill_warning_percent ({self.fill_warning_percent}) must not exceed "
                f"fill_critical_percent ({self.fill_critical_percent})"
            )
        return self


@dataclass(frozen=True)
class ResolvedRoi:
    cx: int
    cy: int
    r: int
    source: str  # "config" | "fallback"

    def bbox(self, frame_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """The circle's bounding box clamped to the frame (x1, y1, x2, y2, exclusive end)."""
        h, w = int(frame_shape[0]), int(frame_shape[1])
        return (
            max(0, self.cx - self.r),
            max(0, self.cy - self.r),
            min(w, self.cx + self.r + 1),
            min(h, self.cy + self.r + 1),
        )


@dataclass(frozen=True)
class FillSignals:
    """One frame's pixel measurements; `visible` is False when the ROI is uniform (nothing to measure)."""

    roi: ResolvedRoi
    bbox: tuple[int, int, int, int]
    bright_fraction: float
    mean_brightness: float
    visible: bool


def resolve_roi(frame_shape: tuple[int, ...], cfg: ChaneConfig) -> ResolvedRoi:
    """The ROI circle from CONFIG, else the documented fallback (frame centre, r = 0.30*min(H, W))."""
    h, w = int(frame_shape[0]), int(frame_shape[1])
    if cfg.roi_circle is None:
        return ResolvedRoi(w // 2, h // 2, max(1, round(FALLBACK_RADIUS_FRACTION * min(h, w))), "fallback")
    c = cfg.roi_circle
    return ResolvedRoi(round(c.cx), round(c.cy), max(1, round(c.r)), "config")


def bright_fraction(frame_bgr: np.ndarray, roi: ResolvedRoi, cfg: ChaneConfig) -> FillSignals:
    """Share of ROI pixels brighter than `brightness_threshold`, and their mean gray level (no state)."""
    x1, y1, x2, y2 = roi.bbox(frame_bgr.shape)
    mask = np.zeros((max(0, y2 - y1), max(0, x2 - x1)), np.uint8)
    if mask.size:
        cv2.circle(mask, (roi.cx - x1, roi.cy - y1), roi.r, (255,), -1)  # true centre, even when clipped by the frame
    inside = mask.astype(bool)
    count = int(inside.sum())
    if count < MIN_ROI_PIXELS:
        raise RoiOutsideFrame(
            f"roi_circle (cx={roi.cx}, cy={roi.cy}, r={roi.r}) covers {count} pixels of a "
            f"{frame_bgr.shape[1]}x{frame_bgr.shape[0]} frame (need {MIN_ROI_PIXELS}); check it against the camera"
        )
    crop = np.ascontiguousarray(frame_bgr[y1:y2, x1:x2])
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    values = gray[inside]
    low, high = np.percentile(values, (1, 99))
    return FillSignals(
        roi=roi,
        bbox=(x1, y1, x2, y2),
        bright_fraction=float(np.count_nonzero(values > cfg.brightness_threshold)) / count,
        mean_brightness=float(values.mean()),
        visible=float(high - low) >= _MIN_ROI_SPREAD,
    )


def _epoch(timestamp: datetime | float) -> float:
    return timestamp.timestamp() if isinstance(timestamp, datetime) else float(timestamp)


def _new_state() -> dict[str, Any]:
    return {
        "samples": [],  # [[epoch_s, bright_fraction]] newest `smoothing_window` by timestamp
        "last_ts": None,  # newest frame timestamp seen
        "frames": 0,  # frames that advanced the per-frame processes
        "warmup": [],  # smoothed shares seen while auto-calibration learns the empty level
        "empty_anchor": None,
        "auto_max": None,
        "running_max": 0.0,
        "display": None,
    }


def _calibration(state: dict[str, Any], cfg: ChaneConfig) -> tuple[float, float, str]:
    if cfg.auto_calibrate and state["empty_anchor"] is not None:
        low = float(state["empty_anchor"])
        return low, max(float(state["auto_max"]), low + cfg.auto_min_span), "auto"
    return cfg.fill_calib_min, cfg.fill_calib_max, "auto_warmup" if cfg.auto_calibrate else "fixed"


def _advance_calibration(state: dict[str, Any], smoothed: float, cfg: ChaneConfig) -> None:
    """Learn 0% from the stream's first frames (assumed empty), then let 100% grow only gradually.

    The empty anchor is the median of the warm-up (robust to a splash), frozen afterwards so 0% doesn't chase the
    rising liquid. The 100% point starts at anchor + prior span and may grow by `auto_max_grow_rate` per frame, so
    a glint can't yank the scale.
    """
    if state["empty_anchor"] is None:
        state["warmup"].append(smoothed)
        if len(state["warmup"]) < cfg.auto_warmup_frames:
            return
        anchor = float(statistics.median(state["warmup"]))
        state["empty_anchor"] = anchor
        state["auto_max"] = anchor + cfg.auto_prior_span
        state["warmup"] = []
    if smoothed > state["auto_max"]:
        state["auto_max"] = min(smoothed, state["auto_max"] + cfg.auto_max_grow_rate)


def _to_percent(share: float, low: float, high: float) -> float:
    return float(np.clip((share - low) / (high - low) * 100.0, 0.0, 100.0))


def _classify(fill: float | None, cfg: ChaneConfig) -> tuple[bool, str | None, str]:
    if fill is None:
        return False, None, "low"
    if fill >= cfg.fill_critical_percent:
        return True, "tank_critical_high", "critical"
    if fill >= cfg.fill_warning_percent:
        return True, "tank_overflow_warning", "high"
    return False, None, "low"


def update(
    state: dict[str, Any] | None,
    signals: FillSignals,
    timestamp: datetime | float,
    cfg: ChaneConfig,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fold one frame into a stream's state; return the new state and the RESULT payload.

    The smoothing window is ordered by frame timestamp (a retried frame replaces itself). A late frame (timestamp
    not newer than the newest seen) refines the window but doesn't advance the per-frame processes (calibration
    growth, display slew), so a retry or a reordering between instances doesn't move the meter twice. A gap longer
    than `session_idle_reset_s` between frame timestamps starts the stream afresh (a replayed or switched clip).
    """
    ts = _epoch(timestamp)
    st = _new_state() if state is None else {**state}
    last_ts = st["last_ts"]
    if last_ts is not None and cfg.session_idle_reset_s > 0 and ts - last_ts > cfg.session_idle_reset_s:
        st = _new_state()
        last_ts = None

    if not signals.visible:
        return st, _result(st, signals, None, None, cfg)

    samples = [s for s in st["samples"] if s[0] != ts]
    samples.append([ts, signals.bright_fraction])
    samples.sort(key=lambda s: s[0])
    st["samples"] = samples[-cfg.smoothing_window :]
    smoothed = float(sum(s[1] for s in st["samples"]) / len(st["samples"]))

    in_order = last_ts is None or ts > last_ts
    if in_order:
        st["last_ts"] = ts
        st["frames"] += 1
        st["warmup"] = list(st["warmup"])
        if cfg.auto_calibrate:
            _advance_calibration(st, smoothed, cfg)
    low, high, _ = _calibration(st, cfg)
    fill_raw = _to_percent(smoothed, low, high)
    if in_order:
        st["running_max"] = max(float(st["running_max"]), fill_raw)
        target = st["running_max"] if cfg.display_monotonic else fill_raw
        previous = st["display"]
        if previous is None or cfg.display_slew_pct <= 0:
            st["display"] = target
        else:
            st["display"] = previous + float(np.clip(target - previous, -cfg.display_slew_pct, cfg.display_slew_pct))
    return st, _result(st, signals, smoothed, fill_raw, cfg)


def _result(
    st: dict[str, Any],
    signals: FillSignals,
    smoothed: float | None,
    fill_raw: float | None,
    cfg: ChaneConfig,
) -> dict[str, Any]:
    """The RESULT payload; the base class adds `metadata`. Fill fields are None when the ROI showed nothing."""
    visible = signals.visible
    low, high, calib_source = _calibration(st, cfg)
    violation, violation_type, severity = _classify(fill_raw, cfg)
    if not visible:
        confidence = 0.0
    elif calib_source == "auto_warmup":
        confidence = _CONFIDENCE_WARMUP
    else:
        confidence = _CONFIDENCE_CALIBRATED
    roi = signals.roi
    display = st["display"] if visible else None
    return {
        "violation_detected": violation,
        "violation_type": violation_type,
        "severity": severity,
        "confidence": confidence,
        "detections": [{"bbox": list(signals.bbox), "confidence": confidence}] if visible else [],
        "fill_percentage": None if display is None else round(float(display), 2),
        "fill_raw": None if fill_raw is None else round(fill_raw, 2),
        "bright_fraction": round(signals.bright_fraction, 5),
        "bright_fraction_smoothed": None if smoothed is None else round(smoothed, 5),
        "mean_brightness": round(signals.mean_brightness, 2),
        "roi": {"cx": roi.cx, "cy": roi.cy, "r": roi.r, "source": roi.source},
        "roi_visible": visible,
        "calib_source": calib_source,
        "calib_min_active": round(low, 5),
        "calib_max_active": round(high, 5),
        "fill_running_max": round(float(st["running_max"]), 2),
        "frames_seen": int(st["frames"]),
    }
