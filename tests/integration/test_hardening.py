#!/usr/bin/python3
"""test_hardening.py - fairness under a flood, graceful drain on SIGTERM, drain timeout,
and a client's bounded wait on a frozen worker, against real titan-worker processes.
Usage: test_hardening.py PATH/TO/titan-worker PATH/TO/titan   (prints TAP)"""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import zmq

from workerproc import Tap, Worker

BIN, CLI = sys.argv[1], sys.argv[2]
tap = Tap()
ctx = zmq.Context()


def dealer(ep, timeout=30000):
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.RCVTIMEO, timeout)
    d.connect(ep)
    return d


def matmul_msg(n, ident, dtype=np.float64):
    a = np.ones((n, n), dtype)
    hdr = {"op": "matrix_multiply", "id": ident,
           "a": {"dtype": np.dtype(dtype).name, "shape": [n, n], "frame": 1},
           "b": {"dtype": np.dtype(dtype).name, "shape": [n, n], "frame": 2}}
    return [b"", json.dumps(hdr).encode(), a.tobytes(), a.tobytes()]


def flood_fairness():
    w = Worker(BIN, "--threads", "1", "--queue", "16", "--max-client-share", "50")
    flood = dealer(w.endpoint)
    # a long product keeps the only executor busy while the flood piles up behind it
    flood.send_multipart(matmul_msg(1200, "blocker"))
    for i in range(59):
        flood.send_multipart(matmul_msg(40, f"f{i}"))
    flood.send_multipart([b"", b'{"op":"ping","id":"sync"}'])
    flood_replies = []
    while True:  # once the ping is answered, every flood message has been admitted or refused
        r = json.loads(flood.recv_multipart()[1])
        if r.get("id") == "sync":
            break
        flood_replies.append(r)
    # the flood is queued (or refused); a second client still gets its product and its pings
    other = dealer(w.endpoint, timeout=10000)
    t0 = time.monotonic()
    other.send_multipart(matmul_msg(50, "mine"))
    rep = json.loads(other.recv_multipart()[1])
    waited = time.monotonic() - t0
    tap.ok(rep.get("id") == "mine" and "result" in rep, "a second client's request is served during a flood", rep)
    tap.ok(waited < 5, f"... without waiting for the whole flood ({waited:.2f} s)")
    other.send_multipart([b"", b'{"op":"ping","id":"p"}'])
    rep = json.loads(other.recv_multipart()[1])
    tap.ok(rep.get("status") == "ok", "pings are answered during a flood", rep)
    while len(flood_replies) < 60:
        flood_replies.append(json.loads(flood.recv_multipart()[1]))
    codes = [r.get("code", "ok") for r in flood_replies]
    share = [c for c in codes if c == "busy"]
    tap.ok(codes.count("ok") >= 8 and len(share) > 0, "the flooding client is held to its share of the queue",
           {c: codes.count(c) for c in set(codes)})
    flood.close()
    other.close()
    tap.ok(w.stop() == 0, "worker exits 0")


def graceful_drain():
    w = Worker(BIN, "--threads", "1", "--queue", "8")
    d = dealer(w.endpoint)
    d.send_multipart(matmul_msg(1500, "long"))
    d.send_multipart(matmul_msg(10, "queued"))
    d.send_multipart([b"", b'{"op":"ping","id":"sync"}'])
    json.loads(d.recv_multipart()[1])  # the product is running once the ping behind it is answered
    w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while "shutting down" not in w.read_log() and time.monotonic() < deadline:
        time.sleep(0.005)
    d.send_multipart([b"", b'{"op":"ping","id":"late"}'])
    reps = {}
    for _ in range(3):
        r = json.loads(d.recv_multipart()[1])
        reps[r.get("id")] = r
    tap.ok(reps.get("queued", {}).get("code") == "shutting_down", "queued work is refused with shutting_down",
           reps.get("queued"))
    tap.ok(reps.get("late", {}).get("code") == "shutting_down", "new work during the drain gets shutting_down",
           reps.get("late"))
    tap.ok("result" in reps.get("long", {}), "the running product completes", list(reps))
    rc = w.proc.wait(30)
    tap.ok(rc == 0, "then the worker exits 0", rc)
    w.stop()
    d.close()


def drain_timeout():
    w = Worker(BIN, "--threads", "1", "--drain-timeout", "200")
    d = dealer(w.endpoint)
    d.send_multipart(matmul_msg(3000, "huge"))  # seconds of work on two cores
    d.send_multipart([b"", b'{"op":"ping"}'])
    d.recv_multipart()
    t0 = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    rc = w.proc.wait(20)
    took = time.monotonic() - t0
    tap.ok(rc == 0 and took < 3, f"--drain-timeout bounds the drain ({took:.2f} s, exit {rc})")
    tap.ok("drain timeout" in w.read_log(), "and says so in the log")
    w.stop()
    d.close()


def frozen_worker():
    w = Worker(BIN)
    w.proc.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    p = subprocess.run([CLI, "--endpoint", w.endpoint, "--timeout", "200", "--retries", "1", "ping"],
                       capture_output=True, text=True, timeout=30)
    took = time.monotonic() - t0
    tap.ok(p.returncode == 3 and took < 2, f"a client gives up on a frozen worker in bounded time ({took:.2f} s)",
           p.stderr)
    w.proc.send_signal(signal.SIGCONT)
    tap.ok(w.stop() == 0, "the thawed worker still stops cleanly")


def heartbeat_option():
    p = subprocess.run([BIN, "--heartbeat", "-5"], capture_output=True, text=True, timeout=20)
    tap.ok(p.returncode == 2 and "heartbeat" in p.stderr, "--heartbeat is validated", p.stderr)
    w = Worker(BIN, "--heartbeat", "100")
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(w.endpoint)
    s.send(b'{"op":"ping"}')
    tap.ok(json.loads(s.recv()).get("status") == "ok", "a worker with fast heartbeats serves")
    s.close()
    tap.ok(w.stop() == 0, "and stops cleanly")


def vm_hwm_mb(pid):
    """The peak resident memory of process pid, in MB (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return -1


def transit_memory():
    """Memory in transit is bounded: with --max-request-bytes 1M, 30 frames of 8 MB are cut off by the
    transport at the first frame (no reply: ZeroMQ drops the connection), 2 million empty frames are
    answered bad_request; neither takes the worker's peak RSS over 200 MB (ASan's own overhead
    aside: there the bound is reported, not enforced, and the plain build's run enforces it)."""
    sanitized = b"__asan_init" in open(BIN, "rb").read()
    w = Worker(BIN, "--max-request-bytes", "1M", "--threads", "1")
    pid = w.proc.pid
    d = dealer(w.endpoint, timeout=60000)
    big = b"\0" * (8 << 20)
    d.send_multipart([b"", b'{"op":"ping","id":"big"}'] + [big] * 30)
    p = dealer(w.endpoint, timeout=60000)
    p.send_multipart([b"", b'{"op":"ping","id":"after"}'])
    r = json.loads(p.recv_multipart()[1])
    tap.ok(r.get("id") == "after", "after 30 frames of 8 MB the worker still answers others", r)
    tap.ok(not d.poll(1000), "the 8 MB frames got no reply: the transport dropped that connection")
    peak = vm_hwm_mb(pid)
    if sanitized:
        tap.note(f"peak RSS after 30 x 8 MB frames: {peak:.0f} MB (ASan build: not enforced here)")
    else:
        tap.ok(0 < peak < 200, f"30 frames of 8 MB: the worker's peak RSS stays under 200 MB ({peak:.0f} MB)")
    d.close()
    e = dealer(w.endpoint, timeout=120000)
    e.send_multipart([b"", b'{"op":"ping","id":"many"}'] + [b""] * 2000000)
    r = json.loads(e.recv_multipart()[1])
    tap.ok(r.get("code") == "bad_request" and r.get("id") == "many", "2 million empty frames: bad_request", r)
    peak = vm_hwm_mb(pid)
    if sanitized:
        tap.note(f"peak RSS after 2 million empty frames: {peak:.0f} MB (ASan build: not enforced here)")
    else:
        tap.ok(0 < peak < 200, f"2 million empty frames: the worker's peak RSS stays under 200 MB ({peak:.0f} MB)")
    e.close()
    p.close()
    tap.ok(w.stop() == 0, "and it stops cleanly")


for name, fn in [("flood", flood_fairness), ("transit memory", transit_memory), ("drain", graceful_drain), ("drain timeout", drain_timeout),
                 ("frozen", frozen_worker), ("heartbeat", heartbeat_option)]:
    tap.run(name, fn)
res = Worker.stop_all()
tap.ok(all(rc == 0 and not san for _, rc, san in res), "every worker exited 0 with no sanitizer report", res)
sys.exit(tap.done())
