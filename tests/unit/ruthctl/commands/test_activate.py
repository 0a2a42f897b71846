"""`ruthctl activate` / `deactivate` through the CLI (fake Triton: the real one is in the integration tests)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ruthctl.registry import Desired, Registry, State

S = "127.0.0.1:8000"


@pytest.fixture
def triton(fake_triton: Any, with_fakes: Any) -> Any:
    server = fake_triton(S)
    with_fakes([server])
    return server


def registry(deployment: Any) -> Registry:
    return Registry(deployment.state)


def test_activate_loads_with_the_rendered_config_and_records_ready(cli: Any, deployment: Any, triton: Any) -> None:
    result = cli("activate", "alpha", url=S)
    assert result.exit_code == 0, result.output
    assert "READY" in result.stdout
    assert triton.entries["alpha"].ready and triton.configs["alpha"].instance_group[0].count == 2
    entry = registry(deployment).get("alpha")
    assert entry is not None and entry.desired is Desired.ACTIVE and entry.on(S).state is State.READY
    audit = registry(deployment).audit("alpha")
    assert all("ruthctl activate alpha" in a.actor for a in audit)


def test_activate_json_and_a_second_activate_is_a_no_op(cli: Any, triton: Any) -> None:
    first = json.loads(cli("activate", "alpha:1", "--json", url=S).stdout)
    assert first == {
        "model": "alpha",
        "version": 1,
        "servers": [{"server": S, "state": "READY", "detail": "READY at v1"}],
    }
    second = cli("activate", "alpha", "--json", url=S)
    assert second.exit_code == 0
    assert json.loads(second.stdout)["servers"][0]["detail"] == "already active with this config"
    assert triton.calls.count(("load", "alpha")) == 1


def test_a_failed_activation_exits_1_rolls_back_and_restores_the_desired_state(
    cli: Any, deployment: Any, triton: Any
) -> None:
    triton.fail_load["alpha"] = "Internal: RuntimeError: probe: weights file missing"
    result = cli("activate", "alpha", "--json", url=S)
    assert result.exit_code == 1
    [row] = json.loads(result.stdout)["servers"]
    assert row["state"] == "FAILED" and "probe: weights file missing" in row["detail"]
    assert ("unload", "alpha") in triton.calls
    entry = registry(deployment).get("alpha")
    assert entry is not None and entry.desired is Desired.INACTIVE and entry.on(S).state is State.FAILED


def test_parameter_overrides_reach_the_loaded_config(cli: Any, triton: Any) -> None:
    result = cli("activate", "alpha", "--set", "ruth.fault.fail_rate=0.25", url=S)
    assert result.exit_code == 0, result.output
    assert triton.configs["alpha"].parameters["ruth.fault.fail_rate"].string_value == "0.25"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["alpha:x"], 2, "the version must be a number"),
        (["alpha", "--set", "model.threshold=1"], 2, "KEY under ruth.fault."),
        (["nosuch"], 1, "no spec for nosuch"),
        (["alpha:7"], 1, "no version directory"),
    ],
)
def test_bad_requests_are_refused_before_any_server_is_asked(
    cli: Any, triton: Any, args: list[str], code: int, message: str
) -> None:
    result = cli("activate", *args, url=S)
    assert result.exit_code == code and message in result.stderr
    assert not [c for c in triton.calls if c[0] == "load"]


def test_activate_refuses_when_the_generated_files_are_stale(cli: Any, deployment: Any, triton: Any) -> None:
    config = deployment.repository / "alpha" / "config.pbtxt"
    config.write_text(config.read_text().replace("count: 2", "count: 1"))
    result = cli("activate", "alpha", url=S)
    assert result.exit_code == 3 and "run `ruthctl generate`" in result.stderr


def test_activate_refuses_corrupt_weights(cli: Any, deployment: Any, triton: Any) -> None:
    (deployment.weights / "alpha" / "weights.bin").write_bytes(b"tampered")
    result = cli("activate", "alpha", url=S)
    assert result.exit_code == 1 and "the spec wants" in result.stderr


def test_an_unreachable_server_exits_4(cli: Any, triton: Any) -> None:
    triton.unreachable = True
    result = cli("activate", "alpha", "--json", url=S)
    assert result.exit_code == 4
    assert json.loads(result.stdout)["servers"][0]["state"] == "FAILED"


def test_a_fleet_activation_reports_each_server(cli: Any, deployment: Any, fake_triton: Any, with_fakes: Any) -> None:
    good, bad = fake_triton("127.0.0.1:8000"), fake_triton("127.0.0.1:9000")
    bad.fail_load["alpha"] = "out of memory"
    with_fakes([good, bad])
    result = cli("activate", "alpha", "--json", url="127.0.0.1:8000,127.0.0.1:9000")
    assert result.exit_code == 1
    rows = {r["server"]: r["state"] for r in json.loads(result.stdout)["servers"]}
    assert rows == {"127.0.0.1:8000": "READY", "127.0.0.1:9000": "FAILED"}
    assert registry(deployment).get("alpha").desired is Desired.ACTIVE  # type: ignore[union-attr]


def test_deactivate_unloads_and_records_unloaded(cli: Any, deployment: Any, triton: Any) -> None:
    cli("activate", "alpha", url=S)
    result = cli("deactivate", "alpha", url=S)
    assert result.exit_code == 0, result.output
    assert "UNLOADED" in result.stdout
    assert not triton.entries["alpha"].ready
    entry = registry(deployment).get("alpha")
    assert entry is not None and entry.desired is Desired.INACTIVE and entry.on(S).state is State.UNLOADED
    again = json.loads(cli("deactivate", "alpha", "--json", url=S).stdout)
    assert again["servers"][0]["detail"] == "not loaded"


def test_deactivate_refuses_a_model_being_loaded(cli: Any, deployment: Any, triton: Any) -> None:
    registry(deployment).transition("alpha", S, State.LOADING)
    result = cli("deactivate", "alpha", "--json", url=S)
    assert result.exit_code == 1 and "being loaded" in json.loads(result.stdout)["servers"][0]["detail"]


def test_deactivate_on_an_unreachable_server_exits_4(cli: Any, deployment: Any, triton: Any) -> None:
    cli("activate", "alpha", url=S)
    triton.unreachable = True
    assert cli("deactivate", "alpha", url=S).exit_code == 4
