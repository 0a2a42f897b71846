"""`ruthctl probe ready|live`: ask `ruthctl serve`'s probe endpoint, for Docker HEALTHCHECK and exec probes."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from ruthctl.app import app_of
from ruthctl.commands._common import fail
from ruthctl.exit_codes import ExitCode


class Which(str, enum.Enum):
    READY = "ready"
    LIVE = "live"


def register(app: typer.Typer) -> None:
    app.command("probe")(probe_command)


def probe_command(
    ctx: typer.Context,
    which: Annotated[Which, typer.Argument(help="ready: every wanted model READY; live: tritonserver not wedged.")],
    port: Annotated[int | None, typer.Option(help="Probe port (default RUTH_PROBE_PORT, 8003).")] = None,
    host: Annotated[str | None, typer.Option(help="Probe address (default: RUTH_HOST, loopback for 0.0.0.0).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 4.0,
) -> None:
    """One short line (the reason) on stdout; exit 0 when the probe passes, 1 when it fails or nothing answers.

    See docs/operations.md for what ready and live mean.
    """
    from pydantic import ValidationError

    from ruthctl.probe import ask, probe_host
    from ruthctl.settings import load_settings

    try:
        settings = load_settings()
    except ValidationError as exc:
        fail(f"settings: {exc.errors(include_url=False)[0]['msg']}", ExitCode.USAGE)
    verdict = ask(
        probe_host(host or settings.ruth_host),
        port if port is not None else settings.ruth_probe_port,
        which.value,
        timeout_s=timeout,
    )
    app_of(ctx).out().out(f"{which.value}: {'ok' if verdict.ok else 'FAIL'}: {verdict.reason}", highlight=False)
    raise typer.Exit(int(ExitCode.OK if verdict.ok else ExitCode.ERROR))
