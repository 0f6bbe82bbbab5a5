#!/usr/bin/env bash
# test_device_kit.sh - the device kit (scripts/device-kit.sh) end to end against a fake CUDA: packs the kit from
# this build (--no-build: this runs inside `meson test`), unpacks it in a temporary directory and runs its
# run.sh as on a GPU machine, with the fake libcudart (tests/fake_cuda/fake_cudart_lib.c) in place of the
# one the kit carries, the fake libcublas (fake_cublas_shim.c) where run.sh looks for CUDA's libraries, and a
# fake nvidia-smi (tests/fake_cuda/bin) on PATH. The fakes stand in for the driver and the GPU; the kit's
# programs are the real ones. Prints TAP.
#   (i)   a full run: the checks pass, each benchmark size runs, summary.md names the GPU, driver, runtime,
#         libraries, every check and every ratio; exit 0
#   (ii)  no libcublas: run.sh stops before anything runs (exit 2) and names libcublas.so.N, who needs it,
#         where it looked, and the other versions it saw
#   (iii) a budget too small for every size, with one size that hangs: run.sh ends within the budget and a
#         few seconds, the hung size is reported timed out (exit 1), the rest skipped for time
#   (iv)  a start failure (no GPU code for the device): reported as a failure, never a pass; and a driver
#         older than the kit's runtime is flagged
# and after each, that no process from the kit is left.
# Usage: test_device_kit.sh BUILD_ROOT FAKE_LIBCUDART FAKE_LIBCUBLAS
#        test_device_kit.sh BUILD_ROOT --skip REASON
set -uo pipefail

if [ "${2:-}" = --skip ]; then
  echo "1..0 # SKIP ${3:-no reason given}"
  exit 0
fi
[ $# -eq 3 ] || { echo "usage: $0 BUILD_ROOT FAKE_LIBCUDART FAKE_LIBCUBLAS" >&2; exit 2; }
build=$(cd "$1" && pwd)
fake_cudart=$2
fake_cublas=$3
src="$(cd "$(dirname "$0")/../.." && pwd)"

n=0 failed=0
ok() { # ok COND-STATUS DESCRIPTION
  n=$((n + 1))
  if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed + 1)); fi
}
check() { # check DESCRIPTION COMMAND...
  local d=$1
  shift
  "$@" >/dev/null 2>&1
  ok $? "$d"
}
diag() { sed 's/^/# /' "$@"; }
bail() { echo "Bail out! $*"; exit 1; }

echo "1..44"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/titan-kit-test.XXXXXX")
[ -n "${TITAN_KIT_TEST_KEEP:-}" ] || trap 'rm -rf "$tmp"' EXIT

# ---- the fakes against the real module ----
mod=$build/titan-backend-cuda.so
[ -e "$mod" ] || bail "$mod is missing (the build has a CUDA toolkit, so it should be there)"
[ -e "$build/bench/bench_gpu" ] || bail "$build/bench/bench_gpu is missing: run ninja -C $build first"
needed() { readelf -dW "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
soname() { readelf -dW "$1" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p'; }
rt=$(needed "$mod" | grep '^libcudart\.so\.')
blas=$(needed "$mod" | grep '^libcublas\.so\.')
check "the fake libcudart's soname ($(soname "$fake_cudart")) is the one the module needs ($rt)" \
  test "$(soname "$fake_cudart")" = "$rt"
check "the fake libcublas's soname ($(soname "$fake_cublas")) is the one the module needs ($blas)" \
  test "$(soname "$fake_cublas")" = "$blas"
# What the real binaries import from CUDA, the fakes define, under the same symbol versions.
undefined=$(nm -D --undefined-only --with-symbol-versions "$mod" "$build/bench/bench_gpu" 2>/dev/null |
  awk '$1 == "U" && $2 ~ /@lib(cudart|cublas)/ {print $2}' | sort -u)
defined=$(nm -D --defined-only --with-symbol-versions "$fake_cudart" "$fake_cublas" 2>/dev/null |
  awk '{print $3}' | sed 's/@@/@/' | sort -u)
lacking=$(comm -23 <(echo "$undefined") <(echo "$defined") | paste -sd ' ')
ok "$([ -n "$undefined" ] && [ -z "$lacking" ] && echo 0 || echo 1)" \
  "the fakes define all $(echo "$undefined" | wc -l) versioned CUDA symbols the module and bench_gpu import${lacking:+ (lacking: $lacking)}"

# ---- the kit ----
XZ_OPT="-0 -T0" "$src/scripts/device-kit.sh" --no-build "$build" "$tmp/kit" >"$tmp/pack.log" 2>&1
ok $? "device-kit.sh --no-build packs the kit from $build"
[ -s "$tmp/kit/titan-devkit.tar.xz" ] || { diag "$tmp/pack.log"; bail "no kit"; }
mkdir -p "$tmp/u"
tar xJf "$tmp/kit/titan-devkit.tar.xz" -C "$tmp/u" || bail "cannot unpack the kit"
k=$tmp/u/titan-devkit
check "the kit carries the toolkit's $rt" test -e "$k/lib/$rt"
check "needs.txt records $blas as needed by titan-backend-cuda.so and bench_gpu" \
  grep -qP "^\Q$blas\E\t.*\ttitan-backend-cuda.so bench_gpu\trequired" "$k/needs.txt"
check "needs.txt records the driver's libcuda.so.1" grep -q '^libcuda\.so\.1' "$k/needs.txt"
check "kit.txt records the CUDA major and the module's architectures" \
  grep -qE "^cuda_major: ${rt#libcudart.so.}" "$k/kit.txt"
# The fake runtime in place of the carried one, and the fake cuBLAS where the GPU machine would have it.
cp "$fake_cudart" "$k/lib/$rt"
mkdir -p "$tmp/cuda" "$tmp/nocublas"
cp "$fake_cublas" "$tmp/cuda/$blas"
: >"$tmp/cuda/libcuda.so.1" # the fake runtime stands in for the driver: only its presence is checked
: >"$tmp/nocublas/libcuda.so.1"
major=${rt#libcudart.so.}
major=${major%%.*}
# cuda_check's smallest run: --quick where it has it (its usage names it).
check_args="--big 256"
"$build/tests/cuda_check" 2>&1 | grep -q -- '--quick' && check_args="--quick --big 256"

# run_kit NAME [VAR=VALUE...]: runs the kit's run.sh with the fakes, results in $tmp/NAME; sets rc, secs.
run_kit() {
  local name=$1
  shift
  local t0
  t0=$(date +%s)
  env -u LD_LIBRARY_PATH -u TITAN_CUDA_MODULE PATH="$src/tests/fake_cuda/bin:$PATH" OUT="$tmp/$name" \
    FAKE_CUDA_DEVICES=1 FAKE_CUDA_RUNTIME_VERSION=$((major * 1000)) FAKE_CUDA_DRIVER_VERSION=$((major * 1000)) \
    FAKE_CUDA_REPORT="$tmp/$name.fake-report" TITAN_KIT_CUDA_LIBS="$tmp/cuda" BENCH_GPU_REPS=1 \
    TITAN_KIT_CHECK_ARGS="$check_args" "$@" "$k/run.sh" >"$tmp/$name.log" 2>&1
  rc=$?
  secs=$(($(date +%s) - t0))
  sum=$tmp/$name/summary.md
}
# no process from the unpacked kit (worker, cuda_check, bench_gpu, gpu.sh) is left, waiting up to 5 s.
strays() {
  local p left=""
  for _ in $(seq 50); do
    left=""
    for p in /proc/[0-9]*; do
      [ "${p#/proc/}" = "$$" ] && continue
      grep -qsF "$k/" "$p/cmdline" && left+=" ${p#/proc/}:$(tr '\0' ' ' <"$p/cmdline" | cut -c1-80)"
    done
    [ -z "$left" ] && return 0
    sleep 0.1
  done
  echo "left:$left"
  return 1
}
no_strays() {
  local why
  why=$(strays)
  ok $? "$1: no process from the kit is left${why:+ ($why)}"
}

# ---- (i) a full run ----
# The budget is a ceiling, not a duration: cuda_check (5/8 of it) checks the encoders too, and took over 150 s
# under ASan on 2 cores shared with other tests (the default 240 s budget failed it there).
run_kit full TITAN_KIT_BUDGET_S=600 BENCH_GPU_SIZES=256,64,128
ok "$rc" "(i) run.sh passes with the fake GPU (exit $rc, ${secs} s)"
if [ "$rc" != 0 ]; then diag "$tmp/full.log"; [ -f "$sum" ] && diag "$sum"; fi
check "(i) summary.md's verdict is PASS" grep -q '^# titan device kit: PASS' "$sum"
check "(i) summary.md names the GPU (nvidia-smi -L)" grep -q '^- GPU 0: Fake GeForce GTX TITAN X' "$sum"
check "(i) summary.md names the driver and the CUDA it supports" grep -qE '^- driver: 580\.65\.06 \(supports CUDA 13\.0\)' "$sum"
check "(i) summary.md has gpu_info's device, runtime and capability" \
  grep -qE "^- gpu_info: Fake GeForce GTX TITAN X, compute capability 5\.2, driver .*, CUDA runtime $major\.0" "$sum"
check "(i) summary.md says where $blas was found" grep -qF -- "- $blas (cuBLAS $major): $tmp/cuda/$blas" "$sum"
check "(i) summary.md says cuda_check passed" grep -qE '^## cuda_check: passed: [0-9]+ ok, 0 not ok' "$sum"
nchecks=$(grep -c '^ok ' "$tmp/full/cuda_check.tap")
check "(i) summary.md lists each of cuda_check's $nchecks lines" test "$(grep -c '^- ok [0-9]' "$sum")" = "$nchecks"
check "(i) the sizes ran smallest first (64, 128, 256)" \
  test "$(grep -oE '^\| [0-9]+ \| ok \|' "$sum" | tr -dc '0-9 ' | xargs)" = "64 128 256"
check "(i) each size has its ratios and check" \
  test "$(grep -cE '^\| [0-9]+ \| ok \| [0-9]+ \| [0-9.]+x \| [0-9.]+x \| [0-9.e+-]+ \|$' "$sum")" = 3
check "(i) summary.md has the encoder benchmark: MiniLM-L6's shape, 1x128 and 32x128 on the GPU and the CPU" \
  test "$(grep -cE '^\| (1|32)x128 \| [0-9.]+ \| [0-9]+ \| [0-9.]+ \| [0-9]+ \| [0-9.]+x \|$' "$sum")" = 2
check "(i) env.txt, libs.txt, cuda_check.tap and each size's results.json are kept" \
  test -s "$tmp/full/env.txt" -a -s "$tmp/full/libs.txt" -a -s "$tmp/full/cuda_check.tap" \
  -a -s "$tmp/full/bench/n64/results.json" -a -s "$tmp/full/bench/n256/table.md"
# The fake runtime reports, at each process's exit, what it saw: the real module and bench_gpu called it
# correctly (no invalid call, nothing left allocated in the worker).
reports=$(grep -c . "$tmp/full.fake-report" 2>/dev/null || echo 0)
bad=$(grep -v '"invalid_calls":0[,}]' "$tmp/full.fake-report" 2>/dev/null | head -n 1)
ok "$([ "$reports" -ge 4 ] && [ -z "$bad" ] && echo 0 || echo 1)" \
  "(i) the programs ran on the fake runtime ($reports processes reported), with no invalid call${bad:+: $bad}"
no_strays "(i)"

# ---- (ii) no libcublas ----
run_kit missing TITAN_KIT_BUDGET_S=240 BENCH_GPU_SIZES=64 TITAN_KIT_CUDA_LIBS="$tmp/nocublas"
ok "$([ "$rc" = 2 ] && echo 0 || echo 1)" "(ii) without $blas run.sh exits 2 (exit $rc, ${secs} s)"
check "(ii) its output names $blas, who needs it and where it looked" \
  grep -qE "missing ${blas//./\\.} \(cuBLAS $major, needed by titan-backend-cuda\.so, bench_gpu\): looked in .*$tmp/nocublas" "$tmp/missing.log"
check "(ii) summary.md's verdict is NOT RUN" grep -q '^# titan device kit: NOT RUN: 1 missing library' "$sum"
check "(ii) summary.md names $blas as MISSING, with what to install" \
  grep -qE "^- \*\*MISSING\*\* ${blas//./\\.} .*pip install nvidia-cublas" "$sum"
check "(ii) nothing ran: no cuda_check output, no benchmark" test ! -e "$tmp/missing/cuda_check.tap" -a ! -e "$tmp/missing/bench"
check "(ii) no process was started (the fake runtime never loaded)" test ! -s "$tmp/missing.fake-report"
# Another major of cuBLAS beside it is named, not taken.
cp "$fake_cublas" "$tmp/nocublas/libcublas.so.$((major - 1))"
run_kit missing2 TITAN_KIT_BUDGET_S=240 BENCH_GPU_SIZES=64 TITAN_KIT_CUDA_LIBS="$tmp/nocublas"
# (The machine may hold other cuBLAS versions too, e.g. after make check-legacy-cuda: the line names them all.)
ok "$([ "$rc" = 2 ] && grep -E "Other versions here: " "$sum" | grep -qF "$tmp/nocublas/libcublas.so.$((major - 1))" &&
  echo 0 || echo 1)" \
  "(ii) with libcublas.so.$((major - 1)) beside it: still missing, and the other version is named"
no_strays "(ii)"

# ---- (iii) a budget too small for every size; one size hangs ----
# The budget leaves room for cuda_check as long as it took in (i), twice over (this machine may be loaded),
# and 30 s for the sizes before the hang (close together, so that n^3 from one to the next stays small even
# where starting a worker is slow): the hang then takes the rest.
cs=$(sed -n 's/^## cuda_check: .* (\([0-9]*\) s)$/\1/p' "$tmp/full/summary.md")
cs=${cs:-10}
budget=$((2 * cs + 45))
run_kit budget TITAN_KIT_BUDGET_S=$budget TITAN_KIT_CHECK_S=$((2 * cs + 15)) \
  BENCH_GPU_SIZES=64,72,80,512,1024,2048,4096 FAKE_CUDA_HANG_N=80
ok "$([ "$rc" = 1 ] && echo 0 || echo 1)" "(iii) run.sh fails when a size hangs (exit $rc)"
ok "$([ "$secs" -le $((budget + 12)) ] && echo 0 || echo 1)" \
  "(iii) it ends within the budget and the kill grace (${secs} s; budget ${budget} s)"
if [ "$rc" != 1 ] || [ "$secs" -gt $((budget + 12)) ]; then diag "$tmp/budget.log"; [ -f "$sum" ] && diag "$sum"; fi
check "(iii) the sizes before the hang ran" \
  test "$(grep -oE '^\| (64|72) \| ok \|' "$sum" | wc -l)" = 2
check "(iii) the hung size is reported timed out" grep -qE '^\| 80 \| \*\*TIMED OUT\*\*' "$sum"
check "(iii) the verdict is FAIL and names it" grep -qE '^# titan device kit: FAIL: .*bench n=80 timed out' "$sum"
check "(iii) summary.md lists the sizes skipped for time" \
  grep -qE '^- skipped for time: n = 512 1024 2048 4096$' "$sum"
check "(iii) each skipped size has its row" test "$(grep -cE '^\| [0-9]+ \| skipped for time' "$sum")" = 4
check "(iii) cuda_check still passed before the benchmark" grep -qE '^## cuda_check: passed' "$sum"
no_strays "(iii)"

# ---- (iv) a start failure on the GPU machine is a failure ----
run_kit nokernel TITAN_KIT_BUDGET_S=120 BENCH_GPU_SIZES=64 FAKE_CUDA_NO_KERNEL=1 FAKE_NVIDIA_SMI_CUDA=$((major - 1)).4
ok "$([ "$rc" = 1 ] && echo 0 || echo 1)" "(iv) with no GPU code for the device run.sh fails (exit $rc, ${secs} s)"
check "(iv) summary.md's verdict is FAIL, naming cuda_check" grep -qE '^# titan device kit: FAIL: cuda_check (failed|skipped)' "$sum"
check "(iv) the benchmark's failure is reported too" grep -qE '^\| 64 \| \*\*FAILED\*\*' "$sum"
check "(iv) a driver for CUDA $((major - 1)).4 is flagged as maybe too old for the CUDA $major runtime" \
  grep -qF "**the driver may be too old**: it supports CUDA $((major - 1)).4, the kit's runtime is CUDA $major" "$sum"
no_strays "(iv)"

[ "$failed" = 0 ] || echo "# $failed failed; TITAN_KIT_TEST_KEEP=1 keeps the logs ($tmp)"
exit $((failed > 0))
