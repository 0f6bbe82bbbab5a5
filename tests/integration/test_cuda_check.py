#!/usr/bin/python3
"""test_cuda_check.py - cuda_check (tests/integration/cuda_check.c), the GPU machine's one-shot proof, is itself
tested here, over the fake CUDA module (tests/fake_cuda): that it fails loudly, with the reason, wherever a GPU
is visible, and skips only where none is; that a worker that dies or hangs ends it at once; that its checks
fail when the backend computes wrong or fails; and a full pass on --device cuda:1 after which the fake reports
no invalid or cross-device call, no lock inversion and nothing left allocated.

Usage: test_cuda_check.py CUDA_CHECK TITAN_WORKER FAKE_MODULE FAKE_NVML   (prints TAP)
       test_cuda_check.py --skip REASON                                  (prints a TAP skip plan)"""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time

if len(sys.argv) >= 2 and sys.argv[1] == "--skip":
    print(f"1..0 # SKIP {' '.join(sys.argv[2:]) or 'the fake CUDA backend is not built'}", flush=True)
    sys.exit(0)

CHECK, WORKER, MODULE, NVML = (os.path.abspath(p) for p in sys.argv[1:5])
tmp = tempfile.mkdtemp(prefix="titan-cuda-check-test-")
n = 0
failed = 0


def ok(cond, what, out=None):
    global n, failed
    n += 1
    print(f"{'' if cond else 'not '}ok {n} - {what}", flush=True)
    if not cond:
        failed += 1
        for line in (out or "").splitlines()[-40:]:
            print(f"#   {line}")


def env(**kw):
    """cuda_check's environment: the fake module and NVML; none of the caller's FAKE_CUDA_*, TITAN_CHECK_* or
    staging settings; its leftovers under our own TMPDIR. kw: more variables (None: leave out)."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("FAKE_CUDA_", "FAKE_NVML_", "TITAN_CHECK_"))
         and k not in ("TITAN_CUDA_STAGE_KB", "TITAN_CUDA_MODULE", "TITAN_NVML_LIBRARY")}
    e.update(TITAN_CUDA_MODULE=MODULE, TITAN_NVML_LIBRARY=NVML, TMPDIR=tmp)
    for k, v in kw.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = str(v)
    return e


def run(args, timeout=240, worker=WORKER, **kw):
    """Runs cuda_check; (exit status, its output)."""
    try:
        p = subprocess.run([CHECK, worker] + args, env=env(**kw), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
        return p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return "timeout", out


def not_oks(out):
    return [l for l in out.splitlines() if l.startswith("not ok ")]


def script(name, body):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def gone(pid, wait=5.0):
    """Whether process pid is gone (a zombie counts as gone), waiting up to `wait` s: a process sent SIGKILL
    takes a moment to exit."""
    end = time.monotonic() + wait
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[-1].startswith("Z"):
                    return True
        except OSError:
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.05)


def gpu_nodes_here():
    return any(re.fullmatch(r"nvidia\d+", d) for d in os.listdir("/dev")) or (
        os.path.isdir("/proc/driver/nvidia/gpus") and os.listdir("/proc/driver/nvidia/gpus"))


# 1. A start failure where a GPU is visible: not ok, the worker's reason in the line, a non-zero exit.
rc, out = run([], TITAN_CHECK_GPU_VISIBLE=1, FAKE_CUDA_NO_KERNEL=1)
bad = not_oks(out)
ok(rc == 1 and len(bad) == 1 and "no GPU code" in bad[0] and "SKIP" not in out and re.search(r"^1\.\.1$", out, re.M),
   f"GPU visible, no kernel image: exit {rc}, one not ok with the worker's reason: {bad[0][:160] if bad else out[-200:]}",
   out)

# 2. The same failure where no GPU is visible: the skip plan, with the reason, exit 0.
rc, out = run([], TITAN_CHECK_GPU_VISIBLE=0, FAKE_CUDA_NO_KERNEL=1)
skip = [l for l in out.splitlines() if l.startswith("1..0 # SKIP")]
ok(rc == 0 and len(skip) == 1 and "no GPU code" in skip[0] and not not_oks(out) and "TITAN_CHECK_GPU_VISIBLE=0" in skip[0],
   "no GPU visible, no kernel image: the skip plan with the reason, exit 0", out)

# 3. The module cannot be loaded (as when libcublas is missing) on a GPU machine: not ok, naming it.
rc, out = run([], TITAN_CHECK_GPU_VISIBLE=1, TITAN_CUDA_MODULE=os.path.join(tmp, "absent.so"))
bad = not_oks(out)
ok(rc == 1 and len(bad) == 1 and "cannot load TITAN_CUDA_MODULE" in bad[0] and "absent.so" in bad[0],
   "GPU visible, the CUDA module does not load: not ok naming the module", out)

# 4. CUDA finds no device although one is visible (a driver that lost its GPU): not ok, never a skip.
rc, out = run([], TITAN_CHECK_GPU_VISIBLE=1, FAKE_CUDA_NO_DEVICE=1)
bad = not_oks(out)
ok(rc == 1 and len(bad) == 1 and "SKIP" not in out, "GPU visible, CUDA finds no device: not ok, no skip", out)

# 5. Without the override: a "GPU " line from nvidia-smi -L makes a GPU visible; "No devices were found" does not.
bindir = os.path.join(tmp, "bin")
os.makedirs(bindir)
smi = os.path.join(bindir, "nvidia-smi")
with open(smi, "w") as f:
    f.write("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-1111-2222-3333-444444444444)'\n")
os.chmod(smi, 0o755)
path = bindir + os.pathsep + os.environ.get("PATH", "")
rc, out = run([], FAKE_CUDA_NO_DEVICE=1, PATH=path)
bad = not_oks(out)
ok(rc == 1 and len(bad) == 1 and "nvidia-smi -L: GPU 0: NVIDIA H100" in out,
   "nvidia-smi -L lists a GPU: a start failure is not ok and says what made the GPU visible", out)
if gpu_nodes_here():
    n += 1
    print(f"ok {n} # SKIP this machine has /dev/nvidiaN or /proc/driver/nvidia/gpus/: a GPU is always visible here")
else:
    with open(smi, "w") as f:
        f.write("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    rc, out = run([], FAKE_CUDA_NO_DEVICE=1, PATH=path)
    ok(rc == 0 and re.search(r"^1\.\.0 # SKIP .*nvidia-smi -L lists no GPU", out, re.M),
       "nvidia-smi -L lists no GPU (and no /dev/nvidiaN): the skip plan", out)

# 6. A worker that never starts serving: killed after TITAN_CHECK_START_S, not ok.
pidfile = os.path.join(tmp, "hang.pid")
hang = script("hang-worker", f"echo $$ > {pidfile}\necho 'loading cuBLAS...' >&2\nexec sleep 600\n")
rc, out = run([], timeout=60, worker=hang, TITAN_CHECK_GPU_VISIBLE=1, TITAN_CHECK_START_S=2)
pid = int(open(pidfile).read()) if os.path.exists(pidfile) else 0
bad = not_oks(out)
ok(rc == 1 and len(bad) == 1 and "did not start serving within 2 s" in bad[0] and "loading cuBLAS" in bad[0]
   and pid and gone(pid), "a worker that never serves: not ok after TITAN_CHECK_START_S, with its log, and killed", out)

# 7. A worker that dies during the checks: ended at once with not ok and the plan, not at the kit's time limit.
# The script becomes the worker (exec) after arranging its own SIGKILL 1 s after it first serves.
die = script("dying-worker", f"""ep=""; prev=""
for a in "$@"; do [ "$prev" = --endpoint-file ] && ep=$a; prev=$a; done
me=$$
( while [ ! -s "$ep" ]; do sleep 0.05; done; sleep 1; kill -KILL $me ) &
exec "{WORKER}" "$@"
""")
rc, out = run(["--big", "256"], timeout=120, worker=die, TITAN_CHECK_GPU_VISIBLE=1)
bad = not_oks(out)
plan = re.findall(r"^1\.\.(\d+)$", out, re.M)
ok(rc == 1 and len(bad) == 1 and "the worker died during the checks: Killed" in bad[0] and plan
   and int(plan[0]) == len(re.findall(r"^(?:not )?ok \d+", out, re.M)),
   "a worker killed during the checks: one not ok saying so, the plan, exit 1", out)

# 8. A worker that stops answering: ended after TITAN_CHECK_CALL_S, and the stopped worker killed.
stop = script("stopping-worker", f"""ep=""; prev=""
for a in "$@"; do [ "$prev" = --endpoint-file ] && ep=$a; prev=$a; done
me=$$
echo $me > {pidfile}
( while [ ! -s "$ep" ]; do sleep 0.05; done; sleep 1; kill -STOP $me ) &
exec "{WORKER}" "$@"
""")
rc, out = run(["--big", "256"], timeout=120, worker=stop, TITAN_CHECK_GPU_VISIBLE=1, TITAN_CHECK_CALL_S=3)
pid = int(open(pidfile).read()) if os.path.exists(pidfile) else 0
bad = not_oks(out)
ok(rc == 1 and len(bad) == 1 and "no answer within 3 s" in bad[0] and pid and gone(pid),
   "a worker that stops answering: not ok after TITAN_CHECK_CALL_S, and killed", out)

# 8b. The second start (64 KiB staging) failing after a first that worked: not ok, whatever the GPU detection.
second = script("second-start-fails", f"""[ "$TITAN_CUDA_STAGE_KB" = 64 ] && {{ echo 'out of pinned memory' >&2; exit 1; }}
exec "{WORKER}" "$@"
""")
rc, out = run(["--big", "64", "--quick"], worker=second, TITAN_CHECK_GPU_VISIBLE=0)
bad = not_oks(out)
ok(rc == 1 and len(bad) == 1 and "starts again with 64 KiB staging" in bad[0] and "out of pinned memory" in bad[0]
   and "SKIP" not in out and re.search(r"^1\.\.\d+$", out, re.M),
   "the second start failing after a first that worked: not ok with the reason, even with no GPU visible", out)

# 9. The checks can fail: a sticky CUDA error part-way (the 40th GEMM) makes products fail, loudly, and the
# second run (a fresh worker) fails likewise; the check still ends with its plan.
rc, out = run(["--big", "256", "--quick"], TITAN_CHECK_GPU_VISIBLE=1, FAKE_CUDA_STICKY_AFTER=40)
bad = not_oks(out)
ok(rc == 1 and len(bad) >= 2 and re.search(r"^1\.\.\d+$", out, re.M) and any("illegal" in l.lower() or "device" in l
                                                                             for l in bad),
   f"a sticky CUDA error part-way: {len(bad)} not ok, exit {rc}", out)

# 10. A full pass on the fake's second device, then the fake's own report of each run.
report = os.path.join(tmp, "fake-report.jsonl")
rc, out = run(["--big", "128", "--device", "cuda:1"], TITAN_CHECK_GPU_VISIBLE=1, FAKE_CUDA_REPORT=report)
ok(rc == 0 and not not_oks(out) and "gpu_info: device 1 (device_index 1)" in out and re.search(r"^1\.\.\d+$", out, re.M),
   f"--device cuda:1 on the fake: {len(re.findall(r'^ok ', out, re.M))} ok, none not ok", out)
try:
    reps = [json.loads(l) for l in open(report)]
except (OSError, ValueError) as e:
    reps = []
    out = f"no report: {e}"
# One line per worker process that loaded the fake: the two products runs and the encoders' device run (the
# encoders' CPU worker never loads the CUDA module); the start's self-test only for a failed start would add none.
clean = [r for r in reps if r.get("invalid_calls") == 0 and r.get("cross_device", 0) == 0
         and r.get("device_allocs_live") == 0 and r.get("lock_inversions") in (0, None)]
ok(len(reps) == 3 and len(clean) == 3 and reps[2].get("bert_launches", 0) > 0,
   "the fake's report of the three CUDA runs (the last one's encoder kernels included): no invalid or cross-device "
   "call, no lock inversion, nothing left allocated",
   "\n".join(json.dumps(r) for r in reps) or out)

print(f"1..{n}", flush=True)
shutil.rmtree(tmp, ignore_errors=True)
sys.exit(1 if failed else 0)
