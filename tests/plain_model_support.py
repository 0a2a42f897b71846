"""The plain-Python test model that drives ruthctl against a real tritonserver: the wire contract's RESULT with no
library behind it, so a test controls exactly when it loads, fails or is slow.

Its `model.*` parameters: `fail_init` (the load fails with Triton's reason), `init_sleep_s` (a slow load),
`sleep_s` (each request sleeps). RESULT's metadata names the instance and process that answered."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

WEIGHTS = b"a plain test model's pretend network\n"

MODEL_PY = """
import json, os, time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        if params.get("model.fail_init") == "true":
            raise RuntimeError("probe: weights file missing")
        time.sleep(float(params.get("model.init_sleep_s", "0")))
        self.sleep_s = float(params.get("model.sleep_s", "0"))
        self.instance = args["model_instance_name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            stream = pb_utils.get_input_tensor_by_name(request, "STREAM_ID").as_numpy().reshape(-1)
            if self.sleep_s:
                time.sleep(self.sleep_s)
            result = {"violation_detected": False, "violation_type": None, "severity": "low", "confidence": 1.0,
                      "detections": [], "metadata": {"instance": self.instance, "pid": os.getpid(),
                                                      "stream_id": stream[0].decode()}}
            out = np.array([[json.dumps(result).encode()]] * len(stream), dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("RESULT", out)]))
        return responses
"""


def spec(name: str, count: int = 1, **parameters: Any) -> str:
    """The model's spec (config/models/<name>.yaml): `count` CPU instances, its weights pinned, `parameters`."""
    weight = hashlib.sha256(WEIGHTS).hexdigest()
    return f"""
name: {name}
description: plain test model (tests/plain_model_support.py)
version: 1
contract: vision
max_batch_size: 4
dynamic_batching: {{max_queue_delay_us: 0, max_queue_size: 16}}
weights:
  - {{path: {name}/net.bin, sha256: {weight}, source: "tests/plain_model_support.py writes it"}}
profiles:
  cpu: {{kind: KIND_CPU, count: {count}}}
parameters: {json.dumps(parameters or {"sleep_s": 0})}
"""


def install(root: Path, name: str, count: int = 1, **parameters: Any) -> None:
    """Spec, model file and weights of one plain model in a deployment root laid out like the repository."""
    (root / "config" / "models").mkdir(parents=True, exist_ok=True)
    (root / "config" / "models" / f"{name}.yaml").write_text(spec(name, count, **parameters))
    (root / "model_repository" / name / "1").mkdir(parents=True)
    (root / "model_repository" / name / "1" / "model.py").write_text(MODEL_PY)
    (root / "weights" / name).mkdir(parents=True)
    (root / "weights" / name / "net.bin").write_bytes(WEIGHTS)
