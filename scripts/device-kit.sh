#!/usr/bin/env bash
# device-kit.sh - packs what the GPU checks need into one archive that runs on a machine with an NVIDIA GPU
# but without Debian's packages (the rented device machines: their own image, no network): titan-worker,
# the CUDA module, libtitan, bench_gpu, cuda_check, the shared libraries they need from this machine (not
# glibc, not the CUDA and driver libraries, which the GPU machine has), bench/gpu.sh and a run.sh.
#
# Usage: scripts/device-kit.sh [BUILD_DIR] [KIT_DIR]      (defaults: build, .devkit)
# Then, on the GPU machine, from the repository root (the device tool: carry KIT_DIR):
#   tar xJf .devkit/titan-devkit.tar.xz -C /tmp && /tmp/titan-devkit/run.sh      (results in $OUT)
# run.sh runs cuda_check (the CUDA backend against OpenBLAS, TAP) and bench/gpu.sh (make bench-gpu).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
BUILD=${1:-build}
KIT=${2:-.devkit}
say() { echo "device-kit: $*"; }
die() { echo "device-kit: error: $*" >&2; exit 1; }

[ -f "$BUILD/build.ninja" ] || die "$BUILD is not a build directory (make, or meson setup $BUILD)"
ninja -C "$BUILD" >/dev/null || die "the build failed: ninja -C $BUILD"
need=("$BUILD/titan-worker" "$BUILD/titan-backend-cuda.so" "$BUILD/bench/bench_gpu" "$BUILD/tests/cuda_check")
for f in "${need[@]}"; do
  [ -e "$f" ] || die "$f is missing: the build needs the CUDA toolkit (-Dcuda=enabled) and the tests (cmocka)"
done

stage=$(mktemp -d "${TMPDIR:-/tmp}/titan-devkit.XXXXXX")
trap 'rm -rf "$stage"' EXIT
kit=$stage/titan-devkit
mkdir -p "$kit/build/bench" "$kit/build/tests" "$kit/lib" "$kit/bench"
cp "$BUILD/titan-worker" "$BUILD/titan-backend-cuda.so" "$kit/build/"
cp -L "$BUILD"/libtitan.so.0 "$kit/lib/"
cp "$BUILD/bench/bench_gpu" "$kit/build/bench/"
cp "$BUILD/tests/cuda_check" "$kit/build/tests/"
cp "$root/bench/gpu.sh" "$kit/bench/"

# The libraries those programs load, as this machine resolves them, except the C library's own (any
# newer glibc runs them), libgcc/libstdc++ (likewise), and CUDA's and the driver's (the GPU machine's
# match its driver; cuBLAS alone is too large to carry).
skip='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libgcc_s|libstdc\+\+|libcuda|libcudart|libcublas|libcublasLt|libnvidia-ml|libtitan)\.so'
ldd "$kit/build/titan-worker" "$kit/build/titan-backend-cuda.so" "$kit/build/bench/bench_gpu" \
  "$kit/build/tests/cuda_check" 2>/dev/null |
  awk '/=> \// {print $1, $3}' | sort -u | while read -r name path; do
    if ! [[ $name =~ $skip ]]; then cp -L "$path" "$kit/lib/$name"; fi
  done

cat >"$kit/run.sh" <<'EOF'
#!/usr/bin/env bash
# run.sh - the GPU checks from the titan device kit: cuda_check (TAP), then the GPU benchmark.
# Results and logs go to $OUT (default /tmp/titan-devkit-out). Exit status: non-zero if either failed.
set -uo pipefail
kit="$(cd "$(dirname "$0")" && pwd)"
OUT=${OUT:-/tmp/titan-devkit-out}
mkdir -p "$OUT"
# CUDA's libraries where the GPU machine keeps them: the toolkit, or the pip wheels beside PyTorch.
cuda_dirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do
  [ -d "$d" ] && cuda_dirs="$cuda_dirs:$d"
done
for py in python3 /usr/bin/python3; do
  sp=$("$py" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) || continue
  for s in $sp; do
    for d in "$s"/nvidia/*/lib "$s"/nvidia/cu*/lib; do [ -d "$d" ] && cuda_dirs="$cuda_dirs:$d"; done
  done
done
export LD_LIBRARY_PATH="$kit/lib$cuda_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  echo "== $(date -u) on $(hostname)"
  nvidia-smi -L 2>&1
  echo "== ldd (anything 'not found' stops the checks)"
  ldd "$kit/build/titan-worker" "$kit/build/titan-backend-cuda.so" "$kit/build/bench/bench_gpu" \
    "$kit/build/tests/cuda_check" | grep -E 'not found|cuda|cublas|=> .*titan-devkit' || true
} 2>&1 | tee "$OUT/env.txt"
rc=0
echo "== cuda_check"
"$kit/build/tests/cuda_check" "$kit/build/titan-worker" 2>&1 | tee "$OUT/cuda_check.tap"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
grep -q '^not ok' "$OUT/cuda_check.tap" && rc=1
echo "== bench-gpu"
OUT="$OUT" "$kit/bench/gpu.sh" "$kit/build" || rc=1
echo "== done: rc=$rc; results in $OUT"
exit $rc
EOF
chmod +x "$kit/run.sh"
mkdir -p "$KIT"
tar -C "$stage" -cJf "$KIT/titan-devkit.tar.xz" titan-devkit
say "$(find "$kit/lib" -type f | wc -l) libraries, $(du -sh "$kit" | cut -f1) unpacked, $(du -h "$KIT/titan-devkit.tar.xz" | cut -f1) packed: $KIT/titan-devkit.tar.xz"
say "on the GPU machine: tar xJf $KIT/titan-devkit.tar.xz -C /tmp && /tmp/titan-devkit/run.sh"
