#!/usr/bin/env bash
# Builds the unit and integration tests under ASan + UBSan (GCC, a build tree
# of its own: default build-asan/) and runs them with ctest. Any
# sanitizer report fails the run, including one from a service process that an
# integration test spawned (reports go to $BUILD_DIR/sanitizer-logs/).
#
#   scripts/sanitize.sh [CTEST_ARGS...]
#
# Environment:
#   SANITIZE_TESTS  the tests to build and run (names), or
#   SANITIZE_SET    ci (default): every test that does not link libtorch (the
#                   parsers, tokenizers, image/video decode, tensor chunks,
#                   gRPC plumbing, metrics, TLS, Redis cache, scheduler, hub,
#                   training data), which fits CI's time; full: also the
#                   model, engine, service and gateway tests (a libtorch
#                   build under ASan: about 40 minutes on 2 cores)
#   JOBS, TEST_JOBS build and ctest parallelism (default nproc, 2)
#   BUILD_DIR       the build tree (default build-asan)
#
# GCC rather than clang: clang in C++20 mode cannot compile libtorch 1.13's
# headers against libstdc++ 12 (c10::IValue incomplete in ATen/core/List.h).
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS=${JOBS:-$(nproc)}
BUILD_DIR=${BUILD_DIR:-build-asan}
CI_TESTS="safetensors_test config_test model_path_test hub_digest_test hub_download_test engine_scheduler_test
  preprocess_decode_test preprocess_resize_test preprocess_tiling_test preprocess_runtime_test preprocess_parity_test
  tokenizer_utf8_test tokenizer_chat_template_test tokenizer_test tokenizer_parity_test video_test video_parity_test
  services_common_test services_cache_test trainer_service_unit_test train_data_test"
FULL_TESTS="$CI_TESTS nn_weights_test engine_llm_test llm_sampler_test llm_causal_lm_test llm_gemv_test llm_paged_test
  vision_parity_test llm_parity_test chat_parity_test services_test gateway_test security_test serving_test
  fault_load_test cli_hostile_test llm_quant_test quant_parity_test"
case "${SANITIZE_SET:-ci}" in
  ci) DEFAULT_TESTS=$CI_TESTS ;;
  full) DEFAULT_TESTS=$FULL_TESTS ;;
  *) echo "sanitize: SANITIZE_SET must be ci or full" >&2; exit 2 ;;
esac
read -r -a TESTS <<<"$(echo ${SANITIZE_TESTS:-$DEFAULT_TESTS})"

./scripts/install_deps.sh
# As scripts/build.sh: ccache across checkouts.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
export CCACHE_SLOPPINESS="pch_defines,time_macros,include_file_mtime,include_file_ctime"
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  # A build type of its own: only these flags (-O1 as ASan advises; asserts on).
  # -Wno-maybe-uninitialized: GCC at -O1 with sanitizers flags libtorch headers.
  flags="-O1 -g1 -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
  flags+=" -Wno-maybe-uninitialized"
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Sanitize -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
    -DINTERNVL_BUILD_BENCH=OFF
fi
build_start=$SECONDS
cmake --build "$BUILD_DIR" -j "$JOBS" --target "${TESTS[@]}"
echo "sanitize: build took $((SECONDS - build_start)) s"

logs="$PWD/$BUILD_DIR/sanitizer-logs"
rm -rf "$logs"
mkdir -p "$logs"
# Every process (test binaries and the services they start) writes its
# reports to $logs/<name>.<pid>; UB is fatal (-fno-sanitize-recover).
# Leak checking is off: libtorch, gRPC and protobuf keep process-lifetime
# singletons that LSan would report at every exit.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:symbolize=1:log_path=$logs/asan:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan:${UBSAN_OPTIONS:-}"

regex="^($(IFS='|'; echo "${TESTS[*]}"))\$"
rc=0
test_start=$SECONDS
(cd "$BUILD_DIR" && ctest --output-on-failure -j "${TEST_JOBS:-2}" --timeout 1500 -R "$regex" "$@") || rc=$?
echo "sanitize: ${#TESTS[@]} tests ran in $((SECONDS - test_start)) s under ASan + UBSan"
if compgen -G "$logs/*" >/dev/null; then
  echo "sanitize: sanitizer reports:" >&2
  for f in "$logs"/*; do
    echo "--- $f" >&2
    head -40 "$f" >&2
  done
  rc=1
fi
exit $rc
