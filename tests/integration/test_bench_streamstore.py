"""The stream-store benchmark's smoke mode end to end: two real tritonservers (SQLite, Redis), a real redis-server,
both loads and the store-alone points, then the report section. Numbers are not judged (2 shared cores, 1 s
windows); that every point measured something without errors, and that the Redis points really used Redis, is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_stream_store_bench_smoke(tmp_path: Path) -> None:
    (tmp_path / "benchmarks.md").write_text("# Benchmarks\n\nearlier sections\n")
    for _ in range(2):  # the second run replaces the section instead of adding another
        done = subprocess.run(
            [sys.executable, "-m", "bench.streamstore", "--smoke", "--out", str(tmp_path)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-6000:]
    results = json.loads((tmp_path / "bench" / "raw" / "stream-store.json").read_text())
    assert {(p["backend"], p["concurrency"]) for p in results["server"]} == {
        (b, c) for b in ("sqlite", "redis") for c in (1, 8)
    }
    for point in results["server"]:
        assert point["throughput"] > 0 and point["errors"] == 0, point
        assert point["cpu_ms"] > 0, point
    for point in results["store"]:
        assert point["updates_per_s"] > 0, point
    # the updates really went to redis-server: its CPU, read in 10 ms ticks from /proc, over all of the smoke's store
    # points (one short point alone can round to 0 ticks; seen in CI)
    assert sum(p["redis_cpu_us"] for p in results["store"] if p["backend"] == "redis") > 0, results["store"]
    redis_points = [p for p in results["server"] if p["backend"] == "redis"]
    sqlite_points = [p for p in results["server"] if p["backend"] == "sqlite"]
    assert sum(p["redis_cpu_ms"] for p in redis_points) > sum(p["redis_cpu_ms"] for p in sqlite_points)
    doc = (tmp_path / "benchmarks.md").read_text()
    assert doc.startswith("# Benchmarks\n\nearlier sections")
    assert doc.count("## Stream state: Redis (fleet) vs SQLite (one server)") == 1
    assert "shared and noisy" in doc
