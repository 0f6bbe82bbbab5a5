#!/usr/bin/python3
"""soak.py - soak test: 64 clients send N requests (10% malformed) to a real titan-worker that is
restarted twice on the same port under load; every answer is checked and the worker's RSS must
stay flat after warm-up. Prints TAP; exits 1 on any failure.

Usage: soak.py WORKER [--requests N] [--clients 64] [--procs 4] [--restarts 2] [--seed S]
               [--timeout-ms 1500] [--rss-interval 0.5] [--rss-tolerance 0.10] [--no-rss-check]

Clients are PROCS processes with CLIENTS/PROCS threads each (the GIL), one REQ socket per thread.
They follow the Lazy Pirate pattern: on a timeout they close the socket, open a new one and send
the request again; a "shutting_down" or "busy" reply is retried the same way. Every valid request
(ping, gpu_info, small JSON and binary matrix products, checked against numpy) must end with a
correct answer, and every malformed one with an error reply carrying the expected code.
"""
import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import zmq

RETRY_CODES = ("shutting_down", "busy")
MAX_ATTEMPTS = 40


# --- the worker -------------------------------------------------------------------------------

class WorkerProc:
    """One titan-worker generation; readiness is its --endpoint-file, not a sleep."""

    def __init__(self, binary, bind, workdir, gen, extra=()):
        self.epfile = os.path.join(workdir, f"endpoint.{gen}")
        self.logpath = os.path.join(workdir, f"worker.{gen}.log")
        self.log = open(self.logpath, "w")
        cmd = [binary, "--bind", bind, "--endpoint-file", self.epfile, "--log-level", "error", *extra]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.epfile) or not open(self.epfile).read().strip():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early ({self.proc.returncode}): {self.read_log()}")
            if time.monotonic() > deadline:
                raise RuntimeError("worker not ready after 30 s: " + self.read_log())
            time.sleep(0.005)
        self.ready_s = time.monotonic() - self.t0
        self.endpoint = open(self.epfile).read().split()[0]
        self.pid = self.proc.pid

    def read_log(self):
        self.log.flush()
        with open(self.logpath, errors="replace") as f:
            return f.read()

    def stop(self, timeout=40):
        """SIGTERM, then wait; returns the exit code (SIGKILL after `timeout`, reported as such)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        return self.proc.returncode

    def sanitizer_report(self):
        log = self.read_log() if not self.log.closed else open(self.logpath, errors="replace").read()
        return "Sanitizer" in log or "runtime error" in log


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# --- requests ---------------------------------------------------------------------------------

def bad_inputs():
    """(name, frames, expected code) for each malformed request."""
    desc = lambda shape, frame, dt="float32": {"dtype": dt, "shape": shape, "frame": frame}
    mm = lambda a, b, **kw: json.dumps({"op": "matrix_multiply", "a": a, "b": b, **kw}).encode()
    f24 = bytes(24)
    return [
        ("truncated JSON", [b'{"op":"ping"'], "bad_request"),
        ("not an object", [b'["ping"]'], "bad_request"),
        ("missing op", [b'{"a":1}'], "bad_request"),
        ("op not a string", [b'{"op":7}'], "bad_request"),
        ("unknown op", [b'{"op":"fly"}'], "unknown_op"),
        ("duplicate key", [b'{"op":"ping","op":"gpu_info"}'], "bad_request"),
        ("not UTF-8", [b'{"op":"ping","x":"\xff\xfe"}'], "bad_request"),
        ("bare NaN", [b'{"op":"ping","x":NaN}'], "bad_request"),
        ("trailing data", [b'{"op":"ping"} x'], "bad_request"),
        ("too deep", [b'{"op":"ping","x":' + b'{"y":' * 70 + b'1' + b'}' * 70 + b'}'], "bad_request"),
        ("id of the wrong type", [b'{"op":"ping","id":{"x":1}}'], "bad_request"),
        ("deadline_ms 0", [b'{"op":"ping","deadline_ms":0}'], "bad_request"),
        ("empty header", [b''], "bad_request"),
        ("ragged array", [mm([[1, 2], [3]], [[1], [2]])], "bad_request"),
        ("empty array", [mm([[]], [[1]])], "bad_request"),
        ("string element", [mm([[1, "x"]], [[1], [2]])], "bad_request"),
        ("inner dims differ", [mm([[1, 2]], [[1, 2]])], "bad_request"),
        ("3-D operand", [mm([[[1]]], [[1]])], "bad_request"),
        ("bad dtype", [mm([[1]], [[1]], dtype="int8")], "bad_request"),
        ("missing b", [b'{"op":"matrix_multiply","a":[[1]]}'], "bad_request"),
        ("frame too short", [mm(desc([4, 4], 1), desc([4, 4], 2)), f24, f24], "bad_request"),
        ("frame missing", [mm(desc([2, 3], 1), desc([3, 2], 2)), f24], "bad_request"),
        ("frame used twice", [mm(desc([2, 3], 1), desc([3, 2], 1)), f24], "bad_request"),
        ("frame not referenced", [mm(desc([2, 3], 1), desc([3, 2], 2)), f24, f24, f24], "bad_request"),
        ("bad descriptor dtype", [mm(desc([2, 3], 1, "int8"), desc([3, 2], 2)), f24, f24], "bad_request"),
        ("zero dimension", [mm(desc([0, 3], 1), desc([3, 2], 2)), b"", f24], "bad_request"),
        ("mixed dtypes", [mm(desc([2, 3], 1, "float64"), desc([3, 2], 2)), bytes(48), f24], "bad_request"),
        ("too many frames", [mm(desc([2, 3], 1), desc([3, 2], 2))] + [f24] * 17, "bad_request"),
    ]


class Client:
    """One thread's REQ socket with the Lazy Pirate retry policy."""

    def __init__(self, ctx, endpoint, timeout_ms, stats):
        self.ctx, self.endpoint, self.timeout_ms, self.stats = ctx, endpoint, timeout_ms, stats
        self.sock = None
        self.open()

    def open(self):
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)

    def close(self):
        self.sock.close(linger=0)
        self.sock = None

    def call(self, frames):
        """Returns (header dict or None, data frames, error text); retries timeouts and busy replies."""
        for _attempt in range(MAX_ATTEMPTS):
            self.sock.send_multipart(frames, copy=False)
            if not self.sock.poll(self.timeout_ms, zmq.POLLIN):
                self.stats["timeouts"] += 1
                self.close()
                self.open()
                continue
            hdr, *data = self.sock.recv_multipart()
            try:
                r = json.loads(hdr)
            except ValueError:
                return None, data, f"reply is not JSON: {hdr[:200]!r}"
            if isinstance(r, dict) and r.get("code") in RETRY_CODES:
                self.stats["retried_" + r["code"]] += 1
                time.sleep(0.01)
                continue
            return r, data, None
        return None, [], f"no answer after {MAX_ATTEMPTS} attempts"


def check_matmul(r, data, a, b, binary, rid):
    if not isinstance(r, dict) or "result" not in r:
        return f"no result: {str(r)[:300]}"
    if r.get("id") != rid:
        return f"id {r.get('id')!r} != {rid!r}"
    want = a.astype(np.float64) @ b.astype(np.float64)
    if binary:
        d = r["result"]
        if d.get("dtype") != str(a.dtype) or d.get("shape") != list(want.shape) or d.get("frame") != 1:
            return f"bad result descriptor {d}"
        if len(data) != 1 or len(data[0]) != want.size * a.itemsize:
            return f"bad result frames {[len(x) for x in data]}"
        got = np.frombuffer(data[0], dtype=a.dtype).reshape(want.shape)
    else:
        if data:
            return "JSON request got binary frames"
        got = np.array(r["result"], dtype=np.float64)
        if got.shape != want.shape:
            return f"shape {got.shape} != {want.shape}"
    tol = 1e-5 if a.dtype == np.float32 else 1e-12
    if not np.allclose(got, want, rtol=tol, atol=tol * a.shape[1]):
        return f"wrong product: max error {np.max(np.abs(got - want))}"
    return None


def client_thread(ctx, endpoint, tid, count, seed, opts, progress, result_q, bad):
    try:
        client_loop(ctx, endpoint, tid, count, seed, opts, progress, result_q, bad)
    except Exception:  # a client that breaks must still report, or the run would wait for it
        import traceback
        result_q.put({"crashed": f"client {tid}: {traceback.format_exc()}"})


def client_loop(ctx, endpoint, tid, count, seed, opts, progress, result_q, bad):
    rng = random.Random(seed * 1000003 + tid)
    nrng = np.random.default_rng(seed * 1000003 + tid)
    stats = {"timeouts": 0, "retried_shutting_down": 0, "retried_busy": 0, "ping": 0, "gpu_info": 0,
             "json_matmul": 0, "binary_matmul": 0, "malformed": 0, "ok": 0, "failed_valid": 0, "failed_malformed": 0,
             "failures": []}
    cl = Client(ctx, endpoint, opts["timeout_ms"], stats)

    def fail(what, why):
        stats["failed_malformed" if what.startswith("malformed") else "failed_valid"] += 1
        if len(stats["failures"]) < 10:  # the first few, for the log
            stats["failures"].append(f"client {tid}: {what}: {why}")
    for i in range(count):
        rid = f"{tid}-{i}"
        u = rng.random()
        if u < 0.10:
            name, frames, code = bad[rng.randrange(len(bad))]
            stats["malformed"] += 1
            r, _, err = cl.call(frames)
            if err:
                fail(f"malformed '{name}'", err)
            elif not isinstance(r, dict) or not isinstance(r.get("error"), str) or r.get("code") != code:
                fail(f"malformed '{name}'", f"expected an error with code {code}, got {str(r)[:300]}")
            elif code == "unknown_op" and r["error"] != "Unknown operation: fly":
                fail(f"malformed '{name}'", f"error text {r['error']!r}")
            else:
                stats["ok"] += 1
        elif u < 0.30:
            stats["ping"] += 1
            r, _, err = cl.call([json.dumps({"op": "ping", "id": rid}).encode()])
            if err or r.get("status") != "ok" or r.get("id") != rid:
                fail("ping", err or str(r)[:300])
            else:
                stats["ok"] += 1
        elif u < 0.40:
            stats["gpu_info"] += 1
            r, _, err = cl.call([json.dumps({"op": "gpu_info", "id": i}).encode()])
            keys = ("name", "total_memory_gb", "multi_processor_count", "cuda_capability")
            if err or "error" in r or r.get("id") != i or any(k not in r for k in keys):
                fail("gpu_info", err or str(r)[:300])
            else:
                stats["ok"] += 1
        else:
            m, k, n = (rng.randint(1, 8) for _ in range(3))
            dt = np.float32 if rng.random() < 0.7 else np.float64
            a = nrng.uniform(-1, 1, (m, k)).astype(dt)
            b = nrng.uniform(-1, 1, (k, n)).astype(dt)
            binary = u >= 0.70
            if binary:
                stats["binary_matmul"] += 1
                d = lambda x, f: {"dtype": str(x.dtype), "shape": list(x.shape), "frame": f}
                hdr = {"op": "matrix_multiply", "id": rid, "a": d(a, 1), "b": d(b, 2)}
                frames = [json.dumps(hdr).encode(), a.tobytes(), b.tobytes()]
            else:
                stats["json_matmul"] += 1
                hdr = {"op": "matrix_multiply", "id": rid, "a": a.tolist(), "b": b.tolist()}
                if dt == np.float64:
                    hdr["dtype"] = "float64"
                frames = [json.dumps(hdr).encode()]
            r, data, err = cl.call(frames)
            why = err or check_matmul(r, data, a, b, binary, rid)
            if why:
                fail(("binary" if binary else "JSON") + f" matmul {m}x{k}x{n} {np.dtype(dt).name}", why)
            else:
                stats["ok"] += 1
        progress[tid] = i + 1
    cl.close()
    result_q.put(stats)


def client_proc(endpoint, tids, counts, seed, opts, progress, result_q):
    ctx = zmq.Context()
    bad = bad_inputs()
    threads = [threading.Thread(target=client_thread,
                                args=(ctx, endpoint, t, c, seed, opts, progress, result_q, bad))
               for t, c in zip(tids, counts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctx.term()


# --- the run ----------------------------------------------------------------------------------

class Tap:
    def __init__(self):
        self.n = self.failed = 0

    def ok(self, cond, name, detail=""):
        self.n += 1
        print(f"{'ok' if cond else 'not ok'} {self.n} - {name}", flush=True)
        if not cond:
            self.failed += 1
            for line in str(detail).splitlines():
                print(f"# {line}", flush=True)
        return cond

    def note(self, text):
        for line in str(text).splitlines():
            print(f"# {line}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("worker")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--timeout-ms", type=int, default=1500)
    ap.add_argument("--rss-interval", type=float, default=0.5)
    ap.add_argument("--rss-tolerance", type=float, default=0.10)
    ap.add_argument("--warmup", type=float, default=0.20,
                    help="share of the requests after the last restart that is warm-up (default 0.2)")
    ap.add_argument("--warmup-min", type=int, default=20000,
                    help="but at least this many requests (default 20000): with 64 clients the worker's "
                         "RSS climbs to a plateau over ~15k requests, as the allocator meets the deepest "
                         "queue of requests in hand")
    ap.add_argument("--no-rss-check", action="store_true",
                    help="report RSS but do not enforce it (sanitizer builds: ASan's quarantine grows)")
    ap.add_argument("--worker-arg", action="append", default=[], help="extra titan-worker argument")
    o = ap.parse_args()
    seed = o.seed if o.seed is not None else random.randrange(1 << 30)
    tap = Tap()
    tap.note(f"soak: {o.requests} requests, {o.clients} clients in {o.procs} processes, "
             f"{o.restarts} restarts, seed {seed}")
    workdir = tempfile.mkdtemp(prefix="titan-soak-")
    workers = []
    t_start = time.monotonic()

    w = WorkerProc(o.worker, "tcp://127.0.0.1:*", workdir, 0, o.worker_arg)
    workers.append(w)
    port = int(w.endpoint.rsplit(":", 1)[1])
    tap.ok(True, f"worker started on {w.endpoint} in {w.ready_s * 1000:.0f} ms")
    endpoint = f"tcp://127.0.0.1:{port}"

    # RSS sampler: (seconds since start, generation, requests done, VmRSS kB) every interval.
    samples = []
    cur = {"w": w, "gen": 0}
    progress = mp.Array("q", o.clients, lock=False)
    stop_sampling = threading.Event()

    def sampler():
        while not stop_sampling.is_set():
            r = rss_kb(cur["w"].pid)
            if r is not None:
                samples.append((time.monotonic() - t_start, cur["gen"], sum(progress), r))
            stop_sampling.wait(o.rss_interval)

    st = threading.Thread(target=sampler, daemon=True)
    st.start()

    # Spread the requests over the threads, and the threads over the processes.
    counts = [o.requests // o.clients + (1 if t < o.requests % o.clients else 0) for t in range(o.clients)]
    result_q = mp.Queue()
    opts = {"timeout_ms": o.timeout_ms}
    ctx = mp.get_context("fork")
    procs = []
    for p in range(o.procs):
        tids = list(range(p, o.clients, o.procs))
        procs.append(ctx.Process(target=client_proc, args=(endpoint, tids, [counts[t] for t in tids], seed,
                                                           opts, progress, result_q), daemon=True))
    for p in procs:
        p.start()

    # Restart the worker (SIGTERM, then the same port) at even steps over the first third of the
    # load, so that the last generation serves two thirds: a warm-up, then a long flat stretch.
    restart_at = [o.requests * (r + 1) // (3 * o.restarts) for r in range(o.restarts)]
    restart_done = []  # (requests done when restarted, exit code, down time s)
    deadline = time.monotonic() + 60 + o.requests / 300
    stats = []
    while len(stats) < o.clients and time.monotonic() < deadline:
        if not any(p.is_alive() for p in procs) and result_q.empty():
            break  # every client process has gone: nothing more will come
        done = sum(progress)
        if restart_at and done >= restart_at[0]:
            restart_at.pop(0)
            t0 = time.monotonic()
            rc = cur["w"].stop()
            try:
                nw = WorkerProc(o.worker, endpoint, workdir, len(workers), o.worker_arg)
            except RuntimeError as e:
                tap.ok(False, f"restart {len(restart_done) + 1}: worker came back on port {port}", e)
                break
            workers.append(nw)
            cur["w"], cur["gen"] = nw, len(workers) - 1
            restart_done.append((done, rc, time.monotonic() - t0))
            # The endpoint file may name the address as IPv4 or IPv4-mapped IPv6: the port is what counts.
            tap.ok(rc == 0 and int(nw.endpoint.rsplit(":", 1)[1]) == port,
                   f"restart {len(restart_done)} after {done} requests: old worker exited {rc}, new one "
                   f"on {nw.endpoint} ({(time.monotonic() - t0) * 1000:.0f} ms down)",
                   f"expected exit 0 and port {port}")
        try:
            while True:
                stats.append(result_q.get_nowait())
        except Exception:
            pass
        time.sleep(0.02)
    elapsed = time.monotonic() - t_start
    r = rss_kb(cur["w"].pid)
    if r is not None:
        samples.append((elapsed, cur["gen"], sum(progress), r))
    stop_sampling.set()
    st.join()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
    codes = [wk.stop() for wk in workers]

    # --- verdicts ---
    crashed = [s["crashed"] for s in stats if "crashed" in s]
    stats = [s for s in stats if "crashed" not in s]
    tap.ok(not crashed, "no client thread raised", "\n".join(crashed)[:4000])
    tap.ok(len(stats) == o.clients, f"all {o.clients} clients finished in {elapsed:.1f} s",
           f"only {len(stats)} finished before the deadline; {sum(progress)} of {o.requests} requests done")
    tap.ok(len(restart_done) == o.restarts, f"worker restarted {len(restart_done)} times under load on port {port}")
    tot = {k: sum(s[k] for s in stats) for k in ("timeouts", "retried_shutting_down", "retried_busy", "ping",
                                                  "gpu_info", "json_matmul", "binary_matmul", "malformed", "ok",
                                                  "failed_valid", "failed_malformed")}
    failures = [f for s in stats for f in s["failures"]]
    sent = sum(tot[k] for k in ("ping", "gpu_info", "json_matmul", "binary_matmul", "malformed"))
    tap.ok(sent == o.requests, f"{sent} requests sent of {o.requests} ({sent / elapsed:.0f}/s)")
    valid = sent - tot["malformed"]
    tap.ok(tot["failed_valid"] == 0,
           f"valid: {valid - tot['failed_valid']} correct answers of {valid} (ping {tot['ping']}, gpu_info "
           f"{tot['gpu_info']}, JSON matmul {tot['json_matmul']}, binary matmul {tot['binary_matmul']})",
           "\n".join(f for f in failures if ": malformed " not in f)[:4000])
    tap.ok(tot["failed_malformed"] == 0,
           f"malformed: {tot['malformed'] - tot['failed_malformed']} error replies with the expected code "
           f"of {tot['malformed']}", "\n".join(f for f in failures if ": malformed " in f)[:4000])
    tap.note(f"retries: {tot['timeouts']} timeouts (socket reopened), {tot['retried_shutting_down']} "
             f"shutting_down and {tot['retried_busy']} busy replies resent")

    # RSS: after the last restart, skip the warm-up, then no sample more than the tolerance above the
    # first. Only growth is a leak: RSS that falls (the allocator giving pages back) is no failure.
    last_gen = len(workers) - 1
    start_done = restart_done[-1][0] if restart_done else 0
    warm_done = start_done + max(o.warmup * (o.requests - start_done), o.warmup_min)
    gen_s = [s for s in samples if s[1] == last_gen]
    post = [s for s in gen_s if s[2] >= warm_done]
    series = " ".join(f"{s[3] / 1024:.1f}" for s in samples)
    tap.note(f"RSS series (MiB, every {o.rss_interval} s, all generations): {series}")
    if len(post) >= 2:
        base = post[0][3]
        lo, hi = min(s[3] for s in post), max(s[3] for s in post)
        within = hi <= base * (1 + o.rss_tolerance)
        desc = (f"RSS after warm-up: {base / 1024:.1f} MiB at {post[0][2]} requests, then {lo / 1024:.1f}.."
                f"{hi / 1024:.1f} MiB over {len(post)} samples ({post[-1][0] - post[0][0]:.1f} s, "
                f"{post[-1][2] - post[0][2]} requests); limit +{o.rss_tolerance * 100:.0f}%")
        if o.no_rss_check:  # not a test point here: the plain build's soak checks RSS in the same run
            tap.note(desc + " (sanitizer build: ASan's quarantine holds freed memory, so the plain build's "
                     "soak is the one that checks RSS)")
        else:
            tap.ok(within, desc, f"RSS grew past {base / 1024:.1f} MiB +{o.rss_tolerance * 100:.0f}%")
    elif not o.no_rss_check:
        tap.ok(False, f"RSS after warm-up: only {len(post)} samples after {warm_done:.0f} requests "
               f"(the RSS check needs --requests of about 50000 or more)")

    san = [i for i, wk in enumerate(workers) if wk.sanitizer_report()]
    tap.ok(all(c == 0 for c in codes) and not san,
           f"all {len(workers)} worker generations exited 0 after SIGTERM, no sanitizer report",
           f"exit codes {codes}; sanitizer reports in generations {san}; logs in {workdir}")
    print(f"1..{tap.n}", flush=True)
    print(f"# summary: {sent} requests in {elapsed:.1f} s, {tot['failed_valid'] + tot['failed_malformed']} failures, {len(workers)} workers, "
          f"{tot['timeouts']} timeouts retried; {'FAIL' if tap.failed else 'PASS'}", flush=True)
    if tap.failed:
        print(f"# worker logs kept in {workdir}", flush=True)
    else:
        for wk in workers:
            for p in (wk.logpath, wk.epfile):
                try:
                    os.unlink(p)
                except OSError:
                    pass
        try:
            os.rmdir(workdir)
        except OSError:
            pass
    return 1 if tap.failed else 0


if __name__ == "__main__":
    sys.exit(main())
