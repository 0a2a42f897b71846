"""geo_fencing: people's foot points (from the shared pose network) against the stream's zones from CONFIG.

Poses come from `pose_estimator` (BLS). Tracks live in the shared stream store so a zone's minimum dwell is
measured per person on frame time, whichever instance serves the frame (ruth_vision.zones).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from python_backends.base import InferContext, RuthModel
from python_backends.errors import ModelLoadError
from python_backends.gpu import Allocation
from ruth_vision.pose import PoseResult, estimate_via
from ruth_vision.zones import GeoConfig, assess_frame


def spec_defaults(params: Mapping[str, str]) -> GeoConfig:
    """The spec's `parameters` that are GeoConfig fields: this deployment's defaults under each request's CONFIG."""
    values: dict[str, Any] = {}
    for key, raw in params.items():
        if key in GeoConfig.model_fields:
            try:
                values[key] = json.loads(raw)
            except json.JSONDecodeError:
                values[key] = raw
    return GeoConfig.model_validate(values)


class TritonPythonModel(RuthModel):
    config_schema = GeoConfig
    stateful = True

    def load(self, device: Allocation) -> None:
        try:
            self.defaults = spec_defaults(self.params.model)
        except ValueError as exc:
            raise ModelLoadError(f"{self.name}: spec parameters are not a valid GeoConfig: {exc}") from None
        self.pose_model = self.params.model.get("pose_model", "pose_estimator")

    def effective_config(self, requested: Any) -> GeoConfig:
        if isinstance(requested, GeoConfig) and requested.model_fields_set:
            return GeoConfig.model_validate({**self.defaults.model_dump(), **requested.model_dump(exclude_unset=True)})
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
                results.append(self.judge(frame, people, ctx))
            except Exception as exc:
                results.append(exc)
        return results

    def judge(self, frame: np.ndarray, people: list[PoseResult], ctx: InferContext) -> dict[str, Any]:
        config = self.effective_config(ctx.config)
        t = ctx.timestamp.timestamp()
        size = (int(frame.shape[1]), int(frame.shape[0]))
        payload: dict[str, Any] = {}

        def advance(state: dict[str, Any] | None) -> dict[str, Any]:
            new_state, result = assess_frame(state, t, people, size, config)
            payload.clear()
            payload.update(result)
            return new_state

        ctx.update_state(advance)
        payload["metadata"] = {**payload.get("metadata", {}), "pose_model": self.pose_model}
        return payload
