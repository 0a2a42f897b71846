"""What the commands share: output, failure, and the per-server result table.

stdout carries only the result (a rich table, or exactly one JSON document with `--json`); progress, warnings and
errors go to stderr. Both are the app's consoles (`app.out()`, `app.err`), so an injected console gets everything.
`fail` is the one way a command stops with an error code (ruthctl/exit_codes.py). The app context (settings,
consoles, adapters, registry) is `ruthctl.app.app_of(ctx)`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from ruthctl.exit_codes import CommandFailed, ExitCode
from ruthctl.settings import Profile, parse_profile

if TYPE_CHECKING:
    from rich.console import Console

    from ruthctl.activation import ServerResult
    from ruthctl.app import App
    from ruthctl.triton_client import TritonAdapter

#: `--json` of the commands that print one JSON document instead of a table
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
#: `--stuck-after` of the commands that check the invariants (verify, repair, watch)
StuckAfterOption = Annotated[float, typer.Option(help="Seconds after which LOADING/UNLOADING counts as stuck.")]
#: `--timeout` of the commands that load and unload to repair (repair, watch)
ChangeTimeoutOption = Annotated[float, typer.Option(help="Seconds to wait for each load or unload.")]


def fail(message: str, code: ExitCode = ExitCode.ERROR) -> NoReturn:
    """Stop the command: `error: message` on stderr, exit `code` (printed by the top-level handler)."""
    raise CommandFailed(message, code)


def profile_option(value: str | None) -> Profile | None:
    """`--profile`/RUTH_AI_PROFILE, legacy names included; an unknown name is a usage error naming the accepted."""
    if value is None:
        return None
    try:
        return parse_profile(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--profile' / RUTH_AI_PROFILE") from None


def print_json(console: Console, data: object, *, indent: int | None = None, sort_keys: bool = False) -> None:
    """`data` as one JSON document on `console`, as is: compact by default; no markup, wrapping or highlighting."""
    separators = None if indent else (",", ":")
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, separators=separators, default=str)
    console.out(text, highlight=False)


def state_style(state: str | None) -> str:
    colours = {"READY": "green", "FAILED": "red", "DISABLED": "red", "LOADING": "yellow", "UNLOADING": "yellow"}
    return f"[{colours[state]}]{state}[/{colours[state]}]" if state in colours else (state or "-")


def preflight(clients: Sequence[TritonAdapter]) -> None:
    """Refuse before changing anything when a server rejects our admin token (a configuration error, not an outage:
    the desired state must not move because one request was unauthorised). Unreachable servers are left to the
    command, which reports them per server."""
    from ruthctl.triton_client import Forbidden, TritonAPIError

    for client in clients:
        try:
            client.index()
        except Forbidden as exc:
            fail(str(exc))
        except TritonAPIError:
            continue


def render_server_results(
    app: App, title: str, results: Sequence[ServerResult], code: ExitCode, json_doc: dict[str, object] | None
) -> NoReturn:
    """One row per server (server, state, detail), or `json_doc` with `--json`; then exit with `code`."""
    if json_doc is not None:
        print_json(app.out(), {**json_doc, "servers": [r.to_json() for r in results]})
    else:
        from rich.table import Table  # noqa: PLC0415 - only for people

        table = Table(title=title)
        for column in ("server", "state", "detail"):
            table.add_column(column)
        for row in results:
            table.add_row(row.server, state_style(row.state), row.detail)
        app.out().print(table)
    raise typer.Exit(int(code))
