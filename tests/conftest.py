"""Shared fixtures. `triton_factory` starts the REAL tritonserver (the same launcher code as `ruthctl serve`) on
free loopback ports with a temporary state dir; it always stops it, and a failing test shows the server log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import TritonHandle, start_triton

_LIVE: list[TritonHandle] = []


@pytest.fixture
def triton_factory(tmp_path: Path) -> Iterator[Callable[..., TritonHandle]]:
    """Start as many servers as a test needs; all are stopped (and their logs shown on failure) afterwards."""
    started: list[TritonHandle] = []

    def factory(models: list[str] | None = None, **kwargs: Any) -> TritonHandle:
        handle = start_triton(tmp_path / f"srv{len(started)}", models, **kwargs)
        started.append(handle)
        _LIVE.append(handle)
        return handle

    yield factory
    for handle in started:
        handle.server.stop(grace_s=30)
        _LIVE.remove(handle)


@pytest.fixture(scope="session")
def triton_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonHandle]:
    """One shared server with every model of the repository loaded, for tests that don't restart it."""
    handle = start_triton(tmp_path_factory.mktemp("triton-session"), None)
    _LIVE.append(handle)
    yield handle
    handle.server.stop(grace_s=30)
    _LIVE.remove(handle)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and _LIVE:
        for handle in _LIVE:
            report.sections.append((f"tritonserver log ({handle.http_url})", handle.log_text()[-12000:]))
