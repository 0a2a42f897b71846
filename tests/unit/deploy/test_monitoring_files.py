"""Static checks of the monitoring files with the real `promtool` (Debian package `prometheus`).

The live counterpart, tests/integration/test_monitoring_live.py, runs the same files against a real Triton and a
real Prometheus.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import monitoring_support as ms
import pytest
import yaml


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: install it with `apt-get install -y prometheus` (CI's .ci/run does)")
    return path


def run_promtool(promtool: str, *args: str, cwd: Path = ms.PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"promtool failed (rc={result.returncode}):\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return ms.load_dashboard()


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    return ms.load_rules()


# ------------------------------------------------------------------ promtool


def test_prometheus_config_passes_promtool_check_config(promtool: str) -> None:
    assert_ok(run_promtool(promtool, "check", "config", ms.PROMETHEUS_CONFIG.name))


def test_rules_pass_promtool_check_rules(promtool: str) -> None:
    assert_ok(run_promtool(promtool, "check", "rules", ms.RULES_FILE.name))


def test_alerts_fire_on_synthetic_series_in_promtool_unit_tests(promtool: str) -> None:
    assert_ok(run_promtool(promtool, "test", "rules", ms.RULES_TEST_FILE.name))


def test_every_alert_has_a_unit_test_that_expects_it_to_fire(rules: list[dict[str, Any]]) -> None:
    suite = yaml.safe_load(ms.RULES_TEST_FILE.read_text())
    fired = {
        case["alertname"]
        for test in suite["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {rule["alert"] for rule in rules if "alert" in rule}
    assert alerts - fired == set(), "alerts without a promtool test that makes them fire"


def test_every_dashboard_query_parses_as_promql(promtool: str, dashboard: dict[str, Any], tmp_path: Path) -> None:
    exprs = {q.label: ms.render(q.expr) for q in ms.panel_queries(dashboard)}
    exprs.update({f"variable {i}": sel for i, sel in enumerate(ms.variable_queries(dashboard))})
    assert len(exprs) > 20
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump(ms.queries_as_rules(exprs)))
    assert_ok(run_promtool(promtool, "check", "rules", str(rules_file)))


def test_promtool_check_catches_a_broken_query(promtool: str, tmp_path: Path) -> None:
    """The parse check above is only worth something if promtool rejects bad PromQL this way."""
    rules_file = tmp_path / "broken.yml"
    rules_file.write_text(yaml.safe_dump(ms.queries_as_rules({"bad": "sum by (model) (rate(up[1m])"})))
    result = run_promtool(promtool, "check", "rules", str(rules_file))
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


# ------------------------------------------------------------------ metric names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (model) (rate(ruth_requests_total{outcome!="ok"}[5m]))', {"ruth_requests_total"}),
        (
            'a:b:c{outcome!="ok"} / ignoring (outcome) group_left () (x_total > 0)',
            {"a:b:c", "x_total"},
        ),
        ("histogram_quantile(0.95, sum by (le) (rate(h_bucket[1m]))) * 1e3", {"h_bucket"}),
        ('time() - max by (server) (ts_seconds) and on (server) up{job="by"} offset 5m', {"ts_seconds", "up"}),
    ],
)
def test_metric_names_are_extracted_from_promql(expr: str, names: set[str]) -> None:
    assert ms.metric_names(expr) == names


def test_documented_metrics_include_histogram_series() -> None:
    doc = "| `ruth_x_seconds` | histogram | model |\n| `ruth_y_total` | counter | model |\n| family | type |"
    assert ms.documented_metrics(doc) == {
        "ruth_x_seconds",
        "ruth_x_seconds_bucket",
        "ruth_x_seconds_sum",
        "ruth_x_seconds_count",
        "ruth_y_total",
    }


def referenced_metrics(dashboard: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, set[str]]:
    where: dict[str, set[str]] = {}
    sources = [(q.label, q.expr) for q in ms.panel_queries(dashboard)]
    sources += [(f"variable {s}", s) for s in ms.variable_queries(dashboard)]
    sources += [(rule.get("alert") or rule["record"], rule["expr"]) for rule in rules]
    for label, expr in sources:
        for name in ms.metric_names(ms.render(expr)):
            where.setdefault(name, set()).add(label)
    return where


def test_watch_exporter_metrics_are_read_from_its_registry() -> None:
    names = ms.watch_exporter_metrics()
    assert {"ruthctl_model_ready", "ruthctl_recoveries_total", "ruthctl_reconcile_duration_seconds_bucket"} <= names


def test_every_metric_is_documented_or_a_triton_2_51_family(
    dashboard: dict[str, Any], rules: list[dict[str, Any]]
) -> None:
    known = (
        ms.documented_metrics(ms.METRICS_DOC.read_text())
        | ms.watch_exporter_metrics()
        | ms.TRITON_CPU_FAMILIES
        | ms.TRITON_GPU_FAMILIES
        | ms.PROMETHEUS_SERIES
        | ms.recorded_names(rules)
    )
    unknown = {name: sorted(where) for name, where in referenced_metrics(dashboard, rules).items() if name not in known}
    assert unknown == {}, "metrics not in docs/metrics.md, `ruthctl watch`'s exporter or Triton 2.51 (name: used by)"


def test_gpu_only_panels_are_exactly_those_that_query_gpu_metrics(dashboard: dict[str, Any]) -> None:
    for query in ms.panel_queries(dashboard):
        uses_gpu = bool(ms.metric_names(ms.render(query.expr)) & ms.TRITON_GPU_FAMILIES)
        assert query.gpu_only == uses_gpu, query.label


def test_dashboard_has_the_panels_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    names_by_panel: dict[str, set[str]] = {}
    for query in ms.panel_queries(dashboard):
        names_by_panel.setdefault(query.panel, set()).update(ms.metric_names(ms.render(query.expr)))
    used = set().union(*names_by_panel.values())
    required = {
        "ruth_requests_total",
        "ruth_inference_latency_seconds_bucket",
        "ruth_breaker_state",
        "ruth_zombie_threads",
        "ruth_model_health",
        "ruth_device_allocation",
        "ruth_device_reserved_bytes",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
        "nv_inference_pending_request_count",
        "nv_cpu_utilization",
        "nv_cpu_memory_used_bytes",
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
        "ruthctl_model_ready",
        "ruthctl_model_desired",
        "ruthctl_model_state",
        "ruthctl_violations",
        "ruthctl_recoveries_total",
    }
    assert required - used == set()


# ------------------------------------------------------------------ dashboard structure and docs


def test_every_panel_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    provisioned = yaml.safe_load((ms.REPO / "config/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    for panel in ms.iter_panels(dashboard):
        assert panel["datasource"]["uid"] == uid, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]


def test_panels_have_unique_ids_and_fit_the_grid(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_panel_has_a_description_and_a_section_in_docs(dashboard: dict[str, Any]) -> None:
    doc = ms.DASHBOARDS_DOC.read_text()
    for panel in ms.iter_panels(dashboard):
        assert panel.get("description"), panel["title"]
        assert f"### {panel['title']}" in doc, f"docs/dashboards.md has no section for panel {panel['title']!r}"


def test_dashboard_provisioning_points_at_the_dashboards_folder() -> None:
    provider = yaml.safe_load((ms.REPO / "config/grafana/provisioning/dashboards/ruth.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/ruth"
    assert json.loads(ms.DASHBOARD_FILE.read_text())["uid"] == "ruth-runtime"


# ------------------------------------------------------------------ scrape config


def test_scrape_config_scrapes_triton_and_the_watch_exporter() -> None:
    config = yaml.safe_load(ms.PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"triton", "ruthctl-watch"}
    assert jobs["triton"]["static_configs"][0]["targets"] == ["triton:8002"]
    assert config["rule_files"] == ["alerts.yml"]


def test_scrape_config_renames_the_colliding_instance_label(rules: list[dict[str, Any]]) -> None:
    """Our families' `instance` label would be overwritten by the target's; rules group by `triton_instance`."""
    config = yaml.safe_load(ms.PROMETHEUS_CONFIG.read_text())
    relabel = {job["job_name"]: job.get("metric_relabel_configs", []) for job in config["scrape_configs"]}["triton"]
    assert {
        "source_labels": ["exported_instance"],
        "regex": "(.+)",
        "target_label": "triton_instance",
        "replacement": "$1",
        "action": "replace",
    } in relabel
    assert {"regex": "exported_instance", "action": "labeldrop"} in relabel
    assert any("triton_instance" in rule["expr"] for rule in rules)


def test_every_alert_has_a_severity_summary_and_description(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
