"""The test harness (tests/support.py) reused here: the same server launcher as `ruthctl serve`, the same frames.

Imported through this one module so that the sys.path insert happens in one place.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
_TESTS = str(REPO_ROOT / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from support import (  # noqa: E402  (needs the path above)
    MODEL_REPOSITORY,
    TritonHandle,
    free_port,
    jpeg,
    now_iso,
    result_of,
    start_triton,
    tank_frame,
    vision_inputs,
)

#: tank levels of the frame set every section cycles through (a mix of normal, warning and critical scenes)
FRAME_LEVELS = (15.0, 35.0, 50.0, 65.0, 80.0, 92.0, 97.0, 40.0)
FRAME_SIZE = (480, 640)


def bench_frames(count: int = len(FRAME_LEVELS)) -> list[tuple[bytes, np.ndarray]]:
    """(JPEG bytes, raw BGR frame) pairs, 640x480: the same frames for every model, server and client."""
    out: list[tuple[bytes, np.ndarray]] = []
    for index in range(count):
        raw = tank_frame(FRAME_LEVELS[index % len(FRAME_LEVELS)], size=FRAME_SIZE, seed=index)
        out.append((jpeg(raw), raw))
    return out


__all__ = [
    "MODEL_REPOSITORY",
    "REPO_ROOT",
    "TritonHandle",
    "bench_frames",
    "free_port",
    "jpeg",
    "now_iso",
    "result_of",
    "start_triton",
    "tank_frame",
    "vision_inputs",
]
