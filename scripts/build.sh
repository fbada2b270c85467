#!/usr/bin/env bash
# Configures and builds ckptfs (RelWithDebInfo) into ${CKPTFS_BUILD:-<repo>/build}.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${CKPTFS_BUILD:-$REPO/build}"

cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$BUILD" -j"$(nproc)"
