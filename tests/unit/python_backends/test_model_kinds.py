"""Every model kind through the one execute template of python_backends/base.py, in process: a vision model, a raw
model (the repository's pose_estimator) and a person model (the repository's fall_detection, calling the pose model
by BLS) get the same guards, the same metrics (request latency included) and the same error mapping."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from backend_support import (
    QUIET_RESULT,
    FakeRequest,
    bls_backend,
    initialize,
    make_runtime,
    repository_config,
)
from support import REPO_ROOT, load_model_module

from python_backends.base import InferContext
from python_backends.metrics import RecordingMetrics
from python_backends.raw import RawRuthModel, Tensors
from python_backends.runtime import Runtime
from python_backends.vision import RuthModel
from python_backends.wire import decode

WEIGHTS = REPO_ROOT / "weights"


def said(error: Any) -> tuple[str, str]:
    """The wire code and the text of an error response's message (python_backends/wire.py)."""
    decoded = decode(error.message())
    assert decoded is not None, error.message()
    return decoded.code.value, decoded.message


def strings(value: str, rows: int = 1) -> np.ndarray:
    return np.array([[value.encode()]] * rows, dtype=np.object_)


def vision_request(frame: np.ndarray, **extra: np.ndarray) -> FakeRequest:
    return FakeRequest(
        {
            "FRAME": frame[None],
            "STREAM_ID": strings(str(uuid.uuid4())),
            "TIMESTAMP": strings(datetime.now(timezone.utc).isoformat()),
            **extra,
        }
    )


class Sinks:
    """The metrics factory of the runtime: one recording sink per model name."""

    def __init__(self) -> None:
        self.by_model: dict[str, RecordingMetrics] = {}

    def __call__(self, model: str, version: str, instance: str) -> RecordingMetrics:
        return self.by_model.setdefault(model, RecordingMetrics())


@pytest.fixture
def sinks() -> Sinks:
    return Sinks()


@pytest.fixture
def runtime(tmp_path: Path, sinks: Sinks) -> Runtime:
    return make_runtime(tmp_path, weights_dir=WEIGHTS, metrics=sinks)


@pytest.fixture
def models(runtime: Runtime) -> Iterator[dict[str, Any]]:
    """The repository's pose_estimator and fall_detection, with BLS between them."""
    loaded: dict[str, Any] = {}
    with bls_backend(loaded):
        for name in ("pose_estimator", "fall_detection"):
            model = load_model_module(name).TritonPythonModel(runtime)
            loaded[name] = initialize(model, repository_config(name), name)
        yield loaded
        for model in loaded.values():
            model.finalize()


def test_a_raw_model_answers_each_request_with_its_tensors_or_its_own_typed_error(
    models: dict[str, Any], sinks: Sinks
) -> None:
    pose = models["pose_estimator"]
    frame = np.zeros((1, 128, 160, 3), np.uint8)
    good, missing, tiny = pose.execute(
        [FakeRequest({"FRAME": frame}), FakeRequest({}), FakeRequest({"FRAME": np.zeros((1, 8, 8, 3), np.uint8)})]
    )
    assert good.error is None
    assert good.output("POSES").shape[0] == 1 and good.output("COUNT").tolist() == [[0]]
    assert (missing.error.code, said(missing.error)) == (
        "INVALID_ARG",
        ("INVALID_INPUT", "FRAME: required input missing"),
    )
    assert tiny.error.code == "INVALID_ARG" and said(tiny.error)[1].startswith("FRAME: width 8 px")
    recorded = sinks.by_model["pose_estimator"]
    assert recorded.counters[("requests", "ok")] == 1 and recorded.counters[("requests", "invalid_arg")] == 2
    assert recorded.counters[("rejections", "FRAME")] == 2
    assert len(recorded.samples["request"]) == 3  # request latency, as vision models report it
    assert pose.breaker.state.value == "closed"  # the clients' mistakes spare the breaker


def test_a_person_model_judges_the_people_its_pose_model_finds_by_bls(models: dict[str, Any], sinks: Sinks) -> None:
    (response,) = models["fall_detection"].execute([vision_request(np.full((240, 320, 3), 90, np.uint8))])
    assert response.error is None, response.error.message()
    result = json.loads(response.output("RESULT")[0][0])
    assert result["metadata"]["pose_model"] == "pose_estimator"
    assert result["metadata"]["persons_detected"] == 0
    assert result["violation_detected"] is False
    for name in ("fall_detection", "pose_estimator"):  # the callee counted the BLS request as its own
        assert sinks.by_model[name].counters[("requests", "ok")] == 1
        assert len(sinks.by_model[name].samples["request"]) == 1


def test_a_pose_model_that_cannot_answer_is_the_person_models_unavailable(models: dict[str, Any], sinks: Sinks) -> None:
    fall = models["fall_detection"]
    fall.pose_model = "no_such_pose_model"
    (response,) = fall.execute([vision_request(np.full((240, 320, 3), 90, np.uint8))])
    assert response.error.code == "UNAVAILABLE"
    assert said(response.error)[0] == "UNAVAILABLE" and said(response.error)[1].startswith(
        "no_such_pose_model failed: "
    )
    assert sinks.by_model["fall_detection"].counters[("requests", "unavailable")] == 1


# ---- the same error mapping and breaker for every kind ---------------------------------------------------------
class Flaky(RawRuthModel):
    required_inputs = ("X",)
    output_names = ("Y",)

    def infer_tensors(self, inputs: Tensors) -> Tensors:
        if inputs["X"].sum() < 0:
            raise RuntimeError("negative")
        return {"Y": inputs["X"] * 2}


class FlakyVision(RuthModel):
    def infer(self, frame: np.ndarray, ctx: InferContext) -> dict[str, Any]:
        if frame.mean() < 1:
            raise RuntimeError("negative")
        return dict(QUIET_RESULT)


RAW_CONFIG = {
    "max_batch_size": 0,
    "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
    "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}],
    "parameters": {"ruth.breaker.failure_threshold": {"string_value": "2"}},
}


def kinds(runtime: Runtime) -> list[tuple[Any, FakeRequest, FakeRequest]]:
    vision_config = repository_config("tank_overflow_monitoring")
    vision_config["parameters"] = {"ruth.breaker.failure_threshold": {"string_value": "2"}}
    raw = initialize(Flaky(runtime), RAW_CONFIG, "flaky")
    vision = initialize(FlakyVision(runtime), vision_config, "flaky_vision")
    ok, bad = np.ones(1, np.float32), -np.ones(1, np.float32)
    return [
        (raw, FakeRequest({"X": ok}), FakeRequest({"X": bad})),
        (vision, vision_request(np.full((64, 64, 3), 9, np.uint8)), vision_request(np.zeros((64, 64, 3), np.uint8))),
    ]


def test_every_kind_maps_a_model_failure_to_internal_and_opens_its_breaker_the_same_way(
    runtime: Runtime, sinks: Sinks
) -> None:
    with bls_backend({}):
        for model, good, failing in kinds(runtime):
            first = model.execute([good])[0].error
            assert first is None, first.message()
            messages = [model.execute([failing])[0].error for _ in range(2)]
            assert [(e.code, said(e)) for e in messages] == [("INTERNAL", ("INTERNAL", "RuntimeError: negative"))] * 2
            (refused,) = model.execute([good])
            assert refused.error.code == "UNAVAILABLE" and "is OPEN" in refused.error.message()
            recorded = sinks.by_model[model.name]
            assert dict(recorded.counters) == {
                ("requests", "ok"): 1,
                ("requests", "internal"): 2,
                ("requests", "breaker_open"): 1,
                ("trips", ""): 1,
            }
            assert len(recorded.samples["request"]) == 4 and len(recorded.samples["inference"]) == 3
            model.finalize()
