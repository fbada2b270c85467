#!/usr/bin/env bash
# Installs everything ckptfs needs to build and test on Debian 12, as root, and creates the
# Python virtual environment for the integration tests at ${CKPTFS_VENV:-<repo>/.venv}.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CKPTFS_VENV:-$REPO/.venv}"

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps.sh: run as root (it uses apt-get)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
# dpkg-dev and file: the .deb target (cpack runs dpkg-shlibdeps on the files `file` says are ELF);
# lintian: the package test checks the .deb with it.
apt-get install -y --no-install-recommends \
  build-essential cmake pkg-config dpkg-dev file \
  libfuse3-dev fuse3 libcurl4-openssl-dev libsqlite3-dev libssl-dev \
  googletest libgtest-dev libcli11-dev nlohmann-json3-dev \
  nginx-light sqlite3 curl ca-certificates openssl lintian \
  python3 python3-venv clang-format shellcheck psmisc procps util-linux diffutils iproute2

# The tests start their own nginx processes on free ports; a packaged nginx service that apt may
# have started is not used, so stop it (best effort: there may be no init system at all).
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now nginx >/dev/null 2>&1 || true
fi
if command -v service >/dev/null 2>&1; then
  service nginx stop >/dev/null 2>&1 || true
fi

/usr/bin/python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q \
  -r "$REPO/tests/integration/requirements.txt"
bash "$REPO/scripts/install-loader-deps.sh"
echo "install-deps: done (venv at $VENV)"
