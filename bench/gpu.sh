#!/usr/bin/env bash
# gpu.sh - the GPU benchmark (`make bench-gpu`): matrix_multiply through a CUDA titan-worker against
# in-process cuBLAS, with and without resident operands, split into transfer and compute, beside a bare
# ZeroMQ loopback round trip of as many bytes (bench/bench_gpu.c). Meant to run once on a rented GPU
# machine: a few minutes on an H100.
#
# Usage: bench/gpu.sh BUILD_DIR
# Builds BUILD_DIR if needed (ninja), starts BUILD_DIR/titan-worker --device cuda on a free loopback port,
# runs BUILD_DIR/bench/bench_gpu against it and stops the worker. Results go to ${OUT:-BUILD_DIR/bench-gpu}:
#   table.md       the markdown tables (ready for docs/BENCHMARKS.md)
#   results.json   every measure (median, min, max, samples) and the machine
#   bench.txt      bench_gpu's whole output
#   worker.log     the worker's log (warnings and errors)
#   nvidia-smi.txt nvidia-smi -q, when nvidia-smi answers
#   embed.txt      the BERT encoder's bench on the GPU (bench/bench_embed.py), where python3-torch is installed
# Knobs (environment): BENCH_GPU_SIZES (default 1024,2048,4096,8192), BENCH_GPU_REPS (default 5),
# BENCH_GPU_DTYPE (float32 or float64), BENCH_GPU_WORKER_ARGS (extra titan-worker arguments),
# BENCH_GPU_TIMEOUT (seconds for bench_gpu, default 300), BENCH_GPU_EMBED (0: no encoder bench).
# Exit status: 0 when everything ran and every product matched (the targets are reported, not
# enforced); 2 when there is no GPU or nothing to run; 1 when something failed.
set -uo pipefail

die() { echo "bench-gpu: $*" >&2; exit 2; }

[ $# -eq 1 ] || die "usage: bench/gpu.sh BUILD_DIR"
[ -d "$1" ] || die "build directory '$1' not found (run 'make' or 'meson setup $1' first)"
BUILD=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || die "cannot enter the repository root"

# 1. A GPU, before anything else: without one there is nothing to measure.
if ! command -v nvidia-smi >/dev/null 2>&1; then
  die "no GPU: nvidia-smi is not installed, so there is no NVIDIA driver here; this bench needs a machine with an NVIDIA GPU"
fi
if ! gpus=$(nvidia-smi -L 2>&1) || ! grep -q '^GPU ' <<<"$gpus"; then
  die "no GPU: nvidia-smi lists none (${gpus:-no output}); this bench needs a machine with an NVIDIA GPU"
fi

# The worker (--device cuda: GPU 0) and bench_gpu's in-process cuBLAS each hold a CUDA context on GPU 0.
mode=$(nvidia-smi --query-gpu=compute_mode --format=csv,noheader -i 0 2>/dev/null)
case $mode in
  *Exclusive* | *Prohibited*)
    die "GPU 0's compute mode is $mode: the worker and the in-process cuBLAS need a context each (as root: nvidia-smi -i 0 -c DEFAULT)" ;;
esac

# 2. The build.
# A device kit (scripts/device-kit.sh) is prebuilt: titan-worker and bench/bench_gpu without build.ninja.
if [ -f "$BUILD/build.ninja" ]; then
  ninja -C "$BUILD" >/dev/null || { echo "bench-gpu: the build failed: run ninja -C $1 to see why" >&2; exit 1; }
elif [ ! -x "$BUILD/titan-worker" ]; then
  die "$BUILD has no build.ninja: configure it first (meson setup $1)"
fi
WORKER=$BUILD/titan-worker
BENCH=$BUILD/bench/bench_gpu
[ -x "$WORKER" ] || die "$WORKER is missing after the build"
[ -x "$BENCH" ] || die "$BENCH was not built: the build found no CUDA toolkit (meson setup --reconfigure $1 -Dcuda=enabled -Dcuda-path=/usr/local/cuda)"

OUT=${OUT:-$BUILD/bench-gpu}
mkdir -p "$OUT" || die "cannot create $OUT"
rm -f "$OUT/table.md" "$OUT/results.json" "$OUT/bench.txt" "$OUT/worker.log" "$OUT/nvidia-smi.txt"
SIZES=${BENCH_GPU_SIZES:-1024,2048,4096,8192}
REPS=${BENCH_GPU_REPS:-5}
DTYPE=${BENCH_GPU_DTYPE:-float32}
LIMIT=${BENCH_GPU_TIMEOUT:-300}
read -r -a WORKER_EXTRA <<<"${BENCH_GPU_WORKER_ARGS:-}"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/titan-bench-gpu.XXXXXX") || die "mktemp failed"
WORKER_PID=
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [ -n "$WORKER_PID" ]; then
    kill -TERM "$WORKER_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$WORKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$WORKER_PID" 2>/dev/null
    wait "$WORKER_PID" 2>/dev/null
    WORKER_PID=
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== titan GPU benchmark $(date -u '+%Y-%m-%d %H:%M:%SZ')"
nvidia-smi --query-gpu=index,name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max \
  --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
nvidia-smi -q >"$OUT/nvidia-smi.txt" 2>&1 || rm -f "$OUT/nvidia-smi.txt"
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "machine: $(nproc) cores, ${cpu_model:-unknown CPU}, $(uname -sr)"
echo "git: $(git describe --always --dirty 2>/dev/null || echo 'no commit')"

# 3. The worker. n=8192 float64 sends 1 GiB of operands, over the default --max-request-bytes 1G.
"$WORKER" --device cuda --bind 'tcp://127.0.0.1:*' --endpoint-file "$TMP/worker.ep" --log-level warn \
  --max-request-bytes 2G "${WORKER_EXTRA[@]}" >"$OUT/worker.log" 2>&1 &
WORKER_PID=$!
EP=
for _ in $(seq 600); do
  if [ -s "$TMP/worker.ep" ]; then EP=$(head -n 1 "$TMP/worker.ep"); break; fi
  kill -0 "$WORKER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$EP" ]; then
  echo "bench-gpu: titan-worker --device cuda did not start (or wrote no endpoint within 60 s); its log:" >&2
  tail -n 20 "$OUT/worker.log" >&2
  exit 1
fi
echo "worker: $EP (pid $WORKER_PID, --device cuda ${WORKER_EXTRA[*]:-})"

# 4. The bench. --foreground: Ctrl-C reaches bench_gpu too.
rc=0
timeout --foreground "$LIMIT" "$BENCH" --endpoint "$EP" --sizes "$SIZES" --reps "$REPS" --dtype "$DTYPE" \
  --json "$OUT/results.json" --table "$OUT/table.md" 2>&1 | tee "$OUT/bench.txt"
bench_rc=${PIPESTATUS[0]}
if [ "$bench_rc" != 0 ]; then
  [ "$bench_rc" = 124 ] && echo "bench-gpu: bench_gpu ran past ${LIMIT}s (BENCH_GPU_TIMEOUT)" >&2
  echo "bench-gpu: bench_gpu failed (exit status $bench_rc)" >&2
  rc=1
fi
if ! kill -0 "$WORKER_PID" 2>/dev/null; then
  echo "bench-gpu: titan-worker died during the run; the end of its log:" >&2
  tail -n 20 "$OUT/worker.log" >&2
  rc=1
elif [ -s "$OUT/worker.log" ]; then
  echo "-- titan-worker log (warnings and errors)"
  tail -n 20 "$OUT/worker.log"
fi
cleanup
# 5. The BERT encoder (issue 20) on the GPU: a MiniLM-L6-shaped model through a --device cuda worker of its own,
#    over ZeroMQ and HTTP, beside torch on this machine's CPU (bench/bench_embed.py; needs python3-torch, numpy
#    and pyzmq: scripts/deps.sh bench). Skipped, and said so, where they are missing.
#    BENCH_GPU_EMBED=0 leaves it out (the device kit does: cuda_check benches the encoder there, and the kit
#    carries neither bench_embed.py nor the model generator).
if [ "${BENCH_GPU_EMBED:-1}" = 0 ]; then
  :
elif [ ! -f bench/bench_embed.py ] || [ ! -f tests/encoder/make_model.py ]; then
  echo "bench-gpu: the encoder bench needs bench/bench_embed.py and tests/encoder/make_model.py: not run" >&2
elif /usr/bin/python3 -c 'import torch, numpy, zmq' 2>/dev/null; then
  echo
  echo "-- BERT encoder on the GPU (bench_embed.py --worker-args '--device cuda')"
  if ! timeout --foreground "$LIMIT" /usr/bin/python3 bench/bench_embed.py "$WORKER" --reps 5 --rounds 2 \
      --worker-args "--device cuda ${WORKER_EXTRA[*]:-}" 2>&1 | tee "$OUT/embed.txt"; then
    echo "bench-gpu: bench_embed failed" >&2
    rc=1
  fi
else
  echo "bench-gpu: the encoder bench needs python3-torch, numpy and pyzmq (scripts/deps.sh bench): not run" >&2
fi
echo
files=
for f in table.md results.json bench.txt embed.txt worker.log nvidia-smi.txt; do [ -f "$OUT/$f" ] && files+=" $f"; done
echo "bench-gpu: results in $OUT:${files:- none}"
[ "$rc" = 0 ] || echo "bench-gpu: something failed (see above)" >&2
exit "$rc"
