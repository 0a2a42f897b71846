"""`python -m bench.pose --smoke` end to end: every engine measured or its failure named, the ONNX conversion equal to
LiteRT (the same network), and the three-analytics comparison through the real server with the cache off and on.
Speed numbers are not judged here (2 shared cores, seconds-long windows): docs/bench/pose.md holds the full run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_pose_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "pose.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench.pose", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    raw = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["engine"], r["threads"]): r for r in raw["engines"]}
    for engine in ("litert", "onnxruntime", "onnxruntime int8"):
        for threads in (1, 2):
            row = rows[(engine, threads)]
            assert row["error"] is None, row
            assert row["cpu_ms"] > 0 and math.isfinite(row["wall_ms"]), row
    # the pinned ONNX file is the LiteRT network converted: the same people, keypoints within a pixel
    onnx = rows[("onnxruntime", 2)]
    assert onnx["counts_equal"] == onnx["frames"]
    assert onnx["max_keypoint_gap_px"] is not None and onnx["max_keypoint_gap_px"] < 1.0
    cache = raw["cache"]
    for mode in ("off", "on"):
        assert cache[mode]["camera_frames"] > 0 and cache[mode]["tree_cpu_ms_per_frame"] > 0
    # the modes are what they say: off never hits; on, at least the second and third analytic of each new frame hit
    # (more where a caller sends the frame again, turned, to look for a lying person)
    assert cache["off"]["cache_hits_per_frame"] == 0
    assert cache["on"]["cache_hits_per_frame"] >= 1.95
    assert "## One camera frame, three analytics" in out.read_text()
