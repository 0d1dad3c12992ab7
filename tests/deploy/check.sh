#!/usr/bin/env bash
# Offline validation of deploy/k8s (CTest: deploy_manifests_test, label deploy).
# usage: tests/deploy/check.sh BUILD_DIR
# Needs node (>= 18) and npm; installs the pinned validator packages from
# package-lock.json with `npm ci` (reuses node_modules when it is current).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=$(cd "${1:?usage: check.sh BUILD_DIR}" && pwd)
command -v node >/dev/null && command -v npm >/dev/null || { echo "check.sh: node and npm are needed (apt-get install nodejs npm)" >&2; exit 1; }
cd "$here"
if ! cmp -s package-lock.json node_modules/.internvl-lock-stamp 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  cp package-lock.json node_modules/.internvl-lock-stamp
fi
exec node check.mjs "$repo" "$build"
