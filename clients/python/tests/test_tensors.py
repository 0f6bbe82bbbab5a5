"""test_tensors.py - titan_client's resident tensors (PROTOCOL.md §4.2, §5.7) and its identity, against real
titan-workers: put/get, matmul with handles and keep, ownership, not_found, free, list, quotas, the identity's
routing id and per-attempt tags, and a late reply to an abandoned attempt reaching a reconnected socket."""
import json
import re
import threading
import time

import numpy as np
import pytest
import zmq

from titan_client import (TitanBadRequest, TitanClient, TitanError, TitanNotFound, TitanQuotaExceeded, TitanTimeout,
                          TitanUnauthorized)

REF = re.compile(r"t-[0-9a-f]{24}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (2, 3, 4)], ids=["rank1", "rank3"])
def test_put_get_round_trip(worker, dtype, shape):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(dtype)
    with TitanClient(worker.endpoint, identity="py-roundtrip") as c:
        ref = c.tensor_put(x)
        assert REF.fullmatch(ref)
        got = c.tensor_get(ref)
        assert got.dtype == dtype and got.shape == shape and np.array_equal(got, x)
        got[...] = 0  # a fresh, writable array
        # Fortran order and big-endian data are converted before they are sent.
        y = np.asfortranarray(x).astype(np.dtype(dtype).newbyteorder(">"))
        ref2 = c.tensor_put(y)
        assert np.array_equal(c.tensor_get(ref2), x)
        assert c.tensor_free(ref) == x.nbytes and c.tensor_free(ref2) == x.nbytes


def test_matmul_resident_keep(worker):
    rng = np.random.default_rng(12)
    a = rng.integers(-20, 20, (9, 6)).astype(np.float64)
    b = rng.integers(-20, 20, (6, 5)).astype(np.float64)
    with TitanClient(worker.endpoint, identity="py-keep") as c:
        ra, rb = c.tensor_put(a), c.tensor_put(b)
        rc = c.matmul(ra, rb, keep=True)
        assert isinstance(rc, str) and REF.fullmatch(rc) and rc not in (ra, rb)
        got = c.tensor_get(rc)
        assert got.dtype == np.float64 and np.array_equal(got, a @ b)
        # Without keep the product comes back as data; a kept product is an operand like any other.
        assert np.array_equal(c.matmul(ra, rb), a @ b)
        assert np.array_equal(c.tensor_get(c.matmul(rc, c.tensor_put(a[:5, :2].copy()), keep=True)),
                              (a @ b) @ a[:5, :2])
        # Two arrays with keep: the product stays there too.
        rk = c.matmul(a, b, keep=True)
        assert np.array_equal(c.tensor_get(rk), a @ b)
        assert c.tensor_free_all() == 6


def test_matmul_mixed(worker):
    rng = np.random.default_rng(13)
    a = rng.integers(-9, 9, (4, 3)).astype(np.float32)
    b = rng.integers(-9, 9, (3, 6)).astype(np.float32)
    with TitanClient(worker.endpoint, identity="py-mixed") as c:
        ra, rb = c.tensor_put(a), c.tensor_put(b)
        got = c.matmul(ra, b)
        assert got.dtype == np.float32 and got.shape == (4, 6) and np.array_equal(got, a @ b)
        assert np.array_equal(c.matmul(a, rb), a @ b)
        assert np.array_equal(c.tensor_get(c.matmul(ra, b, keep=True)), a @ b)
        # The worker checks what it alone knows: the resident tensor's dtype and shape.
        with pytest.raises(TitanBadRequest) as e:
            c.matmul(ra, b.astype(np.float64))
        assert e.value.code == "bad_request"
        with pytest.raises(TitanBadRequest):
            c.matmul(ra, a)  # 4x3 @ 4x3
        c.tensor_free_all()


def test_other_client_unauthorized(worker):
    x = np.arange(6, dtype=np.float32)
    with TitanClient(worker.endpoint, identity="py-owner") as c:
        ref = c.tensor_put(x)
    with TitanClient(worker.endpoint) as other, TitanClient(worker.endpoint, identity="py-intruder") as named:
        for cl in (other, named):
            for call in (lambda: cl.tensor_get(ref), lambda: cl.tensor_free(ref),
                         lambda: cl.matmul(ref, np.ones((6, 1), np.float32))):
                with pytest.raises(TitanUnauthorized) as e:
                    call()
                assert e.value.code == "unauthorized" and isinstance(e.value, TitanError)
            assert cl.tensor_list()["count"] == 0
    # The same identity in a new client (a new connection) still owns it.
    with TitanClient(worker.endpoint, identity="py-owner") as c:
        assert np.array_equal(c.tensor_get(ref), x)
        assert c.tensor_free(ref) == 24


def test_free_then_get_not_found(worker):
    with TitanClient(worker.endpoint, identity="py-free") as c:
        ref = c.tensor_put(np.ones((3, 3)))
        assert c.tensor_free(ref) == 72
        for call in (lambda: c.tensor_get(ref), lambda: c.tensor_free(ref), lambda: c.matmul(ref, ref)):
            with pytest.raises(TitanNotFound) as e:
                call()
            assert e.value.code == "not_found" and e.value.reply["code"] == "not_found"
        with pytest.raises(TitanNotFound):
            c.tensor_get("t-000000000000000000000000")  # never made


def test_free_all_and_list(worker):
    with TitanClient(worker.endpoint, identity="py-list") as c:
        assert c.tensor_free_all() == 0
        lst = c.tensor_list()
        assert lst["count"] == 0 and lst["tensors"] == [] and lst["bytes"] == 0
        refs = [c.tensor_put(np.ones(n, np.float32)) for n in (1, 2, 3)]
        refs.append(c.tensor_put(np.ones((2, 2, 2, 2, 2, 2, 2, 2))))  # rank 8
        lst = c.tensor_list()
        assert lst["count"] == 4 and lst["bytes"] == 4 * 6 + 8 * 256
        assert sorted(t["ref"] for t in lst["tensors"]) == sorted(refs)
        by_ref = {t["ref"]: t for t in lst["tensors"]}
        assert by_ref[refs[3]]["shape"] == [2] * 8 and by_ref[refs[3]]["dtype"] == "float64"
        assert "client_bytes" in lst["quota"]
        assert c.tensor_free(refs[0]) == 4
        assert c.tensor_list()["count"] == 3
        assert c.tensor_free_all() == 3
        assert c.tensor_list()["count"] == 0 and c.tensor_free_all() == 0


def test_quota_exceeded(start_worker):
    w = start_worker("--tensor-quota-mb", "1")
    with TitanClient(w.endpoint, identity="py-quota") as c:
        half = np.ones(400 * 1024 // 8)  # 400 KiB
        ref = c.tensor_put(half)
        c.tensor_put(half)
        with pytest.raises(TitanQuotaExceeded) as e:
            c.tensor_put(half)
        assert e.value.code == "quota_exceeded" and "quota" in e.value.message
        big = np.ones((400, 400))  # a 1.28 MB product
        with pytest.raises(TitanQuotaExceeded):
            c.matmul(big[:, :1].copy(), big[:1, :].copy(), keep=True)
        assert c.tensor_list()["count"] == 2  # nothing stored, nothing evicted
        c.tensor_free(ref)
        assert REF.fullmatch(c.tensor_put(half))


def test_identity_and_ref_validation(worker):
    for bad in ("", " ", "a b", "tab\there", "x" * 65, "caf\u00e9", "nul\x00", b"bytes", 7):
        with pytest.raises(ValueError):
            TitanClient(worker.endpoint, identity=bad)
    with TitanClient(worker.endpoint, identity="~" + "x" * 63) as c:  # 64 printable characters
        assert c.ping()["status"] == "ok" and c.identity == "~" + "x" * 63
        for bad in ("", "t 1", "t-\"x", "x" * 64, "caf\u00e9", None, 3):
            with pytest.raises(ValueError):
                c.tensor_get(bad)
            with pytest.raises(ValueError):
                c.tensor_free(bad)
        with pytest.raises(ValueError):
            c.matmul("a b", np.ones((1, 1), np.float32))
        with pytest.raises(ValueError):
            c.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), keep=1)
        for bad in (np.ones(3, np.int32), np.float32(1.0), np.ones((1,) * 9, np.float32), np.ones((2, 0)),
                    np.ones(2, np.float16)):
            with pytest.raises(ValueError):
                c.tensor_put(bad)
        assert c.last_retries == 0
        # The worker's own handles are "t-" + 24 hex digits; any well-formed handle is sent.
        with pytest.raises(TitanNotFound):
            c.tensor_get("A_b-" + "9" * 59)


def test_identity_envelope():
    """A fake worker: every socket has the identity as its routing id, each attempt a fresh tag frame,
    and a reply with another tag is dropped; without an identity no tag is sent."""
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.LINGER, 0)
    r.setsockopt(zmq.ROUTER_HANDOVER, 1)  # as the worker does: the newer connection with an id takes it over
    port = r.bind_to_random_port("tcp://127.0.0.1")
    seen = []

    def serve():
        for i in range(3):
            if not r.poll(5000):
                return
            msg = r.recv_multipart()
            seen.append(msg)
            if i == 0:
                continue  # no answer: the client retries on a fresh socket
            hdr = json.loads(msg[-1])
            env = msg[:-1]
            if i == 1:  # a stale reply first, with the previous attempt's tag
                r.send_multipart([msg[0], seen[0][1], b"", b'{"status":"stale"}'])
            r.send_multipart(env + [json.dumps({"status": "ok", "n": hdr["n"]}).encode()])
    t = threading.Thread(target=serve)
    t.start()
    try:
        with TitanClient(f"tcp://127.0.0.1:{port}", timeout_ms=1000, retries=1, identity="py-env") as c:
            assert c.request({"op": "ping", "n": 1}).header == {"status": "ok", "n": 1}
            assert c.last_retries == 1 and c.dropped_replies == 1
        with TitanClient(f"tcp://127.0.0.1:{port}", timeout_ms=2000, retries=0) as c:
            assert c.request({"op": "ping", "n": 2}).header == {"status": "ok", "n": 2}
            assert c.dropped_replies == 0
    finally:
        t.join()
        r.close(0)
        ctx.term()
    assert len(seen) == 3
    (rid0, tag0, d0, _), (rid1, tag1, d1, _) = seen[0], seen[1]
    assert rid0 == rid1 == b"py-env" and d0 == d1 == b""
    assert re.fullmatch(rb"@[0-9a-f]{8}", tag0) and int(tag1[1:], 16) == (int(tag0[1:], 16) + 1) % 2 ** 32
    assert seen[2][1] == b"" and seen[2][0] != b"py-env" and len(seen[2]) == 3


def test_stale_reply_with_identity(start_worker):
    """A product that outlives its attempts: with a stable routing id its late replies reach the next socket
    with that id (here a new client's), which must drop them and return its own answer."""
    w = start_worker("--threads", "2", "--blas-threads", "1")
    rng = np.random.default_rng(14)
    n = 2000  # 16 GFLOP and 2 x 32 MB: no machine answers within 5 ms
    x = rng.random((n, n))
    small = np.arange(5.0)
    with TitanClient(w.endpoint, identity="py-stale") as c:
        rx, rs = c.tensor_put(x), c.tensor_put(small)
    old = TitanClient(w.endpoint, identity="py-stale", timeout_ms=5, retries=1)
    try:
        try:
            old.matmul(rx, rx)  # two attempts of a 16 GFLOP product, both abandoned
            pytest.fail(f"this machine multiplied {n}x{n} float64 matrices within 5 ms")
        except TitanTimeout:
            pass
    finally:
        old.close()
    assert old.last_retries == 1
    with TitanClient(w.endpoint, identity="py-stale", timeout_ms=60000, retries=0) as c:
        # Both executors hold the abandoned products, so this waits behind them, and their replies
        # (a well-formed 1400x1400 tensor each, just what a tensor_get answers) come to this socket.
        # Should a product end between the old socket's close and this one's connection, the worker
        # drops its reply and this runs at once: then ask again until the other product's reply came.
        deadline = time.monotonic() + 30
        while True:
            got = c.tensor_get(rs)
            assert got.shape == (5,) and np.array_equal(got, small)
            if old.dropped_replies + c.dropped_replies >= 1:
                break
            if time.monotonic() > deadline:
                pytest.skip("no late reply reached the new socket (the worker dropped both)")
            time.sleep(0.01)
        assert c.tensor_free_all() == 2
