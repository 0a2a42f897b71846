"""`RuntimeParams`: the one definition of every `ruth.*` parameter, rendered by `ruthctl generate` and parsed by a
model's `initialize()`. Render <-> parse round trips for every spec of the repository; a misspelt key fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from python_backends.errors import ModelLoadError
from python_backends.params import DEFAULTS, RuntimeParams
from ruthctl.render import render_parameters, runtime_params
from ruthctl.settings import Profile
from ruthctl.spec import load_specs

REPO_ROOT = Path(__file__).resolve().parents[3]
SPECS, SPEC_ERRORS = load_specs(REPO_ROOT / "config" / "models")


def test_the_repository_has_specs_to_check() -> None:
    assert not SPEC_ERRORS and len(SPECS) >= 6


@pytest.mark.parametrize("profile", list(Profile))
@pytest.mark.parametrize("name", sorted(SPECS))
def test_render_and_parse_round_trip_for_every_spec(name: str, profile: Profile) -> None:
    spec = SPECS[name]
    rendered = render_parameters(spec, profile)
    parsed = RuntimeParams.from_parameters(rendered)
    assert parsed == runtime_params(spec, profile)
    assert parsed.to_parameters() == {k: v for k, v in rendered.items() if k.startswith("ruth.")}
    assert parsed.breaker == spec.breaker and parsed.frame.min_width == spec.limits.min_width


def test_every_key_round_trips_with_a_value_other_than_its_default() -> None:
    values = {
        "ruth.inference_timeout_ms": "2500",
        "ruth.memory_estimate_mb": "0",
        "ruth.timestamp_max_drift_s": "60.5",
        "ruth.frame.min_width": "32",
        "ruth.frame.min_height": "48",
        "ruth.frame.max_width": "1920",
        "ruth.frame.max_height": "1080",
        "ruth.breaker.failure_threshold": "3",
        "ruth.breaker.cooldown_s": "0.5",
        "ruth.breaker.max_cooldown_s": "60",
        "ruth.breaker.half_open_max_trials": "2",
        "ruth.watchdog.zombie_limit": "7",
        "ruth.state.idle_ttl_s": "12",
        "ruth.state.max_streams": "99",
        "ruth.fault.fail_rate": "0.25",
        "ruth.fault.hang_rate": "0.25",
        "ruth.fault.hang_s": "3",
        "ruth.fault.slow_rate": "0.5",
        "ruth.fault.slow_ms": "20",
        "ruth.weights": '[{"path":"a.onnx","sha256":"' + "0" * 64 + '","source":"here"}]',
    }
    assert sorted(values) == sorted(RuntimeParams.keys())
    parsed = RuntimeParams.from_parameters(values)
    assert parsed.to_parameters() == values
    defaults = DEFAULTS.model_dump()
    assert all(parsed.model_dump()[group] != defaults[group] for group in defaults)


def test_absent_or_blank_keys_take_the_defaults_and_other_keys_are_not_ours() -> None:
    parsed = RuntimeParams.from_parameters({"ruth.breaker.cooldown_s": "", "model.pose_model": "x", "OTHER": "1"})
    assert parsed == DEFAULTS
    assert parsed.to_parameters() == {}


def test_a_misspelt_key_fails_naming_it_and_the_key_it_resembles() -> None:
    with pytest.raises(ModelLoadError) as raised:
        RuntimeParams.from_parameters({"ruth.breaker.failure_treshold": "3"})
    message = str(raised.value)
    assert "ruth.breaker.failure_treshold is not a known ruth.* parameter" in message
    assert message.endswith("did you mean ruth.breaker.failure_threshold?")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ruth.inference_timeout_ms", "soon", "ruth.inference_timeout_ms: Input should be a valid integer"),
        ("ruth.inference_timeout_ms", "0", "ruth.inference_timeout_ms: Input should be greater than or equal to 1"),
        ("ruth.breaker.failure_threshold", "2.5", "ruth.breaker.failure_threshold: Input should be a valid integer"),
        ("ruth.breaker.max_cooldown_s", "1", "ruth.breaker.max_cooldown_s: must be >= cooldown_s (30.0)"),
        ("ruth.state.max_streams", "true", "ruth.state.max_streams: Input should be a valid integer"),
        ("ruth.weights", '[{"path": "../x", "sha256": "0"}]', "ruth.weights.0.path: weight path '../x' must be"),
        ("ruth.fault.fail_rate", "lots", "ruth.fault.fail_rate: Input should be a valid number"),
        ("ruth.fault.fail_rate", "1.5", "ruth.fault.fail_rate: Input should be less than or equal to 1"),
        ("ruth.fault.hang_rate", "-0.1", "ruth.fault.hang_rate: Input should be greater than or equal to 0"),
        ("ruth.fault.hang_s", "NaN", "ruth.fault.hang_s: Input should be a valid number"),
        ("ruth.fault.slow_ms", "-5", "ruth.fault.slow_ms: Input should be greater than or equal to 0"),
    ],
)
def test_a_bad_value_fails_naming_its_key(key: str, value: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=r"^config\.pbtxt parameter ") as raised:
        RuntimeParams.from_parameters({key: value})
    assert message in str(raised.value)
