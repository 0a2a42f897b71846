"""The deployed topology for real: the server and the `ruthctl watch` sidecar as two containers of one podman pod,
sharing what the Kubernetes pod shares (deploy/k8s/deployment.yaml): the network, the state volume and, with
`shareProcessNamespace`, the process namespace. A model's stub is SIGKILLed inside the pod; the sidecar, which sees
the server's processes only through the shared PID namespace, must bring the model back without an operator.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
import uuid
from pathlib import Path

import podman_support as ps
import pytest
import tritonclient.http as httpclient
from support import free_port, jpeg, result_of, tank_frame, vision_inputs

pytestmark = pytest.mark.images

TANK = "tank_overflow_monitoring"


def watch_metrics(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
        return str(response.read().decode())


def recoveries(text: str, model: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("ruthctl_recoveries_total{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


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
            *["ruthctl", "watch", "--interval", "2", "--backoff", "1", "--metrics-port", str(watch_port)],
        )
        ps.wait_ready(server, ports)
        assert infer_many(ports, 4) == pytest.approx([40.0] * 4, abs=2.0)

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
            if len(stubs) == 2 and seen[0] not in stubs and recoveries(watch_metrics(watch_port), TANK) >= 1:
                break
            assert ps.state(sidecar).get("Running"), ps.logs(sidecar)
            time.sleep(1)
        else:
            raise AssertionError(f"the sidecar did not bring {TANK} back\n{ps.logs(sidecar)}")
        # every request succeeds again: none is routed to a dead stub ("Stub process ... is not healthy")
        assert infer_many(ports, 8) == pytest.approx([40.0] * 8, abs=2.0)
        actions = [line for line in ps.logs(sidecar, tail=400).splitlines() if f"load {TANK}" in line]
        print(f"\nsidecar recovered {TANK}: ruthctl_recoveries_total {recoveries(watch_metrics(watch_port), TANK)}")
        print("\n".join(actions))
