#!/usr/bin/env bash
# The wheels a bare GPU machine (Python 3.12, PyTorch, no network) lacks for scripts/gpu_device_check.py, into .whl/
# (gitignored; ~3 MB, well inside the 64 MiB a device call carries). On that machine:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
#     PYTHONPATH=/tmp/site python3 scripts/gpu_device_check.py --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-.venv/bin/python -m pip}"
mkdir -p .whl
# versions: what .venv runs (pydantic 2), for CPython 3.12 on manylinux x86-64
for spec in "pydantic==$(.venv/bin/python -c 'import pydantic; print(pydantic.VERSION)')" \
            "pydantic-core==$(.venv/bin/python -c 'import pydantic_core; print(pydantic_core.__version__)')" \
            "annotated-types" "typing-inspection" "onnx2torch==1.5.15"; do
  $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$spec"
done
du -ch .whl/*.whl | tail -1
