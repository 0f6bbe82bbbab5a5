#!/usr/bin/python3
"""bench_embed.py - embeddings served by titan-worker (the embed op over ZeroMQ, and POST /v1/embeddings over HTTP)
against torch in-process with the same number of threads, on a MiniLM-L6-shaped bi-encoder (6 layers, hidden 384,
12 heads, FFN 1536, vocabulary 30522, 512 positions, mean pooling and Normalize; random weights written by
tests/encoder/make_model.py). Issue 20's targets: throughput at batch 32 x 128 tokens >= 1.0x torch's, latency at
batch 1 <= 1.2x torch's.

Usage: bench/bench_embed.py WORKER [--threads 2] [--reps 8] [--rounds 3] [--worker-args "ARGS"]
  --worker-args: more titan-worker arguments, e.g. "--device cuda" (make bench-gpu: the encoder on the GPU, against
  the same torch on the CPU; the targets are the CPU's and are then reported for information)

torch runs tests/encoder/bert_ref.py's module in float32 under torch.no_grad() with torch.set_num_threads(THREADS)
and OPENBLAS_NUM_THREADS=THREADS (Debian's torch calls OpenBLAS, as titan does) and OMP_WAIT_POLICY=PASSIVE
(F.linear, F.gelu, F.layer_norm and softmax, as HF's BertModel calls them), on padded int64 tensors: the time of
the forward pass alone, nothing else. titan is timed from the client: request, tokens already as ids (so that both
sides get the same input), the whole round trip and the reply decoded. The worker runs with its defaults (one
executor per core, BLAS threads = cores) and THREADS = cores. Cases: b32x128 (32 inputs of 128 tokens:
throughput), b1x128 and b1x16 (latency). In each round every side runs REPS calls of each case after a warm-up
call, the sides taking turns; a side's figure is the median of all its calls. Prints per case and path:
  "embed case=b32x128 path=zmq titan_ms=.. torch_ms=.. ratio=.."
where ratio is titan_ms / torch_ms (< 1: titan is faster), then
  "embed_summary threads=N b32_thr_zmq=.. b32_thr_http=.. b1_lat_zmq=.. b1_lat_http=.. target_thr=PASS|MISS
   target_lat=PASS|MISS check=ok|WRONG"
with b32_thr = torch_ms / titan_ms at b32x128 (throughput ratio, target >= 1.0) and b1_lat = titan_ms / torch_ms
at b1x128 (target <= 1.2). check compares titan's embeddings (both paths) with torch's (max abs difference <= 1e-4).
Loopback timings on a shared VM swing: run it twice. Exit 1 when a check fails or the worker fails."""
import argparse
import base64
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse


def _threads_arg():
    a = sys.argv
    for i, x in enumerate(a):
        if x == "--threads" and i + 1 < len(a):
            return a[i + 1]
        if x.startswith("--threads="):
            return x.split("=", 1)[1]
    return str(os.cpu_count() or 2)


# torch's BLAS here is OpenBLAS too: give it the same threads as the worker's, before torch loads it. Its OpenMP
# threads wait passively: spinning between parallel regions, they took the cores from OpenBLAS's own threads on a
# 2-core VM (1 x 16 tokens: 50 ms with one thread, 300-700 ms with two).
os.environ["OPENBLAS_NUM_THREADS"] = _threads_arg()
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import zmq  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "encoder"))
import bert_ref  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("worker")
ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
ap.add_argument("--reps", type=int, default=8)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--worker-args", default="")
o = ap.parse_args()

tmp = tempfile.mkdtemp(prefix="titan-bench-embed-")
mdir = os.path.join(tmp, "models")
model = os.path.join(mdir, "minilm")
subprocess.run(["/usr/bin/python3", os.path.join(HERE, "..", "tests", "encoder", "make_model.py"), model,
                "--layers", "6", "--hidden", "384", "--heads", "12", "--intermediate", "1536", "--vocab", "30522",
                "--max-positions", "512", "--normalize", "--seed", "11"], check=True, capture_output=True)
torch.set_num_threads(o.threads)
ref = bert_ref.load(model, dtype=torch.float32, normalize=True)

rng = np.random.default_rng(5)


def batch(n, length):
    return [[2] + rng.integers(5, 30522, size=length - 2).tolist() + [3] for _ in range(n)]


cases = {"b32x128": batch(32, 128), "b1x128": batch(1, 128), "b1x16": batch(1, 16)}

ep_file = os.path.join(tmp, "endpoint")
log = open(os.path.join(tmp, "worker.log"), "w")
env = dict(os.environ, OPENBLAS_NUM_THREADS=str(o.threads))
proc = subprocess.Popen([o.worker, "--bind", "tcp://127.0.0.1:*", "--endpoint-file", ep_file, "--models", mdir,
                         "--http", "127.0.0.1:0", "--blas-threads", str(o.threads), "--log-level", "warn",
                         *o.worker_args.split()],
                        stdout=log, stderr=subprocess.STDOUT, env=env)
deadline = time.monotonic() + 30
while not os.path.exists(ep_file):
    if proc.poll() is not None or time.monotonic() > deadline:
        print("bench_embed: titan-worker did not start: " + open(log.name).read(), file=sys.stderr)
        sys.exit(1)
    time.sleep(0.02)
time.sleep(0.05)
lines = open(ep_file).read().split()
zep = lines[0]
http_url = next((x for x in lines if x.startswith("http://")), None)
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.RCVTIMEO, 120000)
sock.connect(zep)


def titan_zmq(seqs):
    sock.send_multipart([b"", json.dumps({"op": "embed", "model": "minilm", "input": seqs, "binary": True}).encode()])
    parts = sock.recv_multipart()
    h = json.loads(parts[1])
    if "error" in h:
        raise RuntimeError(f"embed failed: {h}")
    return np.frombuffer(parts[2], dtype=np.float32).reshape(h["embeddings"]["shape"])


def titan_http(seqs):
    u = urllib.parse.urlsplit(http_url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    body = json.dumps({"model": "minilm", "input": seqs, "encoding_format": "base64"})
    c.request("POST", "/v1/embeddings", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"POST /v1/embeddings: {r.status} {data[:300]!r}")
    j = json.loads(data)
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype=np.float32) for d in j["data"]])


def torch_fwd(seqs):
    ids, am, tt = bert_ref.pad([{"ids": s, "type_ids": [0] * len(s)} for s in seqs])
    with torch.no_grad():
        return ref(ids, am, tt).numpy()


sides = {"torch": torch_fwd, "zmq": titan_zmq}
if http_url:
    sides["http"] = titan_http
times = {(c, s): [] for c in cases for s in sides}
check = True
worst = 0.0
try:
    for c, seqs in cases.items():
        want = torch_fwd(seqs)
        for s in ("zmq", "http"):
            if s in sides:
                err = float(np.abs(sides[s](seqs) - want).max())
                worst = max(worst, err)
                check = check and err <= 1e-4
    for r in range(o.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(list(sides)))
        for c, seqs in cases.items():
            for s in order:
                sides[s](seqs)  # warm-up
                for _ in range(o.reps):
                    t0 = time.perf_counter()
                    sides[s](seqs)
                    times[(c, s)].append((time.perf_counter() - t0) * 1e3)
finally:
    sock.close()
    ctx.term()
    proc.terminate()
    proc.wait(30)

med = {k: statistics.median(v) for k, v in times.items() if v}
for c in cases:
    for s in ("zmq", "http"):
        if (c, s) in med:
            print(f"embed case={c} path={s} titan_ms={med[(c, s)]:.2f} torch_ms={med[(c, 'torch')]:.2f} "
                  f"ratio={med[(c, s)] / med[(c, 'torch')]:.3f}", flush=True)
thr = {s: med[("b32x128", "torch")] / med[("b32x128", s)] for s in ("zmq", "http") if ("b32x128", s) in med}
lat = {s: med[("b1x128", s)] / med[("b1x128", "torch")] for s in ("zmq", "http") if ("b1x128", s) in med}
ok_thr = all(v >= 1.0 for v in thr.values()) and len(thr) == 2
ok_lat = all(v <= 1.2 for v in lat.values()) and len(lat) == 2
print(f"embed_summary threads={o.threads} worker_args={'_'.join(o.worker_args.split()) or '-'} b32_thr_zmq={thr.get('zmq', 0):.3f} b32_thr_http={thr.get('http', 0):.3f} "
      f"b1_lat_zmq={lat.get('zmq', 0):.3f} b1_lat_http={lat.get('http', 0):.3f} "
      f"target_thr={'PASS' if ok_thr else 'MISS'} target_lat={'PASS' if ok_lat else 'MISS'} "
      f"max_err={worst:.2g} check={'ok' if check else 'WRONG'}", flush=True)
shutil.rmtree(tmp, ignore_errors=True)
sys.exit(0 if check and proc.returncode in (0, -15) else 1)
