"""The status report as functions returning a typed report (no CLI): one row per model per server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as pb

from ruthctl.exit_codes import ExitCode
from ruthctl.procs import ProcessTable
from ruthctl.reconcile import Reconciler
from ruthctl.registry import Desired, Registry, State
from ruthctl.settings import Profile
from ruthctl.status import StatusReport, StatusRow, fleet_status
from ruthctl.triton_client import IndexEntry

A, B = "127.0.0.1:8000", "127.0.0.1:9000"


def report_of(deployment: Any, fakes: list[Any], tmp_path: Path) -> StatusReport:
    rec = Reconciler(
        deployment.paths(), Profile.CPU, Registry(deployment.state), fakes, processes=ProcessTable(tmp_path / "np")
    )
    return fleet_status(rec, fakes)


def cpu_config(count: int) -> pb.ModelConfig:
    config = pb.ModelConfig()
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=count)
    return config


def test_a_ready_model_shows_its_version_device_and_desired_state(
    deployment: Any, fake_triton: Any, tmp_path: Path
) -> None:
    server = fake_triton(A)
    server.entries = {"alpha": IndexEntry("alpha", "1", "READY")}
    server.configs = {"alpha": cpu_config(2)}
    registry = Registry(deployment.state)
    registry.set_desired("alpha", Desired.ACTIVE)
    registry.transition("alpha", A, State.LOADING)
    registry.transition("alpha", A, State.READY)
    report = report_of(deployment, [server], tmp_path)
    rows = {row.model: row for row in report.rows}
    assert sorted(rows) == ["alpha", "beta"]  # every spec, loaded or not
    assert rows["alpha"] == StatusRow(A, "alpha", 1, "ACTIVE", "READY", "READY", "KIND_CPU x2", "-", "")
    assert rows["beta"] == StatusRow(A, "beta", 2, "-", None, None, "-", "-", "")
    assert report.exit_code is ExitCode.OK
    assert report.to_json() == {
        "profile": "cpu",
        "models": [row.to_json() for row in report.rows],
        "servers": {A: {"reachable": True, "error": None}},
    }
    columns = ["server", "model", "version", "desired", "state", "triton", "device", "breaker", "error"]
    assert list(report.to_json()["models"][0]) == columns  # the JSON keys, in the order people read them


def test_the_error_is_the_first_line_of_the_latest_failure_at_most_200_characters(
    deployment: Any, fake_triton: Any, tmp_path: Path
) -> None:
    server = fake_triton(A)
    server.entries = {
        "alpha": IndexEntry("alpha", "1", "UNAVAILABLE", "  load failed: " + "x" * 300 + "\ntraceback..."),
        "beta": IndexEntry("beta", "2", "UNAVAILABLE", "unloaded"),
    }
    registry = Registry(deployment.state)
    registry.transition("beta", A, State.LOADING)
    registry.transition("beta", A, State.FAILED, reason="Internal: no weights")
    rows = {row.model: row for row in report_of(deployment, [server], tmp_path).rows}
    assert rows["alpha"].error == ("load failed: " + "x" * 300)[:200]
    assert rows["beta"].error == "Internal: no weights"  # the registry's reason wins over Triton's "unloaded"
    assert rows["beta"].state == "FAILED" and rows["beta"].device == "-"


def test_an_unreachable_server_has_rows_that_say_so_and_exits_4(
    deployment: Any, fake_triton: Any, tmp_path: Path
) -> None:
    up, down = fake_triton(A), fake_triton(B)
    up.entries = {"alpha": IndexEntry("alpha", "1", "READY")}
    down.unreachable = True
    report = report_of(deployment, [up, down], tmp_path)
    assert [(row.server, row.model) for row in report.rows] == [(A, "alpha"), (A, "beta"), (B, "alpha"), (B, "beta")]
    assert {row.triton for row in report.rows if row.server == B} == {"UNREACHABLE"}
    assert report.exit_code is ExitCode.UNREACHABLE
    servers = report.to_json()["servers"]
    assert servers[A] == {"reachable": True, "error": None}
    assert servers[B]["reachable"] is False and "connection refused" in servers[B]["error"]
