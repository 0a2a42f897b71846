"""Build and run the runtime images (cpu, gpu, jetson) through the Docker SDK.

The arguments are computed by pure `plan_*` functions and handed to the SDK in one call each, so tests check them
against a fake client and `--dry-run` shows them. The `docker` package is imported only when a client is needed:
the rest of ruthctl works without it.

Containers are created through the SDK's low-level API because the high-level `containers.run` cannot set a stop
timeout, and Docker's default (10 s) would SIGKILL Triton in the middle of its graceful drain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CONTAINER_PORTS",
    "STATE_DIR",
    "VARIANTS",
    "WHEELHOUSE",
    "BuildPlan",
    "BuildResult",
    "EngineUnreachable",
    "ImageError",
    "RunPlan",
    "RunResult",
    "Variant",
    "Wheelhouse",
    "build_image",
    "docker_client",
    "plan_build",
    "plan_run",
    "prepare_wheelhouse",
    "run_image",
    "stop_timeout_for",
    "wait_healthy",
]

Accelerator = Literal["none", "gpus", "nvidia-runtime"]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One image: where its Dockerfile is and what it needs from the host to run."""

    name: str
    dockerfile: str  # relative to the build context (the repository root)
    repository: str  # default image name
    platform: str | None  # build/run platform; None = the engine's own
    accelerator: Accelerator  # gpus: --gpus all (DeviceRequest); nvidia-runtime: --runtime nvidia (Jetson)
    wheelhouse: bool = False  # its build installs from the host-prepared WHEELHOUSE (no package index)


VARIANTS: Mapping[str, Variant] = {
    "cpu": Variant("cpu", "containers/cpu/Dockerfile", "ruth-ai/cpu", None, "none", wheelhouse=True),
    "gpu": Variant("gpu", "containers/triton-gpu/Dockerfile", "ruth-ai/triton-gpu", "linux/amd64", "gpus"),
    "jetson": Variant(
        "jetson", "containers/triton-jetson/Dockerfile", "ruth-ai/triton-jetson", "linux/arm64", "nvidia-runtime"
    ),
}

#: Inside every image (containers/*/Dockerfile).
STATE_DIR = "/var/lib/ruth"
CONTAINER_PORTS: Mapping[str, int] = {"http": 8000, "grpc": 8001, "metrics": 8002, "probe": 8003}
DEFAULT_EXIT_TIMEOUT_S = 30
#: Time the orchestrator grants beyond Triton's exit timeout before SIGKILL (process exit, stub teardown).
STOP_MARGIN_S = 15
#: Each Python-backend instance maps its own /dev/shm region; Docker's default 64 MiB holds only a few.
DEFAULT_SHM_SIZE = "1g"
PACKAGE = "ruth-ai-triton"
#: Inside the build context (the repository root): the wheels the CPU image installs from, made on the host.
WHEELHOUSE = Path("build/wheelhouse")
KEY_SHIM_NAME = "keyshim.so"  # in the wheelhouse: the images copy it to /opt/ruth/lib/keyshim.so
#: The Python the CPU image runs (Debian 12's); wheels are built for it, so the host must run the same minor version.
IMAGE_PYTHON = (3, 11)


class ImageError(RuntimeError):
    """A build or run failed; the message says what the engine answered."""


class EngineUnreachable(ImageError):
    """No Docker engine answers (or the SDK is missing)."""


def stop_timeout_for(exit_timeout_s: int) -> int:
    """Seconds between SIGTERM and SIGKILL: Triton's drain budget plus a margin, the same rule as in k8s/compose."""
    return exit_timeout_s + STOP_MARGIN_S


def variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ImageError(f"unknown variant {name!r}: choose one of {', '.join(VARIANTS)}") from None


def package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "0.0.0"


def default_tag(name: str, version: str | None = None) -> str:
    return f"{variant(name).repository}:{version or package_version()}"


# ------------------------------------------------------------------ wheelhouse


@dataclasses.dataclass(frozen=True)
class Wheelhouse:
    """The wheels a build installs from: every third-party requirement of `.[weights]` and the build backend."""

    path: Path
    key: str  # what they were made from: the requirements, Python version, machine
    wheels: int
    cached: bool  # reused as it was

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "key": self.key, "wheels": self.wheels, "cached": self.cached}


def wheelhouse_requirements(pyproject: Path) -> list[str]:
    """Runtime dependencies, the `weights` extra and `[build-system] requires`, from pyproject.toml (not our own
    package: the image builds that from its source tree, so a code change never invalidates the wheelhouse)."""
    import tomllib  # noqa: PLC0415 - Python 3.11+, like the images; ruthctl itself still runs on 3.10

    document = tomllib.loads(pyproject.read_text())
    project = document["project"]
    return [
        *project["dependencies"],
        *project["optional-dependencies"]["weights"],
        *document["build-system"]["requires"],
    ]


def wheelhouse_key(pyproject: Path, python: tuple[int, int] = IMAGE_PYTHON) -> str:
    """What the wheels depend on: the requirements (not the rest of pyproject.toml), the Python, the machine."""
    digest = hashlib.sha256("\n".join(wheelhouse_requirements(pyproject)).encode())
    digest.update(f"cp{python[0]}{python[1]}-{platform.machine()}".encode())
    return digest.hexdigest()[:16]


def prepare_wheelhouse(
    context: Path = Path(),
    *,
    refresh: bool = False,
    run: Callable[..., Any] = subprocess.run,
) -> Wheelhouse:
    """Fill `<context>/build/wheelhouse` with `pip wheel` on this host (its index settings, its CA bundle), so
    a build needs no network and installs the same versions every time. Reused while the requirements, the Python
    version and the machine are the same; rebuilt into a temporary folder and swapped in whole otherwise."""
    if sys.version_info[:2] != IMAGE_PYTHON:
        wanted = ".".join(map(str, IMAGE_PYTHON))
        raise ImageError(f"the wheelhouse is built for the image's Python {wanted}: run this with Python {wanted}")
    pyproject = context / "pyproject.toml"
    if not pyproject.is_file():
        raise ImageError(f"pyproject.toml not found under {context.resolve()}: run from the repository root")
    dest = context / WHEELHOUSE
    key = wheelhouse_key(pyproject)
    stamp = dest / ".key"
    wheels = sorted(dest.glob("*.whl")) if dest.is_dir() else []
    if not refresh and wheels and stamp.is_file() and stamp.read_text().strip() == key:
        prepare_key_shim(dest)
        return Wheelhouse(dest, key, len(wheels), cached=True)
    scratch = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(scratch)]
        result = run([*command, *wheelhouse_requirements(pyproject)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ImageError(f"pip wheel failed ({result.returncode}): {str(result.stderr).strip()[-2000:]}")
        (scratch / ".key").write_text(key + "\n")
        wheels = sorted(scratch.glob("*.whl"))
        if not wheels:
            raise ImageError("pip wheel made no wheels")
        shutil.rmtree(dest, ignore_errors=True)
        scratch.replace(dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    prepare_key_shim(dest)
    return Wheelhouse(dest, key, len(wheels), cached=False)


def prepare_key_shim(wheelhouse: Path) -> Path:
    """The admin-key shim (ruthctl/keyshim.c, docs/security.md) compiled on this host into the wheelhouse, for the
    images to copy: their build stages then need no compiler (and no unpinned apt packages). Rebuilt only when its
    source changed, so the image's layer cache holds. Build on the image's architecture, with a glibc no newer than
    the base's (Debian 12: 2.36)."""
    from ruthctl import keyshim  # noqa: PLC0415

    target = wheelhouse / KEY_SHIM_NAME
    digest = hashlib.sha256(keyshim.SOURCE.read_bytes()).hexdigest()
    stamp = wheelhouse / ".keyshim"
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return target
    try:
        keyshim.build(target.resolve())
    except keyshim.KeyShimUnavailable as exc:
        raise ImageError(f"the images need the admin-key shim: {exc}") from exc
    target.chmod(0o755)  # root-owned in the image, readable by the runtime user, writable by nobody else
    stamp.write_text(digest + "\n")
    return target


# ------------------------------------------------------------------ build


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    variant: Variant
    context: Path
    tags: tuple[str, ...]
    buildargs: Mapping[str, str]
    labels: Mapping[str, str]
    pull: bool = False
    nocache: bool = False

    def sdk_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `DockerClient.images.build`."""
        return {
            "path": str(self.context),
            "dockerfile": self.variant.dockerfile,
            "tag": self.tags[0],
            "buildargs": dict(self.buildargs),
            "labels": dict(self.labels),
            "platform": self.variant.platform,
            "pull": self.pull,
            "nocache": self.nocache,
            "rm": True,
            "forcerm": True,
        }

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant.name, "tags": list(self.tags), **self.sdk_kwargs()}


def plan_build(
    name: str,
    *,
    tag: str | None = None,
    extra_tags: Iterable[str] = (),
    context: Path = Path(),
    version: str | None = None,
    vcs_ref: str | None = None,
    exit_timeout_s: int = DEFAULT_EXIT_TIMEOUT_S,
    pull: bool = False,
    nocache: bool = False,
    base: str | None = None,
) -> BuildPlan:
    """What to build and how; checks the Dockerfile is where the context says.

    `base` overrides the Dockerfile's pinned `BASE` (e.g. the image containers/cpu/debootstrap-base.sh makes)."""
    chosen = variant(name)
    if not (context / chosen.dockerfile).is_file():
        raise ImageError(f"{chosen.dockerfile} not found under {context.resolve()}: build from the repository root")
    if exit_timeout_s < 1:
        raise ImageError(f"exit timeout must be at least 1 s, got {exit_timeout_s}")
    version = version or package_version()
    tags = (tag or default_tag(name, version), *extra_tags)
    for one in tags:
        if ":" not in one.rsplit("/", 1)[-1]:
            raise ImageError(f"tag {one!r} has no version after ':' (an untagged image becomes :latest)")
    return BuildPlan(
        variant=chosen,
        context=context.resolve(),
        tags=tags,
        buildargs={
            "VERSION": version,
            "VCS_REF": vcs_ref or "unknown",
            "EXIT_TIMEOUT_SECONDS": str(exit_timeout_s),
            **({"BASE": base} if base else {}),
        },
        labels={"ai.ruth.variant": name, "ai.ruth.exit-timeout-seconds": str(exit_timeout_s)},
        pull=pull,
        nocache=nocache,
    )


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """What `build_image` made."""

    variant: str
    image_id: str  # the engine's id of the image, every tag points at it
    tags: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "image_id": self.image_id, "tags": list(self.tags)}


def build_image(plan: BuildPlan, *, client: Any = None, on_log: Callable[[str], None] | None = None) -> BuildResult:
    """Build what `plan_build` planned (what `--dry-run` shows) and tag it; `on_log` gets the builder's output line
    by line."""
    if plan.variant.wheelhouse and not any((plan.context / WHEELHOUSE).glob("*.whl")):
        raise ImageError(f"no wheels in {WHEELHOUSE}/: run `ruthctl image wheelhouse` first (the build uses no index)")
    docker = client if client is not None else docker_client()
    try:
        image, stream = docker.images.build(**plan.sdk_kwargs())
        for chunk in stream:
            text = str(chunk.get("stream", "")).rstrip("\n") if isinstance(chunk, dict) else ""
            if text and on_log is not None:
                on_log(text)
        for extra in plan.tags[1:]:
            repository, _, version = extra.rpartition(":")
            image.tag(repository, version)
    except _docker_errors() as exc:
        raise ImageError(f"building {plan.tags[0]} failed: {exc}") from exc
    return BuildResult(plan.variant.name, str(image.id), plan.tags)


# ------------------------------------------------------------------ run


@dataclasses.dataclass(frozen=True)
class RunPlan:
    variant: Variant
    image: str
    name: str
    publish_address: str
    host_ports: Mapping[str, int]  # port name -> host port
    environment: Mapping[str, str]
    state_volume: str
    shm_size: str
    stop_timeout: int
    gpus: str  # "all" or device ids "0,1" (gpu variant only)
    restart: str  # Docker restart policy name ("no" = none)
    network: str | None = None  # None: the engine's bridge with published ports; "host": the host's (ports by env)

    def host_config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `APIClient.create_host_config`.

        Hardened as the Kubernetes manifest runs it: read-only root, no capabilities, no privilege escalation;
        writable only the state volume, /dev/shm (`shm_size`) and a /tmp tmpfs."""
        kwargs: dict[str, Any] = {
            "binds": {self.state_volume: {"bind": STATE_DIR, "mode": "rw"}},
            "shm_size": self.shm_size,
            "init": True,  # reaps stub processes orphaned by a crashed tritonserver
            "read_only": True,
            "tmpfs": {"/tmp": "rw,size=512m,mode=1777"},  # noqa: S108 - the container's own /tmp
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
        }
        if self.network is None:
            kwargs["port_bindings"] = {
                CONTAINER_PORTS[port]: (self.publish_address, host) for port, host in self.host_ports.items()
            }
        else:
            kwargs["network_mode"] = self.network
        if self.restart != "no":
            kwargs["restart_policy"] = {"Name": self.restart}
        if self.variant.accelerator == "gpus":
            kwargs["device_requests"] = [gpu_request(self.gpus)]
        elif self.variant.accelerator == "nvidia-runtime":
            kwargs["runtime"] = "nvidia"
        return kwargs

    def container_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `APIClient.create_container`, less `host_config`."""
        return {
            "image": self.image,
            "name": self.name,
            "environment": dict(self.environment),
            "ports": [CONTAINER_PORTS[port] for port in self.host_ports] if self.network is None else [],
            "volumes": [STATE_DIR],
            "stop_signal": "SIGTERM",
            "stop_timeout": self.stop_timeout,
            "labels": {"ai.ruth.variant": self.variant.name},
            "detach": True,
        }

    def urls(self) -> dict[str, str]:
        address = "127.0.0.1" if self.publish_address in ("0.0.0.0", "") else self.publish_address  # noqa: S104
        urls = {port: f"{address}:{host}" for port, host in self.host_ports.items()}
        urls["http"] = f"http://{urls['http']}"
        urls["metrics"] = f"http://{urls['metrics']}/metrics"
        if "probe" in urls:
            urls["probe"] = f"http://{urls['probe']}/ready"
        return urls

    def as_dict(self) -> dict[str, Any]:
        host_config = self.host_config_kwargs()
        if "device_requests" in host_config:
            host_config["device_requests"] = [dict(r) for r in host_config["device_requests"]]
        return {"variant": self.variant.name, "container": self.container_kwargs(), "host_config": host_config}


def gpu_request(gpus: str) -> Any:
    """`--gpus all` or `--gpus device=0,1` as the SDK's DeviceRequest."""
    from docker.types import DeviceRequest  # noqa: PLC0415 - the SDK is optional

    if gpus == "all":
        return DeviceRequest(count=-1, capabilities=[["gpu"]])
    return DeviceRequest(device_ids=[d.strip() for d in gpus.split(",") if d.strip()], capabilities=[["gpu"]])


def plan_run(
    name: str,
    *,
    image: str | None = None,
    container_name: str | None = None,
    publish_address: str = "127.0.0.1",
    host_ports: Mapping[str, int] | None = None,
    env: Mapping[str, str] | None = None,
    state_volume: str = "ruth-state",
    shm_size: str = DEFAULT_SHM_SIZE,
    exit_timeout_s: int = DEFAULT_EXIT_TIMEOUT_S,
    gpus: str = "all",
    restart: str = "no",
    network: str | None = None,
) -> RunPlan:
    """How to run a variant: ports, state volume, /dev/shm, devices, and a stop timeout above the drain budget.

    `network="host"` (hosts without a container network, e.g. podman without netavark) publishes nothing: the
    server listens on the host ports themselves, passed as RUTH_HTTP_PORT / RUTH_GRPC_PORT / RUTH_METRICS_PORT /
    RUTH_PROBE_PORT (`ruthctl serve`'s /ready and /live, docs/operations.md)."""
    chosen = variant(name)
    ports = dict(CONTAINER_PORTS) if host_ports is None else dict(host_ports)
    if unknown := set(ports) - set(CONTAINER_PORTS):
        raise ImageError(f"unknown ports {sorted(unknown)}: use {', '.join(CONTAINER_PORTS)}")
    if "http" not in ports or "metrics" not in ports:
        raise ImageError("the http and metrics ports must be published (probes and Prometheus use them)")
    if exit_timeout_s < 1:
        raise ImageError(f"exit timeout must be at least 1 s, got {exit_timeout_s}")
    if chosen.accelerator != "gpus" and gpus != "all":
        raise ImageError(f"--gpus applies to the gpu variant only, not {name}")
    if network not in (None, "host"):
        raise ImageError(f"network {network!r}: only 'host' (or the engine's default) is supported")
    environment = {**(env or {}), "GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS": str(exit_timeout_s)}
    if network == "host":
        environment.update({f"RUTH_{port.upper()}_PORT": str(host) for port, host in ports.items()})
    return RunPlan(
        variant=chosen,
        image=image or default_tag(name),
        name=container_name or f"ruth-ai-{name}",
        publish_address=publish_address,
        host_ports=ports,
        environment=environment,
        state_volume=state_volume,
        shm_size=shm_size,
        stop_timeout=stop_timeout_for(exit_timeout_s),
        gpus=gpus,
        restart=restart,
        network=network,
    )


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What `run_image` started."""

    variant: str
    container_id: str
    name: str  # the container's name
    image: str
    urls: Mapping[str, str]  # http, grpc, metrics (and the probe port) as the host reaches them
    health: str | None = None  # the HEALTHCHECK's status after `--wait`, None without it

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "urls": dict(self.urls)}


def run_image(plan: RunPlan, *, client: Any = None) -> RunResult:
    """Create and start the detached container `plan_run` planned (what `--dry-run` shows)."""
    docker = client if client is not None else docker_client()
    try:
        host_config = docker.api.create_host_config(**plan.host_config_kwargs())
        created = docker.api.create_container(host_config=host_config, **plan.container_kwargs())
        docker.api.start(created["Id"])
    except _docker_errors() as exc:
        raise ImageError(f"running {plan.image} failed: {exc}") from exc
    return RunResult(plan.variant.name, str(created["Id"]), plan.name, plan.image, plan.urls())


def wait_healthy(
    client: Any,
    container_id: str,
    timeout_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    poll_s: float = 2.0,
) -> str:
    """Poll the image's HEALTHCHECK until healthy; raises ImageError if it turns unhealthy, exits or times out."""
    deadline = clock() + timeout_s
    while True:
        state = client.api.inspect_container(container_id)["State"]
        if "Health" not in state:
            raise ImageError(f"container {container_id[:12]} has no HEALTHCHECK to wait for")
        health = str(state["Health"].get("Status", "starting"))
        if health == "healthy":
            return health
        if health == "unhealthy" or not state.get("Running", False):
            raise ImageError(f"container {container_id[:12]} is {health} (running={state.get('Running')})")
        if clock() >= deadline:
            raise ImageError(f"container {container_id[:12]} not healthy after {timeout_s:.0f}s (still {health})")
        sleep(poll_s)


# ------------------------------------------------------------------ the SDK


def _docker_errors() -> tuple[type[BaseException], ...]:
    try:
        from docker.errors import DockerException  # noqa: PLC0415 - the SDK is optional
    except ImportError:
        return ()
    return (DockerException,)


def docker_client() -> Any:
    """`docker.from_env()`, pinged, or EngineUnreachable saying what is missing."""
    try:
        import docker  # noqa: PLC0415 - the SDK is optional
    except ImportError as exc:
        raise EngineUnreachable("the Docker SDK is missing: pip install docker") from exc
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise EngineUnreachable(f"no Docker engine answers (DOCKER_HOST or /var/run/docker.sock): {exc}") from exc
    return client
