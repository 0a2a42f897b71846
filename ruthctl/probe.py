"""Honest probes for orchestrators, served by `ruthctl serve` beside tritonserver.

Triton's own `/v2/health/ready` is wrong for an orchestrator both ways (docs/operations.md): it is 200 before any
model is loaded in explicit mode, and 400 for good after one failed load. `ruthctl serve` knows which models the
deployment wants, so it answers instead, on its own small port:

* `GET /ready`: 200 only when every *desired* model (the registry's ACTIVE ones not DISABLED on this server, or what
  `serve --model` named) is READY in Triton's index; 503 while they load, while a load failed, while tritonserver is
  restarted. A failed model that is deactivated or fixed no longer counts, so readiness recovers.
* `GET /live`: 503 when tritonserver is wedged: it doesn't answer `/v2/health/live` in bounded time, or a model has
  been UNLOADING for longer than `wedge_after_s` (an unload that never finishes after a stub died, which only a
  server restart heals). `serve` restarts tritonserver itself a bounded number of times (see `serve`).
* `GET /metrics`: the supervisor's own gauges and restart counter (Prometheus text).

The judgement is pure (`judge_live`, `judge_ready`, `Supervisor.observe`); `poll_triton` is the only I/O towards
Triton and uses a fresh connection per request (an idle keep-alive would hold up Triton's drain on SIGTERM).
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pydantic

from ruthctl.registry import Desired, Registry, State

__all__ = [
    "Observation",
    "ProbeServer",
    "Snapshot",
    "Supervisor",
    "Verdict",
    "ask",
    "judge_live",
    "judge_ready",
    "poll_triton",
    "probe_host",
    "wanted_models",
]

log = logging.getLogger(__name__)

#: Triton index states that mean "busy, not serving"; only UNLOADING can wedge for good (docs/operations.md).
WEDGING_STATES = ("UNLOADING",)
WEDGED = "wedged:"


@dataclasses.dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason}


class ProbeAnswer(pydantic.BaseModel):
    """The body of `/ready` and `/live`: written by the probe endpoint, read by `ruthctl probe` (`ask`)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=True)

    ok: bool
    reason: str
    phase: str
    restarts: int


@dataclasses.dataclass(frozen=True)
class Observation:
    """One look at tritonserver: did it answer, and its repository index (name -> (state, reason))."""

    at: float
    answered: bool
    index: Mapping[str, tuple[str | None, str]] | None = dataclasses.field(default_factory=dict)  # None: unknown
    error: str = ""  # why it didn't answer, or (answered) why the index is unknown


def poll_triton(
    http_url: str, token: str | None, timeout_s: float = 5.0, clock: Callable[[], float] = time.monotonic
) -> Observation:
    """`/v2/health/live` and the repository index, each on a fresh connection, each bounded by `timeout_s`."""
    now = clock()
    headers = {"Connection": "close"}
    try:
        with urllib.request.urlopen(  # noqa: S310 - our own server's loopback URL
            urllib.request.Request(f"http://{http_url}/v2/health/live", headers=headers), timeout=timeout_s
        ) as response:
            if response.status != 200:
                return Observation(now, False, error=f"/v2/health/live answered {response.status}")
        request = urllib.request.Request(
            f"http://{http_url}/v2/repository/index",
            data=b"{}",
            method="POST",
            headers={**headers, "Content-Type": "application/json", **({"ruth-admin-token": token} if token else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
                rows = json.loads(response.read() or b"[]")
        except (urllib.error.HTTPError, ValueError) as exc:  # it answers (so not wedged), but not with an index
            return Observation(now, True, index=None, error=f"repository index refused: {exc}")
    except urllib.error.HTTPError as exc:
        return Observation(now, False, error=f"tritonserver answered {exc.code}: {exc.reason}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return Observation(now, False, error=f"tritonserver did not answer in {timeout_s:.0f}s: {exc}")
    index = {str(r["name"]): (r.get("state"), str(r.get("reason", ""))) for r in rows if isinstance(r, dict)}
    return Observation(now, True, index=index)


def wanted_models(
    registry: Registry, server: str, available: Iterable[str], only: Sequence[str] | None = None
) -> list[str] | None:
    """The models this server must have READY: ACTIVE in the registry and not DISABLED here.

    None when there is no registry (then `serve` decides). A damaged registry is read through its audit log.
    `only` (serve --model) restricts the answer to those names.
    """
    models = registry.read_or_replay("probes use the audit log")
    if models is None:
        return None
    names = set(available)
    wanted = [
        name
        for name, entry in sorted(models.items())
        if name in names and entry.desired is Desired.ACTIVE and entry.on(server).state is not State.DISABLED
    ]
    return [n for n in wanted if n in only] if only is not None else wanted


def judge_ready(wanted: Sequence[str], observation: Observation | None) -> Verdict:
    """Pure: every wanted model READY in the observed index."""
    if observation is None:
        return Verdict(False, "starting: tritonserver not observed yet")
    if not observation.answered:
        return Verdict(False, f"tritonserver not answering: {observation.error}")
    if observation.index is None:
        return Verdict(False, observation.error)
    missing = []
    for name in wanted:
        state, reason = observation.index.get(name, (None, ""))
        if state != "READY":
            missing.append(f"{name} {state or 'not loaded'}" + (f" ({reason[:120]})" if reason else ""))
    if missing:
        return Verdict(False, f"{len(missing)}/{len(wanted)} wanted models not READY: " + "; ".join(missing))
    return Verdict(True, f"{len(wanted)}/{len(wanted)} wanted models READY")


def judge_live(
    observation: Observation | None,
    unanswered_since: float | None,
    busy_since: Mapping[str, float],
    now: float,
    *,
    unresponsive_after_s: float,
    wedge_after_s: float,
) -> Verdict:
    """Pure: wedged when Triton stayed silent for `unresponsive_after_s`, or a model UNLOADING for `wedge_after_s`."""
    if unanswered_since is not None and now - unanswered_since >= unresponsive_after_s:
        error = observation.error if observation is not None else ""
        return Verdict(False, f"{WEDGED} tritonserver has not answered for {now - unanswered_since:.0f}s ({error})")
    stuck = sorted((since, name) for name, since in busy_since.items() if now - since >= wedge_after_s)
    if stuck:
        since, name = stuck[0]
        return Verdict(False, f"{WEDGED} {name} UNLOADING for {now - since:.0f}s (limit {wedge_after_s:.0f}s)")
    return Verdict(True, "tritonserver answering" if observation is not None else "starting")


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What the probe endpoint answers: the last verdicts, when they were made, and the supervisor's counters."""

    ready: Verdict
    live: Verdict
    at: float
    phase: str  # starting | loading | serving | restarting | stopping
    restarts: int = 0
    restart_reasons: tuple[str, ...] = ()

    @property
    def wedged(self) -> bool:
        """Not live because of what tritonserver did (a restart can help), rather than a stalled supervisor."""
        return not self.live.ok and self.live.reason.startswith(WEDGED)


class Supervisor:
    """Tracks observations over time and keeps the verdicts the probe endpoint serves (thread-safe)."""

    def __init__(
        self,
        *,
        wedge_after_s: float = 60.0,
        unresponsive_after_s: float = 30.0,
        stale_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wedge_after_s = wedge_after_s
        self.unresponsive_after_s = unresponsive_after_s
        self.stale_after_s = stale_after_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: Observation | None = None
        self._unanswered_since: float | None = None
        self._busy_since: dict[str, float] = {}
        self._phase = "starting"
        self._restarts: list[str] = []
        self._forgotten_at = float("-inf")
        self._snapshot = Snapshot(
            Verdict(False, "starting: tritonserver not observed yet"), Verdict(True, "starting"), clock(), "starting"
        )

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self._phase = phase
            self._snapshot = dataclasses.replace(self._snapshot, phase=phase, at=self.clock())

    def forget(self) -> None:
        """A new tritonserver process: what the old one did says nothing about it (observations made before now,
        still in flight on the poller, are dropped by `observe`)."""
        with self._lock:
            self._last = None
            self._unanswered_since = None
            self._busy_since = {}
            self._forgotten_at = self.clock()
            self._snapshot = Snapshot(
                Verdict(False, f"{self._phase}: tritonserver not observed yet"),
                Verdict(True, f"{self._phase}: new tritonserver process"),
                self._forgotten_at,
                self._phase,
                len(self._restarts),
                tuple(self._restarts),
            )

    def count_restart(self, reason: str) -> None:
        with self._lock:
            self._restarts.append(reason)
            self._snapshot = dataclasses.replace(
                self._snapshot, restarts=len(self._restarts), restart_reasons=tuple(self._restarts)
            )

    def observe(self, observation: Observation, wanted: Sequence[str]) -> Snapshot:
        with self._lock:
            if observation.at < self._forgotten_at:  # looked at the previous tritonserver process
                return self._snapshot
            if observation.answered:
                self._unanswered_since = None
                if observation.index is not None:
                    busy = {n for n, (state, _) in observation.index.items() if state in WEDGING_STATES}
                    self._busy_since = {n: self._busy_since.get(n, observation.at) for n in busy}
            elif self._unanswered_since is None:
                self._unanswered_since = observation.at
            self._last = observation
            live = judge_live(
                observation,
                self._unanswered_since,
                self._busy_since,
                observation.at,
                unresponsive_after_s=self.unresponsive_after_s,
                wedge_after_s=self.wedge_after_s,
            )
            ready = judge_ready(wanted, observation)
            if self._phase != "serving":
                ready = Verdict(False, f"{self._phase}: {ready.reason}")
            if not live.ok:
                ready = Verdict(False, live.reason)
            self._snapshot = Snapshot(
                ready, live, observation.at, self._phase, len(self._restarts), tuple(self._restarts)
            )
            return self._snapshot

    def snapshot(self) -> Snapshot:
        """The last verdicts; a supervisor that stopped observing (stuck) is itself reported not live."""
        with self._lock:
            snap = self._snapshot
        age = self.clock() - snap.at
        if snap.phase == "serving" and age > self.stale_after_s:
            stale = Verdict(False, f"supervisor stalled: no observation for {age:.0f}s")
            return dataclasses.replace(snap, live=stale, ready=stale)
        return snap


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        snap = self.server.supervisor.snapshot()  # type: ignore[attr-defined]
        if self.path in ("/ready", "/live"):
            verdict = snap.ready if self.path == "/ready" else snap.live
            answer = ProbeAnswer(ok=verdict.ok, reason=verdict.reason, phase=snap.phase, restarts=snap.restarts)
            body = answer.model_dump_json().encode()
            self._send(200 if verdict.ok else 503, body, "application/json")
        elif self.path == "/metrics":
            self._send(200, metrics_text(snap).encode(), "text/plain; version=0.0.4")
        else:
            self._send(404, b'{"error":"unknown path: /ready, /live or /metrics"}', "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:  # probes every few seconds would flood the log
        return None


def metrics_text(snap: Snapshot) -> str:
    lines = [
        "# HELP ruthctl_serve_ready 1 when every wanted model is READY (the /ready probe)",
        "# TYPE ruthctl_serve_ready gauge",
        f"ruthctl_serve_ready {1 if snap.ready.ok else 0}",
        "# HELP ruthctl_serve_live 0 when tritonserver is wedged (the /live probe)",
        "# TYPE ruthctl_serve_live gauge",
        f"ruthctl_serve_live {1 if snap.live.ok else 0}",
        "# HELP ruthctl_serve_restarts_total tritonserver restarts by ruthctl serve (wedged, or exited on its own)",
        "# TYPE ruthctl_serve_restarts_total counter",
        f"ruthctl_serve_restarts_total {snap.restarts}",
    ]
    return "\n".join(lines) + "\n"


class ProbeServer:
    """The probe endpoint on its own thread; `close` stops it."""

    def __init__(self, supervisor: Supervisor, host: str, port: int) -> None:
        self.httpd = http.server.ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.supervisor = supervisor  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ruth-probe", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> ProbeServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def probe_host(bind: str) -> str:
    """Where a local probe reaches an endpoint bound to `bind` (a wildcard address is reached on loopback)."""
    return "127.0.0.1" if bind in ("0.0.0.0", "", "::") else bind  # noqa: S104 - a comparison, not a bind


def ask(host: str, port: int, which: str, timeout_s: float = 4.0) -> Verdict:
    """`ruthctl probe ready|live`: the endpoint's verdict, or not ok when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/{which}", timeout=timeout_s) as response:  # noqa: S310
            return _verdict(response.read(), ok=True)
    except urllib.error.HTTPError as exc:
        return _verdict(exc.read(), ok=False)
    except (urllib.error.URLError, OSError) as exc:
        return Verdict(
            False, f"no probe endpoint at {host}:{port} ({getattr(exc, 'reason', exc)}); is `ruthctl serve` up?"
        )


def _verdict(body: bytes, *, ok: bool) -> Verdict:
    """The HTTP status decides `ok` (what an orchestrator goes by); the reason comes from the typed answer, or the
    start of the body when it is not one (another endpoint, an older serve)."""
    try:
        return Verdict(ok, ProbeAnswer.model_validate_json(body).reason)
    except pydantic.ValidationError:
        return Verdict(ok, body.decode("utf-8", "replace")[:200])
