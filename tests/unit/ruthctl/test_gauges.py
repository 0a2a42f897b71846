"""Our gauges read from Triton's metrics text, per model."""

from __future__ import annotations

from pathlib import Path

from ruthctl.gauges import parse_health_gauges

ASSETS = Path(__file__).with_name("assets")


def test_model_gauges_take_the_worst_instance() -> None:
    gauges = parse_health_gauges((ASSETS / "metrics.txt").read_text())
    tank = gauges["tank_overflow_monitoring"]
    assert (tank.health, tank.zombies, tank.breaker, tank.placements) == (-1.0, 5.0, 0.0, ("cpu",))
    assert gauges["fall_detection"].breaker == 2.0
    assert parse_health_gauges(None) == {} == parse_health_gauges("")


def test_series_of_instances_that_no_longer_exist_are_ignored() -> None:
    text = (ASSETS / "metrics.txt").read_text()
    gauges = parse_health_gauges(text, {"tank_overflow_monitoring": ["tank_overflow_monitoring_0_0"]})
    tank = gauges["tank_overflow_monitoring"]
    assert (tank.health, tank.zombies) == (1.0, 0.0)  # instance _0_1 (health -1, 5 zombies) is gone
    assert gauges["fall_detection"].health == -1.0  # models not in the mapping are not filtered
