#!/usr/bin/env bash
# Installs missing packages, configures and builds. BUILD_DIR (default build/),
# BUILD_TYPE (default RelWithDebInfo; the Dockerfile builds Release with this
# script, so both use the same CMake settings), JOBS (default nproc).
# Arguments go to `cmake --build` (e.g. --target internvl).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install_deps.sh
BUILD_DIR=${BUILD_DIR:-build}
# ccache across checkouts in different folders (CI clones elsewhere): paths
# relative to the repo, cwd not hashed, PCH-friendly sloppiness.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
export CCACHE_SLOPPINESS="pch_defines,time_macros,include_file_mtime,include_file_ctime"
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}"
elif [[ -n "${BUILD_TYPE:-}" ]] && ! grep -qx "CMAKE_BUILD_TYPE:STRING=$BUILD_TYPE" "$BUILD_DIR/CMakeCache.txt"; then
  echo "build: $BUILD_DIR was configured with another build type than $BUILD_TYPE; use another BUILD_DIR" >&2
  exit 2
fi
# Two jobs per core is too much memory for torch translation units on small
# machines; the default is the core count.
cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}" "$@"
