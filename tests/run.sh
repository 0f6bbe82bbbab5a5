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
passed = failed = skipped = 0
skipped_names = []
for path in sys.argv[2:]:
    if not os.path.exists(path):
        failed += 1
        continue
    for line in open(path):
        t = json.loads(line)
        out = t.get("stdout") or ""
        # "ok N ... # SKIP reason" did not run: a skip, not a pass (TAP 13); cmocka writes
        # "not ok N ... # SKIP" for skip(), which is no failure either.
        skips = len(re.findall(r"^ok \d+[^\n]*#\s*skip", out, re.M | re.I))
        nskips = len(re.findall(r"^not ok \d+[^\n]*#\s*skip", out, re.M | re.I))
        skips += nskips
        oks = len(re.findall(r"^ok \d+", out, re.M)) - (skips - nskips)
        bad = len(re.findall(r"^not ok \d+", out, re.M)) - nskips
        res = t.get("result")
        if skips:
            skipped += skips
            skipped_names.append(t.get("name", "?"))
        if oks + bad + skips:
            passed += oks
            failed += bad
            if res not in ("OK", "SKIP", "EXPECTEDFAIL") and bad == 0:
                failed += 1  # crashed or timed out after its last test point
        elif res in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif res == "SKIP":
            skipped += 1
            skipped_names.append(t.get("name", "?"))
        else:
            failed += 1
if skipped:
    print(f"{skipped} skipped: {', '.join(sorted(set(skipped_names)))}")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed or sys.argv[1] != "0" else 0)
PY
