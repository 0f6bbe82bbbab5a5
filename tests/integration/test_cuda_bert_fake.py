#!/usr/bin/python3
"""test_cuda_bert_fake.py - BERT encoders on the CUDA backend (src/core/backends/cuda_bert.c and the items of
cuda_bert.cu's kernels, cuda_bert.h) through a real titan-worker on machines without a GPU: the fake CUDA runtime
(tests/fake_cuda/fake_cuda.c) runs the kernels' own item code on the CPU and cuBLAS's products with OpenBLAS, and
checks every pointer against live allocations on the right device, the locks (fake_lockdep.c) and the streams.

Model directories come from tests/encoder/make_model.py (random weights): bi-encoders with mean (and Normalize),
max and cls pooling and each activation, and a cross-encoder. A titan-worker --device cpu serves the reference; a
titan-worker --device cuda (then cuda:1) over the fake serves the same folder. Covers: list_models says "device":
"cuda" for each encoder; embed (normalised and raw) of batches of mixed lengths (one token to the model's limit,
and more padded tokens than one GPU batch holds) and rerank of documents of mixed lengths agree with the CPU
worker within 1e-4; concurrent clients (executors uploading the same model's weights at once); the fake's
counters show the GEMMs, the batched attention products and the kernel launches, no invalid call, no lock
inversion, no device wait under a lock, nothing on the other device for cuda:1, nothing left on the device after
a clean stop; an input too long for a small fake GPU answers too_large (not a crash), and the worker then serves
again; a sticky CUDA error during a forward pass answers device_error and makes the worker not ready.

Usage: test_cuda_bert_fake.py titan-worker titan-backend-cuda-fake.so fake-nvml.so   (prints TAP)
       test_cuda_bert_fake.py titan-worker --skip REASON                           (prints a TAP skip plan)"""
import json
import os
import subprocess
import sys
import tempfile
import threading

if len(sys.argv) >= 3 and sys.argv[2] == "--skip":
    print(f"1..0 # SKIP {' '.join(sys.argv[3:]) or 'the fake CUDA backend is not built'}", flush=True)
    sys.exit(0)

import numpy as np
import zmq

from workerproc import Tap, Worker

HERE = os.path.dirname(os.path.abspath(__file__))
MAKE = os.path.join(HERE, "..", "encoder", "make_model.py")
BIN, MODULE, NVML = (os.path.abspath(p) for p in sys.argv[1:4])
tap = Tap()
ctx = zmq.Context()
tmp = tempfile.mkdtemp(prefix="titan-cuda-bert-")
mdir = os.path.join(tmp, "models")
os.makedirs(mdir)
rng = np.random.default_rng(2026)
# float32 through the same math in another order (padded batches, cuBLAS's products here OpenBLAS's in another
# shape): differences of a few ulp of values near 1, far below this.
TOL = 1e-4


def make(name, *args, where=None):
    out = os.path.join(where or mdir, name)
    subprocess.run(["/usr/bin/python3", MAKE, out, *args], check=True, capture_output=True)
    return out


make("mean", "--normalize", "--max-positions", "64", "--seed", "11")
make("maxp", "--pooling", "max", "--act", "gelu_new", "--max-positions", "64", "--seed", "12")
make("clsp", "--pooling", "cls", "--act", "relu", "--layers", "3", "--heads", "8", "--max-positions", "64",
     "--seed", "13")
make("cross", "--cross", "1", "--max-positions", "64", "--seed", "14")
VOCAB = json.load(open(os.path.join(mdir, "cross", "tokenizer.json")))["model"]["vocab"]
WORDS = [w for w in VOCAB if w.isalpha() and w.isascii() and len(w) > 1 and not w.startswith("#")]


def fenv(report=None, **kw):
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("FAKE_CUDA_", "FAKE_NVML_")) and k not in ("TITAN_CUDA_STAGE_KB", "TITAN_CUDA_MODULE", "TITAN_NVML_LIBRARY")}
    e["TITAN_CUDA_MODULE"] = MODULE
    e["TITAN_NVML_LIBRARY"] = NVML
    if report:
        e["FAKE_CUDA_REPORT"] = report
    e.update({k: str(v) for k, v in kw.items()})
    return e


def read_report(path):
    if not os.path.exists(path):
        return None
    lines = [line for line in open(path) if line.strip()]
    return json.loads(lines[-1]) if lines else None


def call(w, req):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 120000)
    s.connect(w.endpoint)
    try:
        s.send_multipart([b"", json.dumps(dict(req, binary=req.get("op") == "embed")).encode()])
        parts = s.recv_multipart()
    finally:
        s.close()
    r = json.loads(parts[1])
    if "error" in r or req["op"] not in ("embed", "rerank"):
        return r, None
    if req["op"] == "embed":
        n, d = r["embeddings"]["shape"]
        return r, np.frombuffer(parts[2], dtype=np.float32).reshape(n, d)
    return r, np.array([x["score"] for x in sorted(r["results"], key=lambda x: x["index"])], dtype=np.float64)


def seqs(n, lo, hi, limit=64):
    """n id lists [CLS] ... [SEP] of lo..hi tokens in all (at most the model's positions)."""
    out = []
    for _ in range(n):
        k = int(rng.integers(lo, min(hi, limit) + 1))
        out.append([2] + [int(x) for x in rng.integers(5, len(VOCAB), size=max(k - 2, 0))] + [3][:max(k - 1, 0)])
    return [s[:max(1, len(s))] for s in out]


def docs(n, lo, hi):
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi + 1)))) for _ in range(n)]


# The cases, each run on both workers: (label, request).
CASES = []
for model in ("mean", "maxp", "clsp"):
    CASES.append((f"{model}: 20 inputs of 1 to 64 tokens", {"op": "embed", "model": model, "input": seqs(20, 1, 64)}))
CASES.append(("mean: normalize false", {"op": "embed", "model": "mean", "input": seqs(7, 2, 40), "normalize": False}))
CASES.append(("mean: one input of one token", {"op": "embed", "model": "mean", "input": [[2]]}))
# 150 inputs of 40 to 64 tokens: over 4096 padded tokens, so several GPU batches (cuda_bert.c's S_CHUNK_TOKENS).
CASES.append(("mean: 150 inputs of 40 to 64 tokens (several GPU batches)",
              {"op": "embed", "model": "mean", "input": seqs(150, 40, 64)}))
CASES.append(("cross: rerank of 12 documents of 1 to 40 words",
              {"op": "rerank", "model": "cross", "query": " ".join(WORDS[:3]), "documents": docs(12, 1, 40),
               "truncate": True}))

cpu = Worker(BIN, "--device", "cpu", "--models", mdir, "--threads", "2")
want = {}
for label, req in CASES:
    r, got = call(cpu, req)
    want[label] = got
    tap.ok(got is not None, f"the CPU worker answers '{label}'", r)


def run_device(device):
    report = os.path.join(tmp, f"report-{device.replace(':', '-')}.json")
    w = Worker(BIN, "--device", device, "--models", mdir, "--threads", "4", env=fenv(report))
    r, _ = call(w, {"op": "list_models"})
    devs = {m["name"]: m.get("device") for m in r.get("models", [])}
    tap.ok(devs == {"mean": "cuda", "maxp": "cuda", "clsp": "cuda", "cross": "cuda"},
           f"{device}: list_models says every encoder runs on cuda", r)
    # Four clients at once on a model not loaded yet: executors upload its weights side by side.
    res = [None] * 4
    req = CASES[1][1]

    def client(i):
        res[i] = call(w, req)

    ts = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    errs = [float(np.abs(g - want[CASES[1][0]]).max()) if g is not None else None for _, g in res]
    tap.ok(all(e is not None and e <= TOL for e in errs),
           f"{device}: 4 concurrent clients of a fresh model agree with the CPU within {TOL} (max errors {errs})",
           [r for r, _ in res])
    for label, req in CASES:
        r, got = call(w, req)
        ref = want[label]
        err = float(np.abs(got - ref).max()) if got is not None and ref is not None and got.shape == ref.shape else None
        tap.ok(err is not None and err <= TOL and np.all(np.isfinite(got)),
               f"{device}: {label}: agrees with the CPU worker within {TOL} (max error {err})", r)
    log = w.read_log()
    rc = w.stop()
    tap.ok(rc == 0, f"{device}: the worker stops cleanly", log[-3000:])
    rep = read_report(report) or {}
    tap.ok(rep.get("gemm_calls", 0) > 0 and rep.get("gemm_batched_calls", 0) > 0 and rep.get("bert_launches", 0) > 0,
           f"{device}: the products ran in cuBLAS (GEMMs and batched attention) and the kernels were launched "
           f"({rep.get('gemm_calls')} GEMM calls, {rep.get('gemm_batched_calls')} batched, "
           f"{rep.get('bert_launches')} launches)", rep)
    tap.ok(rep.get("invalid_calls") == 0 and rep.get("lock_inversions") == 0 and rep.get("locked_waits") == 0 and
           rep.get("cross_device") == 0 and rep.get("sticky") is False,
           f"{device}: no invalid CUDA call, lock inversion, device wait under a lock or cross-device access", rep)
    idx = int(device.split(":")[1]) if ":" in device else 0
    by_dev = rep.get("device_allocs_total_by_device", [])
    tap.ok(len(by_dev) == 2 and by_dev[idx] > 0 and by_dev[1 - idx] == 0,
           f"{device}: every device allocation on device {idx}, none on the other", by_dev)
    tap.ok(rep.get("device_allocs_live") == 0 and rep.get("device_bytes_in_use") == 0,
           f"{device}: nothing left on the device after a clean stop", rep)


run_device("cuda")
run_device("cuda:1")

# A fake GPU of 4 MiB: a 500-token input needs more (its 4 heads' scores alone are 4 MB, with the weights and the
# other activations more than the whole device): too_large, and the worker serves the next request.
small = os.path.join(tmp, "small")
os.makedirs(small)
make("long", "--max-positions", "512", "--seed", "15", where=small)
report = os.path.join(tmp, "report-oom.json")
w = Worker(BIN, "--device", "cuda", "--models", small, "--threads", "2", env=fenv(report, FAKE_CUDA_MEM_MB=4))
long_in = seqs(1, 500, 500, limit=512)
r, got = call(w, {"op": "embed", "model": "long", "input": long_in})
tap.ok(r.get("code") == "too_large" and "GPU" in r.get("error", ""),
       "an input whose workspace exceeds the GPU: too_large, saying so", r)
short_in = seqs(3, 3, 30)
r, got = call(w, {"op": "embed", "model": "long", "input": short_in})
cpu2 = Worker(BIN, "--device", "cpu", "--models", small)
_, ref = call(cpu2, {"op": "embed", "model": "long", "input": short_in})
err = float(np.abs(got - ref).max()) if got is not None and ref is not None else None
tap.ok(err is not None and err <= TOL, f"then short inputs run on the GPU and agree with the CPU (max error {err})", r)
rc = w.stop()
rep = read_report(report) or {}
tap.ok(rc == 0 and rep.get("oom", 0) > 0 and rep.get("invalid_calls") == 0 and rep.get("device_allocs_live") == 0,
       "the fake saw the out-of-memory, no invalid call, and nothing was left allocated", (rc, rep))
cpu2.stop()

# A sticky CUDA error in the middle of a forward pass (the 6th GEMM: the start's self-test made one): device_error
# saying the context is lost, and the worker says it is not ready; it never crashes.
report = os.path.join(tmp, "report-sticky.json")
w = Worker(BIN, "--device", "cuda", "--models", mdir, "--threads", "2", env=fenv(report, FAKE_CUDA_STICKY_AFTER=5))
r, got = call(w, {"op": "embed", "model": "mean", "input": seqs(4, 5, 30)})
tap.ok(r.get("code") == "device_error" and "lost" in r.get("error", ""),
       "a sticky CUDA error during the forward pass: device_error, the context is lost", r)
r2, _ = call(w, {"op": "embed", "model": "maxp", "input": [[2, 3]]})
gi, _ = call(w, {"op": "gpu_info"})
tap.ok(r2.get("code") == "device_error" and gi.get("ready") is False,
       "then every encoder request answers device_error and gpu_info says ready false", (r2, gi))
rc = w.stop()
tap.ok(rc == 0, "the poisoned worker still stops cleanly", open(w.logpath).read()[-2000:])
cpu.stop()
tap.done()
