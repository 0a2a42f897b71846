"""`PersonModel`: the base of models that judge people found by the shared `pose_estimator` (BLS).

The three person-centric models differ only in how they judge the people in a frame; calling the pose network for
the whole batch (one BLS call per frame size), keeping a pose failure with its own frame, and naming the pose model
in the result's metadata is the same for all of them, so it lives here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from python_backends.base import InferContext
from python_backends.gpu import Allocation
from python_backends.vision import RuthModel
from ruth_vision.pose import PoseResult, estimate_via

POSE_OUTPUTS = ("POSES", "COUNT")


class PersonModel(RuthModel):
    """Subclasses implement `judge(frame, people, ctx)`; the spec parameter `pose_model` names the callee."""

    pose_model: str = "pose_estimator"

    def load(self, device: Allocation) -> None:
        self.pose_model = self.params.model.get("pose_model", "pose_estimator")

    def judge(self, frame: np.ndarray, people: list[PoseResult], ctx: InferContext) -> dict[str, Any]:
        raise NotImplementedError

    def _estimate(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.call_model(self.pose_model, inputs, POSE_OUTPUTS, timeout_s=self.params.inference_timeout_s)

    def poses(self, images: Sequence[np.ndarray]) -> list[list[PoseResult] | Exception]:
        """People in each image by the pose model (one BLS call per image size); a failure stays with its images.
        For a judgement that looks again, e.g. fall_detection on crops around a person it lost."""
        return estimate_via(self._estimate, images)

    def infer_batch(self, frames: Sequence[np.ndarray], ctxs: Sequence[InferContext]) -> list[Any]:
        results: list[Any] = []
        for frame, people, ctx in zip(frames, self.poses(frames), ctxs, strict=True):
            if isinstance(people, Exception):
                results.append(people)
                continue
            try:
                payload = self.judge(frame, people, ctx)
            except Exception as exc:  # noqa: BLE001 - stays with its own frame
                results.append(exc)
                continue
            payload["metadata"] = {**payload.get("metadata", {}), "pose_model": self.pose_model}
            results.append(payload)
        return results
