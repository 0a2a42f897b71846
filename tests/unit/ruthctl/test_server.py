"""The launcher's pure parts: flags rendered to argv, the environment the stubs inherit, the shm sweep."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ruthctl.keyshim import shim_library
from ruthctl.server import (
    TritonFlags,
    TritonInstall,
    order_for_loading,
    prepare_backends_dir,
    repository_models,
    server_environment,
    sweep_stale_shm,
)


def flags(**overrides: object) -> TritonFlags:
    base: dict[str, object] = {"model_repository": Path("/repo"), "backend_directory": Path("/backends")}
    base.update(overrides)
    return TritonFlags(**base)  # type: ignore[arg-type]


def test_argv_has_the_settings_the_behaviour_notes_require() -> None:
    argv = flags(model_config_name="gpu", exit_timeout_s=45).to_argv(Path("/bin/tritonserver"))
    assert argv[0] == "/bin/tritonserver"
    for expected in (
        "--model-control-mode=explicit",
        "--disable-auto-complete-config",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--model-config-name=gpu",
        "--exit-timeout-secs=45",
        "--model-repository=/repo",
        "--backend-directory=/backends",
    ):
        assert expected in argv


def test_the_admin_key_restricts_every_admin_api_on_both_protocols_with_a_placeholder_in_argv() -> None:
    argv = flags(admin_token="s3cret").to_argv(Path("/bin/tritonserver"))
    apis = "model-repository,shared-memory,logging,trace"
    assert f"--http-restricted-api={apis}:ruth-admin-token=@RUTH-ADMIN-KEY@" in argv
    assert f"--grpc-restricted-protocol={apis}:ruth-admin-token=@RUTH-ADMIN-KEY@" in argv
    assert not any("s3cret" in arg for arg in argv)  # argv is world-readable in /proc/<pid>/cmdline


def test_metrics_can_be_switched_off() -> None:
    argv = flags(metrics_enabled=False).to_argv(Path("/bin/tritonserver"))
    assert "--allow-metrics=false" in argv
    assert not any(a.startswith("--metrics-port") for a in argv)


def test_stub_environment_puts_the_venv_first_and_the_matching_libpython_on_the_loader_path() -> None:
    env = server_environment({"PATH": "/usr/bin", "PYTHONPATH": "/x"}, {"RUTH_STATE_DIR": "/state"})
    import sys

    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert "PYTHONPATH" not in env
    assert env["RUTH_STATE_DIR"] == "/state"
    lib = env["LD_LIBRARY_PATH"].split(os.pathsep)[0]
    assert any(Path(lib).glob("libpython3*.so*"))


def test_only_regions_of_dead_runs_are_swept(tmp_path: Path) -> None:
    dead, alive, foreign = tmp_path / "ruth111_tank_0_0", tmp_path / "ruth222_tank_0_0", tmp_path / "other_1"
    for region in (dead, alive, foreign):
        region.write_bytes(b"")
    removed = sweep_stale_shm(tmp_path, "ruth", is_alive=lambda pid: pid == 222)
    assert removed == [dead]
    assert alive.exists() and foreign.exists() and not dead.exists()


def test_the_private_backends_dir_links_the_stub_for_this_python(tmp_path: Path) -> None:
    install = TritonInstall.locate()
    backends = prepare_backends_dir(install, tmp_path)
    stub = backends / "python" / "triton_python_backend_stub"
    assert stub.resolve() == install.stub.resolve()
    assert prepare_backends_dir(install, tmp_path) == backends  # idempotent


def test_a_missing_server_binary_says_what_to_install(tmp_path: Path) -> None:
    from ruthctl.server import TritonNotInstalled

    with pytest.raises(TritonNotInstalled, match="RUTH_TRITONSERVER"):
        TritonInstall.locate(binary=tmp_path / "tritonserver")


def test_bls_callees_load_first(tmp_path: Path) -> None:
    for name in ("fall_detection", "pose_estimator", "tank"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text("")
    (tmp_path / "not_a_model").mkdir()
    assert order_for_loading(repository_models(tmp_path)) == ["pose_estimator", "fall_detection", "tank"]


def test_max_concurrent_inferences_maps_to_the_rate_limiter() -> None:
    argv = flags(max_concurrent_executions=3).to_argv(Path("/bin/tritonserver"))
    assert "--rate-limit=execution_count" in argv
    assert "--rate-limit-resource=ruth_inference:3" in argv
    assert not any(a.startswith("--rate-limit") for a in flags().to_argv(Path("/bin/tritonserver")))


def test_the_admin_token_never_reaches_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import sys

    from ruthctl.server import TritonServer

    fake = tmp_path / "tritonserver"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    install = TritonInstall(binary=fake, python_backend=tmp_path, stub=tmp_path / "stub")
    shim = shim_library(tmp_path / "state")
    env = {"PATH": str(Path(sys.executable).parent)}
    server = TritonServer(flags(admin_token="s3cret-token"), install, env, key_shim=shim)
    with caplog.at_level(logging.INFO, logger="ruthctl.server"):
        server.start()
        server.wait(timeout_s=10)
    assert "--http-restricted-api" in caplog.text
    assert "s3cret-token" not in caplog.text


def test_the_key_shim_hands_the_key_to_main_while_proc_cmdline_keeps_the_placeholder(tmp_path: Path) -> None:
    """A stand-in server (python) reports its argv as main() sees it and as /proc shows it to everyone."""
    import json
    import sys

    from ruthctl.server import TritonServer

    fake = tmp_path / "tritonserver"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "cmdline = open(f'/proc/{os.getpid()}/cmdline', 'rb').read().decode()\n"
        "print(json.dumps({'argv': sys.argv, 'cmdline': cmdline, 'fd': os.environ.get('RUTH_KEY_FD')}))\n"
    )
    fake.chmod(0o755)
    install = TritonInstall(binary=fake, python_backend=tmp_path, stub=tmp_path / "stub")
    out = tmp_path / "out.log"
    key = "k" * 20 + "0123456789abcdef"
    server = TritonServer(
        flags(admin_token=key), install, {"PATH": "/usr/bin:/bin"}, log_file=out, key_shim=shim_library(tmp_path)
    )
    server.start()
    assert server.wait(timeout_s=30) == 0
    seen = json.loads(out.read_text().strip().splitlines()[-1])
    assert (
        f"--http-restricted-api=model-repository,shared-memory,logging,trace:ruth-admin-token={key}" in (seen["argv"])
    )
    assert key not in seen["cmdline"] and "@RUTH-ADMIN-KEY@" in seen["cmdline"]
    assert seen["fd"] is None  # the shim unsets RUTH_KEY_FD; children never learn where the key came from


def test_without_the_shim_a_keyed_server_refuses_to_start(tmp_path: Path) -> None:
    from ruthctl.server import TritonServer, TritonStartError

    install = TritonInstall(binary=Path("/bin/true"), python_backend=tmp_path, stub=tmp_path / "stub")
    with pytest.raises(TritonStartError, match="key shim"):
        TritonServer(flags(admin_token="x" * 40), install, {}).start()
