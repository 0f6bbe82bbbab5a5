#!/usr/bin/python3
"""test_embed.py - serving encoder models through titan-worker --models: model directories built at test time
(tests/encoder/make_model.py, random weights), the embed and rerank ops (PROTOCOL.md 5.8) in every input form,
results against the torch reference (tests/encoder/bert_ref.py), dynamic batching (many clients at once: each
result equals the request alone within 1e-6, the batches show in /metrics), the per-model queue's busy, manifests'
options, and every bad input of issue 20 (the worker stays up). Also: a folder titan cannot serve stops the start,
and a truncated model.safetensors answers device_error naming the file.
Usage: test_embed.py PATH/TO/titan-worker   (prints TAP)"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request

import numpy as np
import torch
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "encoder"))
import bert_ref  # noqa: E402
from workerproc import Tap, Worker  # noqa: E402

BIN = sys.argv[1]
MAKE = os.path.join(HERE, "..", "encoder", "make_model.py")
tap = Tap()
root = tempfile.mkdtemp(prefix="titan-embed-")
mdir = os.path.join(root, "models")
os.makedirs(mdir)


def make(name, *args, where=None):
    out = os.path.join(where or mdir, name)
    subprocess.run(["/usr/bin/python3", MAKE, out, *args], check=True, capture_output=True)
    return out


make("mini", "--normalize", "--max-positions", "48", "--seed", "3")
make("plain", "--pooling", "cls", "--dtype", "f16", "--seed", "4")
make("cross", "--cross", "1", "--seed", "5")
make("cross3", "--cross", "3", "--seed", "6")
make("slow", "--seed", "7", "--layers", "4", "--hidden", "256", "--intermediate", "1024", "--max-positions", "512")
# A manifest sets options for a directory: Matryoshka sizes and a long batching delay.
make("matry-dir", "--seed", "8", "--normalize")
with open(os.path.join(mdir, "matry.model.json"), "w") as f:
    json.dump({"name": "matry", "runner": "bert", "file": "matry-dir", "dimensions": [16, 32],
               "max_batch": 64, "max_queue_delay_us": 50000}, f)
# A tiny queue, for busy.
make("tight-dir", "--seed", "9", "--layers", "4", "--hidden", "256", "--intermediate", "1024",
     "--max-positions", "512")
with open(os.path.join(mdir, "tight.model.json"), "w") as f:
    json.dump({"name": "tight", "runner": "bert", "file": "tight-dir", "queue": 1, "max_batch": 1,
               "max_inputs": 4}, f)
# The longest input: the tokenizer's own truncation caps it, unless sentence-transformers' max_seq_length is given
# (it wins, as in sentence-transformers: all-MiniLM-L6-v2's tokenizer.json says 128, its max_seq_length 256).
for name, extra in (("capped", ()), ("stcap", ("--max-seq", "40"))):
    d = make(name, "--seed", "12", *extra)
    tj = os.path.join(d, "tokenizer.json")
    t = json.load(open(tj))
    t["truncation"] = {"direction": "Right", "max_length": 20, "strategy": "LongestFirst", "stride": 0}
    json.dump(t, open(tj, "w"))
# A truncated weights file: found at start, refused when first loaded.
trunc = make("trunc", "--seed", "10")
st = os.path.join(trunc, "model.safetensors")
with open(st, "r+b") as f:
    f.truncate(os.path.getsize(st) - 1000)

w = Worker(BIN, "--models", mdir, "--threads", "2", "--http", "127.0.0.1:0")
# The endpoint file's HTTP line (after the ZeroMQ endpoints).
http_base = next((x for x in open(w.epfile).read().splitlines() if x.startswith("http://")), None)
ctx = zmq.Context()


def call(req, frames=()):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 60000)
    s.connect(w.endpoint)
    try:
        s.send_multipart([b"", json.dumps(req).encode() if not isinstance(req, bytes) else req, *frames])
        parts = s.recv_multipart()
    finally:
        s.close()
    return json.loads(parts[1]), parts[2:]


def emb(req):
    r, fr = call(dict(req, binary=True))
    if "error" in r:
        return r, None
    n, d = r["embeddings"]["shape"]
    return r, np.frombuffer(fr[0], dtype=np.float32).reshape(n, d)


def t_list():
    r, _ = call({"op": "list_models"})
    m = {x["name"]: x for x in r.get("models", [])}
    tap.ok(set(m) == {"mini", "plain", "cross", "cross3", "slow", "matry", "tight", "trunc", "capped", "stcap"},
           "list_models: every model folder under its name, manifest-named folders under the manifest's name",
           sorted(m))
    tap.ok(m["mini"]["runner"] == "bert" and m["mini"]["kind"] == "embedding" and m["mini"]["dims"] == 64 and
           m["mini"]["max_tokens"] == 48 and m["cross"]["kind"] == "rerank" and m["cross"]["dims"] == 1,
           "list_models: runner bert, kind, dims and max_tokens", r)
    o, _ = call({"op": "ops"})
    names = {x["name"]: x for x in o["ops"]}
    tap.ok(names.get("embed", {}).get("supported") and names.get("rerank", {}).get("supported"),
           "ops lists embed and rerank as supported", o)


def t_max_tokens():
    for name, want in (("capped", 20), ("stcap", 40)):
        r, _ = call({"op": "embed", "model": name, "input": [[2] + [7] * (want - 2) + [3]]})
        r2, _ = call({"op": "embed", "model": name, "input": [[2] + [7] * (want - 1) + [3]]})
        lm, _ = call({"op": "list_models"})
        mt = {x["name"]: x.get("max_tokens") for x in lm.get("models", [])}
        tap.ok("embeddings" in r and r2.get("code") == "bad_request" and mt.get(name) == want,
               f"{name}: the longest input is {want} tokens (list_models says so once loaded)", (r2, mt))


def ref_embed(model, seqs, normalize):
    ref = bert_ref.load(os.path.join(mdir, model), dtype=torch.float64, normalize=normalize)
    return np.array(bert_ref.run(ref, [{"ids": s, "type_ids": [0] * len(s)} for s in seqs]))


def t_accuracy():
    seqs = [[2, 7, 8, 9, 3], [2, 3], [2] + list(range(5, 50)) + [3]]
    for model, norm in (("mini", True), ("plain", False)):
        r, got = emb({"op": "embed", "model": model, "input": seqs})
        want = ref_embed(model, seqs, norm)
        err = float(np.abs(got - want).max()) if got is not None else None
        tap.ok(got is not None and got.shape == want.shape and err <= 1e-4,
               f"{model}: embed of token ids equals the torch reference within 1e-4 (max error {err})", r)
    tap.ok(r.get("usage") == {"prompt_tokens": sum(map(len, seqs)), "total_tokens": sum(map(len, seqs))},
           "usage counts the tokens run", r)
    _, got = emb({"op": "embed", "model": "mini", "input": seqs[0]})
    _, again = emb({"op": "embed", "model": "mini", "input": [seqs[0]]})
    tap.ok(got is not None and got.shape == (1, 64) and np.array_equal(got, again),
           "a flat list of ids is one input", got)
    r, _ = call({"op": "embed", "model": "mini", "input": seqs[:2]})
    j = np.array(r.get("embeddings"), dtype=np.float32)
    _, b = emb({"op": "embed", "model": "mini", "input": seqs[:2]})
    tap.ok(j.shape == (2, 64) and np.array_equal(j, b), "the JSON form carries the same float32 values as binary",
           r)
    _, nn = emb({"op": "embed", "model": "mini", "input": seqs[:2], "normalize": False})
    _, yn = emb({"op": "embed", "model": "mini", "input": seqs[:2]})
    tap.ok(np.allclose(np.linalg.norm(yn, axis=1), 1, atol=1e-5) and
           not np.allclose(np.linalg.norm(nn, axis=1), 1, atol=1e-3) and
           np.allclose(nn / np.linalg.norm(nn, axis=1, keepdims=True), yn, atol=1e-6),
           "normalize: the model's Normalize by default, false gives the raw pooled vector", (yn, nn))


def t_text():
    r, a = emb({"op": "embed", "model": "mini", "input": ["the cat sat", "", "Café déjà vu 日本 😀"]})
    tap.ok(a is not None and a.shape == (3, 64) and np.all(np.isfinite(a)),
           "texts embed (an empty string as [CLS] [SEP], accents, CJK, emoji)", r)
    _, one = emb({"op": "embed", "model": "mini", "input": "the cat sat"})
    tap.ok(one is not None and np.abs(one[0] - a[0]).max() <= 1e-6, "a string alone equals it in a list", one)
    _, e = emb({"op": "embed", "model": "mini", "input": [""]})
    _, ids = emb({"op": "embed", "model": "mini", "input": [[2, 3]]})
    tap.ok(e is not None and ids is not None and np.abs(e - ids).max() <= 1e-6,
           "the empty string is exactly [CLS] [SEP]", (e, ids))


def t_dimensions():
    _, full = emb({"op": "embed", "model": "matry", "input": ["a cat"]})
    _, d16 = emb({"op": "embed", "model": "matry", "input": ["a cat"], "dimensions": 16})
    want = full[0, :16] / np.linalg.norm(full[0, :16]) if full is not None else None
    tap.ok(d16 is not None and d16.shape == (1, 16) and np.abs(d16[0] - want).max() <= 1e-6,
           "dimensions: the first d values, normalised again", d16)
    r, _ = call({"op": "embed", "model": "matry", "input": ["a cat"], "dimensions": 20})
    tap.ok(r.get("code") == "bad_request" and "16" in r.get("error", "") and "32" in r.get("error", ""),
           "a dimensions the manifest does not list: bad_request listing the sizes", r)
    r, _ = call({"op": "embed", "model": "mini", "input": ["a cat"], "dimensions": 16})
    tap.ok(r.get("code") == "bad_request", "dimensions on a model without Matryoshka sizes: bad_request", r)


def t_rerank():
    docs = ["the cat sat on the mat", "dogs run", "a cat", "stock market", ""]
    r, _ = call({"op": "rerank", "model": "cross", "query": "cat", "documents": docs, "id": 7})
    res = r.get("results", [])
    scores = [x["score"] for x in res]
    tap.ok(len(res) == 5 and sorted(x["index"] for x in res) == list(range(5)) and
           scores == sorted(scores, reverse=True) and r.get("id") == 7,
           "rerank: every document, best first, with the request's id", r)
    tap.ok(all(abs(x["relevance_score"] - 1 / (1 + np.exp(-x["score"]))) < 1e-9 for x in res),
           "relevance_score is the sigmoid of the logit", res)
    r2, _ = call({"op": "rerank", "model": "cross", "query": "cat", "documents": docs, "top_n": 2})
    tap.ok(r2.get("results") == res[:2], "top_n answers the best n", r2)
    # Against the reference: each pair's logit. The words are whole entries of the vocabulary, so that the pair's
    # ids are [CLS] query [SEP] document [SEP] with type ids 0 then 1.
    vocab = json.load(open(os.path.join(mdir, "cross", "tokenizer.json")))["model"]["vocab"]
    words = [x for x in ("the", "cat", "sat", "on", "mat", "a", "dog", "run", "is", "of") if x in vocab]
    query, docs2 = words[0], [" ".join(words[1:4]), words[4], " ".join(words[2:])]
    r5, _ = call({"op": "rerank", "model": "cross", "query": query, "documents": docs2})
    ref = bert_ref.load(os.path.join(mdir, "cross"), dtype=torch.float64)
    pairs = []
    for d in docs2:
        dq = [vocab[query]]
        dd = [vocab[x] for x in d.split()]
        pairs.append({"ids": [2] + dq + [3] + dd + [3], "type_ids": [0] * (len(dq) + 2) + [1] * (len(dd) + 1)})
    want = np.array(bert_ref.run(ref, pairs))[:, 0]
    got = {x["index"]: x["score"] for x in r5.get("results", [])}
    err = max(abs(got.get(i, 1e9) - want[i]) for i in range(len(docs2)))
    tap.ok(len(words) >= 6 and err <= 1e-4, f"rerank scores equal the torch reference's logits within 1e-4 "
           f"(max error {err:.2g})", (r5, want))
    rr, _ = emb({"op": "embed", "model": "cross", "input": [[2, 3]]})
    tap.ok(rr.get("code") == "unsupported" and "rerank" in rr.get("error", ""),
           "embed on a cross-encoder: unsupported, saying to use rerank", rr)
    r3, _ = call({"op": "rerank", "model": "mini", "query": "a", "documents": ["b"]})
    tap.ok(r3.get("code") == "unsupported" and "bi-encoder" in r3.get("error", ""),
           "rerank on a bi-encoder: unsupported", r3)
    r4, _ = call({"op": "rerank", "model": "cross3", "query": "a", "documents": ["b"]})
    tap.ok(r4.get("code") == "unsupported" and "3 labels" in r4.get("error", ""),
           "rerank on a 3-label cross-encoder: unsupported, naming the labels", r4)


def t_bad_inputs():
    cases = [
        ({"op": "embed", "model": "mini", "input": []}, "bad_request", "empty"),
        ({"op": "embed", "model": "mini"}, "bad_request", "input"),
        ({"op": "embed", "model": "mini", "input": [[2, 99999]]}, "bad_request", "vocabulary"),
        ({"op": "embed", "model": "mini", "input": [[2, -1]]}, "bad_request", "token id"),
        ({"op": "embed", "model": "mini", "input": [[2, 5.5]]}, "bad_request", "token id"),
        ({"op": "embed", "model": "mini", "input": ["a", [2]]}, "bad_request", "mix"),
        ({"op": "embed", "model": "mini", "input": 5}, "bad_request", "input"),
        ({"op": "embed", "model": "mini", "input": ["word " * 100]}, "bad_request", "truncate"),
        ({"op": "embed", "model": "mini", "input": [[2] + [7] * 60 + [3]]}, "bad_request", "truncate"),
        ({"op": "embed", "model": "nope", "input": "a"}, "not_found", "nope"),
        ({"op": "embed", "input": "a"}, "bad_request", "model"),
        ({"op": "embed", "model": "tight", "input": ["a"] * 5}, "too_large", "at most 4"),
        ({"op": "rerank", "model": "cross", "query": "a", "documents": []}, "bad_request", "documents"),
        ({"op": "rerank", "model": "cross", "query": "a", "documents": ["b"], "top_n": 0}, "bad_request", "top_n"),
        ({"op": "rerank", "model": "cross", "documents": ["b"]}, "bad_request", "query"),
        ({"op": "inference", "model": "mini", "inputs": [[1.0]]}, "bad_request", "embed"),
    ]
    for req, code, word in cases:
        r, _ = call(req)
        tap.ok(r.get("code") == code and word in r.get("error", ""), f"{json.dumps(req)[:70]}: {code}", r)
    # Invalid UTF-8 in the header never reaches the tokenizer: the JSON reader refuses it.
    r, _ = call(b'{"op":"embed","model":"mini","input":"caf\xc3"}')
    tap.ok(r.get("code") == "bad_request", "invalid UTF-8 in a text: bad_request", r)
    r, a = emb({"op": "embed", "model": "mini", "input": ["word " * 100], "truncate": True})
    tap.ok(a is not None and r["usage"]["prompt_tokens"] == 48, "truncate cuts a long text to max_tokens", r)
    r, a = emb({"op": "embed", "model": "mini", "input": [[2] + [7] * 60 + [3]], "truncate": True})
    _, b = emb({"op": "embed", "model": "mini", "input": [[2] + [7] * 46 + [3]]})
    tap.ok(a is not None and b is not None and np.abs(a - b).max() <= 1e-6,
           "truncate cuts ids to the first max_tokens - 1 and the last", (a, b))
    r, _ = call({"op": "embed", "model": "trunc", "input": "a"})
    tap.ok(r.get("code") == "device_error" and "model.safetensors" in r.get("error", ""),
           "a truncated model.safetensors: device_error naming the file", r)
    r, _ = call({"op": "ping"})
    tap.ok("error" not in r, "the worker is still up after every bad input", r)


def t_batching():
    """Many clients at once on one model: their requests merge (titan_batch_size shows batches of more than one)
    and each result equals the request alone within 1e-6."""
    texts = [("cat " * (i % 9 + 1)) + f"dog {i}" for i in range(40)]
    alone = [emb({"op": "embed", "model": "matry", "input": [t]})[1] for t in texts]
    got = [None] * len(texts)

    def client(i):
        got[i] = emb({"op": "embed", "model": "matry", "input": [texts[i]]})[1]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    worst = max(float(np.abs(a - g).max()) for a, g in zip(alone, got) if g is not None)
    tap.ok(all(g is not None for g in got) and worst <= 1e-6,
           f"40 concurrent requests: each equals its result alone within 1e-6 (worst {worst:.2g})")
    if http_base is None:
        tap.ok(False, "the worker's endpoint file names its HTTP address", open(w.epfile).read())
        return
    text = urllib.request.urlopen(http_base.rstrip("/") + "/metrics", timeout=10).read().decode()
    sizes = {}
    for line in text.splitlines():
        if line.startswith("titan_batch_size_bucket"):
            sizes[line.split('le="')[1].split('"')[0]] = int(line.split()[-1])
    tap.ok(sizes.get("+Inf", 0) > sizes.get("1", 0), "titan_batch_size shows batches of more than one request",
           sizes)
    tap.ok('titan_model_queue_depth{model="matry"}' in text and "titan_encoder_tokens_total" in text and
           "titan_batch_queue_duration_seconds_count" in text, "/metrics has the batching families", text[-2000:])


def t_busy():
    """tight's queue holds one request: while requests run, one more than fits is answered busy at once."""
    long = "word " * 200
    results = []

    def client():
        results.append(call({"op": "embed", "model": "tight", "input": [long, long, long, long], "truncate": True})[0])

    threads = [threading.Thread(target=client) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    busy = [r for r in results if r.get("code") == "busy"]
    ok = [r for r in results if "embeddings" in r]
    tap.ok(busy and ok and len(busy) + len(ok) == 12 and "tight" in busy[0]["error"] and
           "queue" in busy[0]["error"], f"a full model queue answers busy ({len(busy)} busy, {len(ok)} done)",
           results[:3])


def t_refused_start():
    bad = tempfile.mkdtemp(prefix="titan-embed-bad-")
    d = make("rob", "--seed", "1", where=bad)
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["model_type"] = "roberta"
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    p = subprocess.run([BIN, "--bind", "tcp://127.0.0.1:*", "--models", bad], capture_output=True, text=True,
                       timeout=30)
    log = p.stdout + p.stderr
    tap.ok(p.returncode == 1 and "roberta" in log and "bert" in log,
           "a folder with an unsupported model_type stops the start, naming it and what is supported", log)
    os.remove(os.path.join(d, "model.safetensors"))
    cfg["model_type"] = "bert"
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    p = subprocess.run([BIN, "--bind", "tcp://127.0.0.1:*", "--models", bad], capture_output=True, text=True,
                       timeout=30)
    log = p.stdout + p.stderr
    tap.ok(p.returncode == 1 and "model.safetensors" in log, "a folder without model.safetensors stops the start",
           log)
    shutil.rmtree(bad, ignore_errors=True)


for name, fn in (("list", t_list), ("max tokens", t_max_tokens), ("accuracy", t_accuracy), ("text", t_text), ("dimensions", t_dimensions),
                 ("rerank", t_rerank), ("bad inputs", t_bad_inputs), ("batching", t_batching), ("busy", t_busy),
                 ("refused start", t_refused_start)):
    tap.run(name, fn)
ctx.destroy(linger=0)
rc = w.stop()
log = w.read_log() if not w.log.closed else open(w.logpath).read()
tap.ok(rc == 0 and "Sanitizer" not in log and "runtime error" not in log, "the worker exits cleanly", log[-3000:])
shutil.rmtree(root, ignore_errors=True)
sys.exit(tap.done())
