"""`ruthctl serve`: run the bundled Triton over the model repository in the foreground."""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from python_backends.state import StateLayout
from ruthctl.access import WeakToken, admin_token, auth_headers, keyed_apis, secure_state_dir
from ruthctl.app import app_of
from ruthctl.commands._common import profile_option
from ruthctl.exit_codes import ExitCode
from ruthctl.keyshim import KeyShimUnavailable, shim_library
from ruthctl.server import (
    TritonFlags,
    TritonInstall,
    TritonNotInstalled,
    TritonServer,
    prepare_backends_dir,
    server_environment,
)
from ruthctl.settings import Hardware, Profile, Settings, load_settings


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
        str | None,
        typer.Option(
            envvar="RUTH_AI_PROFILE", help="cpu, gpu or jetson: configs/<profile>.pbtxt (legacy prod-cpu ... too)."
        ),
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
    app = app_of(ctx)
    root, err = app.options, app.err
    try:
        settings = load_settings(
            ruth_host=host,
            ruth_http_port=http_port,
            ruth_grpc_port=grpc_port,
            ruth_metrics_port=metrics_port,
            models_root=model_repository,
            graceful_shutdown_timeout_seconds=exit_timeout,
            log_format=log_format,
            ruth_ai_profile=profile_option(profile) or root.profile,
            ruth_state_dir=state_dir or root.state_dir,
            ruth_tritonserver=tritonserver,
            ruth_backend_directory=backend_directory,
        )
    except ValidationError as exc:
        for problem in exc.errors():
            name = str(problem["loc"][0]).upper() if problem["loc"] else "?"
            err.print(f"[red]error:[/red] invalid setting {name}: {problem['msg']} (got {shown_input(name, problem)})")
        raise typer.Exit(ExitCode.USAGE) from exc
    mismatch = hardware_problem(settings)
    if mismatch:
        err.print(f"[red]error:[/red] {mismatch}")
        raise typer.Exit(ExitCode.USAGE)
    err.print(
        f"ruthctl serve: environment {settings.ruth_ai_env}, profile {settings.ruth_ai_profile.value}, "
        f"hardware {settings.resolved_hardware().value}",
        highlight=False,
    )
    try:
        server = build_server(settings, log_file=log_file)
    except (TritonNotInstalled, KeyShimUnavailable) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(ExitCode.ERROR) from exc
    except (WeakToken, ValueError) as exc:  # an unsafe key, key file or state dir, or a bad RUTH_KEYED_APIS
        err.print(f"[red]error:[/red] refusing to start: {exc}")
        raise typer.Exit(ExitCode.USAGE) from exc
    raise typer.Exit(run_foreground(server, settings, err, models=model, load_timeout_s=load_timeout))


def hardware_problem(settings: Settings) -> str | None:
    """A GPU profile on a host without a GPU would start with every model failing: refuse it up front."""
    found = settings.resolved_hardware()
    if settings.ruth_ai_profile is Profile.CPU or found is not Hardware.CPU:
        return None
    return (
        f"profile {settings.ruth_ai_profile.value} needs a GPU, but this host is cpu "
        f"(AI_RUNTIME_HARDWARE={settings.ai_runtime_hardware.value}); no model of that profile could load. "
        "Use --profile cpu (or RUTH_AI_PROFILE=cpu)"
    )


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
    env = server_environment(dict(__import__("os").environ), settings.model_env())
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


def run_foreground(
    server: TritonServer,
    settings: Settings,
    err: Console,
    *,
    models: list[str] | None = None,
    load_timeout_s: float = 120.0,
) -> int:
    """Start, load, print endpoints (on `err`), then supervise until SIGTERM/SIGINT (ruthctl.supervise)."""
    from ruthctl.supervise import Supervised, stderr_say

    return Supervised(
        server,
        settings,
        models,
        loader=load_model,
        say=stderr_say(settings.log_format, err),
        load_timeout_s=load_timeout_s,
        on_ready=lambda names, failures: print_endpoints(err, server, settings, names, failures),
    ).run()


def print_endpoints(err: Console, server: TritonServer, settings: Settings, names: list[str], failures: int) -> None:
    table = Table(
        title=f"Ruth AI on Triton — profile {settings.ruth_ai_profile.value}, environment {settings.ruth_ai_env}",
        show_header=False,
    )
    table.add_row("HTTP", f"http://{server.http_url}  (/v2/models/<name>/infer)")
    probe_at = f"{settings.ruth_host}:{settings.ruth_probe_port}"
    table.add_row("probes", f"http://{probe_at}/ready, /live, /metrics  (ruthctl probe ready|live)")
    table.add_row("gRPC", server.grpc_url)
    if settings.metrics_enabled:
        table.add_row("metrics", server.metrics_url)
    table.add_row("models", f"{len(names) - failures}/{len(names)} ready: {', '.join(names)}")
    table.add_row("state dir", str(settings.ruth_state_dir.resolve()))
    key_file = StateLayout(settings.ruth_state_dir.resolve()).admin_token
    where = "RUTH_ADMIN_TOKEN" if settings.ruth_admin_token else str(key_file)
    table.add_row("admin key", f"{where} (header ruth-admin-token; keyed: {', '.join(server.flags.keyed_apis)})")
    err.print(table)
    err.print("Ctrl-C or SIGTERM drains in-flight requests and stops.")
    sys.stderr.flush()


__all__ = ["Profile", "build_server", "register", "run_foreground", "serve"]
