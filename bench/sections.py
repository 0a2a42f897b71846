"""The measurements, one function per question of issue 8, all against one running server (`Bench`).

Comparisons are made between points measured close together in the same run (the machine is shared), and
pairs are interleaved so that a slow minute of the machine hurts both sides alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import cpu, inprocess
from bench.bare import BARE_PREFIX, IDENTITY, config_json, served_config, with_scheduling
from bench.harness import MODEL_REPOSITORY, TritonHandle, free_port, now_iso, result_of, vision_inputs
from bench.oldserver import OldServer
from bench.perfanalyzer import PerfAnalyzer, PerfAnalyzerFailed
from bench.plan import Plan
from bench.pyclient import closed_loop, fastapi_worker, triton_shm_worker, triton_worker
from bench.stats import LoadResult, ratio
from ruthctl.render import config_to_json

Log = Callable[[str], None]


@dataclasses.dataclass
class Bench:
    """A running server and everything needed to put load on it."""

    plan: Plan
    handle: TritonHandle
    images: list[bytes]
    raw: list[np.ndarray]
    workdir: Path
    perf: PerfAnalyzer | None
    pa_data: Path | None
    log: Log
    #: models called through BLS (pose_estimator): their stubs' CPU is part of a caller's cost per request
    callees: tuple[str, ...] = ()

    @property
    def tool(self) -> str:
        return "perf_analyzer" if self.perf is not None else "python"

    def url(self, protocol: str) -> str:
        return self.handle.grpc_url if protocol == "grpc" else self.handle.http_url

    def triton(self, model: str, concurrency: int, *, protocol: str = "grpc", python: bool = False) -> LoadResult:
        """One point of JPEG load: perf_analyzer when installed (unless `python`), else the Python client."""
        if self.perf is not None and self.pa_data is not None and not python:
            perf, data = self.perf, self.pa_data

            def run() -> LoadResult:
                try:
                    return perf.run(
                        model=model,
                        url=self.url(protocol),
                        protocol=protocol,
                        concurrency=concurrency,
                        data=data,
                        workdir=self.workdir / "perf_analyzer",
                    )
                except PerfAnalyzerFailed as exc:  # never stable (e.g. 0.5 s stalls): the Python client still measures
                    self.log(f"  perf_analyzer gave up ({str(exc).splitlines()[-1]}); Python client instead")
                    factory = triton_worker(
                        self.url(protocol), model, self.images, protocol=protocol, parse_json=model != IDENTITY
                    )
                    fallback = self.python(factory, concurrency, protocol)
                    return dataclasses.replace(fallback, tool="python (perf_analyzer unstable)")
        else:
            factory = triton_worker(
                self.url(protocol), model, self.images, protocol=protocol, parse_json=model != IDENTITY
            )

            def run() -> LoadResult:
                return self.python(factory, concurrency, protocol)

        result = self.accounted(model, run)
        self.log(
            f"  {model:<32} {result.protocol:>10} c={concurrency:<2} {result.throughput:8.1f} req/s "
            f"p50 {result.p50_ms:6.2f} p99 {result.p99_ms:7.2f} ms | cpu/req stub "
            f"{result.cpu.get('stub_ms', 0):.2f} server {result.cpu.get('server_ms', 0):.2f} ms | "
            f"foreign load {result.cpu.get('foreign_cores', 0):.2f} cores ({result.tool})"
        )
        return result

    def accounted(self, model: str, run: Callable[[], LoadResult], extra_pids: Sequence[int] = ()) -> LoadResult:
        """Run one point with CPU accounting: Triton's inference count and /proc times before and after."""
        server_pid = self.handle.server.process.pid
        count_before = inference_count(self.handle, model)
        # a person model's cost includes pose_estimator's stubs (BLS); idle callees add next to nothing elsewhere
        models = [model] if model == IDENTITY else [model, *self.callees]
        before = cpu.snapshot(server_pid, models, extra_pids)
        started = time.monotonic()
        result = run()
        wall = time.monotonic() - started
        delta = cpu.snapshot(server_pid, models, extra_pids).minus(before)
        requests = inference_count(self.handle, model) - count_before or result.sent
        accounting = cpu.per_request(delta, requests, wall)
        if extra_pids and result.sent:
            accounting["extra_ms"] = 1000.0 * delta["extra_s"] / result.sent
        return dataclasses.replace(result, cpu=accounting, sent=result.sent or requests)

    def python(self, factory: Any, concurrency: int, protocol: str) -> LoadResult:
        return closed_loop(
            factory,
            concurrency=concurrency,
            duration_s=self.plan.point_s,
            warmup_s=self.plan.warmup_s,
            protocol=protocol,
        )

    def reload(self, model: str, *, instances: int | None = None, dynamic_batching: bool | None = None) -> None:
        """Reload with another instance count / batching (the repository API's config override), or as on disk."""
        if instances is None and dynamic_batching is None:
            self.handle.load(model)
        else:
            base = served_config(self.handle.repository / model)
            self.handle.load(
                model, config=config_json(with_scheduling(base, instances=instances, dynamic_batching=dynamic_batching))
            )
        self.warm_up(model, concurrency=2 * (instances or _configured_instances(self.handle.repository / model)))

    def warm_up(self, model: str, concurrency: int) -> None:
        """Fresh stubs are slow for their first requests; perf_analyzer has no warm-up of its own in 2.51."""
        factory = triton_worker(self.url("grpc"), model, self.images, protocol="grpc", parse_json=model != IDENTITY)
        result = closed_loop(
            factory, concurrency=concurrency, duration_s=self.plan.warmup_s, warmup_s=0.0, protocol="grpc"
        )
        if result.errors:
            raise RuntimeError(f"{model}: {result.errors} errors while warming up after a reload")


def inference_count(handle: TritonHandle, model: str) -> int:
    """Requests the model has answered so far (Triton's statistics; per-request errors included, §6)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(handle.http_url)
    try:
        stats = client.get_inference_statistics(model, headers=handle.headers)  # keyed where the deployment says
    finally:
        client.close()
    return sum(int(m["inference_stats"]["success"]["count"]) for m in stats.get("model_stats", []))


def check_model(handle: TritonHandle, model: str, image: bytes) -> str | None:
    """None when one real request gets a RESULT; else the reason (perf_analyzer would not notice errors)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(handle.http_url)
    try:
        response = client.infer(model, vision_inputs(httpclient, image=image, timestamp=now_iso()))
        if model != IDENTITY:
            result_of(response)
        return None
    except (InferenceServerException, ValueError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]
    return float(statistics.median(finite)) if finite else float("nan")


def _server_ms(result: LoadResult) -> float | None:
    """Backend time per request (compute input + infer + output) reported by Triton, in ms."""
    keys = ("compute_input", "compute_infer", "compute_output")
    if not all(k in result.server_us for k in keys):
        return None
    return sum(result.server_us[k] for k in keys) / 1000.0


def _cpu_ms(result: LoadResult) -> float:
    """CPU time per request in the model's stubs and tritonserver (what serving one request costs the machine)."""
    return result.cpu.get("stub_ms", float("nan")) + result.cpu.get("server_ms", float("nan"))


# ---- 1. hardening overhead ---------------------------------------------------------------------------------------
def overhead(bench: Bench, models: Sequence[str]) -> dict[str, Any]:
    concurrency = bench.plan.overhead_concurrency
    out: dict[str, Any] = {}
    for model in models:
        bare = f"{BARE_PREFIX}{model}"
        bench.log(f"overhead: {model} vs {bare}, c={concurrency}, {bench.plan.overhead_rounds} rounds")
        for name in (model, bare):
            bench.warm_up(name, concurrency)
        rounds = []
        for index in range(bench.plan.overhead_rounds):
            order = (model, bare) if index % 2 == 0 else (bare, model)
            got = {name: bench.triton(name, concurrency) for name in order}
            rounds.append({"full": got[model], "bare": got[bare]})
        throughput_ratios = [ratio(r["full"].throughput, r["bare"].throughput) for r in rounds]
        server = [(_server_ms(r["full"]), _server_ms(r["bare"])) for r in rounds]
        server_added = [f - b for f, b in server if f is not None and b is not None]
        cpu_full = [_cpu_ms(r["full"]) for r in rounds]
        cpu_bare = [_cpu_ms(r["bare"]) for r in rounds]
        out[model] = {
            "cpu_ms": {
                "full": _median(cpu_full),
                "bare": _median(cpu_bare),
                "added": _median([f - b for f, b in zip(cpu_full, cpu_bare, strict=True)]),
                "throughput_ratio": ratio(_median(cpu_bare), _median(cpu_full)),
            },
            "foreign_cores": _median([r[k].cpu.get("foreign_cores", float("nan")) for r in rounds for k in r]),
            "bare_model": bare,
            "concurrency": concurrency,
            "tool": bench.tool,
            "rounds": [{k: v.to_dict() for k, v in r.items()} for r in rounds],
            "throughput_full": _median([r["full"].throughput for r in rounds]),
            "throughput_bare": _median([r["bare"].throughput for r in rounds]),
            "throughput_ratio": _median(throughput_ratios),
            "overhead_pct": 100.0 * (1.0 - _median(throughput_ratios)),
            "added_ms": {
                "server": _median(server_added) if server_added else None,
                "p50": _median([r["full"].p50_ms - r["bare"].p50_ms for r in rounds]),
                "avg": _median([r["full"].avg_ms - r["bare"].avg_ms for r in rounds]),
                "p99": _median([r["full"].p99_ms - r["bare"].p99_ms for r in rounds]),
            },
        }
    return out


# ---- 2. distance to the limit ------------------------------------------------------------------------------------
def limit(bench: Bench, models: Sequence[str]) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    concurrency = max(4, 2 * cores)
    out: dict[str, Any] = {}
    for model in models:
        config = json.loads(config_to_json(served_config(MODEL_REPOSITORY / model)))
        model_py = MODEL_REPOSITORY / model / "1" / "model.py"
        bench.log(f"limit: {model} in process (1 and {cores} processes)")
        in_process: dict[str, Any] = {}
        try:
            for procs in sorted({1, cores}):
                measured = inprocess.measure(
                    model_py, config, bench.images, processes=procs, duration_s=bench.plan.inprocess_s
                )
                bench.log(
                    f"  in process x{procs}: {measured.throughput:8.1f} frames/s ({measured.per_frame_ms:.2f} ms/frame)"
                )
                in_process[str(procs)] = measured.to_dict()
        except Exception as exc:  # reported in the JSON and the table instead of stopping the run
            bench.log(f"  in process: not measurable ({type(exc).__name__}: {exc})")
            in_process = {"error": f"{type(exc).__name__}: {exc}"}
        bench.log(f"limit: {model} served with {cores} instance(s), c={concurrency}")
        served: dict[str, LoadResult] = {}
        with _instances(bench, [model, f"{BARE_PREFIX}{model}", IDENTITY], cores):
            for name in (model, f"{BARE_PREFIX}{model}", IDENTITY):
                served[name] = bench.triton(name, concurrency)
        ceiling = in_process[str(cores)]["throughput"] if str(cores) in in_process else float("nan")
        out[model] = {
            "instances": cores,
            "concurrency": concurrency,
            "tool": bench.tool,
            "in_process": in_process,
            "served_full": served[model].to_dict(),
            "served_bare": served[f"{BARE_PREFIX}{model}"].to_dict(),
            "identity": served[IDENTITY].to_dict(),
            "served_vs_in_process": ratio(served[model].throughput, ceiling),
            "bare_vs_in_process": ratio(served[f"{BARE_PREFIX}{model}"].throughput, ceiling),
            "served_vs_identity": ratio(served[model].throughput, served[IDENTITY].throughput),
            # in-process CPU per frame over served CPU per request (stubs + server): the limit ratio with the load
            # generator's share of the cores taken out
            "cpu_efficiency": ratio(
                in_process.get(str(cores), {}).get("per_frame_ms", float("nan")), _cpu_ms(served[model])
            ),
            "client_cores": served[model].cpu.get("client_ms", float("nan")) * served[model].throughput / 1000.0,
        }
    return out


@contextlib.contextmanager
def _instances(bench: Bench, models: Sequence[str], count: int) -> Iterator[None]:
    """Models reloaded with `count` instances where their config says otherwise; restored afterwards."""
    changed = [m for m in models if _configured_instances(bench.handle.repository / m) != count]
    for model in changed:
        bench.reload(model, instances=count)
    try:
        yield
    finally:
        for model in changed:
            bench.reload(model)


def _configured_instances(model_dir: Path) -> int:
    config = served_config(model_dir)
    return sum(group.count or 1 for group in config.instance_group) or 1


def transport(bench: Bench, model: str) -> dict[str, Any]:
    """Raw 640x480x3 FRAME over HTTP, gRPC and gRPC + system shared memory (and the JPEG for reference)."""
    concurrency = bench.plan.transport_concurrency
    targets = [model, IDENTITY] if bench.plan.transport_identity else [model]
    out: dict[str, Any] = {
        "concurrency": concurrency,
        "tool": "python",
        "frame_bytes": int(bench.raw[0].nbytes),
        "jpeg_bytes": int(statistics.mean(len(i) for i in bench.images)),
        "models": {},
    }
    for name in targets:
        bench.log(f"transport: {name}, c={concurrency}")
        parse = name != IDENTITY
        every = {
            "frame_http": triton_worker(
                bench.url("http"), name, bench.images, protocol="http", raw_frames=bench.raw, parse_json=parse
            ),
            "frame_grpc": triton_worker(
                bench.url("grpc"), name, bench.images, protocol="grpc", raw_frames=bench.raw, parse_json=parse
            ),
            "frame_shm": triton_shm_worker(
                bench.url("grpc"), name, bench.raw, parse_json=parse, admin_key=bench.handle.token
            ),
            "jpeg_http": triton_worker(bench.url("http"), name, bench.images, protocol="http", parse_json=parse),
            "jpeg_grpc": triton_worker(bench.url("grpc"), name, bench.images, protocol="grpc", parse_json=parse),
        }
        points = {label: every[label] for label in bench.plan.transport_labels}
        measured = {}
        for label, factory in points.items():
            result = bench.accounted(name, functools.partial(bench.python, factory, concurrency, label))
            bench.log(
                f"  {label:<10} {result.throughput:8.1f} req/s p50 {result.p50_ms:6.2f} p99 "
                f"{result.p99_ms:7.2f} ms | cpu/req stub {result.cpu['stub_ms']:.2f} server "
                f"{result.cpu['server_ms']:.2f} client {result.cpu['client_ms']:.2f} ms | errors {result.errors}"
            )
            measured[label] = result.to_dict()
        out["models"][name] = measured
    return out


# ---- 3. scaling --------------------------------------------------------------------------------------------------
def scaling(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    model = plan.scaling_model
    points = []
    try:
        for instances in plan.scaling_instances:
            for batching in plan.scaling_batching:
                bench.log(f"scaling: {model} instances={instances} dynamic_batching={'on' if batching else 'off'}")
                bench.reload(model, instances=instances, dynamic_batching=batching)
                for concurrency in plan.scaling_concurrency:
                    result = bench.triton(model, concurrency)
                    points.append({"instances": instances, "dynamic_batching": batching, "result": result.to_dict()})
    finally:
        bench.reload(model)
    return {"model": model, "tool": bench.tool, "points": points}


# ---- 4. versus the old design ------------------------------------------------------------------------------------
def old_design(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    model = plan.old_model
    port = free_port()
    rows = []
    with OldServer(port, model, log_path=bench.workdir / "oldserver.log") as old:
        assert old.process is not None
        pids = [old.process.pid]
        for concurrency in plan.old_concurrency:
            bench.log(f"old design: {model}, c={concurrency}")
            fastapi = bench.accounted(
                model,
                functools.partial(bench.python, fastapi_worker(port, model, bench.images), concurrency, "fastapi"),
                pids,
            )
            bench.log(
                f"  {'fastapi':<32} {'json+b64':>10} c={concurrency:<2} {fastapi.throughput:8.1f} req/s "
                f"p50 {fastapi.p50_ms:6.2f} p99 {fastapi.p99_ms:7.2f} ms | "
                f"cpu/req {fastapi.cpu.get('extra_ms', 0):.2f} ms "
                f"| errors {fastapi.errors}"
            )
            triton_py = bench.triton(model, concurrency, protocol="http", python=True)
            with_pa = bench.perf is not None and plan.old_with_perf_analyzer
            triton_pa = bench.triton(model, concurrency, protocol="http") if with_pa else None
            rows.append(
                {
                    "concurrency": concurrency,
                    "fastapi": fastapi.to_dict(),
                    "triton_python": triton_py.to_dict(),
                    "triton_perf_analyzer": triton_pa.to_dict() if triton_pa is not None else None,
                    "throughput_ratio": ratio(triton_py.throughput, fastapi.throughput),
                }
            )
    return {"model": model, "rows": rows, "instances": _configured_instances(bench.handle.repository / model)}


def old_vs_new_point(
    handle: TritonHandle, plan: Plan, images: list[bytes], workdir: Path, log: Log, model: str, concurrency: int
) -> dict[str, Any]:
    """One old-vs-new pair on whatever cores this process (and so its children) may use."""
    port = free_port()
    with OldServer(port, model, log_path=workdir / f"oldserver-{port}.log"):
        fastapi = closed_loop(
            fastapi_worker(port, model, images),
            concurrency=concurrency,
            duration_s=plan.point_s,
            warmup_s=plan.warmup_s,
            protocol="fastapi",
        )
        triton = closed_loop(
            triton_worker(handle.http_url, model, images, protocol="http"),
            concurrency=concurrency,
            duration_s=plan.point_s,
            warmup_s=plan.warmup_s,
            protocol="http",
        )
    log(
        f"  fastapi {fastapi.throughput:7.1f} req/s p99 {fastapi.p99_ms:6.1f} ms | triton {triton.throughput:7.1f} "
        f"req/s p99 {triton.p99_ms:6.1f} ms | ratio {ratio(triton.throughput, fastapi.throughput):.2f}"
    )
    return {
        "fastapi": fastapi.to_dict(),
        "triton": triton.to_dict(),
        "throughput_ratio": ratio(triton.throughput, fastapi.throughput),
    }
