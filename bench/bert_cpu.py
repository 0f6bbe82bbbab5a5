#!/usr/bin/python3
"""bert_cpu.py - titan's BERT forward pass on the CPU (titan_bert_forward_cpu, timed inside tests/tools/bert_run)
against torch in-process (tests/encoder/bert_ref.py's module in float32: F.linear, F.gelu, F.layer_norm, softmax,
as HF's BertModel calls them), with the same number of threads, on a MiniLM-L6-shaped model (6 layers, hidden
384, 12 heads, FFN 1536, vocab 30522, 512 positions; random weights from tests/encoder/make_model.py).

Usage: bench/bert_cpu.py BERT_RUN [--threads 2] [--reps 8] [--rounds 3] [--model-dir DIR]
  BERT_RUN: the built tests/tools/bert_run (BUILD/tests/bert_run)

Both sides use OpenBLAS (torch links the system's libblas, OpenBLAS here): titan with OPENBLAS_NUM_THREADS=N,
torch with the same OPENBLAS_NUM_THREADS, timed twice: with torch.set_num_threads(N) ("torch": its OpenMP pool
of N threads for the element-wise ops beside OpenBLAS's N) and with torch.set_num_threads(1) ("torch1": OpenBLAS's
N threads only), since on a machine with N cores the two pools compete. Cases: 32 x 128 tokens (throughput),
1 x 128 and 1 x 16 (latency), all inputs full length (no padding for torch to waste). Each round times REPS
calls of each (10 x REPS for batch 1) after a warm-up call, titan and torch alternating; a figure is the median
over all of its calls (min in parentheses). Prints one line per case:
  "bert_cpu case=b32x128 threads=2 titan_ms=.. torch_ms=.. torch1_ms=.. ratio=.. check=ok"
where ratio is the better torch's median over titan's (> 1: titan is faster) and check compares the outputs
(max abs difference <= 1e-4). Exit 1 when a check fails or bert_run fails. On a shared machine the timings
swing from run to run: compare within a run."""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("bert_run")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--reps", type=int, default=8)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--model-dir", default=None, help="reuse (or create) the model here")
a = ap.parse_args()

os.environ["OPENBLAS_NUM_THREADS"] = str(a.threads)  # before torch loads OpenBLAS
os.environ["OMP_NUM_THREADS"] = str(a.threads)
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "encoder"))
import bert_ref  # noqa: E402

torch.set_num_threads(a.threads)
model_dir = a.model_dir or os.path.join(tempfile.mkdtemp(prefix="titan-bert-bench-"), "minilm")
if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
    subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tests", "encoder", "make_model.py"), model_dir,
                    "--layers", "6", "--hidden", "384", "--heads", "12", "--intermediate", "1536", "--vocab", "30522",
                    "--max-positions", "512", "--seed", "5"], check=True)
ref = bert_ref.load(model_dir, torch.float32, "mean", False)
rng = random.Random(1)
failed = False


def titan(inputs, reps):
    r = subprocess.run([a.bert_run, model_dir, "--repeat", str(reps)], input=json.dumps({"inputs": inputs}),
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("bert_run failed: %s %s" % (r.stdout, r.stderr))
    ms = json.loads(r.stderr.strip().splitlines()[-1])["ms"]
    return ms, np.array(json.loads(r.stdout)["outputs"])


def torch_run(inputs, reps, omp):
    import time
    torch.set_num_threads(omp)
    ids, am, tt = bert_ref.pad(inputs)
    with torch.inference_mode():
        out = ref(ids, am, tt)
        ms = []
        for _ in range(reps):
            t0 = time.perf_counter()
            ref(ids, am, tt)
            ms.append((time.perf_counter() - t0) * 1e3)
    return ms, out.numpy().astype(np.float64)


for batch, length in ((32, 128), (1, 128), (1, 16)):
    inputs = [{"ids": [2] + [rng.randrange(5, 30522) for _ in range(length - 1)], "type_ids": [0] * length}
              for _ in range(batch)]
    reps = a.reps if batch > 1 else a.reps * 10
    t_ms, p_ms, p1_ms, diff = [], [], [], 0.0
    for _ in range(a.rounds):
        ms, out_t = titan(inputs, reps)
        t_ms += ms
        ms, out_p = torch_run(inputs, reps, a.threads)
        p_ms += ms
        ms, out_p = torch_run(inputs, reps, 1)
        p1_ms += ms
        diff = max(diff, float(np.max(np.abs(out_t - out_p))))
    tm, pm, p1m = (float(np.median(x)) for x in (t_ms, p_ms, p1_ms))
    ok = diff <= 1e-4
    failed |= not ok
    print("bert_cpu case=b%dx%d threads=%d titan_ms=%.3f (%.3f) torch_ms=%.3f (%.3f) torch1_ms=%.3f (%.3f) ratio=%.3f "
          "check=%s (max diff %.2g)" % (batch, length, a.threads, tm, min(t_ms), pm, min(p_ms), p1m, min(p1_ms),
                                        min(pm, p1m) / tm, "ok" if ok else "WRONG", diff), flush=True)
sys.exit(1 if failed else 0)
