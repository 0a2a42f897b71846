"""`RawRuthModel`: models called with plain tensors (e.g. `pose_estimator` behind BLS): the same guards as every
model (breaker, watchdog, metrics, per-request errors), no wire-contract decoding."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar

import numpy as np

from python_backends import triton
from python_backends.base import GuardedModel, InferContext, WorkItem
from python_backends.errors import (
    InvalidInput,
    ModelLoadError,
)
from python_backends.gpu import Allocation

log = logging.getLogger("ruth.model")


class RawRuthModel(GuardedModel):
    """Base of models called with plain tensors (e.g. `pose_estimator` behind BLS): same guards, no decoding."""

    #: inputs every request must carry
    required_inputs: ClassVar[tuple[str, ...]] = ()
    #: outputs the model produces
    output_names: ClassVar[tuple[str, ...]] = ()

    def check_contract(self, model_config: Mapping[str, Any]) -> None:
        inputs = {i["name"] for i in model_config.get("input", [])}
        outputs = {o["name"] for o in model_config.get("output", [])}
        missing = [n for n in self.required_inputs if n not in inputs]
        missing += [f"output {n}" for n in self.output_names if n not in outputs]
        if missing:
            raise ModelLoadError(f"{self.name}: config.pbtxt lacks {', '.join(missing)}")

    def infer_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def infer_tensors_batch(self, batch: Sequence[dict[str, np.ndarray]]) -> list[Any]:
        results: list[Any] = []
        for inputs in batch:
            try:
                results.append(self.infer_tensors(inputs))
            except Exception as exc:
                results.append(exc)
        return results

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        try:
            pb = triton.pb()
            items: list[WorkItem] = []
            errors: dict[int, BaseException] = {}
            for index, request in enumerate(requests):
                try:
                    tensors = {t.name(): t.as_numpy() for t in request.inputs()}
                    missing = [n for n in self.required_inputs if n not in tensors]
                    if missing:
                        raise InvalidInput(missing[0], "required input missing")
                    items.append(WorkItem(index, np.empty(0), _RAW_CTX, time.perf_counter(), result=tensors))
                except Exception as exc:
                    errors[index] = exc
            self._run_guarded(items, self._work)
            by_request = {item.request_index: item for item in items}  # one item per request here
            for index in range(len(requests)):
                error = errors.get(index) or (by_request[index].error if index in by_request else None)
                if error is None:
                    item = by_request[index]
                    outputs = [pb.Tensor(name, np.ascontiguousarray(value)) for name, value in item.result.items()]
                    responses[index] = pb.InferenceResponse(output_tensors=outputs)
                else:
                    responses[index] = self._error_response(error)
                self._count(error)
            self._report_health()
        except BaseException as exc:
            self._answer_unanswered(responses, exc)
        return responses

    def _work(self, items: list[WorkItem]) -> None:
        if not items:
            return
        self._settle(items, self.infer_tensors_batch([i.result for i in items]), "infer_tensors_batch")


_RAW_CTX = InferContext(
    stream_id="",
    timestamp=datetime.fromtimestamp(0, tz=timezone.utc),
    config=None,
    metadata={},
    params={},
    device=Allocation(device="cpu", placement="cpu", device_index=None, reserved_bytes=0, reason="", owner=None),
    request_id="",
)
