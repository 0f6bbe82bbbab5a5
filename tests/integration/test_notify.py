#!/usr/bin/python3
"""test_notify.py - titan-worker's systemd notifications (READY, STATUS, WATCHDOG, STOPPING) on a fake NOTIFY_SOCKET; TAP.

Usage: test_notify.py PATH/TO/titan-worker
"""
import json
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time

import numpy as np
import zmq

from workerproc import Tap, Worker

BIN = sys.argv[1]
WATCHDOG_USEC = 400000  # the worker should ping every 200 ms
tap = Tap()
ctx = zmq.Context()


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket that also learns each sender's pid.

    A thread reads it at once, as systemd does: a socket left unread fills its queue (10
    datagrams by default) and then blocks the worker's sd_notify() calls."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="titan-notify-")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.messages = []  # (monotonic time, sender pid, {key: value}), in arrival order
        self.cond = threading.Condition()
        self.closing = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while not self.closing:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                continue
            pid = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:12])[0]
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            with self.cond:
                self.messages.append((time.monotonic(), pid, fields))
                self.cond.notify_all()

    def snapshot(self):
        with self.cond:
            return list(self.messages)

    def wait_for(self, key, value, timeout, start=0):
        """The first message from index `start` on with key=value, or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for msg in self.messages[start:]:
                    if msg[2].get(key) == value:
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self):
        self.closing = True
        self.reader.join()
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def notify_env(ns, **extra):
    """This process's environment without any systemd variables, plus NOTIFY_SOCKET and extra."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")}
    if ns:
        env["NOTIFY_SOCKET"] = ns.path
    env.update({k: str(v) for k, v in extra.items()})
    return env


def desc(arr, frame):
    return {"dtype": str(arr.dtype), "shape": list(arr.shape), "frame": frame}


def lifecycle():
    ns = NotifySocket()
    try:
        # WATCHDOG_PID unset: sd_watchdog_enabled() then accepts any pid, as for a direct child.
        w = Worker(BIN, "--threads", "1", "--blas-threads", "1", env=notify_env(ns, WATCHDOG_USEC=WATCHDOG_USEC))
        ready = ns.wait_for("READY", "1", 10)
        tap.ok(ready is not None, "READY=1 arrives once the worker is serving", ns.snapshot())
        if ready is None:
            return
        status = ready[2].get("STATUS", "")
        tap.ok(status.startswith("serving on ") and w.endpoint in status,
               "READY carries STATUS=serving on <endpoint>", status)
        tap.ok(ready[1] == w.proc.pid, "notifications come from the main pid (NotifyAccess=main)",
               (ready[1], w.proc.pid))

        # Watchdog pings: every WATCHDOG_USEC/2 from the I/O loop, not on every turn of it.
        t_end = ready[0] + 2.0
        time.sleep(max(0.0, t_end - time.monotonic()) + 0.05)
        pings = [m for m in ns.snapshot() if m[2].get("WATCHDOG") == "1" and m[0] <= t_end]
        tap.ok(len(pings) >= 2, "at least 2 WATCHDOG=1 within 2 s (WATCHDOG_USEC=400000)", len(pings))
        tap.ok(len(pings) <= 40, "WATCHDOG=1 is paced, not sent on every loop turn", len(pings))
        gaps = sorted(b[0] - a[0] for a, b in zip(pings, pings[1:]))
        tap.ok(gaps and gaps[len(gaps) // 2] < 0.3, "WATCHDOG=1 about every WATCHDOG_USEC/2 (median gap < 0.3 s)",
               gaps)
        tap.ok(all(m[1] == w.proc.pid for m in ns.snapshot()), "every notification comes from the main pid",
               [(m[1], m[2]) for m in ns.snapshot() if m[1] != w.proc.pid][:3])

        # A request that arrives just before a ping is due must not postpone the ping: the I/O
        # loop's poll has to wait only for what is left of the interval, or one ping slips to
        # almost WatchdogSec after the previous one and systemd kills a healthy worker.
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.setsockopt(zmq.RCVTIMEO, 10000)
        d.connect(w.endpoint)
        gaps = []
        for _ in range(5):
            m1 = ns.wait_for("WATCHDOG", "1", 5, len(ns.snapshot()))
            time.sleep(0.185)
            d.send_multipart([b"", b'{"op":"ping"}'])
            d.recv_multipart()
            m2 = ns.wait_for("WATCHDOG", "1", 5, len(ns.snapshot()))
            if m1 and m2:
                gaps.append(round(m2[0] - m1[0], 3))
        gaps.sort()
        tap.ok(len(gaps) == 5 and gaps[2] < 0.3,
               "a request just before a ping is due does not delay it (median gap < 0.3 s)", gaps)
        d.close()

        # SIGTERM with a product running: STOPPING=1, then STATUS=draining, then the result and exit 0.
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.setsockopt(zmq.RCVTIMEO, 30000)
        d.connect(w.endpoint)
        a = np.ones((2000, 2000), np.float64)
        d.send_multipart([b"", json.dumps({"op": "matrix_multiply", "id": "big", "a": desc(a, 1),
                                           "b": desc(a, 2)}).encode(), a.tobytes(), a.tobytes()])
        # The I/O thread takes messages in order: once this ping is answered the product is running.
        d.send_multipart([b"", b'{"op":"ping","id":"p"}'])
        first = json.loads(d.recv_multipart()[1])
        tap.ok(first.get("id") == "p", "the ping overtakes the running product", first)
        n_before = len(ns.snapshot())
        w.proc.send_signal(signal.SIGTERM)
        stopping = ns.wait_for("STOPPING", "1", 10, n_before)
        tap.ok(stopping is not None, "SIGTERM sends STOPPING=1", ns.snapshot()[n_before:])
        draining = ns.wait_for("STATUS", "draining 1 requests", 10, n_before)
        tap.ok(draining is not None, "STATUS=draining 1 requests while the product finishes",
               ns.snapshot()[n_before:])
        try:
            parts = d.recv_multipart()
            reply = json.loads(parts[1])
        except zmq.Again:
            reply = None
        tap.ok(reply is not None and reply.get("id") == "big" and "result" in reply,
               "the running product is answered during the drain", reply)
        d.close()
        try:
            rc = w.proc.wait(20)
        except Exception:
            rc = None
        tap.ok(rc == 0, "the worker exits 0 after the drain", rc)
    finally:
        ns.close()


def watchdog_for_another_pid():
    ns = NotifySocket()
    try:
        # WATCHDOG_PID names another process (this one): the watchdog is not the worker's to feed.
        w = Worker(BIN, env=notify_env(ns, WATCHDOG_USEC=WATCHDOG_USEC, WATCHDOG_PID=os.getpid()))
        ready = ns.wait_for("READY", "1", 10)
        tap.ok(ready is not None, "READY=1 without a watchdog of our own", ns.snapshot())
        time.sleep(1.0)  # five intervals of WATCHDOG_USEC/2
        tap.ok(not any(m[2].get("WATCHDOG") for m in ns.snapshot()),
               "no WATCHDOG=1 when WATCHDOG_PID is another process", ns.snapshot())
        w.proc.send_signal(signal.SIGTERM)
        tap.ok(ns.wait_for("STOPPING", "1", 10) is not None, "an idle worker sends STOPPING=1 on SIGTERM")
        try:
            rc = w.proc.wait(20)  # not w.stop(): a second SIGTERM would end it at once, with status 1
        except Exception:
            rc = None
        tap.ok(rc == 0, "and exits 0", rc)
    finally:
        ns.close()


def without_notify_socket():
    # No NOTIFY_SOCKET: every call is a no-op, even with WATCHDOG_USEC set.
    w = Worker(BIN, env=notify_env(None, WATCHDOG_USEC=WATCHDOG_USEC))
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 10000)
    s.connect(w.endpoint)
    s.send(b'{"op":"ping"}')
    tap.ok(json.loads(s.recv()).get("status") == "ok", "serves normally without NOTIFY_SOCKET")
    s.close()
    tap.ok(w.stop() == 0, "and stops with exit status 0")


for name, fn in [("lifecycle", lifecycle), ("watchdog for another pid", watchdog_for_another_pid),
                 ("no notify socket", without_notify_socket)]:
    tap.run(name, fn)
res = Worker.stop_all()
tap.ok(all(rc == 0 and not san for _, rc, san in res), "every worker exited 0 with no sanitizer report", res)
ctx.term()
sys.exit(tap.done())
