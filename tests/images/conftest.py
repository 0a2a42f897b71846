"""The real engine and the one build the image tests share (`nox -s images`).

`engine`: podman's Docker-compatible API (`podman system service` on a private socket), reached with the docker SDK,
so `ruthctl image build|run` runs exactly as against Docker. `cpu_image`: containers/cpu/Dockerfile built once
through `ruthctl image build` from the debootstrap'd base and the host wheelhouse; its build time and size are
printed and written to build/images-report.json (docs/deployment.md quotes them).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import podman_support as ps
import pytest

from ruthctl import images

TAG = "localhost/ruth-ai/cpu:ci"
REPORT = ps.REPO / "build" / "images-report.json"


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import docker

    socket = tmp_path_factory.mktemp("podman") / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        env=ps.podman_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert service.poll() is None, service.stderr.read().decode() if service.stderr else ""
            assert time.monotonic() < deadline, "podman system service did not create its socket"
            time.sleep(0.2)
        client = docker.DockerClient(base_url=f"unix://{socket}", timeout=600)
        assert client.ping()
        yield client
        client.close()
    finally:
        service.terminate()
        service.wait(timeout=30)


@pytest.fixture(scope="session")
def cpu_image(engine: Any) -> str:
    base = ps.base_image()
    lines: list[str] = []
    started = time.monotonic()
    plan = images.plan_build(
        "cpu", tag=TAG, context=ps.REPO, base=base, exit_timeout_s=ps.EXIT_TIMEOUT_S, vcs_ref=_head()
    )
    result = images.build_image(plan, client=engine, on_log=lines.append)
    seconds = time.monotonic() - started
    [inspected] = json.loads(ps.podman("image", "inspect", TAG).stdout)
    steps = sum(1 for line in lines if "STEP" in line)
    cached = sum(1 for line in lines if "Using cache" in line)
    report = {
        "tag": TAG,
        "image_id": result.image_id,
        "base": base,
        "build_seconds": round(seconds, 1),
        "steps": steps,
        "cached_steps": cached,
        "size_bytes": int(inspected["Size"]),
        "size_mb": round(int(inspected["Size"]) / 1e6),
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nbuilt {TAG}: {report['size_mb']} MB in {seconds:.0f} s ({cached}/{steps} steps cached)")
    return TAG


def _head() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ps.REPO, capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return ps.state_dir(tmp_path / "state")
