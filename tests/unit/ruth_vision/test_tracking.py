"""Tracker: identities across frames, frame-time ordering, retries, bounded JSON state."""

from __future__ import annotations

import json

from ruth_vision.tracking import TrackerConfig, history_until, iou, update_tracks

UPRIGHT = (100.0, 100.0, 200.0, 400.0)
LYING = (60.0, 300.0, 360.0, 400.0)  # the same person after a fall: wide, low, little overlap with UPRIGHT
FAR = (600.0, 100.0, 700.0, 400.0)


def test_iou_of_identical_disjoint_and_half_overlapping_boxes() -> None:
    assert iou(UPRIGHT, UPRIGHT) == 1.0
    assert iou(UPRIGHT, FAR) == 0.0
    assert iou((0, 0, 2, 1), (1, 0, 3, 1)) == 1 / 3


def test_people_keep_their_ids_and_newcomers_get_new_ones() -> None:
    state, ids = update_tracks(None, 0.0, [UPRIGHT, FAR])
    assert ids == [1, 2]
    state, ids = update_tracks(state, 0.5, [(605.0, 102.0, 705.0, 402.0), (102.0, 98.0, 203.0, 399.0)])
    assert ids == [2, 1]
    state, ids = update_tracks(state, 1.0, [(300.0, 0.0, 330.0, 60.0)])
    assert ids == [3]


def test_a_fall_keeps_the_track_through_the_centroid_gate() -> None:
    assert iou(UPRIGHT, LYING) < 0.3
    state, _ = update_tracks(None, 0.0, [UPRIGHT])
    _, ids = update_tracks(state, 0.4, [LYING])
    assert ids == [1]


def test_a_long_gap_in_frame_time_starts_a_new_track() -> None:
    state, _ = update_tracks(None, 0.0, [UPRIGHT], config=TrackerConfig(max_gap_s=2.0))
    _, ids = update_tracks(state, 5.0, [UPRIGHT], config=TrackerConfig(max_gap_s=2.0))
    assert ids == [2]


def test_a_late_frame_is_matched_by_frame_time_and_inserted_in_order() -> None:
    state, _ = update_tracks(None, 0.0, [UPRIGHT], [{"n": 0}])
    state, _ = update_tracks(state, 1.0, [UPRIGHT], [{"n": 1}])
    state, ids = update_tracks(state, 0.5, [UPRIGHT], [{"n": 0.5}])  # arrives last, belongs in the middle
    assert ids == [1]
    assert [o.t for o in history_until(state, 1, 10.0)] == [0.0, 0.5, 1.0]
    assert [o.data["n"] for o in history_until(state, 1, 0.7)] == [0, 0.5]  # nothing after t is visible at t


def test_a_retried_frame_replaces_its_observation() -> None:
    state, _ = update_tracks(None, 1.0, [UPRIGHT], [{"try": 1}])
    state, ids = update_tracks(state, 1.0, [UPRIGHT], [{"try": 2}])
    assert ids == [1]
    assert [o.data for o in history_until(state, 1, 1.0)] == [{"try": 2}]


def test_the_input_state_is_not_modified_and_stays_json() -> None:
    state, _ = update_tracks(None, 0.0, [UPRIGHT], [{"x": [1, 2]}])
    snapshot = json.dumps(state)
    new, _ = update_tracks(state, 0.5, [UPRIGHT])
    assert json.dumps(state) == snapshot
    assert json.loads(json.dumps(new)) == new


def test_state_is_bounded_in_tracks_history_and_time() -> None:
    config = TrackerConfig(max_tracks=3, max_history=5, history_s=100.0, track_ttl_s=3.0)
    state = None
    for i in range(20):
        state, _ = update_tracks(state, float(i) * 0.1, [UPRIGHT], config=config)
    assert len(state["tracks"]) == 1 and len(state["tracks"][0]["history"]) == 5
    for i in range(6):  # six disjoint people at once: only the 3 freshest tracks may stay
        state, _ = update_tracks(state, 2.0, [(i * 200.0, 0.0, i * 200.0 + 50, 50.0)], config=config)
    assert len(state["tracks"]) == 3
    state, _ = update_tracks(state, 10.0, [FAR], config=config)  # everyone else unseen for > 3 s
    assert [t["history"][-1]["box"] for t in state["tracks"]] == [list(FAR)]


def test_an_unknown_state_version_starts_fresh() -> None:
    state, ids = update_tracks({"version": 99, "tracks": "garbage"}, 0.0, [UPRIGHT])
    assert ids == [1] and state["version"] == 1
