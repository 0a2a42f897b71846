"""Device probes: how much memory each GPU really has free, from NVML, else torch, else none (or a fake in tests).

Optional GPU libraries (pynvml, torch) are imported only when a probe is used, so the CPU path imports neither.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = [
    "DeviceInfo",
    "DeviceProbe",
    "FakeProbe",
    "NoGpuProbe",
    "NvmlProbe",
    "ProbeUnavailable",
    "TorchProbe",
    "default_probe",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Probes


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """One CUDA device as this process numbers it (`index` is what `cuda:N` and Triton's device_id mean)."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int


class ProbeUnavailable(RuntimeError):
    """The probe can't see devices at all (no library, no driver); the message says why."""


class DeviceProbe(Protocol):
    @property
    def name(self) -> str: ...

    def devices(self) -> list[DeviceInfo]: ...


class NoGpuProbe:
    """A machine without GPUs."""

    name = "none"

    def devices(self) -> list[DeviceInfo]:
        return []


class FakeProbe:
    """Devices given by the test."""

    name = "fake"

    def __init__(self, devices: Sequence[DeviceInfo] = ()) -> None:
        self._devices = list(devices)

    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)


class NvmlProbe:
    """Free memory as the driver sees it, across every process (nvidia-ml-py's `pynvml`).

    NVML numbers devices by PCI bus, ignoring `CUDA_VISIBLE_DEVICES`, while `cuda:N` and Triton's device_id count only
    visible devices: the probe maps one onto the other (indices and `GPU-` UUIDs; MIG instances are not supported and
    make the probe unavailable). CUDA's default FASTEST_FIRST order equals bus order on machines with one GPU model.
    """

    name = "nvml"

    def __init__(self, nvml: Any = None, env: Mapping[str, str] | None = None) -> None:
        self._nvml = nvml
        self._env = os.environ if env is None else env

    def devices(self) -> list[DeviceInfo]:
        nvml = self._module()
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            raise ProbeUnavailable(f"NVML init failed: {exc}") from exc
        try:
            return [self._info(nvml, cuda_index, handle) for cuda_index, handle in enumerate(self._handles(nvml))]
        except ProbeUnavailable:
            raise
        except Exception as exc:
            raise ProbeUnavailable(f"NVML query failed: {exc}") from exc
        finally:
            try:
                nvml.nvmlShutdown()
            except Exception:
                log.debug("nvmlShutdown failed", exc_info=True)

    def _module(self) -> Any:
        if self._nvml is not None:
            return self._nvml
        try:
            import pynvml  # nvidia-ml-py
        except ImportError as exc:
            raise ProbeUnavailable("nvidia-ml-py (pynvml) is not installed") from exc
        return pynvml

    def _handles(self, nvml: Any) -> list[Any]:
        visible = self._env.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        handles = []
        # CUDA stops at the first invalid entry; so do we.
        for entry in (part.strip() for part in visible.split(",")):
            if not entry:
                break
            if entry.startswith("MIG-"):
                raise ProbeUnavailable(f"CUDA_VISIBLE_DEVICES names a MIG instance ({entry}); NVML mapping unsupported")
            if entry.startswith("GPU-"):
                handles.append(nvml.nvmlDeviceGetHandleByUUID(entry))
                continue
            try:
                index = int(entry)
            except ValueError:
                break
            if index < 0 or index >= nvml.nvmlDeviceGetCount():
                break
            handles.append(nvml.nvmlDeviceGetHandleByIndex(index))
        return handles

    @staticmethod
    def _info(nvml: Any, cuda_index: int, handle: Any) -> DeviceInfo:
        name = nvml.nvmlDeviceGetName(handle)
        if isinstance(name, bytes):  # older nvidia-ml-py returns bytes
            name = name.decode(errors="replace")
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        return DeviceInfo(index=cuda_index, name=str(name), total_bytes=int(memory.total), free_bytes=int(memory.free))


class TorchProbe:
    """Free memory via `torch.cuda.mem_get_info` (driver-wide numbers, like NVML). It creates a CUDA context on each
    device it asks about, so it is only the fallback when NVML isn't installed."""

    name = "torch"

    def __init__(self, torch: Any = None) -> None:
        self._torch = torch

    def devices(self) -> list[DeviceInfo]:
        torch = self._torch if self._torch is not None else self._import_torch()
        try:
            if not torch.cuda.is_available():
                raise ProbeUnavailable("torch sees no CUDA device")
            found = []
            for index in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(index)
                name = torch.cuda.get_device_name(index)
                found.append(DeviceInfo(index=index, name=str(name), total_bytes=int(total), free_bytes=int(free)))
            return found
        except ProbeUnavailable:
            raise
        except Exception as exc:
            raise ProbeUnavailable(f"torch CUDA query failed: {exc}") from exc

    @staticmethod
    def _import_torch() -> Any:
        try:
            import torch
        except ImportError as exc:
            raise ProbeUnavailable("torch is not installed") from exc
        return torch


class _FirstAvailableProbe:
    """Tries each probe in order when first asked, so building the default probe costs nothing on the CPU path."""

    def __init__(self, probes: Sequence[DeviceProbe]) -> None:
        self._probes = list(probes)
        self._chosen: DeviceProbe | None = None

    @property
    def name(self) -> str:
        return self._chosen.name if self._chosen is not None else "auto"

    def devices(self) -> list[DeviceInfo]:
        if self._chosen is not None:
            return self._chosen.devices()
        reasons = []
        for probe in self._probes:
            try:
                found = probe.devices()
            except ProbeUnavailable as exc:
                reasons.append(f"{probe.name}: {exc}")
                continue
            self._chosen = probe
            return found
        raise ProbeUnavailable("; ".join(reasons) or "no probe configured")


def default_probe() -> DeviceProbe:
    """NVML if it works, else torch; if neither, `devices()` raises `ProbeUnavailable` naming both reasons (so an
    allocation says *why* there is no GPU instead of just finding none). Nothing is imported until first use."""
    return _FirstAvailableProbe([NvmlProbe(), TorchProbe()])
