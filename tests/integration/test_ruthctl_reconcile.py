"""ruthctl against real tritonservers: activation, rollback, every invariant broken for real and repaired, zombie
recovery by `watch`, concurrent activations, the admin token, a fleet of two, and the rate limiter.

One server is shared by the module (each test leaves it as it found it); the fleet and rate-limit tests start
their own. The deployment (tiny plain-Python models `sleepy`, `brittle`, `spare` besides the real tank model) and
the fixtures are in tests/reconcile_support.py.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from plain_model_support import WEIGHTS
from reconcile_support import TANK, World, infer_all, stub_pids
from support import TritonHandle, jpeg, tank_frame

pytestmark = pytest.mark.integration


# -- activation ---------------------------------------------------------------------------------------------------
def test_activate_and_deactivate_round_trip_with_the_audit_log(world: World) -> None:
    world.ruthctl("deactivate", "sleepy")
    start = len(world.registry().audit("sleepy"))
    result = world.ruthctl("activate", "sleepy")
    assert result.exit_code == 0, result.output
    assert world.triton_state("sleepy") == "READY" and world.state("sleepy") == "READY"
    assert world.server.model_config("sleepy")["instance_group"][0]["count"] == 2
    assert {r["metadata"]["instance"] for r in infer_all(world.url, "sleepy", 6)} <= {"sleepy_0_0", "sleepy_0_1"}
    assert infer_all(world.server.grpc_url, "sleepy", 1, "grpc")[0]["metadata"]["stream_id"] == "s0"

    result = world.ruthctl("deactivate", "sleepy")
    assert result.exit_code == 0, result.output
    assert world.triton_state("sleepy") == "UNAVAILABLE" and world.state("sleepy") == "UNLOADED"
    audit = [a for a in world.registry().audit("sleepy")[start:] if a.event == "transition"]
    assert [(a.from_state, a.to_state) for a in audit] == [
        ("UNLOADED", "LOADING"),
        ("LOADING", "READY"),
        ("READY", "UNLOADING"),
        ("UNLOADING", "UNLOADED"),
    ]
    assert "ruthctl activate sleepy" in audit[0].actor and "ruthctl deactivate sleepy" in audit[-1].actor
    assert audit[0].actor.split(" pid ")[0].count("@") == 1
    world.ensure_active("sleepy")


def test_a_failed_activation_rolls_back_with_tritons_reason(world: World) -> None:
    result = world.ruthctl("activate", "brittle", "--json")
    assert result.exit_code == 1, result.output
    [row] = json.loads(result.stdout)["servers"]
    assert row["state"] == "FAILED" and "probe: weights file missing" in row["detail"]
    entry = world.registry().get("brittle")
    assert entry.desired.value == "INACTIVE"
    assert entry.on(world.url).state.value == "FAILED" and "probe: weights file missing" in entry.on(world.url).reason
    assert world.triton_state("brittle") != "READY"
    status = {r["model"]: r for r in world.json("status")["models"]}
    assert "probe: weights file missing" in status["brittle"]["error"]
    assert ("not_ready", "brittle") not in world.violations()


def test_the_real_tank_model_activates_and_answers_through_ruthctl_infer(world: World, tmp_path: Path) -> None:
    assert world.ruthctl("activate", TANK).exit_code == 0
    image = tmp_path / "tank.jpg"
    image.write_bytes(jpeg(tank_frame(40.0)))
    try:
        for url in (world.url, f"grpc://{world.server.grpc_url}"):
            result = world.ruthctl(
                "infer", TANK, str(image), "--stream-id", "3f1c2a9e-8d5b-4c1e-9a7f-2b6d8e0c4a11", urls=(url,)
            )
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout)["level_percent"] == pytest.approx(40.0, abs=2.0)
        bad = world.ruthctl("infer", TANK, str(image), "--stream-id", "not-a-uuid")
        assert bad.exit_code == 1 and "InvalidInput" in bad.stderr
        health = world.json("health")
        assert health["status"] == "healthy"
        assert {m["model"]: m["stubs"] for m in health["servers"][0]["models"]}[TANK] == {"alive": 2, "expected": 2}
    finally:
        assert world.ruthctl("deactivate", TANK).exit_code == 0


# -- every invariant, broken for real ------------------------------------------------------------------------------
def test_a_model_unloaded_behind_ruthctls_back_is_reloaded(clean: World) -> None:
    clean.server.unload("sleepy")
    clean.server.wait_state("sleepy", "UNAVAILABLE")
    assert clean.violations() == [("not_ready", "sleepy")]
    assert [a["kind"] for a in clean.repair_until_clean()["results"]] == ["load"]
    assert clean.triton_state("sleepy") == "READY"


def test_an_edited_config_file_is_regenerated(clean: World) -> None:
    config = clean.deployment.repository / "sleepy" / "configs" / "cpu.pbtxt"
    original = config.read_text()
    config.write_text(original.replace("count: 2", "count: 3"))
    assert clean.violations() == [("disk_drift", "sleepy")]
    clean.repair_until_clean()
    assert config.read_text() == original


def test_a_live_config_that_differs_from_the_spec_is_reloaded(clean: World) -> None:
    live = clean.server.model_config("sleepy")
    live["instance_group"][0]["count"] = 1
    clean.server.load("sleepy", config=live)
    # Triton updates the instances in place and keeps whichever it likes (docs/triton-notes.md §8.1); the retired
    # one's stub may still be exiting for a moment (a stub_orphan); the drift is what must remain
    deadline = time.monotonic() + 15
    while (found := clean.violations()) != [("live_drift", "sleepy")] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert found == [("live_drift", "sleepy")]
    clean.repair_until_clean()
    assert clean.server.model_config("sleepy")["instance_group"][0]["count"] == 2


def test_a_corrupt_weight_file_is_reported_as_unfixable(clean: World) -> None:
    weight = clean.deployment.weights / "sleepy" / "net.bin"
    weight.write_bytes(b"flipped bits")
    try:
        assert ("weight_corrupt", "sleepy") in clean.violations()
        result = clean.ruthctl("repair", "--json")
        assert result.exit_code == 1
        [remaining] = [v for v in json.loads(result.stdout)["remaining"] if v["kind"] == "weight_corrupt"]
        assert remaining["fixable"] is False and "writes it" in remaining["fix"]
        assert clean.ruthctl("activate", "spare").exit_code == 0  # other models are unaffected
        assert clean.ruthctl("deactivate", "spare").exit_code == 0
    finally:
        weight.write_bytes(WEIGHTS)


def test_a_killed_stub_process_is_found_and_its_model_reloaded(clean: World) -> None:
    pids = stub_pids(clean.server, "sleepy")
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while len(stub_pids(clean.server, "sleepy")) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert clean.triton_state("sleepy") == "READY"  # Triton itself doesn't notice (2.51)
    assert clean.violations() == [("stub_dead", "sleepy")]
    assert clean.json("health", code=1)["status"] == "degraded"
    clean.repair_until_clean()
    assert len(stub_pids(clean.server, "sleepy")) == 2
    assert len(infer_all(clean.url, "sleepy", 8)) == 8  # no "Stub process ... is not healthy" any more


def test_a_stale_gpu_ledger_entry_is_reaped(clean: World) -> None:
    ledger = clean.deployment.state / "gpu-ledger.json"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    entry = {
        "owner": "sleepy_0_9",
        "pid": int(dead.stdout),
        "device_index": 0,
        "bytes": 1 << 20,
        "model": "sleepy",
        "version": "1",
        "instance": "sleepy_0_9",
        "created_at": time.time(),
        "token": None,
    }
    ledger.write_text(json.dumps({"reservations": {"sleepy_0_9": entry}}))
    assert clean.violations() == [("ledger_stale", "sleepy")]
    clean.repair_until_clean()
    assert json.loads(ledger.read_text())["reservations"] == {}


def test_breaker_state_of_an_unknown_model_is_removed(clean: World) -> None:
    orphan = clean.deployment.state / "breakers" / "retired_model-3.json"
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_text(json.dumps({"state": "open", "retry_at": 1.0, "schema": 1}))
    assert clean.violations() == [("breaker_orphan", "retired_model")]
    clean.repair_until_clean()
    assert not orphan.exists()


def test_a_model_loaded_that_nobody_wants_is_unloaded(clean: World) -> None:
    clean.server.load("spare")
    assert clean.violations() == [("unwanted", "spare")]
    clean.repair_until_clean()
    assert clean.triton_state("spare") != "READY"


def test_a_claim_left_by_a_dead_process_is_resolved(clean: World) -> None:
    from ruthctl.registry import Registry, State

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    ghost = Registry(clean.deployment.state, actor=f"ghost@{socket.gethostname()} pid {dead.stdout.strip()}: x")
    ghost.transition("sleepy", clean.url, State.LOADING, reason="crashed mid-activate")
    assert clean.violations() == [("stuck", "sleepy")]
    clean.repair_until_clean()
    assert clean.state("sleepy") == "READY"


def test_a_damaged_registry_is_rebuilt_from_its_audit_log(clean: World) -> None:
    registry = clean.registry()
    registry.path.write_text('{"schema_version": 1, "models": {"sleepy": {"desired": "MAYBE"')
    assert clean.violations() == [("registry_corrupt", None)]
    clean.repair_until_clean()
    assert clean.state("sleepy") == "READY" and registry.read().models["sleepy"].desired.value == "ACTIVE"


# -- watch -----------------------------------------------------------------------------------------------------------
def test_watch_brings_a_killed_stubs_model_back_without_an_operator(clean: World) -> None:
    os.kill(stub_pids(clean.server, "sleepy")[1], signal.SIGKILL)
    time.sleep(0.5)
    result = clean.ruthctl("watch", "--iterations", "2", "--interval", "0", "--metrics-port", "0", "--json")
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert [(a["kind"], a["ok"], a["causes"]) for a in first["actions"]] == [("load", True, ["stub_dead"])]
    assert second["violations"] == []
    assert len(stub_pids(clean.server, "sleepy")) == 2
    assert clean.registry().get("sleepy").on(clean.url).recoveries == 1
    assert len(infer_all(clean.url, "sleepy", 8)) == 8


def test_watch_restarts_a_model_whose_zombies_crossed_its_limit(clean: World) -> None:
    """`hangy` is the tank model with every request hanging 4 s past a 300 ms deadline (fault injection): each
    answer comes at the deadline and leaves a zombie; at 2 zombies the model reports itself unhealthy while its
    breaker (threshold 20) is still closed."""
    from ruthctl.client import ModelUnavailable, RuthClient

    result = clean.ruthctl("activate", "hangy", "--set", "ruth.fault.hang_rate=1", "--set", "ruth.fault.hang_s=4")
    assert result.exit_code == 0, result.output
    try:
        frame = jpeg(tank_frame(50.0))
        with RuthClient(clean.url) as client:
            for _ in range(3):
                with pytest.raises(ModelUnavailable, match="deadline"):
                    client.infer("hangy", image=frame, stream_id="3f1c2a9e-8d5b-4c1e-9a7f-2b6d8e0c4a11")
        assert clean.violations() == [("hung", "hangy")]
        assert clean.json("health", code=1)["status"] == "degraded"
        watched = clean.ruthctl("watch", "--iterations", "1", "--interval", "0", "--metrics-port", "0", "--json")
        assert watched.exit_code == 0, watched.output
        [action] = json.loads(watched.stdout)["actions"]
        assert (action["kind"], action["model"], action["causes"], action["ok"]) == ("load", "hangy", ["hung"], True)
        assert clean.violations() == []  # the new process starts healthy, with its breaker still closed
    finally:
        assert clean.ruthctl("deactivate", "hangy").exit_code == 0


# -- concurrency and access ------------------------------------------------------------------------------------------
def test_two_concurrent_activates_leave_a_consistent_registry(world: World) -> None:
    assert world.ruthctl("deactivate", "spare").exit_code == 0
    start = len(world.registry().audit("spare"))
    env = {**os.environ, **world.deployment.env(world.cli_url)}
    command = [sys.executable, "-m", "ruthctl", "activate", "spare", "--json"]
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outcomes = [(run.wait(60), run.communicate()) for run in runs]
    codes = sorted(code for code, _ in outcomes)
    assert codes in ([0, 0], [0, 1]), outcomes
    for code, (stdout, _) in outcomes:
        if code == 1:
            assert "refused" in stdout and "LOADING" in stdout
    assert world.triton_state("spare") == "READY"
    entry = world.registry().get("spare")
    assert entry.desired.value == "ACTIVE" and entry.on(world.url).state.value == "READY"
    chain = [(a.from_state, a.to_state) for a in world.registry().audit("spare")[start:] if a.event == "transition"]
    assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(chain)), chain
    assert world.ruthctl("deactivate", "spare").exit_code == 0


def test_the_repository_api_refuses_a_request_without_the_key(world: World) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    with contextlib.closing(httpclient.InferenceServerClient(world.url)) as client:
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("spare")
        assert refused.value.status() == "403"
        with pytest.raises(InferenceServerException):
            client.unload_model("sleepy", headers={"ruth-admin-token": "guessed"})
    with contextlib.closing(grpcclient.InferenceServerClient(world.server.grpc_url)) as grpc_client:
        with pytest.raises(InferenceServerException, match="restricted"):
            grpc_client.unload_model("sleepy")
    assert world.triton_state("sleepy") == "READY" and world.triton_state("spare") != "READY"
    result = world.ruthctl("verify", "--json", token="guessed")
    assert result.exit_code == 1
    assert [v["kind"] for v in json.loads(result.stdout)["violations"]] == ["access_denied"]
    assert world.ruthctl("deactivate", "sleepy", token="guessed").exit_code == 1
    assert world.triton_state("sleepy") == "READY"


# -- fleet -----------------------------------------------------------------------------------------------------------
def test_fleet_verify_and_repair_over_two_local_servers(world: World, triton_factory: Any) -> None:
    second = triton_factory([], repository=world.deployment.repository, state_dir=world.deployment.state)
    fleet = (world.cli_url, f"grpc://{second.grpc_url}?metrics={second.server.flags.metrics_port}")
    try:
        activated = world.json("activate", "sleepy", urls=fleet)
        assert [r["state"] for r in activated["servers"]] == ["READY", "READY"]
        assert world.json("verify", urls=fleet)["ok"] is True
        second.unload("sleepy")
        second.wait_state("sleepy", "UNAVAILABLE")
        document = world.json("verify", urls=fleet, code=1)
        assert [(v["kind"], v["model"], v["server"]) for v in document["violations"]] == [
            ("not_ready", "sleepy", f"grpc://{second.grpc_url}")
        ]
        world.repair_until_clean(urls=fleet)
        assert world.triton_state("sleepy", second) == "READY"
        status = world.json("status", urls=fleet)
        assert {(r["server"], r["triton"]) for r in status["models"] if r["model"] == "sleepy"} == {
            (world.url, "READY"),
            (f"grpc://{second.grpc_url}", "READY"),
        }
    finally:
        world.ruthctl("deactivate", "sleepy", urls=(f"grpc://{second.grpc_url}",))


# -- MAX_CONCURRENT_INFERENCES through Triton's rate limiter --------------------------------------------------------
def test_the_rate_limiter_bounds_concurrent_executions_across_instances(world: World, tmp_path: Path) -> None:
    """With `--rate-limit=execution_count --rate-limit-resource=ruth_inference:1`, two instances of a vision
    model (each needing one global `ruth_inference` token, as rendered) run one request at a time."""
    import dataclasses as dc

    from support import free_port

    from ruthctl.settings import Settings
    from ruthctl.supervise import build_server

    config = world.server.model_config("sleepy")
    sleep_s = 1.5  # long against the per-request overhead, which grows on a loaded CI machine
    config["parameters"]["model.sleep_s"] = {"string_value": str(sleep_s)}

    def timed(handle_url: str) -> float:
        started = time.monotonic()
        infer_all(handle_url, "sleepy", 4)
        return time.monotonic() - started

    settings = Settings(  # type: ignore[call-arg]
        models_root=world.deployment.repository,
        ruth_state_dir=tmp_path / "state",
        ruth_http_port=free_port(),
        ruth_grpc_port=free_port(),
        ruth_metrics_port=free_port(),
        graceful_shutdown_timeout_seconds=10,
    )
    server = build_server(settings, log_file=tmp_path / "limited.log")
    server.flags = dc.replace(
        server.flags, extra=("--rate-limit=execution_count", "--rate-limit-resource=ruth_inference:1")
    )
    server.start()
    handle = TritonHandle(
        server,
        tmp_path / "state",
        world.deployment.repository,
        tmp_path / "limited.log",
        server.flags.admin_token or "",
    )
    try:
        server.wait_live(timeout_s=60)
        handle.load("sleepy", config=config)
        world.server.load("sleepy", config=config)
        unlimited, limited = timed(world.url), timed(handle.http_url)
    finally:
        server.stop(grace_s=20)
        world.repair_until_clean()
    # sleepy sleeps once per request and batches dynamically: without the limiter the two instances overlap, so 4
    # requests take 2 sleeps (1 + 3 when three of them form one batch, the worst case); with one token the instances
    # take turns and the 4 sleeps run one after the other
    assert limited >= 4 * sleep_s * 0.95
    assert unlimited < 3.7 * sleep_s
