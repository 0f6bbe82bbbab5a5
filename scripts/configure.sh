#!/usr/bin/env bash
# configure.sh - sets up, or brings up to date, a Meson build directory.
# Usage: scripts/configure.sh BUILD_DIR [MESON_OPTION...]
#
# Meson caches its compiler checks (has_header, find_library) in the build directory, and keeps them
# across `meson setup --reconfigure`. A check that failed before scripts/deps.sh installed the package
# would then go on failing ("Has header "torch/script.h" : NO (cached)"), and the TorchScript runner
# would silently stay unbuilt. So this script records what the checks depend on (the dpkg database and
# the CUDA toolkit's nvcc) in BUILD_DIR/.titan-deps; when that changed since the directory was set up,
# it runs `meson setup --wipe` (a fresh configuration that keeps the options given before) instead of
# a reconfigure. With nothing changed it only applies the given options.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BUILD_DIR [MESON_OPTION...]" >&2; exit 2; }
build=$1
shift

# TITAN_CONFIGURE_WATCH: the files whose change means "configure afresh" (tests point it elsewhere).
watch=${TITAN_CONFIGURE_WATCH:-/var/lib/dpkg/status /usr/local/cuda/bin/nvcc}

fingerprint() {
  local f
  for f in $watch; do
    if [ -e "$f" ]; then stat -L -c '%n %Y %s' "$f"; else echo "$f absent"; fi
  done
}

now=$(fingerprint)
if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" "$@"
elif [ "$(cat "$build/.titan-deps" 2>/dev/null)" != "$now" ]; then
  echo "titan: packages changed since $build was configured: configuring it afresh (meson setup --wipe)" >&2
  meson setup --wipe "$build" "$@"
elif [ $# -gt 0 ]; then
  meson setup --reconfigure "$build" "$@" >/dev/null
fi
printf '%s\n' "$now" > "$build/.titan-deps"
