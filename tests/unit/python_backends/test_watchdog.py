from __future__ import annotations

import contextvars
import functools
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from python_backends.errors import ErrorCode, InferenceTimeout, triton_code_for
from python_backends.watchdog import Watchdog

DEADLINE = 0.05  # seconds a hung call is given; the tests wait for it, they don't race it


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Unblocks every hung call at the end of a test, so no zombie outlives it."""
    event = threading.Event()
    yield event
    event.set()


def hang_until(event: threading.Event) -> Callable[[], str]:
    def fn() -> str:
        event.wait(30)
        return "late"

    return fn


def test_returns_the_result() -> None:
    assert Watchdog("m").run(lambda: 42, timeout_s=5) == 42


def test_exceptions_propagate_unchanged() -> None:
    error = KeyError("missing")

    def fail() -> None:
        raise error

    with pytest.raises(KeyError) as raised:
        Watchdog("m").run(fail, timeout_s=5)
    assert raised.value is error


def test_the_deadline_raises_a_timeout_that_maps_to_unavailable(release: threading.Event) -> None:
    with pytest.raises(InferenceTimeout) as raised:
        Watchdog("fall/1").run(hang_until(release), timeout_s=DEADLINE)

    assert raised.value.timeout_s == DEADLINE
    assert "fall/1" in str(raised.value)
    assert triton_code_for(raised.value) is ErrorCode.UNAVAILABLE


def test_a_timed_out_call_is_a_zombie_until_it_really_ends(release: threading.Event) -> None:
    clock = FakeClock()
    watchdog = Watchdog("m", clock=clock)
    with pytest.raises(InferenceTimeout):
        watchdog.run(hang_until(release), timeout_s=DEADLINE)
    clock.now = 12.5

    assert (watchdog.zombies, watchdog.timeouts_total) == (1, 1)
    assert watchdog.zombie_ages() == [12.5]

    release.set()
    assert watchdog.wait_for_zombies(5) == 0
    assert (watchdog.zombies, watchdog.timeouts_total) == (0, 1)
    assert watchdog.zombie_ages() == []


def test_later_calls_do_not_queue_behind_zombies(release: threading.Event) -> None:
    watchdog = Watchdog("m", zombie_limit=10)
    for _ in range(5):
        with pytest.raises(InferenceTimeout):
            watchdog.run(hang_until(release), timeout_s=DEADLINE)

    started = time.monotonic()
    assert watchdog.run(lambda: "fast", timeout_s=5) == "fast"

    assert time.monotonic() - started < 1.0
    assert watchdog.zombies == 5


def test_too_many_zombies_make_the_instance_unhealthy_until_they_end(release: threading.Event) -> None:
    watchdog = Watchdog("m", zombie_limit=2)
    assert watchdog.healthy
    for _ in range(2):
        with pytest.raises(InferenceTimeout):
            watchdog.run(hang_until(release), timeout_s=DEADLINE)

    assert not watchdog.healthy

    release.set()
    watchdog.wait_for_zombies(5)
    assert watchdog.healthy


def test_a_zombie_that_fails_later_is_swallowed_and_counted_down(release: threading.Event) -> None:
    watchdog = Watchdog("m")

    def hang_then_fail() -> None:
        release.wait(30)
        raise RuntimeError("too late to matter")

    with pytest.raises(InferenceTimeout):
        watchdog.run(hang_then_fail, timeout_s=DEADLINE)
    release.set()

    assert watchdog.wait_for_zombies(5) == 0
    assert watchdog.run(lambda: "ok", timeout_s=5) == "ok"


def test_idle_workers_are_reused() -> None:
    watchdog = Watchdog("m")
    threads = {watchdog.run(threading.get_ident, timeout_s=5) for _ in range(20)}
    assert len(threads) == 1
    assert threading.get_ident() not in threads


def test_per_call_overhead_is_small() -> None:
    watchdog = Watchdog("m")
    watchdog.run(lambda: None, timeout_s=5)  # warm the worker
    calls = 2000

    started = time.perf_counter()
    for _ in range(calls):
        watchdog.run(lambda: None, timeout_s=5)
    per_call = (time.perf_counter() - started) / calls

    assert per_call < 500e-6, f"{per_call * 1e6:.0f} µs per call"  # ~30-60 µs on an idle core


def test_context_variables_reach_the_worker() -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")
    request_id.set("req-7")
    assert Watchdog("m").run(request_id.get, timeout_s=5) == "req-7"


def test_shutdown_reports_zombies_still_running_and_refuses_new_calls(release: threading.Event) -> None:
    watchdog = Watchdog("m")
    with pytest.raises(InferenceTimeout):
        watchdog.run(hang_until(release), timeout_s=DEADLINE)

    assert watchdog.shutdown(wait_s=0.01) == 1
    with pytest.raises(RuntimeError, match="shut down"):
        watchdog.run(lambda: 1, timeout_s=5)

    release.set()
    assert watchdog.shutdown(wait_s=5) == 0  # a second shutdown is fine


def test_shutdown_lets_idle_workers_exit() -> None:
    watchdog = Watchdog("idle-exit")
    worker_ident = watchdog.run(threading.get_ident, timeout_s=5)
    worker = next(t for t in threading.enumerate() if t.ident == worker_ident)

    watchdog.shutdown(wait_s=1)

    worker.join(5)
    assert not worker.is_alive()


def test_concurrent_callers_each_get_their_own_answer() -> None:
    watchdog = Watchdog("m")
    results: dict[int, int] = {}
    gate = threading.Barrier(4)

    def caller(n: int) -> None:
        gate.wait(5)
        for i in range(50):
            expected = n * 1000 + i
            assert watchdog.run(functools.partial(int, expected), timeout_s=5) == expected
        results[n] = n

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert results == {0: 0, 1: 1, 2: 2, 3: 3}


@pytest.mark.parametrize("timeout_s", [0, -1])
def test_a_deadline_must_be_positive(timeout_s: float) -> None:
    with pytest.raises(ValueError):
        Watchdog("m").run(lambda: 1, timeout_s=timeout_s)
