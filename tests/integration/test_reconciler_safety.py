"""The reconciler never makes things worse, against a real tritonserver (issue 12, "What to build" 2).

- a reload that fails (activation-time overrides the model refuses) leaves the previous desired state, not the
  failed one, and `watch` never unloads a model that is serving to "fix" a failed reload;
- `activate` and `deactivate` of one model racing each other end with desired == actual, every round.

The deployment and the module's server come from tests/reconcile_support.py (sleepy, spare, brittle, the tank model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from reconcile_support import TANK, World

pytestmark = pytest.mark.integration

#: a fault plan the model refuses at load (a rate above 1): the reload fails, the running config keeps serving
BAD = ("--set", "ruth.fault.fail_rate=2")


def watch(w: World, *options: str) -> list[dict[str, Any]]:
    result = w.ruthctl("watch", "--interval", "0", "--metrics-port", "0", "--json", *options)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def tank(clean: World) -> Any:
    result = clean.ruthctl("activate", TANK)
    assert result.exit_code == 0, result.output
    yield clean
    clean.registry().set_desired(TANK, clean.registry().get(TANK).desired, overrides={})
    assert clean.ruthctl("deactivate", TANK).exit_code == 0


def test_a_failed_reload_leaves_the_previous_desired_state(tank: World) -> None:
    before = tank.registry().get(TANK)
    result = tank.ruthctl("activate", TANK, *BAD, "--json")
    assert result.exit_code == 1, result.output
    [row] = json.loads(result.stdout)["servers"]
    assert row["state"] == "READY" and "fail_rate" in row["detail"]  # the previous config kept serving
    assert tank.triton_state(TANK) == "READY"
    after = tank.registry().get(TANK)
    assert (after.desired, after.version, after.overrides) == (before.desired, before.version, before.overrides)
    assert after.on(tank.url).state.value == "READY"
    assert (TANK, "live_drift") not in {(m, k) for k, m in tank.violations()}
    rounds = watch(tank, "--iterations", "3", "--backoff", "0", "--max-attempts", "1")
    assert [a for r in rounds for a in r["actions"]] == []  # nothing to "repair": desired is what runs
    assert tank.triton_state(TANK) == "READY"


def test_watch_never_unloads_a_serving_model_whose_reload_keeps_failing(tank: World) -> None:
    """The failed overrides reach the desired state anyway (another ruthctl, a fleet where one server took them):
    the reload fails every time, and after its attempts `watch` stops retrying instead of disabling the model."""
    tank.registry().set_desired(TANK, tank.registry().get(TANK).desired, overrides={"ruth.fault.fail_rate": "2"})
    assert ("live_drift", TANK) in tank.violations()
    rounds = watch(tank, "--iterations", "4", "--backoff", "0", "--max-attempts", "2")
    actions = [(a["kind"], a["ok"]) for r in rounds for a in r["actions"]]
    assert actions == [("load", False), ("load", False)], rounds
    assert "gave up after 2 failed reloads" in rounds[-1]["deferred"][0]["why"]
    assert tank.triton_state(TANK) == "READY"
    assert tank.registry().get(TANK).on(tank.url).state.value == "READY"
    assert ("live_drift", TANK) in tank.violations()  # still reported: a person has to decide


def test_racing_activate_and_deactivate_of_one_model_end_with_desired_equal_to_actual(world: World) -> None:
    env = {**os.environ, **world.deployment.env(world.cli_url)}
    outcomes: list[tuple[str, str | None, str | None]] = []
    for _ in range(10):
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "ruthctl", verb, "spare", "--json"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for verb in ("activate", "deactivate")
        ]
        for run in runs:
            run.communicate(timeout=120)
        entry = world.registry().get("spare")
        outcomes.append((entry.desired.value, entry.on(world.url).state.value, world.triton_state("spare")))
    wrong = [o for o in outcomes if o not in (("ACTIVE", "READY", "READY"), ("INACTIVE", "UNLOADED", "UNAVAILABLE"))]
    assert wrong == [], outcomes
    assert world.ruthctl("deactivate", "spare").exit_code == 0
