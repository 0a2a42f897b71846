"""The wire contract every vision model speaks: tensor names and the RESULT document.

The runtime we replace passed each model's dict through unchecked, so clients saw whatever a model happened to
return. Here a RESULT is validated against `InferenceResult` before it leaves;
a result that breaks the contract is the model's fault, so it becomes `errors.Internal` (HTTP 500, a breaker
failure), never a client error. `docs/contract.md` documents this module for clients.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import Enum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from python_backends.errors import Internal, first_error

__all__ = [
    "CONFIG",
    "FRAME",
    "IMAGE",
    "INPUT_NAMES",
    "METADATA",
    "RESULT",
    "STREAM_ID",
    "TIMESTAMP",
    "InferenceResult",
    "ResultMetadata",
    "Severity",
    "encode_result",
    "result_json_schema",
]

# Tensor names (inputs then the one output). The string values are part of the wire contract.
IMAGE = "IMAGE"  # TYPE_STRING [1]: encoded JPEG/PNG/WebP bytes
FRAME = "FRAME"  # TYPE_UINT8 [-1, -1, 3]: raw BGR pixels
STREAM_ID = "STREAM_ID"  # TYPE_STRING [1]: UUID
TIMESTAMP = "TIMESTAMP"  # TYPE_STRING [1]: ISO-8601
CONFIG = "CONFIG"  # TYPE_STRING [1], optional: JSON object, per-stream model settings
METADATA = "METADATA"  # TYPE_STRING [1], optional: JSON object, opaque to the model
RESULT = "RESULT"  # TYPE_STRING [1]: JSON document, `InferenceResult`

INPUT_NAMES: tuple[str, ...] = (IMAGE, FRAME, STREAM_ID, TIMESTAMP, CONFIG, METADATA)


class Severity(str, Enum):
    """How urgent a result is. Ordered: use `Severity.rank` to compare."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_ORDER.index(self)


_SEVERITY_ORDER = (Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)


class ResultMetadata(BaseModel):
    """What the library (not the model) says about the run; models may add their own keys."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_name: str = Field(min_length=1)
    model_version: str = Field(min_length=1)
    inference_time_ms: float = Field(ge=0, allow_inf_nan=False)
    stream_id: str
    timestamp: str
    device: str


class InferenceResult(BaseModel):
    """The RESULT document. Models add their own top-level fields (e.g. `level_percent`); those pass through."""

    model_config = ConfigDict(extra="allow")

    violation_detected: bool
    violation_type: str | None
    severity: Severity
    confidence: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    detections: list[dict[str, Any]]
    metadata: ResultMetadata

    @model_validator(mode="after")
    def _violation_is_named(self) -> InferenceResult:
        if self.violation_detected and not self.violation_type:
            raise ValueError("violation_detected is true but violation_type is empty")
        return self


_SCALAR_FIELDS: tuple[str, ...] = ("violation_detected", "violation_type", "severity", "confidence")


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays, which models return naturally, as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _contract_error(detail: str) -> Internal:
    return Internal(f"model returned a result that breaks the wire contract: {detail}")


def encode_result(payload: Mapping[str, Any], metadata: Mapping[str, Any]) -> bytes:
    """Merge the library's `metadata` into the model's `payload`, validate, and return compact UTF-8 JSON.

    The library's metadata keys win over the model's (a model can't misreport its name or timing); the
    model's other metadata keys are kept. Validation runs once, on the top-level fields; detection entries
    are only checked to be objects and are then serialised from the model's own dicts (no second copy).
    NaN and Infinity anywhere are refused: they are not JSON.
    """
    if not isinstance(payload, Mapping):
        raise _contract_error(f"expected a mapping, got {type(payload).__name__}")
    own_metadata = payload.get("metadata") or {}
    if not isinstance(own_metadata, Mapping):
        raise _contract_error(f"metadata: expected an object, got {type(own_metadata).__name__}")
    document = dict(payload)
    document["metadata"] = {**own_metadata, **metadata}
    for key in _SCALAR_FIELDS:  # np.bool_ / np.float32 from model arithmetic: plain Python before validation
        value = document.get(key)
        if isinstance(value, np.generic):
            document[key] = value.item()
    try:
        result = InferenceResult.model_validate(document)
    except ValidationError as exc:
        raise _contract_error(first_error(exc)) from None
    # Re-emit the canonical (coerced) top-level values, keep the model's own objects for everything else.
    document["violation_detected"] = result.violation_detected
    document["violation_type"] = result.violation_type
    document["severity"] = result.severity.value
    document["confidence"] = result.confidence
    try:
        text = json.dumps(document, allow_nan=False, separators=(",", ":"), default=_json_default)
    except ValueError as exc:  # NaN/Infinity, or a circular reference
        raise _contract_error(f"not JSON: {exc}") from None
    except TypeError as exc:
        raise _contract_error(str(exc)) from None
    return text.encode("utf-8")


def result_json_schema() -> dict[str, Any]:
    """The JSON Schema of RESULT, for docs and clients."""
    return InferenceResult.model_json_schema()
