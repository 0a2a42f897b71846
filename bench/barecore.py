"""A repository model's own code with none of the hardening library around it: the "bare" baseline.

The model file's `load()` and `infer()` run exactly as they do under `RuthModel`, but the request path is only
what the algorithm needs: `cv2.imdecode` of the JPEG, the model's `infer`, `json.dumps` of its result. There is
no validation, no safe decoder, no circuit breaker, no watchdog, no metrics, no result schema, and per-stream
state lives in a plain dict of the process (so, unlike the hardened model, instances don't share it). The same
class serves the generated bare Triton models (bench/bare.py) and the in-process measurement (bench/inprocess.py),
so "bare served" and "in process" run identical code.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

StateFn = Callable[[dict[str, Any] | None], dict[str, Any]]


def load_model_module(model_py: Path) -> Any:
    """A repository model file, imported under a private module name."""
    spec = importlib.util.spec_from_file_location(f"ruth_bench_real_{model_py.parent.parent.name}", model_py)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {model_py}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_model_class(model_py: Path) -> type:
    """The `TritonPythonModel` class of a repository model file."""
    cls: type = load_model_module(model_py).TritonPythonModel
    return cls


def _plain(value: Any) -> Any:
    """json.dumps fallback for numpy scalars/arrays and datetimes a model may return."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class BareModel:
    """Load a vision model (a `RuthModel` subclass) and call its algorithm directly.

    Person models reach `pose_estimator` through BLS, which exists only inside Triton: their bare twin in Triton
    still calls the (hardened) pose model. In process (`local_pose=True`) the BLS call is replaced by the same pose
    network run directly in this process (LiteRT, the spec's engine parameters), so the in-process figure is the
    whole algorithm: decode, pose network, judgement.
    """

    def __init__(
        self, model_py: Path, model_config: Mapping[str, Any], *, instance: str = "bare_0", local_pose: bool = False
    ) -> None:
        from python_backends.base import InferContext, ModelParams
        from python_backends.gpu import Allocation
        from python_backends.metrics import NullMetrics
        from python_backends.params import config_defaults, parameters_of
        from python_backends.runtime import Runtime

        cls = load_model_class(model_py)
        if not hasattr(cls, "infer_batch"):
            raise TypeError(f"{model_py}: not a vision-contract model (no infer_batch)")
        model: Any = object.__new__(cls)  # the model's own __init__/initialize are the library's: skipped on purpose
        model.name = str(model_config.get("name", model_py.parent.parent.name))
        model.version = "1"
        model.instance = instance
        model.model_config = dict(model_config)
        model.params = ModelParams.parse(parameters_of(model_config))
        model.runtime = Runtime.from_process()  # this process is the composition root here
        model.metrics = NullMetrics()
        model.device = Allocation(
            device="cpu", placement="cpu", device_index=None, reserved_bytes=0, reason="bare", owner=None
        )
        model.streams = None
        model.clock = model.runtime.clock
        model.load(model.device)
        if local_pose and hasattr(model, "pose_model"):
            model.call_model = local_pose_call(model_py.parent.parent.parent / "pose_estimator" / "1" / "model.py")
        self.model = model
        schema = getattr(cls, "config_schema", None)
        # the spec's `model.*` defaults, as RuthModel gives a request without CONFIG
        self.config: Any = config_defaults(schema, model.params.model) if schema is not None else {}
        self.states: dict[str, dict[str, Any]] = {}
        self._context = InferContext

    def _update_state(self, stream_id: str, _config_key: str, fn: StateFn) -> dict[str, Any]:
        state = fn(self.states.get(stream_id))
        self.states[stream_id] = state
        return state

    def infer_frame(self, frame: np.ndarray, stream_id: str, timestamp: datetime) -> bytes:
        ctx = self._context(
            stream_id=stream_id,
            timestamp=timestamp,
            config=self.config,
            metadata={},
            params=self.model.params.model,
            device=self.model.device,
            request_id="",
            _update_state=self._update_state,
        )
        (result,) = self.model.infer_batch([frame], [ctx])  # the model's own batch hook (person models override it)
        if isinstance(result, BaseException):
            raise result
        return json.dumps(result, default=_plain).encode()

    def infer_image(self, data: bytes, stream_id: str, timestamp: datetime) -> bytes:
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if frame is None:
            raise ValueError("undecodable image")
        return self.infer_frame(frame, stream_id, timestamp)


def local_pose_call(pose_model_py: Path) -> Callable[..., dict[str, np.ndarray]]:
    """A stand-in for the BLS call to `pose_estimator`: its network, built from its own spec the way its model file
    builds it (the same engine keys, the person detector when the profile has one), run in this process. Without
    the same passes the in-process figure would measure a cheaper pipeline than the server runs."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from python_backends.base import ModelParams
    from python_backends.params import parameters_of
    from python_backends.weights import default_weights_dir
    from ruth_vision.pose import PoseEngineConfig, build_engine, pack_pose_outputs

    engine_keys: tuple[str, ...] = load_model_module(pose_model_py).ENGINE_KEYS
    text = (pose_model_py.parent.parent / "config.pbtxt").read_text()
    config = json_format.MessageToDict(
        text_format.Parse(text, model_config_pb2.ModelConfig()), preserving_proto_field_name=True
    )
    params = ModelParams.parse(parameters_of(config)).model
    detector = params.get("person_detector") or None
    engine = build_engine(
        PoseEngineConfig.model_validate(
            {
                "engine": "litert",
                "weights": default_weights_dir() / params["weights"],
                "person_detector": default_weights_dir() / detector if detector else None,
                **{k: params[k] for k in engine_keys if k in params},
            }
        ),
        "cpu",
    )

    def call(name: str, inputs: Mapping[str, np.ndarray], outputs: Any, timeout_s: float | None = None) -> Any:
        return pack_pose_outputs([engine.infer(frame) for frame in inputs["FRAME"]])

    return call
