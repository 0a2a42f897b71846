"""The benchmark's repository copy measures the pose network, not its frame cache."""

from __future__ import annotations

from pathlib import Path

from bench.bare import write_bench_repository
from ruthctl.render import parse_pbtxt


def test_pose_estimator_copy_has_its_frame_cache_off(tmp_path: Path) -> None:
    write_bench_repository(tmp_path, ["fall_detection"], also_copy=["pose_estimator"])
    files = [tmp_path / "pose_estimator" / "config.pbtxt", *(tmp_path / "pose_estimator" / "configs").glob("*.pbtxt")]
    assert len(files) >= 4
    for path in files:
        assert parse_pbtxt(path.read_text()).parameters["model.cache_entries"].string_value == "0", path
    # the repository itself is untouched: serving keeps the cache
    source = Path(__file__).resolve().parents[3] / "model_repository" / "pose_estimator" / "config.pbtxt"
    assert parse_pbtxt(source.read_text()).parameters["model.cache_entries"].string_value == "16"
