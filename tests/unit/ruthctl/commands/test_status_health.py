"""`ruthctl status` and `health` through the CLI (fake Triton); health exits 0/1/5."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ruthctl.registry import Desired, Registry
from ruthctl.triton_client import IndexEntry

S = "127.0.0.1:8000"


@pytest.fixture
def triton(fake_triton: Any, with_fakes: Any, cli: Any) -> Any:
    server = fake_triton(S)
    with_fakes([server])
    assert cli("activate", "alpha", url=S).exit_code == 0
    return server


def test_status_shows_desired_actual_version_and_device(cli: Any, triton: Any) -> None:
    result = cli("status", url=S)
    assert result.exit_code == 0, result.output
    assert "alpha" in result.stdout and "KIND_CPU x2" in result.stdout
    rows = {r["model"]: r for r in json.loads(cli("status", "--json", url=S).stdout)["models"]}
    assert rows["alpha"] | {"server": S} == {
        "server": S,
        "model": "alpha",
        "version": 1,
        "desired": "ACTIVE",
        "state": "READY",
        "triton": "READY",
        "device": "KIND_CPU x2",
        "breaker": "-",
        "error": "",
    }
    assert rows["beta"]["desired"] == "-" and rows["beta"]["triton"] is None


def test_status_shows_the_reason_of_a_failure(cli: Any, triton: Any) -> None:
    triton.fail_load["beta"] = "Internal: no weights"
    cli("activate", "beta", url=S)
    rows = {r["model"]: r for r in json.loads(cli("status", "--json", url=S).stdout)["models"]}
    assert rows["beta"]["state"] == "FAILED" and rows["beta"]["error"] == "Internal: no weights"


def test_status_of_an_unreachable_server_exits_4(cli: Any, triton: Any) -> None:
    triton.unreachable = True
    result = cli("status", "--json", url=S)
    assert result.exit_code == 4
    assert json.loads(result.stdout)["servers"][S]["reachable"] is False


def test_health_is_healthy_when_every_wanted_model_is_ready(cli: Any, triton: Any) -> None:
    result = cli("health", url=S)
    assert result.exit_code == 0, result.output
    assert "healthy" in result.stdout
    document = json.loads(cli("health", "--json", url=S).stdout)
    assert document["status"] == "healthy"
    assert [m["model"] for m in document["servers"][0]["models"]] == ["alpha"]


def test_an_open_breaker_or_a_sick_gauge_is_degraded(cli: Any, deployment: Any, triton: Any) -> None:
    from python_backends.breaker import BreakerPolicy, CircuitBreaker
    from python_backends.breaker_storage import FileBreakerStorage

    breaker = CircuitBreaker(
        "alpha:1",
        BreakerPolicy(failure_threshold=1),
        FileBreakerStorage(deployment.state / "breakers" / "alpha-1.json"),
    )
    breaker.record_failure(breaker.admit())
    result = cli("health", "--json", url=S)
    assert result.exit_code == 1
    assert "alpha: breaker open" in json.loads(result.stdout)["servers"][0]["problems"]
    breaker.reset()
    triton.metrics_text = 'ruth_zombie_threads{model="alpha",version="1",instance="alpha_0_0"} 2\n'
    assert cli("health", url=S).exit_code == 1


def test_a_wanted_model_that_is_down_is_degraded_and_all_down_is_unhealthy(
    cli: Any, deployment: Any, triton: Any
) -> None:
    Registry(deployment.state).set_desired("beta", Desired.ACTIVE)
    assert cli("health", url=S).exit_code == 1
    triton.entries["alpha"] = IndexEntry("alpha", "1", "UNAVAILABLE", "unloaded")
    assert cli("health", url=S).exit_code == 5  # ExitCode.UNHEALTHY (was 2, the usage code)


def test_an_unreachable_server_is_unhealthy(cli: Any, triton: Any) -> None:
    triton.unreachable = True
    result = cli("health", "--json", url=S)
    assert result.exit_code == 5 and json.loads(result.stdout)["status"] == "unhealthy"
