#!/usr/bin/python3
"""make_vectors.py - writes the conformance vectors (tests/vectors/*.json, format in README.md).

Expected result frames are computed here with numpy from small integer-valued matrices, whose
products are exact on every backend. Run it from anywhere; it rewrites every NN-*.json file in its
own directory (and removes stale ones), then `--check ENDPOINT` runs them against a live worker.
Usage: make_vectors.py [--check tcp://127.0.0.1:PORT]"""
import base64
import glob
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def b64(arr_or_bytes):
    data = arr_or_bytes if isinstance(arr_or_bytes, bytes) else np.ascontiguousarray(arr_or_bytes).astype(
        arr_or_bytes.dtype.newbyteorder("<")).tobytes()
    return base64.b64encode(data).decode("ascii")


def desc(x, frame):
    return {"dtype": str(x.dtype), "shape": list(x.shape), "frame": frame}


def vec(name, description, request_header=None, header_text=None, frames=(), **reply):
    req = {}
    if header_text is not None:
        req["header_text"] = header_text
    else:
        req["header"] = request_header
    req["frames"] = [b64(f) for f in frames]
    rep = dict(reply)
    rep["frames"] = [b64(f) for f in rep.get("frames", [])]
    return {"name": name, "description": description, "request": req, "reply": rep}


def vectors():
    out = []
    ping_keys = ["status", "gpu", "backend", "version", "protocol"]
    out.append(vec("ping", "Liveness: status ok and the device, backend, version and protocol members.",
                   {"op": "ping"}, header_subset={"status": "ok", "protocol": 1}, header_keys=ping_keys))
    out.append(vec("ping-id-string", "A string id is echoed as \"id\".",
                   {"op": "ping", "id": "p-1"}, header_subset={"status": "ok", "id": "p-1"},
                   header_keys=ping_keys))
    out.append(vec("ping-id-integer", "An integer id is echoed as the same integer.",
                   {"op": "ping", "id": 7}, header_subset={"status": "ok", "id": 7}, header_keys=ping_keys))
    out.append(vec("gpu-info", "The design's gpu_info members (cuda_capability is null on the CPU backend).",
                   {"op": "gpu_info"},
                   header_keys=["name", "total_memory_gb", "multi_processor_count", "cuda_capability",
                                "backend"]))
    out.append(vec("ops", "The ops listing: protocol 1, the device, the operations and the limits.",
                   {"op": "ops", "id": "o1"}, header_subset={"protocol": 1, "id": "o1"},
                   header_keys=["version", "backend", "device", "ops", "limits"]))

    # The design document's JSON form, byte for byte. The worker writes every number as a float
    # ([[17.0],[39.0]]); JSON equality compares numbers by value, so 17.0 == 17.
    a, b = np.array([[1, 2], [3, 4]], np.float32), np.array([[5], [6]], np.float32)
    out.append(vec("matmul-json-design", "The design's JSON-form matrix_multiply; float32 result as JSON.",
                   {"op": "matrix_multiply", "a": a.tolist(), "b": b.tolist()},
                   header={"result": (a @ b).tolist()}))
    a, b = np.array([[1, 2, 3], [-4, 5, 6]], np.float64), np.array([[1], [2], [3]], np.float64)
    out.append(vec("matmul-json-float64-id", "JSON form with dtype float64 and an id.",
                   {"op": "matrix_multiply", "dtype": "float64", "id": "f64", "a": a.tolist(), "b": b.tolist()},
                   header={"result": (a @ b).tolist(), "id": "f64"}))

    a = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    b = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    v = vec("matmul-f32-binary-2x3x2", "Binary float32 operands give a binary float32 result frame.",
            {"op": "matrix_multiply", "a": desc(a, 1), "b": desc(b, 2)}, frames=[a, b],
            header={"result": {"dtype": "float32", "shape": [2, 2], "frame": 1}})
    v["reply"]["frames"] = [b64(a @ b)]
    out.append(v)
    a64, b64_ = a.astype(np.float64), b.astype(np.float64)
    v = vec("matmul-f64-binary-2x3x2", "Binary float64 operands give a binary float64 result frame.",
            {"op": "matrix_multiply", "a": desc(a64, 1), "b": desc(b64_, 2)}, frames=[a64, b64_],
            header={"result": {"dtype": "float64", "shape": [2, 2], "frame": 1}})
    v["reply"]["frames"] = [b64(a64 @ b64_)]
    out.append(v)

    rng = np.random.default_rng(1)
    a = rng.integers(-8, 9, (4, 5)).astype(np.float32)
    b = rng.integers(-8, 9, (5, 3)).astype(np.float32)
    v = vec("matmul-f32-binary-id-reordered",
            "An integer id is echoed on a binary reply; frames may come in any order (b is frame 1).",
            {"op": "matrix_multiply", "id": 42, "a": desc(a, 2), "b": desc(b, 1)}, frames=[b, a],
            header={"result": {"dtype": "float32", "shape": [4, 3], "frame": 1}, "id": 42})
    v["reply"]["frames"] = [b64(a @ b)]
    out.append(v)

    a = np.array([[1, 2, 3]], np.float32)
    b = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    v = vec("matmul-mixed-json-binary", "A JSON operand with a binary one: the result is binary.",
            {"op": "matrix_multiply", "a": a.tolist(), "b": desc(b, 1)}, frames=[b],
            header={"result": {"dtype": "float32", "shape": [1, 2], "frame": 1}})
    v["reply"]["frames"] = [b64(a @ b)]
    out.append(v)

    out.append(vec("unknown-op", "An unknown operation: the exact design text plus code unknown_op.",
                   {"op": "fly"}, header={"error": "Unknown operation: fly", "code": "unknown_op"}))
    out.append(vec("unknown-op-id", "An error reply carries the request's id.",
                   {"op": "fly", "id": "q"}, header={"error": "Unknown operation: fly", "code": "unknown_op",
                                                     "id": "q"}))
    out.append(vec("bad-inner-dims", "Inner dimensions that do not match: bad_request, with the id.",
                   {"op": "matrix_multiply", "id": "e1", "a": [[1, 2]], "b": [[1, 2]]},
                   header_subset={"code": "bad_request", "id": "e1"}, header_keys=["error"]))
    a = np.zeros((2, 3), np.float32)
    out.append(vec("bad-frame-size", "A frame whose size does not match its descriptor's shape: bad_request.",
                   {"op": "matrix_multiply", "a": {"dtype": "float32", "shape": [4, 4], "frame": 1},
                    "b": {"dtype": "float32", "shape": [4, 1], "frame": 2}},
                   frames=[a, np.zeros((4, 1), np.float32)],
                   header_subset={"code": "bad_request"}, header_keys=["error"]))
    out.append(vec("bad-header-not-json", "A header that is not valid JSON (sent verbatim): bad_request, no id.",
                   header_text='{"op":"ping","id":"x"', header_subset={"code": "bad_request"},
                   header_keys=["error"], header_absent=["id"]))
    out.append(vec("bad-missing-op", "A header without \"op\": bad_request.",
                   {"a": 1}, header_subset={"code": "bad_request"}, header_keys=["error"]))
    out.append(vec("inference-unsupported", "inference is reserved: unsupported, never a made-up result.",
                   {"op": "inference", "model": "x", "input": [1, 2], "id": 3},
                   header_subset={"code": "unsupported", "id": 3}, header_keys=["error"]))
    for i, v in enumerate(out, 1):
        v["_file"] = f"{i:02d}-{v['name']}.json"
    return out


def check_reply(vector, header, frames):
    """Compares a parsed reply header and its frames (bytes) with a vector; returns a list of problems."""
    rep, bad = vector["reply"], []
    if "header" in rep and header != rep["header"]:
        bad.append(f"header {header!r} != {rep['header']!r}")
    for k, want in rep.get("header_subset", {}).items():
        if k not in header or header[k] != want:
            bad.append(f"header[{k!r}] is {header.get(k, '<absent>')!r}, want {want!r}")
    for k in rep.get("header_keys", []):
        if k not in header:
            bad.append(f"header lacks {k!r}")
    for k in rep.get("header_absent", []):
        if k in header:
            bad.append(f"header has {k!r}, which it must not")
    want = [base64.b64decode(f) for f in rep.get("frames", [])]
    if list(frames) != want:
        bad.append(f"frames {[f.hex() for f in frames]} != {[f.hex() for f in want]}")
    return bad


def load(directory=HERE):
    """Every vector in `directory`, sorted by file name."""
    out = []
    for path in sorted(glob.glob(os.path.join(directory, "[0-9][0-9]-*.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return out


def request_parts(vector):
    """The request body as (header bytes, [frame bytes])."""
    req = vector["request"]
    text = req["header_text"] if "header_text" in req else json.dumps(req["header"], separators=(",", ":"))
    return text.encode(), [base64.b64decode(f) for f in req.get("frames", [])]


def write():
    for old in glob.glob(os.path.join(HERE, "[0-9][0-9]-*.json")):
        os.remove(old)
    for v in vectors():
        path = os.path.join(HERE, v.pop("_file"))
        with open(path, "w") as f:
            json.dump(v, f, indent=2)
            f.write("\n")
        print("wrote", os.path.relpath(path))


def check(endpoint):
    import zmq
    ctx, failed = zmq.Context(), 0
    for v in load():
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        hdr, frames = request_parts(v)
        s.send_multipart([b"", hdr, *frames])
        if not s.poll(5000):
            bad = ["no reply in 5 s"]
        else:
            parts = s.recv_multipart()
            bad = check_reply(v, json.loads(parts[1]), parts[2:])
        s.close()
        failed += bool(bad)
        print(("FAIL " if bad else "ok   ") + v["name"] + "".join("\n     " + b for b in bad))
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(check(sys.argv[2]))
    if len(sys.argv) != 1:
        sys.exit(__doc__)
    write()
