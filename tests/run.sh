#!/usr/bin/env bash
# run.sh - runs the whole suite through `meson test` and prints "N passed, N failed" last.
# Usage: tests/run.sh BUILD_DIR [meson test args...]
set -u
build=${1:-build}
shift || true
meson test -C "$build" --print-errorlogs --num-processes 2 "$@"
rc=$?
log="$build/meson-logs/testlog.json"
if [ ! -f "$log" ]; then
  echo "0 passed, 1 failed"
  exit 1
fi
# Count TAP test points where a test speaks TAP, and whole programs otherwise.
/usr/bin/python3 - "$log" "$rc" <<'PY'
import json, re, sys
passed = failed = 0
for line in open(sys.argv[1]):
    t = json.loads(line)
    out = t.get("stdout") or ""
    oks = len(re.findall(r"^ok \d+", out, re.M))
    bad = len(re.findall(r"^not ok \d+", out, re.M))
    res = t.get("result")
    if oks + bad:
        passed += oks
        failed += bad
        if res not in ("OK", "SKIP", "EXPECTEDFAIL") and bad == 0:
            failed += 1  # crashed or timed out after its last test point
    elif res in ("OK", "EXPECTEDFAIL"):
        passed += 1
    elif res != "SKIP":
        failed += 1
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed or sys.argv[2] != "0" else 0)
PY
