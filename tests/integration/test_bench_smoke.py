"""The benchmark's smoke mode end to end: real tritonserver, bare twins, identity, the old FastAPI design, report.

It checks that every section produced measurements (positive throughput, no request errors) and that the report
and its figures were written; the numbers themselves are not judged (2 shared cores, sub-second windows).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("models", "overhead", "limit", "transport", "scaling", "old_design", "cores", "gpu", "machine", "targets")
TARGET_IDS = ["overhead", "limit", "old_design", "cores", "gpu"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench-smoke")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    assert done.stdout.strip() == str(out / "benchmarks.md")
    return out, json.loads((out / "bench" / "raw" / "smoke.json").read_text())


def positive_load(point: dict) -> None:
    assert point["throughput"] > 0, point
    assert point["count"] > 0, point
    assert point["errors"] == 0, point
    assert point["p50_ms"] <= point["p99_ms"], point


def test_smoke_results_have_every_section(smoke: tuple[Path, dict]) -> None:
    _, results = smoke
    assert results["mode"] == "smoke"
    assert set(SECTIONS) <= set(results)
    assert results["models"]["benchmarked"] == ["tank_overflow_monitoring"]
    assert [t["id"] for t in results["targets"]] == TARGET_IDS


def test_overhead_compares_full_and_bare_with_cpu_accounting(smoke: tuple[Path, dict]) -> None:
    _, results = smoke
    entry = results["overhead"]["tank_overflow_monitoring"]
    assert entry["bare_model"] == "bare_tank_overflow_monitoring"
    for point in entry["rounds"][0].values():
        positive_load(point)
        assert point["cpu"]["stub_ms"] > 0 and point["cpu"]["requests"] > 0
    assert entry["throughput_ratio"] > 0
    assert entry["cpu_ms"]["full"] > 0 and entry["cpu_ms"]["bare"] > 0


def test_limit_has_in_process_served_and_identity(smoke: tuple[Path, dict]) -> None:
    _, results = smoke
    entry = results["limit"]["tank_overflow_monitoring"]
    assert entry["in_process"]["1"]["throughput"] > 0
    for key in ("served_full", "served_bare", "identity"):
        positive_load(entry[key])
    assert entry["identity"]["throughput"] > entry["served_full"]["throughput"]  # no pixel work vs the algorithm


def test_transport_measured_raw_frames_three_ways(smoke: tuple[Path, dict]) -> None:
    _, results = smoke
    points = results["transport"]["models"]["tank_overflow_monitoring"]
    assert set(points) == {"frame_http", "frame_grpc", "frame_shm"}
    for point in points.values():
        positive_load(point)


def test_scaling_and_old_design_points(smoke: tuple[Path, dict]) -> None:
    _, results = smoke
    points = results["scaling"]["points"]
    assert [p["result"]["concurrency"] for p in points] == [1, 4]
    for point in points:
        assert point["result"]["throughput"] > 0
    (row,) = results["old_design"]["rows"]
    assert row["concurrency"] == 8
    positive_load(row["fastapi"])
    assert row["triton_python"]["throughput"] > 0 and row["triton_python"]["errors"] == 0


def test_report_and_figures_written(smoke: tuple[Path, dict]) -> None:
    out, _ = smoke
    doc = (out / "benchmarks.md").read_text()
    for heading in (
        "## Targets",
        "## 1. Hardening overhead",
        "## 2. Distance to the limit",
        "## 3. Scaling",
        "## 4. Versus the old design",
        "## Machine and versions",
    ):
        assert heading in doc
    for figure in ("overhead", "limit", "transport", "scaling", "old_design"):
        png = out / "bench" / f"{figure}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
