"""The ruthctl app: what the root callback builds once and every command reads from `typer.Context.obj`.

`App` holds the root options, the settings (resolved on first use, so `--help` never needs a valid environment),
the consoles, and the `Services` a test may replace: the adapter factory that turns each `--url` into a
`TritonAdapter` (the admin side), and the inference client factory (`ruthctl infer`). Tests pass
`obj=Services(adapter_factory=...)` to `CliRunner.invoke`; every command, a new one included, then talks to that,
never to a real client by accident.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import typer
from rich.console import Console

from ruthctl.exit_codes import CommandFailed, ExitCode
from ruthctl.settings import REPO_ROOT, Profile, Settings, load_settings

if TYPE_CHECKING:
    from ruthctl.reconcile import Paths, Reconciler
    from ruthctl.registry import Registry
    from ruthctl.triton_client import Endpoint, TritonAdapter


class AdapterFactory(Protocol):
    def __call__(
        self, endpoint: Endpoint, token: str | None, *, timeout_s: float, load_timeout_s: float
    ) -> TritonAdapter: ...


def triton_adapter(endpoint: Endpoint, token: str | None, *, timeout_s: float, load_timeout_s: float) -> TritonAdapter:
    """The real one: tritonclient over HTTP or gRPC."""
    from ruthctl.triton_client import TritonClient

    return TritonClient(endpoint, token, timeout_s=timeout_s, load_timeout_s=load_timeout_s)


class InferClient(Protocol):
    """What `ruthctl infer` needs of a client: one frame in, the RESULT document out (ruthctl/client.py)."""

    def infer(
        self,
        model: str,
        *,
        image: bytes | None = None,
        stream_id: str,
        timestamp: str | None = None,
        config: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]: ...

    def close(self) -> None: ...


class InferClientFactory(Protocol):
    def __call__(self, endpoint: Endpoint, *, timeout_s: float) -> InferClient: ...


def ruth_client(endpoint: Endpoint, *, timeout_s: float) -> InferClient:
    """The real one: the SDK's `RuthClient` on the endpoint's address and transport."""
    from ruthctl.client import RuthClient

    return RuthClient(endpoint.address, endpoint.transport.value, timeout_s=timeout_s)


def stdout_console() -> Console:
    """A console on the current stdout (built per call, so test runners that swap stdout capture it).

    Piped output gets 160 columns instead of rich's 80, so a wide table stays one row per model for grep.
    """
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160
    return console


@dataclasses.dataclass(frozen=True)
class Services:
    """What the app is wired with; a test replaces a part, the defaults are the real things.

    `out` builds the stdout console (the result) per use; `err` carries progress, warnings and errors."""

    adapter_factory: AdapterFactory = triton_adapter
    infer_client_factory: InferClientFactory = ruth_client
    out: Callable[[], Console] = stdout_console
    err: Console = dataclasses.field(default_factory=lambda: Console(stderr=True))


@dataclasses.dataclass(frozen=True)
class RootOptions:
    """The global options as given (None: from the environment)."""

    urls: tuple[str, ...] = ()
    state_dir: Path | None = None
    profile: Profile | None = None
    verbose: bool = False


@dataclasses.dataclass(frozen=True)
class Env:
    """The root options resolved against the settings: where everything is, and which servers."""

    urls: tuple[str, ...]
    state_dir: Path
    profile: Profile
    repository: Path
    specs: Path
    profiles: Path
    weights: Path
    token: str | None
    settings: Settings

    def paths(self) -> Paths:
        from ruthctl.reconcile import Paths

        return Paths(
            specs=self.specs,
            profiles=self.profiles,
            repository=self.repository,
            weights=self.weights,
            state=self.state_dir,
        )


def config_root(repository: Path) -> Path:
    """`config/` next to the model repository (a deployment root holds both), else this checkout's."""
    beside = repository.parent / "config"
    return beside if (beside / "models").is_dir() else REPO_ROOT / "config"


def expand_urls(urls: list[str]) -> tuple[str, ...]:
    """`--url @fleet.txt` reads one URL per line (blank lines and # comments ignored)."""
    expanded: list[str] = []
    for url in urls:
        if url.startswith("@"):
            path = Path(url[1:])
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise CommandFailed(f"fleet file {path}: {exc}", ExitCode.USAGE) from None
            expanded += [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]
        else:
            expanded.append(url)
    return tuple(dict.fromkeys(expanded))


class App:
    """The app context of one ruthctl invocation."""

    def __init__(self, options: RootOptions, services: Services | None = None) -> None:
        self.options = options
        self.services = services or Services()

    @property
    def err(self) -> Console:
        return self.services.err

    def out(self) -> Console:
        return self.services.out()

    @functools.cached_property
    def settings(self) -> Settings:
        try:
            return load_settings(ruth_state_dir=self.options.state_dir, ruth_ai_profile=self.options.profile)
        except ValueError as exc:
            raise CommandFailed(f"settings: {exc}", ExitCode.USAGE) from None

    def env(self, *, token: bool = True) -> Env:
        """`token=False` for commands that never reach the repository API (no token file gets created for them)."""
        from ruthctl.access import WeakToken, admin_token, secure_state_dir

        settings = self.settings
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
                raise CommandFailed(f"admin key: {exc}", ExitCode.USAGE) from None
            except OSError as exc:
                self.err.print(f"[yellow]warning:[/yellow] no admin token ({exc}); the keyed APIs will refuse us")
        return Env(
            urls=expand_urls(list(self.options.urls or [settings.ruth_triton_url])),
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
    def adapters(
        self, env: Env, *, load_timeout_s: float = 120.0, timeout_s: float = 10.0
    ) -> Iterator[list[TritonAdapter]]:
        """One adapter per `--url`, all closed afterwards (an idle keep-alive blocks Triton's shutdown)."""
        from ruthctl.triton_client import Endpoint

        clients: list[TritonAdapter] = []
        try:
            for url in env.urls:
                try:
                    endpoint = Endpoint.parse(url)
                except ValueError as exc:
                    raise CommandFailed(str(exc), ExitCode.USAGE) from None
                clients.append(
                    self.services.adapter_factory(
                        endpoint, env.token, timeout_s=timeout_s, load_timeout_s=load_timeout_s
                    )
                )
            yield clients
        finally:
            for client in clients:
                client.close()

    def registry(self, env: Env, command: str) -> Registry:
        from ruthctl.registry import Registry, default_actor

        return Registry(env.state_dir, actor=default_actor(command))

    def reconciler(
        self,
        env: Env,
        clients: list[TritonAdapter],
        command: str,
        *,
        stuck_after_s: float = 300.0,
        load_timeout_s: float = 120.0,
        unload_timeout_s: float = 60.0,
    ) -> Reconciler:
        from ruthctl.reconcile import Reconciler

        return Reconciler(
            env.paths(),
            env.profile,
            self.registry(env, command),
            clients,
            stuck_after_s=stuck_after_s,
            load_timeout_s=load_timeout_s,
            unload_timeout_s=unload_timeout_s,
        )


def app_of(ctx: typer.Context) -> App:
    """The app the root callback built (a command run without the root, as in a test of one function, gets the
    defaults)."""
    obj = ctx.find_root().obj
    if isinstance(obj, App):
        return obj
    return App(RootOptions(), obj if isinstance(obj, Services) else None)
