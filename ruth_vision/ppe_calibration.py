"""Per-site PPE colour calibration: fit the colour ranges from a few frames where someone said who wears what.

A site's light (sodium lamps, deep shade, haze) and its equipment (a faded orange, a company's own vest colour)
move the colours the defaults were set for. From labelled workers the pose places the same hat and vest regions
the model judges; the pixels of worn items (after the same `Lighting`) widen or narrow each named colour range to
what this site's items look like, and the pixels of items NOT worn check that the new ranges don't start
matching ordinary clothes. The result is a CONFIG preset (`hardhat_colours`, `vest_colours`) for requests or for
the spec's `parameters`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ruth_vision import ppe
from ruth_vision.pose import PoseResult

__all__ = ["CalibrationReport", "LabelledWorker", "fit_colours", "match_heads", "region_pixels"]


@dataclasses.dataclass(frozen=True)
class LabelledWorker:
    """One person in one frame: the pose the network found for them, and what they wear (None: not judged)."""

    frame: np.ndarray
    pose: PoseResult
    hardhat: bool | None
    vest: bool | None


class ItemFit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    item: ppe.Item
    colours: list[ppe.HsvRange]
    worn_samples: int
    not_worn_samples: int
    worn_passing_before: int
    worn_passing_after: int
    not_worn_matching_before: int
    not_worn_matching_after: int
    changed: list[str] = Field(default_factory=list, description="ranges refitted from this site's pixels")


class CalibrationReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    items: list[ItemFit]

    def preset(self) -> dict[str, object]:
        """The CONFIG fields: `{"hardhat_colours": [...], "vest_colours": [...]}`."""
        return {
            f"{fit.item}_colours": [c.model_dump() for c in fit.colours]
            for fit in self.items
            if fit.worn_samples  # an item nobody was labelled wearing keeps its defaults: nothing to fit from
        }


def region_pixels(worker: LabelledWorker, item: ppe.Item, config: ppe.PpeConfig) -> np.ndarray | None:
    """HSV pixels (N, 3) of the item's region, seen through the model's lighting correction."""
    threshold = config.keypoint_threshold
    region = (ppe.hardhat_region if item == "hardhat" else ppe.vest_region)(worker.pose, threshold)
    if region is None:
        return None
    frame = worker.frame
    height, width = frame.shape[:2]
    x1, y1 = np.floor(region.polygon.min(axis=0)).astype(int)
    x2, y2 = np.ceil(region.polygon.max(axis=0)).astype(int)
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    mask = np.zeros((y2 - y1, x2 - x1), np.uint8)
    cv2.fillPoly(mask, [np.round(region.polygon - [x1, y1]).astype(np.int32)], (1,))
    gains = ppe.scene_gains(frame) if config.white_balance else (1.0, 1.0, 1.0)
    brightness = ppe.person_brightness(frame, worker.pose.box, gains) if config.relative_brightness else 1.0
    hsv = ppe._hsv(frame[y1:y2, x1:x2], ppe.Lighting(gains, brightness))
    pixels = hsv[mask.astype(bool)]
    return pixels if len(pixels) >= 32 else None


def _share(pixels: np.ndarray, colours: Sequence[ppe.HsvRange]) -> float:
    hit = np.zeros(len(pixels), bool)
    for colour in colours:
        hit |= colour.mask(pixels)
    return float(hit.mean())


def _refit(colour: ppe.HsvRange, pixels: np.ndarray) -> ppe.HsvRange:
    """The range's hue band kept; its saturation and value floors (ceiling for a white) moved to the 10th
    percentile of this site's pixels in that band, within sane limits (a colour never drops below S 60 or V 50,
    so greys, skin in shade and dark clothes stay out)."""
    h = pixels[:, 0]
    in_band = (
        (h >= colour.h_min) & (h <= colour.h_max)
        if colour.h_min <= colour.h_max
        else (h >= colour.h_min) | (h <= colour.h_max)
    )
    band = pixels[in_band]
    if colour.s_max < 100:  # a white/grey range: bright, unsaturated pixels
        band = pixels[pixels[:, 1] <= 80]
        if len(band) < 16:
            return colour
        return colour.model_copy(
            update={
                "s_max": int(np.clip(np.percentile(band[:, 1], 90), colour.s_max, 80)),
                "v_min": int(np.clip(np.percentile(band[:, 2], 10), 140, colour.v_min)),
            }
        )
    if len(band) < 16:
        return colour
    s_floor = int(np.clip(np.percentile(band[:, 1], 10), 60, 255))
    v_floor = int(np.clip(np.percentile(band[:, 2], 10), 50, 255))
    return colour.model_copy(update={"s_min": s_floor, "v_min": v_floor})


def fit_colours(workers: Sequence[LabelledWorker], config: ppe.PpeConfig | None = None) -> CalibrationReport:
    """Refit the ranges of every colour the worn items of this site actually show (≥ 5 % of a worn region)."""
    config = config or ppe.PpeConfig()
    fits = []
    for item in ppe.VIOLATION_ORDER:
        defaults = list(config.hardhat_colours if item == "hardhat" else config.vest_colours)
        need = config.hardhat_min_fraction if item == "hardhat" else config.vest_min_fraction
        worn = [p for w in workers if getattr(w, item) is True and (p := region_pixels(w, item, config)) is not None]
        bare = [p for w in workers if getattr(w, item) is False and (p := region_pixels(w, item, config)) is not None]
        colours, changed = list(defaults), []
        if worn:
            pooled = np.concatenate(worn)
            for index, colour in enumerate(defaults):
                relaxed = _refit(colour, pooled)
                used = [p for p in worn if _share(p, [relaxed]) >= 0.05]
                if used and relaxed != colour:
                    colours[index] = _refit(colour, np.concatenate(used))
                    changed.append(colour.name)
        fits.append(
            ItemFit(
                item=item,
                colours=colours,
                worn_samples=len(worn),
                not_worn_samples=len(bare),
                worn_passing_before=sum(_share(p, defaults) >= need for p in worn),
                worn_passing_after=sum(_share(p, colours) >= need for p in worn),
                not_worn_matching_before=sum(_share(p, defaults) >= need for p in bare),
                not_worn_matching_after=sum(_share(p, colours) >= need for p in bare),
                changed=changed,
            )
        )
    return CalibrationReport(items=fits)


def _head(pose: PoseResult, threshold: float = 0.3) -> tuple[float, float]:
    face = pose.keypoints[:5]
    seen = face[face[:, 2] >= threshold]
    if len(seen):
        return float(seen[:, 0].mean()), float(seen[:, 1].mean())
    x1, y1, x2, _ = pose.box
    return (x1 + x2) / 2, y1


def match_heads(
    heads: Sequence[tuple[float, float]], poses: Sequence[PoseResult], width: int, height: int, reach: float = 0.12
) -> list[PoseResult | None]:
    """For each labelled head (fractions of width and height), the pose whose head is nearest, within `reach` of
    the frame's longer side; each pose is used once."""
    free = list(range(len(poses)))
    found: list[PoseResult | None] = []
    for fx, fy in heads:
        best, best_d = None, reach * max(width, height)
        for i in free:
            hx, hy = _head(poses[i])
            d = float(np.hypot(hx - fx * width, hy - fy * height))
            if d <= best_d:
                best, best_d = i, d
        if best is not None:
            free.remove(best)
        found.append(None if best is None else poses[best])
    return found
