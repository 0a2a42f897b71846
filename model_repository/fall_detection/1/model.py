"""fall_detection: people's posture from the shared pose network, judged over time per camera stream.

Poses come from `pose_estimator` (BLS, one call per batch of same-sized frames). The tracker state of each stream
lives in the shared stream store, so any instance can take the stream's next frame; decisions use the frames'
own TIMESTAMPs (ruth_vision.fall), so late or bursty delivery doesn't change them. A person tracked on the way down
and missing from this frame is looked for again on crops around where they were (ruth_vision.fall_search).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from python_backends.base import InferContext
from python_backends.pose_client import PersonModel
from ruth_vision.fall import FallConfig
from ruth_vision.fall_search import assess_and_search, search_lost
from ruth_vision.pose import PoseResult


class TritonPythonModel(PersonModel):
    config_schema = FallConfig
    stateful = True

    def judge(self, frame: np.ndarray, people: list[PoseResult], ctx: InferContext) -> dict[str, Any]:
        config = ctx.config  # the spec's defaults under the request's CONFIG
        t = ctx.timestamp.timestamp()
        payload, searches = ctx.advance(lambda state: assess_and_search(state, t, people, config, frame.shape))
        found = search_lost(frame, searches, people, self.poses, config) if searches else {}
        if found:  # the found people continue their tracks: this frame judged again with them
            payload, _ = ctx.advance(lambda state: assess_and_search(state, t, people, config, frame.shape, found))
        payload["metadata"] = {"persons_detected": len(people) + len(found), "lost_searched": len(searches)}
        return payload
