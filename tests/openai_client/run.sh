#!/usr/bin/env bash
# The official openai npm client against a running server (called by the
# CTest openai_test, which starts the servers and writes the gRPC answers).
# usage: tests/openai_client/run.sh BASE_URL TOKEN EXPECTED_JSON IMAGE_FILE
# Installs the pinned client from package-lock.json with `npm ci` (reuses
# node_modules when it is current).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v node >/dev/null && command -v npm >/dev/null || { echo "run.sh: node and npm are needed (apt-get install nodejs npm)" >&2; exit 77; }
cd "$here"
if ! cmp -s package-lock.json node_modules/.internvl-lock-stamp 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  cp package-lock.json node_modules/.internvl-lock-stamp
fi
exec node check.mjs "$@"
