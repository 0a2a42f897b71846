#!/bin/sh
# The runtime stage's setup shared by containers/{cpu,triton-gpu,triton-jetson}/Dockerfile, run once as root after
# our packages are installed. What every image must hold, in one place (built for real by the CPU image in CI:
# tests/images/): the installed packages import with numpy 1.x; the non-root user 10001:10001 exists; its state
# dir /var/lib/ruth is 0700 and its own; the pinned weights are baked in, SHA-256 verified, readable, not writable.
#
# usage: [RUTH_MODELS_DIR=DIR] setup-runtime.sh PYTHON
#   PYTHON: the interpreter that has our packages (a venv's, or the base image's own)
#   RUTH_MODELS_DIR: where the committed weights are (models/ of the repository); unset: those optional ones are skipped
# The weights are the ones pinned by the specs in /opt/ruth/config/models (copied before this runs).
set -eu
python=${1:?usage: setup-runtime.sh PYTHON}
"$python" -c "import numpy, python_backends, ruthctl; assert numpy.__version__.startswith('1.'), numpy.__version__"
groupadd --system --gid 10001 ruth
useradd --system --uid 10001 --gid ruth --home-dir /var/lib/ruth --no-create-home --shell /usr/sbin/nologin ruth
install -d -o 10001 -g 10001 -m 0700 /var/lib/ruth
# fetch writes 0600 as root: make the weights readable by the runtime user, never writable
"$python" -m ruthctl weights fetch --dir /opt/ruth/weights --specs /opt/ruth/config/models
"$python" -m ruthctl weights verify --dir /opt/ruth/weights --specs /opt/ruth/config/models
chmod -R a+rX,go-w /opt/ruth/weights
