"""The probe judgement (pure), the wanted set from the registry, the endpoint and `ruthctl probe`, and serve's
signal handler that must never wait."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ruthctl import probe
from ruthctl.probe import Observation, Supervisor, judge_live, judge_ready
from ruthctl.registry import Desired, Registry, State

REPO = Path(__file__).resolve().parents[3]


def seen(at: float, **index: str) -> Observation:
    return Observation(at, True, {name: (state, "") for name, state in index.items()})


def test_ready_only_when_every_wanted_model_is_ready() -> None:
    assert judge_ready(["a", "b"], seen(0, a="READY", b="READY")).ok
    verdict = judge_ready(["a", "b"], seen(0, a="READY", b="LOADING"))
    assert not verdict.ok and "b LOADING" in verdict.reason and "1/2" in verdict.reason
    assert not judge_ready(["a"], seen(0)).ok  # not in the index at all
    assert judge_ready([], seen(0, a="UNAVAILABLE")).ok  # a failed model nobody wants doesn't count
    assert not judge_ready(["a"], Observation(0, False, error="refused")).ok
    assert not judge_ready(["a"], None).ok


def test_live_turns_false_after_bounded_silence_or_a_long_unload() -> None:
    limits = {"unresponsive_after_s": 15.0, "wedge_after_s": 60.0}
    assert judge_live(seen(10), None, {}, 10, **limits).ok
    assert judge_live(None, 0.0, {}, 14.9, **limits).ok
    assert not judge_live(None, 0.0, {}, 15.0, **limits).ok
    assert judge_live(seen(59), None, {"m": 0.0}, 59.0, **limits).ok
    verdict = judge_live(seen(60), None, {"m": 0.0}, 60.0, **limits)
    assert not verdict.ok and verdict.reason.startswith("wedged: m UNLOADING for 60s")


def test_supervisor_times_an_unload_from_when_it_was_first_seen() -> None:
    clock = [0.0]
    sup = Supervisor(wedge_after_s=30, unresponsive_after_s=15, clock=lambda: clock[0])
    sup.set_phase("serving")
    for t in (0, 10, 20):
        assert sup.observe(seen(t, m="UNLOADING"), ["m"]).live.ok
    snap = sup.observe(seen(30, m="UNLOADING"), ["m"])
    assert not snap.live.ok and snap.wedged and not snap.ready.ok
    assert sup.observe(seen(31, m="UNAVAILABLE"), []).live.ok  # it let go: the clock restarts
    assert sup.observe(seen(32, m="UNLOADING"), []).live.ok


def test_supervisor_counts_silence_and_forgets_the_previous_process() -> None:
    clock = [0.0]
    sup = Supervisor(wedge_after_s=30, unresponsive_after_s=15, clock=lambda: clock[0])
    sup.set_phase("serving")
    sup.observe(Observation(0, False, error="timed out"), [])
    assert sup.observe(Observation(16, False, error="timed out"), []).wedged
    clock[0] = 17.0
    sup.set_phase("restarting")
    sup.forget()
    assert sup.snapshot().live.ok
    late = sup.observe(Observation(16.5, False, error="timed out"), [])  # in flight during the restart
    assert late.live.ok and not sup.snapshot().wedged
    sup.set_phase("serving")
    assert sup.observe(seen(18, m="READY"), ["m"]).ready.ok


def test_ready_is_false_outside_serving_and_a_stalled_supervisor_is_not_live_but_not_wedged() -> None:
    clock = [0.0]
    sup = Supervisor(stale_after_s=60, clock=lambda: clock[0])
    sup.set_phase("loading")
    snap = sup.observe(seen(0, m="READY"), ["m"])
    assert not snap.ready.ok and snap.ready.reason.startswith("loading")
    sup.set_phase("serving")
    assert sup.observe(seen(1, m="READY"), ["m"]).ready.ok
    clock[0] = 100.0
    stalled = sup.snapshot()
    assert not stalled.live.ok and "stalled" in stalled.live.reason
    assert not stalled.wedged  # restarting tritonserver would not fix our own poller


def test_wanted_models_follow_the_registry_for_this_server(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    assert probe.wanted_models(registry, "127.0.0.1:8000", ["a", "b"]) is None
    registry.set_desired("a", Desired.ACTIVE)
    registry.set_desired("b", Desired.ACTIVE)
    registry.set_desired("c", Desired.ACTIVE)  # no such model in the repository
    registry.set_desired("d", Desired.INACTIVE)
    registry.transition("b", "127.0.0.1:8000", State.DISABLED, reason="watch gave up")
    available = ["a", "b", "d"]
    assert probe.wanted_models(registry, "127.0.0.1:8000", available) == ["a"]
    assert probe.wanted_models(registry, "10.0.0.9:8000", available) == ["a", "b"]
    assert probe.wanted_models(registry, "127.0.0.1:8000", available, only=["b"]) == []
    registry.path.write_text("{ damaged")
    assert probe.wanted_models(registry, "127.0.0.1:8000", available) == ["a"]  # replayed from the audit log


def test_endpoint_and_ruthctl_probe_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    from ruthctl.cli import app

    sup = Supervisor()
    sup.set_phase("serving")
    sup.observe(seen(time.monotonic(), a="READY", b="LOADING"), ["a", "b"])
    server = probe.ProbeServer(sup, "127.0.0.1", 0).start()
    try:
        monkeypatch.setenv("RUTH_PROBE_PORT", str(server.port))
        ready = CliRunner().invoke(app, ["probe", "ready"])
        assert ready.exit_code == 1 and "b LOADING" in ready.stdout
        live = CliRunner().invoke(app, ["probe", "live"])
        assert live.exit_code == 0, live.stdout
        assert probe.ask("127.0.0.1", server.port, "metrics").ok
    finally:
        server.close()
    gone = CliRunner().invoke(app, ["probe", "live", "--port", str(server.port)])
    assert gone.exit_code == 1 and "no probe endpoint" in gone.stdout


def test_the_second_signal_kills_without_waiting_even_inside_popen_wait(tmp_path: Path) -> None:
    """The handler runs on the main thread, possibly inside Popen.wait, which holds a non-reentrant lock."""
    from ruthctl.server import TritonFlags, TritonInstall, TritonServer
    from ruthctl.settings import Settings
    from ruthctl.supervise import Supervised

    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
    ]
    flags = TritonFlags(model_repository=tmp_path, backend_directory=tmp_path)
    server = TritonServer(flags, TritonInstall(Path("/bin/false"), tmp_path, tmp_path), {})
    server.process = subprocess.Popen(stubborn)
    time.sleep(0.5)  # let it install its SIGTERM handler
    supervised = Supervised(
        server, Settings(ruth_state_dir=tmp_path), None, loader=lambda *a: (True, ""), say=lambda *a: None
    )
    lock = server.process._waitpid_lock  # type: ignore[attr-defined]
    done = threading.Event()

    def handle_twice() -> None:
        supervised._on_signal(signal.SIGTERM, None)
        supervised._on_signal(signal.SIGTERM, None)
        done.set()

    with lock:  # what the main thread holds while blocked in Popen.wait()
        threading.Thread(target=handle_twice, daemon=True).start()
        assert done.wait(5), "the handler waited on the Popen lock"
    assert server.process.wait(timeout=10) == -signal.SIGKILL
    assert supervised.received == [signal.SIGTERM, signal.SIGTERM]


def test_serve_seeds_a_missing_registry_and_closes_claims_of_a_process_that_is_gone(tmp_path: Path) -> None:
    from ruthctl.supervise import record, seed_registry

    registry = Registry(tmp_path)
    assert seed_registry(registry, ["a", "b"], {"a": 2})
    assert not seed_registry(registry, ["c"], {})  # only the first start seeds
    models = registry.read().models
    assert sorted(models) == ["a", "b"] and models["a"].version == 2
    assert all(m.desired is Desired.ACTIVE for m in models.values())
    server = "127.0.0.1:8000"
    registry.transition("a", server, State.LOADING, reason="a serve that was killed mid-load")
    registry.transition("b", server, State.LOADING)
    registry.transition("b", server, State.READY)
    registry.transition("b", server, State.UNLOADING, reason="a repair on the wedged server")
    for name in ("a", "b"):
        record(registry, name, server, State.LOADING, "serve: start")
        record(registry, name, server, State.READY, "serve: loaded")
    assert {n: m.on(server).state for n, m in registry.read().models.items()} == {"a": State.READY, "b": State.READY}
    moves = [(e.model, e.from_state, e.to_state) for e in registry.audit() if e.event == "transition"]
    assert ("a", "LOADING", "FAILED") in moves and ("b", "UNLOADING", "UNLOADED") in moves


def test_serves_start_up_claims_are_left_alone_by_the_rules_and_released_or_judged_stuck_when_gone(
    tmp_path: Path,
) -> None:
    """`serve` claims every start-up load before tritonserver answers: `find_violations` (what `watch` acts on)
    leaves a claimed model alone while its owner lives, and judges it STUCK (resolved, then retried) once the owner
    is gone; a claim whose load never ran is given back."""
    from ruthctl.invariants import Kind, LocalFacts, ServerFacts, find_violations
    from ruthctl.spec import load_specs
    from ruthctl.supervise import claim, release, renew

    server = "127.0.0.1:8000"
    registry = Registry(tmp_path, actor="me@host pid 1: ruthctl serve")
    registry.set_desired("tank_overflow_monitoring", Desired.ACTIVE)
    registry.set_desired("chane_tank_monitor", Desired.ACTIVE)
    claims = claim(registry, ["tank_overflow_monitoring", "chane_tank_monitor"], server)
    assert {n: m.on(server).state for n, m in registry.read().models.items()} == {
        "tank_overflow_monitoring": State.LOADING,
        "chane_tank_monitor": State.LOADING,
    }
    specs, _ = load_specs(REPO / "config" / "models")
    local = LocalFacts(specs={n: specs[n] for n in claims}, registry=registry.read())
    facts = ServerFacts(server=server)  # tritonserver up, nothing loaded yet
    now = dt.datetime.now(dt.timezone.utc)
    assert find_violations(local, [facts], now=now, owner_gone=lambda actor: False) == []
    gone = find_violations(local, [facts], now=now, owner_gone=lambda actor: "pid 1:" in actor)
    assert sorted((v.kind, v.model) for v in gone) == [(Kind.STUCK, n) for n in sorted(claims)]

    assert renew(registry, claims, server) == {"tank_overflow_monitoring", "chane_tank_monitor"}
    release(registry, claims, server)
    assert claims == {}
    assert {n: m.on(server).state for n, m in registry.read().models.items()} == {
        "tank_overflow_monitoring": State.UNLOADED,
        "chane_tank_monitor": State.UNLOADED,
    }


def test_serve_keeps_a_failed_start_up_load_claimed_until_the_start_up_is_over(tmp_path: Path) -> None:
    """Queued claims are renewed before each load, a claim another command took over is left to it, and a failed
    load stays claimed (watch leaves it alone) until the last start-up load has run; then it is FAILED."""
    from ruthctl.server import TritonFlags, TritonInstall, TritonServer
    from ruthctl.settings import Settings
    from ruthctl.supervise import Supervised, claim

    flags = TritonFlags(model_repository=tmp_path, backend_directory=tmp_path)
    server = TritonServer(flags, TritonInstall(Path("/bin/false"), tmp_path, tmp_path), {})
    seen: list[tuple[str, dict[str, tuple[str, str]]]] = []
    supervised: Supervised

    def loader(_url: str, name: str, _token: str | None, _timeout: float) -> tuple[bool, str]:
        models = supervised.registry.read().models
        seen.append((name, {n: (m.on(where).state.value, m.on(where).reason) for n, m in models.items()}))
        if name == "a":  # meanwhile an operator deactivates b: its claim is no longer serve's
            other = Registry(tmp_path / "state", actor="op@host pid 2: ruthctl deactivate b")
            other.transition("b", where, State.UNLOADING)
            other.transition("b", where, State.UNLOADED)
        return (False, "boom") if name == "a" else (True, "")

    supervised = Supervised(
        server, Settings(ruth_state_dir=tmp_path / "state"), None, loader=loader, say=lambda *a: None
    )
    where = supervised.server_name
    claimed = claim(supervised.registry, ["a", "b", "c"], where)
    assert supervised._load_claimed(["a", "b", "c"], claimed) == 1
    assert [name for name, _ in seen] == ["a", "c"]  # b was taken over: not loaded by serve
    _, during_c = seen[1]
    assert during_c["a"][0] == "LOADING" and "load failed" in during_c["a"][1]  # still claimed while c loads
    assert during_c["c"] == ("LOADING", "serve: start-up, loading")
    states = {n: m.on(where).state for n, m in supervised.registry.read().models.items()}
    assert states == {"a": State.FAILED, "b": State.UNLOADED, "c": State.READY}
    assert claimed == {}


def test_infer_protocol_switch_follows_the_serve_port_layout() -> None:
    from ruthctl.triton_client import Endpoint, Transport

    http = Endpoint.parse("10.0.0.5:8000")
    assert http.on(Transport.GRPC).address == "10.0.0.5:8001"
    assert str(http.on(Transport.GRPC)) == "grpc://10.0.0.5:8001"
    assert http.on(Transport.HTTP) is http
    assert Endpoint.parse("grpc://h:9001").on(Transport.HTTP).address == "h:9000"


def test_the_probe_metrics_are_the_documented_ones() -> None:
    import re

    from monitoring_support import METRICS_DOC, documented_metrics

    sup = Supervisor()
    sup.count_restart("wedged: m UNLOADING for 61s")
    served = set(re.findall(r"^([a-z_]+) ", probe.metrics_text(sup.snapshot()), re.M))
    assert served == {"ruthctl_serve_ready", "ruthctl_serve_live", "ruthctl_serve_restarts_total"}
    assert served <= documented_metrics(METRICS_DOC.read_text())
    assert "ruthctl_serve_restarts_total 1" in probe.metrics_text(sup.snapshot())


def test_serve_names_itself_in_the_registry_as_its_clients_do(tmp_path: Path) -> None:
    from ruthctl.settings import Settings
    from ruthctl.supervise import registry_server_name

    def name(**kwargs: object) -> str:
        return registry_server_name(Settings(ruth_state_dir=tmp_path, **kwargs))  # type: ignore[arg-type]

    assert name(ruth_host="0.0.0.0", ruth_http_port=8000, ruth_triton_url="triton:8000") == "triton:8000"
    assert name(ruth_host="0.0.0.0", ruth_http_port=8000, ruth_triton_url="127.0.0.1:8000") == "127.0.0.1:8000"
    assert name(ruth_host="0.0.0.0", ruth_http_port=9000, ruth_triton_url="other:8000") == "127.0.0.1:9000"
    assert name(ruth_host="10.1.2.3", ruth_http_port=8000, ruth_triton_url="grpc://x:8001") == "10.1.2.3:8000"


def test_an_index_refused_is_not_ready_but_not_a_wedge() -> None:
    """A wrong admin token (403 on the index) must never get tritonserver restarted."""
    sup = Supervisor(unresponsive_after_s=15)
    sup.set_phase("serving")
    for t in (0, 10, 20, 30):
        snap = sup.observe(Observation(t, True, index=None, error="repository index refused: HTTP Error 403"), ["m"])
    assert snap.live.ok and not snap.wedged
    assert not snap.ready.ok and "403" in snap.ready.reason


def test_poll_triton_tells_silence_from_refusal() -> None:
    import http.server

    class Refuses(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        refused = probe.poll_triton(f"127.0.0.1:{httpd.server_address[1]}", "wrong", timeout_s=2)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert refused.answered and refused.index is None and "403" in refused.error
    silent = probe.poll_triton(f"127.0.0.1:{httpd.server_address[1]}", None, timeout_s=1)
    assert not silent.answered


def test_the_probe_answer_is_one_typed_body_for_the_endpoint_and_ruthctl_probe() -> None:
    sup = Supervisor()
    sup.set_phase("serving")
    sup.observe(seen(time.monotonic(), a="READY", b="LOADING"), ["a", "b"])
    server = probe.ProbeServer(sup, "127.0.0.1", 0).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/ready", timeout=5)  # noqa: S310
        answer = probe.ProbeAnswer.model_validate_json(refused.value.read())
        assert (answer.ok, answer.phase, answer.restarts) == (False, "serving", 0)
        assert "b LOADING" in answer.reason
        assert probe.ask("127.0.0.1", server.port, "ready") == probe.Verdict(False, answer.reason)
    finally:
        server.close()


def test_a_body_that_is_not_a_probe_answer_is_shown_as_text_with_the_status_deciding() -> None:
    assert probe._verdict(b"upstream connect error", ok=False) == probe.Verdict(False, "upstream connect error")
    assert probe._verdict(b'{"ok": "yes", "reason": "r"}', ok=True).reason.startswith('{"ok": "yes"')
