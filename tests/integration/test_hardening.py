"""The hardening library live on the request path of a real model, through the real server."""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from support import config_with, jpeg, metric_value, result_of, tank_frame, vision_inputs
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration

TANK = "tank_overflow_monitoring"


def infer_http(handle: Any, **request: Any) -> dict[str, Any]:
    with contextlib.closing(httpclient.InferenceServerClient(handle.http_url, network_timeout=30)) as client:
        return result_of(client.infer(TANK, vision_inputs(httpclient, **request)))


def infer_error(handle: Any, **request: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        infer_http(handle, **request)
    return raised.value


def test_a_batch_mixing_good_and_bad_requests_answers_each_on_its_own(triton_factory: Any) -> None:
    handle = triton_factory([])
    handle.load(TANK, config=config_with(handle, instances=1, queue_delay_us=300_000))
    good = jpeg(tank_frame(45))
    requests = [
        {"image": good},
        {"image": b"GIF89a not allowed"},
        {"image": good, "stream_id": "not-a-uuid"},
        {"image": good},
    ]

    def send(request: dict[str, Any]) -> Any:
        try:
            return infer_http(handle, **request)
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(len(requests)) as pool:
        outcomes = list(pool.map(send, requests))
    assert outcomes[0]["level_percent"] == pytest.approx(45, abs=2)
    assert outcomes[3]["level_percent"] == pytest.approx(45, abs=2)
    assert isinstance(outcomes[1], InferenceServerException) and outcomes[1].status() == "400"
    assert "IMAGE" in outcomes[1].message()
    assert isinstance(outcomes[2], InferenceServerException) and outcomes[2].status() == "400"
    assert "STREAM_ID" in outcomes[2].message()
    with contextlib.closing(httpclient.InferenceServerClient(handle.http_url)) as client:
        stats = client.get_inference_statistics(TANK)["model_stats"][0]
    assert int(stats["execution_count"]) < int(stats["inference_count"]), "requests were not batched together"


def test_fault_injection_trips_the_breaker_which_survives_kill_9_then_half_opens_and_closes(
    triton_factory: Any, tmp_path: Any
) -> None:
    state_dir = tmp_path / "shared-state"
    handle = triton_factory([], state_dir=state_dir)
    cooldown = 8
    handle.load(
        TANK,
        config=config_with(handle, fault__fail_rate=1.0, breaker__failure_threshold=3, breaker__cooldown_s=cooldown),
    )
    frame = jpeg(tank_frame(50))
    for _ in range(3):
        assert infer_error(handle, image=frame).status() == "500"
    tripped_at = time.time()
    open_error = infer_error(handle, image=frame)
    assert open_error.status() == "503"
    assert "OPEN" in open_error.message() and "retry in" in open_error.message()
    with contextlib.closing(grpcclient.InferenceServerClient(handle.grpc_url)) as client:
        with pytest.raises(InferenceServerException) as grpc_open:
            client.infer(TANK, vision_inputs(grpcclient, image=frame))
    assert grpc_open.value.status() == "StatusCode.UNAVAILABLE"
    metrics = handle.metrics_text()
    assert metric_value(metrics, "ruth_breaker_state", model=TANK) == 2
    assert metric_value(metrics, "ruth_breaker_trips_total", model=TANK) >= 1
    assert metric_value(metrics, "ruth_requests_total", model=TANK, outcome="breaker_open") >= 1
    assert metric_value(metrics, "ruth_model_health", model=TANK) == -1

    handle.server.kill()  # kill -9: no finalize, no graceful anything
    restarted = triton_factory([TANK], state_dir=state_dir)  # faults off: the on-disk config
    still_open = infer_error(restarted, image=frame)
    assert still_open.status() == "503", "breaker state was lost across kill -9 and restart"
    breaker_file = state_dir / "breakers" / f"{TANK}-1.json"
    assert "open" in breaker_file.read_text()

    time.sleep(max(0.0, tripped_at + cooldown + 0.5 - time.time()))
    result = infer_http(restarted, image=frame)  # the half-open trial succeeds...
    assert result["level_percent"] == pytest.approx(50, abs=2)
    assert json.loads(breaker_file.read_text()).get("state") == "closed"  # ...and closes the breaker
    assert infer_http(restarted, image=frame)["level_percent"] == pytest.approx(50, abs=2)


def test_a_hung_inference_returns_at_its_deadline_and_later_requests_still_succeed(triton_factory: Any) -> None:
    handle = triton_factory([])
    handle.load(
        TANK,
        config=config_with(
            handle, inference_timeout_ms=400, fault__hang_rate=0.5, fault__hang_s=3, breaker__failure_threshold=1000
        ),
    )
    frame = jpeg(tank_frame(70))
    timed_out, succeeded = 0, 0
    for _ in range(16):
        started = time.monotonic()
        try:
            result = infer_http(handle, image=frame)
        except InferenceServerException as exc:
            took = time.monotonic() - started
            assert exc.status() == "503" and "deadline" in exc.message()
            assert took < 1.5, f"timed-out request answered after {took:.2f}s, not at its 0.4 s deadline"
            timed_out += 1
        else:
            assert result["level_percent"] == pytest.approx(70, abs=2)
            assert time.monotonic() - started < 1.0, "a healthy request queued behind a zombie"
            succeeded += 1
    assert timed_out >= 1 and succeeded >= 1
    metrics = handle.metrics_text()
    assert metric_value(metrics, "ruth_watchdog_timeouts_total", model=TANK) == timed_out
    assert metric_value(metrics, "ruth_requests_total", model=TANK, outcome="timeout") == timed_out
    assert metric_value(metrics, "ruth_requests_total", model=TANK, outcome="ok") == succeeded


def test_every_custom_metric_family_is_served_with_the_expected_values(triton_factory: Any) -> None:
    handle = triton_factory([TANK])
    frame = jpeg(tank_frame(20))
    for _ in range(3):
        infer_http(handle, image=frame)
    infer_error(handle, image=frame, stream_id="nope")
    infer_error(handle, image=b"junk")
    text = handle.metrics_text()
    from python_backends.metrics import FAMILIES, ONLY_IN

    for family in FAMILIES:
        if family in ONLY_IN:  # e.g. the pose frame cache: tests/integration/test_pose_once.py
            continue
        assert f"# TYPE {family}" in text or f"{family}" in text, f"{family} missing from /metrics"
    assert metric_value(text, "ruth_requests_total", model=TANK, outcome="ok") == 3
    assert metric_value(text, "ruth_requests_total", model=TANK, outcome="invalid_arg") == 2
    assert metric_value(text, "ruth_validation_rejections_total", model=TANK, field="STREAM_ID") == 1
    assert metric_value(text, "ruth_validation_rejections_total", model=TANK, field="IMAGE") == 1
    assert metric_value(text, "ruth_inference_latency_seconds_count", model=TANK) == 3
    assert metric_value(text, "ruth_breaker_state", model=TANK) == 0
    assert metric_value(text, "ruth_device_allocation", model=TANK, placement="cpu") == 2  # two instances
    assert metric_value(text, "ruth_device_allocation", model=TANK, placement="gpu") == 0
    assert metric_value(text, "ruth_model_health", model=TANK) == 2  # 1 per healthy instance
    assert metric_value(text, "ruth_zombie_threads", model=TANK) == 0
    assert metric_value(text, "ruth_stream_states", model=TANK) >= 1


def test_a_misspelt_ruth_parameter_fails_the_load_naming_the_key(triton_factory: Any) -> None:
    """A typo in a `ruth.*` key must not fall back to a default unnoticed: Triton refuses the load, and its reason
    (the load call's error and the repository index) names the key and the one it resembles."""
    handle = triton_factory([])
    config = config_with(handle, breaker__failure_treshold=3)
    with pytest.raises(InferenceServerException) as raised:
        handle.load(TANK, config)
    assert "ruth.breaker.failure_treshold is not a known ruth.* parameter" in str(raised.value)
    assert "did you mean ruth.breaker.failure_threshold?" in str(raised.value)
    entry = handle.wait_state(TANK, "UNAVAILABLE")
    assert "ruth.breaker.failure_treshold" in entry.get("reason", "")
    handle.load(TANK, config_with(handle, breaker__failure_threshold=3))  # spelt right, the same config loads
    assert handle.wait_state(TANK, "READY")["state"] == "READY"
