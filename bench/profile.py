"""Where a served request's time goes (`python -m bench.profile`, `nox -s bench_profile`): the measured explanation
of the gap between served and in-process throughput (docs/benchmarks.md, "Served ≥ 85 % of in-process").

Under a steady closed-loop load on the real server, it samples:
  * every stub of the model under load (and of pose_estimator for a person model) and tritonserver with
    `perf record -e cpu-clock` (a software clock: this VM has no hardware counters), by library. (py-spy was tried
    first: in --gil mode it reports the GIL's *last* holder, so an idle stub's samples land on its wait; without it,
    blocked threads count; perf counts only time on a CPU);
  * the CPU seconds of each process class (/proc), so the shares add up to what the machine paid per request.
Writes docs/bench/profile.md and its raw JSON. Sampling costs CPU too: read shares, not absolute speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import cpu
from bench.harness import MODEL_REPOSITORY, REPO_ROOT, TritonHandle, now_iso, start_triton, tank_frame
from bench.harness import vision_inputs as _vision_inputs
from bench.pose import camera_frame, person_frames
from python_backends.weights import default_weights_dir

DOC = REPO_ROOT / "docs" / "bench" / "profile.md"
RATE = 250


def perf_shares(report: str) -> dict[str, float]:
    """`perf report --stdio --sort dso` lines: '  41.23%  libtritonserver.so' -> {dso: share}."""
    out: dict[str, float] = {}
    for line in report.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith("%"):
            with contextlib.suppress(ValueError):
                out[" ".join(parts[1:])] = float(parts[0].rstrip("%")) / 100
    return out


@contextlib.contextmanager
def load(handle: TritonHandle, model: str, frame: np.ndarray, concurrency: int) -> Iterator[list[int]]:
    """Closed-loop gRPC load on `model` until the block ends; yields the live count of completed requests."""
    import tritonclient.grpc as grpcclient

    done = [0]
    stop = threading.Event()

    def worker(index: int) -> None:
        client = grpcclient.InferenceServerClient(handle.grpc_url)
        stream, i = str(uuid.uuid4()), index * 100_000
        while not stop.is_set():
            i += 1
            image = camera_frame(frame, i)  # new pixels every request: pose_estimator's frame cache never answers
            inputs = _vision_inputs(grpcclient, image=image, stream_id=stream, timestamp=now_iso())
            client.infer(model, inputs)
            done[0] += 1
        client.close()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(concurrency)]
    for t in threads:
        t.start()
    try:
        yield done
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)


def profile_model(handle: TritonHandle, model: str, frame: np.ndarray, seconds: float, workdir: Path) -> dict[str, Any]:
    server = handle.server.process.pid
    models = [model, "pose_estimator"] if model != "tank_overflow_monitoring" else [model]
    with load(handle, model, frame, concurrency=2) as done:
        time.sleep(3)  # warm-up
        stubs = [p for m in models for p in cpu.stub_pids(server, m)]
        before = {p: cpu.process_cpu_s(p) for p in [server, *stubs]}
        n0, t0 = done[0], time.monotonic()
        perf = [
            subprocess.Popen(
                ["perf", "record", "-e", "cpu-clock", "-F", str(RATE), "-p", ",".join(map(str, pids)),
                 "-o", str(workdir / f"{model}-{name}.perf"), "--", "sleep", str(int(seconds))],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for name, pids in (("stubs", stubs), ("server", [server]))
        ]  # fmt: skip
        for proc in perf:
            proc.wait(timeout=seconds + 60)
        wall, requests = time.monotonic() - t0, done[0] - n0
        after = {p: cpu.process_cpu_s(p) for p in before}
    shares = {}
    for name in ("stubs", "server"):
        report = subprocess.run(
            ["perf", "report", "--stdio", "--sort", "dso", "-i", str(workdir / f"{model}-{name}.perf")],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        shares[name] = perf_shares(report)
    stub_cpu = sum(after[p] - before[p] for p in stubs)
    server_cpu = after[server] - before[server]
    n = max(requests, 1)
    return {
        "model": model,
        "requests": requests,
        "throughput": requests / wall,
        "stub_cpu_ms": 1000 * stub_cpu / n,
        "server_cpu_ms": 1000 * server_cpu / n,
        "stub_shares": shares["stubs"],
        "server_shares": shares["server"],
    }


def render(points: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Where a served request's time goes (generated by `python -m bench.profile`; do not edit)",
        "",
        f"Run {meta['date']}, {meta['seconds']} s of sampling per model under a closed-loop gRPC load of 2 clients, "
        "distinct frames (pose_estimator's frame cache can't answer). `perf record -e cpu-clock` (a software clock: "
        "this VM has no hardware counters) samples on-CPU time of the model's stubs (and pose_estimator's for a "
        "person model) and of tritonserver, by library: `libpython3.11` is Python bytecode (our library, the "
        "model's judgement and the stub's Python), `[kernel.kallsyms]` system calls (futex wake-ups, shared-memory "
        "and socket I/O), the rest named native libraries (LiteRT, OpenCV, numpy, the stub's C++ loop).",
        "",
    ]
    for p in points:
        total = p["stub_cpu_ms"] + p["server_cpu_ms"]
        lines += [
            f"## {p['model']}",
            "",
            f"{p['requests']} requests, {p['throughput']:.1f} req/s while sampled. CPU per request: stubs "
            f"{p['stub_cpu_ms']:.2f} ms, tritonserver {p['server_cpu_ms']:.2f} ms "
            f"({100 * p['server_cpu_ms'] / total if total else 0:.0f} % of the request's CPU is the server's).",
            "",
            "| in the stubs (perf, by library) | share of stub samples | ≈ CPU ms per request |",
            "|---|---|---|",
        ]
        for name, share in list(p["stub_shares"].items())[:10]:
            lines.append(f"| `{name}` | {100 * share:.1f} % | {share * p['stub_cpu_ms']:.2f} |")
        lines += ["", "| in tritonserver (perf, by library) | share of server samples |", "|---|---|"]
        for name, share in list(p["server_shares"].items())[:8]:
            lines.append(f"| `{name}` | {100 * share:.1f} % |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="profile of served requests (see the module docstring)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args(argv)
    models = ["tank_overflow_monitoring", "pose_estimator", "fall_detection"]
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        handle = start_triton(work / "server", models, repository=MODEL_REPOSITORY,
                              env={"RUTH_WEIGHTS_DIR": str(default_weights_dir())})  # fmt: skip
        try:
            tank = tank_frame(55.0, size=(480, 640), seed=1)
            person = person_frames()[0][1]
            points.append(profile_model(handle, "tank_overflow_monitoring", tank, args.seconds, work))
            points.append(profile_model(handle, "fall_detection", person, args.seconds, work))
        finally:
            handle.server.stop(grace_s=30)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": args.seconds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(points, meta))
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "points": points}, indent=1))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
