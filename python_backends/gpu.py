"""Where a model instance runs: device probes, a cross-process GPU ledger, and the allocator that decides.

Every Triton instance is its own process and loads on its own schedule, so two instances can each see the same free
memory and both decide to load into it. The ledger (a JSON file in the state dir) records each instance's reserved
memory; the allocator checks real free memory from the driver *and* the ledger's logical budget inside one ledger
transaction, so concurrent loads can't double-book a device. Entries of dead processes are reaped on every reserve.

Optional GPU libraries (pynvml, torch) are imported only when a probe is used, so the CPU path imports neither.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from python_backends.errors import ModelLoadError
from python_backends.storage import JsonFileStore

__all__ = [
    "Allocation",
    "DeviceAllocator",
    "DeviceInfo",
    "DeviceProbe",
    "FakeProbe",
    "GpuLedger",
    "LedgerFullError",
    "NoGpuProbe",
    "NvmlProbe",
    "ProbeUnavailable",
    "Reservation",
    "TorchProbe",
    "default_probe",
    "pid_alive",
    "process_token",
]

log = logging.getLogger(__name__)

MIB = 1024 * 1024


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / MIB:.0f} MiB"


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


# ---------------------------------------------------------------------------------------------------------------
# Ledger


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (in this pid namespace)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_token(pid: int) -> str | None:
    """Boot id + start time of `pid`: unlike the pid, it changes when the pid is reused (e.g. by the stubs of a
    restarted container sharing the state dir), so a stale reservation can't pass as alive. None off Linux."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces, so split after its closing parenthesis.
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20:
        return None
    return f"{boot_id}:{fields[19]}"


@dataclasses.dataclass(frozen=True)
class Reservation:
    """Memory one instance process holds (or will hold) on one device."""

    owner: str
    pid: int
    device_index: int
    bytes: int
    model: str
    version: str
    instance: str
    created_at: float
    #: `process_token(pid)` when reserved; None skips the reuse check
    token: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reservation:
        return cls(
            owner=str(data["owner"]),
            pid=int(data["pid"]),
            device_index=int(data["device_index"]),
            bytes=int(data["bytes"]),
            model=str(data["model"]),
            version=str(data["version"]),
            instance=str(data["instance"]),
            created_at=float(data["created_at"]),
            token=None if data.get("token") is None else str(data["token"]),
        )


class LedgerFullError(Exception):
    """A conditional reservation didn't fit; the message gives the numbers."""


class GpuLedger:
    """Reservations of every instance process on this host, in one JSON file under a file lock.

    The pid check only means something within one pid namespace: give each host (or container) its own ledger file.
    """

    def __init__(
        self,
        path: Path,
        is_alive: Callable[[int], bool] = pid_alive,
        token_of: Callable[[int], str | None] = process_token,
    ) -> None:
        self.path = Path(path)
        self._store = JsonFileStore(self.path)
        self._is_alive = is_alive
        self._token_of = token_of

    def token_of(self, pid: int) -> str | None:
        """The identity token to store with a reservation of `pid` (see `process_token`)."""
        return self._token_of(pid)

    def reserve(
        self, reservation: Reservation, *, check: Callable[[list[Reservation]], None] | None = None
    ) -> list[Reservation]:
        """Record `reservation` (replacing one with the same owner) after reaping dead entries.

        `check`, if given, sees the live reservations of *other* owners on the same device inside the same
        transaction and raises to refuse; that is how the allocator makes "does it fit" and "book it" one step.
        Returns the reservations reaped.
        """
        reaped: list[Reservation] = []

        def apply(data: dict[str, Any]) -> dict[str, Any]:
            live, dead = self._split(data)
            reaped[:] = dead
            if check is not None:
                check([r for r in live if r.device_index == reservation.device_index and r.owner != reservation.owner])
            entries = {r.owner: r.to_json() for r in live}
            entries[reservation.owner] = reservation.to_json()
            return {"reservations": entries}

        self._store.update(apply)
        self._log_reaped(reaped)
        return reaped

    def release(self, owner: str) -> bool:
        """Drop `owner`'s reservation; False if it had none (release is idempotent)."""
        released = [False]

        def apply(data: dict[str, Any]) -> dict[str, Any]:
            entries = dict(data.get("reservations") or {})
            released[0] = entries.pop(owner, None) is not None
            return {"reservations": entries}

        self._store.update(apply)
        return released[0]

    def reservations(self, device_index: int | None = None) -> list[Reservation]:
        """Live reservations (dead processes' entries are filtered out, not removed: reading takes no lock)."""
        live, _ = self._split(self._store.read())
        return [r for r in live if device_index is None or r.device_index == device_index]

    def reap(self) -> list[Reservation]:
        """Remove the entries of dead processes and return them."""
        reaped: list[Reservation] = []

        def apply(data: dict[str, Any]) -> dict[str, Any]:
            live, dead = self._split(data)
            reaped[:] = dead
            return {"reservations": {r.owner: r.to_json() for r in live}}

        self._store.update(apply)
        self._log_reaped(reaped)
        return reaped

    def _split(self, data: Mapping[str, Any]) -> tuple[list[Reservation], list[Reservation]]:
        live: list[Reservation] = []
        dead: list[Reservation] = []
        entries = data.get("reservations") or {}
        if not isinstance(entries, dict):
            log.warning("GPU ledger %s: 'reservations' is not an object; ignoring it", self.path)
            return live, dead
        for owner, raw in entries.items():
            try:
                reservation = Reservation.from_json(raw)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("GPU ledger %s: dropping unreadable entry %r (%s)", self.path, owner, exc)
                continue
            (live if self._alive(reservation) else dead).append(reservation)
        return live, dead

    def _alive(self, reservation: Reservation) -> bool:
        if not self._is_alive(reservation.pid):
            return False
        return reservation.token is None or self._token_of(reservation.pid) in (None, reservation.token)

    def _log_reaped(self, reaped: list[Reservation]) -> None:
        for r in reaped:
            log.info(
                "GPU ledger: reaped %s of dead pid %d (%s on cuda:%d)", r.owner, r.pid, _mib(r.bytes), r.device_index
            )


# ---------------------------------------------------------------------------------------------------------------
# Allocator


@dataclasses.dataclass(frozen=True)
class Allocation:
    """The placement decision for one instance, as logged, exported and put in result metadata."""

    device: str  # "cpu" or "cuda:N"
    placement: str  # "gpu" | "cpu" | "fallback"
    device_index: int | None
    reserved_bytes: int
    reason: str
    owner: str | None


_GPU_KINDS = {"GPU", "MODEL", "AUTO"}
_KINDS = _GPU_KINDS | {"CPU"}


class DeviceAllocator:
    """Decides GPU, CPU or fallback for an instance and books the GPU memory in the ledger.

    An estimate fits when it is within both
      * real free memory on the device minus `reserve_mb` (catches memory used by anything, ledger or not), and
      * total memory minus `reserve_mb` minus the live ledger reservations of other instances on it (catches siblings
        that booked but haven't allocated yet).
    Taking the smaller of the two instead of subtracting reservations from free memory avoids counting an
    instance twice once its model is loaded (then its memory is both booked and no longer free).
    """

    def __init__(
        self,
        probe: DeviceProbe,
        ledger: GpuLedger,
        *,
        enable_gpu: bool = True,
        fallback_to_cpu: bool = True,
        reserve_mb: int = 512,
        clock: Callable[[], float] = time.time,
        pid: int | None = None,
    ) -> None:
        if reserve_mb < 0:
            raise ValueError(f"reserve_mb must be >= 0, got {reserve_mb}")
        self.probe = probe
        self.ledger = ledger
        self.enable_gpu = enable_gpu
        self.fallback_to_cpu = fallback_to_cpu
        self.reserve_bytes = reserve_mb * MIB
        self._clock = clock
        self._pid = os.getpid() if pid is None else pid

    def allocate(
        self,
        *,
        model: str,
        version: str,
        instance: str,
        instance_kind: str,
        device_id: int,
        memory_estimate_mb: int,
    ) -> Allocation:
        """Place one instance; raises `ModelLoadError` when it needs a GPU it can't have and fallback is off.

        `instance_kind` is Triton's `model_instance_kind` (`GPU`, `CPU`, `MODEL`; `KIND_` prefixes accepted). `MODEL`
        and `AUTO` prefer the GPU but are satisfied by the CPU when the machine has no GPU at all.
        """
        kind = instance_kind.upper().removeprefix("KIND_")
        if kind not in _KINDS:
            raise ValueError(f"unknown instance kind {instance_kind!r}; expected one of {sorted(_KINDS)}")
        if memory_estimate_mb < 0:
            raise ValueError(f"memory_estimate_mb must be >= 0, got {memory_estimate_mb}")
        label = f"{model} v{version} ({instance})"
        if kind == "CPU":
            return self._decided(label, Allocation("cpu", "cpu", None, 0, "instance kind CPU", None))
        wants = f"cuda:{device_id}"
        if not self.enable_gpu:
            return self._unavailable(label, kind, wants, "GPU disabled by policy (enable_gpu=false)", no_gpu=False)
        try:
            devices = self.probe.devices()
        except ProbeUnavailable as exc:
            return self._unavailable(label, kind, wants, f"no usable GPU probe ({exc})", no_gpu=True)
        device = next((d for d in devices if d.index == device_id), None)
        if device is None:
            visible = ", ".join(f"cuda:{d.index}" for d in devices) or "none"
            return self._unavailable(
                label, kind, wants, f"{wants} is not visible (visible: {visible})", no_gpu=not devices
            )

        estimate = memory_estimate_mb * MIB
        owner = f"{model}:{version}:{instance}:{self._pid}"
        reservation = Reservation(
            owner=owner,
            pid=self._pid,
            device_index=device_id,
            bytes=estimate,
            model=model,
            version=version,
            instance=instance,
            created_at=self._clock(),
            token=self.ledger.token_of(self._pid),
        )
        granted: list[str] = []

        def fits(others: list[Reservation]) -> None:
            booked = sum(r.bytes for r in others)
            by_free = device.free_bytes - self.reserve_bytes
            by_ledger = device.total_bytes - self.reserve_bytes - booked
            available = min(by_free, by_ledger)
            numbers = (
                f"estimate {_mib(estimate)}, available {_mib(max(available, 0))} on {wants} ({device.name}): "
                f"free {_mib(device.free_bytes)} − reserve {_mib(self.reserve_bytes)}; total "
                f"{_mib(device.total_bytes)} − reserve − {_mib(booked)} booked by {len(others)} other instance(s)"
            )
            if estimate > available:
                raise LedgerFullError(f"not enough GPU memory: {numbers}")
            granted.append(f"fits: {numbers}")

        try:
            self.ledger.reserve(reservation, check=fits)
        except LedgerFullError as exc:
            return self._unavailable(label, kind, wants, str(exc), no_gpu=False)
        return self._decided(label, Allocation(wants, "gpu", device_id, estimate, granted[0], owner))

    def release(self, allocation: Allocation) -> None:
        """Give the booked memory back; safe to call twice and for CPU allocations."""
        if allocation.owner is not None and self.ledger.release(allocation.owner):
            log.info("released %s on %s", _mib(allocation.reserved_bytes), allocation.device)

    def _unavailable(self, label: str, kind: str, wants: str, reason: str, *, no_gpu: bool) -> Allocation:
        if kind != "GPU" and no_gpu:  # MODEL/AUTO on a machine without GPUs: the CPU is a normal answer
            return self._decided(label, Allocation("cpu", "cpu", None, 0, f"instance kind {kind}: {reason}", None))
        if self.fallback_to_cpu:
            return self._decided(
                label, Allocation("cpu", "fallback", None, 0, f"wanted {wants}, fell back to CPU: {reason}", None)
            )
        raise ModelLoadError(f"{label}: cannot place on {wants}: {reason}; CPU fallback is disabled")

    @staticmethod
    def _decided(label: str, allocation: Allocation) -> Allocation:
        level = logging.WARNING if allocation.placement == "fallback" else logging.INFO
        log.log(level, "%s placed on %s (%s): %s", label, allocation.device, allocation.placement, allocation.reason)
        return allocation
