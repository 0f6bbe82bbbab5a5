#!/usr/bin/python3
"""test_protocol.py - the wire protocol against a real titan-worker, from plain pyzmq clients:
the design's JSON forms, binary frames, every malformed input, ids, busy, deadlines and logs.
Usage: test_protocol.py PATH/TO/titan-worker   (prints TAP)"""
import json
import signal
import sys
import time

import numpy as np
import zmq

from workerproc import Tap, Worker

BIN = sys.argv[1]
tap = Tap()
ctx = zmq.Context()


def req_socket(ep):
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 20000)
    s.connect(ep)
    return s


def call(s, header, *frames):
    """Sends one request (dict, str or bytes header) and returns (reply dict, data frames)."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    s.send_multipart([header, *frames])
    parts = s.recv_multipart()
    return json.loads(parts[0]), parts[1:]


def desc(arr, frame):
    return {"dtype": str(arr.dtype), "shape": list(arr.shape), "frame": frame}


w = Worker(BIN)
s = req_socket(w.endpoint)


def design_forms():
    r, _ = call(s, {"op": "ping"})
    tap.ok(r.get("status") == "ok" and isinstance(r.get("gpu"), str) and r["gpu"], "ping answers status ok and gpu", r)
    r, _ = call(s, {"op": "gpu_info"})
    keys = {"name", "total_memory_gb", "multi_processor_count", "cuda_capability"}
    tap.ok(keys <= set(r) and r["cuda_capability"] is None and r.get("backend") == "cpu"
           and r["multi_processor_count"] >= 1 and r["total_memory_gb"] > 0, "gpu_info on the CPU", r)
    r, _ = call(s, '{"op": "matrix_multiply", "a": [[1, 2], [3, 4]], "b": [[5, 6], [7, 8]]}')
    tap.ok(r == {"result": [[19.0, 22.0], [43.0, 50.0]]}, "design matrix_multiply answers {result: [[...]]}", r)
    r, _ = call(s, {"op": "fly"})
    tap.ok(r.get("error") == "Unknown operation: fly" and r.get("code") == "unknown_op", "unknown op text", r)
    r, _ = call(s, {"op": "inference", "model": "x", "input": [1, 2]})
    tap.ok(r.get("code") == "unsupported" and "output" not in r, "inference is unsupported, never made up", r)
    r, _ = call(s, {"op": "ops"})
    names = {o["name"] for o in r.get("ops", [])}
    tap.ok(r.get("protocol") == 1 and {"ping", "gpu_info", "matrix_multiply", "ops", "inference"} <= names
           and r.get("backend") == "cpu" and "limits" in r, "ops lists ops, protocol and device", r)


def json_numerics():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((37, 19)).astype(np.float32)
    b = rng.standard_normal((19, 23)).astype(np.float32)
    r, _ = call(s, {"op": "matrix_multiply", "a": a.tolist(), "b": b.tolist()})
    got = np.asarray(r["result"], dtype=np.float32)
    tap.ok(got.shape == (37, 23) and np.allclose(got, a @ b, rtol=1e-5, atol=1e-5), "JSON float32 product is right")
    a64 = rng.standard_normal((5, 7))
    b64 = rng.standard_normal((7, 3))
    r, _ = call(s, {"op": "matrix_multiply", "dtype": "float64", "a": a64.tolist(), "b": b64.tolist()})
    tap.ok(np.allclose(np.asarray(r["result"]), a64 @ b64, rtol=1e-13, atol=1e-13), "JSON float64 product", r)
    r, _ = call(s, '{"op":"matrix_multiply","a":[[NaN, 1]],"b":[[1],[Infinity]]}')
    tap.ok(r.get("result") and np.isnan(r["result"][0][0]), "NaN and Infinity in JSON compute as IEEE 754", r)
    # x * 1 is x: the reply's text is the formatter's, exactly. float32: the shortest text that reads back
    # (9 digits at most); the PROTOCOL's tokens for NaN and the infinities; the largest finite value and
    # denormals. A column of them times [[1]].
    for dtype, vals, want in [
            ("float32", "NaN, Infinity, -Infinity, 3.4028234663852886e38, 1e-45, -1.1754942e-38, 0.1, 16777216",
             '{"result":[[NaN],[Infinity],[-Infinity],[3.4028235e38],[1e-45],[-1.1754942e-38],[0.1],[16777216.0]]}'),
            ("float64", "NaN, Infinity, -Infinity, 1.7976931348623157e308, 5e-324, -2.225073858507201e-308, 0.1",
             '{"result":[[NaN],[Infinity],[-Infinity],[1.7976931348623157e+308],[4.94065645841247e-324],'
             '[-2.225073858507201e-308],[0.1]]}')]:
        col = ",".join(f"[{v.strip()}]" for v in vals.split(","))
        s.send_multipart([f'{{"op":"matrix_multiply","dtype":"{dtype}","a":[{col}],"b":[[1]]}}'.encode()])
        text = s.recv_multipart()[0].decode()
        tap.ok(text == want, f"JSON {dtype} product: NaN/Infinity tokens, shortest round-trip text", text)


def binary_forms():
    rng = np.random.default_rng(4)
    for dt, tol in ((np.float32, 1e-4), (np.float64, 1e-12)):
        a = rng.standard_normal((64, 33)).astype(dt)
        b = rng.standard_normal((33, 17)).astype(dt)
        r, fr = call(s, {"op": "matrix_multiply", "a": desc(a, 1), "b": desc(b, 2)}, a.tobytes(), b.tobytes())
        ok = r.get("result") == {"dtype": np.dtype(dt).name, "shape": [64, 17], "frame": 1} and len(fr) == 1
        c = np.frombuffer(fr[0], dtype=dt).reshape(64, 17) if ok else None
        tap.ok(ok and np.allclose(c, a @ b, rtol=tol, atol=tol), f"binary {np.dtype(dt).name} matmul", r)
    a = np.array([[np.nan, 1.0], [np.inf, 0.0]], dtype=np.float32)
    b = np.array([[1.0], [-np.inf]], dtype=np.float32)
    r, fr = call(s, {"op": "matrix_multiply", "a": desc(a, 1), "b": desc(b, 2)}, a.tobytes(), b.tobytes())
    c = np.frombuffer(fr[0], dtype=np.float32)
    tap.ok(np.isnan(c[0]) and np.isnan(c[1]) or (np.isnan(c[0]) and np.isinf(c[1])), "binary NaN/Inf as IEEE", c)
    # frames may come in any order: the descriptor names the frame
    a = np.ones((2, 3), np.float32)
    b = np.full((3, 2), 2, np.float32)
    r, fr = call(s, {"op": "matrix_multiply", "a": desc(a, 2), "b": desc(b, 1)}, b.tobytes(), a.tobytes())
    tap.ok(np.array_equal(np.frombuffer(fr[0], np.float32), np.full(4, 6, np.float32)), "frame order follows descriptors", r)


BAD = [
    ("invalid JSON", b'{"op": "ping"', "bad_request"),
    ("not JSON at all", b"hello", "bad_request"),
    ("JSON array, not object", b'["ping"]', "bad_request"),
    ("JSON string, not object", b'"ping"', "bad_request"),
    ("JSON number, not object", b"42", "bad_request"),
    ("empty header", b"", "bad_request"),
    ("missing op", {"a": 1}, "bad_request"),
    ("op not a string", {"op": 5}, "bad_request"),
    ("op null", {"op": None}, "bad_request"),
    ("unknown op", {"op": "matrix_divide"}, "unknown_op"),
    ("a is a string", {"op": "matrix_multiply", "a": "x", "b": [[1]]}, "bad_request"),
    ("a is a number", {"op": "matrix_multiply", "a": 3, "b": [[1]]}, "bad_request"),
    ("b missing", {"op": "matrix_multiply", "a": [[1]]}, "bad_request"),
    ("dtype not a string", {"op": "matrix_multiply", "dtype": 32, "a": [[1]], "b": [[1]]}, "bad_request"),
    ("dtype unknown", {"op": "matrix_multiply", "dtype": "int8", "a": [[1]], "b": [[1]]}, "bad_request"),
    ("id is an object", {"op": "ping", "id": {"x": 1}}, "bad_request"),
    ("id is an array", {"op": "ping", "id": [1]}, "bad_request"),
    ("op is an array", {"op": ["ping"]}, "bad_request"),
    ("deadline_ms is an array", {"op": "ping", "deadline_ms": [5]}, "bad_request"),
    ("dtype is an array", {"op": "matrix_multiply", "dtype": ["float64"], "a": [[1]], "b": [[1]]}, "bad_request"),
    ("deadline_ms not positive", {"op": "ping", "deadline_ms": 0}, "bad_request"),
    ("deadline_ms a string", {"op": "ping", "deadline_ms": "5"}, "bad_request"),
    ("ragged rows", {"op": "matrix_multiply", "a": [[1, 2], [3]], "b": [[1], [2]]}, "bad_request"),
    ("ragged depth", {"op": "matrix_multiply", "a": [[1, 2], 3], "b": [[1], [2]]}, "bad_request"),
    ("non-numeric element", {"op": "matrix_multiply", "a": [[1, "2"]], "b": [[1], [2]]}, "bad_request"),
    ("null element", {"op": "matrix_multiply", "a": [[1, None]], "b": [[1], [2]]}, "bad_request"),
    ("boolean element", {"op": "matrix_multiply", "a": [[True]], "b": [[1]]}, "bad_request"),
    ("1-D operand", {"op": "matrix_multiply", "a": [1, 2], "b": [[1], [2]]}, "bad_request"),
    ("inner dims mismatch", {"op": "matrix_multiply", "a": [[1, 2, 3]], "b": [[1], [2]]}, "bad_request"),
    ("empty matrix", {"op": "matrix_multiply", "a": [], "b": [[1]]}, "bad_request"),
    ("empty row", {"op": "matrix_multiply", "a": [[]], "b": [[1]]}, "bad_request"),
    ("deep nesting", b'{"op":"ping","x":' + b"[" * 5000 + b"]" * 5000 + b"}", "bad_request"),
    ("deep object nesting", b'{"op":"ping","x":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}", "bad_request"),
    ("deep tensor nesting", {"op": "matrix_multiply", "a": [[[[[[[[[[1]]]]]]]]]], "b": [[1]]}, "bad_request"),
    ("invalid UTF-8 in value", b'{"op":"ping","x":"\xff\xfe"}', "bad_request"),
    ("invalid UTF-8 in op", b'{"op":"pi\xc3\x28ng"}', "bad_request"),
    ("overlong UTF-8", b'{"op":"ping","x":"\xc0\xaf"}', "bad_request"),
    ("duplicate key", b'{"op":"ping","op":"gpu_info"}', "bad_request"),
    ("trailing garbage", b'{"op":"ping"} x', "bad_request"),
    ("bad number", b'{"op":"matrix_multiply","a":[[01]],"b":[[1]]}', "bad_request"),
    ("too many array fields", ('{"op":"ping",' + ",".join(f'"x{i}":[1]' for i in range(33)) + "}").encode(),
     "bad_request"),
    ("invalid JSON inside an unused array", b'{"op":"ping","x":[1,2,]}', "bad_request"),
]


def bad_inputs():
    for name, header, code in BAD:
        r, fr = call(s, header)
        tap.ok(r.get("code") == code and isinstance(r.get("error"), str) and r["error"] and not fr,
               f"bad input answered {code}: {name}", r)
    r, _ = call(s, {"op": "ping"})
    tap.ok(r.get("status") == "ok", "worker still serves after every bad input")


def bad_frames():
    a = np.ones((4, 3), np.float32)
    b = np.ones((3, 2), np.float32)
    good = {"op": "matrix_multiply", "a": desc(a, 1), "b": desc(b, 2)}
    cases = [
        ("shape does not match frame size", {**good, "a": {**desc(a, 1), "shape": [4, 4]}}, [a.tobytes(), b.tobytes()]),
        ("missing frame", good, [a.tobytes()]),
        ("no frames", good, []),
        ("extra frame", good, [a.tobytes(), b.tobytes(), b"xx"]),
        ("frame index 0", {**good, "a": {**desc(a, 0)}}, [a.tobytes(), b.tobytes()]),
        ("frame index too big", {**good, "b": {**desc(b, 7)}}, [a.tobytes(), b.tobytes()]),
        ("frame used twice", {**good, "b": {**desc(b, 1), "shape": [4, 3]}}, [a.tobytes(), b.tobytes()]),
        ("zero dimension", {**good, "a": {**desc(a, 1), "shape": [0, 3]}}, [b"", b.tobytes()]),
        ("negative dimension", {**good, "a": {**desc(a, 1), "shape": [-4, -3]}}, [a.tobytes(), b.tobytes()]),
        ("dimension not an integer", {**good, "a": {**desc(a, 1), "shape": [4.5, 3]}}, [a.tobytes(), b.tobytes()]),
        ("shape not an array", {**good, "a": {**desc(a, 1), "shape": 12}}, [a.tobytes(), b.tobytes()]),
        ("unknown dtype", {**good, "a": {**desc(a, 1), "dtype": "bfloat16"}}, [a.tobytes(), b.tobytes()]),
        ("mixed dtypes", {**good, "b": {**desc(b, 2), "dtype": "float64", "shape": [3, 1]}}, [a.tobytes(), b.tobytes()]),
        ("rank 9", {**good, "a": {**desc(a, 1), "shape": [1] * 9}}, [a.tobytes(), b.tobytes()]),
        ("too many frames", good, [a.tobytes(), b.tobytes()] + [b"x"] * 20),
    ]
    for name, hdr, frames in cases:
        r, fr = call(s, hdr, *frames)
        tap.ok(r.get("code") == "bad_request" and not fr, f"binary: {name} -> bad_request", r)
    r, _ = call(s, {**good, "a": {**desc(a, 1), "shape": [2**40, 2**40]}}, a.tobytes(), b.tobytes())
    tap.ok(r.get("code") == "too_large", "binary: dims whose product overflows -> too_large", r)
    r, _ = call(s, {**good, "a": {**desc(a, 1), "shape": [2**31, 2**31, 2**31]}}, a.tobytes(), b.tobytes())
    tap.ok(r.get("code") == "too_large", "binary: 64-bit overflow of the element count -> too_large", r)
    r, _ = call(s, {**good, "a": {"ref": "gpu:1"}}, b.tobytes())
    tap.ok(r.get("code") == "not_found", "a resident tensor ref that does not exist -> not_found", r)
    r, _ = call(s, {**good, "a": {**desc(a, 1), "ref": None}}, a.tobytes(), b.tobytes())
    tap.ok(r.get("result") is not None, "a null ref is no ref", r)
    # result bigger than the cap although the inputs are tiny
    col = np.ones((100000, 1), np.float32)
    row = np.ones((1, 100000), np.float32)
    r, _ = call(s, {"op": "matrix_multiply", "a": desc(col, 1), "b": desc(row, 2)}, col.tobytes(), row.tobytes())
    tap.ok(r.get("code") == "too_large", "a result over max_result_bytes -> too_large", r)


def ids_and_dealers():
    r, _ = call(s, {"op": "ping", "id": "abc"})
    tap.ok(r.get("id") == "abc", "id is echoed (string)", r)
    r, _ = call(s, {"op": "matrix_multiply", "a": [[2]], "b": [[3]], "id": 12})
    tap.ok(r.get("id") == 12 and r.get("result") == [[6.0]], "id is echoed (JSON matmul)", r)
    r, _ = call(s, {"op": "nope", "id": 5})
    tap.ok(r.get("id") == 5 and r.get("code") == "unknown_op", "id is echoed on errors", r)
    # DEALER without a delimiter frame
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.RCVTIMEO, 20000)
    d.connect(w.endpoint)
    d.send(b'{"op":"ping","id":1}')
    parts = d.recv_multipart()
    tap.ok(len(parts) == 1 and json.loads(parts[0]).get("id") == 1, "DEALER without delimiter", parts)
    # DEALER with delimiter, pipelined; a slow product and pings: replies may overtake, ids match
    n = 1024
    a = np.ones((n, n), np.float32)
    d.send_multipart([b"", json.dumps({"op": "matrix_multiply", "id": "big", "a": desc(a, 1), "b": desc(a, 2)}).encode(),
                      a.tobytes(), a.tobytes()])
    for i in range(5):
        d.send_multipart([b"", json.dumps({"op": "ping", "id": i}).encode()])
    got = []
    for _ in range(6):
        parts = d.recv_multipart()
        got.append((parts[0], json.loads(parts[1]).get("id")))
    tap.ok(all(p[0] == b"" for p in got) and sorted(map(str, (g[1] for g in got))) == sorted(["big", "0", "1", "2", "3", "4"]),
           "pipelined DEALER gets every reply with its id", got)
    tap.ok(got[-1][1] == "big", "light requests are not stuck behind a heavy one", got)
    d.close()


def size_cap_busy_deadline():
    w2 = Worker(BIN, "--max-request-bytes", "1M")
    s2 = req_socket(w2.endpoint)
    big = np.ones((600, 600), np.float32)  # 1.44 MB
    r, _ = call(s2, {"op": "matrix_multiply", "id": "big1", "a": desc(big, 1), "b": desc(big, 2)}, big.tobytes(),
                big.tobytes())
    tap.ok(r.get("code") == "too_large" and r.get("id") == "big1",
           "binary request over the configured cap -> too_large, with its id", r)
    r, _ = call(s2, {"op": "matrix_multiply", "a": big.tolist(), "b": [[1]]})
    tap.ok(r.get("code") == "too_large", "JSON request over the configured cap -> too_large", r)
    # Refusals stay small: an id over 256 bytes is not echoed, whatever the request's size.
    s2.send_multipart([json.dumps({"id": "x" * 900000, "op": "matrix_multiply", "a": desc(big, 1),
                                   "b": desc(big, 2)}).encode(), big.tobytes(), big.tobytes()])
    raw = s2.recv_multipart()[0]
    r = json.loads(raw)
    tap.ok(r.get("code") == "too_large" and "id" not in r and len(raw) < 1024,
           "a too_large request with a 900 KB id: the refusal is small and echoes no id", (len(raw), raw[:200]))
    raw = call(s2, {"op": "ping", "id": "y" * 257})[0]
    tap.ok(raw.get("code") == "bad_request" and "id" not in raw and "256" in raw.get("error", ""),
           "a 257-byte id: bad_request naming the limit, no echo", raw)
    r, _ = call(s2, {"op": "ping", "id": "z" * 256})
    tap.ok(r.get("status") == "ok" and r.get("id") == "z" * 256, "a 256-byte id is echoed", len(r.get("id", "")))
    r, _ = call(s2, {"op": "ping"})
    tap.ok(r.get("status") == "ok", "still serving after oversized requests", r)
    w2.stop()
    # busy: one executor, no queue, a slow product in flight
    w2 = Worker(BIN, "--threads", "1", "--queue", "0")
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.RCVTIMEO, 30000)
    d.connect(w2.endpoint)
    # A blocker of 6.75 GFLOP (tens of ms even on the fastest CPU, far longer under load) holds the only
    # executor; the next requests go out only once gpu_info says it runs, so they find it busy on any
    # machine.
    n = 1500
    a = np.ones((n, n), np.float64)
    hdr = json.dumps({"op": "matrix_multiply", "a": desc(a, 1), "b": desc(a, 2)}).encode()
    small = np.ones((4, 4), np.float64)
    shdr = json.dumps({"op": "matrix_multiply", "a": desc(small, 1), "b": desc(small, 2)}).encode()
    probe = req_socket(w2.endpoint)

    def running():
        return call(probe, {"op": "gpu_info"})[0].get("inflight", 0) >= 1

    def wait_running():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not running():
            time.sleep(0.002)

    d.send_multipart([b"", hdr, a.tobytes(), a.tobytes()])
    wait_running()
    for i in range(7):
        d.send_multipart([b"", shdr, small.tobytes(), small.tobytes()])
    d.setsockopt(zmq.RCVTIMEO, 300000)
    reps = [json.loads(d.recv_multipart()[1]) for _ in range(8)]
    codes = [r.get("code", "ok") for r in reps]
    tap.ok(codes.count("busy") == 7 and codes.count("ok") == 1, "a full queue answers busy at once", codes)
    # a big JSON-form request refused before it is parsed still carries its id
    bigjson = json.dumps({"op": "matrix_multiply", "id": "j1", "a": np.ones((200, 200)).tolist(), "b": [[1.0] * 200] * 200})
    d.send_multipart([b"", hdr, a.tobytes(), a.tobytes()])
    wait_running()
    d.send_multipart([b"", bigjson.encode()])
    reps = [json.loads(d.recv_multipart()[1]) for _ in range(2)]
    tap.ok(any(r.get("code") == "busy" and r.get("id") == "j1" for r in reps),
           "busy refusal of an unparsed large request carries its id", reps)
    probe.close()
    d.close()
    w2.stop()
    # busy by bytes: the queue has room but the bytes in hand are capped
    w2 = Worker(BIN, "--threads", "1", "--queue", "8", "--max-inflight-bytes", "1M")
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.RCVTIMEO, 30000)
    d.connect(w2.endpoint)
    # A request over the cap is admitted when nothing is in hand: a long blocker of 36 MB runs, and once
    # gpu_info says so, three 1 MB requests find the bytes in hand over the cap.
    big = np.ones((1500, 1500), np.float64)
    bhdr = json.dumps({"op": "matrix_multiply", "a": desc(big, 1), "b": desc(big, 2)}).encode()
    d.send_multipart([b"", bhdr, big.tobytes(), big.tobytes()])
    probe = req_socket(w2.endpoint)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and call(probe, {"op": "gpu_info"})[0].get("inflight", 0) < 1:
        time.sleep(0.002)
    probe.close()
    a = np.ones((250, 250), np.float64)  # 1 MB a request
    hdr = json.dumps({"op": "matrix_multiply", "a": desc(a, 1), "b": desc(a, 2)}).encode()
    for i in range(3):
        d.send_multipart([b"", hdr, a.tobytes(), a.tobytes()])
    d.setsockopt(zmq.RCVTIMEO, 300000)
    reps = [json.loads(d.recv_multipart()[1]) for _ in range(4)]
    codes = [r.get("code", "ok") for r in reps]
    tap.ok(codes.count("ok") >= 1 and "busy" in codes and any("bytes" in r.get("error", "") for r in reps),
           "max_inflight_bytes answers busy", codes)
    d.close()
    w2.stop()
    w3 = Worker(BIN, "--threads", "1", "--queue", "8")
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.RCVTIMEO, 30000)
    d.connect(w3.endpoint)
    a = np.ones((1200, 1200), np.float32)
    d.send_multipart([b"", json.dumps({"op": "matrix_multiply", "a": desc(a, 1), "b": desc(a, 2)}).encode(),
                      a.tobytes(), a.tobytes()])
    d.send_multipart([b"", json.dumps({"op": "matrix_multiply", "deadline_ms": 1, "id": "late",
                                       "a": [[1]], "b": [[1]]}).encode()])
    reps = [json.loads(d.recv_multipart()[1]) for _ in range(2)]
    late = [r for r in reps if r.get("id") == "late"]
    tap.ok(late and late[0].get("code") == "timeout", "deadline_ms passed in the queue -> timeout", reps)
    d.close()
    w3.stop()


def logs_and_shutdown():
    log = w.read_log()
    lines = log.splitlines()
    tap.ok("listening on" in lines[0], "one start-up line", lines[:2])
    tap.ok(not any("request op=" in l for l in lines), "no per-request lines at info level")
    nfail = sum("request failed" in l for l in lines)
    tap.ok(nfail >= min(len(BAD), 20), "one line per error, up to 20 a second", (nfail, len(BAD)))
    rc = w.stop(signal.SIGTERM)
    lines = w.read_log().splitlines() if False else open(w.logpath).read().splitlines()
    tap.ok(rc == 0 and "stopped" in lines[-1], "SIGTERM stops cleanly with a shutdown line", (rc, lines[-1:]))
    wd = Worker(BIN, log_level="debug")
    sd = req_socket(wd.endpoint)
    call(sd, {"op": "ping"})
    sd.close()
    wd.stop()
    tap.ok(any("request op=ping" in l for l in open(wd.logpath)), "debug level logs each request")
    tap.ok(any("stopped after 1 request (" in l for l in open(wd.logpath)), "one request is 1 request, not 1 requests",
           open(wd.logpath).read()[-500:])


def log_injection_and_flood():
    """Client text is escaped in the log (no forged lines, no terminal escapes), and the one warning per
    failed request is rate-limited with a count of what was left out."""
    wl = Worker(BIN)
    sl = req_socket(wl.endpoint)
    forged = "fly\n2026-01-01T00:00:00.000Z titan-worker info: FORGED LINE\x1b[31m"
    r, _ = call(sl, {"op": forged})
    tap.ok(r.get("code") == "unknown_op", "an op with a newline and an escape sequence is refused", r)
    log = open(wl.logpath).read()
    tap.ok(not any(l.startswith("2026-01-01T00:00:00.000Z") for l in log.splitlines()) and "\x1b" not in log
           and "fly\\n2026-01-01" in log and "\\x1b[31m" in log,
           "the log shows it escaped on one line: no forged line, no raw escape", log[-600:])
    t0 = time.monotonic()
    for i in range(300):
        call(sl, {"op": "fly", "id": i})
    took = time.monotonic() - t0
    call(sl, {"op": "ping"})
    time.sleep(1.1)  # the next failure starts a new one-second window and reports the count
    call(sl, {"op": "fly", "id": "last"})
    lines = open(wl.logpath).read().splitlines()
    failed = [l for l in lines if "request failed: op=fly" in l]
    tap.ok(len(failed) <= 20 * (int(took) + 2) + 2 and len(failed) < 301,
           f"301 failed requests in {took:.1f} s wrote {len(failed)} warnings (at most 20 a second)")
    tap.ok(any("more like it not logged" in l for l in failed), "a later warning counts those left out", failed[-2:])
    sl.close()
    tap.ok(wl.stop() == 0, "and it stops cleanly")


def second_signal():
    w4 = Worker(BIN, "--threads", "1")
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(w4.endpoint)
    a = np.ones((2500, 2500), np.float64)  # a few seconds of work on two cores
    d.send_multipart([b"", json.dumps({"op": "matrix_multiply", "a": desc(a, 1), "b": desc(a, 2)}).encode(),
                      a.tobytes(), a.tobytes()])
    # the I/O thread takes messages in order: once this ping is answered the product is running
    d.send_multipart([b"", b'{"op":"ping"}'])
    d.setsockopt(zmq.RCVTIMEO, 20000)
    d.recv_multipart()
    w4.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while "shutting down" not in w4.read_log() and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    w4.proc.send_signal(signal.SIGTERM)
    try:
        rc = w4.proc.wait(5)
    except Exception:
        rc = None
    tap.ok(rc is not None and rc != 0 and time.monotonic() - t0 < 2, "a second SIGTERM ends the worker at once", rc)
    Worker.started.remove(w4)
    w4.stop()
    d.close()


def config_file():
    import os
    import subprocess
    import tempfile
    d = tempfile.mkdtemp(prefix="titan-cfg-")
    cfg = os.path.join(d, "worker.conf")
    with open(cfg, "w") as f:
        f.write("# a worker config\nqueue = 7   # comment after a value\nmax-request-bytes = 2M\n"
                "bind = tcp://127.0.0.1:1\nlog-level = warn\n")
    # --bind on the command line replaces the file's binds; the other settings come from the file
    wc = Worker(BIN, "--config", cfg)
    sc = req_socket(wc.endpoint)
    r, _ = call(sc, {"op": "ops"})
    lim = r.get("limits", {})
    tap.ok(lim.get("queue") == 7 and lim.get("max_request_bytes") == 2 << 20
           and lim.get("max_tensor_elements") == (2 << 20) // 4, "--config settings apply", lim)
    sc.close()
    wc.stop()
    with open(cfg, "w") as f:
        f.write("queue = 7\nthreads = many\n")
    p = subprocess.run([BIN, "--config", cfg], capture_output=True, text=True, timeout=20)
    tap.ok(p.returncode == 2 and ":2:" in p.stderr and "threads" in p.stderr, "a bad config line is named", p.stderr)
    with open(cfg, "w") as f:
        f.write("colour = blue\n")
    p = subprocess.run([BIN, "--config", cfg], capture_output=True, text=True, timeout=20)
    tap.ok(p.returncode == 2 and "colour" in p.stderr, "an unknown config key is refused", p.stderr)
    p = subprocess.run([BIN, "--config", os.path.join(d, "missing.conf")], capture_output=True, text=True, timeout=20)
    tap.ok(p.returncode == 2 and "missing.conf" in p.stderr, "a missing config file is reported", p.stderr)


def cli_errors():
    import subprocess
    p = subprocess.run([BIN, "--threads", "abc"], capture_output=True, text=True)
    tap.ok(p.returncode == 2 and "threads" in p.stderr, "bad --threads is a usage error", p.stderr)
    p = subprocess.run([BIN, "--device", "cuda"], capture_output=True, text=True, timeout=20)
    tap.ok(p.returncode != 0 and "cuda" in p.stderr.lower(), "--device cuda gives a clear error", p.stderr)
    p = subprocess.run([BIN, "--help"], capture_output=True, text=True)
    tap.ok(p.returncode == 0 and "--bind" in p.stdout and "--device" in p.stdout, "--help", p.stdout[:200])
    p = subprocess.run([BIN, "--version"], capture_output=True, text=True)
    tap.ok(p.returncode == 0 and "titan-worker" in p.stdout, "--version", p.stdout)


def no_head_of_line():
    """A client's request waits in the queue for the first executor that frees up, never behind one
    executor's product while another frees first: with two executors busy on a long and a medium product, a
    small requests sent then are both answered before the long product (executors that took them ahead, one
    each, would hold one until the long product ends). Ordering, not timing: the long product is 8 times the
    medium one, and the small ones are 32x32."""
    wk = Worker(BIN, "--threads", "2", "--blas-threads", "1", "--queue", "8")
    info = req_socket(wk.endpoint)

    def state():
        r, _ = call(info, {"op": "gpu_info"})
        return r.get("inflight"), r.get("queue_depth")

    def wait_running(n):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if state() == (n, 0):
                return True
            time.sleep(0.005)
        return False

    socks = []
    for name, n, dt in (("long", 1600, np.float64), ("medium", 800, np.float64), ("small1", 32, np.float32),
                        ("small2", 32, np.float32)):
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.connect(wk.endpoint)
        a = np.ones((n, n), dtype=dt)
        d.send_multipart([b"", json.dumps({"op": "matrix_multiply", "id": name, "a": desc(a, 1),
                                           "b": desc(a, 2)}).encode(), a.tobytes(), a.tobytes()])
        socks.append(d)
        if not name.startswith("small"):
            running = wait_running(len(socks))
    order = []
    poller = zmq.Poller()
    for d in socks:
        poller.register(d, zmq.POLLIN)
    deadline = time.monotonic() + 300
    while len(order) < 4 and time.monotonic() < deadline:
        for d, _ in poller.poll(1000):
            parts = d.recv_multipart()
            order.append(json.loads(parts[1]).get("id"))
    for d in socks:
        d.close()
    info.close()
    tap.ok(running and len(order) == 4 and max(order.index("small1"), order.index("small2")) < order.index("long"),
           f"two small requests sent while two executors run a long and a medium product are answered before the "
           f"long one (order {order})", order)
    wk.stop()


for name, fn in [("design forms", design_forms), ("json numerics", json_numerics), ("binary", binary_forms),
                 ("bad inputs", bad_inputs), ("bad frames", bad_frames), ("ids and dealers", ids_and_dealers),
                 ("caps, busy, deadlines", size_cap_busy_deadline), ("logs", logs_and_shutdown), ("log injection", log_injection_and_flood),
                 ("second signal", second_signal), ("config file", config_file), ("cli", cli_errors),
                 ("no head-of-line blocking", no_head_of_line)]:
    tap.run(name, fn)
res = Worker.stop_all()
tap.ok(all(rc == 0 and not san for _, rc, san in res), "every worker exited 0 with no sanitizer report", res)
sys.exit(tap.done())
