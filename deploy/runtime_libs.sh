#!/usr/bin/env bash
# Stages the shared libraries that the given binaries load into a root tree
# for the image's runtime stage (Dockerfile). Run in the build stage.
#
#   deploy/runtime_libs.sh OUT_ROOT BASE_PACKAGES FILE...
#
# The libraries are the binaries' ldd closure (every NEEDED entry, recursively,
# as the dynamic loader resolves them here). Each is mapped to its Debian
# package with dpkg -S; libraries of packages listed in BASE_PACKAGES (the
# packages of the base image, which the runtime base has too) are left out,
# the rest are copied, dereferenced, to OUT_ROOT/usr/lib/x86_64-linux-gnu
# under the name the loader looks for. Each package's copyright file goes to
# OUT_ROOT/usr/share/doc/PKG/, and OUT_ROOT/usr/local/share/internvl/
# runtime-libraries.tsv lists every library with its package and version.
#
# Why files and not `apt-get install` of the same package list: the packages'
# declared dependencies reach far beyond what is loaded (libtorch1.13 ->
# libopencv-highgui406 -> libqt5gui5 -> libgl1 -> libglx-mesa0 ->
# libgl1-mesa-dri -> libllvm15; libgdal32 -> gdal-data, proj-data, ...):
# installed with --no-install-recommends that list is 1.15 GB, these files
# about 0.5 GB (see deploy/README.md).
set -euo pipefail
if (($# < 3)); then
  echo "usage: $0 OUT_ROOT BASE_PACKAGES FILE..." >&2
  exit 2
fi
out=$1
base_packages=$2
shift 2
libdir=$out/usr/lib/x86_64-linux-gnu
manifest_dir=$out/usr/local/share/internvl
mkdir -p "$libdir" "$manifest_dir"
manifest=$manifest_dir/runtime-libraries.tsv
printf 'library\tpackage\tversion\tsource\n' >"$manifest"

# NAME => PATH lines of every file (ldd prints the whole closure).
ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u >"$out/.closure"
if ldd "$@" | grep -q "not found"; then
  ldd "$@" | grep "not found" >&2
  echo "runtime_libs: unresolved libraries" >&2
  exit 1
fi

# dpkg -S knows the path a package ships, which may be the link or its target,
# under /lib or /usr/lib (usrmerge): one dpkg -S call for every candidate.
candidates() {
  local path=$1 real
  real=$(readlink -f "$path")
  echo "$path" "$real" "${path/#\/lib\//\/usr\/lib\/}" "${real/#\/lib\//\/usr\/lib\/}"
}
declare -A owner_of=()
mapfile -t all_paths < <(while read -r _ path; do candidates "$path"; done <"$out/.closure" | tr ' ' '\n' | sort -u)
while IFS= read -r line; do
  # "pkg[:arch][, pkg2]: /path"; diversions ("diversion by ...") are skipped.
  [[ $line == diversion* ]] && continue
  owner_of[${line#*: }]=${line%%: *}
done < <(dpkg -S "${all_paths[@]}" 2>/dev/null || true)

copied=0
skipped=0
bytes=0
declare -A seen_pkg=()
while read -r name path; do
  real=$(readlink -f "$path")
  owner=""
  for p in $(candidates "$path"); do
    owner=${owner_of[$p]:-}
    [[ -n $owner ]] && break
  done
  owner=${owner%%,*}
  owner=${owner%%:*}
  if [[ -z $owner ]]; then
    echo "runtime_libs: $path ($name) belongs to no Debian package" >&2
    exit 1
  fi
  if grep -qx "$owner" "$base_packages"; then
    skipped=$((skipped + 1))
    continue
  fi
  version=$(dpkg-query -W -f '${Version}' "$owner")
  cp -L "$path" "$libdir/$name"
  bytes=$((bytes + $(stat -c %s "$libdir/$name")))
  copied=$((copied + 1))
  printf '%s\t%s\t%s\t%s\n' "$name" "$owner" "$version" "$real" >>"$manifest"
  if [[ -z ${seen_pkg[$owner]:-} ]]; then
    seen_pkg[$owner]=1
    doc=/usr/share/doc/$owner
    if [[ -f $doc/copyright ]]; then
      mkdir -p "$out$doc"
      cp "$doc/copyright" "$out$doc/copyright"
    fi
  fi
done <"$out/.closure"
rm -f "$out/.closure"
echo "runtime_libs: $copied libraries from ${#seen_pkg[@]} packages ($((bytes / 1048576)) MiB);" \
  "$skipped from the base image's packages left out"
