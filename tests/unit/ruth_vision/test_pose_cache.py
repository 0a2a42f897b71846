"""The pose cache answers a repeat of the same pixels from memory, and nothing else."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ruth_vision.pose_cache import PoseCache, frame_digest


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def counting() -> tuple[list[int], Callable[[], int]]:
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    return calls, compute


def test_the_same_pixels_are_computed_once_and_a_changed_pixel_is_not_a_hit() -> None:
    lookups: list[bool] = []
    cache: PoseCache[int] = PoseCache(on_lookup=lookups.append)
    calls, compute = counting()
    a = frame()
    assert cache.get_or_compute(a, compute) == 1
    assert cache.get_or_compute(a.copy(), compute) == 1
    b = a.copy()
    b[10, 10, 1] ^= 1
    assert cache.get_or_compute(b, compute) == 2
    assert len(calls) == 2
    assert lookups == [False, True, False]
    assert cache.stats.hits == 1 and cache.stats.misses == 2


def test_shape_is_part_of_the_key() -> None:
    flat = np.zeros((4, 6, 3), np.uint8)
    assert frame_digest(flat) != frame_digest(flat.reshape(6, 4, 3))
    assert frame_digest(flat) != frame_digest(flat[:, :, :2].copy())


def test_a_view_has_the_digest_of_its_copy() -> None:
    big = frame(3)
    view = big[::2, 1:]
    assert not view.flags["C_CONTIGUOUS"]
    assert frame_digest(view) == frame_digest(view.copy())


def test_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    cache: PoseCache[int] = PoseCache(max_entries=4, ttl_s=2.0, clock=clock)
    calls, compute = counting()
    a = frame()
    cache.get_or_compute(a, compute)
    clock.now = 1.9
    cache.get_or_compute(a, compute)
    assert len(calls) == 1
    clock.now = 4.0
    cache.get_or_compute(a, compute)
    assert len(calls) == 2


def test_the_least_recently_used_entry_goes_first_and_size_stays_bounded() -> None:
    cache: PoseCache[int] = PoseCache(max_entries=2, ttl_s=60)
    calls, compute = counting()
    a, b, c = frame(1), frame(2), frame(3)
    for f in (a, b, a, c):  # a is used again, so b is the oldest when c arrives
        cache.get_or_compute(f, compute)
    assert len(cache) == 2
    before = len(calls)
    cache.get_or_compute(a, compute)
    assert len(calls) == before
    cache.get_or_compute(b, compute)
    assert len(calls) == before + 1


def test_errors_are_not_cached() -> None:
    cache: PoseCache[int] = PoseCache()
    a = frame()

    def boom() -> int:
        raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError):
        cache.get_or_compute(a, boom)
    assert cache.get_or_compute(a, lambda: 7) == 7


@pytest.mark.parametrize(("entries", "ttl"), [(0, 2.0), (16, 0.0)])
def test_zero_turns_it_off(entries: int, ttl: float) -> None:
    cache: PoseCache[int] = PoseCache(max_entries=entries, ttl_s=ttl)
    calls, compute = counting()
    a = frame()
    cache.get_or_compute(a, compute)
    cache.get_or_compute(a, compute)
    assert len(calls) == 2 and len(cache) == 0


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        PoseCache(max_entries=-1)
