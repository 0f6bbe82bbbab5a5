"""test_client.py - titan_client against real titan-workers: every conformance vector, the typed calls
against numpy, id echo, busy, timeouts and retries, a restart on the same port, CURVE, and close()."""
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

import make_vectors
from titan_client import (Reply, TitanBadRequest, TitanBusy, TitanClient, TitanError, TitanTimeout,
                          TitanUnknownOp, TitanUnsupported, __version__)

VECTORS = make_vectors.load()


def test_vectors_found():
    assert len(VECTORS) >= 12


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(worker, vector):
    req = vector["request"]
    header = req["header_text"] if "header_text" in req else req["header"]
    frames = [base64.b64decode(f) for f in req.get("frames", [])]
    with TitanClient(worker.endpoint, timeout_ms=5000, retries=0) as c:
        r = c.request(header, frames)
    assert isinstance(r, Reply)
    assert make_vectors.check_reply(vector, r.header, r.frames) == []


def test_version():
    assert __version__ == "0.1.0"


def test_ping_and_gpu_info(worker):
    with TitanClient(worker.endpoint) as c:
        p = c.ping()
        assert p["status"] == "ok" and p["protocol"] == 1 and isinstance(p["gpu"], str)
        g = c.gpu_info()
        for k in ("name", "total_memory_gb", "multi_processor_count", "cuda_capability"):
            assert k in g
        assert c.ops()["protocol"] == 1
        assert c.last_retries == 0


def test_matrix_multiply_json(worker):
    with TitanClient(worker.endpoint) as c:
        assert c.matrix_multiply([[1, 2], [3, 4]], [[5], [6]]) == [[17.0], [39.0]]
        rng = np.random.default_rng(2)
        a, b = rng.random((5, 7)), rng.random((7, 3))
        got = np.array(c.matrix_multiply(a.tolist(), b.tolist(), dtype="float64"))
        np.testing.assert_allclose(got, a @ b, rtol=1e-12)
        got32 = np.array(c.matrix_multiply(a, b), dtype=np.float32)
        np.testing.assert_allclose(got32, a.astype(np.float32) @ b.astype(np.float32), rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_binary(worker, dtype):
    rng = np.random.default_rng(3)
    a = rng.integers(-50, 50, (64, 33)).astype(dtype)
    b = rng.integers(-50, 50, (33, 17)).astype(dtype)
    with TitanClient(worker.endpoint) as c:
        got = c.matmul(a, b)
        assert got.dtype == dtype and got.shape == (64, 17)
        assert np.array_equal(got, a @ b)
        # Fortran order, big-endian and non-contiguous inputs are converted before sending.
        af = np.asfortranarray(a).astype(np.dtype(dtype).newbyteorder(">"))
        assert np.array_equal(c.matmul(af, b.astype(af.dtype)), a @ b)
        big = rng.random((300, 200)).astype(dtype)
        np.testing.assert_allclose(c.matmul(big, big.T[:, :50].copy()), big @ big.T[:, :50],
                                   rtol=1e-4 if dtype == np.float32 else 1e-12)


def test_matmul_validates(worker):
    with TitanClient(worker.endpoint) as c:
        with pytest.raises(ValueError):
            c.matmul(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32))
        with pytest.raises(ValueError):
            c.matmul(np.ones((2, 3), np.float32), np.ones((3, 2), np.float64))
        with pytest.raises(ValueError):
            c.matmul(np.ones((2, 3), np.int32), np.ones((3, 2), np.int32))
        with pytest.raises(ValueError):
            c.matmul(np.ones(3, np.float32), np.ones((3, 2), np.float32))


def test_errors_and_id(worker):
    with TitanClient(worker.endpoint) as c:
        assert c.request({"op": "ping", "id": "abc"}).header["id"] == "abc"
        assert c.request({"op": "ping", "id": 9}).header["id"] == 9
        r = c.request({"op": "matrix_multiply", "a": [[1]], "b": {"dtype": "float32", "shape": [1, 1],
                                                                     "frame": 1}, "id": "bin"},
                      [np.array([[3]], np.float32)])
        assert r.header["id"] == "bin" and np.frombuffer(r.frames[0], "<f4")[0] == 3.0
        with pytest.raises(TitanUnknownOp) as e:
            c.call({"op": "fly"})
        assert e.value.code == "unknown_op" and e.value.message == "Unknown operation: fly"
        with pytest.raises(TitanBadRequest):
            c.matrix_multiply([[1, 2]], [[1, 2]])
        with pytest.raises(TitanUnsupported):
            c.call({"op": "inference", "model": "x", "input": [1]})
        assert isinstance(TitanBusy("busy", "x"), TitanError) and isinstance(TitanTimeout("t", "x"), TitanError)


def test_busy(start_worker):
    w = start_worker("--threads", "1", "--queue", "0", "--blas-threads", "1")
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(w.endpoint)
    n = 2500  # about 31 GFLOP on one BLAS thread: seconds on a CPU, long enough to hold the executor
    a = np.ones((n, n), np.float32)
    desc = {"dtype": "float32", "shape": [n, n]}
    long_msg = [b"", json.dumps({"op": "matrix_multiply", "id": "long", "a": {**desc, "frame": 1},
                                 "b": {**desc, "frame": 2}}).encode(), a, a]
    d.send_multipart(long_msg)
    try:
        with TitanClient(w.endpoint, timeout_ms=5000, retries=0) as c:
            deadline = time.monotonic() + 30
            while True:  # wait until the long product holds the only executor
                try:
                    c.matmul(np.ones((1, 1), np.float32), np.ones((1, 1), np.float32))
                except TitanBusy as e:
                    assert e.code == "busy" and "error" in e.reply
                    break
                if d.poll(0):  # it finished before a probe met it (a loaded machine): send it again
                    d.recv_multipart()
                    d.send_multipart(long_msg)
                    time.sleep(0.02)
                assert time.monotonic() < deadline, "never answered busy"
        assert d.poll(120000), "the long product never finished"
    finally:
        d.close(0)
        ctx.term()


def test_timeout_dead_endpoint():
    s = zmq.Context.instance().socket(zmq.ROUTER)  # find a free port, then leave it closed
    port = s.bind_to_random_port("tcp://127.0.0.1")
    s.close(0)
    with TitanClient(f"tcp://127.0.0.1:{port}", timeout_ms=200, retries=2) as c:
        t0 = time.monotonic()
        with pytest.raises(TitanTimeout) as e:
            c.ping()
        elapsed = time.monotonic() - t0
    assert e.value.code == "timeout" and "3 attempt(s)" in e.value.message
    assert 0.55 <= elapsed < 3.0, elapsed
    assert c.last_retries == 2


def test_restart_between_retries(worker_bin):
    from workerproc import Worker
    w = Worker(worker_bin)
    ep = w.endpoint
    w.stop(signal.SIGKILL)
    restarted = []

    def restart():
        time.sleep(0.8)
        restarted.append(Worker(worker_bin, "--bind", ep))
    t = threading.Thread(target=restart)
    t.start()
    try:
        with TitanClient(ep, timeout_ms=400, retries=20) as c:
            assert c.ping()["status"] == "ok"
            assert c.last_retries >= 1
    finally:
        t.join()
        for r in restarted:
            assert r.stop() == 0


def test_stale_reply_is_skipped():
    """A fake worker that first answers with another request's id: the client waits for its own."""
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.LINGER, 0)
    port = r.bind_to_random_port("tcp://127.0.0.1")

    def serve():
        if r.poll(5000):
            rid, delim, hdr = r.recv_multipart()[:3]
            want = json.loads(hdr)["id"]
            r.send_multipart([rid, b"", b'{"status":"ok","id":"someone-else"}'])
            r.send_multipart([rid, b"", json.dumps({"status": "ok", "id": want}).encode()])
    t = threading.Thread(target=serve)
    t.start()
    try:
        with TitanClient(f"tcp://127.0.0.1:{port}", timeout_ms=3000, retries=0) as c:
            assert c.request({"op": "ping", "id": "mine"}).header["id"] == "mine"
    finally:
        t.join()
        r.close(0)
        ctx.term()


def test_curve(start_worker, titan_cli, tmp_path):
    out = subprocess.run([titan_cli, "--json", "keygen", "--out", str(tmp_path), "--name", "worker"],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    w = start_worker("--curve-secret", info["secret_file"])
    with TitanClient(w.endpoint, server_key=info["public_key"]) as c:
        assert c.ping()["status"] == "ok"
        assert np.array_equal(c.matmul(np.eye(3), np.arange(9.0).reshape(3, 3)), np.arange(9.0).reshape(3, 3))
    pub, sec = zmq.curve_keypair()
    with TitanClient(w.endpoint, server_key=info["public_key"], public_key=pub, secret_key=sec) as c:
        assert c.ping()["status"] == "ok"
    wrong, _ = zmq.curve_keypair()
    with TitanClient(w.endpoint, timeout_ms=300, retries=0, server_key=wrong) as c:
        with pytest.raises(TitanTimeout) as e:
            c.ping()
        assert "CURVE" in e.value.message
    with TitanClient(w.endpoint, timeout_ms=300, retries=0) as c:  # no CURVE at all: no answer
        with pytest.raises(TitanTimeout):
            c.ping()
    with pytest.raises(ValueError):
        TitanClient(w.endpoint, server_key="short")
    with pytest.raises(ValueError):
        TitanClient(w.endpoint, server_key=info["public_key"], public_key=pub)
    with pytest.raises(ValueError):
        TitanClient(w.endpoint, server_key=info["public_key"], public_key=pub, secret_key=zmq.curve_keypair()[1])


def test_close_leaves_nothing(worker):
    before = threading.active_count()
    c = TitanClient(worker.endpoint).connect()
    c.ping()
    c.close()
    c.close()  # twice is fine
    assert threading.active_count() == before
    with pytest.raises(TitanError):
        c.ping()
    # A whole program: timed-out requests and a close must not keep the process alive.
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from titan_client import TitanClient, TitanTimeout\n"
            "c = TitanClient(%r, timeout_ms=20000, retries=0)\n"
            "print(c.ping()['status'])\n"
            "d = TitanClient('tcp://127.0.0.1:1', timeout_ms=100, retries=1)\n"
            "try:\n    d.ping()\nexcept TitanTimeout:\n    print('timeout')\n"
            "c.close(); d.close()\n") % (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), worker.endpoint)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["ok", "timeout"]
    assert time.monotonic() - t0 < 10


def test_shared_context(worker):
    ctx = zmq.Context()
    with TitanClient(worker.endpoint, context=ctx) as c:
        assert c.ping()["status"] == "ok"
    assert not ctx.closed  # a caller's context is the caller's to close
    ctx.term()
