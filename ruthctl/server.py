"""Owner of the tritonserver process: finds the bundled server, prepares its environment, starts and stops it.

The PyPI wheel `nvidia-pytriton` carries a real tritonserver 2.51 with the Python backend and one stub per
Python version. Running it needs what docs/triton-notes.md §1 found: a backends folder with the stub for
*this* Python, this virtual environment first on PATH (the stub finds its prefix through `python3` on PATH and
ignores PYTHONPATH), and LD_LIBRARY_PATH pointing at the base interpreter's libpython so the C interpreter
matches the stdlib it loads. Flags are a typed object rendered to argv, never a shell string.

The admin key never enters argv (world-readable in /proc): argv carries a placeholder, the key travels through a
pipe, and the preloaded key shim (keyshim.c) swaps it in before tritonserver's main() (docs/security.md).
"""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO

from python_backends.gpu_ledger import pid_alive
from python_backends.state import StateLayout
from ruthctl.access import DEFAULT_KEYED, HEADER
from ruthctl.keyshim import FD_VARIABLE, PLACEHOLDER

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "ruth"
RATE_LIMIT_RESOURCE = "ruth_inference"  # our runs' python-backend shm regions are named ruth<pid>_<start>_...
_STARTS = itertools.count(1)  # one shm prefix per server start: a restarted server never meets its predecessor's


class TritonNotInstalled(RuntimeError):
    """The bundled server or the stub for this Python can't be found; the message says what to install."""


class TritonStartError(RuntimeError):
    """The server exited or did not become live in time."""


@dataclasses.dataclass(frozen=True)
class TritonInstall:
    binary: Path
    python_backend: Path  # folder with libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for the running Python

    @classmethod
    def locate(cls, binary: Path | None = None, backend_directory: Path | None = None) -> TritonInstall:
        """The server inside nvidia-pytriton (or an image's own, when `binary` is given)."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        if binary is not None:
            backends = backend_directory or binary.parent.parent / "backends"
            stub = backends / "python" / "triton_python_backend_stub"
            if not binary.exists():
                raise TritonNotInstalled(f"tritonserver not found at {binary} (RUTH_TRITONSERVER)")
            return cls(binary=binary, python_backend=backends / "python", stub=stub)
        try:
            import pytriton
        except ImportError as exc:
            raise TritonNotInstalled(
                "the bundled Triton server is missing: install it with `pip install nvidia-pytriton==0.7.0` "
                "(or `pip install -e .` in this repository)"
            ) from exc
        root = Path(pytriton.__file__).resolve().parent / "tritonserver"
        install = cls(
            binary=root / "bin" / "tritonserver",
            python_backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        )
        for path, what in ((install.binary, "tritonserver binary"), (install.stub, f"Python {version} stub")):
            if not path.exists():
                raise TritonNotInstalled(
                    f"{what} not found at {path}: reinstall with `pip install --force-reinstall nvidia-pytriton==0.7.0`"
                    f" (stubs exist for Python 3.8-3.13; this is {version})"
                )
        return install


def prepare_backends_dir(install: TritonInstall, state_dir: Path) -> Path:
    """A private backends folder of symlinks holding the stub for this Python (the wheel ships it elsewhere)."""
    if install.stub.parent == install.python_backend:
        return install.python_backend.parent  # an image's own server: already complete
    backends = StateLayout(state_dir).backends
    python_dir = backends / "python"
    for folder in (backends, python_dir):  # owner-only, like everything in the state dir
        folder.mkdir(mode=0o700, exist_ok=True)
    links = {
        "libtriton_python.so": install.python_backend / "libtriton_python.so",
        "triton_python_backend_utils.py": install.python_backend / "triton_python_backend_utils.py",
        "triton_python_backend_stub": install.stub,
    }
    for name, target in links.items():
        link = python_dir / name
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        tmp = python_dir / f".{name}.tmp{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)
    return backends


def base_python_libdir() -> Path | None:
    """The lib folder of the interpreter this venv was made from, if it has a shared libpython."""
    libdir = sysconfig.get_config_var("LIBDIR")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if libdir and any(Path(libdir).glob(f"libpython{version}*.so*")):
        return Path(libdir)
    return None


def server_environment(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """Environment for tritonserver and, through inheritance, for every model's stub process."""
    env = dict(base)
    venv_bin = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    env["PATH"] = venv_bin + (os.pathsep + path if path else "")
    libdir = base_python_libdir()
    if libdir is not None:
        current = env.get("LD_LIBRARY_PATH", "")
        env["LD_LIBRARY_PATH"] = str(libdir) + (os.pathsep + current if current else "")
    env.pop("PYTHONPATH", None)  # ignored by the stub's isolated interpreter; misleading if left
    env.pop("RUTH_ADMIN_TOKEN", None)  # the server gets the key through the shim's pipe; model code never needs it
    env.update(extra)
    return env


@dataclasses.dataclass(frozen=True, kw_only=True)
class TritonFlags:
    """tritonserver options, rendered to argv by `to_argv`."""

    model_repository: Path
    backend_directory: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_config_name: str | None = None
    exit_timeout_s: int = 30
    load_models: tuple[str, ...] = ()
    log_verbose: int = 0
    log_level: str = "INFO"
    strict_readiness: bool = True
    metrics_enabled: bool = True
    admin_token: str | None = None  # travels through the key shim's pipe; argv carries only PLACEHOLDER
    keyed_apis: tuple[str, ...] = DEFAULT_KEYED
    #: MAX_CONCURRENT_INFERENCES: Triton's rate limiter hands out this many `ruth_inference` tokens; every vision
    #: model instance needs one per execution (rendered into its instance_group). None: no limit.
    max_concurrent_executions: int | None = None
    shm_prefix: str = SHM_PREFIX
    shm_default_bytes: int = 4 * 1024 * 1024
    shm_growth_bytes: int = 4 * 1024 * 1024
    extra: tuple[str, ...] = ()

    def to_argv(self, binary: Path) -> list[str]:
        argv = [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.backend_directory}",
            "--model-control-mode=explicit",
            "--disable-auto-complete-config",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--strict-readiness={'true' if self.strict_readiness else 'false'}",
            "--allow-gpu-metrics=false" if not _has_gpu() else "--allow-gpu-metrics=true",
            "--pinned-memory-pool-byte-size=0" if not _has_gpu() else "--pinned-memory-pool-byte-size=268435456",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={self.shm_default_bytes}",
            f"--backend-config=python,shm-growth-byte-size={self.shm_growth_bytes}",
            f"--log-verbose={self.log_verbose}",
            f"--log-info={'true' if self.log_level in ('DEBUG', 'INFO') else 'false'}",
            f"--log-warning={'true' if self.log_level != 'ERROR' else 'false'}",
            "--log-error=true",
        ]
        if self.metrics_enabled:
            argv += [f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}", "--allow-metrics=true"]
        else:
            argv.append("--allow-metrics=false")
        if self.max_concurrent_executions is not None:
            argv += [
                "--rate-limit=execution_count",
                f"--rate-limit-resource={RATE_LIMIT_RESOURCE}:{self.max_concurrent_executions}",
            ]
        if self.model_config_name:
            argv.append(f"--model-config-name={self.model_config_name}")
        if self.admin_token:
            apis = ",".join(self.keyed_apis)
            argv += [
                f"--http-restricted-api={apis}:{HEADER}={PLACEHOLDER}",
                f"--grpc-restricted-protocol={apis}:{HEADER}={PLACEHOLDER}",
            ]
        argv += [f"--load-model={name}" for name in self.load_models]
        argv += list(self.extra)
        return argv


def _has_gpu() -> bool:
    return Path("/dev/nvidia0").exists()


def sweep_stale_shm(
    shm_dir: Path = SHM_DIR, prefix: str = SHM_PREFIX, is_alive: Callable[[int], bool] | None = None
) -> list[Path]:
    """Remove Python-backend shm regions left by crashed runs of ours (their owner pid is in the name)."""
    alive = is_alive or pid_alive
    removed: list[Path] = []
    if not shm_dir.is_dir():
        return removed
    for region in shm_dir.glob(f"{prefix}*"):
        pid = _owner_pid(region.name, prefix)
        if pid is None or alive(pid):
            continue
        try:
            region.unlink()
            removed.append(region)
        except OSError as exc:  # another sweeper got it first, or not ours to remove
            log.debug("could not remove %s: %s", region, exc)
    return removed


def _owner_pid(name: str, prefix: str) -> int | None:
    digits = name[len(prefix) :].split("_", 1)[0]
    return int(digits) if digits.isdigit() else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """PR_SET_PDEATHSIG: the server gets SIGTERM if ruthctl dies, so no orphan keeps the ports.

    umask 077: whatever the server and its stubs create (breaker and stream state, shm regions) is owner-only.
    """
    os.umask(0o077)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)
    except OSError:
        pass
    os.setpgrp()


class TritonServer:
    """One tritonserver process. Start refuses to run twice; stop is safe to call twice."""

    def __init__(
        self,
        flags: TritonFlags,
        install: TritonInstall,
        env: Mapping[str, str],
        *,
        log_file: Path | None = None,
        log_format: str = "text",
        key_shim: Path | None = None,
    ) -> None:
        self.key_shim = key_shim
        self.flags = flags
        self.install = install
        self.env = dict(env)
        self.log_file = log_file
        self.log_format = log_format
        self.process: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        self._log_handle: IO[bytes] | None = None
        self._terminating = False  # SIGTERM sent: stop() waits for the drain instead of signalling again

    @property
    def http_url(self) -> str:
        return f"{self.flags.host}:{self.flags.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.flags.host}:{self.flags.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.flags.host}:{self.flags.metrics_port}/metrics"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            raise TritonStartError("server already running")
        swept = sweep_stale_shm()
        if swept:
            log.warning("removed %d stale shm regions of crashed runs", len(swept))
        flags = dataclasses.replace(self.flags, shm_prefix=f"{SHM_PREFIX}{os.getpid()}_{next(_STARTS)}_")
        self.flags = flags
        self._terminating = False
        argv = flags.to_argv(self.install.binary)
        shown = " ".join(argv).replace(flags.admin_token, "***") if flags.admin_token else " ".join(argv)
        log.info("starting tritonserver: %s", shown)  # the admin token never reaches a log
        stdout: int | IO[bytes] | None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self.log_file.open("ab")
            stdout = self._log_handle
        elif self.log_format == "json":
            stdout = subprocess.PIPE
        else:
            stdout = None
        env, key_fd = self._key_handover()
        try:
            self.process = subprocess.Popen(
                argv,
                env=env,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                pass_fds=() if key_fd is None else (key_fd,),
            )
        finally:
            if key_fd is not None:
                os.close(key_fd)
        if stdout is subprocess.PIPE:
            self._pump = threading.Thread(target=self._pump_json, name="triton-log", daemon=True)
            self._pump.start()

    def _key_handover(self) -> tuple[dict[str, str], int | None]:
        """The server's environment plus, with a key, the pipe's read end holding it and the shim preloaded."""
        if not self.flags.admin_token:
            return self.env, None
        if self.key_shim is None:
            raise TritonStartError("an admin key needs the key shim (ruthctl.keyshim.shim_library); none was given")
        read_fd, write_fd = os.pipe()
        try:
            os.write(write_fd, self.flags.admin_token.encode("ascii"))
        finally:
            os.close(write_fd)
        preload = " ".join(p for p in (str(self.key_shim), self.env.get("LD_PRELOAD", "")) if p)
        return {**self.env, FD_VARIABLE: str(read_fd), "LD_PRELOAD": preload}, read_fd

    def check_key(self) -> None:
        """Prove the keyed APIs refuse the placeholder and no key, and take the real key (else the shim failed)."""
        token = self.flags.admin_token
        if not token:
            return
        url = f"http://{self.http_url}/v2/logging"
        seen = (
            http_status(url),
            http_status(url, headers={HEADER: PLACEHOLDER}),
            http_status(url, headers={HEADER: token}),
        )
        if seen[0] != 403 or seen[1] != 403 or seen[2] != 200:
            raise TritonStartError(
                f"the admin key did not reach tritonserver (GET /v2/logging: no key {seen[0]}, placeholder {seen[1]}, "
                f"key {seen[2]}; expected 403, 403, 200): is the key shim loaded?"
            )

    def _pump_json(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line:
                sys.stdout.write(json.dumps({"ts": time.time(), "source": "tritonserver", "msg": line}) + "\n")
                sys.stdout.flush()

    def wait_live(self, timeout_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        """Poll /v2/health/live until it answers; fail early if the process exits."""
        deadline = clock() + timeout_s
        while clock() < deadline:
            if self.process is None or self.process.poll() is not None:
                rc = None if self.process is None else self.process.returncode
                raise TritonStartError(f"tritonserver exited during start (rc={rc}); see its log")
            if http_status(f"http://{self.http_url}/v2/health/live") == 200:
                self.check_key()
                return
            time.sleep(0.1)
        raise TritonStartError(f"tritonserver not live after {timeout_s:.0f}s")

    def send_signal(self, sig: int) -> None:
        """Signal the server without waiting for it: safe inside a signal handler (Popen.poll never blocks)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self._terminating = self._terminating or sig == signal.SIGTERM

    def wait(self, timeout_s: float | None = None) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self, grace_s: float | None = None) -> int | None:
        """SIGTERM, wait for the drain (exit timeout + margin), then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            if not self._terminating:
                self.process.send_signal(signal.SIGTERM)
                self._terminating = True
            try:
                self.process.wait(timeout=grace_s if grace_s is not None else self.flags.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                log.error("tritonserver did not stop in time; killing it")
                self.process.kill()
                self.process.wait()
        if self._pump is not None:
            self._pump.join(timeout=2)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self._remove_own_shm()
        return self.process.returncode

    def _remove_own_shm(self) -> None:
        """Regions of this start's stubs that outlived the server (a SIGKILLed stub leaves its region behind)."""
        if not SHM_DIR.is_dir() or self.flags.shm_prefix == SHM_PREFIX:  # never started: no prefix of its own
            return
        for region in SHM_DIR.glob(f"{self.flags.shm_prefix}*"):
            try:
                region.unlink()
            except OSError as exc:
                log.debug("could not remove %s: %s", region, exc)

    def kill(self) -> None:
        """SIGKILL, as a crash would; the stubs notice and exit on their own."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_status(
    url: str, data: bytes | None = None, timeout_s: float = 2.0, headers: Mapping[str, str] | None = None
) -> int | None:
    """Status code of a GET (or POST with data), None when nothing answers."""
    request = urllib.request.Request(
        url, data=data, method="POST" if data is not None else "GET", headers=dict(headers or {})
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def repository_models(repository: Path) -> list[str]:
    """Model directories in the repository (those with a config.pbtxt), sorted."""
    return sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))


def order_for_loading(names: Iterable[str], first: Iterable[str] = ("pose_estimator",)) -> list[str]:
    """BLS callees first, so a caller never starts before the model it calls."""
    names = list(names)
    head = [n for n in first if n in names]
    return head + [n for n in names if n not in head]
