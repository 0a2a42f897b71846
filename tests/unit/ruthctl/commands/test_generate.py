"""`ruthctl generate`: text, --json, --check drift (exit 3) and invalid specs (exit 1)."""

from __future__ import annotations

import json
from typing import Any


def test_generate_writes_what_changed_and_says_so(cli: Any, deployment: Any) -> None:
    target = deployment.repository / "alpha" / "configs" / "jetson.pbtxt"
    target.unlink()
    result = cli("generate")
    assert result.exit_code == 0, result.output
    assert "created" in result.stdout and "alpha" in result.stdout
    assert target.exists()


def test_generate_check_passes_when_current(cli: Any) -> None:
    result = cli("generate", "--check", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["drift"] is False and document["errors"] == {}
    assert {f["status"] for f in document["files"]} == {"unchanged"}
    assert len(document["files"]) == 8  # 2 models x (config.pbtxt + 3 profiles)


def test_generate_check_exits_3_on_drift_and_writes_nothing(cli: Any, deployment: Any) -> None:
    edited = deployment.repository / "beta" / "config.pbtxt"
    edited.write_text(edited.read_text() + "# hand edit\n")
    result = cli("generate", "--check")
    assert result.exit_code == 3, result.output
    assert "would be changed" in result.stdout
    assert "run `ruthctl generate`" in result.stderr
    assert edited.read_text().endswith("# hand edit\n")
    document = json.loads(cli("generate", "--check", "--json").stdout)
    assert [f["path"] for f in document["files"] if f["status"] != "unchanged"] == ["beta/config.pbtxt"]


def test_an_invalid_spec_exits_1_and_the_valid_ones_are_still_rendered(cli: Any, deployment: Any) -> None:
    (deployment.specs / "gamma.yaml").write_text("name: gamma\nmax_batch_size: -1\n")
    (deployment.repository / "alpha" / "config.pbtxt").unlink()
    result = cli("generate")
    assert result.exit_code == 1
    assert "gamma.yaml" in result.stderr and "max_batch_size" in result.stderr
    assert (deployment.repository / "alpha" / "config.pbtxt").exists()


def test_a_spec_its_profile_cannot_place_is_an_error(cli: Any, deployment: Any) -> None:
    spec = deployment.specs / "alpha.yaml"
    spec.write_text(spec.read_text().replace("jetson: {kind: KIND_CPU", "jetson: {kind: KIND_GPU"))
    result = cli("generate", "--json")
    assert result.exit_code == 1
    assert "does not allow KIND_GPU" in json.loads(result.stdout)["errors"]["alpha.yaml"]


def test_no_specs_at_all_is_an_error(cli: Any, deployment: Any, tmp_path: Any) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("generate", "--specs", str(empty))
    assert result.exit_code == 1 and "no specs" in result.stderr
