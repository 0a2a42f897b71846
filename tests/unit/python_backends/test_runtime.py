"""`Runtime`: the composition root of a model process reads what `ruthctl serve` hands over, once."""

from __future__ import annotations

from pathlib import Path

import pytest

from python_backends.errors import ModelLoadError
from python_backends.gpu_probe import NoGpuProbe
from python_backends.metrics import NullMetrics
from python_backends.runtime import Runtime, RuntimeSettings
from ruthctl.settings import Settings


def test_the_model_environment_serve_hands_over_is_what_the_runtime_reads(tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        ruth_state_dir=tmp_path / "state",
        ruth_weights_dir=tmp_path / "w",
        enable_gpu=False,
        metrics_enabled=False,
        gpu_memory_reserve_mb=64,
    )
    runtime = Runtime.from_process(settings.model_env())
    assert runtime.settings == RuntimeSettings(
        state_dir=(tmp_path / "state").resolve(),
        weights_dir=(tmp_path / "w").resolve(),
        enable_gpu=False,
        fallback_to_cpu=True,
        reserve_mb=64,
        metrics_enabled=False,
    )
    assert isinstance(runtime.probe(), NoGpuProbe)
    assert isinstance(runtime.metrics("m", "1", "m_0_0"), NullMetrics)
    assert runtime.breaker_storage("m", "1").path == runtime.state_dir / "breakers" / "m-1.json"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ENABLE_GPU", "maybe", "expected true/false, got 'maybe'"),
        ("GPU_MEMORY_RESERVE_MB", "lots", "invalid literal for int"),
        ("RUTH_STREAM_STORE", "memcached://x", "RUTH_STREAM_STORE must be 'sqlite' or a redis"),
    ],
)
def test_an_unusable_value_fails_the_load_naming_the_problem(variable: str, value: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=r"^invalid runtime environment: ") as raised:
        RuntimeSettings.from_environ({variable: value})
    assert message in str(raised.value)
