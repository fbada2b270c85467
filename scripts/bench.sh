#!/usr/bin/env bash
# Runs the ckptfs benchmark (bench/run.py) and writes docs/BENCHMARKS.md and docs/bench.png.
# As root on Debian 12: installs what the bench needs (build dependencies via install-deps.sh,
# then httpdirfs, rclone, nginx-light, fuse3, curl, linux-perf, iproute2 for the shaped-link
# stage, openssl for the https stage, git, and the venv <repo>/.venv-bench with
# bench/requirements.txt), builds the ckptfs binary, and runs the bench. Arguments go to
# bench/run.py, for example:
#
#   bash scripts/bench.sh            full sizes, 3 runs (about 25 minutes on 2 cores)
#   bash scripts/bench.sh --quick    small sizes, 1 run, to try the harness
#
# Environment: CKPTFS_BUILD (build dir, default <repo>/build), CKPTFS_BIN (default
# $CKPTFS_BUILD/cli/ckptfs), BENCH_VENV (default <repo>/.venv-bench), CKPTFS_SKIP_DEPS=1 and
# CKPTFS_SKIP_BUILD=1 on a prepared machine, BENCH_INSTALL_LOADERS=1 to also run
# scripts/install-loader-deps.sh (the TensorFlow/safetensors stage needs <repo>/.venv-loaders).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${CKPTFS_BUILD:-$REPO/build}"
VENV="${BENCH_VENV:-$REPO/.venv-bench}"
export CKPTFS_BIN="${CKPTFS_BIN:-$BUILD/cli/ckptfs}"

if [[ $(id -u) -ne 0 ]]; then
  echo "bench.sh: run as root (the bench drops the page cache and mounts FUSE filesystems)" >&2
  exit 1
fi

apt_install() {
  local try
  for try in 1 2 3 4 5 6; do
    if apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "$@"; then
      return 0
    fi
    echo "bench.sh: apt-get install failed (try $try); retrying in 20 s" >&2
    sleep 20
  done
  return 1
}

if [[ "${CKPTFS_SKIP_DEPS:-0}" != 1 ]]; then
  export DEBIAN_FRONTEND=noninteractive
  for try in 1 2 3; do  # apt may be busy with another job on a shared machine
    bash "$REPO/scripts/install-deps.sh" && break
    [[ $try -lt 3 ]] || exit 1
    echo "bench.sh: install-deps.sh failed (try $try); retrying in 30 s" >&2
    sleep 30
  done
  # git: the report names the commit it measured.
  apt_install httpdirfs rclone nginx-light fuse3 curl linux-perf iproute2 openssl git
  # The bench starts its own nginx processes; a packaged service is not used.
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now nginx >/dev/null 2>&1 || true
  fi
  if command -v service >/dev/null 2>&1; then
    service nginx stop >/dev/null 2>&1 || true
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    /usr/bin/python3 -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
    -r "$REPO/bench/requirements.txt"
  if [[ "${BENCH_INSTALL_LOADERS:-0}" == 1 && -f "$REPO/scripts/install-loader-deps.sh" ]]; then
    bash "$REPO/scripts/install-loader-deps.sh"
  fi
fi

if [[ "${CKPTFS_SKIP_BUILD:-0}" != 1 ]]; then
  cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo
  cmake --build "$BUILD" -j2 --target ckptfs
fi

if [[ ! -x "$CKPTFS_BIN" ]]; then
  echo "bench.sh: $CKPTFS_BIN not found; build ckptfs or set CKPTFS_BIN" >&2
  exit 1
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "bench.sh: $VENV not found; run without CKPTFS_SKIP_DEPS=1 once" >&2
  exit 1
fi

exec "$VENV/bin/python" "$REPO/bench/run.py" "$@"
