"""The deployed topology for real: the server and the `ruthctl watch` sidecar as two containers of one podman pod,
sharing what the Kubernetes pod shares (deploy/k8s/deployment.yaml): the network, the state volume and, with
`shareProcessNamespace`, the process namespace. A model's stub is SIGKILLed inside the pod; the sidecar, which sees
the server's processes only through the shared PID namespace, must bring the model back without an operator.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import podman_support as ps
import pytest
import tritonclient.http as httpclient
from support import free_port, jpeg, result_of, tank_frame, vision_inputs

pytestmark = pytest.mark.images

TANK = "tank_overflow_monitoring"


def rounds(sidecar: str) -> list[dict[str, Any]]:
    """The sidecar's reconcile rounds: `ruthctl watch --json` prints one JSON line per round on stdout."""
    lines = ps.podman("logs", sidecar, check=False).stdout.splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def wait_settled(sidecar: str, timeout_s: float = 120) -> None:
    """Until a round finds nothing to do: at pod start the sidecar may still be loading models itself."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = rounds(sidecar)
        if done and not done[-1]["actions"] and not done[-1]["error"]:
            return
        time.sleep(1)
    raise AssertionError(f"the sidecar never settled\n{ps.logs(sidecar)}")


def stub_recoveries(sidecar: str, model: str) -> list[dict[str, Any]]:
    """The sidecar's load actions for `model` caused by a dead stub."""
    found = []
    for round_ in rounds(sidecar):
        for action in round_["actions"]:
            if action["kind"] == "load" and action["model"] == model and "stub_dead" in action["causes"]:
                found.append(action)
    return found


def infer_many(ports: ps.Ports, n: int) -> list[float]:
    def one(level: float) -> float:
        with contextlib.closing(httpclient.InferenceServerClient(ports.http_url)) as client:
            result = result_of(client.infer(TANK, vision_inputs(httpclient, image=jpeg(tank_frame(level)))))
        return float(result["level_percent"])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, [40.0] * n))


def test_the_sidecar_brings_back_a_model_whose_stub_was_killed(cpu_image: str, state_dir: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    pod, server, sidecar = f"ruth-pod-{suffix}", f"ruth-pod-{suffix}-triton", f"ruth-pod-{suffix}-watch"
    ports, watch_port = ps.Ports.free(), free_port()
    with ps.removed_after(pod, kind="pod"), ps.removed_after(server, sidecar):
        ps.podman("pod", "create", "--name", pod, "--network", "host", "--share", "net,ipc,pid")
        ps.podman(*ps.run_args(server, ports, state_dir, pod=pod), cpu_image)
        ps.podman(
            *ps.run_args(sidecar, ports, state_dir, pod=pod, env={"RUTH_TRITON_URL": ports.http_url}),
            cpu_image,
            *["ruthctl", "watch", "--json", "--interval", "2", "--backoff", "1", "--metrics-port", str(watch_port)],
        )
        ps.wait_ready(server, ports, models=[TANK])
        assert infer_many(ports, 4) == pytest.approx([40.0] * 4, abs=2.0)

        wait_settled(sidecar)
        assert stub_recoveries(sidecar, TANK) == []
        # the sidecar sees the server's stubs: the PID namespace is the pod's
        seen = ps.stub_pids(sidecar, TANK)
        assert len(seen) == 2 and seen == ps.stub_pids(server, TANK)
        ps.podman("exec", server, "sh", "-c", f"kill -KILL {seen[0]}")
        deadline = time.monotonic() + 10
        while seen[0] in ps.stub_pids(server, TANK) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert seen[0] not in ps.stub_pids(server, TANK), "the stub survived SIGKILL"

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stubs = ps.stub_pids(server, TANK)
            recovered = stub_recoveries(sidecar, TANK)
            if recovered and len(stubs) == 2 and seen[0] not in stubs and ps.is_ready(ports, [TANK]):
                break
            assert ps.state(sidecar).get("Running"), ps.logs(sidecar)
            time.sleep(1)
        else:
            raise AssertionError(f"the sidecar did not bring {TANK} back\n{ps.logs(sidecar)}")
        print(f"\nsidecar recovered {TANK} after {120 - (deadline - time.monotonic()):.0f} s: {recovered}")
        assert all(action["ok"] for action in recovered)
        # every request succeeds again: none is routed to a dead stub ("Stub process ... is not healthy")
        assert infer_many(ports, 8) == pytest.approx([40.0] * 8, abs=2.0)
        # and the deployment is clean as the operator sees it from the sidecar: nothing left for a person
        verified = ps.podman("exec", sidecar, "ruthctl", "verify", "--json", check=False)
        assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-2000:]
