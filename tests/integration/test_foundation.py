"""The foundation, end to end on the real server: load, health, HTTP and gRPC answers, clean errors, drain."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import urllib.request
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from support import jpeg, result_of, tank_frame, vision_inputs
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration

TANK = "tank_overflow_monitoring"


def http_get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture(scope="module")
def tank_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from support import start_triton

    handle = start_triton(tmp_path_factory.mktemp("foundation"), [TANK])
    yield handle
    handle.server.stop(grace_s=30)


def test_tank_model_is_ready_in_the_repository_index_and_the_server_is_ready(tank_server: Any) -> None:
    entry = next(e for e in tank_server.index() if e["name"] == TANK)
    assert entry["state"] == "READY"
    assert http_get(f"http://{tank_server.http_url}/v2/health/ready") == 200
    assert http_get(f"http://{tank_server.http_url}/v2/health/live") == 200


def test_a_frame_over_http_gets_the_measured_level(tank_server: Any) -> None:
    with contextlib.closing(httpclient.InferenceServerClient(tank_server.http_url)) as client:
        result = result_of(client.infer(TANK, vision_inputs(httpclient, image=jpeg(tank_frame(40.0)))))
    assert result["level_percent"] == pytest.approx(40.0, abs=2.0)
    assert result["violation_detected"] is False
    assert result["metadata"]["model_name"] == TANK
    assert result["metadata"]["device"] == "cpu"


def test_a_raw_frame_over_grpc_gets_the_measured_level(tank_server: Any) -> None:
    with contextlib.closing(grpcclient.InferenceServerClient(tank_server.grpc_url)) as client:
        result = result_of(client.infer(TANK, vision_inputs(grpcclient, frame=tank_frame(96.0))))
    assert result["level_percent"] == pytest.approx(96.0, abs=2.0)
    assert result["violation_type"] == "tank_critical_high"
    assert result["severity"] == "critical"


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda m: vision_inputs(m, image=b"\xff\xd8\xff\xe0 not really a jpeg"), "IMAGE"),
        (lambda m: vision_inputs(m, image=jpeg(tank_frame(50))[:400]), "IMAGE"),
        (lambda m: vision_inputs(m, image=jpeg(tank_frame(50)), stream_id="camera-7"), "STREAM_ID"),
        (lambda m: vision_inputs(m, image=jpeg(tank_frame(50)), timestamp="yesterday"), "TIMESTAMP"),
        (lambda m: vision_inputs(m, frame=np.zeros((32, 32, 3), np.uint8)), "FRAME"),
        (lambda m: vision_inputs(m, image=jpeg(tank_frame(50)), config={"capacity_liters": -1}), "CONFIG"),
    ],
    ids=["corrupt-jpeg", "truncated-jpeg", "stream-id-not-uuid", "bad-timestamp", "frame-too-small", "bad-config"],
)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_input_gets_invalid_argument_naming_the_field(
    tank_server: Any, build: Any, field: str, protocol: str
) -> None:
    module: Any = httpclient if protocol == "http" else grpcclient
    url = tank_server.http_url if protocol == "http" else tank_server.grpc_url
    with contextlib.closing(module.InferenceServerClient(url)) as client:
        with pytest.raises(InferenceServerException) as raised:
            client.infer(TANK, build(module))
    expected = "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    assert raised.value.status() == expected
    assert field in raised.value.message()
    assert http_get(f"http://{tank_server.http_url}/v2/health/ready") == 200


def test_missing_stream_id_and_wrong_dtype_are_rejected_and_the_server_stays_up(tank_server: Any) -> None:
    with contextlib.closing(httpclient.InferenceServerClient(tank_server.http_url)) as client:
        inputs = [i for i in vision_inputs(httpclient, image=jpeg(tank_frame(50))) if i.name() != "STREAM_ID"]
        with pytest.raises(InferenceServerException) as missing:
            client.infer(TANK, inputs)
        assert missing.value.status() == "400"
        assert "STREAM_ID" in missing.value.message()

        wrong = httpclient.InferInput("FRAME", [1, 64, 64, 3], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 64, 64, 3), np.float32))
        rest = [i for i in vision_inputs(httpclient, image=b"x") if i.name() in ("STREAM_ID", "TIMESTAMP")]
        with pytest.raises(InferenceServerException) as dtype:
            client.infer(TANK, [wrong, *rest])
        assert dtype.value.status() == "400"
        assert "FRAME" in dtype.value.message() and "FP32" in dtype.value.message()
        # still serving
        ok = result_of(client.infer(TANK, vision_inputs(httpclient, image=jpeg(tank_frame(60)))))
        assert ok["level_percent"] == pytest.approx(60.0, abs=2.0)


def test_sigterm_drains_an_in_flight_request_and_runs_finalize(triton_factory: Any) -> None:
    handle = triton_factory([])
    handle.load(TANK, config=slow_config(handle, TANK, slow_ms=1500))
    outcome: dict[str, Any] = {}

    def send() -> None:
        client = httpclient.InferenceServerClient(handle.http_url, network_timeout=30)
        try:
            outcome["result"] = result_of(client.infer(TANK, vision_inputs(httpclient, image=jpeg(tank_frame(30)))))
        except Exception as exc:
            outcome["error"] = exc
        finally:
            client.close()

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.5)  # the request is now inside the model's 1.5 s slow path
    handle.server.send_signal(signal.SIGTERM)
    sender.join(timeout=30)
    rc = handle.server.wait(timeout_s=30)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"]["level_percent"] == pytest.approx(30.0, abs=2.0)
    assert rc == 0
    assert handle.log_text().count("finalized") == 2  # both instances ran finalize()


def slow_config(handle: Any, name: str, *, slow_ms: int) -> dict[str, Any]:
    """The model's live config plus a fault-injection parameter that slows every request down."""
    config = handle.model_config(name) if _is_loaded(handle, name) else _config_from_disk(handle, name)
    params = dict(config.get("parameters", {}))
    params["ruth.fault.slow_rate"] = {"string_value": "1.0"}
    params["ruth.fault.slow_ms"] = {"string_value": str(slow_ms)}
    config["parameters"] = params
    return config


def _is_loaded(handle: Any, name: str) -> bool:
    return any(e.get("name") == name and e.get("state") == "READY" for e in handle.index())


def _config_from_disk(handle: Any, name: str) -> dict[str, Any]:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    message = text_format.Parse((handle.repository / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return dict(json_format.MessageToDict(message, preserving_proto_field_name=True))
