"""The key shim fails closed, and keeps what its process creates owner-only (ruthctl/keyshim.c)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ruthctl.keyshim import PLACEHOLDER, KeyShimUnavailable, shim_library


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shim_library(tmp_path_factory.mktemp("shim"))


def run(
    shim: Path, args: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = ()
) -> subprocess.CompletedProcess[str]:
    code = "import sys; print(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env={"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(shim), **env},
        pass_fds=pass_fds,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_placeholder_without_a_key_pipe_stops_the_process_before_main(shim: Path) -> None:
    done = run(shim, [f"--flag=x:{PLACEHOLDER}"], {})
    assert done.returncode == 2 and "RUTH_KEY_FD is not set" in done.stderr and done.stdout == ""


def test_an_empty_key_pipe_stops_the_process_before_main(shim: Path) -> None:
    read_fd, write_fd = os.pipe()
    os.close(write_fd)
    try:
        done = run(shim, [f"--flag={PLACEHOLDER}"], {"RUTH_KEY_FD": str(read_fd)}, (read_fd,))
    finally:
        os.close(read_fd)
    assert done.returncode == 2 and "empty or malformed key" in done.stderr


def test_a_process_without_a_placeholder_runs_untouched(shim: Path) -> None:
    done = run(shim, ["--plain"], {})
    assert done.returncode == 0 and done.stdout.strip() == "['--plain']"


def test_fchmod_in_a_shimmed_process_drops_group_and_other_bits(shim: Path, tmp_path: Path) -> None:
    target = tmp_path / "region"
    code = f"import os; fd = os.open({str(target)!r}, os.O_CREAT | os.O_RDWR, 0o600); os.fchmod(fd, 0o644)"
    subprocess.run(
        [sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(shim)}, check=True, timeout=60
    )
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_prebuilt_shim_others_can_write_is_refused(shim: Path, tmp_path: Path) -> None:
    loose = tmp_path / "keyshim.so"
    loose.write_bytes(shim.read_bytes())
    loose.chmod(0o666)
    with pytest.raises(KeyShimUnavailable, match="writable by others"):
        shim_library(tmp_path, loose)
