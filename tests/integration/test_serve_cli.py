"""`ruthctl serve` as an operator runs it: a child process, endpoints printed, SIGTERM/SIGINT drain and exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from support import free_port

pytestmark = pytest.mark.integration

RUTHCTL = [sys.executable, "-m", "ruthctl"]


def wait_ready(port: int, proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:  # noqa: S310
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("ruthctl serve never became ready")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_loads_models_prints_endpoints_and_drains_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "RUTH_STATE_DIR": str(tmp_path / "state"),
        "GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS": "10",
        "RUTH_PROBE_PORT": str(free_port()),
    }
    proc = subprocess.Popen(
        [
            *RUTHCTL,
            "serve",
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
            "--model",
            "tank_overflow_monitoring",
            "--log-file",
            str(tmp_path / "triton.log"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_ready(http, proc)
        deadline = time.monotonic() + 60
        while not any("drains in-flight" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.1)  # the endpoint table is printed once every model is loaded
        proc.send_signal(sig)
        proc.wait(timeout=40)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(lines)
    assert proc.returncode == 0, stderr
    assert "READY tank_overflow_monitoring" in stderr
    assert f"http://127.0.0.1:{http}" in stderr and f"127.0.0.1:{grpc}" in stderr
    assert f":{metrics}/metrics" in stderr
    assert (tmp_path / "state" / "admin-token").stat().st_mode & 0o777 == 0o600
    assert "finalized" in (tmp_path / "triton.log").read_text()


def test_serve_refuses_a_bad_setting_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS": "-3", "RUTH_STATE_DIR": str(tmp_path)}
    proc = subprocess.run([*RUTHCTL, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS" in proc.stderr


def test_serve_says_what_to_install_when_the_server_binary_is_missing(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RUTH_TRITONSERVER": str(tmp_path / "nowhere" / "tritonserver"),
        "RUTH_STATE_DIR": str(tmp_path),
    }
    proc = subprocess.run([*RUTHCTL, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "tritonserver not found" in proc.stderr
