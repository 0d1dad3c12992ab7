#!/usr/bin/env bash
# The GPU check of issue #16 in one command, for a GPU machine with a CUDA
# libtorch (Python's torch) and no apt or network. With the device tool:
#   scripts/gpu_deps.sh                      (here, once: fills .gpudeps/)
#   run  command: bash scripts/gpu_check.sh   carry: [".gpudeps"]
# Steps (each one reported; a failure does not stop the later steps that can
# still run, and the exit status is 0 only when every step passed):
#   info       what the machine has (compilers, CUDA, card, torch, CPU)
#   deps       .gpudeps/debs extracted with dpkg -x into $GPU_DEPS (never /),
#              .gpudeps/fixtures copied there with PPM sidecars of its PNGs
#              (scripts/fixture_ppm.py)
#   configure  the subset: INTERNVL_WITH_SERVICES=OFF, INTERNVL_WITH_MEDIA=OFF,
#              INTERNVL_WERROR=OFF, Release, against torch's CMake package
#   build-1/2  only the targets below, device tests and bench first (ninja -k
#              0: a target that fails does not stop the others)
#   <test>     each test binary with INTERNVL_TEST_DEVICE=cuda and a timeout
#   bench      bench_device on InternVL2-1B and InternVL2_5-8B shapes, bf16
# Everything is logged to $OUT/gpu_check.log ($OUT: the device tool's output
# folder; ./gpu_check.log without it); bench_device writes
# $OUT/gpu_bench.json. The whole run is budgeted to GPU_CHECK_BUDGET_S
# seconds (default 540, under the tool's 600 s per command).
#
# Overrides: GPU_CHECK_DEVICE (cuda), TORCH_PREFIX (torch's cmake prefix),
# GPU_CHECK_STOP_AFTER (info, deps, configure or build: stop after that step,
# e.g. configure for a dry run without a GPU), GPU_DEPS (/tmp/gpudeps),
# BUILD_DIR (build-gpu), JOBS (nproc), GPU_CHECK_TEST_TIMEOUT_S (90).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
RESULTS=${OUT:-$ROOT}
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_check.log
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

BUDGET=${GPU_CHECK_BUDGET_S:-540}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
GPU_DEPS=${GPU_DEPS:-/tmp/gpudeps}
BUILD_DIR=${BUILD_DIR:-$ROOT/build-gpu}
JOBS=${JOBS:-$(nproc)}
FIXTURES=$GPU_DEPS/fixtures  # a copy of .gpudeps/fixtures, with the PPM sidecars
STOP_AFTER=${GPU_CHECK_STOP_AFTER:-}
TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT_S:-90}
BENCH_RESERVE=${GPU_CHECK_BENCH_RESERVE_S:-120}  # kept for the bench while tests run
# Built in two rounds, so that a build cut short by the budget still leaves
# the device tests and the benchmark to run.
FIRST=(nn_device_test llm_causal_lm_test llm_paged_test engine_llm_test llm_parity_test vision_parity_test
       bench_device)
SECOND=(chat_parity_test minimonkey_parity_test quant_parity_test train_parity_test internvl)
TESTS=(nn_device_test llm_causal_lm_test llm_paged_test engine_llm_test llm_parity_test vision_parity_test
       chat_parity_test minimonkey_parity_test quant_parity_test train_parity_test)
ARCH_LIB=usr/lib/x86_64-linux-gnu

declare -a SUMMARY=()
FAILED=0
left() { echo $((BUDGET - SECONDS)); }
record() {  # record NAME RC [NOTE]
  local status=PASS
  if [[ $2 -ne 0 ]]; then status="FAIL (rc $2)"; FAILED=1; fi
  [[ $2 -eq 124 ]] && status="FAIL (timed out)"
  SUMMARY+=("$(printf '%-24s %s %s' "$1" "$status" "${3:-}")")
  echo "== $1: $status ${3:-} [${SECONDS}s elapsed]"
}
skip() {
  SUMMARY+=("$(printf '%-24s SKIPPED %s' "$1" "$2")")
  FAILED=1
  echo "== $1: SKIPPED $2"
}
banner() { echo; echo "======== $1 [${SECONDS}s elapsed, $(left)s left]"; }
summary() {
  echo
  echo "======== summary (${SECONDS}s)"
  echo "card: ${CARD:-unknown}"
  printf '%s\n' "${SUMMARY[@]}"
  [[ $FAILED -eq 0 ]] && echo "gpu_check: all steps passed" || echo "gpu_check: some steps failed or were skipped"
  exec >&- 2>&-
  wait "$TEE_PID" 2>/dev/null  # the log complete before the tool collects $OUT
  exit "$FAILED"
}
stop_after() { [[ $STOP_AFTER == "$1" ]] && summary; }

# --- info ---------------------------------------------------------------------
banner info
uname -a
for tool in gcc g++ cmake; do command -v $tool >/dev/null && $tool --version | head -1 || echo "$tool: missing"; done
command -v ninja >/dev/null && echo "ninja $(ninja --version)" || echo "ninja: missing"
[[ -d /usr/local/cuda/bin ]] && export PATH=$PATH:/usr/local/cuda/bin
command -v nvcc >/dev/null && nvcc --version | tail -2 || echo "nvcc: missing"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi -L
  nvidia-smi --query-gpu=name,memory.total,memory.used,memory.free,driver_version --format=csv
  CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
else
  echo "nvidia-smi: missing"
fi
python3 - <<'EOF' || echo "python3 torch: not importable"
import os, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cuda available", torch.cuda.is_available(),
      "devices", torch.cuda.device_count())
print("cmake_prefix_path", torch.utils.cmake_prefix_path)
v = os.path.join(os.path.dirname(torch.__file__), "include/torch/csrc/api/include/torch/version.h")
print("header", [l.strip() for l in open(v) if "define TORCH_VERSION " in l] if os.path.exists(v) else "no version.h")
EOF
lscpu | grep -E '^(Model name|CPU\(s\)|Socket|Thread)' || true
echo "cpu flags: $(grep -o -w -E 'amx[a-z0-9_]*|avx512[a-z0-9_]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
free -g | head -2
record info 0
stop_after info

# --- deps -----------------------------------------------------------------------
banner deps
rc=0
rm -rf "$GPU_DEPS" && mkdir -p "$GPU_DEPS"
if ! ls "$ROOT"/.gpudeps/debs/*.deb >/dev/null 2>&1; then
  echo "no .gpudeps/debs: run scripts/gpu_deps.sh here first and carry .gpudeps"
  rc=1
else
  for deb in "$ROOT"/.gpudeps/debs/*.deb; do dpkg -x "$deb" "$GPU_DEPS" || rc=1; done
  echo "$(ls "$ROOT"/.gpudeps/debs/*.deb | wc -l) packages extracted into $GPU_DEPS"
  # The .pc files name /usr: point them at the private prefix.
  find "$GPU_DEPS" -name '*.pc' -exec sed -i -E \
    -e "s#(^|[=[:space:]]|-I|-L)/usr(/|[[:space:]]*\$)#\1$GPU_DEPS/usr\2#g" {} +
  # pkgconf itself needs its library from the prefix.
  mkdir -p "$GPU_DEPS/bin"
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$GPU_DEPS/$ARCH_LIB" "$GPU_DEPS/usr/bin/pkgconf" \
    >"$GPU_DEPS/bin/pkg-config"
  chmod +x "$GPU_DEPS/bin/pkg-config"
  export PKG_CONFIG_PATH=$GPU_DEPS/$ARCH_LIB/pkgconfig:$GPU_DEPS/usr/share/pkgconfig
  # Debian's multiarch headers (openssl/configuration.h, curl/): gcc's own
  # multiarch directory is the machine's /usr/include/x86_64-linux-gnu.
  export CPATH=$GPU_DEPS/usr/include/x86_64-linux-gnu${CPATH:+:$CPATH}
  "$GPU_DEPS/bin/pkg-config" --cflags --libs libpcre2-8 sentencepiece icu-uc || rc=1
fi
if [[ -d $ROOT/.gpudeps/fixtures ]]; then
  rm -rf "$FIXTURES" && cp -r "$ROOT/.gpudeps/fixtures" "$FIXTURES" && chmod -R u+w "$FIXTURES"
  python3 scripts/fixture_ppm.py "$FIXTURES" --rewrite-jsonl || rc=1
else
  echo "no .gpudeps/fixtures: the tests will skip or fail"
  rc=1
fi
record deps $rc
stop_after deps

# --- configure ------------------------------------------------------------------
banner configure
TORCH_PREFIX=${TORCH_PREFIX:-$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)' 2>/dev/null)}
echo "torch cmake prefix: ${TORCH_PREFIX:-none}"
cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja \
  -DINTERNVL_WITH_SERVICES=OFF -DINTERNVL_WITH_MEDIA=OFF -DINTERNVL_WERROR=OFF -DCMAKE_BUILD_TYPE=Release \
  -DINTERNVL_BUILD_BENCH=ON -DINTERNVL_BUILD_TESTS=ON \
  "-DCMAKE_PREFIX_PATH=$TORCH_PREFIX;$GPU_DEPS/usr" \
  -DPKG_CONFIG_EXECUTABLE="$GPU_DEPS/bin/pkg-config" \
  "-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,$GPU_DEPS/$ARCH_LIB" \
  "-DCMAKE_SHARED_LINKER_FLAGS=-Wl,-rpath-link,$GPU_DEPS/$ARCH_LIB" \
  "-DCMAKE_MODULE_LINKER_FLAGS=-Wl,-rpath-link,$GPU_DEPS/$ARCH_LIB"
rc=$?
record configure $rc
stop_after configure
if [[ $rc -ne 0 ]]; then
  for t in build "${TESTS[@]}" bench; do skip "$t" "(configure failed)"; done
  summary
fi

# --- build ----------------------------------------------------------------------
build() {  # build NAME SECONDS_KEPT_FOR_LATER TARGET...
  local name=$1 keep=$2 present=() t
  shift 2
  banner "$name"
  for t in "$@"; do
    if ninja -C "$BUILD_DIR" -t query "$t" >/dev/null 2>&1; then present+=("$t"); else echo "target $t: not in this build"; fi
  done
  if ((${#present[@]} == 0)); then skip "$name" "(none of its targets in this build)"; return; fi
  local limit=$(($(left) - keep))
  ((limit < 60)) && limit=60
  timeout "$limit" ninja -C "$BUILD_DIR" -k 0 -j "$JOBS" "${present[@]}"
  record "$name" $? "(${#present[@]} of $# targets)"
}
build build-1 240 "${FIRST[@]}"
build build-2 200 "${SECOND[@]}"
stop_after build

# --- tests ----------------------------------------------------------------------
# Debian's libraries (libcurl's own dependencies included) for the binaries.
export LD_LIBRARY_PATH=$GPU_DEPS/$ARCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export INTERNVL_TEST_DEVICE=$DEVICE INTERNVL_FIXTURES=$FIXTURES INTERNVL_SOURCE_DIR=$ROOT
bin_of() { find "$BUILD_DIR" -type f -perm -u+x -name "$1" -not -path '*/CMakeFiles/*' | head -1; }
for t in "${TESTS[@]}"; do
  banner "$t"
  bin=$(bin_of "$t")
  if [[ -z $bin ]]; then skip "$t" "(not built)"; continue; fi
  limit=$(($(left) - BENCH_RESERVE))
  ((limit > TEST_TIMEOUT)) && limit=$TEST_TIMEOUT
  if ((limit < 10)); then skip "$t" "(out of time)"; continue; fi
  start=$SECONDS
  timeout "$limit" "$bin" --gtest_color=no
  record "$t" $? "($((SECONDS - start))s)"
done

# --- bench ----------------------------------------------------------------------
banner bench
bin=$(bin_of bench_device)
limit=$(($(left) - 10))
if [[ -z $bin ]]; then
  skip bench "(bench_device not built)"
elif ((limit < 30)); then
  skip bench "(out of time)"
else
  start=$SECONDS
  timeout "$limit" "$bin" --device "$DEVICE" --like InternVL2-1B,InternVL2_5-8B --dtype bf16 \
    --json "$RESULTS/gpu_bench.json"
  record bench $? "($((SECONDS - start))s, $RESULTS/gpu_bench.json)"
fi
summary
