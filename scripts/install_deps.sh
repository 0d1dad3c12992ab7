#!/usr/bin/env bash
# Installs every Debian package the project needs to build, test and run.
# Idempotent: packages already installed are skipped; apt-get update runs only
# when something is missing.
#
# INTERNVL_DEPS=build: only what compiling the whole tree needs (no node/npm
# for the manifest test, no redis-server for the integration tests): the
# Dockerfile's build stage.
set -euo pipefail
DEPS=${INTERNVL_DEPS:-all}
case "$DEPS" in
  all | build) ;;
  *) echo "install_deps: INTERNVL_DEPS must be all or build" >&2; exit 2 ;;
esac

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev libopenblas0-pthread libopenblas0-openmp libgloo-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev libjpeg62-turbo-dev
  libavformat-dev libavcodec-dev libswscale-dev libavutil-dev
  libhiredis-dev
  libsentencepiece-dev libpcre2-dev libicu-dev nlohmann-json3-dev
  libcurl4-openssl-dev libssl-dev libcpp-httplib-dev curl
)

missing=()
if [[ $DEPS == all ]]; then
  PACKAGES+=(redis-server)
  # The manifest test (tests/deploy) needs node and npm; a machine may already
  # have them from another source (e.g. a nodejs build that bundles npm), so
  # they are checked by command, not by package.
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
fi
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install_deps: all packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "install_deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
