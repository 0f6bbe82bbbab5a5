#!/usr/bin/python3
"""make_model.py - writes a small BERT model directory shaped like the ones users download from HuggingFace,
with random (seeded) weights, for titan's encoder tests (issue 20).

    /usr/bin/python3 tests/encoder/make_model.py OUTDIR [--layers 2] [--hidden 64] [--heads 4]
        [--intermediate 128] [--vocab N] [--max-positions 64] [--type-vocab 2] [--eps 1e-12]
        [--act gelu|gelu_new|gelu_pytorch_tanh|relu] [--dtype f32|f16|bf16] [--prefix bert|none]
        [--cross N] [--pooling mean|cls|max] [--normalize] [--max-seq N] [--tokenizer json|vocab] [--cased]
        [--no-pooler] [--position-ids yes|no] [--no-align] [--seed S] [--weights-out FILE.pt]

What it writes into OUTDIR (created if needed):
  config.json           model_type "bert" and every architecture field HF writes; with --cross N,
                        architectures ["BertForSequenceClassification"], num_labels N, id2label and label2id
  model.safetensors     written by hand (no safetensors package): an 8-byte little-endian header length, the JSON
                        header (dtype, shape, data_offsets per tensor, "__metadata__": {"format": "pt"}) padded with
                        spaces to a multiple of 8 bytes (as the safetensors library does; --no-align leaves the
                        padding out so that the data start at an odd offset: F32 tensors are then unaligned in a
                        mapping), then the raw little-endian data in the header's order (sorted by name).
                        Names are HF's (embeddings.word_embeddings.weight, encoder.layer.N.attention.self.query.weight,
                        ..., pooler.dense.weight), with "bert." in front when --prefix bert (the default); a
                        cross-encoder's classifier.{weight,bias} never has the prefix, as in HF checkpoints.
                        embeddings.position_ids (I64, [1, max_positions], as older HF checkpoints carry) is included
                        with --position-ids yes (the default when --prefix bert).
                        F16 is numpy's float16 (round to nearest even); BF16 is the top 16 bits of the float32 with
                        round to nearest even.
  tokenizer.json        (--tokenizer json, the default) HF's WordPiece format: BertNormalizer, BertPreTokenizer,
                        TemplateProcessing post-processor ([CLS] A [SEP] / [CLS] A [SEP] B [SEP], B with type 1),
                        added_tokens, truncation and padding null, WordPiece decoder
  vocab.txt, tokenizer_config.json   (--tokenizer vocab) one token a line, and BertTokenizer's settings
  special_tokens_map.json
  modules.json, 1_Pooling/config.json, sentence_bert_config.json (--max-seq only), 2_Normalize/ (--normalize only)
                        the sentence-transformers files, for bi-encoders (not with --cross). --pooling also takes
                        weightedmean, lasttoken and mean_sqrt_len, which titan refuses: they exist to test that.

The vocabulary is a fixed list (vocab() below; the same in every run): [PAD] [UNK] [CLS] [SEP] [MASK] with ids
0..4, then punctuation, digits, ASCII letters, common English words, ##subword pieces, accented Latin letters and
CJK characters. --vocab N sets config.json's vocab_size and the word-embedding rows (default: the list's length);
a larger N leaves ids no token uses, as real checkpoints do.

Weights: numpy RandomState(seed). Matrices and embeddings normal(0, 0.02) (the word embeddings 0.05 so that
tokens differ clearly), LayerNorm weights 1 + normal(0, 0.1), biases and LayerNorm biases normal(0, 0.02).

The weights a reference implementation should use are exactly the file's values: with --dtype f16/bf16 the values
are rounded to that type first. --weights-out FILE.pt torch.saves that state dict (float32 tensors holding the
rounded values, the same names as in model.safetensors, position_ids left out). A reference may instead read
model.safetensors back with read_safetensors() from this module (no torch needed: numpy float32 arrays).

This file is also a module: the tests import it (sys.path) for build_state(), write_safetensors(),
read_safetensors(), round_to() and vocab(), to build broken files (a tensor missing, a wrong shape).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

WORDS = """the of and to in is was for on that with as by it at from his an were are which this be or has
had not first one their its new after but who they have her she two been other when there all during into
school time may years more most only over city some world would where later up such used many can state about
national out known university united then made team hello good morning how you we what why your our my me him
them these those do does did will just like make go going get see know think come take want look use find give
tell work call try ask need feel become leave put mean keep let begin seem help talk turn start show hear play
run move live believe hold bring happen write provide sit stand lose pay meet include continue set learn change
lead understand watch follow stop create speak read allow add spend grow open walk win offer remember love
consider appear buy wait serve die send expect build stay fall cut reach kill remain suggest raise pass sell
require report decide pull model vector search query document sentence embedding token text data gpu memory
fast slow cat dog house car tree water fire book""".split()

SUBWORDS = ["##s", "##es", "##ed", "##ing", "##er", "##est", "##ly", "##ness", "##ment", "##tion", "##able",
            "##ful", "##less", "##ize", "##al", "##ic", "##y", "##en", "##on", "##an", "##in", "##or", "##ar",
            "##re", "##un", "##ly"]


def vocab():
    """The fixed token list (index = id). No duplicates."""
    out = list(SPECIALS)
    out += list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    out += [str(d) for d in range(10)]
    out += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    out += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    out += WORDS
    out += ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    out += ["##" + str(d) for d in range(10)]
    out += SUBWORDS
    out += list("éèêàâçñüöäßøåœ")
    out += ["caf", "##é", "na", "##ïve", "über"]
    out += list("中文日本語人大学国")
    seen, uniq = set(), []
    for t in out:
        if t not in seen:
            seen.add(t)
            uniq.append(t)
    return uniq


def round_to(a, dtype):
    """float32 array -> (bytes as the file holds them, float32 array of the same rounded values)."""
    a = np.ascontiguousarray(a, dtype="<f4")
    if dtype == "f32":
        return a.tobytes(), a.copy()
    if dtype == "f16":
        h = a.astype("<f2")
        return h.tobytes(), h.astype("<f4")
    if dtype == "bf16":
        bits = a.view("<u4").astype(np.uint64)
        nan = np.isnan(a)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = np.where(nan, (bits >> 16) | 0x40, rounded).astype("<u2")
        back = (rounded.astype("<u4") << 16).view("<f4")
        return rounded.tobytes(), back.astype("<f4")
    raise ValueError("dtype " + dtype)


ST_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


def build_state(a):
    """The state dict as float32 numpy arrays (before rounding), HF's names without any prefix, in HF's order.
    a: the parsed arguments (layers, hidden, intermediate, vocab, max_positions, type_vocab, cross, no_pooler,
    seed)."""
    rs = np.random.RandomState(a.seed)
    H, I = a.hidden, a.intermediate

    def mat(*shape, std=0.02):
        return rs.normal(0.0, std, size=shape).astype(np.float32)

    def ln():
        return ((1.0 + rs.normal(0.0, 0.1, size=(H,))).astype(np.float32), mat(H))

    st = {}
    st["embeddings.word_embeddings.weight"] = mat(a.vocab, H, std=0.05)
    st["embeddings.position_embeddings.weight"] = mat(a.max_positions, H)
    st["embeddings.token_type_embeddings.weight"] = mat(a.type_vocab, H)
    g, b = ln()
    st["embeddings.LayerNorm.weight"], st["embeddings.LayerNorm.bias"] = g, b
    for i in range(a.layers):
        p = "encoder.layer.%d." % i
        for n in ("query", "key", "value"):
            st[p + "attention.self." + n + ".weight"] = mat(H, H)
            st[p + "attention.self." + n + ".bias"] = mat(H)
        st[p + "attention.output.dense.weight"] = mat(H, H)
        st[p + "attention.output.dense.bias"] = mat(H)
        g, b = ln()
        st[p + "attention.output.LayerNorm.weight"], st[p + "attention.output.LayerNorm.bias"] = g, b
        st[p + "intermediate.dense.weight"] = mat(I, H)
        st[p + "intermediate.dense.bias"] = mat(I)
        st[p + "output.dense.weight"] = mat(H, I)
        st[p + "output.dense.bias"] = mat(H)
        g, b = ln()
        st[p + "output.LayerNorm.weight"], st[p + "output.LayerNorm.bias"] = g, b
    if not a.no_pooler or a.cross:
        st["pooler.dense.weight"] = mat(H, H)
        st["pooler.dense.bias"] = mat(H)
    if a.cross:
        st["classifier.weight"] = mat(a.cross, H, std=0.2)
        st["classifier.bias"] = mat(a.cross)
    return st


def file_name(name, prefix):
    """The name in the file: "bert." + name for the encoder's tensors when prefix is "bert"."""
    if prefix == "bert" and not name.startswith("classifier."):
        return "bert." + name
    return name


def write_safetensors(path, tensors, metadata=None, align=True):
    """tensors: list of (name, st_dtype "F32"/"F16"/"BF16"/"I64"/..., shape list, raw bytes), written in that
    order. Returns nothing; raises on a byte count that does not match the shape."""
    size_of = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
    header, off, blobs = {}, 0, []
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dt, shape, raw in tensors:
        n = 1
        for d in shape:
            n *= d
        if n * size_of[dt] != len(raw):
            raise ValueError("%s: %d bytes for shape %s %s" % (name, len(raw), shape, dt))
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    hj = json.dumps(header, separators=(",", ":")).encode()
    if align:
        hj += b" " * ((8 - (8 + len(hj)) % 8) % 8)
    elif (8 + len(hj)) % 4 == 0:
        hj += b" "  # make the data start unaligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Reads a file written above (or by the safetensors library) into {name: float32 numpy array} for the
    float dtypes (I64 tensors come back as int64 arrays)."""
    with open(path, "rb") as f:
        data = f.read()
    (hl,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hl])
    base = 8 + hl
    out = {}
    for name, d in header.items():
        if name == "__metadata__":
            continue
        raw = data[base + d["data_offsets"][0]: base + d["data_offsets"][1]]
        dt = d["dtype"]
        if dt == "F32":
            arr = np.frombuffer(raw, "<f4").astype(np.float32)
        elif dt == "F16":
            arr = np.frombuffer(raw, "<f2").astype(np.float32)
        elif dt == "BF16":
            arr = (np.frombuffer(raw, "<u2").astype("<u4") << 16).view("<f4").astype(np.float32)
        elif dt == "I64":
            arr = np.frombuffer(raw, "<i8").copy()
        else:
            raise ValueError("dtype " + dt)
        out[name] = arr.reshape(d["shape"])
    return out


def config_json(a):
    cfg = {
        "_name_or_path": "titan-test-bert",
        "architectures": ["BertForSequenceClassification"] if a.cross else ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "classifier_dropout": None,
        "gradient_checkpointing": False,
        "hidden_act": a.act,
        "hidden_dropout_prob": 0.1,
        "hidden_size": a.hidden,
        "initializer_range": 0.02,
        "intermediate_size": a.intermediate,
        "layer_norm_eps": a.eps,
        "max_position_embeddings": a.max_positions,
        "model_type": "bert",
        "num_attention_heads": a.heads,
        "num_hidden_layers": a.layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[a.dtype],
        "transformers_version": "4.41.2",
        "type_vocab_size": a.type_vocab,
        "use_cache": True,
        "vocab_size": a.vocab,
    }
    if a.cross:
        cfg["num_labels"] = a.cross
        cfg["id2label"] = {str(i): "LABEL_%d" % i for i in range(a.cross)}
        cfg["label2id"] = {"LABEL_%d" % i: i for i in range(a.cross)}
    return cfg


def tokenizer_json(toks, a):
    ids = {t: i for i, t in enumerate(toks)}
    added = [{"id": ids[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for t in SPECIALS]
    cls, sep = ids["[CLS]"], ids["[SEP]"]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": not a.cased},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [cls], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [sep], "tokens": ["[SEP]"]}},
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": ids},
    }


POOL_KEYS = ["pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
             "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"]
POOL_MODE = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
             "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
             "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}


def dump(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=128)
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--max-positions", type=int, default=64)
    p.add_argument("--type-vocab", type=int, default=2)
    p.add_argument("--eps", type=float, default=1e-12)
    p.add_argument("--act", default="gelu", choices=["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"])
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    p.add_argument("--prefix", default="bert", choices=["bert", "none"])
    p.add_argument("--cross", type=int, default=0, metavar="N", help="a cross-encoder with N labels")
    p.add_argument("--pooling", default="mean", choices=sorted(POOL_MODE))
    p.add_argument("--normalize", action="store_true")
    p.add_argument("--max-seq", type=int, default=None)
    p.add_argument("--tokenizer", default="json", choices=["json", "vocab"])
    p.add_argument("--cased", action="store_true", help="no lowercasing (do_lower_case false)")
    p.add_argument("--no-pooler", action="store_true")
    p.add_argument("--position-ids", default=None, choices=["yes", "no"])
    p.add_argument("--no-align", action="store_true", help="data area not 8-byte aligned in the file")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--weights-out", default=None, metavar="FILE.pt")
    a = p.parse_args(argv)
    toks = vocab()
    if a.vocab is None:
        a.vocab = len(toks)
    for k in ("layers", "hidden", "heads", "intermediate", "vocab", "max_positions", "type_vocab"):
        if getattr(a, k) < 1:
            p.error("--%s must be at least 1" % k.replace("_", "-"))
    if a.cross < 0:
        p.error("--cross must be at least 1 (or absent)")
    if a.position_ids is None:
        a.position_ids = "yes" if a.prefix == "bert" else "no"
    return a


def write_model(a):
    """Writes the whole directory for parsed arguments `a`. Returns the rounded float32 state (file names)."""
    os.makedirs(a.outdir, exist_ok=True)
    toks = vocab()
    dump(os.path.join(a.outdir, "config.json"), config_json(a))

    state = build_state(a)
    tensors, rounded = [], {}
    for name in sorted(state, key=lambda n: file_name(n, a.prefix)):
        fname = file_name(name, a.prefix)
        raw, back = round_to(state[name], a.dtype)
        tensors.append((fname, ST_DTYPE[a.dtype], list(state[name].shape), raw))
        rounded[fname] = back.reshape(state[name].shape)
    if a.position_ids == "yes":
        pid = np.arange(a.max_positions, dtype="<i8").reshape(1, a.max_positions)
        fname = file_name("embeddings.position_ids", a.prefix)
        tensors.append((fname, "I64", [1, a.max_positions], pid.tobytes()))
        tensors.sort(key=lambda t: t[0])
    write_safetensors(os.path.join(a.outdir, "model.safetensors"), tensors, {"format": "pt"}, align=not a.no_align)

    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"}
    dump(os.path.join(a.outdir, "special_tokens_map.json"), specials)
    tc = dict(specials)
    tc.update({"do_lower_case": not a.cased, "strip_accents": None, "tokenize_chinese_chars": True,
               "model_max_length": a.max_seq if a.max_seq else a.max_positions, "tokenizer_class": "BertTokenizer",
               "clean_up_tokenization_spaces": True})
    if a.tokenizer == "json":
        dump(os.path.join(a.outdir, "tokenizer.json"), tokenizer_json(toks, a))
    else:
        with open(os.path.join(a.outdir, "vocab.txt"), "w", encoding="utf-8") as f:
            for t in toks:
                f.write(t + "\n")
    dump(os.path.join(a.outdir, "tokenizer_config.json"), tc)

    if not a.cross:
        mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if a.normalize:
            mods.append({"idx": 2, "name": "2", "path": "2_Normalize",
                         "type": "sentence_transformers.models.Normalize"})
            os.makedirs(os.path.join(a.outdir, "2_Normalize"), exist_ok=True)
        dump(os.path.join(a.outdir, "modules.json"), mods)
        os.makedirs(os.path.join(a.outdir, "1_Pooling"), exist_ok=True)
        pc = {"word_embedding_dimension": a.hidden}
        for k in POOL_KEYS:
            pc[k] = (k == POOL_MODE[a.pooling])
        pc["include_prompt"] = True
        dump(os.path.join(a.outdir, "1_Pooling", "config.json"), pc)
        if a.max_seq is not None:
            dump(os.path.join(a.outdir, "sentence_bert_config.json"),
                 {"max_seq_length": a.max_seq, "do_lower_case": False})

    if a.weights_out:
        import torch
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in rounded.items()}, a.weights_out)
    return rounded


def main(argv):
    write_model(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
