#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with Debian's clang (ASan + UBSan) in
# their own build tree and runs each for a bounded time on a copy of its seed
# corpus (fuzz/corpus/<target>/; new inputs stay in the copy, never in the repo).
#
#   scripts/fuzz.sh [TARGET...]      # every target when none is named
#
# Environment:
#   FUZZ_SECONDS     seconds per target (default 20)
#   JOBS             build jobs (default: nproc)
#   BUILD_DIR        the build tree (default build-fuzz)
#   FUZZ_BUILD_ONLY  1: configure and build, run nothing
#   FUZZ_ARGS        extra libFuzzer flags for every run (e.g. -jobs=2)
#
# Prints one line per target with libFuzzer's final stats (executions, exec/s,
# new units, peak RSS) and exits non-zero when the build fails or any target
# finds a crash, leak, timeout or OOM. Reproducers (crash-*, leak-*,
# timeout-*, oom-*) are kept in $BUILD_DIR/artifacts/<target>/ and each run's
# log in $BUILD_DIR/runs/<target>/log. To replay one:
#   build-fuzz/fuzz/<target> build-fuzz/artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-20}
JOBS=${JOBS:-$(nproc)}
BUILD_DIR=${BUILD_DIR:-build-fuzz}
ALL_TARGETS=(safetensors_fuzzer tokenizer_fuzzer tokenizer_files_fuzzer image_fuzzer video_fuzzer jsonl_fuzzer
             tensor_chunks_fuzzer)
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=("${ALL_TARGETS[@]}")

# The project's packages, plus clang and its libFuzzer / sanitizer runtimes.
./scripts/install_deps.sh
if ! command -v clang++ >/dev/null 2>&1 || ! dpkg-query -W -f='${Status}' libclang-rt-dev 2>/dev/null | grep -q "install ok installed"; then
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  echo "fuzz: installing clang libclang-rt-dev"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang libclang-rt-dev
fi

# As scripts/build.sh: ccache across checkouts (the top-level CMakeLists.txt
# uses ccache when it is installed).
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
export CCACHE_SLOPPINESS="pch_defines,time_macros,include_file_mtime,include_file_ctime"

# Project code: instrumented for libFuzzer's coverage, ASan and UBSan (UB is
# fatal). fuzz/CMakeLists.txt adds -fsanitize=fuzzer to the fuzz executables.
SANITIZE="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
if [[ -f "$BUILD_DIR/CMakeCache.txt" ]] && ! grep -q "^CMAKE_CXX_COMPILER:.*clang++" "$BUILD_DIR/CMakeCache.txt"; then
  echo "fuzz: $BUILD_DIR was configured with another compiler; remove it first" >&2
  exit 2
fi
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_C_FLAGS="$SANITIZE" -DCMAKE_CXX_FLAGS="$SANITIZE" \
    -DINTERNVL_BUILD_FUZZERS=ON -DINTERNVL_BUILD_TESTS=OFF -DINTERNVL_BUILD_BENCH=OFF
fi
# Only the fuzz executables and the libraries they link (not `all`).
build_start=$SECONDS
cmake --build "$BUILD_DIR" -j "$JOBS" --target "${TARGETS[@]}"
echo "fuzz: build took $((SECONDS - build_start)) s"
[[ "${FUZZ_BUILD_ONLY:-0}" == 1 ]] && exit 0

# Sanitizer reports: symbolized stacks; leaks checked at exit (LSan).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:symbolize=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

failed=()
summary=()
for t in "${TARGETS[@]}"; do
  exe="$BUILD_DIR/fuzz/$t"
  run="$BUILD_DIR/runs/$t"
  artifacts="$BUILD_DIR/artifacts/$t"
  rm -rf "$run"
  mkdir -p "$run/corpus" "$run/tmp" "$artifacts"
  if [[ -d "fuzz/corpus/$t" ]]; then cp -r "fuzz/corpus/$t/." "$run/corpus/"; fi
  echo "fuzz: $t for ${FUZZ_SECONDS} s ($(ls "$run/corpus" | wc -l) seeds)"
  start=$SECONDS
  rc=0
  # TMPDIR: the targets' scratch files stay under the run folder.
  # shellcheck disable=SC2086
  TMPDIR="$PWD/$run/tmp" "$exe" -max_total_time="$FUZZ_SECONDS" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$PWD/$artifacts/" ${FUZZ_ARGS:-} "$run/corpus" >"$run/log" 2>&1 || rc=$?
  elapsed=$((SECONDS - start))
  rm -rf "$run/tmp"
  final_stat() { sed -n "s/^stat::$1: *//p" "$run/log" | tail -1; }
  execs=$(final_stat number_of_executed_units)
  line=$(printf '%-24s %10s execs in %4d s  %6s exec/s  %5s new units  peak %5s MB' "$t" "${execs:-?}" "$elapsed" \
    "$(final_stat average_exec_per_sec)" "$(final_stat new_units_added)" "$(final_stat peak_rss_mb)")
  if ((rc != 0)); then
    failed+=("$t")
    line="$line  FAILED (exit $rc, see $run/log)"
    grep -E "^==[0-9]+==ERROR|runtime error|SUMMARY|Test unit written" "$run/log" | head -5 || true
  fi
  echo "stat::number_of_executed_units $t ${execs:-0}"
  summary+=("$line")
done

echo
echo "fuzz: summary (FUZZ_SECONDS=$FUZZ_SECONDS)"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "fuzz: FAILED: ${failed[*]} (reproducers in $BUILD_DIR/artifacts/)" >&2
  exit 1
fi
echo "fuzz: all ${#TARGETS[@]} targets ran clean"
