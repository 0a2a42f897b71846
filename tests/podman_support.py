"""Shared by tests/images/: podman as this CI machine needs it, the CPU image's readiness probe, a container's
processes and files seen from the host.

Every podman call goes through `podman()` with CONTAINERS_CONF pointing at tests/images/containers.conf (runc,
cgroupfs, ulimits, host network: what this VM needs). Containers use the host's network, so each server listens on
free loopback ports given through RUTH_HTTP_PORT / RUTH_GRPC_PORT / RUTH_METRICS_PORT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from support import free_port

REPO = Path(__file__).resolve().parents[1]
CONTAINERS_CONF = REPO / "tests" / "images" / "containers.conf"
BASE_SCRIPT = REPO / "containers" / "cpu" / "debootstrap-base.sh"
#: The readiness check of these tests: Triton's, on the HTTP port (`readiness_url` is the one place that says so;
#: switch it there when the image serves its own probe).
READY_PATH = "/ready"  # `ruthctl serve`'s readiness: every wanted model READY (docs/operations.md)
UID = 10001
#: Triton's drain budget inside the test containers, and the grace period on top of it (the deploy rule: +15 s).
EXIT_TIMEOUT_S = 10
GRACE_S = EXIT_TIMEOUT_S + 15


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {result.returncode}: {result.stderr.strip()[-3000:]}")
    return result


def base_image() -> str:
    """The debootstrap'd base (cached in podman's storage by the script); $RUTH_IMAGE_BASE if the session made it."""
    given = os.environ.get("RUTH_IMAGE_BASE")
    if given:
        return given
    made = subprocess.run(
        ["bash", str(BASE_SCRIPT)], env=podman_env(), capture_output=True, text=True, timeout=900, check=True
    )
    return made.stdout.strip().splitlines()[-1]


@dataclasses.dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int
    probe: int

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port())

    def env(self) -> dict[str, str]:
        return {
            "RUTH_HTTP_PORT": str(self.http),
            "RUTH_GRPC_PORT": str(self.grpc),
            "RUTH_METRICS_PORT": str(self.metrics),
            "RUTH_PROBE_PORT": str(self.probe),
        }

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc}"


def http_status(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback test server
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def is_ready(ports: Ports, models: Sequence[str] = ()) -> bool:
    """The readiness probe answers 200 and so does each of `models`: Triton's own /v2/health/ready is already 200
    while `serve` is still loading the models (none loaded yet), so tests that use a model wait for it too."""
    try:
        urls = [readiness_url(ports), *(f"http://{ports.http_url}/v2/models/{model}/ready" for model in models)]
        return all(http_status(url) == 200 for url in urls)
    except OSError:
        return False


def readiness_url(ports: Ports) -> str:
    return f"http://127.0.0.1:{ports.probe}{READY_PATH}"


def state(container: str) -> dict[str, Any]:
    [inspected] = json.loads(podman("container", "inspect", container).stdout)
    return dict(inspected["State"])


def logs(container: str, tail: int = 80) -> str:
    result = podman("logs", "--tail", str(tail), container, check=False)
    return result.stdout + result.stderr


def wait_ready(container: str, ports: Ports, models: Sequence[str] = (), timeout_s: float = 420) -> float:
    """Seconds until ready (`is_ready`); fails early, with the logs, if the container stops."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if is_ready(ports, models):
            return time.monotonic() - started
        current = state(container)
        if not current.get("Running"):
            raise AssertionError(f"{container} stopped before ready: {current}\n{logs(container)}")
        time.sleep(1)
    raise AssertionError(f"{container} not ready after {timeout_s:.0f}s\n{logs(container)}")


def state_dir(path: Path) -> Path:
    """A host folder mounted as the state dir: owned by the image's user, 0700, like the image's own."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, UID)
    path.chmod(0o700)
    return path


def admin_token(state: Path, timeout_s: float = 30) -> str:
    """The key `ruthctl serve` generated into the state dir (0600, the container user's)."""
    token = state / "admin-token"
    deadline = time.monotonic() + timeout_s
    while not token.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return token.read_text().strip()


def stub_pids(container: str, model: str) -> list[int]:
    """Pids (as the container's PID namespace numbers them) of the live Python-backend stubs of one model,
    read from inside the container, as the sidecar sees them."""
    script = (
        "import os\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try: argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
        "    except OSError: continue\n"
        f"    if argv[0].endswith(b'triton_python_backend_stub') and argv[8].startswith(b'{model}_'): print(pid)\n"
    )
    result = podman("exec", container, "python3", "-c", script)
    return sorted(int(pid) for pid in result.stdout.split())


@contextlib.contextmanager
def removed_after(*names: str, kind: str = "container") -> Iterator[None]:
    """Remove the containers (or pods) afterwards; if the block failed, print their logs first (pytest shows a
    failing test's output)."""
    try:
        yield
    except BaseException:
        for name in names if kind == "container" else ():
            print(f"----- podman logs {name} -----\n{logs(name, tail=150)}")
        raise
    finally:
        for name in names:
            podman(kind, "rm", "--force", name, check=False, timeout=120)


def run_args(
    name: str, ports: Ports, state: Path, *, env: dict[str, str] | None = None, pod: str | None = None
) -> list[str]:
    """`podman run` options that mirror the Kubernetes manifest (deploy/k8s/deployment.yaml): read-only root, the
    image's own user, no capabilities, no privilege escalation, writable state dir, /dev/shm and /tmp only."""
    environment = {**ports.env(), "GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS": str(EXIT_TIMEOUT_S), **(env or {})}
    args = [
        "run", "--detach", "--name", name,
        "--read-only", "--read-only-tmpfs=false",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--volume", f"{state}:/var/lib/ruth",
        "--mount", "type=tmpfs,destination=/dev/shm,tmpfs-size=1g,tmpfs-mode=1777",
        "--mount", "type=tmpfs,destination=/tmp,tmpfs-size=512m,tmpfs-mode=1777",
        "--stop-timeout", str(GRACE_S),
    ]  # fmt: skip
    if pod:
        args += ["--pod", pod]
    for key, value in environment.items():
        args += ["--env", f"{key}={value}"]
    return args
