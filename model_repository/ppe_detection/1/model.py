"""ppe_detection: hard hat and hi-vis vest per person, judged in keypoint-guided regions.

Poses come from `pose_estimator` (BLS). What decides an item is the spec's `model.detector`: `colour` (default, no
weights: ruth_vision.ppe's colour rules) or `onnx`, a user-supplied YOLOv8-detect export pinned in the spec's
`weights` (ruth_vision.ppe_detector), whose boxes count for the person whose head or torso they cover. Stateless:
every frame is judged on its own pixels, so any instance serves any frame.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pydantic import ValidationError

from python_backends.base import InferContext
from python_backends.errors import ModelLoadError
from python_backends.gpu import Allocation
from python_backends.pose_client import PersonModel
from ruth_vision.pose import EngineLoadError, PoseResult
from ruth_vision.ppe import PpeConfig, assess_frame
from ruth_vision.ppe_detector import PpeDetector, PpeDetectorConfig, assess_frame_detected, build_ppe_detector

log = logging.getLogger("ruth.model.ppe_detection")


class TritonPythonModel(PersonModel):
    config_schema = PpeConfig
    stateful = False

    detector: PpeDetector | None = None
    min_overlap: float = 0.25

    def load(self, device: Allocation) -> None:
        super().load(device)
        params = self.params.model
        kind = params.get("detector", "colour")
        if kind == "colour":
            return
        if kind != "onnx":
            raise ModelLoadError(f"{self.name}: model.detector must be colour or onnx, got {kind!r}")
        relative = params.get("detector_weights")
        if not relative:
            raise ModelLoadError(f"{self.name}: model.detector is onnx but model.detector_weights names no file")
        path = self.weights_path(relative)  # pinned in the spec, SHA-256 checked
        try:
            config = PpeDetectorConfig.from_params(path, params)
            self.detector = build_ppe_detector(config, device.device)
        except ValidationError as exc:
            raise ModelLoadError(f"{self.name}: invalid detector parameters: {exc.errors(include_url=False)}") from None
        except (EngineLoadError, ValueError, OSError) as exc:
            raise ModelLoadError(f"{self.name}: PPE detector {relative}: {exc}") from None
        self.min_overlap = config.min_overlap
        log.info(
            "%s %s: PPE detector %s (classes %s) on %s",
            self.name,
            self.instance,
            relative,
            config.classes,
            device.device,
        )

    def judge(self, frame: np.ndarray, people: list[PoseResult], ctx: InferContext) -> dict[str, Any]:
        if self.detector is None:
            return assess_frame(frame, people, ctx.config)  # the spec's defaults under the request's CONFIG
        return assess_frame_detected(frame, people, ctx.config, self.detector, self.min_overlap)
