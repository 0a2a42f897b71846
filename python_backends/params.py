"""`RuntimeParams`: every `ruth.*` parameter of config.pbtxt, its type, its bounds and its default, defined once.

Both ends of the string protocol use this one definition: `ruthctl generate` builds a `RuntimeParams` from a spec
and renders it with `to_parameters()` (ruthctl/render.py), and a model's `initialize()` parses the rendered strings
back with `RuntimeParams.from_parameters()`. The key of a field is `ruth.` + its path (`ruth.breaker.cooldown_s`);
values are JSON texts (`30`, `0.5`, `[{...}]`). Validation is strict (a number must be a number) and an unknown or
misspelt `ruth.*` key fails the load with the key named, so a typo can't fall back to a default unnoticed.
The defaults other modules use (breaker policy, watchdog, stream store bounds, request limits) are `DEFAULTS`.

A model's own parameters (`model.<key>`, see docs/model-spec.md) are not ours: they are handed to the model as
plain strings (`ModelParams.model` in python_backends/base.py).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from python_backends.errors import ModelLoadError, first_error
from python_backends.weights import WeightPin

__all__ = [
    "DEFAULTS",
    "MODEL_PREFIX",
    "PREFIX",
    "BreakerParams",
    "FaultPlan",
    "FrameParams",
    "RuntimeParams",
    "StateParams",
    "TimeoutMs",
    "WatchdogParams",
    "WeightPin",
    "config_defaults",
    "parameter_text",
    "parameters_of",
]

PREFIX = "ruth."
MODEL_PREFIX = "model."

#: the per-inference deadline in milliseconds (also the bound a spec's `limits.inference_timeout_ms` obeys)
TimeoutMs = Annotated[int, Field(ge=1, le=600_000)]


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid", allow_inf_nan=False)


class FrameParams(_Params):
    """`ruth.frame.*`: the frame sizes a model accepts. The defaults are the platform-wide limits; a model may
    narrow them, never widen them (`python_backends.validation.Limits.for_model`)."""

    min_width: int = Field(default=64, ge=1)
    min_height: int = Field(default=64, ge=1)
    max_width: int = Field(default=7680, ge=1)
    max_height: int = Field(default=4320, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> FrameParams:
        for low, high in (("min_width", "max_width"), ("min_height", "max_height")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) must not exceed {high} ({getattr(self, high)})")
        return self


class BreakerParams(_Params):
    """`ruth.breaker.*`: when the circuit breaker trips and for how long (python_backends/breaker.py)."""

    failure_threshold: int = Field(default=5, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)
    max_cooldown_s: float = Field(default=600.0, gt=0)
    half_open_max_trials: int = Field(default=1, ge=1)

    @field_validator("max_cooldown_s")
    @classmethod
    def _not_below_cooldown(cls, value: float, info: ValidationInfo) -> float:
        cooldown = info.data.get("cooldown_s")  # absent when cooldown_s itself was invalid
        if cooldown is not None and value < cooldown:
            raise ValueError(f"must be >= cooldown_s ({cooldown})")
        return value


class WatchdogParams(_Params):
    """`ruth.watchdog.*`: timed-out inferences still running before the instance reports itself unhealthy."""

    zombie_limit: int = Field(default=4, ge=1)


class StateParams(_Params):
    """`ruth.state.*`: bounds of a stateful model's stream store (python_backends/streams.py)."""

    idle_ttl_s: float = Field(default=300.0, gt=0)
    max_streams: int = Field(default=10000, ge=1)


_RATES = ("fail_rate", "hang_rate", "slow_rate")


class FaultPlan(_Params):
    """`ruth.fault.*`: fault injection for reliability tests and game days (python_backends/faults.py); all off."""

    fail_rate: float = Field(default=0.0, ge=0, le=1)
    hang_rate: float = Field(default=0.0, ge=0, le=1)
    hang_s: float = Field(default=30.0, ge=0)
    slow_rate: float = Field(default=0.0, ge=0, le=1)
    slow_ms: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _sum(self) -> FaultPlan:
        if sum(getattr(self, name) for name in _RATES) > 1 + 1e-9:
            raise ValueError(f"{', '.join(PREFIX + 'fault.' + n for n in _RATES)}: the rates must add up to at most 1")
        return self

    @property
    def enabled(self) -> bool:
        return (
            self.fail_rate > 0 or (self.hang_rate > 0 and self.hang_s > 0) or (self.slow_rate > 0 and self.slow_ms > 0)
        )


class RuntimeParams(_Params):
    """Every `ruth.*` key of config.pbtxt. Nested groups are key segments: `breaker.cooldown_s` is
    `ruth.breaker.cooldown_s`."""

    inference_timeout_ms: TimeoutMs = 5000
    memory_estimate_mb: int = Field(default=256, ge=0)
    timestamp_max_drift_s: float = Field(default=86400.0, gt=0)
    frame: FrameParams = FrameParams()
    breaker: BreakerParams = BreakerParams()
    watchdog: WatchdogParams = WatchdogParams()
    state: StateParams = StateParams()
    fault: FaultPlan = FaultPlan()
    weights: tuple[WeightPin, ...] = ()

    @classmethod
    def keys(cls) -> list[str]:
        """Every key this definition accepts, in a stable order."""
        keys: list[str] = []
        for name in cls.model_fields:
            group = _GROUPS.get(name)
            keys += [f"{PREFIX}{name}.{sub}" for sub in group.model_fields] if group else [PREFIX + name]
        return keys

    def to_parameters(self) -> dict[str, str]:
        """The fields set when this object was built (a group: all of its fields), as config.pbtxt strings."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            if name not in self.model_fields_set:
                continue
            value = getattr(self, name)
            if name in _GROUPS:
                out.update({f"{PREFIX}{name}.{sub}": parameter_text(v) for sub, v in value.model_dump().items()})
            else:
                out[PREFIX + name] = parameter_text(value)
        return out

    @classmethod
    def from_parameters(cls, raw: Mapping[str, str]) -> RuntimeParams:
        """Parse the `ruth.*` keys of a flat str->str mapping (other keys are ignored; an empty value is the
        default). ModelLoadError names the unknown key or the invalid value's key; raised from `initialize()`, it is
        the reason Triton gives for the refused load (docs/triton-notes.md §3)."""
        known = cls.keys()
        document: dict[str, Any] = {}
        for key, text in raw.items():
            if not key.startswith(PREFIX):
                continue
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(known)}"
                raise ModelLoadError(f"config.pbtxt parameter {key} is not a known ruth.* parameter{hint}")
            if not text.strip():
                continue
            *group, field = key[len(PREFIX) :].split(".")
            target = document.setdefault(group[0], {}) if group else document
            target[field] = _decoded(text)
        try:
            return cls.model_validate_json(json.dumps(document), strict=True)
        except ValidationError as exc:
            raise ModelLoadError(f"config.pbtxt parameter {first_error(exc, prefix=PREFIX)}") from None
        except ValueError as exc:  # a value json can't carry back (never from config strings; be safe anyway)
            raise ModelLoadError(f"config.pbtxt parameters are invalid: {exc}") from None


def _decoded(text: str) -> Any:
    """A parameter value as JSON when it is JSON (numbers, booleans, lists), else the text itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return text if isinstance(value, float) and not math.isfinite(value) else value


def parameter_text(value: Any) -> str:
    """A parameter value as config.pbtxt holds it: `30` rather than `30.0` (humans read these too), booleans as
    `true`/`false`, strings as they are, anything else as compact JSON with sorted keys."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    if isinstance(value, tuple | list) and all(isinstance(v, BaseModel) for v in value):
        value = [v.model_dump(mode="json", exclude_defaults=True) for v in value]
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


#: the nested groups of RuntimeParams by field name: each is one key segment (`ruth.<group>.<field>`)
_GROUPS: dict[str, type[_Params]] = {
    name: field.annotation
    for name, field in RuntimeParams.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, _Params)
}
#: every default of every `ruth.*` parameter (and of the modules that take them)
DEFAULTS = RuntimeParams()


def parameters_of(model_config: Mapping[str, Any]) -> dict[str, str]:
    """config.pbtxt `parameters` ({key: {string_value: v}}) as a flat str->str mapping."""
    raw = model_config.get("parameters") or {}
    return {key: str(value.get("string_value", "")) for key, value in raw.items() if isinstance(value, Mapping)}


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
