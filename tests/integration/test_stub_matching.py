"""Dead stubs found as deployed, against a real tritonserver (issue 12, "What to build" 3).

- an orphaned stub (a leftover of an earlier episode, here a process with a stub's argv under the server's pid that
  maps a shared-memory region which is then unlinked, as Triton does when it destroys an instance) is itself
  reported, and can't make up for a dead stub of another instance;
- a reload that only changes the instance count updates the instances in place and Triton keeps their old names
  (docs/triton-notes.md §8.1): that whole model is not reported;
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
from pathlib import Path
from typing import Any

import pytest
from reconcile_support import World

pytestmark = pytest.mark.integration


@pytest.fixture
def orphan(clean: World, tmp_path: Path) -> Iterator[Any]:
    """Start a process that looks like a retired stub of `instance` under the world's server (argv[5] is the parent's
    pid, argv[8] the instance name, argv[2] its region, mapped and then unlinked); killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(instance: str) -> int:
        region = f"ruth_orphan_{os.getpid()}_{len(started)}"
        script = tmp_path / "orphan_stub.py"
        script.write_text(
            "import mmap, os, sys, time\n"
            "path = '/dev/shm/' + sys.argv[1]\n"
            "fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)\n"
            "os.ftruncate(fd, 4096)\n"
            "m = mmap.mmap(fd, 4096)\n"
            "os.unlink(path)\n"
            "print('mapped', flush=True)\n"
            "time.sleep(600)\n"
        )
        argv = [
            "triton_python_backend_stub",
            str(script),
            region,
            "1048576",
            "1048576",
            str(clean.server.server.process.pid),
            "/backends/python",
            "336",
            instance,
        ]
        process = subprocess.Popen(argv, executable=sys.executable, stdout=subprocess.PIPE)
        started.append(process)
        assert process.stdout is not None and process.stdout.readline() == b"mapped\n"
        return process.pid

    yield spawn
    for process in started:
        process.kill()
        process.wait()


def stubs_by_name(w: World, model: str) -> dict[str, list[int]]:
    from ruthctl.procs import ProcessTable

    found: dict[str, list[int]] = {}
    for p in ProcessTable().processes():
        if len(p.argv) > 8 and p.argv[5] == str(w.server.server.process.pid) and p.argv[8].startswith(f"{model}_"):
            found.setdefault(p.argv[8], []).append(p.pid)
    return found


def test_an_orphaned_stub_neither_hides_a_dead_one_nor_goes_unreported(clean: World, orphan: Any) -> None:
    ghost = orphan("sleepy_0_0")  # 3 stub processes for 2 instances, one of them retired
    assert clean.violations() == [("stub_orphan", "sleepy")]
    [real] = stubs_by_name(clean, "sleepy")["sleepy_0_1"]
    os.kill(real, signal.SIGKILL)  # counted blindly, 2 processes for 2 instances would look whole
    deadline = time.monotonic() + 10
    while "sleepy_0_1" in stubs_by_name(clean, "sleepy") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert clean.violations() == [("stub_dead", "sleepy"), ("stub_orphan", "sleepy")]
    assert clean.json("health", code=1)["status"] == "degraded"
    assert clean.ruthctl("repair").exit_code == 1  # sleepy restarted; the orphan is not Triton's: it stays reported
    assert clean.violations() == [("stub_orphan", "sleepy")]
    assert ghost in stubs_by_name(clean, "sleepy")["sleepy_0_0"]


def test_an_instance_update_that_keeps_old_names_is_a_whole_model(clean: World) -> None:
    for count in (3, 1, 3, 2):
        live = clean.server.model_config("sleepy")
        live["instance_group"][0]["count"] = count
        clean.server.load("sleepy", config=live)
        deadline = time.monotonic() + 15  # the retired instances' stubs exit within a few seconds
        while sum(len(p) for p in stubs_by_name(clean, "sleepy").values()) != count and time.monotonic() < deadline:
            time.sleep(0.2)
        found = [v for v in clean.violations() if v[0].startswith("stub")]
        assert found == [], (count, stubs_by_name(clean, "sleepy"))
    clean.repair_until_clean()
    assert clean.server.model_config("sleepy")["instance_group"][0]["count"] == 2


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
