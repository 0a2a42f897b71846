"""Pose engine: letterbox maths, output decoding, and the real MoveNet network on photographs from PyPI packages."""

from __future__ import annotations

import itertools
import types
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data
from matplotlib import cbook
from pydantic import ValidationError
from support import fetch_weights

from ruth_vision import pose


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> pose.PoseNetwork:
    weights = fetch_weights(tmp_path_factory.mktemp("weights"))
    return pose.build_engine(pose.PoseEngineConfig(weights=weights))


def astronaut() -> np.ndarray:
    return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)


def grace_hopper() -> np.ndarray:
    return cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


def camera() -> np.ndarray:
    return cv2.cvtColor(skimage.data.camera(), cv2.COLOR_GRAY2BGR)


# --- pure parts ---------------------------------------------------------------------------------------------------


def test_letterbox_centres_and_maps_back() -> None:
    box = pose.Letterbox.fit(640, 480, 256)
    assert (box.scale, box.pad_x, box.pad_y) == (0.4, 0, 32)
    canvas = box.apply(np.full((480, 640, 3), 200, np.uint8))
    assert canvas.shape == (256, 256, 3)
    assert canvas[:32].max() == 0 and canvas[-32:].max() == 0 and canvas[32:224].min() == 200
    x, y = box.to_frame(np.array([128.0, 0.0]), np.array([128.0, 300.0]))
    assert x.tolist() == [320.0, 0.0]
    assert y.tolist() == [240.0, 479.0]  # clipped into the frame


def test_pose_rows_round_trip() -> None:
    kp = np.arange(51, dtype=np.float32).reshape(17, 3)
    original = pose.PoseResult((1.0, 2.0, 3.0, 4.0), kp, 0.5)
    array = pose.poses_to_array([original, original])
    assert array.shape == (2, pose.POSE_ROW_WIDTH) and array.dtype == np.float32
    back = pose.poses_from_array(array[np.newaxis])  # as a BLS response carries it
    assert back[0].box == original.box and back[0].score == 0.5
    np.testing.assert_array_equal(back[1].keypoints, kp)
    assert pose.poses_to_array([]).shape == (0, pose.POSE_ROW_WIDTH)
    with pytest.raises(ValueError, match="POSES must be"):
        pose.poses_from_array(np.zeros((2, 55), np.float32))


def _movenet_row(y1: float, x1: float, y2: float, x2: float, score: float) -> np.ndarray:
    row = np.zeros(56, np.float32)
    row[:51].reshape(17, 3)[:] = [(y1 + y2) / 2, (x1 + x2) / 2, 0.9]
    row[51:55] = [y1, x1, y2, x2]
    row[55] = score
    return row


def test_decode_movenet_maps_normalised_yx_to_frame_xy_and_drops_weak_rows() -> None:
    box = pose.Letterbox.fit(640, 480, 256)  # pad_y 32, scale 0.4
    raw = np.stack(
        [
            _movenet_row(0.25, 0.25, 0.75, 0.5, 0.3),
            _movenet_row(0.3, 0.5, 0.6, 0.9, 0.6),
            _movenet_row(0.1, 0.1, 0.2, 0.2, 0.05),
        ]
    )[np.newaxis]
    people = pose.decode_movenet(raw, box, min_score=0.2)
    assert [round(p.score, 2) for p in people] == [0.6, 0.3]  # strongest first, the 0.05 one dropped
    x1, y1, x2, y2 = people[1].box
    assert (x1, x2) == pytest.approx((160.0, 320.0))
    assert (y1, y2) == pytest.approx(((0.25 * 256 - 32) / 0.4, (0.75 * 256 - 32) / 0.4))
    assert people[1].keypoints[0, :2] == pytest.approx([240.0, 240.0])


def _yolo_anchor(cx: float, cy: float, w: float, h: float, score: float) -> np.ndarray:
    a = np.zeros(56, np.float32)
    a[:5] = [cx, cy, w, h, score]
    a[5:].reshape(17, 3)[:] = [cx, cy, 0.8]
    return a


def test_decode_yolo_pose_suppresses_duplicates_and_accepts_both_layouts() -> None:
    box = pose.Letterbox.fit(1280, 640, 640)  # scale 0.5, pad_y 160
    anchors = np.stack(
        [
            _yolo_anchor(200, 320, 100, 200, 0.9),
            _yolo_anchor(205, 322, 100, 200, 0.8),
            _yolo_anchor(500, 320, 100, 200, 0.7),
            _yolo_anchor(50, 50, 10, 10, 0.1),
        ]
    )
    for raw in (anchors.T[np.newaxis], anchors[np.newaxis]):
        people = pose.decode_yolo_pose(raw, box, min_score=0.25)
        assert [round(p.score, 2) for p in people] == [0.9, 0.7]
        assert people[0].box == pytest.approx((300.0, 120.0, 500.0, 520.0))
        assert people[1].keypoints[3, :2] == pytest.approx([1000.0, 320.0])


# --- the real network ---------------------------------------------------------------------------------------------


def test_one_person_in_each_photograph(engine: pose.PoseNetwork) -> None:
    for frame in (astronaut(), grace_hopper(), camera()):
        assert len(engine.infer(frame)) == 1


def test_astronaut_box_and_face_keypoints_are_in_original_pixels(engine: pose.PoseNetwork) -> None:
    (person,) = engine.infer(astronaut())
    assert person.box == pytest.approx((18, 11, 361, 509), abs=20)
    nose, left_eye, right_eye = person.keypoints[:3]
    assert 190 < nose[0] < 260 and 90 < nose[1] < 150 and nose[2] > 0.5
    assert left_eye[0] > right_eye[0]  # the subject's left is the image's right


def test_coordinates_survive_a_wide_letterbox(engine: pose.PoseNetwork) -> None:
    canvas = np.full((512, 1536, 3), 90, np.uint8)
    canvas[:, 1000:1512] = astronaut()
    (person,) = engine.infer(canvas)
    assert person.box[0] == pytest.approx(1018, abs=25)
    assert person.keypoints[0, 0] == pytest.approx(1000 + 225, abs=25)


def test_two_people_side_by_side(engine: pose.PoseNetwork) -> None:
    canvas = np.full((600, 1100, 3), 128, np.uint8)
    canvas[44:556, 0:512] = astronaut()
    canvas[0:600, 560:1072] = grace_hopper()
    people = sorted(engine.infer(canvas), key=lambda p: p.box[0])
    assert len(people) == 2
    assert people[0].box[2] < 560 + 40 and people[1].box[0] > 512 - 40


def test_an_empty_scene_has_nobody(engine: pose.PoseNetwork) -> None:
    assert engine.infer(np.full((480, 640, 3), 128, np.uint8)) == []


def test_batch_equals_one_by_one(engine: pose.PoseNetwork) -> None:
    frames = [astronaut(), grace_hopper()]
    batch = engine.infer_batch(frames)
    for frame, people in zip(frames, batch, strict=True):
        (alone,) = engine.infer(frame)
        assert people[0].box == pytest.approx(alone.box)


def test_engine_rejects_a_frame_that_is_not_bgr_uint8(engine: pose.PoseNetwork) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        engine.infer(np.zeros((10, 10), np.uint8))


# --- building engines from a spec ----------------------------------------------------------------------------------


def test_litert_refuses_a_gpu_it_cannot_use(engine: pose.PoseNetwork, tmp_path: Path) -> None:
    weights = fetch_weights(tmp_path)
    with pytest.raises(pose.EngineLoadError, match="CPU only, but cuda:0 was granted"):
        pose.build_engine(pose.PoseEngineConfig(weights=weights), device="cuda:0")
    with pytest.raises(pose.EngineLoadError, match="YOLO-pose needs engine onnx"):
        pose.build_engine(pose.PoseEngineConfig(weights=weights, layout="yolo_pose"))


def test_missing_weights_fail_the_build(tmp_path: Path) -> None:
    with pytest.raises(pose.EngineLoadError, match="do not exist"):
        pose.build_engine(pose.PoseEngineConfig(weights=tmp_path / "none.tflite"))


def test_onnx_engine_without_onnxruntime_says_what_to_install(tmp_path: Path) -> None:
    weights = tmp_path / "pose.onnx"
    weights.write_bytes(b"onnx")

    def no_ort(name: str) -> Any:
        raise ImportError(f"No module named {name!r}")

    with pytest.raises(pose.EngineLoadError, match=r"onnxruntime is not installed.*onnxruntime-gpu"):
        pose.build_engine(pose.PoseEngineConfig(engine="onnx", weights=weights), importer=no_ort)


class _FakeSession:
    def __init__(self, path: str, sess_options: object, providers: list[Any]) -> None:
        self.providers = [p if isinstance(p, str) else p[0] for p in providers]
        self.provider_options = providers

    def get_providers(self) -> list[str]:
        return self.providers

    def get_inputs(self) -> list[Any]:
        return [types.SimpleNamespace(name="images", type="tensor(float)")]

    def run(self, outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (tensor,) = feeds.values()
        assert tensor.shape == (1, 3, 640, 640) and tensor.dtype == np.float32 and tensor.max() <= 1.0
        return [np.stack([_yolo_anchor(320, 320, 100, 300, 0.9)]).T[np.newaxis]]


def _fake_ort(providers: list[str]) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        get_available_providers=lambda: providers,
        SessionOptions=lambda: types.SimpleNamespace(intra_op_num_threads=0),
        InferenceSession=_FakeSession,
    )


def test_onnx_engine_runs_a_yolo_pose_export_through_the_same_interface(tmp_path: Path) -> None:
    weights = tmp_path / "yolo-pose.onnx"
    weights.write_bytes(b"onnx")
    config = pose.PoseEngineConfig(engine="onnx", layout="yolo_pose", weights=weights, input_size=640)
    network = pose.build_engine(config, importer=lambda name: _fake_ort(["CPUExecutionProvider"]))
    (person,) = network.infer(np.zeros((640, 1280, 3), np.uint8))  # scale 0.5, pad_y 160
    assert person.box == pytest.approx((540.0, 20.0, 740.0, 620.0))


def test_onnx_engine_on_cuda_requires_the_cuda_provider(tmp_path: Path) -> None:
    weights = tmp_path / "pose.onnx"
    weights.write_bytes(b"onnx")
    config = pose.PoseEngineConfig(engine="onnx", weights=weights)
    with pytest.raises(pose.EngineLoadError, match="CUDAExecutionProvider is not available"):
        pose.build_engine(config, device="cuda:1", importer=lambda name: _fake_ort(["CPUExecutionProvider"]))
    runner = pose.OnnxRunner(weights, "cuda:1", importer=lambda name: _fake_ort(["CUDAExecutionProvider"]))
    assert runner.providers == ["CUDAExecutionProvider"]
    assert pose.onnx_providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1})]


# --- the BLS round trip's tensors -----------------------------------------------------------------------------------


def _person(x: float, score: float = 0.5) -> pose.PoseResult:
    return pose.PoseResult((x, 0.0, x + 10, 20.0), np.full((17, 3), x, np.float32), score)


def test_pose_outputs_pad_to_the_fullest_frame_and_count_the_rest() -> None:
    outputs = pose.pack_pose_outputs([[_person(1), _person(2)], [], [_person(3)]])
    assert outputs["POSES"].shape == (3, 2, pose.POSE_ROW_WIDTH) and outputs["COUNT"].tolist() == [[2], [0], [1]]
    back = pose.split_pose_outputs(outputs["POSES"], outputs["COUNT"])
    assert [[p.box[0] for p in frame] for frame in back] == [[1.0, 2.0], [], [3.0]]
    empty = pose.pack_pose_outputs([[], []])
    assert empty["POSES"].shape == (2, 0, pose.POSE_ROW_WIDTH)
    with pytest.raises(ValueError, match="exceeds"):
        pose.split_pose_outputs(outputs["POSES"], np.array([[3], [0], [1]]))


def test_estimate_via_makes_one_call_per_frame_size_and_keeps_failures_to_their_frames() -> None:
    calls: list[tuple[int, ...]] = []

    def callee(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames = inputs["FRAME"]
        calls.append(frames.shape)
        if frames.shape[1] == 99:
            raise RuntimeError("pose model down")
        return pose.pack_pose_outputs([[_person(float(f[0, 0, 0]))] for f in frames])

    small = [np.full((64, 64, 3), v, np.uint8) for v in (1, 2)]
    odd = np.zeros((99, 64, 3), np.uint8)
    results = pose.estimate_via(callee, [small[0], odd, small[1]])
    assert sorted(calls) == [(1, 99, 64, 3), (2, 64, 64, 3)]
    assert [r[0].box[0] for r in (results[0], results[2]) if isinstance(r, list)] == [1.0, 2.0]
    assert isinstance(results[1], RuntimeError)


# --- people at every scale: extra input sizes, tiles, the rotated retry (docs/pose-estimator.md) ------------------
def _astronaut() -> np.ndarray:
    return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def movenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fetch_weights(tmp_path_factory.mktemp("weights"))


def test_a_distant_person_missed_at_256_is_found_by_the_merged_512_pass(movenet_weights: Path) -> None:
    frame = np.full((720, 1280, 3), 128, np.uint8)
    frame[400:520, 600:720] = cv2.resize(_astronaut(), (120, 120))  # ~45 px across at 256
    single = pose.build_engine(pose.PoseEngineConfig(weights=movenet_weights))
    multi = pose.build_engine(pose.PoseEngineConfig(weights=movenet_weights, extra_input_sizes="[512]"))  # type: ignore[arg-type]
    assert single.infer(frame) == []
    (found,) = multi.infer(frame)
    x1, y1, x2, y2 = found.box
    assert 560 < (x1 + x2) / 2 < 760 and 360 < (y1 + y2) / 2 < 560  # in frame pixels, where the person is


def test_tiles_count_a_crowd_past_the_six_person_cap(movenet_weights: Path) -> None:
    frame = np.full((720, 1280, 3), 128, np.uint8)
    small = cv2.resize(_astronaut(), (150, 150))
    for row in range(3):
        for col in range(4):
            frame[40 + row * 230 : 190 + row * 230, 60 + col * 310 : 210 + col * 310] = small
    single = pose.build_engine(pose.PoseEngineConfig(weights=movenet_weights))
    tiled = pose.build_engine(pose.PoseEngineConfig(weights=movenet_weights, tiles=3))
    assert len(single.infer(frame)) <= 6
    people = tiled.infer(frame)
    assert 6 < len(people) <= 12  # past the cap, and no person counted twice across overlapping tiles
    centres = sorted(((p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2) for p in people)
    assert all(np.hypot(a[0] - b[0], a[1] - b[1]) > 60 for a, b in itertools.combinations(centres, 2))


def test_merge_drops_a_partial_duplicate_but_keeps_two_people_standing_close() -> None:
    rng = np.random.default_rng(0)
    keypoints = np.column_stack([rng.uniform(100, 200, 17), rng.uniform(100, 400, 17), np.full(17, 0.9)])
    whole = pose.PoseResult((90.0, 90.0, 210.0, 410.0), keypoints.astype(np.float32), 0.8)
    cut = keypoints.copy()
    cut[11:, 2] = 0.0  # a tile edge cut the legs off: same joints above, smaller box
    partial = pose.PoseResult((90.0, 90.0, 210.0, 260.0), cut.astype(np.float32), 0.5)
    other = keypoints.copy()
    other[:, 0] += 45  # someone standing half a body to the side: boxes overlap, joints don't
    neighbour = pose.PoseResult((135.0, 90.0, 255.0, 410.0), other.astype(np.float32), 0.6)
    kept = pose.merge_people([partial, whole, neighbour])
    assert [p.score for p in kept] == [0.8, 0.6]


def test_tile_grid_covers_the_frame_with_overlap() -> None:
    tiles = pose.tile_grid(1280, 720, 3, 0.25)
    assert len(tiles) == 9
    assert min(x for x, _, _, _ in tiles) == 0 and max(x + w for x, _, w, _ in tiles) == 1280
    assert min(y for _, y, _, _ in tiles) == 0 and max(y + h for _, y, _, h in tiles) == 720
    (x0, _, w0, _), (x1, _, _, _) = tiles[0], tiles[1]
    assert x1 < x0 + w0  # neighbours share a strip


def test_a_pose_found_on_the_turned_frame_maps_back_to_the_frame(movenet_weights: Path) -> None:
    frame = np.full((768, 1024, 3), 128, np.uint8)
    frame[128:640, 256:768] = cv2.rotate(_astronaut(), cv2.ROTATE_90_CLOCKWISE)  # lying across the frame
    network = pose.build_engine(pose.PoseEngineConfig(weights=movenet_weights))
    direct = network.infer(frame)[0]
    turned = network.infer(np.ascontiguousarray(cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)))[0]
    back = pose._unrotated(turned, frame.shape[0])
    both = (direct.keypoints[:, 2] > 0.3) & (back.keypoints[:, 2] > 0.3)
    assert both.sum() >= 5
    assert float(np.median(np.hypot(*(direct.keypoints[both, :2] - back.keypoints[both, :2]).T))) < 25
    assert abs(back.box[0] - direct.box[0]) < 60 and abs(back.box[3] - direct.box[3]) < 60


def test_extra_sizes_must_be_multiples_of_32() -> None:
    with pytest.raises(ValidationError):
        pose.PoseEngineConfig(weights=Path("w"), extra_input_sizes=(500,))


def test_the_person_detector_adds_the_people_the_pose_passes_missed(movenet_weights: Path) -> None:

    detector = fetch_weights(movenet_weights.parent, "yolox_nano")
    frame = np.full((720, 1280, 3), 128, np.uint8)
    copy = cv2.resize(_astronaut(), (250, 250))
    for row in range(2):
        for col in range(4):
            frame[60 + row * 330 : 310 + row * 330, 40 + col * 320 : 290 + col * 320] = copy
    single = pose.build_engine(pose.PoseEngineConfig(weights=movenet_weights))
    detected = pose.build_engine(
        pose.PoseEngineConfig(weights=movenet_weights, person_detector=detector, person_detector_min_score=0.25)
    )
    people = detected.infer(frame)
    assert len(single.infer(frame)) <= 6 < len(people) <= 8
    posed = [p for p in people if (p.keypoints[:, 2] >= 0.3).sum() >= 3]
    assert len(posed) >= len(people) // 2  # most got joints from their crop, not only a box
    for p in people:  # each where an astronaut is
        cx, cy = (p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2
        centres = [(165 + c * 320, 185 + r * 330) for r in range(2) for c in range(4)]
        assert any(abs(cx - x) < 100 and abs(cy - y) < 100 for x, y in centres)
    empty = detected.infer(np.full((480, 640, 3), 128, np.uint8))
    assert empty == []
    with pytest.raises(pose.EngineLoadError, match="do not exist"):
        pose.build_engine(pose.PoseEngineConfig(weights=movenet_weights, person_detector=Path("/nonexistent.onnx")))


def test_a_person_lying_across_the_frame_is_posed_again_on_a_turned_crop(movenet_weights: Path) -> None:
    """The cameraman turned 90 degrees: the upright pass's joints are unsure; the turned crop's pose is kept when
    it is more confident, and its joints land on the body in frame pixels."""
    camera = cv2.cvtColor(skimage.data.camera(), cv2.COLOR_GRAY2BGR)
    frame = np.ascontiguousarray(cv2.rotate(camera, cv2.ROTATE_90_COUNTERCLOCKWISE))
    plain = pose.build_engine(pose.PoseEngineConfig(weights=movenet_weights))
    turned = pose.build_engine(pose.PoseEngineConfig(weights=movenet_weights, rotated_people=True))
    before, after = plain.infer(frame)[0], turned.infer(frame)[0]
    assert float(after.keypoints[:, 2].mean()) > float(before.keypoints[:, 2].mean())
    seen = after.keypoints[after.keypoints[:, 2] >= 0.3]
    assert len(seen) >= 5
    x1, y1, x2, y2 = before.box  # the same body the upright pass found
    assert ((seen[:, 0] >= x1 - 40) & (seen[:, 0] <= x2 + 40) & (seen[:, 1] >= y1 - 40) & (seen[:, 1] <= y2 + 40)).all()
