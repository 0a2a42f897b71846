"""Fall detection on sequences built from a real photograph (the astronaut upright, then rotated to lying),
run through the real MoveNet network, with time taken from the frames' timestamps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data
from matplotlib import cbook
from pydantic import ValidationError
from support import fetch_weights

from ruth_vision import fall
from ruth_vision.pose import PoseEngineConfig, PoseNetwork, PoseResult, build_engine
from ruth_vision.tracking import Observation


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> PoseNetwork:
    return build_engine(PoseEngineConfig(weights=fetch_weights(tmp_path_factory.mktemp("weights"))))


def on_canvas(image: np.ndarray, width: int = 1024, height: int = 768) -> np.ndarray:
    canvas = np.full((height, width, 3), 128, np.uint8)
    h, w = image.shape[:2]
    y, x = (height - h) // 2, (width - w) // 2
    canvas[y : y + h, x : x + w] = image
    return canvas


ASTRONAUT = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
UPRIGHT = on_canvas(ASTRONAUT)
LYING = on_canvas(cv2.rotate(ASTRONAUT, cv2.ROTATE_90_CLOCKWISE))


@pytest.fixture(scope="module")
def scenes(engine: PoseNetwork) -> dict[str, list[PoseResult]]:
    return {"upright": engine.infer(UPRIGHT), "lying": engine.infer(LYING)}


def run(frames: Sequence[tuple[float, list[PoseResult]]], config: fall.FallConfig | None = None) -> dict[float, Any]:
    """Feed frames in the given (arrival) order; return each frame's payload by its timestamp."""
    config = config or fall.FallConfig()
    state: dict[str, Any] | None = None
    results = {}
    for t, people in frames:
        state, payload = fall.assess_frame(state, t, people, config)
        results[t] = payload
    return results


def fall_sequence(scenes: dict[str, list[PoseResult]]) -> list[tuple[float, list[PoseResult]]]:
    """Upright for 1 s, then down at 1.5 s and still down at 4 s (frames every 0.5 s)."""
    times = [i * 0.5 for i in range(9)]
    return [(t, scenes["upright"] if t <= 1.0 else scenes["lying"]) for t in times]


def test_postures_of_real_photographs(engine: PoseNetwork) -> None:
    grace = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    config = fall.FallConfig()
    for frame in (UPRIGHT, on_canvas(grace)):
        (person,) = engine.infer(frame)
        posture = fall.posture_of(person, config)
        assert posture.state == "upright" and posture.torso_angle is not None and posture.torso_angle < 15
    for frame in (LYING, on_canvas(cv2.rotate(grace, cv2.ROTATE_90_COUNTERCLOCKWISE))):
        (person,) = engine.infer(frame)
        posture = fall.posture_of(person, config)
        assert posture.state == "lying" and posture.torso_angle is not None and 70 < posture.torso_angle < 110
        assert posture.aspect > 1.0


def test_upright_then_down_fast_and_staying_down_is_a_fall(engine: PoseNetwork) -> None:
    state: dict[str, Any] | None = None
    verdicts = []
    for t in [i * 0.5 for i in range(9)]:
        people = engine.infer(UPRIGHT if t <= 1.0 else LYING)  # the network runs on every frame
        state, payload = fall.assess_frame(state, t, people, fall.FallConfig())
        verdicts.append((t, payload["violation_type"], payload["severity"]))
        assert [d["track_id"] for d in payload["detections"]] == [1]
        json.dumps(payload)
    assert verdicts[:3] == [(0.0, None, "low"), (0.5, None, "low"), (1.0, None, "low")]
    assert {v[1:] for v in verdicts[3:7]} == {("possible_fall", "high")}  # down, but not for 2 s yet
    assert verdicts[7:] == [(3.5, "fall_detected", "critical"), (4.0, "fall_detected", "critical")]
    detection = payload["detections"][0]
    assert detection["event"] == "fall_detected" and detection["down_for_s"] == 2.5
    assert detection["transition_s"] == 0.5
    assert len(detection["keypoints"]) == 17 and set(detection["keypoints"][0]) == {"name", "x", "y", "confidence"}
    assert payload["confidence"] > 0.5 and payload["falls_detected"] == 1


def test_late_frames_are_judged_as_if_they_had_come_in_order(scenes: dict[str, list[PoseResult]]) -> None:
    in_order = run(fall_sequence(scenes))
    frames = dict(fall_sequence(scenes))
    arrival = [0.0, 0.5, 1.0, 1.5, 3.0, 4.0, 2.0, 2.5, 3.5]  # a burst: 2.0 and 2.5 come after 4.0
    shuffled = run([(t, frames[t]) for t in arrival])
    for t in arrival:
        assert shuffled[t]["violation_type"] == in_order[t]["violation_type"], t
        assert shuffled[t]["detections"][0]["down_for_s"] == in_order[t]["detections"][0]["down_for_s"]


def test_the_final_state_does_not_depend_on_arrival_order(scenes: dict[str, list[PoseResult]]) -> None:
    frames = fall_sequence(scenes)
    reversed_state: dict[str, Any] | None = None
    in_order_state: dict[str, Any] | None = None
    for t, people in reversed(frames):
        reversed_state, _ = fall.assess_frame(reversed_state, t, people, fall.FallConfig())
    for t, people in frames:
        in_order_state, _ = fall.assess_frame(in_order_state, t, people, fall.FallConfig())
    assert reversed_state is not None and in_order_state is not None
    assert reversed_state["tracks"][0]["history"] == in_order_state["tracks"][0]["history"]


def test_a_person_only_ever_seen_lying_is_a_possible_fall(scenes: dict[str, list[PoseResult]]) -> None:
    results = run([(float(t), scenes["lying"]) for t in range(6)])
    assert results[5.0]["violation_type"] == "possible_fall" and results[5.0]["severity"] == "high"
    assert results[5.0]["confidence"] < 0.5
    quiet = run([(float(t), scenes["lying"]) for t in range(6)], fall.FallConfig(report_possible_falls=False))
    assert quiet[5.0]["violation_detected"] is False and quiet[5.0]["severity"] == "low"


def test_a_slow_lie_down_is_not_a_confirmed_fall(scenes: dict[str, list[PoseResult]]) -> None:
    frames = [(0.0, scenes["upright"]), (1.0, scenes["upright"])] + [(t, scenes["lying"]) for t in (4.0, 5.0, 8.0)]
    results = run(frames, fall.FallConfig(max_transition_s=2.0))
    assert results[8.0]["violation_type"] == "possible_fall"


def test_getting_up_ends_the_alert(scenes: dict[str, list[PoseResult]]) -> None:
    frames = [*fall_sequence(scenes), (4.5, scenes["upright"])]
    results = run(frames)
    assert results[4.0]["violation_type"] == "fall_detected"
    assert results[4.5]["violation_detected"] is False


def test_min_down_time_comes_from_config(scenes: dict[str, list[PoseResult]]) -> None:
    results = run(fall_sequence(scenes), fall.FallConfig(min_down_s=0.5))
    assert results[2.0]["violation_type"] == "fall_detected"
    assert results[1.5]["violation_type"] == "possible_fall"


def test_an_empty_frame_is_not_a_violation() -> None:
    _, payload = fall.assess_frame(None, 0.0, [], fall.FallConfig())
    assert payload["violation_detected"] is False and payload["detections"] == [] and payload["confidence"] == 0.0


def _obs(t: float, state: str, lying: float) -> Observation:
    return Observation(t, (0.0, 0.0, 1.0, 1.0), {"state": state, "lying": lying})


def test_decide_lets_unclear_frames_continue_a_run_but_not_start_one() -> None:
    config = fall.FallConfig(min_down_s=2.0, max_transition_s=1.0)
    history = [_obs(0.0, "upright", 0.1), _obs(0.5, "lying", 0.9), _obs(1.5, "unclear", 0.5), _obs(2.5, "lying", 0.8)]
    verdict = fall.decide(history, 2.5, config)
    assert verdict.event == "fall_detected" and verdict.down_for_s == 2.0 and verdict.transition_s == 0.5
    assert fall.decide(history, 1.5, config).event is None  # unclear now: no verdict
    assert fall.decide(history, 0.5, config).event == "possible_fall"


def test_config_rejects_unknown_keys_and_crossed_thresholds() -> None:
    with pytest.raises(ValidationError, match="extra"):
        fall.FallConfig.model_validate({"min_down_seconds": 3})
    with pytest.raises(ValidationError, match="upright_threshold must be below lying_threshold"):
        fall.FallConfig(upright_threshold=0.7, lying_threshold=0.6)


def test_lying_that_persists_confirms_a_fall_nobody_saw(scenes: dict[str, list[PoseResult]]) -> None:
    """Camera joined late, or the fall itself was a blur: lying without a break for confirm_lying_s is enough."""
    frames = [(float(t), scenes["lying"]) for t in range(10)]
    results = run(frames, fall.FallConfig(confirm_lying_s=8.0))
    assert results[7.0]["violation_type"] == "possible_fall"
    assert results[8.0]["violation_type"] == "fall_detected" and results[8.0]["severity"] == "critical"
    assert results[8.0]["detections"][0]["transition_s"] is None  # no upright frame was ever seen
    never = run(frames, fall.FallConfig(confirm_lying_s=None))
    assert never[9.0]["violation_type"] == "possible_fall"
    getting_up = run([*frames[:5], (5.0, scenes["upright"]), *((float(t), scenes["lying"]) for t in range(6, 10))])
    assert getting_up[9.0]["detections"][0]["down_for_s"] == 3.0  # an upright frame restarted the run at 6 s


def _body(torso_dx: float, legs_dx: float) -> PoseResult:
    """Keypoints of a body whose torso and legs point along the given x offsets (per 100 px of length)."""
    keypoints = np.zeros((17, 3), np.float32)
    hips = np.array([300.0, 300.0])
    torso = np.array([torso_dx, -np.sqrt(max(100.0**2 - torso_dx**2, 0.0))])
    legs = np.array([legs_dx, np.sqrt(max(100.0**2 - legs_dx**2, 0.0))])
    for index, point in ((11, hips), (12, hips), (5, hips + torso), (6, hips + torso), (0, hips + 1.3 * torso)):
        keypoints[index] = (*point, 0.9)
    for index in (15, 16):
        keypoints[index] = (*(hips + 2 * legs), 0.9)
    xs, ys = keypoints[keypoints[:, 2] > 0, 0], keypoints[keypoints[:, 2] > 0, 1]
    return PoseResult((float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())), keypoints, 0.8)


def test_a_person_bent_double_on_standing_legs_is_not_lying() -> None:
    config = fall.FallConfig()
    bent = fall.posture_of(_body(torso_dx=100.0, legs_dx=0.0), config)  # flat torso, vertical legs
    lying = fall.posture_of(_body(torso_dx=100.0, legs_dx=-100.0), config)  # torso and legs flat
    assert lying.state == "lying"
    assert bent.state != "lying" and bent.lying_score < lying.lying_score / 1.5


def test_a_long_head_down_posture_is_not_confirmed_as_a_fall() -> None:
    """Someone bent into a trench (torso pointing down, head below the hips) may read as lying for as long as they
    work: it stays a possible fall, it never escalates to a confirmed one without a seen fall."""
    config = fall.FallConfig(confirm_lying_s=8.0)
    flat = [_obs(float(t), "lying", 0.9) for t in range(10)]
    bent = [Observation(o.t, (0.0, 0.0, 1.0, 1.0), {**o.data, "angle": 124.0}) for o in flat]
    lying = [Observation(o.t, (0.0, 0.0, 1.0, 1.0), {**o.data, "angle": 92.0}) for o in flat]
    assert fall.decide(bent, 9.0, config).event == "possible_fall"
    assert fall.decide(lying, 9.0, config).event == "fall_detected"
    assert fall.decide(flat, 9.0, config).event == "fall_detected"  # no angle known: no veto
    weak = [_obs(float(t), "lying", 0.72) for t in range(10)]  # lying, but on weak evidence
    assert fall.decide(weak, 9.0, config).event == "possible_fall"


def _projected(
    torso: float, legs: float, *, bend_dx: float = 0.0, head_down: bool = False, width: float = 40.0
) -> PoseResult:
    """A body facing the camera as a camera sees it: torso and legs lengths in body widths (shoulder keypoints
    apart), the legs offset sideways by `bend_dx` widths (a bend at the hips), the head beyond the shoulders.
    `head_down`: the whole body turned over in the image (head nearest the bottom)."""
    sign = 1.0 if head_down else -1.0  # -1: head up the image
    hips_y = 300.0
    shoulders_y = hips_y + sign * torso * width
    head_y = shoulders_y + sign * 0.45 * width
    feet = np.array([300.0 + bend_dx * width, hips_y - sign * legs * width])
    knees = (np.array([300.0, hips_y]) + feet) / 2
    keypoints = np.zeros((17, 3), np.float32)
    points = {
        0: (300.0, head_y),
        1: (295.0, head_y - sign * 3),
        2: (305.0, head_y - sign * 3),
        5: (300.0 + width / 2, shoulders_y),
        6: (300.0 - width / 2, shoulders_y),
        11: (300.0 + 0.35 * width, hips_y),
        12: (300.0 - 0.35 * width, hips_y),
        13: (knees[0] + 0.3 * width, knees[1]),
        14: (knees[0] - 0.3 * width, knees[1]),
        15: (feet[0] + 0.3 * width, feet[1]),
        16: (feet[0] - 0.3 * width, feet[1]),
    }
    for index, (x, y) in points.items():
        keypoints[index] = (x, y, 0.9)
    seen = keypoints[keypoints[:, 2] > 0]
    box = (float(seen[:, 0].min()), float(seen[:, 1].min()), float(seen[:, 0].max()), float(seen[:, 1].max()))
    return PoseResult(box, keypoints, 0.8)


@pytest.mark.parametrize(
    ("name", "torso", "legs", "bend_dx", "head_down"),
    [
        ("feet towards a camera 20 degrees up", 0.48, 0.82, 0.0, False),
        ("feet towards a camera 30 degrees up", 0.62, 1.05, 0.0, False),
        ("head towards the camera", 0.5, 0.9, 0.0, True),
    ],
)
def test_a_body_lying_along_the_line_of_sight_reads_lying(
    name: str, torso: float, legs: float, bend_dx: float, head_down: bool
) -> None:
    """Near-vertical in the image (torso angle 0 or 180 degrees), but short for its width and straight."""
    posture = fall.posture_of(_projected(torso, legs, bend_dx=bend_dx, head_down=head_down), fall.FallConfig())
    assert posture.torso_angle is not None and (posture.torso_angle < 10 or posture.torso_angle > 170), name
    assert posture.foreshortened >= 0.65, name
    assert posture.state == "lying", (name, posture)


@pytest.mark.parametrize(
    ("name", "torso", "legs", "bend_dx"),
    [
        ("standing, level camera", 1.4, 2.4, 0.0),
        ("standing, camera 45 degrees up", 1.0, 1.7, 0.0),
        ("standing far away, camera 45 degrees up", 0.95, 1.65, 0.0),
        ("bent towards the camera on straight legs", 0.6, 2.3, 0.9),
        ("bent towards the camera, knees bent", 0.7, 1.3, 0.9),
        ("sitting facing the camera", 1.4, 0.6, 0.5),
        ("sitting on the floor, legs towards the camera", 1.3, 0.5, 0.0),
        ("kneeling upright", 1.3, 0.8, 0.0),
        ("crouching", 0.9, 0.7, 0.8),
    ],
)
def test_short_looking_people_who_are_not_lying_stay_upright(
    name: str, torso: float, legs: float, bend_dx: float
) -> None:
    posture = fall.posture_of(_projected(torso, legs, bend_dx=bend_dx), fall.FallConfig())
    assert posture.state != "lying", (name, posture)
    assert posture.foreshortened < 0.5, (name, posture)


def test_a_walking_person_read_upside_down_is_not_lying() -> None:
    """MoveNet sometimes swaps shoulders and hips on a person walking away: a full-length torso pointing straight
    down in a tall box (seen on a real care-home clip, eval/labels.yaml clip-3-walker)."""
    flipped = fall.posture_of(_projected(1.4, 2.4, head_down=True), fall.FallConfig())
    assert flipped.torso_angle is not None and flipped.torso_angle > 170
    assert flipped.state != "lying"


def test_a_fall_along_the_line_of_sight_is_confirmed() -> None:
    standing = [_projected(1.4, 2.4)]
    down = [_projected(0.5, 0.85)]
    frames = [(t / 2, standing) for t in range(4)] + [(2.0 + t / 2, down) for t in range(6)]
    results = run(frames)
    assert results[0.0]["violation_type"] is None
    assert results[4.5]["violation_type"] == "fall_detected"
