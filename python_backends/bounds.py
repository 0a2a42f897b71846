"""Range checks for constructor arguments: one message shape, `<name> must be >= <bound>, got <value>`.

Each returns the value it checked, so a constructor checks and stores in one line."""

from __future__ import annotations

from typing import TypeVar

N = TypeVar("N", int, float)


def at_least(name: str, value: N, bound: float) -> N:
    if not value >= bound:
        raise ValueError(f"{name} must be >= {bound}, got {value}")
    return value


def above(name: str, value: N, bound: float) -> N:
    if not value > bound:
        raise ValueError(f"{name} must be > {bound}, got {value}")
    return value
