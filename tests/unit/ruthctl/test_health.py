"""The health roll-up as functions returning a typed report (no CLI): per model, per server, over the fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ruthctl.health import Health, HealthReport, ModelHealth, ServerHealth, fleet_health
from ruthctl.procs import ProcessTable
from ruthctl.reconcile import Reconciler
from ruthctl.registry import Desired, Registry
from ruthctl.settings import Profile
from ruthctl.triton_client import IndexEntry

A, B = "127.0.0.1:8000", "127.0.0.1:9000"


def check(deployment: Any, fakes: list[Any], tmp_path: Path) -> HealthReport:
    rec = Reconciler(
        deployment.paths(), Profile.CPU, Registry(deployment.state), fakes, processes=ProcessTable(tmp_path / "np")
    )
    return fleet_health(rec, fakes)


@pytest.fixture
def wanted(deployment: Any) -> None:
    registry = Registry(deployment.state)
    registry.set_desired("alpha", Desired.ACTIVE)
    registry.set_desired("beta", Desired.ACTIVE)


def test_every_wanted_model_ready_is_healthy(deployment: Any, fake_triton: Any, tmp_path: Path, wanted: None) -> None:
    server = fake_triton(A)
    server.entries = {n: IndexEntry(n, v, "READY") for n, v in (("alpha", "1"), ("beta", "2"))}
    report = check(deployment, [server], tmp_path)
    assert report.status is Health.HEALTHY and report.servers[0].problems == []
    assert [m.model for m in report.servers[0].models] == ["alpha", "beta"]
    assert report.to_json()["status"] == "healthy"


def test_one_wanted_model_down_is_degraded_all_down_is_unhealthy(
    deployment: Any, fake_triton: Any, tmp_path: Path, wanted: None
) -> None:
    server = fake_triton(A)
    server.entries = {"alpha": IndexEntry("alpha", "1", "READY"), "beta": IndexEntry("beta", "2", "UNAVAILABLE", "x")}
    report = check(deployment, [server], tmp_path)
    assert report.status is Health.DEGRADED
    assert report.servers[0].problems == ["beta: not ready (UNAVAILABLE x)"]
    server.entries["alpha"] = IndexEntry("alpha", "1", "UNAVAILABLE", "unloaded")
    assert check(deployment, [server], tmp_path).status is Health.UNHEALTHY


def test_the_fleet_is_as_healthy_as_its_worst_server(
    deployment: Any, fake_triton: Any, tmp_path: Path, wanted: None
) -> None:
    up, down = fake_triton(A), fake_triton(B)
    up.entries = {n: IndexEntry(n, v, "READY") for n, v in (("alpha", "1"), ("beta", "2"))}
    down.unreachable = True
    report = check(deployment, [up, down], tmp_path)
    assert [s.status for s in report.servers] == [Health.HEALTHY, Health.UNHEALTHY]
    assert report.status is Health.UNHEALTHY and "connection refused" in report.servers[1].problems[0]
    assert HealthReport([]).status is Health.UNHEALTHY


@pytest.mark.parametrize(
    ("model", "problems"),
    [
        (ModelHealth("m", True, None, 0.0, None, None), []),
        (ModelHealth("m", True, "open", 0.0, None, None), ["breaker open"]),
        (ModelHealth("m", True, "half_open", 0.0, 1.0, (2, 2)), ["breaker half_open"]),
        (ModelHealth("m", True, "closed", 2.0, None, None), ["2 zombie inference(s)"]),
        (ModelHealth("m", True, None, 0.0, -1.0, (1, 2)), ["1/2 stubs alive", "health gauge -1"]),
        (ModelHealth("m", False, None, 0.0, None, None), ["not ready"]),
    ],
)
def test_each_model_problem_is_named(model: ModelHealth, problems: list[str]) -> None:
    assert model.problems() == problems


def test_the_json_shape_is_what_probes_read() -> None:
    server = ServerHealth(A, Health.DEGRADED, True, False, [ModelHealth("m", True, "open", 0.0, None, (1, 1))], ["x"])
    assert server.to_json() == {
        "server": A,
        "live": True,
        "server_ready": False,
        "models": [
            {
                "model": "m",
                "ready": True,
                "breaker": "open",
                "zombies": 0.0,
                "health": None,
                "stubs": {"alive": 1, "expected": 1},
            }
        ],
        "problems": ["x"],
        "status": "degraded",
    }
