"""The whole benchmark: generate the repository, start the real server, run every section, write the report.

Servers are started exactly as `ruthctl serve` starts them (tests/support.start_triton) on free loopback ports,
in a temporary folder that is removed afterwards; only the report and its raw JSON are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import machine
from bench.bare import (
    BARE_PREFIX,
    IDENTITY,
    config_json,
    is_vision_model,
    served_config,
    with_scheduling,
    write_bench_repository,
)
from bench.harness import MODEL_REPOSITORY, REPO_ROOT, TritonHandle, bench_frames, start_triton
from bench.install_perf_analyzer import WHEEL_VERSION, PerfAnalyzerUnavailable, install
from bench.perfanalyzer import PerfAnalyzer, write_input_data
from bench.plan import Plan
from bench.sections import Bench, check_model, limit, old_design, old_vs_new_point, overhead, scaling, transport
from bench.targets import evaluate
from ruthctl.server import order_for_loading, repository_models

Log = Callable[[str], None]


def stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def discover(plan: Plan, repository: Path = MODEL_REPOSITORY) -> tuple[list[str], list[str], dict[str, str]]:
    """(vision models to benchmark, other models they may call through BLS, skipped model -> reason)."""
    names = list(plan.models) if plan.models is not None else repository_models(repository)
    vision: list[str] = []
    others: list[str] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            config = served_config(repository / name)
        except Exception as exc:  # a model being written right now may not parse yet
            skipped[name] = f"config unreadable: {exc}"
            continue
        (vision if is_vision_model(config) else others).append(name)
    if plan.models is not None:  # an explicit list: still copy BLS callees so its models can load
        others = [
            n
            for n in repository_models(repository)
            if n not in vision and n not in skipped and not is_vision_model(served_config(repository / n))
        ]
    return vision, others, skipped


def load_models(
    handle: TritonHandle, vision: Sequence[str], callees: Sequence[str], image: bytes, log: Log
) -> tuple[list[str], dict[str, str]]:
    """Load callees, then each model with its bare twin, then identity; a model that fails is skipped with why."""
    skipped: dict[str, str] = {}
    for name in order_for_loading(callees):
        try:
            handle.load(name)
        except Exception as exc:
            skipped[name] = f"load failed: {exc}"
    loaded = []
    for name in vision:
        reason = None
        for target in (name, f"{BARE_PREFIX}{name}"):
            try:
                handle.load(target)
            except Exception as exc:
                reason = f"{target} failed to load: {exc}"
                break
            reason = check_model(handle, target, image)
            if reason is not None:
                reason = f"{target} did not answer a request: {reason}"
                break
        if reason is None:
            loaded.append(name)
        else:
            skipped[name] = reason
            log(f"skipping {name}: {reason}")
            for target in (name, f"{BARE_PREFIX}{name}"):
                with contextlib.suppress(Exception):
                    handle.unload(target)
    handle.load(IDENTITY)
    problem = check_model(handle, IDENTITY, image)
    if problem is not None:
        raise RuntimeError(f"the identity model does not answer: {problem}")
    return loaded, skipped


def server_version(handle: TritonHandle) -> str | None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(handle.http_url)
    try:
        return str(client.get_server_metadata().get("version"))
    finally:
        client.close()


@contextlib.contextmanager
def pinned_cores(count: int) -> Iterator[list[int]]:
    """This thread, and the threads and processes it starts, on the first `count` CPUs it may use."""
    saved = os.sched_getaffinity(0)
    chosen = sorted(saved)[:count]
    os.sched_setaffinity(0, chosen)
    try:
        yield chosen
    finally:
        os.sched_setaffinity(0, saved)


def cores_sweep(plan: Plan, tmp: Path, repo: Path, images: list[bytes], log: Log) -> dict[str, Any]:
    available = len(os.sched_getaffinity(0))
    counts = [n for n in plan.cores_sweep if n <= available]
    model = plan.old_model
    points = []
    for count in counts:
        log(
            f"cores: {count} CPU(s) for servers and client, {model} with {count} instance(s), "
            f"c={plan.cores_concurrency}"
        )
        with pinned_cores(count):
            handle = start_triton(tmp / f"cores{count}", [], repository=repo)
            try:
                config = with_scheduling(served_config(repo / model), instances=count, dynamic_batching=None)
                handle.load(model, config=config_json(config))
                point = old_vs_new_point(handle, plan, images, tmp, log, model, plan.cores_concurrency)
            finally:
                handle.server.stop(grace_s=30)
        points.append({"cores": count, **point})
    return {"model": model, "concurrency": plan.cores_concurrency, "available_cores": available, "points": points}


def gpu_section(
    tmp: Path, repo: Path, loaded: Sequence[str], callees: Sequence[str], template: Bench, log: Log
) -> dict[str, Any]:
    """fall_detection on the GPU profile (issue 8: >= 100 frames/s on one GPU). Only where a GPU is present."""
    model = "fall_detection"
    if not machine.gpu_present():
        return {"measured": False, "model": model, "reason": "no GPU on this machine (/dev/nvidia0 absent)"}
    if model not in loaded:
        return {"measured": False, "model": model, "reason": f"{model} did not load on the CPU profile"}
    name = (
        subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        .stdout.strip()
        .splitlines()
    )
    handle = start_triton(tmp / "gpu", [], repository=repo, profile="gpu")
    try:
        for callee in order_for_loading(callees):
            with contextlib.suppress(Exception):
                handle.load(callee)
        handle.load(model)
        bench = dataclasses.replace(template, handle=handle)
        points = [bench.triton(model, c).to_dict() for c in (8, 16, 32)]
    finally:
        handle.server.stop(grace_s=30)
    return {
        "measured": True,
        "model": model,
        "device": name[0] if name else "unknown GPU",
        "points": points,
        "best_fps": max(p["throughput"] for p in points),
    }


def run(plan: Plan, out: Path, *, use_perf_analyzer: bool = True, log: Log = stderr_log) -> dict[str, Any]:
    from bench.report import write_report

    started = time.monotonic()
    results: dict[str, Any] = {"schema": 1, "mode": plan.mode}
    perf: PerfAnalyzer | None = None
    note = "disabled with --no-perf-analyzer"
    if use_perf_analyzer:
        try:
            perf = PerfAnalyzer(install(), measurement_ms=plan.pa_window_ms)
            note = f"perf_analyzer {WHEEL_VERSION} (from the tritonclient {WHEEL_VERSION} wheel)"
        except PerfAnalyzerUnavailable as exc:
            note = f"perf_analyzer unavailable, the Python client measured everything: {exc}"
    log(f"load generator: {note}")
    frames = bench_frames()
    images = [f[0] for f in frames]
    raw = [f[1] for f in frames]
    vision, callees, skipped = discover(plan)
    with tempfile.TemporaryDirectory(prefix="ruth-bench-") as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "repository"
        write_bench_repository(repo, vision, also_copy=callees)
        handle = start_triton(tmp / "server", [], repository=repo)
        try:
            loaded, load_skips = load_models(handle, vision, callees, images[0], log)
            skipped.update(load_skips)
            log(f"models: {', '.join(loaded) or 'none'}" + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
            pa_data = write_input_data(tmp / "pa-input.json", images * 4, streams=32) if perf is not None else None
            bench = Bench(
                plan=plan,
                handle=handle,
                images=images,
                raw=raw,
                workdir=tmp,
                perf=perf,
                pa_data=pa_data,
                log=log,
                callees=tuple(c for c in callees if c not in skipped),
            )
            version = server_version(handle)
            results["models"] = {"benchmarked": loaded, "skipped": skipped}
            results["overhead"] = overhead(bench, loaded)
            results["limit"] = limit(bench, loaded)
            needs = plan.scaling_model
            results["transport"] = transport(bench, needs) if needs in loaded else {"skipped": f"{needs} not loaded"}
            results["scaling"] = scaling(bench) if needs in loaded else {"skipped": f"{needs} not loaded"}
            results["old_design"] = (
                old_design(bench) if plan.old_model in loaded else {"skipped": f"{plan.old_model} not loaded"}
            )
        finally:
            handle.server.stop(grace_s=30)
        results["cores"] = cores_sweep(plan, tmp, repo, images, log) if plan.old_model in loaded else {"points": []}
        results["gpu"] = gpu_section(tmp, repo, loaded, callees, bench, log)
    results["load_generator"] = {
        "perf_analyzer": WHEEL_VERSION if perf is not None else None,
        "note": note,
        "python_client": "tritonclient (HTTP/gRPC) and http.client (FastAPI), one thread and connection per "
        "concurrent request, closed loop, in the benchmark process",
        "pa_window_ms": plan.pa_window_ms,
        "python_window_s": plan.point_s,
    }
    results["machine"] = machine.describe(
        REPO_ROOT, server_version=version, perf_analyzer=WHEEL_VERSION if perf is not None else None
    )
    results["targets"] = evaluate(results)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    write_report(results, out)
    log(f"done in {results['elapsed_s']} s: {out}")
    return results
