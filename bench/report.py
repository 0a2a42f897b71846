"""docs/benchmarks.md, its figures under bench/ and the raw JSON under bench/raw/, from one run's results.

The report is regenerated whole, except the hand-written reading between the READING markers, which is carried
over from the existing file: numbers come from the run, their interpretation from a person.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import plots

READING_START = "<!-- reading:start (hand-written; kept when the report is regenerated) -->"
READING_END = "<!-- reading:end -->"
DEFAULT_READING = "_Not written yet: read the tables below and say, for each target, why it is met or not._"


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return fmt.format(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def preserved_reading(existing: str | None) -> str:
    if existing and READING_START in existing and READING_END in existing:
        return existing.split(READING_START, 1)[1].split(READING_END, 1)[0].strip("\n")
    return DEFAULT_READING


def _verdict(met: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "not measured"}[met]


def machine_section(results: Mapping[str, Any]) -> list[str]:
    m = results["machine"]
    rows = [
        ["date (UTC)", m["date"]], ["CPU", f"{m['cpu']} × {m['cores']} cores"],
        ["memory", f"{m['memory_gib']} GiB"], ["GPU", "yes" if m["gpu"] else "none"], ["OS", m["os"]],
        ["Python", m["python"]], ["tritonserver", str(m["tritonserver"])],
        ["perf_analyzer", str(m["perf_analyzer"] or "not installed")], ["git commit", str(m["git_commit"])],
    ]  # fmt: skip
    rows += [[name, str(version)] for name, version in m["packages"].items()]
    load = results["load_generator"]
    lines = ["## Machine and versions", "", *_table(["", ""], rows)]
    lines += [
        f"Load generator: {load['note']}. Python client: {load['python_client']}. Measurement window: "
        f"perf_analyzer {load['pa_window_ms']} ms × ≥ 3, Python client {load['python_window_s']} s per point.",
        "",
    ]
    return lines


def targets_section(results: Mapping[str, Any]) -> list[str]:
    rows = [[t["target"], t["measured"], _verdict(t["met"]), t["note"]] for t in results["targets"]]
    header = ["target", "measured", "verdict", "note"]
    return ["## Targets (issue 8), as measured in this run", "", *_table(header, rows)]


def _load_cells(r: Mapping[str, Any]) -> list[str]:
    return [
        _num(r["throughput"]),
        _num(r["p50_ms"], "{:.2f}"),
        _num(r["p95_ms"], "{:.2f}"),
        _num(r["p99_ms"], "{:.2f}"),
    ]


def overhead_section(results: Mapping[str, Any]) -> list[str]:
    entries = results.get("overhead") or {}
    lines = ["## 1. Hardening overhead", ""]
    if not entries:
        return [*lines, "No model measured.", ""]
    first = next(iter(entries.values()))
    lines += [
        f"Each model served with the full library (`RuthModel`) and as `bare_<model>`: the same model file's `load` "
        f"and "
        f"`infer` behind a minimal `execute` (cv2 decode, the algorithm, `json.dumps`; no validation, breaker, "
        f"watchdog, metrics, shared stream state). Same server process, same config, same frames; "
        f"concurrency {first['concurrency']}, {len(first['rounds'])} interleaved rounds, medians "
        f"({first['tool']}). *Added ms* is the per-request difference: Triton's own backend time (compute "
        f"input + infer + output) where perf_analyzer reports it, and client p50/mean latency.",
        "",
    ]
    cpu_rows = []
    for model, e in entries.items():
        cpu = e.get("cpu_ms") or {}
        cpu_rows.append(
            [
                model,
                _num(cpu.get("bare"), "{:.2f}"),
                _num(cpu.get("full"), "{:.2f}"),
                _num(cpu.get("added"), "{:+.2f}"),
                _num(100 * (1 - cpu["throughput_ratio"]) if cpu.get("throughput_ratio") else None, "{:+.1f} %"),
                _num(e.get("foreign_cores"), "{:.2f}"),
            ]
        )
    lines += ["CPU time per request (model stubs + tritonserver, from /proc; the overhead verdict uses these):", ""]
    lines += _table(
        [
            "model",
            "bare CPU ms/req",
            "full CPU ms/req",
            "added CPU ms",
            "CPU-based overhead",
            "other processes' load (cores)",
        ],
        cpu_rows,
    )
    lines += ["Wall clock:", ""]
    rows = []
    for model, e in entries.items():
        added = e["added_ms"]
        rows.append(
            [
                model,
                _num(e["throughput_bare"]),
                _num(e["throughput_full"]),
                _num(e["throughput_ratio"], "{:.3f}"),
                _num(e["overhead_pct"], "{:+.1f} %"),
                _num(added["server"], "{:+.3f}"),
                _num(added["p50"], "{:+.2f}"),
                _num(added["avg"], "{:+.2f}"),
            ]
        )
    lines += _table(
        [
            "model",
            "bare req/s",
            "full req/s",
            "full/bare",
            "overhead",
            "added ms (server)",
            "added ms (p50)",
            "added ms (mean)",
        ],
        rows,
    )
    per_round = []
    for model, e in entries.items():
        for index, r in enumerate(e["rounds"], 1):
            per_round.append(
                [
                    model,
                    str(index),
                    _num(r["bare"]["throughput"]),
                    _num(r["full"]["throughput"]),
                    _num(
                        r["full"]["throughput"] / r["bare"]["throughput"] if r["bare"]["throughput"] else None, "{:.3f}"
                    ),
                ]
            )
    lines += ["Per round:", "", *_table(["model", "round", "bare req/s", "full req/s", "ratio"], per_round)]
    return [*lines, "![overhead](bench/overhead.png)", ""]


def limit_section(results: Mapping[str, Any]) -> list[str]:
    entries = results.get("limit") or {}
    lines = ["## 2. Distance to the limit", ""]
    if not entries:
        return [*lines, "No model measured.", ""]
    first = next(iter(entries.values()))
    cores = str(first["instances"])
    lines += [
        f"*In process*: the bare model's decode + infer called directly, one process per core, no server. *Served*: "
        f"{cores} instance(s) (one per core), concurrency {first['concurrency']} ({first['tool']}), client on the "
        f"same cores. *Identity*: the same request (JPEG + fields) to a model that does no work: the transport "
        f"ceiling.",
        "",
    ]
    rows = []
    for model, e in entries.items():
        one = e["in_process"].get("1")
        first_cell = f"{_num(one['throughput'])} ({_num(one['per_frame_ms'], '{:.2f}')} ms)" if one else "n/a"
        rows.append(
            [
                model,
                first_cell,
                _num(e["in_process"].get(cores, {}).get("throughput")),
                _num(e["served_bare"]["throughput"]),
                _num(e["served_full"]["throughput"]),
                _num(e["identity"]["throughput"]),
                _num(100 * e["served_vs_in_process"], "{:.0f} %"),
                _num(100 * e["bare_vs_in_process"], "{:.0f} %"),
                _num(100 * e["served_vs_identity"], "{:.0f} %"),
            ]
        )
    lines += _table(
        [
            "model",
            "in process ×1 (ms/frame)",
            f"in process ×{cores}",
            "served bare",
            "served full",
            "identity",
            "full / in-process",
            "bare / in-process",
            "full / identity",
        ],
        rows,
    )
    cpu_rows = [
        [
            model,
            _num(e["served_full"].get("cpu", {}).get("stub_ms"), "{:.2f}"),
            _num(e["served_full"].get("cpu", {}).get("server_ms"), "{:.2f}"),
            _num(e["in_process"].get(cores, {}).get("per_frame_ms"), "{:.2f}"),
            _num(100 * e["cpu_efficiency"] if e.get("cpu_efficiency") else None, "{:.0f} %"),
            _num(e.get("client_cores"), "{:.2f}"),
        ]
        for model, e in entries.items()
    ]
    lines += [
        "Where the cores went (served full model): CPU ms per request in its stubs and in tritonserver, against "
        "the in-process ms per frame; the last column is how many cores the load generator itself used.",
        "",
    ]
    lines += _table(
        [
            "model",
            "stub CPU ms/req",
            "server CPU ms/req",
            f"in process ms/frame (×{cores})",
            "in-process / served CPU",
            "load generator (cores)",
        ],
        cpu_rows,
    )
    lines += ["![limit](bench/limit.png)", ""]
    return lines + transport_lines(results)


def transport_lines(results: Mapping[str, Any]) -> list[str]:
    entry = results.get("transport") or {}
    models = entry.get("models") or {}
    if not models:
        return []
    lines = [
        "### Transports for raw frames",
        "",
        f"A raw {entry['frame_bytes']:,} B BGR frame in `FRAME` over HTTP, gRPC, and gRPC with the pixels in Triton "
        f"system shared memory (the client copies each frame into its registered region; the request carries only "
        f"the region name), next to the ~{entry['jpeg_bytes']:,} B JPEG in `IMAGE`. Python client, concurrency "
        f"{entry['concurrency']}.",
        "",
    ]
    labels = list(next(iter(models.values())))
    header = ["transport"] + [f"{name} req/s (p50 / p99 ms)" for name in models]
    rows = []
    for label in labels:
        cells = [label]
        for points in models.values():
            r = points[label]
            cells.append(f"{_num(r['throughput'])} ({_num(r['p50_ms'], '{:.2f}')} / {_num(r['p99_ms'], '{:.2f}')})")
        rows.append(cells)
    return lines + _table(header, rows) + ["![transport](bench/transport.png)", ""]


def scaling_section(results: Mapping[str, Any]) -> list[str]:
    entry = results.get("scaling") or {}
    points = entry.get("points") or []
    lines = ["## 3. Scaling", ""]
    if not points:
        return [*lines, f"Not measured: {entry.get('skipped', 'no points')}.", ""]
    lines += [
        f"`{entry['model']}` reloaded through the repository API with each instance count and dynamic batching "
        f"on (queue delay 0, as shipped) or off ({entry['tool']}).",
        "",
    ]
    rows = [
        [
            str(p["instances"]),
            "on" if p["dynamic_batching"] else "off",
            str(p["result"]["concurrency"]),
            *_load_cells(p["result"]),
        ]
        for p in points
    ]
    lines += _table(["instances", "batching", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms"], rows)
    return [*lines, "![scaling](bench/scaling.png)", ""]


def old_design_section(results: Mapping[str, Any]) -> list[str]:
    entry = results.get("old_design") or {}
    rows_in = entry.get("rows") or []
    lines = ["## 4. Versus the old design", ""]
    if not rows_in:
        return [*lines, f"Not measured: {entry.get('skipped', 'no rows')}.", ""]
    lines += [
        f"`{entry['model']}`'s model code behind FastAPI + uvicorn built the way the original runtime was (one worker, "
        f"`async def` handler blocking on the inference, JSON with a base64 frame, PIL decode) vs Triton "
        f"({entry['instances']} instances), the same Python client and frames for both; perf_analyzer for Triton "
        f"alongside.",
        "",
    ]
    rows = []
    for r in rows_in:
        pa = r.get("triton_perf_analyzer")
        rows.append(
            [
                str(r["concurrency"]),
                *_load_cells(r["fastapi"]),
                *_load_cells(r["triton_python"]),
                f"{_num(pa['throughput'])} / {_num(pa['p99_ms'], '{:.2f}')}" if pa else "n/a",
                _num(r["throughput_ratio"], "{:.2f}×"),
            ]
        )
    lines += _table(
        [
            "conc.",
            "old req/s",
            "old p50",
            "old p95",
            "old p99",
            "Triton req/s",
            "Triton p50",
            "Triton p95",
            "Triton p99",
            "Triton (perf_analyzer) req/s / p99",
            "Triton / old",
        ],
        rows,
    )
    lines += ["![old design](bench/old_design.png)", ""]
    cores = results.get("cores") or {}
    if cores.get("points"):
        lines += [
            f"### As cores are added (servers and client pinned to the first N cores, concurrency "
            f"{cores['concurrency']}, Triton with N instances)",
            "",
        ]
        lines += _table(
            ["cores", "old req/s", "old p99 ms", "Triton req/s", "Triton p99 ms", "Triton / old"],
            [
                [
                    str(p["cores"]),
                    _num(p["fastapi"]["throughput"]),
                    _num(p["fastapi"]["p99_ms"]),
                    _num(p["triton"]["throughput"]),
                    _num(p["triton"]["p99_ms"]),
                    _num(p["throughput_ratio"], "{:.2f}×"),
                ]
                for p in cores["points"]
            ],
        )
        if len(cores["points"]) >= 2:
            lines += ["![cores](bench/cores.png)", ""]
    return lines


POSE_POINTER = (
    "The pose network's engines side by side (LiteRT, ONNX Runtime, OpenVINO, int8) and one camera frame sent to "
    "three analytics with pose_estimator's frame cache off and on: [bench/pose.md](bench/pose.md) "
    "(`nox -s bench_pose`)."
)
GPU_PREPARED = [
    "Two prepared checks, each rehearsed on the CPU by the test suite so they can't rot:",
    "",
    "* `scripts/gpu_device_check.py`: for a bare GPU machine with PyTorch and no tritonserver (the device machines "
    "lent to some sessions: no network, 64 MiB carried per call). It runs the allocator and ledger on real NVML "
    "numbers, the gpu profile's pose network on CUDA through the `torch` engine (the pinned ONNX converted by "
    "onnx2torch, one CUDA graph where it can be captured; keypoints checked against ONNX Runtime within 1 px) and "
    "fall_detection's per-frame path against the 100 frames/s target, into one report. Carried: the tree (~21 MB) "
    "and `scripts/gpu_device_wheels.sh`'s `.whl/` (~3 MB: pydantic, onnx2torch). Command on the machine: "
    "`python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site python3 "
    "scripts/gpu_device_check.py --out $OUT`. CPU rehearsal: `nox -s gpu_dryrun` (in CI).",
    "* `scripts/gpu_check.sh`: the same through tritonserver (ONNX Runtime's CUDA EP, KIND_GPU, the ledger entry "
    "and its release, fall_detection end to end) for a GPU host that has our image or venv. CPU rehearsal: "
    "`tests/integration/test_gpu_check_dryrun.py`.",
    "",
]


def gpu_section(results: Mapping[str, Any]) -> list[str]:
    gpu = results.get("gpu") or {}
    lines = ["## 5. GPU", ""]
    if not gpu.get("measured"):
        return [*lines, f"Not measured in this run: {gpu.get('reason', 'no GPU')}.", "", *GPU_PREPARED]
    rows = [[str(p["concurrency"]), *_load_cells(p)] for p in gpu["points"]]
    return [
        *lines,
        f"`{gpu['model']}` on {gpu['device']} (gpu profile):",
        "",
        *_table(["concurrency", "frames/s", "p50 ms", "p95 ms", "p99 ms"], rows),
    ]


def render(results: Mapping[str, Any], reading: str, raw_name: str) -> str:
    models = results.get("models") or {}
    skipped = models.get("skipped") or {}
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `python -m bench --{results['mode']}` ({results['elapsed_s']} s). The machine is shared and has "
        "few cores, so read **ratios between points of this run**, not absolute numbers. Raw data: "
        f"[`bench/raw/{raw_name}`](bench/raw/{raw_name}).",
        "",
        f"Models benchmarked: {', '.join(f'`{m}`' for m in models.get('benchmarked', [])) or 'none'}.",
    ]
    if skipped:
        lines.append("Skipped: " + "; ".join(f"`{k}` ({v})" for k, v in skipped.items()) + ".")
    lines.append("")
    lines += targets_section(results)
    lines += ["## Reading", "", READING_START, reading, READING_END, ""]
    lines += overhead_section(results) + limit_section(results) + scaling_section(results)
    lines += old_design_section(results) + gpu_section(results) + machine_section(results)
    lines += ["## Pose network", "", POSE_POINTER, ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(results: Mapping[str, Any], out: Path) -> Path:
    """Write `out/benchmarks.md`, `out/bench/*.png` and `out/bench/raw/<mode>.json`; returns the markdown path."""
    figures = out / "bench"
    raw_name = f"{results['mode']}.json"
    (figures / "raw").mkdir(parents=True, exist_ok=True)
    (figures / "raw" / raw_name).write_text(json.dumps(results, indent=1, sort_keys=False, default=str) + "\n")
    for name, draw in plots.ALL.items():
        target = figures / f"{name}.png"
        if draw(results, target) is None:
            target.unlink(missing_ok=True)
    doc = out / "benchmarks.md"
    reading = preserved_reading(doc.read_text() if doc.exists() else None)
    doc.write_text(render(results, reading, raw_name))
    return doc
