"""`ruthctl infer MODEL IMAGE`: send one image through the wire contract and print the RESULT."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from ruthctl.app import app_of
from ruthctl.commands._common import fail, print_json
from ruthctl.exit_codes import ExitCode, worst


def register(app: typer.Typer) -> None:
    app.command("infer")(infer)


def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        fail(f"{option}: not JSON ({exc})", ExitCode.USAGE)
    if not isinstance(value, dict):
        fail(f"{option}: expected a JSON object", ExitCode.USAGE)
    return value


def infer(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name.")],
    image: Annotated[Path, typer.Argument(help="JPEG/PNG/WebP file, or - for stdin.")],
    stream_id: Annotated[str | None, typer.Option(help="Camera stream UUID (default: a new one).")] = None,
    config: Annotated[str | None, typer.Option(help="CONFIG: JSON object of per-stream model settings.")] = None,
    metadata: Annotated[str | None, typer.Option(help="METADATA: JSON object passed through.")] = None,
    timestamp: Annotated[str | None, typer.Option(help="Frame time, ISO-8601 (default: now).")] = None,
    protocol: Annotated[str | None, typer.Option(help="http or grpc (default: from the URL).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 30.0,
) -> None:
    """Print the RESULT document as JSON (one per server with several --url).

    Exit codes: 0 ok, 1 the request was refused or failed (message on stderr), 2 bad options, 4 unreachable.
    """
    from ruthctl.client import RuthClientError, ServerUnreachable
    from ruthctl.triton_client import Endpoint, Transport

    if protocol not in (None, "http", "grpc"):
        fail("--protocol must be http or grpc", ExitCode.USAGE)
    data = sys.stdin.buffer.read() if str(image) == "-" else _read(image)
    cfg, meta = _json_object(config, "--config"), _json_object(metadata, "--metadata")
    app = app_of(ctx)
    env = app.env(token=False)
    results: dict[str, Any] = {}
    code = ExitCode.OK
    for url in env.urls:
        try:
            endpoint = Endpoint.parse(url)
        except ValueError as exc:
            fail(str(exc), ExitCode.USAGE)
        # `--protocol grpc` with an HTTP URL means the same server's gRPC port (serve layout: HTTP p, gRPC p+1)
        target = endpoint.on(Transport(protocol)) if protocol else endpoint
        client = app.services.infer_client_factory(target, timeout_s=timeout)
        try:
            results[url] = client.infer(
                model,
                image=data,
                stream_id=stream_id or str(uuid.uuid4()),
                timestamp=timestamp,
                config=cfg,
                metadata=meta,
            )
        except ServerUnreachable as exc:
            results[url] = {"error": type(exc).__name__, "message": exc.message}
            code = worst([code, ExitCode.UNREACHABLE])
        except RuthClientError as exc:
            results[url] = {
                "error": type(exc).__name__,
                "code": exc.code.value if exc.code else None,
                "message": exc.message,
                "status": exc.status,
            }
            code = worst([code, ExitCode.ERROR])
        finally:
            client.close()
    for url, result in results.items():
        if "error" in result:
            app.err.out(f"error: {url}: {result['error']}: {result['message']}", highlight=False)
    if len(results) > 1:
        print_json(app.out(), results)
    elif code == ExitCode.OK:
        print_json(app.out(), next(iter(results.values())))
    raise typer.Exit(int(code))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"{path}: {exc}", ExitCode.USAGE)
