"""The monitoring files against the real thing: a real Triton, `ruthctl watch`, and a real Prometheus.

One stack per module: Triton serves two models from a deployment root of their own; Prometheus (the Debian
package, started here on a free loopback port with a temporary TSDB, 1 s scrape and rule evaluation) runs the
jobs, relabelling and rules of config/prometheus/ with the targets pointed at this stack, plus one dead target per
job. Traffic: good and invalid frames to one model; the other is reloaded with `ruth.fault.fail_rate=1` until its
breaker opens; then `ruthctl watch` adopts the registry and repairs the fault-injected config (a live drift).

Then every dashboard query must return data over the run, except the GPU-only panels, which must be empty on
this CPU host; every rule must evaluate without error; the expected alerts must become active (pending is
enough: their `for:` durations are proven by `promtool test rules`), and the ones that would be false alarms must
not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import monitoring_support as ms
import pytest
import tritonclient.http as httpclient
import yaml
from support import REPO_ROOT, free_port, jpeg, start_triton, tank_frame, vision_inputs
from tritonclient.utils import InferenceServerException

pytestmark = [pytest.mark.integration, pytest.mark.monitoring]

TANK = "tank_overflow_monitoring"
CHANE = "chane_tank_monitor"
RATE_WINDOW = "30s"
#: Alerts this run must trigger, and why.
EXPECTED_ALERTS = {
    "RuthTritonDown": "a dead target in the triton job",
    "RuthWatchDown": "a dead target in the ruthctl-watch job",
    "RuthBreakerOpen": f"{CHANE}'s breaker opened",
    "RuthModelUnhealthy": f"{CHANE}'s instance reports health -1",
    "RuthModelErrorRatioHigh": f"{CHANE} answers internal / breaker_open only",
    "RuthInvalidInputRatioHigh": f"over 40% of {TANK}'s requests are invalid",
}
#: Alerts that would be false alarms here.
FORBIDDEN_ALERTS = {
    "RuthBackendExceptions": "our execute() never raises",
    "RuthGpuFallbackToCpu": "the cpu profile asks for no GPU",
    "RuthZombieInferences": "nothing hangs",
    "RuthQueueTimeHigh": "requests are sequential",
    "RuthModelDisabled": "one repair is far from exhausting the recovery attempts",
}


# ------------------------------------------------------------------ Prometheus


@dataclasses.dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @classmethod
    def start(cls, workdir: Path, config: dict[str, Any], timeout_s: float = 30.0) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing: install it with `apt-get install -y prometheus` (CI's .ci/run does)")
        workdir.mkdir(parents=True, exist_ok=True)
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        port = free_port()
        log = workdir / "prometheus.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(  # noqa: S603 - fixed argv
                [
                    binary,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        prometheus = cls(process, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited rc={process.returncode}:\n{log.read_text()[-4000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return prometheus
            time.sleep(0.2)
        prometheus.stop()
        raise RuntimeError(f"prometheus not ready in {timeout_s}s:\n{log.read_text()[-4000:]}")

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict[str, Any]]:
        try:
            return list(self.api("query_range", query=expr, start=start, end=end, step=step)["result"])
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{expr}: {exc.read().decode(errors='replace')}") from exc

    def wait_for(self, expr: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.5)
        raise AssertionError(f"no data for {expr} after {timeout_s}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def scrape_config(triton_target: str, watch_target: str, dead: list[str]) -> dict[str, Any]:
    """The repository's prometheus.yml, its targets pointed at this stack, scraping and evaluating every second."""
    config = yaml.safe_load(ms.PROMETHEUS_CONFIG.read_text())
    config["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"})
    config["rule_files"] = [str(ms.RULES_FILE)]
    targets = {"triton": [triton_target, dead[0]], "ruthctl-watch": [watch_target, dead[1]]}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    return dict(config)


# ------------------------------------------------------------------ the stack


def deployment_root(tmp: Path, models: list[str]) -> Path:
    """A deployment root holding only `models`: their repository entries and specs, as `ruthctl watch` expects."""
    root = tmp / "deployment"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in models:
        shutil.copytree(REPO_ROOT / "model_repository" / name, root / "model_repository" / name, ignore=skip)
        (root / "config" / "models").mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / "config" / "models" / f"{name}.yaml", root / "config" / "models")
    shutil.copytree(REPO_ROOT / "config" / "profiles", root / "config" / "profiles")
    return root


def faulty_config(repository: Path, name: str) -> dict[str, Any]:
    """The model's cpu-profile config with every request failing and a breaker that opens after 3 failures."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    source = repository / name / "configs" / "cpu.pbtxt"
    if not source.exists():
        source = repository / name / "config.pbtxt"
    message = text_format.Parse(source.read_text(), model_config_pb2.ModelConfig())
    config = dict(json_format.MessageToDict(message, preserving_proto_field_name=True))
    parameters = dict(config.get("parameters", {}))
    for key, value in {
        "ruth.fault.fail_rate": "1.0",
        "ruth.breaker.failure_threshold": "3",
        "ruth.breaker.cooldown_s": "600",
    }.items():
        parameters[key] = {"string_value": value}
    config["parameters"] = parameters
    return config


def send(client: httpclient.InferenceServerClient, model: str, **request: Any) -> str:
    """One request; its outcome as Triton's HTTP status ('200', '400', '500', '503')."""
    try:
        client.infer(model, vision_inputs(httpclient, **request))
    except InferenceServerException as exc:
        return str(exc.status())
    return "200"


@dataclasses.dataclass
class Stack:
    prometheus: Prometheus
    started: float
    outcomes: dict[str, list[str]]
    logs: dict[str, Path]

    def tail(self) -> str:
        return "\n".join(f"--- {name}\n{path.read_text(errors='replace')[-3000:]}" for name, path in self.logs.items())


@contextlib.contextmanager
def watch_process(workdir: Path, url: str, env: dict[str, str], metrics_port: int) -> Iterator[Path]:
    log = workdir / "watch.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(  # noqa: S603 - fixed argv
            [
                sys.executable,
                "-m",
                "ruthctl",
                "--url",
                url,
                "watch",
                "--interval",
                "1",
                "--backoff",
                "1",
                "--metrics-port",
                str(metrics_port),
                "--metrics-addr",
                "127.0.0.1",
            ],
            cwd=workdir,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield log
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("monitoring-live")
    root = deployment_root(tmp, [TANK, CHANE])
    repository = root / "model_repository"
    with contextlib.ExitStack() as cleanup:
        handle = start_triton(tmp / "triton", [TANK, CHANE], repository=repository)
        cleanup.callback(handle.server.stop, grace_s=30)
        metrics_target = urllib.parse.urlsplit(handle.metrics_url).netloc
        watch_port = free_port()
        prometheus = Prometheus.start(
            tmp / "prometheus",
            scrape_config(metrics_target, f"127.0.0.1:{watch_port}", [f"127.0.0.1:{free_port()}" for _ in range(2)]),
        )
        cleanup.callback(prometheus.stop)
        started = time.time()
        # the traffic must come after a first scrape, or every counter's first sample already holds it
        prometheus.wait_for(f'up{{job="triton", instance="{metrics_target}"}} == 1')
        outcomes: dict[str, list[str]] = {TANK: [], CHANE: []}
        good = jpeg(tank_frame(55))
        with contextlib.closing(httpclient.InferenceServerClient(handle.http_url, network_timeout=30)) as client:
            for _ in range(12):
                outcomes[TANK].append(send(client, TANK, image=good))
            for _ in range(6):
                outcomes[TANK].append(send(client, TANK, image=good, stream_id="not-a-uuid"))
                outcomes[TANK].append(send(client, TANK, image=b"GIF89a not an accepted image"))
            handle.load(CHANE, config=faulty_config(repository, CHANE))
            for _ in range(8):
                outcomes[CHANE].append(send(client, CHANE, image=good))
        prometheus.wait_for(f'ruth_breaker_state{{model="{CHANE}"}} == 2')

        # `ruthctl watch` adopts the registry, then reloads CHANE with its spec's config (the faults are live drift).
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUTH_")}
        env.update({"MODELS_ROOT": str(repository), "RUTH_STATE_DIR": str(handle.state_dir), "RUTH_AI_PROFILE": "cpu"})
        url = f"{handle.http_url}?metrics={urllib.parse.urlsplit(handle.metrics_url).port}"
        watch_log = cleanup.enter_context(watch_process(tmp, url, env, watch_port))
        logs = {"tritonserver": handle.log_path, "watch": watch_log, "prometheus": prometheus.log}
        stack = Stack(prometheus, started, outcomes, logs)
        try:
            prometheus.wait_for(f'ruthctl_recoveries_total{{model="{CHANE}"}} > 0', timeout_s=90)
            prometheus.wait_for(f'ruthctl_model_ready{{model="{CHANE}"}} == 1', timeout_s=60)
            with contextlib.closing(httpclient.InferenceServerClient(handle.http_url, network_timeout=30)) as client:
                for _ in range(4):
                    outcomes[TANK].append(send(client, TANK, image=good))
                    outcomes[CHANE].append(send(client, CHANE, image=good))
            prometheus.wait_for('ALERTS{alertname="RuthModelErrorRatioHigh"}', timeout_s=60)
            time.sleep(3)  # a few more scrapes and evaluations after the last requests
        except BaseException:
            print(stack.tail())
            raise
        yield stack


# ------------------------------------------------------------------ the checks


def test_the_traffic_did_what_the_scenario_needs(stack: Stack) -> None:
    tank, chane = stack.outcomes[TANK], stack.outcomes[CHANE]
    assert tank.count("200") == 16 and tank.count("400") == 12, tank
    assert chane[:3] == ["500"] * 3, f"fault injection did not fail the first requests: {chane}"
    assert set(chane[3:]) == {"503"}, f"the breaker did not stay open across watch's reload: {chane}"


def test_outcome_counters_exist_at_zero_before_the_first_request(stack: Stack) -> None:
    """A counter series born with its first increments already in it hides them from rate() and increase():
    a breaker that trips within one scrape interval of a load would never show in the error ratio."""
    first = {}
    for outcome in ("ok", "invalid_arg", "internal", "breaker_open"):
        for model in (TANK, CHANE):
            series = stack.prometheus.query_range(
                f'sum(ruth_requests_total{{model="{model}", outcome="{outcome}"}})', stack.started, time.time()
            )
            if series:
                first[(model, outcome)] = float(series[0]["values"][0][1])
    born_late = {key: value for key, value in first.items() if value != 0}
    assert born_late == {}, "ruth_requests_total series whose first scraped value already counts requests"


def test_every_rule_evaluates_without_error_on_real_series(stack: Stack) -> None:
    groups = stack.prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(ms.load_rules())
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert broken == {}


def range_has_data(stack: Stack, expr: str) -> bool:
    series = stack.prometheus.query_range(expr, stack.started, time.time())
    return any(math.isfinite(float(value)) for one in series for _, value in one["values"])


def test_every_dashboard_query_returns_data_except_the_gpu_panels(stack: Stack) -> None:
    queries = ms.panel_queries(ms.load_dashboard())
    empty = [
        f"{q.label}: {ms.render(q.expr, rate_interval=RATE_WINDOW)}"
        for q in queries
        if not q.gpu_only and not range_has_data(stack, ms.render(q.expr, rate_interval=RATE_WINDOW))
    ]
    gpu_only = sorted({q.panel for q in queries if q.gpu_only})
    print(f"GPU-only panels, excepted on this CPU host: {gpu_only}")
    assert gpu_only == ["GPU memory", "GPU power", "GPU utilisation"]
    assert empty == [], "dashboard queries without data:\n" + "\n".join(empty) + "\n" + stack.tail()


def test_gpu_only_panels_have_data_exactly_on_a_gpu_host(stack: Stack) -> None:
    """So the GPU-only list above is exact: on a CPU host these panels are empty for the reason they are marked,
    and on a GPU host (Triton with NVML/DCGM) they fill like every other panel."""
    from ruthctl.settings import Hardware, detect_hardware

    on_gpu = detect_hardware() is Hardware.GPU
    for query in ms.panel_queries(ms.load_dashboard()):
        if query.gpu_only:
            assert range_has_data(stack, ms.render(query.expr, rate_interval=RATE_WINDOW)) is on_gpu, query.label


def test_the_model_variable_lists_both_models(stack: Stack) -> None:
    [selector] = ms.variable_queries(ms.load_dashboard())
    values = stack.prometheus.api("label/model/values", **{"match[]": selector})
    assert {TANK, CHANE} <= set(values)


def test_per_process_series_carry_triton_instance_not_a_clashing_instance(stack: Stack) -> None:
    series = stack.prometheus.query(f'ruth_model_health{{model="{CHANE}"}}')
    assert series
    for one in series:
        labels = one["metric"]
        assert labels["triton_instance"].startswith(f"{CHANE}_")
        assert "exported_instance" not in labels
        assert labels["job"] == "triton"


def ever_active_alerts(stack: Stack) -> set[str]:
    series = stack.prometheus.query_range('ALERTS{alertstate=~"pending|firing"}', stack.started, time.time())
    return {one["metric"]["alertname"] for one in series}


def test_expected_alerts_fire_and_false_alarms_do_not(stack: Stack) -> None:
    active = ever_active_alerts(stack)
    missing = {name: why for name, why in EXPECTED_ALERTS.items() if name not in active}
    assert missing == {}, f"active were {sorted(active)}\n{stack.tail()}"
    false_alarms = {name: why for name, why in FORBIDDEN_ALERTS.items() if name in active}
    assert false_alarms == {}


def test_the_error_ratio_alert_names_the_failing_outcome(stack: Stack) -> None:
    series = stack.prometheus.query_range(
        f'ALERTS{{alertname="RuthModelErrorRatioHigh", model="{CHANE}"}}', stack.started, time.time()
    )
    assert {one["metric"]["outcome"] for one in series} <= {"internal", "breaker_open"}
    assert series
