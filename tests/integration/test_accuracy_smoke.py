"""The accuracy suite's smoke subset (eval/, `nox -s accuracy` runs all of it): the photographs that ship in PyPI
packages, through the real tritonserver, scored against their hand labels and written as a report."""

from __future__ import annotations

from pathlib import Path

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
