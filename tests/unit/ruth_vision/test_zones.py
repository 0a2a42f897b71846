"""Geo-fencing on scenes built from real photographs (pasted left or right of a 1280x720 floor), posed by the real
MoveNet network; zones from CONFIG in pixels or normalised; dwell on frame time."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data
from matplotlib import cbook
from pydantic import ValidationError
from support import fetch_weights

from ruth_vision import zones
from ruth_vision.pose import PoseEngineConfig, PoseNetwork, PoseResult, build_engine

SIZE = (1280, 720)
ASTRONAUT = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
GRACE = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))[:512]
RIGHT_FLOOR = [[700, 600], [1280, 600], [1280, 720], [700, 720]]
LEFT_HALF = [[0, 0], [640, 0], [640, 720], [0, 720]]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> PoseNetwork:
    return build_engine(PoseEngineConfig(weights=fetch_weights(tmp_path_factory.mktemp("weights"))))


def scene(left: np.ndarray | None = None, right: np.ndarray | None = None, top: int = 208) -> np.ndarray:
    canvas = np.full((SIZE[1], SIZE[0], 3), 128, np.uint8)
    if left is not None:
        canvas[top : top + 512, 20:532] = left
    if right is not None:
        canvas[top : top + 512, 740:1252] = right
    return canvas


@pytest.fixture(scope="module")
def people(engine: PoseNetwork) -> dict[str, list[PoseResult]]:
    return {
        "left": engine.infer(scene(left=ASTRONAUT)),
        "right": engine.infer(scene(right=ASTRONAUT)),
        "right_back": engine.infer(scene(right=ASTRONAUT, top=40)),  # stepped back: feet above the floor zone
        "both": engine.infer(scene(left=ASTRONAUT, right=GRACE)),
    }


def assess(people: list[PoseResult], config: dict[str, Any], t: float = 0.0, state: Any = None) -> dict[str, Any]:
    return zones.assess_frame(state, t, people, SIZE, zones.GeoConfig.model_validate(config))[1]


def restricted(points: list[list[float]], zone_id: str = "dock") -> dict[str, Any]:
    return {"id": zone_id, "name": zone_id.title(), "points": points, "type": "restricted"}


def test_a_person_standing_in_a_restricted_zone_intrudes(people: dict[str, list[PoseResult]]) -> None:
    payload = assess(people["right"], {"zones": [restricted(RIGHT_FLOOR)]})
    assert payload["violation_detected"] is True and payload["violation_type"] == "zone_intrusion"
    (person,) = payload["detections"]
    assert person["zone_id"] == "dock" and person["in_zone"] is True and person["foot_source"] == "box"
    assert person["violations"][0]["zone_name"] == "Dock"
    assert payload["zones_violated"] == ["dock"] and payload["severity"] == "medium"
    assert payload["metadata"]["persons_in_zone"] == 1


def test_a_person_elsewhere_does_not(people: dict[str, list[PoseResult]]) -> None:
    payload = assess(people["left"], {"zones": [restricted(RIGHT_FLOOR)]})
    assert payload["violation_detected"] is False and payload["severity"] == "low"
    assert payload["detections"][0]["zone_id"] is None and payload["detections"][0]["in_zone"] is False


def test_the_feet_count_not_the_box_centre(people: dict[str, list[PoseResult]]) -> None:
    (person,) = people["right"]
    x1, y1, x2, y2 = person.box
    centre_band = [[700, 300], [1280, 300], [1280, 560], [700, 560]]  # holds the box centre, not the feet
    assert zones.point_in_zone(np.asarray(centre_band, np.float32), ((x1 + x2) / 2, (y1 + y2) / 2))
    assert assess(people["right"], {"zones": [restricted(centre_band)]})["violation_detected"] is False


def test_normalised_zones_match_pixel_zones(people: dict[str, list[PoseResult]]) -> None:
    normalised = [[x / SIZE[0], y / SIZE[1]] for x, y in RIGHT_FLOOR]
    for pose_set, expected in ((people["right"], True), (people["left"], False)):
        assert assess(pose_set, {"zones": [restricted(normalised)]})["violation_detected"] is expected
    forced = assess(people["right"], {"zones": [restricted([[0, 0], [1, 0], [1, 1]])], "coordinates": "pixels"})
    assert forced["violation_detected"] is False  # a 1-pixel triangle when told the numbers are pixels


def test_leaving_an_allowed_zone_is_an_exit(people: dict[str, list[PoseResult]]) -> None:
    config = {"zones": [{"id": "bay", "points": LEFT_HALF, "type": "allowed"}]}
    assert assess(people["left"], config)["violation_detected"] is False
    payload = assess(people["right"], config)
    assert payload["violation_type"] == "zone_exit"
    assert payload["detections"][0]["zone_id"] == "bay" and payload["detections"][0]["in_zone"] is False


def test_every_violated_zone_is_reported(people: dict[str, list[PoseResult]]) -> None:
    config = {
        "zones": [
            restricted(RIGHT_FLOOR, "dock"),
            restricted([[600, 720], [1280, 400], [1280, 720]], "ramp"),
            {"id": "bay", "points": LEFT_HALF, "type": "allowed"},
        ]
    }
    payload = assess(people["right"], config)
    assert [v["zone_id"] for v in payload["detections"][0]["violations"]] == ["dock", "ramp", "bay"]
    assert payload["zones_violated"] == ["bay", "dock", "ramp"]
    assert payload["violation_type"] == "zone_intrusion"  # intrusion outranks exit


def test_two_offenders_raise_severity(people: dict[str, list[PoseResult]]) -> None:
    payload = assess(people["both"], {"zones": [restricted([[0, 600], [1280, 600], [1280, 720], [0, 720]])]})
    assert payload["metadata"]["persons_in_zone"] == 2 and payload["severity"] == "high"


def test_minimum_dwell_on_frame_time(people: dict[str, list[PoseResult]]) -> None:
    config = zones.GeoConfig.model_validate({"zones": [restricted(RIGHT_FLOOR)], "min_dwell_s": 1.0})
    state = None
    flags = []
    steps = ((0.0, "right"), (0.5, "right"), (1.0, "right"), (1.5, "right_back"), (2.0, "right"), (3.0, "right"))
    for t, pose_set in steps:
        state, payload = zones.assess_frame(state, t, people[pose_set], SIZE, config)
        flags.append((payload["violation_detected"], payload["detections"][0]["track_id"]))
        if t == 2.0:
            assert payload["detections"][0]["zone_id"] == "dock"  # inside, but the dwell restarted at 2.0
    assert flags == [(False, 1), (False, 1), (True, 1), (False, 1), (False, 1), (True, 1)]
    per_zone = {"zones": [{**restricted(RIGHT_FLOOR), "min_dwell_s": 0.0}], "min_dwell_s": 5.0}
    assert assess(people["right"], per_zone)["violation_detected"] is True  # the zone's own setting wins


def _pose_with_ankles(ankle_score: float) -> PoseResult:
    kp = np.zeros((17, 3), np.float32)
    kp[15] = [100, 380, ankle_score]
    kp[16] = [140, 390, ankle_score]
    return PoseResult((80.0, 100.0, 160.0, 300.0), kp, 0.9)  # a box cut off above the feet


def test_foot_point_prefers_visible_ankles() -> None:
    assert zones.foot_point(_pose_with_ankles(0.8), 0.25) == ((120.0, 390.0), "ankles")
    assert zones.foot_point(_pose_with_ankles(0.1), 0.25) == ((120.0, 300.0), "box")


def test_legacy_point_lists_become_one_restricted_zone() -> None:
    config = zones.GeoConfig.model_validate({"tank_corners": RIGHT_FLOOR})
    assert [(z.id, z.type) for z in config.zones] == [("zone_1", "restricted")]


@pytest.mark.parametrize(
    "config",
    [
        {"zones": [restricted(RIGHT_FLOOR), restricted(LEFT_HALF)]},  # duplicate id
        {"zones": [restricted([[0, 0], [1, 1]])]},  # two points
        {"zones": [restricted([[0, 0], [-5, 1], [3, 3]])]},  # negative
        {"zones": [], "threshold": 0.5},  # unknown key
        {"zones": [{**restricted(RIGHT_FLOOR), "type": "forbidden"}]},
    ],
)
def test_bad_zone_configs_are_rejected(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        zones.GeoConfig.model_validate(config)


def test_no_zones_means_no_violation(people: dict[str, list[PoseResult]]) -> None:
    payload = assess(people["right"], {})
    assert payload["violation_detected"] is False and payload["metadata"]["zones_configured"] == 0
