"""The report's PNG figures (matplotlib, no display). Each function takes the results and writes one file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)
import numpy as np  # noqa: E402

_DPI = 110


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def _bars(ax: Any, groups: list[str], series: Mapping[str, list[float]], ylabel: str) -> None:
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for index, (label, values) in enumerate(series.items()):
        bars = ax.bar(x + (index - (len(series) - 1) / 2) * width, values, width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def overhead(results: Mapping[str, Any], path: Path) -> Path | None:
    entries = results.get("overhead") or {}
    if not entries:
        return None
    models = list(entries)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    _bars(
        ax,
        models,
        {
            "bare model.py": [entries[m]["throughput_bare"] for m in models],
            "full library": [entries[m]["throughput_full"] for m in models],
        },
        "requests/s",
    )
    concurrency = next(iter(entries.values()))["concurrency"]
    ax.set_title(f"Hardening overhead: same server, same frames, concurrency {concurrency}", fontsize=10)
    return _save(fig, path)


def limit(results: Mapping[str, Any], path: Path) -> Path | None:
    entries = results.get("limit") or {}
    if not entries:
        return None
    models = list(entries)
    cores = str(next(iter(entries.values()))["instances"])
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    _bars(
        ax,
        models,
        {
            f"in process x{cores}": [entries[m]["in_process"].get(cores, {}).get("throughput", 0.0) for m in models],
            "served, bare": [entries[m]["served_bare"]["throughput"] for m in models],
            "served, full": [entries[m]["served_full"]["throughput"] for m in models],
            "identity (same payload)": [entries[m]["identity"]["throughput"] for m in models],
        },
        "frames/s",
    )
    ax.set_title(f"Distance to the limit ({cores} instance(s) = cores)", fontsize=10)
    return _save(fig, path)


def transport(results: Mapping[str, Any], path: Path) -> Path | None:
    entry = results.get("transport") or {}
    models = entry.get("models") or {}
    if not models:
        return None
    labels = list(next(iter(models.values())))
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    _bars(
        ax,
        labels,
        {name: [points[label]["throughput"] for label in labels] for name, points in models.items()},
        "requests/s",
    )
    ax.set_title(f"Transports, 640x480 frame, concurrency {entry['concurrency']} (Python client)", fontsize=10)
    return _save(fig, path)


def _series(points: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    series: dict[str, list[dict[str, Any]]] = {}
    for point in points:
        label = f"{point['instances']} inst, batching {'on' if point['dynamic_batching'] else 'off'}"
        series.setdefault(label, []).append(point["result"])
    return series


def scaling(results: Mapping[str, Any], path: Path) -> Path | None:
    points = (results.get("scaling") or {}).get("points") or []
    if not points:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, series in _series(points).items():
        conc = [r["concurrency"] for r in series]
        left.plot(conc, [r["throughput"] for r in series], marker="o", label=label)
        right.plot(conc, [r["p99_ms"] for r in series], marker="o", label=label)
    for ax, ylabel in ((left, "requests/s"), (right, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    left.set_title(f"{results['scaling']['model']}: throughput", fontsize=10)
    right.set_title("p99 latency", fontsize=10)
    return _save(fig, path)


def old_design(results: Mapping[str, Any], path: Path) -> Path | None:
    rows = (results.get("old_design") or {}).get("rows") or []
    if not rows:
        return None
    conc = [r["concurrency"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    lines = {"old design (FastAPI, JSON+base64)": "fastapi", "Triton, Python client (HTTP)": "triton_python"}
    if all(r.get("triton_perf_analyzer") for r in rows):
        lines["Triton, perf_analyzer (HTTP)"] = "triton_perf_analyzer"
    for label, key in lines.items():
        left.plot(conc, [r[key]["throughput"] for r in rows], marker="o", label=label)
        right.plot(conc, [r[key]["p99_ms"] for r in rows], marker="o", label=label)
    for ax, ylabel in ((left, "requests/s"), (right, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    left.set_title("Versus the old design: throughput", fontsize=10)
    right.set_title("p99 latency", fontsize=10)
    return _save(fig, path)


def cores(results: Mapping[str, Any], path: Path) -> Path | None:
    points = (results.get("cores") or {}).get("points") or []
    if len(points) < 2:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    counts = [p["cores"] for p in points]
    ax.plot(counts, [p["fastapi"]["throughput"] for p in points], marker="o", label="old design")
    ax.plot(counts, [p["triton"]["throughput"] for p in points], marker="o", label="Triton")
    ax.set_xticks(counts)
    ax.set_xlabel("CPU cores (servers + client)")
    ax.set_ylabel("requests/s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Old vs new as cores are added", fontsize=10)
    return _save(fig, path)


ALL = {
    "overhead": overhead,
    "limit": limit,
    "transport": transport,
    "scaling": scaling,
    "old_design": old_design,
    "cores": cores,
}
