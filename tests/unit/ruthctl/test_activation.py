"""Activation across a fleet as functions returning per-server results (no CLI): the checks before any server,
the rollback, and the code each server's outcome calls for. The CLI renders these (commands/test_activate.py)."""

from __future__ import annotations

from typing import Any

import pytest

from ruthctl import activation
from ruthctl.activation import NotActivatable, ServerResult, StaleFiles
from ruthctl.exit_codes import ExitCode
from ruthctl.lifecycle import Target
from ruthctl.registry import Desired, Registry, State
from ruthctl.settings import Profile

A, B = "127.0.0.1:8000", "127.0.0.1:9000"


def quiet(_: str) -> None:
    return None


@pytest.fixture
def target(deployment: Any) -> Target:
    return activation.prepare(deployment.paths(), Profile.CPU, "alpha", None, {})


def test_prepare_checks_spec_version_weights_and_generated_files_before_any_server(deployment: Any) -> None:
    paths = deployment.paths()
    with pytest.raises(NotActivatable, match="no spec for nope"):
        activation.prepare(paths, Profile.CPU, "nope", None, {})
    with pytest.raises(NotActivatable, match="no version directory"):
        activation.prepare(paths, Profile.CPU, "alpha", 7, {})
    (deployment.repository / "alpha" / "config.pbtxt").write_text("# edited by hand\n")
    with pytest.raises(StaleFiles, match="run `ruthctl generate`"):
        activation.prepare(paths, Profile.CPU, "alpha", None, {})
    (deployment.weights / "alpha" / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(NotActivatable) as raised:
        activation.prepare(paths, Profile.CPU, "alpha", None, {})
    assert not isinstance(raised.value, StaleFiles)  # weights are checked first: exit 1, not 3


def test_activate_is_ready_everywhere_or_reports_each_server(deployment: Any, fake_triton: Any, target: Target) -> None:
    good, bad = fake_triton(A), fake_triton(B)
    bad.fail_load["alpha"] = "Internal: probe failed"
    reg = Registry(deployment.state)
    results = activation.activate([good, bad], reg, target, 5.0, quiet)
    assert results[0] == ServerResult(A, "READY", "READY at v1")
    assert results[1].state == "FAILED" and "rolled back: Internal: probe failed" in results[1].detail
    assert results[1].code is ExitCode.ERROR
    assert activation.exit_code(results) is ExitCode.ERROR
    entry = reg.get("alpha")
    assert entry is not None and entry.desired is Desired.ACTIVE  # one server runs the new config: it stays


def test_an_unreachable_server_outranks_a_failure_and_the_desired_state_is_restored(
    deployment: Any, fake_triton: Any, target: Target
) -> None:
    down, bad = fake_triton(A), fake_triton(B)
    down.unreachable = True
    bad.fail_load["alpha"] = "Internal: probe failed"
    reg = Registry(deployment.state)
    results = activation.activate([down, bad], reg, target, 5.0, quiet)
    assert [r.code for r in results] == [ExitCode.UNREACHABLE, ExitCode.ERROR]
    assert activation.exit_code(results) is ExitCode.UNREACHABLE
    assert "desired state unchanged" in results[1].detail
    entry = reg.get("alpha")
    assert entry is not None and entry.desired is not Desired.ACTIVE


def test_a_second_activate_changes_nothing(deployment: Any, fake_triton: Any, target: Target) -> None:
    server = fake_triton(A)
    reg = Registry(deployment.state)
    activation.activate([server], reg, target, 5.0, quiet)
    [again] = activation.activate([server], reg, target, 5.0, quiet)
    assert again == ServerResult(A, "READY", "already active with this config")
    assert server.calls.count(("load", "alpha")) == 1


def test_deactivate_unloads_and_records_inactive(deployment: Any, fake_triton: Any, target: Target) -> None:
    server, down = fake_triton(A), fake_triton(B)
    reg = Registry(deployment.state)
    activation.activate([server], reg, target, 5.0, quiet)
    down.unreachable = True
    results = activation.deactivate([server, down], reg, "alpha", 5.0, quiet)
    assert results[0] == ServerResult(A, "UNLOADED", "unloaded (drained)")
    assert results[1].code is ExitCode.UNREACHABLE
    entry = reg.get("alpha")
    assert entry is not None and entry.desired is Desired.INACTIVE and entry.on(A).state is State.UNLOADED
