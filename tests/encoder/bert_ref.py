#!/usr/bin/python3
"""bert_ref.py - a reference BERT forward pass in torch, for checking titan's encoder (issue 20). Written from the
math of HF's BertModel (post-LayerNorm) and sentence-transformers' Pooling/Normalize modules, not from the
transformers package (not installed): embeddings = LayerNorm(word[id] + position[p] + type[t]); per layer
self-attention with HF's additive mask (0 for real keys, the dtype's minimum for padding), output dense + residual
+ LayerNorm, intermediate dense + activation, output dense + residual + LayerNorm; then the pooling (mean, cls or
max over the real tokens) and optional L2 normalisation for a bi-encoder, or tanh(pooler) and the classifier for
a cross-encoder (config num_labels).

The weights come from the model directory's model.safetensors, read here (F32, F16, BF16 converted exactly to
float32; names with or without "bert."), independently of titan's loader.

    /usr/bin/python3 tests/encoder/bert_ref.py MODEL_DIR [--dtype float32|float64] [--pooling mean|cls|max]
        < {"inputs": [{"ids": [...], "type_ids": [...]}, ...], "normalize": false}
    prints {"outputs": [[...], ...]}: a row per input, hidden values (bi-encoder) or num_labels logits

As a module: load(model_dir, dtype=torch.float64, pooling=None, normalize=False) -> Ref (a torch.nn.Module whose
forward(input_ids, attention_mask, token_type_ids) takes padded [batch, seq] int64 tensors), run(ref, inputs)
for unpadded lists, and export_onnx(ref, path).
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch

ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


def read_safetensors(path):
    """{name: float32 numpy array}; F32/F16/BF16 only (other dtypes, e.g. position_ids' I64, are skipped)."""
    with open(path, "rb") as f:
        data = f.read()
    (hl,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hl])
    out = {}
    for name, d in header.items():
        if name == "__metadata__":
            continue
        b, e = d["data_offsets"]
        raw = data[8 + hl + b: 8 + hl + e]
        if d["dtype"] == "F32":
            a = np.frombuffer(raw, "<f4")
        elif d["dtype"] == "F16":
            a = np.frombuffer(raw, "<f2").astype(np.float32)
        elif d["dtype"] == "BF16":
            a = (np.frombuffer(raw, "<u2").astype("<u4") << 16).view("<f4")
        else:
            continue
        out[name[5:] if name.startswith("bert.") else name] = a.astype(np.float32).reshape(d["shape"])
    return out


def read_pooling(model_dir):
    """(pooling, normalize) from the sentence-transformers files, as titan reads them: mean and False by default."""
    pooling, normalize = "mean", False
    p = os.path.join(model_dir, "1_Pooling", "config.json")
    if os.path.exists(p):
        with open(p) as f:
            pc = json.load(f)
        if pc.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif pc.get("pooling_mode_max_tokens"):
            pooling = "max"
    m = os.path.join(model_dir, "modules.json")
    if os.path.exists(m):
        with open(m) as f:
            normalize = any(x.get("type", "").endswith("Normalize") for x in json.load(f))
    return pooling, normalize


class Ref(torch.nn.Module):
    def __init__(self, cfg, weights, dtype, pooling, normalize):
        super().__init__()
        self.H = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.layers = cfg["num_hidden_layers"]
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.act = cfg.get("hidden_act", "gelu")
        if self.act not in ACTS:
            raise ValueError("hidden_act %r" % self.act)
        arch = cfg.get("architectures") or []
        self.labels = cfg.get("num_labels", len(cfg.get("id2label", {})) or 2) \
            if "BertForSequenceClassification" in arch else 0
        self.pooling = pooling
        self.normalize = normalize
        self.dt = dtype
        self.w = {k: torch.from_numpy(np.array(v)).to(dtype) for k, v in weights.items()}

    def _ln(self, x, name):
        return torch.nn.functional.layer_norm(x, (self.H,), self.w[name + ".weight"], self.w[name + ".bias"],
                                              self.eps)

    def _dense(self, x, name):
        return torch.nn.functional.linear(x, self.w[name + ".weight"], self.w[name + ".bias"])

    def _act(self, x):
        # the functions HF's activations call: torch's gelu (erf form), the tanh form written out (NewGELU),
        # torch's gelu(approximate="tanh") (PytorchGELUTanh), relu
        if self.act == "gelu":
            return torch.nn.functional.gelu(x)
        if self.act == "gelu_new":
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
        if self.act == "gelu_pytorch_tanh":
            return torch.nn.functional.gelu(x, approximate="tanh")
        return torch.relu(x)

    def forward(self, input_ids, attention_mask, token_type_ids):
        w, H, nh = self.w, self.H, self.heads
        dh = H // nh
        B, L = input_ids.shape[0], input_ids.shape[1]
        pos = torch.arange(L, dtype=torch.int64)
        x = (w["embeddings.word_embeddings.weight"][input_ids] + w["embeddings.position_embeddings.weight"][pos]
             + w["embeddings.token_type_embeddings.weight"][token_type_ids])
        x = self._ln(x, "embeddings.LayerNorm")
        mask = attention_mask.to(self.dt)
        add = ((1.0 - mask) * torch.finfo(self.dt).min).reshape(B, 1, 1, L)
        for i in range(self.layers):
            p = "encoder.layer.%d." % i

            def heads(t):
                return t.reshape(B, L, nh, dh).permute(0, 2, 1, 3)
            q = heads(self._dense(x, p + "attention.self.query"))
            k = heads(self._dense(x, p + "attention.self.key"))
            v = heads(self._dense(x, p + "attention.self.value"))
            s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh) + add
            ctx = torch.matmul(torch.softmax(s, dim=-1), v).permute(0, 2, 1, 3).reshape(B, L, H)
            x = self._ln(self._dense(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            y = self._act(self._dense(x, p + "intermediate.dense"))
            x = self._ln(self._dense(y, p + "output.dense") + x, p + "output.LayerNorm")
        if self.labels:
            pooled = torch.tanh(self._dense(x[:, 0], "pooler.dense"))
            return self._dense(pooled, "classifier")
        m = mask.unsqueeze(-1)
        if self.pooling == "cls":
            out = x[:, 0]
        elif self.pooling == "max":
            out = torch.max(x * m + (1.0 - m) * -1e9, dim=1)[0]
        else:
            out = (x * m).sum(dim=1) / torch.clamp(m.sum(dim=1), min=1e-9)
        if self.normalize:
            out = torch.nn.functional.normalize(out, p=2.0, dim=1)
        return out


def load(model_dir, dtype=torch.float64, pooling=None, normalize=False):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    weights = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    if pooling is None:
        pooling = read_pooling(model_dir)[0]
    return Ref(cfg, weights, dtype, pooling, normalize).eval()


def pad(inputs):
    """Unpadded [{"ids", "type_ids"}] -> padded int64 (input_ids, attention_mask, token_type_ids)."""
    L = max(len(x["ids"]) for x in inputs)
    ids = torch.zeros((len(inputs), L), dtype=torch.int64)
    am = torch.zeros((len(inputs), L), dtype=torch.int64)
    tt = torch.zeros((len(inputs), L), dtype=torch.int64)
    for i, x in enumerate(inputs):
        n = len(x["ids"])
        ids[i, :n] = torch.tensor(x["ids"], dtype=torch.int64)
        am[i, :n] = 1
        tt[i, :n] = torch.tensor(x.get("type_ids") or [0] * n, dtype=torch.int64)
    return ids, am, tt


def run(ref, inputs):
    """The outputs (numpy float64, a row per input) for a list of unpadded inputs, as one padded batch."""
    with torch.no_grad():
        return ref(*pad(inputs)).to(torch.float64).numpy()


def export_onnx(ref, path, opset=14):
    """Writes the (float32) reference as ONNX with dynamic batch and sequence axes: inputs input_ids,
    attention_mask, token_type_ids (int64 [batch, seq]), output "output"."""
    ex = pad([{"ids": [1, 2, 3], "type_ids": [0, 0, 1]}, {"ids": [2], "type_ids": [0]}])
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            "token_type_ids": {0: "batch", 1: "seq"}, "output": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(ref, ex, path, opset_version=opset, input_names=list(axes)[:3], output_names=["output"],
                          dynamic_axes=axes)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--pooling", default=None, choices=["mean", "cls", "max"],
                    help="default: the model directory's 1_Pooling/config.json (mean without it)")
    a = ap.parse_args(argv)
    req = json.load(sys.stdin)
    ref = load(a.model_dir, getattr(torch, a.dtype), a.pooling, bool(req.get("normalize", False)))
    out = run(ref, req["inputs"])
    json.dump({"outputs": [[float(v) for v in row] for row in out]}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
