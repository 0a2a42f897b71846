"""The error hierarchy of the model library, and the one table that maps it onto Triton's error codes.

Callers branch on the exception *type*, never on message text. Every error that reaches a client is
translated exactly once, at the edge (`error_response` in python_backends/base.py), through
`triton_code_for` (the status) and `wire_message` (its stable code in front of the message, python_backends/wire.py).
"""

from __future__ import annotations

import enum
from typing import Any

from python_backends.wire import WireCode, encode


class ErrorCode(str, enum.Enum):
    """Triton's `pb_utils.TritonError` codes that we use (spelled as in the Python backend)."""

    INVALID_ARG = "INVALID_ARG"  # HTTP 400 / gRPC INVALID_ARGUMENT: the client's mistake
    UNAVAILABLE = "UNAVAILABLE"  # HTTP 503 / gRPC UNAVAILABLE: retry later (breaker open, deadline)
    INTERNAL = "INTERNAL"  # HTTP 500 / gRPC INTERNAL: our failure
    NOT_FOUND = "NOT_FOUND"
    UNSUPPORTED = "UNSUPPORTED"


class RuthError(Exception):
    """Root of every error the model library raises on purpose.

    A subclass declares its identity in its class line: `class X(RuthError, wire=..., outcome=..., code=...)`;
    what it leaves out it inherits."""

    code: ErrorCode = ErrorCode.INTERNAL
    #: stable machine-readable identity sent in front of the message (python_backends/wire.py)
    wire: WireCode = WireCode.INTERNAL
    #: label used in metrics (`ruth_requests_total{code=...}`); stable, low-cardinality
    outcome: str = "internal"

    def __init_subclass__(
        cls, *, wire: WireCode | None = None, outcome: str | None = None, code: ErrorCode | None = None
    ) -> None:
        super().__init_subclass__()
        cls.wire = wire or cls.wire
        cls.outcome = outcome or cls.outcome
        cls.code = code or cls.code

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def wire_fields(self) -> dict[str, str]:
        """Machine-readable details sent with the code (none by default)."""
        return {}


class InvalidInput(RuthError, wire=WireCode.INVALID_INPUT, outcome="invalid_arg", code=ErrorCode.INVALID_ARG):
    """The request is malformed or out of limits. Never counts against the circuit breaker."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Unavailable(RuthError, wire=WireCode.UNAVAILABLE, outcome="unavailable", code=ErrorCode.UNAVAILABLE):
    """The model can't serve this request now; the client may retry later."""


class BreakerOpen(Unavailable, wire=WireCode.BREAKER_OPEN, outcome="breaker_open"):
    """The circuit breaker is open: fail fast instead of queueing work on a failing model."""

    def __init__(self, name: str, retry_at: float, retry_in_s: float) -> None:
        super().__init__(
            f"circuit breaker for {name} is OPEN after repeated failures; retry in {max(retry_in_s, 0.0):.1f}s"
        )
        self.name = name
        self.retry_at = retry_at
        self.retry_in_s = retry_in_s

    def wire_fields(self) -> dict[str, str]:
        return {"retry_after": f"{max(self.retry_in_s, 0.0):.1f}"}


class InferenceTimeout(Unavailable, wire=WireCode.TIMEOUT, outcome="timeout"):
    """Inference ran past its deadline. The work may still be running (a zombie) but the client is answered."""

    def __init__(self, name: str, timeout_s: float) -> None:
        super().__init__(f"inference of {name} exceeded its deadline of {timeout_s * 1000:.0f} ms")
        self.timeout_s = timeout_s


class StreamStoreUnavailable(Unavailable, wire=WireCode.STORE_UNAVAILABLE, outcome="store_unavailable"):
    """The shared per-stream state store (Redis) can't be reached in time. Not the model's fault: it doesn't count
    against the breaker, and the next frame tries again (docs/deployment.md, fleet section)."""


class Internal(RuthError, wire=WireCode.INTERNAL, outcome="internal", code=ErrorCode.INTERNAL):
    """The model failed while running a valid request. Counts against the circuit breaker."""


class ModelLoadError(RuthError, wire=WireCode.LOAD_FAILED, outcome="load_failed"):
    """The model can't be loaded. Raised from `initialize()` so Triton's repository index shows the reason."""


def triton_code_for(error: BaseException) -> ErrorCode:
    """Which Triton error code a client gets for `error`: anything unexpected is INTERNAL."""
    if isinstance(error, RuthError):
        return error.code
    return ErrorCode.INTERNAL


def wire_message(error: BaseException) -> str:
    """The message a client gets for `error`: its wire code (and fields) in front of the text people read.
    Anything unexpected is INTERNAL, named by its type."""
    if isinstance(error, RuthError):
        return encode(error.wire, error.message, error.wire_fields())
    return encode(WireCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")


def outcome_for(error: BaseException | None) -> str:
    """Metric label for the outcome of one request."""
    if error is None:
        return "ok"
    if isinstance(error, RuthError):
        return error.outcome
    return "internal"


def counts_as_failure(error: BaseException) -> bool:
    """Whether `error` is the model's fault (breaker food) rather than the client's or the breaker's own."""
    if isinstance(error, (InvalidInput, BreakerOpen, StreamStoreUnavailable)):
        return False
    return True


def first_error(exc: Any, prefix: str = "") -> str:
    """A pydantic `ValidationError` as one line: the first error's location (after `prefix`) and message, without
    pydantic's 'Value error, ' prefix (it says nothing to a reader), plus how many more there are."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(part) for part in first.get("loc", ()))
    ctx = first.get("ctx") or {}
    if first.get("type") in ("value_error", "assertion_error") and "error" in ctx:
        message = str(ctx["error"])
    else:
        message = str(first.get("msg", "invalid"))
    text = f"{prefix}{loc}: {message}" if loc else f"{prefix.rstrip('.') + ': ' if prefix else ''}{message}"
    return text + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
