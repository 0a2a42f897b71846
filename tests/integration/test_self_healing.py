"""Self-healing with the shipped settings, against a real tritonserver (issue 12, "What to build" 3 and 4).

- a hang (fault injection at 50 %, the tank model's shipped breaker/watchdog settings) is reported by `verify` as
  `hung` even though the breaker opened, and `watch` restarts the model;
- the breaker and health gauges follow the persisted state without traffic: after `ruthctl breaker reset` the
  server's /metrics shows the breaker closed within seconds, no request sent;
- recovery tolerates damage: audit-log lines it can't replay are skipped and counted (repair works, and the
  models `serve` would load are still known), and a breaker whose state file can't be written trips in memory.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import time
from typing import Any

import pytest
from reconcile_support import TANK, World, stub_pids
from support import jpeg, tank_frame

pytestmark = pytest.mark.integration

STREAM = "3f1c2a9e-8d5b-4c1e-9a7f-2b6d8e0c4a11"


def gauges(w: World) -> Any:
    from ruthctl.gauges import parse_health_gauges

    return parse_health_gauges(w.server.metrics_text()).get(TANK)


def send(w: World, n: int) -> list[str]:
    """`n` requests, 4 at a time; the outcome of each (ok, or the error's type)."""
    from ruthctl.client import RuthClient

    frame = jpeg(tank_frame(50.0))

    def one(_: int) -> str:
        try:
            with RuthClient(w.url) as client:
                client.infer(TANK, image=frame, stream_id=STREAM)
            return "ok"
        except Exception as exc:  # noqa: BLE001 - the outcome is what is counted
            return type(exc).__name__

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(n)))


def wait_for(predicate: Any, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not {what} after {timeout_s}s")
        time.sleep(0.25)
    return time.monotonic() - started


@pytest.fixture
def faulty(clean: World) -> Any:
    """The tank model with its shipped settings, plus the faults a test asks for; breaker state removed after."""

    def activate(*overrides: str) -> None:
        sets = [arg for item in overrides for arg in ("--set", item)]
        result = clean.ruthctl("activate", TANK, *sets)
        assert result.exit_code == 0, result.output

    yield activate
    clean.registry().set_desired(TANK, clean.registry().get(TANK).desired, overrides={})
    assert clean.ruthctl("deactivate", TANK).exit_code == 0
    for path in (clean.deployment.state / "breakers").glob(f"{TANK}-*"):
        path.unlink()


def test_a_hang_behind_an_open_breaker_is_reported_and_the_model_restarted(clean: World, faulty: Any) -> None:
    faulty("ruth.fault.hang_rate=0.5", "ruth.fault.hang_s=120")
    outcomes: list[str] = []
    while "BreakerOpen" not in "".join(outcomes) and len(outcomes) < 64:
        outcomes += send(clean, 8)
    breakers = {b["model"]: b for b in clean.json("breaker", "list")["breakers"]}
    assert breakers[TANK]["state"] == "open", outcomes  # the breaker opened, as it should
    wait_for(lambda: ("hung", TANK) in clean.violations(), 10, "reported hung")
    seen = gauges(clean)
    print(f"outcomes {sorted(set(outcomes))} x{len(outcomes)}; zombies {seen.zombies}; breaker {seen.breaker}")
    assert clean.json("verify", code=1)["ok"] is False

    watched = clean.ruthctl("watch", "--iterations", "1", "--interval", "0", "--metrics-port", "0", "--json")
    assert watched.exit_code == 0, watched.output
    actions = [(a["kind"], a["causes"], a["ok"]) for a in json.loads(watched.stdout)["actions"]]
    assert ("load", ["hung"], True) in actions, actions
    wait_for(lambda: gauges(clean).zombies == 0, 10, "restarted without zombies")
    assert ("hung", TANK) not in clean.violations()


def test_breaker_and_health_gauges_follow_a_reset_without_traffic(clean: World, faulty: Any) -> None:
    faulty("ruth.fault.fail_rate=1")
    outcomes = send(clean, 8)
    assert "BreakerOpen" in outcomes or outcomes.count("InferenceFailed") >= 5, outcomes
    wait_for(lambda: gauges(clean).breaker == 2, 10, "breaker gauge open")
    assert gauges(clean).health == -1
    assert clean.ruthctl("breaker", "reset", TANK).exit_code == 0
    took = wait_for(lambda: gauges(clean).breaker == 0 and gauges(clean).health == 1, 10, "gauges closed/healthy")
    print(f"gauges followed the reset in {took:.1f}s, no request sent")


def test_unknown_and_malformed_audit_lines_are_skipped_and_counted(clean: World) -> None:
    registry = clean.registry()
    with registry.audit_path.open("a") as audit:
        audit.write(
            '{"ts": "2026-12-01T00:00:00Z", "model": "sleepy", "server": "x", "event": "transition", '
            '"from_state": "READY", "to_state": "EXPLODED"}\n'
        )
        audit.write("{not json at all\n")
    registry.path.write_text('{"schema_version": 1, "models": {"sleepy": ')  # damaged: repair replays the audit log
    assert "sleepy" in (clean.registry().desired_active() or [])  # what `serve` loads at start
    document = clean.repair_until_clean()
    [rebuilt] = [r for r in document["results"] if r["kind"] == "rebuild_registry"]
    assert rebuilt["ok"] and "2 damaged line(s) skipped" in rebuilt["result"], rebuilt
    assert clean.state("sleepy") == "READY"


def test_a_breaker_whose_state_file_cannot_be_written_still_trips(clean: World, faulty: Any) -> None:
    state_file = clean.deployment.state / "breakers" / f"{TANK}-1.json"
    state_file.mkdir(parents=True)  # a directory where the file goes: every write of it fails
    try:
        faulty("ruth.fault.fail_rate=1")
        outcomes: list[str] = []
        while "BreakerOpen" not in outcomes and len(outcomes) < 48:
            outcomes += send(clean, 8)
        assert "BreakerOpen" in outcomes, outcomes
        log = clean.server.log_text()
        assert "keeping its state in memory" in log and "in memory only" in log
    finally:
        shutil.rmtree(state_file)


def test_a_recovered_model_healthy_for_stable_after_gets_its_count_back(clean: World) -> None:
    """A restart by `watch` counts as a recovery attempt; once the model has been healthy for --stable-after since
    then, the count goes back to 0 (docs/operations.md), so occasional recoveries never add up to DISABLED."""
    os.kill(stub_pids(clean.server, "sleepy")[0], signal.SIGKILL)
    time.sleep(0.5)
    rounds = watch_rounds(clean, "--iterations", "2", "--stable-after", "30")
    assert [(a["kind"], a["causes"], a["ok"]) for a in rounds[0]["actions"]] == [("load", ["stub_dead"], True)]
    assert rounds[1]["violations"] == [] and rounds[1]["actions"] == []  # healthy at once: the count stays
    entry = clean.registry().get("sleepy").on(clean.url)
    assert (entry.recoveries, entry.state.value) == (1, "READY") and entry.last_recovery is not None
    time.sleep(3)
    rounds = watch_rounds(clean, "--iterations", "1", "--stable-after", "3")
    assert rounds[0]["violations"] == [] and rounds[0]["actions"] == []
    entry = clean.registry().get("sleepy").on(clean.url)
    assert (entry.recoveries, entry.last_recovery) == (0, None)  # stable long enough: its count is back
    os.kill(stub_pids(clean.server, "sleepy")[0], signal.SIGKILL)  # the next problem is a first attempt again
    time.sleep(0.5)
    rounds = watch_rounds(clean, "--iterations", "1", "--backoff", "300")
    assert [(a["kind"], a["ok"]) for a in rounds[0]["actions"]] == [("load", True)], rounds
    assert clean.registry().get("sleepy").on(clean.url).recoveries == 1
    clean.registry().count_recovery("sleepy", clean.url, reset=True)


def watch_rounds(w: World, *options: str) -> list[dict[str, Any]]:
    result = w.ruthctl("watch", "--interval", "0", "--metrics-port", "0", "--json", *options)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]
