#!/usr/bin/env bash
# The whole test run, as CI does it: install dependencies, build, unit tests (CTest), then the
# integration tests (pytest: real ckptfs binary, real nginx nodes, real FUSE mounts). Run as root.
#
# Environment: CKPTFS_BUILD (build dir, default <repo>/build), CKPTFS_VENV (default <repo>/.venv),
# CKPTFS_SKIP_DEPS=1 / CKPTFS_SKIP_BUILD=1 to skip those steps on a prepared machine,
# PYTEST_ARGS for extra pytest arguments (for example "-k mount -x").
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${CKPTFS_BUILD:-$REPO/build}"
VENV="${CKPTFS_VENV:-$REPO/.venv}"
export CKPTFS_BUILD="$BUILD" CKPTFS_VENV="$VENV"

if [[ "${CKPTFS_SKIP_DEPS:-0}" != 1 ]]; then
  bash "$REPO/scripts/install-deps.sh"
fi
if [[ "${CKPTFS_SKIP_BUILD:-0}" != 1 ]]; then
  bash "$REPO/scripts/build.sh"
fi

status=0

echo "=== unit tests (ctest)"
if ! ctest --test-dir "$BUILD" --output-on-failure --no-tests=error -j2; then
  echo "test.sh: unit tests failed" >&2
  status=1
fi

echo "=== integration tests (pytest)"
export CKPTFS_BIN="${CKPTFS_BIN:-$BUILD/cli/ckptfs}"
cd "$REPO"
set +e
# shellcheck disable=SC2086 # PYTEST_ARGS is a list of words on purpose.
"$VENV/bin/pytest" tests/integration -v -p no:cacheprovider ${PYTEST_ARGS:-}
pytest_status=$?
set -e
if [[ $pytest_status -eq 5 ]]; then
  echo "test.sh: pytest collected no tests" >&2
  status=1
elif [[ $pytest_status -ne 0 ]]; then
  echo "test.sh: integration tests failed (pytest exit $pytest_status)" >&2
  status=1
fi
echo "=== loader tests (pytest: TensorFlow, Keras, PyTorch, safetensors, numpy)"
LOADERS_VENV="${CKPTFS_LOADERS_VENV:-$REPO/.venv-loaders}"
set +e
# shellcheck disable=SC2086 # LOADERS_PYTEST_ARGS is a list of words on purpose.
"$LOADERS_VENV/bin/pytest" tests/loaders -v -p no:cacheprovider ${LOADERS_PYTEST_ARGS:-}
loaders_status=$?
set -e
if [[ $loaders_status -eq 5 ]]; then
  echo "test.sh: loader tests collected no tests" >&2
  status=1
elif [[ $loaders_status -ne 0 ]]; then
  echo "test.sh: loader tests failed (pytest exit $loaders_status)" >&2
  status=1
fi
exit $status
