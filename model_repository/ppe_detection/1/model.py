"""ppe_detection: hard hat and hi-vis vest per person, judged by colour in keypoint-guided regions.

Poses come from `pose_estimator` (BLS); the pixel work is ruth_vision.ppe. Stateless: every frame is judged on
its own pixels, so any instance serves any frame.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from python_backends.base import InferContext, RuthModel
from python_backends.errors import ModelLoadError
from python_backends.gpu import Allocation
from ruth_vision.pose import estimate_via
from ruth_vision.ppe import PpeConfig, assess_frame


def spec_defaults(params: Mapping[str, str]) -> PpeConfig:
    """The spec's `parameters` that are PpeConfig fields: this deployment's defaults under each request's CONFIG."""
    values: dict[str, Any] = {}
    for key, raw in params.items():
        if key in PpeConfig.model_fields:
            try:
                values[key] = json.loads(raw)
            except json.JSONDecodeError:
                values[key] = raw
    return PpeConfig.model_validate(values)


class TritonPythonModel(RuthModel):
    config_schema = PpeConfig
    stateful = False

    def load(self, device: Allocation) -> None:
        try:
            self.defaults = spec_defaults(self.params.model)
        except ValueError as exc:
            raise ModelLoadError(f"{self.name}: spec parameters are not a valid PpeConfig: {exc}") from None
        self.pose_model = self.params.model.get("pose_model", "pose_estimator")

    def effective_config(self, requested: Any) -> PpeConfig:
        if isinstance(requested, PpeConfig) and requested.model_fields_set:
            return PpeConfig.model_validate({**self.defaults.model_dump(), **requested.model_dump(exclude_unset=True)})
        return self.defaults

    def _estimate(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.call_model(self.pose_model, inputs, ["POSES", "COUNT"], timeout_s=self.params.inference_timeout_s)

    def infer_batch(self, frames: Sequence[np.ndarray], ctxs: Sequence[InferContext]) -> list[Any]:
        results: list[Any] = []
        for frame, people, ctx in zip(frames, estimate_via(self._estimate, frames), ctxs, strict=True):
            if isinstance(people, Exception):
                results.append(people)
                continue
            try:
                payload = assess_frame(frame, people, self.effective_config(ctx.config))
                payload["metadata"] = {"pose_model": self.pose_model}
                results.append(payload)
            except Exception as exc:
                results.append(exc)
        return results
