"""One measured load point, whichever tool produced it, and the arithmetic shared by every section."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """Closed-loop load at a fixed concurrency: throughput in requests/s, client-side latency in ms.

    `server_us` holds Triton's own per-request breakdown (queue, compute_input, compute_infer, compute_output) when
    the tool reports it (perf_analyzer does); it is less disturbed by the load generator than client latency.
    """

    tool: str
    protocol: str
    concurrency: int
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    count: int
    errors: int
    duration_s: float
    server_us: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: every request completed during the run, warm-up included (what CPU time is divided by)
    sent: int = 0
    #: CPU ms per request by process group, and the machine's foreign load (bench/cpu.py)
    cpu: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["server_us"] = dict(self.server_us)
        out["cpu"] = dict(self.cpu)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadResult:
        return cls(**{**data, "server_us": dict(data.get("server_us") or {}), "cpu": dict(data.get("cpu") or {})})


def summarize(
    latencies_s: Sequence[float],
    *,
    window_s: float,
    errors: int,
    tool: str,
    protocol: str,
    concurrency: int,
    sent: int = 0,
) -> LoadResult:
    """Throughput and percentiles of the requests that completed inside the measurement window."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    if ms.size == 0:
        p50 = p95 = p99 = avg = math.nan
    else:
        p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
        avg = float(ms.mean())
    return LoadResult(
        tool=tool,
        protocol=protocol,
        concurrency=concurrency,
        throughput=ms.size / window_s if window_s > 0 else 0.0,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        avg_ms=avg,
        count=int(ms.size),
        errors=errors,
        duration_s=window_s,
        sent=sent,
    )


def median_result(results: Sequence[LoadResult]) -> LoadResult:
    """The round with the median throughput: interleaved rounds cancel slow drifts in a shared machine's load."""
    if not results:
        raise ValueError("no results")
    ordered = sorted(results, key=lambda r: r.throughput)
    return ordered[(len(ordered) - 1) // 2]


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan
