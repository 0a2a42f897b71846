"""Attacks on the real server (docs/security.md): another local user, an unkeyed network client, a hostile CONFIG.

The local attacker runs as `nobody` (setpriv) with the system Python and the stdlib only: it reads every
/proc/<pid>/cmdline and environ it can, and the state dir, then tries to load a model with a `file:` override (code
execution as the server's user) using every key-like string it found. Skipped, with the reason, only where this
machine can't switch users. The server's state dir sits under a world-traversable folder, so only its own mode
protects it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from support import REPO_ROOT, TritonHandle, result_of, start_triton, tank_frame, vision_inputs
from tritonclient.utils import InferenceServerException

from ruthctl.server import http_status

CHANE, TANK = "chane_tank_monitor", "tank_overflow_monitoring"
PLACEHOLDER = "@RUTH-ADMIN-KEY@"
GRPC_KEY = "triton-grpc-protocol-ruth-admin-token"

ATTACKER = r"""
import json, os, re, sys, urllib.request, urllib.error, base64
url, state, target = sys.argv[1], sys.argv[2], sys.argv[3]
found = {"cmdline": 0, "environ": 0, "state": [], "candidates": set()}
for pid in filter(str.isdigit, os.listdir("/proc")):
    for part in ("cmdline", "environ"):
        try:
            text = open(f"/proc/{pid}/{part}", "rb").read().decode("utf-8", "replace")
        except OSError:
            continue
        found[part] += 1
        for token in re.split(r"[\x00\s=:,]+", text):
            if 20 <= len(token) <= 256 and re.fullmatch(r"[\x21-\x7e]+", token):
                found["candidates"].add(token)
for folder, dirs, files in os.walk(state):
    for name in files:
        path = os.path.join(folder, name)
        try:
            words = open(path, "rb").read(4096).decode("ascii", "replace").split()
            found["candidates"].update(w for w in words if re.fullmatch(r"[\x21-\x7e]+", w))
            found["state"].append(path)
        except OSError:
            pass
try:
    os.listdir(state)
    found["state_listable"] = True
except OSError:
    found["state_listable"] = False
code = base64.b64encode(b"raise SystemExit('pwned')").decode()
config = json.dumps({"name": target, "backend": "python", "max_batch_size": 0,
                     "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
                     "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}]})
body = json.dumps({"parameters": {"config": config, "file:1/model.py": code}}).encode()
statuses = {}
for candidate in [None, *sorted(found["candidates"])]:
    headers = {"Content-Type": "application/json"}
    if candidate is not None:
        headers["ruth-admin-token"] = candidate
    request = urllib.request.Request(f"http://{url}/v2/repository/models/{target}/load", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    statuses[str(status)] = statuses.get(str(status), 0) + 1
found["candidates"] = len(found["candidates"])
found["load_statuses"] = statuses
print(json.dumps(found))
"""


def _switch_user_prefix() -> list[str] | None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return None
    prefix = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    done = subprocess.run([*prefix, "true"], capture_output=True, check=False)
    return prefix if done.returncode == 0 else None


SWITCH_USER = _switch_user_prefix()
needs_other_uid = pytest.mark.skipif(
    SWITCH_USER is None, reason="needs root and setpriv to act as another uid (nobody)"
)


@pytest.fixture(scope="module")
def server() -> Iterator[TritonHandle]:
    base = Path(tempfile.mkdtemp(prefix="ruth-sec-"))
    base.chmod(0o755)  # world-traversable: only the state dir's own mode may keep `nobody` out
    handle = start_triton(base, [CHANE, TANK])
    try:
        yield handle
    finally:
        handle.server.stop(grace_s=30)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def client(server: TritonHandle) -> Iterator[httpclient.InferenceServerClient]:
    with contextlib.closing(httpclient.InferenceServerClient(server.http_url)) as c:
        yield c


def recent() -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=30)).isoformat()


def chane_frame() -> np.ndarray:
    gray = np.full((480, 640), 60, np.uint8)
    gray[200:280, 280:360] = 220
    return np.repeat(gray[:, :, None], 3, axis=2)


def infer_chane(client: httpclient.InferenceServerClient, config: dict[str, Any] | None = None, **kw: Any) -> Any:
    inputs = vision_inputs(
        httpclient, frame=chane_frame(), stream_id=str(uuid.uuid4()), timestamp=recent(), config=config
    )
    return client.infer(CHANE, inputs, **kw)


# --- a local attacker --------------------------------------------------------------------------------------------


@needs_other_uid
def test_another_local_user_finds_no_key_and_cannot_load_code(server: TritonHandle, tmp_path: Path) -> None:
    assert SWITCH_USER is not None
    script = Path(tempfile.mkdtemp(prefix="ruth-attacker-")) / "attack.py"
    script.parent.chmod(0o755)
    script.write_text(ATTACKER)
    script.chmod(0o644)
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    done = subprocess.run(
        [*SWITCH_USER, python, str(script), server.http_url, str(server.state_dir), "pwned_model"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    shutil.rmtree(script.parent, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["cmdline"] > 0 and found["candidates"] > 0  # it did read argv of every process, ours included
    assert found["state_listable"] is False and found["state"] == []
    assert found["load_statuses"] == {"403": found["candidates"] + 1}, found
    pid = server.server.process.pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert server.token not in cmdline and PLACEHOLDER in cmdline
    assert server.token not in server.log_text()
    assert "pwned_model" not in {e["name"] for e in server.index()}


def test_state_dir_is_0700_its_files_0600_and_our_shm_regions_owner_only(server: TritonHandle) -> None:
    assert os.stat(server.state_dir).st_mode & 0o777 == 0o700
    for folder, _dirs, files in os.walk(server.state_dir):
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                assert path.stat().st_mode & 0o077 == 0, f"{path} is {path.stat().st_mode & 0o777:o}"
    prefix = server.server.flags.shm_prefix
    regions = list(Path("/dev/shm").glob(f"{prefix}*"))
    assert regions, f"no shm regions named {prefix}*"
    assert all(r.stat().st_mode & 0o077 == 0 for r in regions), {r.name: oct(r.stat().st_mode) for r in regions}


# --- an unkeyed network client -----------------------------------------------------------------------------------

KEYED_HTTP = [
    ("POST", "/v2/repository/index", b"{}"),
    ("POST", f"/v2/repository/models/{CHANE}/load", b"{}"),
    ("POST", f"/v2/repository/models/{CHANE}/unload", b"{}"),
    ("GET", "/v2/systemsharedmemory/status", None),
    ("POST", "/v2/systemsharedmemory/region/x/register", b'{"key":"/x","offset":0,"byte_size":64}'),
    ("POST", "/v2/systemsharedmemory/unregister", b""),
    ("GET", "/v2/cudasharedmemory/status", None),
    ("POST", "/v2/cudasharedmemory/region/x/register", b'{"raw_handle":{"b64":"AA=="},"device_id":0,"byte_size":64}'),
    ("POST", "/v2/cudasharedmemory/unregister", b""),
    ("GET", "/v2/logging", None),
    ("POST", "/v2/logging", b'{"log_verbose_level":1}'),
    ("GET", "/v2/trace/setting", None),
    ("POST", "/v2/trace/setting", b'{"trace_level":["TIMESTAMPS"]}'),
    ("GET", f"/v2/models/{CHANE}/trace/setting", None),
]
OPEN_HTTP = [
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2"),
    ("GET", f"/v2/models/{CHANE}"),
    ("GET", f"/v2/models/{CHANE}/ready"),
    ("GET", f"/v2/models/{CHANE}/config"),
    ("GET", f"/v2/models/{CHANE}/stats"),
]


@pytest.mark.parametrize(("method", "path", "body"), KEYED_HTTP, ids=[f"{m} {p}" for m, p, _ in KEYED_HTTP])
def test_every_admin_http_endpoint_refuses_no_key_the_placeholder_and_a_wrong_key(
    server: TritonHandle, method: str, path: str, body: bytes | None
) -> None:
    url = f"http://{server.http_url}{path}"
    data = body if method == "POST" else None
    for headers in ({}, {"ruth-admin-token": PLACEHOLDER}, {"ruth-admin-token": "x" * 43}):
        assert http_status(url, data=data, headers=headers) == 403, (path, headers)


def test_the_key_opens_the_admin_endpoints_and_the_open_ones_need_none(server: TritonHandle) -> None:
    base = f"http://{server.http_url}"
    assert http_status(f"{base}/v2/logging", headers=server.headers) == 200
    assert http_status(f"{base}/v2/systemsharedmemory/status", headers=server.headers) == 200
    for method, path in OPEN_HTTP:
        assert http_status(f"{base}{path}", data=b"" if method == "POST" else None) == 200, path


def test_every_admin_grpc_call_is_refused_without_the_key(server: TritonHandle) -> None:
    with contextlib.closing(grpcclient.InferenceServerClient(server.grpc_url)) as c:
        calls = {
            "index": lambda h: c.get_model_repository_index(headers=h),
            "load": lambda h: c.load_model(CHANE, headers=h),
            "unload": lambda h: c.unload_model("nonexistent", headers=h),
            "shm status": lambda h: c.get_system_shared_memory_status(headers=h),
            "shm register": lambda h: c.register_system_shared_memory("x", "/x", 64, headers=h),
            "shm unregister": lambda h: c.unregister_system_shared_memory(headers=h),
            "cuda shm status": lambda h: c.get_cuda_shared_memory_status(headers=h),
            "cuda shm unregister": lambda h: c.unregister_cuda_shared_memory(headers=h),
            "log get": lambda h: c.get_log_settings(headers=h),
            "log set": lambda h: c.update_log_settings({"log_verbose_level": 1}, headers=h),
            "trace get": lambda h: c.get_trace_settings(headers=h),
            "trace set": lambda h: c.update_trace_settings(settings={"trace_rate": "1"}, headers=h),
        }
        for name, call in calls.items():
            for headers in ({}, {GRPC_KEY: PLACEHOLDER}):
                with pytest.raises(InferenceServerException, match="restricted") as caught:
                    call(headers)
                assert caught.value is not None, name
        assert c.get_log_settings(headers={GRPC_KEY: server.token}) is not None
        assert c.is_server_live() and c.get_model_metadata(CHANE) is not None


def _stub_region(server: TritonHandle) -> str:
    """The shm region named in a live stub's argv (world-readable), as the issue's attacker found it."""
    prefix = server.server.flags.shm_prefix
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            for arg in args:
                text = arg.decode(errors="replace")
                if text.startswith(f"/{prefix}") or text.startswith(prefix):
                    return text if text.startswith("/") else f"/{text}"
    raise AssertionError(f"no stub argv names a region {prefix}*")


def test_the_shared_memory_crash_sequence_is_refused_and_the_server_keeps_serving(
    server: TritonHandle, client: httpclient.InferenceServerClient
) -> None:
    region = _stub_region(server)
    url = f"http://{server.http_url}/v2/systemsharedmemory/region/stub/register"
    body = json.dumps({"key": region, "offset": 0, "byte_size": 4096}).encode()
    assert http_status(url, data=body) == 403
    with contextlib.closing(grpcclient.InferenceServerClient(server.grpc_url)) as c:
        with pytest.raises(InferenceServerException, match="restricted"):
            c.register_system_shared_memory("stub", region, 4096)
    output = httpclient.InferRequestedOutput("RESULT")
    with pytest.raises(InferenceServerException):  # the region was never registered
        output.set_shared_memory("stub", 4096)
        infer_chane(client, outputs=[output])
    for _ in range(3):
        assert "fill_percentage" in result_of(infer_chane(client))
    assert server.server.process.poll() is None


# --- a hostile CONFIG --------------------------------------------------------------------------------------------

HOSTILE = [
    (CHANE, {"roi_circle": {"cx": 320, "cy": 240, "r": 1e10}}, "roi_circle"),
    (CHANE, {"roi_circle": {"cx": 320, "cy": 240, "r": 2147483647}}, "roi_circle"),
    (CHANE, {"roi_circle": {"cx": 320, "cy": 240, "r": 5000}}, "diagonal"),
    (CHANE, {"roi_circle": {"cx": 9000, "cy": 240, "r": 40}}, "roi_circle"),
    (CHANE, {"auto_calibrate": "yes"}, "auto_calibrate"),
    (CHANE, {"smoothing_window": "15"}, "smoothing_window"),
    (TANK, {"capacity_liters": "1000"}, "capacity_liters"),
    (TANK, {"capacity_liters": True}, "capacity_liters"),
    (TANK, {"tank_corners": [[0, 0], [1e300, 0], [1e300, 1e300], [0, 1e300]]}, "tank_corners"),
]


@pytest.mark.parametrize(("model", "config", "field"), HOSTILE, ids=[f"{m}:{c}" for m, c, _ in HOSTILE])
def test_hostile_config_is_the_clients_400_and_never_opens_the_breaker_for_others(
    client: httpclient.InferenceServerClient, model: str, config: dict[str, Any], field: str
) -> None:
    frame = chane_frame() if model == CHANE else tank_frame(50.0)
    for _ in range(8):  # more than the breaker's failure threshold
        inputs = vision_inputs(httpclient, frame=frame, stream_id=str(uuid.uuid4()), timestamp=recent(), config=config)
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, inputs)
        assert caught.value.status() == "400", caught.value.message()
        assert "CONFIG" in str(caught.value.message()) and field in str(caught.value.message())
    other = vision_inputs(httpclient, frame=frame, stream_id=str(uuid.uuid4()), timestamp=recent())
    assert result_of(client.infer(model, other))  # another camera: served, the breaker is closed


def test_valid_json_numbers_still_pass_strict_validation(client: httpclient.InferenceServerClient) -> None:
    config = {"roi_circle": {"cx": 320, "cy": 240.5, "r": 100}, "auto_calibrate": False, "smoothing_window": 3}
    assert result_of(infer_chane(client, config))["roi"]["source"] == "config"


def test_a_huge_client_request_id_is_refused_and_a_normal_one_is_echoed(
    client: httpclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException, match="request id") as caught:
        infer_chane(client, request_id="x" * 200_000)
    assert caught.value.status() == "400" and len(caught.value.message()) < 1000
    assert result_of(infer_chane(client, request_id="cam-7/frame-42"))["metadata"]["request_id"] == "cam-7/frame-42"


# --- a weak key: serve refuses to start ------------------------------------------------------------------------


def _serve(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "RUTH_ADMIN_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "ruthctl", "--state-dir", str(tmp_path / "state"), "serve", "--http-port", "1"],
        env={**clean, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("token", ["   ", "short", "a" * 40, "line-one-0123456789abcdefghijkl\nline-two"])
def test_serve_refuses_a_weak_environment_key_with_exit_2(tmp_path: Path, token: str) -> None:
    done = _serve(tmp_path, {"RUTH_ADMIN_TOKEN": token})
    assert done.returncode == 2, done.stderr
    assert "refusing to start" in done.stderr and "RUTH_ADMIN_TOKEN" in done.stderr


@pytest.mark.parametrize("problem", ["empty", "symlink", "readable"])
def test_serve_refuses_an_unsafe_key_file_with_exit_2(tmp_path: Path, problem: str) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    key = state / "admin-token"
    good = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=") + "\n"
    if problem == "empty":
        key.write_text("  \n")
        key.chmod(0o600)
    elif problem == "symlink":
        target = tmp_path / "elsewhere"
        target.write_text(good)
        target.chmod(0o600)
        key.symlink_to(target)
    else:
        key.write_text(good)
        key.chmod(0o644)  # the state dir's tightening leaves the key file alone: it may have leaked, so refuse
    done = _serve(tmp_path, {})
    assert done.returncode == 2, done.stderr
    assert "refusing to start" in done.stderr


# --- a deployment that keys more: our clients keep working ---------------------------------------------------------


def test_keying_statistics_model_config_and_metadata_keeps_ruthctl_and_the_sdk_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ruthctl.cli import app
    from ruthctl.client import RuthClient, RuthClientError

    monkeypatch.setenv("RUTH_KEYED_APIS", "statistics,model-config,metadata")
    handle = start_triton(tmp_path, [TANK])
    try:
        base = f"http://{handle.http_url}/v2/models/{TANK}"
        for path in ("/stats", "/config", ""):
            assert http_status(base + path) == 403 and http_status(base + path, headers=handle.headers) == 200
        env = {
            "MODELS_ROOT": str(handle.repository),
            "RUTH_STATE_DIR": str(handle.state_dir),
            "RUTH_TRITON_URL": handle.http_url,
            "RUTH_AI_PROFILE": "cpu",
        }
        status = CliRunner().invoke(app, ["status", "--json"], env=env, catch_exceptions=False)
        assert status.exit_code == 0, status.output
        assert "restricted" not in status.output
        frame = tank_frame(50.0)
        with RuthClient(handle.http_url, admin_key=handle.token) as sdk:
            assert "level_percent" in sdk.infer(TANK, frame=frame, stream_id=str(uuid.uuid4()))
        with RuthClient(handle.http_url) as sdk, pytest.raises(RuthClientError) as refused:
            sdk.infer(TANK, frame=frame, stream_id=str(uuid.uuid4()))
        assert "restricted" in str(refused.value)  # model-config is keyed here: the SDK needs admin_key
    finally:
        handle.server.stop(grace_s=30)
