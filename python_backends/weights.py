"""Weights a model may load: only files pinned in its spec (path + SHA-256), checked at load.

A model whose weights are missing or corrupt fails its load with a reason that says how to get them, so Triton's
repository index shows it; nothing is ever fetched at run time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from python_backends.errors import ModelLoadError

FETCH_HINT = "run `ruthctl weights fetch`"


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def pinned_weights(weights_dir: Path, pinned: Sequence[Mapping[str, str]], relative: str, model: str) -> Path:
    """The verified path of `relative` in `weights_dir`, or ModelLoadError saying what is wrong and how to fix it."""
    entry = next((e for e in pinned if e.get("path") == relative), None)
    if entry is None:
        raise ModelLoadError(
            f"{model}: {relative} is not pinned in the spec's weights list (path + sha256): weights are only loaded "
            "when their checksum is known"
        )
    path = weights_dir / relative
    source = f" [source: {entry['source']}]" if entry.get("source") else ""
    if not path.is_file():
        raise ModelLoadError(f"{model}: weights file {path} is missing: {FETCH_HINT} (RUTH_WEIGHTS_DIR){source}")
    try:
        actual = sha256_of(path)
    except OSError as exc:
        raise ModelLoadError(f"{model}: weights file {path} is unreadable ({exc}): {FETCH_HINT}{source}") from exc
    if actual != entry.get("sha256", "").lower():
        raise ModelLoadError(
            f"{model}: weights file {path} is corrupt or not the pinned version (sha256 {actual}, expected "
            f"{entry.get('sha256')}): delete it and {FETCH_HINT}{source}"
        )
    return path
