"""What the numbers were measured on: the machine and every version that can change them."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "nvidia-pytriton",
    "tritonclient",
    "numpy",
    "opencv-python-headless",
    "pillow",
    "pydantic",
    "fastapi",
    "uvicorn",
    "ai-edge-litert",
)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(repo: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def gpu_present() -> bool:
    return Path("/dev/nvidia0").exists()


def describe(repo: Path, *, server_version: str | None, perf_analyzer: str | None) -> dict[str, Any]:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "gpu": gpu_present(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "tritonserver": server_version,
        "perf_analyzer": perf_analyzer,
        "packages": package_versions(),
        "git_commit": git_commit(repo),
    }
