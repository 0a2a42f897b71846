"""Issue 8's targets, judged from one run's results: met, not met, or not measured (with why)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

OVERHEAD_MAX_PCT = 5.0
OVERHEAD_MAX_MS = 0.3
SERVED_MIN_FRACTION = 0.85
OLD_MIN_RATIO = 1.8
OLD_CONCURRENCY = 8
GPU_MIN_FPS = 100.0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _target(key: str, target: str, measured: str, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"id": key, "target": target, "measured": measured, "met": met, "note": note}


def added_ms(entry: Mapping[str, Any]) -> tuple[float, str]:
    """Added time per request: Triton's backend time when perf_analyzer reported it, else client mean latency."""
    added = entry["added_ms"]
    if _finite(added.get("server")):
        return float(added["server"]), "server compute"
    return float(added["avg"]), "client mean latency"


def overhead_target(results: Mapping[str, Any]) -> dict[str, Any]:
    text = f"≤ {OVERHEAD_MAX_PCT:g} % throughput and ≤ {OVERHEAD_MAX_MS:g} ms per request at concurrency 4"
    entries = results.get("overhead") or {}
    if not entries:
        return _target("overhead", text, "no model measured", None)
    parts, verdicts = [], []
    for model, entry in entries.items():
        cpu = entry.get("cpu_ms") or {}
        if _finite(cpu.get("throughput_ratio")) and _finite(cpu.get("added")):
            pct, ms = 100.0 * (1.0 - cpu["throughput_ratio"]), float(cpu["added"])
            wall_ms, source = added_ms(entry)
            parts.append(
                f"{model}: {pct:+.1f} %, {ms:+.2f} ms CPU (wall clock: {entry['overhead_pct']:+.1f} %, "
                f"{wall_ms:+.2f} ms {source})"
            )
        else:
            ms, source = added_ms(entry)
            pct = entry["overhead_pct"]
            parts.append(f"{model}: {pct:+.1f} %, {ms:+.2f} ms ({source})")
        verdicts.append(pct <= OVERHEAD_MAX_PCT and ms <= OVERHEAD_MAX_MS)
    note = (
        "judged on CPU time per request (model stubs + tritonserver), which other processes on the shared "
        "machine do not distort; wall-clock figures alongside"
    )
    return _target("overhead", text, "; ".join(parts), all(verdicts), note)


def limit_target(results: Mapping[str, Any]) -> dict[str, Any]:
    text = f"served ≥ {SERVED_MIN_FRACTION:.0%} of in-process throughput, one instance per core"
    entries = results.get("limit") or {}
    if not entries:
        return _target("limit", text, "no model measured", None)
    measurable = {m: e for m, e in entries.items() if _finite(e["served_vs_in_process"])}
    if not measurable:
        return _target("limit", text, "no model measurable in process", None)
    parts = [
        f"{m}: {e['served_vs_in_process']:.0%} (bare {e['bare_vs_in_process']:.0%})" for m, e in measurable.items()
    ]
    met = all(e["served_vs_in_process"] >= SERVED_MIN_FRACTION for e in measurable.values())
    others = sorted(set(entries) - set(measurable))
    cpu = "; ".join(
        f"{m}: {e['cpu_efficiency']:.0%}" for m, e in measurable.items() if _finite(e.get("cpu_efficiency"))
    )
    note = f"CPU-based (load generator's share removed): {cpu}" if cpu else ""
    if others:
        note += f"{'; ' if note else ''}not measured in process: {', '.join(others)}"
    return _target("limit", text, "; ".join(parts), met, note)


def old_design_target(results: Mapping[str, Any]) -> dict[str, Any]:
    text = f"≥ {OLD_MIN_RATIO:g}× the old design's throughput at concurrency {OLD_CONCURRENCY}, with a lower p99"
    rows = (results.get("old_design") or {}).get("rows") or []
    row = next((r for r in rows if r["concurrency"] == OLD_CONCURRENCY), None)
    if row is None:
        return _target("old_design", text, f"concurrency {OLD_CONCURRENCY} not measured", None)
    new, old = row["triton_python"], row["fastapi"]
    measured = (
        f"{row['throughput_ratio']:.2f}× ({new['throughput']:.0f} vs {old['throughput']:.0f} req/s); "
        f"p99 {new['p99_ms']:.1f} vs {old['p99_ms']:.1f} ms (Python client, HTTP)"
    )
    met = row["throughput_ratio"] >= OLD_MIN_RATIO and new["p99_ms"] < old["p99_ms"]
    return _target("old_design", text, measured, met)


def cores_target(results: Mapping[str, Any]) -> dict[str, Any]:
    text = "the ratio to the old design grows with cores"
    points = (results.get("cores") or {}).get("points") or []
    if len(points) < 2:
        return _target("cores", text, "fewer than two core counts measured", None)
    measured = ", ".join(f"{p['cores']} core(s): {p['throughput_ratio']:.2f}×" for p in points)
    ratios = [p["throughput_ratio"] for p in points]
    met = ratios[-1] > ratios[0]
    most = max(p["cores"] for p in points)
    note = "" if most >= 16 else f"only up to {most} cores on this machine"
    return _target("cores", text, measured, met, note)


def gpu_target(results: Mapping[str, Any]) -> dict[str, Any]:
    text = f"fall_detection ≥ {GPU_MIN_FPS:g} frames/s on one GPU"
    gpu = results.get("gpu") or {}
    if not gpu.get("measured"):
        return _target("gpu", text, "not measured", None, gpu.get("reason", ""))
    best = float(gpu["best_fps"])
    return _target("gpu", text, f"{best:.0f} frames/s on {gpu.get('device')}", best >= GPU_MIN_FPS)


def evaluate(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        overhead_target(results),
        limit_target(results),
        old_design_target(results),
        cores_target(results),
        gpu_target(results),
    ]
