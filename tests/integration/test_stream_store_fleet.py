"""Per-stream state across a fleet: two real tritonservers behind "a load balancer" (frames sent alternately) share
one real redis-server and answer exactly as one server does; the same test on SQLite (each server its own file)
shows the divergence a fleet without Redis suffers. Then the failure behaviour of the Redis store through the
real server (Redis down at start, mid-stream, hung, restarted), and a damaged SQLite store (issue #12).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data
import tritonclient.http as httpclient
from redis_support import RedisServer, running_redis
from support import TritonHandle, opening_frame, person_weights, result_of, start_triton, tank_frame, vision_inputs
from tritonclient.utils import InferenceServerException

from python_backends.wire import WireCode, decode

pytestmark = pytest.mark.integration

TANK, CHANE, FALL = "tank_overflow_monitoring", "chane_tank_monitor", "fall_detection"
CHANE_CONFIG = {"brightness_threshold": 128, "smoothing_window": 3, "display_slew_pct": 0}
TANK_CONFIG = {"smoothing_window": 3}


def _canvas(image: np.ndarray) -> np.ndarray:
    canvas = np.full((768, 1024, 3), 128, np.uint8)
    h, w = image.shape[:2]
    canvas[(768 - h) // 2 : (768 - h) // 2 + h, (1024 - w) // 2 : (1024 - w) // 2 + w] = image
    return canvas


ASTRONAUT = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
UPRIGHT, LYING = _canvas(ASTRONAUT), _canvas(cv2.rotate(ASTRONAUT, cv2.ROTATE_90_CLOCKWISE))


def _base() -> datetime:
    return datetime.now(timezone.utc) - timedelta(minutes=3)


def judged(response: Any) -> dict[str, Any]:
    """The result without what legitimately differs per request (timings, ids, the serving instance)."""
    result = result_of(response)
    result.pop("metadata", None)
    return result


# (model, config, [(seconds after base, frame)]) in arrival order. The tank run has a late frame (t=4 arrives
# after t=6), judged by its own timestamp as on one server.
def sequences() -> list[tuple[str, dict[str, Any] | None, list[tuple[float, np.ndarray]]]]:
    tank_levels = [(0, 30.0), (1, 32.0), (2, 35.0), (3, 60.0), (5, 70.0), (6, 75.0), (4, 65.0), (7, 90.0), (8, 97.0)]
    chane_fills = [0.2, 0.3, 0.45, 0.6, 0.7, 0.85, 0.9, 0.95]
    return [
        (TANK, TANK_CONFIG, [(t, tank_frame(level, seed=i)) for i, (t, level) in enumerate(tank_levels)]),
        (CHANE, CHANE_CONFIG, [(float(i), opening_frame(f, seed=i)) for i, f in enumerate(chane_fills)]),
        (FALL, None, [(i * 0.5, UPRIGHT if i * 0.5 <= 1.0 else LYING) for i in range(9)]),
    ]


def run_stream(
    clients: list[httpclient.InferenceServerClient],
    model: str,
    config: dict[str, Any] | None,
    frames: list[tuple[float, np.ndarray]],
) -> list[dict[str, Any]]:
    """One stream's frames, frame i to clients[i % len(clients)] (the load balancer of a fleet)."""
    stream, base = str(uuid.uuid4()), _base()
    out = []
    for i, (t, frame) in enumerate(frames):
        stamp = (base + timedelta(seconds=t)).isoformat()
        inputs = vision_inputs(httpclient, frame=frame, stream_id=stream, timestamp=stamp, config=config)
        out.append(judged(clients[i % len(clients)].infer(model, inputs)))
    return out


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return person_weights(tmp_path_factory.mktemp("weights"))


@contextlib.contextmanager
def fleet(tmp: Path, env: dict[str, str], weights: Path, models: list[str]) -> Iterator[list[TritonHandle]]:
    handles: list[TritonHandle] = []
    try:
        for i in range(2):  # two servers, each its own state dir (as two pods are)
            handles.append(start_triton(tmp / f"server{i}", models, env={**env, "RUTH_WEIGHTS_DIR": str(weights)}))
        yield handles
    except BaseException:
        for handle in handles:
            print(f"--- {handle.http_url}\n{handle.log_text()[-6000:]}")
        raise
    finally:
        for handle in handles:
            handle.server.stop(grace_s=30)


def clients_of(handles: list[TritonHandle]) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for handle in handles:
        stack.enter_context(contextlib.closing(httpclient.InferenceServerClient(handle.http_url)))
    return stack


@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_a_stream_split_across_two_servers_answers_as_one_server_only_with_redis(
    tmp_path: Path, weights_dir: Path, backend: str
) -> None:
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        if backend == "redis":
            redis_server = stack.enter_context(running_redis(tmp_path / "redis", password=uuid.uuid4().hex))
            env = {
                "RUTH_STREAM_STORE": redis_server.url,
                "RUTH_STREAM_STORE_PASSWORD_FILE": str(redis_server.password_file),
            }
        handles = stack.enter_context(fleet(tmp_path, env, weights_dir, ["pose_estimator", FALL, TANK, CHANE]))
        a, b = (httpclient.InferenceServerClient(h.http_url) for h in handles)
        stack.callback(a.close)
        stack.callback(b.close)
        differing = {}
        for model, config, frames in sequences():
            one_server = run_stream([a], model, config, frames)
            fleet_run = run_stream([a, b], model, config, frames)
            differing[model] = [i for i, (x, y) in enumerate(zip(one_server, fleet_run, strict=True)) if x != y]
            if backend == "redis":
                assert fleet_run == one_server, model
            if model == FALL:  # the sequence really is a fall, on one server
                assert [r["violation_type"] for r in one_server][-2:] == ["fall_detected"] * 2
            if model == CHANE:
                assert [r["frames_seen"] for r in one_server] == list(range(1, len(frames) + 1))
        print(f"{backend}: frames answered differently from one server: {differing}")
        if backend == "redis":
            assert differing == {TANK: [], CHANE: [], FALL: []}
        else:  # each server sees half the stream: every model answers differently somewhere
            assert all(differing.values()), differing
        for handle in handles:
            assert "stream state in " + ("redis://127.0.0.1" if backend == "redis" else "sqlite") in handle.log_text()
            if backend == "redis":
                assert redis_server.password not in handle.log_text()
                assert not list((handle.state_dir / "streams").glob("*.sqlite"))


# ---- failure behaviour through the real server (tank_overflow_monitoring only: cheap) -------------------------------
def tank_infer(client: httpclient.InferenceServerClient, stream: str, t: float, level: float, base: datetime) -> Any:
    stamp = (base + timedelta(seconds=t)).isoformat()
    inputs = vision_inputs(httpclient, frame=tank_frame(level), stream_id=stream, timestamp=stamp, config=TANK_CONFIG)
    return client.infer(TANK, inputs)


def expect_store_unavailable(call: Callable[[], Any], redis_server: RedisServer) -> float:
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as raised:
        call()
    assert raised.value.status() == "503", raised.value  # UNAVAILABLE over HTTP: retry later
    assert f"stream store redis://127.0.0.1:{redis_server.port}/0 unavailable" in str(raised.value)
    wire = decode(str(raised.value.message()))
    assert wire is not None and wire.code is WireCode.STORE_UNAVAILABLE, raised.value  # python_backends/wire.py
    return time.monotonic() - started


@pytest.fixture
def lone_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password=uuid.uuid4().hex)
    try:
        yield server
    finally:
        server.stop()


def test_redis_down_at_start_mid_stream_hung_and_restarted(tmp_path: Path, lone_redis: RedisServer) -> None:
    env = {
        "RUTH_STREAM_STORE": lone_redis.url + "?socket_timeout=0.5&socket_connect_timeout=0.5",
        "RUTH_STREAM_STORE_PASSWORD_FILE": str(lone_redis.password_file),
    }
    handle = start_triton(tmp_path / "srv", [TANK], env=env)  # Redis not started yet: the model still loads
    try:
        with contextlib.closing(httpclient.InferenceServerClient(handle.http_url)) as client:
            stream, base = str(uuid.uuid4()), _base()
            # 1. down at start: a clear UNAVAILABLE, naming the store (never a made-up stateless answer)
            expect_store_unavailable(lambda: tank_infer(client, stream, 0, 30.0, base), lone_redis)
            assert "not reachable at load" in handle.log_text()
            # ... and it serves as soon as Redis is up, without a reload
            lone_redis.start()
            first = result_of(tank_infer(client, stream, 0, 30.0, base))
            second = result_of(tank_infer(client, stream, 1, 90.0, base))
            assert second["level_percent"] == pytest.approx(60.0, abs=2.5)  # smoothed with the first frame
            # 2. hung mid-stream: answered at the socket timeout, far below the 5 s inference deadline
            lone_redis.pause()
            try:
                took = expect_store_unavailable(lambda: tank_infer(client, stream, 2, 90.0, base), lone_redis)
                assert took < 4.0
            finally:
                lone_redis.resume()
            # 3. down mid-stream: UNAVAILABLE, and the breaker is not tripped by the store's outage
            lone_redis.stop()
            for t in range(2, 10):
                expect_store_unavailable(lambda t=t: tank_infer(client, stream, t, 90.0, base), lone_redis)
            # 4. restarted (its data lost): the stream restarts cleanly, as a new one would. Right after eight
            # failed frames this also shows the breaker was not tripped by the store's outage (threshold 5).
            lone_redis.start()
            again = result_of(tank_infer(client, stream, 10, 30.0, base))
            assert again["level_percent"] == pytest.approx(first["level_percent"], abs=0.5)  # kept state: ~50
            metrics = handle.metrics_text()
        assert 'outcome="store_unavailable"' in metrics
        assert lone_redis.password is not None and lone_redis.password not in handle.log_text()
    finally:
        handle.server.stop(grace_s=30)


def test_a_wrong_redis_password_fails_the_load_with_the_fix(tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis", password=uuid.uuid4().hex) as redis_server:
        wrong = tmp_path / "wrong-password"
        wrong.write_text("nope")
        wrong.chmod(0o600)
        env = {"RUTH_STREAM_STORE": redis_server.url, "RUTH_STREAM_STORE_PASSWORD_FILE": str(wrong)}
        with pytest.raises(RuntimeError, match="refused the credentials"):
            start_triton(tmp_path / "srv", [TANK], env=env)


# ---- issue #12: a damaged SQLite store ------------------------------------------------------------------------------
def test_a_damaged_stream_database_is_moved_aside_and_the_model_serves(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "streams").mkdir(parents=True)
    damaged = state / "streams" / f"{TANK}-1.sqlite"
    damaged.write_bytes(b"SQLite format 3\x00" + b"\xa5" * 8192)
    handle = start_triton(tmp_path / "srv", [TANK], state_dir=state)  # before the fix: the load failed here
    try:
        with contextlib.closing(httpclient.InferenceServerClient(handle.http_url)) as client:
            stream, base = str(uuid.uuid4()), _base()
            tank_infer(client, stream, 0, 30.0, base)
            second = result_of(tank_infer(client, stream, 1, 90.0, base))
            assert second["level_percent"] == pytest.approx(60.0, abs=2.5)  # a working store, state kept
        aside = list((state / "streams").glob(f"{TANK}-1.sqlite.damaged-*"))
        assert len(aside) == 1, list((state / "streams").iterdir())
        assert "is damaged" in handle.log_text() and "moved aside" in handle.log_text()
    finally:
        handle.server.stop(grace_s=30)


def test_concurrent_frames_of_one_stream_on_two_servers_lose_no_update(tmp_path: Path) -> None:
    """Frames of one stream hit both servers (two instances each) at the same time: every frame's sample must end up
    in the shared smoothing window. A lost read-modify-write would drop one, and the mean would show it."""
    from concurrent.futures import ThreadPoolExecutor

    n, window = 40, 64
    config = {"smoothing_window": window}
    with running_redis(tmp_path / "redis", password=uuid.uuid4().hex) as redis_server:
        env = {
            "RUTH_STREAM_STORE": redis_server.url,
            "RUTH_STREAM_STORE_PASSWORD_FILE": str(redis_server.password_file),
        }
        handles = [start_triton(tmp_path / f"server{i}", [TANK], env=env) for i in range(2)]
        try:
            stream, base = str(uuid.uuid4()), _base()

            def send(i: int) -> float:
                stamp = (base + timedelta(seconds=i)).isoformat()
                # far from the mean either way: a dropped sample moves the mean by ~0.8 points
                frame = tank_frame(15.0 + 0.1 * i if i % 2 else 85.0 - 0.1 * i, seed=i)
                inputs = vision_inputs(httpclient, frame=frame, stream_id=stream, timestamp=stamp, config=config)
                with contextlib.closing(httpclient.InferenceServerClient(handles[i % 2].http_url)) as client:
                    return float(result_of(client.infer(TANK, inputs))["level_percent_raw"])

            with ThreadPoolExecutor(max_workers=8) as pool:
                raws = list(pool.map(send, range(n)))
            last = send(n)  # in order, after all of them: its window holds every frame
            stamp = (base + timedelta(seconds=n + 1)).isoformat()
            inputs = vision_inputs(httpclient, frame=tank_frame(50.0), stream_id=stream, timestamp=stamp, config=config)
            with contextlib.closing(httpclient.InferenceServerClient(handles[0].http_url)) as client:
                final = result_of(client.infer(TANK, inputs))
            samples = [*raws, last, float(final["level_percent_raw"])]
            assert final["level_percent"] == pytest.approx(sum(samples) / len(samples), abs=0.02)
        finally:
            for handle in handles:
                handle.server.stop(grace_s=30)
