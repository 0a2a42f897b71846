"""The exit-code table row by row, the fold of several outcomes, and the top-level handler through the real CLI:
one short line, the table's code, the traceback only with --verbose."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from ruthctl.activation import NotActivatable, StaleFiles
from ruthctl.app import Services
from ruthctl.exit_codes import CommandFailed, ExitCode, error_line, exit_code_for, worst
from ruthctl.health import EXIT_CODES, Health
from ruthctl.registry import IllegalTransition, ModelBusy, RegistryCorrupt, State
from ruthctl.spec import SpecError
from ruthctl.triton_client import Endpoint, Forbidden, LoadFailed, RequestFailed, Unreachable

S = "127.0.0.1:8000"


def test_the_codes_scripts_and_probes_rely_on_are_stable() -> None:
    assert {c.name: c.value for c in ExitCode} == {
        "OK": 0,
        "ERROR": 1,
        "USAGE": 2,
        "DRIFT": 3,
        "UNREACHABLE": 4,
        "UNHEALTHY": 5,
        "INTERRUPTED": 130,
    }


def _validation_error() -> ValidationError:
    class Strict(BaseModel):
        port: int

    try:
        Strict(port="not a port")  # type: ignore[arg-type]
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (CommandFailed("bad option", ExitCode.USAGE), ExitCode.USAGE),
        (CommandFailed("refused"), ExitCode.ERROR),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (StaleFiles("config.pbtxt is not what alpha.yaml renders"), ExitCode.DRIFT),
        (NotActivatable("no spec for nope"), ExitCode.ERROR),
        (Unreachable("127.0.0.1:1: connection refused"), ExitCode.UNREACHABLE),
        (TimeoutError("timed out"), ExitCode.UNREACHABLE),
        (Forbidden("refused the admin token"), ExitCode.ERROR),
        (LoadFailed("alpha", "probe failed"), ExitCode.ERROR),
        (RequestFailed("500", "boom"), ExitCode.ERROR),
        (ModelBusy("alpha is being changed"), ExitCode.ERROR),
        (IllegalTransition("alpha", S, State.LOADING, State.LOADING, None), ExitCode.ERROR),
        (RegistryCorrupt("registry.json: not JSON"), ExitCode.ERROR),
        (SpecError("alpha.yaml: bad"), ExitCode.ERROR),
        (_validation_error(), ExitCode.USAGE),
        (PermissionError("state dir"), ExitCode.ERROR),
        (RuntimeError("a bug"), ExitCode.ERROR),
    ],
)
def test_each_error_that_escapes_a_command_has_one_code(error: BaseException, code: ExitCode) -> None:
    assert exit_code_for(error) is code


@pytest.mark.parametrize(("health", "code"), [(Health.HEALTHY, 0), (Health.DEGRADED, 1), (Health.UNHEALTHY, 5)])
def test_health_maps_onto_the_table_and_unhealthy_is_no_longer_the_usage_code(health: Health, code: int) -> None:
    assert health.exit_code == code == EXIT_CODES[health]
    assert health.exit_code is not ExitCode.USAGE


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([], ExitCode.OK),
        ([ExitCode.OK, ExitCode.OK], ExitCode.OK),
        ([ExitCode.OK, ExitCode.ERROR], ExitCode.ERROR),
        ([ExitCode.ERROR, ExitCode.UNREACHABLE, ExitCode.OK], ExitCode.UNREACHABLE),
        ([ExitCode.DRIFT, ExitCode.ERROR], ExitCode.ERROR),  # numerically 3 > 1, but a failure outranks drift
    ],
)
def test_several_outcomes_fold_to_the_most_severe(codes: list[ExitCode], expected: ExitCode) -> None:
    assert worst(codes) is expected


def test_a_bug_gets_one_line_naming_its_type_and_how_to_see_the_traceback() -> None:
    assert error_line(RuntimeError("boom\nsecond line")) == (
        "unexpected RuntimeError: boom (run with --verbose for the traceback)"
    )
    assert error_line(Unreachable("127.0.0.1:1: connection refused")) == "127.0.0.1:1: connection refused"
    assert error_line(CommandFailed("no spec for nope")) == "no spec for nope"


# ---- the top-level handler, through the real CLI ------------------------------------------------------------------
@pytest.fixture
def failing_adapters(wiring: Any) -> Callable[[BaseException], None]:
    """Every adapter the app builds raises `error` (as a bug in a client or a transport would)."""

    def install(error: BaseException) -> None:
        def factory(endpoint: Endpoint, token: str | None, *, timeout_s: float, load_timeout_s: float) -> Any:
            raise error

        wiring.services = Services(adapter_factory=factory)

    return install


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (RuntimeError("boom"), 1, "error: unexpected RuntimeError: boom (run with --verbose for the traceback)"),
        (Unreachable("127.0.0.1:8000: connection refused"), 4, "error: 127.0.0.1:8000: connection refused"),
        (KeyboardInterrupt(), 130, "error: interrupted"),
    ],
)
def test_an_error_escaping_a_command_is_one_line_and_the_tables_code_never_a_traceback(
    cli: Any, failing_adapters: Any, error: BaseException, code: int, line: str
) -> None:
    failing_adapters(error)
    result = cli("status", url=S)
    assert result.exit_code == code
    assert result.stderr.strip() == line
    assert "Traceback" not in result.output


def test_verbose_adds_the_traceback_after_the_line(cli: Any, failing_adapters: Any) -> None:
    failing_adapters(RuntimeError("boom"))
    result = cli("--verbose", "status", url=S)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unexpected RuntimeError: boom")
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "RuntimeError: boom"


def test_a_usage_error_keeps_clicks_code(cli: Any) -> None:
    result = cli("status", "--no-such-option", url=S)
    assert result.exit_code == ExitCode.USAGE
    assert "Traceback" not in result.output
