"""`RuthModel`: the base of every vision model speaking the wire contract of docs/contract.md.

A concrete model declares its CONFIG schema and implements `infer(frame, ctx)` (and `load(device)` if it has
weights). This class implements the hooks of the execute template of `GuardedModel` (python_backends/base.py):
`decode` validates each request (possibly a client-side batch of frames) and puts the spec's defaults under the
request's CONFIG, `run_batch` hands the frames to `infer_batch`, and `encode` makes one RESULT per frame,
validated against the contract's schema.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from python_backends import contract, triton
from python_backends.base import GuardedModel, InferContext, WorkItem
from python_backends.errors import (
    InvalidInput,
    ModelLoadError,
    StreamStoreUnavailable,
)
from python_backends.params import config_defaults
from python_backends.streams import StreamStore
from python_backends.validation import (
    ValidatedRequest,
    check_config_against_frame,
    validate_config,
    validate_request,
    validate_request_id,
)

log = logging.getLogger("ruth.model")


#: what a vision work item carries to `infer_batch`: the decoded frame and what the model knows about it
VisionPayload = tuple[np.ndarray, InferContext]


class RuthModel(GuardedModel[VisionPayload]):
    """Base of every vision model speaking the wire contract of docs/contract.md."""

    #: pydantic model that validates the request's CONFIG JSON (None: any JSON object)
    config_schema: ClassVar[type[BaseModel] | None] = None
    #: True gives `ctx.update_state()`, backed by a store shared by all instances of the model
    stateful: ClassVar[bool] = False

    streams: StreamStore | None = None

    def setup_state(self) -> None:
        self._stream_updates = 0
        self.config_defaults: BaseModel | None = None
        if self.config_schema is not None:
            self.config_defaults = config_defaults(self.config_schema, self.params.model)
            self._defaults_dump = self.config_defaults.model_dump(mode="json")
        if self.stateful:
            state = self.params.runtime.state
            self.streams = self.runtime.open_streams(
                f"{self.name}-{self.version}", max_streams=state.max_streams, idle_ttl_s=state.idle_ttl_s
            )
            log.info(
                "%s v%s: stream state in %s", self.name, self.version, self.runtime.settings.stream_store.describe()
            )

    def finalize_model(self) -> None:
        if self.streams is not None:
            self.streams.close()

    def check_contract(self, model_config: Mapping[str, Any]) -> None:
        inputs = {i["name"]: i for i in model_config.get("input", [])}
        outputs = {o["name"] for o in model_config.get("output", [])}
        missing = [n for n in (contract.STREAM_ID, contract.TIMESTAMP) if n not in inputs]
        if not (contract.IMAGE in inputs or contract.FRAME in inputs):
            missing.append("IMAGE or FRAME")
        if contract.RESULT not in outputs:
            missing.append("output RESULT")
        if missing:
            raise ModelLoadError(f"{self.name}: config.pbtxt breaks the wire contract, missing {', '.join(missing)}")
        if int(model_config.get("max_batch_size", 0)) < 1:
            raise ModelLoadError(f"{self.name}: the wire contract needs max_batch_size >= 1 (batch dimension first)")

    # ---- the hooks a vision model implements -----------------------------------------------------------------
    def infer(self, frame: np.ndarray, ctx: InferContext) -> dict[str, Any]:
        raise NotImplementedError

    def infer_batch(self, frames: Sequence[np.ndarray], ctxs: Sequence[InferContext]) -> list[Any]:
        """Default: one `infer` per frame; a failure stays with its own frame."""
        results: list[Any] = []
        for frame, ctx in zip(frames, ctxs, strict=True):
            try:
                results.append(self.infer(frame, ctx))
            except Exception as exc:
                results.append(exc)
        return results

    # ---- the hooks of the execute template (python_backends/base.py) ------------------------------------------
    batch_hook = "infer_batch"

    def run_batch(self, payloads: list[VisionPayload]) -> Sequence[Any]:
        return self.infer_batch([frame for frame, _ in payloads], [ctx for _, ctx in payloads])

    def decode(self, index: int, request: Any) -> list[WorkItem[VisionPayload]]:
        """Validate and decode one request (possibly carrying a client-side batch of several frames)."""
        pb = triton.pb()

        def tensor(name: str) -> np.ndarray | None:
            t = pb.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        image, frame = tensor(contract.IMAGE), tensor(contract.FRAME)
        stream, stamp = tensor(contract.STREAM_ID), tensor(contract.TIMESTAMP)
        config, metadata = tensor(contract.CONFIG), tensor(contract.METADATA)
        batch = _batch_size(image, frame, stream)
        client_id = request.request_id()
        request_id = validate_request_id(client_id) if client_id else uuid.uuid4().hex
        now = datetime.fromtimestamp(self.clock(), tz=timezone.utc)
        items = []
        for row in range(batch):
            validated = validate_request(
                image=_bytes_at(image, row, contract.IMAGE),
                frame=_frame_at(frame, row),
                stream_id=_text_at(stream, row, contract.STREAM_ID),
                timestamp=_text_at(stamp, row, contract.TIMESTAMP),
                config=_bytes_at(config, row, contract.CONFIG),
                metadata=_bytes_at(metadata, row, contract.METADATA),
                limits=self.params.limits,
                now=now,
                config_schema=self.config_schema,
            )
            ctx = self._context(validated, request_id)
            check_config_against_frame(ctx.config, int(validated.frame.shape[1]), int(validated.frame.shape[0]))
            items.append(
                WorkItem(
                    index,
                    (validated.frame, ctx),
                    time.perf_counter(),
                    client_config=ctx.client_config,
                    stream_id=ctx.stream_id,
                )
            )
        return items

    def _effective_config(self, requested: Any) -> Any:
        """The spec's defaults under the request's CONFIG, field by field (cross-field rules checked on the merge)."""
        if self.config_defaults is None or not isinstance(requested, BaseModel):
            return requested
        if not requested.model_fields_set:
            return self.config_defaults
        merged = {**self._defaults_dump, **requested.model_dump(mode="json", exclude_unset=True)}
        return validate_config(merged, self.config_schema)

    def _context(self, validated: ValidatedRequest, request_id: str) -> InferContext:
        config = self._effective_config(validated.config)
        config_key = ""
        updater = None
        if self.streams is not None:
            dumped = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
            config_key = hashlib.sha1(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]
            updater = self._update_stream
        return InferContext(
            stream_id=validated.stream_id,
            timestamp=validated.timestamp,
            config=config,
            metadata=validated.metadata,
            params=self.params.model,
            device=self.device,
            request_id=request_id,
            _update_state=updater,
            _config_key=config_key,
            client_config=bool(
                validated.config.model_fields_set if isinstance(validated.config, BaseModel) else validated.config
            ),
        )

    def _update_stream(
        self, stream_id: str, config_key: str, fn: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]:
        assert self.streams is not None
        state = self.streams.update(stream_id, config_key, fn)
        self._stream_updates += 1
        if self._stream_updates % 100 == 1:
            with contextlib.suppress(StreamStoreUnavailable):  # the frame is stored; the gauge waits for the next
                self.metrics.stream_states(self.streams.count())
        return state

    def encode(self, items: list[WorkItem[VisionPayload]]) -> Any:
        pb = triton.pb()
        encoded = []
        for item in items:
            ctx = item.payload[1]
            metadata = {
                "model_name": self.name,
                "model_version": self.version,
                "inference_time_ms": round((time.perf_counter() - item.received) * 1000.0, 3),
                "stream_id": ctx.stream_id,
                "timestamp": ctx.timestamp.isoformat(),
                "device": self.device.device,
                "placement": self.device.placement,
                "request_id": ctx.request_id,
            }
            encoded.append([contract.encode_result(item.result, metadata)])
        out = pb.Tensor(contract.RESULT, np.array(encoded, dtype=np.object_))
        return pb.InferenceResponse(output_tensors=[out])


# ---- tensor helpers: requests carry a batch dimension first ([B, 1] strings, [B, H, W, 3] frames) -----------------
def _batch_size(image: np.ndarray | None, frame: np.ndarray | None, stream: np.ndarray | None) -> int:
    for tensor in (image, frame, stream):
        if tensor is not None and tensor.ndim >= 1:
            return max(int(tensor.shape[0]), 1)
    return 1


def _bytes_at(tensor: np.ndarray | None, row: int, name: str) -> bytes | None:
    if tensor is None:
        return None
    flat = tensor.reshape(tensor.shape[0], -1) if tensor.ndim >= 1 and tensor.shape[0] > row else None
    if flat is None or flat.shape[1] < 1:
        raise InvalidInput(name, f"expected shape [batch, 1], got {list(tensor.shape)}")
    value = flat[row, 0]
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise InvalidInput(name, f"expected TYPE_STRING bytes, got {type(value).__name__}")


def _text_at(tensor: np.ndarray | None, row: int, name: str) -> str | None:
    raw = _bytes_at(tensor, row, name)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(name, "must be UTF-8 text") from exc


def _frame_at(tensor: np.ndarray | None, row: int) -> np.ndarray | None:
    if tensor is None:
        return None
    if tensor.ndim != 4:
        raise InvalidInput(contract.FRAME, f"expected shape [batch, H, W, 3] uint8, got {list(tensor.shape)}")
    return tensor[row]
