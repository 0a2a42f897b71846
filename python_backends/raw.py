"""`RawRuthModel`: models called with plain tensors (e.g. `pose_estimator` behind BLS): the same guards, metrics and
error mapping as every model (the execute template of python_backends/base.py), no wire-contract decoding."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from python_backends import triton
from python_backends.base import GuardedModel, WorkItem
from python_backends.errors import InvalidInput, ModelLoadError

log = logging.getLogger("ruth.model")

#: what a raw work item carries to `infer_tensors_batch`: the request's input tensors by name
Tensors = dict[str, np.ndarray]


class RawRuthModel(GuardedModel[Tensors]):
    """Base of models called with plain tensors (e.g. `pose_estimator` behind BLS): same guards, no decoding."""

    #: inputs every request must carry
    required_inputs: ClassVar[tuple[str, ...]] = ()
    #: outputs the model produces
    output_names: ClassVar[tuple[str, ...]] = ()
    batch_hook = "infer_tensors_batch"

    def check_contract(self, model_config: Mapping[str, Any]) -> None:
        inputs = {i["name"] for i in model_config.get("input", [])}
        outputs = {o["name"] for o in model_config.get("output", [])}
        missing = [n for n in self.required_inputs if n not in inputs]
        missing += [f"output {n}" for n in self.output_names if n not in outputs]
        if missing:
            raise ModelLoadError(f"{self.name}: config.pbtxt lacks {', '.join(missing)}")

    # ---- the hooks a raw model implements ---------------------------------------------------------------------
    def infer_tensors(self, inputs: Tensors) -> Tensors:
        raise NotImplementedError

    def infer_tensors_batch(self, batch: Sequence[Tensors]) -> list[Any]:
        """Default: one `infer_tensors` per request; a failure stays with its own request."""
        results: list[Any] = []
        for inputs in batch:
            try:
                results.append(self.infer_tensors(inputs))
            except Exception as exc:
                results.append(exc)
        return results

    # ---- the hooks of the execute template (python_backends/base.py) ------------------------------------------
    def decode(self, index: int, request: Any) -> list[WorkItem[Tensors]]:
        tensors = {t.name(): t.as_numpy() for t in request.inputs()}
        missing = [n for n in self.required_inputs if n not in tensors]
        if missing:
            raise InvalidInput(missing[0], "required input missing")
        return [WorkItem(index, tensors, time.perf_counter())]

    def run_batch(self, payloads: list[Tensors]) -> Sequence[Any]:
        return self.infer_tensors_batch(payloads)

    def encode(self, items: list[WorkItem[Tensors]]) -> Any:
        pb = triton.pb()
        (item,) = items  # one item per request
        outputs = [pb.Tensor(name, np.ascontiguousarray(value)) for name, value in item.result.items()]
        return pb.InferenceResponse(output_tensors=outputs)
