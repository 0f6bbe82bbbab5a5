#!/usr/bin/env bash
# run.sh - runs the suite in each build directory through `meson test` and prints
# "N passed, N failed" last, counting TAP test points.
# Usage: tests/run.sh BUILD_DIR [BUILD_DIR...]
set -u
[ $# -ge 1 ] || set -- build
rc=0
logs=()
for build in "$@"; do
  echo "== meson test in $build"
  meson test -C "$build" --print-errorlogs --num-processes 2 || rc=1
  logs+=("$build/meson-logs/testlog.json")
done
# Count TAP test points where a test speaks TAP, and whole programs otherwise.
/usr/bin/python3 - "$rc" "${logs[@]}" <<'PY'
import json, os, re, sys
passed = failed = 0
for path in sys.argv[2:]:
    if not os.path.exists(path):
        failed += 1
        continue
    for line in open(path):
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
sys.exit(1 if failed or sys.argv[1] != "0" else 0)
PY
