#!/usr/bin/env bash
# check-legacy-cuda.sh - proves the CUDA backend still builds for Maxwell (sm_52), which CUDA 13
# dropped (its lowest target is sm_75), using Debian 12's non-free nvidia-cuda-toolkit (CUDA 11.8).
#
# Usage: scripts/check-legacy-cuda.sh [BUILD_DIR]        (default: build-legacy-cuda)
#
# 1. Installs nvidia-cuda-toolkit if $CUDA_ROOT/bin/nvcc is missing, from bookworm's non-free
#    component through a throwaway apt configuration under /tmp: /etc/apt is not touched, and
#    the extra package lists go to a private directory that is removed afterwards.
# 2. meson setup BUILD -Dcuda=enabled -Dcuda-path=$CUDA_ROOT -Dcuda-arch=52 -Dcuda-ccbin=... and
#    meson compile -C BUILD titan-backend-cuda. The options are spelled with dashes because meson
#    reserves every project option name that starts with a language prefix such as "cuda_"
#    ("ERROR: Option name cuda_path is reserved.").
# 3. Fails unless cuobjdump --list-elf BUILD/titan-backend-cuda.so lists sm_52 code.
#
# Environment:
#   CUDA_ROOT   toolkit root (default /usr, where Debian puts nvcc, headers and libraries)
#   CUDA_CCBIN  nvcc's host compiler. CUDA 11.8 refuses gcc > 11, and Debian 12's gcc is 12;
#               default: the first of g++-11, clang-14, clang-13, clang-12, g++-10 installed
#               (the package depends on one of them). CUDA_CCBIN=gcc-12 also works if you add
#               -allow-unsupported-compiler yourself; not done here.
#   CHECK_LEGACY_CUDA_FORCE_INSTALL=1  runs the apt steps even if nvcc is present (a no-op
#               install then; tests the throwaway apt configuration).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${1:-build-legacy-cuda}"
CUDA_ROOT="${CUDA_ROOT:-/usr}"
nvcc="$CUDA_ROOT/bin/nvcc"
so="$BUILD/titan-backend-cuda.so"

say() { echo "check-legacy-cuda: $*"; }
die() { echo "check-legacy-cuda: error: $*" >&2; exit 1; }

# Writes one-line apt sources with the system's Debian URIs and suites, every component enabled.
# Reads the deb822 /etc/apt/sources.list.d/*.sources stanzas and one-line /etc/apt/sources.list.
write_sources() {
  local comps="main contrib non-free non-free-firmware"
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    awk -v comps="$comps" '
      function flush(   n, i, j, u, s, opt) {
        if (types ~ /(^| )deb( |$)/ && uris != "" && suites != "") {
          opt = (signed != "") ? "[signed-by=" signed "] " : ""
          n = split(uris, u, " "); m = split(suites, s, " ")
          for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
            print "deb " opt u[i] " " s[j] " " comps
        }
        types = uris = suites = signed = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      { key = tolower($1); sub(/^[^:]*:[ \t]*/, "") }
      key == "types:" { types = $0 }
      key == "uris:" { uris = $0 }
      key == "suites:" { suites = $0 }
      key == "signed-by:" { signed = $0 }
      key == "enabled:" && tolower($0) == "no" { types = "" }
      END { flush() }
    ' "$f"
  done
  if [ -f /etc/apt/sources.list ]; then
    # "deb [opts] URI SUITE COMPONENTS..." -> same URI and suite, all components.
    awk -v comps="$comps" '$1 == "deb" {
      opt = ""; i = 2
      if ($2 ~ /^\[/) { while ($i !~ /\]$/) { opt = opt $i " "; i++ } opt = opt $i " "; i++ }
      if ($(i + 1) != "") print "deb " opt $i " " $(i + 1) " " comps
    }' /etc/apt/sources.list
  fi
}

install_toolkit() {
  local sudo=() tmp
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "$nvcc missing and not root: install nvidia-cuda-toolkit (Debian non-free)"
    sudo=(sudo)
  fi
  tmp="$(mktemp -d /tmp/check-legacy-cuda-apt.XXXXXX)"
  # shellcheck disable=SC2064  # expand $tmp now
  trap "${sudo[*]} rm -rf '$tmp'" EXIT
  mkdir -p "$tmp/lists/partial"
  # apt downloads as user _apt: let it into the private lists directory, as in /var/lib/apt/lists.
  chmod 755 "$tmp" "$tmp/lists"
  if id _apt >/dev/null 2>&1; then "${sudo[@]}" chown _apt "$tmp/lists/partial"; fi
  write_sources | sort -u > "$tmp/sources.list"
  [ -s "$tmp/sources.list" ] || die "found no Debian 'deb' sources in /etc/apt to derive non-free sources from"
  local apt_opts=(-o "Dir::Etc::sourcelist=$tmp/sources.list" -o "Dir::Etc::sourceparts=-"
                  -o "Dir::State::Lists=$tmp/lists")
  say "$nvcc ${why}: installing nvidia-cuda-toolkit (CUDA 11.8, ~1.6 GB download, ~5.4 GB) from"
  say "Debian non-free using a temporary apt sources list ($tmp/sources.list; /etc/apt untouched):"
  sed 's/^/    /' "$tmp/sources.list"
  say "+ apt-get ${apt_opts[*]} update"
  "${sudo[@]}" apt-get "${apt_opts[@]}" update
  say "+ apt-get ${apt_opts[*]} install -y --no-install-recommends nvidia-cuda-toolkit"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get "${apt_opts[@]}" install -y --no-install-recommends nvidia-cuda-toolkit
  "${sudo[@]}" rm -rf "$tmp"
  trap - EXIT
}

if [ ! -x "$nvcc" ] || [ -n "${CHECK_LEGACY_CUDA_FORCE_INSTALL:-}" ]; then
  [ "$CUDA_ROOT" = /usr ] || die "$nvcc missing (CUDA_ROOT=$CUDA_ROOT): only the Debian toolkit (/usr) is installed automatically"
  why=missing
  [ -x "$nvcc" ] && why="present, CHECK_LEGACY_CUDA_FORCE_INSTALL set"
  install_toolkit
fi
[ -x "$nvcc" ] || die "$nvcc still missing after installing nvidia-cuda-toolkit"

# Put the toolkit's bin first: nvcc finds ptxas, fatbinary, cudafe++ and nvlink through PATH, and
# Debian's nvcc lives in /usr/lib/nvidia-cuda-toolkit/bin without them. With /usr/local/cuda/bin
# (CUDA 13) or /usr/local/bin ahead of /usr/bin, CUDA 13's ptxas is used and fails with
# "ptxas fatal : Value 'sm_52' is not defined for option 'gpu-name'".
export PATH="$CUDA_ROOT/bin:$PATH"

nvcc_version="$("$nvcc" --version | sed -n 's/.*release [0-9.]*, V\([0-9.]*\).*/\1/p')"
say "nvcc: $nvcc (${nvcc_version:-unknown version})"
"$nvcc" --list-gpu-code | grep -qx sm_52 ||
  die "$nvcc (CUDA ${nvcc_version:-?}) cannot build sm_52 (its targets: $("$nvcc" --list-gpu-code | tr '\n' ' ')); CUDA 11.x/12.x can, 13 cannot"

if [ -z "${CUDA_CCBIN:-}" ]; then
  for c in g++-11 clang-14 clang-13 clang-12 g++-10; do
    if command -v "$c" >/dev/null; then CUDA_CCBIN="$c"; break; fi
  done
  [ -n "${CUDA_CCBIN:-}" ] || die "no host compiler CUDA ${nvcc_version:-11.8} accepts (g++-11 or clang-14): apt-get install g++-11, or set CUDA_CCBIN"
fi
say "nvcc host compiler (-ccbin): $CUDA_CCBIN"

cuobjdump="$CUDA_ROOT/bin/cuobjdump"
[ -x "$cuobjdump" ] || cuobjdump="$(command -v cuobjdump)" || die "cuobjdump not found"

setup=(meson setup "$BUILD" "$root" -Dcuda=enabled "-Dcuda-path=$CUDA_ROOT" -Dcuda-arch=52
       "-Dcuda-ccbin=$CUDA_CCBIN" -Dtorch=disabled)
if [ -d "$BUILD/meson-private" ]; then
  setup+=(--wipe)
fi
say "+ ${setup[*]}"
"${setup[@]}"
say "+ meson compile -C $BUILD titan-backend-cuda"
meson compile -C "$BUILD" titan-backend-cuda

[ -f "$so" ] || die "$so was not built"
say "+ $cuobjdump --list-elf $so"
elf="$("$cuobjdump" --list-elf "$so")" || die "cuobjdump --list-elf $so failed"
echo "$elf"
grep -q 'sm_52' <<<"$elf" || die "no sm_52 code (cubin) in $so: check that -Dcuda-arch=52 reaches nvcc as -gencode arch=compute_52,code=sm_52"
say "sm_52 code present in $so (nvcc $nvcc_version)"
