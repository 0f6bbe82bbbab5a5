#!/usr/bin/env bash
# run.sh - the benchmark suite (`make bench`): titan-worker against a bare echo server, in-process sgemm and the seed worker.
#
# Usage: bench/run.sh BUILD_DIR
# Builds nothing: BUILD_DIR must hold titan-worker and bench/{echo_server,bench_ping,bench_matmul,bench_router}.
# Needs ../shared/baselines (shared/ is a sibling of the repository) and /usr/bin/python3
# with zmq, numpy and torch. Exits 0 when every bench ran, even if a target was missed (this is
# a report); non-zero when something broke (a server did not start, a bench failed, a wrong product).
# Knobs (environment): BENCH_WORKER_ARGS (extra titan-worker arguments), BENCH_PINGS (timed pings
# per server, default 20000), BENCH_DURATION (seconds of pipelined traffic, default 3), BENCH_SIZES (matmul sizes, default 256,512,1024,2048),
# BENCH_JSON_SIZES (default 64,256,512), BENCH_PY_SIZES (the Python client against the C client, default 2048).
set -uo pipefail

die() { echo "bench: $*" >&2; exit 2; }

[ $# -eq 1 ] || die "usage: bench/run.sh BUILD_DIR"
[ -d "$1" ] || die "build directory '$1' not found (run 'make' first)"
BUILD=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || die "cannot enter the repository root"

WORKER=$BUILD/titan-worker
ECHO=$BUILD/bench/echo_server
PING=$BUILD/bench/bench_ping
MATMUL=$BUILD/bench/bench_matmul
ROUTER=$BUILD/bench/bench_router
for f in "$WORKER" "$ECHO" "$PING" "$MATMUL" "$ROUTER" "$BUILD/libtitan.so"; do
  [ -x "$f" ] || die "$f is missing: build first (make, or ninja -C $1)"
done

# The baselines live in the shared folder beside the repository, here and in CI.
BASELINES=../shared/baselines
for f in seed_worker.py json_bench.py; do
  [ -f "$BASELINES/$f" ] || die "$BASELINES/$f not found: the shared/ folder must be a sibling of the repository ($(pwd)/$BASELINES)"
done
PY=/usr/bin/python3
[ -x "$PY" ] || die "$PY not found (the baselines need Debian's python3 with python3-zmq, python3-numpy, python3-torch)"
"$PY" -c 'import zmq, numpy, torch' 2>/dev/null ||
  die "$PY cannot import zmq, numpy and torch: apt-get install python3-zmq python3-numpy python3-torch"

PINGS=${BENCH_PINGS:-20000}
DURATION=${BENCH_DURATION:-3}
SIZES=${BENCH_SIZES:-256,512,1024,2048}
JSON_SIZES=${BENCH_JSON_SIZES:-64,256,512}
read -r -a WORKER_EXTRA <<<"${BENCH_WORKER_ARGS:-}"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/titan-bench.XXXXXX") || die "mktemp failed"
PIDS=()
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits for a server's endpoint file; prints the first endpoint in it.
wait_endpoint() { # name pid file log
  local name=$1 pid=$2 file=$3 log=$4
  for _ in $(seq 200); do
    if [ -s "$file" ]; then head -n 1 "$file"; return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench: $name exited before it was ready; its log:" >&2; tail -n 20 "$log" >&2; return 1
    fi
    sleep 0.1
  done
  echo "bench: $name did not write $file within 20 s; its log:" >&2; tail -n 20 "$log" >&2
  return 1
}

"$ECHO" --endpoint-file "$TMP/echo.ep" 'tcp://127.0.0.1:*' >"$TMP/echo.log" 2>&1 &
PIDS+=($!)
ECHO_EP=$(wait_endpoint echo_server "$!" "$TMP/echo.ep" "$TMP/echo.log") || exit 1

"$WORKER" --bind 'tcp://127.0.0.1:*' --endpoint-file "$TMP/worker.ep" --log-level warn "${WORKER_EXTRA[@]}" \
  >"$TMP/worker.log" 2>&1 &
WORKER_PID=$!
PIDS+=("$WORKER_PID")
WORKER_EP=$(wait_endpoint titan-worker "$WORKER_PID" "$TMP/worker.ep" "$TMP/worker.log") || exit 1

# seed_worker.py cannot bind port 0, so ask the kernel for a free loopback port first.
SEED_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
  die "cannot find a free loopback port"
SEED_EP=tcp://127.0.0.1:$SEED_PORT
# It logs every request at INFO, as the design sketched it; that cost is part of the baseline.
"$PY" "$BASELINES/seed_worker.py" --bind "$SEED_EP" --device cpu >"$TMP/seed.log" 2>&1 &
SEED_PID=$!
PIDS+=("$SEED_PID")
seed_ready=0
for _ in $(seq 120); do
  if ! kill -0 "$SEED_PID" 2>/dev/null; then break; fi
  if "$PY" -c 'import sys, zmq; s = zmq.Context().socket(zmq.REQ); s.linger = 0; s.rcvtimeo = 500; s.connect(sys.argv[1]); s.send_json({"op": "ping"}); sys.exit(0 if s.recv_json().get("status") == "ok" else 1)' \
    "$SEED_EP" 2>/dev/null; then
    seed_ready=1; break
  fi
  sleep 0.25
done
if [ "$seed_ready" != 1 ]; then
  echo "bench: seed_worker.py did not answer a ping on $SEED_EP; its log:" >&2; tail -n 20 "$TMP/seed.log" >&2
  exit 1
fi

cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "== titan benchmarks $(date -u '+%Y-%m-%d %H:%M:%SZ')"
echo "machine: $(nproc) cores, ${cpu_model:-unknown CPU}, $(uname -sr); load average $(cut -d" " -f1-3 /proc/loadavg)"
echo "titan-worker $WORKER_EP ${WORKER_EXTRA[*]:-}| echo_server $ECHO_EP | seed_worker.py $SEED_EP"
echo "git: $(git describe --always --dirty 2>/dev/null || echo 'no commit')"

BROKEN=0
# Runs a bench command with a time limit, echoes its output and appends it to $TMP/results.
# It runs in the background and the shell waits for it, so that Ctrl-C or a TERM stops the run at
# once (bash defers traps while a foreground command runs, and timeout puts it in its own group).
run_bench() { # limit_s name cmd...
  local limit=$1 name=$2 pid rc; shift 2
  echo "-- $name"
  timeout "$limit" "$@" >"$TMP/out" 2>"$TMP/err" &
  pid=$!
  PIDS+=("$pid")
  wait "$pid"; rc=$?
  unset 'PIDS[-1]'
  if [ "$rc" != 0 ]; then
    cat "$TMP/out"; cat "$TMP/err" >&2
    echo "bench: $name failed (exit status or timeout after ${limit}s)" >&2
    BROKEN=1
    return 1
  fi
  cat "$TMP/out"; cat "$TMP/err" >&2
  cat "$TMP/out" >>"$TMP/results"
}
: >"$TMP/results"
# kv LINE_PREFIX KEY: the value of KEY= on the first results line that starts with LINE_PREFIX.
kv() { grep -m 1 -- "^$1" "$TMP/results" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

# 1. Ping round trip: titan and the echo server take turns in blocks of 250 pings, so that
#    drift on a shared machine hits both alike.
run_bench 600 "ping RTT: titan and echo_server, interleaved" "$PING" --label titan --ref-label echo \
  --ref "$ECHO_EP" --no-throughput --pings "$PINGS" "$WORKER_EP"
# 2. Pipelined throughput, 16 DEALER clients with 64 pings in flight each.
run_bench 300 "pipelined pings: echo_server" "$PING" --label echo --no-rtt --clients 16 --window 64 \
  --duration "$DURATION" "$ECHO_EP"
run_bench 300 "pipelined pings: titan" "$PING" --label titan --no-rtt --clients 16 --window 64 \
  --duration "$DURATION" "$WORKER_EP"
# 3. float32 matmul over binary frames against in-process sgemm.
run_bench 900 "matmul float32 binary vs in-process sgemm" "$MATMUL" --sizes "$SIZES" --echo "$ECHO_EP" "$WORKER_EP"
# 3b. The Python client (pyzmq) and titan_client.Router (libtitan through ctypes) against the C client, taking
#     turns on the same worker in every round.
PY_SIZES=${BENCH_PY_SIZES:-2048}
run_bench 900 "matmul float32: Python client and Router vs C client" "$PY" bench/bench_pyclient.py \
  --lib "$BUILD/libtitan.so" --sizes "$PY_SIZES" "$WORKER_EP"
# 3c. A fresh worker's first 20 float32 1024x1024 products, with the host buffer pool (the default) and
#     without (--host-pool-mb 0), twice each, on workers of its own (BENCH_WORKER_ARGS apply).
run_bench 600 "fresh worker: first 20 products, host pool and --host-pool-mb 0" "$PY" bench/bench_fresh.py \
  "$WORKER" --n 1024 --count 20 --rounds 2 -- "${WORKER_EXTRA[@]}"
# 4. The design's JSON form, the seed worker first (so titan's BLAS threads are idle while it runs).
for target in seed titan; do
  ep=$SEED_EP; [ "$target" = titan ] && ep=$WORKER_EP
  if run_bench 1800 "json_bench.py: $target" "$PY" "$BASELINES/json_bench.py" "$ep" --sizes "$JSON_SIZES"; then
    # One results line per target: "json_seed ping_rtt_s=... matmul_json_64_s=... ...".
    { printf 'json_%s' "$target"; sed -n 's/^\([a-z_0-9]*_s\) \([^ ]*\).*/ \1=\2/p' "$TMP/out" | tr -d '\n'; echo; } \
      >>"$TMP/results"
    if grep -q WRONG "$TMP/out"; then echo "bench: $target answered a wrong JSON product" >&2; BROKEN=1; fi
  fi
  sleep 0.3
done
grep -q 'check=WRONG' "$TMP/results" && { echo "bench: titan answered a wrong binary product (or the clients disagree)" >&2; BROKEN=1; }
if [ -s "$TMP/worker.log" ]; then echo "-- titan-worker log (warnings and errors)"; tail -n 20 "$TMP/worker.log"; fi
if ! kill -0 "$WORKER_PID" 2>/dev/null; then echo "bench: titan-worker died during the run" >&2; BROKEN=1; fi

# ---- summary ----
calc() { awk "BEGIN {x = $1; if (x != x) exit 1; printf \"%.${2:-2}f\", x}" 2>/dev/null; }
# verdict VALUE OP LIMIT: PASS/MISS, or n/a when there is no value.
verdict() {
  [ -n "$1" ] || { echo "n/a"; return; }
  awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN {ok = (op == "<=") ? (v <= l) : (v >= l); print ok ? "PASS" : "MISS"}'
}
# faster SEED_S TITAN_S: "4.7x faster" or "2.0x slower".
faster() {
  awk -v s="$1" -v t="$2" 'BEGIN {if (s == "" || t == "" || s <= 0 || t <= 0) exit;
    if (s >= t) printf "%.1fx faster", s / t; else printf "%.1fx slower", t / s}'
}
row() { printf '%-36s %11s %11s %13s %14s  %s\n' "$@"; }

e_rtt=$(kv "ping_rtt target=echo " median_us); t_rtt=$(kv "ping_rtt target=titan " median_us)
e_p99=$(kv "ping_rtt target=echo " p99_us); t_p99=$(kv "ping_rtt target=titan " p99_us)
e_tp=$(kv "ping_throughput target=echo " per_s); t_tp=$(kv "ping_throughput target=titan " per_s)
t_tp_err=$(kv "ping_throughput target=titan " error_replies)

echo
echo "== summary (ratio = titan / reference; JSON rows: titan against the seed worker)"
row "measure" "titan" "reference" "ratio" "target" "result"
rtt_ratio=$(kv "ping_rtt_ratio " median_ratio)
row "ping RTT median, us (vs echo)" "$t_rtt" "$e_rtt" "${rtt_ratio:+${rtt_ratio}x}" "<= 1.25x" \
  "$(verdict "$rtt_ratio" "<=" 1.25)"
row "ping RTT p99, us (vs echo)" "$t_p99" "$e_p99" "$(calc "$t_p99/$e_p99")x" "-" "info"
row "pipelined pings/s, 16x64 (vs echo)" "$t_tp" "$e_tp" "$(calc "$t_tp/$e_tp")x" ">= 50000/s" "$(verdict "$t_tp" ">=" 50000)"
IFS=, read -r -a size_list <<<"$SIZES"
for n in "${size_list[@]}"; do
  s=$(kv "matmul n=$n " sgemm_s); t=$(kv "matmul n=$n " titan_s); ratio=$(kv "matmul n=$n " ratio)
  target="-"; result="info"
  case $n in
    1024) target="<= 1.4x"; result=$(verdict "$ratio" "<=" 1.4) ;;
    2048) target="<= 1.15x"; result=$(verdict "$ratio" "<=" 1.15) ;;
  esac
  row "matmul f32 n=$n, ms (vs sgemm)" "$(calc "$t*1000" 3)" "$(calc "$s*1000" 3)" "${ratio:+${ratio}x}" "$target" "$result"
done
# Where the time goes: titan minus sgemm, beside a bare ZeroMQ round trip of as many bytes.
for n in "${size_list[@]}"; do
  o=$(kv "matmul n=$n " overhead_s); e=$(kv "matmul n=$n " echo_same_bytes_s)
  row "  n=$n overhead, ms (vs echo bytes)" "$(calc "$o*1000" 3)" "$(calc "$e*1000" 3)" "$(calc "$o/$e")x" "-" "info"
done
IFS=, read -r -a py_list <<<"$PY_SIZES"
for n in "${py_list[@]}"; do
  p="pyclient n=$n "
  c=$(kv "$p" c_s); target="-"; result="info"
  [ "$n" = 2048 ] && { target="<= 1.1x"; result=$(verdict "$(kv "$p" python_ratio)" "<=" 1.1); }
  row "py client f32 n=$n, ms (vs C client)" "$(calc "$(kv "$p" python_s)*1000" 3)" "$(calc "$c*1000" 3)" \
    "$(kv "$p" python_ratio)x" "$target" "$result"
  row "  Router n=$n, ms (vs C client)" "$(calc "$(kv "$p" router_s)*1000" 3)" "$(calc "$c*1000" 3)" \
    "$(kv "$p" router_ratio)x" "-" "info"
done
f="fresh n=1024 "
row "fresh: 2nd product/steady (vs pool off)" "$(kv "$f" pool_second_ratio)x" "$(kv "$f" nopool_second_ratio)x" "-" \
  "<= 1.2x" "$(verdict "$(kv "$f" pool_second_ratio)" "<=" 1.2)"
row "  products 2-12 / steady (mean)" "$(kv "$f" pool_mean_ratio_2_12)x" "$(kv "$f" nopool_mean_ratio_2_12)x" "-" \
  "-" "info"
row "  first 12 products, ms" "$(kv "$f" pool_first12_ms)" "$(kv "$f" nopool_first12_ms)" \
  "$(calc "$(kv "$f" pool_first12_ms)/$(kv "$f" nopool_first12_ms)")x" "-" "info"
s=$(kv "json_seed " ping_rtt_s); t=$(kv "json_titan " ping_rtt_s)
row "JSON ping RTT, us (vs seed)" "$(calc "$t*1e6" 1)" "$(calc "$s*1e6" 1)" "$(faster "$s" "$t")" "-" "info"
IFS=, read -r -a json_list <<<"$JSON_SIZES"
for n in "${json_list[@]}"; do
  s=$(kv "json_seed " "matmul_json_${n}_s"); t=$(kv "json_titan " "matmul_json_${n}_s")
  speedup=$(calc "$s/$t" 4)
  target="-"; result="info"
  [ "$n" = 512 ] && { target=">= 3x faster"; result=$(verdict "$speedup" ">=" 3); }
  row "JSON matmul n=$n, ms (vs seed)" "$(calc "$t*1000" 2)" "$(calc "$s*1000" 2)" \
    "$(faster "$s" "$t")" "$target" "$result"
done
[ "${t_tp_err:-0}" != 0 ] && echo "note: titan answered $t_tp_err pipelined pings with an error (busy?); they are not counted"
echo "openblas: $(kv matmul_setup openblas_threads) threads in the bench process; core $(kv matmul_setup openblas_core)"

# 5. The router (compute_backends.yaml): its cost per request against direct calls to the same worker,
#    and a float32 matmul split over two single-threaded workers. bench_router starts and stops its own
#    three titan-workers (A, B: --threads 1 --blas-threads 1; C: --blas-threads 2).
echo
echo "== routing (bench_router; ratio = routed / direct client, or the split against one worker)"
# ovh RATIO DIFF_US: "1.02x +3.4us".
ovh() { awk -v r="$1" -v d="$2" 'BEGIN {if (r == "" || d == "") exit; printf "%.2fx %+.1fus", r, d}'; }
# speedup REF_MS MS: "1.65x faster" or "1.10x slower".
speedup() {
  awk -v s="$1" -v t="$2" 'BEGIN {if (s == "" || t == "" || s <= 0 || t <= 0) exit;
    if (s >= t) printf "%.2fx faster", s / t; else printf "%.2fx slower", t / s}'
}
if run_bench 300 "router: overhead per request and split matmul (its own workers)" "$ROUTER" "$WORKER"; then
  echo
  row "measure" "titan" "reference" "ratio" "target" "result"
  for op in ping matmul16; do
    p="router measure=overhead op=$op "
    d=$(kv "$p" direct_us)
    row "routed $op, us (vs direct)" "$(kv "$p" routed_us)" "$d" \
      "$(ovh "$(kv "$p" ratio)" "$(kv "$p" diff_us)")" "-" "info"
    row "  + dead backend skipped (open)" "$(kv "$p" dead_us)" "$d" \
      "$(ovh "$(kv "$p" dead_ratio)" "$(kv "$p" dead_diff_us)")" "-" "info"
  done
  while read -r n; do
    p="router measure=split n=$n "
    split_ms=$(kv "$p" split_ms)
    row "split n=$n on 2 workers, ms (vs 1)" "$split_ms" "$(kv "$p" one_ms)" \
      "$(speedup "$(kv "$p" one_ms)" "$split_ms")" "-" "info"
    row "  vs one worker, 2 BLAS threads" "$split_ms" "$(kv "$p" two_thread_ms)" \
      "$(speedup "$(kv "$p" two_thread_ms)" "$split_ms")" "-" "info"
  done < <(sed -n 's/^router measure=split n=\([0-9]*\) .*/\1/p' "$TMP/results")
  echo "note: $(kv "router measure=setup " cores) cores; the split's workers run --threads 1 --blas-threads 1, one core each"
fi

# 6. Batch jobs through Redis Streams against a bare LPUSH/BRPOP queue on the same redis-server.
echo
if command -v redis-server >/dev/null && "$PY" -c 'import redis' 2>/dev/null; then
  "$PY" "$(dirname "$0")/jobs_bench.py" "$BUILD" --jobs "${BENCH_JOBS:-5000}" --rounds "${BENCH_JOBS_ROUNDS:-3}" || BROKEN=1
else
  echo "bench: jobs skipped: needs redis-server and python3-redis (scripts/deps.sh bench installs them)"
fi

# 7. Embeddings (issue 20): a MiniLM-L6-shaped encoder served by a titan-worker of its own, over ZeroMQ (embed)
#    and HTTP (POST /v1/embeddings), against torch in-process with the same threads.
echo
echo "== embeddings (bench_embed; MiniLM-L6 shape, random weights; ratio = titan / torch)"
if run_bench 1200 "embeddings: titan (ZeroMQ, HTTP) vs torch in-process" "$PY" bench/bench_embed.py "$WORKER"; then
  echo
  row "measure" "titan" "reference" "ratio" "target" "result"
  for c in b32x128 b1x128 b1x16; do
    for p in zmq http; do
      l="embed case=$c path=$p "
      r=$(kv "$l" ratio); target="-"; result="info"
      [ "$c" = b1x128 ] && { target="<= 1.2x"; result=$(verdict "$r" "<=" 1.2); }
      [ "$c" = b32x128 ] && { target="<= 1.0x"; result=$(verdict "$r" "<=" 1.0); }
      row "embed $c $p, ms (vs torch)" "$(kv "$l" titan_ms)" "$(kv "$l" torch_ms)" "${r:+${r}x}" "$target" "$result"
    done
  done
  echo "note: at b32x128 a ratio <= 1.0 is throughput >= torch's; $(kv "embed_summary " threads) threads each side; check=$(kv "embed_summary " check)"
  grep -q 'check=WRONG' "$TMP/results" && { echo "bench: titan's embeddings differ from torch's" >&2; BROKEN=1; }
fi

if [ "$BROKEN" != 0 ]; then
  echo "bench: something broke (see the messages above); the summary is incomplete" >&2
  exit 1
fi
exit 0
