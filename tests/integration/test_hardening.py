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


def vm_status_mb(pid, field):
    """A memory figure of process pid from /proc/PID/status, in MB: VmHWM (peak resident) or VmRSS (now)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return -1


def vm_hwm_mb(pid):
    return vm_status_mb(pid, "VmHWM")


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


def vm_rss_mb(pid):
    return vm_status_mb(pid, "VmRSS")


def metric_sum(base, name, **labels):
    """The sum of a /metrics counter over the samples whose labels include `labels`."""
    import urllib.request
    body = urllib.request.urlopen(base.rstrip("/") + "/metrics", timeout=10).read().decode()
    total = 0.0
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(w in line for w in want):
                total += float(line.rsplit(" ", 1)[1])
    return total


def unread_bound():
    """Issue 17, point 4: replies a client leaves unread are bounded in bytes per client (max-unread-mb,
    default 256). A client that sends tensor_get of a 16 MiB tensor forty times and reads nothing (its
    ZeroMQ takes one message at a time) gets a few executed, then busy; the worker's RSS grows by the
    bound plus what was running, not by forty replies; another client's ping is answered meanwhile; once
    the first client reads its replies, its work is done again. Without the bound every request ran and
    held its reply: 640 MB for this test, 1.9 GB in the issue."""
    import tempfile
    import os
    sanitized = b"__asan_init" in open(BIN, "rb").read()
    conf = os.path.join(tempfile.mkdtemp(prefix="titan-unread-"), "worker.conf")
    with open(conf, "w") as f:
        f.write("max-unread-mb = 64\n")
    w = Worker(BIN, "--config", conf, "--threads", "2", "--http", "0")
    base = open(w.epfile).read().split()[1]
    pid = w.proc.pid
    hog = ctx.socket(zmq.DEALER)
    hog.setsockopt(zmq.LINGER, 0)
    hog.setsockopt(zmq.ROUTING_ID, b"hog")
    hog.setsockopt(zmq.RCVHWM, 1)         # its ZeroMQ takes one reply at a time off the connection
    hog.setsockopt(zmq.RCVBUF, 65536)
    hog.setsockopt(zmq.RCVTIMEO, 60000)
    hog.connect(w.endpoint)
    n = 16 << 18  # float32 elements of 16 MiB
    hog.send_multipart([b"", json.dumps({"op": "tensor_put", "id": "put",
                                         "tensor": {"dtype": "float32", "shape": [n], "frame": 1}}).encode(),
                        np.arange(n, dtype=np.float32).tobytes()])
    r = json.loads(hog.recv_multipart()[1])
    ref = r.get("ref", "")
    tap.ok(ref.startswith("t-"), "unread bound: a client puts a 16 MiB tensor", r)
    before = vm_rss_mb(pid)
    count = 40
    get = lambda i: [b"", json.dumps({"op": "tensor_get", "id": i, "ref": ref}).encode()]
    for i in range(count):
        hog.send_multipart(get(f"g{i}"))

    def answered(k):  # every tensor_get has had its reply handed to ZeroMQ (run or refused)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if metric_sum(base, "titan_requests_total", op="tensor_get") >= k:
                return True
            time.sleep(0.05)
        return False
    tap.ok(answered(count), f"the worker answered all {count} tensor_get (none read yet)")
    grown = vm_rss_mb(pid) - before
    limit = 64 + 3 * 16 + 48  # the bound, what two executors and the transport hold, and a margin
    if sanitized:
        tap.note(f"RSS grew by {grown:.0f} MB with {count} x 16 MiB replies unread (ASan build: not enforced)")
    else:
        tap.ok(grown < limit, f"RSS grew by {grown:.0f} MB with {count} x 16 MiB replies unread: under "
               f"{limit} MB (64 MiB bound)")
    other = dealer(w.endpoint, timeout=10000)
    t0 = time.monotonic()
    other.send_multipart([b"", b'{"op":"ping","id":"other"}'])
    r = json.loads(other.recv_multipart()[1])
    tap.ok(r.get("id") == "other" and r.get("status") == "ok",
           f"another client's ping is answered meanwhile ({time.monotonic() - t0:.3f} s)", r)
    other.send_multipart([b"", json.dumps({"op": "tensor_list", "id": "other-list"}).encode()])
    r = json.loads(other.recv_multipart()[1])
    tap.ok(r.get("id") == "other-list" and r.get("count") == 0, "... and its heavy requests run", r)
    hog.send_multipart(get("late"))
    tap.ok(answered(count + 1), "a further request of the client over the bound is answered at once")
    replies = {}
    while len(replies) < count + 1:
        f = hog.recv_multipart()
        r = json.loads(f[1])
        replies[r.get("id")] = (r, len(f[2]) if len(f) > 2 else 0)
    done = [i for i, (r, size) in replies.items() if "result" in r and size == 4 * n]
    busy = [i for i, (r, _) in replies.items() if r.get("code") == "busy"]
    unread = [i for i in busy if "max-unread-mb" in replies[i][0].get("error", "")]
    tap.ok(1 <= len(done) <= 8 and len(done) + len(busy) == count + 1 and len(unread) >= count // 2,
           f"{len(done)} ran (whole 16 MiB tensors), the {len(busy)} others were busy ({len(unread)} naming "
           "--max-unread-mb, the others the client's share of the queue)",
           {i: r.get("code", "ok") for i, (r, _) in replies.items()})
    late = replies.get("late", ({}, 0))[0]
    tap.ok(late.get("code") == "busy" and "max-unread-mb" in late.get("error", ""),
           "the further request was busy, naming --max-unread-mb", late)
    hog.send_multipart(get("again"))
    f = hog.recv_multipart()
    r = json.loads(f[1])
    tap.ok(r.get("id") == "again" and "result" in r and len(f) == 3 and len(f[2]) == 4 * n,
           "once it has read its replies, its work is done again", r)
    hog.close()
    other.close()
    tap.ok(w.stop() == 0, "and the worker stops cleanly")


tap.run("unread bound", unread_bound)
res = Worker.stop_all()
tap.ok(all(rc == 0 and not san for _, rc, san in res), "every worker exited 0 with no sanitizer report", res)
sys.exit(tap.done())
