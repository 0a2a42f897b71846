"""`ruthctl serve` in the foreground: start tritonserver, load the wanted models, watch it, escalate, drain.

The main thread owns the tritonserver process; a poller thread looks at it every `poll_interval_s` (a fresh
connection each time) and feeds `probe.Supervisor`, whose verdicts the probe endpoint serves. When the verdict is
"wedged" (a model stuck UNLOADING, or no answer in bounded time) or the server exited on its own, the main thread
restarts tritonserver and loads the wanted models again, at most `max_restarts` times an hour, each time with an
event on stderr and `ruthctl_serve_restarts_total`; then it gives up with exit 1 so the orchestrator restarts the
container (docs/operations.md).

Signals only set a flag and signal the server (SIGTERM on the first, SIGKILL on the second): a handler never waits,
because it may have interrupted the main thread inside `Popen.wait`, whose lock is not re-entrant.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import pydantic

from ruthctl import probe
from ruthctl.access import admin_token, auth_headers, keyed_apis, secure_state_dir
from ruthctl.keyshim import shim_library
from ruthctl.registry import Desired, IllegalTransition, Registry, RegistryError, State, default_actor
from ruthctl.server import (
    TritonFlags,
    TritonInstall,
    TritonServer,
    TritonStartError,
    order_for_loading,
    prepare_backends_dir,
    repository_models,
    server_environment,
)
from ruthctl.settings import Settings

__all__ = [
    "ServeEvent",
    "Supervised",
    "build_server",
    "claim",
    "load_model",
    "registry_server_name",
    "release",
    "renew",
    "seed_registry",
]

log = logging.getLogger(__name__)

RESTART_WINDOW_S = 3600.0

Loader = Callable[[str, str, str | None, float], tuple[bool, str]]  # (http url, model, admin token, timeout)


class ServeEvent(pydantic.BaseModel):
    """A machine-readable event of `serve` on stderr (docs/operations.md): one JSON object a line with
    LOG_FORMAT=json, `event <name>: field=value, ...` for people."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    event: Literal["tritonserver_restart", "tritonserver_gave_up"]
    reason: str
    attempt: int | None = None  # tritonserver_restart: which restart of the hour, and the hour's limit
    limit: int | None = None
    restarts_last_hour: int | None = None  # tritonserver_gave_up: the restarts that spent the budget

    def fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude={"event"})


Say = Callable[[str, "str | ServeEvent"], None]  # (level, message); level "event" carries a ServeEvent


def registry_server_name(settings: Settings) -> str:
    """How the registry names this server: as its clients do. That is `RUTH_TRITON_URL` when it points at this
    server's HTTP port (compose names it `triton:8000` for the watch container), else its HTTP address, on
    loopback for a wildcard bind. One name per server, or a DISABLED recorded under one is missed under the other."""
    from ruthctl.triton_client import Endpoint, Transport

    try:
        named = Endpoint.parse(settings.ruth_triton_url.split(",")[0])
    except ValueError:
        named = None
    if named is not None and named.transport is Transport.HTTP and named.port == settings.ruth_http_port:
        return str(named)
    return str(Endpoint.parse(f"{probe.probe_host(settings.ruth_host)}:{settings.ruth_http_port}"))


def seed_registry(registry: Registry, names: Sequence[str], versions: dict[str, int]) -> bool:
    """A first `serve` with no registry records what it is about to load as the desired state (as `repair`'s adopt
    would), so `verify` and `status` are meaningful from the start. Returns whether it seeded."""
    if registry.exists():
        return False
    for name in names:
        registry.set_desired(name, Desired.ACTIVE, version=versions.get(name), reason="serve: first start, no registry")
    return True


def record(registry: Registry, name: str, server: str, target: State, reason: str) -> bool:
    """Best effort: move `name` on this server to `target` (LOADING, READY or FAILED). This tritonserver was started
    by us, so a LOADING/UNLOADING claim found here belongs to a process that is gone and is closed first."""
    try:
        entry = registry.get(name)
        current = entry.on(server).state if entry is not None else State.UNLOADED
        if target is State.LOADING and current is State.LOADING:
            registry.transition(name, server, State.FAILED, reason="serve: claim of a server process that is gone")
        elif target is State.LOADING and current is State.UNLOADING:
            registry.transition(name, server, State.UNLOADED, reason="serve: server restarted during the unload")
        registry.transition(name, server, target, reason=reason)
    except (IllegalTransition, RegistryError, OSError, ValueError) as exc:
        log.warning("registry: could not record %s %s on %s: %s", name, target.value, server, exc)
        return False
    return True


def claim(registry: Registry, names: Sequence[str], server: str) -> dict[str, str]:
    """Claim `names` on this server for `serve`'s loads (LOADING, this process as the owner); returns the claims
    made (model -> reason), in order. Best effort, like `record`: a model that can't be claimed is left out (and
    still loaded)."""
    return {
        name: "serve: start-up, queued"
        for name in names
        if record(registry, name, server, State.LOADING, "serve: start-up, queued")
    }


def renew(registry: Registry, claims: dict[str, str], server: str) -> set[str] | None:
    """The claims still ours, renewed; None when the registry can't say (then serve goes on loading)."""
    try:
        return registry.renew(claims, server)
    except (RegistryError, OSError, ValueError) as exc:
        log.warning("registry: could not renew the start-up claims on %s: %s", server, exc)
        return None


def release(registry: Registry, claims: dict[str, str], server: str) -> None:
    """Give back the claims of loads that never ran (a signal, a tritonserver that did not start): the models are
    not loaded, and nobody is working on them any more."""
    if not claims:
        return
    why = "serve: not loaded (stopped, or tritonserver did not start)"
    held = renew(registry, dict.fromkeys(claims, why), server) or set()
    for name in [n for n in claims if n in held]:
        try:
            registry.transition(name, server, State.UNLOADING, reason=why, expect=State.LOADING)
            registry.transition(name, server, State.UNLOADED, reason=why)
        except (IllegalTransition, RegistryError, OSError, ValueError) as exc:
            log.warning("registry: could not release the claim of %s on %s: %s", name, server, exc)
    claims.clear()


@dataclasses.dataclass
class Supervised:
    """One `serve` run. `run()` returns the exit code."""

    server: TritonServer
    settings: Settings
    models: list[str] | None  # serve --model: only these (None: the registry's wanted models, or every model)
    loader: Loader
    say: Say
    load_timeout_s: float = 120.0
    poll_interval_s: float = 2.0
    poll_timeout_s: float = 5.0
    on_ready: Callable[[list[str], int], None] | None = None
    supervisor: probe.Supervisor = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.supervisor = probe.Supervisor(
            wedge_after_s=self.settings.ruth_wedge_after_seconds,
            unresponsive_after_s=max(3 * self.poll_timeout_s, 15.0),
            stale_after_s=max(10 * self.poll_interval_s, 60.0),
        )
        self.registry = Registry(self.settings.ruth_state_dir.resolve(), actor=default_actor("serve"))
        self.server_name = registry_server_name(self.settings)
        self.received: list[int] = []
        self.restarts: list[float] = []
        self.names: list[str] = []
        self._stop_polling = threading.Event()

    # -- what is wanted -------------------------------------------------------------------------------------------
    def wanted(self) -> list[str]:
        available = repository_models(self.settings.models_root)
        try:
            wanted = probe.wanted_models(self.registry, self.server_name, available, self.models)
        except (RegistryError, OSError) as exc:
            log.warning("registry unreadable for the probes: %s", exc)
            wanted = None
        return list(self.names) if wanted is None else wanted

    # -- signals --------------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """No waiting here (see the module docstring): flag, then signal the server."""
        first = not self.received
        self.received.append(signum)
        self.server.send_signal(signal.SIGTERM if first else signal.SIGKILL)

    # -- the run ----------------------------------------------------------------------------------------------------
    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        endpoint: probe.ProbeServer | None = None
        poller: threading.Thread | None = None
        try:
            try:
                endpoint = probe.ProbeServer(
                    self.supervisor, self.settings.ruth_host, self.settings.ruth_probe_port
                ).start()
            except OSError as exc:
                where = f"{self.settings.ruth_host}:{self.settings.ruth_probe_port}"
                self.say("error", f"probe endpoint {where}: {exc} (choose another with RUTH_PROBE_PORT)")
                return 1
            poller = threading.Thread(target=self._poll_loop, name="ruth-supervisor", daemon=True)
            poller.start()
            if not self._start_and_load(first=True):
                return 1
            return self._serve()
        finally:
            self.supervisor.set_phase("stopping")
            self._stop_polling.set()
            if poller is not None:
                poller.join(timeout=self.poll_timeout_s * 2 + 1)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.server.stop()
            if endpoint is not None:
                endpoint.close()

    def _start_and_load(self, *, first: bool) -> bool:
        """Start tritonserver and load the wanted models, each claimed (LOADING, owned by this process) before
        tritonserver answers: a `watch` beside us (the pod's sidecar, compose's watch) sees them being worked on,
        not missing, and leaves them to us instead of loading them as recoveries. A claim ends READY when its load
        succeeds; the failed ones are recorded FAILED when the start-up is over, for `watch` to retry from then on
        (docs/operations.md, "Pod start")."""
        self.supervisor.set_phase("starting")
        if first:
            self.names = self._first_names()
        names = self.names if first else order_for_loading(self.wanted())
        claimed = claim(self.registry, names, self.server_name)
        try:
            self.server.start()
            try:
                self.server.wait_live()
            except TritonStartError as exc:
                self.say("error", str(exc))
                self.server.stop(grace_s=5)
                return False
            self.supervisor.forget()
            self.supervisor.set_phase("loading")
            failed = self._load_claimed(names, claimed)
        finally:
            release(self.registry, claimed, self.server_name)
        self.supervisor.set_phase("serving")
        if not self.received and self.on_ready is not None:
            self.on_ready(names, failed)
        return True

    def _load_claimed(self, names: Sequence[str], claimed: dict[str, str]) -> int:
        """Load `names` in order; `claimed` (model -> reason of its claim) keeps the claims not settled yet. Before
        each load every claim left is renewed (so none looks stuck while it waits its turn); a model whose claim
        another process took over meanwhile (a `deactivate`, say) is left to it. Returns the failures."""
        failed: dict[str, str] = {}
        for name in names:
            if self.received:
                break
            if name in claimed:
                claimed[name] = "serve: start-up, loading"
                held = renew(self.registry, claimed, self.server_name)
                if held is not None and name not in held:
                    del claimed[name]
                    self.say("info", f"{name}: its claim was taken over by another command; not loaded by serve")
                    continue
            else:  # it could not be claimed up front (the registry was busy or unwritable): the old best effort
                record(self.registry, name, self.server_name, State.LOADING, "serve: start")
                claimed[name] = "serve: start-up, loading"
            started = time.monotonic()
            ok, reason = self.loader(self.server.http_url, name, self.server.flags.admin_token, self.load_timeout_s)
            took = time.monotonic() - started
            if ok:
                del claimed[name]
                record(self.registry, name, self.server_name, State.READY, "serve: loaded")
                self.say("ready", f"{name} ({took:.1f}s)")
            else:
                failed[name] = reason
                claimed[name] = f"serve: start-up; load failed, FAILED once the start-up is over: {reason}"[:2000]
                self.say("failed", f"{name}: {reason}")
        for name, reason in failed.items():  # the start-up is over: watch retries these from now on
            del claimed[name]
            record(self.registry, name, self.server_name, State.FAILED, f"serve: {reason}"[:2000])
        return len(failed)

    def _first_names(self) -> list[str]:
        """What the first start loads; with no registry yet, that is also recorded as the desired state."""
        available = repository_models(self.settings.models_root)
        if self.models:
            names = list(self.models)
        else:
            wanted = probe.wanted_models(self.registry, self.server_name, available)
            names = order_for_loading(available if wanted is None else wanted)
        try:
            seeded = seed_registry(self.registry, names, _spec_versions(self.settings))
        except (RegistryError, OSError) as exc:
            log.warning("could not seed the registry: %s", exc)
            seeded = False
        if seeded:
            self.say("info", f"no registry yet: recorded {len(names)} models as desired ACTIVE")
        return names

    def _serve(self) -> int:
        while not self.received:
            process = self.server.process
            rc = process.poll() if process is not None else None
            if rc is not None and not self.received:
                if not self._escalate(f"tritonserver exited on its own (rc={rc})"):
                    return 1
                continue
            snap = self.supervisor.snapshot()
            if snap.wedged and snap.phase == "serving":
                if not self._escalate(snap.live.reason):
                    return 1
                continue
            time.sleep(0.2)
        rc = self.server.stop()
        if len(self.received) > 1:
            self.say("error", "second signal: tritonserver killed without waiting for the drain")
            return 1
        return 0 if rc == 0 else 1

    def _escalate(self, reason: str) -> bool:
        """Restart tritonserver, unless the hour's budget of restarts is spent (then False: serve exits 1)."""
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S]
        limit = self.settings.ruth_max_restarts
        if len(self.restarts) >= limit:
            self.say(
                "event",
                ServeEvent(event="tritonserver_gave_up", reason=reason, restarts_last_hour=len(self.restarts)),
            )
            self.say("error", f"{reason}; {len(self.restarts)} restarts in the last hour (limit {limit}): giving up")
            return False
        self.restarts.append(now)
        self.supervisor.count_restart(reason)
        attempt = len(self.restarts)
        self.say("event", ServeEvent(event="tritonserver_restart", reason=reason, attempt=attempt, limit=limit))
        self.supervisor.set_phase("restarting")
        self.supervisor.forget()
        self.server.stop()
        if self.received:
            return True
        return self._start_and_load(first=False) or self._escalate("tritonserver did not start again")

    # -- the poller -------------------------------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        while not self._stop_polling.wait(self.poll_interval_s):
            if self.supervisor.snapshot().phase in ("starting", "restarting", "stopping"):
                continue
            try:
                observation = probe.poll_triton(
                    self.server.http_url, self.server.flags.admin_token, self.poll_timeout_s
                )
                self.supervisor.observe(observation, self.wanted())
            except Exception as exc:  # noqa: BLE001 - the poller must outlive any one bad round
                log.warning("supervisor round failed: %s", exc)


def _spec_versions(settings: Settings) -> dict[str, int]:
    from ruthctl.app import config_root
    from ruthctl.spec import load_specs

    try:
        specs, _ = load_specs(config_root(settings.models_root.resolve()) / "models")
    except (OSError, ValueError):
        return {}
    return {name: spec.version for name, spec in specs.items()}


def stderr_say(log_format: str, console: Any) -> Say:
    """Progress and events of serve on stderr: rich text, or one JSON object a line with LOG_FORMAT=json."""

    def say(level: str, message: str | ServeEvent) -> None:
        if log_format == "json":
            doc: dict[str, Any] = {"ts": time.time(), "source": "ruthctl serve", "level": level}
            if isinstance(message, ServeEvent):
                doc.update(event=message.event, **message.fields())
            else:
                doc["msg"] = message
            sys.stderr.write(json.dumps(doc) + "\n")
            sys.stderr.flush()
            return
        style = {"ready": "[green]READY[/green] ", "failed": "[red]FAILED[/red] ", "error": "[red]error:[/red] "}
        if isinstance(message, ServeEvent):
            fields = ", ".join(f"{k}={v}" for k, v in message.fields().items())
            console.print(f"[yellow]event[/yellow] {message.event}: {fields}", highlight=False)
        else:
            console.print(style.get(level, "") + message, highlight=False)

    return say


def build_server(settings: Settings, *, log_file: Path | None = None) -> TritonServer:
    """The tritonserver `serve` runs, from settings: flags, backends folder, environment (the test fixtures build
    theirs with it too)."""
    install = TritonInstall.locate(settings.ruth_tritonserver, settings.ruth_backend_directory)
    state_dir = secure_state_dir(settings.ruth_state_dir.resolve())
    backends = prepare_backends_dir(install, state_dir)
    env_token = settings.ruth_admin_token.get_secret_value() if settings.ruth_admin_token is not None else None
    token = admin_token(state_dir, env_token)  # empty: the state dir's generated key; never "no key"
    apis = keyed_apis(settings.ruth_keyed_apis.split(","))
    shim = shim_library(state_dir, settings.ruth_key_shim)
    flags = TritonFlags(
        model_repository=settings.models_root.resolve(),
        backend_directory=backends,
        host=settings.ruth_host,
        http_port=settings.ruth_http_port,
        grpc_port=settings.ruth_grpc_port,
        metrics_port=settings.ruth_metrics_port,
        model_config_name=settings.ruth_ai_profile.value,
        exit_timeout_s=settings.graceful_shutdown_timeout_seconds,
        log_verbose=1 if settings.log_level == "DEBUG" else 0,
        log_level=settings.log_level,
        strict_readiness=settings.ruth_strict_readiness,
        metrics_enabled=settings.metrics_enabled,
        admin_token=token,
        keyed_apis=apis,
        max_concurrent_executions=settings.max_concurrent_inferences,
    )
    env = server_environment(dict(os.environ), settings.model_env())
    return TritonServer(flags, install, env, log_file=log_file, log_format=settings.log_format, key_shim=shim)


def load_model(http_url: str, name: str, token: str | None, timeout_s: float) -> tuple[bool, str]:
    """Load through the repository API; returns (ok, Triton's reason on failure)."""
    request = urllib.request.Request(
        f"http://{http_url}/v2/repository/models/{name}/load",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json", **auth_headers(token)},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return True, ""
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        try:
            return False, str(json.loads(body).get("error", body))
        except ValueError:
            return False, body
    except (urllib.error.URLError, OSError) as exc:
        return False, str(exc)
