"""What every reconcile command shares: resolving the root options, the fleet, output and failure.

stdout carries only the result (a rich table, or exactly one JSON document with `--json`); progress, warnings and
errors go to stderr. `fail` is the one way a command ends with an error code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from ruthctl.exit_codes import ExitCode
from ruthctl.settings import REPO_ROOT, Profile, Settings, load_settings, parse_profile

err = Console(stderr=True)


def out() -> Console:
    """A console on the current stdout (built per call, so test runners that swap stdout capture it).

    Piped output gets 160 columns instead of rich's 80, so a wide table stays one row per model for grep.
    """
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160
    return console


def fail(message: str, code: int = ExitCode.ERROR) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(int(code))


def profile_option(value: str | None) -> Profile | None:
    """`--profile`/RUTH_AI_PROFILE, legacy names included; an unknown name is a usage error naming the accepted."""
    if value is None:
        return None
    try:
        return parse_profile(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--profile' / RUTH_AI_PROFILE") from None


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, separators=(",", ":"), default=str))


@dataclasses.dataclass(frozen=True)
class Env:
    """The root options resolved against the environment: where everything is, and which servers."""

    urls: tuple[str, ...]
    state_dir: Path
    profile: Profile
    repository: Path
    specs: Path
    profiles: Path
    weights: Path
    token: str | None
    settings: Settings

    def paths(self) -> Any:
        from ruthctl.reconcile import Paths

        return Paths(
            specs=self.specs,
            profiles=self.profiles,
            repository=self.repository,
            weights=self.weights,
            state=self.state_dir,
        )


def expand_urls(urls: list[str]) -> tuple[str, ...]:
    """`--url @fleet.txt` reads one URL per line (blank lines and # comments ignored)."""
    expanded: list[str] = []
    for url in urls:
        if url.startswith("@"):
            path = Path(url[1:])
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                fail(f"fleet file {path}: {exc}", ExitCode.USAGE)
            expanded += [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]
        else:
            expanded.append(url)
    return tuple(dict.fromkeys(expanded))


def config_root(repository: Path) -> Path:
    """`config/` next to the model repository (a deployment root holds both), else this checkout's."""
    beside = repository.parent / "config"
    return beside if (beside / "models").is_dir() else REPO_ROOT / "config"


def resolve(ctx: typer.Context, *, token: bool = True) -> Env:
    """`token=False` for commands that never reach the repository API (no token file gets created for them)."""
    from ruthctl.access import WeakToken, admin_token, secure_state_dir

    root = ctx.obj
    try:
        settings = load_settings(
            ruth_state_dir=getattr(root, "state_dir", None), ruth_ai_profile=getattr(root, "profile", None)
        )
    except ValueError as exc:
        fail(f"settings: {exc}", ExitCode.USAGE)
    state_dir = settings.ruth_state_dir.resolve()
    repository = settings.models_root.resolve()
    config = config_root(repository)
    env_token = os.environ.get("RUTH_ADMIN_TOKEN")
    if env_token is None and settings.ruth_admin_token is not None:
        env_token = settings.ruth_admin_token.get_secret_value()
    admin: str | None = env_token or None  # sent as given: `serve` is what refuses a weak key
    if token:  # what an earlier run left readable (registry, audit log) becomes owner-only
        with contextlib.suppress(OSError):
            secure_state_dir(state_dir)
    if token and not admin:
        try:
            admin = admin_token(state_dir)
        except WeakToken as exc:
            fail(f"admin key: {exc}", ExitCode.USAGE)
        except OSError as exc:
            err.print(f"[yellow]warning:[/yellow] no admin token ({exc}); the keyed APIs will refuse us")
    return Env(
        urls=expand_urls(list(getattr(root, "urls", None) or [settings.ruth_triton_url])),
        state_dir=state_dir,
        profile=settings.ruth_ai_profile,
        repository=repository,
        specs=config / "models",
        profiles=config / "profiles",
        weights=settings.ruth_weights_dir.resolve(),
        token=admin,
        settings=settings,
    )


@contextlib.contextmanager
def adapters(env: Env, *, load_timeout_s: float = 120.0, timeout_s: float = 10.0) -> Iterator[list[Any]]:
    """One `TritonClient` per `--url`, all closed afterwards (an idle keep-alive blocks Triton's shutdown)."""
    from ruthctl.triton_client import Endpoint, TritonClient

    clients: list[TritonClient] = []
    try:
        for url in env.urls:
            try:
                endpoint = Endpoint.parse(url)
            except ValueError as exc:
                fail(str(exc), ExitCode.USAGE)
            clients.append(TritonClient(endpoint, env.token, timeout_s=timeout_s, load_timeout_s=load_timeout_s))
        yield clients
    finally:
        for client in clients:
            client.close()


def registry(env: Env, command: str) -> Any:
    from ruthctl.registry import Registry, default_actor

    return Registry(env.state_dir, actor=default_actor(command))


def reconciler(env: Env, clients: list[Any], command: str, **kwargs: Any) -> Any:
    from ruthctl.reconcile import Reconciler

    return Reconciler(env.paths(), env.profile, registry(env, command), clients, **kwargs)


def state_style(state: str | None) -> str:
    colours = {"READY": "green", "FAILED": "red", "DISABLED": "red", "LOADING": "yellow", "UNLOADING": "yellow"}
    return f"[{colours[state]}]{state}[/{colours[state]}]" if state in colours else (state or "-")


def preflight(clients: list[Any]) -> None:
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
    title: str, results: list[dict[str, Any]], code: int, json_doc: dict[str, Any] | None
) -> NoReturn:
    """One row per server (server, state, detail), or `json_doc` with `--json`; then exit with `code`."""
    if json_doc is not None:
        print_json({**json_doc, "servers": results})
    else:
        from rich.table import Table  # noqa: PLC0415 - only for people

        table = Table(title=title)
        for column in ("server", "state", "detail"):
            table.add_column(column)
        for row in results:
            table.add_row(row["server"], state_style(row["state"]), row["detail"])
        out().print(table)
    raise typer.Exit(int(code))
