#!/usr/bin/env bash
# run.sh - runs one libFuzzer binary for SECONDS over a scratch corpus plus its seed corpus and
# reports one TAP test point with the executions; exits 1 if the target crashed.
# Usage: fuzz/run.sh FUZZER SECONDS SCRATCH_DIR SEED_DIR [EXTRA libFuzzer ARGS...]
# `make fuzz` and the meson tests in suite 'fuzz' both use it. Crash inputs land in
# SCRATCH_DIR/../NAME-crash-*; the scratch corpus keeps growing from run to run.
set -u
[ $# -ge 4 ] || { echo "usage: $0 FUZZER SECONDS SCRATCH_DIR SEED_DIR [ARGS...]" >&2; exit 2; }
fuzzer=$1 seconds=$2 scratch=$3 seed=$4
shift 4
name=$(basename "$fuzzer")
[ -x "$fuzzer" ] || { echo "not ok 1 - $name: no fuzzer binary at $fuzzer"; echo "1..1"; exit 1; }
[ -d "$seed" ] || { echo "not ok 1 - $name: no seed corpus at $seed"; echo "1..1"; exit 1; }
mkdir -p "$scratch"
# Runs may overlap (make fuzz beside make test): each writes its own log, kept as $scratch.log at the end.
log="$scratch.log.$$"
artifacts="$(dirname "$scratch")/$name-"

# New inputs go to the first directory (scratch); the seeds are only read.
# -print_final_stats gives the run count; leaks are checked by LeakSanitizer as usual.
"$fuzzer" -max_total_time="$seconds" -max_len=4096 -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$artifacts" "$@" "$scratch" "$seed" >"$log" 2>&1
rc=$?

runs=$(LC_ALL=C sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
secs=$(LC_ALL=C sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n1)
corpus=$(find "$scratch" -type f | wc -l)
summary="$name: ${runs:-?} executions in ${secs:-?} s, scratch corpus $corpus files"
echo "# $(grep -a -m1 '^INFO: Seed' "$log")"
if [ $rc -eq 0 ]; then
  echo "ok 1 - $summary, no crash"
else
  echo "not ok 1 - $summary: exit $rc"
  # The sanitizer report and the crash input's path.
  grep -a -E 'ERROR|SUMMARY|check failed|runtime error|Test unit written|^ +#[0-9]+ ' "$log" | head -n 40 | sed 's/^/# /'
fi
mv -f "$log" "$scratch.log"
[ $rc -eq 0 ] || echo "# full log: $scratch.log"
echo "1..1"
exit $([ $rc -eq 0 ] && echo 0 || echo 1)
