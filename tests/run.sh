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
# The tests whose results depend on OpenBLAS (suite 'blas') run once more in the first build with
# OpenBLAS's core type and L2 size flipped: unset where the environment sets them (some machines set
# OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512), set where it does not, so that both settings are
# covered wherever the suite runs. Haswell kernels need AVX2 and FMA; a CPU without them gets the
# older Sandybridge (AVX) or Nehalem kernels instead.
first=$1
if [ -n "${OPENBLAS_CORETYPE:-}${OPENBLAS_L2_SIZE:-}" ]; then
  flip=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
  what="OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset"
else
  core=Nehalem
  grep -qw avx /proc/cpuinfo && core=Sandybridge
  grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo && core=Haswell
  flip=(env OPENBLAS_CORETYPE=$core OPENBLAS_L2_SIZE=512)
  what="OPENBLAS_CORETYPE=$core OPENBLAS_L2_SIZE=512"
fi
echo "== meson test --suite blas in $first again, with $what"
"${flip[@]}" meson test -C "$first" --suite blas --print-errorlogs --num-processes 2 --logbase blas-flipped || rc=1
logs+=("$first/meson-logs/blas-flipped.json")

# Count TAP test points where a test speaks TAP, and whole programs otherwise.
/usr/bin/python3 - "$rc" "${logs[@]}" <<'PY'
import json, os, re, sys
passed = failed = skipped = 0
skipped_names = []
failures = []  # (build log, test name, its first failing test points)
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
        name = t.get("name", "?")
        where = os.path.basename(os.path.dirname(os.path.dirname(path)))
        if not path.endswith("testlog.json"):
            where += " (" + os.path.basename(path).rsplit(".", 1)[0] + ")"
        if oks + bad + skips:
            passed += oks
            failed += bad
            if bad:
                lines = [l for l in re.findall(r"^not ok \d+[^\n]*", out, re.M)
                         if not re.search(r"#\s*skip", l, re.I)]
                failures.append((where, name, lines[:3]))
            if res not in ("OK", "SKIP", "EXPECTEDFAIL") and bad == 0:
                failed += 1  # crashed or timed out after its last test point
                failures.append((where, name, [f"{res} after its last test point"]))
        elif res in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif res == "SKIP":
            skipped += 1
            skipped_names.append(t.get("name", "?"))
        else:
            failed += 1
            failures.append((where, name, [str(res)]))
# The failures again, just above the count, so that a log's tail names them.
for where, name, lines in failures:
    print(f"FAILED in {where}: {name}")
    for l in lines:
        print(f"    {l[:300]}")
if skipped:
    print(f"{skipped} skipped: {', '.join(sorted(set(skipped_names)))}")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed or sys.argv[1] != "0" else 0)
PY
