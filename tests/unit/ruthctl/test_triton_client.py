"""The Triton adapter: URL forms, the admin header per protocol, and error translation."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from ruthctl.triton_client import (
    Endpoint,
    Forbidden,
    IndexEntry,
    RequestFailed,
    Transport,
    TritonClient,
    Unreachable,
    _translate,
)


@pytest.mark.parametrize(
    ("text", "transport", "address", "metrics", "canonical"),
    [
        ("127.0.0.1:8000", Transport.HTTP, "127.0.0.1:8000", 8002, "127.0.0.1:8000"),
        ("http://triton-0:9000", Transport.HTTP, "triton-0:9000", 9002, "triton-0:9000"),
        ("grpc://127.0.0.1:8001", Transport.GRPC, "127.0.0.1:8001", 8002, "grpc://127.0.0.1:8001"),
        ("10.0.0.5:8000?metrics=9100", Transport.HTTP, "10.0.0.5:8000", 9100, "10.0.0.5:8000"),
        ("grpc://[::1]:8001", Transport.GRPC, "[::1]:8001", 8002, "grpc://[::1]:8001"),
    ],
)
def test_endpoint_forms(text: str, transport: Transport, address: str, metrics: int, canonical: str) -> None:
    endpoint = Endpoint.parse(text)
    assert (endpoint.transport, endpoint.address, endpoint.metrics_port, str(endpoint)) == (
        transport,
        address,
        metrics,
        canonical,
    )


@pytest.mark.parametrize("text", ["127.0.0.1", "ftp://x:1", "grpc://:8001", "x:1?metrics=abc", ""])
def test_a_malformed_endpoint_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Endpoint.parse(text)


def test_loopback_and_this_host_are_local() -> None:
    assert Endpoint.parse("127.0.0.1:1").is_local
    assert Endpoint.parse(f"{socket.gethostname()}:1").is_local
    assert not Endpoint.parse("203.0.113.9:1").is_local


def test_the_admin_token_travels_as_the_header_each_protocol_expects() -> None:
    assert TritonClient("127.0.0.1:1", "tok")._admin() == {"ruth-admin-token": "tok"}
    assert TritonClient("grpc://127.0.0.1:1", "tok")._admin() == {"triton-grpc-protocol-ruth-admin-token": "tok"}
    assert TritonClient("127.0.0.1:1", None)._admin() == {}


class FakeException:
    def __init__(self, status: str, message: str) -> None:
        self._status, self._message = status, message

    def status(self) -> str:
        return self._status

    def message(self) -> str:
        return self._message


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("403", "This API is restricted, expecting header 'ruth-admin-token'", Forbidden),
        ("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header 'triton-grpc-protocol-x'", Forbidden),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses; last error: UNKNOWN", Unreachable),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", Unreachable),
        ("400", "load failed for model 'x': version 1 is at UNAVAILABLE state", RequestFailed),
        ("500", "failed to load 'nope', failed to poll from model repository", RequestFailed),
    ],
)
def test_tritonclient_errors_become_typed_errors(status: str, message: str, expected: type) -> None:
    error = _translate(FakeException(status, message), "srv")
    assert type(error) is expected
    if isinstance(error, RequestFailed):
        assert (error.status, error.message) == (status, message)


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("scheme", ["", "grpc://"])
def test_a_server_that_is_not_there_is_unreachable(scheme: str) -> None:
    with TritonClient(f"{scheme}127.0.0.1:{_dead_port()}", "tok", timeout_s=2) as client:
        with pytest.raises(Unreachable):
            client.index()
        assert client.metrics() is None


def test_an_index_entry_is_ready_only_when_triton_says_ready() -> None:
    assert IndexEntry("m", "1", "READY").ready
    assert not IndexEntry("m", "1", "UNAVAILABLE", "unloaded").ready
    assert not IndexEntry("m").ready


def test_close_is_safe_twice() -> None:
    client: Any = TritonClient("127.0.0.1:1")
    client.close()
    client.close()
