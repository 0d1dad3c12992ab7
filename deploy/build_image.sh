#!/usr/bin/env bash
# Builds the container image (Dockerfile) with docker or podman, prints its
# size and smoke-tests it:
#   - `internvl --help` as uid 10001;
#   - a chat (fp32, greedy) on a tiny fixture model mounted read-only, whose
#     token ids must equal the official Python implementation's
#     (../shared/fixtures/tiny-qwen2/expected.json, case A);
#   - `serve --all-in-one` in the background: /healthz on its metrics port
#     and an OpenAI-compatible chat (case D, pure text), both called from the
#     host through published ports, then a graceful stop (SIGTERM).
# When no registry is reachable (no debian:bookworm image locally and the pull
# fails), it makes the Debian base itself: debootstrap (minbase) from the
# configured apt mirror, imported as debian:bookworm and, with the docs,
# man pages and locales removed as in Docker's official slim image, as
# debian:bookworm-slim: the names the Dockerfile uses.
#
#   deploy/build_image.sh
#
# Environment:
#   ENGINE         docker or podman (default: the first that can run a container)
#   IMAGE          tag to build (default internvl:latest)
#   ENGINE_ARGS    extra flags for `build` and `run` (e.g. "--runtime runc");
#                  for podman the script finds what this machine needs when
#                  the defaults cannot start a container (see deploy/README.md)
#   BUILD_ARGS     extra flags for `build` only (e.g. "--build-arg JOBS=2")
#   MIRROR         Debian mirror for debootstrap (default: the one apt uses)
#   MAKE_BASE      1: make the base with debootstrap even if a pull might work
#   MAX_IMAGE_MB   the size limit (default 700)
#   FIXTURES       fixture folder (default $INTERNVL_FIXTURES or ../shared/fixtures)
#   SKIP_BUILD     1: smoke-test an existing IMAGE
# Exit status: 0 built and passed; 1 failed; 77 nothing can run here (no
# engine that can start a container, or no fixture model for the smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
IMAGE=${IMAGE:-internvl:latest}
MAX_IMAGE_MB=${MAX_IMAGE_MB:-700}
FIXTURES=${FIXTURES:-${INTERNVL_FIXTURES:-$ROOT/../shared/fixtures}}
read -r -a EXTRA <<<"${ENGINE_ARGS:-}"
read -r -a BUILD_EXTRA <<<"${BUILD_ARGS:-}"
SKIP=77
log() { echo "build_image: $*"; }
die() {
  echo "build_image: FAILED: $*" >&2
  exit 1
}
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

# --------------------------------------------------------------- engine
engine_works() {  # the engine can talk to its daemon / storage
  case $1 in
    podman) podman info >/dev/null 2>&1 ;;
    docker) docker info >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}
ENGINE=${ENGINE:-}
if [[ -z $ENGINE ]]; then
  for e in podman docker; do
    if command -v "$e" >/dev/null 2>&1 && engine_works "$e"; then
      ENGINE=$e
      break
    fi
  done
fi
if [[ -z $ENGINE ]]; then
  log "SKIP: no container engine can run here (podman: apt-get install podman; docker: a reachable daemon)"
  exit $SKIP
fi
if ! engine_works "$ENGINE"; then
  log "SKIP: ENGINE=$ENGINE cannot run here ($ENGINE info fails)"
  exit $SKIP
fi
log "engine: $ENGINE ($($ENGINE --version 2>/dev/null | head -1))"
if [[ $ENGINE == docker ]]; then export DOCKER_BUILDKIT=1; fi

image_exists() {
  if [[ $ENGINE == podman ]]; then podman image exists "$1"; else docker image inspect "$1" >/dev/null 2>&1; fi
}

# --------------------------------------------------------------- base image
# The apt mirror this machine uses for bookworm (deb822 .sources or
# one-line sources.list), for debootstrap and the base's sources.
configured_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    uri=$(awk 'BEGIN{RS=""} /Suites:[^\n]*bookworm([ \n]|$)/ && /Components:[^\n]*main/ {
                 if (match($0, /URIs: *[^ \n]+/)) {print substr($0, RSTART + 6, RLENGTH - 6); exit}}' "$f" | tr -d ' ')
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' "$f")
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  echo "http://deb.debian.org/debian"
}
configured_security_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    uri=$(awk 'BEGIN{RS=""} /Suites:[^\n]*bookworm-security/ {
                 if (match($0, /URIs: *[^ \n]+/)) {print substr($0, RSTART + 6, RLENGTH - 6); exit}}' "$f" | tr -d ' ')
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    uri=$(awk '$1 == "deb" && $3 == "bookworm-security" {print $2; exit}' "$f")
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  echo "http://deb.debian.org/debian-security"
}

make_base() {
  local mirror security work rootfs
  mirror=${MIRROR:-$(configured_mirror)}
  security=$(configured_security_mirror)
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends debootstrap
  fi
  work=$(mktemp -d /var/tmp/internvl-base.XXXXXX)
  # shellcheck disable=SC2064
  trap "$SUDO rm -rf '$work'" EXIT
  rootfs=$work/rootfs
  log "making debian:bookworm with debootstrap (minbase) from $mirror"
  local start=$SECONDS
  $SUDO debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; die "debootstrap from $mirror"; }
  # As Docker's official image: deb822 sources (release, updates, security),
  # no package caches or lists.
  $SUDO rm -f "$rootfs/etc/apt/sources.list"
  $SUDO tee "$rootfs/etc/apt/sources.list.d/debian.sources" >/dev/null <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  $SUDO find "$rootfs/var/cache/apt/archives" "$rootfs/var/lib/apt/lists" -type f -delete
  # Docker's apt settings (debuerreotype): no package caches, compressed
  # lists, no translations.
  local conf=$rootfs/etc/apt/apt.conf.d
  $SUDO tee "$conf/docker-clean" >/dev/null <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  echo 'Acquire::GzipIndexes "true";' | $SUDO tee "$conf/docker-gzip-indexes" >/dev/null
  echo 'Acquire::Languages "none";' | $SUDO tee "$conf/docker-no-languages" >/dev/null
  echo 'Apt::AutoRemove::SuggestsImportant "false";' | $SUDO tee "$conf/docker-autoremove-suggests" >/dev/null
  $SUDO rm -rf "$rootfs"/var/log/* "$rootfs/root/.bash_history" "$rootfs"/tmp/*
  local changes=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["bash"]')
  $SUDO tar -C "$rootfs" --numeric-owner -c . | $ENGINE import "${changes[@]}" - debian:bookworm >/dev/null
  # The slim variant (debuerreotype-slimify): no docs but the copyright files,
  # no man pages, info or locales, and dpkg told to keep it so.
  $SUDO mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
  $SUDO tee "$rootfs/etc/dpkg/dpkg.cfg.d/docker" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  $SUDO find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  $SUDO find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  $SUDO rm -rf "$rootfs"/usr/share/{groff,info,linda,locale,man}/* "$rootfs"/usr/share/lintian/overrides/*
  $SUDO tar -C "$rootfs" --numeric-owner -c . | $ENGINE import "${changes[@]}" - debian:bookworm-slim >/dev/null
  $SUDO rm -rf "$work"
  trap - EXIT
  log "base images made in $((SECONDS - start)) s"
}

ensure_base() {
  local need=()
  for b in debian:bookworm debian:bookworm-slim; do image_exists "$b" || need+=("$b"); done
  ((${#need[@]})) || { log "base images present: debian:bookworm, debian:bookworm-slim"; return; }
  if [[ ${MAKE_BASE:-0} != 1 ]]; then
    local ok=1
    for b in "${need[@]}"; do
      log "pulling $b"
      timeout 120 "$ENGINE" pull "$b" >/dev/null 2>&1 || { ok=0; break; }
    done
    ((ok)) && return
    log "no registry reachable for ${need[*]}"
  fi
  make_base
}

# --------------------------------------------------------------- run options
# Rootful podman in a VM or sandbox may be unable to start a container with its
# defaults: raising RLIMIT_NOFILE/NPROC above the host's hard limits is refused,
# and crun refuses a cgroup v1 host whose cgroup v2 hierarchy is half mounted
# ("cgroups in hybrid mode not supported"). Try the defaults, then the host's
# own limits, then runc with them; keep the first that starts a container.
find_run_args() {
  [[ -n ${ENGINE_ARGS:-} || $ENGINE != podman ]] && return
  local nofile nproc
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  [[ $nofile == unlimited ]] && nofile=1048576
  # A process-count limit above the kernel's pid_max is refused as well.
  local pid_max
  pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)
  if [[ $nproc == unlimited ]] || ((nproc > pid_max)); then nproc=$pid_max; fi
  local limits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
  local candidates=("" "${limits[*]}")
  command -v runc >/dev/null 2>&1 && candidates+=("--runtime runc ${limits[*]}")
  local c err
  for c in "${candidates[@]}"; do
    read -r -a try <<<"$c"
    if err=$(podman run --rm "${try[@]}" debian:bookworm-slim true 2>&1); then
      EXTRA=("${try[@]}")
      [[ -n $c ]] && log "podman needs: $c (see deploy/README.md)"
      return
    fi
    log "podman run ${c:-(defaults)}: ${err##*$'\n'}"
  done
  if ! command -v runc >/dev/null 2>&1; then
    log "SKIP: podman cannot start a container here; runc (apt-get install runc) may: see deploy/README.md"
  else
    log "SKIP: podman cannot start a container here: see deploy/README.md"
  fi
  exit $SKIP
}

# --------------------------------------------------------------- build
image_size_mb() {
  local bytes
  bytes=$($ENGINE image inspect --format '{{.Size}}' "$IMAGE")
  echo $(((bytes + 500000) / 1000000))
}

ensure_base
find_run_args
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "building $IMAGE (a cold build compiles the whole tree: 20-40 min on 2 cores)"
  start=$SECONDS
  pull=()
  [[ $ENGINE == podman ]] && pull=(--pull=never)
  $ENGINE build "${EXTRA[@]}" "${pull[@]}" "${BUILD_EXTRA[@]}" -t "$IMAGE" -f Dockerfile . ||
    die "$ENGINE build"
  log "built $IMAGE in $((SECONDS - start)) s"
fi
image_exists "$IMAGE" || die "no image $IMAGE"
size=$(image_size_mb)
log "image size: $IMAGE $size MB (limit $MAX_IMAGE_MB MB)"
((size <= MAX_IMAGE_MB)) || die "the image is $size MB, over $MAX_IMAGE_MB MB"

# --------------------------------------------------------------- smoke test
run() { $ENGINE run --rm "${EXTRA[@]}" "$@"; }
log "smoke: internvl --help"
help=$(run "$IMAGE" --help 2>&1) || die "internvl --help: $help"
grep -q "^commands:" <<<"$help" || die "internvl --help printed: $help"
uid=$(run --entrypoint id "$IMAGE" -u)
[[ $uid == 10001 ]] || die "the image runs as uid $uid, not 10001"
for b in internvl-gateway internvl-preprocess internvl-vision-encoder internvl-llm-decoder internvl-trainer; do
  # absl's --helpfull exits 1 by design: the binary's own flags are the check.
  out=$(run --entrypoint "/usr/local/bin/$b" "$IMAGE" --helpfull 2>&1 || true)
  grep -q "Flags from .*main.cc:" <<<"$out" || die "$b --helpfull: $out"
done
log "smoke: every binary starts, uid $uid"

model=$FIXTURES/tiny-qwen2
if [[ ! -f $model/config.json || ! -f $FIXTURES/inputs/img_300x1200.png ]]; then
  log "SKIP: no fixture model at $model (set FIXTURES): chat and serve not smoke-tested"
  exit $SKIP
fi
# Token ids of a case in expected.json (python3 when present; the check is
# then exact, otherwise the answer must only be non-empty).
expected_ids() {
  command -v python3 >/dev/null 2>&1 || return 0
  python3 -c 'import json, sys; d = json.load(open(sys.argv[1]))["cases"][sys.argv[2]]
print(",".join(map(str, d["generated_ids"])))' "$model/expected.json" "$1"
}
ids_of() { sed -n 's/.*"token_ids":\[\([0-9,]*\)\].*/\1/p' | tail -1; }
check_ids() {  # WHAT GOT EXPECTED
  [[ -n $2 ]] || die "$1: no token ids in the answer"
  if [[ -n $3 ]]; then
    [[ $2 == "$3" ]] || die "$1: token ids $2, the official implementation's are $3"
    log "smoke: $1 = the official implementation's token ids ($2)"
  else
    log "smoke: $1 answered token ids $2 (python3 absent: not compared)"
  fi
}

log "smoke: chat on $model (fp32, greedy, case A)"
out=$(run -v "$model:/models/tiny-qwen2:ro" -v "$FIXTURES/inputs:/inputs:ro" "$IMAGE" chat --model /models/tiny-qwen2 \
  --image /inputs/img_300x1200.png --max-num 3 --text "Please describe the image shortly." --max-new-tokens 16 \
  --dtype fp32 --json 2>&1) || die "chat: $out"
check_ids "chat" "$(ids_of <<<"$out")" "$(expected_ids A_single_image_chat)"

name=internvl-smoke-$$
log "smoke: serve --all-in-one ($name)"
cleanup() { $ENGINE rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
$ENGINE run -d --name "$name" "${EXTRA[@]}" -v "$model:/models/tiny-qwen2:ro" -p 127.0.0.1::9089 -p 127.0.0.1::8000 "$IMAGE" \
  serve --all-in-one --model /models/tiny-qwen2 --dtype fp32 --metrics-port 9089 --openai-port 8000 >/dev/null ||
  die "$ENGINE run serve"
host_port() { $ENGINE port "$name" "$1/tcp" | head -1 | sed 's/.*://'; }
metrics=$(host_port 9089)
openai=$(host_port 8000)
healthy=0
for _ in $(seq 120); do
  if [[ $($ENGINE inspect -f '{{.State.Running}}' "$name" 2>/dev/null) != true ]]; then break; fi
  if curl -fsS "http://127.0.0.1:$metrics/healthz" >/dev/null 2>&1; then
    healthy=1
    break
  fi
  sleep 1
done
if ((!healthy)); then
  $ENGINE logs "$name" 2>&1 | tail -30 >&2
  die "serve: /healthz on 127.0.0.1:$metrics never answered 200"
fi
log "smoke: GET http://127.0.0.1:$metrics/healthz -> $(curl -fsS "http://127.0.0.1:$metrics/healthz" | head -c 200)"
answer=$(curl -fsS "http://127.0.0.1:$openai/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model": "tiny-qwen2", "max_tokens": 16, "messages": [{"role": "user", "content": "Hello, who are you?"}]}') ||
  { $ENGINE logs "$name" 2>&1 | tail -30 >&2; die "serve: POST /v1/chat/completions"; }
check_ids "serve (OpenAI API, case D)" "$(ids_of <<<"$answer")" "$(expected_ids D_pure_text)"
$ENGINE stop -t 30 "$name" >/dev/null
code=$($ENGINE inspect -f '{{.State.ExitCode}}' "$name")
[[ $code == 0 ]] || { $ENGINE logs "$name" 2>&1 | tail -30 >&2; die "serve exited $code after SIGTERM"; }
log "smoke: serve stopped cleanly on SIGTERM"
log "OK: $IMAGE ($size MB) passed the smoke test"
