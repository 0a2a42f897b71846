"""Fault injection for reliability tests and game days: fail, hang or slow down a fraction of requests.

Configured per model through the config.pbtxt `ruth.fault.*` parameters (all off by default), so the breaker,
the watchdog and the operator tooling can be exercised on real models through the real server. One random roll
per request picks at most one fault: [0, fail) fails, [fail, fail+hang) hangs, [fail+hang, fail+hang+slow) slows down.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping

from python_backends.errors import Internal
from python_backends.params import PREFIX, FaultPlan

__all__ = ["PARAM_KEYS", "FaultInjector", "FaultPlan", "InjectedFault"]

#: config.pbtxt parameter key per FaultPlan field (the plan itself is defined with every ruth.* key in params.py)
PARAM_KEYS: Mapping[str, str] = {name: f"{PREFIX}fault.{name}" for name in FaultPlan.model_fields}


class InjectedFault(Internal):
    """A deliberate failure: INTERNAL to the client and a failure to the breaker, like a real model fault."""


class FaultInjector:
    """Applies a plan to one request at a time. With a disabled plan `apply` is a single attribute check."""

    def __init__(
        self,
        plan: FaultPlan,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.plan = plan
        self._enabled = plan.enabled
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep

    def apply(self) -> None:
        """Maybe fail (`InjectedFault`), hang (`hang_s`) or slow down (`slow_ms`) the calling request."""
        if not self._enabled:
            return
        plan = self.plan
        roll = self._rng.random()
        if roll < plan.fail_rate:
            raise InjectedFault(f"injected fault ({PARAM_KEYS['fail_rate']}={plan.fail_rate})")
        roll -= plan.fail_rate
        if roll < plan.hang_rate:
            self._sleep(plan.hang_s)
            return
        roll -= plan.hang_rate
        if roll < plan.slow_rate:
            self._sleep(plan.slow_ms / 1000.0)
