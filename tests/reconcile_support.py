"""The ruthctl test deployment shared by the integration tests that drive ruthctl against a real tritonserver: a
temporary copy laid out like the repository (config/, model_repository/, weights/, state/) with tiny plain-Python
models (`sleepy`, `spare`, `brittle`) and `hangy` besides the real tank model, the module-scoped server `world`,
and the `clean` fixture (each test starts and ends with nothing violated)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import plain_model_support
import pytest
from support import REPO_ROOT, TritonHandle, start_triton
from typer.testing import CliRunner

TANK = "tank_overflow_monitoring"
@dataclasses.dataclass
class Deployment:
    root: Path

    @property
    def repository(self) -> Path:
        return self.root / "model_repository"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def weights(self) -> Path:
        return self.root / "weights"

    def env(self, *urls: str, token: str | None = None) -> dict[str, str]:
        env = {
            "MODELS_ROOT": str(self.repository),
            "RUTH_STATE_DIR": str(self.state),
            "RUTH_WEIGHTS_DIR": str(self.weights),
            "RUTH_TRITON_URL": ",".join(urls),
            "RUTH_AI_PROFILE": "cpu",
        }
        if token is not None:
            env["RUTH_ADMIN_TOKEN"] = token
        return env


def build_deployment(root: Path) -> Deployment:
    d = Deployment(root)
    (root / "config" / "models").mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "config" / "profiles", root / "config" / "profiles")
    shutil.copy(REPO_ROOT / "config" / "models" / f"{TANK}.yaml", root / "config" / "models")
    shutil.copytree(REPO_ROOT / "model_repository" / TANK / "1", d.repository / TANK / "1")
    for name, count, params in (
        ("sleepy", 2, {"sleep_s": 0}),
        ("spare", 1, {"sleep_s": 0}),
        ("brittle", 1, {"fail_init": True}),
    ):
        plain_model_support.install(root, name, count, **params)
    hangy = (REPO_ROOT / "config" / "models" / f"{TANK}.yaml").read_text()
    hangy = hangy.replace(f"name: {TANK}", "name: hangy").replace("failure_threshold: 5", "failure_threshold: 20")
    hangy = hangy.replace("zombie_limit: 4", "zombie_limit: 2").replace(
        "inference_timeout_ms: 2000", "inference_timeout_ms: 300"
    )
    (root / "config" / "models" / "hangy.yaml").write_text(
        hangy.replace("cpu: {kind: KIND_CPU, count: 2}", "cpu: {kind: KIND_CPU, count: 1}")
    )
    shutil.copytree(REPO_ROOT / "model_repository" / TANK / "1", d.repository / "hangy" / "1")
    d.state.mkdir()
    return d


@dataclasses.dataclass
class World:
    deployment: Deployment
    server: TritonHandle

    @property
    def url(self) -> str:
        """The server as the registry names it."""
        return self.server.http_url

    @property
    def cli_url(self) -> str:
        """What ruthctl is given: the fixture's metrics port is not the `serve` layout's HTTP+2."""
        return f"{self.server.http_url}?metrics={self.server.server.flags.metrics_port}"

    def ruthctl(self, *args: str, urls: tuple[str, ...] = (), token: str | None = None) -> Any:
        """`ruthctl ARGS` in-process; stdout and stderr apart."""
        from ruthctl.cli import app

        env = self.deployment.env(*(urls or (self.cli_url,)), token=token)
        return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)

    def json(self, *args: str, urls: tuple[str, ...] = (), code: int | None = 0) -> Any:
        result = self.ruthctl(*args, "--json", urls=urls)
        if code is not None:
            assert result.exit_code == code, result.output
        return json.loads(result.stdout)

    def violations(self, urls: tuple[str, ...] = ()) -> list[tuple[str, str | None]]:
        return sorted((v["kind"], v["model"]) for v in self.json("verify", urls=urls, code=None)["violations"])

    def registry(self) -> Any:
        from ruthctl.registry import Registry

        return Registry(self.deployment.state)

    def state(self, model: str, url: str | None = None) -> str | None:
        entry = self.registry().get(model)
        return None if entry is None else entry.on(url or self.url).state.value

    def triton_state(self, model: str, handle: TritonHandle | None = None) -> str | None:
        return next((e.get("state") for e in (handle or self.server).index() if e["name"] == model), None)

    def ensure_active(self, model: str = "sleepy") -> None:
        result = self.ruthctl("activate", model)
        assert result.exit_code == 0, result.output
        assert self.triton_state(model) == "READY"

    def repair_until_clean(self, urls: tuple[str, ...] = ()) -> dict[str, Any]:
        document = self.json("repair", urls=urls, code=None)
        assert document["remaining"] == [], document
        assert self.violations(urls) == []
        return document


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("ruthctl")
    deployment = build_deployment(root / "deploy")
    from ruthctl.cli import app

    generated = CliRunner().invoke(app, ["generate"], env=deployment.env("127.0.0.1:1"), catch_exceptions=False)
    assert generated.exit_code == 0, generated.output
    handle = start_triton(root / "srv", [], repository=deployment.repository, state_dir=deployment.state)
    try:
        yield World(deployment, handle)
    finally:
        handle.server.stop(grace_s=30)


@pytest.fixture
def clean(world: World) -> Iterator[World]:
    """Each test starts and ends with nothing violated: sleepy wanted and READY, the rest not loaded."""
    world.ensure_active("sleepy")
    world.repair_until_clean()
    yield world
    world.repair_until_clean()


def stub_pids(handle: TritonHandle, model: str) -> list[int]:
    from ruthctl.procs import ProcessTable

    table = ProcessTable()
    return sorted(
        p.pid
        for p in table.processes()
        if len(p.argv) > 8 and p.argv[5] == str(handle.server.process.pid) and p.argv[8].startswith(f"{model}_")
    )


def infer_all(url: str, model: str, n: int, protocol: str = "http") -> list[dict[str, Any]]:
    from ruthctl.client import RuthClient

    def one(i: int) -> dict[str, Any]:
        with RuthClient(url, protocol) as client:
            return client.infer(model, image=b"x", stream_id=f"s{i}")

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))
