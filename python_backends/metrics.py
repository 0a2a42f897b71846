"""Every custom metric, declared once (names and labels match docs/metrics.md).

Triton serves these next to its own `nv_*` families on the metrics port, through the Python backend's custom
metrics API. Domain code reports through the `MetricsSink` interface and never imports pb_utils; tests use
`RecordingMetrics`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import defaultdict
from typing import Any, Protocol

from python_backends import triton
from python_backends.breaker import BREAKER_GAUGE, BreakerSnapshot, BreakerState

OUTCOMES = ("ok", "invalid_arg", "breaker_open", "timeout", "unavailable", "store_unavailable", "internal")
REJECTION_FIELDS = ("IMAGE", "FRAME", "STREAM_ID", "TIMESTAMP", "CONFIG", "METADATA")
LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


@dataclasses.dataclass(frozen=True)
class Family:
    """One metric family as docs/metrics.md documents it (a unit test holds the two together)."""

    kind: str  # COUNTER, GAUGE or HISTOGRAM, as pb_utils.MetricFamily spells them
    labels: tuple[str, ...]
    description: str


BASE = ("model", "version")
INSTANCE = (*BASE, "instance")

FAMILIES: dict[str, Family] = {
    "ruth_requests_total": Family(
        "COUNTER",
        (*BASE, "outcome"),
        "Requests by outcome (ok, invalid_arg, breaker_open, timeout, unavailable, store_unavailable, internal)",
    ),
    "ruth_validation_rejections_total": Family("COUNTER", (*BASE, "field"), "INVALID_ARG rejections by input tensor"),
    "ruth_inference_latency_seconds": Family("HISTOGRAM", BASE, "Time inside the model's algorithm per request"),
    "ruth_request_latency_seconds": Family("HISTOGRAM", BASE, "Whole request inside the model process"),
    "ruth_breaker_state": Family("GAUGE", BASE, "Circuit breaker: 0 closed, 1 half-open, 2 open"),
    "ruth_breaker_trips_total": Family("COUNTER", BASE, "Transitions of the circuit breaker to OPEN"),
    "ruth_watchdog_timeouts_total": Family("COUNTER", BASE, "Inference calls answered at their deadline"),
    "ruth_zombie_threads": Family("GAUGE", INSTANCE, "Timed-out inferences still running"),
    "ruth_device_allocation": Family(
        "GAUGE", (*INSTANCE, "placement"), "1 for the placement this instance got (gpu, cpu, fallback)"
    ),
    "ruth_device_reserved_bytes": Family("GAUGE", INSTANCE, "Bytes reserved in the GPU ledger by this instance"),
    "ruth_model_health": Family("GAUGE", INSTANCE, "1 healthy, 0 degraded, -1 unhealthy"),
    "ruth_stream_states": Family("GAUGE", BASE, "Per-stream states held"),
    "ruth_pose_cache_total": Family(
        "COUNTER",
        (*BASE, "result"),
        "Pose lookups answered from the frame cache (hit) or by the network (miss)",
    ),
}

#: families served only by the model named: a family with no series yet is not in Triton's /metrics at all
ONLY_IN: dict[str, str] = {"ruth_pose_cache_total": "pose_estimator"}


class MetricsSink(Protocol):
    def request(self, outcome: str, count: int = 1) -> None: ...
    def rejection(self, field: str) -> None: ...
    def inference_latency(self, seconds: float) -> None: ...
    def request_latency(self, seconds: float) -> None: ...
    def breaker(self, state: BreakerState, tripped: bool) -> None: ...
    def watchdog_timeout(self) -> None: ...
    def zombies(self, count: int) -> None: ...
    def device(self, placement: str, reserved_bytes: int) -> None: ...
    def health(self, value: int) -> None: ...
    def stream_states(self, count: int) -> None: ...
    def pose_cache(self, hit: bool, count: int = 1) -> None: ...


class RecordingMetrics:
    """In-memory sink for tests: counters add up, gauges keep the last value, histograms keep every sample."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, str], float] = defaultdict(float)
        self.gauges: dict[str, Any] = {}
        self.samples: dict[str, list[float]] = defaultdict(list)

    def request(self, outcome: str, count: int = 1) -> None:
        self.counters[("requests", outcome)] += count

    def rejection(self, field: str) -> None:
        self.counters[("rejections", field)] += 1

    def inference_latency(self, seconds: float) -> None:
        self.samples["inference"].append(seconds)

    def request_latency(self, seconds: float) -> None:
        self.samples["request"].append(seconds)

    def breaker(self, state: BreakerState, tripped: bool) -> None:
        self.gauges["breaker"] = BREAKER_GAUGE[state]
        if tripped:
            self.counters[("trips", "")] += 1

    def watchdog_timeout(self) -> None:
        self.counters[("timeouts", "")] += 1

    def zombies(self, count: int) -> None:
        self.gauges["zombies"] = count

    def device(self, placement: str, reserved_bytes: int) -> None:
        self.gauges["placement"] = placement
        self.gauges["reserved_bytes"] = reserved_bytes

    def health(self, value: int) -> None:
        self.gauges["health"] = value

    def stream_states(self, count: int) -> None:
        self.gauges["streams"] = count

    def pose_cache(self, hit: bool, count: int = 1) -> None:
        self.counters[("pose_cache", "hit" if hit else "miss")] += count


class TritonMetrics:
    """Sink backed by `pb_utils.MetricFamily`: one family per name per process, metrics created per label set."""

    def __init__(self, model: str, version: str, instance: str) -> None:
        self._pb = triton.pb()
        self._base = {"model": model, "version": version}
        self._instance = {**self._base, "instance": instance}
        self._families: dict[str, Any] = {}
        self._metrics: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        self._lock = threading.Lock()
        for name, family in FAMILIES.items():
            self._families[name] = self._pb.MetricFamily(
                name=name, description=family.description, kind=getattr(self._pb.MetricFamily, family.kind)
            )
        # Every series exists at zero from the first scrape: Prometheus's rate() can't count what happened before a
        # series' first sample, so an outcome that first occurs between two scrapes would be lost to the alerts.
        for outcome in OUTCOMES:
            self._metric("ruth_requests_total", {**self._base, "outcome": outcome})
        for field in REJECTION_FIELDS:
            self._metric("ruth_validation_rejections_total", {**self._base, "field": field})
        self.device("cpu", 0)
        self.zombies(0)
        self.breaker(BreakerState.CLOSED, tripped=False)
        self._metric("ruth_breaker_trips_total", self._base)
        self._metric("ruth_watchdog_timeouts_total", self._base)

    def _metric(self, name: str, labels: dict[str, str]) -> Any:
        key = (name, tuple(sorted(labels.items())))
        metric = self._metrics.get(key)
        if metric is None:
            with self._lock:
                metric = self._metrics.get(key)
                if metric is None:
                    declared = FAMILIES[name]
                    if tuple(sorted(labels)) != tuple(sorted(declared.labels)):
                        raise ValueError(f"{name} takes labels {declared.labels}, got {tuple(labels)}")
                    family = self._families[name]
                    if declared.kind == "HISTOGRAM":
                        metric = family.Metric(labels=labels, buckets=LATENCY_BUCKETS)
                    else:
                        metric = family.Metric(labels=labels)
                    self._metrics[key] = metric
        return metric

    def request(self, outcome: str, count: int = 1) -> None:
        self._metric("ruth_requests_total", {**self._base, "outcome": outcome}).increment(count)

    def rejection(self, field: str) -> None:
        self._metric("ruth_validation_rejections_total", {**self._base, "field": field}).increment(1)

    def inference_latency(self, seconds: float) -> None:
        self._metric("ruth_inference_latency_seconds", self._base).observe(seconds)

    def request_latency(self, seconds: float) -> None:
        self._metric("ruth_request_latency_seconds", self._base).observe(seconds)

    def breaker(self, state: BreakerState, tripped: bool) -> None:
        self._metric("ruth_breaker_state", self._base).set(BREAKER_GAUGE[state])
        if tripped:
            self._metric("ruth_breaker_trips_total", self._base).increment(1)

    def watchdog_timeout(self) -> None:
        self._metric("ruth_watchdog_timeouts_total", self._base).increment(1)

    def zombies(self, count: int) -> None:
        self._metric("ruth_zombie_threads", self._instance).set(count)

    def device(self, placement: str, reserved_bytes: int) -> None:
        for option in ("gpu", "cpu", "fallback"):
            labels = {**self._instance, "placement": option}
            self._metric("ruth_device_allocation", labels).set(1 if option == placement else 0)
        self._metric("ruth_device_reserved_bytes", self._instance).set(reserved_bytes)

    def health(self, value: int) -> None:
        self._metric("ruth_model_health", self._instance).set(value)

    def stream_states(self, count: int) -> None:
        self._metric("ruth_stream_states", self._base).set(count)

    def pose_cache(self, hit: bool, count: int = 1) -> None:
        self._metric("ruth_pose_cache_total", {**self._base, "result": "hit" if hit else "miss"}).increment(count)


class NullMetrics:
    """METRICS_ENABLED=false: accept every report and keep nothing (a long-running process must not accumulate)."""

    def request(self, outcome: str, count: int = 1) -> None:
        pass

    def rejection(self, field: str) -> None:
        pass

    def inference_latency(self, seconds: float) -> None:
        pass

    def request_latency(self, seconds: float) -> None:
        pass

    def breaker(self, state: BreakerState, tripped: bool) -> None:
        pass

    def watchdog_timeout(self) -> None:
        pass

    def zombies(self, count: int) -> None:
        pass

    def device(self, placement: str, reserved_bytes: int) -> None:
        pass

    def health(self, value: int) -> None:
        pass

    def stream_states(self, count: int) -> None:
        pass

    def pose_cache(self, hit: bool, count: int = 1) -> None:
        pass


class BreakerMetricsListener:
    """Breaker listener that mirrors transitions into the metrics sink."""

    def __init__(self, sink: MetricsSink) -> None:
        self._sink = sink

    def on_transition(self, name: str, old: BreakerState, new: BreakerState, snap: BreakerSnapshot) -> None:
        self._sink.breaker(new, tripped=new is BreakerState.OPEN and old is not BreakerState.OPEN)
