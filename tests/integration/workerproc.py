"""workerproc.py - starts a real titan-worker on an ephemeral loopback port for a test."""
import os
import signal
import subprocess
import tempfile
import time


class Worker:
    """A titan-worker process; the endpoint comes from its --endpoint-file (readiness, not sleeps)."""

    started = []  # every worker a test started, so it can check they all exited cleanly

    def __init__(self, binary, *args, log_level="info", env=None):
        """env: the child's whole environment (default: this process's)."""
        Worker.started.append(self)
        self.dir = tempfile.mkdtemp(prefix="titan-test-")
        self.epfile = os.path.join(self.dir, "endpoint")
        self.logpath = os.path.join(self.dir, "worker.log")
        self.log = open(self.logpath, "w")
        cmd = [binary, "--bind", "tcp://127.0.0.1:*", "--endpoint-file", self.epfile,
               "--log-level", log_level, *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.epfile):
            if self.proc.poll() is not None:
                raise RuntimeError("worker exited early: " + self.read_log())
            if time.monotonic() > deadline:
                raise RuntimeError("worker not ready after 20 s: " + self.read_log())
            time.sleep(0.01)
        self.endpoint = open(self.epfile).read().split()[0]

    def read_log(self):
        self.log.flush()
        with open(self.logpath) as f:
            return f.read()

    @classmethod
    def stop_all(cls):
        """Stops every worker still running; returns [(endpoint, exit code, sanitizer report?)]."""
        out = []
        for w in cls.started:
            rc = w.stop()
            log = open(w.logpath).read()
            out.append((w.endpoint, rc, "Sanitizer" in log or "runtime error" in log))
        return out

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        return self.proc.returncode


class Tap:
    """Minimal TAP producer: one line per check, a plan at the end."""

    def __init__(self):
        self.n = 0
        self.failed = 0

    def ok(self, cond, name, detail=""):
        self.n += 1
        if cond:
            print(f"ok {self.n} - {name}", flush=True)
        else:
            self.failed += 1
            print(f"not ok {self.n} - {name}", flush=True)
            if detail:
                for line in str(detail).splitlines():
                    print(f"# {line}", flush=True)
        return cond

    def note(self, text):
        """A TAP comment line: something measured, not a test point."""
        print("# " + text.replace("\n", "\n# "), flush=True)

    def run(self, name, fn):
        try:
            fn()
        except Exception as e:  # a crash in one check must not hide the others
            import traceback
            self.ok(False, name + " (raised)", traceback.format_exc())

    def done(self):
        print(f"1..{self.n}", flush=True)
        return 1 if self.failed else 0
