"""Pose once per frame, whoever asks: one camera frame sent to fall_detection, geo_fencing and ppe_detection runs the
pose network once (the other two are answered from pose_estimator's frame cache), through the real tritonserver."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
import skimage.data
import tritonclient.http as httpclient
from support import TritonHandle, jpeg, metric_value, now_iso, person_weights, result_of, start_triton, vision_inputs

pytestmark = pytest.mark.integration

MODELS = ["pose_estimator", "fall_detection", "geo_fencing", "ppe_detection"]
ANALYTICS = MODELS[1:]
VOLATILE = {"request_id", "stream_id", "timestamp", "processing_time_ms", "metadata"}
ASTRONAUT = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonHandle]:
    weights = person_weights(tmp_path_factory.mktemp("weights"))
    handle = start_triton(tmp_path_factory.mktemp("pose-once"), MODELS, env={"RUTH_WEIGHTS_DIR": str(weights)})
    try:
        yield handle
    finally:
        handle.server.stop(grace_s=30)


def lookups(handle: TritonHandle) -> tuple[float, float]:
    text = handle.metrics_text()
    return (
        metric_value(text, "ruth_pose_cache_total", model="pose_estimator", result="hit"),
        metric_value(text, "ruth_pose_cache_total", model="pose_estimator", result="miss"),
    )


def send_to_all(handle: TritonHandle, image: bytes, stream: str) -> list[dict[str, object]]:
    stamp = now_iso()
    with contextlib.closing(httpclient.InferenceServerClient(handle.http_url, network_timeout=60)) as client:
        return [
            result_of(client.infer(m, vision_inputs(httpclient, image=image, stream_id=stream, timestamp=stamp)))
            for m in ANALYTICS
        ]


def test_one_frame_to_three_analytics_runs_the_pose_network_once(server: TritonHandle) -> None:
    frame = np.full((600, 800, 3), 128, np.uint8)
    frame[44:556, 144:656] = ASTRONAUT
    hits0, misses0 = lookups(server)
    results = send_to_all(server, jpeg(frame), str(uuid.uuid4()))
    hits1, misses1 = lookups(server)
    assert (hits1 - hits0, misses1 - misses0) == (2, 1)
    # every analytic judged the same person (same pose) and says where its pose came from
    assert all(r["metadata"]["pose_model"] == "pose_estimator" for r in results)  # type: ignore[index]

    # the next camera frame differs by one pixel: a new estimate, then two hits again
    frame[300, 400] = (0, 0, 0)
    send_to_all(server, jpeg(frame), str(uuid.uuid4()))
    hits2, misses2 = lookups(server)
    assert (hits2 - hits1, misses2 - misses1) == (2, 1)


def test_the_cache_does_not_change_answers(server: TritonHandle) -> None:
    """The same frame twice to one model: the second (cached) pose gives the same people as the first."""
    frame = np.full((600, 800, 3), 90, np.uint8)
    frame[44:556, 200:712] = ASTRONAUT
    image = jpeg(frame)
    with contextlib.closing(httpclient.InferenceServerClient(server.http_url, network_timeout=60)) as client:
        first, second = (
            result_of(
                client.infer(
                    "geo_fencing",
                    vision_inputs(httpclient, image=image, stream_id=str(uuid.uuid4()), timestamp=now_iso()),
                )
            )
            for _ in range(2)
        )
    assert first["detections"], "the astronaut is found"

    def stable(result: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in result.items() if k not in VOLATILE}

    assert stable(first) == stable(second)
