"""test_encoders.py - titan_client's embed and rerank (PROTOCOL.md §5.8) against a real titan-worker --models DIR,
whose model directories tests/encoder/make_model.py writes at test time (random weights): a normalised and a plain
bi-encoder, a cross-encoder, a manifest with Matryoshka sizes and one with a one-request queue. Shapes, dtype, norms,
every input form, equality with the op's JSON form sent raw, truncate, rerank's order, sigmoid and top_n, the
worker's error codes as the client's exceptions, busy, and malformed replies from a fake worker."""
import json
import math
import os
import subprocess
import threading
import time

import numpy as np
import pytest
import zmq

from conftest import ROOT
from titan_client import (Ranking, RerankResult, TitanBadRequest, TitanBusy, TitanClient, TitanError, TitanNotFound,
                          TitanProtocolError, TitanUnsupported)
from workerproc import Worker

MAKE_MODEL = os.path.join(ROOT, "tests", "encoder", "make_model.py")
DIMS = 64          # make_model.py's default hidden size
MAX_TOKENS = 64    # make_model.py's default max_position_embeddings
# A row of float32 values normalised in float32: its norm is 1 within a few roundings per element (d = 64).
NORM_TOL = 1e-5
# One request's result against another's for the same input (PROTOCOL.md §9.1: float32 rounding, held to 1e-6).
SAME_TOL = 1e-6
# relevance_score is the sigmoid of the score in double precision: a few ulps of a number below 1.
SIGMOID_TOL = 8 * np.finfo(np.float64).eps


def _make(where, name, *args):
    out = os.path.join(where, name)
    p = subprocess.run(["/usr/bin/python3", MAKE_MODEL, out, *args], capture_output=True, text=True)
    assert p.returncode == 0, f"make_model.py {name} failed: {p.stderr}"
    return out


@pytest.fixture(scope="module")
def enc(worker_bin, tmp_path_factory):
    mdir = str(tmp_path_factory.mktemp("models"))
    _make(mdir, "bi", "--normalize", "--seed", "3")
    _make(mdir, "raw", "--pooling", "cls", "--seed", "4")
    _make(mdir, "cross", "--cross", "1", "--seed", "5")
    _make(mdir, "matry-dir", "--normalize", "--seed", "8")
    with open(os.path.join(mdir, "matry.model.json"), "w") as f:
        json.dump({"name": "matry", "runner": "bert", "file": "matry-dir", "dimensions": [16, 32]}, f)
    # A slow model whose queue holds one request and whose batches hold one: busy is easy to reach.
    _make(mdir, "tight-dir", "--seed", "9", "--layers", "4", "--hidden", "256", "--intermediate", "1024",
          "--max-positions", "512")
    with open(os.path.join(mdir, "tight.model.json"), "w") as f:
        json.dump({"name": "tight", "runner": "bert", "file": "tight-dir", "queue": 1, "max_batch": 1}, f)
    w = Worker(worker_bin, "--models", mdir, "--threads", "2")
    yield w
    assert w.stop() == 0


@pytest.fixture
def c(enc):
    with TitanClient(enc.endpoint, timeout_ms=60000, retries=0) as client:
        yield client


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_embed_string(c):
    assert c.last_usage is None
    e = c.embed("bi", "the cat sat on the mat")
    assert isinstance(e, np.ndarray) and e.dtype == np.float32 and e.shape == (1, DIMS)
    assert e.dtype.isnative and e.flags.c_contiguous and e.flags.writeable
    assert np.all(np.isfinite(e))
    np.testing.assert_allclose(np.linalg.norm(e.astype(np.float64), axis=1), 1.0, rtol=0, atol=NORM_TOL)
    u = c.last_usage
    # [CLS] and [SEP] at least, and usage counts every token run.
    assert set(u) == {"prompt_tokens", "total_tokens"} and u["prompt_tokens"] >= 3 and \
        u["total_tokens"] == u["prompt_tokens"]


def test_embed_list_of_strings(c):
    texts = ["the cat sat", "", "Café déjà vu 日本", "a dog"]
    e = c.embed("bi", texts)
    assert e.dtype == np.float32 and e.shape == (len(texts), DIMS) and np.all(np.isfinite(e))
    np.testing.assert_allclose(np.linalg.norm(e.astype(np.float64), axis=1), 1.0, rtol=0, atol=NORM_TOL)
    # Each row is its input's embedding, in the request's order.
    for i, t in enumerate(texts):
        np.testing.assert_allclose(c.embed("bi", t)[0], e[i], rtol=0, atol=SAME_TOL)
    # The rows differ (a decoding that repeated one row, or mixed them up, would not).
    assert min(np.abs(e[i] - e[j]).max() for i in range(len(texts)) for j in range(i)) > 1e-3
    # The empty string is [CLS] [SEP] (ids 2 and 3 in make_model.py's vocabulary).
    np.testing.assert_allclose(c.embed("bi", [2, 3])[0], e[1], rtol=0, atol=SAME_TOL)
    assert c.embed("bi", tuple(texts)).shape == e.shape


def test_embed_token_ids(c):
    seqs = [[2, 7, 8, 9, 3], [2, 3], [2] + list(range(5, 40)) + [3]]
    e = c.embed("bi", seqs)
    assert e.dtype == np.float32 and e.shape == (3, DIMS) and np.all(np.isfinite(e))
    np.testing.assert_allclose(np.linalg.norm(e.astype(np.float64), axis=1), 1.0, rtol=0, atol=NORM_TOL)
    # Ids are the whole input, special tokens included: usage counts exactly them.
    assert c.last_usage == {"prompt_tokens": sum(map(len, seqs)), "total_tokens": sum(map(len, seqs))}
    one = c.embed("bi", seqs[0])  # a flat list is one input
    assert one.shape == (1, DIMS) and c.last_usage["prompt_tokens"] == len(seqs[0])
    np.testing.assert_allclose(one[0], e[0], rtol=0, atol=SAME_TOL)
    # numpy integer arrays and scalars are sent as plain ids.
    np.testing.assert_allclose(c.embed("bi", np.array(seqs[0], dtype=np.int32)), one, rtol=0, atol=SAME_TOL)
    two = c.embed("bi", np.array([[2, 7, 8, 9, 3], [2, 9, 8, 7, 3]], dtype=np.int64))
    assert two.shape == (2, DIMS)
    np.testing.assert_allclose(two[0], e[0], rtol=0, atol=SAME_TOL)
    np.testing.assert_allclose(c.embed("bi", [[np.int64(2), np.uint16(3)]])[0], e[1], rtol=0, atol=SAME_TOL)


def test_embed_equals_json_form(c):
    """The client's binary embeddings are the values of the op's JSON form, sent raw."""
    for inp in (["the cat sat", "", "a dog runs"], "one text", [[2, 7, 8, 3], [2, 3]]):
        h = c.call({"op": "embed", "model": "bi", "input": inp}).header
        want = np.array(h["embeddings"], dtype=np.float32)
        got = c.embed("bi", inp)
        assert got.shape == want.shape == (len(inp) if isinstance(inp, list) else 1, DIMS)
        np.testing.assert_allclose(got, want, rtol=0, atol=SAME_TOL)
        assert c.last_usage == h["usage"] and h["dims"] == DIMS and h["model"] == "bi"


def test_embed_normalize(c):
    texts = ["the cat sat", "a dog"]
    raw = c.embed("raw", texts)  # a model without a Normalize module: rows as pooled
    norms = np.linalg.norm(raw.astype(np.float64), axis=1)
    assert np.all(np.abs(norms - 1) > 1e-3), norms
    unit = c.embed("raw", texts, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit.astype(np.float64), axis=1), 1.0, rtol=0, atol=NORM_TOL)
    np.testing.assert_allclose(unit, raw / norms[:, None], rtol=0, atol=SAME_TOL)
    # The other way round: normalize=False on a model that normalises.
    default = c.embed("bi", texts)
    off = c.embed("bi", texts, normalize=False)
    off_norms = np.linalg.norm(off.astype(np.float64), axis=1)
    assert np.all(np.abs(off_norms - 1) > 1e-3), off_norms
    np.testing.assert_allclose(off / off_norms[:, None], default, rtol=0, atol=SAME_TOL)


def test_embed_dimensions(c):
    full = c.embed("matry", ["a cat"])
    d16 = c.embed("matry", ["a cat"], dimensions=16)
    assert d16.shape == (1, 16) and d16.dtype == np.float32
    head = full[0, :16].astype(np.float64)
    np.testing.assert_allclose(d16[0], head / np.linalg.norm(head), rtol=0, atol=SAME_TOL)
    with pytest.raises(TitanBadRequest) as e:
        c.embed("matry", ["a cat"], dimensions=20)  # not one of the manifest's sizes
    assert e.value.code == "bad_request"


def test_embed_truncate(c):
    ids = [2] + [5 + i % 40 for i in range(MAX_TOKENS + 10)] + [3]  # over max_tokens
    with pytest.raises(TitanBadRequest) as e:
        c.embed("bi", ids)
    assert e.value.code == "bad_request"
    cut = c.embed("bi", ids, truncate=True)
    assert cut.shape == (1, DIMS) and c.last_usage["prompt_tokens"] == MAX_TOKENS
    # Ids are cut to the first max_tokens - 1 and the last one (PROTOCOL.md §5.8).
    np.testing.assert_allclose(cut, c.embed("bi", ids[:MAX_TOKENS - 1] + ids[-1:]), rtol=0, atol=SAME_TOL)
    long_text = " ".join(["cat"] * (MAX_TOKENS + 5))
    with pytest.raises(TitanBadRequest):
        c.embed("bi", long_text)
    assert c.embed("bi", long_text, truncate=True).shape == (1, DIMS) and c.last_usage["prompt_tokens"] == MAX_TOKENS


DOCS = ["the cat sat on the mat", "dogs run fast", "a cat", "the stock market fell", "", "cat cat cat"]


def test_rerank(c):
    r = c.rerank("cross", "where is the cat", DOCS)
    assert isinstance(r, Ranking) and isinstance(r, list) and len(r) == len(DOCS)
    assert all(isinstance(x, RerankResult) for x in r)
    assert sorted(x.index for x in r) == list(range(len(DOCS)))
    scores = [x.score for x in r]
    assert scores == sorted(scores, reverse=True), "best first"
    for x in r:
        assert math.isfinite(x.score) and 0 < x.relevance_score < 1
        assert abs(x.relevance_score - _sigmoid(x.score)) <= SIGMOID_TOL, x
    # The numpy views hold the same, in the same order.
    assert r.indices.dtype == np.int64 and r.indices.tolist() == [x.index for x in r]
    assert r.scores.dtype == np.float64 and r.scores.tolist() == scores
    assert r.relevance_scores.tolist() == [x.relevance_score for x in r]
    assert r.model == "cross" and r.usage == c.last_usage and r.usage["prompt_tokens"] > 2 * len(DOCS)
    # The same as the op sent raw.
    h = c.call({"op": "rerank", "model": "cross", "query": "where is the cat", "documents": DOCS}).header
    raw = {x["index"]: x for x in h["results"]}
    for x in r:
        assert abs(x.score - raw[x.index]["score"]) <= SAME_TOL
    assert h["usage"] == r.usage


def test_rerank_top_n(c):
    full = c.rerank("cross", "a cat", DOCS)
    for n in (1, 2, len(DOCS) - 1):
        top = c.rerank("cross", "a cat", DOCS, top_n=n)
        assert len(top) == n and top.indices.tolist() == full.indices[:n].tolist()
        np.testing.assert_allclose(top.scores, full.scores[:n], rtol=0, atol=SAME_TOL)
    assert len(c.rerank("cross", "a cat", DOCS, top_n=len(DOCS) + 5)) == len(DOCS)
    assert [x.index for x in c.rerank("cross", "a cat", ("one doc",))] == [0]


def test_errors_carry_the_code(c):
    cases = [
        (lambda: c.embed("no-such-model", "x"), TitanNotFound, "not_found"),
        (lambda: c.rerank("no-such-model", "q", ["d"]), TitanNotFound, "not_found"),
        (lambda: c.embed("bi", []), TitanBadRequest, "bad_request"),
        (lambda: c.embed("bi", ["a", [2, 3]]), TitanBadRequest, "bad_request"),  # a mix
        (lambda: c.embed("bi", [2, 100000, 3]), TitanBadRequest, "bad_request"),  # outside the vocabulary
        (lambda: c.rerank("cross", "q", []), TitanBadRequest, "bad_request"),
        (lambda: c.rerank("cross", "q", "not a list"), TitanBadRequest, "bad_request"),
        (lambda: c.embed("cross", "x"), TitanUnsupported, "unsupported"),
        (lambda: c.rerank("bi", "q", ["d"]), TitanUnsupported, "unsupported"),
    ]
    for fn, cls, code in cases:
        with pytest.raises(cls) as e:
            fn()
        assert e.value.code == code and e.value.reply["code"] == code and e.value.message
    # Bad options are refused before anything is sent.
    for fn in (lambda: c.embed("bi", "x", normalize="yes"), lambda: c.embed("bi", "x", truncate=1),
               lambda: c.embed("bi", "x", dimensions=0), lambda: c.embed("", "x"),
               lambda: c.embed("bi", {"text": "x"}), lambda: c.embed("bi", np.ones((2, 2), np.float32)),
               lambda: c.rerank("cross", "q", ["d"], top_n=0), lambda: c.rerank("cross", "q", ["d"], top_n=1.5)):
        with pytest.raises(ValueError):
            fn()
    assert c.embed("bi", "still fine").shape == (1, DIMS)


def test_busy(enc):
    """The model's queue (one request) full: TitanBusy at once, and the client goes on working."""
    ids = [2] + [5 + i % 300 for i in range(500)] + [3]
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(enc.endpoint)
    burst = 8  # two run (two executors), one waits, the rest are refused
    sent = 0
    try:
        with TitanClient(enc.endpoint, timeout_ms=60000, retries=0) as c:
            deadline = time.monotonic() + 60
            while True:
                for _ in range(burst):
                    d.send_multipart([b"", json.dumps({"op": "embed", "model": "tight", "input": ids}).encode()])
                sent += burst
                try:
                    c.embed("tight", ids)
                except TitanBusy as e:
                    assert e.code == "busy" and e.reply["code"] == "busy" and c.last_retries == 0
                    break
                assert time.monotonic() < deadline, "never answered busy"
            for _ in range(sent):  # every raw request is answered (a result or busy)
                assert d.poll(120000), "a request of the burst was never answered"
                d.recv_multipart()
            assert c.embed("tight", ids).shape == (1, 256)
    finally:
        d.close(0)
        ctx.term()


def _fake_worker(replies):
    """A ROUTER that answers each request with the next of `replies` (frame lists after the delimiter)."""
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.LINGER, 0)
    port = r.bind_to_random_port("tcp://127.0.0.1")

    def serve():
        for frames in replies:
            if not r.poll(10000):
                return
            rid = r.recv_multipart()[0]
            r.send_multipart([rid, b""] + frames)
    t = threading.Thread(target=serve)
    t.start()
    return f"tcp://127.0.0.1:{port}", t, r, ctx


def test_malformed_replies():
    usage = {"prompt_tokens": 3, "total_tokens": 3}

    def emb(shape, nbytes, **extra):
        h = {"model": "m", "dims": shape[-1], "usage": usage,
             "embeddings": {"dtype": "float32", "shape": shape, "frame": 1}, **extra}
        return [json.dumps(h).encode(), b"\0" * nbytes]
    good = np.arange(8, dtype="<f4")
    replies = [
        [json.dumps({"model": "m", "dims": 4, "usage": usage,
                     "embeddings": {"dtype": "float32", "shape": [2, 4], "frame": 1}}).encode(), good.tobytes()],
        emb([1, 4], 12),                       # a frame too short
        emb([2, 4], 32),                       # two rows for one input
        emb([1, 4], 32, dims=5),               # dims that disagree with the shape
        [json.dumps({"model": "m", "dims": 4, "embeddings": {"dtype": "float32", "shape": [1, 4], "frame": 1}})
         .encode(), b"\0" * 16],               # no usage
        [json.dumps({"model": "m", "dims": 4, "usage": usage, "embeddings": [[0, 0, 0, 0]]}).encode()],  # JSON form
        [json.dumps({"results": [{"index": 0, "score": 1.0, "relevance_score": 0.7},
                                 {"index": 0, "score": 0.5, "relevance_score": 0.6}], "usage": usage}).encode()],
        [json.dumps({"results": [{"index": 2, "score": 1.0, "relevance_score": 0.7}], "usage": usage}).encode()],
        [json.dumps({"results": [{"index": 0, "score": 1.0, "relevance_score": 0.7}], "usage": usage}).encode()],
    ]
    ep, t, r, ctx = _fake_worker(replies)
    try:
        with TitanClient(ep, timeout_ms=5000, retries=0) as c:
            got = c.embed("m", [[2, 3], [2, 3]])  # the well-formed reply: decoded as sent
            assert got.shape == (2, 4) and np.array_equal(got, good.reshape(2, 4))
            for _ in range(5):
                with pytest.raises(TitanProtocolError):
                    c.embed("m", "x")
            with pytest.raises(TitanProtocolError):
                c.rerank("m", "q", ["a", "b"])     # the same document twice
            with pytest.raises(TitanProtocolError):
                c.rerank("m", "q", ["a", "b"], top_n=1)  # an index past the documents
            with pytest.raises(TitanProtocolError):
                c.rerank("m", "q", ["a", "b"])     # one result for two documents without top_n
    finally:
        t.join()
        r.close(0)
        ctx.term()
    assert isinstance(TitanProtocolError("protocol", "x"), TitanError)
