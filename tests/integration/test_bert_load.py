#!/usr/bin/python3
"""test_bert_load.py - titan_bert_load (src/core/encoder/bert_load.c) on model directories written by
tests/encoder/make_model.py into a temporary directory, through tests/tools/bert_load_check (which prints the
loaded config and, for every tensor, its count, first values, float64 sum and an exact hash of its float32 bits).

Loading: every tensor the loader hands over is compared with the values make_model.py wrote, after the same
dtype rounding (F16 by numpy, BF16 round-to-nearest-even, both exactly representable in float32): the first
values and the hash must match bit for bit, the sum within float64 rounding. The config (sizes, activation,
labels, pooling, Normalize, max_seq) must be what the files say.
Errors: unsupported model_type, hidden_act, position_embedding_type; missing config.json / model.safetensors;
a truncated model.safetensors; a missing or mis-shaped tensor; a config that does not match the weights;
unsupported pooling and sentence-transformers modules; a weight stored as I64. Each message must name what is
wrong.

Usage: test_bert_load.py BERT_LOAD_CHECK [MAKE_MODEL.PY]
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

from workerproc import Tap

TOOL = sys.argv[1]
HERE = os.path.dirname(os.path.abspath(__file__))
MAKE = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "encoder", "make_model.py")
sys.path.insert(0, os.path.dirname(os.path.abspath(MAKE)))
import make_model  # noqa: E402

tap = Tap()
tmp = tempfile.mkdtemp(prefix="titan-bert-load-")
_count = [0]


def model(*args):
    """Writes a model directory with make_model.py's command line; returns (dir, rounded state by file name)."""
    _count[0] += 1
    out = os.path.join(tmp, "m%d" % _count[0])
    a = make_model.parse_args([out, *args])
    state = make_model.write_model(a)
    return out, state, a


def load(d):
    p = subprocess.run([TOOL, d], capture_output=True, text=True, timeout=120)
    try:
        o = json.loads(p.stdout)
    except ValueError:
        o = {"error": "(no JSON) " + p.stdout + p.stderr}
    return p.returncode, o


def bits_hash(x):
    """The tool's hash: sum(bits(x[i]) * (2i + 1)) mod 2^64, over float32 bit patterns."""
    b = np.ascontiguousarray(x, dtype="<f4").reshape(-1).view("<u4").astype(np.uint64)
    w = np.arange(b.size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        return "%016x" % int(np.sum(b * w, dtype=np.uint64))


def strip(name):
    return name[5:] if name.startswith("bert.") else name


def compare(name, d, state, a, expect_cfg=None):
    """Loads d and checks every tensor against `state` (file name -> float32 array) and the config against a."""
    rc, o = load(d)
    if not tap.ok(rc == 0 and "tensors" in o, name + ": loads", json.dumps(o)[:2000]):
        return None
    want = {strip(k): v for k, v in state.items()}
    got = o["tensors"]
    tap.ok(set(got) == set(want), name + ": the loader hands over exactly the file's weights",
           "missing %s, extra %s" % (sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5]))
    bad = []
    total = 0
    for k, v in want.items():
        total += v.size
        g = got.get(k)
        if g is None:
            continue
        flat = v.reshape(-1).astype(np.float32)
        first = np.array(g["first"], dtype=np.float64)
        if g["count"] != v.size:
            bad.append("%s: count %d, wrote %d" % (k, g["count"], v.size))
        elif not np.array_equal(first.astype(np.float32), flat[:8]) or not np.array_equal(first, flat[:8]):
            bad.append("%s: first values %s, wrote %s" % (k, first[:4], flat[:4]))
        elif g["hash"] != bits_hash(flat):
            bad.append("%s: hash %s, wrote %s" % (k, g["hash"], bits_hash(flat)))
        else:
            # float64 sums in two orders: each partial sum is off by at most n * 2^-53 * sum|x|.
            tol = 2 * flat.size * 2.0 ** -53 * float(np.sum(np.abs(flat.astype(np.float64)))) + 1e-300
            if abs(g["sum"] - float(np.sum(flat.astype(np.float64)))) > tol:
                bad.append("%s: sum %r, wrote %r" % (k, g["sum"], float(np.sum(flat.astype(np.float64)))))
    tap.ok(not bad, name + ": every tensor's values are the file's (bit for bit after the dtype's rounding)",
           "\n".join(bad[:10]))
    tap.ok(o["weight_bytes"] == 4 * total, name + ": weight_bytes is the float32 size of the weights",
           "%d vs %d" % (o["weight_bytes"], 4 * total))
    c = o["config"]
    exp = {"hidden": a.hidden, "layers": a.layers, "heads": a.heads, "intermediate": a.intermediate,
           "max_positions": a.max_positions, "type_vocab": a.type_vocab, "vocab": a.vocab, "eps": a.eps,
           "act": {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}[a.act],
           "num_labels": a.cross,
           "pooling": a.pooling if not a.cross else "mean",
           "normalize": bool(a.normalize and not a.cross),
           "max_seq": min(a.max_seq, a.max_positions) if (a.max_seq and not a.cross) else a.max_positions}
    if expect_cfg:
        exp.update(expect_cfg)
    diff = {k: (c.get(k), v) for k, v in exp.items() if c.get(k) != v}
    tap.ok(not diff, name + ": config as written", "got, want: %s" % diff)
    return o


def expect_error(name, d, *needles):
    rc, o = load(d)
    msg = o.get("error", "")
    missing = [n for n in needles if n not in msg]
    tap.ok(rc == 1 and o.get("code") == "bad_model" and msg and not missing,
           name + ": refused, naming " + ", ".join(repr(n) for n in needles),
           "rc %d, output %s; not found: %s" % (rc, json.dumps(o), missing))
    return msg


def edit_json(path, fn):
    with open(path) as f:
        j = json.load(f)
    r = fn(j)
    if isinstance(r, dict):
        j = r
    with open(path, "w") as f:
        json.dump(j, f)


def st_tensors(path):
    """(header dict, data bytes) of a safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (hl,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + hl]), data[8 + hl:]


def rewrite(path, fn):
    """Rewrites a safetensors file: fn gets a list of [name, dtype, shape, raw] (sorted by offset) to change."""
    header, data = st_tensors(path)
    meta = header.pop("__metadata__", None)
    items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    ts = [[k, v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]] for k, v in items]
    ts = fn(ts) or ts
    make_model.write_safetensors(path, [tuple(t) for t in ts], meta)


# --- loading ---

def t_f32():
    d, st, a = model()
    compare("f32, bert. prefix, position_ids I64, mean pooling, tokenizer.json", d, st, a)


def t_f16():
    d, st, a = model("--dtype", "f16", "--prefix", "none", "--tokenizer", "vocab", "--pooling", "cls",
                     "--normalize", "--max-seq", "32", "--seed", "2")
    compare("f16, no prefix, cls pooling, Normalize, max_seq 32, vocab.txt", d, st, a)


def t_bf16_cross():
    d, st, a = model("--dtype", "bf16", "--cross", "3", "--no-align", "--seed", "3")
    compare("bf16 cross-encoder (3 labels), data unaligned in the file", d, st, a)


def t_f32_unaligned():
    d, st, a = model("--no-align", "--pooling", "max", "--no-pooler", "--act", "relu", "--eps", "1e-5",
                     "--seed", "4")
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        (hl,) = struct.unpack("<Q", f.read(8))
    tap.ok((8 + hl) % 4 != 0, "--no-align puts the data area off a 4-byte boundary (F32 copied, not in place)")
    compare("f32 unaligned (copied), max pooling, no pooler, relu, eps 1e-5", d, st, a)


def t_shapes():
    d, st, a = model("--layers", "3", "--hidden", "48", "--heads", "6", "--intermediate", "80", "--vocab", "500",
                     "--max-positions", "40", "--type-vocab", "3", "--act", "gelu_new", "--dtype", "bf16",
                     "--max-seq", "100", "--seed", "5")
    compare("bf16, 3 layers, hidden 48 / 6 heads, vocab 500, 3 token types, gelu_new, max_seq clamped to 40",
            d, st, a)


def t_cross_variants():
    d, st, a = model("--cross", "1", "--prefix", "none", "--seed", "6")
    compare("f32 cross-encoder, 1 label, no prefix", d, st, a)
    # HF's label count: id2label wins over num_labels; neither gives 2.
    d, st, a = model("--cross", "3", "--seed", "7")
    edit_json(os.path.join(d, "config.json"), lambda j: j.update(num_labels=5))
    compare("id2label (3) counts over num_labels (5), as in HF", d, st, a)
    d, st, a = model("--cross", "2", "--seed", "8")
    edit_json(os.path.join(d, "config.json"), lambda j: [j.pop("id2label"), j.pop("label2id"), j.pop("num_labels")])
    compare("a cross-encoder without id2label and num_labels has 2 labels, as in HF", d, st, a)


def t_gamma_beta():
    d, st, a = model("--seed", "9")
    p = os.path.join(d, "model.safetensors")

    def ren(ts):
        for t in ts:
            if t[0].endswith("LayerNorm.weight"):
                t[0] = t[0][:-len("weight")] + "gamma"
            elif t[0].endswith("LayerNorm.bias"):
                t[0] = t[0][:-len("bias")] + "beta"
    rewrite(p, ren)
    compare("LayerNorm weights under TF's old names (gamma, beta)", d, st, a)


def t_progress():
    d, st, a = model("--vocab", "66000", "--hidden", "256", "--heads", "4", "--intermediate", "256", "--layers", "1",
                     "--dtype", "f16", "--seed", "10")
    o = compare("a 66 MiB model (f16 in the file)", d, st, a)
    if o is not None:
        pr = o["progress"]
        tap.ok(len(pr) >= 2 and "of 6" in pr[0] and "MiB" in pr[0] and pr[-1].startswith("loaded"),
               "a model of 64 MiB or more reports progress lines, and a last one when loaded", json.dumps(pr))
    d, st, a = model("--seed", "11")
    rc, o = load(d)
    tap.ok(rc == 0 and o["progress"] == [], "a small model loads without progress lines", json.dumps(o)[:500])


# --- errors ---

def t_config_errors():
    d, st, a = model("--seed", "20")
    cfgp = os.path.join(d, "config.json")
    with open(cfgp) as f:
        orig = json.load(f)

    def variant(**kw):
        j = dict(orig)
        for k, v in kw.items():
            if v is None:
                j.pop(k, None)
            else:
                j[k] = v
        with open(cfgp, "w") as f:
            json.dump(j, f)

    for mt in ("roberta", "distilbert", "xlm-roberta", "nomic_bert"):
        variant(model_type=mt)
        expect_error("model_type %s" % mt, d, '"%s"' % mt, '"bert"')
    variant(model_type=None)
    expect_error("no model_type", d, "no model_type", '"bert"')
    variant(hidden_act="silu")
    expect_error("hidden_act silu", d, '"silu"', "gelu")
    variant(position_embedding_type="relative_key")
    expect_error("position_embedding_type relative_key", d, '"relative_key"', "absolute")
    variant(num_attention_heads=5)
    expect_error("heads not dividing hidden", d, "num_attention_heads", "hidden_size")
    variant(hidden_size=0)
    expect_error("hidden_size 0", d, "hidden_size", "0")
    variant(num_hidden_layers=1000)
    expect_error("num_hidden_layers 1000", d, "num_hidden_layers", "1000", "128")
    variant(vocab_size=1 << 23)
    expect_error("vocab_size 2^23", d, "vocab_size")
    variant(hidden_size=64.0)
    expect_error("hidden_size 64.0", d, "hidden_size", "integer")
    variant(layer_norm_eps=-1)
    expect_error("layer_norm_eps -1", d, "layer_norm_eps")
    variant(hidden_size=None)
    expect_error("no hidden_size", d, "hidden_size")
    with open(cfgp, "w") as f:
        f.write('{"model_type": "bert", "hidden_size": 64,')
    expect_error("config.json cut short", d, "config.json", "not valid JSON")
    with open(cfgp, "w") as f:
        f.write(" " * (1 << 20) + "{}")
    expect_error("config.json over 1 MiB", d, "config.json", "KiB")

    # Config not matching the weights (without the sentence-transformers files, whose Pooling config names
    # hidden_size too: that case is t_pooling_errors').
    os.remove(os.path.join(d, "modules.json"))
    variant(hidden_size=32)
    expect_error("hidden_size 32 against weights of 64", d, "embeddings.word_embeddings.weight", "[%d, 64]" % a.vocab,
                 "[%d, 32]" % a.vocab, "hidden_size")
    variant(intermediate_size=100)
    expect_error("intermediate_size 100 against 128", d, "intermediate.dense.weight", "[128, 64]", "[100, 64]")
    variant(vocab_size=a.vocab + 1)
    expect_error("vocab_size one more than the weights", d, "word_embeddings", "[%d, 64]" % (a.vocab + 1))
    variant(num_hidden_layers=1)
    expect_error("num_hidden_layers 1 against a 2-layer file", d, "encoder.layer.1.", "num_hidden_layers 1")
    variant(num_hidden_layers=3)
    expect_error("num_hidden_layers 3 against a 2-layer file", d, "encoder.layer.2.attention.self.query.weight")
    variant()
    rc, _ = load(d)
    tap.ok(rc == 0, "the original config.json loads again")


def t_files_missing():
    d, st, a = model("--seed", "21")
    os.remove(os.path.join(d, "config.json"))
    expect_error("no config.json", d, "no config.json")
    d, st, a = model("--seed", "22")
    os.remove(os.path.join(d, "model.safetensors"))
    expect_error("no model.safetensors", d, "no model.safetensors")
    with open(os.path.join(d, "pytorch_model.bin"), "wb") as f:
        f.write(b"PK")
    expect_error("only pytorch_model.bin", d, "pytorch_model.bin", "safetensors")
    expect_error("no such directory", os.path.join(tmp, "absent"), "absent")


def t_truncated():
    d, st, a = model("--seed", "23")
    p = os.path.join(d, "model.safetensors")
    size = os.path.getsize(p)
    header, _ = st_tensors(p)
    with open(p, "rb") as f:
        (hl,) = struct.unpack("<Q", f.read(8))
    end = 8 + hl + max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    tap.ok(end == size, "make_model.py's file ends where its header says")
    for cut in (size - 1, size // 2, 8 + hl + 3):
        os.truncate(p, cut)
        expect_error("model.safetensors cut to %d bytes" % cut, d, "is %d bytes" % cut, "data end at byte %d" % end,
                     "incomplete", "download it again")
    os.truncate(p, 100)
    expect_error("model.safetensors cut inside its header", d, "is 100 bytes", "byte %d" % (8 + hl), "incomplete")
    os.truncate(p, 5)
    expect_error("model.safetensors of 5 bytes", d, "5 bytes", "incomplete")
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", 1 << 40) + b"{}")
    expect_error("a header length of 1 TiB", d, "header length", "100 MiB")


def t_tensor_errors():
    d, st, a = model("--seed", "24")
    p = os.path.join(d, "model.safetensors")
    orig = open(p, "rb").read()
    rewrite(p, lambda ts: [t for t in ts if t[0] != "bert.encoder.layer.1.output.dense.weight"])
    expect_error("a tensor missing", d, '"encoder.layer.1.output.dense.weight"', p)

    def reshape(ts):
        for t in ts:
            if t[0] == "bert.encoder.layer.0.intermediate.dense.weight":
                t[2] = [128, 63]
                t[3] = t[3][:128 * 63 * 4]
    open(p, "wb").write(orig)
    rewrite(p, reshape)
    expect_error("a mis-shaped tensor", d, "bert.encoder.layer.0.intermediate.dense.weight", "[128, 63]", "[128, 64]")

    def as_i64(ts):
        for t in ts:
            if t[0] == "bert.embeddings.LayerNorm.bias":
                t[1] = "I64"
                t[3] = np.zeros(64, dtype="<i8").tobytes()
    open(p, "wb").write(orig)
    rewrite(p, as_i64)
    expect_error("a weight stored as I64", d, "bert.embeddings.LayerNorm.bias", "I64", "F32, F16 or BF16")

    open(p, "wb").write(orig)
    header, data = st_tensors(p)
    names = [k for k in header if k != "__metadata__"]
    b = header[names[1]]["data_offsets"]
    header[names[0]]["data_offsets"] = [b[0], b[0] + header[names[0]]["data_offsets"][1] -
                                        header[names[0]]["data_offsets"][0]]
    hj = json.dumps(header).encode()
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + data)
    expect_error("two tensors overlapping", d, "overlap")

    d, st, a = model("--cross", "2", "--seed", "25")
    p = os.path.join(d, "model.safetensors")
    orig = open(p, "rb").read()
    rewrite(p, lambda ts: [t for t in ts if t[0] != "classifier.weight"])
    expect_error("a cross-encoder without its classifier", d, '"classifier.weight"')
    open(p, "wb").write(orig)
    rewrite(p, lambda ts: [t for t in ts if not t[0].startswith("bert.pooler.")])
    expect_error("a cross-encoder without its pooler", d, '"pooler.dense.weight"')
    open(p, "wb").write(orig)
    edit_json(os.path.join(d, "config.json"), lambda j: j.update(id2label={"0": "a", "1": "b", "2": "c"}))
    expect_error("3 labels against a 2-row classifier", d, '"classifier.weight"', "[2, 64]", "[3, 64]")


def t_pooling_errors():
    for mode in ("weightedmean", "lasttoken", "mean_sqrt_len"):
        d, st, a = model("--pooling", mode, "--seed", "30")
        expect_error("pooling %s" % mode, d, mode, "mean, cls or max")
    d, st, a = model("--seed", "31")
    pc = os.path.join(d, "1_Pooling", "config.json")
    edit_json(pc, lambda j: j.update(pooling_mode_cls_token=True))
    expect_error("two pooling modes at once", d, "pooling_mode_cls_token", "pooling_mode_mean_tokens")
    edit_json(pc, lambda j: j.update(pooling_mode_cls_token=False, pooling_mode_mean_tokens=False))
    expect_error("no pooling mode", d, "no pooling mode")
    edit_json(pc, lambda j: j.update(pooling_mode_mean_tokens=True, word_embedding_dimension=32))
    expect_error("word_embedding_dimension not hidden_size", d, "word_embedding_dimension", "64")
    edit_json(pc, lambda j: j.update(word_embedding_dimension=64))
    rc, _ = load(d)
    tap.ok(rc == 0, "the Pooling config loads again once mended")

    mp = os.path.join(d, "modules.json")
    with open(mp) as f:
        mods = json.load(f)
    with open(mp, "w") as f:
        json.dump(mods + [{"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}], f)
    expect_error("a Dense module", d, "sentence_transformers.models.Dense")
    with open(mp, "w") as f:
        json.dump([mods[0], dict(mods[1], path="../1_Pooling")], f)
    expect_error("a Pooling path outside the model", d, "../1_Pooling")
    with open(mp, "w") as f:
        json.dump([mods[0], dict(mods[1], path="2_Pool")], f)
    expect_error("a Pooling path that does not exist", d, "2_Pool/config.json")
    with open(mp, "w") as f:
        json.dump([dict(mods[0], path="0_BERT"), mods[1]], f)
    expect_error("a Transformer in a subdirectory", d, "0_BERT")
    with open(mp, "w") as f:
        json.dump([mods[0]], f)
    expect_error("no Pooling module", d, "no Pooling module")
    with open(mp, "w") as f:
        json.dump(mods, f)
    with open(os.path.join(d, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": -3}, f)
    expect_error("max_seq_length -3", d, "max_seq_length")


for name, fn in list(globals().items()):
    if name.startswith("t_") and callable(fn):
        tap.run(name, fn)
shutil.rmtree(tmp, ignore_errors=True)
sys.exit(tap.done())
