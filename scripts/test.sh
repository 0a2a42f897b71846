#!/usr/bin/env bash
# The test command of the README: lint, types, config drift, then every test (unit + real-Triton integration).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/ruthctl generate --check
exec .venv/bin/python -m pytest -q "$@"
