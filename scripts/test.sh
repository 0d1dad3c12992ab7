#!/usr/bin/env bash
# The test command: installs what is missing, configures, builds, runs every
# test (unit, parity, integration, faults and load). Parity tests read
# ../shared/fixtures (or $INTERNVL_FIXTURES) and skip with a message where it
# is absent. Then the hardening stages, each in a build tree of its own:
#   scripts/fuzz.sh      libFuzzer targets, FUZZ_SECONDS (default 15) each
#   scripts/sanitize.sh  the libtorch-free tests under ASan + UBSan
# INTERNVL_HARDENING=0 skips both (a quick local run); arguments go to the
# main ctest run (e.g. -R gateway). The container image test (label image:
# deploy/build_image.sh, a cold image build of 30-60 min on 2 cores, also the
# Release -Werror build of the whole tree) runs only with INTERNVL_IMAGE_TEST=1
# (or: cd build && ctest -L image).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
./scripts/build.sh
image=(-LE image)
if [[ ${INTERNVL_IMAGE_TEST:-0} == 1 ]]; then image=(); fi
(
  cd "${BUILD_DIR:-build}"
  ctest --output-on-failure -j "${TEST_JOBS:-2}" --timeout 1200 "${image[@]}" "$@"
)
echo "test: build and tests took $((SECONDS - start)) s"
if [[ "${INTERNVL_HARDENING:-1}" != 0 ]]; then
  # Their own BUILD_DIR defaults (build-fuzz, build-asan), not the main one.
  stage=$SECONDS
  env -u BUILD_DIR FUZZ_SECONDS="${FUZZ_SECONDS:-15}" ./scripts/fuzz.sh
  echo "test: fuzzing took $((SECONDS - stage)) s"
  stage=$SECONDS
  env -u BUILD_DIR ./scripts/sanitize.sh
  echo "test: sanitizer tests took $((SECONDS - stage)) s"
fi
echo "test: all done in $((SECONDS - start)) s"
