#!/usr/bin/env bash
# Prepares .gpudeps/ (git-ignored) for scripts/gpu_check.sh on a GPU machine
# that has a CUDA libtorch (Python's torch) but no apt and no network. Run it
# here, on Debian 12 with apt:
#   .gpudeps/debs/      the Debian packages the subset build
#                       (INTERNVL_WITH_SERVICES=OFF, INTERNVL_WITH_MEDIA=OFF)
#                       needs that a bare CUDA image lacks, with their runtime
#                       libraries; repacked without docs, man pages and the
#                       static libraries nothing links (gtest/gmock kept)
#   .gpudeps/fixtures/  the reference fixtures the GPU tests read (PNGs only:
#                       gpu_check.sh makes the PPM sidecars there)
# gpu_check.sh extracts the packages with `dpkg -x` into a private prefix.
# The device tool carries at most 64 MiB with the repository: the total is
# printed and checked.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.gpudeps
FIXTURES=${INTERNVL_FIXTURES:-../shared/fixtures}
MAX_DEBS_MB=40            # the packages
MAX_CARRY=$((64 << 20))   # the device tool's limit: repository + carried paths

PACKAGES=(
  # cmake/deps.cmake
  libabsl-dev libabsl20220623 nlohmann-json3-dev libgtest-dev libgmock-dev
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
  libsentencepiece-dev libsentencepiece0 libprotobuf-lite32
  pkgconf pkgconf-bin libpkgconf3
  # core/tokenizer (NFC normalisation)
  libicu-dev libicu72
  # core/engine (block hashes), core/hub (digests)
  libssl-dev libssl3
  # core/hub: libcurl and the libraries it loads (Debian 12 sonames; glibc,
  # libstdc++, zlib and zstd are taken from the machine)
  libcurl4-openssl-dev libcurl4 libbrotli1 libnghttp2-14 libpsl5 librtmp1 libssh2-1 libidn2-0 libunistring2
  libldap-2.5-0 libsasl2-2 libsasl2-modules-db libdb5.3 libgssapi-krb5-2 libkrb5-3 libk5crypto3
  libkrb5support0 libcom-err2 libkeyutils1 libgnutls30 libhogweed6 libnettle8 libgmp10 libp11-kit0
  libtasn1-6 libffi8
)

if [[ ! -d $FIXTURES ]]; then
  echo "gpu_deps: fixtures not found at $FIXTURES (set INTERNVL_FIXTURES)" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/debs"
# As root, apt's _apt sandbox user cannot write to the temporary folder.
apt_opts=(-qq)
if [[ $(id -u) -eq 0 ]]; then apt_opts+=(-o APT::Sandbox::User=root); fi
download() { (cd "$tmp/debs" && apt-get download "${apt_opts[@]}" "${PACKAGES[@]}"); }
if ! download; then
  echo "gpu_deps: apt-get download failed; refreshing the package lists" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  download
fi
orig=$(du -sb "$tmp/debs" | cut -f1)

rm -rf "$OUT"
mkdir -p "$OUT/debs"
for deb in "$tmp"/debs/*.deb; do
  root="$tmp/root"
  rm -rf "$root"
  dpkg-deb -R "$deb" "$root"
  rm -rf "$root"/usr/share/{doc,man,info,lintian,bug}
  find "$root" -name '*.a' ! -name 'libgtest*.a' ! -name 'libgmock*.a' -delete
  rm -f "$root/DEBIAN/md5sums"  # no longer matches
  dpkg-deb --root-owner-group -Zxz -z9 -b "$root" "$OUT/debs/$(basename "$deb")" >/dev/null
done

# Fixtures: everything the GPU tests read (tiny models, inputs, bf16,
# minimonkey, training); not the tokenizer-parity data or the video (no
# FFmpeg in the subset). Tokenizers: none (no GPU test reads
# INTERNVL_TOKENIZERS).
mkdir -p "$OUT/fixtures"
tar -C "$FIXTURES" --exclude=./tokenization --exclude=./inputs/video.mp4 -cf - . | tar -C "$OUT/fixtures" -xf -
chmod -R u+w "$OUT/fixtures"

debs=$(du -sb "$OUT/debs" | cut -f1)
fixtures=$(du -sb "$OUT/fixtures" | cut -f1)
repo=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
total=$((debs + fixtures))
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
echo "gpu_deps: $(ls "$OUT/debs" | wc -l) packages, $(mb "$debs") (as downloaded $(mb "$orig"))"
echo "gpu_deps: fixtures $(mb "$fixtures")"
echo "gpu_deps: .gpudeps total $(mb "$total"); with the repository ($(mb "$repo")) $(mb $((total + repo))) of the 64 MiB carry"
if ((debs > MAX_DEBS_MB * 1000 * 1000)); then
  echo "gpu_deps: the packages are over $MAX_DEBS_MB MB" >&2
  exit 1
fi
if ((total + repo > MAX_CARRY)); then
  echo "gpu_deps: repository + .gpudeps are over the 64 MiB the device tool carries" >&2
  exit 1
fi
