"""Model specs and profiles: an invalid spec can't be built, and every spec in config/models is valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ruthctl.settings import Profile
from ruthctl.spec import (
    Contract,
    InstanceKind,
    ModelSpec,
    ProfileSpec,
    SpecError,
    load_profiles,
    load_spec,
    load_specs,
    parse_spec,
)

REPO_ROOT = Path(__file__).resolve().parents[3]

DOC_EXAMPLE = {
    "name": "tank_overflow_monitoring",
    "version": 1,
    "contract": "vision",
    "max_batch_size": 8,
    "dynamic_batching": {
        "max_queue_delay_us": 500,
        "preferred_batch_size": [],
        "max_queue_size": 64,
        "queue_timeout_ms": 0,
    },
    "limits": {"inference_timeout_ms": 2000, "min_width": 64, "min_height": 64, "max_width": 7680, "max_height": 4320},
    "breaker": {"failure_threshold": 5, "cooldown_s": 30, "max_cooldown_s": 600, "half_open_max_trials": 1},
    "watchdog": {"zombie_limit": 4},
    "memory_estimate_mb": 256,
    "state": {"idle_ttl_s": 300, "max_streams": 10000},
    "weights": [],
    "profiles": {
        "cpu": {"kind": "KIND_CPU", "count": 2},
        "gpu": {"kind": "KIND_CPU", "count": 2},
        "jetson": {"kind": "KIND_CPU", "count": 1},
    },
    "parameters": {"capacity_liters": 1000, "alert_threshold": 90},
}


def spec_with(**changes: Any) -> dict[str, Any]:
    data = {**DOC_EXAMPLE, **changes}
    return {k: v for k, v in data.items() if v is not ...}


def test_the_example_of_the_spec_document_is_a_valid_spec() -> None:
    spec = parse_spec(DOC_EXAMPLE)
    assert spec.contract is Contract.VISION
    assert spec.profiles[Profile.CPU].count == 2
    assert spec.dynamic_batching is not None and spec.dynamic_batching.max_queue_size == 64


def test_a_spec_is_frozen() -> None:
    spec = parse_spec(DOC_EXAMPLE)
    with pytest.raises(ValueError):
        spec.version = 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_batch_sise": 8}, "max_batch_sise"),
        ({"name": "Tank"}, "name"),
        ({"name": "ab"}, "name"),
        ({"version": 0}, "version"),
        ({"contract": "raw"}, "declares its `inputs` and `outputs`"),
        ({"inputs": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}]}, "fixed by the wire contract"),
        ({"max_batch_size": 0}, "dynamic_batching needs max_batch_size >= 1"),
        ({"dynamic_batching": {"preferred_batch_size": [16]}}, "must not exceed max_batch_size"),
        ({"limits": {"min_width": 800, "max_width": 640}}, "must not exceed"),
        ({"breaker": {"cooldown_s": 60, "max_cooldown_s": 30}}, "max_cooldown_s"),
        ({"weights": [{"path": "/etc/passwd", "sha256": "0" * 64}]}, "relative to the weights dir"),
        ({"weights": [{"path": "../x.bin", "sha256": "0" * 64}]}, "relative to the weights dir"),
        ({"weights": [{"path": "x.bin", "sha256": "abc"}]}, "sha256"),
        ({"profiles": {"cpu": {"kind": "KIND_TPU", "count": 1}}}, "kind"),
        ({"profiles": {"edge": {"kind": "KIND_CPU", "count": 1}}}, "profiles"),
        ({"parameters": {"bad key": 1}}, "parameter key"),
        ({"limits": {"inference_timeout_ms": 2000, "extra": 1}}, "extra"),
    ],
)
def test_an_invalid_spec_is_refused_with_the_field_named(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(spec_with(**changes), "x.yaml")


def test_a_raw_contract_spec_declares_its_tensors() -> None:
    spec = parse_spec(
        spec_with(
            contract="raw",
            inputs=[{"name": "FRAME", "data_type": "TYPE_UINT8", "dims": [-1, -1, 3]}],
            outputs=[
                {"name": "POSES", "data_type": "TYPE_FP32", "dims": [-1, 56]},
                {"name": "COUNT", "data_type": "TYPE_INT32", "dims": [1]},
            ],
        )
    )
    assert [t.name for t in spec.outputs] == ["POSES", "COUNT"]


def test_duplicate_tensor_names_are_refused() -> None:
    tensor = {"name": "X", "data_type": "TYPE_FP32", "dims": [1]}
    with pytest.raises(SpecError, match="unique"):
        parse_spec(spec_with(contract="raw", inputs=[tensor, tensor], outputs=[tensor]))


def test_zero_or_negative_dims_are_refused() -> None:
    with pytest.raises(SpecError, match="dims"):
        parse_spec(
            spec_with(
                contract="raw",
                inputs=[{"name": "X", "data_type": "TYPE_FP32", "dims": [0]}],
                outputs=[{"name": "Y", "data_type": "TYPE_FP32", "dims": [-2]}],
            )
        )


def test_a_profile_override_of_the_batch_size_is_checked_against_batching() -> None:
    with pytest.raises(SpecError, match=r"profiles\.jetson: dynamic_batching needs max_batch_size >= 1"):
        parse_spec(spec_with(profiles={"jetson": {"kind": "KIND_CPU", "count": 1, "max_batch_size": 0}}))


def test_the_spec_name_must_equal_its_file_name(tmp_path: Path) -> None:
    path = tmp_path / "other_name.yaml"
    path.write_text(yaml.safe_dump(DOC_EXAMPLE))
    with pytest.raises(SpecError, match="differs from the file name"):
        load_spec(path)


def test_load_specs_reports_each_bad_file_and_keeps_the_good_ones(tmp_path: Path) -> None:
    (tmp_path / "tank_overflow_monitoring.yaml").write_text(yaml.safe_dump(DOC_EXAMPLE))
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    (tmp_path / "listy.yaml").write_text("- a\n- b\n")
    specs, errors = load_specs(tmp_path)
    assert list(specs) == ["tank_overflow_monitoring"]
    assert set(errors) == {"broken.yaml", "listy.yaml"}
    assert "not valid YAML" in errors["broken.yaml"]
    assert "mapping" in errors["listy.yaml"]


def test_a_profile_refuses_gpu_instances_where_the_target_has_none() -> None:
    spec = parse_spec(spec_with(profiles={"cpu": {"kind": "KIND_GPU", "count": 1}}))
    with pytest.raises(SpecError, match="does not allow KIND_GPU"):
        ProfileSpec(name=Profile.CPU).instance_for(spec)
    assert ProfileSpec(name=Profile.CPU, gpu_instances=True).instance_for(spec).kind is InstanceKind.KIND_GPU


def test_a_profile_caps_instance_count_and_clamps_batch_size() -> None:
    spec = parse_spec(spec_with(profiles={"jetson": {"kind": "KIND_CPU", "count": 3}}))
    jetson = ProfileSpec(name=Profile.JETSON, max_instance_count=2, max_batch_size_cap=4)
    with pytest.raises(SpecError, match="at most 2 instances"):
        jetson.instance_for(spec)
    assert jetson.batch_size_for(spec) == 4
    assert ProfileSpec(name=Profile.GPU).batch_size_for(spec) == 8


def test_a_spec_without_a_profile_entry_gets_the_profiles_default_instance() -> None:
    spec = parse_spec(spec_with(profiles={}))
    profile = ProfileSpec.model_validate({"name": "gpu", "default_instance": {"kind": "KIND_CPU", "count": 3}})
    group = profile.instance_for(spec)
    assert group.count == 3


def test_the_repository_profiles_load_and_jetson_is_cpu_only() -> None:
    profiles = load_profiles(REPO_ROOT / "config" / "profiles")
    assert set(profiles) == set(Profile)
    assert profiles[Profile.GPU].gpu_instances
    assert not profiles[Profile.CPU].gpu_instances
    assert not profiles[Profile.JETSON].gpu_instances


def test_a_missing_profile_file_gets_permissive_defaults_and_a_misnamed_one_is_refused(tmp_path: Path) -> None:
    assert load_profiles(tmp_path)[Profile.CPU] == ProfileSpec(name=Profile.CPU)
    (tmp_path / "gpu.yaml").write_text("name: cpu\n")
    with pytest.raises(SpecError, match="differs from the file name"):
        load_profiles(tmp_path)


def test_every_spec_in_the_repository_is_valid() -> None:
    specs, errors = load_specs(REPO_ROOT / "config" / "models")
    assert errors == {}
    assert "tank_overflow_monitoring" in specs
    assert all(isinstance(spec, ModelSpec) for spec in specs.values())
