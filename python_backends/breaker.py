"""Circuit breaker in pybreaker's shape: named states, a storage interface, listeners, and an injected clock.

Each Triton instance of a model is its own process, so the breaker's state lives in storage shared by all of them
(`FileBreakerStorage`, one JSON file per model version) and every decision re-reads it: a trip made by one
instance stops its siblings too, and a restarted server finds the breaker where it was left. Timestamps are wall
clock because they outlive the process.

The transitions are pure functions over an immutable `BreakerSnapshot`, so each one is testable on its own. The
breaker applies them in two short storage transactions per request (`admit`, then `record_*`); nothing is locked
while the model runs, and listeners are called after the storage lock is released, so a listener that reads the
breaker can't deadlock it (the runtime we replace hung on its first trip that way).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from python_backends.bounds import above, at_least
from python_backends.errors import BreakerOpen
from python_backends.params import DEFAULTS
from python_backends.state import BreakerSnapshot, BreakerState

__all__ = [
    "BREAKER_GAUGE",
    "Admission",
    "BreakerListener",
    "BreakerPolicy",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "Rejection",
    "on_admit",
    "on_failure",
    "on_reset",
    "on_success",
]

if TYPE_CHECKING:
    from python_backends.breaker_storage import BreakerStorage

log = logging.getLogger(__name__)

R = TypeVar("R")


#: value of the `ruth_breaker_state` gauge per state
BREAKER_GAUGE: Mapping[BreakerState, int] = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclasses.dataclass(frozen=True)
class BreakerPolicy:
    """When to trip and for how long (pybreaker's fail_max is failure_threshold, its reset_timeout cooldown_s)."""

    failure_threshold: int = DEFAULTS.breaker.failure_threshold
    cooldown_s: float = DEFAULTS.breaker.cooldown_s
    max_cooldown_s: float = DEFAULTS.breaker.max_cooldown_s
    backoff_factor: float = 2.0
    half_open_max_trials: int = DEFAULTS.breaker.half_open_max_trials

    def __post_init__(self) -> None:
        at_least("failure_threshold", self.failure_threshold, 1)
        above("cooldown_s", self.cooldown_s, 0)
        if not self.max_cooldown_s >= self.cooldown_s:
            raise ValueError(f"max_cooldown_s ({self.max_cooldown_s}) must be >= cooldown_s ({self.cooldown_s})")
        at_least("backoff_factor", self.backoff_factor, 1)
        at_least("half_open_max_trials", self.half_open_max_trials, 1)

    def cooldown_for(self, trips: int) -> float:
        """Cooldown after the `trips`-th consecutive trip: exponential, capped at `max_cooldown_s`."""
        exponent = max(trips - 1, 0)
        try:
            cooldown = self.cooldown_s * self.backoff_factor**exponent
        except OverflowError:
            cooldown = math.inf
        return min(cooldown, self.max_cooldown_s)


@dataclasses.dataclass(frozen=True)
class Admission:
    """Permission to run one request; hand it back to `record_success`/`record_failure`.

    `episode` is the snapshot's `total_trips` at admission: a trial's outcome only decides the half-open episode it
    was admitted in, so a late answer from an older episode (or from before an operator reset) can't flip a newer one.
    """

    trial: bool
    episode: int
    admitted_at: float


@dataclasses.dataclass(frozen=True)
class Rejection:
    """The breaker refuses the request; `retry_at` (wall clock) is when it is worth trying again."""

    retry_at: float
    state: BreakerState


# ---------------------------------------------------------------------------------------------------------------
# Transitions: pure functions (snapshot, policy, now) -> snapshot. An unchanged result is returned as the same object.


def _changed(snap: BreakerSnapshot, now: float, **fields: Any) -> BreakerSnapshot:
    return snap.model_copy(update={**fields, "updated_at": now, "seq": snap.seq + 1})


def _trip(snap: BreakerSnapshot, policy: BreakerPolicy, now: float, failures: int) -> BreakerSnapshot:
    trips = snap.trips + 1
    return _changed(
        snap,
        now,
        state=BreakerState.OPEN,
        consecutive_failures=failures,
        trips=trips,
        total_trips=snap.total_trips + 1,
        opened_at=now,
        retry_at=now + policy.cooldown_for(trips),
        trials_in_flight=0,
        last_trial_at=None,
    )


def _close(snap: BreakerSnapshot, now: float) -> BreakerSnapshot:
    return _changed(
        snap,
        now,
        state=BreakerState.CLOSED,
        consecutive_failures=0,
        trips=0,
        opened_at=None,
        retry_at=None,
        trials_in_flight=0,
        last_trial_at=None,
    )


def _live_trials(snap: BreakerSnapshot, policy: BreakerPolicy, now: float) -> int:
    """Trials still worth waiting for: those older than the cooldown (or stamped in the future) are presumed lost,
    e.g. their process was killed before it could record an outcome."""
    if snap.trials_in_flight == 0 or snap.last_trial_at is None:
        return 0
    age = now - snap.last_trial_at
    if age >= policy.cooldown_for(max(snap.trips, 1)) or age < -policy.max_cooldown_s:
        return 0
    return snap.trials_in_flight


def on_admit(snap: BreakerSnapshot, policy: BreakerPolicy, now: float) -> tuple[BreakerSnapshot, Admission | Rejection]:
    """CLOSED admits; OPEN rejects until `retry_at`, then half-opens and admits a trial; HALF_OPEN admits up to
    `half_open_max_trials` concurrent trials and rejects the rest."""
    if snap.state is BreakerState.CLOSED:
        return snap, Admission(trial=False, episode=snap.total_trips, admitted_at=now)
    if snap.state is BreakerState.OPEN:
        retry_at = snap.retry_at if snap.retry_at is not None else now
        # A retry_at further away than any cooldown can only come from a wall clock that jumped back: don't wait it out.
        if now < retry_at and retry_at - now <= policy.max_cooldown_s:
            return snap, Rejection(retry_at=retry_at, state=snap.state)
        half_open = _changed(snap, now, state=BreakerState.HALF_OPEN, trials_in_flight=1, last_trial_at=now)
        return half_open, Admission(trial=True, episode=snap.total_trips, admitted_at=now)
    trials = _live_trials(snap, policy, now)
    if trials < policy.half_open_max_trials:
        admitted = _changed(snap, now, trials_in_flight=trials + 1, last_trial_at=now)
        return admitted, Admission(trial=True, episode=snap.total_trips, admitted_at=now)
    # The trial in flight decides, usually within one inference: worth retrying at once rather than after a cooldown.
    return snap, Rejection(retry_at=now, state=snap.state)


def _is_current_trial(snap: BreakerSnapshot, admission: Admission) -> bool:
    return admission.trial and admission.episode == snap.total_trips


def on_success(snap: BreakerSnapshot, policy: BreakerPolicy, now: float, admission: Admission) -> BreakerSnapshot:
    """CLOSED: the failure streak ends. HALF_OPEN: a trial of this episode closes the breaker. Otherwise stale news."""
    if snap.state is BreakerState.CLOSED:
        return _changed(snap, now, consecutive_failures=0) if snap.consecutive_failures else snap
    if snap.state is BreakerState.HALF_OPEN and _is_current_trial(snap, admission):
        return _close(snap, now)
    return snap


def on_failure(snap: BreakerSnapshot, policy: BreakerPolicy, now: float, admission: Admission) -> BreakerSnapshot:
    """CLOSED: count, and trip at `failure_threshold`. HALF_OPEN: a trial of this episode re-opens with a longer
    cooldown. OPEN, or a request admitted before the trip: ignored (it says nothing about the model now)."""
    if snap.state is BreakerState.CLOSED:
        failures = snap.consecutive_failures + 1
        if failures >= policy.failure_threshold:
            return _trip(snap, policy, now, failures)
        return _changed(snap, now, consecutive_failures=failures)
    if snap.state is BreakerState.HALF_OPEN and _is_current_trial(snap, admission):
        return _trip(snap, policy, now, snap.consecutive_failures + 1)
    return snap


def on_reset(snap: BreakerSnapshot, now: float) -> BreakerSnapshot:
    """Operator reset: CLOSED with a fresh cooldown ladder; `total_trips` is history and stays."""
    return _close(snap, now)


# ---------------------------------------------------------------------------------------------------------------
# The breaker


class BreakerListener(Protocol):
    """Told about each state change *this* breaker object made, after the storage lock is released.

    Changes made by sibling processes are reported by their own breakers, not here: Triton merges the custom metrics
    of all instance processes of a model into one series, so every transition is reported exactly once (a trip
    counter stays exact) and the last transition made anywhere sets the shared gauge. Calls come from whichever
    thread made the transition; an exception is logged and swallowed.
    """

    def on_transition(self, name: str, old: BreakerState, new: BreakerState, snap: BreakerSnapshot) -> None: ...


class CircuitBreaker:
    """Guards one model version: `admit()` before running it, then `record_success`/`record_failure` with the admission.

    The steady state takes no lock: each call first evaluates its transition on a lock-free read of the storage and
    only takes the storage transaction when something would change. That read is consistent (storage swaps whole
    snapshots), so acting on it is the same as having run just before a concurrent writer.

    If storage can't be written (disk full, lock timeout, a damaged state path), the breaker logs it and keeps its
    state in memory, for this process only: it still counts failures and trips, rather than failing requests
    because bookkeeping failed or never tripping because it can't write. Each later change tries storage again.
    """

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        storage: BreakerStorage,
        clock: Callable[[], float] = time.time,
        listeners: Sequence[BreakerListener] = (),
    ) -> None:
        self.name = name
        self.policy = policy
        self._storage = storage
        self._clock = clock
        self._listeners: list[BreakerListener] = list(listeners)
        self.storage_errors = 0
        self._storage_failing = False
        #: the state while storage can't be written: kept (and acted on) in this process only, so a breaker whose
        #: file is unwritable still trips; written back, and dropped, once a write succeeds
        self._memory: BreakerSnapshot | None = None

    # public API ------------------------------------------------------------------------------------------------

    def admit(self) -> Admission:
        """Admission for one request, or `BreakerOpen` (UNAVAILABLE) saying when to retry."""
        now = self._clock()
        decision = self._apply(lambda snap: on_admit(snap, self.policy, now), now)
        if isinstance(decision, Rejection):
            raise BreakerOpen(self.name, decision.retry_at, decision.retry_at - now)
        return decision

    def record_success(self, admission: Admission) -> None:
        now = self._clock()
        self._apply(lambda snap: (on_success(snap, self.policy, now, admission), None), now)

    def record_failure(self, admission: Admission) -> None:
        """Report a model failure or timeout. Client errors (InvalidInput) must not be reported: see
        `errors.counts_as_failure`."""
        now = self._clock()
        self._apply(lambda snap: (on_failure(snap, self.policy, now, admission), None), now)

    def reset(self) -> None:
        """Operator reset to CLOSED. Raises `OSError` if the state can't be stored (the operator must know)."""
        now = self._clock()
        self._apply(lambda snap: (on_reset(snap, now), None), now, fast=False)

    def snapshot(self) -> BreakerSnapshot:
        return self._load(self._clock())

    @property
    def state(self) -> BreakerState:
        return self.snapshot().state

    def add_listener(self, listener: BreakerListener) -> None:
        self._listeners.append(listener)

    # internals -------------------------------------------------------------------------------------------------

    def _load(self, now: float) -> BreakerSnapshot:
        if self._memory is not None:
            return self._memory
        try:
            snap = self._storage.load()
        except OSError as exc:
            self._storage_failed(exc)
            snap = None
        return snap if snap is not None else BreakerSnapshot.initial(now)

    def _apply(
        self, step: Callable[[BreakerSnapshot], tuple[BreakerSnapshot, R]], now: float, *, fast: bool = True
    ) -> R:
        if fast:
            current = self._load(now)
            new, result = step(current)
            if new == current:
                return result

        seen: list[tuple[BreakerSnapshot, BreakerSnapshot]] = []

        def transaction(stored: BreakerSnapshot | None) -> tuple[BreakerSnapshot, R]:
            # while the state lives in memory, memory is what this process decided on: it is what gets written
            before = self._memory or (stored if stored is not None else BreakerSnapshot.initial(now))
            after, result = step(before)
            seen.append((before, after))
            return after, result

        try:
            result = self._storage.transact(transaction)
        except OSError as exc:
            if not fast:
                raise
            self._storage_failed(exc)
            before = self._load(now)
            after, result = step(before)
            self._memory = after
            if before.state is not after.state:
                self._log_transition(before, after, now)
                self._notify(before.state, after)
            return result
        if self._memory is not None:
            log.warning("breaker %s: state storage works again; the state is shared with the siblings again", self.name)
            self._memory = None
        self._storage_failing = False
        before, after = seen[-1]
        if before.state is not after.state:
            self._log_transition(before, after, now)
            self._notify(before.state, after)
        return result

    def _notify(self, old: BreakerState, snap: BreakerSnapshot) -> None:
        for listener in list(self._listeners):
            try:
                listener.on_transition(self.name, old, snap.state, snap)
            except Exception:
                log.exception("breaker %s: listener %r failed", self.name, listener)

    def _log_transition(self, before: BreakerSnapshot, after: BreakerSnapshot, now: float) -> None:
        where = " (in memory only: its state file can't be written)" if self._memory is not None else ""
        if after.state is BreakerState.OPEN:
            log.warning(
                "breaker %s: %s -> open after %d consecutive failure(s) (trip %d); retry in %.1fs%s",
                self.name,
                before.state.value,
                after.consecutive_failures,
                after.trips,
                (after.retry_at or now) - now,
                where,
            )
        else:
            log.info("breaker %s: %s -> %s%s", self.name, before.state.value, after.state.value, where)

    def _storage_failed(self, exc: OSError) -> None:
        self.storage_errors += 1
        if not self._storage_failing:
            log.error(
                "breaker %s: state storage failed (%s); keeping its state in memory, for this process only",
                self.name,
                exc,
            )
            self._storage_failing = True
