"""Looking again for a person the pose passes lost on the way down.

On elevated CCTV a person who falls often drops out of the full-frame pose passes once on the floor: a 60-px
figure is ~25 px at the network's 256 px, and MoveNet was trained on upright people (docs/accuracy.md, eval/README.md
"Known gaps"). A track that was going down (its last posture not upright, or its box's top dropping fast) and is not
found in the next frame is searched for again on a square crop around its last box, grown `search_grow` times and
scaled to `search_size` px (a small figure gets several times the pixels), at 0 and 90 degrees each way, in one
batch. A pose found there that no full-frame pass found continues that track (`recovered` observations). Frames
where no tracked person went missing cost nothing more; docs/accuracy.md has what a search costs.

Pure functions: the caller (fall_detection) runs the pose network between `assess_and_search` and the second
`fall.assess_frame` with the recovered people.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from ruth_vision.fall import FallConfig, assess_frame, at_edge, search_square
from ruth_vision.pose import PoseResult, _same_person
from ruth_vision.tracking import DEFAULT_TRACKER, TrackerConfig, iou

__all__ = ["Search", "assess_and_search", "lost_searches", "recover", "search_images"]

#: the crop turned these ways (cv2.rotate codes; None: as it is): MoveNet finds lying bodies better turned upright
TURNS: tuple[int | None, ...] = (None, cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_90_COUNTERCLOCKWISE)
#: "going down" from the box alone: its top dropped by this share of the earlier box's height within DESCENT_S
DESCENT_SHARE = 0.2
DESCENT_S = 1.5
#: a pose found by a search needs this many joints seen (keypoint_threshold): a box alone (the person detector's,
#: with no joints) on a turned crop says nothing about posture, its aspect is the crop's turn
MIN_KEYPOINTS = 5
#: at most this many lost people searched per frame (each search is one batch of len(TURNS) crops)
MAX_SEARCHES = 2


@dataclasses.dataclass(frozen=True)
class Search:
    """Where to look again for track `track_id`: a square `side` px wide at (x, y) in frame pixels."""

    track_id: int
    x: float
    y: float
    side: float
    last_box: tuple[float, float, float, float]


def _going_down(history: Sequence[Mapping[str, Any]]) -> bool:
    """The track's last observation was not upright (lying, unclear, or found by a search), or its box's top
    dropped by DESCENT_SHARE of its height within DESCENT_S before it."""
    last = history[-1]
    data = last.get("data", {})
    if data.get("recovered") or data.get("state") in ("lying", "unclear"):
        return True
    top, t = float(last["box"][1]), float(last["t"])
    for entry in history[:-1]:
        if t - float(entry["t"]) <= DESCENT_S:
            _, y1, _, y2 = entry["box"]
            if top - float(y1) >= DESCENT_SHARE * max(float(y2) - float(y1), 1.0):
                return True
    return False


def lost_searches(state: Mapping[str, Any], t: float, width: int, height: int, config: FallConfig) -> list[Search]:
    """Tracks seen within `search_lost_s` before `t`, not at `t`, going down, not at the frame's edge."""
    if not config.search_lost_s:
        return []
    found: list[tuple[float, Search]] = []
    for track in state.get("tracks", []):
        history = [e for e in track["history"] if e["t"] <= t]
        if not history or history[-1]["t"] >= t or t - history[-1]["t"] > config.search_lost_s:
            continue
        x1, y1, x2, y2 = (float(v) for v in history[-1]["box"])
        if at_edge((x1, y1, x2, y2), width, height) or not _going_down(history):
            continue
        x, y, side = search_square((x1, y1, x2, y2), config)
        search = Search(int(track["id"]), x, y, side, (x1, y1, x2, y2))
        found.append((float(history[-1]["t"]), search))
    found.sort(key=lambda pair: -pair[0])  # the most recently seen first
    return [s for _, s in found[:MAX_SEARCHES]]


def assess_and_search(
    state: Mapping[str, Any] | None,
    t: float,
    poses: Sequence[PoseResult],
    config: FallConfig,
    frame_shape: Sequence[int],
    recovered: Mapping[int, PoseResult] | None = None,
    tracker: TrackerConfig = DEFAULT_TRACKER,
) -> tuple[dict[str, Any], tuple[dict[str, Any], list[Search]]]:
    """`fall.assess_frame` on a frame of `frame_shape`, plus where to look again for people lost on the way down
    (a `ctx.advance` step)."""
    new_state, payload = assess_frame(state, t, poses, config, tracker, recovered, frame_shape)
    return new_state, (payload, lost_searches(new_state, t, int(frame_shape[1]), int(frame_shape[0]), config))


def search_images(frame_bgr: np.ndarray, search: Search, size: int) -> list[np.ndarray]:
    """The search square (black beyond the frame) scaled to `size` px, in each of TURNS."""
    height, width = frame_bgr.shape[:2]
    side = max(round(search.side), 1)
    x0, y0 = round(search.x), round(search.y)
    canvas = np.zeros((side, side, 3), np.uint8)
    fx1, fy1, fx2, fy2 = max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)
    if fx2 > fx1 and fy2 > fy1:
        canvas[fy1 - y0 : fy2 - y0, fx1 - x0 : fx2 - x0] = frame_bgr[fy1:fy2, fx1:fx2]
    scaled = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_LINEAR if side < size else cv2.INTER_AREA)
    return [np.ascontiguousarray(scaled if turn is None else cv2.rotate(scaled, turn)) for turn in TURNS]


def _to_frame(pose: PoseResult, turn: int | None, search: Search, size: int) -> PoseResult:
    """A pose found on a search image mapped back to frame pixels."""
    keypoints = pose.keypoints.copy()
    xs, ys = pose.keypoints[:, 0], pose.keypoints[:, 1]
    x1, y1, x2, y2 = pose.box
    corners = np.asarray([[x1, y1], [x2, y2]], np.float32)
    last = size - 1
    if turn == cv2.ROTATE_90_CLOCKWISE:  # turned (xr, yr) -> square (yr, last - xr)
        keypoints[:, 0], keypoints[:, 1] = ys, last - xs
        bx, by = corners[:, 1], last - corners[:, 0]
    elif turn == cv2.ROTATE_90_COUNTERCLOCKWISE:  # (xr, yr) -> (last - yr, xr)
        keypoints[:, 0], keypoints[:, 1] = last - ys, xs
        bx, by = last - corners[:, 1], corners[:, 0]
    else:
        bx, by = corners[:, 0], corners[:, 1]
    scale = search.side / size
    keypoints[:, 0] = keypoints[:, 0] * scale + search.x
    keypoints[:, 1] = keypoints[:, 1] * scale + search.y
    box = (
        float(bx.min() * scale + search.x),
        float(by.min() * scale + search.y),
        float(bx.max() * scale + search.x),
        float(by.max() * scale + search.y),
    )
    return PoseResult(box, keypoints, pose.score)


def _centre(pose: PoseResult) -> tuple[float, float]:
    x1, y1, x2, y2 = pose.box
    return (x1 + x2) / 2, (y1 + y2) / 2


def recover(
    searches: Sequence[Search],
    found_per_image: Sequence[Sequence[PoseResult]],
    people: Sequence[PoseResult],
    config: FallConfig,
) -> dict[int, PoseResult]:
    """Per search, the person found on its images (len(TURNS) per search, in order) that the full frame's passes
    did not find (`people`), whose box centre lies within one last-box length of the lost box's centre: the most
    confident joints of the turns win. track id -> pose in frame pixels."""
    size = config.search_size
    out: dict[int, PoseResult] = {}
    for index, search in enumerate(searches):
        x1, y1, x2, y2 = search.last_box
        reach = max(x2 - x1, y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        best, best_confidence = None, -1.0
        known = [*people, *out.values()]
        for turn, found in zip(TURNS, found_per_image[index * len(TURNS) : (index + 1) * len(TURNS)], strict=True):
            for pose in found:
                seen = int((pose.keypoints[:, 2] >= config.keypoint_threshold).sum())
                if pose.score < config.min_person_score or seen < MIN_KEYPOINTS:
                    continue
                candidate = _to_frame(pose, turn, search, size)
                px, py = _centre(candidate)
                if float(np.hypot(px - cx, py - cy)) > reach:
                    continue
                if any(_same_person(candidate, other, 0.3) or iou(candidate.box, other.box) > 0.5 for other in known):
                    continue
                confidence = float(candidate.keypoints[:, 2].mean())
                if confidence > best_confidence:
                    best, best_confidence = candidate, confidence
        if best is not None:
            out[search.track_id] = best
    return out


def search_lost(
    frame_bgr: np.ndarray,
    searches: Sequence[Search],
    people: Sequence[PoseResult],
    poses: Callable[[list[np.ndarray]], Sequence[Sequence[PoseResult] | Exception]],
    config: FallConfig,
) -> dict[int, PoseResult]:
    """Run the searches through `poses` (one batch of same-sized images) and `recover` the lost people. A failed
    pose call finds nobody: the frame keeps the full-frame passes' answer."""
    images = [image for search in searches for image in search_images(frame_bgr, search, config.search_size)]
    found = [[] if isinstance(r, Exception) else list(r) for r in poses(images)]
    return recover(searches, found, people, config)
