"""The prepared GPU checks can't rot: each runs here, on the CPU, in its rehearsal mode (`--allow-cpu`): every step
runs for real (server, allocator, ledger, pose network, fall_detection) and only the CUDA verdicts are skipped."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_triton_gpu_check_rehearses_on_the_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "FRAMES": "12", "CLIENTS": "2"}
    done = subprocess.run(
        ["scripts/gpu_check.sh", "--allow-cpu"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    report = (tmp_path / "gpu-check.txt").read_text()
    assert done.returncode == 0, report[-6000:] + done.stderr[-3000:]
    assert "== ALL CHECKS PASSED" in report
    assert "FAIL" not in report
    # the frames are distinct, so the throughput is the network's, not the frame cache's
    assert "PASS every frame found the one person" in report
    assert "PASS unloading pose_estimator released its ledger reservation" in report
