"""A small client for the platform's backend: the familiar fields in, the parsed RESULT or a typed error out.

It speaks the wire contract of docs/contract.md over HTTP or gRPC through tritonclient, so callers don't build
tensors or read Triton's status codes. Errors are translated once, here: an error our models send carries a stable
code in front of its message (`[RUTH:BREAKER_OPEN retry_after=12.5] ...`, python_backends/wire.py), and the code
alone picks the type; an answer without one comes from Triton itself and is typed by its status, in
`_triton_own_error` (the one place that knows Triton's messages):

| error | our code | Triton's own answer (no code) | meaning |
|---|---|---|---|
| `InvalidInput` | INVALID_INPUT | 400, INVALID_ARGUMENT | the request is wrong (image, stream id, CONFIG) |
| `BreakerOpen` | BREAKER_OPEN | - | the breaker is open; `retry_in_s` from retry_after |
| `ModelUnavailable` | TIMEOUT, STORE_UNAVAILABLE, UNAVAILABLE, LOAD_FAILED | 503, UNAVAILABLE, a dead stub | retry |
| `ModelNotFound` | - | 404, NOT_FOUND, 400 "unknown model" | no such model, or it isn't loaded |
| `ServerUnreachable` | - | nothing answered | - |
| `InferenceFailed` | INTERNAL | 500, INTERNAL, anything else | the model failed on a valid request |

Every error has `code` (our wire code, None for Triton's own), `status` (Triton's status as tritonclient reported
it) and `message` (the text, without the code).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from python_backends.wire import WireCode, decode

__all__ = [
    "BreakerOpen",
    "InferenceFailed",
    "InvalidInput",
    "ModelNotFound",
    "ModelUnavailable",
    "RuthClient",
    "RuthClientError",
    "ServerUnreachable",
    "error_for",
]


class RuthClientError(Exception):
    """Root of the client's errors: `code` is the wire code of our models' errors (None for Triton's own answers
    and for errors raised here), `status` Triton's status as tritonclient reported it."""

    def __init__(self, message: str, status: str = "", code: WireCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class InvalidInput(RuthClientError):
    """The request was refused as malformed or out of limits: fix it, don't retry it."""


class ModelUnavailable(RuthClientError):
    """The model can't serve now (timeout, queue full, model process down): retry later."""


class BreakerOpen(ModelUnavailable):
    """The model's circuit breaker is open; `retry_in_s` is the breaker's own estimate, when it gave one."""

    def __init__(
        self, message: str, status: str = "", code: WireCode | None = None, retry_in_s: float | None = None
    ) -> None:
        super().__init__(message, status, code)
        self.retry_in_s = retry_in_s


class ModelNotFound(RuthClientError):
    """No such model on this server, or it isn't loaded."""


class ServerUnreachable(RuthClientError):
    """Nothing answered at the URL."""


class InferenceFailed(RuthClientError):
    """The model failed on a valid request (INTERNAL)."""


#: our wire codes -> error type (BREAKER_OPEN is built apart: it carries the retry estimate)
_BY_CODE: dict[WireCode, type[RuthClientError]] = {
    WireCode.INVALID_INPUT: InvalidInput,
    WireCode.TIMEOUT: ModelUnavailable,
    WireCode.STORE_UNAVAILABLE: ModelUnavailable,
    WireCode.UNAVAILABLE: ModelUnavailable,
    WireCode.LOAD_FAILED: ModelUnavailable,
    WireCode.INTERNAL: InferenceFailed,
}
_STATUS = {
    "400": "INVALID_ARGUMENT",
    "404": "NOT_FOUND",
    "500": "INTERNAL",
    "501": "UNIMPLEMENTED",
    "503": "UNAVAILABLE",
}


def error_for(status: str, message: str) -> RuthClientError:
    """Triton's (status, message) -> our error type: by the wire code when the message carries one, else as one of
    Triton's own answers."""
    wire = decode(message)
    if wire is None:
        return _triton_own_error(status, message)
    if wire.code is WireCode.BREAKER_OPEN:
        return BreakerOpen(wire.message, status, wire.code, wire.number("retry_after"))
    return _BY_CODE[wire.code](wire.message, status, wire.code)


def _triton_own_error(status: str, message: str) -> RuthClientError:
    """An answer Triton wrote itself (no model of ours ran, or its process is gone), typed by its status.

    Triton's status alone misreads two of them, so only these are recognised by their text (Triton 2.51 wording,
    docs/triton-notes.md §5): an unknown or unloaded model is HTTP 400 "Request for unknown model: ... is not found" /
    "... has no available versions" (not a client mistake: ModelNotFound), and a request routed to a dead stub
    process is HTTP 500 / INTERNAL "Stub process '<instance>' is not healthy." (not the model failing on the
    request: ModelUnavailable, retry).
    """
    code = _STATUS.get(status, status.removeprefix("StatusCode."))
    if code == "NOT_FOUND" or "unknown model" in message or "has no available versions" in message:
        return ModelNotFound(message, status)
    if "Stub process" in message and "not healthy" in message:
        return ModelUnavailable(message, status)
    if code == "INVALID_ARGUMENT":
        return InvalidInput(message, status)
    if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"):
        return ModelUnavailable(message, status)
    return InferenceFailed(message, status)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _text(value: str | Mapping[str, Any]) -> bytes:
    return (value if isinstance(value, str) else json.dumps(dict(value), separators=(",", ":"))).encode("utf-8")


class RuthClient:
    """One client per server URL (`host:port`, or any URL with `protocol="grpc"`); close it, or use `with`."""

    def __init__(
        self, url: str, protocol: str = "http", *, timeout_s: float = 30.0, admin_key: str | None = None
    ) -> None:
        """`admin_key` is needed only where the deployment keys model-config (RUTH_KEYED_APIS, docs/security.md)."""
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        self.url = url.split("://", 1)[-1]
        self.protocol = protocol
        self.timeout_s = timeout_s
        self._client: Any = None
        self._batched: dict[str, bool] = {}
        self._key_headers: dict[str, str] = {}
        if admin_key:
            header = "ruth-admin-token" if protocol == "http" else "triton-grpc-protocol-ruth-admin-token"
            self._key_headers = {header: admin_key}

    @property
    def _module(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    def _connection(self) -> Any:
        if self._client is None:
            if self.protocol == "grpc":
                self._client = self._module.InferenceServerClient(self.url)
            else:
                self._client = self._module.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
        return self._client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        try:
            return getattr(self._connection(), method)(*args, **kwargs)
        except InferenceServerException as exc:
            status, message = str(exc.status() or ""), str(exc.message() or "")
            if "failed to connect" in message:
                raise ServerUnreachable(f"{self.url}: {message}", status) from None
            raise error_for(status, message) from None
        except OSError as exc:
            raise ServerUnreachable(f"{self.url}: {exc}") from None

    def _is_batched(self, model: str) -> bool:
        """Whether the model takes a leading batch dimension (max_batch_size > 0); asked once per model."""
        if model not in self._batched:
            extra = {"as_json": True} if self.protocol == "grpc" else {}
            config = self._call("get_model_config", model, headers=self._key_headers, **extra)
            config = config.get("config", config)
            self._batched[model] = int(config.get("max_batch_size", 0)) > 0
        return self._batched[model]

    def infer(
        self,
        model: str,
        *,
        image: bytes | None = None,
        frame: np.ndarray | None = None,
        stream_id: str,
        timestamp: str | dt.datetime | None = None,
        config: str | Mapping[str, Any] | None = None,
        metadata: str | Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run one frame (encoded `image` bytes or a HxWx3 uint8 BGR `frame`) and return the RESULT document."""
        if (image is None) == (frame is None):
            raise InvalidInput("give exactly one of image (encoded bytes) or frame (HxWx3 uint8 array)")
        if isinstance(timestamp, dt.datetime):
            timestamp = timestamp.isoformat()
        batched = self._is_batched(model)
        tensors: list[tuple[str, np.ndarray]] = []
        if image is not None:
            tensors.append(("IMAGE", np.array([image], dtype=np.object_)))
        if frame is not None:
            array = np.ascontiguousarray(frame)
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
                raise InvalidInput(f"frame must be HxWx3 uint8, got {array.dtype} {array.shape}")
            tensors.append(("FRAME", array))
        tensors.append(("STREAM_ID", np.array([str(stream_id).encode()], dtype=np.object_)))
        tensors.append(("TIMESTAMP", np.array([(timestamp or _now()).encode()], dtype=np.object_)))
        if config is not None:
            tensors.append(("CONFIG", np.array([_text(config)], dtype=np.object_)))
        if metadata is not None:
            tensors.append(("METADATA", np.array([_text(metadata)], dtype=np.object_)))
        inputs = []
        for name, array in tensors:
            data = array[np.newaxis, ...] if batched else array
            tensor = self._module.InferInput(name, list(data.shape), "UINT8" if data.dtype == np.uint8 else "BYTES")
            tensor.set_data_from_numpy(data)
            inputs.append(tensor)
        outputs = [self._module.InferRequestedOutput("RESULT")]
        response = self._call("infer", model, inputs, outputs=outputs, request_id=uuid.uuid4().hex)
        raw = response.as_numpy("RESULT").reshape(-1)[0]
        try:
            result = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InferenceFailed(f"{model} returned a RESULT that is not JSON: {exc}") from None
        if not isinstance(result, dict):
            raise InferenceFailed(f"{model} returned a RESULT that is not a JSON object")
        return result

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def __enter__(self) -> RuthClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
