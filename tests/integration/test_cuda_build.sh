#!/usr/bin/env bash
# test_cuda_build.sh - where the CUDA toolkit is installed (CI: CUDA 13 in /usr/local/cuda), the build
# must have made the CUDA module, with its entry point and GPU code; and a worker without a usable GPU
# must say so clearly for --device cuda and fall back for --device auto. Skips where there is no toolkit.
# Usage: test_cuda_build.sh BUILD_DIR
set -u
build=$1
n=0
failed=0
ok() { # ok CONDITION_STATUS NAME [DETAIL]
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else failed=$((failed + 1)); echo "not ok $n - $2"; [ -n "${3:-}" ] && printf '%s\n' "$3" | sed 's/^/# /'; fi
}
cuda_path=$(meson introspect --buildoptions "$build" 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; print(next((o["value"] for o in json.load(sys.stdin) if o["name"]=="cuda-path"), ""))')
cuda_opt=$(meson introspect --buildoptions "$build" 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; print(next((o["value"] for o in json.load(sys.stdin) if o["name"]=="cuda"), ""))')
if [ "$cuda_opt" = disabled ] || [ ! -x "${cuda_path:-/nonexistent}/bin/nvcc" ]; then
    echo "1..0 # SKIP no CUDA toolkit at '${cuda_path}' (or -Dcuda=disabled): the CUDA module is not built here"
    exit 0
fi
so=$build/titan-backend-cuda.so
[ -f "$so" ]
ok $? "the CUDA toolkit at $cuda_path built $so"
nm -D --defined-only "$so" 2>/dev/null | grep -qw titan_backend_cuda_open
ok $? "the module exports titan_backend_cuda_open"
nm -D --defined-only "$so" 2>/dev/null | grep -vw -e titan_backend_cuda_open -e titan_cuda_probe_launch -e titan_cuda_archs |
    grep -q ' [TDRB] titan_'
ok $((1 - $?)) "and no other titan_ symbol"
# The GPU code nvcc embedded: the fat binary section, and the architectures it was built for.
objdump -h "$so" | grep -q '\.nv_fatbin'
ok $? "the module carries a CUDA fat binary (.nv_fatbin)"
archs=$(strings "$so" | grep -m1 -E '^([0-9]{2,3} ?)+$')
[ -n "$archs" ]
ok $? "it records the architectures it was built for: ${archs}"
cuobjdump=$(command -v "$cuda_path/bin/cuobjdump" cuobjdump 2>/dev/null | head -1)
if [ -n "$cuobjdump" ] && "$cuobjdump" --list-elf "$so" >/tmp/titan-cuobjdump.$$ 2>&1; then
    first=${archs%% *}
    grep -q "sm_$first" /tmp/titan-cuobjdump.$$
    ok $? "cuobjdump --list-elf shows sm_$first code" "$(cat /tmp/titan-cuobjdump.$$)"
fi
rm -f /tmp/titan-cuobjdump.$$
# A module without sm_52 code cannot run on the Titan X: the configure step must say so, and how to
# build one that does (the summary and a warning, both in meson-log.txt).
log=$build/meson-logs/meson-log.txt
if [[ " $archs " == *" 52 "* ]]; then
    ! grep -q "cannot run on a Maxwell GPU" "$log"
    ok $? "the module carries sm_52: the build summary raises no Maxwell warning"
else
    grep -q "CUDA backend.*cannot run on a Maxwell GPU such as the GTX Titan X (sm_52)" "$log" &&
        grep -q "make check-legacy-cuda" "$log" && grep -q -- "-Dcuda-arch=52" "$log"
    ok $? "without sm_52 (sm ${archs}), the build summary says the module cannot run on a Titan X, and how to build one" \
        "$(grep -i 'cuda backend' "$log" | tail -2)"
fi
if [ ! -e /proc/driver/nvidia/version ] && [ ! -e /dev/nvidia0 ]; then
    out=$("$build/titan-worker" --device cuda --bind 'tcp://127.0.0.1:*' 2>&1)
    rc=$?
    [ $rc -eq 1 ] && grep -q "device 'cuda' cannot be used" <<<"$out" && grep -q -- "--device cpu" <<<"$out"
    ok $? "without a GPU, --device cuda exits 1 saying why and what to use" "rc=$rc $out"
    out=$("$build/titan-worker" --device cuda:7 --bind 'tcp://127.0.0.1:*' 2>&1)
    grep -q "cuda:7" <<<"$out"
    ok $? "--device cuda:7 names the device in its error" "$out"
fi
echo "1..$n"
[ $failed -eq 0 ]
