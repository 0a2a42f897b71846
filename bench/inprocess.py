"""The algorithm's own limit: decode + infer called directly, one process per core, no server, no transport.

Each process runs the same `BareModel` the bare Triton models run (bench/barecore.py) over the benchmark JPEGs for
a fixed time, after a short warm-up, all processes starting together. Processes rather than threads because
that is what Triton instances are, and OpenCV plus Python would otherwise share one interpreter lock.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class InProcessResult:
    processes: int
    throughput: float  # frames/s, all processes together
    per_frame_ms: float  # mean wall time of one frame in one process
    frames: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _worker(
    model_py: str,
    model_config: Mapping[str, Any],
    images: Sequence[bytes],
    warmup_s: float,
    duration_s: float,
    barrier: Any,
    results: Any,
) -> None:
    from bench.barecore import BareModel  # in the child: spawn re-imports

    try:
        core = BareModel(Path(model_py), model_config, local_pose=True)
        core.infer_image(images[0], str(uuid.uuid4()), datetime.now(timezone.utc))
    except Exception as exc:  # report instead of leaving the parent waiting for a result
        barrier.abort()
        results.put(f"{type(exc).__name__}: {exc}")
        return
    stream = str(uuid.uuid4())
    base = datetime.now(timezone.utc)
    index = 0

    def one() -> None:
        nonlocal index
        index += 1
        core.infer_image(images[index % len(images)], stream, base + timedelta(milliseconds=100 * index))

    end_warmup = time.perf_counter() + warmup_s
    while time.perf_counter() < end_warmup:
        one()
    try:
        barrier.wait()
    except Exception:  # a sibling failed to start: it reported why
        return
    started = time.perf_counter()
    deadline = started + duration_s
    frames = 0
    while time.perf_counter() < deadline:
        one()
        frames += 1
    results.put((frames, time.perf_counter() - started))


def measure(
    model_py: Path,
    model_config: Mapping[str, Any],
    images: Sequence[bytes],
    *,
    processes: int,
    duration_s: float,
    warmup_s: float = 0.5,
    timeout_s: float = 120.0,
) -> InProcessResult:
    ctx = multiprocessing.get_context("spawn")  # no inherited client threads or sockets
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(str(model_py), dict(model_config), list(images), warmup_s, duration_s, barrier, results),
            daemon=True,
        )
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    try:
        collected = []
        for _ in procs:
            item = results.get(timeout=timeout_s)
            if isinstance(item, str):
                raise RuntimeError(item)
            collected.append(item)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    throughput = sum(frames / elapsed for frames, elapsed in collected)
    frames = sum(f for f, _ in collected)
    busy = sum(elapsed for _, elapsed in collected)
    return InProcessResult(
        processes=processes,
        throughput=throughput,
        per_frame_ms=1000.0 * busy / frames if frames else float("nan"),
        frames=frames,
    )
