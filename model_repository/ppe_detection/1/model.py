"""ppe_detection: hard hat and hi-vis vest per person, judged by colour in keypoint-guided regions.

Poses come from `pose_estimator` (BLS); the pixel work is ruth_vision.ppe. Stateless: every frame is judged on
its own pixels, so any instance serves any frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from python_backends.base import InferContext
from python_backends.pose_client import PersonModel
from ruth_vision.pose import PoseResult
from ruth_vision.ppe import PpeConfig, assess_frame


class TritonPythonModel(PersonModel):
    config_schema = PpeConfig
    stateful = False

    def judge(self, frame: np.ndarray, people: list[PoseResult], ctx: InferContext) -> dict[str, Any]:
        return assess_frame(frame, people, ctx.config)  # the spec's defaults under the request's CONFIG
