"""Load/unload/disable on one server with the registry moving in step (fake Triton: scripted failures, fake clock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ruthctl.lifecycle import ActivationFailed, DrainTimeout, Pace, Target, disable_on, load_on, unload_on, wait_for
from ruthctl.registry import Registry, State
from ruthctl.settings import Profile
from ruthctl.spec import load_profiles, load_specs
from ruthctl.triton_client import IndexEntry, Unreachable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.01)


@pytest.fixture
def target(deployment: Any) -> Target:
    specs, _ = load_specs(deployment.specs)
    return Target(specs["alpha"], load_profiles(deployment.profiles)[Profile.CPU], version=1)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "state", actor="test")


def states(registry: Registry, name: str = "alpha") -> list[tuple[str | None, str | None]]:
    return [(a.from_state, a.to_state) for a in registry.audit(name) if a.event == "transition"]


def test_a_load_ends_ready_with_the_rendered_config(fake_triton: Any, registry: Registry, target: Target) -> None:
    triton = fake_triton()
    entry = load_on(triton, registry, target)
    assert entry.state is State.READY and entry.version == 1
    assert triton.configs["alpha"].instance_group[0].count == 2  # the spec's cpu profile, sent with the load
    assert states(registry) == [("UNLOADED", "LOADING"), ("LOADING", "READY")]


def test_a_failed_load_is_unloaded_and_recorded_failed_with_tritons_reason(
    fake_triton: Any, registry: Registry, target: Target
) -> None:
    triton = fake_triton()
    triton.fail_load["alpha"] = "Internal: RuntimeError: weights file missing"
    with pytest.raises(ActivationFailed) as caught:
        load_on(triton, registry, target)
    assert caught.value.outcome is State.FAILED and "weights file missing" in caught.value.reason
    assert ("unload", "alpha") in triton.calls
    assert registry.get("alpha").on(str(triton.endpoint)).reason == "Internal: RuntimeError: weights file missing"  # type: ignore[union-attr]
    assert states(registry)[-1] == ("LOADING", "FAILED")


def test_a_failed_reload_keeps_the_previous_version_serving(
    fake_triton: Any, registry: Registry, target: Target
) -> None:
    triton = fake_triton()
    load_on(triton, registry, target)
    triton.fail_load["alpha"] = "bad new config"
    triton.keep_on_failure = True
    with pytest.raises(ActivationFailed) as caught:
        load_on(triton, registry, target)
    assert caught.value.outcome is State.READY
    assert ("unload", "alpha") not in triton.calls
    entry = registry.get("alpha").on(str(triton.endpoint))  # type: ignore[union-attr]
    assert entry.state is State.READY and "previous version kept serving: bad new config" in entry.reason


def test_a_load_that_never_gets_ready_times_out_and_rolls_back(
    fake_triton: Any, registry: Registry, target: Target
) -> None:
    triton = fake_triton()
    original = triton.load

    def stays_loading(name: str, config: Any = None, files: Any = None) -> None:
        original(name, config)
        triton.entries[name] = IndexEntry(name, "1", "LOADING")

    triton.load = stays_loading
    clock = Clock()
    with pytest.raises(ActivationFailed, match="not READY after 5s"):
        load_on(triton, registry, target, timeout_s=5, pace=Pace(clock=clock, sleep=clock.sleep))
    assert 5 <= clock.now < 6
    assert registry.get("alpha").on(str(triton.endpoint)).state is State.FAILED  # type: ignore[union-attr]


def test_an_unreachable_server_leaves_no_loading_claim(fake_triton: Any, registry: Registry, target: Target) -> None:
    triton = fake_triton()
    triton.unreachable = True
    with pytest.raises(ActivationFailed):
        load_on(triton, registry, target)
    assert registry.get("alpha").on(str(triton.endpoint)).state is State.FAILED  # type: ignore[union-attr]


def test_an_interrupted_load_is_recorded_and_reraised(fake_triton: Any, registry: Registry, target: Target) -> None:
    triton = fake_triton()

    def interrupted(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    triton.load = interrupted
    with pytest.raises(KeyboardInterrupt):
        load_on(triton, registry, target)
    entry = registry.get("alpha").on(str(triton.endpoint))  # type: ignore[union-attr]
    assert (entry.state, entry.reason) == (State.FAILED, "interrupted")


def test_an_unload_waits_for_the_drain_then_records_unloaded(
    fake_triton: Any, registry: Registry, target: Target
) -> None:
    triton = fake_triton()
    load_on(triton, registry, target)
    entry = unload_on(triton, registry, "alpha")
    assert entry.state is State.UNLOADED
    assert states(registry)[-2:] == [("READY", "UNLOADING"), ("UNLOADING", "UNLOADED")]


def test_a_drain_past_the_timeout_leaves_unloading(fake_triton: Any, registry: Registry, target: Target) -> None:
    triton = fake_triton()
    load_on(triton, registry, target)
    triton.unload = lambda name: triton.entries.__setitem__(name, IndexEntry(name, "1", "UNLOADING"))
    clock = Clock()
    with pytest.raises(DrainTimeout):
        unload_on(triton, registry, "alpha", timeout_s=3, pace=Pace(clock=clock, sleep=clock.sleep))
    assert registry.get("alpha").on(str(triton.endpoint)).state is State.UNLOADING  # type: ignore[union-attr]


def test_an_unload_the_server_refuses_is_recorded_failed(fake_triton: Any, registry: Registry, target: Target) -> None:
    triton = fake_triton()
    load_on(triton, registry, target)
    triton.unreachable = True
    with pytest.raises(Unreachable):
        unload_on(triton, registry, "alpha")
    assert registry.get("alpha").on(str(triton.endpoint)).state is State.FAILED  # type: ignore[union-attr]


@pytest.mark.parametrize("stuck", [State.LOADING, State.READY, State.UNLOADING])
def test_disable_unloads_and_records_disabled_from_any_state(
    fake_triton: Any, registry: Registry, target: Target, stuck: State
) -> None:
    triton = fake_triton()
    server = str(triton.endpoint)
    for step in {
        State.LOADING: [State.LOADING],
        State.READY: [State.LOADING, State.READY],
        State.UNLOADING: [State.LOADING, State.READY, State.UNLOADING],
    }[stuck]:
        registry.transition("alpha", server, step)
    triton.entries["alpha"] = IndexEntry("alpha", "1", "READY")
    entry = disable_on(triton, registry, "alpha", "3 recoveries failed")
    assert (entry.state, entry.reason) == (State.DISABLED, "3 recoveries failed")
    assert triton.entries["alpha"].state == "UNAVAILABLE"
    assert disable_on(triton, registry, "alpha", "again").reason == "3 recoveries failed"  # idempotent


def test_wait_for_reports_progress_until_done(fake_triton: Any) -> None:
    triton = fake_triton()
    triton.entries["m"] = IndexEntry("m", "1", "LOADING")
    clock, seen = Clock(), []

    def progress(message: str) -> None:
        seen.append(message)
        if len(seen) == 3:
            triton.entries["m"] = IndexEntry("m", "1", "READY")

    entry = wait_for(
        triton,
        "m",
        lambda e: bool(e and e.ready),
        timeout_s=10,
        what="READY",
        pace=Pace(progress, clock=clock, sleep=clock.sleep),
    )
    assert entry is not None and entry.ready and len(seen) == 3 and "LOADING" in seen[0]
