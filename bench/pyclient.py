"""The Python load generator: closed-loop client threads, each with its own connection and camera stream.

It drives Triton (HTTP, gRPC, gRPC + system shared memory) and the old FastAPI design with the same loop and
the same frames, so those comparisons differ only in the server. Each call sends a fresh timestamp, as a camera
would, and checks the answer (a per-request error counts as an error, not as throughput).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bench.harness import now_iso, vision_inputs
from bench.stats import LoadResult, summarize

Call = Callable[[], None]
Close = Callable[[], None]
#: worker index -> (one request, raising on any failure; release the worker's resources)
WorkerFactory = Callable[[int], tuple[Call, Close]]


def closed_loop(
    factory: WorkerFactory,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    protocol: str,
    clock: Callable[[], float] = time.perf_counter,
) -> LoadResult:
    """`concurrency` threads send back-to-back requests; those completing inside the window are measured."""
    window: list[float] = [0.0, 0.0]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    sent = [0] * concurrency
    failures: list[BaseException] = []

    def open_window() -> None:
        start = clock() + warmup_s
        window[0], window[1] = start, start + duration_s

    ready = threading.Barrier(concurrency, action=open_window)

    def worker(index: int) -> None:
        try:
            call, close = factory(index)
        except BaseException as exc:
            failures.append(exc)
            ready.abort()
            return
        try:
            ready.wait()
            while (began := clock()) < window[1]:
                try:
                    call()
                    ok = True
                except Exception:
                    ok = False
                done = clock()
                sent[index] += 1
                if began >= window[0] and done <= window[1]:
                    if ok:
                        latencies[index].append(done - began)
                    else:
                        errors[index] += 1
                if not ok:
                    time.sleep(0.001)  # a refused connection must not spin a core the server needs
        except threading.BrokenBarrierError:
            pass
        finally:
            try:
                close()
            except Exception as exc:  # cleanup trouble must not hide the measurement
                failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=warmup_s + duration_s + 120)
    if failures:
        raise RuntimeError(f"a client worker failed to start or stop: {failures[0]!r}") from failures[0]
    merged = [lat for per in latencies for lat in per]
    return summarize(
        merged,
        window_s=duration_s,
        errors=sum(errors),
        tool="python",
        protocol=protocol,
        concurrency=concurrency,
        sent=sum(sent),
    )


# ---- Triton ------------------------------------------------------------------------------------------------------
def _client_module(protocol: str) -> Any:
    if protocol == "http":
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    return module


def triton_worker(
    url: str,
    model: str,
    images: Sequence[bytes],
    *,
    protocol: str = "http",
    raw_frames: Sequence[np.ndarray] | None = None,
    parse_json: bool = True,
) -> WorkerFactory:
    """JPEG in IMAGE (default) or raw pixels in FRAME (`raw_frames`), over `protocol` http or grpc."""
    module = _client_module(protocol)

    def factory(index: int) -> tuple[Call, Close]:
        client = module.InferenceServerClient(url)
        stream = str(uuid.uuid4())
        outputs = [module.InferRequestedOutput("RESULT")]
        counter = [index]

        def call() -> None:
            counter[0] += 1
            if raw_frames is not None:
                inputs = vision_inputs(
                    module, frame=raw_frames[counter[0] % len(raw_frames)], stream_id=stream, timestamp=now_iso()
                )
            else:
                inputs = vision_inputs(
                    module, image=images[counter[0] % len(images)], stream_id=stream, timestamp=now_iso()
                )
            raw = client.infer(model, inputs, outputs=outputs).as_numpy("RESULT")
            if raw is None or raw.size != 1:
                raise RuntimeError("no RESULT")
            if parse_json:
                json.loads(raw.reshape(-1)[0])

        return call, client.close

    return factory


def triton_shm_worker(
    url: str, model: str, raw_frames: Sequence[np.ndarray], *, parse_json: bool = True, admin_key: str = ""
) -> WorkerFactory:
    """Raw FRAME through Triton system shared memory (gRPC for the request): the client writes each new frame into
    its own registered region, as a capture process would, and the request carries only the region's name.
    Registering a region is keyed (docs/security.md): `admin_key` goes along as gRPC metadata."""
    import tritonclient.grpc as module
    import tritonclient.utils.shared_memory as shm
    from tritonclient.utils import InferenceServerException

    shape = [1, *raw_frames[0].shape]
    nbytes = int(raw_frames[0].nbytes)
    keyed = {"triton-grpc-protocol-ruth-admin-token": admin_key} if admin_key else {}

    def factory(index: int) -> tuple[Call, Close]:
        client = module.InferenceServerClient(url)
        region = f"ruthbench{os.getpid()}_{index}"
        handle = shm.create_shared_memory_region(region, f"/{region}", nbytes)
        client.register_system_shared_memory(region, f"/{region}", nbytes, headers=keyed)
        stream = str(uuid.uuid4())
        outputs = [module.InferRequestedOutput("RESULT")]
        counter = [index]

        def call() -> None:
            counter[0] += 1
            shm.set_shared_memory_region(handle, [raw_frames[counter[0] % len(raw_frames)][np.newaxis, ...]])
            frame = module.InferInput("FRAME", shape, "UINT8")
            frame.set_shared_memory(region, nbytes)
            inputs = [frame, *vision_inputs(module, stream_id=stream, timestamp=now_iso())]
            raw = client.infer(model, inputs, outputs=outputs).as_numpy("RESULT")
            if raw is None or raw.size != 1:
                raise RuntimeError("no RESULT")
            if parse_json:
                json.loads(raw.reshape(-1)[0])

        def close() -> None:
            # Triton releases the last request's hold on the region a moment after the response: retry briefly.
            try:
                for _ in range(50):
                    try:
                        client.unregister_system_shared_memory(region, headers=keyed)
                        break
                    except InferenceServerException:
                        time.sleep(0.02)
            finally:
                shm.destroy_shared_memory_region(handle)
                client.close()

        return call, close

    return factory


# ---- the old design (FastAPI, JSON + base64) ---------------------------------------------------------------------
def fastapi_worker(port: int, model: str, images: Sequence[bytes]) -> WorkerFactory:
    """The original runtime's request: one JSON body with the JPEG in base64, on a keep-alive connection."""

    def factory(index: int) -> tuple[Call, Close]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        stream = str(uuid.uuid4())
        counter = [index]

        def call() -> None:
            counter[0] += 1
            body = json.dumps(
                {
                    "stream_id": stream,
                    "frame_base64": base64.b64encode(images[counter[0] % len(images)]).decode("ascii"),
                    "frame_format": "jpeg",
                    "timestamp": now_iso(),
                    "model_id": model,
                }
            ).encode()
            conn.request("POST", "/inference", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
            if json.loads(data).get("status") != "success":
                raise RuntimeError(f"failed: {data[:200]!r}")

        return call, conn.close

    return factory
