"""The app context: what the root callback builds, and the adapter factory as the one seam to the servers."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from ruthctl.app import App, RootOptions, Services, app_of
from ruthctl.exit_codes import CommandFailed, ExitCode
from ruthctl.triton_client import Endpoint

COMMANDS = Path(__file__).resolve().parents[3] / "ruthctl" / "commands"


def test_the_adapters_come_from_the_factory_one_per_url_and_are_closed(
    deployment: Any, fake_triton: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in deployment.env().items():
        monkeypatch.setenv(key, value)
    made: list[tuple[str, float, float]] = []

    def factory(endpoint: Endpoint, token: str | None, *, timeout_s: float, load_timeout_s: float) -> Any:
        made.append((str(endpoint), timeout_s, load_timeout_s))
        return fake_triton(str(endpoint))

    app = App(RootOptions(urls=("127.0.0.1:8000", "grpc://h:8001")), Services(adapter_factory=factory))
    env = app.env()
    with app.adapters(env, timeout_s=3.0, load_timeout_s=30.0) as clients:
        assert [str(c.endpoint) for c in clients] == ["127.0.0.1:8000", "grpc://h:8001"]
    assert made == [("127.0.0.1:8000", 3.0, 30.0), ("grpc://h:8001", 3.0, 30.0)]
    assert all(("close", "") in c.calls for c in clients)
    assert env.token == "test-token" and env.state_dir == deployment.state.resolve()


def test_a_bad_url_or_bad_settings_is_a_usage_error(deployment: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in deployment.env().items():
        monkeypatch.setenv(key, value)
    app = App(RootOptions(urls=("not a url",)))
    with pytest.raises(CommandFailed) as raised, app.adapters(app.env()):
        pass
    assert raised.value.code is ExitCode.USAGE
    monkeypatch.setenv("RUTH_HTTP_PORT", "not-a-port")
    with pytest.raises(CommandFailed) as bad:
        App(RootOptions()).env()
    assert bad.value.code is ExitCode.USAGE and "settings" in bad.value.message


def test_a_new_command_gets_the_injected_services_through_the_root_callback() -> None:
    """A command added to the real app reads the app context; a test's Services reach it without a patch list."""
    from ruthctl.cli import app

    seen: list[App] = []
    probe = typer.Typer()

    @probe.command("whoami")
    def whoami(ctx: typer.Context) -> None:
        seen.append(app_of(ctx))

    app.add_typer(probe, name="probe-for-test")
    try:
        services = Services()
        result = CliRunner().invoke(app, ["--url", "a:1", "probe-for-test", "whoami"], obj=services)
        assert result.exit_code == 0, result.output
        [context] = seen
        assert context.services is services and context.options.urls == ("a:1",)
    finally:
        app.registered_groups.pop()


def test_no_command_builds_a_client_of_its_own() -> None:
    """Commands reach servers only through `App.adapters` (the injected factory): none names TritonClient."""
    for path in sorted(COMMANDS.glob("*.py")):
        names = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
        assert "TritonClient" not in names, f"{path.name} builds its own TritonClient"


def test_every_command_prints_through_the_app_consoles_only(
    cli: Any, wiring: Any, fake_triton: Any, with_fakes: Any, deployment: Any
) -> None:
    """An injected pair of consoles gets a command's result and its messages; nothing goes around them."""
    import io

    from rich.console import Console

    server = fake_triton("127.0.0.1:8000")
    with_fakes([server])
    out, err = io.StringIO(), io.StringIO()
    wiring.services = dataclasses.replace(
        wiring.services, out=lambda: Console(file=out, width=160), err=Console(file=err, width=160)
    )
    runs = [
        (("activate", "alpha", "--json"), '"model":"alpha"', ""),
        (("status", "--json"), '"profile":"cpu"', ""),
        (("status",), "ruthctl status (profile cpu)", ""),
        (("generate", "--check"), "generated configs in", ""),
        (("verify",), "no violations", ""),
        (("breaker", "list", "--json"), '"breakers":[]', ""),
        (("deactivate", "beta"), "deactivate beta", ""),
        (("breaker", "reset"), "", "error: give MODEL"),
        (("--version",), "ruthctl ", ""),
    ]
    for args, on_out, on_err in runs:
        out.seek(0), out.truncate(), err.seek(0), err.truncate()
        result = cli(*args, url="127.0.0.1:8000")
        assert result.stdout == "" and result.stderr == "", (args, result.stdout, result.stderr)
        assert on_out in out.getvalue() and on_err in err.getvalue(), (args, out.getvalue(), err.getvalue())


def test_no_command_module_has_a_console_or_echo_of_its_own() -> None:
    """Output reaches people only through `app.out()` and `app.err` (ruthctl/app.py): an injected console sees all."""
    for path in [*sorted(COMMANDS.glob("*.py")), COMMANDS.parent / "cli.py"]:
        tree = ast.parse(path.read_text())
        calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert not calls & {"Console", "typer.echo", "print", "sys.stdout.write", "sys.stderr.write"}, path.name


def test_no_command_module_builds_a_client_of_its_own() -> None:
    """Servers are reached only through `Services` (ruthctl/app.py), so a test's fakes reach every command, a new
    one included: no command names a client class or tritonclient itself."""
    clients = {"RuthClient", "TritonClient", "InferenceServerClient"}
    for path in [*sorted(COMMANDS.glob("*.py")), COMMANDS.parent / "cli.py"]:
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        modules = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not names & clients, path.name
        assert not {m for m in modules if m.startswith("tritonclient")}, path.name
