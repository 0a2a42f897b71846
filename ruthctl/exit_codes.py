"""Exit codes of every ruthctl command: one table, so scripts and probes can rely on them (docs/ruthctl.md).

A command ends in one of three ways: it returns its report's code (`worst` folds per-server codes), it calls
`_common.fail` (a `CommandFailed` with the code the check calls for), or an error escapes it and the top-level
handler (`ruthctl.cli.RuthGroup`) prints one short line and exits with `exit_code_for(error)`; the traceback only
with `--verbose`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # failed, refused, or problems found (violations, a degraded service)
    USAGE = 2  # Click's own code for bad options; also bad settings or an unusable admin key
    DRIFT = 3  # desired and actual state differ (generate --check, activate's stale files, repair --dry-run)
    UNREACHABLE = 4  # a server unreachable or timed out
    UNHEALTHY = 5  # `health`: the service is down (was 2, the usage code, before)
    INTERRUPTED = 130  # Ctrl-C


#: which code wins when one command has several outcomes (per server, per check): the most severe
SEVERITY: tuple[ExitCode, ...] = (
    ExitCode.OK,
    ExitCode.DRIFT,
    ExitCode.ERROR,
    ExitCode.UNREACHABLE,
    ExitCode.UNHEALTHY,
    ExitCode.USAGE,
    ExitCode.INTERRUPTED,
)


def worst(codes: Iterable[ExitCode]) -> ExitCode:
    """The most severe of `codes` (OK for none)."""
    return max(codes, key=SEVERITY.index, default=ExitCode.OK)


class CommandFailed(Exception):
    """A command stops with `message` (one line on stderr) and `code`; raised by `_common.fail`."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def error_codes() -> tuple[tuple[tuple[type[BaseException], ...], ExitCode], ...]:
    """The errors that may escape a command and their exit code, in order (the first row that matches wins); the
    last row is everything else: a bug. Imported here, when an error is being handled, so `--help` stays fast."""
    from pydantic import ValidationError

    from ruthctl.activation import NotActivatable, StaleFiles
    from ruthctl.registry import RegistryError
    from ruthctl.spec import SpecError
    from ruthctl.triton_client import TritonAPIError, Unreachable

    return (
        ((KeyboardInterrupt,), ExitCode.INTERRUPTED),
        ((StaleFiles,), ExitCode.DRIFT),  # before NotActivatable, its base
        ((Unreachable, TimeoutError), ExitCode.UNREACHABLE),  # before TritonAPIError and OSError, their bases
        ((ValidationError,), ExitCode.USAGE),  # settings
        ((NotActivatable, TritonAPIError, RegistryError, SpecError, OSError), ExitCode.ERROR),
        ((Exception,), ExitCode.ERROR),
    )


def exit_code_for(error: BaseException) -> ExitCode:
    if isinstance(error, CommandFailed):
        return error.code
    return next((code for kinds, code in error_codes() if isinstance(error, kinds)), ExitCode.ERROR)


def expected(error: BaseException) -> bool:
    """Whether `error` is one the table names (an operator's problem), not a bug of ruthctl (the last row)."""
    return isinstance(error, CommandFailed) or any(isinstance(error, kinds) for kinds, _ in error_codes()[:-1])


def error_line(error: BaseException) -> str:
    """The one line printed for `error`: its message, or its type for a bug (with how to see the traceback)."""
    if isinstance(error, CommandFailed):
        return error.message
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if expected(error):
        return text
    return f"unexpected {type(error).__name__}: {text} (run with --verbose for the traceback)"
