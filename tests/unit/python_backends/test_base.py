"""RuthModel's execute contract, without a server: a stand-in for triton_python_backend_utils records what the
base class hands back, so each rule (one response per request, in order, typed errors, never raising) is checked
directly. The same behaviour through the real server is in tests/integration/test_hardening.py."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from backend_support import QUIET_RESULT, FakeRequest, FakeResponse, FakeTensor, fake_backend, initialize, make_runtime

from python_backends.base import InferContext
from python_backends.errors import InvalidInput, ModelLoadError
from python_backends.gpu import Allocation
from python_backends.runtime import Runtime
from python_backends.vision import RuthModel


@pytest.fixture(autouse=True)
def backend() -> Iterator[None]:
    with fake_backend():
        yield


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    return make_runtime(tmp_path)


# ---- a tiny model: brightness of the frame ---------------------------------------------------------------------
class Brightness(RuthModel):
    stateful = True
    loaded_on: Allocation | None = None

    def load(self, device: Allocation) -> None:
        self.loaded_on = device

    def infer(self, frame: np.ndarray, ctx: InferContext) -> dict[str, Any]:
        if ctx.metadata.get("explode"):
            raise RuntimeError("boom")
        if ctx.metadata.get("overflow"):
            raise OverflowError("Python int too large to convert to C int")
        if ctx.metadata.get("break_contract"):
            return {"violation_detected": True}  # no severity, no type: breaks the RESULT schema
        if ctx.metadata.get("reject"):
            raise InvalidInput("METADATA", "the algorithm found this request unusable")
        seen = ctx.update_state(lambda s: {"frames": (s or {}).get("frames", 0) + 1})
        return {
            **QUIET_RESULT,
            "brightness": float(frame.mean()),
            "frames_seen": seen["frames"],
        }


def model_config(**overrides: Any) -> dict[str, Any]:
    string = {"data_type": "TYPE_STRING", "dims": [1]}
    config: dict[str, Any] = {
        "max_batch_size": 8,
        "input": [
            {"name": "IMAGE", **string, "optional": True},
            {"name": "FRAME", "data_type": "TYPE_UINT8", "dims": [-1, -1, 3], "optional": True},
            {"name": "STREAM_ID", **string},
            {"name": "TIMESTAMP", **string},
            {"name": "CONFIG", **string, "optional": True},
            {"name": "METADATA", **string, "optional": True},
        ],
        "output": [{"name": "RESULT", **string}],
        "parameters": {"ruth.breaker.failure_threshold": {"string_value": "2"}},
    }
    config.update(overrides)
    return config


def make_model(runtime: Runtime, config: dict[str, Any] | None = None) -> Brightness:
    return initialize(Brightness(runtime), config or model_config(), "brightness")  # type: ignore[no-any-return]


def strings(value: str | bytes) -> np.ndarray:
    return np.array([[value.encode() if isinstance(value, str) else value]], dtype=np.object_)


def request(*, image: bytes | None = None, level: int = 100, stream: str | None = None, **metadata: Any) -> FakeRequest:
    tensors = {
        "STREAM_ID": strings(stream or str(uuid.uuid4())),
        "TIMESTAMP": strings(datetime.now(timezone.utc).isoformat()),
        "METADATA": strings(json.dumps(metadata)),
    }
    if image is None:
        image = cv2.imencode(".png", np.full((64, 64, 3), level, np.uint8))[1].tobytes()
    tensors["IMAGE"] = strings(image)
    return FakeRequest(tensors)


def result(response: FakeResponse) -> dict[str, Any]:
    assert response.error is None, response.error.message()
    return dict(json.loads(response.outputs[0].as_numpy()[0][0]))


# ---- tests ------------------------------------------------------------------------------------------------------
def test_a_mixed_batch_gets_one_response_per_request_in_order(runtime: Runtime) -> None:
    model = make_model(runtime)
    responses = model.execute(
        [request(level=10), request(image=b"not an image"), request(stream="cam-1"), request(level=200)]
    )
    assert len(responses) == 4
    assert result(responses[0])["brightness"] == pytest.approx(10)
    assert responses[1].error.code == "INVALID_ARG"
    assert responses[1].error.message().startswith("[RUTH:INVALID_INPUT] IMAGE")
    assert responses[2].error.code == "INVALID_ARG"
    assert responses[2].error.message().startswith("[RUTH:INVALID_INPUT] STREAM_ID")
    assert result(responses[3])["brightness"] == pytest.approx(200)


def test_a_model_failure_on_one_frame_leaves_the_other_requests_alone(runtime: Runtime) -> None:
    model = make_model(runtime)
    responses = model.execute([request(level=5), request(explode=True), request(level=6)])
    assert result(responses[0])["brightness"] == pytest.approx(5)
    assert responses[1].error.code == "INTERNAL" and "boom" in responses[1].error.message()
    assert responses[1].error.message().startswith("[RUTH:INTERNAL] ")
    assert result(responses[2])["brightness"] == pytest.approx(6)


def test_a_result_breaking_the_wire_contract_is_an_internal_error_not_a_silent_success(runtime: Runtime) -> None:
    responses = make_model(runtime).execute([request(break_contract=True)])
    assert responses[0].error.code == "INTERNAL"
    assert "wire contract" in responses[0].error.message()


def test_an_invalid_input_found_by_the_algorithm_is_the_clients_error_and_spares_the_breaker(runtime: Runtime) -> None:
    model = make_model(runtime)
    for _ in range(5):
        (response,) = model.execute([request(reject=True)])
        assert response.error.code == "INVALID_ARG"
    assert model.breaker.state.value == "closed"


def test_consecutive_model_failures_open_the_breaker_which_then_fails_fast_with_unavailable(runtime: Runtime) -> None:
    model = make_model(runtime)  # failure_threshold 2
    for _ in range(2):
        assert model.execute([request(explode=True)])[0].error.code == "INTERNAL"
    (response,) = model.execute([request(level=1)])
    assert response.error.code == "UNAVAILABLE"
    assert "OPEN" in response.error.message()
    assert re.match(r"\[RUTH:BREAKER_OPEN retry_after=[0-9.]+\] circuit breaker", response.error.message())


def test_execute_never_raises_even_when_a_request_object_is_broken(runtime: Runtime) -> None:
    class Broken(FakeRequest):
        def request_id(self) -> str:
            raise RuntimeError("corrupted request handle")

    responses = make_model(runtime).execute([Broken({"STREAM_ID": strings("x")}), request(level=3)])
    assert responses[0].error.code == "INTERNAL"
    assert result(responses[1])["brightness"] == pytest.approx(3)


def test_a_client_side_batch_in_one_request_gets_one_result_per_frame(runtime: Runtime) -> None:
    model = make_model(runtime)
    frames = np.stack([np.full((64, 64, 3), 20, np.uint8), np.full((64, 64, 3), 40, np.uint8)])
    stream = str(uuid.uuid4())
    now = datetime.now(timezone.utc).isoformat()
    both = FakeRequest(
        {
            "FRAME": frames,
            "STREAM_ID": np.array([[stream.encode()]] * 2, dtype=np.object_),
            "TIMESTAMP": np.array([[now.encode()]] * 2, dtype=np.object_),
        }
    )
    (response,) = model.execute([both])
    out = response.outputs[0].as_numpy()
    assert out.shape == (2, 1)
    assert [json.loads(row[0])["brightness"] for row in out] == [pytest.approx(20), pytest.approx(40)]


def test_per_stream_state_is_kept_per_stream_and_metadata_names_the_stream(runtime: Runtime) -> None:
    model = make_model(runtime)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    model.execute([request(stream=a)])
    model.execute([request(stream=a)])
    first_b = result(model.execute([request(stream=b)])[0])
    third_a = result(model.execute([request(stream=a)])[0])
    assert (first_b["frames_seen"], third_a["frames_seen"]) == (1, 3)
    assert third_a["metadata"]["stream_id"] == a and third_a["metadata"]["model_name"] == "brightness"


def test_a_config_that_breaks_the_wire_contract_fails_the_load_with_the_reason(runtime: Runtime) -> None:
    config = model_config(output=[{"name": "SCORES", "data_type": "TYPE_FP32", "dims": [1]}])
    with pytest.raises(ModelLoadError, match="RESULT"):
        make_model(runtime, config)


def test_an_invalid_parameter_fails_the_load_naming_the_key(runtime: Runtime) -> None:
    config = model_config(parameters={"ruth.inference_timeout_ms": {"string_value": "soon"}})
    with pytest.raises(ModelLoadError, match=r"ruth\.inference_timeout_ms"):
        make_model(runtime, config)


def test_a_load_failure_becomes_a_model_load_error_and_releases_the_device(runtime: Runtime) -> None:
    class NoWeights(Brightness):
        def load(self, device: Allocation) -> None:
            raise FileNotFoundError("weights/missing.tflite")

    model = NoWeights(runtime)
    with pytest.raises(ModelLoadError, match=r"missing\.tflite"):
        model.initialize({"model_config": json.dumps(model_config()), "model_name": "nw", "model_version": "1"})


def test_finalize_is_safe_to_call_twice(runtime: Runtime) -> None:
    model = make_model(runtime)
    model.finalize()
    model.finalize()
    assert model.loaded_on is not None and model.loaded_on.placement == "cpu"


def test_state_gauges_follow_the_persisted_breaker_without_traffic(tmp_path: Path) -> None:
    """A reset (or a sibling's trip) reaches the gauges by the refresher, not by the next request."""
    from python_backends.breaker import BreakerPolicy, CircuitBreaker
    from python_backends.breaker_storage import FileBreakerStorage
    from python_backends.metrics import RecordingMetrics

    class QuickGauges(Brightness):
        gauge_refresh_s = 0.05

    recording = RecordingMetrics()
    model = initialize(QuickGauges(make_runtime(tmp_path, metrics=lambda *_: recording)), model_config(), "brightness")
    try:
        sibling = CircuitBreaker("brightness:1", BreakerPolicy(failure_threshold=1), model.breaker._storage)
        assert isinstance(model.breaker._storage, FileBreakerStorage)
        sibling.record_failure(sibling.admit())  # another instance trips the shared breaker
        deadline = time.monotonic() + 5
        while recording.gauges.get("breaker") != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (recording.gauges["breaker"], recording.gauges["health"], recording.gauges["zombies"]) == (2, -1, 0)
        sibling.reset()
        while recording.gauges.get("breaker") != 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (recording.gauges["breaker"], recording.gauges["health"]) == (0, 1)
    finally:
        model.finalize()
    assert not model._gauges_thread.is_alive()


def with_config(req: FakeRequest, config: dict[str, Any]) -> FakeRequest:
    req.tensors["CONFIG"] = FakeTensor("CONFIG", strings(json.dumps(config)))
    return req


def test_a_value_error_caused_by_the_requests_own_config_is_its_400_and_spares_the_breaker(runtime: Runtime) -> None:
    model = make_model(runtime)  # failure_threshold 2
    for _ in range(5):
        (response,) = model.execute([with_config(request(overflow=True), {"radius": 1e10})])
        assert response.error.code == "INVALID_ARG"
        assert response.error.message().startswith("[RUTH:INVALID_INPUT] CONFIG")
        assert "OverflowError" in response.error.message()
    assert model.breaker.state.value == "closed"
    assert result(model.execute([request(level=3)])[0])["brightness"] == pytest.approx(3)


def test_the_same_error_with_the_deployments_defaults_is_the_models_failure_and_counts(runtime: Runtime) -> None:
    model = make_model(runtime)
    for _ in range(2):
        assert model.execute([request(overflow=True)])[0].error.code == "INTERNAL"
    assert model.breaker.state.value == "open"


def test_a_non_value_error_counts_even_with_a_client_config(runtime: Runtime) -> None:
    model = make_model(runtime)
    for _ in range(2):
        assert model.execute([with_config(request(explode=True), {"x": 1})])[0].error.code == "INTERNAL"
    assert model.breaker.state.value == "open"
