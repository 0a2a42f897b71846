"""chane_tank_monitor: fill of a top-down circular tank from the bright-pixel share of its opening, per stream.

Classical OpenCV, no weights. The pixel work runs outside the stream lock; only the cheap smoothing, calibration
and display update runs inside the shared state store, so several instances can serve one camera and still agree
on its fill. Nothing is written to disk on the request path: per-frame signals go to the log at debug level.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from python_backends.base import InferContext
from python_backends.errors import InvalidInput
from python_backends.vision import RuthModel
from ruth_vision.tank_fill import ChaneConfig, RoiOutsideFrame, bright_fraction, resolve_roi, update

log = logging.getLogger("ruth.model.chane_tank_monitor")


class TritonPythonModel(RuthModel):
    config_schema = ChaneConfig
    stateful = True

    def infer(self, frame: np.ndarray, ctx: InferContext) -> dict[str, Any]:
        cfg: ChaneConfig = ctx.config  # the spec's defaults under the request's CONFIG
        roi = resolve_roi(frame.shape, cfg)
        try:
            signals = bright_fraction(frame, roi, cfg)
        except RoiOutsideFrame as exc:
            raise InvalidInput("CONFIG", f"roi_circle: {exc}") from exc
        result = ctx.advance(lambda state: update(state, signals, ctx.timestamp, cfg))
        log.debug(
            "stream %s: bright_fraction=%.5f smoothed=%s fill_raw=%s display=%s calib=%s",
            ctx.stream_id,
            signals.bright_fraction,
            result["bright_fraction_smoothed"],
            result["fill_raw"],
            result["fill_percentage"],
            result["calib_source"],
        )
        return result
