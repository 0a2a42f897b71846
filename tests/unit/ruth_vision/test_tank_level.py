"""tank_level on synthetic tank frames whose liquid level is known by construction."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from pydantic import ValidationError
from support import DEFAULT_TANK_BOX, tank_frame

from ruth_vision.tank_level import (
    STATUS_CRITICAL_HIGH,
    STATUS_CRITICAL_LOW,
    STATUS_HIGH,
    STATUS_LOW,
    STATUS_NO_SURFACE,
    STATUS_NORMAL,
    STATUS_WARNING,
    RoiOutsideFrame,
    SurfaceMeasurement,
    TankConfig,
    build_result,
    classify,
    measure_surface,
    resolve_roi,
    smooth,
    window_mean,
)

TOLERANCE_PCT = 1.5
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
DEFAULT_BOX = DEFAULT_TANK_BOX  # centre 60% of 640x480


def measurement(level: float | None, confidence: float = 0.9) -> SurfaceMeasurement:
    return SurfaceMeasurement(level, None if level is None else 200, DEFAULT_BOX, confidence)


# --- configuration -------------------------------------------------------------------------------------------


def test_config_defaults_match_the_original_runtime() -> None:
    cfg = TankConfig()
    assert (cfg.capacity_liters, cfg.alert_threshold, cfg.critical_high, cfg.critical_low, cfg.low) == (
        1000.0,
        90.0,
        95.0,
        10.0,
        25.0,
    )
    assert cfg.smoothing_window == 5
    assert cfg.tank_corners is None


@pytest.mark.parametrize(
    "bad",
    [
        {"unknown_key": 1},
        {"capacity_liters": 0},
        {"capacity_liters": float("nan")},
        {"tank_corners": [[0, 0], [10, 0], [10, 10]]},
        {"alert_threshold": 97},  # above critical_high
        {"low": 5},  # below critical_low
        {"smoothing_window": 0},
    ],
)
def test_config_rejects_invalid_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TankConfig.model_validate(bad)


def test_default_roi_is_the_centre_sixty_percent() -> None:
    assert resolve_roi((480, 640, 3), TankConfig()) == DEFAULT_BOX


def test_corners_outside_the_frame_are_a_configuration_error() -> None:
    cfg = TankConfig(tank_corners=((700, 10), (900, 10), (900, 200), (700, 200)))
    with pytest.raises(RoiOutsideFrame, match="tank_corners"):
        resolve_roi((480, 640, 3), cfg)


# --- measurement ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [8.0, 20.0, 35.0, 50.0, 65.0, 80.0, 92.0, 97.0])
def test_measured_level_matches_the_drawn_level(level: float) -> None:
    m = measure_surface(tank_frame(level, seed=int(level)), TankConfig())
    assert m.visible
    assert m.level_percent == pytest.approx(level, abs=TOLERANCE_PCT)
    assert m.confidence >= 0.5


def test_tank_corners_select_the_tank_and_surface_y_is_in_frame_coordinates() -> None:
    box = (300, 200, 700, 600)
    frame = tank_frame(40.0, box=box, size=(720, 1000))
    frame[50:150, 50:950] = 255  # a bright sign with a strong horizontal edge above the tank, outside the ROI
    corners = ((box[0], box[1]), (box[2], box[1]), (box[2], box[3]), (box[0], box[3]))
    m = measure_surface(frame, TankConfig(tank_corners=corners))
    assert m.roi == box
    assert m.level_percent == pytest.approx(40.0, abs=TOLERANCE_PCT)
    assert m.surface_y == pytest.approx(600 - 0.40 * 400, abs=6)


@pytest.mark.parametrize(
    ("name", "frame"),
    [
        ("black", np.zeros((480, 640, 3), np.uint8)),
        ("flat grey", np.full((480, 640, 3), 128, np.uint8)),
        ("dark sensor noise", np.random.default_rng(1).integers(0, 8, (480, 640, 3)).astype(np.uint8)),
        ("full-range noise", np.random.default_rng(2).integers(0, 256, (480, 640, 3)).astype(np.uint8)),
        (
            "vertical stripes",
            np.tile(np.repeat(np.array([30, 220], np.uint8), 16), 20)[None, :, None].repeat(480, 0).repeat(3, 2),
        ),
    ],
)
def test_a_frame_without_a_surface_reports_none_and_raises_nothing_critical(name: str, frame: np.ndarray) -> None:
    cfg = TankConfig()
    m = measure_surface(frame, cfg)
    assert not m.visible, name
    assert m.level_percent is None and m.confidence == 0.0 and m.reason is not None
    _, smoothed = smooth(None, m, T0, cfg)
    result = build_result(m, smoothed, cfg)
    assert result["violation_detected"] is False
    assert result["severity"] == "low"
    assert result["status"] == STATUS_NO_SURFACE
    assert result["level_percent"] is None and result["level_liters"] is None
    assert result["surface_visible"] is False
    assert result["detections"] == []


# --- classification ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (100.0, (True, "tank_critical_high", "critical", STATUS_CRITICAL_HIGH)),
        (95.0, (True, "tank_critical_high", "critical", STATUS_CRITICAL_HIGH)),
        (94.99, (True, "tank_overflow_warning", "high", STATUS_WARNING)),
        (90.0, (True, "tank_overflow_warning", "high", STATUS_WARNING)),
        (89.99, (False, None, "low", STATUS_HIGH)),
        (75.0, (False, None, "low", STATUS_HIGH)),
        (50.0, (False, None, "low", STATUS_NORMAL)),
        (25.0, (False, None, "medium", STATUS_LOW)),
        (10.01, (False, None, "medium", STATUS_LOW)),
        (10.0, (True, "tank_critical_low", "critical", STATUS_CRITICAL_LOW)),
        (0.0, (True, "tank_critical_low", "critical", STATUS_CRITICAL_LOW)),
        (None, (False, None, "low", STATUS_NO_SURFACE)),
    ],
)
def test_classification_bands(level: float | None, expected: tuple[object, ...]) -> None:
    c = classify(level, TankConfig())
    assert (c.violation_detected, c.violation_type, c.severity, c.status) == expected


def test_status_follows_the_configured_alert_threshold() -> None:
    """The original hard-coded 90 in the status: at alert_threshold 70 a level of 72 said 'NORMAL' yet alarmed."""
    c = classify(72.0, TankConfig(alert_threshold=70))
    assert c.violation_type == "tank_overflow_warning"
    assert c.status == STATUS_WARNING


# --- smoothing -----------------------------------------------------------------------------------------------


def test_smoothing_is_a_moving_mean_over_the_window() -> None:
    cfg = TankConfig(smoothing_window=3)
    state = None
    outputs = []
    for i, level in enumerate([10.0, 20.0, 30.0, 40.0, 50.0]):
        state, smoothed = smooth(state, measurement(level), T0 + timedelta(seconds=i), cfg)
        outputs.append(smoothed)
    assert outputs == pytest.approx([10.0, 15.0, 20.0, 30.0, 40.0])
    assert state is not None and len(state["samples"]) == 3


def test_smoothing_is_ordered_by_frame_timestamp_not_arrival() -> None:
    cfg = TankConfig(smoothing_window=3)
    frames = [(T0 + timedelta(seconds=i), float(10 * (i + 1))) for i in range(5)]
    in_order = None
    for ts, level in frames:
        in_order, _ = smooth(in_order, measurement(level), ts, cfg)
    shuffled = None
    for ts, level in [frames[i] for i in (3, 0, 4, 2, 1)]:
        shuffled, _ = smooth(shuffled, measurement(level), ts, cfg)
    assert shuffled == in_order
    assert window_mean(in_order) == pytest.approx(40.0)


def test_a_retried_frame_replaces_itself_instead_of_counting_twice() -> None:
    cfg = TankConfig(smoothing_window=5)
    state, _ = smooth(None, measurement(20.0), T0, cfg)
    state, _ = smooth(state, measurement(80.0), T0 + timedelta(seconds=1), cfg)
    state, smoothed = smooth(state, measurement(80.0), T0 + timedelta(seconds=1), cfg)
    assert smoothed == pytest.approx(50.0)


def test_a_frame_without_a_surface_leaves_the_window_untouched() -> None:
    cfg = TankConfig()
    state, _ = smooth(None, measurement(60.0), T0, cfg)
    after, smoothed = smooth(state, measurement(None, 0.0), T0 + timedelta(seconds=1), cfg)
    assert smoothed is None
    assert after == state


def test_state_survives_a_json_round_trip() -> None:
    cfg = TankConfig(smoothing_window=4)
    direct = None
    via_json = None
    for i, level in enumerate([33.0, 35.5, 31.25, 40.0, 38.0]):
        ts = T0 + timedelta(milliseconds=333 * i)
        direct, a = smooth(direct, measurement(level), ts, cfg)
        via_json, b = smooth(json.loads(json.dumps(via_json)), measurement(level), ts, cfg)
        assert a == b
    assert json.loads(json.dumps(direct)) == direct == via_json


def test_rising_level_crosses_warning_then_critical_at_the_right_frames() -> None:
    cfg = TankConfig(smoothing_window=2)
    truth = [60.0, 70.0, 80.0, 85.0, 90.0, 96.0, 98.0, 99.0]
    # Smoothed truth: 60, 65, 75, 82.5, 87.5, 93, 97, 98.5 -> warning first at frame 5, critical first at frame 6,
    # each at least 2 points from a threshold (more than the measurement tolerance).
    expected_types = [None, None, None, None, None, "tank_overflow_warning", "tank_critical_high", "tank_critical_high"]
    state = None
    got = []
    for i, level in enumerate(truth):
        m = measure_surface(tank_frame(level, seed=100 + i), cfg)
        state, smoothed = smooth(state, m, T0 + timedelta(seconds=i), cfg)
        result = build_result(m, smoothed, cfg)
        got.append(result["violation_type"])
        if result["violation_type"] is None:
            assert result["violation_detected"] is False
    assert got == expected_types


def test_result_carries_the_platform_fields() -> None:
    cfg = TankConfig(capacity_liters=2500)
    m = measure_surface(tank_frame(50.0), cfg)
    _, smoothed = smooth(None, m, T0, cfg)
    result = build_result(m, smoothed, cfg)
    assert result["level_percent"] == pytest.approx(50.0, abs=TOLERANCE_PCT)
    assert result["level_liters"] == pytest.approx(result["level_percent"] / 100 * 2500, abs=0.01)
    assert result["capacity_liters"] == 2500
    assert result["surface_visible"] is True
    assert result["status"] == STATUS_NORMAL
    assert result["confidence"] == m.confidence
    [detection] = result["detections"]
    assert detection["bbox"] == list(DEFAULT_BOX)
    assert detection["surface_y"] == m.surface_y
    json.dumps(result)  # the payload must be plain JSON
