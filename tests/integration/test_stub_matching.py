"""Dead stubs found as deployed, against a real tritonserver (issue 12, "What to build" 3).

- stubs are matched to instance names, not counted: an orphaned stub (a leftover of an earlier episode, here a
  process with a stub's argv under the server's pid, as a stuck unload leaves one) is itself reported, and can't
  make up for a dead stub of another instance;
- a ruthctl that runs beside the server without its process namespace (the Kubernetes sidecar without
  `shareProcessNamespace`, reproduced with `unshare --pid`) says so: a `stubs_unseen` violation, exit 1, an ERROR
  log line from `watch` and `ruthctl_stub_check` 0, instead of silently skipping the check.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from reconcile_support import World

pytestmark = pytest.mark.integration


@pytest.fixture
def orphan(clean: World) -> Iterator[Any]:
    """Start a process that looks like a stub of `instance` under the world's server (argv[5] is the parent's pid,
    argv[8] the instance name, as host.ProcessTable reads them); killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(instance: str) -> int:
        argv = [
            "triton_python_backend_stub",
            "-c",
            "import time; time.sleep(600)",
            "ruth_orphan_shm",
            "1048576",
            str(clean.server.server.process.pid),
            "/backends/python",
            "336",
            instance,
        ]
        process = subprocess.Popen(argv, executable=sys.executable)
        started.append(process)
        return process.pid

    yield spawn
    for process in started:
        process.kill()
        process.wait()


def stubs_by_name(w: World, model: str) -> dict[str, list[int]]:
    from ruthctl.host import ProcessTable

    found: dict[str, list[int]] = {}
    for p in ProcessTable().processes():
        if len(p.argv) > 8 and p.argv[5] == str(w.server.server.process.pid) and p.argv[8].startswith(f"{model}_"):
            found.setdefault(p.argv[8], []).append(p.pid)
    return found


def test_an_orphaned_stub_neither_hides_a_dead_one_nor_goes_unreported(clean: World, orphan: Any) -> None:
    ghost = orphan("sleepy_0_0")  # 3 stubs for 2 instances
    assert clean.violations() == [("stub_orphan", "sleepy")]
    [real] = stubs_by_name(clean, "sleepy")["sleepy_0_1"]
    os.kill(real, signal.SIGKILL)  # counted, 2 stubs for 2 instances would look whole
    deadline = time.monotonic() + 10
    while "sleepy_0_1" in stubs_by_name(clean, "sleepy") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert clean.violations() == [("stub_dead", "sleepy"), ("stub_orphan", "sleepy")]
    assert clean.json("health", code=1)["status"] == "degraded"
    assert clean.ruthctl("repair").exit_code == 1  # sleepy restarted; the orphan is not Triton's: it stays reported
    assert clean.violations() == [("stub_orphan", "sleepy")]
    assert ghost in stubs_by_name(clean, "sleepy")["sleepy_0_0"]


def test_watch_says_loudly_when_it_cannot_see_the_servers_processes(clean: World) -> None:
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"]).returncode
    ):
        pytest.fail("unshare --pid is needed to run ruthctl outside the server's process namespace (root, util-linux)")
    env = {**os.environ, **clean.deployment.env(clean.cli_url)}
    outside = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "ruthctl"]
    verify = subprocess.run([*outside, "verify", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 1, verify.stderr
    [unseen] = [v for v in json.loads(verify.stdout)["violations"] if v["kind"] == "stubs_unseen"]
    assert "process namespace" in unseen["detail"] and "shareProcessNamespace" in unseen["fix"]

    watch = subprocess.run(
        [*outside, "watch", "--iterations", "1", "--interval", "0", "--metrics-port", "0", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert watch.returncode == 0, watch.stderr
    assert "dead stub processes can't be detected" in watch.stderr
    assert clean.violations() == []  # inside the namespace everything is checked and fine
