"""`Runtime`: the services a model runs on (clock, device probe, state paths, metrics, stream store), built once.

This is the composition root of a model process. `ruthctl serve` hands its settings to the Python-backend stub
processes through the environment (`ruthctl.settings.Settings.model_env`); `Runtime.from_process()` is the one
place that reads them back, and the only place in `python_backends` that builds the concrete services. A model
takes its `Runtime` at construction (`TritonPythonModel(runtime=...)`; Triton constructs it with none, and
`initialize()` then builds the process's one `Runtime.from_process()`), so tests inject theirs instead of
patching environment variables or module globals.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from python_backends import logs
from python_backends.breaker_storage import FileBreakerStorage
from python_backends.errors import ModelLoadError
from python_backends.gpu import DeviceAllocator
from python_backends.gpu_ledger import GpuLedger
from python_backends.gpu_probe import DeviceProbe, NoGpuProbe, default_probe
from python_backends.metrics import MetricsSink, NullMetrics, TritonMetrics
from python_backends.state import StateLayout, default_state_dir
from python_backends.streams import StreamStore, StreamStoreSpec, open_stream_store
from python_backends.weights import default_weights_dir

__all__ = ["Runtime", "RuntimeSettings"]

#: (model, version, instance) -> the sink its metrics go to
MetricsFactory = Callable[[str, str, str], MetricsSink]


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    """What `ruthctl serve` hands to the model processes (see ruthctl/settings.py, `Settings.model_env`)."""

    state_dir: Path
    weights_dir: Path
    enable_gpu: bool = True
    fallback_to_cpu: bool = True
    reserve_mb: int = 512
    metrics_enabled: bool = True
    stream_store: StreamStoreSpec = dataclasses.field(default_factory=lambda: StreamStoreSpec(kind="sqlite"))

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> RuntimeSettings:
        """ModelLoadError naming the problem for a value that can't be used."""
        try:
            return cls(
                state_dir=default_state_dir(env).resolve(),
                weights_dir=default_weights_dir(env).resolve(),
                enable_gpu=_flag(env.get("ENABLE_GPU", "1")),
                fallback_to_cpu=_flag(env.get("GPU_FALLBACK_TO_CPU", "1")),
                reserve_mb=int(env.get("GPU_MEMORY_RESERVE_MB", "512")),
                metrics_enabled=_flag(env.get("METRICS_ENABLED", "1")),
                stream_store=StreamStoreSpec.parse(
                    env.get("RUTH_STREAM_STORE"), env.get("RUTH_STREAM_STORE_PASSWORD_FILE") or None
                ),
            )
        except ValueError as exc:
            raise ModelLoadError(f"invalid runtime environment: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class Runtime:
    """The services of one model process. Build it with `from_settings` (or `from_process` inside Triton)."""

    settings: RuntimeSettings
    #: wall clock, seconds since the epoch (request timestamps are checked against it)
    clock: Callable[[], float]
    #: the GPU probe the allocator asks
    probe: Callable[[], DeviceProbe]
    metrics: MetricsFactory

    @classmethod
    def from_settings(
        cls,
        settings: RuntimeSettings,
        *,
        clock: Callable[[], float] = time.time,
        probe: Callable[[], DeviceProbe] | None = None,
        metrics: MetricsFactory | None = None,
    ) -> Runtime:
        """The concrete services for `settings`; each one can be replaced (a fake probe, recording metrics)."""
        if probe is None:
            probe = default_probe if settings.enable_gpu else NoGpuProbe
        if metrics is None:
            metrics = TritonMetrics if settings.metrics_enabled else _null_metrics
        return cls(settings=settings, clock=clock, probe=probe, metrics=metrics)

    @classmethod
    def from_process(cls, environ: Mapping[str, str] | None = None) -> Runtime:
        """The composition root inside a Python-backend stub: settings from the environment, logging set up."""
        env = os.environ if environ is None else environ
        logs.configure(dict(env))
        return cls.from_settings(RuntimeSettings.from_environ(env))

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    @property
    def weights_dir(self) -> Path:
        return self.settings.weights_dir

    # ---- state paths: where each piece of shared state lives under the state dir ------------------------------
    def breaker_storage(self, model: str, version: str) -> FileBreakerStorage:
        """The breaker file every instance of one model version shares."""
        return FileBreakerStorage(StateLayout(self.state_dir).breaker(model, version))

    def allocator(self) -> DeviceAllocator:
        """A device allocator over the server's GPU ledger (shared by every model process of the server)."""
        return DeviceAllocator(
            self.probe(),
            GpuLedger(StateLayout(self.state_dir).gpu_ledger),
            enable_gpu=self.settings.enable_gpu,
            fallback_to_cpu=self.settings.fallback_to_cpu,
            reserve_mb=self.settings.reserve_mb,
        )

    def open_streams(self, namespace: str, *, max_streams: int, idle_ttl_s: float) -> StreamStore:
        """The configured stream store for one model version (`namespace`, e.g. `fall_detection-1`)."""
        return open_stream_store(
            self.settings.stream_store,
            state_dir=self.state_dir,
            namespace=namespace,
            max_streams=max_streams,
            idle_ttl_s=idle_ttl_s,
        )


def _null_metrics(model: str, version: str, instance: str) -> MetricsSink:
    return NullMetrics()
