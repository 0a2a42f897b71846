"""Who is who between frames of one stream: a small IoU/centroid tracker whose whole state is a JSON document.

The state is plain JSON (not objects) because it lives in `python_backends.streams` and is read-modified-written
by whichever Triton instance gets the stream's next frame. Time is the frames' own timestamp (seconds), never
arrival time: frames come late, in bursts and out of order, so a late frame is matched against each track's
observation NEAREST IN FRAME TIME, its observation is inserted in time order, and a retried frame (same
timestamp) replaces its earlier observation instead of doubling it.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DEFAULT_TRACKER", "Box", "Observation", "TrackerConfig", "history_until", "iou", "update_tracks"]

Box = tuple[float, float, float, float]
STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TrackerConfig:
    iou_threshold: float = 0.3  # below this, fall back to centroid distance
    centroid_gate: float = 0.6  # centre distance / larger box diagonal: a fall moves the centre a lot
    max_gap_s: float = 2.0  # an observation further than this (frame time) from a track can't continue it
    track_ttl_s: float = 10.0  # a track unseen for this long (behind the newest frame) is dropped
    history_s: float = 10.0  # observations older than newest - history_s are dropped
    max_history: int = 64  # per track
    max_tracks: int = 32  # per stream; the stalest go first


DEFAULT_TRACKER = TrackerConfig()


@dataclasses.dataclass(frozen=True)
class Observation:
    t: float
    box: Box
    data: Mapping[str, Any]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Centre distance relative to the larger box's diagonal (scale-free)."""
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    diag = max(math.hypot(a[2] - a[0], a[3] - a[1]), math.hypot(b[2] - b[0], b[3] - b[1]), 1e-6)
    return math.hypot(dx, dy) / diag


def _nearest_entry(history: list[dict[str, Any]], t: float) -> dict[str, Any]:
    times = [entry["t"] for entry in history]
    i = bisect.bisect_left(times, t)
    candidates = history[max(0, i - 1) : i + 1]
    return min(candidates, key=lambda entry: abs(entry["t"] - t))


def _match_cost(track: dict[str, Any], box: Box, t: float, config: TrackerConfig) -> float | None:
    """Lower is better; None means this box can't continue this track."""
    reference = _nearest_entry(track["history"], t)
    if abs(reference["t"] - t) > config.max_gap_s:
        return None
    overlap = iou(reference["box"], box)
    if overlap >= config.iou_threshold:
        return 1.0 - overlap
    distance = _centre_distance(reference["box"], box)
    return 1.0 + distance if distance <= config.centroid_gate else None


def _insert(track: dict[str, Any], t: float, box: Box, data: Mapping[str, Any]) -> None:
    entry = {"t": t, "box": [float(v) for v in box], "data": dict(data)}
    history: list[dict[str, Any]] = track["history"]
    times = [e["t"] for e in history]
    i = bisect.bisect_left(times, t)
    if i < len(history) and history[i]["t"] == t:
        history[i] = entry  # the same frame again (a retry): replace, don't double
    else:
        history.insert(i, entry)
    track["last_t"] = history[-1]["t"]


def _new_state() -> dict[str, Any]:
    return {"version": STATE_VERSION, "next_id": 1, "latest_t": None, "tracks": []}


def update_tracks(
    state: Mapping[str, Any] | None,
    t: float,
    boxes: Sequence[Box],
    data: Sequence[Mapping[str, Any]] | None = None,
    config: TrackerConfig = DEFAULT_TRACKER,
    hints: Sequence[int | None] | None = None,
) -> tuple[dict[str, Any], list[int]]:
    """Add one frame's detections at frame time `t`. Returns the new state (the input is not modified) and the
    track id of each box, in order. `data[i]` is stored with box i (model features for later decisions).
    `hints[i]`, when not None, names the track box i continues (a person found again by looking where that track
    was): it goes to that track if the track still exists and no other box does, else to a new one."""
    if data is not None and len(data) != len(boxes):
        raise ValueError("data must have one entry per box")
    if hints is not None and len(hints) != len(boxes):
        raise ValueError("hints must have one entry per box")
    new = copy.deepcopy(dict(state)) if state and state.get("version") == STATE_VERSION else _new_state()
    tracks: list[dict[str, Any]] = new["tracks"]
    hinted = {bi: hint for bi, hint in enumerate(hints or []) if hint is not None}
    pairs = sorted(
        (cost, ti, bi)
        for ti, track in enumerate(tracks)
        for bi, box in enumerate(boxes)
        if bi not in hinted and (cost := _match_cost(track, box, t, config)) is not None
    )
    pairs = [(-1.0, ti, bi) for bi, hint in hinted.items() for ti, tr in enumerate(tracks) if tr["id"] == hint] + pairs
    assigned: dict[int, int] = {}
    used_tracks: set[int] = set()
    for _, ti, bi in pairs:  # greedy by cost; at most a handful of people per frame
        if bi in assigned or ti in used_tracks:
            continue
        assigned[bi] = ti
        used_tracks.add(ti)
    ids: list[int] = []
    for bi, box in enumerate(boxes):
        if bi in assigned:
            track = tracks[assigned[bi]]
        else:
            track = {"id": new["next_id"], "history": [], "last_t": t}
            new["next_id"] += 1
            tracks.append(track)
        _insert(track, t, box, data[bi] if data is not None else {})
        ids.append(int(track["id"]))
    latest = t if new["latest_t"] is None else max(new["latest_t"], t)
    new["latest_t"] = latest
    _prune(new, latest, config)
    return new, ids


def _prune(state: dict[str, Any], latest: float, config: TrackerConfig) -> None:
    """Bounded memory per stream: old observations, stale tracks and surplus tracks go."""
    kept = []
    for track in state["tracks"]:
        if latest - track["last_t"] > config.track_ttl_s:
            continue
        history = [e for e in track["history"] if e["t"] >= latest - config.history_s][-config.max_history :]
        if history:
            track["history"] = history
            kept.append(track)
    kept.sort(key=lambda tr: tr["last_t"], reverse=True)
    state["tracks"] = kept[: config.max_tracks]


def history_until(state: Mapping[str, Any], track_id: int, t: float) -> list[Observation]:
    """The track's observations with frame time <= t, oldest first: a decision at t sees no later frame."""
    for track in state.get("tracks", []):
        if track["id"] == track_id:
            return [
                Observation(e["t"], (e["box"][0], e["box"][1], e["box"][2], e["box"][3]), e["data"])
                for e in track["history"]
                if e["t"] <= t
            ]
    return []
