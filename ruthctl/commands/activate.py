"""`ruthctl activate MODEL[:VERSION]`: validate, load with the rendered config, wait for READY, record it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from ruthctl.app import app_of
from ruthctl.commands._common import JsonOption, fail, preflight, render_server_results
from ruthctl.exit_codes import ExitCode
from ruthctl.lifecycle import Progress

if TYPE_CHECKING:
    from rich.console import Console

    from ruthctl.activation import ServerResult
    from ruthctl.app import App, Env
    from ruthctl.registry import Registry
    from ruthctl.triton_client import TritonAdapter


def register(app: typer.Typer) -> None:
    app.command("activate")(activate)


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    name, _, version = ref.partition(":")
    if not name:
        fail(f"{ref!r}: expected MODEL or MODEL:VERSION", ExitCode.USAGE)
    if version and not version.isdigit():
        fail(f"{ref!r}: the version must be a number", ExitCode.USAGE)
    return name, int(version) if version else None


def parse_overrides(items: list[str]) -> dict[str, str]:
    from ruthctl.activation import OVERRIDABLE_PREFIXES

    overrides: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith(OVERRIDABLE_PREFIXES):
            fail(f"--set {item!r}: expected KEY=VALUE with KEY under {', '.join(OVERRIDABLE_PREFIXES)}", ExitCode.USAGE)
        overrides[key] = value
    return overrides


@contextlib.contextmanager
def progress_display(err: Console, enabled: bool) -> Iterator[Progress]:
    """A spinner on `err` (people) or nothing (--json, pipes); yields the callback lifecycle reports through."""
    if not enabled or not err.is_terminal:
        yield lambda message: None
        return
    with err.status("starting") as status:
        yield lambda message: status.update(message)


def activate(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="MODEL or MODEL:VERSION (default: the spec's version).")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for READY on each server.")] = 120.0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Parameter override for this activation, e.g. ruth.fault.fail_rate=0.2"),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Load a model on every server, atomically from the operator's view: it ends READY or is rolled back.

    Checks first: the spec is valid, its weights exist with the right checksums, and the generated config files
    are current. Then, per server: record LOADING, load through the repository API with the rendered config, wait
    for READY, record READY. A failed load is unloaded and recorded FAILED with Triton's reason (a failed reload of
    a READY model leaves the previous version serving).

    Exit codes: 0 READY everywhere, 1 validation or load failed (rolled back), 3 generated files out of date
    (run `ruthctl generate`), 4 a server unreachable or timed out.
    """
    from ruthctl import activation

    name, version = parse_model_ref(model)
    overrides = parse_overrides(set_ or [])
    app = app_of(ctx)
    env = app.env()
    target = activation.prepare(env.paths(), env.profile, name, version, overrides)
    change_servers(
        app,
        env,
        f"activate {name} v{target.version}",
        lambda clients, reg, progress: activation.activate(clients, reg, target, timeout, progress),
        {"model": name, "version": target.version} if json_out else None,
        load_timeout_s=timeout,
    )


def change_servers(
    app: App,
    env: Env,
    title: str,
    change: Callable[[list[TritonAdapter], Registry, Progress], list[ServerResult]],
    json_doc: dict[str, object] | None,
    *,
    load_timeout_s: float = 120.0,
) -> NoReturn:
    """Connect to every server, refuse at once on a rejected admin token, make the change `title` names through
    the registry (a spinner for people; `json_doc` None means people), then one row per server and the exit code
    of the results. A model another command is changing is refused."""
    from ruthctl.activation import exit_code
    from ruthctl.registry import ModelBusy

    registry = app.registry(env, title)
    with (
        app.adapters(env, load_timeout_s=load_timeout_s) as clients,
        progress_display(app.err, json_doc is None) as progress,
    ):
        preflight(clients)
        try:
            results = change(clients, registry, progress)
        except ModelBusy as exc:
            fail(f"refused: {exc}")
    render_server_results(app, title, results, exit_code(results), json_doc)
