from __future__ import annotations

import importlib.util
import multiprocessing
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from python_backends.errors import ModelLoadError
from python_backends.gpu import MIB, Allocation, DeviceAllocator
from python_backends.gpu_ledger import GpuLedger, Reservation, pid_alive, process_token
from python_backends.gpu_probe import (
    DeviceInfo,
    FakeProbe,
    NoGpuProbe,
    NvmlProbe,
    ProbeUnavailable,
    TorchProbe,
    default_probe,
)

GIB = 1024 * MIB
MY_PID = 4242


def gpu(index: int = 0, total_mib: int = 8192, free_mib: int = 8192, name: str = "Fake A100") -> DeviceInfo:
    return DeviceInfo(index=index, name=name, total_bytes=total_mib * MIB, free_bytes=free_mib * MIB)


class Alive:
    """Injected liveness: pids in `dead` are gone."""

    def __init__(self, *dead: int) -> None:
        self.dead = set(dead)

    def __call__(self, pid: int) -> bool:
        return pid not in self.dead


def ledger(tmp_path: Path, alive: Alive | None = None) -> GpuLedger:
    return GpuLedger(tmp_path / "gpu-ledger.json", is_alive=alive or Alive(), token_of=lambda pid: None)


def allocator(probe: Any, led: GpuLedger, *, pid: int = MY_PID, **kwargs: Any) -> DeviceAllocator:
    return DeviceAllocator(probe, led, clock=lambda: 100.0, pid=pid, **kwargs)


def allocate(alloc: DeviceAllocator, *, kind: str = "GPU", device_id: int = 0, mb: int = 2048, **kw: Any) -> Allocation:
    args: dict[str, Any] = {"model": "fall", "version": "1", "instance": "fall_0_0"} | kw
    return alloc.allocate(instance_kind=kind, device_id=device_id, memory_estimate_mb=mb, **args)


class BrokenProbe:
    name = "broken"

    def devices(self) -> list[DeviceInfo]:
        raise ProbeUnavailable("driver not loaded")


# --- allocation branches -------------------------------------------------------------------------------------------


def test_cpu_instances_get_the_cpu_and_touch_neither_probe_nor_ledger(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    result = allocate(allocator(BrokenProbe(), led), kind="CPU")

    assert result == Allocation("cpu", "cpu", None, 0, "instance kind CPU", None)
    assert not led.path.exists()


def test_a_gpu_instance_that_fits_is_granted_and_booked(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    result = allocate(allocator(FakeProbe([gpu(0), gpu(1)]), led), device_id=1, mb=2048)

    assert (result.device, result.placement, result.device_index) == ("cuda:1", "gpu", 1)
    assert result.reserved_bytes == 2048 * MIB
    assert "estimate 2048 MiB" in result.reason and "free 8192 MiB" in result.reason
    [booked] = led.reservations()
    assert (booked.owner, booked.pid, booked.device_index, booked.bytes) == (result.owner, MY_PID, 1, 2048 * MIB)
    assert (booked.model, booked.version, booked.instance, booked.created_at) == ("fall", "1", "fall_0_0", 100.0)


@pytest.mark.parametrize("kind", ["KIND_GPU", "gpu", "MODEL", "AUTO"])
def test_other_spellings_and_gpu_preferring_kinds_get_the_gpu(tmp_path: Path, kind: str) -> None:
    result = allocate(allocator(FakeProbe([gpu(0)]), ledger(tmp_path)), kind=kind)
    assert result.placement == "gpu"


def test_an_unknown_kind_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="instance kind"):
        allocate(allocator(FakeProbe([gpu(0)]), ledger(tmp_path)), kind="TPU")


def test_not_enough_free_memory_falls_back_with_the_numbers(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    result = allocate(allocator(FakeProbe([gpu(0, free_mib=2000)]), led), mb=2048)

    assert (result.device, result.placement, result.owner, result.reserved_bytes) == ("cpu", "fallback", None, 0)
    assert "wanted cuda:0" in result.reason
    assert "estimate 2048 MiB" in result.reason and "available 1488 MiB" in result.reason
    assert led.reservations() == []


def test_not_enough_memory_without_fallback_fails_the_load(tmp_path: Path) -> None:
    alloc = allocator(FakeProbe([gpu(0, free_mib=2000)]), ledger(tmp_path), fallback_to_cpu=False)

    with pytest.raises(ModelLoadError, match=r"fall v1 \(fall_0_0\).*estimate 2048 MiB.*CPU fallback is disabled"):
        allocate(alloc, mb=2048)


def test_the_reserve_is_kept_free(tmp_path: Path) -> None:
    probe = FakeProbe([gpu(0, total_mib=4096, free_mib=4096)])
    assert allocate(allocator(probe, ledger(tmp_path), reserve_mb=512), mb=3584).placement == "gpu"
    assert allocate(allocator(probe, ledger(tmp_path / "b"), reserve_mb=512), mb=3585).placement == "fallback"


def test_gpu_disabled_by_policy_falls_back_or_fails(tmp_path: Path) -> None:
    probe = FakeProbe([gpu(0)])
    result = allocate(allocator(probe, ledger(tmp_path), enable_gpu=False))
    assert result.placement == "fallback" and "enable_gpu=false" in result.reason

    with pytest.raises(ModelLoadError, match="enable_gpu=false"):
        allocate(allocator(probe, ledger(tmp_path), enable_gpu=False, fallback_to_cpu=False))


def test_an_unavailable_probe_falls_back_with_its_reason(tmp_path: Path) -> None:
    result = allocate(allocator(BrokenProbe(), ledger(tmp_path)))
    assert result.placement == "fallback" and "driver not loaded" in result.reason

    with pytest.raises(ModelLoadError, match="driver not loaded"):
        allocate(allocator(BrokenProbe(), ledger(tmp_path), fallback_to_cpu=False))


def test_a_missing_device_falls_back_and_names_the_visible_ones(tmp_path: Path) -> None:
    result = allocate(allocator(FakeProbe([gpu(0)]), ledger(tmp_path)), device_id=3)
    assert result.placement == "fallback"
    assert "cuda:3 is not visible (visible: cuda:0)" in result.reason


@pytest.mark.parametrize("probe", [NoGpuProbe(), BrokenProbe()])
def test_model_and_auto_kinds_take_the_cpu_on_a_machine_without_gpus(tmp_path: Path, probe: Any) -> None:
    for kind in ("MODEL", "AUTO"):
        result = allocate(allocator(probe, ledger(tmp_path), fallback_to_cpu=False), kind=kind)
        assert (result.device, result.placement) == ("cpu", "cpu")


def test_a_gpu_kind_on_a_machine_without_gpus_is_a_fallback(tmp_path: Path) -> None:
    result = allocate(allocator(NoGpuProbe(), ledger(tmp_path)))
    assert result.placement == "fallback" and "visible: none" in result.reason


def test_release_is_idempotent_and_a_no_op_for_cpu(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    alloc = allocator(FakeProbe([gpu(0)]), led)
    granted = allocate(alloc)

    alloc.release(granted)
    alloc.release(granted)
    alloc.release(allocate(alloc, kind="CPU"))

    assert led.reservations() == []


def test_two_allocators_on_one_ledger_do_not_double_book(tmp_path: Path) -> None:
    probe = FakeProbe([gpu(0, total_mib=8192, free_mib=8192)])
    first = allocator(probe, ledger(tmp_path), pid=1001)
    second = allocator(probe, ledger(tmp_path), pid=1002)

    a = allocate(first, mb=5000, instance="fall_0_0")
    b = allocate(second, mb=5000, instance="fall_0_1")

    assert (a.placement, b.placement) == ("gpu", "fallback")
    assert "5000 MiB booked by 1 other instance(s)" in b.reason
    first.release(a)
    assert allocate(second, mb=5000, instance="fall_0_1").placement == "gpu"


def test_a_loaded_sibling_is_not_counted_twice(tmp_path: Path) -> None:
    # The sibling booked 3000 MiB and has loaded: its memory is both booked and gone from "free".
    led = ledger(tmp_path)
    sibling = allocator(FakeProbe([gpu(0)]), led, pid=1001)
    sibling.settle(allocate(sibling, mb=3000, instance="a"))
    after_load = FakeProbe([gpu(0, total_mib=8192, free_mib=8192 - 3000)])

    result = allocate(allocator(after_load, led, pid=1002), mb=4680, instance="b")

    assert result.placement == "gpu"


def test_a_sibling_not_loaded_yet_is_subtracted_from_free_memory_held_by_others(tmp_path: Path) -> None:
    # 24 GiB card, another process (not ours, not in the ledger) holds 20 GiB: 4 GiB free. A sibling booked 3 GiB and
    # is still loading. min(free, total - booked) = min(4, 21) granted a second 3 GiB: 6 GiB promised out of 4.
    led = ledger(tmp_path)
    crowded = FakeProbe([gpu(0, total_mib=24576, free_mib=4096)])
    first = allocate(allocator(crowded, led, pid=1001), mb=3072, instance="a")
    second = allocate(allocator(crowded, led, pid=1002), mb=3072, instance="b")

    assert (first.placement, second.placement) == ("gpu", "fallback")
    assert "3072 MiB booked by instances not loaded yet" in second.reason
    assert sum(r.bytes for r in led.reservations()) <= 4096 * MIB


def test_a_settled_sibling_frees_its_promise_once_its_memory_shows_as_used(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    sibling = allocator(FakeProbe([gpu(0, total_mib=24576, free_mib=8192)]), led, pid=1001)
    booked = allocate(sibling, mb=3072, instance="a")
    sibling.settle(booked)
    assert [r.settled for r in led.reservations()] == [True]
    after_load = FakeProbe([gpu(0, total_mib=24576, free_mib=8192 - 3072)])

    assert allocate(allocator(after_load, led, pid=1002), mb=4000, instance="b").placement == "gpu"
    assert allocate(allocator(after_load, led, pid=1003), mb=1000, instance="c").placement == "fallback"


def test_memory_used_outside_the_ledger_still_counts(tmp_path: Path) -> None:
    result = allocate(allocator(FakeProbe([gpu(0, free_mib=1000)]), ledger(tmp_path)), mb=600)
    assert result.placement == "fallback"


def test_reservations_on_other_devices_do_not_count(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    probe = FakeProbe([gpu(0), gpu(1)])
    allocate(allocator(probe, led, pid=1001), device_id=0, mb=7000, instance="a")
    assert allocate(allocator(probe, led, pid=1002), device_id=1, mb=7000, instance="b").placement == "gpu"


def test_a_dead_siblings_booking_is_reaped_before_deciding(tmp_path: Path) -> None:
    alive = Alive()
    led = ledger(tmp_path, alive)
    probe = FakeProbe([gpu(0)])
    allocate(allocator(probe, led, pid=1001), mb=7000, instance="a")
    alive.dead.add(1001)  # kill -9

    result = allocate(allocator(probe, led, pid=1002), mb=7000, instance="b")

    assert result.placement == "gpu"
    assert [r.pid for r in led.reservations()] == [1002]


# --- ledger -------------------------------------------------------------------------------------------------------


def reservation(owner: str, pid: int, device: int = 0, mib: int = 100, token: str | None = None) -> Reservation:
    return Reservation(
        owner=owner, pid=pid, device_index=device, bytes=mib * MIB, model="m", version="1", instance=owner,
        created_at=1.0, token=token,
    )  # fmt: skip


def test_ledger_reap_removes_dead_pids_and_returns_them(tmp_path: Path) -> None:
    alive = Alive(2)
    led = ledger(tmp_path, alive)
    led.reserve(reservation("a", 1))
    alive.dead.clear()
    led.reserve(reservation("b", 2))
    alive.dead.add(2)

    assert [r.owner for r in led.reservations()] == ["a"]  # reading filters
    assert [r.owner for r in led.reap()] == ["b"]
    assert [r.owner for r in GpuLedger(led.path, is_alive=lambda pid: True).reservations()] == ["a"]


def test_reserve_reaps_dead_entries(tmp_path: Path) -> None:
    alive = Alive()
    led = ledger(tmp_path, alive)
    led.reserve(reservation("a", 1))
    alive.dead.add(1)

    reaped = led.reserve(reservation("b", 2))

    assert [r.owner for r in reaped] == ["a"]
    assert [r.owner for r in GpuLedger(led.path, is_alive=lambda pid: True).reservations()] == ["b"]


def test_a_reused_pid_does_not_keep_a_stale_booking_alive(tmp_path: Path) -> None:
    led = GpuLedger(tmp_path / "l.json", is_alive=lambda pid: True, token_of=lambda pid: "boot:2")
    led.reserve(reservation("old", 7, token="boot:1"))  # pid 7 has since been reused by another process
    assert led.reservations() == []


def test_reservations_filter_by_device_and_same_owner_replaces(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    led.reserve(reservation("a", 1, device=0))
    led.reserve(reservation("b", 2, device=1))
    led.reserve(reservation("a", 1, device=0, mib=300))

    assert [(r.owner, r.bytes) for r in led.reservations(device_index=0)] == [("a", 300 * MIB)]
    assert len(led.reservations()) == 2


def test_release_reports_whether_there_was_a_booking(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    led.reserve(reservation("a", 1))
    assert led.release("a") is True
    assert led.release("a") is False


@pytest.mark.parametrize("content", ["{torn", '{"reservations": []}', '{"reservations": {"x": {"owner": "x"}}}'])
def test_a_damaged_ledger_reads_as_empty_and_is_rewritten(tmp_path: Path, content: str) -> None:
    led = ledger(tmp_path)
    led.path.write_text(content)

    assert led.reservations() == []
    led.reserve(reservation("a", 1))
    assert [r.owner for r in led.reservations()] == ["a"]


def test_pid_alive_sees_live_and_finished_processes() -> None:
    child = multiprocessing.get_context("fork").Process(target=lambda: None)
    child.start()
    child.join(10)
    assert child.pid is not None

    assert pid_alive(os.getpid())
    assert not pid_alive(child.pid)
    assert not pid_alive(0)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_process_token_is_stable_for_a_process_and_differs_between_processes() -> None:
    mine = process_token(os.getpid())
    assert mine is not None and mine == process_token(os.getpid())
    assert process_token(1) != mine
    assert process_token(2**22 + 12345) is None


# --- probes -------------------------------------------------------------------------------------------------------


class FakeNvml:
    """Just enough of pynvml: three GPUs in bus order."""

    class NVMLError(Exception):
        pass

    def __init__(self, *, init_fails: bool = False, bytes_names: bool = False) -> None:
        self.init_fails = init_fails
        self.bytes_names = bytes_names
        self.initialised = 0
        self.gpus = [
            {"uuid": f"GPU-{i:04d}", "name": f"GPU {i}", "total": (i + 1) * GIB, "free": (i + 1) * GIB // 2}
            for i in range(3)
        ]

    def nvmlInit(self) -> None:  # noqa: N802 (pynvml spelling)
        if self.init_fails:
            raise self.NVMLError("Driver Not Loaded")
        self.initialised += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:  # noqa: N802
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> dict[str, Any]:  # noqa: N802
        for handle in self.gpus:
            if handle["uuid"] == uuid:
                return handle
        raise self.NVMLError("Not Found")

    def nvmlDeviceGetName(self, handle: dict[str, Any]) -> str | bytes:  # noqa: N802
        return handle["name"].encode() if self.bytes_names else handle["name"]

    def nvmlDeviceGetMemoryInfo(self, handle: dict[str, Any]) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(total=handle["total"], free=handle["free"], used=handle["total"] - handle["free"])


def test_nvml_probe_lists_every_device_without_cuda_visible_devices() -> None:
    nvml = FakeNvml()
    devices = NvmlProbe(nvml, env={}).devices()

    assert devices == [
        DeviceInfo(0, "GPU 0", 1 * GIB, GIB // 2),
        DeviceInfo(1, "GPU 1", 2 * GIB, GIB),
        DeviceInfo(2, "GPU 2", 3 * GIB, 3 * GIB // 2),
    ]
    assert nvml.initialised == 0  # shut down again


@pytest.mark.parametrize(
    ("visible", "names"),
    [
        ("2,0", ["GPU 2", "GPU 0"]),
        ("GPU-0001", ["GPU 1"]),
        ("1, 7, 2", ["GPU 1"]),  # CUDA stops at the first invalid entry
        ("", []),
    ],
)
def test_nvml_probe_numbers_devices_as_cuda_does(visible: str, names: list[str]) -> None:
    devices = NvmlProbe(FakeNvml(), env={"CUDA_VISIBLE_DEVICES": visible}).devices()
    assert [d.name for d in devices] == names
    assert [d.index for d in devices] == list(range(len(names)))


def test_nvml_probe_decodes_byte_names() -> None:
    assert NvmlProbe(FakeNvml(bytes_names=True), env={}).devices()[0].name == "GPU 0"


def test_nvml_probe_is_unavailable_without_a_driver() -> None:
    with pytest.raises(ProbeUnavailable, match="Driver Not Loaded"):
        NvmlProbe(FakeNvml(init_fails=True), env={}).devices()


def test_nvml_probe_refuses_mig_instances() -> None:
    with pytest.raises(ProbeUnavailable, match="MIG"):
        NvmlProbe(FakeNvml(), env={"CUDA_VISIBLE_DEVICES": "MIG-abc"}).devices()


def test_nvml_probe_turns_query_errors_into_unavailable() -> None:
    with pytest.raises(ProbeUnavailable, match="Not Found"):
        NvmlProbe(FakeNvml(), env={"CUDA_VISIBLE_DEVICES": "GPU-nope"}).devices()


@pytest.mark.skipif(importlib.util.find_spec("pynvml") is not None, reason="pynvml is installed here")
def test_nvml_probe_is_unavailable_without_pynvml() -> None:
    with pytest.raises(ProbeUnavailable, match="nvidia-ml-py"):
        NvmlProbe().devices()


def fake_torch(available: bool = True) -> SimpleNamespace:
    cuda = SimpleNamespace(
        is_available=lambda: available,
        device_count=lambda: 2,
        mem_get_info=lambda i: ((i + 1) * GIB, 4 * GIB),
        get_device_name=lambda i: f"Torch GPU {i}",
    )
    return SimpleNamespace(cuda=cuda)


def test_torch_probe_reads_free_and_total_memory() -> None:
    assert TorchProbe(fake_torch()).devices() == [
        DeviceInfo(0, "Torch GPU 0", 4 * GIB, GIB),
        DeviceInfo(1, "Torch GPU 1", 4 * GIB, 2 * GIB),
    ]


def test_torch_probe_without_cuda_is_unavailable() -> None:
    with pytest.raises(ProbeUnavailable, match="no CUDA"):
        TorchProbe(fake_torch(available=False)).devices()


@pytest.mark.skipif(
    importlib.util.find_spec("pynvml") is not None or importlib.util.find_spec("torch") is not None,
    reason="a GPU library is installed here",
)
def test_default_probe_without_gpu_libraries_says_why_for_each() -> None:
    probe = default_probe()
    with pytest.raises(ProbeUnavailable) as raised:
        probe.devices()
    assert "nvml:" in str(raised.value) and "torch:" in str(raised.value)


def test_default_probe_falls_through_to_the_first_probe_that_works() -> None:
    from python_backends.gpu_probe import _FirstAvailableProbe

    probe = _FirstAvailableProbe([BrokenProbe(), FakeProbe([gpu(0)])])
    assert probe.name == "auto"
    assert probe.devices() == [gpu(0)]
    assert probe.name == "fake"
