#!/usr/bin/env bash
# device-kit.sh - packs what the GPU checks need into one archive that runs on a machine with an NVIDIA GPU
# but without Debian's packages (the rented device machines: their own image, no network, minutes of time):
# titan-worker, the CUDA module, libtitan, bench_gpu, cuda_check, the shared libraries they need from this
# machine (not glibc's, not the driver's, not cuBLAS: the GPU machine must have those), the CUDA runtime
# (libcudart, small), bench/gpu.sh and a run.sh. It records what the kit does not carry (needs.txt) and what
# it was built from (kit.txt), and run.sh checks those on the GPU machine before anything runs.
#
# Usage: scripts/device-kit.sh [--no-build] [BUILD_DIR] [KIT_DIR]      (defaults: build, .devkit)
#   --no-build   pack BUILD_DIR as it is (the kit's test runs inside `meson test`, which must not run ninja)
# Then, on the GPU machine, from the repository root (the device tool: carry KIT_DIR):
#   tar xJf .devkit/titan-devkit.tar.xz -C /tmp && /tmp/titan-devkit/run.sh      (results in $OUT)
# run.sh checks the libraries, runs cuda_check (the CUDA backend against OpenBLAS, TAP), then bench/gpu.sh one
# size at a time within a time budget, and writes $OUT/summary.md. docs/OPERATIONS.md, "The GPU run".
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
say() { echo "device-kit: $*"; }
die() { echo "device-kit: error: $*" >&2; exit 1; }

build_it=1
args=()
for a in "$@"; do
  case $a in
    --no-build) build_it=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $a (usage: scripts/device-kit.sh [--no-build] [BUILD_DIR] [KIT_DIR])" ;;
    *) args+=("$a") ;;
  esac
done
[ ${#args[@]} -le 2 ] || die "usage: scripts/device-kit.sh [--no-build] [BUILD_DIR] [KIT_DIR]"
BUILD=${args[0]:-build}
KIT=${args[1]:-.devkit}

for t in readelf objdump ldd tar xz; do
  command -v "$t" >/dev/null || die "$t is missing here (binutils, libc-bin, tar, xz-utils)"
done
[ -f "$BUILD/build.ninja" ] || die "$BUILD is not a build directory (make, or meson setup $BUILD)"
if [ "$build_it" = 1 ]; then
  ninja -C "$BUILD" >/dev/null || die "the build failed: ninja -C $BUILD"
fi
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
bins=("$kit/build/titan-worker" "$kit/build/titan-backend-cuda.so" "$kit/build/bench/bench_gpu"
  "$kit/build/tests/cuda_check")

# The libraries those programs load, as this machine resolves them (with the kit's libtitan, which bench_gpu
# looks for in the build directory: without it, ldd would miss libtitan's own libraries), except the C
# library's own (any newer glibc runs them), libgcc/libstdc++ (likewise), and the driver's and cuBLAS (the
# GPU machine's match its driver; cuBLAS is too large to carry). The CUDA runtime is carried: it is small,
# and the module needs the major version it was built with.
skip='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libgcc_s|libstdc\+\+|libcuda|libcublas|libcublasLt|libnvidia-ml|libtitan)\.so'
LD_LIBRARY_PATH=$kit/lib ldd "${bins[@]}" "$kit/lib/libtitan.so.0" 2>/dev/null |
  awk '/=> \// {print $1, $3}' | sort -u | while read -r name path; do
    if ! [[ $name =~ $skip ]]; then cp -L "$path" "$kit/lib/$name"; fi
  done
cudart=$(find "$kit/lib" -name 'libcudart.so.*' -printf '%f\n' | head -n 1)
[ -n "$cudart" ] || die "the CUDA module links no libcudart that this machine resolves (ldd $BUILD/titan-backend-cuda.so)"
cuda_major=${cudart#libcudart.so.}
cuda_major=${cuda_major%%.*}

# needs.txt: every library a kit program or carried library names (ELF NEEDED) that the kit does not carry,
# with who needs it, plus the two the programs load by name: libcuda.so.1 (the driver's, loaded by
# libcudart) and libnvidia-ml.so.1 (NVML, optional: gpu_info's power and clocks).
# Format, tab-separated: soname, what it is, needed by (space-separated), required|optional.
describe() {
  case $1 in
    libcublas.so.*) echo "cuBLAS ${1#libcublas.so.}" ;;
    libcublasLt.so.*) echo "cuBLASLt ${1#libcublasLt.so.}" ;;
    libcudart.so.*) echo "the CUDA ${1#libcudart.so.} runtime" ;;
    libcuda.so.*) echo "the NVIDIA driver's CUDA library" ;;
    libnvidia-ml.so.*) echo "NVML, from the NVIDIA driver" ;;
    libc.so.* | libm.so.* | libdl.so.* | libpthread.so.* | librt.so.* | libresolv.so.*) echo "glibc" ;;
    ld-linux*) echo "glibc's dynamic loader" ;;
    libgcc_s.so.*) echo "GCC's runtime (libgcc_s)" ;;
    libstdc++.so.*) echo "GCC's C++ runtime (libstdc++)" ;;
    *) echo "a system library" ;;
  esac
}
declare -A users=()
for f in "${bins[@]}" "$kit"/lib/*; do
  while read -r lib; do
    [ -e "$kit/lib/$lib" ] || users[$lib]+="${users[$lib]:+ }$(basename "$f")"
  done < <(readelf -dW "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
done
{
  echo "# the libraries the kit needs from the GPU machine (scripts/device-kit.sh): soname, what, needed by, kind"
  for lib in $(printf '%s\n' "${!users[@]}" | sort); do
    printf '%s\t%s\t%s\trequired\n' "$lib" "$(describe "$lib")" "${users[$lib]}"
  done
  printf 'libcuda.so.1\t%s\t%s (loads it)\trequired\n' "$(describe libcuda.so.1)" "$cudart"
  printf 'libnvidia-ml.so.1\t%s\ttitan-backend-cuda.so (loads it)\toptional\n' "$(describe libnvidia-ml.so.1)"
} >"$kit/needs.txt"

# kit.txt: what the kit was built from. glibc: the newest GLIBC_ symbol version any kit file references.
glibc=$(for f in "${bins[@]}" "$kit"/lib/*; do objdump -T "$f" 2>/dev/null; done |
  grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
# The GPU architectures the module carries: its titan_cuda_archs string (cuda_kernels.cu), read from the file.
archs=unknown
mod=$kit/build/titan-backend-cuda.so
read -r saddr soff < <(readelf -SW "$mod" | awk '{for (i = 1; i < NF; i++) if ($i == ".rodata") print $(i + 2), $(i + 3)}') || true
read -r vaddr vsize < <(readelf -sW "$mod" | awk '$8 == "titan_cuda_archs" {print $2, $3; exit}') || true
if [ -n "${saddr:-}" ] && [ -n "${vaddr:-}" ]; then
  off=$((0x$vaddr - 0x$saddr + 0x$soff))
  archs=$(dd if="$mod" bs=1 skip="$off" count="$vsize" status=none | tr -d '\0')
fi
{
  echo "built: $(date -u '+%Y-%m-%d %H:%M:%SZ') on $(hostname)"
  echo "git: $(git -C "$root" describe --always --dirty 2>/dev/null || echo 'no commit')"
  echo "cuda_major: $cuda_major"
  echo "cudart: $cudart"
  echo "cuda_archs: $archs"
  echo "glibc: ${glibc:-unknown}"
  echo "carried: $(cd "$kit/lib" && echo *)"
} >"$kit/kit.txt"

cat >"$kit/run.sh" <<'EOF'
#!/usr/bin/env bash
# run.sh - the titan device kit's GPU run (scripts/device-kit.sh; docs/OPERATIONS.md, "The GPU run"):
#   1. checks, before anything runs, that this machine has every library the kit does not carry
#      (needs.txt); if one is missing, says which and where it looked, and stops (exit 2);
#   2. runs cuda_check (the CUDA backend against OpenBLAS, TAP; and BERT encoders on the GPU against the CPU,
#      with the MiniLM-L6-shaped encoder's benchmark) within part of the time budget;
#   3. runs the GPU benchmark (bench/gpu.sh) one size at a time, smallest first, while the rest of the
#      budget can fit the next size (predicted from the last one's time, as n^3); each step is killed,
#      with everything it started, when the budget runs out;
#   4. writes $OUT/summary.md (the GPU, driver, runtime, libraries, each check, each ratio, what was
#      skipped for time, the verdict), beside env.txt, libs.txt, cuda_check.tap and bench/n*/.
# Environment:
#   OUT                   where results go (default /tmp/titan-devkit-out)
#   TITAN_KIT_BUDGET_S    the whole run's time budget in seconds (default 480); it ends within it and
#                         a few seconds more
#   TITAN_KIT_CHECK_S     the most cuda_check may take (default 5/8 of the budget)
#   TITAN_KIT_CHECK_ARGS  more cuda_check arguments (e.g. "--big 2048")
#   TITAN_KIT_CUDA_LIBS   DIR[:DIR...]: take CUDA's and the driver's libraries from these directories
#                         only (default: the toolkit's directories, pip wheels' nvidia/*/lib, the
#                         ldconfig cache and the system directories)
#   BENCH_GPU_SIZES       the benchmark sizes (default 1024,2048,4096,8192), run smallest first
#   BENCH_GPU_REPS, BENCH_GPU_DTYPE, BENCH_GPU_WORKER_ARGS   as bench/gpu.sh reads them
# Exit status: 0 when the libraries were there, every check passed and every benchmark that ran passed
# (sizes skipped for time are listed, not failed); 1 when a check or a benchmark failed, timed out or
# none ran; 2 when a library is missing (nothing ran).
set -uo pipefail
kit="$(cd "$(dirname "$0")" && pwd)"
OUT=${OUT:-/tmp/titan-devkit-out}
mkdir -p "$OUT" || { echo "run.sh: cannot create $OUT" >&2; exit 2; }
t0=$(date +%s)
BUDGET=${TITAN_KIT_BUDGET_S:-480}
[[ $BUDGET =~ ^[0-9]+$ ]] && [ "$BUDGET" -gt 0 ] || { echo "run.sh: TITAN_KIT_BUDGET_S must be a number of seconds" >&2; exit 2; }
CHECK_S=${TITAN_KIT_CHECK_S:-$((BUDGET * 5 / 8))}
KILL_GRACE=5 # seconds between a step's TERM and its KILL
SUM=$OUT/summary.md
kv() { sed -n "s/^$1: //p" "$kit/kit.txt"; }

left() { echo $((BUDGET - ($(date +%s) - t0))); }
# Runs "$@" in a process group of its own, for at most $1 seconds, then TERM to the whole group and KILL
# KILL_GRACE seconds later: a hung step and whatever it started (a worker) end with it.
bounded() {
  local s=$1
  shift
  [ "$s" -ge 1 ] || s=1
  timeout -k "$KILL_GRACE" "$s" "$@"
}
# at most $1 seconds, and no more than the budget has left: for the small steps (nvidia-smi, ldd, python3).
upto() {
  local l
  l=$(left)
  echo $((l < $1 ? l : $1))
}
say() { echo "run.sh: $*"; }
md() { printf '%s\n' "$@" >>"$SUM"; }

for t in timeout awk sed grep tee date; do
  if ! command -v "$t" >/dev/null; then
    echo "# titan device kit: NOT RUN: $t is missing on this machine" >"$SUM"
    echo "run.sh: NOT RUN: $t is missing on this machine (coreutils, gawk or mawk, sed, grep, libc-bin)" >&2
    exit 2
  fi
done

# ---- the summary's head (rewritten at the end with the verdict) ----
: >"$SUM"
md "# titan device kit: INCOMPLETE (run.sh did not finish)" ""
md "- kit: built $(kv built), git $(kv git), CUDA $(kv cuda_major) runtime carried ($(kv cudart)), module code for sm $(kv cuda_archs)"
md "- machine: $(hostname), $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(uname -sr), $(getconf GNU_LIBC_VERSION 2>/dev/null || echo 'glibc ?')"
md "- run: $(date -u '+%Y-%m-%d %H:%M:%SZ'), budget ${BUDGET} s (cuda_check at most ${CHECK_S} s)"

# ---- the GPU, as the driver sees it ----
smi() { bounded "$(upto 20)" nvidia-smi "$@" 2>&1; }
gpus="" drv="" drv_cuda="" cc=""
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(smi -L | grep '^GPU ')
  q=$(smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader -i 0) || q=""
  drv=$(awk -F', ' 'NR == 1 {print $2}' <<<"$q")
  cc=$(awk -F', ' 'NR == 1 {print $4}' <<<"$q")
  drv_cuda=$(smi -q | sed -n 's/^CUDA Version *: *//p' | head -n 1)
fi
md "" "## GPU" ""
if [ -n "$gpus" ]; then
  while read -r g; do md "- $g"; done <<<"$gpus"
  md "- driver: ${drv:-?} (supports CUDA ${drv_cuda:-?}); GPU 0: $(awk -F', ' 'NR == 1 {print $3 ", compute capability " $4}' <<<"$q")"
  # The carried runtime needs a driver of its major version (or CUDA's forward-compatibility libcuda).
  if [[ ${drv_cuda%%.*} =~ ^[0-9]+$ ]] && [ "${drv_cuda%%.*}" -lt "$(kv cuda_major)" ]; then
    md "- **the driver may be too old**: it supports CUDA $drv_cuda, the kit's runtime is CUDA $(kv cuda_major): expect cudaErrorInsufficientDriver unless a newer libcuda from CUDA's compat package is found first (/usr/local/cuda/compat)"
  fi
else
  md "- **no GPU visible**: $(command -v nvidia-smi >/dev/null 2>&1 && echo 'nvidia-smi -L lists none' || echo 'nvidia-smi is not installed (no NVIDIA driver here)')"
fi

# ---- 1. the libraries ----
# Where they are looked for: the kit's lib/ first, then CUDA's usual places (or TITAN_KIT_CUDA_LIBS only),
# the caller's LD_LIBRARY_PATH, the ldconfig cache, the system directories. LD_LIBRARY_PATH is built from
# the same directories, so that what the check finds is what the programs load.
dirs=("$kit/lib")
cuda_dirs=()
add() { local d; for d in "$@"; do [ -d "$d" ] && cuda_dirs+=("$d"); done; return 0; }
if [ -n "${TITAN_KIT_CUDA_LIBS+set}" ]; then
  IFS=: read -r -a extra <<<"$TITAN_KIT_CUDA_LIBS"
  add "${extra[@]}"
  cuda_only=1
else
  cuda_only=0
  add /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
    /usr/local/cuda/compat /usr/local/nvidia/lib64 /usr/local/nvidia/lib
  for py in python3 /usr/bin/python3; do
    sp=$(bounded "$(upto 20)" "$py" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) || continue
    for s in $sp; do add "$s"/nvidia/*/lib "$s"/nvidia/cu*/lib; done
  done
fi
IFS=: read -r -a caller <<<"${LD_LIBRARY_PATH:-}"
sys_dirs=(/lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib64 /lib /usr/lib)
ldcache=$( (command -v ldconfig >/dev/null && ldconfig -p || /sbin/ldconfig -p) 2>/dev/null)
is_cuda() { [[ $1 =~ ^lib(cu|nvidia) ]]; }
# resolve NAME: prints where NAME would be found, or nothing.
resolve() {
  local d ds=("$kit/lib" "${cuda_dirs[@]}")
  if is_cuda "$1" && [ "$cuda_only" = 1 ]; then
    :
  else
    ds+=("${caller[@]}")
  fi
  for d in "${ds[@]}"; do
    [ -n "$d" ] && [ -e "$d/$1" ] && { echo "$d/$1"; return; }
  done
  is_cuda "$1" && [ "$cuda_only" = 1 ] && return
  local p
  p=$(awk -v n="$1" '$1 == n && /x86-64/ {print $NF; exit}' <<<"$ldcache")
  [ -n "$p" ] && { echo "$p"; return; }
  for d in "${sys_dirs[@]}"; do [ -e "$d/$1" ] && { echo "$d/$1"; return; }; done
}
# where NAME was looked for, in words.
looked() {
  local w="${kit}/lib"
  [ ${#cuda_dirs[@]} -gt 0 ] && w+=", $(printf '%s, ' "${cuda_dirs[@]}" | sed 's/, $//')"
  if is_cuda "$1" && [ "$cuda_only" = 1 ]; then
    echo "$w (TITAN_KIT_CUDA_LIBS: nowhere else)"
  else
    [ -n "${LD_LIBRARY_PATH:-}" ] && w+=", \$LD_LIBRARY_PATH ($LD_LIBRARY_PATH)"
    echo "$w, the ldconfig cache (ldconfig -p) and ${sys_dirs[*]}"
  fi
}
# other versions of NAME's library (libcublas.so.12 for libcublas.so.13), where they are.
others() {
  local stem=${1%%.so*}.so d f
  for d in "$kit/lib" "${cuda_dirs[@]}" "${caller[@]}" "${sys_dirs[@]}"; do
    [ -n "$d" ] || continue
    for f in "$d/$stem".*; do [ -e "$f" ] && [ "$(basename "$f")" != "$1" ] && echo "$f"; done
  done
  awk -v s="$stem." -v n="$1" 'index($1, s) == 1 && $1 != n {print $NF}' <<<"$ldcache"
}
advice() {
  local n=${1##*.so.}
  case $1 in
    libcublas.so.* | libcublasLt.so.*)
      local wheel=nvidia-cublas
      [ "${n%%.*}" -lt 13 ] 2>/dev/null && wheel=nvidia-cublas-cu${n%%.*}
      echo "install the CUDA $n cuBLAS (pip install $wheel puts it under site-packages/nvidia/.../lib, found there; or the toolkit's libcublas package), or set TITAN_KIT_CUDA_LIBS to the directory that holds it, or build the kit against the CUDA this machine has (meson setup -Dcuda-path=DIR)" ;;
    libcuda.so.*) echo "the NVIDIA driver is not installed, or not visible here (a container needs the driver's libraries mounted: docker --gpus all, NVIDIA_DRIVER_CAPABILITIES=compute,utility)" ;;
    libnvidia-ml.so.*) echo "optional: without NVML, gpu_info has no power, clocks or utilization" ;;
    *) echo "install the package that provides it, or pack the kit where it can be carried (scripts/device-kit.sh)" ;;
  esac
}

missing=0
{
  echo "# the kit's libraries on $(hostname) (run.sh)"
  echo "# searched: $kit/lib, ${cuda_dirs[*]:-no CUDA directories}, LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}, ldconfig -p, ${sys_dirs[*]}"
} >"$OUT/libs.txt"
md "" "## Libraries (needs.txt: what the kit does not carry)" ""
lib_lines=()
while IFS=$'\t' read -r lib what who kind; do
  case $lib in '#'* | '') continue ;; esac
  p=$(resolve "$lib")
  if [ -n "$p" ]; then
    echo "found $lib at $p" >>"$OUT/libs.txt"
    lib_lines+=("- $lib ($what): $p")
  elif [ "$kind" = optional ]; then
    echo "absent $lib (optional)" >>"$OUT/libs.txt"
    lib_lines+=("- $lib ($what, optional): not found; $(advice "$lib")")
  else
    missing=$((missing + 1))
    o=$(others "$lib" | sort -u | head -n 3 | paste -sd ' ')
    msg="missing $lib ($what, needed by ${who// /, }): looked in $(looked "$lib"); $(advice "$lib")${o:+. Found other versions: $o}"
    echo "$msg" | tee -a "$OUT/libs.txt" >&2
    lib_lines+=("- **MISSING** $lib ($what, needed by ${who// /, }): looked in $(looked "$lib"); $(advice "$lib")${o:+. Other versions here: $o}")
  fi
done <"$kit/needs.txt"
# glibc: the kit was built against a glibc at least this new.
need_glibc=$(kv glibc)
have_glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
if [ -n "$need_glibc" ] && [ "$need_glibc" != unknown ] && [ -n "$have_glibc" ] &&
  [ "$(printf '%s\n%s\n' "$need_glibc" "$have_glibc" | sort -V | head -n 1)" != "$need_glibc" ]; then
  missing=$((missing + 1))
  msg="missing glibc $need_glibc (the kit's programs need it; this machine has $have_glibc): pack the kit on a machine with glibc $have_glibc or older"
  echo "$msg" | tee -a "$OUT/libs.txt" >&2
  lib_lines+=("- **MISSING** $msg")
else
  lib_lines+=("- glibc ${have_glibc:-?} (the kit needs ${need_glibc:-?})")
fi
CUDA_PATHS=$(printf '%s:' "${cuda_dirs[@]}")
export LD_LIBRARY_PATH="$kit/lib:${CUDA_PATHS}${LD_LIBRARY_PATH:-}"
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH%:}
# What the loader itself says, libraries of libraries included (cuBLAS needs cuBLASLt): only where the
# list above found everything, since the loader may also look where the kit was built (RUNPATH).
if [ "$missing" = 0 ] && command -v ldd >/dev/null; then
  for f in "$kit/build/titan-worker" "$kit/build/titan-backend-cuda.so" "$kit/build/bench/bench_gpu" \
    "$kit/build/tests/cuda_check"; do
    while read -r l; do
      missing=$((missing + 1))
      msg="missing for $(basename "$f"): $l"
      echo "$msg" | tee -a "$OUT/libs.txt" >&2
      lib_lines+=("- **MISSING** for $(basename "$f") (the loader says): $l")
    done < <(bounded "$(upto 20)" ldd "$f" 2>&1 | grep -E 'not found' | sed 's/^[[:space:]]*//')
  done
fi
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >>"$OUT/libs.txt"
md "${lib_lines[@]}" "- carried in the kit: $(kv carried)" "- LD_LIBRARY_PATH for the run: \`$LD_LIBRARY_PATH\`"

# Whether the module has code for this GPU: its sm list, or PTX (the newest) that the driver compiles.
if [ -n "$cc" ] && [ "$(kv cuda_archs)" != unknown ]; then
  sm=${cc/./}
  read -r -a archs <<<"$(kv cuda_archs)"
  if [[ " ${archs[*]} " == *" $sm "* ]]; then
    md "- GPU code: the module carries sm_$sm for this GPU (compute capability $cc)"
  elif [ "$sm" -gt "${archs[-1]}" ] 2>/dev/null; then
    md "- GPU code: no sm_$sm in the module (sm ${archs[*]}): the driver compiles its compute_${archs[-1]} PTX at load"
  else
    md "- GPU code: **none for this GPU** (compute capability $cc; the module carries sm ${archs[*]}): expect cuda_check to fail with no kernel image"
  fi
fi

{
  echo "== $(date -u) on $(hostname)"
  echo "${gpus:-no GPU listed by nvidia-smi}"
  echo "driver ${drv:-?}, CUDA ${drv_cuda:-?}; kit: $(tr '\n' ';' <"$kit/kit.txt")"
  echo "== libraries"
  cat "$OUT/libs.txt"
} >"$OUT/env.txt"
cat "$OUT/env.txt"

verdict() { # rewrites the summary's first line: $1 the verdict
  sed -i "1s|.*|# titan device kit: $1|" "$SUM"
}
if [ "$missing" -gt 0 ]; then
  md "" "Nothing ran: $missing library problem(s) above."
  verdict "NOT RUN: $missing missing librar$([ "$missing" = 1 ] && echo y || echo ies) (see Libraries)"
  say "NOT RUN: $missing library problem(s); see $SUM"
  exit 2
fi

rc=0
problems=()

# ---- 2. cuda_check ----
lim=$(left)
[ "$lim" -gt "$CHECK_S" ] && lim=$CHECK_S
say "cuda_check (at most ${lim} s)"
s0=$(date +%s)
read -r -a check_args <<<"${TITAN_KIT_CHECK_ARGS:-}"
bounded "$lim" "$kit/build/tests/cuda_check" "$kit/build/titan-worker" "${check_args[@]}" 2>&1 | tee "$OUT/cuda_check.tap"
crc=${PIPESTATUS[0]}
cs=$(($(date +%s) - s0))
tap=$OUT/cuda_check.tap
nok=$(grep -c '^ok ' "$tap")
nnot=$(grep -c '^not ok ' "$tap")
plan=$(grep -m1 -E '^1\.\.[0-9]+' "$tap")
gi=$(sed -n 's/^# gpu_info: //p' "$tap" | head -n 1)
field() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",}]*\)\"\{0,1\}.*/\1/p" <<<"$gi" | head -n 1; }
if [ "$crc" = 124 ] || [ "$crc" = 137 ]; then
  cstat="**TIMED OUT** after ${cs} s (its limit: ${lim} s)"
  problems+=("cuda_check timed out")
elif [[ $plan =~ ^1\.\.0 ]]; then
  cstat="**SKIPPED**: ${plan#*# SKIP } (on a GPU machine a skip is a failure)"
  problems+=("cuda_check skipped")
elif [ "$crc" != 0 ] || [ "$nnot" -gt 0 ] || [ "$nok" = 0 ]; then
  cstat="**FAILED**: $nok ok, $nnot not ok, exit status $crc"
  problems+=("cuda_check failed ($nnot not ok)")
else
  cstat="passed: $nok ok, 0 not ok"
fi
[ -n "$plan" ] && [[ ! $plan =~ ^1\.\.0 ]] && [ "$((nok + nnot))" != "${plan#1..}" ] &&
  cstat+="; $((nok + nnot)) of the ${plan#1..} planned lines ran"
md "" "## cuda_check: $cstat (${cs} s)" ""
if [ -n "$gi" ]; then
  md "- gpu_info: $(field name), compute capability $(field cuda_capability), driver $(field driver_version), CUDA runtime $(field runtime_version)"
fi
while read -r l; do
  case $l in
    'ok '* | 'not ok '* | '1..0'*) md "- ${l/not ok/**not ok**}" ;;
  esac
done <"$tap"
# The encoder benchmark that cuda_check ran ("# bert_bench:" lines): the MiniLM-L6-shaped encoder through a CUDA
# worker and a CPU worker, embed of token ids, median milliseconds per request.
bb=$(grep '^# bert_bench: ' "$tap")
if [ -n "$bb" ]; then
  md "" "## Encoder benchmark (cuda_check): MiniLM-L6's shape (hidden 384, 6 layers, 12 heads, FFN 1536), embed of token ids" ""
  md "| batch (sequences x tokens) | GPU ms | GPU tokens/s | CPU ms | CPU tokens/s | GPU / CPU speed |" "|---|---:|---:|---:|---:|---:|"
  bget() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
  while read -r l; do
    md "| $(bget batch "$l") | $(bget device_ms "$l") | $(bget device_tok_s "$l") | $(bget cpu_ms "$l") | $(bget cpu_tok_s "$l") | $(bget speedup "$l")x |"
  done <<<"$bb"
fi

# ---- 3. the benchmark, one size at a time ----
IFS=', ' read -r -a sizes <<<"${BENCH_GPU_SIZES:-1024,2048,4096,8192}"
mapfile -t sizes < <(printf '%s\n' "${sizes[@]}" | grep -E '^[0-9]+$' | sort -n -u)
md "" "## Benchmark: titan (CUDA worker) against in-process cuBLAS, ${BENCH_GPU_DTYPE:-float32}, ${BENCH_GPU_REPS:-5} reps" ""
md "| n | result | seconds | resident / cuBLAS | service / (cuBLAS + copies) | max rel diff |" "|---:|---|---:|---:|---:|---:|"
prev_n=0 prev_s=0 ran=0 skipped=()
for n in "${sizes[@]}"; do
  l=$(left)
  if [ "$prev_n" -gt 0 ]; then
    # n^3 from the last size's whole step (the start included): an overestimate, on the safe side.
    need=$(awk -v t="$prev_s" -v a="$prev_n" -v b="$n" 'BEGIN {x = t * (b / a) ^ 3; printf "%d", x < 1 ? 1 : x + 0.999}')
  else
    need=5
  fi
  if [ "$l" -lt "$need" ]; then
    [ "$l" -ge 0 ] || l=0
    skipped+=("$n")
    md "| $n | skipped for time: ${l} s left, needs about ${need} s | - | - | - | - |"
    say "n=$n skipped for time (${l} s left, needs about ${need} s)"
    continue
  fi
  d=$OUT/bench/n$n
  mkdir -p "$d"
  say "bench n=$n (at most ${l} s)"
  s0=$(date +%s)
  OUT=$d BENCH_GPU_SIZES=$n BENCH_GPU_TIMEOUT=$l BENCH_GPU_EMBED=0 bounded "$l" "$kit/bench/gpu.sh" "$kit/build" 2>&1 |
    tee "$d/run.log"
  brc=${PIPESTATUS[0]}
  bs=$(($(date +%s) - s0))
  prev_n=$n prev_s=$bs
  line=$(grep -m1 "^gpu n=$n " "$d/bench.txt" 2>/dev/null)
  get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
  ran=$((ran + 1))
  if [ "$brc" = 124 ] || [ "$brc" = 137 ]; then
    res="**TIMED OUT** (killed when the budget ran out, after ${bs} s)"
    problems+=("bench n=$n timed out")
  elif [ "$brc" != 0 ] || [ -z "$line" ] || [ "$(get check)" != ok ]; then
    # bench_gpu's or gpu.sh's first complaint, and the worker's last error.
    why=$(grep -h -m1 -E '^bench(-|_)gpu: ' "$d/run.log")
    werr=$(grep -h -E ' (error|fatal): ' "$d/worker.log" 2>/dev/null | tail -n 1)
    why=$(printf '%s%s' "$why" "${werr:+ / worker: $werr}" | tr '|' '/' | cut -c1-400)
    res="**FAILED** (exit status $brc${why:+: $why})"
    problems+=("bench n=$n failed")
  else
    res="ok"
  fi
  md "| $n | $res | $bs | $(get resident_ratio)${line:+x} | $(get service_ratio)${line:+x} | $(get max_rel_diff) |"
done
[ "$ran" = 0 ] && problems+=("no benchmark size ran")
tgt=$(grep -h '^target:' "$OUT"/bench/n*/bench.txt 2>/dev/null | head -n 1)
[ -n "$tgt" ] && md "" "- $tgt"
[ ${#skipped[@]} -gt 0 ] && md "" "- skipped for time: n = ${skipped[*]}"

# ---- 4. the verdict ----
used=$(($(date +%s) - t0))
md "" "## Budget" "" "- used ${used} s of ${BUDGET} s"
if [ ${#problems[@]} -gt 0 ]; then
  rc=1
  v="FAIL: $(printf '%s; ' "${problems[@]}" | sed 's/; $//')"
else
  v="PASS: every check passed, $ran benchmark size(s) ran"
fi
[ ${#skipped[@]} -gt 0 ] && v+="; skipped for time: n = ${skipped[*]}"
verdict "$v"
say "$v"
say "results in $OUT (summary.md)"
exit $rc
EOF
chmod +x "$kit/run.sh"
mkdir -p "$KIT"
XZ_OPT=${XZ_OPT:--T0} tar -C "$stage" -cJf "$KIT/titan-devkit.tar.xz" titan-devkit
say "$(find "$kit/lib" -type f | wc -l) libraries, $(du -sh "$kit" | cut -f1) unpacked, $(du -h "$KIT/titan-devkit.tar.xz" | cut -f1) packed: $KIT/titan-devkit.tar.xz"
say "needs from the GPU machine: $(grep -v '^#' "$kit/needs.txt" | cut -f1 | paste -sd ' ')"
say "on the GPU machine: tar xJf $KIT/titan-devkit.tar.xz -C /tmp && /tmp/titan-devkit/run.sh"
