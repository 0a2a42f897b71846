"""`ruthctl serve` as deployed: honest probes, a wedged tritonserver restarted, the second signal, newcomer traps.

Every test runs `ruthctl serve` as a child process over a small deployment (config/, model_repository/, weights/,
state/ in a temporary folder) of tiny plain-Python models (`bulky` takes 4 s to initialize, `rickety` and `fragile`
raise in initialize, `slowpoke` just answers), or of the real tank model, whose stubs the wedge test kills.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import plain_model_support
import pytest
from support import REPO_ROOT, jpeg, tank_frame

from ruthctl.registry import Registry

pytestmark = pytest.mark.integration

RUTHCTL = [sys.executable, "-m", "ruthctl"]
TANK = "tank_overflow_monitoring"
def build(root: Path, models: dict[str, dict[str, Any]], tank: bool = False) -> Path:
    """A deployment root with `models` (name -> parameters), and the real tank model when `tank`."""
    (root / "config" / "models").mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "config" / "profiles", root / "config" / "profiles")
    repository = root / "model_repository"
    for name, parameters in models.items():
        plain_model_support.install(root, name, **parameters)
    if tank:
        shutil.copy(REPO_ROOT / "config" / "models" / f"{TANK}.yaml", root / "config" / "models")
        shutil.copytree(REPO_ROOT / "model_repository" / TANK / "1", repository / TANK / "1")
    (root / "state").mkdir()
    env = {**os.environ, "MODELS_ROOT": str(repository), "RUTH_AI_PROFILE": "cpu"}
    done = subprocess.run([*RUTHCTL, "generate"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return root


def port_block(n: int = 4) -> int:
    """A base port with `n` consecutive free ports (serve's layout: HTTP p, gRPC p+1, metrics p+2)."""
    for _ in range(200):
        with contextlib.closing(socket.socket()) as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + n > 65000:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + n):
                    sock = stack.enter_context(contextlib.closing(socket.socket()))
                    sock.bind(("127.0.0.1", port))
            return int(base)
        except OSError:
            continue
    raise AssertionError("no block of free ports")


class Serve:
    """`ruthctl serve` in a child process, its stderr collected, its ports known."""

    def __init__(
        self,
        root: Path,
        *args: str,
        env: dict[str, str] | None = None,
        seed_port_names: bool = False,
        base: int | None = None,
    ) -> None:
        self.root = root
        self.base = base or port_block(4)  # a given base: the same server again (a restarted container)
        self.http, self.grpc, self.metrics, self.probe = self.base, self.base + 1, self.base + 2, self.base + 3
        self.env = {
            **os.environ,
            "MODELS_ROOT": str(root / "model_repository"),
            "RUTH_STATE_DIR": str(root / "state"),
            "RUTH_WEIGHTS_DIR": str(root / "weights"),
            "RUTH_AI_PROFILE": "cpu",
            "RUTH_PROBE_PORT": str(self.probe),
            "RUTH_GRPC_PORT": str(self.grpc),
            "RUTH_METRICS_PORT": str(self.metrics),
            "RUTH_HTTP_PORT": str(self.http),
            "RUTH_TRITON_URL": f"127.0.0.1:{self.http}",
            "GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS": "10",
            **(env or {}),
        }
        if seed_port_names:  # SERVER_PORT, the name of the runtime we replace, instead of RUTH_HTTP_PORT
            self.env["SERVER_PORT"] = self.env.pop("RUTH_HTTP_PORT")
        self.proc = subprocess.Popen(
            [*RUTHCTL, "serve", "--log-file", str(root / "triton.log"), *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")))  # type: ignore[union-attr]
        self._reader.daemon = True
        self._reader.start()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def get(self, path: str, port: int | None = None) -> tuple[int | None, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.probe}{path}", timeout=5) as r:  # noqa: S310
                return r.status, _json(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json(exc.read())
        except OSError:
            return None, {}

    def until(self, what: Callable[[], bool], timeout_s: float, message: str) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            assert self.proc.poll() is None, f"serve exited {self.proc.returncode}: {self.stderr}"
            if what():
                return time.monotonic() - started
            time.sleep(0.25)
        raise AssertionError(f"{message} not within {timeout_s}s; serve said:\n{self.stderr}")

    def ruthctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*RUTHCTL, *args], env=self.env, capture_output=True, text=True, timeout=120)

    def server_pid(self) -> int | None:
        from ruthctl.procs import ProcessTable

        return ProcessTable().server_pid("127.0.0.1", self.http)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        self._reader.join(timeout=10)
        return int(self.proc.returncode)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"raw": raw.decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"value": value}


@contextlib.contextmanager
def serving(root: Path, *args: str, env: dict[str, str] | None = None, base: int | None = None) -> Iterator[Serve]:
    serve = Serve(root, *args, env=env, base=base)
    try:
        yield serve
    finally:
        if serve.proc.poll() is None:
            serve.stop()
        pid = serve.server_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


def triton_ready(serve: Serve) -> int | None:
    return serve.get("/v2/health/ready", serve.http)[0]


# ------------------------------------------------------------------ readiness and liveness


def test_ready_is_503_while_loading_and_after_a_failed_load_then_recovers_when_deactivated_or_fixed(
    tmp_path: Path,
) -> None:
    failing = {"fail_init": True}
    root = build(tmp_path / "d", {"bulky": {"init_sleep_s": 4}, "rickety": failing, "fragile": failing})
    with serving(root) as serve:
        serve.until(lambda: serve.get("/live")[0] == 200, 60, "the probe endpoint")
        code, body = serve.get("/ready")
        assert code == 503, body  # tritonserver is up, nothing wanted is READY yet
        ours: list[int | None] = []
        serve.until(lambda: ours.append(serve.get("/ready")[0]) or "READY bulky" in serve.stderr, 90, "bulky loaded")
        assert set(ours) == {503}, ours  # never ready while a wanted model loads
        serve.until(lambda: "FAILED rickety" in serve.stderr and "FAILED fragile" in serve.stderr, 60, "failures")
        time.sleep(3)  # a poll or two after the loads
        code, body = serve.get("/ready")
        assert code == 503 and "rickety" in body["reason"] and "fragile" in body["reason"], body
        assert serve.get("/live")[0] == 200  # a failed model is no reason to restart the server
        probe = serve.ruthctl("probe", "ready", "--port", str(serve.probe))
        assert probe.returncode == 1 and "2/3 wanted models not READY" in probe.stdout, probe.stdout
        assert triton_ready(serve) == 400  # Triton's strict readiness stays red for good (docs/operations.md)

        done = serve.ruthctl("deactivate", "rickety")
        assert done.returncode == 0, done.stdout + done.stderr
        serve.until(lambda: "rickety" not in serve.get("/ready")[1].get("reason", "rickety"), 30, "rickety unwanted")
        code, body = serve.get("/ready")
        assert code == 503 and "1/2 wanted models not READY: fragile" in body["reason"], body

        # the fix: its spec corrected
        (root / "config" / "models" / "fragile.yaml").write_text(plain_model_support.spec("fragile"))
        for command in (("generate",), ("activate", "fragile")):
            fixed = serve.ruthctl(*command)
            assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        took = serve.until(lambda: serve.get("/ready")[0] == 200, 30, "ready once fragile is fixed")
        assert took < 30
        assert triton_ready(serve) == 400  # still red (rickety failed once): the reason the probes are ours
        probe = serve.ruthctl("probe", "ready", "--port", str(serve.probe))
        assert probe.returncode == 0 and "2/2 wanted models READY" in probe.stdout, probe.stdout
        live = serve.ruthctl("probe", "live", "--port", str(serve.probe))
        assert live.returncode == 0, live.stdout
        _, metrics = serve.get("/metrics")
        assert "ruthctl_serve_ready 1" in metrics["raw"]
        assert serve.stop() == 0


# ------------------------------------------------------------------ the wedge


def tank_stubs(server_pid: int) -> list[int]:
    from ruthctl.procs import ProcessTable

    return sorted(
        p.pid
        for p in ProcessTable().processes()
        if len(p.argv) > 8 and p.argv[5] == str(server_pid) and p.argv[8].startswith(f"{TANK}_")
    )


def infer_tank(serve: Serve, n: int) -> list[str]:
    from ruthctl.client import RuthClient

    image = jpeg(tank_frame(40))
    outcomes = []
    for _ in range(n):
        try:
            with RuthClient(f"127.0.0.1:{serve.http}", "http", timeout_s=20) as client:
                client.infer(TANK, image=image, stream_id=str(uuid.uuid4()))
            outcomes.append("ok")
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test looks at
            outcomes.append(f"{type(exc).__name__}: {exc}")
    return outcomes


def test_a_server_wedged_by_a_killed_stub_is_restarted_and_serves_again(tmp_path: Path) -> None:
    root = build(tmp_path / "d", {}, tank=True)
    with serving(root, env={"RUTH_WEDGE_AFTER_SECONDS": "8", "RUTH_MAX_RESTARTS": "2"}) as serve:
        serve.until(lambda: serve.get("/ready")[0] == 200, 120, "tank ready")
        old_pid = serve.server_pid()
        assert old_pid is not None
        stubs = tank_stubs(old_pid)
        assert len(stubs) == 2, stubs
        os.kill(stubs[0], signal.SIGKILL)
        time.sleep(1)
        outcomes: list[str] = []
        while len(outcomes) < 20 and not any("not healthy" in o for o in outcomes):
            outcomes += infer_tank(serve, 2)  # until one reaches the dead stub
        assert any("not healthy" in o for o in outcomes), outcomes
        token = (root / "state" / "admin-token").read_text().strip()
        unload = urllib.request.Request(
            f"http://127.0.0.1:{serve.http}/v2/repository/models/{TANK}/unload",
            data=b"{}",
            method="POST",
            headers={"ruth-admin-token": token},
        )
        with urllib.request.urlopen(unload, timeout=10) as response:  # noqa: S310 - what `repair` would do
            assert response.status == 200
        started = time.monotonic()
        seen: list[tuple[int | None, str]] = []

        def restarted() -> bool:
            code, body = serve.get("/live")
            seen.append((code, str(body.get("reason", ""))))
            pid = serve.server_pid()
            return pid is not None and pid != old_pid

        serve.until(restarted, 90, "tritonserver restarted")
        serve.until(lambda: serve.get("/ready")[0] == 200, 120, "ready again after the restart")
        took = time.monotonic() - started
        assert took < 150
        assert "tritonserver_restart" in serve.stderr and "UNLOADING" in serve.stderr, serve.stderr
        assert any(code == 503 and "wedged" in reason for code, reason in seen) or "wedged" in serve.stderr
        assert infer_tank(serve, 4) == ["ok"] * 4
        _, metrics = serve.get("/metrics")
        assert "ruthctl_serve_restarts_total 1" in metrics["raw"]
        assert serve.get("/live")[0] == 200
        assert serve.stop() == 0
    print(f"wedge to serving again: {took:.1f}s (wedge_after 8s)")


# ------------------------------------------------------------------ signals


def test_a_second_sigterm_during_the_drain_kills_tritonserver_and_exits(tmp_path: Path) -> None:
    root = build(tmp_path / "d", {"slowpoke": {}})
    with serving(root, env={"GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS": "60"}) as serve:
        serve.until(lambda: serve.get("/ready")[0] == 200, 90, "ready")
        pid = serve.server_pid()
        assert pid is not None
        # an idle keep-alive connection holds the HTTP drain for the whole exit timeout (docs/deployment.md)
        idle = http.client.HTTPConnection("127.0.0.1", serve.http, timeout=5)
        idle.request("GET", "/v2/health/live")
        idle.getresponse().read()
        try:
            serve.proc.send_signal(signal.SIGTERM)
            time.sleep(2)
            assert serve.proc.poll() is None, "still draining"
            started = time.monotonic()
            rc = serve.stop(signal.SIGTERM, timeout_s=30)
            took = time.monotonic() - started
        finally:
            idle.close()
        assert rc == 1, serve.stderr  # a forced stop is not a clean one
        assert took < 15, took
        assert "second signal" in serve.stderr
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


# ------------------------------------------------------------------ what a newcomer hits


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """A fresh serve started the way the README and the names of the runtime we replace suggest."""
    root = build(tmp_path_factory.mktemp("newcomer") / "d", {"slowpoke": {}})
    serve = Serve(
        root,
        env={"RUTH_AI_PROFILE": "prod-cpu", "RUTH_AI_ENV": "staging", "SERVER_HOST": "127.0.0.1"},
        seed_port_names=True,
    )
    try:
        serve.until(lambda: serve.get("/ready")[0] == 200, 90, "ready")
        serve.until(lambda: "drains in-flight" in serve.stderr, 30, "endpoint table")
        yield serve
    finally:
        serve.stop()


def test_a_legacy_profile_name_is_accepted(newcomer: Serve) -> None:
    assert "profile cpu" in newcomer.stderr
    result = newcomer.ruthctl("--profile", "prod-cpu", "status")
    assert result.returncode == 0, result.stderr


def test_the_environment_is_reported_at_start(newcomer: Serve) -> None:
    assert "environment staging" in newcomer.stderr


def test_verify_and_status_are_meaningful_right_after_a_fresh_serve(newcomer: Serve) -> None:
    verify = newcomer.ruthctl("verify", "--json")
    kinds = [v["kind"] for v in json.loads(verify.stdout)["violations"]]
    assert "registry_missing" not in kinds, verify.stdout
    assert verify.returncode == 0, verify.stdout
    status = newcomer.ruthctl("status", "--json")
    assert status.returncode == 0, status.stderr
    [row] = [r for r in json.loads(status.stdout)["models"] if r["model"] == "slowpoke"]
    assert (row["desired"], row["state"], row["triton"]) == ("ACTIVE", "READY", "READY"), row


def test_infer_over_grpc_uses_the_grpc_port(newcomer: Serve, tmp_path: Path) -> None:
    image = tmp_path / "frame.jpg"
    image.write_bytes(jpeg(tank_frame(50)))
    result = newcomer.ruthctl("infer", "--protocol", "grpc", "slowpoke", str(image))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["metadata"]["stream_id"]


def test_seed_names_server_host_and_port_are_honoured(newcomer: Serve) -> None:
    assert "RUTH_HTTP_PORT" not in newcomer.env and newcomer.env["SERVER_PORT"] == str(newcomer.http)
    assert newcomer.get("/v2/health/live", newcomer.http)[0] == 200
    assert f"http://127.0.0.1:{newcomer.http}" in newcomer.stderr


def test_a_gpu_profile_on_a_cpu_host_is_refused_up_front(tmp_path: Path) -> None:
    env = {**os.environ, "RUTH_STATE_DIR": str(tmp_path), "AI_RUNTIME_HARDWARE": "cpu"}
    result = subprocess.run(
        [*RUTHCTL, "serve", "--profile", "gpu"], env=env, capture_output=True, text=True, timeout=60
    )
    said = " ".join(result.stderr.split())
    assert result.returncode == 2, said
    assert "profile gpu needs a GPU, but this host is cpu" in said and "Use --profile cpu" in said
    assert not (tmp_path / "admin-token").exists(), "refused before anything started"


# ------------------------------------------------------------------ the watch sidecar at pod start


def start_watch(serve: Serve, *options: str) -> subprocess.Popen[str]:
    """`ruthctl watch` beside `serve`, as the Kubernetes sidecar and the compose watch run it: same state dir."""
    return subprocess.Popen(
        [*RUTHCTL, "watch", "--interval", "0.5", "--metrics-port", "0", "--json", *options],
        env=serve.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_watch(watch: subprocess.Popen[str]) -> list[dict[str, Any]]:
    watch.send_signal(signal.SIGTERM)
    out, err_text = watch.communicate(timeout=120)
    assert watch.returncode == 0, err_text
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_watch_beside_a_starting_serve_counts_none_of_serves_loads_as_recoveries(tmp_path: Path) -> None:
    """At pod start `watch` runs while `serve` is still loading: the models serve is about to load (or is loading)
    are not READY yet, and must not be loaded by watch as "recoveries" (which burn attempts, up to DISABLED). A
    model that really fails at start is still reported, and retried by watch once serve's start-up is over."""
    slow = {"init_sleep_s": 5}
    root = build(tmp_path / "d", {"bulky": slow, "hefty": slow, "rickety": {"fail_init": True}})
    with serving(root) as serve:
        watch = start_watch(serve, "--backoff", "1", "--max-attempts", "10")
        try:
            serve.until(lambda: "drains in-flight" in serve.stderr, 120, "serve's start-up loads")
            registry = Registry(root / "state")
            server = f"127.0.0.1:{serve.http}"
            serve.until(lambda: registry.get("rickety").on(server).recoveries >= 1, 60, "rickety retried by watch")
        finally:
            rounds = stop_watch(watch)
        assert "READY bulky" in serve.stderr and "READY hefty" in serve.stderr, serve.stderr
        loads = [(a["model"], a["ok"]) for r in rounds for a in r["actions"] if a["kind"] == "load"]
        assert {m for m, _ in loads} == {"rickety"}, loads  # serve's own loads are not watch's business
        models = registry.read().models
        assert [models[m].on(server).recoveries for m in ("bulky", "hefty")] == [0, 0]
        assert [models[m].on(server).state.value for m in ("bulky", "hefty")] == ["READY", "READY"]
        # the failed model was reported, and watch retried it only after serve's start-up was over
        assert any(v["kind"] == "not_ready" and v["model"] == "rickety" for r in rounds for v in r["violations"])
        audit = [a for a in registry.audit() if a.event == "transition"]
        serve_done = max(a.ts for a in audit if "ruthctl serve" in a.actor)
        first_by_watch = min(a.ts for a in audit if "ruthctl watch" in a.actor and a.model == "rickety")
        assert first_by_watch > serve_done, [(a.ts, a.model, a.to_state, a.actor[-14:]) for a in audit]
        assert not [a for a in audit if "ruthctl watch" in a.actor and a.model in ("bulky", "hefty")], audit
        assert serve.stop() == 0


def test_a_serve_killed_mid_start_leaves_no_claim_that_blocks_and_its_successor_takes_over(tmp_path: Path) -> None:
    """serve SIGKILLed while loading (its tritonserver dies with it), then started again on the same ports, as the
    orchestrator does, with `watch` beside it throughout: the dead process's claims are closed, every model ends
    READY, loaded by serve, and none of it is counted as a recovery."""
    slow = {"init_sleep_s": 6}
    root = build(tmp_path / "d", {"bulky": slow, "hefty": slow})
    registry = Registry(root / "state")
    first = Serve(root)
    server = f"127.0.0.1:{first.http}"
    watch = start_watch(first, "--backoff", "1", "--max-attempts", "10")
    try:

        def loading_bulky() -> bool:
            entry = registry.get("bulky")
            return entry is not None and entry.on(server).reason == "serve: start-up, loading"

        first.until(loading_bulky, 90, "the first serve loading bulky")
        old_pid = first.server_pid()
        first.proc.kill()
        first.proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while first.server_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert first.server_pid() is None, "tritonserver outlived its serve"
        claims = {m: registry.get(m).on(server) for m in ("bulky", "hefty")}
        print({m: (c.state.value, c.actor[-30:]) for m, c in claims.items()})
        with serving(root, base=first.base) as second:
            second.until(lambda: second.get("/ready")[0] == 200, 120, "the second serve ready")
            assert second.server_pid() not in (None, old_pid)
            assert "READY bulky" in second.stderr and "READY hefty" in second.stderr, second.stderr
            time.sleep(2)  # a few rounds of watch on the settled server
            rounds = stop_watch(watch)
            assert second.stop() == 0
    finally:
        if watch.poll() is None:
            watch.kill()
        if first.proc.poll() is None:
            first.proc.kill()
    loads = [(a["model"], a["ok"]) for r in rounds for a in r["actions"] if a["kind"] == "load"]
    assert loads == [], loads
    models = registry.read().models
    assert {m: (models[m].on(server).state.value, models[m].on(server).recoveries) for m in models} == {
        "bulky": ("READY", 0),
        "hefty": ("READY", 0),
    }
