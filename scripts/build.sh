#!/usr/bin/env bash
# Installs missing packages, configures and builds. BUILD_DIR (default build/).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install_deps.sh
BUILD_DIR=${BUILD_DIR:-build}
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
# Two jobs per core is too much memory for torch translation units on small
# machines; the default is the core count.
cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}"
