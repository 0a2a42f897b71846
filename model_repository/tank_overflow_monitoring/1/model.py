"""tank_overflow_monitoring: liquid level from the tank's surface line, smoothed per camera stream.

Classical OpenCV, no weights. The pixel work runs outside the stream lock; only the cheap moving-mean update
runs inside the shared state store, so several instances can serve one camera and still agree on its level.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from python_backends.base import InferContext
from python_backends.errors import InvalidInput
from python_backends.vision import RuthModel
from ruth_vision.tank_level import RoiOutsideFrame, TankConfig, build_result, measure_surface, smooth


class TritonPythonModel(RuthModel):
    config_schema = TankConfig
    stateful = True

    def infer(self, frame: np.ndarray, ctx: InferContext) -> dict[str, Any]:
        cfg: TankConfig = ctx.config  # the spec's defaults under the request's CONFIG
        try:
            measurement = measure_surface(frame, cfg)
        except RoiOutsideFrame as exc:
            raise InvalidInput("CONFIG", f"tank_corners: {exc}") from exc
        smoothed = ctx.advance(lambda state: smooth(state, measurement, ctx.timestamp, cfg))
        return build_result(measurement, smoothed, cfg)
