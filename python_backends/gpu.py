"""Where a model instance runs: the allocator that grants a GPU, falls back to the CPU, or fails the load.

Two instances can each see the same free memory and both decide to load into it, so the allocator checks real free
memory from the probe (`gpu_probe`) *and* the ledger's logical budget (`gpu_ledger`) inside one ledger transaction:
concurrent loads can't double-book a device.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable

from python_backends.bounds import at_least
from python_backends.errors import ModelLoadError
from python_backends.gpu_ledger import MIB, GpuLedger, LedgerFullError, Reservation, mib_text
from python_backends.gpu_probe import DeviceProbe, ProbeUnavailable

__all__ = [
    "Allocation",
    "DeviceAllocator",
]

log = logging.getLogger(__name__)


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
      * real free memory on the device minus `reserve_mb` minus the bookings of siblings that have not loaded yet
        (their memory is promised but not yet gone from "free"; memory used by anything else is already gone), and
      * total memory minus `reserve_mb` minus every live booking on it (the estimates of siblings, loaded or not).
    A sibling that has loaded is `settled` in the ledger: its memory is gone from "free", so it counts once, in the
    second bound. Taking min(free, total − booked) without the first subtraction over-booked whenever another
    process held memory: free was the binding bound and the pending bookings were not subtracted from it.
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
        self.probe = probe
        self.ledger = ledger
        self.enable_gpu = enable_gpu
        self.fallback_to_cpu = fallback_to_cpu
        self.reserve_bytes = at_least("reserve_mb", reserve_mb, 0) * MIB
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
        at_least("memory_estimate_mb", memory_estimate_mb, 0)
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
            pending = sum(r.bytes for r in others if not r.settled)
            by_free = device.free_bytes - self.reserve_bytes - pending
            by_ledger = device.total_bytes - self.reserve_bytes - booked
            available = min(by_free, by_ledger)
            numbers = (
                f"estimate {mib_text(estimate)}, available {mib_text(max(available, 0))} on {wants} ({device.name}): "
                f"free {mib_text(device.free_bytes)} − reserve {mib_text(self.reserve_bytes)} − {mib_text(pending)} "
                f"booked by instances not loaded yet; total {mib_text(device.total_bytes)} − reserve − "
                f"{mib_text(booked)} booked by {len(others)} other instance(s)"
            )
            if estimate > available:
                raise LedgerFullError(f"not enough GPU memory: {numbers}")
            granted.append(f"fits: {numbers}")

        try:
            self.ledger.reserve(reservation, check=fits)
        except LedgerFullError as exc:
            return self._unavailable(label, kind, wants, str(exc), no_gpu=False)
        return self._decided(label, Allocation(wants, "gpu", device_id, estimate, granted[0], owner))

    def settle(self, allocation: Allocation) -> None:
        """The instance has loaded: its booked memory is now in use, so siblings stop subtracting it from "free"."""
        if allocation.owner is not None:
            self.ledger.settle(allocation.owner)

    def release(self, allocation: Allocation) -> None:
        """Give the booked memory back; safe to call twice and for CPU allocations."""
        if allocation.owner is not None and self.ledger.release(allocation.owner):
            log.info("released %s on %s", mib_text(allocation.reserved_bytes), allocation.device)

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
