"""tank_overflow_monitoring: liquid level from the tank's surface line, smoothed per camera stream.

Classical OpenCV, no weights. The pixel work runs outside the stream lock; only the cheap moving-mean update
runs inside the shared state store, so several instances can serve one camera and still agree on its level.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from python_backends.base import InferContext, RuthModel
from python_backends.errors import InvalidInput
from python_backends.gpu import Allocation
from ruth_vision.tank_level import RoiOutsideFrame, TankConfig, build_result, measure_surface, smooth


class TritonPythonModel(RuthModel):
    config_schema = TankConfig
    stateful = True

    def load(self, device: Allocation) -> None:
        # The spec's parameters are the deployment's defaults; a request's CONFIG overrides them field by field.
        defaults = {k: v for k, v in self.params.model.items() if k in TankConfig.model_fields}
        self.defaults = TankConfig.model_validate(defaults)

    def effective_config(self, requested: TankConfig | dict[str, Any]) -> TankConfig:
        if isinstance(requested, TankConfig) and requested.model_fields_set:
            return self.defaults.model_validate(
                {**self.defaults.model_dump(), **requested.model_dump(exclude_unset=True)}
            )
        return self.defaults

    def infer(self, frame: np.ndarray, ctx: InferContext) -> dict[str, Any]:
        cfg = self.effective_config(ctx.config)
        try:
            measurement = measure_surface(frame, cfg)
        except RoiOutsideFrame as exc:
            raise InvalidInput("CONFIG", f"tank_corners: {exc}") from exc
        smoothed: list[float | None] = [None]

        def advance(state: dict[str, Any] | None) -> dict[str, Any]:
            new_state, smoothed[0] = smooth(state, measurement, ctx.timestamp, cfg)
            return new_state

        ctx.update_state(advance)
        return build_result(measurement, smoothed[0], cfg)
