"""geo_fencing: people's foot points (from the shared pose network) against the stream's zones from CONFIG.

Poses come from `pose_estimator` (BLS). Tracks live in the shared stream store so a zone's minimum dwell is
measured per person on frame time, whichever instance serves the frame (ruth_vision.zones).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from python_backends.base import InferContext
from python_backends.pose_client import PersonModel
from ruth_vision.pose import PoseResult
from ruth_vision.zones import GeoConfig, assess_frame


class TritonPythonModel(PersonModel):
    config_schema = GeoConfig
    stateful = True

    def judge(self, frame: np.ndarray, people: list[PoseResult], ctx: InferContext) -> dict[str, Any]:
        config = ctx.config  # the spec's defaults under the request's CONFIG
        t = ctx.timestamp.timestamp()
        size = (int(frame.shape[1]), int(frame.shape[0]))
        return ctx.advance(lambda state: assess_frame(state, t, people, size, config))
