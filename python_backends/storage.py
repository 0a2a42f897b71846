"""Crash-safe JSON files shared by every Triton instance process of the runtime.

State that must survive a kill -9 (breaker state, the GPU ledger) is small and changes rarely, so a whole-file
rewrite is cheap, and a rename is the only write that a reader can never see half done. Read-modify-write cycles
from sibling processes are serialised by an OS file lock next to the data file; plain reads take no lock, because an
atomic rename means a reader sees either the old or the new file, never a mix.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import filelock

from python_backends.state import STATE_FILE_MODE, lock_file_of

__all__ = ["JsonFileStore", "atomic_write_bytes"]

log = logging.getLogger(__name__)

#: files are written 0644: operators (ruthctl) may read state that the server's user wrote
_FILE_MODE = 0o644
#: how often a waiting process re-tries the OS lock; filelock polls, and its 50 ms default is a long stall per request
_POLL_INTERVAL_S = 0.002


def atomic_write_bytes(path: Path, data: bytes, mode: int = _FILE_MODE) -> None:
    """Replace `path` with `data` so that a crash at any point leaves either the old file or the new one.

    `mode`: 0644 suits repository files (generated configs); state files pass STATE_FILE_MODE (owner-only).

    The temp file lives in the same directory (a rename is only atomic within one filesystem); the file is fsynced
    before the rename (else the rename can reach the disk before the data) and the directory after it (else the
    rename itself can be lost on power failure).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fchmod(tmp.fileno(), mode)
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems don't let a directory be opened; the data itself is already durable
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


class JsonFileStore:
    """One JSON object in one file, read lock-free and updated under a cross-process lock.

    A missing file reads as `{}`; a file that can't be read or parsed also reads as `{}`, with one warning until it
    becomes readable again, because callers (the breaker, the GPU ledger) must keep serving when their state file is
    damaged. The next successful `update` replaces the damaged file.
    """

    def __init__(self, path: Path, lock_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.lock_path = lock_file_of(self.path)
        self.lock_timeout_s = lock_timeout_s
        # The OS lock serialises processes; the thread lock makes threads of one process queue without polling.
        self._thread_lock = threading.Lock()
        self._file_lock = filelock.FileLock(str(self.lock_path), timeout=lock_timeout_s)
        self._warned = False

    def read(self) -> dict[str, Any]:
        """The stored object, `{}` when missing or unreadable. Never raises for a damaged file."""
        data, _ = self._read()
        return data

    def update(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Apply `fn` to the stored object atomically with respect to every other process, and return its result.

        `fn` gets a private copy and must be quick: siblings wait on the lock meanwhile. The file is rewritten only
        when the result differs from what was read (or the file was damaged), so read-mostly callers don't pay an
        fsync per call. Raises `filelock.Timeout` (a `TimeoutError`) after `lock_timeout_s`, or `OSError` when the
        file can't be written.
        """
        with self._locked():
            current, healthy = self._read()
            result = fn(copy.deepcopy(current))
            if not isinstance(result, dict):
                raise TypeError(f"update function must return a dict, got {type(result).__name__}")
            if result != current or not healthy:
                self._write(result)
            return result

    def write(self, data: dict[str, Any]) -> None:
        """Replace the stored object under the lock (for resets; prefer `update` for changes)."""
        with self._locked():
            self._write(data)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._thread_lock.acquire(timeout=self.lock_timeout_s):
            raise filelock.Timeout(str(self.lock_path))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._file_lock.acquire(timeout=self.lock_timeout_s, poll_interval=_POLL_INTERVAL_S):
                yield
        finally:
            self._thread_lock.release()

    def _write(self, data: dict[str, Any]) -> None:
        atomic_write_bytes(
            self.path, json.dumps(data, sort_keys=True, separators=(",", ":")).encode(), mode=STATE_FILE_MODE
        )

    def _read(self) -> tuple[dict[str, Any], bool]:
        """(data, healthy): healthy is False when the file exists but is damaged."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._warned = False
            return {}, True
        except OSError as exc:
            self._warn(f"cannot read {self.path}: {exc}")
            return {}, False
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            self._warn(f"{self.path} is not valid JSON ({exc}); treating it as empty")
            return {}, False
        if not isinstance(data, dict):
            self._warn(f"{self.path} holds a JSON {type(data).__name__}, not an object; treating it as empty")
            return {}, False
        self._warned = False
        return data, True

    def _warn(self, message: str) -> None:
        """Log a damaged file once, not once per request."""
        if not self._warned:
            log.warning(message)
            self._warned = True
