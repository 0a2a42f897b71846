"""Error identity on the wire: the stable code every error response of ours carries, shared by server and client.

An error we send reads `[RUTH:<CODE>] <message>` or, with fields, `[RUTH:<CODE> key=value ...] <message>`:
`[RUTH:BREAKER_OPEN retry_after=12.5] circuit breaker for tank:1 is OPEN ...`. The prefix is part of the message
string because the message is the only thing Triton's Python backend carries from `pb_utils.TritonError` to the
client besides the status (HTTP: the `{"error": ...}` body; gRPC: the status message), and it reaches both
protocols unchanged (docs/triton-notes.md §5, tests/integration/test_wire_errors.py). The code names *which* error,
the status only its class (several of ours are UNAVAILABLE); clients branch on the code, people read the message.

This module imports nothing of the model library, so the client SDK (`ruthctl.client`) uses it as is. Codes are a
contract: add new ones, never rename or reuse one.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping

__all__ = ["WireCode", "WireError", "decode", "encode"]


class WireCode(str, enum.Enum):
    """The code of each error we send, with the Triton status it travels under (docs/contract.md)."""

    INVALID_INPUT = "INVALID_INPUT"  # INVALID_ARG: the request is malformed or out of limits; don't retry it
    BREAKER_OPEN = "BREAKER_OPEN"  # UNAVAILABLE: the model's breaker is open; field retry_after (seconds)
    TIMEOUT = "TIMEOUT"  # UNAVAILABLE: inference ran past the model's deadline
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"  # UNAVAILABLE: the per-stream state store can't be reached
    UNAVAILABLE = "UNAVAILABLE"  # UNAVAILABLE: can't serve now for another reason (a model it calls failed)
    INTERNAL = "INTERNAL"  # INTERNAL: the model failed on a valid request
    LOAD_FAILED = "LOAD_FAILED"  # the model can't be loaded (only seen in load reasons)


_FIELD = re.compile(r"[a-z][a-z0-9_]*")
_VALUE = re.compile(r"[^\s\]=]+")
_PREFIX = re.compile(r"\[RUTH:(?P<code>[A-Z][A-Z0-9_]*)(?P<fields>(?: [a-z][a-z0-9_]*=[^\s\]=]+)*)\] ?")


@dataclasses.dataclass(frozen=True)
class WireError:
    """An error response read back: its code, its fields, and the message without the prefix."""

    code: WireCode
    fields: Mapping[str, str]
    message: str

    def number(self, field: str) -> float | None:
        """A numeric field (e.g. `retry_after`), None when absent or not a number."""
        try:
            return float(self.fields[field])
        except (KeyError, ValueError):
            return None


def encode(code: WireCode, message: str, fields: Mapping[str, str] | None = None) -> str:
    """The message to send: the code (and fields) in front of the text people read."""
    parts = [f"RUTH:{code.value}"]
    for key, value in (fields or {}).items():
        if not _FIELD.fullmatch(key) or not _VALUE.fullmatch(value):
            raise ValueError(f"wire field {key}={value!r}: keys are [a-z0-9_], values have no space, ']' or '='")
        parts.append(f"{key}={value}")
    return f"[{' '.join(parts)}] {message}"


def decode(text: str) -> WireError | None:
    """The code at the start of `text`; None for an untagged message (Triton's own) or a code this side doesn't
    know (a newer server), which the caller then handles by the status alone."""
    match = _PREFIX.match(text)
    if match is None:
        return None
    try:
        code = WireCode(match["code"])
    except ValueError:
        return None
    fields = dict(item.split("=", 1) for item in match["fields"].split())
    return WireError(code=code, fields=fields, message=text[match.end() :])
