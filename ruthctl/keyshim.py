"""The LD_PRELOAD library that hands tritonserver its admin key without putting it in argv (see keyshim.c).

`shim_library` finds a prebuilt one (RUTH_KEY_SHIM, e.g. built in an image's build stage) or compiles keyshim.c with
the machine's C compiler into `<state-dir>/lib/` (0700, ours: a library preloaded into the server must not be
writable by anyone else). `python -m ruthctl.keyshim OUT.so` builds one for an image.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from python_backends.state import StateLayout

SOURCE = Path(__file__).with_name("keyshim.c")
#: What argv carries where the key goes; keyshim.c swaps it for the key read from the pipe named by FD_VARIABLE.
PLACEHOLDER = "@RUTH-ADMIN-KEY@"
FD_VARIABLE = "RUTH_KEY_FD"


class KeyShimUnavailable(RuntimeError):
    """No usable shim: none prebuilt, no C compiler, or a library others could have replaced."""


def _check_private(path: Path) -> Path:
    info = os.stat(path)
    if info.st_uid not in (0, os.geteuid()):
        raise KeyShimUnavailable(f"key shim {path} belongs to uid {info.st_uid}; it must be ours or root's")
    if info.st_mode & 0o022:
        raise KeyShimUnavailable(f"key shim {path} is writable by others (mode {stat.S_IMODE(info.st_mode):04o})")
    return path


def shim_library(state_dir: Path, prebuilt: Path | None = None) -> Path:
    """The shim to preload: `prebuilt` if given, else one compiled from this checkout's source (cached by hash)."""
    if prebuilt is not None:
        if not prebuilt.is_file():
            raise KeyShimUnavailable(f"RUTH_KEY_SHIM={prebuilt} does not exist")
        return _check_private(prebuilt)
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    target = StateLayout(state_dir).key_shim(digest)
    if target.exists():
        return _check_private(target)
    return build(target)


def build(target: Path) -> Path:
    """Compile keyshim.c into `target` atomically (a concurrent builder's result is as good as ours)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise KeyShimUnavailable(
            "no C compiler to build the admin-key shim: install gcc, or build it elsewhere with "
            "`python -m ruthctl.keyshim OUT.so` and set RUTH_KEY_SHIM=OUT.so"
        )
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    command = [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp), str(SOURCE), "-ldl"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise KeyShimUnavailable(f"building the key shim failed: {' '.join(command)}\n{done.stderr.strip()}")
    tmp.chmod(0o700)
    tmp.replace(target)
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ruthctl.keyshim OUT.so", file=sys.stderr)
        return 2
    print(build(Path(argv[0]).resolve()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
