"""Looking again for a person lost on the way down (ruth_vision.fall_search), on constructed keypoints and boxes:
who is searched for, where the crops come from, how a pose found on a turned crop maps back to the frame, which
finds are kept, and that a found person continues their track to a confirmed fall."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from ruth_vision import fall, fall_search
from ruth_vision.fall_search import Search
from ruth_vision.pose import PoseResult
from ruth_vision.tracking import update_tracks

WIDTH, HEIGHT = 640, 360
CONFIG = fall.FallConfig()


def person(x: float, y: float, length: float, lying: bool = False, score: float = 0.8) -> PoseResult:
    """A body `length` px long from (x, y): standing (head at the top) or lying (head at the left)."""
    # along the body: head 0.05, shoulders 0.2, hips 0.5, knees 0.75, ankles 0.98; across: +-0.1
    along = {0: 0.05, 1: 0.04, 2: 0.04, 3: 0.06, 4: 0.06, 5: 0.2, 6: 0.2, 7: 0.35, 8: 0.35, 9: 0.45, 10: 0.45}
    along |= {11: 0.5, 12: 0.5, 13: 0.75, 14: 0.75, 15: 0.98, 16: 0.98}
    keypoints = np.zeros((17, 3), np.float32)
    for k, a in along.items():
        across = 0.0 if k == 0 else (-0.1 if k % 2 else 0.1)
        u, v = a * length, (0.5 + across) * 0.3 * length
        keypoints[k] = (x + u, y + v, 0.9) if lying else (x + v, y + u, 0.9)
    w, h = (length, 0.3 * length) if lying else (0.3 * length, length)
    return PoseResult((x, y, x + w, y + h), keypoints, score)


def track_state(boxes: list[tuple[float, tuple[float, float, float, float], str]]) -> dict[str, Any]:
    """One track through `boxes` (time, box, posture state)."""
    state: dict[str, Any] | None = None
    for t, box, posture in boxes:
        state, _ = update_tracks(state, t, [box], [{"state": posture, "lying": 0.0}])
    assert state is not None
    return state


def test_a_person_lost_on_the_way_down_is_searched_for_around_their_last_box() -> None:
    falling = track_state([(0.0, (300, 100, 340, 220), "upright"), (0.2, (300, 140, 345, 225), "upright")])
    searches = fall_search.lost_searches(falling, 0.4, WIDTH, HEIGHT, CONFIG)
    assert len(searches) == 1
    search = searches[0]
    assert search.track_id == 1 and search.side == pytest.approx(2 * 85)  # grown 2x around the last box
    assert (search.x + search.side / 2, search.y + search.side / 2) == pytest.approx((322.5, 182.5))
    unclear = track_state([(0.0, (300, 100, 340, 220), "unclear")])
    assert fall_search.lost_searches(unclear, 0.2, WIDTH, HEIGHT, CONFIG)


def test_nobody_is_searched_for_who_walked_on_left_the_frame_was_seen_or_is_long_gone() -> None:
    walking = track_state([(0.0, (300, 100, 340, 220), "upright"), (0.2, (310, 101, 350, 221), "upright")])
    assert fall_search.lost_searches(walking, 0.4, WIDTH, HEIGHT, CONFIG) == []  # upright, not going down
    at_edge = track_state([(0.0, (590, 100, 635, 220), "lying")])
    assert fall_search.lost_searches(at_edge, 0.2, WIDTH, HEIGHT, CONFIG) == []  # may have walked out
    lying = track_state([(0.0, (300, 100, 340, 220), "lying")])
    assert fall_search.lost_searches(lying, 0.0, WIDTH, HEIGHT, CONFIG) == []  # seen in this frame
    assert fall_search.lost_searches(lying, 1.5, WIDTH, HEIGHT, CONFIG) == []  # unseen longer than search_lost_s
    off = fall.FallConfig(search_lost_s=0.0)
    assert fall_search.lost_searches(lying, 0.2, WIDTH, HEIGHT, off) == []


def test_a_pose_on_each_turned_crop_maps_back_to_where_it_is_in_the_frame() -> None:
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    spot = (350, 200)
    cv2.circle(frame, spot, 3, (255, 255, 255), -1)
    search = Search(1, 250.0, 120.0, 160.0, (290, 160, 370, 240))
    images = fall_search.search_images(frame, search, 256)
    assert [im.shape for im in images] == [(256, 256, 3)] * 3
    for turn, image in zip(fall_search.TURNS, images, strict=True):
        ys, xs = np.nonzero(image[:, :, 0] > 128)
        keypoints = np.zeros((17, 3), np.float32)
        keypoints[:, :2] = (xs.mean(), ys.mean())
        found = PoseResult((xs.min(), ys.min(), xs.max(), ys.max()), keypoints, 0.9)
        back = fall_search._to_frame(found, turn, search, 256)
        assert back.keypoints[0, :2] == pytest.approx(spot, abs=1.5), turn
        assert (back.box[0] + back.box[2]) / 2 == pytest.approx(spot[0], abs=1.5)


def test_the_search_square_beyond_the_frame_is_black() -> None:
    frame = np.full((HEIGHT, WIDTH, 3), 200, np.uint8)
    image = fall_search.search_images(frame, Search(1, -100.0, -100.0, 200.0, (0, 0, 1, 1)), 256)[0]
    assert image[:100, :100].max() == 0 and image[200:, 200:].min() == 200


def in_search(pose: PoseResult, search: Search, size: int = 256) -> PoseResult:
    """`pose` (frame pixels) as the pose network would report it on the unturned search image."""
    scale = size / search.side
    keypoints = pose.keypoints.copy()
    keypoints[:, 0] = (keypoints[:, 0] - search.x) * scale
    keypoints[:, 1] = (keypoints[:, 1] - search.y) * scale
    x1, y1, x2, y2 = pose.box
    box = ((x1 - search.x) * scale, (y1 - search.y) * scale, (x2 - search.x) * scale, (y2 - search.y) * scale)
    return PoseResult(box, keypoints, pose.score)


def test_recover_keeps_the_lost_person_and_nobody_else() -> None:
    search = Search(7, 200.0, 100.0, 240.0, (280, 120, 320, 240))
    lying = person(250, 210, 110, lying=True)  # on the floor where the lost person stood
    standing = person(380, 110, 110)  # already found by the full-frame passes
    box_only = PoseResult(lying.box, np.zeros((17, 3), np.float32), 0.9)  # the detector's box, no joints
    weak = person(250, 210, 110, lying=True)
    weak.keypoints[:, 2] = 0.5
    found: list[list[PoseResult]] = [[in_search(weak, search), in_search(standing, search)], [], []]
    assert fall_search.recover([search], found, [standing], CONFIG)[7].keypoints[0, 2] == pytest.approx(0.5)
    found = [[in_search(box_only, search)], [], []]
    assert fall_search.recover([search], found, [], CONFIG) == {}  # a box alone says nothing about posture
    found = [[in_search(standing, search)], [], []]
    assert fall_search.recover([search], found, [standing], CONFIG) == {}  # the full frame found them already
    far = Search(7, 200.0, 100.0, 240.0, (200, 100, 210, 120))
    assert fall_search.recover([far], [[in_search(lying, far)], [], []], [], CONFIG) == {}  # too far from the box


def test_a_recovered_person_continues_their_track_to_a_confirmed_fall() -> None:
    state: dict[str, Any] | None = None
    for t, y in ((0.0, 100), (0.2, 100), (0.4, 130)):  # upright, the box's top dropping in the last frame
        state, payload = fall.assess_frame(state, t, [person(300, y, 120 - (y - 100))], CONFIG)
    assert payload["detections"][0]["posture"] == "upright"
    t = 0.6
    while t < 3.0:  # lost by the full frame from here on, found by every search
        state, (payload, searches) = fall_search.assess_and_search(state, t, [], CONFIG, (HEIGHT, WIDTH, 3))
        assert [s.track_id for s in searches] == [1]
        state, payload = fall.assess_frame(state, t, [], CONFIG, recovered={1: person(250, 200, 130, lying=True)})
        detection = payload["detections"][0]
        assert detection["track_id"] == 1 and detection["recovered"] is True and detection["posture"] == "lying"
        t = round(t + 0.2, 3)
    assert payload["violation_type"] == "fall_detected"


def test_only_a_track_that_was_going_down_is_searched_for_the_first_time() -> None:
    """After the first frame lost, the search keeps going only while it finds the person (a recovered track)."""
    state: dict[str, Any] | None = None
    for t, y in ((0.0, 100), (0.2, 100), (0.4, 135)):  # the box's top drops by 35 of 120 px: going down
        state, _ = fall.assess_frame(state, t, [person(300, y, 120 - (y - 100))], CONFIG)
    assert state is not None
    _, (_, searches) = fall_search.assess_and_search(state, 0.6, [], CONFIG, (HEIGHT, WIDTH, 3))
    assert [s.track_id for s in searches] == [1]
    _, (_, searches) = fall_search.assess_and_search(state, 1.6, [], CONFIG, (HEIGHT, WIDTH, 3))
    assert searches == []  # unseen for 1.2 s > search_lost_s


def test_tracker_hints_send_a_box_to_the_named_track() -> None:
    state, ids = update_tracks(None, 0.0, [(300, 100, 340, 220), (500, 100, 540, 220)])
    far = (100.0, 300.0, 220.0, 340.0)  # nowhere near track 1's box: the centroid gate alone would start a new track
    _, ids = update_tracks(state, 0.2, [far], hints=[1])
    assert ids == [1]
    _, ids = update_tracks(state, 0.2, [far], hints=[99])  # a track that no longer exists: a new one
    assert ids == [3]
    with pytest.raises(ValueError, match="hints"):
        update_tracks(state, 0.2, [far], hints=[])


def test_a_person_sitting_down_behind_a_table_is_searched_for_but_nothing_is_flagged() -> None:
    state: dict[str, Any] | None = None
    for t, y in ((0.0, 100), (0.2, 115), (0.4, 140)):  # sitting down: the box's top drops
        state, _ = fall.assess_frame(state, t, [person(300, y, 120 - (y - 100))], CONFIG)
    behind = person(300, 150, 110)
    behind.keypoints[11:, 2] = 0.0  # hips and legs hidden by the table: head, shoulders and arms seen
    t = 0.6
    while t < 4.0:
        state, (payload, searches) = fall_search.assess_and_search(state, t, [], CONFIG, (HEIGHT, WIDTH, 3))
        if searches:
            state, payload = fall.assess_frame(state, t, [], CONFIG, recovered={1: behind})
            assert payload["detections"][0]["posture"] != "lying"
        assert not payload["violation_detected"]
        t = round(t + 0.2, 3)


SHAPE = (HEIGHT, WIDTH, 3)


def fell_and_vanished(
    lying_at: tuple[float, float] = (250, 200), others: list[PoseResult] | None = None
) -> dict[str, Any] | None:
    """Upright at 0.0 and 0.2 s, lying at 0.4 s (a fast fall), then not found by anything."""
    state: dict[str, Any] | None = None
    for t, pose in ((0.0, person(300, 100, 120)), (0.2, person(300, 100, 120)), (0.4, person(*lying_at, 130, True))):
        state, payload = fall.assess_frame(state, t, [pose, *(others or [])], CONFIG, frame_shape=SHAPE)
    assert payload["violation_type"] == "possible_fall"
    return state


def frames_after(
    state: dict[str, Any] | None, until: float, people: list[PoseResult] | None = None, **config: Any
) -> dict[float, dict[str, Any]]:
    cfg = fall.FallConfig(**config)
    out = {}
    t = 0.6
    while t <= until:
        state, out[t] = fall.assess_frame(state, t, people or [], cfg, frame_shape=SHAPE)
        t = round(t + 0.2, 3)
    return out


def test_a_person_seen_to_fall_who_vanished_where_they_lay_is_a_confirmed_fall_after_min_down_s() -> None:
    payloads = frames_after(fell_and_vanished(), 3.0)
    assert {t for t, p in payloads.items() if p["violation_detected"]} == {2.4, 2.6, 2.8, 3.0}  # down 2 s from 0.4
    lost = payloads[2.4]["detections"]
    assert len(lost) == 1 and lost[0]["posture"] == "lost" and lost[0]["track_id"] == 1
    assert lost[0]["event"] == "fall_detected" and lost[0]["down_for_s"] == 2.0 and lost[0]["lost_for_s"] == 2.0
    assert lost[0]["bbox"] == [250.0, 200.0, 380.0, 239.0]  # where they were last seen, lying
    assert payloads[2.4]["violation_type"] == "fall_detected" and payloads[2.4]["severity"] == "critical"


def test_a_vanished_person_is_not_a_fall_at_the_edge_slow_or_when_someone_appears_where_they_lay() -> None:
    at_edge = fell_and_vanished(lying_at=(505, 200))  # the lying box reaches the frame's right edge
    assert not any(p["violation_detected"] for p in frames_after(at_edge, 3.0).values())
    got_up = frames_after(fell_and_vanished(), 3.0, [person(330, 130, 110)])  # someone upright where they lay
    assert not any(p["violation_type"] == "fall_detected" for p in got_up.values())
    assert not any(
        p["violation_detected"] for p in frames_after(fell_and_vanished(), 3.0, confirm_vanished=False).values()
    )
    slow: dict[str, Any] | None = None
    for t, pose in ((0.0, person(300, 100, 120)), (2.6, person(250, 200, 130, True))):  # 2.6 s from upright to lying
        slow, _ = fall.assess_frame(slow, t, [pose], CONFIG, frame_shape=SHAPE)
    assert slow is not None
    t = 2.8
    while t < 6.0:
        slow, payload = fall.assess_frame(slow, t, [], CONFIG, frame_shape=SHAPE)
        assert payload["violation_type"] != "fall_detected"
        t = round(t + 0.2, 3)


def test_someone_already_there_does_not_stop_a_vanished_fall_being_confirmed() -> None:
    beside = person(420, 110, 120)  # standing beside them all along: tracked before they vanished
    payloads = frames_after(fell_and_vanished(others=[beside]), 3.0, [beside])
    assert payloads[3.0]["violation_type"] == "fall_detected"
    assert [d["posture"] for d in payloads[3.0]["detections"]] == ["upright", "lost"]


def test_without_the_frame_size_nobody_vanished_is_reported() -> None:
    state = fell_and_vanished()
    _, payload = fall.assess_frame(state, 3.0, [], CONFIG)
    assert payload["detections"] == []
