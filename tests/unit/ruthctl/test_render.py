"""Rendering specs into ModelConfig messages, round trips through text and JSON, and typed comparisons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tritonclient.grpc import model_config_pb2 as pb

from ruthctl.render import (
    HEADER,
    RATE_LIMIT_RESOURCE,
    config_differences,
    config_from_json,
    config_to_json,
    expected_instance_count,
    instance_names,
    parse_pbtxt,
    render_config,
    render_files,
    render_parameters,
    stale_generated_files,
    sync_files,
    to_pbtxt,
)
from ruthctl.settings import Profile
from ruthctl.spec import load_profiles, load_specs

REPO_ROOT = Path(__file__).resolve().parents[3]
ASSETS = Path(__file__).with_name("assets")


@pytest.fixture
def specs(deployment: Any) -> dict[str, Any]:
    loaded, errors = load_specs(deployment.specs)
    assert not errors
    return loaded


@pytest.fixture
def profiles(deployment: Any) -> dict[Profile, Any]:
    return load_profiles(deployment.profiles)


def tensors(messages: Any) -> list[tuple[str, str, list[int], bool]]:
    return [(t.name, pb.DataType.Name(t.data_type), list(t.dims), getattr(t, "optional", False)) for t in messages]


def test_a_vision_model_gets_the_wire_contract_tensors(specs: dict[str, Any], profiles: Any) -> None:
    config = render_config(specs["alpha"], profiles[Profile.CPU])
    assert config.backend == "python" and config.name == "alpha"
    assert tensors(config.input) == [
        ("IMAGE", "TYPE_STRING", [1], True),
        ("FRAME", "TYPE_UINT8", [-1, -1, 3], True),
        ("STREAM_ID", "TYPE_STRING", [1], False),
        ("TIMESTAMP", "TYPE_STRING", [1], False),
        ("CONFIG", "TYPE_STRING", [1], True),
        ("METADATA", "TYPE_STRING", [1], True),
    ]
    assert tensors(config.output) == [("RESULT", "TYPE_STRING", [1], False)]


def test_a_raw_model_gets_its_own_tensors_and_no_rate_limiter(specs: dict[str, Any], profiles: Any) -> None:
    config = render_config(specs["beta"], profiles[Profile.CPU])
    assert tensors(config.input) == [("FRAME", "TYPE_UINT8", [-1, -1, 3], False)]
    assert tensors(config.output) == [("POSES", "TYPE_FP32", [-1, 56], False)]
    assert not config.instance_group[0].HasField("rate_limiter")
    assert list(config.version_policy.specific.versions) == [2]


def test_a_vision_instance_group_needs_one_global_ruth_inference_token(specs: dict[str, Any], profiles: Any) -> None:
    group = render_config(specs["alpha"], profiles[Profile.CPU]).instance_group[0]
    assert (pb.ModelInstanceGroup.Kind.Name(group.kind), group.count) == ("KIND_CPU", 2)
    [resource] = group.rate_limiter.resources
    assert (resource.name, getattr(resource, "global"), resource.count) == (RATE_LIMIT_RESOURCE, True, 1)


def test_each_profile_gets_its_own_instance_group_and_memory(specs: dict[str, Any], profiles: Any) -> None:
    gpu = render_config(specs["alpha"], profiles[Profile.GPU])
    jetson = render_config(specs["alpha"], profiles[Profile.JETSON])
    assert pb.ModelInstanceGroup.Kind.Name(gpu.instance_group[0].kind) == "KIND_GPU"
    assert gpu.parameters["ruth.memory_estimate_mb"].string_value == "512"
    assert jetson.instance_group[0].count == 1
    assert jetson.parameters["ruth.memory_estimate_mb"].string_value == "128"


def test_jetson_clamps_the_batch_size_and_drops_larger_preferred_sizes(specs: dict[str, Any], profiles: Any) -> None:
    data = specs["alpha"].model_dump()
    data["max_batch_size"] = 8
    data["dynamic_batching"]["preferred_batch_size"] = [2, 8]
    spec = type(specs["alpha"]).model_validate(data)
    config = render_config(spec, profiles[Profile.JETSON])
    assert config.max_batch_size == 4
    assert list(config.dynamic_batching.preferred_batch_size) == [2]


def test_dynamic_batching_carries_the_queue_policy(specs: dict[str, Any], profiles: Any) -> None:
    batching = render_config(specs["alpha"], profiles[Profile.CPU]).dynamic_batching
    assert batching.max_queue_delay_microseconds == 100
    assert list(batching.preferred_batch_size) == [2, 4]
    policy = batching.default_queue_policy
    assert policy.max_queue_size == 16
    assert policy.default_timeout_microseconds == 250_000
    assert policy.timeout_action == pb.ModelQueuePolicy.TimeoutAction.REJECT


def test_a_single_instance_model_gets_no_queue_policy_because_triton_2_51_stalls_it() -> None:
    from ruthctl.settings import REPO_ROOT
    from ruthctl.spec import load_profiles, load_spec

    spec = load_spec(REPO_ROOT / "config" / "models" / "pose_estimator.yaml")  # one instance on every profile
    for profile in load_profiles(REPO_ROOT / "config" / "profiles").values():
        config = render_config(spec, profile)
        assert config.instance_group[0].count == 1
        assert not config.dynamic_batching.HasField("default_queue_policy"), profile.name
    tank = load_spec(REPO_ROOT / "config" / "models" / "tank_overflow_monitoring.yaml")  # two on cpu
    cpu = render_config(tank, load_profiles(REPO_ROOT / "config" / "profiles")[Profile.CPU])
    assert cpu.instance_group[0].count == 2
    assert cpu.dynamic_batching.default_queue_policy.max_queue_size == 64


def test_no_batching_section_means_no_dynamic_batching(specs: dict[str, Any], profiles: Any) -> None:
    assert render_config(specs["beta"], profiles[Profile.CPU]).WhichOneof("scheduling_choice") is None


def test_parameters_are_the_documented_keys_as_strings(specs: dict[str, Any]) -> None:
    params = render_parameters(specs["alpha"], Profile.CPU)
    assert params == {
        "ruth.inference_timeout_ms": "1500",
        "ruth.frame.min_width": "32",
        "ruth.frame.min_height": "32",
        "ruth.frame.max_width": "1920",
        "ruth.frame.max_height": "1080",
        "ruth.breaker.failure_threshold": "3",
        "ruth.breaker.cooldown_s": "2.5",
        "ruth.breaker.max_cooldown_s": "60",
        "ruth.breaker.half_open_max_trials": "2",
        "ruth.watchdog.zombie_limit": "2",
        "ruth.memory_estimate_mb": "128",
        "ruth.weights": json.dumps(
            [specs["alpha"].weights[0].model_dump(mode="json", exclude_defaults=True)],
            sort_keys=True,
            separators=(",", ":"),
        ),
        "ruth.state.idle_ttl_s": "60",
        "ruth.state.max_streams": "100",
        "model.threshold": "0.5",
        "model.enabled": "true",
        "model.label": "tank",
        "model.classes": '["a","b"]',
    }


def test_a_stateless_model_has_no_state_parameters_and_overrides_win(specs: dict[str, Any]) -> None:
    params = render_parameters(specs["beta"], Profile.CPU, {"ruth.fault.fail_rate": "0.2"})
    assert not any(key.startswith("ruth.state.") for key in params)
    assert params["ruth.fault.fail_rate"] == "0.2"
    assert params["ruth.weights"] == "[]"


def test_every_rendered_config_round_trips_through_text_and_json(specs: dict[str, Any], profiles: Any) -> None:
    for spec in specs.values():
        for profile in profiles.values():
            config = render_config(spec, profile)
            assert parse_pbtxt(to_pbtxt(config, HEADER.format(name=spec.name, profile=profile.name.value))) == config
            assert config_from_json(config_to_json(config)) == config


def test_every_repository_spec_round_trips_under_every_profile() -> None:
    specs, errors = load_specs(REPO_ROOT / "config" / "models")
    profiles = load_profiles(REPO_ROOT / "config" / "profiles")
    assert not errors
    for spec in specs.values():
        for relative, text in render_files(spec, profiles).items():
            assert parse_pbtxt(text).name == spec.name, relative


def test_the_generated_repository_files_are_current() -> None:
    """What CI's `ruthctl generate --check` checks: every generated file equals its rendering, byte for byte."""
    specs, _ = load_specs(REPO_ROOT / "config" / "models")
    profiles = load_profiles(REPO_ROOT / "config" / "profiles")
    stale = [
        change
        for spec in specs.values()
        for change in sync_files(REPO_ROOT / "model_repository", render_files(spec, profiles), write=False)
        if change.status != "unchanged"
    ]
    assert stale == [], "run `ruthctl generate`"


def test_a_model_without_batching_says_max_batch_size_0_explicitly(specs: dict[str, Any], profiles: Any) -> None:
    text = to_pbtxt(render_config(specs["beta"], profiles[Profile.CPU]))
    assert "max_batch_size: 0\n" in text
    assert parse_pbtxt(text).max_batch_size == 0


def test_the_live_config_of_a_triton_server_equals_its_spec_despite_tritons_defaults() -> None:
    """The asset is Triton 2.51's real answer for tank_overflow_monitoring, with dozens of defaults we never set."""
    specs, _ = load_specs(REPO_ROOT / "config" / "models")
    profiles = load_profiles(REPO_ROOT / "config" / "profiles")
    live = config_from_json(json.loads((ASSETS / "tank_overflow_monitoring.live.json").read_text()))
    expected = render_config(specs["tank_overflow_monitoring"], profiles[Profile.CPU])
    assert live != expected  # not equal as messages: Triton filled in defaults
    assert config_differences(expected, live) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: setattr(c.instance_group[0], "count", 5), "instance_group[0].count: 2 != 5"),
        (lambda c: c.parameters["model.alert_threshold"].__setattr__("string_value", "50"), "model.alert_threshold"),
        (lambda c: c.parameters["extra"].__setattr__("string_value", "1"), "not in the spec"),
        (lambda c: c.parameters.pop("ruth.weights"), "'ruth.weights']: missing"),
        (lambda c: c.ClearField("dynamic_batching"), "scheduling"),
        (lambda c: c.input.pop(), "input: 6 entries != 5"),
        (lambda c: setattr(c, "max_batch_size", 1), "max_batch_size: 8 != 1"),
    ],
)
def test_config_differences_name_each_field_that_drifted(change: Any, expected: str) -> None:
    specs, _ = load_specs(REPO_ROOT / "config" / "models")
    profiles = load_profiles(REPO_ROOT / "config" / "profiles")
    wanted = render_config(specs["tank_overflow_monitoring"], profiles[Profile.CPU])
    live = config_from_json(json.loads((ASSETS / "tank_overflow_monitoring.live.json").read_text()))
    change(live)
    differences = config_differences(wanted, live)
    assert any(expected in d for d in differences), differences


def test_the_expected_instance_count_follows_kind_and_gpus() -> None:
    config = pb.ModelConfig()
    config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.KIND_CPU, count=2)
    assert expected_instance_count(config) == 2
    config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.KIND_GPU, count=1, gpus=[0, 1])
    assert expected_instance_count(config) == 4
    config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.KIND_GPU, count=1)
    assert expected_instance_count(config) is None  # depends on the host's GPUs
    assert expected_instance_count(pb.ModelConfig()) == 1


def test_instance_names_follow_tritons_naming() -> None:
    config = pb.ModelConfig(name="m")
    config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.KIND_CPU, count=2)
    config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.KIND_GPU, count=1, gpus=[0])
    assert instance_names(config) == ["m_0_0", "m_0_1", "m_1_0"]
    config.instance_group.add(kind=pb.ModelInstanceGroup.Kind.KIND_GPU, count=1)
    assert instance_names(config) is None


def test_sync_files_creates_changes_and_reports_without_writing_in_check_mode(tmp_path: Path) -> None:
    rendered = {Path("m/config.pbtxt"): "a\n", Path("m/configs/cpu.pbtxt"): "b\n"}
    changes = sync_files(tmp_path, rendered, write=False)
    assert [c.status for c in changes] == ["created", "created"]
    assert not (tmp_path / "m").exists()
    sync_files(tmp_path, rendered, write=True)
    assert (tmp_path / "m/configs/cpu.pbtxt").read_text() == "b\n"
    (tmp_path / "m/config.pbtxt").write_text("hand edited\n")
    assert [c.status for c in sync_files(tmp_path, rendered, write=False)] == ["changed", "unchanged"]


def test_only_our_own_stale_profile_files_are_removed(tmp_path: Path) -> None:
    configs = tmp_path / "m" / "configs"
    configs.mkdir(parents=True)
    (configs / "cpu.pbtxt").write_text(HEADER.format(name="m", profile="cpu"))
    (configs / "edge.pbtxt").write_text(HEADER.format(name="m", profile="edge"))
    (configs / "mine.pbtxt").write_text("# written by a person\n")
    stale = stale_generated_files(tmp_path, "m", {Path("m/configs/cpu.pbtxt"): ""})
    assert stale == [Path("m/configs/edge.pbtxt")]
    changes = sync_files(tmp_path, {}, write=True, stale=stale)
    assert [c.status for c in changes] == ["removed"]
    assert not (configs / "edge.pbtxt").exists() and (configs / "mine.pbtxt").exists()


def test_a_profile_overrides_only_the_spec_parameters_it_names() -> None:
    from ruthctl.render import render_parameters
    from ruthctl.spec import Profile, SpecError, parse_spec

    base = {
        "name": "model_x",
        "parameters": {"passes": "one", "keep": 1},
        "profiles": {"gpu": {"kind": "KIND_CPU", "count": 1, "parameters": {"passes": ["a", "b"]}}},
    }
    spec = parse_spec(base)
    gpu, cpu = render_parameters(spec, Profile.GPU), render_parameters(spec, Profile.CPU)
    assert gpu["model.passes"] == '["a","b"]' and gpu["model.keep"] == "1"
    assert cpu["model.passes"] == "one"
    unknown = {**base, "profiles": {"gpu": {"kind": "KIND_CPU", "parameters": {"typo": 1}}}}
    with pytest.raises(SpecError, match="not in the spec's parameters"):
        parse_spec(unknown)


def test_generate_repository_reports_each_file_and_checking_writes_nothing(deployment: Any) -> None:
    from ruthctl.exit_codes import ExitCode
    from ruthctl.render import GeneratedFile, generate_repository

    d = deployment
    current = generate_repository(d.specs, d.profiles, d.repository, check=True)
    assert len(current.files) == 8 and current.drift == [] and current.exit_code is ExitCode.OK
    edited = d.repository / "beta" / "config.pbtxt"
    edited.write_text(edited.read_text() + "# hand edit\n")
    (d.repository / "alpha" / "configs" / "gpu.pbtxt").unlink()
    checked = generate_repository(d.specs, d.profiles, d.repository, check=True)
    assert checked.drift == [
        GeneratedFile("alpha", "alpha/configs/gpu.pbtxt", "created"),
        GeneratedFile("beta", "beta/config.pbtxt", "changed"),
    ]
    assert checked.exit_code is ExitCode.DRIFT and checked.to_json()["drift"] is True
    assert edited.read_text().endswith("# hand edit\n")  # checking writes nothing
    written = generate_repository(d.specs, d.profiles, d.repository, check=False)
    assert written.exit_code is ExitCode.OK and len(written.drift) == 2  # written, so no drift left to report as 3
    assert generate_repository(d.specs, d.profiles, d.repository, check=True).drift == []


def test_generate_repository_renders_the_valid_specs_past_an_invalid_one(deployment: Any, tmp_path: Path) -> None:
    from ruthctl.exit_codes import ExitCode
    from ruthctl.render import generate_repository
    from ruthctl.spec import SpecError

    d = deployment
    (d.specs / "gamma.yaml").write_text("name: gamma\nmax_batch_size: -1\n")
    (d.repository / "alpha" / "config.pbtxt").unlink()
    report = generate_repository(d.specs, d.profiles, d.repository, check=False)
    assert list(report.errors) == ["gamma.yaml"] and "max_batch_size" in report.errors["gamma.yaml"]
    assert report.exit_code is ExitCode.ERROR and (d.repository / "alpha" / "config.pbtxt").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="no specs in"):
        generate_repository(tmp_path / "empty", d.profiles, d.repository, check=True)
