"""The shared lifecycle of every Ruth model: `GuardedModel` and the `InferContext` a model's algorithm gets.

`GuardedModel` implements what vision models (`python_backends.vision.RuthModel`) and raw-tensor models
(`python_backends.raw.RawRuthModel`) share: parameter parsing, device allocation, the circuit breaker, the
watchdog, fault injection, metrics, per-request error responses and the one `execute()` template. A model kind
implements three hooks: `decode(index, request) -> [WorkItem]`, `run_batch(payloads) -> [result | exception]` and
`encode(items) -> response`; a concrete model implements `load(device)` plus its kind's inference hook. The
services (clock, device probe, state paths, metrics, stream store) come from the injected `Runtime`
(python_backends/runtime.py); nothing here reads the environment.

The execute contract is sacred (python_backend README, "Default Mode"): exactly one response per request, in
order, and `execute()` never raises. An exception escaping `execute()` fails every request of the batch and can
hang the model's unload (docs/triton-notes.md §8.3), so `execute()` ends in a catch-all that turns anything into
per-request INTERNAL errors.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from python_backends import triton
from python_backends.breaker import BreakerPolicy, CircuitBreaker
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
    wire_message,
)
from python_backends.faults import FaultInjector, InjectedFault
from python_backends.gpu import Allocation, DeviceAllocator
from python_backends.metrics import BreakerMetricsListener, MetricsSink
from python_backends.params import MODEL_PREFIX, RuntimeParams, parameters_of
from python_backends.runtime import Runtime
from python_backends.validation import Limits
from python_backends.watchdog import Watchdog
from python_backends.weights import pinned_weights

log = logging.getLogger("ruth.model")
R = TypeVar("R")
P = TypeVar("P")


def client_value_errors() -> tuple[type[BaseException], ...]:
    """Exception types an algorithm raises when handed values it can't work with (OpenCV's own included)."""
    kinds: tuple[type[BaseException], ...] = (ValueError, TypeError, ArithmeticError, IndexError, KeyError)
    try:
        import cv2
    except ImportError:  # pragma: no cover - cv2 is a dependency of every vision model
        return kinds
    return (*kinds, cv2.error)


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
    #: the request carried its own CONFIG values (a value-type failure with them is the client's, not the model's)
    client_config: bool = False

    def update_state(self, fn: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
        """Atomic read-modify-write of this stream's state, shared by every instance of the model."""
        if self._update_state is None:
            raise Internal("model is not declared stateful but called update_state()")
        return self._update_state(self.stream_id, self._config_key, fn)

    def advance(self, step: Callable[[dict[str, Any] | None], tuple[dict[str, Any], R]]) -> R:
        """Run one step of a stream's state machine atomically: `step(state) -> (new_state, result)`; returns result.

        The usual shape of a stateful model: the algorithm's pure `step` function takes the stream's previous state
        and this frame's measurement and returns the next state plus the frame's answer.
        """
        out: list[R] = []

        def apply(state: dict[str, Any] | None) -> dict[str, Any]:
            new_state, result = step(state)
            out[:] = [result]
            return new_state

        self.update_state(apply)
        return out[0]


@dataclasses.dataclass
class WorkItem(Generic[P]):
    """One unit of work of one request on its way through `execute()` (a vision request may carry several).

    `payload` is what the model kind's `run_batch` takes: a `(frame, ctx)` pair for vision models, the input
    tensors for raw ones.
    """

    request_index: int
    payload: P
    received: float
    #: the request carried its own CONFIG values (a value-type failure with them is the client's, not the model's)
    client_config: bool = False
    #: for logs: the camera stream this item belongs to, if any
    stream_id: str = ""
    result: Any = None
    error: BaseException | None = None


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """What `initialize()` reads from config.pbtxt: the typed `ruth.*` values (python_backends/params.py), the
    request limits they narrow, and the model's own `model.*` parameters (prefix removed, as strings)."""

    runtime: RuntimeParams
    limits: Limits
    model: Mapping[str, str]

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> ModelParams:
        runtime = RuntimeParams.from_parameters(raw)
        frame = runtime.frame
        try:  # a model may narrow the global limits, never widen them
            limits = Limits().for_model(
                min_width=frame.min_width,
                min_height=frame.min_height,
                max_width=frame.max_width,
                max_height=frame.max_height,
                max_timestamp_drift_s=runtime.timestamp_max_drift_s,
            )
        except ValueError as exc:
            raise ModelLoadError(f"config.pbtxt frame limits are inconsistent: {exc}") from exc
        model = {k[len(MODEL_PREFIX) :]: v for k, v in raw.items() if k.startswith(MODEL_PREFIX)}
        return cls(runtime=runtime, limits=limits, model=model)

    @property
    def inference_timeout_s(self) -> float:
        return self.runtime.inference_timeout_ms / 1000.0


def error_response(error: BaseException) -> Any:
    """The one mapping from an exception to what its client gets: a response with Triton's code and our message,
    its stable wire code in front (python_backends/wire.py)."""
    pb = triton.pb()
    code = getattr(pb.TritonError, triton_code_for(error).value)
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(wire_message(error), code))


class GuardedModel(Generic[P]):
    """What vision and raw-contract models share: lifecycle, breaker, watchdog, metrics, device, `execute()`."""

    #: the name of the model's batch hook, for the error when it breaks its contract
    batch_hook: ClassVar[str] = "run_batch"
    #: how often the state gauges (breaker, health, zombies) are re-read from the persisted state without traffic
    gauge_refresh_s: ClassVar[float] = 2.0

    name: str
    version: str
    instance: str
    params: ModelParams
    device: Allocation
    metrics: MetricsSink

    def __init__(self, runtime: Runtime | None = None) -> None:
        """Triton constructs a model with no arguments: `initialize()` then builds `Runtime.from_process()`."""
        self._injected_runtime = runtime

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def initialize(self, args: Mapping[str, str]) -> None:
        self.runtime = getattr(self, "_injected_runtime", None) or Runtime.from_process()
        self.clock: Callable[[], float] = self.runtime.clock
        self.model_config: dict[str, Any] = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.version = str(args.get("model_version", "1"))
        self.instance = args.get("model_instance_name", f"{self.name}_0")
        self.params = ModelParams.parse(parameters_of(self.model_config))
        params = self.params.runtime
        self.metrics = self.runtime.metrics(self.name, self.version, self.instance)
        self.check_contract(self.model_config)
        self._allocator = self.runtime.allocator()
        self.device = self._allocator.allocate(
            model=self.name,
            version=self.version,
            instance=self.instance,
            instance_kind=str(args.get("model_instance_kind", "CPU")),
            device_id=int(args.get("model_instance_device_id", "0") or 0),
            memory_estimate_mb=params.memory_estimate_mb,
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
        self.breaker = CircuitBreaker(
            f"{self.name}:{self.version}",
            BreakerPolicy(**params.breaker.model_dump()),
            self.runtime.breaker_storage(self.name, self.version),
            listeners=[BreakerMetricsListener(self.metrics)],
        )
        self.metrics.breaker(self.breaker.state, tripped=False)
        self.watchdog = Watchdog(f"{self.name}:{self.version}", zombie_limit=params.watchdog.zombie_limit)
        self.faults = FaultInjector(params.fault) if params.fault.enabled else None
        try:
            self.setup_state()
            self.load(self.device)
        except ModelLoadError:
            self._allocator.release(self.device)
            raise
        except Exception as exc:
            self._allocator.release(self.device)
            raise ModelLoadError(f"{self.name}: load failed: {type(exc).__name__}: {exc}") from exc
        self._allocator.settle(self.device)  # loaded: its memory is in use now, no longer only promised
        self._report_health()
        self._start_gauge_refresher()

    def setup_state(self) -> None:
        """Hook for stateful models (vision base opens the stream store)."""

    def finalize(self) -> None:
        """Drain with a deadline, release the device, close state. Safe to call twice."""
        try:
            self._stop_gauge_refresher()
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

    def weights_path(self, relative: str) -> Path:
        """A weights file pinned in the spec, verified against its SHA-256 (WeightsError, a ModelLoadError, with the
        fix otherwise)."""
        return pinned_weights(self.runtime.weights_dir, self.params.runtime.weights, relative, self.name)

    # ---- hooks for concrete models ------------------------------------------------------------------------------
    def check_contract(self, model_config: Mapping[str, Any]) -> None:
        """Raise ModelLoadError when the loaded config doesn't match what this model needs."""

    def load(self, device: Allocation) -> None:
        """Load weights/resources onto `device`. Raise ModelLoadError with a reason that says how to fix it."""

    def finalize_model(self) -> None:
        """Release the model's own resources."""

    # ---- the hooks of a model kind (vision, raw) ----------------------------------------------------------------
    def decode(self, index: int, request: Any) -> list[WorkItem[P]]:
        """Validate request `index` into its work items; raise (InvalidInput...) to answer the whole request."""
        raise NotImplementedError

    def run_batch(self, payloads: list[P]) -> Sequence[Any]:
        """Run the model on the admitted items' payloads: one result or exception per payload, in order."""
        raise NotImplementedError

    def encode(self, items: list[WorkItem[P]]) -> Any:
        """The response of one request whose items all succeeded."""
        raise NotImplementedError

    # ---- execute: the one template every model kind runs -------------------------------------------------------
    def execute(self, requests: Sequence[Any]) -> list[Any]:
        """One response per request, in order; never raises (see the module docstring)."""
        started = time.perf_counter()
        responses: list[Any] = [None] * len(requests)
        try:
            items: list[WorkItem[P]] = []
            request_errors: dict[int, BaseException] = {}
            for index, request in enumerate(requests):
                try:
                    items.extend(self.decode(index, request))
                except Exception as exc:
                    request_errors[index] = exc
            self._run_guarded(items)
            by_request: dict[int, list[WorkItem[P]]] = {}
            for item in items:
                by_request.setdefault(item.request_index, []).append(item)
            for index in range(len(requests)):
                error = request_errors.get(index)
                if error is None:
                    error = next((i.error for i in by_request.get(index, []) if i.error is not None), None)
                if error is None:
                    try:
                        responses[index] = self.encode(by_request[index])
                    except Exception as exc:
                        error = exc
                if error is not None:
                    responses[index] = error_response(error)
                self._count(error)
                self.metrics.request_latency(time.perf_counter() - started)
            self._report_health()
        except BaseException as exc:
            self._answer_unanswered(responses, exc)
        return responses

    def _run_guarded(self, items: list[WorkItem[P]]) -> None:
        """Admit each item through the breaker, run the batch under the watchdog, record outcomes per item."""
        admitted: list[tuple[WorkItem[P], Any]] = []
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
            self._work([i for i in running if i.error is None])

        started = time.perf_counter()
        try:
            self.watchdog.run(watched, self.params.inference_timeout_s)
        except InferenceTimeout as exc:
            self.metrics.watchdog_timeout()
            for item in running:
                item.error = exc
        except Exception as exc:  # a failure of the whole run: every item shares it, judged by its own CONFIG
            for item in running:
                if item.error is None:
                    item.error = self._failure_of(item, exc)
        elapsed = time.perf_counter() - started
        for item, admission in admitted:
            self.metrics.inference_latency(elapsed)
            if item.error is not None and counts_as_failure(item.error):
                self.breaker.record_failure(admission)
            else:
                self.breaker.record_success(admission)
        self.metrics.zombies(self.watchdog.zombies)

    def _work(self, items: list[WorkItem[P]]) -> None:
        """Give each item its own result or error from `run_batch` (one entry per item, in order)."""
        if not items:
            return
        results = self.run_batch([i.payload for i in items])
        if len(results) != len(items):
            raise Internal(f"{self.batch_hook} returned {len(results)} results for {len(items)} inputs")
        for item, result in zip(items, results, strict=True):
            if isinstance(result, BaseException):
                item.error = self._failure_of(item, result)
            else:
                item.result = result

    def _inject_faults(self, items: list[WorkItem[P]]) -> None:
        assert self.faults is not None
        for item in items:
            try:
                self.faults.apply()
            except InjectedFault as exc:
                item.error = Internal(f"injected fault: {exc}")

    def _start_gauge_refresher(self) -> None:
        """Keep the state gauges true without traffic: a trip made by a sibling, an operator's `ruthctl breaker
        reset`, zombies that ended or piled up — all reach /metrics within `gauge_refresh_s`, not at the next
        request (which an open breaker or an idle camera may never bring)."""
        self._gauges_stop = threading.Event()
        self._gauges_thread = threading.Thread(
            target=self._refresh_gauges_loop, name=f"gauges-{self.instance}", daemon=True
        )
        self._gauges_thread.start()

    def _stop_gauge_refresher(self) -> None:
        stop: threading.Event | None = getattr(self, "_gauges_stop", None)
        if stop is None:
            return
        stop.set()
        self._gauges_thread.join(timeout=self.gauge_refresh_s + 1.0)

    def _refresh_gauges_loop(self) -> None:
        while not self._gauges_stop.wait(self.gauge_refresh_s):
            try:
                self.refresh_gauges()
            except Exception:  # noqa: BLE001 - a metrics hiccup must not end the refresher (or the model)
                log.exception("%s: refreshing the state gauges failed", self.instance)

    def refresh_gauges(self) -> None:
        """Set the breaker, zombie and health gauges from the persisted breaker state and the watchdog."""
        self.metrics.breaker(self.breaker.state, tripped=False)
        self.metrics.zombies(self.watchdog.zombies)
        self._report_health()

    def _report_health(self) -> None:
        snapshot_state = self.breaker.state.value
        if snapshot_state == "open" or not self.watchdog.healthy:
            value = -1
        elif snapshot_state == "half_open":
            value = 0
        else:
            value = 1
        self.metrics.health(value)

    def _failure_of(self, item: WorkItem[P], exc: BaseException) -> BaseException:
        """An exception that escaped the algorithm, as the error this item's client gets (docs/security.md).

        A value-type exception (ValueError, OverflowError, IndexError, cv2.error...) raised while running a request
        that carried its own CONFIG is blamed on those values: INVALID_ARG naming CONFIG, never counted by the
        breaker that guards every client. With the deployment's defaults only, or any other exception, it is the
        model's failure: INTERNAL, counted.
        """
        if isinstance(exc, RuthError):
            return exc
        if item.client_config and isinstance(exc, client_value_errors()):
            log.warning("%s: stream %s: CONFIG made the algorithm fail: %r", self.name, item.stream_id, exc)
            text = str(exc)
            text = text if len(text) <= 200 else text[:200] + "..."
            return InvalidInput(
                "CONFIG", f"this request's values made the algorithm fail ({type(exc).__name__}: {text})"
            )
        return Internal(f"{type(exc).__name__}: {exc}")

    def _answer_unanswered(self, responses: list[Any], exc: BaseException) -> None:
        """Last resort of `execute()`: every request still without a response gets its own INTERNAL error."""
        log.exception("%s: unexpected failure in execute()", self.name)
        for index, response in enumerate(responses):
            if response is None:
                responses[index] = error_response(Internal(f"unexpected failure: {exc}"))

    def _count(self, error: BaseException | None) -> None:
        self.metrics.request(outcome_for(error))
        if isinstance(error, InvalidInput):
            self.metrics.rejection(error.field.split("|")[0])

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
