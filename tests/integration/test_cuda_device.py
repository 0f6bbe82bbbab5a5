"""test_cuda_device.py - the CUDA backend on a real GPU against numpy (the CPU's answer): products in
float32 and float64 across shapes (several row blocks, odd remainders), JSON and binary forms, resident
operands, gpu_info's device fields, and steady-state pool reuse. Reported as skipped (TAP 1..0 # SKIP)
where titan-worker has no CUDA module or the machine has no usable GPU: never as passed."""
import json
import os
import sys

import numpy as np
import zmq

from workerproc import Tap, Worker

BIN = sys.argv[1]


def skip(why):
    print(f"1..0 # SKIP {why}")
    sys.exit(0)


module = os.path.join(os.path.dirname(os.path.abspath(BIN)), "titan-backend-cuda.so")
if not os.path.exists(module):
    skip("titan-worker was built without the CUDA backend (no titan-backend-cuda.so)")
try:
    w = Worker(BIN, "--device", "cuda", "--threads", "2")
except RuntimeError as e:
    skip("no usable CUDA device here: " + str(e).strip().splitlines()[-1][:200])

tap = Tap()
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.ROUTING_ID, b"cuda-device-test")
sock.setsockopt(zmq.LINGER, 0)
sock.connect(w.endpoint)


def call(hdr, *frames, timeout=120000):
    sock.send_multipart([b"", json.dumps(hdr).encode(), *frames])
    if not sock.poll(timeout):
        raise RuntimeError("no reply to " + hdr["op"])
    parts = sock.recv_multipart()
    return json.loads(parts[1]), parts[2:]


def desc(x, frame):
    return {"dtype": str(x.dtype), "shape": list(x.shape), "frame": frame}


info, _ = call({"op": "gpu_info"})
tap.ok(info.get("backend") == "cuda", "gpu_info: backend cuda", info)
tap.ok(isinstance(info.get("cuda_capability"), str) and "." in info["cuda_capability"], "gpu_info: capability",
       info)
tap.ok(info.get("device_index") == 0 and info.get("multi_processor_count", 0) > 0, "gpu_info: index and SMs", info)
tap.ok(isinstance(info.get("runtime_version"), str) and isinstance(info.get("driver_version"), str),
       "gpu_info: driver and runtime versions", info)
tap.ok(info.get("ready") is True and isinstance(info.get("memory_pool"), dict), "gpu_info: ready, pool", info)

rng = np.random.default_rng(7)
shapes = [(1, 1, 1), (2, 3, 2), (64, 64, 64), (300, 200, 150), (1031, 517, 263), (2048, 1024, 768),
          (4096, 4096, 4096)]
for dt, tol in ((np.float32, 2e-3), (np.float64, 1e-9)):
    for m, k, n in shapes:
        a = rng.standard_normal((m, k)).astype(dt)
        b = rng.standard_normal((k, n)).astype(dt)
        r, fr = call({"op": "matrix_multiply", "a": desc(a, 1), "b": desc(b, 2)}, a.tobytes(), b.tobytes())
        ok = "result" in r and len(fr) == 1
        if ok:
            c = np.frombuffer(fr[0], dtype=dt).reshape(m, n)
            ref = a.astype(np.float64) @ b.astype(np.float64)
            err = np.abs(c - ref).max() / max(1.0, np.abs(ref).max())
            ok = err < tol
        tap.ok(ok, f"{np.dtype(dt).name} {m}x{k} @ {k}x{n} matches the CPU (numpy)", r if not ok else "")

a = [[1, 2], [3, 4]]
r, _ = call({"op": "matrix_multiply", "a": a, "b": [[5, 6], [7, 8]]})
tap.ok(r == {"result": [[19.0, 22.0], [43.0, 50.0]]}, "the JSON form", r)

a = rng.standard_normal((777, 333)).astype(np.float32)
b = rng.standard_normal((333, 555)).astype(np.float32)
ra, _ = call({"op": "tensor_put", "tensor": desc(a, 1)}, a.tobytes())
rb, _ = call({"op": "tensor_put", "tensor": desc(b, 1)}, b.tobytes())
rc, _ = call({"op": "matrix_multiply", "a": {"ref": ra["ref"]}, "b": {"ref": rb["ref"]}, "keep": True})
g, fr = call({"op": "tensor_get", "ref": rc["result"]["ref"]})
c = np.frombuffer(fr[0], dtype=np.float32).reshape(777, 555) if fr else None
tap.ok(c is not None and np.abs(c - a @ b).max() < 1e-2, "resident operands, kept result read back", g)
r, fr = call({"op": "matrix_multiply", "a": {"ref": ra["ref"]}, "b": desc(b, 1)}, b.tobytes())
c = np.frombuffer(fr[0], dtype=np.float32).reshape(777, 555) if fr else None
tap.ok(c is not None and np.abs(c - a @ b).max() < 1e-2, "one resident and one sent operand", r)
g, fr = call({"op": "tensor_get", "ref": ra["ref"]})
tap.ok(fr and fr[0] == a.tobytes(), "tensor_get returns the bytes put", g)

# Steady state: the same product again and again allocates no device memory.
x = rng.standard_normal((512, 512)).astype(np.float32)
for _ in range(3):
    call({"op": "matrix_multiply", "a": desc(x, 1), "b": desc(x, 2)}, x.tobytes(), x.tobytes())
before = call({"op": "gpu_info"})[0]["memory_pool"]["device_allocs"]
for _ in range(20):
    call({"op": "matrix_multiply", "a": desc(x, 1), "b": desc(x, 2)}, x.tobytes(), x.tobytes())
after = call({"op": "gpu_info"})[0]["memory_pool"]["device_allocs"]
tap.ok(after == before, "20 same-sized products allocate no device memory", (before, after))

sock.close()
results = Worker.stop_all()
tap.ok(all(rc == 0 for _, rc, _ in results), "the worker exits cleanly", results)
print(f"1..{tap.n}")
sys.exit(1 if tap.failed else 0)
