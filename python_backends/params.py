"""Typed runtime parameters, parsed once at `initialize()` from config.pbtxt and the environment.

The spec in `config/models/` is rendered into config.pbtxt `parameters` (see docs/model-spec.md); the hot path
only reads attributes of the frozen objects built here. A bad value fails the load with the key named.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from python_backends.breaker import BreakerPolicy
from python_backends.errors import ModelLoadError
from python_backends.faults import FaultPlan
from python_backends.state import default_state_dir
from python_backends.streams import StreamStoreSpec
from python_backends.validation import Limits
from python_backends.weights import default_weights_dir

T = TypeVar("T")
D = TypeVar("D")
MODEL_PREFIX = "model."


def parameters_of(model_config: Mapping[str, Any]) -> dict[str, str]:
    """config.pbtxt `parameters` ({key: {string_value: v}}) as a flat str->str mapping."""
    raw = model_config.get("parameters") or {}
    return {key: str(value.get("string_value", "")) for key, value in raw.items() if isinstance(value, Mapping)}


def _get(raw: Mapping[str, str], key: str, convert: Callable[[str], T], default: D) -> T | D:
    if key not in raw or raw[key] == "":
        return default
    try:
        return convert(raw[key])
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"config.pbtxt parameter {key}={raw[key]!r} is invalid: {exc}") from exc


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


@dataclasses.dataclass(frozen=True)
class ModelParams:
    inference_timeout_s: float
    limits: Limits
    breaker: BreakerPolicy
    zombie_limit: int
    memory_estimate_mb: int
    state_idle_ttl_s: float
    state_max_streams: int
    weights: tuple[Mapping[str, str], ...]
    faults: FaultPlan
    model: Mapping[str, str]  # the model's own `model.<key>` parameters, prefix removed

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> ModelParams:
        try:  # a model may narrow the global limits, never widen them
            limits = Limits().for_model(
                min_width=_get(raw, "ruth.frame.min_width", int, None),
                min_height=_get(raw, "ruth.frame.min_height", int, None),
                max_width=_get(raw, "ruth.frame.max_width", int, None),
                max_height=_get(raw, "ruth.frame.max_height", int, None),
                max_timestamp_drift_s=_get(raw, "ruth.timestamp_max_drift_s", float, None),
            )
        except ValueError as exc:
            raise ModelLoadError(f"config.pbtxt frame limits are inconsistent: {exc}") from exc
        breaker = BreakerPolicy(
            failure_threshold=_get(raw, "ruth.breaker.failure_threshold", int, 5),
            cooldown_s=_get(raw, "ruth.breaker.cooldown_s", float, 30.0),
            max_cooldown_s=_get(raw, "ruth.breaker.max_cooldown_s", float, 600.0),
            half_open_max_trials=_get(raw, "ruth.breaker.half_open_max_trials", int, 1),
        )
        timeout_ms = _get(raw, "ruth.inference_timeout_ms", float, 5000.0)
        if timeout_ms <= 0:
            raise ModelLoadError("config.pbtxt parameter ruth.inference_timeout_ms must be > 0")
        try:
            faults = FaultPlan.from_params(raw)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
        weights: list[Mapping[str, str]] = _get(raw, "ruth.weights", json.loads, [])
        return cls(
            inference_timeout_s=timeout_ms / 1000.0,
            limits=limits,
            breaker=breaker,
            zombie_limit=_get(raw, "ruth.watchdog.zombie_limit", int, 4),
            memory_estimate_mb=_get(raw, "ruth.memory_estimate_mb", int, 256),
            state_idle_ttl_s=_get(raw, "ruth.state.idle_ttl_s", float, 300.0),
            state_max_streams=_get(raw, "ruth.state.max_streams", int, 10000),
            weights=tuple(weights),
            faults=faults,
            model={k[len(MODEL_PREFIX) :]: v for k, v in raw.items() if k.startswith(MODEL_PREFIX)},
        )


@dataclasses.dataclass(frozen=True)
class RuntimeEnv:
    """What `ruthctl serve` hands to the model processes through the environment (see ruthctl/settings.py)."""

    state_dir: Path
    weights_dir: Path
    enable_gpu: bool
    fallback_to_cpu: bool
    reserve_mb: int
    metrics_enabled: bool
    stream_store: StreamStoreSpec = dataclasses.field(default_factory=lambda: StreamStoreSpec(kind="sqlite"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeEnv:
        env = os.environ if environ is None else environ
        try:
            return cls(
                state_dir=default_state_dir(env).resolve(),
                weights_dir=default_weights_dir(env).resolve(),
                enable_gpu=_bool(env.get("ENABLE_GPU", "1")),
                fallback_to_cpu=_bool(env.get("GPU_FALLBACK_TO_CPU", "1")),
                reserve_mb=int(env.get("GPU_MEMORY_RESERVE_MB", "512")),
                metrics_enabled=_bool(env.get("METRICS_ENABLED", "1")),
                stream_store=StreamStoreSpec.from_env(env),
            )
        except ValueError as exc:
            raise ModelLoadError(f"invalid runtime environment: {exc}") from exc


def config_defaults(schema: type[BaseModel], params: Mapping[str, str]) -> BaseModel:
    """The spec's `model.<key>` parameters that are fields of the model's CONFIG schema, as one validated instance.

    They are the deployment's defaults; a request's CONFIG overrides them field by field. Values are JSON when they
    parse as JSON (numbers, lists, objects) and plain strings otherwise.
    """
    values: dict[str, Any] = {}
    for key, raw in params.items():
        if key in schema.model_fields:
            try:
                values[key] = json.loads(raw)
            except json.JSONDecodeError:
                values[key] = raw
    try:
        return schema.model_validate(values)
    except ValidationError as exc:
        raise ModelLoadError(f"spec parameters are not a valid {schema.__name__}: {exc}") from None
