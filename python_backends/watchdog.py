"""Execution deadline with zombie accounting.

A Python thread can't be killed, so a call past its deadline is answered (`InferenceTimeout`) and left running as
a *zombie*, which is counted until it really ends; enough zombies and the instance calls itself unhealthy so the
operator tooling can reload it. Calls never queue behind zombies: a zombie keeps its worker, and a call that finds
no idle worker starts a new one. (The runtime we replace used a 2-thread pool, so two hung calls made every later
call time out, and dropped timed-out work from its accounting.)
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from python_backends.bounds import above, at_least
from python_backends.errors import InferenceTimeout
from python_backends.params import DEFAULTS

__all__ = ["Watchdog"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Call(Generic[T]):
    __slots__ = ("abandoned", "context", "done", "error", "finished", "fn", "result", "submitted_at")

    def __init__(self, fn: Callable[[], T], submitted_at: float) -> None:
        self.fn = fn
        self.context = contextvars.copy_context()
        self.done = threading.Event()
        self.submitted_at = submitted_at
        self.result: T | None = None
        self.error: BaseException | None = None
        self.finished = False  # guarded by Watchdog._lock
        self.abandoned = False  # guarded by Watchdog._lock


class Watchdog:
    """Runs callables on worker threads under a deadline; one per model instance.

    Idle workers are kept (up to `max_idle_workers`) so a call costs two thread hand-offs, not a thread start.
    `clock` only stamps zombie ages; waiting uses the OS's monotonic timers.
    """

    def __init__(
        self,
        name: str,
        *,
        zombie_limit: int = DEFAULTS.watchdog.zombie_limit,
        clock: Callable[[], float] = time.monotonic,
        max_idle_workers: int = 2,
    ) -> None:
        self.name = name
        self.zombie_limit = at_least("zombie_limit", zombie_limit, 1)
        self._clock = clock
        self._max_idle = max(max_idle_workers, 0)
        self._lock = threading.Lock()
        self._zombie_ended = threading.Condition(self._lock)
        self._jobs: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        self._idle = 0  # workers blocked on (or about to block on) self._jobs
        self._workers = 0
        self._zombies: dict[int, _Call[Any]] = {}
        self._timeouts_total = 0
        self._closed = False
        self._seq = itertools.count(1)

    def run(self, fn: Callable[[], T], timeout_s: float) -> T:
        """`fn()`'s result or exception, or `InferenceTimeout` once `timeout_s` has passed (fn keeps running)."""
        above("timeout_s", timeout_s, 0)
        call: _Call[T] = _Call(fn, self._clock())
        with self._lock:
            if self._closed:
                raise RuntimeError(f"watchdog {self.name} is shut down")
            spawn = self._idle == 0
            if spawn:
                self._workers += 1
            else:
                self._idle -= 1
        if spawn:
            threading.Thread(target=self._work, name=f"watchdog-{self.name}-{next(self._seq)}", daemon=True).start()
        self._jobs.put(call)

        if not call.done.wait(timeout_s):
            with self._lock:
                if not call.finished:
                    call.abandoned = True
                    self._zombies[id(call)] = call
                    self._timeouts_total += 1
                    zombies = len(self._zombies)
                    timed_out = True
                else:  # finished right at the deadline: the answer is there, use it
                    timed_out = False
            if timed_out:
                log.warning("%s: call exceeded %.3fs; %d zombie(s) now running", self.name, timeout_s, zombies)
                raise InferenceTimeout(self.name, timeout_s)
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    @property
    def zombies(self) -> int:
        with self._lock:
            return len(self._zombies)

    def zombie_ages(self) -> list[float]:
        """Seconds since each zombie call began, oldest first."""
        now = self._clock()
        with self._lock:
            return sorted((now - call.submitted_at for call in self._zombies.values()), reverse=True)

    @property
    def healthy(self) -> bool:
        return self.zombies < self.zombie_limit

    @property
    def timeouts_total(self) -> int:
        with self._lock:
            return self._timeouts_total

    def wait_for_zombies(self, timeout_s: float) -> int:
        """Block up to `timeout_s` for zombies to end; returns how many are still running."""
        deadline = time.monotonic() + timeout_s
        with self._zombie_ended:
            while self._zombies:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._zombie_ended.wait(remaining)
            return len(self._zombies)

    def shutdown(self, wait_s: float) -> int:
        """Refuse new calls, let idle workers exit, wait up to `wait_s` for zombies; returns zombies still alive.

        Safe to call twice. Remaining zombies are daemon threads: they can't block interpreter exit.
        """
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._jobs.put(None)
        left = self.wait_for_zombies(wait_s)
        if left:
            log.warning("%s: %d zombie call(s) still running at shutdown", self.name, left)
        return left

    def _work(self) -> None:
        while True:
            call = self._jobs.get()
            if call is None:
                with self._lock:
                    self._workers -= 1
                return
            try:
                call.result = call.context.run(call.fn)
            except BaseException as exc:  # handed to the caller, which re-raises it
                call.error = exc
            age = 0.0
            with self._lock:
                call.finished = True
                if call.abandoned:
                    del self._zombies[id(call)]
                    self._zombie_ended.notify_all()
                    age = self._clock() - call.submitted_at
                exit_after = self._closed or self._idle >= self._max_idle
                if exit_after:
                    self._workers -= 1
                else:
                    self._idle += 1
            if call.abandoned:
                outcome = f"failed ({call.error!r})" if call.error is not None else "returned"
                log.info("%s: zombie call %s after %.1fs", self.name, outcome, age)
                call.result = call.error = None  # nobody will read them; don't keep the model's output alive
            call.done.set()
            if exit_after:
                return
