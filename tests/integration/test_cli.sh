#!/usr/bin/env bash
# test_cli.sh - the titan CLI against a real worker: output, --json, exit codes 0/1/2/3.
# Usage: test_cli.sh PATH/TO/titan PATH/TO/titan-worker   (prints TAP)
set -u
titan=$1
worker=$2
tmp=$(mktemp -d)
n=0; failed=0
check() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
"$worker" --bind 'tcp://127.0.0.1:*' --endpoint-file "$tmp/ep" --max-request-bytes 64K >"$tmp/log" 2>&1 &
wpid=$!
trap 'kill $wpid 2>/dev/null; wait $wpid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 200); do [ -s "$tmp/ep" ] && break; sleep 0.05; done
export TITAN_ENDPOINT=$(head -n1 "$tmp/ep")

out=$("$titan" ping); rc=$?
[ $rc = 0 ] && grep -qF "$TITAN_ENDPOINT" <<<"$out"; check $? "ping uses TITAN_ENDPOINT, exit 0"
out=$("$titan" --json info); rc=$?
[ $rc = 0 ] && /usr/bin/python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["backend"]=="cpu" and d["cuda_capability"] is None' "$out"
check $? "info --json is one JSON object"
out=$("$titan" matmul --m 40 --k 30 --n 20 --check); rc=$?
[ $rc = 0 ] && grep -q "ok" <<<"$out"; check $? "matmul --check passes"
out=$("$titan" --json matmul --m 8 --k 8 --n 8 --dtype float64 --check); rc=$?
[ $rc = 0 ] && /usr/bin/python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["check"]["ok"]' "$out"
check $? "matmul float64 --json --check"
"$titan" matmul --m 200 --k 200 --n 200 >/dev/null 2>"$tmp/err"; rc=$?
[ $rc = 1 ] && grep -q too_large "$tmp/err"; check $? "a worker error (too_large) exits 1 and says so"
"$titan" frobnicate >/dev/null 2>&1; check $([ $? = 2 ]; echo $?) "unknown command exits 2"
"$titan" matmul --m -3 --k 1 --n 1 >/dev/null 2>&1; check $([ $? = 2 ]; echo $?) "negative size exits 2"
"$titan" matmul --m 12abc --k 1 --n 1 >/dev/null 2>&1; check $([ $? = 2 ]; echo $?) "garbage number exits 2"
"$titan" --timeout 0 ping >/dev/null 2>&1; check $([ $? = 2 ]; echo $?) "zero timeout exits 2"
"$titan" --endpoint tcp://127.0.0.1:1 --timeout 100 --retries 1 ping >/dev/null 2>"$tmp/err"; rc=$?
[ $rc = 3 ] && grep -q "titan-worker" "$tmp/err"; check $? "unreachable exits 3 and says what to do"
"$titan" --endpoint bogus ping >/dev/null 2>&1; rc=$?
[ $rc = 2 ] || [ $rc = 3 ]; check $? "a malformed endpoint is refused"
"$titan" --help | grep -q matmul; check $? "--help lists the commands"
"$titan" help matmul | grep -q -- "--check"; check $? "help matmul explains --check"
out=$("$titan" --json bench --pings 50 --sizes 32 --reps 1); rc=$?
[ $rc = 0 ] && /usr/bin/python3 -c 'import json,sys; json.loads(sys.argv[1])' "$out"; check $? "bench --json"
echo "1..$n"
[ $failed = 0 ]
