"""The runtime we replace, rebuilt around our model code for a like-for-like comparison.

What is kept from the original, on purpose, because it is what limits it:
* one uvicorn worker process;
* `POST /inference` is an `async def` handler that makes a blocking call: it submits the inference to a 2-thread
  executor and waits on `future.result(timeout)` (the original's SandboxManager.execute), so the event loop runs
  one inference at a time;
* JSON request with the frame in base64, decoded with PIL (`Image.open`, `np.array`, RGB to BGR), JSON response.
What is not kept (it would only make the old design slower): its request-ID middleware, access log and metrics.
The algorithm is the same model file as the Triton models run, through `BareModel` (bench/barecore.py).

    python -m bench.oldserver --port 8000 [--model tank_overflow_monitoring]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from ruthctl.server import http_status

INFERENCE_TIMEOUT_S = 5.0


class InferenceRequest(BaseModel):
    stream_id: str = Field(pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
    frame_base64: str = Field(max_length=52_428_800)
    frame_format: str = "jpeg"
    timestamp: datetime
    model_id: str = "fall_detection"
    config: dict[str, Any] | None = None


def decode_base64_frame(data: str) -> np.ndarray:
    """The original's decoder: base64, then PIL, then RGB -> BGR."""
    from PIL import Image

    raw = base64.b64decode(data)
    image = Image.open(io.BytesIO(raw))
    array = np.array(image)
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array[:, :, ::-1])
    raise ValueError(f"unsupported image mode {image.mode}")


def create_app(model: str) -> Any:
    from fastapi import FastAPI, HTTPException

    from bench.bare import served_config
    from bench.barecore import BareModel
    from bench.harness import MODEL_REPOSITORY
    from ruthctl.render import config_to_json

    config = json.loads(config_to_json(served_config(MODEL_REPOSITORY / model)))
    core = BareModel(MODEL_REPOSITORY / model / "1" / "model.py", config)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sandbox")
    app = FastAPI(title="old design (benchmark)")

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @app.post("/inference")
    async def inference(request: InferenceRequest) -> dict[str, Any]:
        started = time.perf_counter()
        if request.model_id != model:
            raise HTTPException(status_code=404, detail=f"Model not found or not ready: {request.model_id}:latest")
        try:
            frame = decode_base64_frame(request.frame_base64)
        except (binascii.Error, ValueError, OSError) as exc:
            return {
                "request_id": str(uuid.uuid4()),
                "status": "failed",
                "error": f"Failed to decode base64 frame: {exc}",
            }
        # The original's bug, reproduced: a blocking wait inside an async handler serialises every request.
        future = executor.submit(core.infer_frame, frame, request.stream_id, request.timestamp)
        result = json.loads(future.result(timeout=INFERENCE_TIMEOUT_S))
        return {
            "request_id": str(uuid.uuid4()),
            "status": "success",
            "model_id": model,
            "model_version": "1.0.0",
            "inference_time_ms": (time.perf_counter() - started) * 1000.0,
            "result": result,
            "error": None,
        }

    return app


class OldServer:
    """The old design as a child process on a loopback port; start refuses to run twice, stop is safe twice."""

    def __init__(self, port: int, model: str, *, log_path: Path | None = None) -> None:
        self.port = port
        self.model = model
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("old server already running")
        out = self.log_path.open("ab") if self.log_path is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.oldserver", "--port", str(self.port), "--model", self.model],
            cwd=str(Path(__file__).resolve().parent.parent),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"old server exited during start (rc={self.process.returncode})")
            if http_status(f"http://127.0.0.1:{self.port}/health/live") == 200:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"old server not live after {timeout_s:.0f}s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> OldServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The old FastAPI design, for the benchmark only.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="tank_overflow_monitoring")
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(
        create_app(args.model), host="127.0.0.1", port=args.port, workers=1, log_level="warning", access_log=False
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
