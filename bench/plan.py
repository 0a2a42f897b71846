"""How much to measure: the smoke plan (CI, under a minute on 2 cores) and the full plan (under 15 minutes)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Plan:
    mode: str
    #: models to benchmark; None = every vision model of the repository that loads
    models: tuple[str, ...] | None
    #: Python-client measurement window and warm-up per point (s)
    point_s: float
    warmup_s: float
    #: perf_analyzer measurement window (ms); a point takes at least three windows
    pa_window_ms: int
    #: full/bare pairs, alternating which goes first, for the hardening overhead
    overhead_rounds: int
    overhead_concurrency: int
    inprocess_s: float
    transport_concurrency: int
    #: measure the identity model next to the tank model in the transport section
    transport_identity: bool
    transport_labels: tuple[str, ...]
    scaling_model: str
    scaling_instances: tuple[int, ...]
    scaling_batching: tuple[bool, ...]
    scaling_concurrency: tuple[int, ...]
    old_model: str
    old_concurrency: tuple[int, ...]
    old_with_perf_analyzer: bool
    #: CPU counts for the old-vs-new sweep (servers and client pinned to that many cores); () skips it
    cores_sweep: tuple[int, ...]
    cores_concurrency: int


TANK = "tank_overflow_monitoring"

SMOKE = Plan(
    mode="smoke",
    models=(TANK,),
    point_s=0.8,
    warmup_s=0.2,
    pa_window_ms=500,
    overhead_rounds=1,
    overhead_concurrency=4,
    inprocess_s=0.6,
    transport_concurrency=2,
    transport_identity=False,
    transport_labels=("frame_http", "frame_grpc", "frame_shm"),
    scaling_model=TANK,
    scaling_instances=(1,),
    scaling_batching=(False,),  # 1 instance + batching stalls 0.5 s at times (docs/benchmarks.md): not for CI
    scaling_concurrency=(1, 4),
    old_model=TANK,
    old_concurrency=(8,),
    old_with_perf_analyzer=False,
    cores_sweep=(),
    cores_concurrency=8,
)

FULL = Plan(
    mode="full",
    models=None,
    point_s=4.0,
    warmup_s=1.0,
    pa_window_ms=1200,
    overhead_rounds=3,
    overhead_concurrency=4,
    inprocess_s=4.0,
    transport_concurrency=4,
    transport_identity=True,
    transport_labels=("frame_http", "frame_grpc", "frame_shm", "jpeg_http", "jpeg_grpc"),
    scaling_model=TANK,
    scaling_instances=(1, 2, 4),
    scaling_batching=(True, False),
    scaling_concurrency=(1, 2, 4, 8, 16),
    old_model=TANK,
    old_concurrency=(1, 4, 8, 16),
    old_with_perf_analyzer=True,
    cores_sweep=(1, 2, 4, 8, 16),
    cores_concurrency=8,
)

PLANS = {"smoke": SMOKE, "full": FULL}
