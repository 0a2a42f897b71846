"""The admin token that locks Triton's model-control (repository) API.

`serve` starts Triton with `--http-restricted-api` / `--grpc-restricted-protocol` for `model-repository`, so a
load or unload without the token header is refused. The token comes from `RUTH_ADMIN_TOKEN`, else it is generated
once into the state dir with mode 0600 and reused by every `ruthctl` on the same host.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

HEADER = "ruth-admin-token"
TOKEN_FILE = "admin-token"


def admin_token(state_dir: Path, env_token: str | None = None) -> str:
    if env_token:
        return env_token
    path = state_dir / TOKEN_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)  # first writer wins; a concurrent one reads the winner's token
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def auth_headers(token: str | None) -> dict[str, str]:
    return {HEADER: token} if token else {}
