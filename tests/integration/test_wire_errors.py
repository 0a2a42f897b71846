"""Error identity on the wire, through the real server: each error a model sends carries its code over HTTP and
gRPC, and the client SDK types it by that code (python_backends/wire.py, ruthctl/client.py)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from support import config_with, jpeg, tank_frame, vision_inputs
from tritonclient.utils import InferenceServerException

from python_backends.wire import WireCode, decode

pytestmark = pytest.mark.integration

TANK = "tank_overflow_monitoring"
STREAM = "3f1c2a9e-8d5b-4c1e-9a7f-2b6d8e0c4a11"
PROTOCOLS = ("http", "grpc")
STATUS = {  # Triton's status for each class of our codes, as tritonclient reports it per protocol
    ("http", "INVALID_ARG"): "400",
    ("grpc", "INVALID_ARG"): "StatusCode.INVALID_ARGUMENT",
    ("http", "UNAVAILABLE"): "503",
    ("grpc", "UNAVAILABLE"): "StatusCode.UNAVAILABLE",
    ("http", "INTERNAL"): "500",
    ("grpc", "INTERNAL"): "StatusCode.INTERNAL",
}


def raw_error(handle: Any, protocol: str, **request: Any) -> InferenceServerException:
    """The error tritonclient raises for one request (no SDK in between)."""
    module: Any = httpclient if protocol == "http" else grpcclient
    url = handle.http_url if protocol == "http" else handle.grpc_url
    kwargs = {"network_timeout": 30} if protocol == "http" else {}
    with contextlib.closing(module.InferenceServerClient(url, **kwargs)) as client:
        with pytest.raises(InferenceServerException) as raised:
            client.infer(TANK, vision_inputs(module, **request))
    return raised.value


def sdk_error(handle: Any, protocol: str, model: str = TANK, **request: Any) -> Any:
    from ruthctl.client import RuthClient, RuthClientError

    url = handle.http_url if protocol == "http" else handle.grpc_url
    with RuthClient(url, protocol, timeout_s=30) as client, pytest.raises(RuthClientError) as raised:
        client.infer(model, stream_id=STREAM, **request)
    return raised.value


def assert_code(exc: InferenceServerException, protocol: str, code: WireCode, status: str) -> Any:
    assert exc.status() == STATUS[(protocol, status)], (exc.status(), exc.message())
    wire = decode(str(exc.message()))
    assert wire is not None, f"no wire code in {exc.message()!r}"
    assert wire.code is code, exc.message()
    return wire


def test_each_error_we_send_carries_its_code_over_http_and_grpc_and_the_sdk_types_it_by_the_code(
    triton_factory: Any,
) -> None:
    from ruthctl.client import BreakerOpen, InferenceFailed, InvalidInput, ModelNotFound, ModelUnavailable, RuthClient

    handle = triton_factory([])
    frame = jpeg(tank_frame(50))

    # INVALID_INPUT (INVALID_ARG)
    handle.load(TANK, config=config_with(handle))
    for protocol in PROTOCOLS:
        wire = assert_code(
            raw_error(handle, protocol, image=b"GIF89a not allowed"), protocol, WireCode.INVALID_INPUT, "INVALID_ARG"
        )
        assert wire.message.startswith("IMAGE")
        bad = sdk_error(handle, protocol, image=b"GIF89a not allowed")
        assert type(bad) is InvalidInput and bad.code is WireCode.INVALID_INPUT and bad.message.startswith("IMAGE")

    # TIMEOUT (UNAVAILABLE): every request hangs past a short deadline; a high threshold keeps the breaker closed
    handle.load(
        TANK,
        config=config_with(
            handle, fault__hang_rate=1.0, fault__hang_s=1, inference_timeout_ms=300, breaker__failure_threshold=50
        ),
    )
    for protocol in PROTOCOLS:
        wire = assert_code(raw_error(handle, protocol, image=frame), protocol, WireCode.TIMEOUT, "UNAVAILABLE")
        assert "deadline" in wire.message
        timeout = sdk_error(handle, protocol, image=frame)
        assert type(timeout) is ModelUnavailable and timeout.code is WireCode.TIMEOUT

    # a success clears the failures the timeouts counted (the breaker's state outlives a reload)
    handle.load(TANK, config=config_with(handle))
    with RuthClient(handle.http_url) as client:
        assert "level_percent" in client.infer(TANK, image=frame, stream_id=STREAM)

    # INTERNAL four times (raw and SDK, both protocols), then BREAKER_OPEN (UNAVAILABLE) with its retry estimate
    handle.load(
        TANK, config=config_with(handle, fault__fail_rate=1.0, breaker__failure_threshold=4, breaker__cooldown_s=60)
    )
    for protocol in PROTOCOLS:
        wire = assert_code(raw_error(handle, protocol, image=frame), protocol, WireCode.INTERNAL, "INTERNAL")
        assert "injected fault" in wire.message, wire.message
        failed = sdk_error(handle, protocol, image=frame)
        assert type(failed) is InferenceFailed and failed.code is WireCode.INTERNAL
    for protocol in PROTOCOLS:
        wire = assert_code(raw_error(handle, protocol, image=frame), protocol, WireCode.BREAKER_OPEN, "UNAVAILABLE")
        retry_after = wire.number("retry_after")
        assert retry_after is not None and 0 < retry_after <= 60
        opened = sdk_error(handle, protocol, image=frame)
        assert isinstance(opened, BreakerOpen) and opened.code is WireCode.BREAKER_OPEN
        assert opened.retry_in_s is not None and 0 < opened.retry_in_s <= 60
        assert not opened.message.startswith("[RUTH:") and "OPEN" in opened.message

    # Triton's own answers carry no code and are typed by their status (and the known texts)
    for protocol in PROTOCOLS:
        missing = sdk_error(handle, protocol, model="no_such_model", image=frame)
        assert type(missing) is ModelNotFound and missing.code is None
