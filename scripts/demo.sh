#!/usr/bin/env bash
# The README's demo: builds the project, writes a random-weight checkpoint
# with InternVL2-1B's real architecture (its answer is noise, its cost is the
# real model's), and asks it about an image. Runs on a fresh Debian 12 machine
# with nothing but this repository.
#
#   scripts/demo.sh [IMAGE]     (default examples/demo.jpg)
#   DEMO_DIR=...   where the checkpoint goes (default ~/.cache/internvl-demo)
#   BUILD_DIR=...  build folder (default build/, as scripts/build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${1:-examples/demo.jpg}
BUILD_DIR=${BUILD_DIR:-build}
MODEL_DIR="${DEMO_DIR:-$HOME/.cache/internvl-demo}/InternVL2-1B-random"

BUILD_DIR="$BUILD_DIR" ./scripts/build.sh
INTERNVL="$BUILD_DIR/cli/internvl"

# make-model writes config.json last, so its presence marks a complete folder.
if [[ -f "$MODEL_DIR/config.json" ]]; then
  echo "demo: reusing $MODEL_DIR" >&2
else
  "$INTERNVL" make-model --like InternVL2-1B --out "$MODEL_DIR" --seed 0
fi

"$INTERNVL" chat --model "$MODEL_DIR" --image "$IMAGE" --max-num 12 \
  --text "Please describe the image shortly." --max-new-tokens 32 --json
