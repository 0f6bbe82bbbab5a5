#!/usr/bin/python3
"""test_cuda_fake.py - the CUDA backend (src/core/backends/cuda.c, devpool.c, nvml.c, cuda_err.c) through a real
titan-worker on machines without a GPU: tests/fake_cuda builds the same sources into titan-backend-cuda-fake.so
over a fake CUDA runtime and cuBLAS that compute on the CPU (fake_cuda.c: two devices by default, each with a
byte budget, a current device per thread, stream work that runs only when the host waits for it, every device
pointer checked against live allocations and against the device of the stream or handle that uses it, fault
injection; fake_lockdep.c: lock-order inversions in cuda.c and devpool.c, and device waits under their locks),
and fake-nvml.so with fixed figures. The worker loads them through $TITAN_CUDA_MODULE and $TITAN_NVML_LIBRARY.

Covers: --device cuda and --device auto (auto takes the module when TITAN_CUDA_MODULE is set), the startup log,
ping, ops and gpu_info (NVML's figures, power_w null, the pool's stats; the runtime's figures without NVML);
products against numpy in float32 and float64, JSON and binary, shapes that span many row blocks of small staging
buffers (TITAN_CUDA_STAGE_KB=64) with odd remainders and rows wider than a buffer; resident tensors (tensor_put,
refs, mixed ref/host operands, keep, tensor_get); concurrent requests on 4 executors; the pool's steady state (no
device allocation per request); out of memory (too_large when the request can never fit, device_error beside
resident tensors, then recovery); no device and no kernel image (--device cuda fails and says why, auto falls back
to the CPU); a poisoned context (device_error, /readyz 503, gpu_info ready false, ping still answers); --device
cuda:1 (everything on the second device, nothing on the first; a tensor the sweeper's thread expires is freed
there too); a sticky error from cudaMalloc inside the pool
while gpu_info and /metrics poll (no lock inversion, no hang); the pool's figures read fresh on every gpu_info;
cudaHostAlloc failing (pinned host memory, not "GPU out of memory"); one executor's pinned buffers only (the
start's are given back); resident tensors charged their pool blocks, and the default --tensor-memory-mb less every
executor's cuBLAS workspaces; and, from the fake's exit report, no invalid CUDA call, no lock inversion, no device
wait under a lock, no allocation on another device than the worker's, and nothing left allocated after a clean
stop.

Usage: test_cuda_fake.py titan-worker titan-backend-cuda-fake.so fake-nvml.so   (prints TAP)
       test_cuda_fake.py titan-worker --skip REASON                           (prints a TAP skip plan)"""
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

if len(sys.argv) >= 3 and sys.argv[2] == "--skip":
    print(f"1..0 # SKIP {' '.join(sys.argv[3:]) or 'the fake CUDA backend is not built'}", flush=True)
    sys.exit(0)

import numpy as np
import zmq

from workerproc import Tap, Worker

BIN, MODULE, NVML = (os.path.abspath(p) for p in sys.argv[1:4])
tap = Tap()
ctx = zmq.Context()
tmp = tempfile.mkdtemp(prefix="titan-cuda-fake-")
rng = np.random.default_rng(20240601)

NAME = "Fake GeForce GTX TITAN X"
# fake_nvml.c's figures.
NVML_DRIVER = "470.256.02"
NVML_TOTAL, NVML_USED = 12884901888, 536870912
# fake_cuda.c's defaults.
RUNTIME_VERSION = "11.8"  # cudaRuntimeGetVersion: 11080
DRIVER_CUDA = "CUDA 11.4"  # cudaDriverGetVersion: 11040, what the worker says without NVML
STATS_WAIT = 0.6  # cuda.c samples NVML's and cudaMemGetInfo's figures at most every 0.5 s (the pool's: every call)

reports = []  # (what, report path, expect a clean stop, the worker's device index)


def fenv(report=None, **kw):
    """The worker's environment: the fake module and NVML, and FAKE_CUDA_* settings."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("FAKE_CUDA_", "FAKE_NVML_")) and k not in ("TITAN_CUDA_STAGE_KB", "TITAN_CUDA_MODULE", "TITAN_NVML_LIBRARY")}
    e["TITAN_CUDA_MODULE"] = MODULE
    e["TITAN_NVML_LIBRARY"] = NVML
    if report:
        e["FAKE_CUDA_REPORT"] = report
    e.update({k: str(v) for k, v in kw.items()})
    return e


def report_path(what, clean=True, device=0):
    p = os.path.join(tmp, f"report-{len(reports)}.json")
    reports.append((what, p, clean, device))
    return p


def read_report(path):
    """The fake's exit report (the last line written to path), or None when the process wrote none."""
    if not os.path.exists(path):
        return None
    lines = [line for line in open(path) if line.strip()]
    return json.loads(lines[-1]) if lines else None


class Client:
    """A REQ socket: one connection, so resident tensors stay this client's."""

    def __init__(self, ep, timeout_ms=60000):
        self.s = ctx.socket(zmq.REQ)
        self.s.setsockopt(zmq.RCVTIMEO, timeout_ms)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.connect(ep)

    def call(self, hdr, *frames):
        self.s.send_multipart([json.dumps(hdr).encode(), *frames])
        parts = self.s.recv_multipart()
        return json.loads(parts[0]), parts[1:]

    def close(self):
        self.s.close()


def desc(x, frame):
    return {"dtype": str(x.dtype), "shape": list(x.shape), "frame": frame}


def frame_array(r, frames):
    res = r["result"]
    return np.frombuffer(frames[0], dtype=res["dtype"]).reshape(res["shape"])


def mm_binary(c, a, b, **extra):
    r, fr = c.call({"op": "matrix_multiply", "a": desc(a, 1), "b": desc(b, 2), **extra}, a.tobytes(), b.tobytes())
    return r, (frame_array(r, fr) if "result" in r else None)


def mm_json(c, a, b):
    r, _ = c.call({"op": "matrix_multiply", "dtype": str(a.dtype), "a": a.tolist(), "b": b.tolist()})
    return r, (np.array(r["result"], dtype=a.dtype) if "result" in r else None)


def rand(shape, dt):
    return rng.uniform(-1, 1, size=shape).astype(dt)


def close_to(got, a, b):
    """got against a @ b computed by numpy in float64: within float32's or float64's rounding, and no NaN
    (the fake fills fresh device memory with NaN, so rows never computed show)."""
    if got is None:
        return False, "no result"
    ref = a.astype(np.float64) @ b.astype(np.float64)
    if got.shape != ref.shape:
        return False, f"shape {got.shape}, expected {ref.shape}"
    if not np.all(np.isfinite(got)):
        bad = np.argwhere(~np.isfinite(got))
        return False, f"{len(bad)} non-finite elements, first at {bad[0].tolist()}"
    tol = (1e-4 if got.dtype == np.float32 else 1e-11) * max(1.0, np.sqrt(a.shape[1]))
    err = float(np.max(np.abs(got.astype(np.float64) - ref)))
    return err <= tol, f"max error {err:g} > {tol:g}"


def gpu_info(c, wait=False):
    """gpu_info; wait=True first sleeps past the sampling interval of NVML's and cudaMemGetInfo's figures."""
    if wait:
        time.sleep(STATS_WAIT)
    return c.call({"op": "gpu_info"})[0]


def http_base(w):
    urls = [line for line in open(w.epfile).read().splitlines() if line.startswith("http://")]
    return urls[0] if urls else None


def hget(base, path):
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def run_fail(args, env, timeout=60):
    """Runs a worker that must not start; returns (exit code, its output)."""
    ep = os.path.join(tmp, "never")
    p = subprocess.run([BIN, "--bind", "tcp://127.0.0.1:*", "--endpoint-file", ep, *args], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return p.returncode, p.stdout


# ---------------------------------------------------------------------------------------------------------------

def device_and_info():
    """--device cuda: the log, ping, ops and gpu_info; products of both dtypes and forms; resident tensors; the
    pool's steady state; 4 executors at once. Staging buffers of 64 KiB, so that products span many row blocks."""
    w = Worker(BIN, "--device", "cuda", "--threads", "4", "--blas-threads", "1",
               env=fenv(report_path("--device cuda"), TITAN_CUDA_STAGE_KB=64))
    c = Client(w.endpoint)
    log = w.read_log()
    tap.ok(f"device cuda: {NAME}" in log, "the startup log names the CUDA device", log)

    r, _ = c.call({"op": "ping"})
    tap.ok(r.get("status") == "ok" and r.get("backend") == "cuda" and r.get("gpu") == NAME,
           "ping: backend cuda and the GPU's name", r)
    r, _ = c.call({"op": "ops"})
    tap.ok(r.get("backend") == "cuda" and r.get("device") == NAME, "ops: backend cuda and the device", r)

    gi = gpu_info(c, wait=False)
    want = {"backend": "cuda", "name": NAME, "cuda_capability": "5.2", "device_index": 0,
            "multi_processor_count": 24, "driver_version": NVML_DRIVER, "runtime_version": RUNTIME_VERSION,
            "pci_bus_id": "0000:01:00.0", "ready": True, "device_state": None}
    bad = {k: (gi.get(k), v) for k, v in want.items() if gi.get(k) != v}
    tap.ok(not bad, "gpu_info: backend, name, capability 5.2, device 0, 24 SMs, NVML's driver version, the "
           "runtime's version, PCI bus id, ready", f"{bad}\n{gi}")
    tap.ok(abs(gi.get("total_memory_gb", 0) - (1024 << 20) / 1e9) < 1e-9,
           "gpu_info total_memory_gb: the device's (FAKE_CUDA_MEM_MB 1024)", gi)
    nv = {"memory_used_gb": NVML_USED / 1e9, "memory_free_gb": (NVML_TOTAL - NVML_USED) / 1e9, "utilization": 0.37,
          "temperature_c": 54.0, "sm_clock_mhz": 1076.0, "mem_clock_mhz": 3505.0}
    bad = {k: (gi.get(k), v) for k, v in nv.items()
           if not isinstance(gi.get(k), (int, float)) or abs(gi[k] - v) > 1e-9}
    tap.ok(not bad, "gpu_info: memory, utilization, temperature and clocks from NVML", f"{bad}\n{gi}")
    tap.ok("power_w" in gi and gi["power_w"] is None, "gpu_info power_w: null where NVML does not support it", gi)
    # titan info: the same figures for people; what is unknown (power) is left out, not made up.
    cli = os.path.join(os.path.dirname(BIN), "titan")
    p = subprocess.run([cli, "--endpoint", w.endpoint, "info"], capture_output=True, text=True, timeout=30)
    lines = {l.split("  ", 1)[0]: l.split("  ", 1)[1].strip() for l in p.stdout.splitlines() if "  " in l}
    want = {"device": NAME, "backend": "cuda", "multiprocessors": "24", "cuda capability": "5.2",
            "driver": NVML_DRIVER, "cuda runtime": RUNTIME_VERSION, "pci bus id": "0000:01:00.0",
            "temperature": "54 C", "clocks": "1076 MHz sm, 3505 MHz memory", "utilization": "37 %"}
    bad = {k: (lines.get(k), v) for k, v in want.items() if lines.get(k) != v}
    tap.ok(p.returncode == 0 and not bad and "power" not in lines and "state" not in lines,
           "titan info shows the CUDA device's figures and leaves out the unknown power", f"{bad}\n{p.stdout}{p.stderr}")
    pool = gi.get("memory_pool")
    tap.ok(isinstance(pool, dict) and all(type(pool.get(k)) is int for k in ("held_bytes", "cached_bytes",
                                                                             "device_allocs")),
           "gpu_info memory_pool: held_bytes, cached_bytes, device_allocs", gi)

    # Products: single blocks, many row blocks with a short last one, a single column or row, and rows wider
    # than a 64 KiB staging buffer (k or n alone: whole operands through the chunked copies).
    shapes = [(1, 1, 1), (2, 3, 2), (7, 5, 3), (64, 64, 64), (300, 200, 150), (129, 1, 257), (1, 300, 1),
              (514, 17, 300), (1000, 33, 7)]
    wide = [(3, 20000, 5), (4, 3, 9000)]
    for dt in (np.float32, np.float64):
        fails = []
        for m, k, n in shapes + wide:
            a, b = rand((m, k), dt), rand((k, n), dt)
            r, got = mm_binary(c, a, b)
            ok, why = close_to(got, a, b)
            if not ok:
                fails.append(f"{m}x{k}x{n}: {r if got is None else why}")
        tap.ok(not fails, f"binary {np.dtype(dt).name} products match numpy: {len(shapes + wide)} shapes, row "
               "blocks with remainders, rows wider than a staging buffer", "\n".join(fails))
        fails = []
        for m, k, n in [(2, 3, 2), (7, 5, 3), (300, 200, 150), (65, 130, 33)]:
            a, b = rand((m, k), dt), rand((k, n), dt)
            r, got = mm_json(c, a, b)
            ok, why = close_to(got, a, b)
            if not ok:
                fails.append(f"{m}x{k}x{n}: {r if got is None else why}")
        tap.ok(not fails, f"JSON {np.dtype(dt).name} products match numpy", "\n".join(fails))
    r, _ = c.call({"op": "matrix_multiply", "a": [[1, 2], [3, 4]], "b": [[5, 6], [7, 8]]})
    tap.ok(r.get("result") == [[19.0, 22.0], [43.0, 50.0]], "the design's example, exactly", r)
    r, _ = c.call({"op": "matrix_multiply", "dtype": "float64", "a": [[0.1, 0.2]], "b": [[1], [1]]})
    tap.ok(r.get("result") == [[0.30000000000000004]], "float64 JSON: 0.1 + 0.2 as cuBLAS's dgemm gives it", r)
    a = rand((3, 4), np.float32)
    r, _ = c.call({"op": "matrix_multiply", "a": a.tolist(), "b": {"dtype": "float32", "shape": [4, 2], "frame": 1}},
                  rand((4, 2), np.float32).tobytes())
    tap.ok(r.get("result", {}).get("shape") == [3, 2], "mixed JSON and binary operands: a binary result", r)
    r, _ = c.call({"op": "matrix_multiply", "a": [[1, 2]], "b": [[1, 2]]})
    tap.ok(r.get("code") == "bad_request", "mismatched inner dimensions: bad_request before the device", r)

    resident(c)
    concurrent(w)
    pool_steady_state(c)
    c.close()
    rc = w.stop()
    tap.ok(rc == 0, "--device cuda: SIGTERM stops the worker with exit code 0", f"rc={rc}\n{open(w.logpath).read()[-2000:]}")


def resident(c):
    """tensor_put, refs, mixed ref/host operands, keep, tensor_get."""
    for dt in (np.float32, np.float64):
        name = np.dtype(dt).name
        a, b, d = rand((300, 200), dt), rand((200, 150), dt), rand((150, 40), dt)
        ra, _ = c.call({"op": "tensor_put", "tensor": desc(a, 1)}, a.tobytes())
        rb, _ = c.call({"op": "tensor_put", "dtype": name, "tensor": b.tolist()})
        ok = "ref" in ra and "ref" in rb and ra.get("shape") == [300, 200] and rb.get("dtype") == name
        tap.ok(ok, f"{name} tensor_put: binary and JSON tensors on the device", (ra, rb))
        if not ok:
            return
        ha, hb = ra["ref"], rb["ref"]
        r, fr = c.call({"op": "matrix_multiply", "a": {"ref": ha}, "b": {"ref": hb}})
        good, why = close_to(frame_array(r, fr) if "result" in r else None, a, b)
        tap.ok(good, f"{name} matmul of two resident tensors (a binary result)", r if "error" in r else why)
        r, fr = c.call({"op": "matrix_multiply", "a": {"ref": ha}, "b": desc(b, 1)}, b.tobytes())
        good1, why1 = close_to(frame_array(r, fr) if "result" in r else None, a, b)
        r2, fr2 = c.call({"op": "matrix_multiply", "a": desc(a, 1), "b": {"ref": hb}}, a.tobytes())
        good2, why2 = close_to(frame_array(r2, fr2) if "result" in r2 else None, a, b)
        tap.ok(good1 and good2, f"{name} matmul of a resident and a host operand, both ways",
               f"{r if 'error' in r else why1}\n{r2 if 'error' in r2 else why2}")
        r, _ = c.call({"op": "matrix_multiply", "a": {"ref": ha}, "b": {"ref": hb}, "keep": True})
        hc = r.get("result", {}).get("ref")
        tap.ok(hc and r["result"].get("shape") == [300, 150] and r["result"].get("dtype") == name,
               f"{name} matmul keep: the product stays on the device", r)
        g, fr = c.call({"op": "tensor_get", "ref": hc})
        good1, why1 = close_to(frame_array(g, fr) if "result" in g else None, a, b)
        gj, _ = c.call({"op": "tensor_get", "ref": hc, "json": True})
        good2, why2 = close_to(np.array(gj["result"], dtype=dt) if "result" in gj else None, a, b)
        tap.ok(good1 and good2, f"{name} tensor_get of the kept product: binary and JSON",
               f"{g} {why1}\n{gj if 'error' in gj else why2}")
        r, fr = c.call({"op": "matrix_multiply", "a": {"ref": hc}, "b": desc(d, 1)}, d.tobytes())
        ref = (a.astype(np.float64) @ b.astype(np.float64)).astype(dt)
        good, why = close_to(frame_array(r, fr) if "result" in r else None, ref, d)
        tap.ok(good, f"{name} a kept product as the next operand", r if "error" in r else why)
        r, _ = c.call({"op": "matrix_multiply", "a": desc(a, 1), "b": desc(b, 2), "keep": True}, a.tobytes(),
                      b.tobytes())
        hk = r.get("result", {}).get("ref")
        g, fr = c.call({"op": "tensor_get", "ref": hk}) if hk else (r, [])
        good, why = close_to(frame_array(g, fr) if "result" in g else None, a, b)
        tap.ok(good, f"{name} keep with host operands (row blocks into device memory), read back",
               g if "error" in g else why)
    f32 = rand((200, 2), np.float32)
    r, _ = c.call({"op": "matrix_multiply", "a": {"ref": ha}, "b": desc(f32, 1)}, f32.tobytes())  # ha: float64
    tap.ok(r.get("code") == "bad_request", "a float64 resident tensor times a float32 frame: bad_request", r)
    r, _ = c.call({"op": "tensor_free", "all": True})
    tap.ok(r.get("status") == "ok" and r.get("freed", 0) >= 8, "tensor_free all", r)


def concurrent(w):
    """24 products of mixed shapes and dtypes in flight at once over 4 executors (each its own streams)."""
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.RCVTIMEO, 60000)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(w.endpoint)
    jobs = {}
    for i in range(24):
        dt = np.float32 if i % 2 else np.float64
        m, k, n = [(300, 200, 150), (97, 61, 230), (5, 20000, 3), (400, 50, 9)][i % 4]
        a, b = rand((m, k), dt), rand((k, n), dt)
        jobs[i] = (a, b)
        d.send_multipart([b"", json.dumps({"op": "matrix_multiply", "id": i, "a": desc(a, 1), "b": desc(b, 2)}).encode(),
                          a.tobytes(), b.tobytes()])
    fails = []
    for _ in range(24):
        parts = d.recv_multipart()
        r = json.loads(parts[1])
        a, b = jobs.get(r.get("id"), (None, None))
        if a is None:
            fails.append(str(r))
            continue
        good, why = close_to(frame_array(r, parts[2:]) if "result" in r else None, a, b)
        if not good:
            fails.append(f"id {r['id']}: {r if 'error' in r else why}")
    d.close()
    tap.ok(not fails, "24 concurrent products on 4 executors all match numpy", "\n".join(fails))


def pool_steady_state(c):
    """The same product again and again: the pool serves it from its cache, with no new device allocation."""
    a, b = rand((300, 200), np.float32), rand((200, 150), np.float32)
    for _ in range(3):
        mm_binary(c, a, b)
    gi1 = gpu_info(c)
    fails = 0
    for _ in range(20):
        r, got = mm_binary(c, a, b)
        fails += not close_to(got, a, b)[0]
    gi2 = gpu_info(c)  # no wait: the pool's figures are read on every call
    p1, p2 = gi1.get("memory_pool", {}), gi2.get("memory_pool", {})
    tap.ok(fails == 0 and p1.get("device_allocs", 0) > 0 and p1.get("device_allocs") == p2.get("device_allocs"),
           "pool: 20 more of the same product make no device allocation (device_allocs stays "
           f"{p1.get('device_allocs')})", (fails, p1, p2))
    tap.ok(p2.get("held_bytes", 0) >= p2.get("cached_bytes", 0) > 0,
           "pool: the blocks are held and cached between requests", p2)
    # Each executor that computed has two cuBLAS handles, each with a 4 MiB workspace from the pool (the fake has
    # cublasSetWorkspace, so the pool's in-use bytes carry them); 1 to 4 executors computed above.
    ws, mib4 = p2.get("workspace_bytes"), 4 << 20
    in_use = p2.get("held_bytes", 0) - p2.get("cached_bytes", 0)
    tap.ok(type(ws) is int and ws % (2 * mib4) == 0 and 2 * mib4 <= ws <= 8 * mib4 and in_use >= ws,
           "pool: cuBLAS workspaces counted: 2 handles x 4 MiB per executor that computed, inside the bytes in use",
           p2)


def auto_without_nvml():
    """--device auto with TITAN_CUDA_MODULE set takes the CUDA module; without NVML, the figures come from the
    runtime (the driver's CUDA version, cudaMemGetInfo) and the others are null; the runtime's version is what
    cudaRuntimeGetVersion says."""
    env = fenv(report_path("--device auto, no NVML"), FAKE_CUDA_RUNTIME_VERSION=12020,
               TITAN_NVML_LIBRARY=os.path.join(tmp, "no-such-libnvidia-ml.so.1"))
    w = Worker(BIN, "--device", "auto", "--threads", "2", "--blas-threads", "1", env=env)
    c = Client(w.endpoint)
    log = w.read_log()
    tap.ok(f"device cuda: {NAME}" in log and "computing on the CPU" not in log,
           "--device auto with TITAN_CUDA_MODULE: the CUDA module is chosen", log)
    gi = gpu_info(c, wait=False)
    tap.ok(gi.get("backend") == "cuda" and gi.get("runtime_version") == "12.2" and gi.get("driver_version") == DRIVER_CUDA,
           "gpu_info without NVML: runtime 12.2 (FAKE_CUDA_RUNTIME_VERSION), driver 'CUDA 11.4' from the runtime", gi)
    used, free = gi.get("memory_used_gb"), gi.get("memory_free_gb")
    tap.ok(isinstance(used, float) and isinstance(free, float) and abs(used + free - (1024 << 20) / 1e9) < 1e-9,
           "gpu_info without NVML: memory from cudaMemGetInfo (used + free = the device)", gi)
    tap.ok(all(gi.get(k, 0) is None for k in ("utilization", "temperature_c", "power_w", "sm_clock_mhz",
                                              "mem_clock_mhz")),
           "gpu_info without NVML: utilization, temperature, power and clocks null", gi)
    a, b = rand((40, 30), np.float64), rand((30, 20), np.float64)
    r, got = mm_binary(c, a, b)
    tap.ok(close_to(got, a, b)[0], "--device auto: a product on the CUDA backend", r)
    c.close()
    w.stop()


def nvml_by_index():
    """NVML that does not match the GPU's PCI address (some virtual machines): with one GPU, the worker finds it
    by index; with several it does not guess, and the NVML figures are null."""
    for count, found in (("1", True), ("2", False)):
        env = fenv(None, FAKE_NVML_PCI_UNKNOWN="1", FAKE_NVML_COUNT=count)
        w = Worker(BIN, "--device", "cuda", "--threads", "1", "--blas-threads", "1", env=env)
        c = Client(w.endpoint)
        gi = gpu_info(c, wait=False)
        if found:
            tap.ok(gi.get("driver_version") == NVML_DRIVER and gi.get("temperature_c") == 54.0,
                   "NVML without a PCI match, one GPU: found by index (driver, temperature)", gi)
        else:
            tap.ok(gi.get("driver_version") == DRIVER_CUDA and gi.get("temperature_c") is None,
                   "NVML without a PCI match, two GPUs: no guess (driver from the runtime, temperature null)", gi)
        c.close()
        w.stop()


def out_of_memory():
    """An 8 MiB device: a request that could never fit is too_large, one that fits alone but not beside resident
    tensors is device_error (out of memory), and the worker serves on after both."""
    env = fenv(report_path("8 MiB device"), FAKE_CUDA_MEM_MB=8)
    w = Worker(BIN, "--device", "cuda", "--threads", "1", "--blas-threads", "1", "--tensor-memory-mb", "8", env=env)
    c = Client(w.endpoint)
    small_a, small_b = rand((8, 8), np.float32), rand((8, 8), np.float32)

    # 4 + 4 + 4 MiB: each operand fits the device, all three do not.
    a, b = rand((1024, 1024), np.float32), rand((1024, 1024), np.float32)
    r, _ = mm_binary(c, a, b)
    msg = r.get("error", "")
    tap.ok(r.get("code") == "too_large" and "12.0 MiB" in msg and "8.0 MiB" in msg,
           "a product that needs more than the whole device (12 MiB of 8): too_large with the sizes", r)
    a2 = rand((2048, 1024), np.float32)  # 8 MiB alone
    r, _ = mm_binary(c, a2, rand((1024, 1), np.float32))
    tap.ok(r.get("code") == "too_large" and "MiB" in r.get("error", ""),
           "an operand as large as the device: too_large", r)
    r, got = mm_binary(c, small_a, small_b)
    tap.ok(close_to(got, small_a, small_b)[0], "after too_large the worker still computes", r)

    refs = []
    for i in range(3):  # 3 x 2 MiB resident
        t = rand((512, 1024), np.float32)
        rr, _ = c.call({"op": "tensor_put", "tensor": desc(t, 1)}, t.tobytes())
        refs.append(rr.get("ref"))
    tap.ok(all(refs), "three 2 MiB resident tensors on the 8 MiB device", refs)
    a, b = rand((256, 512), np.float32), rand((512, 1024), np.float32)  # 0.5 + 2 + 1 MiB
    r, _ = mm_binary(c, a, b)
    msg = r.get("error", "")
    tap.ok(r.get("code") == "device_error" and "out of memory" in msg and "3.5 MiB" in msg,
           "a product that fits alone but not beside the resident tensors: device_error, out of memory, sizes", r)
    r, got = mm_binary(c, small_a, small_b)
    gi = gpu_info(c)
    tap.ok(close_to(got, small_a, small_b)[0] and gi.get("ready") is True,
           "after device out of memory the worker still computes and stays ready", (r, gi.get("ready")))
    rr, _ = c.call({"op": "tensor_free", "ref": refs[0]})
    r, got = mm_binary(c, a, b)
    good, why = close_to(got, a, b)
    tap.ok(rr.get("status") == "ok" and good, "once a resident tensor is freed, the same product runs",
           (rr, r if got is None else why))
    t = rand((1024, 8), np.float32)
    r, fr = c.call({"op": "matrix_multiply", "a": {"ref": refs[1]}, "b": desc(t, 1)}, t.tobytes())
    tap.ok("result" in r, "a resident operand still reads back after the out-of-memory failures", r)
    c.call({"op": "tensor_free", "all": True})
    c.close()
    w.stop()


def no_device():
    env = fenv(report_path("no device"), FAKE_CUDA_NO_DEVICE=1)
    rc, out = run_fail(["--device", "cuda"], env)
    tap.ok(rc != 0 and "cudaErrorNoDevice" in out and "--device cpu" in out,
           "FAKE_CUDA_NO_DEVICE, --device cuda: exits non-zero, names the error and the way out", f"rc={rc}\n{out}")
    w = Worker(BIN, "--device", "auto", "--threads", "1", "--blas-threads", "1",
               env=fenv(report_path("no device, auto"), FAKE_CUDA_NO_DEVICE=1))
    c = Client(w.endpoint)
    log = w.read_log()
    gi = gpu_info(c, wait=False)
    r, _ = c.call({"op": "matrix_multiply", "a": [[1, 2]], "b": [[3], [4]]})
    tap.ok("--device auto: CUDA is not usable" in log and "cudaErrorNoDevice" in log and "computing on the CPU" in log
           and gi.get("backend") == "cpu" and r.get("result") == [[11.0]],
           "FAKE_CUDA_NO_DEVICE, --device auto: falls back to the CPU and logs why", f"{log}\n{gi}\n{r}")
    c.close()
    w.stop()
    rc, out = run_fail(["--device", "cuda:1"], fenv(report_path("cuda:1, one device"), FAKE_CUDA_DEVICES=1))
    tap.ok(rc != 0 and "no CUDA device 1" in out and "has 1" in out,
           "--device cuda:1 on a machine with one GPU (FAKE_CUDA_DEVICES=1): exits non-zero", f"rc={rc}\n{out}")
    rc, out = run_fail(["--device", "cuda:2"], fenv(report_path("cuda:2, two devices")))
    tap.ok(rc != 0 and "no CUDA device 2" in out and "has 2" in out and "cuda:0 to cuda:1" in out,
           "--device cuda:2 on a machine with two GPUs: exits non-zero, names cuda:0 to cuda:1", f"rc={rc}\n{out}")


def no_kernel():
    rc, out = run_fail(["--device", "cuda"], fenv(report_path("no kernel image"), FAKE_CUDA_NO_KERNEL=1))
    tap.ok(rc != 0 and "no GPU code" in out and "-Dcuda-arch=52" in out,
           "FAKE_CUDA_NO_KERNEL, --device cuda: exits non-zero and says to rebuild with -Dcuda-arch=52",
           f"rc={rc}\n{out}")
    w = Worker(BIN, "--device", "auto", "--threads", "1", "--blas-threads", "1",
               env=fenv(report_path("no kernel image, auto"), FAKE_CUDA_NO_KERNEL=1))
    c = Client(w.endpoint)
    log = w.read_log()
    gi = gpu_info(c, wait=False)
    tap.ok("CUDA is not usable" in log and "-Dcuda-arch" in log and gi.get("backend") == "cpu",
           "FAKE_CUDA_NO_KERNEL, --device auto: falls back to the CPU and logs why", f"{log}\n{gi}")
    c.close()
    w.stop()


def poisoned():
    """The 4th GEMM call (the start's self-test is the 1st) kills the context: the 3rd product answers
    device_error, and so does every later device request; /readyz 503; gpu_info ready false; ping answers."""
    env = fenv(report_path("poisoned context"), FAKE_CUDA_STICKY_AFTER=3)
    w = Worker(BIN, "--device", "cuda", "--threads", "1", "--blas-threads", "1", "--http", "0", env=env)
    c = Client(w.endpoint)
    base = http_base(w)
    st, body = hget(base, "/readyz")
    tap.ok(st == 200, "/readyz 200 before the fault", (st, body))
    a, b = rand((20, 10), np.float32), rand((10, 5), np.float32)
    r1, g1 = mm_binary(c, a, b)
    r2, g2 = mm_binary(c, a, b)
    tap.ok(close_to(g1, a, b)[0] and close_to(g2, a, b)[0], "products 1 and 2 before the fault", (r1, r2))
    r3, _ = mm_binary(c, a, b)
    tap.ok(r3.get("code") == "device_error" and "context is lost" in r3.get("error", ""),
           "product 3 meets the fault: device_error, the context is lost", r3)
    r4, _ = mm_binary(c, a, b)
    rj, _ = c.call({"op": "matrix_multiply", "a": [[1]], "b": [[2]]})
    rp, _ = c.call({"op": "tensor_put", "tensor": [[1.0, 2.0]]})
    tap.ok(all(r.get("code") == "device_error" and "context is lost" in r.get("error", "")
               and "restart" in r.get("error", "") for r in (r4, rj, rp)),
           "later products and tensor_put: device_error, the context is lost, restart", (r4, rj, rp))
    st, body = hget(base, "/readyz")
    tap.ok(st == 503 and "device" in body and "context is lost" in body,
           "/readyz 503 naming the device and the lost context", (st, body))
    gi = gpu_info(c, wait=False)
    tap.ok(gi.get("ready") is False and "context is lost" in (gi.get("device_state") or ""),
           "gpu_info: ready false, device_state says why", gi)
    r, _ = c.call({"op": "ping"})
    tap.ok(r.get("status") == "ok" and r.get("backend") == "cuda", "ping still answers", r)
    st, _ = hget(base, "/healthz")
    tap.ok(st == 200, "/healthz still 200 (the process is alive)", st)
    cli = os.path.join(os.path.dirname(BIN), "titan")
    p = subprocess.run([cli, "--endpoint", w.endpoint, "info"], capture_output=True, text=True, timeout=30)
    tap.ok(p.returncode == 0 and "NOT READY" in p.stdout and "context is lost" in p.stdout,
           "titan info says NOT READY and why", p.stdout + p.stderr)
    c.close()
    rc = w.stop()
    tap.ok(rc == 0, "a worker with a lost context still stops cleanly", f"rc={rc}\n{open(w.logpath).read()[-2000:]}")


def second_device():
    """--device cuda:1 on two fake devices: the worker says device 1, and every allocation, copy, product and
    free of its executors happens on device 1 (the fake fails a copy or a GEMM whose memory lies on another
    device than its stream's or handle's, and poisons the context as a real GPU's illegal address does). The
    executors' first request allocates before it copies, so a thread that is not bound to the device first
    allocates on device 0. No NVML: the memory figures come from cudaMemGetInfo, which must ask device 1."""
    rep = report_path("--device cuda:1", device=1)
    env = fenv(rep, TITAN_CUDA_STAGE_KB=64, TITAN_NVML_LIBRARY=os.path.join(tmp, "no-such-libnvidia-ml.so.1"))
    w = Worker(BIN, "--device", "cuda:1", "--threads", "2", "--blas-threads", "1", env=env)
    c = Client(w.endpoint)
    gi = gpu_info(c)
    tap.ok(gi.get("device_index") == 1 and gi.get("pci_bus_id") == "0000:02:00.0" and gi.get("name") == NAME
           and gi.get("ready") is True, "cuda:1: gpu_info says device 1, PCI 0000:02:00.0, ready", gi)

    dt = np.float32
    a, b, d = rand((300, 200), dt), rand((200, 150), dt), rand((150, 40), dt)
    ra, _ = c.call({"op": "tensor_put", "tensor": desc(a, 1)}, a.tobytes())
    rb, _ = c.call({"op": "tensor_put", "dtype": "float32", "tensor": b.tolist()})
    ha, hb = ra.get("ref"), rb.get("ref")
    tap.ok(ha and hb, "cuda:1: tensor_put of a binary and a JSON tensor", (ra, rb))
    r, _ = c.call({"op": "matrix_multiply", "a": {"ref": ha}, "b": {"ref": hb}, "keep": True})
    hc = r.get("result", {}).get("ref")
    g, fr = c.call({"op": "tensor_get", "ref": hc}) if hc else (r, [])
    good, why = close_to(frame_array(g, fr) if "result" in g else None, a, b)
    tap.ok(good, "cuda:1: matmul keep of two resident tensors, read back with tensor_get", g if "error" in g else why)
    r, fr = c.call({"op": "matrix_multiply", "a": {"ref": ha}, "b": {"ref": hb}})
    good, why = close_to(frame_array(r, fr) if "result" in r else None, a, b)
    tap.ok(good, "cuda:1: resident x resident product", r if "error" in r else why)
    r1, fr1 = c.call({"op": "matrix_multiply", "a": desc(a, 1), "b": {"ref": hb}}, a.tobytes())
    good1, why1 = close_to(frame_array(r1, fr1) if "result" in r1 else None, a, b)
    r2, fr2 = c.call({"op": "matrix_multiply", "a": {"ref": hc}, "b": desc(d, 1)}, d.tobytes()) if hc else ({}, [])
    ref = (a.astype(np.float64) @ b.astype(np.float64)).astype(dt)
    good2, why2 = close_to(frame_array(r2, fr2) if "result" in r2 else None, ref, d)
    tap.ok(good1 and good2, "cuda:1: host x resident and resident x host products (row blocks through 64 KiB "
           "staging buffers)", f"{r1 if 'error' in r1 else why1}\n{r2 if 'error' in r2 else why2}")
    g, fr = c.call({"op": "tensor_get", "ref": ha}) if ha else ({}, [])
    got = frame_array(g, fr) if "result" in g else None
    tap.ok(got is not None and np.array_equal(got, a), "cuda:1: tensor_get returns the uploaded tensor exactly", g)
    x, y = rand((129, 1000), np.float64), rand((1000, 7), np.float64)
    r, got = mm_binary(c, x, y)
    good, why = close_to(got, x, y)
    tap.ok(good, "cuda:1: a float64 host product", r if got is None else why)
    r, _ = c.call({"op": "tensor_free", "all": True})
    tap.ok(r.get("status") == "ok" and r.get("freed") == 3, "cuda:1: tensor_free all (3 tensors)", r)
    gi = gpu_info(c, wait=True)
    used, free = gi.get("memory_used_gb"), gi.get("memory_free_gb")
    tap.ok(gi.get("ready") is True and isinstance(used, float) and isinstance(free, float) and used > 0
           and abs(used + free - (1024 << 20) / 1e9) < 1e-9,
           "cuda:1: still ready; cudaMemGetInfo's figures are device 1's (its pool holds blocks there)", gi)
    c.close()
    rc = w.stop()
    tap.ok(rc == 0, "cuda:1: SIGTERM stops the worker with exit code 0", f"rc={rc}\n{open(w.logpath).read()[-2000:]}")
    rp = read_report(rep)
    tap.ok(rp is not None and rp["invalid_calls"] == 0 and rp["cross_device"] == 0,
           "cuda:1: no invalid call (no copy, GEMM or free across devices)",
           f"{rp}\n{open(w.logpath).read()[-3000:]}")
    by = (rp or {}).get("device_allocs_total_by_device", [])
    tap.ok(len(by) == 2 and by[0] == 0 and by[1] > 0, "cuda:1: device 0 got no allocation at all, device 1 all of them",
           rp)


def second_device_sweeper():
    """--device cuda:1: a resident tensor that expires is freed by the tensor sweeper's thread, which never runs a
    request (so never binds to the device through an executor's path). With --pool-cache-mb 1 its 2 MiB block is
    not cached but given back to CUDA there and then: cudaFree must run on device 1 (the fake refuses a free of
    another device's pointer than the calling thread's current device's, as a wrong context would)."""
    rep = report_path("--device cuda:1, sweeper frees", device=1)
    w = Worker(BIN, "--device", "cuda:1", "--threads", "1", "--blas-threads", "1", "--pool-cache-mb", "1",
               "--tensor-ttl", "1", env=fenv(rep))
    c = Client(w.endpoint)
    x = rand((512, 1024), np.float32)  # 2 MiB: a block over the 1 MiB cache
    r, _ = c.call({"op": "tensor_put", "tensor": desc(x, 1)}, x.tobytes())
    held = gpu_info(c).get("memory_pool", {}).get("held_bytes", 0)
    end, gi = time.monotonic() + 15, {}
    while time.monotonic() < end:  # the tensor's count drops before its block goes back: wait for both
        gi = gpu_info(c)
        if gi.get("resident", {}).get("tensors") == 0 and gi.get("memory_pool", {}).get("held_bytes") != held:
            break
        time.sleep(0.2)
    after = gi.get("memory_pool", {}).get("held_bytes", 0)
    tap.ok("ref" in r and gi.get("resident", {}).get("tensors") == 0 and held - after == 2 << 20,
           "cuda:1, --tensor-ttl 1, --pool-cache-mb 1: the idle 2 MiB tensor expires and its block leaves the pool "
           f"(held_bytes {held} -> {after})", (r, gi))
    c.close()
    rc = w.stop()
    rp = read_report(rep)
    tap.ok(rc == 0 and rp is not None and rp["invalid_calls"] == 0 and rp["device_allocs_live"] == 0,
           "cuda:1: the sweeper's thread freed it on device 1 (no invalid cudaFree, nothing left allocated)",
           f"rc={rc} {rp}\n{open(w.logpath).read()[-2000:]}")


def lock_order():
    """A first sticky error raised inside the pool (the 11th cudaMalloc: the start makes 4, each product of a new
    size 3) while one thread polls gpu_info and GET /metrics without a pause. The fake's lockdep sees every
    order in which cuda.c and devpool.c take their mutexes: an inversion is reported even when the run happens
    not to deadlock, and so is a device wait (cudaMalloc, cudaFree...) made under one of them. Then the worker
    must still answer ping, and stop cleanly."""
    rep = report_path("sticky cudaMalloc while gpu_info polls")
    env = fenv(rep, FAKE_CUDA_STICKY_MALLOC_AFTER=10)
    w = Worker(BIN, "--device", "cuda", "--threads", "2", "--blas-threads", "1", "--http", "0", env=env)
    base = http_base(w)
    stop, polled = threading.Event(), threading.Event()
    poll = {"n": 0, "errors": []}

    def poller():
        pc = Client(w.endpoint, timeout_ms=10000)
        try:
            while not stop.is_set():
                r, _ = pc.call({"op": "gpu_info"})
                st, _ = hget(base, "/metrics")
                if r.get("backend") != "cuda" or st != 200:
                    poll["errors"].append(f"gpu_info {r}, /metrics {st}")
                poll["n"] += 1
                polled.set()
        except Exception as e:  # a timeout here is the hang this test looks for
            poll["errors"].append(repr(e))
        finally:
            pc.close()

    t = threading.Thread(target=poller, daemon=True)
    t.start()
    polled.wait(10)
    c = Client(w.endpoint, timeout_ms=20000)
    fails, err = [], None
    try:
        for n in (16, 32, 64, 128, 256, 512):  # each a block size the pool has not seen
            a, b = rand((n, n), np.float32), rand((n, n), np.float32)
            r, got = mm_binary(c, a, b)
            if "error" in r:
                err = r
                break
            good, why = close_to(got, a, b)
            if not good:
                fails.append(f"{n}: {why}")
    except zmq.Again:
        err = {"error": "no answer in 20 s"}
    c.close()
    msg = (err or {}).get("error", "")
    tap.ok(not fails and (err or {}).get("code") == "device_error" and "context is lost" in msg and "cudaMalloc" in msg,
           "sticky cudaMalloc in the pool under polling: the products before it match, then device_error, the "
           "context is lost (cudaMalloc)", f"{fails}\n{err}")
    pc = Client(w.endpoint, timeout_ms=5000)
    try:
        r, _ = pc.call({"op": "ping"})
    except zmq.Again:
        r = {"error": "no answer to ping in 5 s"}
    pc.close()
    tap.ok(r.get("status") == "ok", "after the sticky error, with the poller still running, ping answers within 5 s", r)
    stop.set()
    t.join(25)
    tap.ok(not t.is_alive() and not poll["errors"] and poll["n"] > 0,
           f"gpu_info and /metrics answered every poll ({poll['n']}) before, during and after the error",
           f"alive={t.is_alive()} {poll['errors'][:5]}")
    t0 = time.monotonic()
    rc = w.stop(timeout=20)
    took = time.monotonic() - t0
    log = open(w.logpath).read()
    tap.ok(rc == 0, f"the worker stops cleanly within 20 s ({took:.1f} s)", f"rc={rc}\n{log[-3000:]}")
    rp = read_report(rep)
    lines = ([l for l in log.splitlines() if "lock inversion" in l] +
             [l for l in log.splitlines() if "while holding the lock" in l])
    tap.ok(rp is not None and rp.get("lock_inversions") == 0,
           "lockdep: no lock-order inversion in cuda.c and devpool.c (sticky error path against gpu_info)",
           "\n".join([str(rp)] + lines[:10]))
    tap.ok(rp is not None and rp.get("locked_waits") == 0,
           "lockdep: no cudaMalloc, cudaFree or stream wait made while holding a mutex", "\n".join([str(rp)] + lines[:10]))


def one_executor():
    """One executor: the pool's figures in gpu_info are read on every call, so right after a product of a size
    never seen, device_allocs has grown (no waiting out a cache); and the start's self-test gives its pinned
    staging buffers back, so at most one executor's 4 (2 in, 2 out) are ever allocated, not 8."""
    rep = report_path("one executor")
    w = Worker(BIN, "--device", "cuda", "--threads", "1", "--blas-threads", "1", env=fenv(rep))
    c = Client(w.endpoint)
    a, b = rand((20, 10), np.float32), rand((10, 5), np.float32)
    mm_binary(c, a, b)  # the executor's streams, handles and buffers
    # Past the sampling interval: a cache filled by this call would still be served to the calls below.
    before = gpu_info(c, wait=True).get("memory_pool", {}).get("device_allocs")
    seen = []
    for n in (40, 80, 160):  # blocks of 8, 32 and 128 KiB: sizes the pool has not held yet
        a, b = rand((n, n), np.float32), rand((n, n), np.float32)
        r, got = mm_binary(c, a, b)
        after = gpu_info(c).get("memory_pool", {}).get("device_allocs")
        seen.append((n, before, after, close_to(got, a, b)[0]))
        before = after
    tap.ok(all(isinstance(x, int) and isinstance(y, int) and y > x and ok for _, x, y, ok in seen),
           "gpu_info right after a product of a new size: memory_pool.device_allocs has grown (not cached)",
           "(n, before, after, product ok): " + str(seen))
    c.close()
    rc = w.stop()
    rp = read_report(rep)
    tap.ok(rc == 0 and rp is not None and rp.get("pinned_peak") == 4,
           "--threads 1: at most 4 pinned staging buffers at once (the start's self-test buffers were given back)",
           f"rc={rc} {rp}")


def pinned_fail():
    """cudaHostAlloc fails (FAKE_CUDA_HOSTALLOC_FAIL): the start's self-test needs staging buffers, so --device
    cuda fails; the reason is pinned host memory, not the GPU's memory."""
    rc, out = run_fail(["--device", "cuda"], fenv(report_path("no pinned memory"), FAKE_CUDA_HOSTALLOC_FAIL=1))
    tap.ok(rc != 0 and "pinned host memory" in out and "cudaHostAlloc" in out and "GPU out of memory" not in out
           and "device out of memory" not in out,
           "FAKE_CUDA_HOSTALLOC_FAIL, --device cuda: exits non-zero, says pinned host memory (cudaHostAlloc), not "
           "GPU out of memory", f"rc={rc}\n{out}")
    w = Worker(BIN, "--device", "auto", "--threads", "1", "--blas-threads", "1",
               env=fenv(report_path("no pinned memory, auto"), FAKE_CUDA_HOSTALLOC_FAIL=1))
    c = Client(w.endpoint)
    log = w.read_log()
    gi = gpu_info(c)
    c.close()
    w.stop()
    tap.ok("CUDA is not usable" in log and "pinned host memory" in log and "GPU out of memory" not in log
           and gi.get("backend") == "cpu",
           "FAKE_CUDA_HOSTALLOC_FAIL, --device auto: falls back to the CPU and says pinned host memory", f"{log}\n{gi}")


def pool_block(nbytes):
    """The pool's block for an allocation of nbytes (docs/OPERATIONS.md, "The CUDA backend"): at least 256 bytes,
    powers of two up to 1 MiB, then multiples of an eighth of the largest power of two not above it."""
    if nbytes <= 256:
        return 256
    if nbytes <= 1 << 20:
        return 1 << (nbytes - 1).bit_length()
    step = (1 << (nbytes.bit_length() - 1)) // 8
    return -(-nbytes // step) * step


def quota_charges():
    """Issue 18's last nit: what the backend holds beyond the tensors' data counts against the quotas. The default
    --tensor-memory-mb (half the GPU) leaves out the cuBLAS workspaces of every executor (--threads 3: 3 x 2
    handles x 4 MiB on the fake's 1 GiB device, not the 1 executor assumed when titan_cuda_opts.executors was
    unused); a resident tensor is charged the pool block it holds (plus 512 bytes of bookkeeping), not its data
    rounded to 64 bytes, so a tensor whose data fits a client's quota but whose block does not is refused."""
    total, ws = 1024 << 20, 4 << 20  # FAKE_CUDA_MEM_MB's default; 4 MiB a handle below Hopper (at most 1/64)
    w = Worker(BIN, "--device", "cuda", "--threads", "3", "--blas-threads", "1", env=fenv(report_path("quotas")))
    c = Client(w.endpoint)
    r, _ = c.call({"op": "tensor_list"})
    got = r.get("quota", {}).get("worker_bytes", -1)
    want = (total - 3 * 2 * ws) // 2
    # total_memory_gb * 1e9 may come back one byte short of the device's size: a byte of slack.
    tap.ok(abs(got - want) <= 1, f"default --tensor-memory-mb with --threads 3: half the GPU less 3 executors' "
           f"cuBLAS workspaces ({want} bytes; 1 executor's would be {(total - 2 * ws) // 2})", r)
    elems, charged, fails = (1, 75, 262144, 262145), 0, []
    for n in elems:
        x = rand((n,), np.float32)
        rp, _ = c.call({"op": "tensor_put", "tensor": desc(x, 1)}, x.tobytes())
        if "ref" not in rp:
            fails.append(f"{n}: {rp}")
        charged += pool_block(4 * n) + 512
    r, _ = c.call({"op": "tensor_list"})
    tap.ok(not fails and r.get("charged_bytes") == charged and r.get("worker_charged_bytes") == charged,
           f"resident tensors of {', '.join(str(4 * n) for n in elems)} bytes are charged their pool blocks plus "
           f"512 each ({charged} bytes)", f"{fails}\n{r}")
    c.call({"op": "tensor_free", "all": True})
    c.close()
    w.stop()
    # 1,000,000 bytes: 1,000,512 charged by the data alone, under a 1 MiB quota; its block is 1 MiB, so not.
    w = Worker(BIN, "--device", "cuda", "--threads", "1", "--blas-threads", "1", "--tensor-quota-mb", "1",
               env=fenv(report_path("1 MiB client quota")))
    c = Client(w.endpoint)
    x = rand((250000,), np.float32)
    r, _ = c.call({"op": "tensor_put", "tensor": desc(x, 1)}, x.tobytes())
    tap.ok(r.get("code") == "quota_exceeded" and str(pool_block(10 ** 6) + 512) in r.get("error", ""),
           "--tensor-quota-mb 1: a 1,000,000-byte tensor (a 1 MiB block) is refused, its charge named", r)
    x = rand((250000 - 128,), np.float32)  # 999,488 bytes: a 1 MiB block too, charged 1,049,088 > 1 MiB
    r2, _ = c.call({"op": "tensor_put", "tensor": desc(x, 1)}, x.tobytes())
    y = rand((131072 - 128,), np.float32)  # 523,776 bytes: a 512 KiB block, 524,800 charged: fits
    r3, _ = c.call({"op": "tensor_put", "tensor": desc(y, 1)}, y.tobytes())
    tap.ok(r2.get("code") == "quota_exceeded" and "ref" in r3,
           "--tensor-quota-mb 1: a tensor whose block is the whole quota is refused, one of half of it fits", (r2, r3))
    c.close()
    w.stop()


def exit_reports():
    """The fake runtime's report at each worker's exit: no invalid call (every device pointer inside a live
    allocation and on the device of the stream or handle that uses it, every handle known, no device wait under
    a lock), no lock-order inversion, no allocation on another device than the worker's, and after a clean stop
    nothing left: device memory, pinned buffers, streams, events, cuBLAS handles."""
    invalid, locks, elsewhere, leaks, missing = [], [], [], [], []
    for what, path, clean, device in reports:
        if not os.path.exists(path):
            missing.append(what)
            continue
        for line in open(path):
            rep = json.loads(line)
            if rep["invalid_calls"]:
                invalid.append(f"{what}: {rep}")
            if rep.get("lock_inversions") != 0 or rep.get("locked_waits") != 0:
                locks.append(f"{what}: lock_inversions {rep.get('lock_inversions')}, locked_waits "
                             f"{rep.get('locked_waits')}")
            by = rep.get("device_allocs_total_by_device", [])
            if any(n for i, n in enumerate(by) if i != device):
                elsewhere.append(f"{what} (device {device}): {by}")
            live = {k: rep[k] for k in ("device_allocs_live", "device_bytes_in_use", "pinned_live", "streams_live",
                                        "events_live", "handles_live") if rep[k]}
            if clean and live:
                leaks.append(f"{what}: {live}")
    tap.ok(not missing, "every worker that loaded the fake wrote its exit report", missing)
    tap.ok(not invalid, "no invalid CUDA or cuBLAS call (device ranges and devices, handles, streams, no device "
           "wait under a lock)", "\n".join(invalid))
    tap.ok(not locks, "lockdep: no lock-order inversion and no device wait under a lock, in any worker",
           "\n".join(locks))
    tap.ok(not elsewhere, "no worker allocated on another device than its own", "\n".join(elsewhere))
    tap.ok(not leaks, "nothing left allocated at exit: device memory, pinned buffers, streams, events, handles",
           "\n".join(leaks))


for name, fn in [("--device cuda", device_and_info), ("--device auto", auto_without_nvml), ("nvml by index", nvml_by_index),
                 ("out of memory", out_of_memory), ("no device", no_device), ("no kernel image", no_kernel),
                 ("poisoned context", poisoned), ("--device cuda:1", second_device),
                 ("--device cuda:1, sweeper", second_device_sweeper), ("lock order", lock_order),
                 ("one executor", one_executor), ("no pinned memory", pinned_fail),
                 ("quota charges", quota_charges)]:
    tap.run(name, fn)
for ep, rc, san in Worker.stop_all():
    tap.ok(rc == 0 and not san, f"worker {ep} exited cleanly", f"rc={rc}")
tap.run("exit reports", exit_reports)
sys.exit(tap.done())
