"""Every request-validation rule, in accept and reject form."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel, Field, field_validator

from python_backends.errors import ErrorCode, InvalidInput
from python_backends.validation import (
    Limits,
    ValidatedRequest,
    check_frame_array,
    check_frame_size,
    parse_json_field,
    validate_config,
    validate_request,
    validate_stream_id,
    validate_timestamp,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
UUID = "123e4567-e89b-12d3-a456-426614174000"
LIMITS = Limits()


# ---------------------------------------------------------------------------------------------- Limits


def test_default_limits_are_the_documented_global_ones() -> None:
    assert (LIMITS.min_width, LIMITS.max_width, LIMITS.min_height, LIMITS.max_height) == (64, 7680, 64, 4320)
    assert LIMITS.max_encoded_bytes == 50 * 1024 * 1024
    assert LIMITS.max_pixels == 7680 * 4320
    assert (LIMITS.max_json_bytes, LIMITS.max_json_depth, LIMITS.max_string_len) == (64 * 1024, 5, 10_000)
    assert LIMITS.max_timestamp_drift_s == 86400.0


def test_limits_are_immutable() -> None:
    with pytest.raises(AttributeError):
        LIMITS.max_width = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_width": 0},
        {"max_json_depth": -1},
        {"min_width": 800, "max_width": 640},
        {"min_height": 500, "max_height": 400},
    ],
)
def test_inconsistent_limits_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"Limits"):
        Limits(**kwargs)


def test_for_model_narrows_the_global_limits() -> None:
    narrowed = Limits().for_model(min_width=320, min_height=240, max_width=4096, max_height=4096)
    assert (narrowed.min_width, narrowed.min_height) == (320, 240)
    assert (narrowed.max_width, narrowed.max_height) == (4096, 4096)
    assert narrowed.max_pixels == 4096 * 4096


def test_for_model_never_widens_a_limit() -> None:
    widened = Limits().for_model(min_width=1, max_width=100_000, max_json_depth=50, max_timestamp_drift_s=1e9)
    assert widened == Limits()


def test_for_model_without_opinions_keeps_the_limits() -> None:
    assert Limits().for_model() == Limits()


def test_for_model_on_an_instance_narrows_that_instance() -> None:
    strict = Limits(max_timestamp_drift_s=60.0, max_width=1920)
    narrowed = strict.for_model(min_width=320)
    assert narrowed.max_timestamp_drift_s == 60.0
    assert narrowed.max_width == 1920
    assert narrowed.min_width == 320


def test_for_model_rejects_a_model_whose_limits_do_not_overlap() -> None:
    with pytest.raises(ValueError, match=r"do not overlap"):
        Limits().for_model(min_width=10_000)


# ---------------------------------------------------------------------------------------------- STREAM_ID


@pytest.mark.parametrize("raw", [UUID, UUID.upper(), UUID.encode()])
def test_stream_id_accepts_a_uuid_and_returns_it_lower_case(raw: str | bytes) -> None:
    assert validate_stream_id(raw) == UUID


@pytest.mark.parametrize(
    "raw",
    ["", "camera-1", UUID.replace("-", ""), "{" + UUID + "}", UUID + " ", "urn:uuid:" + UUID, "g" + UUID[1:]],
)
def test_stream_id_rejects_anything_but_a_hyphenated_uuid(raw: str) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        validate_stream_id(raw)
    assert excinfo.value.field == "STREAM_ID"
    assert "UUID" in excinfo.value.message
    assert excinfo.value.code is ErrorCode.INVALID_ARG


def test_stream_id_error_does_not_echo_a_huge_value() -> None:
    with pytest.raises(InvalidInput) as excinfo:
        validate_stream_id("x" * 100_000)
    assert len(str(excinfo.value)) < 300


def test_stream_id_rejects_invalid_utf8() -> None:
    with pytest.raises(InvalidInput, match=r"STREAM_ID: not valid UTF-8"):
        validate_stream_id(b"\xff\xfe")


# ---------------------------------------------------------------------------------------------- TIMESTAMP


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-05-01T12:00:00Z", NOW),
        ("2024-05-01T12:00:00z", NOW),
        ("2024-05-01T14:00:00+02:00", NOW),
        ("2024-05-01T12:00:00", NOW),  # naive -> UTC
        ("2024-05-01 11:59:59.5", NOW - timedelta(seconds=0.5)),
        (b"2024-05-01T12:00:00Z", NOW),
    ],
)
def test_timestamp_accepts_iso8601_and_returns_an_aware_datetime(raw: str, expected: datetime) -> None:
    parsed = validate_timestamp(raw, now=NOW, max_drift_s=86400.0)
    assert parsed == expected
    assert parsed.tzinfo is not None


def test_timestamp_keeps_the_client_offset() -> None:
    parsed = validate_timestamp("2024-05-01T14:00:00+02:00", now=NOW, max_drift_s=60)
    assert parsed.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("raw", ["", "   ", "yesterday", "1714564800", "2024-13-01T00:00:00Z", "2024-05-01", "T" * 100])
def test_timestamp_rejects_what_is_not_an_iso8601_date_and_time(raw: str) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        validate_timestamp(raw, now=NOW, max_drift_s=86400.0)
    assert excinfo.value.field == "TIMESTAMP"


def test_timestamp_at_the_drift_limit_is_accepted() -> None:
    edge = (NOW - timedelta(seconds=86400)).isoformat()
    assert validate_timestamp(edge, now=NOW, max_drift_s=86400.0) == NOW - timedelta(days=1)


@pytest.mark.parametrize(("offset", "direction"), [(-86401, "behind"), (90000, "ahead of")])
def test_timestamp_beyond_the_drift_limit_names_the_drift_and_the_limit(offset: int, direction: str) -> None:
    raw = (NOW + timedelta(seconds=offset)).isoformat()
    with pytest.raises(InvalidInput) as excinfo:
        validate_timestamp(raw, now=NOW, max_drift_s=86400.0)
    message = excinfo.value.message
    assert f"{abs(offset)} s {direction} the server clock" in message
    assert "the limit is ±86400 s" in message


def test_timestamp_accepts_a_naive_now_as_utc() -> None:
    assert validate_timestamp("2024-05-01T12:00:00Z", now=NOW.replace(tzinfo=None), max_drift_s=1) == NOW


# ---------------------------------------------------------------------------------------------- JSON


def _nested(depth: int) -> dict[str, object]:
    """An object whose deepest value sits at `depth` (the top-level object's members are at depth 1)."""
    value: object = 1
    for _ in range(depth - 1):
        value = [value]
    return {"a": value}


def test_json_field_accepts_an_object_within_every_limit() -> None:
    doc = {"zones": [{"name": "dock", "points": [[0, 0], [10, 0], [10, 10]]}], "note": "x" * 10_000}
    assert parse_json_field(json.dumps(doc), "CONFIG", LIMITS) == doc
    assert parse_json_field(json.dumps(doc).encode(), "CONFIG", LIMITS) == doc


def test_json_field_geo_zones_sit_exactly_at_the_depth_limit() -> None:
    doc = {"zones": [{"points": [[1, 2], [3, 4], [5, 6]]}]}  # config→zones→zone→points→point→number
    assert parse_json_field(json.dumps(doc), "CONFIG", LIMITS) == doc


def test_json_field_accepts_depth_five_and_rejects_depth_six() -> None:
    assert parse_json_field(json.dumps(_nested(5)), "METADATA", LIMITS) == _nested(5)
    with pytest.raises(InvalidInput) as excinfo:
        parse_json_field(json.dumps(_nested(6)), "METADATA", LIMITS)
    assert excinfo.value.message.startswith("METADATA: JSON nesting is deeper than 5 levels at metadata.a.0.0.0.0")


def test_json_field_rejects_pathological_nesting_without_recursing() -> None:
    with pytest.raises(InvalidInput, match=r"deeper than 5 levels"):
        parse_json_field('{"a":' + "[" * 30_000 + "]" * 30_000 + "}", "METADATA", LIMITS)


def test_json_field_size_limit_is_inclusive_and_counts_utf8_bytes() -> None:
    padding = 64 * 1024 - len('{"k":""}')
    at_limit = '{"k":"' + "x" * padding + '"}'
    assert len(at_limit.encode()) == 64 * 1024
    limits = Limits(max_string_len=100_000)
    assert parse_json_field(at_limit, "METADATA", limits)["k"] == "x" * padding
    over = '{"k":"' + "é" * (padding // 2 + 1) + '"}'  # fewer chars than the limit, more bytes
    assert len(over) < 64 * 1024 < len(over.encode())
    with pytest.raises(InvalidInput) as excinfo:
        parse_json_field(over, "METADATA", limits)
    assert "the limit is 65536 bytes" in excinfo.value.message


def test_json_field_rejects_an_oversized_bytes_value() -> None:
    with pytest.raises(InvalidInput, match=r"METADATA: JSON is 70000 bytes; the limit is 65536 bytes"):
        parse_json_field(b" " * 70_000, "METADATA", LIMITS)


@pytest.mark.parametrize(
    ("text", "kind"), [("[1, 2]", "an array"), ('"s"', "a string"), ("3", "a number"), ("null", "null")]
)
def test_json_field_must_be_an_object(text: str, kind: str) -> None:
    with pytest.raises(InvalidInput, match=rf"CONFIG: must be a JSON object, got {kind}"):
        parse_json_field(text, "CONFIG", LIMITS)


@pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}', "{", "{'a': 1}", '{"a": 1} x'])
def test_json_field_rejects_invalid_json_including_nan(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"CONFIG: not valid JSON"):
        parse_json_field(text, "CONFIG", LIMITS)


def test_json_field_rejects_invalid_utf8() -> None:
    with pytest.raises(InvalidInput, match=r"METADATA: not valid UTF-8"):
        parse_json_field(b'{"a": "\xff"}', "METADATA", LIMITS)


def test_json_field_string_length_limit_applies_to_values_at_any_depth() -> None:
    ok = {"a": [{"b": "x" * 10_000}]}
    assert parse_json_field(json.dumps(ok), "METADATA", LIMITS) == ok
    with pytest.raises(InvalidInput) as excinfo:
        parse_json_field(json.dumps({"a": [{"b": "x" * 10_001}]}), "METADATA", LIMITS)
    assert excinfo.value.message == "METADATA: string at metadata.a.0.b is 10001 chars; the limit is 10000 chars"


def test_json_field_string_length_limit_applies_to_keys() -> None:
    with pytest.raises(InvalidInput, match=r"key in metadata is 10001 chars"):
        parse_json_field(json.dumps({"k" * 10_001: 1}), "METADATA", LIMITS)


# ---------------------------------------------------------------------------------------------- frames


@pytest.mark.parametrize(("width", "height"), [(64, 64), (7680, 4320), (1920, 1080)])
def test_frame_size_accepts_the_inclusive_bounds(width: int, height: int) -> None:
    check_frame_size(width, height, LIMITS)


@pytest.mark.parametrize(
    ("width", "height", "fragment"),
    [
        (63, 64, "width 63 px is outside the allowed 64..7680 px"),
        (7681, 64, "width 7681 px is outside the allowed 64..7680 px"),
        (64, 63, "height 63 px is outside the allowed 64..4320 px"),
        (64, 4321, "height 4321 px is outside the allowed 64..4320 px"),
    ],
)
def test_frame_size_rejects_out_of_range_dimensions(width: int, height: int, fragment: str) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        check_frame_size(width, height, LIMITS, field="FRAME")
    assert excinfo.value.field == "FRAME"
    assert excinfo.value.message == f"FRAME: {fragment}"


def test_frame_size_rejects_too_many_pixels() -> None:
    limits = Limits(max_pixels=100 * 100)
    check_frame_size(100, 100, limits)
    with pytest.raises(InvalidInput, match=r"IMAGE: 101x100 is 10100 pixels; the limit is 10000 pixels"):
        check_frame_size(101, 100, limits)


def test_frame_size_applies_a_models_narrowed_limits() -> None:
    model = Limits().for_model(min_width=320, min_height=240)
    check_frame_size(320, 240, model)
    with pytest.raises(InvalidInput, match=r"width 319 px is outside the allowed 320..7680 px"):
        check_frame_size(319, 240, model)


def test_frame_array_accepts_bgr_uint8_and_returns_it_contiguous() -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    assert check_frame_array(frame, LIMITS) is frame
    strided = np.zeros((100, 400, 3), np.uint8)[:, ::2]
    out = check_frame_array(strided, LIMITS)
    assert out.flags.c_contiguous
    assert out.shape == (100, 200, 3)


def test_frame_array_drops_a_leading_batch_dimension_of_one() -> None:
    out = check_frame_array(np.ones((1, 64, 80, 3), np.uint8), LIMITS)
    assert out.shape == (64, 80, 3)


@pytest.mark.parametrize(
    ("frame", "got"),
    [
        (np.zeros((100, 100, 3), np.float32), "got float32 of shape (100, 100, 3)"),
        (np.zeros((100, 100), np.uint8), "got uint8 of shape (100, 100)"),
        (np.zeros((100, 100, 4), np.uint8), "got uint8 of shape (100, 100, 4)"),
        (np.zeros((2, 100, 100, 3), np.uint8), "got uint8 of shape (2, 100, 100, 3)"),
        (np.zeros((0,), np.uint8), "got uint8 of shape (0,)"),
    ],
)
def test_frame_array_rejects_wrong_dtype_or_shape_naming_expected_and_got(frame: np.ndarray, got: str) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        check_frame_array(frame, LIMITS)
    assert excinfo.value.field == "FRAME"
    assert excinfo.value.message == f"FRAME: expected uint8 BGR pixels of shape (H, W, 3), {got}"


def test_frame_array_rejects_a_non_array() -> None:
    with pytest.raises(InvalidInput, match=r"FRAME: expected a uint8 array"):
        check_frame_array([[1, 2, 3]], LIMITS)  # type: ignore[arg-type]


def test_frame_array_rejects_out_of_range_dimensions() -> None:
    with pytest.raises(InvalidInput, match=r"FRAME: height 32 px is outside"):
        check_frame_array(np.zeros((32, 100, 3), np.uint8), LIMITS)


# ---------------------------------------------------------------------------------------------- pydantic layer


class _Zone(BaseModel):
    points: list[tuple[float, float]]

    @field_validator("points")
    @classmethod
    def _polygon(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if len(value) < 3:
            raise ValueError("at least 3 points")
        return value


class _GeoConfig(BaseModel):
    zones: list[_Zone] = Field(default_factory=list)
    conf_threshold: float = Field(default=0.5, ge=0, le=1)


def test_validate_config_without_schema_returns_the_dict() -> None:
    assert validate_config({"a": 1}, None) == {"a": 1}


def test_validate_config_returns_the_schema_instance() -> None:
    config = validate_config({"zones": [{"points": [[0, 0], [1, 0], [1, 1]]}]}, _GeoConfig)
    assert isinstance(config, _GeoConfig)
    assert config.zones[0].points[2] == (1.0, 1.0)


def test_validate_config_reports_the_first_error_with_its_path() -> None:
    with pytest.raises(InvalidInput) as excinfo:
        validate_config({"zones": [{"points": [[0, 0]]}]}, _GeoConfig)
    assert str(excinfo.value) == "CONFIG: zones.0.points: at least 3 points"


def test_validate_config_counts_further_errors() -> None:
    with pytest.raises(InvalidInput) as excinfo:
        validate_config({"zones": [{"points": []}], "conf_threshold": 3}, _GeoConfig)
    assert excinfo.value.message.startswith("CONFIG: zones.0.points: at least 3 points")
    assert excinfo.value.message.endswith("(and 1 more)")


def test_validate_config_uses_pydantics_message_for_builtin_constraints() -> None:
    with pytest.raises(InvalidInput, match=r"CONFIG: conf_threshold: Input should be less than or equal to 1"):
        validate_config({"conf_threshold": 2}, _GeoConfig)


# ---------------------------------------------------------------------------------------------- validate_request


def _jpeg(width: int = 96, height: int = 80) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (0, 0, 255)).save(buffer, "JPEG")
    return buffer.getvalue()


def _request(**overrides: object) -> ValidatedRequest:
    kwargs: dict[str, object] = {
        "image": _jpeg(),
        "frame": None,
        "stream_id": UUID,
        "timestamp": "2024-05-01T12:00:00Z",
        "config": None,
        "metadata": None,
        "limits": LIMITS,
        "now": NOW,
    }
    kwargs.update(overrides)
    return validate_request(**kwargs)  # type: ignore[arg-type]


def test_request_with_an_image_is_decoded_to_bgr() -> None:
    image = _jpeg()
    request = _request(image=image, config='{"alert_threshold": 80}', metadata=b'{"session": "s1"}')
    assert request.source == "IMAGE"
    assert request.encoded_bytes == len(image)
    assert request.frame.shape == (80, 96, 3)
    assert request.frame[0, 0, 0] > 200  # blue is BGR channel 0
    assert request.stream_id == UUID
    assert request.timestamp == NOW
    assert request.config == {"alert_threshold": 80}
    assert request.metadata == {"session": "s1"}


def test_request_with_a_frame_is_checked_not_decoded() -> None:
    frame = np.zeros((1, 64, 64, 3), np.uint8)
    request = _request(image=None, frame=frame)
    assert request.source == "FRAME"
    assert request.frame.shape == (64, 64, 3)
    assert request.encoded_bytes == 64 * 64 * 3


@pytest.mark.parametrize("blank", [None, "", b"", "  "])
def test_request_absent_or_blank_optional_json_is_an_empty_object(blank: str | bytes | None) -> None:
    request = _request(config=blank, metadata=blank)
    assert request.config == {}
    assert request.metadata == {}


def test_request_config_goes_through_the_models_schema() -> None:
    config = json.dumps({"zones": [{"points": [[0, 0], [1, 0], [1, 1]]}]})
    request = _request(config=config, config_schema=_GeoConfig)
    assert isinstance(request.config, _GeoConfig)
    assert request.config.model_dump()["zones"][0]["points"][1] == (1.0, 0.0)
    with pytest.raises(InvalidInput, match=r"^CONFIG: zones\.0\.points: at least 3 points$"):
        _request(config='{"zones": [{"points": [[0, 0]]}]}', config_schema=_GeoConfig)


@pytest.mark.parametrize(("image", "frame"), [(None, None), (b"x", np.zeros((64, 64, 3), np.uint8))])
def test_request_needs_exactly_one_of_image_or_frame(image: bytes | None, frame: np.ndarray | None) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        _request(image=image, frame=frame)
    assert str(excinfo.value) == (
        "IMAGE|FRAME: exactly one of IMAGE (encoded JPEG/PNG/WebP) or FRAME (raw BGR uint8 HxWx3) is required"
    )


@pytest.mark.parametrize(("name", "field"), [("stream_id", "STREAM_ID"), ("timestamp", "TIMESTAMP")])
def test_request_requires_stream_id_and_timestamp(name: str, field: str) -> None:
    with pytest.raises(InvalidInput, match=rf"^{field}: required"):
        _request(**{name: None})


def test_request_validates_cheap_fields_before_decoding_the_image() -> None:
    # A corrupt image and a bad STREAM_ID: the STREAM_ID error wins, so no decode was attempted first.
    with pytest.raises(InvalidInput, match=r"^STREAM_ID"):
        _request(image=b"\xff\xd8\xffgarbage", stream_id="not-a-uuid")
    with pytest.raises(InvalidInput, match=r"^METADATA"):
        _request(image=b"\xff\xd8\xffgarbage", metadata="[]")
    with pytest.raises(InvalidInput, match=r"^CONFIG"):
        _request(image=b"GIF89a", config='{"zones": [{"points": []}]}', config_schema=_GeoConfig)


def test_request_reports_a_bad_image_as_image() -> None:
    with pytest.raises(InvalidInput, match=r"^IMAGE: unsupported format"):
        _request(image=b"GIF89a" + b"\x00" * 100)


def test_request_applies_the_timestamp_drift_of_its_limits() -> None:
    with pytest.raises(InvalidInput, match=r"the limit is ±60 s"):
        _request(timestamp="2024-05-01T12:02:00Z", limits=Limits(max_timestamp_drift_s=60))


def test_request_applies_frame_limits_to_frames() -> None:
    with pytest.raises(InvalidInput, match=r"^FRAME: width 64 px is outside the allowed 320..7680 px"):
        _request(image=None, frame=np.zeros((240, 64, 3), np.uint8), limits=Limits().for_model(min_width=320))


# ---- strict CONFIG, frame geometry, request ids (docs/security.md) -------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"capacity_liters": "1000"},
        {"capacity_liters": True},
        {"smoothing_window": 5.0},
        {"tank_corners": [[0, 0], [1e300, 0], [1e300, 1e300], [0, 1e300]]},
    ],
)
def test_config_types_are_strict_and_coordinates_bounded(config: dict[str, object]) -> None:
    from ruth_vision.tank_level import TankConfig

    with pytest.raises(InvalidInput, match="CONFIG"):
        validate_config(config, TankConfig)


def test_json_numbers_lists_and_booleans_still_validate() -> None:
    from ruth_vision.tank_fill import ChaneConfig

    cfg = validate_config({"roi_circle": {"cx": 10, "cy": 2.5, "r": 40}, "auto_calibrate": True}, ChaneConfig)
    assert isinstance(cfg, ChaneConfig) and cfg.auto_calibrate is True and cfg.roi_circle is not None
    with pytest.raises(InvalidInput, match="auto_calibrate"):
        validate_config({"auto_calibrate": "yes"}, ChaneConfig)


def test_roi_circle_is_checked_against_the_frame() -> None:
    from python_backends.validation import check_config_against_frame
    from ruth_vision.tank_fill import ChaneConfig

    inside = validate_config({"roi_circle": {"cx": 320, "cy": 240, "r": 800}}, ChaneConfig)
    check_config_against_frame(inside, 640, 480)
    for circle in ({"cx": 320, "cy": 240, "r": 801}, {"cx": 641, "cy": 240, "r": 40}):
        with pytest.raises(InvalidInput, match="roi_circle"):
            check_config_against_frame(validate_config({"roi_circle": circle}, ChaneConfig), 640, 480)


def test_request_ids_are_bounded_printable_ascii() -> None:
    from python_backends.validation import validate_request_id

    assert validate_request_id("cam-7/frame-42") == "cam-7/frame-42"
    for bad in ("x" * 129, "has space", "tab\there", "é"):
        with pytest.raises(InvalidInput, match=r"^id: "):
            validate_request_id(bad)


def test_geo_zones_validate_strictly_through_the_legacy_before_validator() -> None:
    from ruth_vision.zones import GeoConfig

    cfg = validate_config({"zones": [{"id": "dock", "points": [[1, 2], [3, 4], [5, 6]]}]}, GeoConfig)
    assert isinstance(cfg, GeoConfig) and cfg.zones[0].points == [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)]
    legacy = validate_config({"geofence_points": [[1, 2], [3, 4], [5, 6]]}, GeoConfig)
    assert isinstance(legacy, GeoConfig) and legacy.zones[0].id == "zone_1"
    for bad in ({"zones": [{"id": "d", "points": [["1", 2], [3, 4], [5, 6]]}]}, {"min_dwell_s": "2"}):
        with pytest.raises(InvalidInput, match="CONFIG"):
            validate_config(bad, GeoConfig)
