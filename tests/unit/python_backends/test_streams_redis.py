"""The Redis backend of the stream store against a real redis-server (started per module on a free port), and the
`RUTH_STREAM_STORE` setting that chooses it. The behaviour both backends share is also asserted on SQLite, so the
two stay interchangeable behind `ctx.advance`."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_support import RedisServer, redis_available, running_redis

from python_backends.errors import ModelLoadError, StreamStoreUnavailable
from python_backends.runtime import RuntimeSettings
from python_backends.streams import SqliteStreamStore, StreamStore, StreamStoreSpec, open_stream_store

pytestmark = pytest.mark.skipif(
    not redis_available(), reason="needs Debian's redis-server (apt-get install redis-server)"
)


def bump(state: dict[str, Any] | None) -> dict[str, Any]:
    return {"n": (state or {}).get("n", 0) + 1}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis"), password="s3cret-" + uuid.uuid4().hex) as server:
        yield server


def redis_spec(server: RedisServer, query: str = "") -> StreamStoreSpec:
    return StreamStoreSpec.parse(server.url + query, server.password_file)


def open_redis(server: RedisServer, **kwargs: Any) -> StreamStore:
    return open_stream_store(
        redis_spec(server),
        state_dir=Path("/nonexistent"),
        namespace=kwargs.get("namespace", f"m-{uuid.uuid4().hex[:8]}"),
        max_streams=kwargs.get("max_streams", 10000),
        idle_ttl_s=kwargs.get("idle_ttl_s", 300.0),
    )


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer) -> Iterator[StreamStore]:
    s: StreamStore
    s = SqliteStreamStore(tmp_path / "s.sqlite") if request.param == "sqlite" else open_redis(redis_server)
    yield s
    s.close()


# ---- the setting -------------------------------------------------------------------------------------------------
def test_sqlite_is_the_default() -> None:
    assert StreamStoreSpec.parse(None).kind == "sqlite"
    assert RuntimeSettings.from_environ({}).stream_store.kind == "sqlite"
    assert StreamStoreSpec.parse(" SQLite ").kind == "sqlite"


def test_a_redis_url_is_normalised_and_keeps_its_timeouts(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    spec = StreamStoreSpec.parse("redis://ruth@redis.example?socket_timeout=0.25", secret)
    assert (spec.kind, spec.url, spec.socket_timeout_s, spec.password_file) == (
        "redis",
        "redis://ruth@redis.example:6379/0",
        0.25,
        secret,
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("redis://:hunter2@redis:6379/0", "must not carry a password"),
        ("redis://user:hunter2@redis:6379/0", "must not carry a password"),
        ("postgres://db", "scheme"),
        ("redis:///0", "needs a host"),
        ("redis://redis:6379/cache", "database must be a number"),
        ("redis://redis:6379/0?socket_timout=1", "unknown option"),
        ("redis://redis:6379/0?socket_timeout=0", "must be in"),
        ("redis://redis:99999/0", "port"),
    ],
)
def test_bad_store_settings_are_refused_with_the_fix(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        StreamStoreSpec.parse(value)
    assert "hunter2" not in str(info.value)


def test_a_missing_password_file_is_refused() -> None:
    with pytest.raises(ValueError, match="not a readable file"):
        StreamStoreSpec.parse("redis://redis", "/nonexistent/redis-password")


# ---- what both backends promise ------------------------------------------------------------------------------------
def test_a_new_stream_starts_from_none_and_streams_are_isolated(store: StreamStore) -> None:
    seen: list[dict[str, Any] | None] = []

    def first(state: dict[str, Any] | None) -> dict[str, Any]:
        seen.append(state)
        return {"n": 1}

    assert store.update("s1", "cfg", first) == {"n": 1}
    store.update("s1", "cfg", bump)
    store.update("s2", "cfg", bump)
    assert seen == [None]
    assert (store.get("s1"), store.get("s2"), store.get("s3")) == ({"n": 2}, {"n": 1}, None)
    assert store.count() == 2


def test_a_config_change_restarts_the_stream(store: StreamStore) -> None:
    store.update("a", "cfg1", bump)
    store.update("a", "cfg1", bump)
    assert store.update("a", "cfg2", bump) == {"n": 1}


def test_a_failing_step_changes_nothing(store: StreamStore) -> None:
    store.update("s", "cfg", bump)

    def boom(state: dict[str, Any] | None) -> dict[str, Any]:
        raise ValueError("step failed")

    with pytest.raises(ValueError):
        store.update("s", "cfg", boom)
    assert store.get("s") == {"n": 1}


def test_reset_forgets_one_stream(store: StreamStore) -> None:
    store.update("a", "cfg", bump)
    store.update("b", "cfg", bump)
    assert store.reset("a") is True
    assert store.reset("a") is False
    assert (store.get("a"), store.count()) == (None, 1)


def test_threads_sharing_one_store_lose_nothing(store: StreamStore) -> None:
    def work() -> None:
        for _ in range(50):
            store.update("shared", "cfg", bump)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert store.get("shared") == {"n": 200}


def test_close_is_idempotent_and_final(store: StreamStore) -> None:
    store.close()
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.update("s1", "cfg", bump)


# ---- Redis: atomic across processes (as servers of a fleet are) ---------------------------------------------------
def _increment(url: str, password_file: str, namespace: str, times: int, queue: Any) -> None:
    try:
        spec = StreamStoreSpec.parse(url, password_file)
        store = open_stream_store(spec, state_dir=Path("/x"), namespace=namespace, max_streams=100, idle_ttl_s=60)
        for _ in range(times):
            store.update("shared", "cfg", bump)
        store.close()
        queue.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        queue.put(f"{type(exc).__name__}: {exc}")


def test_processes_racing_on_one_stream_lose_no_update(redis_server: RedisServer) -> None:
    namespace = f"race-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    args = (redis_server.url, str(redis_server.password_file), namespace, 150, queue)
    procs = [ctx.Process(target=_increment, args=args) for _ in range(4)]
    for proc in procs:
        proc.start()
    outcomes = [queue.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert outcomes == ["ok"] * 4
    spec = redis_spec(redis_server)
    reader = open_stream_store(spec, state_dir=Path("/x"), namespace=namespace, max_streams=100, idle_ttl_s=60)
    assert reader.get("shared") == {"n": 600}  # a lost read-modify-write would leave fewer
    reader.close()


def test_a_step_runs_again_on_the_newer_state_when_another_writer_got_there_first(redis_server: RedisServer) -> None:
    namespace = f"pair-{uuid.uuid4().hex[:8]}"
    store, other = open_redis(redis_server, namespace=namespace), open_redis(redis_server, namespace=namespace)
    store.update("s", "cfg", bump)
    seen: list[int] = []

    def racing(state: dict[str, Any] | None) -> dict[str, Any]:
        seen.append((state or {})["n"])
        if len(seen) == 1:
            other.update("s", "cfg", bump)  # a second server writes between our read and our write
        return bump(state)

    assert store.update("s", "cfg", racing) == {"n": 3}
    assert seen == [1, 2]
    store.close()
    other.close()


# ---- Redis: the bounds, native ------------------------------------------------------------------------------------
def test_idle_streams_expire_by_ttl(redis_server: RedisServer) -> None:
    store = open_redis(redis_server, idle_ttl_s=0.5)
    store.update("idle", "cfg", bump)
    assert store.count() == 1
    time.sleep(1.0)
    assert store.get("idle") is None
    assert store.count() == 0
    assert store.update("idle", "cfg", bump) == {"n": 1}  # starts afresh
    store.close()


def test_new_streams_beyond_the_bound_push_out_the_least_recently_seen(redis_server: RedisServer) -> None:
    store = open_redis(redis_server, max_streams=3)
    for name in ("a", "b", "c"):
        store.update(name, "cfg", bump)
        time.sleep(0.01)
    store.update("a", "cfg", bump)  # a is now the most recent
    time.sleep(0.01)
    store.update("d", "cfg", bump)
    assert store.get("b") is None
    assert {n: store.get(n) for n in ("a", "c", "d")} == {"a": {"n": 2}, "c": {"n": 1}, "d": {"n": 1}}
    assert store.count() == 3
    for i in range(50):
        store.update(f"churn-{i}", "cfg", bump)
    assert store.count() == 3
    store.close()


# ---- Redis: credentials and failures -------------------------------------------------------------------------------
def test_a_redis_that_needs_a_password_fails_the_load_without_one(redis_server: RedisServer) -> None:
    with pytest.raises(ModelLoadError, match="RUTH_STREAM_STORE_PASSWORD_FILE"):
        open_stream_store(
            StreamStoreSpec.parse(redis_server.url), state_dir=Path("/x"), namespace="n", max_streams=1, idle_ttl_s=1
        )


def test_a_wrong_password_fails_the_load_and_is_never_logged(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password-42\n")
    wrong.chmod(0o600)
    with caplog.at_level(logging.DEBUG), pytest.raises(ModelLoadError, match="refused the credentials") as info:
        open_stream_store(
            StreamStoreSpec.parse(redis_server.url, wrong),
            state_dir=Path("/x"),
            namespace="n",
            max_streams=1,
            idle_ttl_s=1,
        )
    assert "not-the-password-42" not in str(info.value) + caplog.text
    assert redis_server.password is not None and redis_server.password not in str(info.value) + caplog.text


def test_unreachable_at_load_loads_then_answers_unavailable_until_redis_is_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "late")  # not started yet: the model comes up first
    spec = StreamStoreSpec.parse(server.url + "?socket_connect_timeout=0.5")
    with caplog.at_level(logging.WARNING):
        store = open_stream_store(spec, state_dir=tmp_path, namespace="late", max_streams=10, idle_ttl_s=60)
    assert "not reachable at load" in caplog.text
    with pytest.raises(StreamStoreUnavailable, match=f"127.0.0.1:{server.port}"):
        store.update("s", "cfg", bump)
    server.start()
    try:
        assert store.update("s", "cfg", bump) == {"n": 1}  # recovers by itself, no reload
    finally:
        server.stop()
        store.close()


def test_mid_stream_outage_answers_unavailable_and_a_restart_starts_streams_afresh(tmp_path: Path) -> None:
    with running_redis(tmp_path / "r") as server:
        store = open_stream_store(
            StreamStoreSpec.parse(server.url), state_dir=tmp_path, namespace="m", max_streams=10, idle_ttl_s=60
        )
        store.update("s", "cfg", bump)
        store.update("s", "cfg", bump)
        server.stop()
        with pytest.raises(StreamStoreUnavailable):
            store.update("s", "cfg", bump)
        server.start()  # same port, no data: Redis lost every stream
        assert store.update("s", "cfg", bump) == {"n": 1}
        assert store.update("s", "cfg", bump) == {"n": 2}
        store.close()


def test_a_hung_redis_answers_unavailable_within_the_socket_timeout(tmp_path: Path) -> None:
    with running_redis(tmp_path / "r") as server:
        spec = StreamStoreSpec.parse(server.url + "?socket_timeout=0.3")
        store = open_stream_store(spec, state_dir=tmp_path, namespace="m", max_streams=10, idle_ttl_s=60)
        store.update("s", "cfg", bump)
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StreamStoreUnavailable, match="Timeout"):
                store.update("s", "cfg", bump)
            assert time.monotonic() - started < 3.0  # 0.3 s socket timeout; generous for a busy machine
        finally:
            server.resume()
        assert store.update("s", "cfg", bump) == {"n": 2}  # the timed-out frame wrote nothing
        store.close()


def test_a_hung_redis_at_load_does_not_hang_the_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with running_redis(tmp_path / "r") as server:
        server.pause()  # the kernel still accepts connections; nothing answers
        try:
            spec = StreamStoreSpec.parse(server.url + "?socket_timeout=0.3&socket_connect_timeout=0.3")
            started = time.monotonic()
            with caplog.at_level(logging.WARNING):
                store = open_stream_store(spec, state_dir=tmp_path, namespace="m", max_streams=10, idle_ttl_s=60)
            assert time.monotonic() - started < 3.0
            assert "not reachable at load" in caplog.text
            with pytest.raises(StreamStoreUnavailable):
                store.update("s", "cfg", bump)
        finally:
            server.resume()
        assert store.update("s", "cfg", bump) == {"n": 1}
        store.close()


#: the ACL docs/deployment.md gives for a dedicated Redis user
DOCUMENTED_ACL = ["on", "~ruth:*", "+@read", "+@write", "+@scripting", "+ping", "+time", "+client|setname"]


def test_a_least_privilege_acl_user_is_enough(redis_server: RedisServer, tmp_path: Path) -> None:
    import redis

    admin = redis.Redis(port=redis_server.port, password=redis_server.password)
    admin.acl_setuser("ruth", reset=True, passwords=["+ruth-pw"], enabled=True)
    admin.execute_command("ACL", "SETUSER", "ruth", *DOCUMENTED_ACL)
    admin.close()
    secret = tmp_path / "ruth-pw"
    secret.write_text("ruth-pw")
    secret.chmod(0o600)
    spec = StreamStoreSpec.parse(f"redis://ruth@127.0.0.1:{redis_server.port}/0", secret)
    store = open_stream_store(spec, state_dir=tmp_path, namespace="acl-1", max_streams=2, idle_ttl_s=60)
    for name in ("a", "b", "c"):  # the third pushes out the first: the whole script runs
        store.update(name, "cfg", bump)
    assert (store.count(), store.get("a"), store.reset("c"), store.evict_idle()) == (2, None, True, 0)
    store.close()


def test_a_full_redis_without_eviction_answers_unavailable(tmp_path: Path) -> None:
    import redis

    with running_redis(tmp_path / "r") as server:
        store = open_stream_store(
            StreamStoreSpec.parse(server.url), state_dir=tmp_path, namespace="m", max_streams=10, idle_ttl_s=60
        )
        store.update("s", "cfg", bump)
        admin = redis.Redis(port=server.port)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")  # below what is used: every write is refused with OOM
        try:
            with pytest.raises(StreamStoreUnavailable, match="OutOfMemoryError"):
                store.update("s", "cfg", bump)
        finally:
            admin.config_set("maxmemory", "64mb")
            admin.close()
        assert store.update("s", "cfg", bump) == {"n": 2}
        store.close()
