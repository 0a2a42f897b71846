"""pose_estimator: the one copy of the pose network that fall_detection, geo_fencing and ppe_detection call (BLS).

Raw contract (docs/pose-estimator.md): FRAME uint8 [B, H, W, 3] BGR in; POSES float32 [B, N, 56] (per person
17 x (x, y, score), x1, y1, x2, y2, score, in the frame's own pixels; zero-padded) and COUNT int32 [B, 1] out.
Which network runs where is the spec's business: `model.engine` auto = LiteRT on a CPU instance, ONNX Runtime with
the CUDA execution provider on a GPU instance; `model.layout` movenet or yolo_pose; weights pinned by SHA-256 in
the spec's `weights` list. A model without its weights fails its load with the fix in the reason. When a GPU
instance is placed on the CPU by the allocator (`fallback`), `auto` picks LiteRT and the log says so: a GPU
deployment running at CPU speed must be visible.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from pydantic import ValidationError

from python_backends.errors import ModelLoadError
from python_backends.gpu import Allocation
from python_backends.raw import RawRuthModel
from python_backends.validation import check_frame_array
from ruth_vision.pose import (
    EngineLoadError,
    MultiScalePose,
    PoseEngineConfig,
    PoseNetwork,
    PoseResult,
    build_engine,
    onnx_providers,
    pack_pose_outputs,
)
from ruth_vision.pose_cache import PoseCache

log = logging.getLogger("ruth.model.pose_estimator")

ENGINE_KEYS = (
    "layout",
    "input_size",
    "min_score",
    "iou_threshold",
    "max_people",
    "threads",
    "extra_input_sizes",
    "tiles",
    "tile_overlap",
    "tile_min_score",
    "rotated_retry",
    "rotated_people",
    "merge_iou",
    "person_detector_size",
    "person_detector_min_score",
)


class TritonPythonModel(RawRuthModel):
    required_inputs = ("FRAME",)
    output_names = ("POSES", "COUNT")

    def load(self, device: Allocation) -> None:
        params = self.params.model
        engine = params.get("engine", "auto")
        if engine == "auto":
            engine = "litert" if device.device == "cpu" else "onnx"
        weights_key = "weights" if engine == "litert" else "onnx_weights"
        relative = params.get(weights_key) or params.get("weights")
        if not relative:
            raise ModelLoadError(f"{self.name}: parameter model.{weights_key} names no weights file")
        path = self.weights_path(relative)  # pinned in the spec, SHA-256 checked
        detector = params.get("person_detector") or None  # a crowd detector, pinned the same way
        try:
            config = PoseEngineConfig.model_validate(
                {
                    "engine": engine,
                    "weights": path,
                    "person_detector": self.weights_path(detector) if detector else None,
                    **{k: params[k] for k in ENGINE_KEYS if k in params},
                }
            )
            self.engine: PoseNetwork | MultiScalePose = build_engine(config, device.device)
            self.engine.infer(np.zeros((config.input_size, config.input_size, 3), np.uint8))  # warm-up, fail early
        except ValidationError as exc:
            raise ModelLoadError(f"{self.name}: invalid pose parameters: {exc.errors(include_url=False)}") from None
        except EngineLoadError as exc:
            raise ModelLoadError(f"{self.name}: {exc}") from None
        self._log_engine(engine, relative, device)
        # One interpreter per process, not re-entrant: a request that overran its deadline may still be running.
        self.lock = threading.Lock()
        # Pose once per frame: fall, geo and ppe send the same pixels of a camera frame (ruth_vision/pose_cache.py).
        try:
            entries, ttl_ms = int(params.get("cache_entries", "16")), int(params.get("cache_ttl_ms", "2000"))
            self.cache: PoseCache[list[PoseResult]] = PoseCache(
                entries, ttl_ms / 1000, on_lookup=self.metrics.pose_cache
            )
        except ValueError as exc:
            raise ModelLoadError(f"{self.name}: invalid model.cache_entries / model.cache_ttl_ms: {exc}") from None
        for hit in (True, False):  # both series exist at zero from the first scrape
            self.metrics.pose_cache(hit, count=0)

    def _log_engine(self, engine: str, weights: str, device: Allocation) -> None:
        runtime = {"litert": "LiteRT", "torch": f"PyTorch on {device.device}"}.get(
            engine, f"ONNX Runtime {onnx_providers(device.device)}"
        )
        if device.placement == "fallback":
            log.warning(
                "%s %s: engine %s (%s, %s) on the CPU because the allocator fell back: %s",
                self.name,
                self.instance,
                engine,
                runtime,
                weights,
                device.reason,
            )
        else:
            log.info(
                "%s %s: engine %s (%s, %s) on %s", self.name, self.instance, engine, runtime, weights, device.device
            )

    def infer_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames = [check_frame_array(frame, self.params.limits) for frame in inputs["FRAME"]]
        with self.lock:
            per_frame = [self.cache.get_or_compute(frame, lambda f=frame: self.engine.infer(f)) for frame in frames]
        return pack_pose_outputs(per_frame)
