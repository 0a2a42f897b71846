"""The two stateful tank models through the real tritonserver, on synthetic frames with known levels.

One server (both models, the cpu profile: two instances each) serves most tests; the bounded-store test starts its
own so it can shrink `ruth.state.max_streams` without affecting the others.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from support import TritonHandle, jpeg, opening_frame, result_of, start_triton, tank_frame, vision_inputs
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration

TANK = "tank_overflow_monitoring"
CHANE = "chane_tank_monitor"
LEVEL_TOLERANCE = 2.0  # percent; the unit tests pin the algorithm tighter, this allows for JPEG


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonHandle]:
    handle = start_triton(tmp_path_factory.mktemp("tank-models"), [TANK, CHANE])
    try:
        yield handle
    finally:
        handle.server.stop(grace_s=30)


@pytest.fixture
def client(server: TritonHandle) -> Iterator[httpclient.InferenceServerClient]:
    with contextlib.closing(httpclient.InferenceServerClient(server.http_url, concurrency=8)) as c:
        yield c


def stamps(n: int, start: datetime | None = None, step_s: float = 1.0) -> list[str]:
    """Frame times a little in the past, `step_s` apart (within the server's drift limit)."""
    base = start or datetime.now(timezone.utc) - timedelta(minutes=5)
    return [(base + timedelta(seconds=i * step_s)).isoformat() for i in range(n)]


def infer(
    client: httpclient.InferenceServerClient,
    model: str,
    frame: np.ndarray,
    stream_id: str,
    timestamp: str,
    config: dict[str, Any] | None = None,
    encode: bool = False,
) -> dict[str, Any]:
    if encode:
        inputs = vision_inputs(
            httpclient, image=jpeg(frame, 95), stream_id=stream_id, timestamp=timestamp, config=config
        )
    else:
        inputs = vision_inputs(httpclient, frame=frame, stream_id=stream_id, timestamp=timestamp, config=config)
    return result_of(client.infer(model, inputs))


# --- tank_overflow_monitoring ------------------------------------------------------------------------------------


def test_interleaved_tank_streams_keep_their_own_levels(client: httpclient.InferenceServerClient) -> None:
    streams = {str(uuid.uuid4()): 30.0, str(uuid.uuid4()): 80.0}
    times = stamps(6)
    for i, ts in enumerate(times):
        for stream, level in streams.items():
            result = infer(client, TANK, tank_frame(level, seed=i), stream, ts, encode=True)
            assert result["surface_visible"] is True
            assert result["level_percent"] == pytest.approx(level, abs=LEVEL_TOLERANCE), (stream, i)
            assert result["metadata"]["stream_id"] == stream


def test_a_blank_tank_frame_raises_nothing_and_does_not_poison_the_stream(
    client: httpclient.InferenceServerClient,
) -> None:
    stream = str(uuid.uuid4())
    times = stamps(3)
    blank = np.zeros((480, 640, 3), np.uint8)
    result = infer(client, TANK, blank, stream, times[0])
    assert result["violation_detected"] is False
    assert result["severity"] == "low"
    assert result["level_percent"] is None and result["surface_visible"] is False
    assert result["status"] == "NO SURFACE VISIBLE"
    assert result["confidence"] == 0.0
    for ts in times[1:]:
        result = infer(client, TANK, tank_frame(50.0), stream, ts)
        assert result["level_percent"] == pytest.approx(50.0, abs=LEVEL_TOLERANCE)


def test_rising_tank_level_crosses_warning_then_critical_at_the_right_frames(
    client: httpclient.InferenceServerClient,
) -> None:
    stream = str(uuid.uuid4())
    truth = [60.0, 70.0, 80.0, 85.0, 90.0, 96.0, 98.0, 99.0]
    # Smoothed (window 2): 60, 65, 75, 82.5, 87.5, 93, 97, 98.5 -> warning from frame 5, critical from frame 6.
    expected = [None] * 5 + ["tank_overflow_warning", "tank_critical_high", "tank_critical_high"]
    got = []
    for i, (level, ts) in enumerate(zip(truth, stamps(len(truth)), strict=True)):
        result = infer(client, TANK, tank_frame(level, seed=100 + i), stream, ts, config={"smoothing_window": 2})
        got.append(result["violation_type"])
        assert result["violation_detected"] is (result["violation_type"] is not None)
        if result["violation_type"] == "tank_critical_high":
            assert result["severity"] == "critical" and result["status"] == "CRITICAL - OVERFLOW RISK"
    assert got == expected


def test_two_instances_share_one_stream_smoothing_ordered_by_frame_time(
    server: TritonHandle, client: httpclient.InferenceServerClient
) -> None:
    config = server.model_config(TANK)
    assert sum(int(g.get("count", 1)) for g in config["instance_group"]) >= 2
    stream = str(uuid.uuid4())
    truth = [20.0 + 3.0 * i for i in range(20)]  # rising: the window's content decides the mean
    times = stamps(len(truth) + 1)
    order = list(range(len(truth)))
    random.Random(7).shuffle(order)
    pending = [
        client.async_infer(
            TANK, vision_inputs(httpclient, frame=tank_frame(truth[i], seed=i), stream_id=stream, timestamp=times[i])
        )
        for i in order
    ]
    for request in pending:
        assert result_of(request.get_result())["surface_visible"] is True
    final = infer(client, TANK, tank_frame(80.0, seed=99), stream, times[-1])
    # Window 5 by frame time: the four newest of the shuffled burst plus the final frame, whichever instance
    # served which request and in whatever order they arrived.
    expected = (sum(truth[-4:]) + 80.0) / 5
    assert final["level_percent"] == pytest.approx(expected, abs=LEVEL_TOLERANCE)


def test_a_config_change_restarts_the_tank_stream(client: httpclient.InferenceServerClient) -> None:
    stream = str(uuid.uuid4())
    times = stamps(4)
    for ts in times[:3]:
        infer(client, TANK, tank_frame(30.0), stream, ts)
    result = infer(client, TANK, tank_frame(70.0), stream, times[3], config={"capacity_liters": 500})
    assert result["level_percent"] == pytest.approx(70.0, abs=LEVEL_TOLERANCE)  # not the mean with the 30s
    assert result["level_liters"] == pytest.approx(result["level_percent"] * 5, abs=0.05)


def test_tank_corners_outside_the_frame_are_rejected_as_the_clients_mistake(
    client: httpclient.InferenceServerClient,
) -> None:
    corners = [[1000, 1000], [1200, 1000], [1200, 1200], [1000, 1200]]
    with pytest.raises(InferenceServerException, match="tank_corners") as caught:
        infer(client, TANK, tank_frame(50.0), str(uuid.uuid4()), stamps(1)[0], config={"tank_corners": corners})
    assert "400" in str(caught.value.status()) or "INVALID" in str(caught.value).upper()


# --- chane_tank_monitor ------------------------------------------------------------------------------------------

CHANE_CONFIG = {"brightness_threshold": 128, "smoothing_window": 2, "display_slew_pct": 0}


def test_interleaved_chane_streams_keep_their_own_fill(client: httpclient.InferenceServerClient) -> None:
    streams = {str(uuid.uuid4()): 0.2, str(uuid.uuid4()): 0.7}
    for i, ts in enumerate(stamps(5)):
        for stream, fill in streams.items():
            result = infer(client, CHANE, opening_frame(fill, seed=i), stream, ts, config=CHANE_CONFIG, encode=True)
            assert result["roi"]["source"] == "fallback"
            assert result["fill_percentage"] == pytest.approx(fill * 100, abs=LEVEL_TOLERANCE), (stream, i)
            assert result["frames_seen"] == i + 1


def test_a_blank_chane_frame_raises_nothing(client: httpclient.InferenceServerClient) -> None:
    stream = str(uuid.uuid4())
    for value, ts in zip((0, 255), stamps(2), strict=True):
        result = infer(client, CHANE, np.full((480, 640, 3), value, np.uint8), stream, ts)
        assert result["violation_detected"] is False and result["severity"] == "low"
        assert result["fill_percentage"] is None and result["roi_visible"] is False
        assert result["frames_seen"] == 0


def test_rising_fill_crosses_warning_then_critical_at_the_right_frames(
    client: httpclient.InferenceServerClient,
) -> None:
    stream = str(uuid.uuid4())
    config = {**CHANE_CONFIG, "fill_warning_percent": 80, "fill_critical_percent": 90}
    truth = [0.50, 0.60, 0.70, 0.76, 0.86, 0.92, 0.97]
    # Smoothed (window 2): 50, 55, 65, 73, 81, 89, 94.5 % -> warning from frame 4, critical from frame 6.
    expected = [None] * 4 + ["tank_overflow_warning", "tank_overflow_warning", "tank_critical_high"]
    got = []
    for i, (fill, ts) in enumerate(zip(truth, stamps(len(truth)), strict=True)):
        result = infer(client, CHANE, opening_frame(fill, seed=50 + i), stream, ts, config=config)
        got.append(result["violation_type"])
        assert result["violation_detected"] is (result["violation_type"] is not None)
    assert got == expected


def test_two_instances_share_one_chane_stream(client: httpclient.InferenceServerClient) -> None:
    stream = str(uuid.uuid4())
    config = {**CHANE_CONFIG, "smoothing_window": 4}
    truth = [0.1 + 0.04 * i for i in range(16)]
    times = stamps(len(truth) + 1, step_s=0.25)  # within session_idle_reset_s even when the burst is reordered
    order = list(range(len(truth)))
    random.Random(11).shuffle(order)
    pending = [
        client.async_infer(
            CHANE,
            vision_inputs(
                httpclient, frame=opening_frame(truth[i], seed=i), stream_id=stream, timestamp=times[i], config=config
            ),
        )
        for i in order
    ]
    for request in pending:
        request.get_result()
    final = infer(client, CHANE, opening_frame(0.8, seed=99), stream, times[-1], config=config)
    expected = (sum(truth[-3:]) + 0.8) / 4
    assert final["bright_fraction_smoothed"] == pytest.approx(expected, abs=0.02)
    assert final["frames_seen"] >= 2  # late frames of the burst refine the window without advancing the meter


def test_roi_circle_outside_the_frame_is_rejected(client: httpclient.InferenceServerClient) -> None:
    config = {"roi_circle": {"cx": 5000, "cy": 5000, "r": 40}}
    with pytest.raises(InferenceServerException, match="roi_circle"):
        infer(client, CHANE, opening_frame(0.5), str(uuid.uuid4()), stamps(1)[0], config=config)


# --- bounded state -----------------------------------------------------------------------------------------------


def stored_streams(state_dir: Path, model: str) -> int:
    path = state_dir / "streams" / f"{model}-1.sqlite"
    with contextlib.closing(sqlite3.connect(str(path))) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM streams").fetchone()[0])


@pytest.mark.parametrize("model", [TANK, CHANE])
def test_thousands_of_stream_ids_keep_the_state_store_bounded(triton_factory: Any, model: str) -> None:
    bound = 100
    handle = triton_factory([model])
    config = handle.model_config(model)
    config["parameters"]["ruth.state.max_streams"] = {"string_value": str(bound)}
    handle.load(model, config=config)
    frame = (
        tank_frame(50.0, size=(120, 160), box=(32, 24, 128, 96))
        if model == TANK
        else opening_frame(0.5, size=(120, 160))
    )
    batch = 8
    total = 2000
    ts = stamps(1)[0].encode()
    with contextlib.closing(httpclient.InferenceServerClient(handle.http_url, concurrency=4)) as client:
        pending = []
        for _ in range(total // batch):
            frames = np.repeat(frame[None], batch, axis=0)
            ids = np.array([[str(uuid.uuid4()).encode()] for _ in range(batch)], dtype=np.object_)
            stamp = np.array([[ts]] * batch, dtype=np.object_)
            inputs = []
            for name, array, dtype in (
                ("FRAME", frames, "UINT8"),
                ("STREAM_ID", ids, "BYTES"),
                ("TIMESTAMP", stamp, "BYTES"),
            ):
                tensor = httpclient.InferInput(name, list(array.shape), dtype)
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            pending.append(client.async_infer(model, inputs))
        for request in pending:
            rows = request.get_result().as_numpy("RESULT")
            assert len(rows) == batch
            assert all(json.loads(row[0])["violation_detected"] is False for row in rows)
    assert stored_streams(handle.state_dir, model) == bound  # full, and no fuller: the oldest went first
