"""Root of the `ruthctl` command line: global options, then one module per command."""

from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path
from typing import Annotated

import typer

from ruthctl.commands._common import profile_option
from ruthctl.settings import Profile

app = typer.Typer(
    name="ruthctl",
    help="Serve, configure and reconcile the Ruth AI runtime on NVIDIA Triton.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Commands registered through `register(app)`, and sub-apps mounted under their own name.
COMMAND_MODULES: tuple[str, ...] = (
    "ruthctl.commands.serve",
    "ruthctl.commands.generate",
    "ruthctl.commands.activate",
    "ruthctl.commands.deactivate",
    "ruthctl.commands.verify",
    "ruthctl.commands.repair",
    "ruthctl.commands.status",
    "ruthctl.commands.health",
    "ruthctl.commands.probe",
    "ruthctl.commands.infer",
    "ruthctl.commands.watch",
)
SUBAPP_MODULES: dict[str, str] = {
    "weights": "ruthctl.commands.weights",
    "image": "ruthctl.commands.image",
    "breaker": "ruthctl.commands.breaker",
    "ppe": "ruthctl.commands.ppe",
}


@dataclasses.dataclass
class Context:
    """What the root callback resolved, handed to every command through `typer.Context.obj`."""

    urls: list[str]
    state_dir: Path | None
    profile: Profile | None
    verbose: bool


def _print_version(value: bool) -> None:
    if value:
        from ruthctl import __version__

        typer.echo(f"ruthctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        list[str] | None,
        typer.Option(
            "--url",
            envvar="RUTH_TRITON_URL",
            help="Triton HTTP (host:port) or gRPC (grpc://host:port) endpoint; repeat for a fleet.",
        ),
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(envvar="RUTH_STATE_DIR", help="Breaker, registry state.")] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            envvar="RUTH_AI_PROFILE", help="cpu, gpu or jetson (or prod-cpu, prod-gpu, edge-jetson, dev, test)."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging on stderr.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    urls = [u for raw in (url or []) for u in raw.split(",") if u] or ["127.0.0.1:8000"]
    ctx.obj = Context(urls=urls, state_dir=state_dir, profile=profile_option(profile), verbose=verbose)


def _register_commands() -> None:
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app)
    for name, module_name in SUBAPP_MODULES.items():
        app.add_typer(importlib.import_module(module_name).app, name=name)


_register_commands()


def main() -> None:
    app()
