"""Root of the `ruthctl` command line: global options build the app context (ruthctl/app.py), then one module per
command; every error that escapes a command ends here as one line and an exit code (ruthctl/exit_codes.py)."""

from __future__ import annotations

import importlib
import logging
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup
from typer.exceptions import TyperException

from ruthctl.app import App, RootOptions, Services, app_of
from ruthctl.commands._common import profile_option
from ruthctl.exit_codes import CommandFailed, error_line, exit_code_for


class RuthGroup(TyperGroup):
    """The top-level error handler: a short `error:` line on stderr and the code of the exit-code table, never a raw
    traceback (with --verbose the traceback follows the line)."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override] # typer's contexts are all typer.Context
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # exits, and usage errors: Click's own (code 2)
            raise
        except (Exception, KeyboardInterrupt) as exc:
            app = app_of(ctx)  # the root's, or the defaults with any injected Services when the root never ran
            verbose = app.options.verbose
            app.err.print(f"[red]error:[/red] {escape(error_line(exc))}", highlight=False, soft_wrap=True)
            if verbose and not isinstance(exc, CommandFailed):
                app.err.out("".join(traceback.format_exception(exc)), highlight=False, end="")
            raise typer.Exit(int(exit_code_for(exc))) from None


app = typer.Typer(
    cls=RuthGroup,
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


def _print_version(ctx: typer.Context, value: bool) -> None:
    if value:
        from ruthctl import __version__

        app_of(ctx).out().out(f"ruthctl {__version__}", highlight=False)
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
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging on stderr, and the traceback of an error.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    urls = [u for raw in (url or []) for u in raw.split(",") if u] or ["127.0.0.1:8000"]
    options = RootOptions(urls=tuple(urls), state_dir=state_dir, profile=profile_option(profile), verbose=verbose)
    # a test hands its Services (e.g. a fake adapter factory) in as `obj`; everyone else gets the real ones
    ctx.obj = App(options, ctx.obj if isinstance(ctx.obj, Services) else None)


def _register_commands() -> None:
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app)
    for name, module_name in SUBAPP_MODULES.items():
        app.add_typer(importlib.import_module(module_name).app, name=name)


_register_commands()


def main() -> None:
    app()
