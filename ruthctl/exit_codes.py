"""Exit codes of every ruthctl command: one table, so scripts can rely on them."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2  # Click's own code for bad options
    DRIFT = 3  # desired and actual state differ (generate --check, verify)
    UNREACHABLE = 4  # Triton unreachable or timed out
    INTERRUPTED = 130
