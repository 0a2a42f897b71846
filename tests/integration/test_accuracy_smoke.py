"""The accuracy suite's smoke subset (eval/, `nox -s accuracy` runs all of it): the photographs that ship in PyPI
packages, through the real tritonserver, scored against their hand labels and written as a report."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from eval import accuracy
from eval import dataset as ds

pytestmark = pytest.mark.integration


def test_the_labels_pin_every_photograph_and_name_its_source() -> None:
    dataset = ds.load()
    assert len(dataset.stills) >= 40 and {s.split for s in dataset.stills} == {"tune", "heldout"}
    for still in dataset.stills:
        assert f"{still.source}/{still.path}" in dataset.checksums
        source = dataset.sources[still.source]
        assert source["licence"] and source["kind"] in {"package", "git"}
        assert source["kind"] == "package" or len(source["commit"]) == 40


def test_the_fall_clips_are_pinned_and_labelled_in_order() -> None:
    dataset = ds.load()
    assert len(dataset.clips) >= 3 and {c.split for c in dataset.clips} == {"tune", "heldout"}
    for clip in dataset.clips:
        assert f"{clip.source}/{clip.path}" in dataset.checksums
        assert dataset.sources[clip.source]["redistributable"] is False  # fetched from the snapshot, never committed
        assert 0 < clip.fall_from <= clip.down_from and clip.ends in {"lying", "sitting"}


def test_clip_frames_keep_the_video_clock_and_hold_the_last_frame(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    for index in range(30):
        writer.write(np.full((48, 64, 3), index * 8, np.uint8))
    writer.release()
    clip = ds.Clip("c", "s", "clip.avi", "tune", 10, 20, "lying", step=5, hold_s=1.0, conditions=())
    frames = ds.clip_frames(clip, path)
    assert [index for _, index, _ in frames] == [0, 5, 10, 15, 20, 25, -1, -1, -1, -1, -1]
    assert [round(t, 2) for t, _, _ in frames] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
    assert abs(int(frames[-1][2].mean()) - 29 * 8) <= 6  # the held frame is the clip's last one
    with pytest.raises(ds.DatasetError, match="past the clip"):
        ds.clip_frames(dataclasses.replace(clip, down_from=40), path)


def test_a_wrong_checksum_is_refused(tmp_path: Path) -> None:
    dataset = ds.load()
    astronaut = dataset.still("astronaut")
    tampered = {**dataset.checksums, f"{astronaut.source}/{astronaut.path}": "0" * 64}
    with pytest.raises(ds.DatasetError, match="not the pinned"):
        ds.materialise(ds.Dataset(dataset.sources, (astronaut,), (), (), tampered), cache=tmp_path)


def test_smoke_subset_scores_against_the_real_server(tmp_path: Path) -> None:
    out = tmp_path / "accuracy.md"
    reports = accuracy.run(["tune", "heldout"], out, smoke=True, with_profiles=False)
    text = out.read_text()
    for heading in ("People counted", "Lying people on stills", "Falls on sequences", "PPE per worker"):
        assert heading in text
    tune = next(r for r in reports if r.split == "tune")
    # the packaged photographs each hold one upright person, the astronaut's fall sequence ends lying down
    assert tune.counts["1–6 people, exact"].total == 1
    assert tune.sequences["rotated-still sequences confirmed (fall_detected)"].ok == 1
    heldout = next(r for r in reports if r.split == "heldout")
    assert heldout.counts["1–6 people, exact"].ok == 2
    assert heldout.fall["no false alert on frames without a lying person"].ok == 2
