"""The wire contract: tensor names, the RESULT schema and result encoding."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from python_backends import contract
from python_backends.contract import InferenceResult, Severity, encode_result, result_json_schema
from python_backends.errors import ErrorCode, Internal

LIBRARY_METADATA = {
    "model_name": "tank_overflow_monitoring",
    "model_version": "1",
    "inference_time_ms": 12.5,
    "stream_id": "123e4567-e89b-12d3-a456-426614174000",
    "timestamp": "2024-05-01T12:00:00+00:00",
    "device": "cpu",
}


def _payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "violation_detected": True,
        "violation_type": "tank_overflow_warning",
        "severity": "high",
        "confidence": 0.8,
        "detections": [{"bbox": [10, 20, 110, 220], "surface_y": 40, "confidence": 0.8}],
        "level_percent": 91.25,
    }
    payload.update(overrides)
    return payload


def _decode(data: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(data)
    return decoded


@pytest.mark.parametrize("name", ["IMAGE", "FRAME", "STREAM_ID", "TIMESTAMP", "CONFIG", "METADATA", "RESULT"])
def test_tensor_name_constants_equal_their_names(name: str) -> None:
    assert getattr(contract, name) == name


def test_severity_values_and_order() -> None:
    assert [s.value for s in Severity] == ["low", "medium", "high", "critical"]
    assert Severity("critical").rank > Severity.HIGH.rank > Severity.MEDIUM.rank > Severity.LOW.rank
    assert Severity.HIGH == "high"


def test_encode_result_returns_compact_utf8_json_with_the_models_extra_fields() -> None:
    data = encode_result(_payload(), LIBRARY_METADATA)
    assert isinstance(data, bytes)
    assert b" " not in data.replace(b"tank_overflow_warning", b"")  # compact separators
    doc = _decode(data)
    assert doc["violation_detected"] is True
    assert doc["violation_type"] == "tank_overflow_warning"
    assert doc["severity"] == "high"
    assert doc["confidence"] == 0.8
    assert doc["detections"] == [{"bbox": [10, 20, 110, 220], "surface_y": 40, "confidence": 0.8}]
    assert doc["level_percent"] == 91.25
    assert doc["metadata"] == LIBRARY_METADATA


def test_encode_result_keeps_the_models_metadata_but_the_library_wins_on_conflicts() -> None:
    payload = _payload(metadata={"status": "WARNING", "model_name": "tank_overflow_monitor", "inference_time_ms": -1})
    doc = _decode(encode_result(payload, LIBRARY_METADATA))
    assert doc["metadata"]["status"] == "WARNING"
    assert doc["metadata"]["model_name"] == "tank_overflow_monitoring"
    assert doc["metadata"]["inference_time_ms"] == 12.5


def test_encode_result_does_not_mutate_the_models_payload() -> None:
    payload = _payload(metadata={"status": "ok"})
    encode_result(payload, LIBRARY_METADATA)
    assert payload["metadata"] == {"status": "ok"}


def test_encode_result_accepts_numpy_values_from_models() -> None:
    payload = _payload(
        violation_detected=np.bool_(True),
        confidence=np.float32(0.75),
        detections=[{"bbox": np.array([1, 2, 3, 4], dtype=np.int64), "score": np.float32(0.5), "points": (1, 2)}],
        level_percent=np.float64(50.0),
    )
    doc = _decode(encode_result(payload, LIBRARY_METADATA))
    assert doc["violation_detected"] is True
    assert doc["confidence"] == 0.75
    assert doc["detections"] == [{"bbox": [1, 2, 3, 4], "score": 0.5, "points": [1, 2]}]
    assert doc["level_percent"] == 50.0


def test_no_violation_needs_no_violation_type() -> None:
    doc = _decode(
        encode_result(_payload(violation_detected=False, violation_type=None, severity="low"), LIBRARY_METADATA)
    )
    assert doc["violation_detected"] is False
    assert doc["violation_type"] is None


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"violation_type": None}, "violation_detected is true but violation_type is empty"),
        ({"violation_type": ""}, "violation_detected is true but violation_type is empty"),
        ({"severity": "urgent"}, "severity: "),
        ({"confidence": 1.01}, "confidence: "),
        ({"confidence": -0.1}, "confidence: "),
        ({"confidence": float("nan")}, "confidence: "),
        ({"detections": [1, 2]}, "detections.0: "),
        ({"detections": None}, "detections: "),
        ({"violation_detected": None}, "violation_detected: "),
    ],
)
def test_a_result_that_breaks_the_contract_is_an_internal_error(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(Internal) as excinfo:
        encode_result(_payload(**overrides), LIBRARY_METADATA)
    assert excinfo.value.code is ErrorCode.INTERNAL
    assert excinfo.value.message.startswith("model returned a result that breaks the wire contract: ")
    assert fragment in excinfo.value.message


@pytest.mark.parametrize("missing", ["violation_detected", "violation_type", "severity", "confidence", "detections"])
def test_every_required_field_is_required(missing: str) -> None:
    payload = _payload()
    del payload[missing]
    with pytest.raises(Internal, match=rf"{missing}: Field required"):
        encode_result(payload, LIBRARY_METADATA)


@pytest.mark.parametrize("missing", list(LIBRARY_METADATA))
def test_every_library_metadata_field_is_required(missing: str) -> None:
    metadata = {k: v for k, v in LIBRARY_METADATA.items() if k != missing}
    with pytest.raises(Internal, match=rf"metadata.{missing}: Field required"):
        encode_result(_payload(), metadata)


def test_negative_inference_time_is_rejected() -> None:
    with pytest.raises(Internal, match=r"metadata.inference_time_ms"):
        encode_result(_payload(), {**LIBRARY_METADATA, "inference_time_ms": -0.1})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_infinity_anywhere_is_rejected(bad: float) -> None:
    with pytest.raises(Internal, match=r"not JSON"):
        encode_result(_payload(level_percent=bad), LIBRARY_METADATA)
    with pytest.raises(Internal, match=r"not JSON"):
        encode_result(_payload(detections=[{"score": bad}]), LIBRARY_METADATA)


def test_unserialisable_values_are_rejected() -> None:
    with pytest.raises(Internal, match=r"object is not JSON serialisable"):
        encode_result(_payload(extra=object()), LIBRARY_METADATA)


@pytest.mark.parametrize("payload", [None, [1, 2], "result"])
def test_a_payload_that_is_not_a_mapping_is_rejected(payload: Any) -> None:
    with pytest.raises(Internal, match=r"expected a mapping"):
        encode_result(payload, LIBRARY_METADATA)


def test_model_metadata_that_is_not_an_object_is_rejected() -> None:
    with pytest.raises(Internal, match=r"metadata: expected an object"):
        encode_result(_payload(metadata=["x"]), LIBRARY_METADATA)


def test_encoded_result_round_trips_through_the_schema() -> None:
    doc = _decode(encode_result(_payload(), LIBRARY_METADATA))
    result = InferenceResult.model_validate(doc)
    assert result.severity is Severity.HIGH
    assert result.metadata.device == "cpu"
    assert result.model_extra == {"level_percent": 91.25}


def test_result_json_schema_lists_the_required_fields() -> None:
    schema = result_json_schema()
    assert set(schema["required"]) == {
        "violation_detected",
        "violation_type",
        "severity",
        "confidence",
        "detections",
        "metadata",
    }
    assert schema["additionalProperties"] is True
    assert json.dumps(schema)  # plain JSON, usable by docs and clients


def test_encoding_a_large_detection_list_stays_cheap() -> None:
    detections = [{"bbox": [i, i, i + 10, i + 10], "confidence": 0.5, "label": "person"} for i in range(5000)]
    doc = _decode(encode_result(_payload(detections=detections), LIBRARY_METADATA))
    assert len(doc["detections"]) == 5000
    assert doc["detections"][4999]["bbox"] == [4999, 4999, 5009, 5009]
