#!/usr/bin/python3
"""test_http_api.py - titan-worker's OpenAI-compatible HTTP API (--http; docs/OPERATIONS.md "HTTP API") against real
workers serving encoder models made by tests/encoder/make_model.py:
- routes and errors: 404, 405 with Allow, 415, 411 (chunked), 400 naming the problem, the server's not_found and
  unsupported passed through, JSON and Connection: close on every answer, the health paths unchanged;
- bodies: over --http-max-body-kb answered 413 from the header alone (with and without Expect: 100-continue), the
  limit itself accepted, a trickled body closed by the 30 s body deadline while probes are answered;
- /v1/embeddings against the ZeroMQ embed op's binary result, bit for bit, in float and base64, for a string, a
  list of strings, token ids and lists of them; /v1/rerank against the rerank op (order, relevance_score,
  top_n, documents' text); /v1/models against list_models;
- the official openai npm client (tests/ref/node_modules): embeddings.create with its default (base64, decoded by
  the client) and "float", models.list, a wrong key (401), an unknown model (404);
- --http-max-inflight: with the only executor held by a product, 12 concurrent requests give exactly 4 answers and
  8 refusals 429 with Retry-After; the server's own busy (a model queue of one) as 429 too; clients that disconnect while their request waits (RST) leave nothing behind:
  the places come back and the worker stays up;
- who may call: --http-token (401 with WWW-Authenticate, the token's file re-read when it changes, a broken file
  admits nobody, /healthz needs no token; a missing or bad file stops the start), and beyond loopback (403 without
  --http-token or --insecure-http, from this host's own non-loopback address);
- a drain: a request waiting behind the product is answered 503 with Retry-After, new ones too, the worker exits 0;
and every worker exits 0 without a sanitizer report.
Needs numpy, pyzmq and node with tests/ref's npm packages (scripts/deps.sh test installs them).
Usage: test_http_api.py PATH/TO/titan-worker   (prints TAP)"""
import base64
import fcntl
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import zmq

from workerproc import Tap, Worker

BIN = sys.argv[1]
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
MAKE_MODEL = os.path.join(ROOT, "tests", "encoder", "make_model.py")
tap = Tap()
ctx = zmq.Context()
JSON_CT = {"Content-Type": "application/json"}
BODY_KB = 64       # --http-max-body-kb of the main worker
INFLIGHT = 4       # its --http-max-inflight
BODY_DEADLINE_S = 30.0


def skip(name, why):
    tap.ok(True, f"{name} # SKIP {why}")


# ---- HTTP, ZeroMQ and worker helpers ----

def http_base(w):
    urls = [line for line in open(w.epfile).read().splitlines() if line.startswith("http://")]
    return urls[0]


def port_of(base):
    return int(base.rsplit(":", 1)[1])


def req(base, method, path, body=None, headers=None, host=None, timeout=60):
    """One request on its own connection: (status, headers with lower-case names, body bytes)."""
    c = http.client.HTTPConnection(host or "127.0.0.1", port_of(base), timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def post(base, path, obj, headers=None, host=None):
    st, hdr, data = req(base, "POST", path, obj, dict(JSON_CT, **(headers or {})), host=host)
    try:
        js = json.loads(data)
    except ValueError:
        js = None
    return st, hdr, js


def err_code(js):
    return js.get("error", {}).get("code") if isinstance(js, dict) else None


def raw(port, data, timeout=5.0, host="127.0.0.1"):
    """Sends data on a fresh connection and reads until the worker closes it: (bytes, seconds)."""
    s = socket.create_connection((host, port), timeout=timeout)
    t0 = time.monotonic()
    s.sendall(data)
    buf = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return buf, time.monotonic() - t0


def zcall(ep, hdr, timeout=120):
    """One ZeroMQ request: (reply header, data frames)."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(ep)
    s.send_multipart([b"", json.dumps(hdr).encode()])
    if not s.poll(timeout * 1000):
        s.close()
        raise RuntimeError(f"no reply to {hdr.get('op')} in {timeout} s")
    parts = s.recv_multipart()
    s.close()
    return json.loads(parts[1]), parts[2:]


def zembed(ep, model, inp):
    """The embed op's binary result: (float32 array [n, d], reply header)."""
    h, frames = zcall(ep, {"op": "embed", "model": model, "input": inp, "binary": True})
    if "error" in h:
        raise RuntimeError(f"embed: {h}")
    n, d = h["embeddings"]["shape"]
    return np.frombuffer(frames[0], dtype="<f4").reshape(n, d), h


class Product:
    """A matrix product over ZeroMQ that holds the worker's only executor for a few seconds."""

    def __init__(self, ep, n=2000):
        rng = np.random.default_rng(7)
        a = rng.standard_normal((n, n))
        self.s = ctx.socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.connect(ep)
        hdr = {"op": "matrix_multiply", "a": {"dtype": "float64", "shape": [n, n], "frame": 1},
               "b": {"dtype": "float64", "shape": [n, n], "frame": 2}, "id": "hold"}
        self.s.send_multipart([b"", json.dumps(hdr).encode(), a.tobytes(), a.tobytes()])
        self.t0 = time.monotonic()

    def running(self):
        return not self.s.poll(0)

    def wait(self, timeout=300):
        ok = self.s.poll(timeout * 1000)
        reply = json.loads(self.s.recv_multipart()[1]) if ok else None
        self.s.close()
        return reply


def wait_inflight(ep, at_least, timeout=20):
    """Waits until gpu_info's inflight (running or queued) reaches at_least."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        h, _ = zcall(ep, {"op": "gpu_info"})
        if h.get("inflight", 0) >= at_least:
            return True
        time.sleep(0.02)
    return False


def make_models():
    d = tempfile.mkdtemp(prefix="titan-http-models-")
    for name, extra in (("emb", ["--max-seq", "32"]), ("rr", ["--cross", "1"]), ("tight-dir", ["--seed", "9"])):
        subprocess.run(["/usr/bin/python3", MAKE_MODEL, os.path.join(d, name), *extra], check=True,
                       stdout=subprocess.DEVNULL)
    # A model whose batching queue holds one request: the server's own busy.
    with open(os.path.join(d, "tight.model.json"), "w") as f:
        json.dump({"name": "tight", "runner": "bert", "file": "tight-dir", "queue": 1, "max_batch": 1}, f)
    return d


def bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


# ---- routes and errors ----

def routes_and_errors(w, base):
    st, hdr, data = req(base, "GET", "/v1/models")
    js = json.loads(data) if st == 200 else None
    zl, _ = zcall(w.endpoint, {"op": "list_models"})
    names = sorted(m["name"] for m in zl["models"])
    tap.ok(st == 200 and js["object"] == "list" and sorted(m["id"] for m in js["data"]) == names
           and all(m["object"] == "model" and m["owned_by"] == "titan" and m["created"] == 0 for m in js["data"]),
           "GET /v1/models: every model of list_models, in OpenAI's shape", (st, data, names))
    tap.ok(hdr.get("content-type") == "application/json" and hdr.get("connection") == "close"
           and hdr.get("cache-control") == "no-store", "a /v1 answer: JSON, Connection: close, no-store", hdr)
    st, hdr, data = req(base, "HEAD", "/v1/models")
    tap.ok(st == 200 and data == b"", "HEAD /v1/models: 200 without a body", (st, data))

    for path in ("/v1/nope", "/v1", "/v1/embeddings/x", "/v1/chat/completions"):
        st, hdr, data = req(base, "GET", path)
        js = json.loads(data)
        tap.ok(st == 404 and js["error"]["code"] == "not_found" and "/v1/embeddings" in js["error"]["message"]
               and js["error"]["type"] == "invalid_request_error", f"GET {path}: 404 naming the routes", (st, data))
    for method, path, allow in (("GET", "/v1/embeddings", "POST"), ("PUT", "/v1/rerank", "POST"),
                                ("POST", "/v1/models", "GET, HEAD"), ("DELETE", "/v1/models", "GET, HEAD")):
        st, hdr, data = req(base, method, path, b"{}" if method in ("PUT", "POST") else None, JSON_CT)
        tap.ok(st == 405 and hdr.get("allow") == allow and err_code(json.loads(data)) == "method_not_allowed",
               f"{method} {path}: 405 with Allow: {allow}", (st, hdr, data))
    st, _, data = req(base, "POST", "/v1/embeddings", b'{"model":"emb","input":"a"}', {"Content-Type": "text/plain"})
    tap.ok(st == 415 and err_code(json.loads(data)) == "unsupported_media_type", "text/plain: 415", (st, data))
    st, _, data = req(base, "POST", "/v1/embeddings", b'{"model":"emb","input":"a"}',
                      {"Content-Type": "application/json; charset=latin-1"})
    tap.ok(st == 415, "a charset other than UTF-8: 415", (st, data))
    st, hdr, js = post(base, "/v1/embeddings", {"model": "emb", "input": "a"},
                       {"Content-Type": "Application/JSON; charset=UTF-8"})
    tap.ok(st == 200, "application/json in any case, charset UTF-8: accepted", (st, js))
    chunked = (b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n1b\r\n{\"model\":\"emb\",\"input\":\"a\"}\r\n0\r\n\r\n")
    out, _ = raw(port_of(base), chunked)
    tap.ok(out.startswith(b"HTTP/1.1 411") and b"length_required" in out, "a chunked body: 411", out[:300])
    st, _, data = req(base, "POST", "/v1/embeddings", b'{"model": "emb", "input": [1,2,}', JSON_CT)
    js = json.loads(data)
    tap.ok(st == 400 and js["error"]["code"] == "bad_request" and "at byte 31" in js["error"]["message"],
           "invalid JSON: 400 naming the byte", (st, data))
    st, _, js = post(base, "/v1/embeddings", {"model": "emb", "input": "a", "dimension": 8})
    tap.ok(st == 400 and "no member \"dimension\"" in js["error"]["message"] and "dimensions" in js["error"]["message"],
           "an unknown member: 400 naming it and the members taken", (st, js))
    st, _, data = req(base, "POST", "/v1/embeddings", b"", JSON_CT)
    tap.ok(st == 400 and b"empty" in data, "an empty body: 400", (st, data))
    st, _, js = post(base, "/v1/embeddings", {"model": "no-such-model", "input": "a"})
    tap.ok(st == 404 and err_code(js) == "not_found" and "no-such-model" in js["error"]["message"],
           "an unknown model: the server's not_found as 404", (st, js))
    st, _, js = post(base, "/v1/rerank", {"model": "emb", "query": "q", "documents": ["a"]})
    tap.ok(st == 400 and err_code(js) == "unsupported", "rerank on a bi-encoder: the server's unsupported as 400",
           (st, js))
    st, _, js = post(base, "/v1/embeddings", {"model": "emb", "input": "a", "dimensions": 7})
    tap.ok(st == 400 and err_code(js) == "bad_request" and "dimensions" in js["error"]["message"],
           "a dimensions the model does not give: the op's bad_request as 400", (st, js))
    st, _, data = req(base, "GET", "/metrics")
    tap.ok(st == 200 and b"titan_up 1" in data, "/metrics unchanged", st)
    st, hdr, data = req(base, "GET", "/nope")
    tap.ok(st == 404 and b"/metrics" in data and b"/v1" in data and hdr.get("content-type", "").startswith("text/plain"),
           "a path outside /v1: the text 404 naming the paths", (st, data))
    st, hdr, data = req(base, "POST", "/healthz", b"x")
    tap.ok(st == 405 and hdr.get("allow") == "GET, HEAD", "POST /healthz: 405 with Allow: GET, HEAD", (st, hdr))


# ---- bodies ----

def body_limits(base):
    port = port_of(base)
    limit = BODY_KB * 1024
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (limit + 1))
    out, dt = raw(port, head)
    tap.ok(out.startswith(b"HTTP/1.1 413") and b"too_large" in out and b"--http-max-body-kb" in out and dt < 3,
           "Content-Length over --http-max-body-kb: 413 from the header alone, the connection closed", (out[:400], dt))
    out, dt = raw(port, head[:-2] + b"Expect: 100-continue\r\n\r\n")
    tap.ok(out.startswith(b"HTTP/1.1 413") and b"100 Continue" not in out and dt < 3,
           "with Expect: 100-continue: 413 and no 100 Continue", (out[:300], dt))
    body = json.dumps({"model": "emb", "input": "a cat"}).encode()
    body = body[:-1] + b" " * (limit - len(body)) + b"}"
    st, _, data = req(base, "POST", "/v1/embeddings", body, JSON_CT)
    tap.ok(len(body) == limit and st == 200, f"a body of exactly {BODY_KB} KiB is taken", (len(body), st, data[:200]))


class Trickle(threading.Thread):
    """A client that sends its header at once, then one byte of its body every 2 s."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.closed_after = None

    def run(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 400\r\n\r\n{")
        t0 = time.monotonic()
        s.setblocking(False)
        next_byte = t0 + 2
        while time.monotonic() - t0 < BODY_DEADLINE_S + 15:
            try:
                if s.recv(4096) == b"":
                    self.closed_after = time.monotonic() - t0
                    break
            except BlockingIOError:
                pass
            except OSError:
                self.closed_after = time.monotonic() - t0
                break
            if time.monotonic() >= next_byte:
                try:
                    s.send(b" ")
                except OSError:
                    self.closed_after = time.monotonic() - t0
                    break
                next_byte += 2
            time.sleep(0.05)
        s.close()


def trickle_check(t, base):
    t.join(BODY_DEADLINE_S + 20)
    c = t.closed_after
    tap.ok(c is not None and BODY_DEADLINE_S - 0.5 <= c <= BODY_DEADLINE_S + 3,
           f"a body trickled one byte every 2 s is closed at the {BODY_DEADLINE_S:.0f} s body deadline", c)
    st, _, _ = req(base, "GET", "/healthz")
    tap.ok(st == 200, "/healthz after the trickle", st)


# ---- answers against the ZeroMQ ops ----

def embeddings_match(w, base):
    cases = [("a string", "a cat sat"), ("a list of strings", ["a cat", "the dog ran", "café \"quoted\" 東京", ""]),
             ("token ids", [2, 40, 41, 3]), ("lists of token ids", [[2, 40, 3], [2, 41, 42, 43, 3]])]
    for what, inp in cases:
        want, zh = zembed(w.endpoint, "emb", inp)
        st, _, jf = post(base, "/v1/embeddings", {"model": "emb", "input": inp})
        st2, _, jb = post(base, "/v1/embeddings", {"model": "emb", "input": inp, "encoding_format": "base64"})
        ok = st == 200 and st2 == 200 and jf["object"] == "list" and len(jf["data"]) == want.shape[0]
        ok = ok and all(d["object"] == "embedding" and d["index"] == i for i, d in enumerate(jf["data"]))
        ok = ok and jf["model"] == "emb" and jf["usage"] == zh["usage"] and jb["usage"] == zh["usage"]
        if ok:
            got_f = np.array([d["embedding"] for d in jf["data"]], dtype=np.float64).astype(np.float32)
            got_b = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in jb["data"]])
            ok = np.array_equal(bits(got_f), bits(want)) and np.array_equal(bits(got_b), bits(want))
        tap.ok(ok, f"/v1/embeddings, {what}: float and base64 equal the embed op's float32 bit for bit",
               (st, st2, str(jf)[:300]))
    st, _, js = post(base, "/v1/embeddings", {"model": "emb", "input": "a", "dimensions": want.shape[1]})
    tap.ok(st == 200 and len(js["data"][0]["embedding"]) == want.shape[1], "dimensions: the model's own size", st)


def rerank_match(w, base):
    docs = ["a cat is a small feline", "stocks fell today", "dogs and cats", "café \"au lait\" \\ 東京", "x"]
    q = "what is a cat"
    zh, _ = zcall(w.endpoint, {"op": "rerank", "model": "rr", "query": q, "documents": docs})
    st, _, js = post(base, "/v1/rerank", {"model": "rr", "query": q, "documents": docs})
    ok = st == 200 and js["model"] == "rr" and js["usage"] == zh["usage"] and len(js["results"]) == len(docs)
    ok = ok and [r["index"] for r in js["results"]] == [r["index"] for r in zh["results"]]
    ok = ok and all(r["relevance_score"] == z["relevance_score"] and "document" not in r and "score" not in r
                    for r, z in zip(js["results"], zh["results"]))
    tap.ok(ok, "/v1/rerank: the rerank op's order and relevance_score (the sigmoid), no documents by default",
           (st, js, zh))
    scores = [r["relevance_score"] for r in js["results"]] if ok else []
    logits = [r["score"] for r in zh["results"]]
    tap.ok(ok and scores == sorted(scores, reverse=True)
           and all(abs(s - 1 / (1 + np.exp(-l))) < 1e-12 for s, l in zip(scores, logits)),
           "relevance_score is the sigmoid of the op's logit, best first", (scores, logits))
    st, _, js = post(base, "/v1/rerank", {"model": "rr", "query": q, "documents": docs, "top_n": 2,
                                          "return_documents": True})
    ok = st == 200 and len(js["results"]) == 2 and [r["index"] for r in js["results"]] == \
        [r["index"] for r in zh["results"][:2]]
    ok = ok and all(r["document"]["text"] == docs[r["index"]] for r in js["results"])
    tap.ok(ok, "/v1/rerank top_n 2 with return_documents: the best two, each with its text", (st, js))
    st, _, js = post(base, "/v1/rerank", {"model": "rr", "query": q, "documents": docs, "return_documents": True})
    tap.ok(st == 200 and all(r["document"]["text"] == docs[r["index"]] for r in js["results"]),
           "every document's text comes back as sent (escapes, non-ASCII)", js)


def openai_client(w, base, token):
    node = shutil.which("node")
    mods = os.path.join(ROOT, "tests", "ref", "node_modules", "openai")
    if not node or not os.path.isdir(mods):
        tap.ok(False, "the openai npm client: node and tests/ref/node_modules/openai are installed "
               "(scripts/deps.sh test)", (node, mods))
        return
    inputs = ["a cat", "the dog ran", "café 東京"]
    want, zh = zembed(w.endpoint, "emb", inputs)
    p = subprocess.run([node, os.path.join(HERE, "http_openai.cjs"), ROOT, base + "/v1", token, "emb",
                        json.dumps(inputs)], capture_output=True, text=True, timeout=120)
    try:
        out = json.loads(p.stdout)
    except ValueError:
        out = {"error": p.stdout + p.stderr}
    if not tap.ok(p.returncode == 0 and "error" not in out, "the openai client runs against /v1", out):
        return
    d = np.array(out["default"], dtype=np.float64).astype(np.float32)
    f = np.array(out["float"], dtype=np.float64).astype(np.float32)
    b = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in out["base64"]])
    tap.ok(np.array_equal(bits(d), bits(want)) and out["default_index"] == [0, 1, 2],
           "openai embeddings.create (the client's default: base64, decoded by it) equals the embed op bit for bit",
           (d[:, :4], want[:, :4]))
    tap.ok(np.array_equal(bits(f), bits(want)), "openai embeddings.create encoding_format float: bit for bit", "")
    tap.ok(np.array_equal(bits(b), bits(want)), "openai embeddings.create encoding_format base64: the bytes", "")
    tap.ok(out["model"] == "emb" and out["usage"] == zh["usage"], "model and usage as the op's", (out["usage"], zh))
    tap.ok(sorted(out["models"]) == ["emb", "rr", "tight"], "openai models.list", out["models"])
    wk = out["wrong_key"]
    tap.ok(isinstance(wk, dict) and wk.get("status") == 401 and wk.get("name") == "AuthenticationError"
           and wk.get("code") == "unauthorized", "a wrong key: the client's AuthenticationError (401)", wk)
    um = out["unknown_model"]
    tap.ok(isinstance(um, dict) and um.get("status") == 404 and um.get("name") == "NotFoundError"
           and um.get("code") == "not_found", "an unknown model: the client's NotFoundError (404)", um)


# ---- in flight, disconnects ----

def concurrent(base, n, model="emb"):
    """n POST /v1/embeddings at once, each on its own connection: [(status, headers, json)]."""
    res = [None] * n
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        try:
            res[i] = post(base, "/v1/embeddings", {"model": model, "input": f"text number {i}"})
        except Exception as e:  # reported below
            res[i] = (None, {}, str(e))

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    return ts, res


def inflight_bound(w, base):
    hold = Product(w.endpoint)
    tap.ok(wait_inflight(w.endpoint, 1), "a product holds the only executor", "")
    ts, res = concurrent(base, 12)
    t_end = time.monotonic() + 30
    while time.monotonic() < t_end and sum(1 for r in res if r is not None) < 12 - INFLIGHT:
        time.sleep(0.01)
    refused = [r for r in res if r is not None and r[0] == 429]
    still = hold.running()
    for t in ts:
        t.join(300)
    tap.ok(still, "the product still runs when the refusals are in", time.monotonic() - hold.t0)
    ok429 = all(r[1].get("retry-after") == "1" and r[2]["error"]["type"] == "rate_limit_error"
                and "--http-max-inflight" in r[2]["error"]["message"] for r in refused)
    tap.ok(len(refused) == 12 - INFLIGHT and ok429,
           f"12 requests at once with --http-max-inflight {INFLIGHT}: {12 - INFLIGHT} answered 429 at once with "
           "Retry-After: 1", [(r[0], r[1].get("retry-after"), r[2]) for r in refused][:3])
    done = [r for r in res if r[0] == 200]
    tap.ok(len(done) == INFLIGHT and all(len(r[2]["data"]) == 1 for r in done),
           f"the {INFLIGHT} in hand are answered once the executor is free", [r[0] for r in res])
    reply = hold.wait()
    tap.ok(reply is not None and reply.get("id") == "hold", "the product's reply", reply)


def server_busy(w, base):
    """The server's admission applies to HTTP requests: tight's queue holds one, behind the product."""
    zembed(w.endpoint, "tight", "warm")
    hold = Product(w.endpoint)
    wait_inflight(w.endpoint, 1)
    ts, res = concurrent(base, 3, "tight")
    for t in ts:
        t.join(300)
    hold.wait()
    busy = [r for r in res if r[0] == 429]
    tap.ok(len(busy) == 2 and sum(1 for r in res if r[0] == 200) == 1
           and all(err_code(r[2]) == "busy" and "tight" in r[2]["error"]["message"] and r[1].get("retry-after") == "1"
                   and "--http-max-inflight" not in r[2]["error"]["message"] for r in busy),
           "a model queue of one behind the product: the server's busy for the other two, as 429 with Retry-After",
           [(r[0], r[2]) for r in res])


def disconnects(w, base):
    port = port_of(base)
    hold = Product(w.endpoint)
    wait_inflight(w.endpoint, 1)
    body = json.dumps({"model": "emb", "input": "going away"}).encode()
    socks = []
    for i in range(INFLIGHT + 2):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        socks.append(s)
    tap.ok(wait_inflight(w.endpoint, 1 + INFLIGHT), f"{INFLIGHT} requests wait behind the product", "")
    for s in socks:  # gone without a word: a reset, not a close
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    tap.ok(hold.running(), "their clients left while the product runs", "")
    hold.wait()
    t_end = time.monotonic() + 20
    while time.monotonic() < t_end and zcall(w.endpoint, {"op": "gpu_info"})[0].get("inflight", 1) > 0:
        time.sleep(0.05)
    st, _, _ = req(base, "GET", "/healthz")
    tap.ok(st == 200 and w.proc.poll() is None, "the worker stays up", st)
    # Every place came back: as many requests as --http-max-inflight at once, none refused.
    hold = Product(w.endpoint)
    wait_inflight(w.endpoint, 1)
    ts, res = concurrent(base, INFLIGHT)
    for t in ts:
        t.join(300)
    hold.wait()
    tap.ok(all(r[0] == 200 for r in res), f"afterwards {INFLIGHT} requests at once are all served: the places of the "
           "clients that left came back", [r[0] for r in res])


# ---- who may call ----

def write_tokens(path, *tokens):
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write("# tokens of the test\n" + "".join(t + "\n" for t in tokens))
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)


def tokens(models):
    d = tempfile.mkdtemp(prefix="titan-http-tokens-")
    path = os.path.join(d, "tokens")
    t1, t2 = "tok-" + os.urandom(12).hex(), "tok-" + os.urandom(12).hex()
    write_tokens(path, t1)
    w = Worker(BIN, "--http", "0", "--models", models, "--http-token", path)
    base = http_base(w)
    tap.ok("with bearer tokens (--http-token)" in w.read_log(), "the log says /v1 takes bearer tokens", w.read_log())

    def get(tok=None, scheme="Bearer"):
        h = {"Authorization": f"{scheme} {tok}"} if tok else {}
        st, hdr, data = req(base, "GET", "/v1/models", headers=h)
        return st, hdr, data

    st, hdr, data = get()
    tap.ok(st == 401 and hdr.get("www-authenticate", "").startswith("Bearer") and b'"unauthorized"' in data
           and b"authentication_error" in data, "no token: 401 with WWW-Authenticate: Bearer, from loopback too",
           (st, hdr, data))
    tap.ok(get("tok-wrong-but-long-enough")[0] == 401 and get(t1, "Basic")[0] == 401 and get(t1 + "x")[0] == 401
           and get(t1[:-1])[0] == 401, "a wrong token, another scheme, a longer or shorter token: 401", "")
    tap.ok(get(t1)[0] == 200, "the file's token: 200", "")
    st, _, js = post(base, "/v1/embeddings", {"model": "emb", "input": "a"}, {"Authorization": "Bearer " + t1})
    tap.ok(st == 200 and len(js["data"]) == 1, "POST /v1/embeddings with the token", (st, js))
    st, _, _ = req(base, "POST", "/v1/embeddings", b"x" * 100, JSON_CT)
    tap.ok(st == 401, "without a token nothing of the body is looked at: 401", st)
    tap.ok(req(base, "GET", "/healthz")[0] == 200 and req(base, "GET", "/metrics")[0] == 200,
           "/healthz and /metrics need no token", "")
    openai_client(w, base, t1)
    write_tokens(path, t2)
    tap.ok(get(t1)[0] == 401 and get(t2)[0] == 200, "the file changed: the old token is refused, the new one taken",
           "")
    tap.ok("re-read: 1 token" in w.read_log(), "the re-read is logged", w.read_log()[-500:])
    write_tokens(path, t1, t2)
    tap.ok(get(t1)[0] == 200 and get(t2)[0] == 200, "two tokens: both taken", "")
    write_tokens(path, "short")
    tap.ok(get(t1)[0] == 401 and get(t2)[0] == 401, "a broken file admits nobody", "")
    tap.ok("no /v1 request is admitted until the file is fixed" in w.read_log(), "and says so in the log", "")
    os.unlink(path)
    tap.ok(get(t2)[0] == 401, "a removed file admits nobody", "")
    write_tokens(path, t2)
    tap.ok(get(t2)[0] == 200, "the file back: its token taken again", "")
    w.stop()

    for what, content, words in (("a missing file", None, "No such file"), ("a short token", "abc\n", ":1: a token"),
                                 ("no token", "# nothing\n", "holds no token")):
        if content is None:
            fp = os.path.join(d, "none")
        else:
            fp = os.path.join(d, "bad")
            with open(fp, "w") as f:
                f.write(content)
        p = subprocess.run([BIN, "--bind", "tcp://127.0.0.1:*", "--http", "0", "--http-token", fp],
                           capture_output=True, text=True, timeout=30)
        tap.ok(p.returncode == 1 and words in p.stderr and "--http-token" in p.stderr,
               f"--http-token with {what}: the start stops with status 1 saying why", (p.returncode, p.stderr))
    shutil.rmtree(d, ignore_errors=True)


def host_ipv4():
    """This host's IPv4 addresses beyond loopback."""
    out = []
    for _, name in socket.if_nameindex():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            r = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
            out.append(socket.inet_ntoa(r[20:24]))
        except OSError:
            pass
        finally:
            s.close()
    return [a for a in out if not a.startswith("127.")]


def beyond_loopback(models):
    addrs = host_ipv4()
    if not addrs:
        skip("/v1 from beyond loopback", "this host has no IPv4 address beyond loopback")
        return
    a = addrs[0]
    w = Worker(BIN, "--http", "0.0.0.0:0", "--models", models)
    base = "http://127.0.0.1:%d" % port_of(http_base(w))
    tap.ok("answers loopback clients only" in w.read_log(), "the start warning says /v1 is for loopback clients",
           w.read_log())
    st, _, data = req(base, "GET", "/v1/models", host=a)
    js = json.loads(data)
    tap.ok(st == 403 and js["error"]["code"] == "forbidden" and "--http-token" in js["error"]["message"]
           and "--insecure-http" in js["error"]["message"],
           f"GET /v1/models from {a} (not loopback): 403 naming --http-token and --insecure-http", (st, data))
    st, _, _ = post(base, "/v1/embeddings", {"model": "emb", "input": "a"}, host=a)
    tap.ok(st == 403, "POST /v1/embeddings from it: 403", st)
    tap.ok(req(base, "GET", "/healthz", host=a)[0] == 200 and req(base, "GET", "/v1/models")[0] == 200,
           "/healthz from it, and /v1 from loopback: 200", "")
    w.stop()
    w = Worker(BIN, "--http", "0.0.0.0:0", "--models", models, "--insecure-http")
    base = "http://127.0.0.1:%d" % port_of(http_base(w))
    st, _, js = post(base, "/v1/embeddings", {"model": "emb", "input": "a"}, host=a)
    tap.ok(st == 200 and "--insecure-http" in w.read_log(), f"--insecure-http: served from {a}", (st, js))
    w.stop()


# ---- a drain ----

def drain(models):
    w = Worker(BIN, "--http", "0", "--models", models, "--threads", "1", "--blas-threads", "1")
    base = http_base(w)
    zembed(w.endpoint, "emb", "warm")  # loaded before the product holds the executor
    hold = Product(w.endpoint)
    wait_inflight(w.endpoint, 1)
    ts, res = concurrent(base, 1)
    tap.ok(wait_inflight(w.endpoint, 2), "a request waits behind the product", "")
    w.proc.send_signal(signal.SIGTERM)
    for t in ts:
        t.join(60)
    st, hdr, js = res[0]
    tap.ok(st == 503 and err_code(js) == "shutting_down" and hdr.get("retry-after") == "1",
           "SIGTERM: the waiting request is answered 503 shutting_down with Retry-After", res[0])
    st, hdr, data = req(base, "GET", "/v1/models")
    tap.ok(st == 503 and hdr.get("retry-after") == "1" and b"shutting_down" in data,
           "a new /v1 request while draining: 503", (st, data))
    tap.ok(req(base, "GET", "/healthz")[0] == 200, "/healthz stays 200 while draining", "")
    reply = hold.wait()
    tap.ok(reply is not None and "result" in reply, "the running product still gets its result", reply)
    rc = w.proc.wait(60)
    tap.ok(rc == 0, "the worker exits 0", rc)


def main():
    models = make_models()
    w = Worker(BIN, "--http", "0", "--models", models, "--threads", "1", "--blas-threads", "1",
               "--http-max-body-kb", str(BODY_KB), "--http-max-inflight", str(INFLIGHT))
    base = http_base(w)
    tap.ok("for loopback clients" in w.read_log(), "the log names the /v1 routes and who may call them", w.read_log())
    zembed(w.endpoint, "emb", "warm")
    zcall(w.endpoint, {"op": "rerank", "model": "rr", "query": "q", "documents": ["warm"]})
    trickler = Trickle(port_of(base))
    trickler.start()
    tap.run("routes and errors", lambda: routes_and_errors(w, base))
    tap.run("body limits", lambda: body_limits(base))
    tap.run("embeddings", lambda: embeddings_match(w, base))
    tap.run("rerank", lambda: rerank_match(w, base))
    tap.run("in flight", lambda: inflight_bound(w, base))
    tap.run("server busy", lambda: server_busy(w, base))
    tap.run("disconnects", lambda: disconnects(w, base))
    tap.run("trickle", lambda: trickle_check(trickler, base))
    tap.run("tokens", lambda: tokens(models))
    tap.run("beyond loopback", lambda: beyond_loopback(models))
    tap.run("drain", lambda: drain(models))
    res = Worker.stop_all()
    tap.ok(all((rc == 0 and not san) for _, rc, san in res), "every worker exited 0 with no sanitizer report", res)
    shutil.rmtree(models, ignore_errors=True)
    sys.exit(tap.done())


main()
