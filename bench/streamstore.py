"""What the fleet mode costs: per-frame latency and CPU of the Redis stream store against SQLite.

`python -m bench.streamstore [--smoke] [--out DIR]` measures two things, at concurrency 1 and 8:

1. **Through the server**: two real tritonservers serving the same stateful model (tank_overflow_monitoring, the
   cheapest per frame, so the store's share is the largest), one with SQLite, one with a real redis-server
   (password-protected, as deployed), loaded alternately with the same Python client and frames, several rounds.
   Each client thread is one camera stream. CPU per request counts the model's stubs, tritonserver and redis-server.
2. **The store alone**: `update()` of a tank-sized state in this process (1 or 8 threads, one stream each),
   SQLite vs Redis; CPU per update counts this process and redis-server.

The machine these numbers come from is shared and noisy, so the report gives ratios within one round (Redis over
SQLite, measured back to back) and their median, next to the absolute numbers. It writes the section between the
STREAM_STORE markers of `<out>/benchmarks.md` (kept when the main report is regenerated) and the raw data to
`<out>/bench/raw/stream-store.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import cpu
from bench.harness import REPO_ROOT, bench_frames, start_triton
from bench.plan import TANK
from bench.pyclient import closed_loop, triton_worker
from bench.report import STREAM_STORE_END, STREAM_STORE_START
from bench.sections import inference_count
from bench.stats import LoadResult

CONCURRENCY = (1, 8)


@dataclasses.dataclass(frozen=True)
class StorePlan:
    mode: str
    rounds: int
    point_s: float
    warmup_s: float
    updates: int  # per thread, store-alone part


PLANS = {
    "smoke": StorePlan("smoke", rounds=1, point_s=1.0, warmup_s=0.3, updates=100),
    "full": StorePlan("full", rounds=5, point_s=8.0, warmup_s=1.0, updates=1500),
}

Log = Callable[[str], None]


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---- through the server --------------------------------------------------------------------------------------------
def server_point(
    handle: Any, redis_pid: int, concurrency: int, plan: StorePlan, images: Sequence[bytes]
) -> dict[str, Any]:
    server_pid = handle.server.process.pid
    before_count = inference_count(handle, TANK)
    before = cpu.snapshot(server_pid, [TANK], [redis_pid])
    started = time.monotonic()
    result: LoadResult = closed_loop(
        triton_worker(handle.grpc_url, TANK, images, protocol="grpc"),
        concurrency=concurrency,
        duration_s=plan.point_s,
        warmup_s=plan.warmup_s,
        protocol="grpc",
    )
    wall = time.monotonic() - started
    delta = cpu.snapshot(server_pid, [TANK], [redis_pid]).minus(before)
    requests = max(inference_count(handle, TANK) - before_count, result.sent, 1)
    return {
        "concurrency": concurrency,
        "throughput": result.throughput,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
        "count": result.count,
        "stub_cpu_ms": 1000.0 * delta["stubs_s"] / requests,
        "server_cpu_ms": 1000.0 * delta["server_s"] / requests,
        "redis_cpu_ms": 1000.0 * delta["extra_s"] / requests,
        "cpu_ms": 1000.0 * (delta["stubs_s"] + delta["server_s"] + delta["extra_s"]) / requests,
        "foreign_cores": delta["foreign_s"] / wall if wall > 0 else 0.0,
    }


# ---- the store alone -----------------------------------------------------------------------------------------------
def _tank_step(state: dict[str, Any] | None) -> dict[str, Any]:
    """The shape and size of tank_overflow_monitoring's state: a window of [epoch, level] samples."""
    samples = list((state or {}).get("samples") or [])
    samples.append([time.time(), 42.5])
    return {"samples": samples[-5:]}


def store_point(store: Any, redis_pid: int, threads: int, updates: int) -> dict[str, Any]:
    latencies: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def work(index: int) -> None:
        stream = f"bench-{uuid.uuid4()}"
        barrier.wait()
        for _ in range(updates):
            began = time.perf_counter()
            store.update(stream, "cfg", _tank_step)
            latencies[index].append(time.perf_counter() - began)

    own_before, redis_before = cpu.own_s(), cpu.process_cpu_s(redis_pid)
    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    total = threads * updates
    merged = sorted(lat for per in latencies for lat in per)
    own_cpu = cpu.own_s() - own_before
    redis_cpu = cpu.process_cpu_s(redis_pid) - redis_before
    return {
        "threads": threads,
        "updates_per_s": total / wall,
        "p50_us": 1e6 * merged[len(merged) // 2],
        "p99_us": 1e6 * merged[min(int(len(merged) * 0.99), len(merged) - 1)],
        "client_cpu_us": 1e6 * own_cpu / total,
        "redis_cpu_us": 1e6 * redis_cpu / total,
        "cpu_us": 1e6 * (own_cpu + redis_cpu) / total,
    }


# ---- the run -------------------------------------------------------------------------------------------------------
def run(plan: StorePlan, log: Log = _log) -> dict[str, Any]:
    from redis_support import RedisServer  # tests/ is on sys.path through bench.harness

    from python_backends.streams import SqliteStreamStore, StreamStoreSpec, open_stream_store

    images = [jpeg for jpeg, _ in bench_frames()]
    results: dict[str, Any] = {
        "mode": plan.mode,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": TANK,
        "server": [],
        "store": [],
    }
    with tempfile.TemporaryDirectory(prefix="ruth-bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        redis_server = RedisServer(tmp / "redis", password=uuid.uuid4().hex).start()
        handles: dict[str, Any] = {}
        try:
            assert redis_server.proc is not None
            redis_pid = redis_server.proc.pid
            env = {
                "RUTH_STREAM_STORE": redis_server.url,
                "RUTH_STREAM_STORE_PASSWORD_FILE": str(redis_server.password_file),
            }
            handles["sqlite"] = start_triton(tmp / "sqlite", [TANK])
            handles["redis"] = start_triton(tmp / "redis-srv", [TANK], env=env)
            for backend, handle in handles.items():  # warm both (first frames pay imports and connections)
                closed_loop(
                    triton_worker(handle.grpc_url, TANK, images, protocol="grpc"),
                    concurrency=2,
                    duration_s=plan.warmup_s,
                    warmup_s=0.0,
                    protocol="grpc",
                )
                log(f"warmed {backend}")
            for round_index in range(plan.rounds):
                order = ["sqlite", "redis"] if round_index % 2 == 0 else ["redis", "sqlite"]
                for concurrency in CONCURRENCY:
                    for backend in order:
                        point = server_point(handles[backend], redis_pid, concurrency, plan, images)
                        point.update(backend=backend, round=round_index)
                        results["server"].append(point)
                        log(
                            f"server round {round_index} c={concurrency} {backend:<6} {point['throughput']:7.1f} req/s "
                            f"p50 {point['p50_ms']:6.2f} p99 {point['p99_ms']:6.2f} ms "
                            f"cpu {point['cpu_ms']:.2f} ms/req "
                            f"(redis {point['redis_cpu_ms']:.3f}) foreign {point['foreign_cores']:.2f} cores"
                        )
        finally:
            for handle in handles.values():
                handle.server.stop(grace_s=30)
        try:
            spec = StreamStoreSpec.parse(redis_server.url, redis_server.password_file)
            stores = {
                "sqlite": SqliteStreamStore(tmp / "bench.sqlite"),
                "redis": open_stream_store(spec, state_dir=tmp, namespace="bench-1", max_streams=10000, idle_ttl_s=300),
            }
            for round_index in range(plan.rounds):
                order = ["sqlite", "redis"] if round_index % 2 == 0 else ["redis", "sqlite"]
                for threads in CONCURRENCY:
                    for backend in order:
                        point = store_point(stores[backend], redis_pid, threads, plan.updates)
                        point.update(backend=backend, round=round_index)
                        results["store"].append(point)
                        log(
                            f"store round {round_index} threads={threads} {backend:<6} "
                            f"{point['updates_per_s']:8.0f} upd/s p50 {point['p50_us']:7.1f} us "
                            f"cpu {point['cpu_us']:6.1f} us/upd"
                        )
            for store in stores.values():
                store.close()
        finally:
            redis_server.stop()
    results["summary"] = summarize(results)
    return results


def _ratios(points: list[dict[str, Any]], level: str, value: int, field: str) -> list[float]:
    """Redis / SQLite of `field`, per round (the two points of one round ran back to back)."""
    out = []
    for round_index in sorted({p["round"] for p in points}):
        pair = {p["backend"]: p for p in points if p["round"] == round_index and p[level] == value}
        if "redis" in pair and "sqlite" in pair and pair["sqlite"][field] > 0:
            out.append(pair["redis"][field] / pair["sqlite"][field])
    return out


def _median(points: list[dict[str, Any]], backend: str, level: str, value: int, field: str) -> float:
    values = [p[field] for p in points if p["backend"] == backend and p[level] == value]
    return statistics.median(values) if values else float("nan")


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"server": {}, "store": {}}
    for c in CONCURRENCY:
        row: dict[str, Any] = {}
        for field in ("throughput", "p50_ms", "p99_ms", "cpu_ms", "redis_cpu_ms", "foreign_cores"):
            for backend in ("sqlite", "redis"):
                row[f"{backend}_{field}"] = _median(results["server"], backend, "concurrency", c, field)
        for field in ("throughput", "p50_ms", "p99_ms", "cpu_ms"):
            ratios = _ratios(results["server"], "concurrency", c, field)
            row[f"ratio_{field}"] = statistics.median(ratios) if ratios else float("nan")
            row[f"ratios_{field}"] = ratios
        summary["server"][str(c)] = row
    for t in CONCURRENCY:
        row = {}
        for field in ("updates_per_s", "p50_us", "p99_us", "cpu_us", "redis_cpu_us"):
            for backend in ("sqlite", "redis"):
                row[f"{backend}_{field}"] = _median(results["store"], backend, "threads", t, field)
        for field in ("p50_us", "cpu_us"):
            ratios = _ratios(results["store"], "threads", t, field)
            row[f"ratio_{field}"] = statistics.median(ratios) if ratios else float("nan")
        summary["store"][str(t)] = row
    return summary


# ---- the report ----------------------------------------------------------------------------------------------------
def render(results: dict[str, Any]) -> str:
    s = results["summary"]
    lines = [
        "## Stream state: Redis (fleet) vs SQLite (one server)",
        "",
        f"Generated by `python -m bench.streamstore --{results['mode']}` on {results['date']}; raw data: "
        "[`bench/raw/stream-store.json`](bench/raw/stream-store.json). Model: "
        f"`{results['model']}` (the cheapest stateful model per frame, so the store's share is the largest). "
        "Two servers side by side, one per backend, loaded alternately with the same client and frames, each client "
        "thread one camera stream; Redis is a real redis-server on loopback with a password, as deployed. "
        "**The machine is shared and noisy:** read the *ratio* columns (Redis ÷ SQLite within one round, back to "
        "back, median over rounds), not the absolute numbers. CPU per request = model stubs + tritonserver + "
        "redis-server.",
        "",
        "| concurrency | req/s SQLite | req/s Redis | p50 ms SQLite | p50 ms Redis | p99 ms SQLite | p99 ms Redis "
        "| CPU ms/req SQLite | CPU ms/req Redis (of which redis-server) | ratio req/s | ratio p50 | ratio p99 "
        "| ratio CPU | other processes' load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, r in s["server"].items():
        lines.append(
            f"| {c} | {r['sqlite_throughput']:.0f} | {r['redis_throughput']:.0f} | {r['sqlite_p50_ms']:.2f} | "
            f"{r['redis_p50_ms']:.2f} | {r['sqlite_p99_ms']:.2f} | {r['redis_p99_ms']:.2f} | "
            f"{r['sqlite_cpu_ms']:.2f} | "
            f"{r['redis_cpu_ms']:.2f} ({r['redis_redis_cpu_ms']:.2f}) | {r['ratio_throughput']:.2f} | "
            f"{r['ratio_p50_ms']:.2f} | {r['ratio_p99_ms']:.2f} | {r['ratio_cpu_ms']:.2f} | "
            f"{max(r['sqlite_foreign_cores'], r['redis_foreign_cores']):.2f} |"
        )
    lines += [
        "",
        "The store alone (`update()` of a tank-sized state in one process, one stream per thread; CPU = this process "
        "+ redis-server). Eight threads of one Python process share its GIL, so at 8 threads the Redis client's "
        "waiting shows as latency; in the server each model instance is its own process.",
        "",
        "| threads | updates/s SQLite | updates/s Redis | p50 µs SQLite | p50 µs Redis | p99 µs SQLite | p99 µs Redis "
        "| CPU µs/update SQLite | CPU µs/update Redis (of which redis-server) | ratio p50 | ratio CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t, r in s["store"].items():
        lines.append(
            f"| {t} | {r['sqlite_updates_per_s']:.0f} | {r['redis_updates_per_s']:.0f} | {r['sqlite_p50_us']:.0f} | "
            f"{r['redis_p50_us']:.0f} | {r['sqlite_p99_us']:.0f} | {r['redis_p99_us']:.0f} | "
            f"{r['sqlite_cpu_us']:.0f} | "
            f"{r['redis_cpu_us']:.0f} ({r['redis_redis_cpu_us']:.0f}) | {r['ratio_p50_us']:.2f} | "
            f"{r['ratio_cpu_us']:.2f} |"
        )
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> Path:
    raw = out / "bench" / "raw" / "stream-store.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(results, indent=1) + "\n")
    doc = out / "benchmarks.md"
    section = f"{STREAM_STORE_START}\n{render(results)}\n{STREAM_STORE_END}"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if STREAM_STORE_START in text and STREAM_STORE_END in text:
        head, rest = text.split(STREAM_STORE_START, 1)
        text = head + section + rest.split(STREAM_STORE_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streamstore", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one short round (CI)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: docs/, smoke: bench-results/)")
    parser.add_argument("--report-only", type=Path, default=None, metavar="RAW_JSON", help="re-render, measure nothing")
    args = parser.parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "full"]
    out = args.out or REPO_ROOT / ("bench-results/smoke" if args.smoke else "docs")
    results = json.loads(args.report_only.read_text()) if args.report_only else run(plan)
    print(write(results, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
