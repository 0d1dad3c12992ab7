#!/usr/bin/env bash
# The test command: installs what is missing, configures, builds, runs every
# test (unit, parity, integration). Parity tests read ../shared/fixtures (or
# $INTERNVL_FIXTURES) and skip with a message where it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
BUILD_DIR=${BUILD_DIR:-build}
cd "$BUILD_DIR"
ctest --output-on-failure -j "${TEST_JOBS:-2}" --timeout 1200 "$@"
