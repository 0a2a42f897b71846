"""Fixtures for ruthctl's unit tests: a throwaway deployment root and an in-memory Triton for pure logic.

The fake Triton is used only where a real server can't be (unit tests run without one); the same behaviour is
exercised against the real server in tests/integration/test_ruthctl_*.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import shutil
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from tritonclient.grpc import model_config_pb2 as pb
from typer.testing import CliRunner

from ruthctl.app import Services
from ruthctl.procs import ProcessTable
from ruthctl.reconcile import Reconciler
from ruthctl.registry import Registry
from ruthctl.settings import Profile
from ruthctl.triton_client import Endpoint, IndexEntry, LoadFailed, RequestFailed, Unreachable

REPO_ROOT = Path(__file__).resolve().parents[3]

WEIGHT_BYTES = b"not really a network, but it has a checksum\n"

ALPHA = f"""
name: alpha
display_name: Alpha
description: a vision test model
version: 1
contract: vision
max_batch_size: 4
dynamic_batching: {{max_queue_delay_us: 100, preferred_batch_size: [2, 4], max_queue_size: 16, queue_timeout_ms: 250}}
limits: {{inference_timeout_ms: 1500, min_width: 32, min_height: 32, max_width: 1920, max_height: 1080}}
breaker: {{failure_threshold: 3, cooldown_s: 2.5, max_cooldown_s: 60, half_open_max_trials: 2}}
watchdog: {{zombie_limit: 2}}
memory_estimate_mb: 128
state: {{idle_ttl_s: 60, max_streams: 100}}
weights:
  - path: alpha/weights.bin
    sha256: {hashlib.sha256(WEIGHT_BYTES).hexdigest()}
    source: "copy it from the test fixture"
profiles:
  cpu: {{kind: KIND_CPU, count: 2}}
  gpu: {{kind: KIND_GPU, count: 1, memory_estimate_mb: 512}}
  jetson: {{kind: KIND_CPU, count: 1}}
parameters: {{threshold: 0.5, enabled: true, label: tank, classes: [a, b]}}
"""

BETA = """
name: beta
version: 2
contract: raw
max_batch_size: 0
inputs:
  - {name: FRAME, data_type: TYPE_UINT8, dims: [-1, -1, 3]}
outputs:
  - {name: POSES, data_type: TYPE_FP32, dims: [-1, 56]}
profiles:
  cpu: {kind: KIND_CPU, count: 1}
"""


@dataclasses.dataclass
class Deployment:
    """A deployment root laid out like the repository: config/, model_repository/, weights/, state/."""

    root: Path

    @property
    def specs(self) -> Path:
        return self.root / "config" / "models"

    @property
    def profiles(self) -> Path:
        return self.root / "config" / "profiles"

    @property
    def repository(self) -> Path:
        return self.root / "model_repository"

    @property
    def weights(self) -> Path:
        return self.root / "weights"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def env(self, url: str = "127.0.0.1:1") -> dict[str, str]:
        return {
            "MODELS_ROOT": str(self.repository),
            "RUTH_STATE_DIR": str(self.state),
            "RUTH_WEIGHTS_DIR": str(self.weights),
            "RUTH_TRITON_URL": url,
            "RUTH_AI_PROFILE": "cpu",
            "RUTH_ADMIN_TOKEN": "test-token",
        }

    def write_spec(self, name: str, text: str) -> Path:
        path = self.specs / f"{name}.yaml"
        path.write_text(textwrap.dedent(text))
        (self.repository / name / "1").mkdir(parents=True, exist_ok=True)
        return path

    def generate(self) -> None:
        from ruthctl.render import render_files, sync_files
        from ruthctl.spec import load_profiles, load_specs

        specs, errors = load_specs(self.specs)
        assert not errors, errors
        profiles = load_profiles(self.profiles)
        for spec in specs.values():
            sync_files(self.repository, render_files(spec, profiles), write=True)

    def paths(self) -> Any:
        from ruthctl.reconcile import Paths

        return Paths(self.specs, self.profiles, self.repository, self.weights, self.state)


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    d = Deployment(tmp_path / "deploy")
    d.specs.mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "config" / "profiles", d.profiles)
    d.write_spec("alpha", ALPHA)
    d.write_spec("beta", BETA)
    (d.repository / "beta" / "2").mkdir(parents=True)
    (d.weights / "alpha").mkdir(parents=True)
    (d.weights / "alpha" / "weights.bin").write_bytes(WEIGHT_BYTES)
    d.state.mkdir()
    d.generate()
    return d


class FakeTriton:
    """An in-memory `TritonAdapter`: a repository index, loaded configs, and scripted load outcomes."""

    def __init__(self, url: str = "127.0.0.1:8000") -> None:
        self.endpoint = Endpoint.parse(url)
        self.entries: dict[str, IndexEntry] = {}
        self.configs: dict[str, pb.ModelConfig] = {}
        self.fail_load: dict[str, str] = {}  # model -> Triton's reason
        self.keep_on_failure = False  # a failed reload leaves the previous version serving
        self.unreachable = False
        self.metrics_text: str | None = None
        self.calls: list[tuple[str, str]] = []

    def _check(self) -> None:
        if self.unreachable:
            raise Unreachable(f"{self.endpoint}: connection refused")

    def live(self) -> bool:
        self._check()
        return True

    def ready(self) -> bool:
        self._check()
        return all(e.state in ("READY", None) or e.reason == "unloaded" for e in self.entries.values())

    def index(self) -> list[IndexEntry]:
        self._check()
        return list(self.entries.values())

    def load(self, name: str, config: pb.ModelConfig | None = None, files: Mapping[str, bytes] | None = None) -> None:
        self._check()
        self.calls.append(("load", name))
        if name in self.fail_load:
            previous = self.entries.get(name)
            if not (self.keep_on_failure and previous is not None and previous.ready):
                self.entries[name] = IndexEntry(name, "1", "UNAVAILABLE", self.fail_load[name])
            raise LoadFailed(name, self.fail_load[name])
        version = str(config.version_policy.specific.versions[0]) if config is not None else "1"
        self.entries[name] = IndexEntry(name, version, "READY")
        if config is not None:
            live = pb.ModelConfig()
            live.CopyFrom(config)
            for index, group in enumerate(live.instance_group):
                group.name = f"{name}_{index}"  # Triton fills in defaults the spec never sets
            live.default_model_filename = "model.py"
            self.configs[name] = live

    def unload(self, name: str) -> None:
        self._check()
        self.calls.append(("unload", name))
        if name in self.entries:
            self.entries[name] = IndexEntry(name, self.entries[name].version, "UNAVAILABLE", "unloaded")

    def model_config(self, name: str) -> pb.ModelConfig:
        self._check()
        if name not in self.configs:
            raise RequestFailed("400", f"Request for unknown model: '{name}' is not found")
        return self.configs[name]

    def model_ready(self, name: str, version: str = "") -> bool:
        entry = self.entries.get(name)
        return bool(entry and entry.ready)

    def statistics(self, name: str = "") -> dict[str, Any]:
        return {}

    def metrics(self) -> str | None:
        return self.metrics_text

    def close(self) -> None:
        self.calls.append(("close", ""))


@pytest.fixture
def fake_triton() -> Callable[..., FakeTriton]:
    return FakeTriton


#: the reconciler fixture's clock
NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def reconciler(deployment: Deployment, tmp_path: Path) -> Reconciler:
    """A reconciler over the test deployment and one fake server at 127.0.0.1:8000, at a fixed time."""
    registry = Registry(deployment.state, actor="test", clock=lambda: NOW)
    return Reconciler(
        deployment.paths(),
        Profile.CPU,
        registry,
        [FakeTriton("127.0.0.1:8000")],
        processes=ProcessTable(tmp_path / "noproc"),
        clock=lambda: NOW,
    )


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@dataclasses.dataclass
class Wiring:
    """The services the `cli` fixture hands the app (None: the real ones)."""

    services: Services | None = None


@pytest.fixture
def wiring() -> Wiring:
    return Wiring()


@pytest.fixture
def with_fakes(wiring: Wiring) -> Callable[[list[FakeTriton]], None]:
    """Make every command talk to these fakes instead of tritonclient, through the app's adapter factory (the one
    seam); a URL with no fake fails the test instead of reaching a real client."""

    def install(fakes: list[FakeTriton]) -> None:
        by_server = {str(f.endpoint): f for f in fakes}

        def factory(endpoint: Endpoint, token: str | None, *, timeout_s: float, load_timeout_s: float) -> FakeTriton:
            assert str(endpoint) in by_server, f"no fake Triton for {endpoint} (have {sorted(by_server)})"
            return by_server[str(endpoint)]

        wiring.services = Services(adapter_factory=factory)

    return install


@pytest.fixture
def cli(
    runner: CliRunner, deployment: Deployment, wiring: Wiring, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Any]:
    """Invoke `ruthctl ARGS` against the test deployment; returns Click's Result (stdout and stderr apart)."""
    from ruthctl.cli import app

    for key in [k for k in __import__("os").environ if k.startswith("RUTH_") or k == "MODELS_ROOT"]:
        monkeypatch.delenv(key, raising=False)

    def invoke(*args: str, url: str = "127.0.0.1:1", env: Mapping[str, str] | None = None) -> Any:
        return runner.invoke(
            app, list(args), env={**deployment.env(url), **(env or {})}, obj=wiring.services, catch_exceptions=False
        )

    return invoke
