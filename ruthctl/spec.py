"""Model specs and deployment profiles: the YAML files an operator edits, as frozen pydantic models.

A spec is the user layer of the two-layer config (the spec, then its rendered config.pbtxt): what a model needs,
in the words of `docs/model-spec.md`. `render.py` maps it onto Triton's `ModelConfig` protobuf. Every model here
is frozen with `extra="forbid"`, so a typo in a YAML key is an error at `ruthctl generate` instead of a silently
ignored setting, and cross-field rules (batching needs a batch size, a CPU profile can't place a GPU instance) are
checked when the object is built: an invalid spec can't exist. The `breaker`, `watchdog`, `state` and `weights`
groups are the `ruth.*` parameter groups of python_backends/params.py, so the spec and the model that parses the
rendered config share one definition of each key, bound and default.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator, model_validator

from python_backends.errors import first_error
from python_backends.params import (
    DEFAULTS,
    BreakerParams,
    FrameParams,
    StateParams,
    TimeoutMs,
    WatchdogParams,
)
from python_backends.weights import WeightPin, WeightsError, known_pins
from ruthctl.settings import Profile

__all__ = [
    "Contract",
    "DataType",
    "InstanceKind",
    "ModelSpec",
    "ProfileSpec",
    "SpecError",
    "TensorSpec",
    "load_profiles",
    "load_spec",
    "load_specs",
    "weight_pins",
]

NAME_PATTERN = r"^[a-z][a-z0-9_]{2,63}$"


class SpecError(ValueError):
    """A spec or profile file that can't be used; the message names the file and the first problem."""


class Contract(str, enum.Enum):
    """`vision` is the wire contract of docs/contract.md; `raw` declares its own tensors (BLS callees)."""

    VISION = "vision"
    RAW = "raw"


class InstanceKind(str, enum.Enum):
    """`ModelInstanceGroup.Kind` in model_config.proto, spelled as the proto spells it."""

    KIND_CPU = "KIND_CPU"
    KIND_GPU = "KIND_GPU"


class DataType(str, enum.Enum):
    """`DataType` in model_config.proto (TYPE_INVALID left out: it is never a valid tensor type)."""

    TYPE_BOOL = "TYPE_BOOL"
    TYPE_UINT8 = "TYPE_UINT8"
    TYPE_UINT16 = "TYPE_UINT16"
    TYPE_UINT32 = "TYPE_UINT32"
    TYPE_UINT64 = "TYPE_UINT64"
    TYPE_INT8 = "TYPE_INT8"
    TYPE_INT16 = "TYPE_INT16"
    TYPE_INT32 = "TYPE_INT32"
    TYPE_INT64 = "TYPE_INT64"
    TYPE_FP16 = "TYPE_FP16"
    TYPE_FP32 = "TYPE_FP32"
    TYPE_FP64 = "TYPE_FP64"
    TYPE_STRING = "TYPE_STRING"
    TYPE_BF16 = "TYPE_BF16"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DynamicBatching(_Frozen):
    max_queue_delay_us: int = Field(default=0, ge=0)
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_size: int = Field(default=0, ge=0, description="0 = unbounded; beyond it a request gets an immediate 503")
    queue_timeout_ms: int = Field(default=0, ge=0, description="0 = no queue timeout")

    @field_validator("preferred_batch_size")
    @classmethod
    def _positive(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if any(size < 1 for size in sizes):
            raise ValueError("preferred batch sizes must be >= 1")
        return sizes


class Limits(FrameParams):
    """`limits:`: the inference deadline and the frame sizes (`ruth.inference_timeout_ms`, `ruth.frame.*`)."""

    inference_timeout_ms: TimeoutMs = DEFAULTS.inference_timeout_ms


#: `breaker:`, `watchdog:` and `state:` are the `ruth.*` groups themselves (python_backends/params.py), and `weights:`
#: the pins of python_backends/weights.py: one definition of every key, bound and default, for the spec and for the
#: model that parses the rendered config
BreakerSpec = BreakerParams
WatchdogSpec = WatchdogParams
StateSpec = StateParams


class InstanceGroupSpec(_Frozen):
    """A profile's instance group, with optional per-profile overrides of batching and memory."""

    kind: InstanceKind = InstanceKind.KIND_CPU
    count: int = Field(default=1, ge=1, le=64)
    max_batch_size: int | None = Field(default=None, ge=0, le=1024)
    memory_estimate_mb: int | None = Field(default=None, ge=0)
    #: the spec's `parameters` this profile overrides (e.g. more pose passes where a GPU can afford them)
    parameters: dict[str, JsonValue] = Field(default_factory=dict)


class TensorSpec(_Frozen):
    """One input or output of a raw-contract model."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    data_type: DataType
    dims: tuple[int, ...] = Field(min_length=1)
    optional: bool = False

    @field_validator("dims")
    @classmethod
    def _dims(cls, dims: tuple[int, ...]) -> tuple[int, ...]:
        if any(d == 0 or d < -1 for d in dims):
            raise ValueError("dims are positive sizes or -1 (variable)")
        return dims


class ModelSpec(_Frozen):
    """`config/models/<name>.yaml`: the single source of truth for one model (docs/model-spec.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: str = Field(pattern=NAME_PATTERN)
    display_name: str = ""
    description: str = ""
    version: int = Field(default=1, ge=1)
    contract: Contract = Contract.VISION
    max_batch_size: int = Field(default=0, ge=0, le=1024)
    dynamic_batching: DynamicBatching | None = None
    limits: Limits = Limits()
    breaker: BreakerSpec = BreakerSpec()
    watchdog: WatchdogSpec = WatchdogSpec()
    memory_estimate_mb: int = Field(default=DEFAULTS.memory_estimate_mb, ge=0)
    state: StateSpec | None = None
    weights: tuple[WeightPin, ...] = ()
    profiles: dict[Profile, InstanceGroupSpec] = Field(default_factory=dict)
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    @field_validator("parameters")
    @classmethod
    def _parameter_keys(cls, parameters: dict[str, JsonValue]) -> dict[str, JsonValue]:
        for key, value in parameters.items():
            if not key or not all(c.isalnum() or c in "_.-" for c in key):
                raise ValueError(f"parameter key {key!r}: use letters, digits, '_', '.', '-'")
            if value is None:
                raise ValueError(f"parameter {key!r} has no value")
        return parameters

    @model_validator(mode="after")
    def _profile_parameters(self) -> ModelSpec:
        for profile, group in self.profiles.items():
            unknown = sorted(set(group.parameters) - set(self.parameters))
            if unknown:
                raise ValueError(f"profiles.{profile.value}.parameters: {unknown} not in the spec's parameters")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.contract is Contract.RAW and (not self.inputs or not self.outputs):
            raise ValueError("a raw-contract model declares its `inputs` and `outputs`")
        if self.contract is Contract.VISION and (self.inputs or self.outputs):
            raise ValueError("a vision model's tensors are fixed by the wire contract: remove `inputs`/`outputs`")
        for label, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [t.name for t in tensors]
            if len(names) != len(set(names)):
                raise ValueError(f"{label}: tensor names must be unique")
        paths = [w.path for w in self.weights]
        if len(paths) != len(set(paths)):
            raise ValueError("weights: each path may appear once")
        for profile, group in [(None, None), *self.profiles.items()]:
            batch = self.max_batch_size if group is None or group.max_batch_size is None else group.max_batch_size
            where = "" if profile is None else f"profiles.{profile.value}: "
            if self.dynamic_batching is not None and batch < 1:
                raise ValueError(f"{where}dynamic_batching needs max_batch_size >= 1")
            if self.dynamic_batching is not None and any(s > batch for s in self.dynamic_batching.preferred_batch_size):
                raise ValueError(f"{where}preferred_batch_size entries must not exceed max_batch_size ({batch})")
        return self

    def batch_size_for(self, profile: Profile) -> int:
        group = self.profiles.get(profile)
        return self.max_batch_size if group is None or group.max_batch_size is None else group.max_batch_size

    def memory_for(self, profile: Profile) -> int:
        group = self.profiles.get(profile)
        return (
            self.memory_estimate_mb if group is None or group.memory_estimate_mb is None else group.memory_estimate_mb
        )


class ProfileSpec(_Frozen):
    """`config/profiles/<name>.yaml`: what a deployment target allows, and the defaults for specs that omit it."""

    name: Profile
    description: str = ""
    gpu_instances: bool = Field(default=False, description="whether KIND_GPU instance groups may be placed here")
    default_instance: InstanceGroupSpec = InstanceGroupSpec()
    max_instance_count: int = Field(default=64, ge=1)
    max_batch_size_cap: int | None = Field(default=None, ge=1, description="larger batch sizes are clamped to it")

    def instance_for(self, spec: ModelSpec) -> InstanceGroupSpec:
        """The spec's group for this profile (or the profile default), checked against what the target allows."""
        group = spec.profiles.get(self.name, self.default_instance)
        if group.kind is InstanceKind.KIND_GPU and not self.gpu_instances:
            raise SpecError(
                f"{spec.name}: profile {self.name.value} does not allow KIND_GPU instances "
                f"(see config/profiles/{self.name.value}.yaml); use KIND_CPU and let the model pick its device"
            )
        if group.count > self.max_instance_count:
            raise SpecError(
                f"{spec.name}: profile {self.name.value} allows at most {self.max_instance_count} instances, "
                f"the spec asks for {group.count}"
            )
        return group

    def batch_size_for(self, spec: ModelSpec) -> int:
        batch = spec.batch_size_for(self.name)
        return batch if self.max_batch_size_cap is None else min(batch, self.max_batch_size_cap)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    return data


def parse_spec(data: Mapping[str, Any], source: str = "<spec>") -> ModelSpec:
    try:
        return ModelSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise SpecError(f"{source}: {first_error(exc)}") from None


def load_spec(path: Path) -> ModelSpec:
    """One spec file; its `name` must equal the file name (the model directory is named after both)."""
    spec = parse_spec(_read_yaml(path), str(path))
    if spec.name != path.stem:
        raise SpecError(f"{path}: name {spec.name!r} differs from the file name {path.stem!r}")
    return spec


def load_specs(directory: Path) -> tuple[dict[str, ModelSpec], dict[str, str]]:
    """Every `*.yaml` spec in `directory`: (specs by name, errors by file name). One bad file doesn't hide the rest."""
    specs: dict[str, ModelSpec] = {}
    errors: dict[str, str] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            spec = load_spec(path)
        except SpecError as exc:
            errors[path.name] = str(exc)
            continue
        specs[spec.name] = spec
    return specs, errors


def load_profiles(directory: Path) -> dict[Profile, ProfileSpec]:
    """Every profile; a profile without a file gets the permissive defaults (CPU only, 1 instance)."""
    profiles: dict[Profile, ProfileSpec] = {}
    for profile in Profile:
        path = directory / f"{profile.value}.yaml"
        if not path.exists():
            profiles[profile] = ProfileSpec(name=profile)
            continue
        try:
            loaded = ProfileSpec.model_validate(_read_yaml(path))
        except ValidationError as exc:
            raise SpecError(f"{path}: {first_error(exc)}") from None
        if loaded.name is not profile:
            raise SpecError(f"{path}: name {loaded.name.value!r} differs from the file name {profile.value!r}")
        profiles[profile] = loaded
    return profiles


def weight_pins(directory: Path) -> tuple[WeightPin, ...]:
    """The known weights: the union of every spec's pins in `directory` (the only list of them). A spec that can't
    be read is a SpecError, as its pins would go unchecked; so are two specs pinning one file to different bytes."""
    specs, errors = load_specs(directory)
    if errors:
        raise SpecError("; ".join(errors.values()))
    if not specs:
        raise SpecError(f"no model specs in {directory}")
    try:
        return known_pins(specs.values())
    except WeightsError as exc:
        raise SpecError(f"{directory}: {exc}") from None
