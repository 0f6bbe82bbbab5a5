#!/usr/bin/python3
"""test_bert_forward.py - titan's BERT forward pass on the CPU (titan_bert_forward_cpu, run by tests/tools/bert_run
on models loaded by titan_bert_load) against two references:
  - tests/encoder/bert_ref.py, a torch implementation of the same math in float64 (reading model.safetensors
    itself), so that the difference is titan's own float32 error;
  - ONNX Runtime (onnxruntime-node, tests/ref/onnx_run.mjs) running the float32 reference exported to ONNX, a
    second implementation of every operator, fed one padded batch with an attention mask.
Models come from tests/encoder/make_model.py: 2-3 layers, hidden 64-128, 4 heads; gelu, gelu_new,
gelu_pytorch_tanh and relu; F32, F16 and BF16 weights; bi-encoders with mean, cls and max pooling, with and
without normalisation; cross-encoders with 1 and 3 labels. The inputs have very different lengths (1 token, a
few, max_positions) and token type ids, and one set is long enough to take several of titan's batches.
make_model.py draws weights of 0.02, which leave the activations' inputs within +-0.5 (where GELU's erf and tanh
forms agree to 1e-6) and the attention nearly uniform; the models here have their query and key weights scaled
by 8 and the intermediate weights by 12 (SHARPEN), so that a wrong activation, scale or mask shows.

Also: an input alone and inside a batch gives the same result (within 1e-6); results follow the input order;
bad inputs (an id >= vocab or < 0, a type id >= type_vocab, length 0, length > max_positions, no inputs) are
errors with code bad_request naming the input and the value.

Fails (does not skip) without node or onnxruntime-node: scripts/deps.sh test installs them.
Usage: test_bert_forward.py PATH/TO/bert_run   (prints TAP)"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

from workerproc import Tap

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "encoder"))
import bert_ref  # noqa: E402
import make_model  # noqa: E402

ONNX_RUN = os.path.join(ROOT, "tests", "ref", "onnx_run.mjs")
BERT_RUN = sys.argv[1]

# Tolerances. The references compute the same function, so the differences are rounding: titan works in float32
# (products summed over 64-256 terms, LayerNorm, exp and erf within a few 1e-7 of exact: test_bert_math), 2-3
# layers deep, on outputs of size ~1 (LayerNorm'd hidden states, logits from weights of 0.2). Seen here: up to
# 1.4e-6 against float64 and 1e-6 against ONNX Runtime's float32. The bounds leave an order of magnitude for other
# machines' BLAS kernels and summation orders, and stay well under the effect of real mistakes: GELU in its tanh
# form where the model says erf moves the outputs by 1.6e-4 here, attention scaled by 1/dh by 2e-2.
TOL_REF = 2e-5    # titan vs the float64 torch reference
TOL_ONNX = 3e-5   # titan vs ONNX Runtime (float32 both: two roundings)
# An input alone vs inside a batch, or in another order: the same arithmetic but for the BLAS's kernels, which differ
# with the number of rows and may sum in another order, an ulp or two of the output (float32's spacing is 4.8e-7
# at 4): 1e-6, relative above 1 (|a - b| <= 1e-6 max(1, |b|)).
TOL_SAME = 1e-6

MODELS = [
    # name, make_model.py arguments
    ("gelu-f32-mean", ["--layers", "2", "--hidden", "64", "--heads", "4", "--intermediate", "128",
                       "--max-positions", "64", "--act", "gelu", "--dtype", "f32", "--pooling", "mean", "--seed", "11"]),
    ("gelu_new-f16-cls-normalize", ["--layers", "3", "--hidden", "128", "--heads", "4", "--intermediate", "256",
                                    "--max-positions", "48", "--type-vocab", "3", "--act", "gelu_new", "--dtype", "f16",
                                    "--pooling", "cls", "--normalize", "--prefix", "none", "--seed", "12"]),
    ("relu-bf16-max", ["--layers", "2", "--hidden", "96", "--heads", "4", "--intermediate", "160",
                       "--max-positions", "40", "--act", "relu", "--dtype", "bf16", "--pooling", "max", "--no-align",
                       "--seed", "13"]),
    ("gelu_tanh-f32-mean-normalize", ["--layers", "2", "--hidden", "64", "--heads", "4", "--intermediate", "128",
                                      "--max-positions", "32", "--act", "gelu_pytorch_tanh", "--dtype", "f32",
                                      "--pooling", "mean", "--normalize", "--seed", "14"]),
    ("cross1-gelu-f32", ["--layers", "2", "--hidden", "64", "--heads", "4", "--intermediate", "128",
                         "--max-positions", "64", "--act", "gelu", "--cross", "1", "--seed", "15"]),
    ("cross3-gelu_new-bf16", ["--layers", "3", "--hidden", "128", "--heads", "4", "--intermediate", "256",
                              "--max-positions", "40", "--act", "gelu_new", "--dtype", "bf16", "--cross", "3",
                              "--prefix", "none", "--seed", "16"]),
]

# Weight scales applied to make_model.py's state before it is rounded and written (see the docstring).
SHARPEN = {"attention.self.query.weight": 8.0, "attention.self.key.weight": 8.0, "intermediate.dense.weight": 12.0}

tap = Tap()
tmp = tempfile.mkdtemp(prefix="titan-bert-forward-")


def titan(model_dir, inputs, normalize=None, threads=0):
    """(outputs as float64 rows, None) or (None, the error object). threads: also run the same call from that many
    threads at once; the outputs' largest difference from the first is then returned in place of None."""
    req = {"inputs": inputs}
    if normalize is not None:
        req["normalize"] = normalize
    r = subprocess.run([BERT_RUN, model_dir] + (["--threads", str(threads)] if threads else []),
                       input=json.dumps(req), capture_output=True, text=True, timeout=120)
    out = json.loads(r.stdout) if r.stdout.strip() else {"error": r.stderr, "code": "(none)"}
    if r.returncode != 0 or "outputs" not in out:
        return None, dict(out, rc=r.returncode, stderr=r.stderr)
    rows = np.array(out["outputs"], dtype=np.float64).reshape(len(inputs), -1)
    return rows, (out["concurrent_max_diff"] if threads else None)


def onnx(path, inputs):
    ids, am, tt = bert_ref.pad(inputs)
    req = {"input_ids": ids.tolist(), "attention_mask": am.tolist(), "token_type_ids": tt.tolist()}
    r = subprocess.run(["node", ONNX_RUN, path], input=json.dumps(req), capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise RuntimeError("onnx_run.mjs exit %d: %s" % (r.returncode, r.stderr))
    return np.array(json.loads(r.stdout)["output"], dtype=np.float64)


def make_inputs(cfg, lengths, rng):
    out = []
    for n in lengths:
        ids = [2] + [rng.randrange(cfg["vocab_size"]) for _ in range(n - 1)]
        types = [rng.randrange(cfg["type_vocab_size"]) for _ in range(n)]
        out.append({"ids": ids, "type_ids": types})
    return out


def maxerr(a, b, rel=False):
    """max |a - b|, or with rel max |a - b| / max(1, |b|)."""
    if a.shape != b.shape:
        return float("inf")
    d = np.abs(a - b)
    return float(np.max(d / np.maximum(1.0, np.abs(b)) if rel else d))


def check_close(name, got, want, tol, rel=False):
    e = maxerr(got, want, rel)
    tap.ok(e <= tol, "%s: max %s error %.3g <= %g" % (name, "relative (above 1)" if rel else "abs", e, tol),
           "shapes %s vs %s" % (got.shape, want.shape) if got.shape != want.shape else "")
    return e


# --- the references must be there: node and onnxruntime-node ---
node = shutil.which("node")
have_ort = node is not None and os.path.isdir(os.path.join(ROOT, "tests", "ref", "node_modules", "onnxruntime-node"))
tap.ok(have_ort, "node and onnxruntime-node are installed",
       "node %s, tests/ref/node_modules/onnxruntime-node %s: run scripts/deps.sh test"
       % (node or "missing", "present" if node else "not checked"))

rng = random.Random(20)
worst = {"ref": 0.0, "onnx": 0.0, "same": 0.0}


def write_model(d, args):
    """make_model.py's model directory, with the SHARPEN scales applied to its weights."""
    plain = make_model.build_state

    def sharpened(a):
        st = plain(a)
        for k in st:
            for suffix, f in SHARPEN.items():
                if k.endswith(suffix):
                    st[k] = (st[k] * f).astype(np.float32)
        return st
    make_model.build_state = sharpened
    try:
        make_model.write_model(make_model.parse_args([d] + args))
    finally:
        make_model.build_state = plain


def one_model(name, args):
    d = os.path.join(tmp, name)
    write_model(d, args)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    P = cfg["max_position_embeddings"]
    cross = "--cross" in args
    pooling, normalize = bert_ref.read_pooling(d)
    inputs = make_inputs(cfg, [1, 3, P, 17, 2, P - 1, 9, 5], rng)

    # titan with the model's own normalisation (no "normalize" in the request) vs the float64 reference
    got, err = titan(d, inputs)
    if not tap.ok(got is not None, "%s: forward pass of %d inputs (lengths 1..%d)" % (name, len(inputs), P), err):
        return
    ref = bert_ref.load(d, torch.float64, pooling, normalize)
    want = bert_ref.run(ref, inputs)
    tap.ok(got.shape == (len(inputs), cfg["num_labels"] if cross else cfg["hidden_size"]),
           "%s: %d rows of %s" % (name, len(inputs), "num_labels logits" if cross else "hidden values"))
    worst["ref"] = max(worst["ref"], check_close(name + ": titan vs torch float64", got, want, TOL_REF))
    if normalize:
        tap.ok(np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6), name + ": rows have unit norm")

    # the other normalisation, asked for in the request (bi-encoders)
    if not cross:
        got2, err = titan(d, inputs, normalize=not normalize)
        want2 = bert_ref.run(bert_ref.load(d, torch.float64, pooling, not normalize), inputs)
        if tap.ok(got2 is not None, "%s: normalize %s in the request" % (name, not normalize), err):
            worst["ref"] = max(worst["ref"], check_close(
                "%s (normalize %s): titan vs torch float64" % (name, not normalize), got2, want2, TOL_REF))

    # ONNX Runtime on the exported float32 reference, one padded batch
    if have_ort:
        path = os.path.join(d, "ref.onnx")
        bert_ref.export_onnx(bert_ref.load(d, torch.float32, pooling, normalize), path)
        worst["onnx"] = max(worst["onnx"], check_close(name + ": titan vs ONNX Runtime", got, onnx(path, inputs),
                                                       TOL_ONNX))
    else:
        tap.ok(False, name + ": titan vs ONNX Runtime", "onnxruntime-node is missing: run scripts/deps.sh test")

    # each input alone gives what it gave inside the batch; a reversed batch gives the rows reversed
    alone = []
    for x in inputs:
        r, err = titan(d, [x])
        if r is None:
            tap.ok(False, name + ": an input alone", err)
            return
        alone.append(r[0])
    worst["same"] = max(worst["same"], check_close(name + ": each input alone vs in the batch", np.array(alone), got,
                                                   TOL_SAME, rel=True))
    rev, err = titan(d, inputs[::-1])
    if tap.ok(rev is not None, name + ": the batch reversed", err):
        worst["same"] = max(worst["same"], check_close(name + ": reversed batch, rows in the input order",
                                                       rev[::-1], got, TOL_SAME, rel=True))


for name, args in MODELS:
    tap.run(name, lambda name=name, args=args: one_model(name, args))


def many_batches(model):
    """More tokens than one of titan's batches holds (1024): 60 inputs of 1..max_positions tokens; and the same
    call from 4 threads at once on one model."""
    d = os.path.join(tmp, model)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    lengths = [rng.randint(1, cfg["max_position_embeddings"]) for _ in range(60)]
    inputs = make_inputs(cfg, lengths, rng)
    got, err = titan(d, inputs)
    if tap.ok(got is not None, "%s: 60 inputs, %d tokens, in several batches" % (model, sum(lengths)), err):
        pooling, normalize = bert_ref.read_pooling(d)
        want = bert_ref.run(bert_ref.load(d, torch.float64, pooling, normalize), inputs)
        worst["ref"] = max(worst["ref"], check_close(model + ": 60 inputs: titan vs torch float64", got, want,
                                                     TOL_REF))
        part, err = titan(d, inputs[7:9])
        if tap.ok(part is not None, model + ": 2 of the 60 inputs", err):
            check_close(model + ": 2 of the 60 alone vs among the 60", part, got[7:9], TOL_SAME, rel=True)
    again, cmax = titan(d, inputs, threads=4)
    if tap.ok(again is not None, model + ": 4 threads at once on one model", cmax):
        tap.ok(cmax <= TOL_SAME and maxerr(again, got, rel=True) <= TOL_SAME,
               "%s: 4 threads at once: outputs within %g of one thread's (max diff %g)" % (model, TOL_SAME, cmax))


for model in (MODELS[0][0], MODELS[5][0]):
    tap.run("many batches", lambda model=model: many_batches(model))


def bad_inputs():
    d = os.path.join(tmp, MODELS[0][0])
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    V, T, P = cfg["vocab_size"], cfg["type_vocab_size"], cfg["max_position_embeddings"]
    ok = {"ids": [2, 5, 3], "type_ids": [0, 0, 1]}
    cases = [
        ("an id = vocab", [ok, {"ids": [2, V, 3]}], ["input 1", str(V), "vocabulary"]),
        ("a negative id", [{"ids": [2, -1]}], ["input 0", "-1"]),
        ("a type id = type_vocab", [ok, ok, {"ids": [2, 3], "type_ids": [0, T]}], ["input 2", str(T), "type"]),
        ("an empty input", [ok, {"ids": []}], ["input 1", "empty"]),
        ("max_positions + 1 tokens", [{"ids": [2] * (P + 1)}], ["input 0", str(P + 1), str(P)]),
        ("no inputs", [], ["no inputs"]),
    ]
    for what, inputs, words in cases:
        got, err = titan(d, inputs)
        msg = (err or {}).get("error", "")
        tap.ok(got is None and err.get("code") == "bad_request" and err.get("rc") == 1
               and all(w in msg for w in words),
               "refused: %s (%s)" % (what, msg), json.dumps(err))
    got, err = titan(d, [ok, {"ids": [2, 3]}, ok])  # type_ids left out: all 0
    want = bert_ref.run(bert_ref.load(d, torch.float64, "mean", False), [ok, {"ids": [2, 3], "type_ids": [0, 0]}, ok])
    if tap.ok(got is not None, "type_ids left out", err):
        check_close("type_ids left out = all 0", got, want, TOL_REF)


tap.run("bad inputs", bad_inputs)

tap.note("worst errors: vs float64 %.3g, vs ONNX Runtime %.3g, alone vs batched %.3g"
         % (worst["ref"], worst["onnx"], worst["same"]))
shutil.rmtree(tmp, ignore_errors=True)
sys.exit(tap.done())
