"""Driving models in process, without Triton: a stand-in for triton_python_backend_utils that records what the
execute template hands back, and a `Runtime` injected into the model instead of environment variables.

The same behaviour through the real server is in tests/integration/ (test_hardening.py and the model tests).
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from python_backends import triton
from python_backends.gpu_probe import DeviceProbe
from python_backends.metrics import MetricsSink, NullMetrics
from python_backends.runtime import Runtime, RuntimeSettings


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class FakeError:
    INVALID_ARG, UNAVAILABLE, INTERNAL, NOT_FOUND, UNSUPPORTED = "INVALID_ARG", "UNAVAILABLE", "INTERNAL", "NF", "UNS"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self._message, self.code = message, code

    def message(self) -> str:
        return self._message


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor], error: FakeError | None = None) -> None:
        self.outputs, self.error = output_tensors, error

    def output(self, name: str) -> np.ndarray:
        return next(t.as_numpy() for t in self.outputs if t.name() == name)


class FakeRequest:
    def __init__(self, tensors: Mapping[str, np.ndarray]) -> None:
        self.tensors = {k: FakeTensor(k, v) for k, v in tensors.items()}

    def inputs(self) -> list[FakeTensor]:
        return list(self.tensors.values())

    def request_id(self) -> str:
        return ""


#: a RESULT with nothing to report, as a vision model's `infer` returns it (extend it with the model's own fields)
QUIET_RESULT = {
    "violation_detected": False,
    "violation_type": None,
    "severity": "low",
    "confidence": 1.0,
    "detections": [],
}


def _input(request: FakeRequest, name: str) -> FakeTensor | None:
    return request.tensors.get(name)


FAKE_PB = types.SimpleNamespace(
    Tensor=FakeTensor,
    TritonError=FakeError,
    InferenceResponse=FakeResponse,
    get_input_tensor_by_name=_input,
)


@contextmanager
def fake_backend() -> Iterator[types.SimpleNamespace]:
    """`triton.pb()` is the stand-in while the block runs."""
    triton.use_backend_module(FAKE_PB)
    try:
        yield FAKE_PB
    finally:
        triton.use_backend_module(None)


def make_runtime(
    root: Path,
    *,
    weights_dir: Path | None = None,
    enable_gpu: bool = False,
    probe: Callable[[], DeviceProbe] | None = None,
    metrics: Callable[[str, str, str], MetricsSink] | None = None,
    clock: Callable[[], float] | None = None,
) -> Runtime:
    """A model process's services under `root`: state in `root/state`, no GPU unless asked, metrics kept nowhere."""
    settings = RuntimeSettings(
        state_dir=root / "state", weights_dir=weights_dir or root / "weights", enable_gpu=enable_gpu
    )
    return Runtime.from_settings(
        settings,
        probe=probe,
        metrics=metrics or (lambda *_: NullMetrics()),
        **({"clock": clock} if clock is not None else {}),
    )


def initialize(model: Any, config: Mapping[str, Any], name: str, *, instance: str | None = None) -> Any:
    """Triton's `initialize` call for `model` with `config` (a ModelConfig as JSON-ready dict)."""
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_name": name,
            "model_version": "1",
            "model_instance_name": instance or f"{name}_0_0",
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
        }
    )
    return model


class _BlsResponse:
    """What `pb.InferenceRequest.exec()` returns: the callee's response behind the BLS accessors."""

    def __init__(self, response: FakeResponse) -> None:
        self._response = response

    def has_error(self) -> bool:
        return self._response.error is not None

    def error(self) -> FakeError | None:
        return self._response.error

    def tensor(self, name: str) -> FakeTensor:
        return next(t for t in self._response.outputs if t.name() == name)


@contextmanager
def bls_backend(models: Mapping[str, Any]) -> Iterator[types.SimpleNamespace]:
    """The stand-in plus BLS (`pb.InferenceRequest(...).exec()`) between models of this process, by name: each call
    runs the callee's own `execute()`, so its guards, metrics and errors apply as in Triton."""

    class InferenceRequest:
        def __init__(
            self, model_name: str, inputs: list[FakeTensor], requested_output_names: list[str], timeout: int = 0
        ) -> None:
            self.model_name, self.inputs, self.outputs = model_name, inputs, requested_output_names

        def exec(self) -> _BlsResponse:
            callee = models.get(self.model_name)
            if callee is None:
                error = FakeError(f"Failed for execute the inference request. Model '{self.model_name}' is not ready.")
                return _BlsResponse(FakeResponse([], error))
            (response,) = callee.execute([FakeRequest({t.name(): t.as_numpy() for t in self.inputs})])
            return _BlsResponse(response)

    pb = types.SimpleNamespace(
        **vars(FAKE_PB),
        InferenceRequest=InferenceRequest,
        get_output_tensor_by_name=lambda response, name: response.tensor(name),
    )
    triton.use_backend_module(pb)
    try:
        yield pb
    finally:
        triton.use_backend_module(None)


def repository_config(name: str) -> dict[str, Any]:
    """A repository model's generated config.pbtxt as the JSON Triton hands to `initialize`."""
    from support import MODEL_REPOSITORY

    from ruthctl.render import config_to_json, parse_pbtxt

    return dict(json.loads(config_to_json(parse_pbtxt((MODEL_REPOSITORY / name / "config.pbtxt").read_text()))))
