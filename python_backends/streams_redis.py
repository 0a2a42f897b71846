"""The Redis backend of `StreamStore`: per-stream state shared by every server of a fleet.

Layout, per model version (`namespace`, e.g. `fall_detection-1`); the `{namespace}` hash tag keeps a model's keys in
one slot, so the script below also runs on a Redis Cluster:

- `ruth:{<namespace>}:s:<stream_id>`: a hash {c: config key, s: state JSON, v: version}, with a TTL of `idle_ttl_s`
  renewed on every update: idle streams expire natively.
- `ruth:{<namespace>}:seen`: a sorted set stream_id -> last update (Redis server time, ms) for the `max_streams`
  bound: a new stream beyond it pushes out the least recently seen.

`update` is an optimistic read-modify-write: HMGET the state and its version, run the step in this process, then a
Lua script stores the new state only if the version is still the one read (compare-and-set, atomic in Redis), and
otherwise the update starts over from the newer state. Two servers handling frames of one stream at the same moment
therefore serialise like two instances on SQLite do: no frame's update is lost, and the step sees every earlier
write. The step may run more than once for one frame (it is a pure function of the state it is given).

Failure behaviour (docs/deployment.md, "Fleet: stream state on Redis"): a Redis that can't be reached, or that
doesn't answer within the socket timeout (1 s unless the URL says otherwise), fails that frame with UNAVAILABLE
naming the store; nothing falls back to local state, which would give silently wrong answers across a fleet.
The next frame tries again, so the model recovers by itself when Redis is back. A Redis that lost its data
(restarted without persistence) just looks like new streams: each starts afresh.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from python_backends.bounds import above, at_least
from python_backends.errors import ModelLoadError, StreamStoreUnavailable
from python_backends.params import DEFAULTS
from python_backends.streams import StepFn, StreamStoreSpec, decode_state

__all__ = ["RedisStreamStore"]

log = logging.getLogger("python_backends.streams")

#: compare-and-set attempts per frame before giving up (each conflict means another server wrote this stream
#: between our read and our write; more than a handful only happens when many servers hammer one stream)
MAX_ATTEMPTS = 16

#: Redis errors that mean "not now" rather than a bug: answered UNAVAILABLE like an unreachable Redis (a password
#: changed under a running model, a Redis still loading or busy, out of memory without eviction, a failover)
_TRANSIENT = frozenset({"NOAUTH", "WRONGPASS", "LOADING", "BUSY", "OOM", "READONLY", "MASTERDOWN", "TRYAGAIN"})
#: the same, where redis-py turns them into exception types (and drops the prefix from the message)
_TRANSIENT_TYPES = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)

# KEYS: state hash, seen zset. ARGV: expected version ("" = absent), config key, state JSON, ttl ms, max streams,
# stream id, key prefix. Returns the new version, or -1 when the version moved on (the caller retries).
_CAS = """
local v = redis.call('HGET', KEYS[1], 'v')
if (v or '') ~= ARGV[1] then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
local nv = (tonumber(v) or 0) + 1
redis.call('HSET', KEYS[1], 'c', ARGV[2], 's', ARGV[3], 'v', nv)
redis.call('PEXPIRE', KEYS[1], ttl)
local added = redis.call('ZADD', KEYS[2], now, ARGV[6])
redis.call('PEXPIRE', KEYS[2], ttl)
if added == 1 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
  local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
  if excess > 0 then
    local old = redis.call('ZPOPMIN', KEYS[2], excess)
    for i = 1, #old, 2 do redis.call('DEL', ARGV[7] .. old[i]) end
  end
end
return nv
"""

# KEYS: seen zset. ARGV: ttl ms, max streams, key prefix. Drops idle members (their hashes have expired already)
# and the least recently seen beyond the bound; returns how many.
_EVICT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local removed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if excess > 0 then
  local old = redis.call('ZPOPMIN', KEYS[1], excess)
  for i = 1, #old, 2 do redis.call('DEL', ARGV[3] .. old[i]) end
  removed = removed + excess
end
return removed
"""

# KEYS: seen zset. ARGV: ttl ms. Streams seen within the TTL.
_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf')
"""


class RedisStreamStore:
    """`StreamStore` on one Redis (or a Redis reached through a proxy/sentinel address); thread-safe."""

    def __init__(
        self,
        spec: StreamStoreSpec,
        namespace: str,
        *,
        max_streams: int = DEFAULTS.state.max_streams,
        idle_ttl_s: float = DEFAULTS.state.idle_ttl_s,
    ):
        if spec.kind != "redis":
            raise ValueError(f"not a redis store: {spec.describe()}")
        self.spec = spec
        self.max_streams = at_least("max_streams", max_streams, 1)
        self.idle_ttl_s = above("idle_ttl_s", idle_ttl_s, 0)
        self._ttl_ms = max(int(idle_ttl_s * 1000), 1)
        self._prefix = f"ruth:{{{namespace}}}:s:"
        self._seen = f"ruth:{{{namespace}}}:seen"
        self._closed = threading.Event()
        self._last_complaint = 0.0
        # No retries inside the client: a write whose reply timed out may have been applied, and replaying it would
        # apply the frame twice. Reads are retried once here (a pooled connection may be stale after a Redis restart).
        self._client = redis.Redis.from_url(
            spec.url,
            password=spec.read_password(),
            socket_timeout=spec.socket_timeout_s,
            socket_connect_timeout=spec.connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            decode_responses=True,
            client_name=f"ruth-{namespace}",
        )
        self._cas = self._client.register_script(_CAS)
        self._evict = self._client.register_script(_EVICT)
        self._count = self._client.register_script(_COUNT)
        self._check_at_load()

    def _check_at_load(self) -> None:
        """A wrong password or a non-Redis endpoint fails the load (a fix is needed); an unreachable Redis doesn't."""
        try:
            self._client.ping()
        except redis.AuthenticationError as exc:
            self._client.close()
            raise ModelLoadError(
                f"stream store {self.spec.describe()} refused the credentials ({exc}); "
                "check RUTH_STREAM_STORE_PASSWORD_FILE and the user in RUTH_STREAM_STORE"
            ) from exc
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                self._client.close()
                raise ModelLoadError(
                    f"stream store {self.spec.describe()} requires a password: set RUTH_STREAM_STORE_PASSWORD_FILE"
                ) from exc
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Pods start in any order: the model loads, and frames answer UNAVAILABLE until Redis is reachable.
            log.warning(
                "stream store %s is not reachable at load (%s): stateful frames answer UNAVAILABLE until it is",
                self.spec.describe(),
                exc,
            )

    # ---- StreamStore ---------------------------------------------------------------------------------------------
    def update(self, stream_id: str, config_key: str, fn: StepFn) -> dict[str, Any]:
        key = self._prefix + stream_id
        for attempt in range(MAX_ATTEMPTS):
            stored_config, raw, version = self._call(lambda: self._client.hmget(key, "c", "s", "v"), retry=True)
            previous = self._decode(stream_id, raw) if raw is not None and stored_config == config_key else None
            new = fn(previous)
            if not isinstance(new, dict):
                raise TypeError(f"stream state must be a dict, got {type(new).__name__}")
            encoded = json.dumps(new, separators=(",", ":"))
            args = [version or "", config_key, encoded, self._ttl_ms, self.max_streams, stream_id, self._prefix]
            written = self._call(lambda args=args: self._cas(keys=[key, self._seen], args=args), retry=False)
            if int(written) >= 0:
                return new
            if attempt >= 1:  # two servers racing on one stream: let the other one finish
                time.sleep(random.uniform(0.0, 0.002 * attempt))
        raise StreamStoreUnavailable(
            f"stream store {self.spec.describe()}: stream {stream_id} kept changing under this update "
            f"({MAX_ATTEMPTS} attempts); retry"
        )

    def get(self, stream_id: str) -> dict[str, Any] | None:
        raw = self._call(lambda: self._client.hget(self._prefix + stream_id, "s"), retry=True)
        return None if raw is None else self._decode(stream_id, raw)

    def reset(self, stream_id: str) -> bool:
        def both() -> Any:
            pipe = self._client.pipeline(transaction=False)  # one round trip; no MULTI permission needed
            pipe.delete(self._prefix + stream_id)
            pipe.zrem(self._seen, stream_id)
            return pipe.execute()

        deleted, _ = self._call(both, retry=False)
        return bool(deleted)

    def count(self) -> int:
        return int(self._call(lambda: self._count(keys=[self._seen], args=[self._ttl_ms]), retry=True))

    def evict_idle(self) -> int:
        removed = int(
            self._call(
                lambda: self._evict(keys=[self._seen], args=[self._ttl_ms, self.max_streams, self._prefix]),
                retry=False,
            )
        )
        if removed:
            log.info("stream store %s: evicted %d stream(s)", self.spec.describe(), removed)
        return removed

    def close(self) -> None:
        """Close the connections; safe to call twice. Later calls raise RuntimeError."""
        if not self._closed.is_set():
            self._closed.set()
            self._client.close()

    # ---- internals -----------------------------------------------------------------------------------------------
    def _call(self, op: Any, *, retry: bool) -> Any:
        if self._closed.is_set():
            raise RuntimeError(f"stream store {self.spec.describe()} is closed")
        for attempt in (0, 1):
            try:
                return op()
            except redis.ConnectionError as exc:
                if retry and attempt == 0:
                    continue  # a stale pooled connection (Redis restarted): one fresh try
                raise self._unavailable(exc) from exc
            except redis.TimeoutError as exc:
                raise self._unavailable(exc) from exc
            except redis.ResponseError as exc:
                if isinstance(exc, _TRANSIENT_TYPES) or str(exc).split(" ", 1)[0] in _TRANSIENT:
                    raise self._unavailable(exc) from exc
                raise
        raise AssertionError("unreachable")

    def _unavailable(self, exc: Exception) -> StreamStoreUnavailable:
        now = time.monotonic()
        if now - self._last_complaint > 10.0:  # one line per 10 s per process, not one per frame
            self._last_complaint = now
            log.warning("stream store %s unavailable: %s: %s", self.spec.describe(), type(exc).__name__, exc)
        return StreamStoreUnavailable(f"stream store {self.spec.describe()} unavailable ({type(exc).__name__}: {exc})")

    def _decode(self, stream_id: str, raw: str) -> dict[str, Any] | None:
        return decode_state(raw, where=self.spec.url, stream_id=stream_id)
