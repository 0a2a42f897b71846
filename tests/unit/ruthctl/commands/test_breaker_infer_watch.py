"""`ruthctl breaker list|reset`, `infer` and `watch` through the CLI."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from ruthctl.registry import Desired, Registry


def trip(state: Path, model: str, version: int) -> None:
    from python_backends.breaker import BreakerPolicy, CircuitBreaker
    from python_backends.breaker_storage import FileBreakerStorage

    breaker = CircuitBreaker(
        f"{model}:{version}",
        BreakerPolicy(failure_threshold=1),
        FileBreakerStorage(state / "breakers" / f"{model}-{version}.json"),
    )
    breaker.record_failure(breaker.admit())


def test_breaker_list_shows_state_and_time_to_retry(cli: Any, deployment: Any) -> None:
    assert json.loads(cli("breaker", "list", "--json").stdout)["breakers"] == []
    trip(deployment.state, "alpha", 1)
    result = cli("breaker", "list")
    assert result.exit_code == 0 and "alpha" in result.stdout and "open" in result.stdout
    [row] = json.loads(cli("breaker", "list", "--json").stdout)["breakers"]
    assert (row["model"], row["version"], row["state"], row["total_trips"]) == ("alpha", 1, "open", 1)
    assert 0 < row["retry_in_s"] <= 30


def test_breaker_reset_closes_it_for_every_process(cli: Any, deployment: Any) -> None:
    trip(deployment.state, "alpha", 1)
    trip(deployment.state, "beta", 2)
    result = cli("breaker", "reset", "alpha:1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"reset": [{"model": "alpha", "version": 1, "was": "open", "now": "closed"}]}
    states = {r["model"]: r["state"] for r in json.loads(cli("breaker", "list", "--json").stdout)["breakers"]}
    assert states == {"alpha": "closed", "beta": "open"}
    assert "beta v2: open -> closed" in cli("breaker", "reset", "--all").stdout


@pytest.mark.parametrize(("args", "code"), [([], 2), (["alpha", "--all"], 2), (["nosuch"], 1)])
def test_breaker_reset_refuses_unclear_requests(cli: Any, args: list[str], code: int) -> None:
    assert cli("breaker", "reset", *args).exit_code == code


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_infer_against_nothing_exits_4(cli: Any, tmp_path: Path) -> None:
    image = tmp_path / "x.jpg"
    image.write_bytes(b"\xff\xd8")
    result = cli("infer", "alpha", str(image), url=dead_url())
    assert result.exit_code == 4 and "ServerUnreachable" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [["--config", "{not json"], ["--config", "[1]"], ["--metadata", "3"], ["--protocol", "ftp"]],
)
def test_infer_refuses_bad_options_with_exit_2(cli: Any, tmp_path: Path, args: list[str]) -> None:
    image = tmp_path / "x.jpg"
    image.write_bytes(b"\xff\xd8")
    assert cli("infer", "alpha", str(image), *args).exit_code == 2


def test_infer_of_a_missing_file_exits_2(cli: Any, tmp_path: Path) -> None:
    assert cli("infer", "alpha", str(tmp_path / "none.jpg")).exit_code == 2


def test_infer_prints_the_result_document_from_the_apps_client(cli: Any, tmp_path: Path, wiring: Any) -> None:
    from ruthctl.app import Services
    from ruthctl.triton_client import Endpoint

    seen: dict[str, Any] = {}

    class FakeClient:
        def __init__(self, endpoint: Endpoint, *, timeout_s: float) -> None:
            seen.update(endpoint=str(endpoint), transport=endpoint.transport.value, timeout_s=timeout_s)

        def infer(self, model: str, **kwargs: Any) -> dict[str, Any]:
            seen.update(kwargs, model=model)
            return {"violation_detected": False}

        def close(self) -> None:
            seen["closed"] = True

    wiring.services = Services(infer_client_factory=FakeClient)
    image = tmp_path / "x.jpg"
    image.write_bytes(b"\xff\xd8")
    result = cli(
        "infer", "alpha", str(image), "--stream-id", "cam", "--config", '{"a": 1}', "--timeout", "7",
        url="grpc://127.0.0.1:1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"violation_detected": False}
    got = (seen["model"], seen["transport"], seen["stream_id"], seen["config"], seen["image"], seen["timeout_s"])
    assert got == ("alpha", "grpc", "cam", {"a": 1}, b"\xff\xd8", 7.0)
    assert seen["closed"] is True


def test_watch_runs_rounds_and_reports_each_as_a_json_line(
    cli: Any, deployment: Any, fake_triton: Any, with_fakes: Any
) -> None:
    server = fake_triton("127.0.0.1:8000")
    with_fakes([server])
    registry = Registry(deployment.state)
    registry.set_desired("alpha", Desired.ACTIVE)
    registry.set_desired("beta", Desired.INACTIVE)
    result = cli("watch", "--iterations", "2", "--interval", "0", "--metrics-port", "0", "--json", url="127.0.0.1:8000")
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert [(a["kind"], a["model"], a["ok"]) for a in first["actions"]] == [("load", "alpha", True)]
    assert second["actions"] == [] and second["violations"] == []
    assert server.entries["alpha"].ready


def test_watch_refuses_a_bad_policy(cli: Any) -> None:
    assert cli("watch", "--max-attempts", "0", "--iterations", "1", "--metrics-port", "0").exit_code == 2
