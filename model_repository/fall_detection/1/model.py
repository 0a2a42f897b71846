"""fall_detection: people's posture from the shared pose network, judged over time per camera stream.

Poses come from `pose_estimator` (BLS, one call per batch of same-sized frames). The tracker state of each stream
lives in the shared stream store, so any instance can take the stream's next frame; decisions use the frames'
own TIMESTAMPs (ruth_vision.fall), so late or bursty delivery doesn't change them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from python_backends.base import InferContext, RuthModel
from python_backends.errors import ModelLoadError
from python_backends.gpu import Allocation
from ruth_vision.fall import FallConfig, assess_frame
from ruth_vision.pose import PoseResult, estimate_via


def spec_defaults(params: Mapping[str, str]) -> FallConfig:
    """The spec's `parameters` that are FallConfig fields: this deployment's defaults under each request's CONFIG."""
    values: dict[str, Any] = {}
    for key, raw in params.items():
        if key in FallConfig.model_fields:
            try:
                values[key] = json.loads(raw)
            except json.JSONDecodeError:
                values[key] = raw
    return FallConfig.model_validate(values)


class TritonPythonModel(RuthModel):
    config_schema = FallConfig
    stateful = True

    def load(self, device: Allocation) -> None:
        try:
            self.defaults = spec_defaults(self.params.model)
        except ValueError as exc:
            raise ModelLoadError(f"{self.name}: spec parameters are not a valid FallConfig: {exc}") from None
        self.pose_model = self.params.model.get("pose_model", "pose_estimator")

    def effective_config(self, requested: Any) -> FallConfig:
        if isinstance(requested, FallConfig) and requested.model_fields_set:
            return FallConfig.model_validate({**self.defaults.model_dump(), **requested.model_dump(exclude_unset=True)})
        return self.defaults

    def _estimate(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.call_model(self.pose_model, inputs, ["POSES", "COUNT"], timeout_s=self.params.inference_timeout_s)

    def infer_batch(self, frames: Sequence[np.ndarray], ctxs: Sequence[InferContext]) -> list[Any]:
        results: list[Any] = []
        for people, ctx in zip(estimate_via(self._estimate, frames), ctxs, strict=True):
            if isinstance(people, Exception):
                results.append(people)
                continue
            try:
                results.append(self.judge(people, ctx))
            except Exception as exc:
                results.append(exc)
        return results

    def judge(self, people: list[PoseResult], ctx: InferContext) -> dict[str, Any]:
        config = self.effective_config(ctx.config)
        t = ctx.timestamp.timestamp()
        payload: dict[str, Any] = {}

        def advance(state: dict[str, Any] | None) -> dict[str, Any]:
            new_state, result = assess_frame(state, t, people, config)
            payload.clear()
            payload.update(result)
            return new_state

        ctx.update_state(advance)
        payload["metadata"] = {"pose_model": self.pose_model, "persons_detected": len(people)}
        return payload
