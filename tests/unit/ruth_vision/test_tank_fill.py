"""tank_fill on synthetic top-down tank openings whose lit share is known by construction."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from ruth_vision.tank_fill import (
    ChaneConfig,
    FillSignals,
    ResolvedRoi,
    RoiCircle,
    RoiOutsideFrame,
    bright_fraction,
    resolve_roi,
    update,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
SIZE = (480, 640)
CENTRE = (320, 240)
RADIUS = 144  # 0.30 * 480: the fallback ROI


def opening_frame(fill: float, seed: int = 0, centre: tuple[int, int] = CENTRE, radius: int = RADIUS) -> np.ndarray:
    """A dark tank opening with a bright liquid disc covering `fill` (0..1) of its area, plus sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : SIZE[0], 0 : SIZE[1]]
    dist = np.hypot(xx - centre[0], yy - centre[1])
    gray = np.full(SIZE, 90.0)  # the concrete around the opening
    gray[dist <= radius] = 30.0  # the empty tank is dark
    gray[dist <= radius * math.sqrt(fill)] = 230.0  # the reflective surface
    gray += rng.normal(0.0, 3.0, SIZE)
    return np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def signals_for(share: float, visible: bool = True) -> FillSignals:
    roi = ResolvedRoi(*CENTRE, RADIUS, "fallback")
    return FillSignals(roi, roi.bbox((*SIZE, 3)), share, 100.0, visible)


def run(
    cfg: ChaneConfig, shares: list[float], state: dict[str, Any] | None = None, start: int = 0
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    results = []
    for i, share in enumerate(shares, start=start):
        state, result = update(state, signals_for(share), T0 + timedelta(seconds=i), cfg)
        results.append(result)
    return state, results


# --- configuration -------------------------------------------------------------------------------------------


def test_defaults_are_the_original_generic_calibration_not_the_demo_clip() -> None:
    cfg = ChaneConfig()
    assert (cfg.brightness_threshold, cfg.smoothing_window, cfg.fill_calib_min, cfg.fill_calib_max) == (
        180,
        15,
        0.0,
        1.0,
    )
    assert cfg.display_slew_pct == 1.5 and cfg.display_monotonic is False and cfg.auto_calibrate is False
    assert cfg.roi_circle is None


@pytest.mark.parametrize(
    "bad",
    [
        {"csv_path": "/tmp/x.csv"},
        {"fill_time_based": True},
        {"fill_calib_min": 0.6, "fill_calib_max": 0.6},
        {"fill_warning_percent": 96, "fill_critical_percent": 95},
        {"roi_circle": {"cx": 10, "cy": 10, "r": 0}},
        {"roi_circle": {"cx": 10, "cy": 10}},
        {"brightness_threshold": 255},
        {"smoothing_window": 0},
    ],
)
def test_config_rejects_invalid_or_removed_settings(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ChaneConfig.model_validate(bad)


def test_roi_comes_from_config_else_the_documented_fallback() -> None:
    assert resolve_roi((1080, 1920, 3), ChaneConfig()) == ResolvedRoi(960, 540, 324, "fallback")
    cfg = ChaneConfig(roi_circle=RoiCircle(cx=800, cy=546, r=503))
    assert resolve_roi((1080, 1920, 3), cfg) == ResolvedRoi(800, 546, 503, "config")


# --- per-frame signal ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fill", [0.0, 0.1, 0.35, 0.6, 0.9])
def test_bright_fraction_matches_the_drawn_share(fill: float) -> None:
    cfg = ChaneConfig(brightness_threshold=128)
    frame = opening_frame(fill, seed=int(fill * 100))
    signals = bright_fraction(frame, resolve_roi(frame.shape, cfg), cfg)
    assert signals.visible
    assert signals.bright_fraction == pytest.approx(fill, abs=0.02)


def test_a_circle_clipped_by_the_frame_edge_stays_centred_on_its_true_centre() -> None:
    """The original centred the mask on the clipped box, mixing in pixels outside the circle."""
    frame = opening_frame(1.0, centre=(0, 240), radius=100)
    cfg = ChaneConfig(brightness_threshold=128, roi_circle=RoiCircle(cx=0, cy=240, r=100))
    signals = bright_fraction(frame, resolve_roi(frame.shape, cfg), cfg)
    assert signals.bright_fraction > 0.97


def test_a_circle_outside_the_frame_is_a_configuration_error() -> None:
    cfg = ChaneConfig(roi_circle=RoiCircle(cx=2000, cy=2000, r=50))
    frame = opening_frame(0.5)
    with pytest.raises(RoiOutsideFrame, match="roi_circle"):
        bright_fraction(frame, resolve_roi(frame.shape, cfg), cfg)


@pytest.mark.parametrize("value", [0, 255])
def test_a_uniform_frame_reports_nothing_and_leaves_the_state_alone(value: int) -> None:
    cfg = ChaneConfig(brightness_threshold=128, smoothing_window=1)
    state, _ = run(cfg, [0.4, 0.5])
    frame = np.full((*SIZE, 3), value, np.uint8)
    signals = bright_fraction(frame, resolve_roi(frame.shape, cfg), cfg)
    assert not signals.visible
    after, result = update(state, signals, T0 + timedelta(seconds=2), cfg)
    assert after == state
    assert result["fill_percentage"] is None and result["fill_raw"] is None
    assert result["violation_detected"] is False and result["severity"] == "low"
    assert result["confidence"] == 0.0 and result["roi_visible"] is False and result["detections"] == []


# --- per-stream state ----------------------------------------------------------------------------------------


def test_fill_is_the_smoothed_share_mapped_through_the_calibration() -> None:
    cfg = ChaneConfig(smoothing_window=3, fill_calib_min=0.2, fill_calib_max=0.6, display_slew_pct=0)
    _, results = run(cfg, [0.2, 0.4, 0.6, 0.6, 0.1])
    assert [r["bright_fraction_smoothed"] for r in results] == pytest.approx([0.2, 0.3, 0.4, 0.53333, 0.43333])
    assert [r["fill_raw"] for r in results] == pytest.approx([0.0, 25.0, 50.0, 83.33, 58.33], abs=0.01)
    assert [r["fill_percentage"] for r in results] == [r["fill_raw"] for r in results]


def test_smoothing_window_is_ordered_by_frame_timestamp() -> None:
    cfg = ChaneConfig(smoothing_window=3)
    frames = [(T0 + timedelta(seconds=i), 0.1 * (i + 1)) for i in range(5)]
    in_order: dict[str, Any] | None = None
    for ts, share in frames:
        in_order, _ = update(in_order, signals_for(share), ts, cfg)
    shuffled: dict[str, Any] | None = None
    for ts, share in [frames[i] for i in (0, 3, 1, 4, 2)]:
        shuffled, last = update(shuffled, signals_for(share), ts, cfg)
    assert in_order is not None and shuffled is not None
    assert shuffled["samples"] == in_order["samples"]
    assert last["bright_fraction_smoothed"] == pytest.approx(0.4)


def test_a_retried_frame_does_not_move_the_display_twice() -> None:
    cfg = ChaneConfig(smoothing_window=1, display_slew_pct=5)
    state, _ = run(cfg, [0.1])
    ts = T0 + timedelta(seconds=1)
    state, first = update(state, signals_for(0.9), ts, cfg)
    state, retry = update(state, signals_for(0.9), ts, cfg)
    assert first["fill_percentage"] == retry["fill_percentage"] == pytest.approx(15.0)
    assert retry["frames_seen"] == 2


def test_display_is_slew_limited_but_the_alarm_is_not() -> None:
    cfg = ChaneConfig(smoothing_window=1, display_slew_pct=1.5)
    _, results = run(cfg, [0.10, 0.97, 0.97])
    assert [r["fill_percentage"] for r in results] == pytest.approx([10.0, 11.5, 13.0])
    assert results[1]["violation_type"] == "tank_critical_high" and results[1]["severity"] == "critical"


def test_monotonic_display_follows_the_running_max() -> None:
    cfg = ChaneConfig(smoothing_window=1, display_slew_pct=0, display_monotonic=True)
    _, results = run(cfg, [0.3, 0.5, 0.2])
    assert [r["fill_percentage"] for r in results] == pytest.approx([30.0, 50.0, 50.0])
    assert results[2]["fill_raw"] == pytest.approx(20.0)


def test_rising_fill_crosses_warning_then_critical_at_the_right_frames() -> None:
    cfg = ChaneConfig(brightness_threshold=128, smoothing_window=2, fill_warning_percent=80, fill_critical_percent=90)
    truth = [0.50, 0.60, 0.70, 0.76, 0.86, 0.92, 0.97]
    # Smoothed truth: 50, 55, 65, 73, 81, 89, 94.5 (%) -> warning first at frame 4, critical first at frame 6,
    # each at least 1 point from a threshold (the measured share is within 0.5 point of the drawn one).
    expected = [None, None, None, None, "tank_overflow_warning", "tank_overflow_warning", "tank_critical_high"]
    state: dict[str, Any] | None = None
    got = []
    for i, fill in enumerate(truth):
        frame = opening_frame(fill, seed=50 + i)
        signals = bright_fraction(frame, resolve_roi(frame.shape, cfg), cfg)
        state, result = update(state, signals, T0 + timedelta(seconds=i), cfg)
        got.append(result["violation_type"])
        assert result["violation_detected"] is (result["violation_type"] is not None)
    assert got == expected


def test_auto_calibration_learns_empty_from_the_first_frames_and_grows_full_gradually() -> None:
    cfg = ChaneConfig(
        smoothing_window=1,
        display_slew_pct=0,
        auto_calibrate=True,
        auto_warmup_frames=4,
        auto_prior_span=0.05,
        auto_max_grow_rate=0.01,
    )
    state, results = run(cfg, [0.20, 0.21, 0.19, 0.20, 0.225, 0.25, 0.30, 0.30])
    assert [r["calib_source"] for r in results[:3]] == ["auto_warmup"] * 3
    assert [r["confidence"] for r in results[:3]] == [0.3] * 3
    assert results[3]["calib_source"] == "auto" and results[3]["confidence"] == 0.8
    assert results[3]["calib_min_active"] == pytest.approx(0.20)
    assert results[4]["fill_raw"] == pytest.approx(50.0)  # (0.225 - 0.20) / 0.05
    assert results[5]["fill_raw"] == pytest.approx(100.0)
    # 0.30 exceeds the 100% point: it grows by at most 0.01 per frame instead of jumping there.
    assert [r["calib_max_active"] for r in results[6:]] == pytest.approx([0.26, 0.27])
    assert state is not None and state["warmup"] == []


def test_a_long_gap_between_frame_timestamps_restarts_the_stream() -> None:
    cfg = ChaneConfig(smoothing_window=5, session_idle_reset_s=5.0)
    state, _ = run(cfg, [0.8, 0.8, 0.8])
    state, result = update(state, signals_for(0.2), T0 + timedelta(seconds=60), cfg)
    assert result["frames_seen"] == 1
    assert result["bright_fraction_smoothed"] == pytest.approx(0.2)


def test_state_and_result_survive_a_json_round_trip() -> None:
    cfg = ChaneConfig(smoothing_window=3, auto_calibrate=True, auto_warmup_frames=2)
    direct: dict[str, Any] | None = None
    via_json: dict[str, Any] | None = None
    for i, share in enumerate([0.2, 0.21, 0.24, 0.3, 0.28]):
        ts = T0 + timedelta(milliseconds=500 * i)
        direct, a = update(direct, signals_for(share), ts, cfg)
        via_json, b = update(json.loads(json.dumps(via_json)), signals_for(share), ts, cfg)
        assert a == b == json.loads(json.dumps(a))
    assert direct == via_json


def test_update_does_not_modify_the_state_it_was_given() -> None:
    cfg = ChaneConfig(smoothing_window=3, auto_calibrate=True, auto_warmup_frames=5)
    state, _ = run(cfg, [0.2, 0.3])
    assert state is not None
    snapshot = json.loads(json.dumps(state))
    update(state, signals_for(0.4), T0 + timedelta(seconds=2), cfg)
    assert state == snapshot
