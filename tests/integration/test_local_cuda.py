#!/usr/bin/python3
"""test_local_cuda.py - `type: local` backends on CUDA devices: libtitan's in-process engine loads the same CUDA
module titan-worker loads (here the fake one, tests/fake_cuda: two fake GPUs computing on the CPU), through the
core's one device grammar and selection (src/core/backends/select.c).

Through titan_client.Router (libtitan's router via ctypes, in this process) and the `titan` CLI:
  - local cuda:0 and cuda:1 backends compute (results within titan_matmul_tolerance of numpy), each on its own
    device (the fake's exit report: allocations by device, no invalid or cross-device call, no lock inversion);
  - calls overflow from a busy local backend (max_inflight 1) to the next one;
  - a split divides the rows among the two local GPUs and a remote worker;
  - on a machine without a GPU (FAKE_CUDA_NO_DEVICE=1) the design's compute_backends.yaml works as written:
    `titan backends` shows the local cuda:0 down with "no CUDA device: ...", calls go to the remote backend, and
    `titan matmul --split` says that it ran on one backend and why.

Usage: test_local_cuda.py titan-worker titan libtitan.so titan-backend-cuda-fake.so fake-nvml.so   (TAP)
       test_local_cuda.py titan-worker --skip REASON"""
import json
import os
import subprocess
import sys
import tempfile
import threading

if len(sys.argv) >= 3 and sys.argv[2] == "--skip":
    print(f"1..0 # SKIP {' '.join(sys.argv[3:]) or 'the fake CUDA backend is not built'}", flush=True)
    sys.exit(0)

WORKER, CLI, LIBTITAN, MODULE, NVML = (os.path.abspath(p) for p in sys.argv[1:6])
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))
tmp = tempfile.mkdtemp(prefix="titan-local-cuda-")

# The in-process engine reads these when it opens a device; set before the router exists.
os.environ["TITAN_LIBRARY"] = LIBTITAN
os.environ["TITAN_CUDA_MODULE"] = MODULE
os.environ["TITAN_NVML_LIBRARY"] = NVML
os.environ["FAKE_CUDA_DEVICES"] = "2"
REPORT = os.path.join(tmp, "report.json")
os.environ["FAKE_CUDA_REPORT"] = REPORT

import numpy as np  # noqa: E402

from titan_client import Router, matmul_tolerance  # noqa: E402
from workerproc import Tap, Worker  # noqa: E402

tap = Tap()
rng = np.random.default_rng(19)


def rand(shape, dt=np.float32):
    return rng.uniform(-1, 1, size=shape).astype(dt)


def close(got, a, b):
    want = a.astype(np.float64) @ b.astype(np.float64)
    rel = float(np.max(np.abs(got.astype(np.float64) - want)) / max(1.0, float(np.max(np.abs(want)))))
    return rel <= matmul_tolerance(str(a.dtype), a.shape[1]), rel


def cpu_env():
    """A remote CPU worker: none of the fake's settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_CUDA_", "TITAN_CUDA_", "TITAN_NVML_"))}


def write(name, text):
    p = os.path.join(tmp, name)
    with open(p, "w") as f:
        f.write(text)
    return p


def run_cli(*args, env=None):
    p = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, env=env)
    return p.returncode, p.stdout + p.stderr


remote_w = Worker(WORKER, "--device", "cpu", "--threads", "1", "--blas-threads", "1", env=cpu_env())


def local_gpus():
    cfg = write("gpus.yaml", f"""backends:
  gpu0: {{type: local, device: cuda:0}}
  gpu1: {{type: local, device: "cuda:1"}}
  vm:
    type: remote
    endpoint: "{remote_w.endpoint}"
    timeout_ms: 60000
""")
    with Router.from_file(cfg) as r:
        # Each local backend computes, on its own device.
        a, b = rand((300, 200)), rand((200, 150))
        got = r.matmul(a, b)
        good, rel = close(got, a, b)
        tap.ok(good and r.last_route.backend == "gpu0",
               f"local cuda:0 computes in-process (relative error {rel:.3g})", r.last_route)
        st = {s.name: s for s in r.backends(probe=True)}
        tap.ok(st["gpu0"].state == "up" and st["gpu1"].state == "up",
               "backends(probe=True): both local CUDA backends are up", st)
        a64, b64 = rand((129, 77), np.float64), rand((77, 33), np.float64)
        got = r.matmul(a64, b64)
        tap.ok(close(got, a64, b64)[0], "float64 on the first local GPU", r.last_route)

        # Overflow: each local backend takes one call at a time (max_inflight 1), so concurrent calls spill over
        # to the second GPU and then to the remote worker.
        results, lock = [], threading.Lock()

        def one(i):
            x, y = rand((400, 400)), rand((400, 400))
            try:
                out = r.matmul(x, y)
                with lock:
                    results.append((r.last_route.backend, close(out, x, y)[0]))
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    results.append((repr(e), False))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        used = {b for b, _ in results}
        tap.ok(len(results) == 9 and all(ok for _, ok in results) and "gpu0" in used and len(used) >= 2,
               f"9 concurrent products overflow past the busy first GPU (answered by {sorted(used)})", results)

        # Split: rows divided among the healthy backends that offer matrix_ops, in proportion to their measured
        # throughput (a slow fake GPU may get no block beside the remote worker: only the sum is judged here).
        a, b = rand((1024, 256)), rand((256, 128))
        got = r.matmul(a, b, split=True)
        parts = r.last_route.parts
        tap.ok(close(got, a, b)[0] and sum(p[1] for p in parts) == 1024 and len(parts) >= 2,
               f"a split product is right and spread over several backends (parts {parts})", r.last_route)
    # The two local GPUs alone, before either is measured (equal shares): both take rows. (Beside the remote
    # worker, a fake GPU measured on a loaded machine could get no block at all: the CI run of a4de83e failed so.)
    two = write("two-gpus.yaml", """backends:
  gpu0: {type: local, device: cuda:0}
  gpu1: {type: local, device: "cuda:1"}
""")
    with Router.from_file(two) as r2:
        a, b = rand((1024, 256)), rand((256, 128))
        got = r2.matmul(a, b, split=True)
        parts = r2.last_route.parts
        names = {p[0] for p in parts}
        tap.ok(close(got, a, b)[0] and names == {"gpu0", "gpu1"},
               f"a split product uses both local GPUs (parts {parts})", r2.last_route)
    # The CLI the same way.
    rc, out = run_cli("--backends", cfg, "matmul", "--m", "640", "--k", "96", "--n", "80", "--split", "--check")
    tap.ok(rc == 0 and "gpu0" in out and "gpu1" in out and "ok" in out,
           "titan matmul --split --check over the local GPUs", out)
    rc, out = run_cli("--backends", cfg, "backends")
    tap.ok(rc == 0 and "gpu0" in out and "local cuda:0" in out and "local cuda:1" in out,
           "titan backends lists the local CUDA backends", out)


def no_gpu_design_config():
    """The design's compute_backends.yaml, the remote address aside, on a machine without a GPU."""
    cfg = write("design.yaml", f"""backends:
  primary:   {{type: local, device: cuda:0}}
  secondary:
    type: remote
    endpoint: "{remote_w.endpoint}"
    device: titan-x-vm
    capabilities: [matrix_ops, legacy_inference]
""")
    env = dict(os.environ, FAKE_CUDA_NO_DEVICE="1", FAKE_CUDA_REPORT="")
    rc, out = run_cli("--backends", cfg, "backends", env=env)
    line = next((l for l in out.splitlines() if l.startswith("primary")), "")
    tap.ok(rc != 0 and "no CUDA device" in line and "cudaErrorNoDevice" in line and "secondary" in out,
           "titan backends: the local cuda:0 is down, with the reason", out)
    rc, out = run_cli("--backends", cfg, "matmul", "--m", "200", "--k", "100", "--n", "50", "--check", env=env)
    tap.ok(rc == 0 and "backend secondary" in out and "ok" in out, "a product overflows to the remote backend", out)
    rc, out = run_cli("--backends", cfg, "matmul", "--m", "512", "--k", "64", "--n", "64", "--split", "--check",
                      env=env)
    tap.ok(rc == 0 and "split ran on one backend" in out and "primary is down" in out and "no CUDA device" in out,
           "titan matmul --split says that it ran on one backend and why", out)
    rc, out = run_cli("--json", "--backends", cfg, "matmul", "--m", "512", "--k", "64", "--n", "64", "--split",
                      env=env)
    o = json.loads(out.strip().splitlines()[-1]) if rc == 0 else {}
    tap.ok("no CUDA device" in o.get("split_note", ""), "--json: split_note says why", out)


def report():
    """The fake's exit report of this process (written when it exits): checked by a child that outlives it
    is not possible, so the engine's device use is checked through a second Python process."""
    code = f"""
import os, sys
sys.path.insert(0, {os.path.join(HERE, '..', '..', 'clients', 'python')!r})
import numpy as np
from titan_client import Router
r = Router.from_string('backends:\\n  g1: {{type: local, device: "cuda:1"}}\\n')
a = np.ones((64, 32), np.float32); b = np.ones((32, 16), np.float32)
assert (r.matmul(a, b) == 32).all()
r.close()
"""
    rep = os.path.join(tmp, "child-report.json")
    env = dict(os.environ, FAKE_CUDA_REPORT=rep)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    rp = json.loads(open(rep).read().splitlines()[-1]) if os.path.exists(rep) else None
    by = (rp or {}).get("device_allocs_total_by_device", [])
    tap.ok(p.returncode == 0 and rp and rp["invalid_calls"] == 0 and rp.get("cross_device", 0) == 0
           and len(by) == 2 and by[0] == 0 and by[1] > 0 and not rp.get("lock_inversions"),
           "a local cuda:1 backend allocates on device 1 only, with no invalid call (fake's report)",
           f"{p.stdout}{p.stderr}\n{rp}")


for name, fn in [("local GPUs", local_gpus), ("design config without a GPU", no_gpu_design_config),
                 ("device of a local backend", report)]:
    tap.run(name, fn)
for ep, rc, san in Worker.stop_all():
    tap.ok(rc == 0 and not san, f"worker {ep} exited cleanly", f"rc={rc}")
sys.exit(tap.done())
