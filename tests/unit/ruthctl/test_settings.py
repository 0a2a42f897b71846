"""12-factor settings: every variable validated, legacy names accepted, model processes handed what they read."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ruthctl.settings import Hardware, Profile, Settings, detect_hardware, unknown_own_variables


def test_defaults_match_the_documented_table(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RUTH_AI_PROFILE", "GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS", "LOG_FORMAT", "MAX_CONCURRENT_INFERENCES"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.ruth_ai_profile is Profile.CPU
    assert settings.graceful_shutdown_timeout_seconds == 30
    assert (settings.ruth_http_port, settings.ruth_grpc_port, settings.ruth_metrics_port) == (8000, 8001, 8002)
    assert settings.ruth_host == "127.0.0.1"
    assert settings.max_concurrent_inferences == 10


@pytest.mark.parametrize(
    ("legacy", "profile"),
    [("prod-gpu", Profile.GPU), ("edge-jetson", Profile.JETSON), ("dev", Profile.CPU), ("GPU", Profile.GPU)],
)
def test_legacy_profile_names_are_accepted(monkeypatch: pytest.MonkeyPatch, legacy: str, profile: Profile) -> None:
    monkeypatch.setenv("RUTH_AI_PROFILE", legacy)
    assert Settings(_env_file=None).ruth_ai_profile is profile  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS", "0"),
        ("GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS", "soon"),
        ("LOG_LEVEL", "LOUD"),
        ("AI_RUNTIME_HARDWARE", "tpu"),
        ("GPU_MEMORY_RESERVE_MB", "-1"),
        ("MAX_CONCURRENT_INFERENCES", "0"),
        ("ENABLE_GPU", "maybe"),
    ],
)
def test_a_bad_value_is_refused_at_start(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert name.lower() in str(raised.value)


def test_model_processes_get_the_gpu_policy_and_a_cpu_host_never_grants_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_RUNTIME_HARDWARE", "cpu")
    monkeypatch.setenv("GPU_FALLBACK_TO_CPU", "false")
    env = Settings(_env_file=None).model_env()  # type: ignore[call-arg]
    assert env["ENABLE_GPU"] == "0"
    assert env["GPU_FALLBACK_TO_CPU"] == "0"
    assert env["GPU_MEMORY_RESERVE_MB"] == "512"
    assert Path(env["RUTH_STATE_DIR"]).is_absolute()


def test_hardware_detection(tmp_path: Path) -> None:
    release = tmp_path / "nv_tegra_release"
    assert detect_hardware(release, which=lambda _: None) is Hardware.CPU
    release.write_text("# R35")
    assert detect_hardware(release, which=lambda _: None) is Hardware.JETSON


def test_unknown_ruth_variables_are_reported() -> None:
    env = {"RUTH_STATE_DIR": "/s", "RUTH_STAT_DIR": "/typo", "HOME": "/root"}
    assert unknown_own_variables(env) == ["RUTH_STAT_DIR"]


def test_seed_names_server_host_and_port_are_honoured_below_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RUTH_HOST", "RUTH_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SERVER_HOST", "0.0.0.0")
    monkeypatch.setenv("SERVER_PORT", "9100")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.ruth_host, settings.ruth_http_port) == ("0.0.0.0", 9100)
    monkeypatch.setenv("RUTH_HTTP_PORT", "9200")
    assert Settings(_env_file=None).ruth_http_port == 9200  # type: ignore[call-arg]
    monkeypatch.setenv("SERVER_PORT", "eighty")
    monkeypatch.delenv("RUTH_HTTP_PORT")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "profile"), [("prod-cpu", Profile.CPU), (" Prod-GPU ", Profile.GPU), ("jetson", Profile.JETSON)]
)
def test_parse_profile_accepts_legacy_names_and_names_the_accepted_ones(name: str, profile: Profile) -> None:
    from ruthctl.settings import parse_profile

    assert parse_profile(name) is profile
    with pytest.raises(ValueError, match="accepted: cpu, gpu, jetson, dev, edge-jetson, prod-cpu"):
        parse_profile("production")


def test_legacy_profile_names_reach_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ruthctl.cli import app

    env = {"RUTH_STATE_DIR": str(tmp_path), "AI_RUNTIME_HARDWARE": "cpu", "RUTH_AI_PROFILE": "prod-gpu"}
    result = CliRunner().invoke(app, ["serve"], env=env)
    assert result.exit_code == 2  # read as gpu (not refused as unknown), then refused: no GPU here
    assert "profile gpu needs a GPU" in " ".join(result.output.split())
    unknown = CliRunner().invoke(app, ["--profile", "prod-tpu", "status"], env=env)
    assert unknown.exit_code == 2 and "prod-tpu" in unknown.output


def test_the_environment_name_is_a_label_for_serve_not_for_the_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUTH_AI_ENV", "staging")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.ruth_ai_env == "staging"  # accepted, and reported by serve at start
    assert "RUTH_AI_ENV" not in settings.model_env()  # no model process reads it


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RUTH_STREAM_STORE": "redis://:hunter2@redis:6379/0"}, "must not carry a password"),
        ({"RUTH_STREAM_STORE": "memcached://cache"}, "must be 'sqlite' or a redis"),
        ({"RUTH_STREAM_STORE": "redis://redis", "RUTH_STREAM_STORE_PASSWORD_FILE": "/nonexistent"}, "readable file"),
    ],
)
def test_a_bad_stream_store_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message) as raised:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert "hunter2" not in str(raised.value)


def test_model_processes_get_the_stream_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text("pw")
    monkeypatch.setenv("RUTH_STREAM_STORE", "redis://redis:6379/0")
    monkeypatch.setenv("RUTH_STREAM_STORE_PASSWORD_FILE", str(secret))
    env = Settings(_env_file=None).model_env()  # type: ignore[call-arg]
    assert env["RUTH_STREAM_STORE"] == "redis://redis:6379/0"
    assert env["RUTH_STREAM_STORE_PASSWORD_FILE"] == str(secret)
    assert "pw" not in env.values()


def test_serve_refuses_a_password_in_the_store_url_without_printing_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ruthctl.cli import app

    env = {"RUTH_STREAM_STORE": "redis://:hunter2@redis:6379/0", "RUTH_STATE_DIR": str(tmp_path)}
    result = CliRunner().invoke(app, ["serve"], env=env, catch_exceptions=False)
    assert result.exit_code == 2, result.output  # usage: nothing was started
    assert "RUTH_STREAM_STORE" in result.output and "RUTH_STREAM_STORE_PASSWORD_FILE" in result.output
    assert "hunter2" not in result.output
    assert ":***@redis" in result.output


def test_a_gpu_profile_on_a_cpu_host_is_a_hardware_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RUTH_AI_PROFILE", "AI_RUNTIME_HARDWARE"):
        monkeypatch.delenv(key, raising=False)
    on_cpu = Settings(ruth_ai_profile=Profile.GPU, ai_runtime_hardware=Hardware.CPU)
    problem = on_cpu.hardware_problem()
    assert problem is not None and "profile gpu needs a GPU, but this host is cpu" in problem
    assert "AI_RUNTIME_HARDWARE=cpu" in problem and problem.endswith("Use --profile cpu (or RUTH_AI_PROFILE=cpu)")
    assert Settings(ruth_ai_profile=Profile.CPU, ai_runtime_hardware=Hardware.CPU).hardware_problem() is None
    assert Settings(ruth_ai_profile=Profile.GPU, ai_runtime_hardware=Hardware.GPU).hardware_problem() is None
    assert Settings(ruth_ai_profile=Profile.JETSON, ai_runtime_hardware=Hardware.CPU).hardware_problem() is not None
