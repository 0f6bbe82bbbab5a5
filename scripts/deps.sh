#!/usr/bin/env bash
# deps.sh - installs the Debian packages a make target needs, only those missing.
# Usage: scripts/deps.sh build|test|bench|run
set -euo pipefail

build_pkgs="gcc make meson ninja-build pkg-config libutf8proc-dev libzmq3-dev libczmq-dev libsystemd-dev libjansson-dev libopenblas-dev libhiredis-dev libyaml-dev libmicrohttpd-dev libpci-dev libvirt-dev"
# clang and libclang-rt-14-dev (libFuzzer): make test runs each fuzz target for 60 s.
# redis-server and python3-redis: the job tests run their own Redis.
# chromium renders titan serve's status page in a test. promtool (which checks /metrics) comes
# from Debian's prometheus package, unpacked into .deps/ rather than installed: installing it
# would start a Prometheus server on port 9090 as a side effect (see fetch_promtool below).
# patch and systemd (systemd-analyze): test_host_setup applies diffs with patch(1); the unit tests verify
# the systemd units.
test_pkgs="libcmocka-dev libtorch-dev python3-torch python3-zmq python3-numpy python3-pytest clang libclang-rt-14-dev redis-server python3-redis chromium shellcheck patch systemd"
bench_pkgs="python3-zmq python3-numpy python3-torch redis-server python3-redis"

case "${1:-build}" in
  build|run) want="$build_pkgs" ;;
  test) want="$build_pkgs $test_pkgs" ;;
  bench) want="$build_pkgs $bench_pkgs" ;;
  *) echo "usage: $0 build|test|bench|run" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "$0")/.." && pwd)"

# Unpacks promtool from Debian's prometheus package into .deps/bin (git ignores it), once.
fetch_promtool() {
  command -v promtool >/dev/null && return 0
  [ -x "$root/.deps/bin/promtool" ] && return 0
  if [ "$(id -u)" -ne 0 ] && ! apt-get download --print-uris prometheus >/dev/null 2>&1; then
    echo "titan: promtool missing (tests check /metrics with it): apt-get install prometheus, or run make test as root" >&2
    return 0
  fi
  local tmp
  tmp="$(mktemp -d)"
  echo "titan: unpacking promtool from Debian's prometheus package into .deps/bin" >&2
  if (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get download -qq prometheus >/dev/null; }) &&
     dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"; then
    mkdir -p "$root/.deps/bin"
    cp "$tmp/x/usr/bin/promtool" "$root/.deps/bin/promtool"
  else
    echo "titan: could not fetch promtool; the metrics format test will say so" >&2
  fi
  rm -rf "$tmp"
}
[ "${1:-build}" = test ] && fetch_promtool

# clients/node's test needs node, npm and its node_modules, and so do the reference tests in tests/ref
# (HuggingFace's tokenizers, ONNX Runtime, the openai client): `npm ci` (the npm registry only; the addons'
# npm tarballs carry their prebuilt linux-x64 binaries; tests/ref/.npmrc tells onnxruntime-node not to
# fetch its optional CUDA files) whenever node_modules is missing or older than package-lock.json. Runs
# after the Debian packages below are in place (nodejs npm when missing).
node_client_deps() {
  local dir
  for dir in "$root/clients/node" "$root/tests/ref"; do
    [ -f "$dir/package-lock.json" ] || continue
    if [ -d "$dir/node_modules" ] && [ ! "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
      continue
    fi
    echo "titan: npm ci in ${dir#"$root"/}" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2) && touch "$dir/node_modules" ||
      echo "titan: npm ci failed in ${dir#"$root"/}; the tests that need it will say so" >&2
  done
}
# node and npm may come from elsewhere than Debian (nvm, NodeSource): ask for the packages only when missing.
if [ "${1:-build}" = test ]; then
  command -v node >/dev/null || want="$want nodejs"
  command -v npm >/dev/null || want="$want npm"
fi

missing=""
for p in $want; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
if [ -z "$missing" ]; then
  [ "${1:-build}" = test ] && node_client_deps
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "titan: missing Debian packages:$missing" >&2
  echo "titan: install them with: sudo apt-get install$missing" >&2
  exit 1
fi
echo "titan: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
[ "${1:-build}" = test ] && node_client_deps
exit 0
