from __future__ import annotations

import json
import logging
import multiprocessing
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from python_backends.breaker import (
    BREAKER_GAUGE,
    Admission,
    BreakerPolicy,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    Rejection,
    on_admit,
    on_failure,
    on_reset,
    on_success,
)
from python_backends.breaker_storage import BreakerStorage, FileBreakerStorage, MemoryBreakerStorage
from python_backends.errors import BreakerOpen, ErrorCode, triton_code_for

R = TypeVar("R")
CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN
POLICY = BreakerPolicy(failure_threshold=3, cooldown_s=10.0, max_cooldown_s=35.0, backoff_factor=2.0)


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, BreakerState, BreakerState]] = []

    def on_transition(self, name: str, old: BreakerState, new: BreakerState, snap: BreakerSnapshot) -> None:
        assert snap.state is new
        self.events.append((name, old, new))


def closed(now: float = 0.0, failures: int = 0) -> BreakerSnapshot:
    return BreakerSnapshot(state=CLOSED, consecutive_failures=failures, updated_at=now)


def opened(now: float = 0.0, trips: int = 1, policy: BreakerPolicy = POLICY) -> BreakerSnapshot:
    return BreakerSnapshot(
        state=OPEN,
        consecutive_failures=policy.failure_threshold,
        trips=trips,
        total_trips=trips,
        opened_at=now,
        retry_at=now + policy.cooldown_for(trips),
        updated_at=now,
    )


NORMAL = Admission(trial=False, episode=0, admitted_at=0.0)


# --- policy -------------------------------------------------------------------------------------------------------


def test_cooldown_grows_exponentially_and_is_capped() -> None:
    assert [POLICY.cooldown_for(trips) for trips in range(1, 6)] == [10.0, 20.0, 35.0, 35.0, 35.0]


def test_cooldown_survives_absurd_trip_counts() -> None:
    assert POLICY.cooldown_for(100_000) == 35.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"cooldown_s": 0},
        {"cooldown_s": 10, "max_cooldown_s": 5},
        {"backoff_factor": 0.5},
        {"half_open_max_trials": 0},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]


def test_gauge_values_follow_severity() -> None:
    assert BREAKER_GAUGE == {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


# --- pure transitions ---------------------------------------------------------------------------------------------


def test_closed_admits_without_changing_anything() -> None:
    snap = closed()
    new, decision = on_admit(snap, POLICY, 5.0)
    assert new is snap
    assert decision == Admission(trial=False, episode=0, admitted_at=5.0)


def test_closed_failure_below_threshold_counts() -> None:
    new = on_failure(closed(failures=1), POLICY, 5.0, NORMAL)
    assert (new.state, new.consecutive_failures, new.updated_at) == (CLOSED, 2, 5.0)


def test_closed_failure_at_threshold_trips() -> None:
    new = on_failure(closed(failures=2), POLICY, 5.0, NORMAL)
    assert new.state is OPEN
    assert (new.trips, new.total_trips, new.consecutive_failures) == (1, 1, 3)
    assert (new.opened_at, new.retry_at) == (5.0, 15.0)


def test_closed_success_ends_the_failure_streak() -> None:
    new = on_success(closed(failures=2), POLICY, 5.0, NORMAL)
    assert (new.state, new.consecutive_failures) == (CLOSED, 0)


def test_closed_success_without_a_streak_changes_nothing() -> None:
    snap = closed()
    assert on_success(snap, POLICY, 5.0, NORMAL) is snap


def test_open_rejects_until_retry_at() -> None:
    snap = opened(now=0.0)
    new, decision = on_admit(snap, POLICY, 9.9)
    assert new is snap
    assert decision == Rejection(retry_at=10.0, state=OPEN)


def test_open_half_opens_at_retry_at_and_admits_one_trial() -> None:
    new, decision = on_admit(opened(now=0.0), POLICY, 10.0)
    assert new.state is HALF_OPEN
    assert (new.trials_in_flight, new.last_trial_at) == (1, 10.0)
    assert decision == Admission(trial=True, episode=1, admitted_at=10.0)


def test_half_open_rejects_beyond_max_trials() -> None:
    half_open, _ = on_admit(opened(now=0.0), POLICY, 10.0)
    new, decision = on_admit(half_open, POLICY, 10.5)
    assert new is half_open
    assert decision == Rejection(retry_at=10.5, state=HALF_OPEN)


def test_half_open_admits_up_to_max_trials() -> None:
    policy = BreakerPolicy(failure_threshold=3, cooldown_s=10.0, max_cooldown_s=35.0, half_open_max_trials=2)
    snap, first = on_admit(opened(now=0.0, policy=policy), policy, 10.0)
    snap, second = on_admit(snap, policy, 10.1)
    snap, third = on_admit(snap, policy, 10.2)
    assert isinstance(first, Admission) and first.trial
    assert isinstance(second, Admission) and second.trial
    assert isinstance(third, Rejection)
    assert snap.trials_in_flight == 2


def test_half_open_trial_success_closes_and_resets_the_ladder() -> None:
    half_open, trial = on_admit(opened(now=0.0, trips=2), POLICY, 20.0)
    assert isinstance(trial, Admission)
    new = on_success(half_open, POLICY, 20.5, trial)
    assert new.state is CLOSED
    assert (new.trips, new.total_trips, new.consecutive_failures, new.trials_in_flight) == (0, 2, 0, 0)
    assert new.retry_at is None and new.opened_at is None


def test_half_open_trial_failure_reopens_with_a_longer_cooldown() -> None:
    half_open, trial = on_admit(opened(now=0.0), POLICY, 10.0)
    assert isinstance(trial, Admission)
    new = on_failure(half_open, POLICY, 11.0, trial)
    assert new.state is OPEN
    assert (new.trips, new.total_trips) == (2, 2)
    assert new.retry_at == 11.0 + 20.0


def test_a_lost_trial_stops_blocking_after_the_cooldown() -> None:
    half_open, _ = on_admit(opened(now=0.0), POLICY, 10.0)  # this trial's process dies; nobody records it
    still_waiting, decision = on_admit(half_open, POLICY, 19.9)
    assert isinstance(decision, Rejection)
    new, decision = on_admit(still_waiting, POLICY, 20.0)
    assert isinstance(decision, Admission) and decision.trial
    assert (new.trials_in_flight, new.last_trial_at) == (1, 20.0)


def test_outcomes_of_requests_admitted_before_the_trip_are_ignored() -> None:
    half_open, _ = on_admit(opened(now=0.0), POLICY, 10.0)
    assert on_failure(half_open, POLICY, 10.5, NORMAL) is half_open
    assert on_success(half_open, POLICY, 10.5, NORMAL) is half_open


def test_outcomes_while_open_are_ignored() -> None:
    snap = opened(now=0.0)
    trial = Admission(trial=True, episode=1, admitted_at=0.0)
    assert on_failure(snap, POLICY, 1.0, NORMAL) is snap
    assert on_success(snap, POLICY, 1.0, trial) is snap


def test_a_trial_from_an_older_episode_does_not_decide_a_newer_one() -> None:
    half_open, _ = on_admit(opened(now=0.0, trips=2), POLICY, 20.0)  # episode 2
    old_trial = Admission(trial=True, episode=1, admitted_at=5.0)
    assert on_success(half_open, POLICY, 20.5, old_trial) is half_open
    assert on_failure(half_open, POLICY, 20.5, old_trial) is half_open


def test_reset_closes_and_keeps_history() -> None:
    new = on_reset(opened(now=0.0, trips=3), 1.0)
    assert new.state is CLOSED
    assert (new.trips, new.total_trips, new.retry_at) == (0, 3, None)


def test_a_wall_clock_that_jumped_back_does_not_keep_the_breaker_open() -> None:
    snap = opened(now=10_000.0)  # retry_at = 10_010, but the clock now reads 1_000
    new, decision = on_admit(snap, POLICY, 1_000.0)
    assert isinstance(decision, Admission) and decision.trial
    assert new.state is HALF_OPEN


def test_every_change_bumps_seq_and_stamps_the_time() -> None:
    snap = closed(now=0.0)
    new = on_failure(snap, POLICY, 7.0, NORMAL)
    assert (new.seq, new.updated_at) == (snap.seq + 1, 7.0)


# --- snapshot serialisation ---------------------------------------------------------------------------------------


def test_snapshot_round_trips_through_json() -> None:
    half_open, _ = on_admit(opened(now=3.0, trips=2), POLICY, 30.0)
    assert BreakerSnapshot.from_json(json.loads(json.dumps(half_open.to_json()))) == half_open


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"state": "ajar"},
        {"state": "closed", "trips": -1},
        {"state": "closed", "trips": "3"},
        {"state": "open"},  # no retry_at
        {"state": "open", "retry_at": "soon"},
    ],
)
def test_snapshot_parsing_rejects_garbage(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BreakerSnapshot.from_json(data)


# --- the breaker, over every storage ------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "file"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> BreakerStorage:
    if request.param == "memory":
        return MemoryBreakerStorage()
    return FileBreakerStorage(tmp_path / "breaker.json")


def make(
    storage: BreakerStorage, clock: FakeClock, *listeners: Recorder, policy: BreakerPolicy = POLICY
) -> CircuitBreaker:
    return CircuitBreaker("m/1", policy, storage, clock=clock, listeners=listeners)


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.record_failure(breaker.admit())


def test_breaker_trips_after_consecutive_failures_and_fails_fast(storage: BreakerStorage) -> None:
    clock = FakeClock()
    breaker = make(storage, clock)

    fail(breaker, 3)
    clock.advance(4.0)

    with pytest.raises(BreakerOpen) as raised:
        breaker.admit()
    assert raised.value.retry_at == 1_010.0
    assert raised.value.retry_in_s == pytest.approx(6.0)
    assert "retry in 6.0s" in str(raised.value)
    assert triton_code_for(raised.value) is ErrorCode.UNAVAILABLE
    assert breaker.state is OPEN


def test_a_success_between_failures_prevents_the_trip(storage: BreakerStorage) -> None:
    breaker = make(storage, FakeClock())
    fail(breaker, 2)
    breaker.record_success(breaker.admit())
    fail(breaker, 2)
    assert breaker.state is CLOSED
    assert breaker.snapshot().consecutive_failures == 2


def test_full_cycle_reports_every_transition_to_listeners(storage: BreakerStorage) -> None:
    clock, recorder = FakeClock(), Recorder()
    breaker = make(storage, clock, recorder)

    fail(breaker, 3)
    clock.advance(10.0)
    trial = breaker.admit()
    with pytest.raises(BreakerOpen):
        breaker.admit()  # only one trial at a time
    breaker.record_success(trial)

    assert trial.trial
    assert recorder.events == [("m/1", CLOSED, OPEN), ("m/1", OPEN, HALF_OPEN), ("m/1", HALF_OPEN, CLOSED)]
    snap = breaker.snapshot()
    assert (snap.state, snap.trips, snap.total_trips) == (CLOSED, 0, 1)


def test_a_failed_trial_reopens_for_twice_as_long(storage: BreakerStorage) -> None:
    clock = FakeClock()
    breaker = make(storage, clock)
    fail(breaker, 3)
    clock.advance(10.0)

    breaker.record_failure(breaker.admit())

    snap = breaker.snapshot()
    assert (snap.state, snap.trips, snap.retry_at) == (OPEN, 2, clock.now + 20.0)
    clock.advance(19.0)
    with pytest.raises(BreakerOpen):
        breaker.admit()
    clock.advance(1.0)
    assert breaker.admit().trial


def test_operator_reset_closes_an_open_breaker(storage: BreakerStorage) -> None:
    recorder = Recorder()
    breaker = make(storage, FakeClock(), recorder)
    fail(breaker, 3)

    breaker.reset()

    assert breaker.state is CLOSED
    assert not breaker.admit().trial
    assert recorder.events[-1] == ("m/1", OPEN, CLOSED)


def test_a_failing_listener_is_logged_and_does_not_break_the_breaker(
    storage: BreakerStorage, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def on_transition(self, name: str, old: BreakerState, new: BreakerState, snap: BreakerSnapshot) -> None:
            raise RuntimeError("listener bug")

    recorder = Recorder()
    breaker = CircuitBreaker("m/1", POLICY, storage, clock=FakeClock(), listeners=[Broken(), recorder])

    with caplog.at_level(logging.ERROR, logger="python_backends.breaker"):
        fail(breaker, 3)

    assert breaker.state is OPEN
    assert recorder.events == [("m/1", CLOSED, OPEN)]
    assert "listener" in caplog.text


def test_a_listener_may_use_the_breaker_without_deadlocking(storage: BreakerStorage) -> None:
    seen: list[BreakerState] = []

    class ReadsBack:
        def __init__(self, breaker: CircuitBreaker) -> None:
            self.breaker = breaker

        def on_transition(self, name: str, old: BreakerState, new: BreakerState, snap: BreakerSnapshot) -> None:
            seen.append(self.breaker.state)
            self.breaker.snapshot()

    clock = FakeClock()
    breaker = make(storage, clock)
    breaker.add_listener(ReadsBack(breaker))
    done = threading.Event()

    def scenario() -> None:
        fail(breaker, 3)
        clock.advance(10.0)
        breaker.record_success(breaker.admit())
        done.set()

    worker = threading.Thread(target=scenario, daemon=True)
    worker.start()
    assert done.wait(10), "breaker deadlocked inside a listener"
    assert seen == [OPEN, HALF_OPEN, CLOSED]


def test_threads_hammering_admit_and_record_neither_deadlock_nor_corrupt(storage: BreakerStorage) -> None:
    clock = FakeClock()
    policy = BreakerPolicy(failure_threshold=3, cooldown_s=0.05, max_cooldown_s=0.2)
    breaker = make(storage, clock, policy=policy)
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        try:
            for i in range(150):
                clock.advance(0.001)
                try:
                    admission = breaker.admit()
                except BreakerOpen:
                    continue
                if (i + seed) % 3:
                    breaker.record_failure(admission)
                else:
                    breaker.record_success(admission)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(seed,), daemon=True) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert not [t for t in threads if t.is_alive()], "threads deadlocked"
    assert errors == []
    snap = breaker.snapshot()
    assert snap.total_trips >= 1
    assert snap.trials_in_flight <= policy.half_open_max_trials


def test_a_storage_that_cannot_write_still_trips_in_memory_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    class ReadOnlyStorage(MemoryBreakerStorage):
        def transact(self, fn: Callable[[BreakerSnapshot | None], tuple[BreakerSnapshot, R]]) -> R:
            raise OSError(28, "No space left on device")

    breaker = CircuitBreaker("m/1", POLICY, ReadOnlyStorage(), clock=FakeClock())

    with caplog.at_level(logging.INFO, logger="python_backends.breaker"):
        for _ in range(POLICY.failure_threshold):
            breaker.record_failure(breaker.admit())
        with pytest.raises(BreakerOpen):
            breaker.admit()

    assert breaker.state is BreakerState.OPEN
    assert breaker.storage_errors == POLICY.failure_threshold
    assert caplog.text.count("state storage failed") == 1 and "in memory" in caplog.text
    assert "-> open" in caplog.text and "in memory only" in caplog.text
    with pytest.raises(OSError):
        breaker.reset()  # an operator action must not pretend to have worked


def test_the_state_kept_in_memory_is_written_once_storage_works_again() -> None:
    class FlakyStorage(MemoryBreakerStorage):
        broken = True

        def transact(self, fn: Callable[[BreakerSnapshot | None], tuple[BreakerSnapshot, R]]) -> R:
            if self.broken:
                raise OSError(5, "I/O error")
            return super().transact(fn)

    storage, clock = FlakyStorage(), FakeClock()
    breaker = CircuitBreaker("m/1", POLICY, storage, clock=clock)
    for _ in range(POLICY.failure_threshold):
        breaker.record_failure(breaker.admit())
    assert storage.load() is None and breaker.state is OPEN
    storage.broken = False
    clock.advance(POLICY.cooldown_s)
    trial = breaker.admit()  # OPEN (in memory) -> HALF_OPEN, written through
    stored = storage.load()
    assert trial.trial and stored is not None and stored.state is HALF_OPEN and stored.total_trips == 1
    breaker.record_success(trial)
    assert storage.load().state is CLOSED  # type: ignore[union-attr]


# --- the file storage: shared by instances, survives restarts -------------------------------------------------------


def test_two_instances_on_one_file_see_each_others_trips(tmp_path: Path) -> None:
    path, clock = tmp_path / "breaker.json", FakeClock()
    recorder_a, recorder_b = Recorder(), Recorder()
    instance_a = make(FileBreakerStorage(path), clock, recorder_a)
    instance_b = make(FileBreakerStorage(path), clock, recorder_b)

    fail(instance_a, 3)

    assert instance_b.state is OPEN
    with pytest.raises(BreakerOpen):
        instance_b.admit()

    clock.advance(10.0)
    trial = instance_b.admit()
    with pytest.raises(BreakerOpen):
        instance_a.admit()  # the trial slot is shared too
    instance_b.record_success(trial)
    assert instance_a.state is CLOSED

    # Each transition is reported once, by the instance that made it (metrics of instances are merged by Triton).
    assert recorder_a.events == [("m/1", CLOSED, OPEN)]
    assert recorder_b.events == [("m/1", OPEN, HALF_OPEN), ("m/1", HALF_OPEN, CLOSED)]


def test_failures_from_two_instances_add_up(tmp_path: Path) -> None:
    path, clock = tmp_path / "breaker.json", FakeClock()
    instance_a, instance_b = make(FileBreakerStorage(path), clock), make(FileBreakerStorage(path), clock)

    fail(instance_a, 2)
    fail(instance_b, 1)

    assert instance_a.state is OPEN


def test_a_restarted_breaker_restores_open(tmp_path: Path) -> None:
    path, clock = tmp_path / "breaker.json", FakeClock()
    fail(make(FileBreakerStorage(path), clock), 3)
    clock.advance(3.0)

    restarted = make(FileBreakerStorage(path), clock)

    assert restarted.state is OPEN
    with pytest.raises(BreakerOpen) as raised:
        restarted.admit()
    assert raised.value.retry_in_s == pytest.approx(7.0)


def _trip_in_child(path: str) -> None:
    breaker = CircuitBreaker("m/1", POLICY, FileBreakerStorage(Path(path)), clock=lambda: 1_000.0)
    fail(breaker, 3)


def test_a_trip_in_another_process_opens_this_one(tmp_path: Path) -> None:
    path = tmp_path / "breaker.json"
    breaker = make(FileBreakerStorage(path), FakeClock())
    assert breaker.state is CLOSED

    child = multiprocessing.get_context("fork").Process(target=_trip_in_child, args=(str(path),))
    child.start()
    child.join(30)

    assert child.exitcode == 0
    with pytest.raises(BreakerOpen):
        breaker.admit()


@pytest.mark.parametrize("content", ["{torn", '{"state": "ajar"}', "[]", '{"state": "open", "retry_at": null}'])
def test_a_corrupt_state_file_starts_closed_with_a_warning_and_is_repaired(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "breaker.json"
    path.write_text(content)

    with caplog.at_level(logging.WARNING):
        breaker = make(FileBreakerStorage(path), FakeClock())
        assert breaker.state is CLOSED
        assert not breaker.admit().trial

    assert caplog.records, "a corrupt file must be reported"
    fail(breaker, 1)
    assert BreakerSnapshot.from_json(json.loads(path.read_text())).consecutive_failures == 1


def test_the_steady_closed_state_does_not_rewrite_the_file(tmp_path: Path) -> None:
    path = tmp_path / "breaker.json"
    breaker = make(FileBreakerStorage(path), FakeClock())
    fail(breaker, 1)
    breaker.record_success(breaker.admit())
    inode = path.stat().st_ino

    for _ in range(20):
        breaker.record_success(breaker.admit())

    assert path.stat().st_ino == inode
