"""`ruthctl serve`: run the bundled Triton over the model repository in the foreground."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from ruthctl.access import admin_token, auth_headers
from ruthctl.exit_codes import ExitCode
from ruthctl.server import (
    TritonFlags,
    TritonInstall,
    TritonNotInstalled,
    TritonServer,
    TritonStartError,
    order_for_loading,
    prepare_backends_dir,
    repository_models,
    server_environment,
)
from ruthctl.settings import Profile, Settings, load_settings

err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(envvar="RUTH_HOST", help="Listen address (loopback by default).")] = None,
    http_port: Annotated[int | None, typer.Option(envvar="RUTH_HTTP_PORT")] = None,
    grpc_port: Annotated[int | None, typer.Option(envvar="RUTH_GRPC_PORT")] = None,
    metrics_port: Annotated[int | None, typer.Option(envvar="RUTH_METRICS_PORT")] = None,
    model_repository: Annotated[Path | None, typer.Option(envvar="MODELS_ROOT")] = None,
    profile: Annotated[
        Profile | None, typer.Option(envvar="RUTH_AI_PROFILE", help="cpu, gpu or jetson: configs/<profile>.pbtxt.")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(envvar="RUTH_STATE_DIR", help="Breakers, ledger, registry.")] = None,
    exit_timeout: Annotated[
        int | None, typer.Option(envvar="GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS", help="Drain budget on SIGTERM (s).")
    ] = None,
    log_format: Annotated[Literal["json", "text"] | None, typer.Option(envvar="LOG_FORMAT")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="Load only these models.")] = None,
    tritonserver: Annotated[
        Path | None, typer.Option(envvar="RUTH_TRITONSERVER", help="Use this server binary.")
    ] = None,
    backend_directory: Annotated[Path | None, typer.Option(envvar="RUTH_BACKEND_DIRECTORY")] = None,
    log_file: Annotated[Path | None, typer.Option(help="Write the server log here instead of stdout.")] = None,
    load_timeout: Annotated[float, typer.Option(help="Seconds to wait for each model load.")] = 120.0,
) -> None:
    """Start tritonserver, load the models the desired state marks active, and stay up until SIGTERM/SIGINT."""
    root = ctx.obj
    try:
        settings = load_settings(
            ruth_host=host,
            ruth_http_port=http_port,
            ruth_grpc_port=grpc_port,
            ruth_metrics_port=metrics_port,
            models_root=model_repository,
            graceful_shutdown_timeout_seconds=exit_timeout,
            log_format=log_format,
            ruth_ai_profile=profile or (root.profile if root is not None else None),
            ruth_state_dir=state_dir or (root.state_dir if root is not None else None),
            ruth_tritonserver=tritonserver,
            ruth_backend_directory=backend_directory,
        )
    except ValidationError as exc:
        for problem in exc.errors():
            name = str(problem["loc"][0]).upper() if problem["loc"] else "?"
            err.print(f"[red]error:[/red] invalid setting {name}: {problem['msg']} (got {shown_input(name, problem)})")
        raise typer.Exit(ExitCode.USAGE) from exc
    try:
        server = build_server(settings, log_file=log_file)
    except TritonNotInstalled as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(ExitCode.ERROR) from exc
    raise typer.Exit(run_foreground(server, settings, models=model, load_timeout_s=load_timeout))


def shown_input(name: str, problem: Mapping[str, Any]) -> str:
    """The refused value for the error line, unless it may be a credential (a token, a URL with a password)."""
    value = problem.get("input")
    if re.search(r"TOKEN|SECRET|PASSW", name) or not problem.get("loc"):
        return "<hidden>"
    if isinstance(value, str) and "://" in value:
        parts = urlsplit(value)
        if parts.password is not None:
            return repr(value.replace(f":{parts.password}@", ":***@", 1))
    return repr(value)


def build_server(settings: Settings, *, log_file: Path | None = None) -> TritonServer:
    """Everything `serve` needs, from settings: flags, backends folder, environment. Used by the test fixture too."""
    install = TritonInstall.locate(settings.ruth_tritonserver, settings.ruth_backend_directory)
    state_dir = settings.ruth_state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    backends = prepare_backends_dir(install, state_dir)
    token = admin_token(state_dir, settings.ruth_admin_token.get_secret_value() if settings.ruth_admin_token else None)
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
        max_concurrent_executions=settings.max_concurrent_inferences,
    )
    env = server_environment(dict(__import__("os").environ), settings.model_env())
    return TritonServer(flags, install, env, log_file=log_file, log_format=settings.log_format)


def desired_models(settings: Settings) -> list[str]:
    """Models the deployment wants active: the registry's desired state, or every model in the repository."""
    available = repository_models(settings.models_root)
    try:
        from ruthctl.registry import Registry
    except ImportError:
        return order_for_loading(available)
    wanted = Registry(settings.ruth_state_dir).desired_active()
    if wanted is None:
        return order_for_loading(available)
    return order_for_loading([m for m in available if m in wanted])


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


def run_foreground(
    server: TritonServer, settings: Settings, *, models: list[str] | None = None, load_timeout_s: float = 120.0
) -> int:
    """Start, load, print endpoints, then wait; SIGTERM/SIGINT are forwarded as SIGTERM for a graceful drain."""
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if received:  # a second signal: stop waiting for the drain
            server.kill()
        received.append(signum)
        server.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        try:
            server.wait_live()
        except TritonStartError as exc:
            err.print(f"[red]error:[/red] {exc}")
            server.stop(grace_s=5)
            return ExitCode.ERROR
        failures = 0
        names = models or desired_models(settings)
        for name in names:
            if received:
                break
            started = time.monotonic()
            ok, reason = load_model(server.http_url, name, server.flags.admin_token, load_timeout_s)
            took = time.monotonic() - started
            if ok:
                err.print(f"[green]READY[/green] {name} ({took:.1f}s)")
            else:
                failures += 1
                err.print(f"[red]FAILED[/red] {name}: {reason}")
        if not received:
            print_endpoints(server, settings, names, failures)
        rc = server.wait()
        return ExitCode.OK if rc == 0 else ExitCode.ERROR
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()


def print_endpoints(server: TritonServer, settings: Settings, names: list[str], failures: int) -> None:
    table = Table(title=f"Ruth AI on Triton — profile {settings.ruth_ai_profile.value}", show_header=False)
    table.add_row("HTTP", f"http://{server.http_url}  (/v2/health/ready, /v2/models/<name>/infer)")
    table.add_row("gRPC", server.grpc_url)
    if settings.metrics_enabled:
        table.add_row("metrics", server.metrics_url)
    table.add_row("models", f"{len(names) - failures}/{len(names)} ready: {', '.join(names)}")
    table.add_row("state dir", str(settings.ruth_state_dir.resolve()))
    table.add_row("admin token", str(settings.ruth_state_dir.resolve() / "admin-token") + " (header ruth-admin-token)")
    err.print(table)
    err.print("Ctrl-C or SIGTERM drains in-flight requests and stops.")
    sys.stderr.flush()


__all__ = ["Profile", "build_server", "register", "run_foreground", "serve"]
