#!/usr/bin/env bash
# Installs what the loader tests (tests/loaders) need on Debian 12, as root:
#   - PyTorch from Debian (python3-torch 1.13.1), plus fuse3 and nginx-light for the mounts;
#   - the venv ${CKPTFS_LOADERS_VENV:-<repo>/.venv-loaders}, made by Debian's /usr/bin/python3
#     (3.11) with --system-site-packages so it sees that torch, filled from PyPI with the exact
#     pins of tests/loaders/requirements.txt (tensorflow-cpu, keras, h5py, safetensors, numpy 1.26,
#     pytest);
#   - a check that torch, tensorflow, keras, h5py, safetensors and numpy import together (both
#     import orders) and that torch.from_numpy works with that numpy.
# Any failure exits non-zero: a machine that cannot run the loader tests must not look ready.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CKPTFS_LOADERS_VENV:-$REPO/.venv-loaders}"
REQUIREMENTS="$REPO/tests/loaders/requirements.txt"

if [[ $(id -u) -ne 0 ]]; then
  echo "install-loader-deps.sh: run as root (it uses apt-get)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run (unattended upgrades, a parallel install) instead of failing.
APT=(apt-get -o DPkg::Lock::Timeout=600)
"${APT[@]}" update
"${APT[@]}" install -y --no-install-recommends \
  python3 python3-venv python3-torch fuse3 nginx-light ca-certificates

/usr/bin/python3 -m venv --system-site-packages "$VENV"
# Wheels only: a source build of any of these would take far too long or fail half-way.
"$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
  --only-binary=:all: -r "$REQUIREMENTS"

# The libraries must work together in this venv (torch first and TensorFlow first).
check_imports() {
  TF_CPP_MIN_LOG_LEVEL=2 "$VENV/bin/python" - "$@" <<'PY'
import importlib
import sys

for name in sys.argv[1:]:
    importlib.import_module(name)
import h5py
import keras
import numpy as np
import safetensors
import tensorflow as tf
import torch

assert np.__version__.startswith("1."), f"numpy {np.__version__}: Debian's torch needs numpy 1.x"
a = np.arange(12, dtype=np.float32).reshape(3, 4)
t = torch.from_numpy(a)
assert torch.equal(t * 2, torch.from_numpy(a * 2)), "torch.from_numpy gives wrong values"
assert np.array_equal(tf.constant(a).numpy(), t.numpy()), "TensorFlow and torch disagree"
print(f"install-loader-deps: torch {torch.__version__}, tensorflow {tf.__version__}, "
      f"keras {keras.__version__}, numpy {np.__version__}, safetensors {safetensors.__version__}, "
      f"h5py {h5py.__version__}")
PY
}
check_imports torch tensorflow
check_imports tensorflow torch
echo "install-loader-deps: done (venv at $VENV)"
