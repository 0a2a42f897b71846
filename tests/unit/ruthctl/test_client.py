"""The platform client: wire-contract tensors in, RESULT or a typed error out (one row per error mapping)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from python_backends.wire import WireCode
from ruthctl.client import (
    BreakerOpen,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ModelUnavailable,
    RuthClient,
    ServerUnreachable,
    error_for,
)


@pytest.mark.parametrize(
    ("status", "message", "expected", "code", "text"),
    [
        # ours: the code picks the type, whatever the status and the words
        ("400", "[RUTH:INVALID_INPUT] IMAGE: not a JPEG", InvalidInput, WireCode.INVALID_INPUT, "IMAGE: not a JPEG"),
        (
            "StatusCode.INVALID_ARGUMENT",
            "[RUTH:INVALID_INPUT] STREAM_ID: x",
            InvalidInput,
            WireCode.INVALID_INPUT,
            None,
        ),
        ("503", "[RUTH:BREAKER_OPEN retry_after=12.5] open", BreakerOpen, WireCode.BREAKER_OPEN, "open"),
        ("StatusCode.UNAVAILABLE", "[RUTH:BREAKER_OPEN retry_after=3.0] x", BreakerOpen, WireCode.BREAKER_OPEN, None),
        ("503", "[RUTH:TIMEOUT] inference of tank exceeded", ModelUnavailable, WireCode.TIMEOUT, None),
        ("503", "[RUTH:STORE_UNAVAILABLE] redis", ModelUnavailable, WireCode.STORE_UNAVAILABLE, None),
        ("503", "[RUTH:UNAVAILABLE] pose_estimator failed", ModelUnavailable, WireCode.UNAVAILABLE, None),
        ("500", "[RUTH:INTERNAL] tank: RuntimeError: boom", InferenceFailed, WireCode.INTERNAL, None),
        (
            "StatusCode.INTERNAL",
            "[RUTH:INTERNAL] circuit breaker OPEN",
            InferenceFailed,
            WireCode.INTERNAL,
            None,
        ),
        # Triton's own answers: no code, typed by status (and two known texts)
        ("503", "circuit breaker for tank:1 is OPEN; retry in 12.5s", ModelUnavailable, None, None),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", ModelUnavailable, None, None),
        ("500", "Stub process 'tank_0_0' is not healthy.", ModelUnavailable, None, None),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", ModelUnavailable, None, None),
        ("404", "Request for unknown model: 'nope' is not found", ModelNotFound, None, None),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'nope' is not found", ModelNotFound, None, None),
        ("400", "Request for unknown model: 'slow' has no available versions", ModelNotFound, None, None),
        ("400", "unexpected shape for input 'IMAGE'", InvalidInput, None, None),
        ("500", "tank: RuntimeError: boom", InferenceFailed, None, None),
        ("StatusCode.INTERNAL", "tank: RuntimeError: boom", InferenceFailed, None, None),
        ("500", "[RUTH:FROM_A_NEWER_SERVER] x", InferenceFailed, None, None),
    ],
)
def test_each_answer_maps_to_one_error_type(
    status: str, message: str, expected: type, code: WireCode | None, text: str | None
) -> None:
    error = error_for(status, message)
    assert type(error) is expected
    assert (error.status, error.code) == (status, code)
    assert error.message == (text if text is not None else message if code is None else message.split("] ", 1)[1])


def test_breaker_open_carries_the_retry_estimate_from_its_field_not_its_text() -> None:
    error = error_for("503", "[RUTH:BREAKER_OPEN retry_after=12.5] circuit breaker ... retry in 99.0s")
    assert isinstance(error, BreakerOpen) and isinstance(error, ModelUnavailable)
    assert error.retry_in_s == 12.5
    assert error_for("503", "[RUTH:BREAKER_OPEN] no estimate").retry_in_s is None  # type: ignore[attr-defined]


class FakeConnection:
    """Records what RuthClient sends; answers like tritonclient.http would."""

    def __init__(self, max_batch_size: int, answer: Any = None) -> None:
        self.max_batch_size = max_batch_size
        self.answer = answer
        self.sent: dict[str, np.ndarray] = {}
        self.config_calls = 0

    def get_model_config(self, model: str, **_: Any) -> dict[str, Any]:
        self.config_calls += 1
        return {"name": model, "max_batch_size": self.max_batch_size}

    def infer(self, model: str, inputs: list[Any], **_: Any) -> Any:
        self.sent = {t.name(): t._np for t in inputs}  # noqa: SLF001 - the test double keeps the array
        answer = self.answer

        class Response:
            def as_numpy(self, name: str) -> np.ndarray:
                return np.array([[answer]], dtype=np.object_)

        return Response()

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def keep_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    import tritonclient.http as th

    original = th.InferInput.set_data_from_numpy

    def keep(self: Any, array: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        self._np = array
        return original(self, array, *args, **kwargs)

    monkeypatch.setattr(th.InferInput, "set_data_from_numpy", keep)


def client_with(connection: FakeConnection) -> RuthClient:
    client = RuthClient("127.0.0.1:8000")
    client._client = connection
    return client


def test_an_image_request_carries_the_contract_fields_with_a_batch_dimension() -> None:
    result = {"violation_detected": False, "metadata": {"model_name": "tank"}}
    connection = FakeConnection(8, json.dumps(result).encode())
    client = client_with(connection)
    got = client.infer(
        "tank",
        image=b"\xff\xd8jpeg",
        stream_id="cam-1",
        timestamp="2026-01-01T00:00:00Z",
        config={"capacity_liters": 500},
        metadata={"site": "a"},
    )
    assert got == result
    sent = connection.sent
    assert set(sent) == {"IMAGE", "STREAM_ID", "TIMESTAMP", "CONFIG", "METADATA"}
    assert sent["IMAGE"].shape == (1, 1) and sent["IMAGE"][0, 0] == b"\xff\xd8jpeg"
    assert sent["STREAM_ID"][0, 0] == b"cam-1"
    assert json.loads(sent["CONFIG"][0, 0]) == {"capacity_liters": 500}
    client.infer("tank", image=b"x", stream_id="cam-1")
    assert connection.config_calls == 1  # the batch layout is asked once per model


def test_a_frame_request_without_batching_sends_the_bare_frame() -> None:
    connection = FakeConnection(0, b'{"ok": 1}')
    frame = np.zeros((48, 64, 3), np.uint8)
    client_with(connection).infer("pose", frame=frame, stream_id="s")
    assert connection.sent["FRAME"].shape == (48, 64, 3)
    assert connection.sent["STREAM_ID"].shape == (1,)
    assert "TIMESTAMP" in connection.sent and "CONFIG" not in connection.sent


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"image": b"x", "frame": np.zeros((2, 2, 3), np.uint8)},
        {"frame": np.zeros((2, 2), np.uint8)},
        {"frame": np.zeros((2, 2, 3), np.float32)},
    ],
)
def test_a_request_that_breaks_the_contract_is_refused_before_sending(kwargs: dict[str, Any]) -> None:
    connection = FakeConnection(8, b"{}")
    with pytest.raises(InvalidInput):
        client_with(connection).infer("tank", stream_id="s", **kwargs)
    assert connection.sent == {}


@pytest.mark.parametrize("answer", [b"not json", b"[1, 2]"])
def test_a_result_that_is_not_a_json_object_is_an_inference_failure(answer: bytes) -> None:
    with pytest.raises(InferenceFailed):
        client_with(FakeConnection(8, answer)).infer("tank", image=b"x", stream_id="s")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_nothing_listening_is_server_unreachable(protocol: str) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with RuthClient(f"127.0.0.1:{port}", protocol, timeout_s=2) as client, pytest.raises(ServerUnreachable):
        client.infer("tank", image=b"x", stream_id="s")


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError):
        RuthClient("127.0.0.1:1", "ftp")
