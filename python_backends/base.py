"""`RuthModel`: the `TritonPythonModel` template method every model file stands on.

A concrete model declares its CONFIG schema and implements `load(device)` and `infer(frame, ctx)`. This class
owns everything else: config parsing, device allocation, decoding and validation, the circuit breaker, the
watchdog, fault injection, per-stream state, result encoding and metrics.

The execute contract is sacred (python_backend README, "Default Mode"): exactly one response per request, in
order, and `execute()` never raises. An exception escaping `execute()` fails every request of the batch and can
hang the model's unload (triton-2.51-behaviour.md §8.3), so the outermost `try` turns anything into per-request
INTERNAL errors.
"""

from __future__ import annotations

import dataclasses
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

from python_backends import contract, logs, triton
from python_backends.breaker import CircuitBreaker, FileBreakerStorage
from python_backends.errors import (
    BreakerOpen,
    InferenceTimeout,
    Internal,
    InvalidInput,
    ModelLoadError,
    RuthError,
    Unavailable,
    counts_as_failure,
    outcome_for,
    triton_code_for,
)
from python_backends.faults import FaultInjector, InjectedFault
from python_backends.gpu import Allocation, DeviceAllocator, GpuLedger, NoGpuProbe, default_probe
from python_backends.metrics import BreakerMetricsListener, MetricsSink, NullMetrics, TritonMetrics
from python_backends.params import ModelParams, RuntimeEnv, config_defaults, parameters_of
from python_backends.rwlock import FairRWLock
from python_backends.streams import StreamStateStore
from python_backends.validation import ValidatedRequest, validate_config, validate_request
from python_backends.watchdog import Watchdog

log = logging.getLogger("ruth.model")

OPTIONAL_STRING_INPUTS = (contract.CONFIG, contract.METADATA)


@dataclasses.dataclass
class InferContext:
    """What a model's `infer` knows about the request besides the pixels."""

    stream_id: str
    timestamp: datetime
    config: Any
    metadata: dict[str, Any]
    params: Mapping[str, str]
    device: Allocation
    request_id: str
    _update_state: Callable[[str, str, Callable[[dict[str, Any] | None], dict[str, Any]]], dict[str, Any]] | None = (
        dataclasses.field(default=None, repr=False)
    )
    _config_key: str = dataclasses.field(default="", repr=False)

    def update_state(self, fn: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
        """Atomic read-modify-write of this stream's state, shared by every instance of the model."""
        if self._update_state is None:
            raise Internal("model is not declared stateful but called update_state()")
        return self._update_state(self.stream_id, self._config_key, fn)


@dataclasses.dataclass
class _Item:
    """One frame of one request on its way through execute()."""

    request_index: int
    frame: np.ndarray
    ctx: InferContext
    received: float
    result: Any = None
    error: BaseException | None = None


class _GuardedModel:
    """What vision and raw-contract models share: lifecycle, breaker, watchdog, metrics, device."""

    #: memory the model needs on its device, when the spec gives none
    default_memory_estimate_mb: ClassVar[int] = 256

    name: str
    version: str
    instance: str
    params: ModelParams
    device: Allocation
    metrics: MetricsSink

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def initialize(self, args: Mapping[str, str]) -> None:
        logs.configure()
        self.model_config: dict[str, Any] = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.version = str(args.get("model_version", "1"))
        self.instance = args.get("model_instance_name", f"{self.name}_0")
        self.env = RuntimeEnv.from_env()
        self.params = ModelParams.parse(parameters_of(self.model_config))
        self.clock: Callable[[], float] = time.time
        self.metrics = (
            TritonMetrics(self.name, self.version, self.instance) if self.env.metrics_enabled else NullMetrics()
        )
        self.check_contract(self.model_config)
        self._allocator = self._make_allocator()
        self.device = self._allocator.allocate(
            model=self.name,
            version=self.version,
            instance=self.instance,
            instance_kind=str(args.get("model_instance_kind", "CPU")),
            device_id=int(args.get("model_instance_device_id", "0") or 0),
            memory_estimate_mb=self.params.memory_estimate_mb,
        )
        log.info(
            "%s v%s %s: device %s (%s) — %s",
            self.name,
            self.version,
            self.instance,
            self.device.device,
            self.device.placement,
            self.device.reason,
        )
        self.metrics.device(self.device.placement, self.device.reserved_bytes)
        breaker_file = self.env.state_dir / "breakers" / f"{self.name}-{self.version}.json"
        self.breaker = CircuitBreaker(
            f"{self.name}:{self.version}",
            self.params.breaker,
            FileBreakerStorage(breaker_file),
            listeners=[BreakerMetricsListener(self.metrics)],
        )
        self.metrics.breaker(self.breaker.state, tripped=False)
        self.watchdog = Watchdog(f"{self.name}:{self.version}", zombie_limit=self.params.zombie_limit)
        self.faults = FaultInjector(self.params.faults) if self.params.faults.enabled else None
        #: readers: every inference; writer: `swap_resources` (weights replaced while requests run)
        self.resources_lock = FairRWLock()
        try:
            self.setup_state()
            self.load(self.device)
        except ModelLoadError:
            self._allocator.release(self.device)
            raise
        except Exception as exc:
            self._allocator.release(self.device)
            raise ModelLoadError(f"{self.name}: load failed: {type(exc).__name__}: {exc}") from exc
        self._report_health()

    def _make_allocator(self) -> DeviceAllocator:
        probe = default_probe() if self.env.enable_gpu else NoGpuProbe()
        ledger = GpuLedger(self.env.state_dir / "gpu-ledger.json")
        return DeviceAllocator(
            probe,
            ledger,
            enable_gpu=self.env.enable_gpu,
            fallback_to_cpu=self.env.fallback_to_cpu,
            reserve_mb=self.env.reserve_mb,
        )

    def setup_state(self) -> None:
        """Hook for stateful models (vision base opens the stream store)."""

    def finalize(self) -> None:
        """Drain with a deadline, release the device, close state. Safe to call twice."""
        try:
            watchdog = getattr(self, "watchdog", None)
            if watchdog is not None:
                left = watchdog.shutdown(wait_s=min(self.params.inference_timeout_s, 5.0))
                if left:
                    log.warning("%s: %d zombie inference(s) still running at finalize", self.name, left)
            self.finalize_model()
        finally:
            allocator: DeviceAllocator | None = getattr(self, "_allocator", None)
            if allocator is not None:
                allocator.release(self.device)
                del self._allocator
            log.info(
                "%s v%s %s: finalized",
                getattr(self, "name", "?"),
                getattr(self, "version", "?"),
                getattr(self, "instance", "?"),
            )

    # ---- hooks for concrete models ------------------------------------------------------------------------------
    def check_contract(self, model_config: Mapping[str, Any]) -> None:
        """Raise ModelLoadError when the loaded config doesn't match what this model needs."""

    def load(self, device: Allocation) -> None:
        """Load weights/resources onto `device`. Raise ModelLoadError with a reason that says how to fix it."""

    def finalize_model(self) -> None:
        """Release the model's own resources."""

    # ---- the guarded run -----------------------------------------------------------------------------------------
    def _run_guarded(self, items: list[_Item], work: Callable[[list[_Item]], None]) -> None:
        """Admit each item through the breaker, run `work` under the watchdog, record outcomes per item."""
        admitted: list[tuple[_Item, Any]] = []
        for item in items:
            try:
                admitted.append((item, self.breaker.admit()))
            except BreakerOpen as exc:
                item.error = exc
        if not admitted:
            return
        running = [item for item, _ in admitted]

        def watched() -> None:
            if self.faults is not None:  # inside the watchdog: an injected hang must hit the deadline like a real one
                self._inject_faults(running)
            with self.resources_lock.read():
                work([i for i in running if i.error is None])

        started = time.perf_counter()
        try:
            self.watchdog.run(watched, self.params.inference_timeout_s)
        except InferenceTimeout as exc:
            self.metrics.watchdog_timeout()
            for item in running:
                item.error = exc
        except Exception as exc:  # the model's own failure: every item of this run shares it
            wrapped = exc if isinstance(exc, RuthError) else Internal(f"{type(exc).__name__}: {exc}")
            for item in running:
                if item.error is None:
                    item.error = wrapped
        elapsed = time.perf_counter() - started
        for item, admission in admitted:
            self.metrics.inference_latency(elapsed)
            if item.error is not None and counts_as_failure(item.error):
                self.breaker.record_failure(admission)
            else:
                self.breaker.record_success(admission)
        self.metrics.zombies(self.watchdog.zombies)

    def _inject_faults(self, items: list[_Item]) -> None:
        assert self.faults is not None
        for item in items:
            try:
                self.faults.apply()
            except InjectedFault as exc:
                item.error = Internal(f"injected fault: {exc}")

    def _report_health(self) -> None:
        snapshot_state = self.breaker.state.value
        if snapshot_state == "open" or not self.watchdog.healthy:
            value = -1
        elif snapshot_state == "half_open":
            value = 0
        else:
            value = 1
        self.metrics.health(value)

    def _error_response(self, error: BaseException) -> Any:
        pb = triton.pb()
        code = getattr(pb.TritonError, triton_code_for(error).value)
        message = str(error) if isinstance(error, RuthError) else f"internal error: {type(error).__name__}: {error}"
        return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, code))

    def _count(self, error: BaseException | None) -> None:
        self.metrics.request(outcome_for(error))
        if isinstance(error, InvalidInput):
            self.metrics.rejection(error.field.split("|")[0])

    def swap_resources(self, replace: Callable[[], None], timeout_s: float = 30.0) -> None:
        """Run `replace` (e.g. load new weights into place) once in-flight inferences finish; new ones wait.

        The lock prefers writers, so a steady stream of requests can't starve the swap.
        """
        with self.resources_lock.write(timeout=timeout_s):
            replace()

    # ---- BLS ---------------------------------------------------------------------------------------------------
    def call_model(
        self, name: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], timeout_s: float | None = None
    ) -> dict[str, np.ndarray]:
        """Call another model of this server (BLS). Its error becomes Unavailable, with its message."""
        pb = triton.pb()
        kwargs: dict[str, Any] = {}
        if timeout_s is not None:
            kwargs["timeout"] = int(timeout_s * 1_000_000)
        request = pb.InferenceRequest(
            model_name=name,
            inputs=[pb.Tensor(key, value) for key, value in inputs.items()],
            requested_output_names=list(outputs),
            **kwargs,
        )
        response = request.exec()
        if response.has_error():
            raise Unavailable(f"{name} failed: {response.error().message()}")
        return {out: pb.get_output_tensor_by_name(response, out).as_numpy() for out in outputs}


class RuthModel(_GuardedModel):
    """Base of every vision model speaking the wire contract of docs/contract.md."""

    #: pydantic model that validates the request's CONFIG JSON (None: any JSON object)
    config_schema: ClassVar[type[BaseModel] | None] = None
    #: True gives `ctx.update_state()`, backed by a store shared by all instances of the model
    stateful: ClassVar[bool] = False

    streams: StreamStateStore | None = None

    def setup_state(self) -> None:
        self._stream_updates = 0
        self.config_defaults: BaseModel | None = None
        if self.config_schema is not None:
            self.config_defaults = config_defaults(self.config_schema, self.params.model)
            self._defaults_dump = self.config_defaults.model_dump()
        if self.stateful:
            self.streams = StreamStateStore(
                self.env.state_dir / "streams" / f"{self.name}-{self.version}.sqlite",
                max_streams=self.params.state_max_streams,
                idle_ttl_s=self.params.state_idle_ttl_s,
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

    # ---- execute ---------------------------------------------------------------------------------------------
    def execute(self, requests: Sequence[Any]) -> list[Any]:
        started = time.perf_counter()
        responses: list[Any] = [None] * len(requests)
        try:
            items: list[_Item] = []
            request_errors: dict[int, BaseException] = {}
            for index, request in enumerate(requests):
                try:
                    items.extend(self._decode(index, request))
                except Exception as exc:
                    request_errors[index] = exc
            self._run_guarded(items, self._work)
            by_request: dict[int, list[_Item]] = {}
            for item in items:
                by_request.setdefault(item.request_index, []).append(item)
            for index in range(len(requests)):
                error = request_errors.get(index)
                if error is None:
                    error = next((i.error for i in by_request.get(index, []) if i.error is not None), None)
                if error is None:
                    try:
                        responses[index] = self._ok_response(by_request[index])
                    except Exception as exc:
                        error = exc
                if error is not None:
                    responses[index] = self._error_response(error)
                self._count(error)
                self.metrics.request_latency(time.perf_counter() - started)
            self._report_health()
        except BaseException as exc:
            log.exception("%s: unexpected failure in execute()", self.name)
            for index, response in enumerate(responses):
                if response is None:
                    responses[index] = self._error_response(Internal(f"unexpected failure: {exc}"))
        return responses

    def _work(self, items: list[_Item]) -> None:
        if not items:
            return
        results = self.infer_batch([i.frame for i in items], [i.ctx for i in items])
        if len(results) != len(items):
            raise Internal(f"infer_batch returned {len(results)} results for {len(items)} frames")
        for item, result in zip(items, results, strict=True):
            if isinstance(result, BaseException):
                item.error = result if isinstance(result, RuthError) else Internal(f"{type(result).__name__}: {result}")
            else:
                item.result = result

    def _decode(self, index: int, request: Any) -> list[_Item]:
        """Validate and decode one request (possibly carrying a client-side batch of several frames)."""
        pb = triton.pb()

        def tensor(name: str) -> np.ndarray | None:
            t = pb.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        image, frame = tensor(contract.IMAGE), tensor(contract.FRAME)
        stream, stamp = tensor(contract.STREAM_ID), tensor(contract.TIMESTAMP)
        config, metadata = tensor(contract.CONFIG), tensor(contract.METADATA)
        batch = _batch_size(image, frame, stream)
        request_id = request.request_id() or uuid.uuid4().hex
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
            items.append(_Item(index, validated.frame, self._context(validated, request_id), time.perf_counter()))
        return items

    def _effective_config(self, requested: Any) -> Any:
        """The spec's defaults under the request's CONFIG, field by field (cross-field rules checked on the merge)."""
        if self.config_defaults is None or not isinstance(requested, BaseModel):
            return requested
        if not requested.model_fields_set:
            return self.config_defaults
        return validate_config({**self._defaults_dump, **requested.model_dump(exclude_unset=True)}, self.config_schema)

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
        )

    def _update_stream(
        self, stream_id: str, config_key: str, fn: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]:
        assert self.streams is not None
        state = self.streams.update(stream_id, config_key, fn)
        self._stream_updates += 1
        if self._stream_updates % 100 == 1:
            self.metrics.stream_states(self.streams.count())
        return state

    def _ok_response(self, items: list[_Item]) -> Any:
        pb = triton.pb()
        encoded = []
        for item in items:
            metadata = {
                "model_name": self.name,
                "model_version": self.version,
                "inference_time_ms": round((time.perf_counter() - item.received) * 1000.0, 3),
                "stream_id": item.ctx.stream_id,
                "timestamp": item.ctx.timestamp.isoformat(),
                "device": self.device.device,
                "placement": self.device.placement,
                "request_id": item.ctx.request_id,
            }
            encoded.append([contract.encode_result(item.result, metadata)])
        out = pb.Tensor(contract.RESULT, np.array(encoded, dtype=np.object_))
        return pb.InferenceResponse(output_tensors=[out])


class RawRuthModel(_GuardedModel):
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
            items: list[_Item] = []
            errors: dict[int, BaseException] = {}
            for index, request in enumerate(requests):
                try:
                    tensors = {t.name(): t.as_numpy() for t in request.inputs()}
                    missing = [n for n in self.required_inputs if n not in tensors]
                    if missing:
                        raise InvalidInput(missing[0], "required input missing")
                    items.append(_Item(index, np.empty(0), _RAW_CTX, time.perf_counter(), result=tensors))
                except Exception as exc:
                    errors[index] = exc
            self._run_guarded(items, self._work)
            for item in items:
                errors.setdefault(item.request_index, item.error) if item.error is not None else None
            for index in range(len(requests)):
                error = errors.get(index)
                if error is None:
                    item = next(i for i in items if i.request_index == index)
                    outputs = [pb.Tensor(name, np.ascontiguousarray(value)) for name, value in item.result.items()]
                    responses[index] = pb.InferenceResponse(output_tensors=outputs)
                else:
                    responses[index] = self._error_response(error)
                self._count(error)
            self._report_health()
        except BaseException as exc:
            log.exception("%s: unexpected failure in execute()", self.name)
            for index, response in enumerate(responses):
                if response is None:
                    responses[index] = self._error_response(Internal(f"unexpected failure: {exc}"))
        return responses

    def _work(self, items: list[_Item]) -> None:
        if not items:
            return
        results = self.infer_tensors_batch([i.result for i in items])
        if len(results) != len(items):
            raise Internal(f"infer_tensors_batch returned {len(results)} results for {len(items)} requests")
        for item, result in zip(items, results, strict=True):
            if isinstance(result, BaseException):
                item.error = result if isinstance(result, RuthError) else Internal(f"{type(result).__name__}: {result}")
            else:
                item.result = result


_RAW_CTX = InferContext(
    stream_id="",
    timestamp=datetime.fromtimestamp(0, tz=timezone.utc),
    config=None,
    metadata={},
    params={},
    device=Allocation(device="cpu", placement="cpu", device_index=None, reserved_bytes=0, reason="", owner=None),
    request_id="",
)


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
