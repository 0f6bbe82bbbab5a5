#!/usr/bin/python3
"""test_jobs_cli.py - `titan submit|job|jobs` against a real redis-server, playing the worker's part (docs/JOBS.md).

Usage: test_jobs_cli.py PATH/TO/titan   (prints TAP; needs redis-server, python3-redis, python3-numpy)
"""
import json
import os
import pty
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

try:
    import numpy as np
    import redis
except ImportError as e:  # make test installs them: a failure, never a skip
    print(f"1..1\nnot ok 1 - {e} (make test installs python3-redis and python3-numpy)")
    sys.exit(1)

TITAN = os.path.abspath(sys.argv[1])
P = "{titan}"
n_tests = 0
failures = 0


def check(cond, name, detail=""):
    global n_tests, failures
    n_tests += 1
    if cond:
        print(f"ok {n_tests} - {name}")
    else:
        failures += 1
        print(f"not ok {n_tests} - {name}")
        for line in str(detail).splitlines()[:20]:
            print(f"#   {line}")
    sys.stdout.flush()
    return cond


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(tmp):
    """Starts redis-server on a free loopback port in tmp; returns (process, port)."""
    exe = shutil.which("redis-server")
    if not exe:
        print("1..1\nnot ok 1 - redis-server is not installed (make test installs it)")
        sys.exit(1)
    for _ in range(5):
        port = free_port()
        p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", "",
                              "--appendonly", "no", "--daemonize", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(200):  # up to 10 s for readiness: a PING answered
            if p.poll() is not None:
                break
            try:
                if r.ping():
                    return p, port
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        p.kill()
        p.wait()
    raise RuntimeError("redis-server did not start")


def run(args, env=None, stdin=None, timeout=30):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([TITAN] + args, input=stdin, capture_output=True, env=e, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def splitmix_uniform(state, count, dtype):
    """The CLI's cli_fill_random: splitmix64 -> [-1, 1) values, as the CLI's matmul makes them."""
    out = np.empty(count, dtype=np.float64)
    M = (1 << 64) - 1
    for i in range(count):
        state = (state + 0x9E3779B97F4A7C15) & M
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        z = z ^ (z >> 31)
        out[i] = 2.0 * ((z >> 11) * 2.0 ** -53) - 1.0
    return out.astype(dtype), state


class FakeWorker:
    """Plays titan-worker's part on one job record, as docs/JOBS.md describes."""

    def __init__(self, r, prefix=P):
        self.r, self.P = r, prefix

    def key(self, jid):
        return f"{self.P}:job:{jid}"

    def start(self, jid):
        self.r.hincrby(self.key(jid), "attempts", 1)
        self.r.hset(self.key(jid), mapping={"state": "running", "started_ms": int(time.time() * 1000),
                                            "worker": "testhost:1"})

    def finish(self, jid, header, frames=(), state="done", error=None, code=None):
        m = {"state": state, "finished_ms": int(time.time() * 1000)}
        if header is not None:
            m["result_header"] = header
            m["result_nframes"] = len(frames)
            for i, f in enumerate(frames):
                m[f"result:{i + 1}"] = f
        if error is not None:
            m["error"], m["code"] = error, code
        k = self.key(jid)
        self.r.hset(k, mapping=m)
        n = int(self.r.hget(k, "nframes") or 0)
        if n:
            self.r.hdel(k, *[f"frame:{i}" for i in range(1, n + 1)])
        self.r.expire(k, 86400)

    def matmul(self, jid):
        """Computes a matrix_multiply job from its record like the worker would, and stores the result."""
        rec = self.r.hgetall(self.key(jid))
        hdr = json.loads(rec[b"header"])
        a, b = hdr["a"], hdr["b"]
        dt = np.float32 if a["dtype"] == "float32" else np.float64
        A = np.frombuffer(rec[f"frame:{a['frame']}".encode()], dtype="<" + np.dtype(dt).str[1:]).reshape(a["shape"])
        B = np.frombuffer(rec[f"frame:{b['frame']}".encode()], dtype="<" + np.dtype(dt).str[1:]).reshape(b["shape"])
        C = (A @ B).astype(dt)
        self.start(jid)
        self.finish(jid, json.dumps({"result": {"dtype": a["dtype"], "shape": list(C.shape), "frame": 1}}),
                    [C.astype("<" + np.dtype(dt).str[1:]).tobytes()])
        return A, B, C


def main():
    tmp = tempfile.mkdtemp(prefix="titan-jobs-cli-")
    proc, port = start_redis(tmp)
    url = f"redis://127.0.0.1:{port}"
    env = {"TITAN_REDIS": url}
    r = redis.Redis(host="127.0.0.1", port=port)
    w = FakeWorker(r)
    try:
        tests(r, w, url, env, port, tmp)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"1..{n_tests}")
    sys.exit(1 if failures else 0)


def is_id(s):
    return len(s) == 32 and all(c in "0123456789abcdef" for c in s)


def tests(r, w, url, env, port, tmp):
    # --- submit matmul: record, index and queue as JOBS.md lays them out, frames byte-exact ---
    rc, out, err = run(["submit", "matmul", "--m", "3", "--k", "5", "--n", "4", "--seed", "7"], env)
    jid = out.strip()
    check(rc == 0 and is_id(jid), "submit matmul prints a 32-hex job id", f"{rc} {out!r} {err}")
    rec = r.hgetall(f"{P}:job:{jid}")
    check(rec.get(b"state") == b"queued" and rec.get(b"nframes") == b"2" and rec.get(b"priority") == b"normal"
          and rec.get(b"attempts") == b"0" and int(rec.get(b"created_ms", b"0")) > 1.6e12,
          "the record holds state, nframes, priority, attempts and created_ms", rec.keys())
    hdr = json.loads(rec[b"header"])
    check(hdr == {"op": "matrix_multiply", "a": {"dtype": "float32", "shape": [3, 5], "frame": 1},
                  "b": {"dtype": "float32", "shape": [5, 4], "frame": 2}},
          "the header describes both operands as binary frames 1 and 2", hdr)
    A, st = splitmix_uniform(7, 15, np.float32)
    B, _ = splitmix_uniform(st, 20, np.float32)
    check(rec[b"frame:1"] == A.astype("<f4").tobytes() and rec[b"frame:2"] == B.astype("<f4").tobytes(),
          "frame:1 and frame:2 hold the operands byte for byte (the same inputs as `titan matmul --seed 7`)")
    check(r.zscore(f"{P}:index", jid) == float(rec[b"created_ms"]), "the index scores the id by created_ms")
    entries = r.xrange(f"{P}:jobs")
    check([e[1] for e in entries] == [{b"id": jid.encode()}], "the normal queue has one entry: id = job id",
          entries)

    # --- priority and JSON output ---
    rc, out, err = run(["--json", "submit", "--priority", "high", "matmul", "--m", "2", "--k", "2", "--n", "2",
                        "--dtype", "float64"], env)
    o = json.loads(out) if rc == 0 else {}
    hid = o.get("id", "")
    check(rc == 0 and is_id(hid) and o.get("priority") == "high", "--json submit prints {id, priority}", out + err)
    check([e[1] for e in r.xrange(f"{P}:jobs:high")] == [{b"id": hid.encode()}]
          and r.hget(f"{P}:job:{hid}", "priority") == b"high", "--priority high queues on P:jobs:high")

    # --- idempotency ---
    args = ["submit", "--idempotency-key", "nightly-1", "matmul", "--m", "2", "--k", "2", "--n", "2"]
    rc1, out1, _ = run(args, env)
    rc2, out2, _ = run(args, env)
    check(rc1 == 0 and rc2 == 0 and out1 == out2 and is_id(out1.strip()),
          "the same idempotency key returns the same id", (out1, out2))
    check(r.xlen(f"{P}:jobs") == 2 and r.get(f"{P}:idem:nightly-1") == out1.strip().encode()
          and r.hget(f"{P}:job:{out1.strip()}", "idempotency_key") == b"nightly-1",
          "and queues one job; P:idem:KEY holds its id")

    # --- JSON-form requests from a file and stdin ---
    req = '{"op":"matrix_multiply","a":[[1,2],[3,4]],"b":[[1],[1]],"id":"r1"}'
    path = os.path.join(tmp, "req.json")
    with open(path, "w") as f:
        f.write(req)
    rc, out, err = run(["submit", "--request-file", path], env)
    fid = out.strip()
    check(rc == 0 and r.hget(f"{P}:job:{fid}", "header") == req.encode()
          and r.hget(f"{P}:job:{fid}", "nframes") == b"0", "--request-file stores the header as is, no frames",
          err)
    rc, out, err = run(["submit", "-"], env, stdin=b'{"op":"ping"}')
    sid = out.strip()
    check(rc == 0 and r.hget(f"{P}:job:{sid}", "header") == b'{"op":"ping"}', "submit - reads stdin", err)
    rc, out, err = run(["submit", "-"], env, stdin=b'{"a":[[1]]}')
    check(rc == 2 and '"op"' in err, "a request without \"op\" is a usage error (exit 2)", f"{rc} {err}")
    rc, out, err = run(["submit"], env)
    check(rc == 2 and "--request-file" in err, "submit without a request is a usage error", err)
    rc, out, err = run(["submit", "matmul", "--m", "2"], env)
    check(rc == 2, "submit matmul without --k/--n is a usage error", err)

    # --- --count: many copies in pipelined batches ---
    C = "{cnt}"
    rc, out, err = run(["submit", "--redis-prefix", "cnt", "--count", "1000", "matmul", "--m", "2", "--k", "3",
                        "--n", "2"], env)
    ids = out.split()
    check(rc == 0 and len(ids) == 1000 and len(set(ids)) == 1000 and all(map(is_id, ids)),
          "submit --count 1000 prints 1000 distinct ids, one per line", f"{rc} {len(ids)} {err}")
    queued = [e[1][b"id"].decode() for e in r.xrange(f"{C}:jobs")]
    recs = [r.hmget(f"{C}:job:{i}", "state", "frame:1") for i in (ids[0], ids[-1])]
    check(queued == ids and all(s == b"queued" and f == recs[0][1] for s, f in recs)
          and r.zcard(f"{C}:index") == 1000, "all 1000 are queued in order, each with its record and operands",
          (len(queued), recs))
    rc, out, err = run(["--json", "submit", "--redis-prefix", "cnt", "--count", "3", "--priority", "high", "-"],
                       env, stdin=b'{"op":"ping"}')
    o = json.loads(out) if rc == 0 else {}
    check(len(o.get("ids", [])) == 3 and o.get("priority") == "high"
          and [e[1][b"id"].decode() for e in r.xrange(f"{C}:jobs:high")] == o["ids"],
          "--json submit --count prints {ids, priority}", out + err)
    n0 = r.xlen(f"{P}:jobs")
    rc, out, err = run(["submit", "--count", "2", "--idempotency-key", "k", "-"], env, stdin=b'{"op":"ping"}')
    check(rc == 2 and "--idempotency-key" in err and r.xlen(f"{P}:jobs") == n0,
          "--count with --idempotency-key is a usage error; nothing queued", f"{rc} {err}")
    rc, out, err = run(["submit", "--count", "0", "-"], env, stdin=b'{"op":"ping"}')
    check(rc == 2 and "--count" in err, "--count 0 is a usage error", f"{rc} {err}")
    rc, out, err = run(["submit", "--count", "5", "-"], env, stdin=b'{"x":1}')
    check(rc == 2 and '"op"' in err and r.xlen(f"{P}:jobs") == n0, "a bad request with --count queues nothing",
          f"{rc} {err}")
    rc, out, err = run(["submit", "--redis", "redis://127.0.0.1:1", "--count", "5", "-"], env, stdin=b'{"op":"ping"}')
    check(rc == 3 and "redis-server" in err and out == "", "--count with Redis away: exit 3, no ids", f"{rc} {err}")

    # --- status ---
    rc, out, err = run(["--json", "job", "status", jid], env)
    s = json.loads(out)["jobs"][0] if rc == 0 else {}
    check(s.get("id") == jid and s.get("state") == "queued" and s.get("attempts") == 0
          and s.get("priority") == "normal" and s.get("started_ms") is None,
          "job status --json reports the record", out + err)
    rc, out, err = run(["job", "status", jid], env)
    check(rc == 0 and out.startswith(f"{jid} queued"), "job status prints 'ID STATE' and details", out)
    rc, out, err = run(["job", "status", "0" * 32], env)
    check(rc == 1 and "no job" in err, "status of an unknown job: exit 1", f"{rc} {err}")
    rc, out, err = run(["job", "status", "xyz"], env)
    check(rc == 2 and "not a job id" in err, "status of a malformed id: exit 2", f"{rc} {err}")

    # --- result: not yet, then done (binary frame -> .npy) ---
    rc, out, err = run(["job", "result", jid], env)
    check(rc == 1 and "no result yet" in err, "result of a queued job: exit 1, no result yet", f"{rc} {err}")
    A2, B2, C = w.matmul(jid)
    npy = os.path.join(tmp, "c.npy")
    rc, out, err = run(["job", "result", jid, "--out", npy], env)
    got = np.load(npy) if rc == 0 and os.path.exists(npy) else None
    check(got is not None and got.dtype == np.dtype("<f4") and got.shape == (3, 4) and np.array_equal(got, C),
          "job result --out writes the result as .npy (<f4, shape from the reply)", f"{rc} {err}")
    with open(npy, "rb") as f:
        head = f.read(10)
    hlen = struct.unpack("<H", head[8:10])[0]
    check(head[:8] == b"\x93NUMPY\x01\x00" and (10 + hlen) % 64 == 0, "the file is NumPy format 1.0, aligned",
          head)
    check(np.allclose(got, A.reshape(3, 5) @ B.reshape(5, 4), rtol=1e-5), "and holds A @ B of the submitted inputs")
    rc, out, err = run(["job", "result", jid], env)
    check(rc == 0 and '"result"' in out and "float32 [3, 4] (48 bytes)" in out,
          "job result without --out prints the header and a tensor summary", out + err)
    rc, out, err = run(["--json", "job", "result", jid], env)
    o = json.loads(out)["jobs"][0] if rc == 0 else {}
    check(o.get("state") == "done" and o.get("header", {}).get("result", {}).get("shape") == [3, 4]
          and o.get("tensors", [{}])[0].get("bytes") == 48, "job result --json", out + err)
    # float64, and a JSON-form result
    w.matmul(hid)
    npy64 = os.path.join(tmp, "h.npy")
    rc, out, err = run(["job", "result", hid, "--out", npy64], env)
    got = np.load(npy64) if rc == 0 else None
    check(got is not None and got.dtype == np.dtype("<f8") and got.shape == (2, 2), "float64 results are <f8",
          err)
    w.start(fid)
    w.finish(fid, '{"result":[[3.0],[7.0]],"id":"r1"}')
    npyj = os.path.join(tmp, "j.npy")
    rc, out, err = run(["job", "result", fid, "--out", npyj], env)
    check(rc == 0 and np.array_equal(np.load(npyj), np.array([[3.0], [7.0]])),
          "a JSON-form result is written as .npy too", err)

    # --- failed jobs ---
    w.start(sid)
    w.finish(sid, '{"error":"Unknown operation: pong","code":"unknown_op"}', state="failed",
             error="Unknown operation: pong", code="unknown_op")
    rc, out, err = run(["--json", "job", "result", sid], env)
    o = json.loads(out)["jobs"][0] if out else {}
    check(rc == 1 and o.get("state") == "failed" and o.get("header", {}).get("code") == "unknown_op",
          "result of a failed job: exit 1 with the error reply", f"{rc} {out} {err}")
    rc, out, err = run(["job", "status", sid], env)
    check(rc == 1 and out.startswith(f"{sid} failed"), "status of a failed job: exit 1, as the docs say", f"{rc} {out}")
    rc, out, err = run(["submit", "-"], env, stdin=b'{"op":"ping"}')
    did = out.strip()
    w.start(did)
    w.finish(did, None, state="failed", error="device lost", code="device_error")
    rc, out, err = run(["--json", "job", "result", did], env)
    o = json.loads(out)["jobs"][0] if out else {}
    check(rc == 1 and o.get("header") == {"error": "device lost", "code": "device_error"},
          "a job that failed without a reply gets one made from error and code", out + err)

    # --- cancel ---
    rc, out, err = run(["submit", "matmul", "--m", "2", "--k", "2", "--n", "2"], env)
    cid = out.strip()
    rc, out, err = run(["job", "cancel", cid], env)
    k = f"{P}:job:{cid}"
    check(rc == 0 and r.hget(k, "state") == b"cancelled", "cancel of a queued job: exit 0, state cancelled",
          f"{rc} {err}")
    check(not r.hexists(k, "frame:1") and not r.hexists(k, "frame:2") and 0 < r.ttl(k) <= 86400
          and r.hget(k, "finished_ms"), "a cancelled job ends as JOBS.md says: frames deleted, TTL set")
    rc, out, err = run(["job", "cancel", cid], env)
    check(rc == 1 and "already ended" in err, "cancel of an ended job: exit 1", err)
    rc, out, err = run(["job", "result", cid], env)
    check(rc == 1 and "cancelled" in err, "result of a cancelled job: exit 1", err)
    rc, out, err = run(["submit", "matmul", "--m", "2", "--k", "2", "--n", "2"], env)
    rid = out.strip()
    w.start(rid)
    rc, out, err = run(["--json", "job", "cancel", rid], env)
    o = json.loads(out)["jobs"][0] if out else {}
    check(rc == 1 and "running" in err and o.get("code") == "running" and r.hget(f"{P}:job:{rid}", "state") == b"running",
          "cancel of a running job: exit 1, the job keeps running", f"{rc} {out} {err}")
    rc, out, err = run(["job", "cancel", "f" * 32], env)
    check(rc == 1 and "no job" in err, "cancel of an unknown job: exit 1", err)

    # --- list ---
    rc, out, err = run(["--json", "jobs", "list", "--limit", "0"], env)
    o = json.loads(out) if rc == 0 else {}
    all_ids = [j["id"] for j in o.get("jobs", [])]
    created = [j["created_ms"] for j in o.get("jobs", [])]
    check(rc == 0 and len(all_ids) == o.get("count") == r.zcard(f"{P}:index") and created == sorted(created, reverse=True),
          "jobs list --json lists every job, newest first", out + err)
    rc, out, err = run(["jobs", "list", "--state", "done", "--ids"], env)
    check(rc == 0 and sorted(out.split()) == sorted([jid, hid, fid]), "jobs list --state done --ids", out + err)
    rc, out, err = run(["jobs", "list", "--state", "running"], env)
    check(rc == 0 and rid in out and jid not in out and "STATE" in out, "jobs list --state running (table)", out)
    rc, out, err = run(["jobs", "list", "--limit", "2", "--ids"], env)
    check(rc == 0 and out.split() == all_ids[:2], "jobs list --limit 2", out)
    r.zadd(f"{P}:index", {"e" * 32: time.time() * 1000 + 1e6})  # a job whose record expired
    rc, out, err = run(["jobs", "list", "--ids", "--limit", "0"], env)
    check(rc == 0 and "e" * 32 not in out and len(out.split()) == len(all_ids), "expired jobs are left out", out)
    rc, out, err = run(["jobs", "list", "--state", "bogus"], env)
    check(rc == 2, "jobs list --state bogus: exit 2", err)

    # --- wait ---
    ids = []
    for _ in range(3):
        rc, out, err = run(["submit", "matmul", "--m", "2", "--k", "3", "--n", "2"], env)
        ids.append(out.strip())
    e = dict(os.environ, **env)
    p = subprocess.Popen([TITAN, "job", "wait"] + ids, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
    time.sleep(0.3)
    still = p.poll() is None
    for i in ids:
        w.matmul(i)
        time.sleep(0.1)
    try:
        out, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    lines = out.decode().splitlines()
    check(still and p.returncode == 0 and any("(3/3 ended)" in ln and " done " in ln for ln in lines)
          and all(any(ln.startswith(i) for ln in lines) for i in ids),
          "job wait returns 0 once all are done, one line per change off a terminal", f"{p.returncode} {out} {err}")
    rc, out, err = run(["--json", "job", "wait", ids[0], sid], env)
    o = json.loads(out) if out else {}
    check(rc == 1 and o.get("done") == 1 and o.get("failed") == 1, "wait over a failed job: exit 1, --json counts",
          f"{rc} {out} {err}")
    rc, out, err = run(["submit", "matmul", "--m", "2", "--k", "2", "--n", "2"], env)
    qid = out.strip()
    t0 = time.time()
    rc, out, err = run(["job", "wait", "--max-wait", "300", qid], env)
    check(rc == 3 and "still pending" in err and time.time() - t0 < 5, "wait --max-wait on a queued job: exit 3",
          f"{rc} {err}")
    # a terminal gets one progress line redrawn with \r
    master, slave = pty.openpty()
    p = subprocess.Popen([TITAN, "job", "wait", qid, ids[0]], stdout=slave, stderr=subprocess.PIPE, env=e)
    os.close(slave)
    time.sleep(0.3)
    w.matmul(qid)
    buf = b""
    deadline = time.time() + 15
    while time.time() < deadline:
        rl, _, _ = select.select([master], [], [], 0.5)
        if rl:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
        elif p.poll() is not None:
            break
    p.wait(10)
    os.close(master)
    text = buf.decode(errors="replace")
    check(p.returncode == 0 and "\r[" in text and "2/2 ended" in text and text.count("\n") <= 2,
          "on a terminal, wait draws a progress bar redrawn with \\r", repr(text))

    # --- prefix ---
    rc, out, err = run(["submit", "--redis-prefix", "other", "-"], env, stdin=b'{"op":"ping"}')
    oid = out.strip()
    check(rc == 0 and r.hget("{other}:job:" + oid, "state") == b"queued" and r.xlen("{other}:jobs") == 1,
          "--redis-prefix other writes {other}: keys", err)
    rc, out, err = run(["job", "status", oid], env)
    check(rc == 1, "and the default prefix does not see that job", err)

    # --- bad URLs, unreachable Redis, silent Redis, passwords ---
    for bad in ["http://127.0.0.1:6379", "redis://", "redis://127.0.0.1:99999", "redis://127.0.0.1:6379/x",
                "redis://127.0.0.1:6379?db=1", "redis://[::1:6379", "redis://ho st:1"]:
        rc, out, err = run(["jobs", "list", "--redis", bad], env)
        check(rc == 2 and "Redis URL" in err, f"bad URL {bad}: exit 2 with a clear message", f"{rc} {err}")
    rc, out, err = run(["jobs", "list"], {"TITAN_REDIS": "redis//oops"})
    check(rc == 2 and "TITAN_REDIS" in err, "a bad TITAN_REDIS names the variable", err)
    dead = free_port()
    rc, out, err = run(["--json", "job", "status", jid, "--redis", f"redis://127.0.0.1:{dead}"], env)
    o = json.loads(out) if out else {}
    check(rc == 3 and "refused" in err and o.get("code") == "redis_unreachable" and o.get("exit") == 3,
          "Redis unreachable: exit 3, JSON error object", f"{rc} {out} {err}")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (backlog) but never answers
    t0 = time.time()
    rc, out, err = run(["--timeout", "300", "submit", "--redis", f"redis://127.0.0.1:{silent.getsockname()[1]}",
                        "-"], env, stdin=b'{"op":"ping"}')
    silent.close()
    check(rc == 3 and "no answer within 300 ms" in err and time.time() - t0 < 5,
          "a Redis that does not answer: exit 3 after --timeout", f"{rc} {err}")
    r.config_set("requirepass", "s3cr@t")
    try:
        ra = redis.Redis(host="127.0.0.1", port=port, password="s3cr@t")
        rc, out, err = run(["jobs", "list", "--ids"], env)
        check(rc == 3 and "NOAUTH" in err, "Redis that needs a password, none given: exit 3", f"{rc} {err}")
        rc, out, err = run(["jobs", "list", "--ids", "--redis", f"redis://:wrong@127.0.0.1:{port}"], env)
        check(rc == 3 and "WRONGPASS" in err, "a wrong password: exit 3", f"{rc} {err}")
        rc, out, err = run(["jobs", "list", "--ids", "--redis", f"redis://:s3cr%40t@127.0.0.1:{port}/0"], env)
        check(rc == 0 and jid in out, "the right password (%-escaped) works", f"{rc} {err}")
        rc, out, err = run(["jobs", "list", "--ids", "--redis", f"redis://default:s3cr@t@127.0.0.1:{port}"], env)
        check(rc == 0 and jid in out, "USER:PASSWORD with a raw '@' works", f"{rc} {err}")
    finally:
        ra.config_set("requirepass", "")
    rc, out, err = run(["jobs", "list", "--ids", "--redis", f"redis://127.0.0.1:{port}/5"], env)
    check(rc == 0 and out == "", "the URL's database is selected (db 5 is empty)", f"{rc} {out} {err}")

    # --- help ---
    for c in (["submit", "--help"], ["job", "--help"], ["jobs", "--help"]):
        rc, out, err = run(c)
        check(rc == 0 and "examples:" in out and "exit status" in out, f"titan {c[0]} --help", err)
    rc, out, err = run(["submit", "--help"])
    check("JSON-form" in out, "submit --help says request files are JSON-form requests")


if __name__ == "__main__":
    main()
