#!/usr/bin/python3
"""bench_inference.py - latency of one MLP inference through titan-worker --models (binary frames,
one REQ socket) against the same TorchScript module called in-process by PyTorch, in the same run.
Usage: bench_inference.py PATH/TO/titan-worker [--iters N]   (prints one line per figure)"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import zmq

BIN = sys.argv[1]
ITERS = int(sys.argv[sys.argv.index("--iters") + 1]) if "--iters" in sys.argv else 300
THREADS = 4  # intra-op threads of both sides: the same compute budget
torch.set_num_threads(THREADS)
torch.manual_seed(0)

# An MLP that takes >= 1 ms per call on a CPU: batch 64, 1024 -> 2048 -> 2048 -> 1024.
mlp = torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048),
                          torch.nn.ReLU(), torch.nn.Linear(2048, 1024)).eval()
d = tempfile.mkdtemp(prefix="titan-bench-models-")
ts = torch.jit.script(mlp)
ts.save(os.path.join(d, "mlp.pt"))
with open(os.path.join(d, "mlp.model.json"), "w") as f:
    json.dump({"name": "mlp", "runner": "torchscript", "file": "mlp.pt", "device": "cpu",
               "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 1024]}],
               "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 1024]}]}, f)
x = np.random.default_rng(1).standard_normal((64, 1024)).astype(np.float32)

ep_file = os.path.join(d, "endpoint")
env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
proc = subprocess.Popen([BIN, "--bind", "tcp://127.0.0.1:*", "--endpoint-file", ep_file, "--models", d,
                         "--threads", "1", "--log-level", "warn"], env=env)
try:
    t0 = time.monotonic()
    while not os.path.exists(ep_file):
        if proc.poll() is not None or time.monotonic() - t0 > 30:
            sys.exit("titan-worker did not start")
        time.sleep(0.01)
    ctx = zmq.Context()
    s = ctx.socket(zmq.REQ)
    s.connect(open(ep_file).read().split()[0])
    hdr = json.dumps({"op": "inference", "model": "mlp",
                      "inputs": [{"dtype": "float32", "shape": [64, 1024], "frame": 1}]}).encode()

    def via_titan():
        s.send_multipart([hdr, x.tobytes()])
        parts = s.recv_multipart()
        return np.frombuffer(parts[1], dtype=np.float32)

    def in_process():
        with torch.no_grad():
            return ts(torch.from_numpy(x)).numpy()

    assert np.allclose(via_titan().reshape(64, 1024), in_process(), rtol=1e-4, atol=1e-4)

    def measure(fn):
        for _ in range(20):
            fn()
        t = []
        for _ in range(ITERS):
            a = time.perf_counter()
            fn()
            t.append(time.perf_counter() - a)
        t.sort()
        return statistics.median(t) * 1e3, t[int(len(t) * 0.99) - 1] * 1e3

    # Interleave the two, twice, so that machine noise hits both alike.
    res = {"titan": [], "torch": []}
    for _ in range(2):
        res["torch"].append(measure(in_process))
        res["titan"].append(measure(via_titan))
    p50 = {k: statistics.median(v[0] for v in res[k]) for k in res}
    p99 = {k: statistics.median(v[1] for v in res[k]) for k in res}
    print(f"mlp 64x1024 -> 2048 -> 2048 -> 1024, float32, {THREADS} threads, {ITERS} calls x 2")
    print(f"in-process PyTorch (TorchScript)  p50 {p50['torch']:.3f} ms  p99 {p99['torch']:.3f} ms")
    print(f"titan-worker (binary frames, REQ) p50 {p50['titan']:.3f} ms  p99 {p99['titan']:.3f} ms")
    print(f"ratio titan / in-process: p50 {p50['titan'] / p50['torch']:.2f}x, "
          f"overhead {p50['titan'] - p50['torch']:.3f} ms")
    s.close()
    ctx.term()
finally:
    proc.terminate()
    proc.wait(20)
