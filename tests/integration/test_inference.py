#!/usr/bin/python3
"""test_inference.py - real TorchScript inference through titan-worker --models: tiny models made
with torch.jit at test time, outputs compared with PyTorch's own, JSON and binary forms, the model
ops, LRU eviction, concurrency, every bad input and run-time model errors (their cause reaches the reply
and the log). Also, in every build: --models without a runner refuses to start.
Usage: test_inference.py PATH/TO/titan-worker   (prints TAP)"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import urllib.request

from workerproc import Tap, Worker

BIN = sys.argv[1]
ver = subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout
tap = Tap()


def refused(args, env):
    """Runs a worker that must not start: (exit status, its log)."""
    p = subprocess.run([BIN, "--bind", "tcp://127.0.0.1:*", *args], capture_output=True, text=True, timeout=30,
                       env=env)
    return p.returncode, p.stdout + p.stderr


def t_no_runner():
    """A TorchScript manifest without the runner refuses to start (exit status 1), saying which runner is missing
    and how to build it, never a quiet info line and a worker that serves nothing. A build with the runner is made
    to miss it through $TITAN_TORCH_RUNNER. --models with no TorchScript manifest needs no runner (encoder models
    are built in) and starts without loading libtorch."""
    empty = tempfile.mkdtemp(prefix="titan-models-empty-")
    w = Worker(BIN, "--models", empty, env=dict(os.environ, TITAN_TORCH_RUNNER="/nonexistent-titan/runner.so"))
    log = w.read_log()
    w.stop()
    tap.ok(" info: serving 0 model(s)" in log and " error" not in log, "--models with no TorchScript manifest starts without the runner", log)
    ts = tempfile.mkdtemp(prefix="titan-models-ts-")
    with open(os.path.join(ts, "m.model.json"), "w") as f:
        json.dump({"name": "m", "runner": "torchscript", "file": "m.pt",
                   "inputs": [{"name": "x", "dtype": "float32", "shape": [-1]}],
                   "outputs": [{"name": "y", "dtype": "float32", "shape": [-1]}]}, f)
    with open(os.path.join(ts, "m.pt"), "wb") as f:
        f.write(b"\0")
    env = dict(os.environ)
    if "torchscript" in ver:
        env["TITAN_TORCH_RUNNER"] = "/nonexistent-titan/titan-runner-torchscript.so"
    rc, log = refused(["--models", ts], env)
    tap.ok(rc == 1 and " error: --models" in log and "TorchScript runner" in log and "-Dtorch=enabled" in log
           and "libtorch-dev" in log and " info: serving" not in log,
           "a TorchScript manifest without the TorchScript runner: exit 1, an error naming the runner and how to "
           "build it", (rc, log))
    if "torchscript" in ver:
        tap.ok("TITAN_TORCH_RUNNER=/nonexistent-titan/titan-runner-torchscript.so" in log,
               "the error names the runner module that could not be loaded", log)
    with open(os.path.join(empty, "m.model.json"), "w") as f:
        json.dump({"name": "m", "runner": "onnx", "file": "m.onnx",
                   "inputs": [{"name": "x", "dtype": "float32", "shape": [-1]}],
                   "outputs": [{"name": "y", "dtype": "float32", "shape": [-1]}]}, f)
    with open(os.path.join(empty, "m.onnx"), "wb") as f:
        f.write(b"\0")
    rc, log = refused(["--models", empty], dict(os.environ))
    tap.ok(rc == 1 and " error: " in log and "runner 'onnx'" in log,
           "a manifest naming a runner the worker lacks: exit 1, an error naming it", (rc, log))


tap.run("no runner", t_no_runner)
# make test installs libtorch-dev and python3-torch: without them this test fails, it never skips.
if "torchscript" not in ver:
    tap.ok(False, "titan-worker has the TorchScript runner (install libtorch-dev, then configure afresh: "
           "scripts/configure.sh, or meson setup --wipe; make test does both)", ver)
    sys.exit(tap.done())
try:
    import numpy as np
    import torch
    import zmq
except ImportError as e:
    tap.ok(False, f"python3-torch, python3-numpy and python3-zmq are importable by /usr/bin/python3 "
           f"(make test installs them): {e}")
    sys.exit(tap.done())

ctx = zmq.Context()
torch.manual_seed(0)


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(4, 16)
        self.l2 = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.c(x)).flatten(1))


class Two(torch.nn.Module):
    def forward(self, a, b):
        return a + b, a * b.sum()


def manifest(d, name, inputs, outputs, file=None):
    with open(os.path.join(d, name + ".model.json"), "w") as f:
        json.dump({"name": name, "runner": "torchscript", "file": file or name + ".pt", "inputs": inputs,
                   "outputs": outputs, "device": "cpu"}, f)


def spec(name, shape, dtype="float32"):
    return {"name": name, "dtype": dtype, "shape": shape}


mdir = tempfile.mkdtemp(prefix="titan-models-")
mlp, cnn, two = MLP().eval(), CNN().eval(), Two().eval()
torch.jit.script(mlp).save(os.path.join(mdir, "mlp.pt"))
torch.jit.trace(cnn, torch.zeros(1, 1, 8, 8)).save(os.path.join(mdir, "cnn.pt"))
torch.jit.script(two).save(os.path.join(mdir, "two.pt"))
manifest(mdir, "mlp", [spec("x", [-1, 4])], [spec("y", [-1, 3])])
manifest(mdir, "cnn", [spec("img", [-1, 1, 8, 8])], [spec("logits", [-1, 2])])
manifest(mdir, "two", [spec("a", [-1, 3]), spec("b", [-1, 3])], [spec("sum", [-1, 3]), spec("scaled", [-1, 3])])
with open(os.path.join(mdir, "broken.pt"), "wb") as f:
    f.write(b"this is not a TorchScript archive" * 10)
manifest(mdir, "broken", [spec("x", [-1, 4])], [spec("y", [-1, 3])])


def sock(ep):
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 60000)
    s.connect(ep)
    return s


def call(s, header, *frames):
    s.send_multipart([json.dumps(header).encode(), *frames])
    parts = s.recv_multipart()
    return json.loads(parts[0]), parts[1:]


def desc(arr, frame):
    return {"dtype": str(arr.dtype), "shape": list(arr.shape), "frame": frame}


def close(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = want.detach().numpy().astype(np.float64)
    return got.shape == want.shape and np.allclose(got, want, rtol=1e-4, atol=1e-5)


w = Worker(BIN, "--models", mdir, "--threads", "4")
s = sock(w.endpoint)
x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
img = np.random.default_rng(2).standard_normal((3, 1, 8, 8)).astype(np.float32)
a = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
b = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
with torch.no_grad():
    want_mlp = mlp(torch.from_numpy(x))
    want_cnn = cnn(torch.from_numpy(img))
    want_two = two(torch.from_numpy(a), torch.from_numpy(b))


def t_list():
    r, _ = call(s, {"op": "list_models"})
    byname = {m["name"]: m for m in r.get("models", [])}
    tap.ok(set(byname) == {"mlp", "cnn", "two", "broken"}, "list_models names every manifest", r)
    m = byname.get("mlp", {})
    tap.ok(m.get("runner") == "torchscript" and m.get("loaded") is False and m.get("last_used") is None
           and m.get("inputs") == [spec("x", [-1, 4])] and m.get("outputs") == [spec("y", [-1, 3])],
           "list_models: runner, loaded=false, inputs, outputs, last_used", m)
    r, _ = call(s, {"op": "ops"})
    inf = [o for o in r.get("ops", []) if o["name"] == "inference"]
    tap.ok(inf and inf[0]["supported"] and "libtorch" in (r.get("runner") or ""), "ops: inference supported", r)


def t_json():
    r, _ = call(s, {"op": "inference", "model": "mlp", "inputs": [x.tolist()], "id": 7})
    tap.ok(r.get("id") == 7 and close(r["outputs"][0], want_mlp), "MLP, JSON form, matches PyTorch", r)
    r, _ = call(s, {"op": "inference", "model": "cnn", "inputs": [img.tolist()]})
    tap.ok("outputs" in r and close(r["outputs"][0], want_cnn), "CNN, JSON form, matches PyTorch", r)
    r, _ = call(s, {"op": "inference", "model": "two", "inputs": [a.tolist(), b.tolist()]})
    tap.ok("outputs" in r and len(r["outputs"]) == 2 and close(r["outputs"][0], want_two[0])
           and close(r["outputs"][1], want_two[1]), "two inputs, two outputs, JSON", r)
    r, _ = call(s, {"op": "inference", "model": "mlp", "input": x.tolist()})
    tap.ok("output" in r and close(r["output"], want_mlp), "the design's single-input form answers output", r)


def t_binary():
    r, fr = call(s, {"op": "inference", "model": "mlp", "inputs": [desc(x, 1)]}, x.tobytes())
    o = r.get("outputs", [{}])[0]
    got = np.frombuffer(fr[0], dtype=np.float32).reshape(o["shape"]) if fr else None
    tap.ok(o.get("dtype") == "float32" and o.get("frame") == 1 and o.get("name") == "y" and got is not None
           and close(got, want_mlp), "MLP, binary in, binary out, matches PyTorch", r)
    r, fr = call(s, {"op": "inference", "model": "two", "inputs": [desc(a, 1), b.tolist()]}, a.tobytes())
    ok = len(fr) == 2 and all(close(np.frombuffer(fr[i], dtype=np.float32).reshape(r["outputs"][i]["shape"]),
                                    want_two[i]) for i in range(2))
    tap.ok(ok, "mixed binary and JSON inputs: two binary outputs", r)
    r, fr = call(s, {"op": "inference", "model": "cnn", "input": desc(img, 1)}, img.tobytes())
    tap.ok(fr and close(np.frombuffer(fr[0], dtype=np.float32).reshape(r["output"]["shape"]), want_cnn),
           "single-input form with a binary frame", r)


def t_bad():
    cases = [
        ({"op": "inference", "model": "nope", "inputs": [x.tolist()]}, (), "bad_request", "unknown model"),
        ({"op": "inference", "model": "mlp", "inputs": [desc(x.astype(np.float64), 1)]},
         (x.astype(np.float64).tobytes(),), "bad_request", "wrong dtype"),
        ({"op": "inference", "model": "mlp", "inputs": [np.zeros((2, 5)).tolist()]}, (), "bad_request",
         "wrong shape"),
        ({"op": "inference", "model": "mlp", "inputs": [np.zeros(4).tolist()]}, (), "bad_request", "wrong rank"),
        ({"op": "inference", "model": "two", "inputs": [a.tolist()]}, (), "bad_request", "wrong number of inputs"),
        ({"op": "inference", "model": "mlp", "inputs": []}, (), "bad_request", "no inputs"),
        ({"op": "inference", "model": "mlp"}, (), "bad_request", "neither inputs nor input"),
        ({"op": "inference", "inputs": [x.tolist()]}, (), "bad_request", "no model"),
        ({"op": "inference", "model": "broken", "inputs": [x.tolist()]}, (), "device_error", "corrupt model file"),
        ({"op": "load_model", "model": "broken"}, (), "device_error", "load_model of a corrupt file"),
        ({"op": "load_model", "model": "nope"}, (), "bad_request", "load_model of an unknown model"),
    ]
    for hdr, frames, code, what in cases:
        r, _ = call(s, hdr, *frames)
        tap.ok(r.get("code") == code and r.get("error"), f"{what}: {code}", r)
    r, _ = call(s, {"op": "ping"})
    tap.ok(r.get("status") == "ok", "the worker still answers after the bad inputs", r)


def t_bad_reads_right():
    """A mismatch says what the manifest expects first, then what came."""
    cases = [
        ({"op": "inference", "model": "mlp", "inputs": [np.zeros((2, 5)).tolist()]}, (),
         "expected shape [-1,4] (-1: any size)", "got [2,5]", "a wrong dimension"),
        ({"op": "inference", "model": "cnn", "inputs": [np.zeros((5, 64)).tolist()]}, (),
         "expected shape [-1,1,8,8] (-1: any size)", "got [5,64]", "a wrong rank"),
        ({"op": "inference", "model": "mlp", "inputs": [desc(x.astype(np.float64), 1)]},
         (x.astype(np.float64).tobytes(),), "expected dtype float32", "got float64", "a wrong dtype"),
    ]
    for hdr, frames, want, got, what in cases:
        r, _ = call(s, hdr, *frames)
        e = r.get("error", "")
        tap.ok(r.get("code") == "bad_request" and want in e and got in e and e.index(want) < e.index(got),
               f"{what}: '{want}', then '{got}'", r)


def t_load_unload():
    r, _ = call(s, {"op": "unload_model", "model": "mlp"})
    tap.ok(r.get("status") == "ok" and r.get("loaded") is False, "unload_model", r)
    r, _ = call(s, {"op": "list_models"})
    m = [m for m in r["models"] if m["name"] == "mlp"][0]
    tap.ok(m["loaded"] is False and isinstance(m["last_used"], float), "unloaded: loaded=false, last_used kept", m)
    r, _ = call(s, {"op": "load_model", "model": "mlp"})
    r2, _ = call(s, {"op": "list_models"})
    m = [m for m in r2["models"] if m["name"] == "mlp"][0]
    tap.ok(r.get("loaded") is True and m["loaded"] is True, "load_model", (r, m))


def t_concurrent():
    errors = []

    def client(i):
        c = sock(w.endpoint)
        try:
            for _ in range(15):
                if i % 2:
                    r, fr = call(c, {"op": "inference", "model": "mlp", "inputs": [desc(x, 1)]}, x.tobytes())
                    if not fr or not close(np.frombuffer(fr[0], dtype=np.float32).reshape(5, 3), want_mlp):
                        errors.append(r)
                else:
                    r, _ = call(c, {"op": "inference", "model": "cnn", "inputs": [img.tolist()]})
                    if "outputs" not in r or not close(r["outputs"][0], want_cnn):
                        errors.append(r)
        finally:
            c.close()

    ts = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    tap.ok(not errors, "6 sockets x 15 inferences on two models at once, all correct", errors[:3])


tap.run("list", t_list)
tap.run("json", t_json)
tap.run("binary", t_binary)
tap.run("bad", t_bad)
tap.run("bad reads right", t_bad_reads_right)
tap.run("load/unload", t_load_unload)
tap.run("concurrent", t_concurrent)


def t_lru():
    w2 = Worker(BIN, "--models", mdir, "--max-models", "1")
    c = sock(w2.endpoint)
    r1, _ = call(c, {"op": "inference", "model": "mlp", "inputs": [x.tolist()]})
    r2, _ = call(c, {"op": "inference", "model": "cnn", "inputs": [img.tolist()]})
    r, _ = call(c, {"op": "list_models"})
    loaded = {m["name"]: m["loaded"] for m in r["models"]}
    tap.ok(close(r1["outputs"][0], want_mlp) and close(r2["outputs"][0], want_cnn)
           and loaded == {"mlp": False, "cnn": True, "two": False, "broken": False},
           "--max-models 1: the least recently used model is unloaded", (loaded, r1, r2))
    r3, _ = call(c, {"op": "inference", "model": "mlp", "inputs": [x.tolist()]})
    tap.ok(close(r3["outputs"][0], want_mlp), "an evicted model loads again on use", r3)
    c.close()
    w2.stop()
    log = w2.read_log() if not w2.log.closed else open(w2.logpath).read()
    tap.ok("unloading model 'mlp' (least recently used)" in log, "the eviction is logged", log[-2000:])


def t_no_models():
    w3 = Worker(BIN)
    c = sock(w3.endpoint)
    r, _ = call(c, {"op": "inference", "model": "mlp", "inputs": [x.tolist()]})
    tap.ok(r.get("code") == "unsupported" and "--models" in r.get("error", ""), "without --models: unsupported", r)
    r, _ = call(c, {"op": "list_models"})
    tap.ok(r.get("code") == "unsupported", "list_models without --models: unsupported", r)
    c.close()
    w3.stop()


def t_bad_dir():
    p = subprocess.run([BIN, "--bind", "tcp://127.0.0.1:*", "--models", "/nonexistent-titan-models"],
                       capture_output=True, text=True, timeout=30)
    tap.ok(p.returncode != 0 and "/nonexistent-titan-models" in p.stderr, "--models on a missing directory fails",
           p.stderr)


class Embed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.e = torch.nn.Embedding(10, 8)

    def forward(self, ids):
        return self.e(ids.long())


class Raises(torch.nn.Module):
    def forward(self, x):
        if bool(x.sum() > 0):
            msg = "the sum is positive;"
            for _ in range(60):
                msg = msg + " this message is very long"
            raise ValueError(msg)
        return x


class Masked(torch.nn.Module):
    """Masked logits (-inf where the mask is 0) and log(x): non-finite values a real model answers."""

    def forward(self, logits, mask, x):
        return logits.masked_fill(mask == 0, float("-inf")), torch.log(x)


def t_non_finite():
    """No value is lost: -inf masked logits, NaN and -inf from log, the largest float32 and a denormal
    come back as the PROTOCOL's tokens and exact numbers in JSON, and as the same bits in binary form."""
    d = tempfile.mkdtemp(prefix="titan-models-nonfinite-")
    torch.jit.script(Masked()).save(os.path.join(d, "masked.pt"))
    manifest(d, "masked", [spec("logits", [-1, 6]), spec("mask", [-1, 6]), spec("x", [-1])],
             [spec("masked", [-1, 6]), spec("log", [-1])])
    w5 = Worker(BIN, "--models", d)
    c = sock(w5.endpoint)
    logits = np.array([[3.4028235e38, -1.5, 1e-45, 0.1, 2.0, -3.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], np.float32)
    mask = np.array([[1, 1, 1, 0, 1, 0], [0, 1, 1, 1, 1, 0]], np.float32)
    xs = np.array([0.1, 0, -1, 1, 2], np.float32)
    with torch.no_grad():
        want = [t.numpy() for t in Masked()(torch.from_numpy(logits), torch.from_numpy(mask), torch.from_numpy(xs))]
    c.send_multipart([json.dumps({"op": "inference", "model": "masked",
                                  "inputs": [logits.tolist(), mask.tolist(), xs.tolist()]}).encode()])
    text = c.recv_multipart()[0].decode()
    r = json.loads(text)
    outs = r.get("outputs", [])
    got = [np.asarray(o, np.float32) for o in outs]
    tap.ok(len(got) == 2 and got[0].shape == (2, 6) and got[1].shape == (5,)
           and all(np.array_equal(g, w, equal_nan=True) for g, w in zip(got, want)),
           "JSON: a [2,6] -inf masked output stays [2,6], log of 5 values answers 5, all equal to PyTorch's", text)
    tap.ok("-Infinity" in text and "NaN" in text and "3.4028235e38" in text and "1e-45" in text
           and "-2.3025851," in text, "JSON: the PROTOCOL's tokens, the largest float32 and a denormal in shortest text",
           text)
    r, fr = call(c, {"op": "inference", "model": "masked",
                     "inputs": [desc(logits, 1), desc(mask, 2), desc(xs, 3)]},
                 logits.tobytes(), mask.tobytes(), xs.tobytes())
    ok = len(fr) == 2 and all(np.frombuffer(fr[i], np.float32).reshape(r["outputs"][i]["shape"]).tobytes()
                              == want[i].tobytes() for i in range(2))
    tap.ok(ok, "binary: the same bits as PyTorch's, -inf and NaN included", r)
    c.close()
    w5.stop()


def t_runtime_errors():
    """A model that fails while running: the reply and the log keep the cause (the end of the TorchScript
    traceback), not the interpreter's first line alone; the reply stays bounded."""
    d = tempfile.mkdtemp(prefix="titan-models-fail-")
    embed = Embed().eval()
    torch.jit.script(embed).save(os.path.join(d, "embed.pt"))
    torch.jit.script(Raises()).save(os.path.join(d, "raises.pt"))
    manifest(d, "embed", [spec("ids", [-1])], [spec("vectors", [-1, 8])])
    manifest(d, "raises", [spec("x", [-1])], [spec("y", [-1])])
    w4 = Worker(BIN, "--models", d)
    c = sock(w4.endpoint)
    ids = np.array([1, 3, 9], dtype=np.float32)
    r, _ = call(c, {"op": "inference", "model": "embed", "input": ids.tolist()})
    with torch.no_grad():
        tap.ok("output" in r and close(r["output"], embed(torch.from_numpy(ids))), "embedding, ids in range", r)
    r, _ = call(c, {"op": "inference", "model": "embed", "input": [1, 12]})
    e = r.get("error", "")
    tap.ok(r.get("code") == "device_error" and e.startswith("model 'embed' failed: ") and "index out of range" in e,
           "an out-of-range token id: device_error with the cause (index out of range)", r)
    r, _ = call(c, {"op": "inference", "model": "raises", "input": [1, 2]})
    e = r.get("error", "")
    tap.ok(r.get("code") == "device_error" and "ValueError: the sum is positive" in e and len(e) < 512,
           "a long exception: its start kept, the reply bounded", (len(e), r))
    r, _ = call(c, {"op": "ping"})
    tap.ok(r.get("status") == "ok", "the worker still answers after the failures", r)
    c.close()
    w4.stop()
    log = open(w4.logpath).read()
    tap.ok("model 'embed' failed: " in log and "index out of range" in log,
           "the worker's log has the cause too", log[-3000:])


class RowSum(torch.nn.Module):
    """Not batch-major: one row whatever the batch, for the batching check."""

    def forward(self, x):
        return x.sum(0, keepdim=True)


def t_batching():
    """Dynamic batching of TorchScript inference (PROTOCOL.md 9.1): a manifest with max_batch stacks concurrent
    requests along the first dimension; each result equals the request run alone within 1e-6, in JSON and binary
    forms, requests whose other dimensions differ run apart, the batches show in /metrics; a model that is not
    batch-major answers device_error saying so; max_batch with a fixed first dimension stops the start."""
    bdir = tempfile.mkdtemp(prefix="titan-models-batch-")
    torch.jit.script(mlp).save(os.path.join(bdir, "mlp.pt"))
    torch.jit.script(cnn).save(os.path.join(bdir, "cnn.pt"))
    torch.jit.script(RowSum()).save(os.path.join(bdir, "rowsum.pt"))
    for name, ins, outs in (("mlp", [spec("x", [-1, 4])], [spec("y", [-1, 3])]),
                            ("cnn", [spec("img", [-1, 1, -1, -1])], [spec("logits", [-1, 2])]),
                            ("rowsum", [spec("x", [-1, 4])], [spec("y", [-1, 4])])):
        with open(os.path.join(bdir, name + ".model.json"), "w") as f:
            json.dump({"name": name, "runner": "torchscript", "file": name + ".pt", "inputs": ins, "outputs": outs,
                       "device": "cpu", "max_batch": 32, "max_queue_delay_us": 20000}, f)
    wb = Worker(BIN, "--models", bdir, "--threads", "2", "--http", "127.0.0.1:0")
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal((1 + i % 4, 4)).astype(np.float32) for i in range(24)]
    got = [None] * len(xs)

    def client(i):
        c = sock(wb.endpoint)
        if i % 2:
            r, fr = call(c, {"op": "inference", "model": "mlp", "inputs": [desc(xs[i], 1)]}, xs[i].tobytes())
            got[i] = np.frombuffer(fr[0], dtype=np.float32).reshape(r["outputs"][0]["shape"]) if fr else r
        else:
            r, _ = call(c, {"op": "inference", "model": "mlp", "input": xs[i].tolist()})
            got[i] = np.asarray(r.get("output"), dtype=np.float32) if "output" in r else r
        c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with torch.no_grad():
        want = [mlp(torch.from_numpy(x)).numpy() for x in xs]
    worst = max((float(np.abs(g - w_).max()) if isinstance(g, np.ndarray) and g.shape == w_.shape else 1e9)
                for g, w_ in zip(got, want))
    tap.ok(worst <= 1e-6, f"24 concurrent requests of 1 to 4 rows: each equals the model run alone within 1e-6 "
           f"(worst {worst:.2g}), JSON and binary alike", got[:2])
    imgs = [rng.standard_normal((1, 1, 8 if i % 2 else 10, 8 if i % 2 else 10)).astype(np.float32) for i in range(8)]
    gi = [None] * len(imgs)

    def cclient(i):
        c = sock(wb.endpoint)
        r, fr = call(c, {"op": "inference", "model": "cnn", "inputs": [desc(imgs[i], 1)]}, imgs[i].tobytes())
        gi[i] = r if not fr else np.frombuffer(fr[0], dtype=np.float32)
        c.close()

    threads = [threading.Thread(target=cclient, args=(i,)) for i in range(len(imgs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tap.ok(all(isinstance(g, np.ndarray) for g in gi[1::2]) and all(isinstance(g, dict) for g in gi[0::2]),
           "requests whose other dimensions differ run apart: 8x8 images answer, 10x10 fail alone (the model's "
           "own shape error)", gi[:2])
    base = next(x for x in open(wb.epfile).read().split() if x.startswith("http://"))
    text = urllib.request.urlopen(base.rstrip("/") + "/metrics", timeout=10).read().decode()
    count = int(next(x for x in text.splitlines() if x.startswith("titan_batch_size_count")).split()[-1])
    total = int(next(x for x in text.splitlines() if x.startswith("titan_batch_size_sum")).split()[-1])
    tap.ok(total > count > 0, f"titan_batch_size: {total} requests in {count} batches", text[-1500:])
    c = sock(wb.endpoint)
    # rowsum answers one row for a batch of n: alone (one request of one row) it is right, stacked it is not.
    reqs = [{"op": "inference", "model": "rowsum", "input": [[1, 2, 3, 4]] * 2}]
    r, _ = call(c, reqs[0])
    tap.ok(r.get("code") == "device_error" and "batch-major" in r.get("error", "") and "max_batch" in r.get("error", ""),
           "a model whose output is not batch-major: device_error saying to set max_batch to 1", r)
    c.close()
    wb.stop()
    with open(os.path.join(bdir, "mlp.model.json"), "w") as f:
        json.dump({"name": "mlp", "runner": "torchscript", "file": "mlp.pt", "inputs": [spec("x", [5, 4])],
                   "outputs": [spec("y", [-1, 3])], "max_batch": 4}, f)
    rc, log = refused(["--models", bdir], dict(os.environ))
    tap.ok(rc == 1 and "max_batch" in log and "'x'" in log, "max_batch with a fixed first dimension stops the start",
           (rc, log))


tap.run("non-finite outputs", t_non_finite)
tap.run("run-time errors", t_runtime_errors)
tap.run("batching", t_batching)
tap.run("lru", t_lru)
tap.run("no models", t_no_models)
tap.run("bad dir", t_bad_dir)
s.close()
for ep, rc, san in Worker.stop_all():
    tap.ok(rc == 0 and not san, f"worker {ep} exited cleanly (exit 0, no sanitizer report)", rc)
ctx.term()
sys.exit(tap.done())
