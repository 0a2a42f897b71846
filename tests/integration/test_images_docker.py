"""`ruthctl image build|run` against a real Docker engine: build the CPU image, run it, probe it, stop it.

Runs only where `docker.from_env().ping()` works; everywhere else (CI here has no engine) each test is skipped
with the reason. The SDK arguments themselves are unit-tested in tests/unit/deploy/test_images.py.
"""

from __future__ import annotations

import contextlib
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import free_port

from ruthctl import images

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1].parent


def engine_or_skip() -> Any:
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a dev dependency
        pytest.skip(f"the Docker SDK is not installed: {exc}")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        reason = f"no Docker engine reachable (docker.from_env().ping() failed: {exc})"
        print(f"SKIP test_images_docker: {reason}")
        pytest.skip(reason)
    return client


@pytest.fixture(scope="module")
def client() -> Any:
    return engine_or_skip()


@pytest.fixture(scope="module")
def cpu_image(client: Any) -> Iterator[str]:
    tag = f"ruth-ai/cpu:test-{uuid.uuid4().hex[:8]}"
    result = images.build_image("cpu", tag, client=client, context=REPO, exit_timeout_s=10)
    assert result.tags == (tag,)
    yield tag
    with contextlib.suppress(Exception):
        client.images.remove(tag, force=True)


def test_built_image_runs_as_non_root_with_the_expected_config(client: Any, cpu_image: str) -> None:
    config = client.api.inspect_image(cpu_image)["Config"]
    assert config["User"] == "10001:10001"
    assert config["StopSignal"] == "SIGTERM"
    assert "GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS=10" in config["Env"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config["Labels"]["ai.ruth.variant"] == "cpu"


def test_container_turns_healthy_serves_metrics_and_stops_gracefully(client: Any, cpu_image: str) -> None:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    volume = f"ruth-state-test-{uuid.uuid4().hex[:8]}"
    result = images.run_image(
        "cpu", client=client, image=cpu_image, container_name=f"ruth-test-{uuid.uuid4().hex[:8]}",
        host_ports=ports, state_volume=volume, exit_timeout_s=10,
    )
    try:
        assert images.wait_healthy(client, result.container_id, 300) == "healthy"
        with urllib.request.urlopen(f"{result.urls['http']}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(result.urls["metrics"], timeout=5) as response:
            text = response.read().decode()
        assert "nv_inference_request_success" in text and "ruth_breaker_state" in text
        started = time.monotonic()
        client.api.stop(result.container_id)  # SIGTERM, then SIGKILL after the container's stop timeout (25 s)
        took = time.monotonic() - started
        state = client.api.inspect_container(result.container_id)["State"]
        assert state["ExitCode"] == 0, f"not a graceful exit: {state}"
        assert took < 25
    finally:
        with contextlib.suppress(Exception):
            client.api.remove_container(result.container_id, force=True)
        with contextlib.suppress(Exception):
            client.api.remove_volume(volume)
