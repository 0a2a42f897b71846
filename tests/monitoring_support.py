"""Shared by the static monitoring tests and the live one: what the dashboard and the rules query.

Loaded by file path (`load_support()` in each test), so it needs no package layout under `tests/`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO / "config" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_FILE = PROMETHEUS_DIR / "alerts.yml"
RULES_TEST_FILE = PROMETHEUS_DIR / "alerts.test.yml"
DASHBOARD_FILE = REPO / "config" / "grafana" / "dashboards" / "ruth-runtime.json"
METRICS_DOC = REPO / "docs" / "metrics.md"
DASHBOARDS_DOC = REPO / "docs" / "dashboards.md"

#: Families Triton 2.51 serves on a CPU-only host (measured: docs/triton-notes.md §6).
TRITON_CPU_FAMILIES = frozenset(
    {
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
        "nv_inference_pending_request_count",
        "nv_pinned_memory_pool_total_bytes",
        "nv_pinned_memory_pool_used_bytes",
        "nv_cpu_utilization",
        "nv_cpu_memory_total_bytes",
        "nv_cpu_memory_used_bytes",
    }
)
#: Families Triton 2.51 serves only with a GPU and NVML/DCGM (Triton's metrics.md; absent on CPU and Jetson).
TRITON_GPU_FAMILIES = frozenset(
    {
        "nv_gpu_utilization",
        "nv_gpu_memory_total_bytes",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_power_usage",
        "nv_gpu_power_limit",
        "nv_energy_consumption",
    }
)
#: Series Prometheus makes itself.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})

GPU_ONLY_MARK = "GPU only:"

_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "inf",
        "nan",
        "atan2",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?!\w)(\s*\()?")


@dataclasses.dataclass(frozen=True)
class PanelQuery:
    """One query of one dashboard panel."""

    panel: str
    ref_id: str
    expr: str
    gpu_only: bool

    @property
    def label(self) -> str:
        return f"{self.panel} [{self.ref_id}]"


def load_dashboard(path: Path = DASHBOARD_FILE) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every non-row panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    queries = []
    for panel in iter_panels(dashboard):
        gpu_only = str(panel.get("description", "")).startswith(GPU_ONLY_MARK)
        for target in panel.get("targets", []):
            if target.get("expr"):
                queries.append(PanelQuery(panel["title"], target["refId"], target["expr"], gpu_only))
    return queries


def variable_queries(dashboard: Mapping[str, Any]) -> list[str]:
    """PromQL selectors inside template variables: `label_values(<selector>, label)` -> `<selector>`."""
    selectors = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
        selectors.append(match.group(1) if match else query)
    return selectors


def render(expr: str, *, rate_interval: str = "1m", model: str = ".*") -> str:
    """Replace Grafana's variables with values Prometheus accepts, as Grafana would at query time."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$__interval", rate_interval)
        .replace("$__range", "1h")
        .replace("$model", model)
    )


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels and durations left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name in _KEYWORDS:
            continue
        names.add(name)
    return names


def documented_metrics(markdown: str) -> set[str]:
    """Every series name docs/metrics.md declares, with `_bucket/_sum/_count` for its histograms."""
    names = set()
    for line in markdown.splitlines():
        match = re.match(r"\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|\s*(\w+)", line)
        if not match:
            continue
        name, kind = match.groups()
        names.add(name)
        if kind == "histogram":
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return names


def watch_exporter_metrics() -> set[str]:
    """Series names `ruthctl watch` serves, read from its prometheus-client registry (what `--help` lists)."""
    from ruthctl.watch import WatchMetrics

    names = set()
    for family in WatchMetrics().registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update({f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"})
        else:
            names.add(family.name)
    return names


def load_rules(path: Path = RULES_FILE) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def recorded_names(rules: Iterable[Mapping[str, Any]]) -> set[str]:
    return {rule["record"] for rule in rules if "record" in rule}


def queries_as_rules(exprs: Mapping[str, str]) -> dict[str, Any]:
    """A rules file holding each expression as a recording rule, so `promtool check rules` parses all of them."""
    rules = [{"record": f"dashboard:query_{i}:check", "expr": expr} for i, expr in enumerate(exprs.values())]
    return {"groups": [{"name": "dashboard-queries", "rules": rules}]}
