from __future__ import annotations

import random

import pytest

from python_backends.errors import ErrorCode, counts_as_failure, triton_code_for
from python_backends.faults import PARAM_KEYS, FaultInjector, FaultPlan, InjectedFault
from python_backends.params import RuntimeParams


class FixedRoll(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


class NoRolls(random.Random):
    def random(self) -> float:
        raise AssertionError("a disabled plan must not roll")


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def test_the_default_plan_is_off_and_costs_no_roll() -> None:
    plan = FaultPlan()
    sleeps = Sleeps()
    assert not plan.enabled
    FaultInjector(plan, rng=NoRolls(), sleep=sleeps).apply()
    assert sleeps.calls == []


@pytest.mark.parametrize(
    ("plan", "enabled"),
    [
        (FaultPlan(fail_rate=0.1), True),
        (FaultPlan(hang_rate=0.1), True),
        (FaultPlan(hang_rate=0.1, hang_s=0), False),
        (FaultPlan(slow_rate=0.1, slow_ms=5), True),
        (FaultPlan(slow_rate=0.1), False),  # slowing by 0 ms is no fault
    ],
)
def test_enabled_means_some_fault_can_happen(plan: FaultPlan, enabled: bool) -> None:
    assert plan.enabled is enabled


def plan_of(params: dict[str, str]) -> FaultPlan:
    return RuntimeParams.from_parameters(params).fault


def test_the_ruth_fault_keys_make_the_plan() -> None:
    params = {
        "ruth.fault.fail_rate": "0.25",
        "ruth.fault.hang_rate": "0.1",
        "ruth.fault.hang_s": "12",
        "ruth.fault.slow_rate": "0.5",
        "ruth.fault.slow_ms": "250",
        "ruth.breaker.failure_threshold": "3",  # someone else's key
    }
    assert plan_of(params) == FaultPlan(fail_rate=0.25, hang_rate=0.1, hang_s=12.0, slow_rate=0.5, slow_ms=250.0)


def test_without_keys_or_with_blank_values_the_plan_is_the_default() -> None:
    assert plan_of({}) == FaultPlan()
    assert plan_of({"ruth.fault.fail_rate": " "}) == FaultPlan()
    assert not FaultPlan().enabled


def test_rates_adding_up_to_more_than_one_are_rejected() -> None:
    with pytest.raises(ValueError, match="add up to at most 1"):
        FaultPlan(fail_rate=0.6, hang_rate=0.5)


@pytest.mark.parametrize(
    ("roll", "expected"),
    [
        (0.05, "fail"),
        (0.15, "hang"),
        (0.35, "slow"),
        (0.60, "none"),
    ],
)
def test_one_roll_picks_at_most_one_fault(roll: float, expected: str) -> None:
    plan = FaultPlan(fail_rate=0.1, hang_rate=0.1, hang_s=7, slow_rate=0.3, slow_ms=250)
    sleeps = Sleeps()
    injector = FaultInjector(plan, rng=FixedRoll(roll), sleep=sleeps)

    outcome = "none"
    try:
        injector.apply()
    except InjectedFault:
        outcome = "fail"
    if sleeps.calls == [7]:
        outcome = "hang"
    elif sleeps.calls == [0.25]:
        outcome = "slow"

    assert outcome == expected


def test_the_fail_rate_is_honoured_over_many_requests() -> None:
    injector = FaultInjector(FaultPlan(fail_rate=0.3), rng=random.Random(1234))
    failures = 0
    for _ in range(10_000):
        try:
            injector.apply()
        except InjectedFault:
            failures += 1
    assert 2_800 < failures < 3_200


def test_an_injected_fault_looks_like_a_model_failure() -> None:
    fault = InjectedFault("injected")
    assert triton_code_for(fault) is ErrorCode.INTERNAL
    assert counts_as_failure(fault)


def test_the_fault_message_names_its_parameter() -> None:
    with pytest.raises(InjectedFault, match=PARAM_KEYS["fail_rate"]):
        FaultInjector(FaultPlan(fail_rate=1.0)).apply()
