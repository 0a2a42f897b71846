"""`ruthctl image build|run --variant cpu|gpu|jetson`: the runtime images through the Docker SDK.

A Typer sub-app (`app`), mounted by the root as `ruthctl image`. `--dry-run` prints the exact SDK arguments
without an engine; `--json` prints one document on stdout, everything else goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ruthctl.app import App, app_of
from ruthctl.commands._common import JsonOption, print_json
from ruthctl.exit_codes import ExitCode
from ruthctl.settings import Profile

app = typer.Typer(
    name="image",
    help="Build and run the runtime images (cpu, gpu, jetson) with the Docker SDK.",
    no_args_is_help=True,
)

VariantOption = Annotated[Profile, typer.Option("--variant", help="Image: cpu, gpu (NGC Triton) or jetson (igpu).")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Print the Docker SDK arguments; touch no engine.")]
ExitTimeoutOption = Annotated[
    int,
    typer.Option(
        envvar="GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS",
        help="Triton's drain budget (s); the container's stop timeout is this + 15 s.",
    ),
]


@contextlib.contextmanager
def _image_errors(app: App) -> Iterator[None]:
    """An `ImageError` ends the command: its message on stderr, exit 4 when no engine answers, else 1."""
    from ruthctl.images import EngineUnreachable, ImageError  # noqa: PLC0415 - keep `ruthctl --help` light

    try:
        yield
    except ImageError as exc:
        app.err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(ExitCode.UNREACHABLE if isinstance(exc, EngineUnreachable) else ExitCode.ERROR) from exc


def _emit(app: App, document: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        print_json(app.out(), document, indent=2, sort_keys=True)
        return
    table = Table(title=title, show_header=False)
    for key, value in document.items():
        table.add_row(key, json.dumps(value, default=str) if isinstance(value, dict | list) else str(value))
    app.out().print(table)


@app.command("build")
def build(
    ctx: typer.Context,
    variant: VariantOption = Profile.CPU,
    tag: Annotated[str | None, typer.Option(help="Image tag (default ruth-ai/<image>:<package version>).")] = None,
    extra_tag: Annotated[list[str] | None, typer.Option("--extra-tag", help="More tags for the same image.")] = None,
    context: Annotated[Path, typer.Option(help="Build context: the repository root.")] = Path(),
    vcs_ref: Annotated[str | None, typer.Option(help="Commit recorded in the image label.")] = None,
    exit_timeout: ExitTimeoutOption = 30,
    pull: Annotated[bool, typer.Option(help="Pull a newer base image first.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache")] = False,
    base: Annotated[
        str | None, typer.Option(help="Base image instead of the Dockerfile's pinned one (build arg BASE).")
    ] = None,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
) -> None:
    """Build one image from containers/<variant>/Dockerfile with its build args and tags.

    The cpu image installs from build/wheelhouse/ (`ruthctl image wheelhouse`), not from a package index."""
    from ruthctl import images  # noqa: PLC0415 - keep `ruthctl --help` light

    app = app_of(ctx)
    with _image_errors(app):
        plan = images.plan_build(
            variant.value,
            tag=tag,
            context=context,
            vcs_ref=vcs_ref,
            base=base,
            exit_timeout_s=exit_timeout,
            extra_tags=tuple(extra_tag or ()),
            pull=pull,
            nocache=no_cache,
        )
        if dry_run:
            return _emit(app, {"dry_run": True, **plan.as_dict()}, as_json, f"would build {plan.tags[0]}")
        result = images.build_image(plan, on_log=lambda line: app.err.print(line, markup=False, soft_wrap=True))
    _emit(app, result.as_dict(), as_json, f"built {result.tags[0]}")


@app.command("wheelhouse")
def wheelhouse(
    ctx: typer.Context,
    context: Annotated[Path, typer.Option(help="Build context: the repository root.")] = Path(),
    refresh: Annotated[bool, typer.Option(help="Rebuild it even if the requirements did not change.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Wheels for the cpu image in build/wheelhouse/, made here with pip (this host's index and CA settings).

    Reused while the requirements in pyproject.toml, the Python version (3.11, the image's) and the machine are
    unchanged."""
    from ruthctl import images  # noqa: PLC0415 - keep `ruthctl --help` light

    app = app_of(ctx)
    with _image_errors(app):
        result = images.prepare_wheelhouse(context, refresh=refresh)
    _emit(app, result.as_dict(), as_json, f"wheelhouse {result.path} ({'cached' if result.cached else 'made'})")


@app.command("run")
def run(
    ctx: typer.Context,
    variant: VariantOption = Profile.CPU,
    image: Annotated[str | None, typer.Option(help="Image to run (default: the build's default tag).")] = None,
    name: Annotated[str | None, typer.Option(help="Container name (default ruth-ai-<variant>).")] = None,
    publish_address: Annotated[str, typer.Option(help="Host address the ports bind to.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="Host port for HTTP (8000 inside).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="Host port for gRPC (8001 inside).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Host port for metrics (8002 inside).")] = 8002,
    state_volume: Annotated[str, typer.Option(help="Volume (or host path) for the state dir.")] = "ruth-state",
    shm_size: Annotated[str, typer.Option(help="/dev/shm size for the Python-backend regions.")] = "1g",
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE for the container.")] = None,
    exit_timeout: ExitTimeoutOption = 30,
    gpus: Annotated[str, typer.Option(help="gpu variant: 'all' or device ids '0,1'.")] = "all",
    restart: Annotated[str, typer.Option(help="Docker restart policy: no, on-failure, unless-stopped.")] = "no",
    network: Annotated[
        str | None, typer.Option(help="'host': use the host's network; the ports become the server's own.")
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the HEALTHCHECK to pass (0: don't).")] = 0.0,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
) -> None:
    """Start a detached container with its ports, state volume, /dev/shm, devices and stop timeout."""
    from ruthctl import images  # noqa: PLC0415 - keep `ruthctl --help` light

    app = app_of(ctx)
    pairs = [item.partition("=") for item in env or []]
    if bad := [key for key, sep, _ in pairs if not sep or not key]:
        app.err.print(f"[red]error:[/red] --env expects KEY=VALUE, got {bad}", soft_wrap=True)
        raise typer.Exit(ExitCode.USAGE)
    with _image_errors(app):
        plan = images.plan_run(
            variant.value,
            host_ports={"http": http_port, "grpc": grpc_port, "metrics": metrics_port},
            image=image,
            container_name=name,
            publish_address=publish_address,
            state_volume=state_volume,
            shm_size=shm_size,
            env={key: value for key, _, value in pairs},
            exit_timeout_s=exit_timeout,
            gpus=gpus,
            restart=restart,
            network=network,
        )
        if dry_run:
            return _emit(app, {"dry_run": True, **plan.as_dict()}, as_json, f"would run {plan.image}")
        client = images.docker_client()
        result = images.run_image(plan, client=client)
        if wait > 0:
            app.err.print(f"waiting up to {wait:.0f}s for {result.name} to turn healthy...", soft_wrap=True)
            health = images.wait_healthy(client, result.container_id, wait)
            result = images.RunResult(**{**result.as_dict(), "health": health})
    _emit(app, result.as_dict(), as_json, f"running {result.name}")
