"""Pose once per frame, whoever asks: a short-lived cache of pose results keyed by the frame's pixels.

A camera frame is usually sent to several person analytics (fall_detection, geo_fencing, ppe_detection); each calls
the shared `pose_estimator` with the same decoded pixels. The pose network dominates their cost (~40 ms of CPU a
frame), so the estimator answers a repeat of a frame it has just seen from this cache instead of running again.

The key is a SHA-256 digest of the frame's shape and bytes: OpenSSL's SHA-256 uses the CPU's SHA instructions, about
0.5 ms for a 960x540 frame against ~30 ms for the network (BLAKE2b, tried first, cost 1.8 ms a request in the
profile, docs/bench/profile.md). Equal pixels give equal poses, so a hit is exact, never an approximation. Entries live
`ttl_s` (a repeat comes within milliseconds of the first request; a stale entry only costs memory) and at most
`max_entries` are kept, least recently used first out. The engine's settings are fixed per process, so they are
not part of the key. Pure: the clock is injected, nothing here knows about Triton.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


def frame_digest(frame: np.ndarray) -> bytes:
    """SHA-256 of a frame's shape, dtype and pixels (a non-contiguous view is copied first)."""
    h = hashlib.sha256(f"{frame.shape}|{frame.dtype.str}|".encode())
    h.update(np.ascontiguousarray(frame).data)
    return h.digest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class PoseCache(Generic[T]):
    """LRU + TTL map from frame digest to a computed value; `max_entries == 0` turns it off (always computes)."""

    def __init__(
        self,
        max_entries: int = 16,
        ttl_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_lookup: Callable[[bool], None] | None = None,
    ):
        if max_entries < 0 or ttl_s < 0:
            raise ValueError("max_entries and ttl_s must be >= 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._on_lookup = on_lookup or (lambda hit: None)
        self._entries: OrderedDict[bytes, tuple[float, T]] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.ttl_s > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_compute(self, frame: np.ndarray, compute: Callable[[], T]) -> T:
        """The cached value for these pixels, else `compute()` (stored only if it returns; errors are not cached)."""
        if not self.enabled:
            self.stats.misses += 1
            self._on_lookup(False)
            return compute()
        key = frame_digest(frame)
        now = self._clock()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and now - hit[0] <= self.ttl_s:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                self._on_lookup(True)
                return hit[1]
            self.stats.misses += 1
        self._on_lookup(False)
        value = compute()
        with self._lock:
            self._entries[key] = (self._clock(), value)
            self._entries.move_to_end(key)
            self._evict(self._clock())
        return value

    def _evict(self, now: float) -> None:
        expired = [k for k, (at, _) in self._entries.items() if now - at > self.ttl_s]
        for key in expired:
            del self._entries[key]
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
