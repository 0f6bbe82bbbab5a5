"""serveproc.py - starts a real `titan serve` on a free loopback port for a test, and talks HTTP to it."""
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import tempfile
import time


def clean_env(**extra):
    """This process's environment without the TITAN_* settings a developer may have exported, plus extra."""
    e = dict(os.environ)
    for k in ("TITAN_BACKENDS", "TITAN_ENDPOINT", "TITAN_SERVER_KEY", "TITAN_CURVE_SECRET"):
        e.pop(k, None)
    e.update(extra)
    return e


def dead_endpoint():
    """A loopback endpoint nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"tcp://127.0.0.1:{port}"


def wait_for(pred, timeout):
    """Polls pred() until it returns a true value or timeout seconds pass; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.1)


class Serve:
    """A `titan serve --listen 127.0.0.1:0 ARGS...` process (global options work there too); readiness is
    its first stdout line, `titan serve: listening on http://127.0.0.1:PORT`, not a sleep."""

    def __init__(self, titan, *args, env=None, listen="127.0.0.1:0"):
        fd, self.errpath = tempfile.mkstemp(prefix="titan-serve-", suffix=".err")
        os.close(fd)
        self.err = open(self.errpath, "w")
        self.proc = subprocess.Popen([titan, "serve", "--listen", listen, *args], stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, env=env or clean_env())
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ""
        m = re.fullmatch(r"titan serve: listening on (http://127\.0\.0\.1:(\d+))\n", line)
        if not m:
            self.stop()
            raise RuntimeError(f"no listening line from titan serve: {line!r}; stderr: {self.stderr()}")
        self.url, self.port = m.group(1), int(m.group(2))

    def stderr(self):
        if not self.err.closed:
            self.err.flush()
        with open(self.errpath) as f:
            return f.read()

    def request(self, path, method="GET", timeout=60):
        """Returns (status, {lower-case header: value}, body bytes)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path)
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def json(self, path):
        status, headers, body = self.request(path)
        return status, headers, json.loads(body)

    def timed(self, path, timeout=60):
        """Returns (seconds the whole request took, from connect to the last byte, status, parsed body)."""
        t0 = time.monotonic()
        status, headers, body = self.request(path, timeout=timeout)
        return time.monotonic() - t0, status, json.loads(body)

    def wait_polled(self, timeout=30):
        """Waits until every backend's first poll has ended (serve answers "unknown" before); returns
        whether they did."""
        return wait_for(lambda: all(b["polls"] >= 1 for b in self.json("/api/titan/backends")[2]["backends"]),
                        timeout)

    def stop_at_once(self, timeout=30):
        """Stops a serve whose polls are still waiting for a long timeout: SIGTERM, then, once it says it is
        stopping, a second SIGTERM, which exits at once with status 1. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "stopping" in self.stderr() or self.proc.poll() is not None, timeout)
        return self.stop(signal.SIGTERM, timeout)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signals the process and waits; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        if not self.err.closed:
            self.err.close()
        return self.proc.returncode
