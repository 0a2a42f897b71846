"""One adapter over tritonclient's HTTP and gRPC clients: the only module of ruthctl that talks to Triton.

Reconcile and the commands see `TritonAdapter` (a Protocol, so tests of pure logic can pass a fake) and a few
typed errors; the protocol differences stay here: index shapes, config messages, and the admin token, which
HTTP expects as header `ruth-admin-token` and gRPC as metadata `triton-grpc-protocol-ruth-admin-token` (Triton
prefixes restricted-protocol keys on gRPC; measured on 2.51, a bare key is refused).
"""

from __future__ import annotations

import dataclasses
import enum
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

from tritonclient.grpc import model_config_pb2 as pb

from ruthctl.access import HEADER
from ruthctl.render import config_from_json, config_to_json

__all__ = [
    "Endpoint",
    "Forbidden",
    "IndexEntry",
    "LoadFailed",
    "RequestFailed",
    "Transport",
    "TritonAPIError",
    "TritonAdapter",
    "TritonClient",
    "Unreachable",
]

GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})  # noqa: S104 - compared, not bound


class Transport(str, enum.Enum):
    HTTP = "http"
    GRPC = "grpc"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A Triton server as the operator names it: `host:port` (HTTP) or `grpc://host:port`.

    The metrics port follows the `serve` layout (HTTP p, gRPC p+1, metrics p+2) unless the URL says
    `?metrics=PORT`. `str(endpoint)` is the canonical form, used as the server's key in the registry.
    """

    transport: Transport
    host: str
    port: int
    metrics_port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        raw = text.strip()
        if "://" not in raw:
            raw = "http://" + raw
        parsed = urllib.parse.urlsplit(raw)
        scheme = parsed.scheme.lower()
        if scheme not in ("http", "grpc") or not parsed.hostname or parsed.port is None:
            raise ValueError(f"{text!r}: expected host:port (HTTP) or grpc://host:port")
        transport = Transport(scheme)
        query = urllib.parse.parse_qs(parsed.query)
        default_metrics = parsed.port + (2 if transport is Transport.HTTP else 1)
        try:
            metrics = int(query.get("metrics", [default_metrics])[0])
        except ValueError as exc:
            raise ValueError(f"{text!r}: metrics=PORT must be a number") from exc
        return cls(transport=transport, host=parsed.hostname, port=parsed.port, metrics_port=metrics)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.metrics_port}/metrics"

    @property
    def is_local(self) -> bool:
        return self.host in LOCAL_HOSTS or self.host == socket.gethostname()

    def __str__(self) -> str:
        return self.address if self.transport is Transport.HTTP else f"grpc://{self.address}"

    def on(self, transport: Transport) -> Endpoint:
        """The same server over the other protocol, by the `serve` layout (HTTP p, gRPC p+1)."""
        if transport is self.transport:
            return self
        shift = 1 if transport is Transport.GRPC else -1
        return dataclasses.replace(self, transport=transport, port=self.port + shift)


class TritonAPIError(Exception):
    """Root of the adapter's errors."""


class Unreachable(TritonAPIError):
    """Nothing answered (refused, timed out, name not resolved)."""


class Forbidden(TritonAPIError):
    """The repository API refused the request: the admin token is missing or wrong."""


class LoadFailed(TritonAPIError):
    """Triton refused or failed the load; `reason` is Triton's own message."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"load of {model} failed: {reason}")
        self.model = model
        self.reason = reason


class RequestFailed(TritonAPIError):
    """Any other error answer; `status` is Triton's HTTP status or gRPC code as tritonclient reports it."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"[{status}] {message}")
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    """One row of `POST /v2/repository/index`; a model never loaded has no version and no state."""

    name: str
    version: str | None = None
    state: str | None = None
    reason: str = ""

    @property
    def ready(self) -> bool:
        return self.state == "READY"


class TritonAdapter(Protocol):
    endpoint: Endpoint

    def live(self) -> bool: ...
    def ready(self) -> bool: ...
    def index(self) -> list[IndexEntry]: ...
    def load(
        self, name: str, config: pb.ModelConfig | None = None, files: Mapping[str, bytes] | None = None
    ) -> None: ...
    def unload(self, name: str) -> None: ...
    def model_config(self, name: str) -> pb.ModelConfig: ...
    def model_ready(self, name: str, version: str = "") -> bool: ...
    def statistics(self, name: str = "") -> dict[str, Any]: ...
    def metrics(self) -> str | None: ...
    def close(self) -> None: ...


def _timeout_types() -> tuple[type[BaseException], ...]:
    """gevent's Timeout (raised by geventhttpclient) is a BaseException; catch it without importing gevent eagerly."""
    try:
        from gevent import Timeout  # noqa: PLC0415
    except ImportError:  # pragma: no cover - gevent comes with tritonclient[http]
        return (socket.timeout,)
    return (socket.timeout, Timeout)


_TIMEOUTS: tuple[type[BaseException], ...] = (OSError, *_timeout_types())


class TritonClient:
    """`TritonAdapter` over tritonclient. Close it (or use `with`): an idle keep-alive HTTP connection holds up
    Triton's graceful shutdown for its whole exit timeout (docs/triton-notes.md §4)."""

    def __init__(
        self,
        endpoint: Endpoint | str,
        token: str | None = None,
        *,
        timeout_s: float = 10.0,
        load_timeout_s: float = 120.0,
    ) -> None:
        self.endpoint = endpoint if isinstance(endpoint, Endpoint) else Endpoint.parse(endpoint)
        self.token = token
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s
        self._client: Any = None

    # -- plumbing ---------------------------------------------------------------------------------------------------
    @property
    def _grpc(self) -> bool:
        return self.endpoint.transport is Transport.GRPC

    def _connection(self) -> Any:
        if self._client is None:
            if self._grpc:
                import tritonclient.grpc as tg  # noqa: PLC0415 - heavy, only when talking to a server

                self._client = tg.InferenceServerClient(self.endpoint.address)
            else:
                import tritonclient.http as th  # noqa: PLC0415

                self._client = th.InferenceServerClient(
                    self.endpoint.address,
                    connection_timeout=self.timeout_s,
                    network_timeout=max(self.timeout_s, self.load_timeout_s),
                )
        return self._client

    def _admin(self) -> dict[str, str]:
        if not self.token:
            return {}
        return {(GRPC_HEADER_PREFIX + HEADER) if self._grpc else HEADER: self.token}

    def _call(self, method: str, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException  # noqa: PLC0415

        if self._grpc:
            kwargs["client_timeout"] = timeout_s or self.timeout_s
        try:
            return getattr(self._connection(), method)(*args, **kwargs)
        except InferenceServerException as exc:
            raise _translate(exc, str(self.endpoint)) from None
        except _TIMEOUTS as exc:
            raise Unreachable(f"{self.endpoint}: {exc or type(exc).__name__}") from None

    # -- the adapter --------------------------------------------------------------------------------------------------
    def live(self) -> bool:
        return bool(self._call("is_server_live"))

    def ready(self) -> bool:
        return bool(self._call("is_server_ready"))

    def index(self) -> list[IndexEntry]:
        if self._grpc:
            rows = self._call("get_model_repository_index", headers=self._admin(), as_json=True).get("models", [])
        else:
            rows = self._call("get_model_repository_index", headers=self._admin())
        return [
            IndexEntry(
                name=row["name"], version=row.get("version"), state=row.get("state"), reason=row.get("reason", "")
            )
            for row in rows
        ]

    def load(self, name: str, config: pb.ModelConfig | None = None, files: Mapping[str, bytes] | None = None) -> None:
        kwargs: dict[str, Any] = {"headers": self._admin()}
        if config is not None:
            kwargs["config"] = config_to_json(config)
        if files:
            kwargs["files"] = dict(files)
        try:
            self._call("load_model", name, timeout_s=self.load_timeout_s, **kwargs)
        except RequestFailed as exc:
            raise LoadFailed(name, exc.message) from None

    def unload(self, name: str) -> None:
        self._call("unload_model", name, headers=self._admin())

    def model_config(self, name: str) -> pb.ModelConfig:
        if self._grpc:  # the key goes along: a deployment may key model-config (RUTH_KEYED_APIS)
            response = self._call("get_model_config", name, headers=self._admin())
            config = pb.ModelConfig()
            config.CopyFrom(response.config)
            return config
        return config_from_json(self._call("get_model_config", name, headers=self._admin()))

    def model_ready(self, name: str, version: str = "") -> bool:
        return bool(self._call("is_model_ready", name, version))

    def statistics(self, name: str = "") -> dict[str, Any]:
        if self._grpc:
            return dict(self._call("get_inference_statistics", name, headers=self._admin(), as_json=True))
        return dict(self._call("get_inference_statistics", name, headers=self._admin()))

    def metrics(self) -> str | None:
        """The Prometheus text of the metrics port, None when it doesn't answer (metrics off or elsewhere)."""
        try:
            with urllib.request.urlopen(self.endpoint.metrics_url, timeout=self.timeout_s) as response:  # noqa: S310
                return response.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError):
            return None

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _translate(exc: Any, where: str) -> TritonAPIError:
    """tritonclient's exception -> ours. The only place that reads Triton's status and message text."""
    status = str(exc.status() or "")
    message = str(exc.message() or "")
    if status == "403" or "is restricted, expecting header" in message:
        return Forbidden(f"{where}: {message} (is the admin token right? RUTH_ADMIN_TOKEN or <state-dir>/admin-token)")
    if "failed to connect" in message or "Deadline Exceeded" in message or status == "StatusCode.DEADLINE_EXCEEDED":
        return Unreachable(f"{where}: {message}")
    return RequestFailed(status, message)
