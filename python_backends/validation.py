"""Request-field validation: every rule a request must pass before a model sees it.

Every rule is a small pure function that raises `InvalidInput(<tensor name>, <message naming the limit>)`, so
the edge (`GuardedModel.execute` in python_backends/base.py) answers INVALID_ARG with a message the client can act
on, and a model can only *narrow* the global limits (`Limits.for_model`), whose defaults are the `ruth.frame.*`
defaults of python_backends/params.py.

`validate_request` is the one entry point: it checks the cheap fields first and decodes the image last, so a
request with a bad STREAM_ID never costs a JPEG decode.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from python_backends.contract import CONFIG, FRAME, IMAGE, METADATA, STREAM_ID, TIMESTAMP
from python_backends.errors import InvalidInput, first_error
from python_backends.params import DEFAULTS

__all__ = [
    "Limits",
    "ValidatedRequest",
    "check_frame_array",
    "check_frame_size",
    "parse_json_field",
    "validate_config",
    "validate_request",
    "validate_stream_id",
    "validate_timestamp",
]

#: how much of a rejected value is echoed back in an error message
_PREVIEW_CHARS = 64


@dataclass(frozen=True)
class Limits:
    """Every request limit in one immutable value. Defaults are the platform-wide (global) limits."""

    min_width: int = DEFAULTS.frame.min_width
    max_width: int = DEFAULTS.frame.max_width
    min_height: int = DEFAULTS.frame.min_height
    max_height: int = DEFAULTS.frame.max_height
    max_encoded_bytes: int = 50 * 1024 * 1024
    max_pixels: int = DEFAULTS.frame.max_width * DEFAULTS.frame.max_height
    max_json_bytes: int = 64 * 1024
    max_json_depth: int = 5
    max_string_len: int = 10_000
    max_timestamp_drift_s: float = DEFAULTS.timestamp_max_drift_s

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Limits.{f.name} must be a positive number, got {value!r}")
        if self.min_width > self.max_width:
            raise ValueError(f"Limits: min_width {self.min_width} > max_width {self.max_width}")
        if self.min_height > self.max_height:
            raise ValueError(f"Limits: min_height {self.min_height} > max_height {self.max_height}")
        if self.min_width * self.min_height > self.max_pixels:
            raise ValueError(
                f"Limits: max_pixels {self.max_pixels} is below the smallest allowed frame "
                f"{self.min_width}x{self.min_height}"
            )

    def for_model(
        self,
        *,
        min_width: int | None = None,
        max_width: int | None = None,
        min_height: int | None = None,
        max_height: int | None = None,
        max_encoded_bytes: int | None = None,
        max_pixels: int | None = None,
        max_json_bytes: int | None = None,
        max_json_depth: int | None = None,
        max_string_len: int | None = None,
        max_timestamp_drift_s: float | None = None,
    ) -> Limits:
        """The intersection of these limits with a model's own: a model can narrow a limit, never widen it.

        `None` means "the model has no opinion". Raises ValueError when the intersection is empty (a model
        asking for frames the platform never admits), which the caller turns into a load failure.
        """

        def tighter_max(name: str, own: float | None) -> Any:
            current = getattr(self, name)
            return current if own is None else min(current, own)

        def tighter_min(name: str, own: int | None) -> int:
            current: int = getattr(self, name)
            return current if own is None else max(current, own)

        new_max_width = tighter_max("max_width", max_width)
        new_max_height = tighter_max("max_height", max_height)
        narrowed = {
            "min_width": tighter_min("min_width", min_width),
            "max_width": new_max_width,
            "min_height": tighter_min("min_height", min_height),
            "max_height": new_max_height,
            "max_encoded_bytes": tighter_max("max_encoded_bytes", max_encoded_bytes),
            "max_pixels": min(tighter_max("max_pixels", max_pixels), new_max_width * new_max_height),
            "max_json_bytes": tighter_max("max_json_bytes", max_json_bytes),
            "max_json_depth": tighter_max("max_json_depth", max_json_depth),
            "max_string_len": tighter_max("max_string_len", max_string_len),
            "max_timestamp_drift_s": tighter_max("max_timestamp_drift_s", max_timestamp_drift_s),
        }
        try:
            return dataclasses.replace(self, **narrowed)
        except ValueError as exc:
            raise ValueError(f"the model's limits do not overlap the global limits: {exc}") from None


def _preview(raw: object) -> str:
    """A bounded repr of a client value, so an error message can't be used to echo megabytes back."""
    text = repr(raw)
    return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "...'"


def _as_text(raw: str | bytes, field: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(field, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    raise InvalidInput(field, f"expected a string, got {type(raw).__name__}")


# ---------------------------------------------------------------------------------------------- STREAM_ID

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def validate_stream_id(raw: str | bytes) -> str:
    """A hyphenated UUID (any case), returned lower-case so one stream never has two state keys."""
    text = _as_text(raw, STREAM_ID)
    if not _UUID_RE.fullmatch(text):
        raise InvalidInput(
            STREAM_ID,
            f"must be a UUID like 123e4567-e89b-12d3-a456-426614174000 (8-4-4-4-12 hex digits), got {_preview(text)}",
        )
    return text.lower()


# ---------------------------------------------------------------------------------------------- TIMESTAMP

_MAX_TIMESTAMP_CHARS = 64


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def validate_timestamp(raw: str | bytes, *, now: datetime, max_drift_s: float) -> datetime:
    """An ISO-8601 date and time within `max_drift_s` of `now`. 'Z' is UTC; a naive time is taken as UTC.

    The result is always timezone-aware, so per-stream state can compare timestamps from any client.
    """
    text = _as_text(raw, TIMESTAMP).strip()
    if not text:
        raise InvalidInput(TIMESTAMP, "empty; expected an ISO-8601 date and time such as 2024-05-01T12:00:00Z")
    if len(text) > _MAX_TIMESTAMP_CHARS:
        raise InvalidInput(TIMESTAMP, f"too long ({len(text)} chars) for an ISO-8601 date and time")
    # fromisoformat learnt 'Z' only in Python 3.11; spell it out so both parse the same.
    normalised = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    try:
        parsed = datetime.fromisoformat(normalised)
    except ValueError:
        raise InvalidInput(
            TIMESTAMP, f"not an ISO-8601 date and time (e.g. 2024-05-01T12:00:00Z): {_preview(text)}"
        ) from None
    if len(text) <= 10:  # fromisoformat accepts a bare date; a frame needs a time of day
        raise InvalidInput(TIMESTAMP, f"needs a time of day, not only a date: {_preview(text)}")
    parsed = _as_utc(parsed)
    drift = (parsed - _as_utc(now)).total_seconds()
    if abs(drift) > max_drift_s:
        direction = "ahead of" if drift > 0 else "behind"
        raise InvalidInput(
            TIMESTAMP,
            f"{text} is {abs(drift):.0f} s {direction} the server clock; the limit is ±{max_drift_s:.0f} s",
        )
    return parsed


# ---------------------------------------------------------------------------------------------- JSON fields


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_field(raw: str | bytes, field: str, limits: Limits) -> dict[str, Any]:
    """A JSON object within the size, nesting-depth and string-length limits. NaN/Infinity are rejected.

    Depth counts containers around a value: the top-level object's members are at depth 1, and a value
    deeper than `limits.max_json_depth` fails (geo zones, config→zones→zone→points→point→number, sit at 5).
    """
    # A str has at least as many UTF-8 bytes as characters: reject oversized input before encoding it.
    size = len(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else None
    if size is None and isinstance(raw, str):
        size = len(raw) if len(raw) > limits.max_json_bytes else len(raw.encode("utf-8", "surrogatepass"))
    if size is not None and size > limits.max_json_bytes:
        raise InvalidInput(field, f"JSON is {size} bytes; the limit is {limits.max_json_bytes} bytes")
    text = _as_text(raw, field)
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidInput(field, f"JSON nesting is deeper than {limits.max_json_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers longer than Python allows
        raise InvalidInput(field, f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(field, f"must be a JSON object, got {_json_kind(value)}")
    _check_json_tree(value, field, limits)
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _check_json_tree(root: dict[str, Any], field: str, limits: Limits) -> None:
    """Iterative walk (no recursion on client data) checking depth and every key and string's length."""
    stack: list[tuple[Any, int, str]] = [(root, 0, field.lower())]
    while stack:
        node, depth, path = stack.pop()
        if depth > limits.max_json_depth:
            raise InvalidInput(field, f"JSON nesting is deeper than {limits.max_json_depth} levels at {path}")
        if isinstance(node, str):
            if len(node) > limits.max_string_len:
                raise InvalidInput(
                    field, f"string at {path} is {len(node)} chars; the limit is {limits.max_string_len} chars"
                )
        elif isinstance(node, dict):
            for key, child in node.items():
                if len(key) > limits.max_string_len:
                    raise InvalidInput(
                        field, f"key in {path} is {len(key)} chars; the limit is {limits.max_string_len} chars"
                    )
                stack.append((child, depth + 1, f"{path}.{key}"))
        elif isinstance(node, list):
            stack.extend((child, depth + 1, f"{path}.{i}") for i, child in enumerate(node))


# ---------------------------------------------------------------------------------------------- frames


def check_frame_size(width: int, height: int, limits: Limits, *, field: str = IMAGE) -> None:
    """Width and height within the (model-narrowed) limits, and the pixel count within `max_pixels`."""
    if not limits.min_width <= width <= limits.max_width:
        raise InvalidInput(field, f"width {width} px is outside the allowed {limits.min_width}..{limits.max_width} px")
    if not limits.min_height <= height <= limits.max_height:
        raise InvalidInput(
            field, f"height {height} px is outside the allowed {limits.min_height}..{limits.max_height} px"
        )
    if width * height > limits.max_pixels:
        raise InvalidInput(
            field, f"{width}x{height} is {width * height} pixels; the limit is {limits.max_pixels} pixels"
        )


def check_frame_array(arr: np.ndarray, limits: Limits) -> np.ndarray:
    """A raw FRAME: uint8, HxWx3 (BGR), within the size limits. Returns it C-contiguous.

    A per-request slice of a batched FRAME tensor arrives as [1, H, W, 3]; that leading 1 is dropped.
    """
    if not isinstance(arr, np.ndarray):
        raise InvalidInput(FRAME, f"expected a uint8 array of shape (H, W, 3), got {type(arr).__name__}")
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInput(
            FRAME,
            f"expected uint8 BGR pixels of shape (H, W, 3), got {arr.dtype} of shape {tuple(arr.shape)}",
        )
    height, width = int(arr.shape[0]), int(arr.shape[1])
    check_frame_size(width, height, limits, field=FRAME)
    return np.ascontiguousarray(arr)


def validate_config(config: dict[str, Any], schema: type[BaseModel] | None) -> BaseModel | dict[str, Any]:
    """The model's own CONFIG schema (zones, tank corners...) applied to the parsed JSON.

    The first error is reported with its path (`CONFIG: zones.0.points: at least 3 points`) so a client
    can find the offending value in a large config.

    Validation is strict, in JSON mode: a number must be a JSON number and a flag a JSON boolean ("1000", "yes"
    and 1 for a bool are refused, never coerced); schemas bound every size and coordinate, and geometry is checked
    against the frame by `check_config_against_frame`.
    """
    if schema is None:
        return config
    try:
        return schema.model_validate_json(json.dumps(config, allow_nan=False), strict=True)
    except ValueError as exc:
        if not isinstance(exc, ValidationError):  # NaN/Infinity can't come from parse_json_field; be safe anyway
            raise InvalidInput(CONFIG, f"not valid JSON: {exc}") from None
        raise InvalidInput(CONFIG, first_error(exc)) from None


def check_config_against_frame(config: Any, width: int, height: int) -> None:
    """A schema's `check_frame(width, height)` (geometry inside the frame), its ValueError as INVALID_ARG CONFIG."""
    check = getattr(config, "check_frame", None)
    if check is None:
        return
    try:
        check(width, height)
    except ValueError as exc:
        raise InvalidInput(CONFIG, str(exc)) from None


#: A client-set request id is echoed into RESULT and logs: bounded, printable ASCII without spaces.
MAX_REQUEST_ID_CHARS = 128
_REQUEST_ID_RE = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_CHARS}}}")


def validate_request_id(raw: str) -> str:
    """The request's `id` (HTTP JSON `id`, gRPC `id`): 1..128 printable ASCII characters."""
    if not _REQUEST_ID_RE.fullmatch(raw):
        raise InvalidInput(
            "id",
            f"the request id must be 1..{MAX_REQUEST_ID_CHARS} printable ASCII characters without spaces, "
            f"got {len(raw)} characters: {_preview(raw)}",
        )
    return raw


# ---------------------------------------------------------------------------------------------- entry point


@dataclass(frozen=True)
class ValidatedRequest:
    """Everything a model needs from one request, checked. `config` is the schema instance when one is declared.

    `encoded_bytes` is the payload size the client sent for the pixels: the encoded image, or the raw FRAME.
    """

    frame: np.ndarray
    stream_id: str
    timestamp: datetime
    config: Any
    metadata: dict[str, Any]
    source: str
    encoded_bytes: int


def _optional_json(raw: str | bytes | None, field: str, limits: Limits) -> dict[str, Any]:
    """An absent or blank optional JSON field is an empty object (clients often send b'' for 'not set')."""
    if raw is None:
        return {}
    if isinstance(raw, (str, bytes, bytearray)) and not raw.strip():
        return {}
    return parse_json_field(raw, field, limits)


def validate_request(
    *,
    image: bytes | None,
    frame: np.ndarray | None,
    stream_id: str | bytes | None,
    timestamp: str | bytes | None,
    config: str | bytes | None,
    metadata: str | bytes | None,
    limits: Limits,
    now: datetime,
    config_schema: type[BaseModel] | None = None,
) -> ValidatedRequest:
    """Validate one request, cheapest checks first; the image is decoded only when everything else passed."""
    if (image is None) == (frame is None):
        raise InvalidInput(
            f"{IMAGE}|{FRAME}",
            "exactly one of IMAGE (encoded JPEG/PNG/WebP) or FRAME (raw BGR uint8 HxWx3) is required",
        )
    if stream_id is None:
        raise InvalidInput(STREAM_ID, "required (a UUID naming the camera stream)")
    if timestamp is None:
        raise InvalidInput(TIMESTAMP, "required (ISO-8601 capture time, e.g. 2024-05-01T12:00:00Z)")
    canonical_id = validate_stream_id(stream_id)
    moment = validate_timestamp(timestamp, now=now, max_drift_s=limits.max_timestamp_drift_s)
    config_doc = _optional_json(config, CONFIG, limits)
    metadata_doc = _optional_json(metadata, METADATA, limits)
    validated_config = validate_config(config_doc, config_schema)

    if image is not None:
        from python_backends.imaging import decode_image  # imaging imports this module for Limits

        pixels = decode_image(image, limits)
        source, size = IMAGE, len(image)
    else:
        assert frame is not None
        pixels = check_frame_array(frame, limits)
        source, size = FRAME, int(pixels.nbytes)
    return ValidatedRequest(
        frame=pixels,
        stream_id=canonical_id,
        timestamp=moment,
        config=validated_config,
        metadata=metadata_doc,
        source=source,
        encoded_bytes=size,
    )
