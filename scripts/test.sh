#!/usr/bin/env bash
# The whole test run, as CI does it: install dependencies, build, unit tests (CTest), then the
# integration tests (pytest: real ckptfs binary, real nginx nodes, real FUSE mounts). Run as root.
#
# Then the same unit and integration tests again against a build with AddressSanitizer and
# UndefinedBehaviorSanitizer (leaks and undefined behaviour fail the run), and again against a
# build with ThreadSanitizer (a data race fails the run: in the unit tests at once, in the
# integration tests, whose daemons run in the background, by the reports they leave). Under
# ThreadSanitizer three kinds of integration test are left out: the package's (lintian and the
# packaged helper judge a release build), the daemon's memory bound (the sanitizer's shadow
# memory and allocator grow with what it sees), and the two that time a frozen node's stall to
# the millisecond, which the sanitizer's slowdown misses.
#
# Environment: CKPTFS_BUILD (build dir, default <repo>/build), CKPTFS_VENV (default <repo>/.venv),
# CKPTFS_SANITIZE_BUILD (default <repo>/build-asan), CKPTFS_TSAN_BUILD (default
# <repo>/build-tsan), CKPTFS_SKIP_DEPS=1 / CKPTFS_SKIP_BUILD=1 to skip those steps on a prepared
# machine, CKPTFS_SKIP_SANITIZE=1 to skip both sanitizer stages, PYTEST_ARGS for extra pytest
# arguments (for example "-k mount -x").
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

# run_pytest NAME VENV DIR [ARGS...]: runs one pytest suite; a failure, or a suite that collected
# no test (pytest exit 5), marks the whole run failed.
run_pytest() {
  local name="$1" venv="$2" dir="$3" rc
  shift 3
  set +e
  "$venv/bin/pytest" "$dir" -v -p no:cacheprovider "$@"
  rc=$?
  set -e
  if [[ $rc -eq 5 ]]; then
    echo "test.sh: $name tests collected no tests" >&2
    status=1
  elif [[ $rc -ne 0 ]]; then
    echo "test.sh: $name tests failed (pytest exit $rc)" >&2
    status=1
  fi
}

export CKPTFS_BIN="${CKPTFS_BIN:-$BUILD/cli/ckptfs}"
cd "$REPO"

echo "=== integration tests (pytest)"
# shellcheck disable=SC2086 # PYTEST_ARGS is a list of words on purpose.
run_pytest integration "$VENV" tests/integration ${PYTEST_ARGS:-}

echo "=== loader tests (pytest: TensorFlow, Keras, PyTorch, safetensors, numpy)"
# shellcheck disable=SC2086 # LOADERS_PYTEST_ARGS is a list of words on purpose.
run_pytest loader "${CKPTFS_LOADERS_VENV:-$REPO/.venv-loaders}" tests/loaders ${LOADERS_PYTEST_ARGS:-}

# sanitizer_build NAME DIR CMAKE_FLAG: builds the tree DIR with CMAKE_FLAG=ON and runs its unit
# tests; a failure marks the whole run failed.
sanitizer_build() {
  local name="$1" dir="$2" flag="$3"
  cmake -S "$REPO" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "-D$flag=ON"
  cmake --build "$dir" -j"$(nproc)"
  if ! ctest --test-dir "$dir" --output-on-failure --no-tests=error -j2; then
    echo "test.sh: unit tests failed in the $name build" >&2
    status=1
  fi
}

if [[ "${CKPTFS_SKIP_SANITIZE:-0}" != 1 ]]; then
  echo "=== sanitizer build (ASan + UBSan): unit and integration tests"
  SAN_BUILD="${CKPTFS_SANITIZE_BUILD:-$REPO/build-asan}"
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
  sanitizer_build sanitizer "$SAN_BUILD" CKPTFS_SANITIZE
  export CKPTFS_BIN="$SAN_BUILD/cli/ckptfs"
  # shellcheck disable=SC2086 # PYTEST_ARGS is a list of words on purpose.
  run_pytest "integration (sanitizers)" "$VENV" tests/integration ${PYTEST_ARGS:-}

  echo "=== thread sanitizer build (TSan): unit and integration tests"
  TSAN_BUILD="${CKPTFS_TSAN_BUILD:-$REPO/build-tsan}"
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"
  sanitizer_build "thread sanitizer" "$TSAN_BUILD" CKPTFS_TSAN
  # A daemon that stopped at its first race would fail a test with no word why: each process
  # writes its reports to a file of its own instead, and any such file fails the run.
  TSAN_REPORTS="$(mktemp -d)"
  # Some tests run a daemon as nobody, whose reports must land here too.
  chmod 1777 "$TSAN_REPORTS"
  export TSAN_OPTIONS="halt_on_error=0:second_deadlock_stack=1:log_path=$TSAN_REPORTS/report"
  export CKPTFS_BIN="$TSAN_BUILD/cli/ckptfs"
  # Test ids are relative to tests/integration, where pytest.ini is.
  # shellcheck disable=SC2086 # PYTEST_ARGS is a list of words on purpose.
  run_pytest "integration (thread sanitizer)" "$VENV" tests/integration \
    --ignore=tests/integration/test_package.py \
    --deselect=test_mount.py::test_daemon_memory_does_not_grow_with_the_bytes_read \
    --deselect=test_faults.py::test_a_frozen_node_costs_one_short_stall_then_is_passed_over \
    --deselect=test_faults.py::test_a_measured_node_that_stops_answering_is_left_well_before_the_stall_timeout \
    ${PYTEST_ARGS:-}
  if compgen -G "$TSAN_REPORTS/report.*" >/dev/null; then
    cat "$TSAN_REPORTS"/report.*
    echo "test.sh: ThreadSanitizer reported in the integration tests (above)" >&2
    status=1
  fi
  rm -rf "$TSAN_REPORTS"
fi
exit $status
