"""The admin key that locks every Triton API except inference, health and metadata (docs/security.md).

`serve` starts Triton with `--http-restricted-api` / `--grpc-restricted-protocol` for the keyed categories, so a
call without the key header is refused (HTTP 403, gRPC UNAVAILABLE). The key comes from `RUTH_ADMIN_TOKEN`, else
from `<state-dir>/admin-token`, generated once (0600, in the 0700 state dir) and reused by every `ruthctl` of the
same user. A weak key (short, multi-line, odd characters) or an unsafe file (a symlink, not ours, readable by
others) is refused with the reason: access control is never silently off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from python_backends.state import STATE_DIR_MODE, STATE_FILE_MODE, StateLayout

log = logging.getLogger(__name__)

HEADER = "ruth-admin-token"
MIN_TOKEN_CHARS = 32
MAX_TOKEN_CHARS = 256
#: base64 and URL-safe characters: the key travels in an HTTP header, gRPC metadata and Triton's `<apis>:<k>=<v>`
#: flag (a ':', space or quote would break one of them; `openssl rand -base64 32` and token_urlsafe both fit).
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]+")

#: Keyed on every deployment: each of these can run code, crash the server or flood its log (docs/security.md).
ALWAYS_KEYED = ("model-repository", "shared-memory", "logging", "trace")
#: A deployment may key these too (RUTH_KEYED_APIS); open by default (perf_analyzer and dashboards read statistics).
OPTIONALLY_KEYED = ("statistics", "model-config", "metadata")
DEFAULT_KEYED = ALWAYS_KEYED


class WeakToken(ValueError):
    """The admin key or its file can't be trusted; the message says why and how to fix it."""


def check_token(token: str, source: str) -> str:
    """The key itself, or WeakToken: 32..256 URL-safe characters on one line, not one repeated character."""
    if not token:
        raise WeakToken(f"{source} is empty: access control would be off")
    if "\n" in token or "\r" in token:
        raise WeakToken(f"{source} holds more than one line")
    if not _TOKEN_RE.fullmatch(token):
        raise WeakToken(f"{source} has characters outside A-Z a-z 0-9 . _ ~ + / = - (spaces, quotes or ':' break it)")
    if len(token) < MIN_TOKEN_CHARS:
        raise WeakToken(f"{source} is {len(token)} characters; at least {MIN_TOKEN_CHARS} are required")
    if len(token) > MAX_TOKEN_CHARS:
        raise WeakToken(f"{source} is {len(token)} characters; at most {MAX_TOKEN_CHARS} are allowed")
    if len(set(token)) < 8:
        raise WeakToken(f"{source} has fewer than 8 distinct characters; generate one with `ruthctl` (delete it)")
    return token


def read_token_file(path: Path) -> str:
    """The key in `path`, refusing a symlink, a non-regular file, another user's file or one others can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symlink
            raise WeakToken(f"{path} is a symlink; the key file must be a regular file") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise WeakToken(f"{path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise WeakToken(f"{path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()})")
        if info.st_mode & 0o077:
            raise WeakToken(
                f"{path} has mode {stat.S_IMODE(info.st_mode):04o}: others could read it, so it may have leaked; "
                f"delete it (a new key is generated) or chmod 600 {path}"
            )
        raw = handle.read(MAX_TOKEN_CHARS + 2)
    text = raw.decode("ascii", "replace")
    return check_token(text[:-1] if text.endswith("\n") else text, str(path))


def admin_token(state_dir: Path, env_token: str | None = None) -> str:
    """The key from RUTH_ADMIN_TOKEN, else the state dir's file, created on first use. WeakToken when unsafe."""
    if env_token:  # set and empty (compose's `${RUTH_ADMIN_TOKEN:-}`) means "not chosen": the file's key is used
        return check_token(env_token, "RUTH_ADMIN_TOKEN")
    path = StateLayout(state_dir).admin_token
    try:
        return read_token_file(path)
    except FileNotFoundError:
        pass
    state_dir.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, STATE_FILE_MODE)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # first writer wins; a concurrent one reads the winner's key
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return read_token_file(path)


def secure_state_dir(state_dir: Path) -> Path:
    """Create the state dir 0700, or tighten ours to 0700 and our files in it to 0600 (dirs 0700).

    A state dir that isn't ours (a Kubernetes emptyDir with fsGroup is root's) is used with a warning; only our own
    entries in it are tightened, and the key file must be ours (`read_token_file`).

    Symlinks inside (the backends folder links into the Triton wheel) are left alone and never followed.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(state_dir)
    if stat.S_ISLNK(info.st_mode):
        info = os.stat(state_dir)
    if info.st_uid != os.geteuid():  # e.g. a Kubernetes emptyDir with fsGroup: root's, group-writable, per pod
        log.warning(
            "state dir %s belongs to uid %d (mode %04o), not to this user: what we create in it is still owner-only; "
            "keep it on a volume no other user mounts (docs/security.md)",
            state_dir,
            info.st_uid,
            stat.S_IMODE(info.st_mode),
        )
    loose: list[str] = []
    for path, mode in _owned_entries(state_dir):
        wanted = 0o700 if stat.S_ISDIR(mode) else stat.S_IMODE(mode) & 0o700
        if stat.S_IMODE(mode) & 0o077:
            try:
                os.chmod(path, wanted, follow_symlinks=False)
                loose.append(path)
            except OSError as exc:  # vanished meanwhile, or not ours
                log.debug("could not tighten %s: %s", path, exc)
    if loose:
        log.warning("tightened %d entries of %s to owner-only access (e.g. %s)", len(loose), state_dir, loose[0])
    return state_dir


def _owned_entries(root: Path) -> Iterable[tuple[str, int]]:
    yield str(root), os.stat(root).st_mode
    uid = os.geteuid()
    key_file = str(StateLayout(root).admin_token)
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if path == key_file:  # judged by read_token_file: a key others could read is refused, not tightened
                continue
            if not stat.S_ISLNK(info.st_mode) and info.st_uid == uid:
                yield path, info.st_mode


def keyed_apis(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The restricted categories: the fixed set plus what the deployment adds (ValueError for an unknown name)."""
    chosen = list(DEFAULT_KEYED)
    for name in extra:
        name = name.strip()
        if not name:
            continue
        if name not in ALWAYS_KEYED + OPTIONALLY_KEYED:
            raise ValueError(f"RUTH_KEYED_APIS: {name!r} is not one of {', '.join(OPTIONALLY_KEYED)}")
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def auth_headers(token: str | None) -> dict[str, str]:
    return {HEADER: token} if token else {}
