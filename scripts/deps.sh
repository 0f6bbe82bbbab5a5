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
# The VM test (test_vm_qemu) boots guests under a real QEMU through libvirt's QEMU driver: qemu-system-x86,
# libvirt-daemon-system (the driver, and the libvirt-qemu user it wants to exist), ovmf, libvirt-clients (virsh,
# virt-xml-validate); its guest is built from busybox-static, systemd-boot-efi's EFI stub, mtools and Debian's
# cloud kernel (unpacked into .deps/guest-kernel, not installed: see fetch_guest_kernel below).
test_pkgs="libcmocka-dev libtorch-dev python3-torch python3-zmq python3-numpy python3-pytest clang libclang-rt-14-dev redis-server python3-redis chromium shellcheck patch systemd qemu-system-x86 libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients ovmf busybox-static systemd-boot-efi mtools"
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

# The VM test's guest kernel: Debian's cloud kernel package (what linux-image-cloud-amd64 names today),
# unpacked into .deps/guest-kernel (git ignores it): vmlinuz-VERSION and lib/modules/VERSION. Unpacked rather
# than installed, so that make test never adds a kernel to this host's boot menu. Once per kernel version.
fetch_guest_kernel() {
  local dir="$root/.deps/guest-kernel" pkg="" tmp try
  tmp="$(mktemp -d)"
  for try in 1 2; do # the second time after apt-get update: the lists may name a kernel no longer served
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
      sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n 1)
    if [ -n "$pkg" ] && [ -f "$dir/vmlinuz-${pkg#linux-image-}" ]; then
      rm -rf "$tmp"
      return 0
    fi
    if [ -n "$pkg" ] && (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1); then break; fi
    pkg=""
    [ "$try" = 1 ] && { apt-get update -qq >/dev/null 2>&1 || break; }
  done
  if [ -n "$pkg" ] && echo "titan: unpacking $pkg into .deps/guest-kernel (the VM test's guest kernel)" >&2 &&
     dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/x"; then
    rm -rf "$dir"
    mkdir -p "$dir/lib"
    cp "$tmp/x/boot/vmlinuz-${pkg#linux-image-}" "$dir/"
    cp -r "$tmp/x/lib/modules" "$dir/lib/" 2>/dev/null || cp -r "$tmp/x/usr/lib/modules" "$dir/lib/"
  elif ! ls "$dir"/vmlinuz-* >/dev/null 2>&1; then
    echo "titan: could not fetch Debian's cloud kernel (linux-image-cloud-amd64); the VM test will say so" >&2
  fi
  rm -rf "$tmp"
}
[ "${1:-build}" = test ] && fetch_guest_kernel

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
