"""The wire codes: every error we send carries one, the prefix round-trips, and untagged text decodes to nothing."""

from __future__ import annotations

import pytest

from python_backends.errors import (
    BreakerOpen,
    InferenceTimeout,
    Internal,
    InvalidInput,
    ModelLoadError,
    RuthError,
    StreamStoreUnavailable,
    Unavailable,
    wire_message,
)
from python_backends.wire import WireCode, decode, encode


@pytest.mark.parametrize(
    ("error", "code", "fields"),
    [
        (InvalidInput("IMAGE", "not an image"), WireCode.INVALID_INPUT, {}),
        (BreakerOpen("tank:1", 0.0, 12.54), WireCode.BREAKER_OPEN, {"retry_after": "12.5"}),
        (BreakerOpen("tank:1", 0.0, -3.0), WireCode.BREAKER_OPEN, {"retry_after": "0.0"}),
        (InferenceTimeout("tank", 2.0), WireCode.TIMEOUT, {}),
        (StreamStoreUnavailable("redis down"), WireCode.STORE_UNAVAILABLE, {}),
        (Unavailable("pose_estimator failed"), WireCode.UNAVAILABLE, {}),
        (Internal("RuntimeError: boom"), WireCode.INTERNAL, {}),
        (ModelLoadError("weights missing"), WireCode.LOAD_FAILED, {}),
        (RuntimeError("not ours"), WireCode.INTERNAL, {}),
    ],
)
def test_every_error_we_send_carries_its_code_and_the_text_people_read(
    error: BaseException, code: WireCode, fields: dict[str, str]
) -> None:
    sent = wire_message(error)
    read = decode(sent)
    assert read is not None
    assert read.code is code
    assert dict(read.fields) == fields
    expected_text = str(error) if isinstance(error, RuthError) else "internal error: RuntimeError: not ours"
    assert read.message == expected_text


def test_every_error_class_has_its_own_code() -> None:
    classes = [InvalidInput, Unavailable, BreakerOpen, InferenceTimeout, StreamStoreUnavailable, Internal]
    assert len({c.wire for c in classes}) == len(classes)


def test_a_numeric_field_reads_back_as_a_number() -> None:
    read = decode(encode(WireCode.BREAKER_OPEN, "x", {"retry_after": "1.5"}))
    assert read is not None and read.number("retry_after") == 1.5 and read.number("absent") is None


@pytest.mark.parametrize(
    "text",
    [
        "Stub process 'tank_0_0' is not healthy.",  # Triton's own
        "Request for unknown model: 'nope' is not found",
        "[RUTH:NOT_A_CODE_WE_KNOW] from a newer server",
        "IMAGE: [RUTH:INVALID_INPUT] not at the start",
        "[RUTH:invalid_input] lower case",
        "",
    ],
)
def test_untagged_or_unknown_text_decodes_to_nothing(text: str) -> None:
    assert decode(text) is None


def test_a_message_that_quotes_another_tagged_message_keeps_only_the_first_code() -> None:
    inner = wire_message(Internal("boom"))
    read = decode(wire_message(Unavailable(f"pose_estimator failed: {inner}")))
    assert read is not None and read.code is WireCode.UNAVAILABLE
    assert read.message == f"pose_estimator failed: {inner}"


@pytest.mark.parametrize(("key", "value"), [("Retry", "1"), ("retry_after", "1 s"), ("retry_after", "a]b"), ("k", "")])
def test_fields_that_would_break_the_prefix_are_refused(key: str, value: str) -> None:
    with pytest.raises(ValueError, match="wire field"):
        encode(WireCode.INTERNAL, "x", {key: value})
