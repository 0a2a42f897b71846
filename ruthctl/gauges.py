"""What the model processes report about themselves through Triton's metrics: our gauges, per model."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

__all__ = ["HealthGauges", "parse_health_gauges"]


@dataclasses.dataclass(frozen=True)
class HealthGauges:
    """What the model processes report about themselves, per model (worst instance)."""

    health: float | None = None  # min ruth_model_health over instances
    zombies: float = 0.0  # max ruth_zombie_threads over instances
    breaker: float | None = None  # ruth_breaker_state (0 closed, 1 half-open, 2 open)
    placements: tuple[str, ...] = ()  # ruth_device_allocation == 1 placements


def parse_health_gauges(
    text: str | None, instances: Mapping[str, Iterable[str]] | None = None
) -> dict[str, HealthGauges]:
    """Our gauges from Triton's metrics text, by model name.

    Triton 2.51 keeps a Python model's custom metric series after its instances are gone (measured: they survive
    an unload), so with `instances` (model -> live instance names) a series of an instance that no longer exists
    is ignored instead of judging the model by a dead process's last word.
    """
    if not text:
        return {}
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    live = {model: set(names) for model, names in instances.items()} if instances is not None else None
    health: dict[str, float] = {}
    zombies: dict[str, float] = {}
    breaker: dict[str, float] = {}
    placements: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (
            "ruth_model_health",
            "ruth_zombie_threads",
            "ruth_breaker_state",
            "ruth_device_allocation",
        ):
            continue
        for sample in family.samples:
            model = sample.labels.get("model")
            if not model:
                continue
            instance = sample.labels.get("instance")
            if instance is not None and live is not None and model in live and instance not in live[model]:
                continue
            if family.name == "ruth_model_health":
                health[model] = min(health.get(model, sample.value), sample.value)
            elif family.name == "ruth_zombie_threads":
                zombies[model] = max(zombies.get(model, 0.0), sample.value)
            elif family.name == "ruth_breaker_state":
                breaker[model] = max(breaker.get(model, 0.0), sample.value)
            elif sample.value >= 1 and sample.labels.get("placement"):
                placements.setdefault(model, set()).add(sample.labels["placement"])
    models = set(health) | set(zombies) | set(breaker) | set(placements)
    return {
        m: HealthGauges(
            health=health.get(m),
            zombies=zombies.get(m, 0.0),
            breaker=breaker.get(m),
            placements=tuple(sorted(placements.get(m, ()))),
        )
        for m in sorted(models)
    }
