"""`ruthctl serve`: run the bundled Triton over the model repository in the foreground."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from python_backends.state import StateLayout
from ruthctl.access import WeakToken
from ruthctl.app import app_of
from ruthctl.commands._common import profile_option
from ruthctl.exit_codes import ExitCode
from ruthctl.keyshim import KeyShimUnavailable
from ruthctl.server import TritonNotInstalled, TritonServer
from ruthctl.settings import Profile, Settings, load_settings


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
    mismatch = settings.hardware_problem()
    if mismatch:
        err.print(f"[red]error:[/red] {mismatch}")
        raise typer.Exit(ExitCode.USAGE)
    err.print(
        f"ruthctl serve: environment {settings.ruth_ai_env}, profile {settings.ruth_ai_profile.value}, "
        f"hardware {settings.resolved_hardware().value}",
        highlight=False,
    )
    from ruthctl.supervise import build_server

    try:
        server = build_server(settings, log_file=log_file)
    except (TritonNotInstalled, KeyShimUnavailable) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(ExitCode.ERROR) from exc
    except (WeakToken, ValueError) as exc:  # an unsafe key, key file or state dir, or a bad RUTH_KEYED_APIS
        err.print(f"[red]error:[/red] refusing to start: {exc}")
        raise typer.Exit(ExitCode.USAGE) from exc
    raise typer.Exit(run_foreground(server, settings, err, models=model, load_timeout_s=load_timeout))


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


def run_foreground(
    server: TritonServer,
    settings: Settings,
    err: Console,
    *,
    models: list[str] | None = None,
    load_timeout_s: float = 120.0,
) -> int:
    """Start, load, print endpoints (on `err`), then supervise until SIGTERM/SIGINT (ruthctl.supervise)."""
    from ruthctl.supervise import Supervised, load_model, stderr_say

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
    err.file.flush()


__all__ = ["Profile", "register", "run_foreground", "serve"]
