#!/usr/bin/python3
"""test_jobs.py - titan-worker's batch-job consumer against a real redis-server (docs/JOBS.md); TAP.

Jobs are submitted with redis-py exactly as docs/JOBS.md says, so this checks the worker's side of
the contract without libtitan. Needs redis-server, python3-redis, python3-numpy and python3-zmq;
fails without them (make test installs them).

Usage: test_jobs.py PATH/TO/titan-worker
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from workerproc import Tap, Worker

BIN = sys.argv[1]
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
try:
    import numpy as np
    import redis
    import zmq
except ImportError as e:  # make test installs them: a failure, never a skip
    print(f"1..1\nnot ok 1 - {e.name} is missing (make test installs python3-redis python3-numpy python3-zmq)")
    sys.exit(1)
if not os.access(REDIS_SERVER, os.X_OK):
    print("1..1\nnot ok 1 - redis-server is missing (make test installs it: apt install redis-server)")
    sys.exit(1)

tap = Tap()
zctx = zmq.Context()
HOST = socket.gethostname()
FINAL = {"bad_request", "unknown_op", "too_large", "unsupported", "unauthorized"}


class RedisServer:
    """A redis-server of our own in a temporary directory, with AOF on and fsync on every write."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="titan-redis-")
        self.port = None
        self.proc = None
        self.start()

    def start(self):
        for _ in range(20):
            port = self.port
            if port is None:
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
                s.close()
            log = open(os.path.join(self.dir, "redis.log"), "a")
            proc = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", self.dir,
                                     "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                                     "--protected-mode", "yes"], stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    # Make sure the server answering is ours, not another test's on a reused port.
                    info = redis.Redis(port=port, socket_timeout=1).info()
                    if info.get("process_id") == proc.pid and not info.get("loading"):
                        self.port, self.proc = port, proc
                        return
                except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                    pass
                time.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if self.port is not None:
                time.sleep(0.2)  # restarting on our port: let it go free
        raise RuntimeError("cannot start redis-server: " + open(os.path.join(self.dir, "redis.log")).read()[-2000:])

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        return redis.Redis(port=self.port, socket_timeout=10)

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- the client side of docs/JOBS.md, by hand ----

def submit(r, prefix, header, frames=(), priority="normal", idem=None, nframes=None):
    """docs/JOBS.md step 1: idempotency key, record, index, then the stream entry. Returns the id.
    `nframes` overrides the record's frame count (to make a broken record before a worker sees it)."""
    P = "{" + prefix + "}"
    jid = os.urandom(16).hex()
    if idem is not None:
        if not r.set(f"{P}:idem:{idem}", jid, nx=True):
            return r.get(f"{P}:idem:{idem}").decode()
    now = int(time.time() * 1000)
    rec = {"state": "queued", "header": header if isinstance(header, str) else json.dumps(header),
           "nframes": len(frames) if nframes is None else nframes, "priority": priority, "attempts": 0, "created_ms": now}
    for i, f in enumerate(frames, 1):
        rec[f"frame:{i}"] = f
    if idem is not None:
        rec["idempotency_key"] = idem
    p = r.pipeline(transaction=False)
    p.hset(f"{P}:job:{jid}", mapping=rec)
    p.zadd(f"{P}:index", {jid: now})
    p.execute()
    r.xadd(f"{P}:jobs:high" if priority == "high" else f"{P}:jobs", {"id": jid})
    return jid


def submit_many(r, prefix, jobs):
    """Submits [(header, frames)] in one pipeline, records before entries. Returns the ids."""
    P = "{" + prefix + "}"
    ids = [os.urandom(16).hex() for _ in jobs]
    now = int(time.time() * 1000)
    p = r.pipeline(transaction=False)
    for jid, (header, frames) in zip(ids, jobs):
        rec = {"state": "queued", "header": json.dumps(header), "nframes": len(frames), "priority": "normal",
               "attempts": 0, "created_ms": now}
        for i, f in enumerate(frames, 1):
            rec[f"frame:{i}"] = f
        p.hset(f"{P}:job:{jid}", mapping=rec)
        p.zadd(f"{P}:index", {jid: now})
    p.execute()
    p = r.pipeline(transaction=False)
    for jid in ids:
        p.xadd(f"{P}:jobs", {"id": jid})
    p.execute()
    return ids


def cancel(r, prefix, jid):
    """docs/JOBS.md step 4: cancelled only while queued. Returns True when it cancelled."""
    key = "{" + prefix + "}:job:" + jid
    with r.pipeline() as p:
        p.watch(key)
        if p.hget(key, "state") != b"queued":
            return False
        p.multi()
        p.hset(key, "state", "cancelled")
        p.execute()
        return True


def record(r, prefix, jid):
    return {k.decode(): v for k, v in r.hgetall("{" + prefix + "}:job:" + jid).items()}


def states(r, prefix, ids):
    p = r.pipeline(transaction=False)
    for jid in ids:
        p.hget("{" + prefix + "}:job:" + jid, "state")
    return [s.decode() if s else None for s in p.execute()]


def wait_until(fn, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


def pending(r, stream, group="titan-workers"):
    try:
        return r.xpending(stream, group)["pending"]
    except redis.ResponseError:
        return -1


def matmul_job(a, b):
    d = lambda x, f: {"dtype": str(x.dtype), "shape": list(x.shape), "frame": f}
    return {"op": "matrix_multiply", "a": d(a, 1), "b": d(b, 2)}, [a.tobytes(), b.tobytes()]


def result_of(rec):
    hdr = json.loads(rec["result_header"])
    res = hdr["result"]
    return np.frombuffer(rec["result:1"], dtype=res["dtype"]).reshape(res["shape"])


def one_result_only(rec):
    """Exactly the reply's fields: result_nframes frames, no stale result:N, no request frames left."""
    n = int(rec.get("result_nframes", b"-1"))
    results = sorted(k for k in rec if k.startswith("result:"))
    frames = [k for k in rec if k.startswith("frame:")]
    return n == 1 and results == ["result:1"] and not frames


def start_worker(srv, prefix, *args):
    return Worker(BIN, "--redis", srv.url, "--redis-prefix", prefix, "--blas-threads", "1", *args)


def terminate(w, timeout=30):
    """One SIGTERM (a second one would mean "stop now"), then the exit status."""
    w.proc.send_signal(signal.SIGTERM)
    try:
        w.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    return w.stop()


def consumer_name(w):
    return f"{HOST}:{w.proc.pid}"


# ---- the checks ----

def options():
    """Bad job settings are usage errors (exit 2) with a clear message; none of them connects."""
    for args, words in [(["--redis", "http://127.0.0.1:6379"], "must start with redis://"),
                        (["--redis", "redis://127.0.0.1:99999"], "port"),
                        (["--redis", "redis://:pw"], "host"),
                        (["--redis", "redis://127.0.0.1/x"], "database"),
                        (["--redis", "redis://:hunter2@127.0.0.1:0"], "redis://***@127.0.0.1:0"),
                        (["--redis", "redis://:a%zz@127.0.0.1"], "%XX escape"),
                        (["--redis-prefix", "a{b"], "--redis-prefix"),
                        (["--max-attempts", "0"], "--max-attempts"),
                        (["--visibility-timeout", "5"], "--visibility-timeout")]:
        p = subprocess.run([BIN, "--bind", "tcp://127.0.0.1:*", *args], capture_output=True, text=True, timeout=20)
        tap.ok(p.returncode == 2 and words in p.stderr and "hunter2" not in p.stderr,
               f"{' '.join(args)} is refused (exit 2, says '{words}')", (p.returncode, p.stderr))
    h = subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=20).stdout
    tap.ok(all(o in h for o in ["--redis URL", "--redis-password", "--redis-prefix", "--jobs-group",
                                "--visibility-timeout", "--max-attempts", "--result-ttl"]),
           "--help lists the job options", h)


def no_redis():
    """A worker whose Redis is away still serves ZeroMQ, logs the outage once, and stops at once."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    w = Worker(BIN, "--redis", f"redis://:secret@127.0.0.1:{port}/2", "--threads", "1")
    w6 = Worker(BIN, "--redis", f"redis://admin:p%40ss@[::1]:{port}/3", "--redis-prefix", "p6", "--jobs-group", "g6")
    log6 = w6.read_log()
    tap.ok(w6.stop() == 0 and f"consuming {{p6}}:jobs:high and {{p6}}:jobs (group g6, consumer {HOST}:{w6.proc.pid}) "
           f"from redis://[::1]:{port}/3" in log6 and "p%40ss" not in log6 and "p@ss" not in log6,
           "a URL with user, escaped password and an IPv6 host is accepted; prefix and group are used", log6)
    d = zctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.RCVTIMEO, 5000)
    d.connect(w.endpoint)
    d.send_multipart([b"", b'{"op":"ping"}'])
    tap.ok(b'"ok"' in d.recv_multipart()[1], "without Redis, the worker still answers ping")
    d.close()
    time.sleep(1.5)  # a few reconnect attempts
    t0 = time.monotonic()
    rc = w.stop()
    took = time.monotonic() - t0
    log = w.read_log() if not w.log.closed else open(w.logpath).read()
    tap.ok(rc == 0 and took < 3, "SIGTERM stops it within 3 s while it waits for Redis", (rc, took))
    tap.ok(log.count("is unavailable") == 1, "the outage is logged once, not on every retry", log)
    tap.ok("secret" not in log, "the password never appears in the log", log)
    tap.ok(f"from redis://127.0.0.1:{port}/2" in log and "jobs: consuming {titan}:jobs:high and {titan}:jobs "
           "(group titan-workers, consumer " in log, "one info line names streams, group, consumer and URL", log)


def many_jobs_with_a_crash(srv):
    """(a) 1000 binary products (and more while the victim is looked at) on 3 workers, one SIGKILLed mid-run:
    every job ends done, once, right."""
    r = srv.client()
    prefix = "t-a"
    P = "{t-a}"
    rng = np.random.default_rng(1)
    mats = [(rng.standard_normal((8, 8)).astype(np.float32), rng.standard_normal((8, 8)).astype(np.float32))
            for _ in range(1000)]
    ids = submit_many(r, prefix, [matmul_job(a, b) for a, b in mats])
    common = ("--visibility-timeout", "1000", "--threads", "2")
    workers = [start_worker(srv, prefix, *common) for _ in range(3)]

    def progressed():
        g = [x for x in r.xinfo_groups(f"{P}:jobs") if x["name"] == b"titan-workers"]
        return g and (g[0]["entries-read"] or 0) >= 250
    tap.ok(wait_until(progressed, 30, 0.005), "the workers take jobs up")

    # The victim holds a job only while the stream has some left: fast workers can take all 1000 before the
    # loop below catches it with one. So the stream never runs dry while it looks: when fewer than 300 entries
    # are left unread, 500 more products join, checked like the first 1000 (at most 10000 more in all).
    def unread():
        g = [x for x in r.xinfo_groups(f"{P}:jobs") if x["name"] == b"titan-workers"]
        return r.xinfo_stream(f"{P}:jobs")["entries-added"] - (g[0]["entries-read"] or 0)

    def top_up():
        if len(ids) >= 11000 or unread() >= 300:
            return
        more = [(rng.standard_normal((8, 8)).astype(np.float32), rng.standard_normal((8, 8)).astype(np.float32))
                for _ in range(500)]
        ids.extend(submit_many(r, prefix, [matmul_job(a, b) for a, b in more]))
        mats.extend(more)

    # Kill the victim while it holds a job: stop it, and look at what it has pending.
    victim = workers[1]
    held = []
    for _ in range(200):
        top_up()
        victim.proc.send_signal(signal.SIGSTOP)
        # What the victim wrote before it stopped is in Redis's socket buffer, and Redis may not have run
        # it yet (an outcome's store script acknowledges its entries). A few round trips of our own let
        # Redis's event loop take it in first: then what is pending stays pending.
        for _ in range(5):
            r.ping()
        held = r.xpending_range(f"{P}:jobs", "titan-workers", "-", "+", 10, consumername=consumer_name(victim))
        if held:
            break
        victim.proc.send_signal(signal.SIGCONT)
        time.sleep(0.003)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    victim.stop()
    t_kill_ms = int(time.time() * 1000)
    tap.ok(len(held) >= 1, "the SIGKILLed worker held at least one unacknowledged job", held)
    held_ids = [r.xrange(f"{P}:jobs", h["message_id"], h["message_id"])[0][1][b"id"].decode() for h in held]
    workers.append(start_worker(srv, prefix, *common))  # a replacement, as systemd would start

    all_done = wait_until(lambda: states(r, prefix, ids).count("done") == len(ids), max(60, len(ids) / 50), 0.1)
    st = states(r, prefix, ids)
    tap.ok(all_done, f"all {len(ids)} jobs end done ({len(ids) - 1000} of them added while the victim was looked at)",
           {s: st.count(s) for s in set(st)})
    bad, dup, no_attempts = [], [], []
    p = r.pipeline(transaction=False)
    for jid in ids:
        p.hgetall(f"{P}:job:{jid}")
    recs = [{k.decode(): v for k, v in h.items()} for h in p.execute()]
    for jid, rec, (a, b) in zip(ids, recs, mats):
        if rec.get("state") != b"done":
            continue
        if not one_result_only(rec):
            dup.append((jid, sorted(rec)))
        elif not np.allclose(result_of(rec), a @ b, rtol=1e-5, atol=1e-5):
            bad.append(jid)
        if int(rec.get("attempts", b"0")) < 1 or not rec.get("worker") or not rec.get("finished_ms"):
            no_attempts.append(jid)
    tap.ok(not bad, "every result equals numpy's product", bad[:5])
    tap.ok(not dup, "every job holds exactly one result frame and no request frames", dup[:3])
    tap.ok(not no_attempts, "every job records attempts, worker and finished_ms", no_attempts[:5])
    ttls = [r.ttl(f"{P}:job:{jid}") for jid in ids[:20]]
    tap.ok(all(0 < t <= 86400 for t in ttls), "ended jobs get the default result TTL (86400 s)", ttls)
    by_id = dict(zip(ids, recs))
    reclaimed = [(j, by_id[j].get("attempts"), by_id[j].get("worker")) for j in held_ids]
    # An outcome the victim had already sent (pipelined) when it was stopped still lands in Redis: such a job
    # is done by the victim, before the kill. Every other held job must be reclaimed by another worker.
    mine = consumer_name(victim).encode()
    by_victim = [j for j in held_ids if by_id[j].get("worker") == mine]
    tap.ok(all(by_id[j].get("state") == b"done" for j in held_ids)
           and all(int(by_id[j].get("finished_ms", b"0")) <= t_kill_ms + 1000 for j in by_victim)
           and len(by_victim) < len(held_ids),
           "the killed worker's pending jobs were reclaimed and finished by another worker "
           f"({len(held_ids) - len(by_victim)} reclaimed, {len(by_victim)} it had finished before the kill)",
           reclaimed)
    tap.ok(pending(r, f"{P}:jobs") == 0, "nothing is left pending in the group", pending(r, f"{P}:jobs"))
    tap.ok(r.xlen(f"{P}:dead") == 0, "nothing went to the dead-letter stream", r.xlen(f"{P}:dead"))
    for w in workers:
        if w is not victim:
            w.stop()


def dead_letters(srv):
    """(b) An entry held by a consumer that crashed mid-job goes to P:dead once attempts pass
    --max-attempts; a retryable error (timeout) leaves the entry pending, then dead-letters too."""
    r = srv.client()
    prefix, P = "t-b", "{t-b}"
    r.xgroup_create(f"{P}:jobs", "titan-workers", id="0", mkstream=True)
    a = np.ones((2, 2), np.float32)
    crashed = submit(r, prefix, *matmul_job(a, a))
    unstarted = submit(r, prefix, *matmul_job(a, a))
    # A fake consumer reads both; it "starts" the first (as a worker does) and dies before the second.
    got = r.xreadgroup("titan-workers", "ghost:1", {f"{P}:jobs": ">"}, count=2)
    tap.ok(len(got[0][1]) == 2, "a fake consumer holds both entries")
    r.hincrby(f"{P}:job:{crashed}", "attempts", 1)
    r.hset(f"{P}:job:{crashed}", mapping={"state": "running", "worker": "ghost:1"})
    w = start_worker(srv, prefix, "--max-attempts", "1", "--visibility-timeout", "300")
    ok = wait_until(lambda: states(r, prefix, [crashed, unstarted]) == ["failed", "done"], 15)
    rec = record(r, prefix, crashed)
    tap.ok(ok, "past --max-attempts 1 the crashed job fails; the unstarted one runs", rec)
    dead = r.xrange(f"{P}:dead")
    fields = dead[0][1] if dead else {}
    tap.ok(len(dead) == 1 and fields.get(b"id") == crashed.encode() and fields.get(b"attempts") == b"1"
           and b"gave up after 1 attempts" in fields.get(b"error", b""),
           "P:dead holds one entry: id, error, attempts", dead)
    tap.ok(rec.get("attempts") == b"1" and rec.get("code") == b"internal" and rec.get("error") == fields.get(b"error")
           and rec.get("finished_ms") and "result_header" not in rec and not any(k.startswith("frame:") for k in rec),
           "the dead job's record: failed, attempts 1, error and code, no request frames", rec)
    tap.ok(0 < r.ttl(f"{P}:job:{crashed}") <= 86400, "the dead job's record expires", r.ttl(f"{P}:job:{crashed}"))
    tap.ok(pending(r, f"{P}:jobs") == 0, "both entries are acknowledged", pending(r, f"{P}:jobs"))
    w.stop()

    # A retryable code: deadline_ms 1 behind a busy executor answers "timeout" on every attempt.
    prefix, P = "t-b2", "{t-b2}"
    w = start_worker(srv, prefix, "--max-attempts", "2", "--visibility-timeout", "300", "--threads", "1",
                     "--queue", "16")
    d = zctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(w.endpoint)
    big = np.ones((2048, 2048), np.float32)  # ~0.2 s each, so the executor is never idle
    hdr, frames = matmul_job(big, big)
    msg = [b"", json.dumps(hdr).encode(), *frames]
    outstanding = 0
    # One running and six queued (within this client's share of --queue 16): the executor stays busy for six
    # more products (seconds) even if this loop is slow to send more, so each attempt of the job, which the
    # fair queue puts right after the running product, waits past its 1 ms deadline.
    for _ in range(7):
        d.send_multipart(msg)
        outstanding += 1
    # Submit only once the worker says one product runs and two wait (sending 3 x 32 MB can take a
    # while on a loaded machine: an idle executor would run the job at once, within its deadline).
    probe = zctx.socket(zmq.REQ)
    probe.setsockopt(zmq.LINGER, 0)
    probe.setsockopt(zmq.RCVTIMEO, 20000)
    probe.connect(w.endpoint)

    def loaded():
        while d.poll(0):  # an answer (or a busy refusal): send the product again, so that one always waits
            d.recv_multipart()
            d.send_multipart(msg)
        probe.send(b'{"op":"gpu_info"}')
        g = json.loads(probe.recv())
        return g.get("queue_depth", 0) >= 1 and g.get("inflight", 0) >= 2
    tap.ok(wait_until(loaded, 60, 0.01), "the executor is busy and a product waits behind it")
    probe.close()
    h2, f2 = matmul_job(a, a)
    h2["deadline_ms"] = 1
    late = submit(r, prefix, h2, f2)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and states(r, prefix, [late]) != ["failed"]:
        if d.poll(50):
            d.recv_multipart()
            d.send_multipart(msg)
    while outstanding and d.poll(5000):
        d.recv_multipart()
        outstanding -= 1
    d.close()
    rec = record(r, prefix, late)
    dead = r.xrange(f"{P}:dead")
    tap.ok(rec.get("state") == b"failed" and rec.get("code") == b"timeout" and rec.get("attempts") == b"2"
           and b"deadline_ms" in rec.get("error", b""),
           "a job that times out on each of 2 attempts fails with code timeout", rec)
    tap.ok(len(dead) == 1 and dead[0][1].get(b"attempts") == b"2", "and goes to P:dead with attempts 2", dead)
    log = w.read_log()
    tap.ok(log.count("attempt 1 of 2 failed (timeout)") == 1 and log.count("attempt 2 of 2 failed (timeout)") == 1,
           "one warning per failed attempt", log[-3000:])
    tap.ok(pending(r, f"{P}:jobs") == 0, "the timed-out job's entry is acknowledged once it is dead",
           pending(r, f"{P}:jobs"))
    w.stop()


def final_failures(srv):
    """(c) Final error codes end the job failed at once, with the reply stored; no retries."""
    r = srv.client()
    prefix, P = "t-c", "{t-c}"
    w = start_worker(srv, prefix, "--visibility-timeout", "300", "--result-ttl", "600")
    mism = submit(r, prefix, {"op": "matrix_multiply", "a": [[1, 2]], "b": [[1, 2]], "id": "m"})
    unknown = submit(r, prefix, {"op": "fly"})
    short = submit(r, prefix, json.dumps(matmul_job(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))[0]),
                   [np.ones((2, 2), np.float32).tobytes()])  # the header names frame 2: there is none
    broken = submit(r, prefix, {"op": "ping"}, nframes=3)  # a record that breaks docs/JOBS.md
    ping = submit(r, prefix, {"op": "ping", "id": 5}, priority="high")
    ids = [mism, unknown, short, broken, ping]
    tap.ok(wait_until(lambda: None not in states(r, prefix, ids) and
                      all(s in ("done", "failed") for s in states(r, prefix, ids)), 15), "the five jobs end")
    time.sleep(1.0)  # > 3 visibility timeouts: a retry would show in attempts
    recs = {j: record(r, prefix, j) for j in ids}
    m = recs[mism]
    tap.ok(m["state"] == b"failed" and m["code"] == b"bad_request" and b"inner dimensions" in m["error"]
           and json.loads(m["result_header"]) == {"error": m["error"].decode(), "code": "bad_request", "id": "m"}
           and m["result_nframes"] == b"0" and m["attempts"] == b"1",
           "bad_request: failed once, with code, error and the error reply", m)
    u = recs[unknown]
    tap.ok(u["state"] == b"failed" and u["code"] == b"unknown_op" and u["error"] == b"Unknown operation: fly"
           and u["attempts"] == b"1", "unknown_op: failed once", u)
    s = recs[short]
    tap.ok(s["state"] == b"failed" and s["code"] == b"bad_request" and s["attempts"] == b"1",
           "a missing tensor frame: bad_request from the worker", s)
    b = recs[broken]
    tap.ok(b["state"] == b"failed" and b["code"] == b"bad_request" and b"frame" in b["error"]
           and "result_header" not in b and b["attempts"] == b"1",
           "a record whose frames are missing fails without a reply", b)
    p = recs[ping]
    tap.ok(p["state"] == b"done" and json.loads(p["result_header"]).get("status") == "ok"
           and json.loads(p["result_header"]).get("id") == 5 and p["result_nframes"] == b"0",
           "a ping job is done, with the ping reply", p)
    ttl = r.ttl(f"{P}:job:{mism}")
    tap.ok(0 < ttl <= 600, "--result-ttl 600 sets the records' TTL", ttl)
    tap.ok(pending(r, f"{P}:jobs") == 0 and pending(r, f"{P}:jobs:high") == 0, "every entry is acknowledged")
    w.stop()


def cancelled_and_priority(srv):
    """(d) Jobs queued before any worker ran are served; a cancelled one never runs; high goes first."""
    r = srv.client()
    prefix, P = "t-d", "{t-d}"
    a = np.arange(4, dtype=np.float32).reshape(2, 2)
    normal = [submit(r, prefix, *matmul_job(a, a)) for _ in range(8)]
    high = [submit(r, prefix, *matmul_job(a, a), priority="high") for _ in range(3)]
    victim = normal[2]
    tap.ok(cancel(r, prefix, victim), "a queued job can be cancelled")
    w = start_worker(srv, prefix, "--threads", "1", "--log-level", "debug")
    rest = [j for j in normal + high if j != victim]
    tap.ok(wait_until(lambda: states(r, prefix, rest) == ["done"] * len(rest), 15),
           "jobs submitted before the consumer group existed are served", states(r, prefix, rest))
    time.sleep(0.3)
    v = record(r, prefix, victim)
    tap.ok(v.get("state") == b"cancelled" and v.get("attempts") == b"0" and "started_ms" not in v
           and "worker" not in v and "result_header" not in v, "the cancelled job never ran", v)
    tap.ok(not any(k.startswith("frame:") for k in v) and 0 < r.ttl(f"{P}:job:{victim}") <= 86400,
           "its request frames are dropped and its record expires", (sorted(v), r.ttl(f"{P}:job:{victim}")))
    tap.ok(pending(r, f"{P}:jobs") == 0 and r.xinfo_groups(f"{P}:jobs")[0]["entries-read"] == 8,
           "its entry was read and acknowledged", r.xinfo_groups(f"{P}:jobs"))
    log = w.read_log()
    tap.ok(f"job {victim} skipped (cancelled)" in log, "the worker logs the skip at debug level")
    order = [x for x in log.splitlines() if " done (attempt" in x]
    ranks = [0 if any(h in x for h in high) else 1 for x in order]
    tap.ok(ranks == sorted(ranks) and len(ranks) == 10, "all high-priority jobs ran before any normal one", order)
    w.stop()


def redis_restart(srv_unused):
    """(e) redis-server killed and restarted mid-run: nothing acknowledged is lost, the worker reconnects
    (one warning, one info line) and finishes the rest."""
    srv = RedisServer()
    try:
        r = srv.client()
        prefix, P = "t-e", "{t-e}"
        rng = np.random.default_rng(5)
        mats = [(rng.standard_normal((16, 16)).astype(np.float32), rng.standard_normal((16, 16)).astype(np.float32))
                for _ in range(400)]
        ids = submit_many(r, prefix, [matmul_job(a, b) for a, b in mats])
        w = start_worker(srv, prefix, "--threads", "2", "--visibility-timeout", "1000")
        tap.ok(wait_until(lambda: states(r, prefix, ids).count("done") >= 100, 30, 0.01), "100 jobs done")
        before = {j: rec for j, rec in ((j, record(r, prefix, j)) for j in ids) if rec.get("state") == b"done"}
        srv.kill()
        time.sleep(0.5)
        srv.start()
        r = srv.client()
        kept = [j for j, rec in before.items() if record(r, prefix, j) != rec]
        tap.ok(not kept, f"all {len(before)} jobs done before the crash keep their record and result", kept[:3])
        ok = wait_until(lambda: states(r, prefix, ids).count("done") == len(ids), 40, 0.1)
        st = states(r, prefix, ids)
        tap.ok(ok, "after the restart the worker finishes all 400", {s: st.count(s) for s in set(st)})
        wrong = [j for j, (a, b) in zip(ids, mats) if not (record(r, prefix, j).get("state") == b"done" and
                 np.allclose(result_of(record(r, prefix, j)), a @ b, rtol=1e-5, atol=1e-5))]
        tap.ok(not wrong, "every result is right", wrong[:3])
        tap.ok(pending(r, f"{P}:jobs") == 0, "nothing stays pending", pending(r, f"{P}:jobs"))
        # The worker may have finished everything before Redis went away; it notices the restart on its
        # next call (a blocking read times out within seconds), so wait for that line rather than race it.
        wait_until(lambda: "is back after" in w.read_log(), 15, 0.1)
        log = w.read_log()
        tap.ok(log.count("is unavailable") == 1 and log.count("is back after") == 1,
               "one warning when Redis went away, one info line when it came back", log[-3000:])
        w.stop()
    finally:
        srv.stop()


def shared_admission(srv):
    """(f) --threads 1 --queue 0: jobs and ZeroMQ requests share one executor; pings still come back."""
    r = srv.client()
    prefix, P = "t-f", "{t-f}"
    rng = np.random.default_rng(7)
    mats = [(rng.standard_normal((192, 192)).astype(np.float32), rng.standard_normal((192, 192)).astype(np.float32))
            for _ in range(150)]
    w = start_worker(srv, prefix, "--threads", "1", "--queue", "0")
    ids = submit_many(r, prefix, [matmul_job(a, b) for a, b in mats])
    d = zctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(w.endpoint)
    small = np.ones((64, 64), np.float32)
    pings = answered = products = busy = 0
    slow = []
    while states(r, prefix, ids[-1:]) != ["done"] and pings < 2000:
        t0 = time.monotonic()
        d.send_multipart([b"", json.dumps({"op": "ping", "id": pings}).encode()])
        if d.poll(2000):
            rep = json.loads(d.recv_multipart()[1])
            answered += rep.get("status") == "ok" and rep.get("id") == pings
            if time.monotonic() - t0 > 0.5:
                slow.append(time.monotonic() - t0)
        pings += 1
        if pings % 10 == 0:  # a product over ZeroMQ now and then competes for the executor
            hdr, frames = matmul_job(small, small)
            d.send_multipart([b"", json.dumps(hdr).encode(), *frames])
            if d.poll(5000):
                rep = json.loads(d.recv_multipart()[1])
                products += "result" in rep
                busy += rep.get("code") == "busy"
    d.close()
    tap.ok(pings >= 5 and answered == pings and not slow, f"{answered} of {pings} pings answered while jobs ran",
           (pings, answered, slow))
    tap.ok(products + busy >= 1, f"ZeroMQ products answered ({products} results, {busy} busy)")
    ok = wait_until(lambda: states(r, prefix, ids) == ["done"] * len(ids), 30)
    wrong = [j for j, (a, b) in zip(ids, mats)
             if not np.allclose(result_of(record(r, prefix, j)), a @ b, rtol=1e-4, atol=1e-3)]
    tap.ok(ok and not wrong, "all 150 jobs done and right, busy answers notwithstanding", wrong[:3])
    t0 = time.monotonic()
    rc = w.stop()
    tap.ok(rc == 0 and time.monotonic() - t0 < 3, "the worker stops promptly with the consumer running",
           (rc, time.monotonic() - t0))


def busy_probe(d):
    """Sends a tiny product; True when the worker answers busy (its only executor is taken)."""
    a = np.ones((1, 1), np.float32)
    hdr, frames = matmul_job(a, a)
    d.send_multipart([b"", json.dumps(hdr).encode(), *frames])
    return d.poll(10000) and json.loads(d.recv_multipart()[1]).get("code") == "busy"


def occupy(w, msg):
    """Sends the long product msg until it runs on w's only executor (a probe is answered busy).
    Returns (the product's DEALER, the probe's DEALER), or None."""
    d, probe = zctx.socket(zmq.DEALER), zctx.socket(zmq.DEALER)
    for s in (d, probe):
        s.setsockopt(zmq.LINGER, 0)
        s.connect(w.endpoint)
    deadline = time.monotonic() + 20
    d.send_multipart(msg)
    while time.monotonic() < deadline:
        if d.poll(100):  # answered already: busy, because a probe held the executor; again
            d.recv_multipart()
            d.send_multipart(msg)
            continue
        if busy_probe(probe):
            return d, probe
    d.close()
    probe.close()
    return None


def long_jobs_and_shutdown(srv):
    """(g) A job that waits (busy) longer than the visibility timeout is not taken by another worker:
    its entry's idle time is reset. SIGTERM lets the job in hand finish and store its result; a job
    still queued in the server at SIGTERM has its start undone, and another worker runs it later."""
    r = srv.client()
    prefix, P = "t-g", "{t-g}"
    args = ("--threads", "1", "--queue", "0", "--visibility-timeout", "150")
    w1 = start_worker(srv, prefix, *args)
    big = np.random.default_rng(3).standard_normal((3072, 3072)).astype(np.float32)
    hdr, frames = matmul_job(big, big)
    socks = occupy(w1, [b"", json.dumps(hdr).encode(), *frames])  # ~0.7 s on the only executor
    tap.ok(socks is not None, "a long ZeroMQ product occupies the executor")
    d, probe = socks
    a = np.ones((2, 2), np.float32)
    waiting = submit(r, prefix, *matmul_job(a, a))
    tap.ok(wait_until(lambda: states(r, prefix, [waiting]) == ["running"], 10, 0.005), "the job is taken up")
    w2 = start_worker(srv, prefix, *args)  # idle, scanning for entries idle over 150 ms
    got = bool(d.poll(30000)) and b"result" in d.recv_multipart()[1]
    ok = wait_until(lambda: states(r, prefix, [waiting]) == ["done"], 10)
    rec = record(r, prefix, waiting)
    waited = int(rec.get("finished_ms", b"0")) - int(rec.get("started_ms", b"0"))
    tap.ok(got and ok and rec.get("attempts") == b"1" and rec.get("worker") == consumer_name(w1).encode()
           and waited > 450, f"a job kept busy {waited} ms (over 3x the visibility timeout) stays with its worker "
           "and runs once", (got, waited, rec))
    w2.stop()
    probe.close()
    d.close()
    terminate(w1)

    # SIGTERM while a job runs: the drain lets it finish, and its result is stored.
    w1 = start_worker(srv, prefix, "--threads", "1", "--queue", "0", "--visibility-timeout", "300")
    probe = zctx.socket(zmq.DEALER)
    probe.setsockopt(zmq.LINGER, 0)
    probe.connect(w1.endpoint)

    big2 = big[:2048, :2048].copy()
    running = submit(r, prefix, *matmul_job(big2, big2))
    tap.ok(wait_until(lambda: busy_probe(probe), 20, 0.0), "the long job occupies the executor")
    rc = terminate(w1)
    probe.close()
    rec = record(r, prefix, running)
    tap.ok(rc == 0 and rec.get("state") == b"done" and rec.get("attempts") == b"1"
           and rec.get("worker") == consumer_name(w1).encode(),
           "SIGTERM while a job runs: it finishes, its result is stored, exit 0", (rc, rec.get("state"),
                                                                                     rec.get("attempts")))
    tap.ok(rec.get("state") == b"done" and np.allclose(result_of(rec), big2 @ big2, rtol=1e-3, atol=1e-2),
           "and its result is right")
    tap.ok(pending(r, f"{P}:jobs") == 0, "nothing pending", pending(r, f"{P}:jobs"))

    # A job admitted but still queued at SIGTERM: the server answers it shutting_down.
    prefix, P = "t-g2", "{t-g2}"
    w3 = start_worker(srv, prefix, "--threads", "1", "--queue", "1", "--visibility-timeout", "300",
                      "--drain-timeout", "120000")
    d = zctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(w3.endpoint)
    msg = [b"", json.dumps(hdr).encode(), *frames]
    d.send_multipart(msg)  # holds the only executor (~0.7 s)
    time.sleep(0.1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # A tiny job still "running" 150 ms after it started waits in the queue behind the product;
        # one that arrived before (or after) the product is done by then: try again.
        if d.poll(0):
            d.recv_multipart()
            d.send_multipart(msg)
            time.sleep(0.05)  # let the product reach the executor first
        queued = submit(r, prefix, *matmul_job(a, a))
        # A job that ran at once (the product was not in the way) is "done" before a poll sees it
        # "running": try again at once rather than wait out the timeout.
        started = wait_until(lambda: states(r, prefix, [queued])[0] in ("running", "done"), 10, 0.005)
        started = started and states(r, prefix, [queued]) == ["running"]
        time.sleep(0.15)
        if started and states(r, prefix, [queued]) == ["running"]:
            break
    tap.ok(states(r, prefix, [queued]) == ["running"], "a job waits in the server's queue behind a product")
    w3.proc.send_signal(signal.SIGTERM)
    # As long as the product takes (this worker's drain waits up to 120 s: three test suites on two cores
    # took over 30 s): the check is that it comes, not when.
    got = d.poll(120000) and b"result" in d.recv_multipart()[1]
    d.close()
    w3.proc.wait(120)
    rc = w3.stop()
    rec = record(r, prefix, queued)
    tap.ok(rc == 0 and got, "the ZeroMQ product in hand still gets its result; exit 0", (rc, got))
    tap.ok(rec.get("state") == b"queued" and rec.get("attempts") == b"0",
           "the job that never ran is queued again, its attempt undone", rec)
    log = open(w3.logpath).read()
    tap.ok("taking no more jobs" in log and "stays pending" in log, "the worker says so", log[-2000:])
    w4 = start_worker(srv, prefix, "--visibility-timeout", "300")
    ok = wait_until(lambda: states(r, prefix, [queued]) == ["done"], 15)
    rec = record(r, prefix, queued)
    tap.ok(ok and rec.get("attempts") == b"1" and rec.get("worker") == consumer_name(w4).encode(),
           "another worker reclaims it after the visibility timeout and runs it once", rec)
    w4.stop()

def in_hand(srv):
    """(h) The consumer keeps --jobs-inflight jobs in hand (default 16 under --threads 1) while its one
    executor is busy, and takes no more once the requests in hand reach --max-inflight-bytes."""
    r = srv.client()
    big = np.random.default_rng(5).standard_normal((3072, 3072)).astype(np.float32)  # 75.5 MB of request
    small = np.ones((512, 512), np.float32)  # 2 MiB of request

    def held(prefix, *args):
        P = "{" + prefix + "}"
        w = start_worker(srv, prefix, "--threads", "1", *args)
        first = submit(r, prefix, *matmul_job(big, big))
        ok = wait_until(lambda: states(r, prefix, [first]) == ["running"], 20, 0.005)
        ids = submit_many(r, prefix, [matmul_job(small, small) for _ in range(24)])
        most = 0
        while ok and states(r, prefix, [first]) == ["running"]:  # the big product holds the executor
            most = max(most, pending(r, f"{P}:jobs"))
            time.sleep(0.01)
        done = wait_until(lambda: states(r, prefix, ids) == ["done"] * len(ids), 60)
        rec = record(r, prefix, ids[-1])
        right = done and np.allclose(result_of(rec), small @ small)
        log = w.read_log()
        w.stop()
        return ok, most, right, log

    ok, most, right, log = held("t-h1")
    tap.ok(ok and most == 16 and right, f"by default 16 jobs are in hand while the executor is busy (saw {most}); "
           "all 24 done and right", (ok, most, right))
    tap.ok("up to 16 jobs in flight" in log, "the start-up line says how many", log[-1500:])
    ok, most, right, log = held("t-h2", "--jobs-inflight", "5")
    tap.ok(ok and most == 5 and right, f"--jobs-inflight 5 holds 5 (saw {most})", (ok, most, right))
    # 75.5 MB in hand; then one 2 MiB job at a time while under 80 MB: 3 of them.
    ok, most, right, log = held("t-h3", "--max-inflight-bytes", "80000000")
    tap.ok(ok and most == 4 and right, f"--max-inflight-bytes 80000000 holds the big job and 3 small ones (saw {most})",
           (ok, most, right))


def stalled_redis(srv):
    """(i) A Redis that is silent for seconds (fsync on a busy disk, a large record on a loaded machine) is
    slow, not gone: the worker waits for it instead of giving up on its commands, which would leave a job
    it started "running" until the visibility timeout."""
    r = srv.client()
    prefix = "t-i"
    w = start_worker(srv, prefix, "--visibility-timeout", "300000")
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    first = submit(r, prefix, *matmul_job(a, a))
    tap.ok(wait_until(lambda: states(r, prefix, [first]) == ["done"], 20), "a job before the stall is done")
    srv.proc.send_signal(signal.SIGSTOP)  # the worker is in a blocking read, or starts one meanwhile
    try:
        time.sleep(4.5)  # longer than the 3 s the worker used to allow a command
    finally:
        srv.proc.send_signal(signal.SIGCONT)
    jid = submit(r, prefix, *matmul_job(a, a))
    ok = wait_until(lambda: states(r, prefix, [jid]) == ["done"], 20)
    rec = record(r, prefix, jid)
    tap.ok(ok and rec.get("attempts") == b"1" and np.allclose(result_of(rec), a @ a),
           "a job submitted after the stall runs once, right", rec.get("state"))
    log = w.read_log()
    w.stop()
    tap.ok("is unavailable" not in log, "the worker did not take the stalled Redis for gone", log[-1500:])


def json_values(srv):
    """(j) A job's JSON result keeps every value: NaN and the infinities as the PROTOCOL's tokens, the
    largest float32 and a denormal exactly, float32 in its shortest text."""
    r = srv.client()
    prefix = "t-j"
    w = start_worker(srv, prefix)
    hdr = {"op": "matrix_multiply", "a": [[float("nan")], [float("inf")], [float("-inf")], [3.4028234663852886e38],
                                           [1e-45], [0.1]], "b": [[1.0]]}
    jid = submit(r, prefix, hdr)
    ok = wait_until(lambda: states(r, prefix, [jid]) == ["done"], 20)
    rec = record(r, prefix, jid)
    text = rec.get("result_header", b"").decode()
    tap.ok(ok and text == '{"result":[[NaN],[Infinity],[-Infinity],[3.4028235e38],[1e-45],[0.1]]}',
           "the stored result has all six values, as tokens and shortest text", text)
    w.stop()


def main():
    srv = RedisServer()
    try:
        tap.run("options", options)
        tap.run("no redis", no_redis)
        tap.run("(a) 1000 jobs, a worker killed", lambda: many_jobs_with_a_crash(srv))
        tap.run("(b) dead letters", lambda: dead_letters(srv))
        tap.run("(c) final failures", lambda: final_failures(srv))
        tap.run("(d) cancel and priority", lambda: cancelled_and_priority(srv))
        tap.run("(e) redis restart", lambda: redis_restart(srv))
        tap.run("(f) shared admission", lambda: shared_admission(srv))
        tap.run("(g) long jobs and shutdown", lambda: long_jobs_and_shutdown(srv))
        tap.run("(h) jobs in hand", lambda: in_hand(srv))
        tap.run("(i) a stalled redis", lambda: stalled_redis(srv))
        tap.run("(j) JSON values", lambda: json_values(srv))
    finally:
        results = Worker.stop_all()
        srv.stop()
    # The SIGKILLed worker exits -9 by design; every other must exit 0 without sanitizer reports.
    clean = [(ep, rc, san) for ep, rc, san in results if rc != -9]
    tap.ok(all(rc == 0 and not san for _, rc, san in clean), "every worker exited 0 without sanitizer reports",
           [x for x in clean if x[1] != 0 or x[2]])
    sys.exit(tap.done())


main()
