"""Fault injection for reliability tests and game days: fail, hang or slow down a fraction of requests.

Configured per model through config.pbtxt `parameters` (all off by default), so the breaker, the watchdog and the
operator tooling can be exercised on real models through the real server. One random roll per request picks at
most one fault: [0, fail) fails, [fail, fail+hang) hangs, [fail+hang, fail+hang+slow) slows down.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Mapping

from python_backends.errors import Internal

__all__ = ["PARAM_KEYS", "FaultInjector", "FaultPlan", "InjectedFault"]

_PREFIX = "ruth.fault."
#: config.pbtxt parameter key per FaultPlan field
PARAM_KEYS: Mapping[str, str] = {
    "fail_rate": _PREFIX + "fail_rate",
    "hang_rate": _PREFIX + "hang_rate",
    "hang_s": _PREFIX + "hang_s",
    "slow_rate": _PREFIX + "slow_rate",
    "slow_ms": _PREFIX + "slow_ms",
}
_RATES = ("fail_rate", "hang_rate", "slow_rate")


class InjectedFault(Internal):
    """A deliberate failure: INTERNAL to the client and a failure to the breaker, like a real model fault."""


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    fail_rate: float = 0
    hang_rate: float = 0
    hang_s: float = 30
    slow_rate: float = 0
    slow_ms: float = 0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{PARAM_KEYS[field.name]}: must be a finite number >= 0, got {value}")
        for name in _RATES:
            if getattr(self, name) > 1:
                raise ValueError(f"{PARAM_KEYS[name]}: a rate must be within 0..1, got {getattr(self, name)}")
        if self.fail_rate + self.hang_rate + self.slow_rate > 1 + 1e-9:
            keys = ", ".join(PARAM_KEYS[name] for name in _RATES)
            raise ValueError(f"{keys}: the rates must add up to at most 1")

    @property
    def enabled(self) -> bool:
        return (
            self.fail_rate > 0 or (self.hang_rate > 0 and self.hang_s > 0) or (self.slow_rate > 0 and self.slow_ms > 0)
        )

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> FaultPlan:
        """Read the `ruth.fault.*` keys (other keys are ignored; an empty value means the default)."""
        values: dict[str, float] = {}
        for field, key in PARAM_KEYS.items():
            raw = params.get(key)
            if raw is None or not str(raw).strip():
                continue
            try:
                values[field] = float(raw)
            except ValueError:
                raise ValueError(f"{key}: expected a number, got {raw!r}") from None
        return cls(**values)


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
