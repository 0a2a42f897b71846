"""12-factor settings: every environment variable the runtime honours, in one place.

The runtime we replace declared most of these and read few. Here each one is either used by `ruthctl serve`
itself, mapped to a tritonserver flag, or passed on to the model processes (which read it through
`python_backends.runtime.RuntimeSettings`). The configuration table of README.md lists them with defaults and
effects.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from python_backends.state import DEFAULT_STATE_DIR
from python_backends.streams import StreamStoreSpec
from python_backends.weights import DEFAULT_MODELS_DIR, DEFAULT_WEIGHTS_DIR

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


class Profile(str, enum.Enum):
    """Deployment profile: picks `configs/<profile>.pbtxt` in every model directory."""

    CPU = "cpu"
    GPU = "gpu"
    JETSON = "jetson"


class Hardware(str, enum.Enum):
    """What this host has (AI_RUNTIME_HARDWARE); `auto` finds out with `detect_hardware`."""

    AUTO = "auto"
    CPU = "cpu"
    GPU = "gpu"  # nvidia-smi on PATH and /dev/nvidia0
    JETSON = "jetson"  # /etc/nv_tegra_release


#: Profile names of the runtime we replace, accepted so existing deployments keep working.
LEGACY_PROFILES = {
    "dev": Profile.CPU,
    "test": Profile.CPU,
    "prod-cpu": Profile.CPU,
    "prod-gpu": Profile.GPU,
    "edge-jetson": Profile.JETSON,
}

#: Our own prefix; unknown variables under it are reported (typos otherwise go unnoticed).
OWN_PREFIXES = ("RUTH_",)


class Settings(BaseSettings):
    """Runtime settings from the environment (and `.env`). Validated at start; a bad value stops the start."""

    # hide_input_in_errors: a refused value may be a credential (a redis URL with a password, a token in the wrong
    # variable); the error names the setting and the rule, never echoes the value into logs
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, populate_by_name=True, hide_input_in_errors=True
    )

    #: a label of the deployment, reported by `serve` at start and in its endpoint table; nothing else reads it
    ruth_ai_env: Literal["development", "test", "staging", "production"] = "production"
    ruth_ai_profile: Profile = Profile.CPU
    ai_runtime_hardware: Hardware = Hardware.AUTO
    graceful_shutdown_timeout_seconds: int = Field(30, ge=1, le=300)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "text"
    models_root: Path = REPO_ROOT / "model_repository"
    enable_gpu: bool = True
    gpu_fallback_to_cpu: bool = True
    gpu_memory_reserve_mb: int = Field(512, ge=0)
    metrics_enabled: bool = True
    max_concurrent_inferences: int = Field(10, ge=1, le=1000)
    ruth_state_dir: Path = DEFAULT_STATE_DIR
    ruth_weights_dir: Path = DEFAULT_WEIGHTS_DIR
    ruth_models_dir: Path = DEFAULT_MODELS_DIR  # committed, checksummed artefacts (the canonical MoveNet ONNX)
    # SERVER_HOST/SERVER_PORT: the names of the runtime we replace, honoured when the RUTH_ name is not set
    ruth_host: str = Field("127.0.0.1", validation_alias=AliasChoices("ruth_host", "server_host"))
    ruth_http_port: int = Field(8000, ge=0, le=65535, validation_alias=AliasChoices("ruth_http_port", "server_port"))
    ruth_grpc_port: int = Field(8001, ge=0, le=65535)
    ruth_metrics_port: int = Field(8002, ge=0, le=65535)
    ruth_admin_token: SecretStr | None = None
    #: categories keyed on top of the fixed set (statistics, model-config, metadata); docs/security.md
    ruth_keyed_apis: str = ""
    #: a prebuilt key shim (images build it in their build stage); else it is compiled into the state dir
    ruth_key_shim: Path | None = None
    ruth_triton_url: str = "127.0.0.1:8000"
    ruth_tritonserver: Path | None = None
    ruth_backend_directory: Path | None = None
    ruth_strict_readiness: bool = True
    #: `ruthctl serve`'s probe endpoint (/ready, /live, /metrics), bound like the HTTP address
    ruth_probe_port: int = Field(8003, ge=0, le=65535)
    #: a model UNLOADING this long means tritonserver is wedged: /live turns 503 and serve restarts it
    ruth_wedge_after_seconds: float = Field(60.0, gt=0, le=3600)
    #: restarts of a wedged or crashed tritonserver by serve within an hour before it gives up (exit 1)
    ruth_max_restarts: int = Field(3, ge=0, le=100)
    #: where per-stream state lives: `sqlite` (one server) or `redis://host:port/db` (a fleet); see deployment.md
    ruth_stream_store: str = "sqlite"
    #: the Redis password, in a file (a mounted secret), never in the URL or the environment
    ruth_stream_store_password_file: Path | None = None

    @field_validator("ruth_ai_profile", mode="before")
    @classmethod
    def _legacy_profile(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in LEGACY_PROFILES:
            return LEGACY_PROFILES[value.strip().lower()]
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("ruth_stream_store")
    @classmethod
    def _stream_store(cls, value: str) -> str:
        StreamStoreSpec.parse(value)  # ValueError with the fix; never echoes a password
        return value

    @field_validator("ruth_stream_store_password_file")
    @classmethod
    def _stream_store_password_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def resolved_hardware(self) -> Hardware:
        """`auto` looks at the machine: a Jetson has /etc/nv_tegra_release, a GPU host has a working nvidia-smi."""
        if self.ai_runtime_hardware is not Hardware.AUTO:
            return self.ai_runtime_hardware
        return detect_hardware()

    def hardware_problem(self) -> str | None:
        """Why this profile can't run on this host (a GPU profile on a host without a GPU would start with every model
        failing), or None."""
        found = self.resolved_hardware()
        if self.ruth_ai_profile is Profile.CPU or found is not Hardware.CPU:
            return None
        return (
            f"profile {self.ruth_ai_profile.value} needs a GPU, but this host is cpu "
            f"(AI_RUNTIME_HARDWARE={self.ai_runtime_hardware.value}); no model of that profile could load. "
            "Use --profile cpu (or RUTH_AI_PROFILE=cpu)"
        )

    def model_env(self) -> dict[str, str]:
        """Variables handed to the model processes (the Python-backend stubs inherit tritonserver's environment)."""
        hardware = self.resolved_hardware()
        return {
            "RUTH_STATE_DIR": str(self.ruth_state_dir.resolve()),
            "RUTH_WEIGHTS_DIR": str(self.ruth_weights_dir.resolve()),
            "RUTH_AI_PROFILE": self.ruth_ai_profile.value,
            "AI_RUNTIME_HARDWARE": hardware.value,
            # a CPU host never grants a GPU, whatever the profile says
            "ENABLE_GPU": "1" if self.enable_gpu and hardware is not Hardware.CPU else "0",
            "GPU_FALLBACK_TO_CPU": "1" if self.gpu_fallback_to_cpu else "0",
            "GPU_MEMORY_RESERVE_MB": str(self.gpu_memory_reserve_mb),
            "METRICS_ENABLED": "1" if self.metrics_enabled else "0",
            "LOG_LEVEL": self.log_level,
            "LOG_FORMAT": self.log_format,
            "RUTH_STREAM_STORE": self.ruth_stream_store,
            "RUTH_STREAM_STORE_PASSWORD_FILE": (
                str(self.ruth_stream_store_password_file.resolve()) if self.ruth_stream_store_password_file else ""
            ),
        }


def parse_profile(value: str | Profile) -> Profile:
    """A profile name, or one of the runtime we replace (`prod-cpu` ...); ValueError names the accepted ones."""
    if isinstance(value, Profile):
        return value
    text = value.strip().lower()
    if text in LEGACY_PROFILES:
        return LEGACY_PROFILES[text]
    try:
        return Profile(text)
    except ValueError:
        accepted = ", ".join([p.value for p in Profile] + sorted(LEGACY_PROFILES))
        raise ValueError(f"unknown profile {value!r}; accepted: {accepted}") from None


def detect_hardware(tegra_release: Path = Path("/etc/nv_tegra_release"), which: object = shutil.which) -> Hardware:
    if tegra_release.exists():
        return Hardware.JETSON
    if callable(which) and which("nvidia-smi") and Path("/dev/nvidia0").exists():
        return Hardware.GPU
    return Hardware.CPU


def unknown_own_variables(environ: dict[str, str] | None = None) -> list[str]:
    """`RUTH_*` variables that no setting reads: most likely typos, reported at start."""
    env = os.environ if environ is None else environ
    known = {name.upper() for name in Settings.model_fields}
    return sorted(k for k in env if k.upper().startswith(OWN_PREFIXES) and k.upper() not in known)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with CLI options (non-None) taking precedence."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    settings = Settings(**clean)  # type: ignore[arg-type]
    for name in unknown_own_variables():
        log.warning("unknown setting %s is ignored (see the configuration table in README.md)", name)
    return settings
