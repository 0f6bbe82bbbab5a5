#!/usr/bin/python3
"""test_curve.py - CurveZMQ: titan keygen, a worker with --curve-secret/--allow-keys admitting and
refusing clients (CLI and pyzmq), keys added and revoked without a restart, and the loopback-only rule.
Usage: test_curve.py PATH/TO/titan-worker PATH/TO/titan   (prints TAP)"""
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import zmq
import zmq.auth

from workerproc import Tap, Worker

BIN, CLI = sys.argv[1], sys.argv[2]
tap = Tap()
ctx = zmq.Context()
KEYS = tempfile.mkdtemp(prefix="titan-curve-")


def cli(*args, env=None, timeout=30):
    e = dict(os.environ)
    for k in ("TITAN_SERVER_KEY", "TITAN_CURVE_SECRET", "TITAN_ENDPOINT"):
        e.pop(k, None)
    e.update(env or {})
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=e)


def keygen(name, *extra):
    return cli("keygen", "--out", KEYS, "--name", name, *extra)


def path(name):
    return os.path.join(KEYS, name)


def ping(ep, server=None, keys=None, timeout_ms=3000):
    """One ping on a fresh DEALER (CURVE when `server` is given); returns the reply dict or None."""
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    if server:
        pub, sec = keys or zmq.curve_keypair()
        d.curve_serverkey, d.curve_publickey, d.curve_secretkey = server, pub, sec
    d.connect(ep)
    d.send_multipart([b"", b'{"op":"ping","id":"c"}'])
    try:
        return json.loads(d.recv_multipart()[1]) if d.poll(timeout_ms) else None
    finally:
        d.close()


def wait_for(pred, limit=5.0):
    """Polls pred() until it is true or `limit` seconds pass; returns (result, seconds)."""
    t0 = time.monotonic()
    while True:
        r = pred()
        if r or time.monotonic() - t0 > limit:
            return r, time.monotonic() - t0
        time.sleep(0.05)


def keygen_files():
    p = keygen("worker")
    pub, sec = path("worker"), path("worker_secret")
    tap.ok(p.returncode == 0 and os.path.isfile(pub) and os.path.isfile(sec), "keygen writes NAME and NAME_secret",
           p.stderr)
    tap.ok(stat.S_IMODE(os.stat(sec).st_mode) == 0o600, "the secret certificate has mode 0600",
           oct(os.stat(sec).st_mode))
    pk, sk = zmq.auth.load_certificate(sec)
    pk2, sk2 = zmq.auth.load_certificate(pub)
    tap.ok(sk and sk2 is None and pk == pk2 and zmq.curve_public(sk) == pk,
           "the files are CZMQ certificates of one valid key pair (public file without the secret)")
    tap.ok(pk.decode() in p.stdout and pub in p.stdout and sec in p.stdout, "keygen prints the public key and paths",
           p.stdout)
    before = open(sec).read()
    p = keygen("worker")
    tap.ok(p.returncode == 1 and "--force" in p.stderr and open(sec).read() == before,
           "keygen refuses to overwrite existing files", p.stderr)
    p = keygen("worker", "--force", "--json")
    j = json.loads(p.stdout)
    pk3, _ = zmq.auth.load_certificate(sec)
    tap.ok(p.returncode == 0 and j["public_key"] == pk3.decode() and pk3 != pk and j["secret_file"] == sec,
           "--force replaces the pair; --json prints public_key and the paths", p.stdout + p.stderr)
    p = keygen("a/b")
    tap.ok(p.returncode == 2, "keygen rejects a NAME with '/' (usage error)", p.stderr)
    for name in ("alice", "bob"):
        keygen(name)


def curve_worker():
    allow = os.path.join(KEYS, "allow")
    os.mkdir(allow)
    shutil.copy(path("alice"), allow)
    with open(os.path.join(allow, "junk"), "w") as f:
        f.write("not a certificate\n")
    w = Worker(BIN, "--curve-secret", path("worker_secret"), "--allow-keys", allow)
    server_pub, _ = zmq.auth.load_certificate(path("worker"))
    alice = zmq.auth.load_certificate(path("alice_secret"))
    bob = zmq.auth.load_certificate(path("bob_secret"))
    log = w.read_log()
    tap.ok(server_pub.decode() in log and "1 client key admitted" in log, "the worker logs its key and the admitted "
           "keys, and ignores a file that is no certificate", log)

    ok = ["--endpoint", w.endpoint]
    p = cli(*ok, "--server-key", path("worker"), "--curve-secret", path("alice_secret"), "ping")
    tap.ok(p.returncode == 0 and "pong" in p.stdout, "an allowed client (CLI, server key from the cert file) is "
           "answered", p.stdout + p.stderr)
    p = cli(*ok, "ping", env={"TITAN_SERVER_KEY": server_pub.decode(), "TITAN_CURVE_SECRET": path("alice_secret")})
    tap.ok(p.returncode == 0, "... and with a Z85 server key and its secret from TITAN_SERVER_KEY/TITAN_CURVE_SECRET",
           p.stderr)
    rep = ping(w.endpoint, server_pub, alice)
    tap.ok(rep and rep.get("status") == "ok", "an allowed pyzmq CURVE client is answered", rep)

    p = cli(*ok, "--timeout", "500", "--retries", "0", "--server-key", path("worker"), "--curve-secret",
            path("bob_secret"), "ping")
    tap.ok(p.returncode == 3 and "allow-keys" in p.stderr, "an unknown client key gets no answer (exit 3, with a "
           "hint)", p.stderr)
    logged, _ = wait_for(lambda: bob[0].decode() in w.read_log())
    tap.ok(logged and "refused a client from" in w.read_log(), "the worker logs the refusal with the key",
           w.read_log())
    tap.ok(ping(w.endpoint, server_pub, None, 500) is None, "an ephemeral (unlisted) key is refused")
    tap.ok(ping(w.endpoint, None, None, 500) is None, "a plain (non-CURVE) client gets nothing from a CURVE worker")
    p = cli(*ok, "--timeout", "300", "--retries", "0", "ping")
    tap.ok(p.returncode == 3 and "--server-key" in p.stderr, "the CLI without --server-key times out with a hint",
           p.stderr)
    wrong = zmq.curve_keypair()[0]
    tap.ok(ping(w.endpoint, wrong, alice, 500) is None, "an allowed client with the wrong server key gets nothing")

    # a connection made while the key was admitted ...
    held = ctx.socket(zmq.DEALER)
    held.setsockopt(zmq.LINGER, 0)
    held.curve_serverkey, held.curve_publickey, held.curve_secretkey = server_pub, alice[0], alice[1]
    held.connect(w.endpoint)
    held.send_multipart([b"", b'{"op":"ping","id":"h1"}'])
    first = json.loads(held.recv_multipart()[1]) if held.poll(3000) else None
    tap.ok(first and first.get("status") == "ok", "a held connection is answered while its key is admitted", first)
    os.remove(os.path.join(allow, "alice"))
    # ... is refused on its next request once the key is gone, without reconnecting
    def held_refused():
        held.send_multipart([b"", b'{"op":"ping","id":"h2"}'])
        r = json.loads(held.recv_multipart()[1]) if held.poll(3000) else None
        return r if r and r.get("code") == "unauthorized" else None
    refused, took = wait_for(held_refused)
    tap.ok(refused and refused.get("id") == "h2", f"... and answered unauthorized once its key is revoked ({took:.2f} s)",
           refused)
    held.close()
    gone, took = wait_for(lambda: ping(w.endpoint, server_pub, alice, 300) is None)
    tap.ok(gone and took < 3, f"a key removed from --allow-keys is refused (new connections) without a restart ({took:.2f} s)")
    shutil.copy(path("bob"), allow)
    back, took = wait_for(lambda: cli(*ok, "--timeout", "300", "--retries", "0", "--server-key", path("worker"),
                                      "--curve-secret", path("bob_secret"), "ping").returncode == 0)
    tap.ok(back and took < 3, f"a key added to --allow-keys starts working without a restart ({took:.2f} s)")
    tap.ok(w.stop() == 0, "the CURVE worker stops cleanly")


def curve_ownership():
    """With CURVE, resident tensors belong to the client's key: the same key on another connection (another
    routing id) owns them, another key is refused."""
    w = Worker(BIN, "--curve-secret", path("worker_secret"))
    server_pub, _ = zmq.auth.load_certificate(path("worker"))
    k1, k2 = zmq.curve_keypair(), zmq.curve_keypair()

    def call(keys, hdr, *frames):
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.curve_serverkey, d.curve_publickey, d.curve_secretkey = server_pub, keys[0], keys[1]
        d.connect(w.endpoint)
        d.send_multipart([b"", json.dumps(hdr).encode(), *frames])
        try:
            return json.loads(d.recv_multipart()[1]) if d.poll(5000) else {}
        finally:
            d.close()

    r = call(k1, {"op": "tensor_put", "tensor": [[1.0, 2.0], [3.0, 4.0]]})
    ref = r.get("ref", "")
    tap.ok(ref.startswith("t-"), "CURVE: a client puts a resident tensor", r)
    r = call(k1, {"op": "tensor_get", "ref": ref, "json": True})
    tap.ok(r.get("result") == [[1.0, 2.0], [3.0, 4.0]], "CURVE: the same key on a new connection owns it", r)
    r = call(k2, {"op": "tensor_get", "ref": ref})
    tap.ok(r.get("code") == "unauthorized", "CURVE: another key is refused (unauthorized)", r)
    r = call(k2, {"op": "tensor_list"})
    tap.ok(r.get("count") == 0, "CURVE: another key lists none of them", r)
    w.stop()


def routing_ids():
    """Issue 17, point 2: with CURVE a routing id cannot cross keys. Alice and mallory are both admitted.
    Alice uses the routing id b"alice-app" for a product of her resident tensor and a few others; mallory
    connects with the same routing id and her own key, once while alice is connected and once after alice
    left with a product still running, and reads everything she gets: she must never receive a reply to
    one of alice's requests (each carries an id starting "alice-"), while alice gets all of hers. The
    worker gives every CURVE connection a routing id of its own; before, ZMQ_ROUTER_HANDOVER handed
    alice's connection, and her replies, to mallory. The same key on two connections with one routing id
    is served on both, and both own the key's tensors."""
    import numpy as np
    keygen("mallory")
    allow = os.path.join(KEYS, "allow-two")
    os.mkdir(allow)
    shutil.copy(path("alice"), allow)
    shutil.copy(path("mallory"), allow)
    w = Worker(BIN, "--curve-secret", path("worker_secret"), "--allow-keys", allow, "--threads", "1")
    server_pub, _ = zmq.auth.load_certificate(path("worker"))
    alice_k = zmq.auth.load_certificate(path("alice_secret"))
    mallory_k = zmq.auth.load_certificate(path("mallory_secret"))

    def sock(keys, rid=b"alice-app"):
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.setsockopt(zmq.ROUTING_ID, rid)
        d.curve_serverkey, d.curve_publickey, d.curve_secretkey = server_pub, keys[0], keys[1]
        d.connect(w.endpoint)
        return d

    def send(d, hdr, *frames):
        d.send_multipart([b"", json.dumps(hdr).encode(), *frames])

    def recv(d, timeout_ms=60000):
        if not d.poll(timeout_ms):
            return None
        f = d.recv_multipart()
        return json.loads(f[1]) if len(f) > 1 and f[1][:1] == b"{" else {"frames": [x[:40] for x in f]}

    n = 700
    a = np.ones((n, n), np.float64)
    def product(ident, left):
        return ({"op": "matrix_multiply", "id": ident, "a": left,
                 "b": {"dtype": "float64", "shape": [n, n], "frame": 1}}, a.tobytes())
    binary = {"dtype": "float64", "shape": [n, n], "frame": 2}

    alice = sock(alice_k)
    send(alice, {"op": "tensor_put", "id": "alice-put", "tensor": {"dtype": "float64", "shape": [n, n], "frame": 1}},
         a.tobytes())
    r = recv(alice)
    ref = (r or {}).get("ref", "")
    tap.ok(ref.startswith("t-"), "routing ids: alice (routing id alice-app) puts a resident tensor", r)
    # alice's work is queued and running when mallory arrives with alice's routing id
    send(alice, *product("alice-secret-1", {"ref": ref}))
    send(alice, {"op": "matrix_multiply", "id": "alice-secret-2",
                 "a": {"dtype": "float64", "shape": [n, n], "frame": 1}, "b": binary}, a.tobytes(), a.tobytes())
    send(alice, {"op": "ping", "id": "alice-ping"})
    mallory = sock(mallory_k)
    send(mallory, {"op": "ping", "id": "m-ping"})
    send(mallory, *product("m-sync", binary))
    got_alice, got_mallory = {}, []
    while len(got_alice) < 3:
        r = recv(alice)
        if r is None:
            break
        got_alice[r.get("id")] = r
    while not any(r.get("id") == "m-sync" for r in got_mallory):
        r = recv(mallory)
        if r is None:
            break
        got_mallory.append(r)
    tap.ok(set(got_alice) == {"alice-secret-1", "alice-secret-2", "alice-ping"} and
           all("result" in got_alice[i] for i in ("alice-secret-1", "alice-secret-2")),
           "alice gets every reply while mallory holds a connection with her routing id", list(got_alice))
    stolen = [r for r in got_mallory if str(r.get("id", "")).startswith("alice-") or "frames" in r]
    tap.ok(not stolen and {"m-ping", "m-sync"} <= {r.get("id") for r in got_mallory},
           "mallory (her key, routing id alice-app) gets her own replies and none of alice's",
           [r.get("id", r) for r in got_mallory])
    mallory.close()
    # alice leaves with a product of her resident tensor running; mallory then connects with her routing id
    late = sock(alice_k)
    send(late, *product("alice-late", {"ref": ref}))
    send(late, {"op": "ping", "id": "alice-sync"})
    r = recv(late)
    tap.ok(r and r.get("id") == "alice-sync", "alice sends another product and a ping; the ping is answered", r)
    late.close()
    mallory = sock(mallory_k)
    send(mallory, *product("m-sync-2", binary))  # runs once alice's product is done and its reply gone
    got_mallory = []
    while not any(r.get("id") == "m-sync-2" for r in got_mallory):
        r = recv(mallory)
        if r is None:
            break
        got_mallory.append(r)
    tap.ok([r.get("id") for r in got_mallory] == ["m-sync-2"],
           "after alice left, mallory with her routing id gets no reply to alice's product",
           [r.get("id", r) for r in got_mallory])
    mallory.close()
    # the same key: two live connections with one routing id are both served, and both own the key's tensors
    a1, a2 = sock(alice_k), sock(alice_k)
    send(a1, {"op": "tensor_put", "id": "alice-k1", "tensor": [[1.0, 2.0]]})
    r1 = recv(a1)
    send(a2, {"op": "tensor_get", "id": "alice-k2", "ref": (r1 or {}).get("ref", ""), "json": True})
    r2 = recv(a2)
    send(a1, {"op": "ping", "id": "alice-k3"})
    r3 = recv(a1)
    tap.ok(r2 and r2.get("result") == [[1.0, 2.0]] and r3 and r3.get("id") == "alice-k3",
           "the same key on a second live connection with the same routing id is served, owns the key's tensors, "
           "and the first connection still gets its replies", (r1, r2, r3))
    for d in (alice, a1, a2):
        d.close()
    log = w.read_log()
    tap.ok("did not give it" not in log, "no connection kept a routing id of its own choosing", log[-2000:])
    tap.ok(w.stop() == 0, "the worker stops cleanly")


def bad_settings():
    p = cli("--server-key", "not-a-key", "ping")
    tap.ok(p.returncode == 2 and "40 Z85" in p.stderr, "the CLI rejects a --server-key that is no key nor file",
           p.stderr)
    p = cli("--curve-secret", path("alice_secret"), "ping")
    tap.ok(p.returncode == 2 and "--server-key" in p.stderr, "the CLI's --curve-secret needs --server-key", p.stderr)
    junk = os.path.join(KEYS, "junk")
    with open(junk, "w") as f:
        f.write("curve\n    public-key = \"unterminated\n  bad indent\n")
    p = cli("--server-key", junk, "ping")
    tap.ok(p.returncode == 2 and "not a CZMQ certificate" in p.stderr, "the CLI rejects a malformed certificate "
           "file", p.stderr)
    p = subprocess.run([BIN, "--bind", "tcp://127.0.0.1:*", "--curve-secret", junk], capture_output=True, text=True,
                       timeout=20)
    tap.ok(p.returncode != 0 and "not a readable CZMQ certificate" in p.stderr, "so does the worker's "
           "--curve-secret", p.stderr)
    pubonly = os.path.join(KEYS, "pubonly")
    os.mkdir(pubonly)
    shutil.copy(path("worker"), pubonly)
    p = subprocess.run([BIN, "--bind", "tcp://127.0.0.1:*", "--curve-secret", os.path.join(pubonly, "worker")],
                       capture_output=True, text=True, timeout=20)
    tap.ok(p.returncode != 0 and "no secret key" in p.stderr, "a worker given a public certificate as "
           "--curve-secret refuses to start", p.stderr)
    p = subprocess.run([BIN, "--bind", "tcp://127.0.0.1:*", "--allow-keys", KEYS], capture_output=True, text=True,
                       timeout=20)
    tap.ok(p.returncode != 0 and "--curve-secret" in p.stderr, "--allow-keys without --curve-secret is refused",
           p.stderr)


def loopback_rule():
    p = subprocess.run([BIN, "--bind", "tcp://0.0.0.0:*"], capture_output=True, text=True, timeout=20)
    tap.ok(p.returncode != 0 and "--curve-secret" in p.stderr and "--insecure" in p.stderr,
           "binding tcp://0.0.0.0:* without CURVE exits non-zero and names --curve-secret and --insecure", p.stderr)
    w = Worker(BIN, "--bind", "tcp://0.0.0.0:*", "--insecure")
    log = w.read_log()
    tap.ok(w.stop() == 0 and "warn" in log and "--insecure" in log, "with --insecure it starts and logs a warning",
           log)


for name, fn in [("keygen", keygen_files), ("curve worker", curve_worker), ("curve ownership", curve_ownership),
                 ("routing ids", routing_ids), ("bad settings", bad_settings),
                 ("loopback", loopback_rule)]:
    tap.run(name, fn)
res = Worker.stop_all()
tap.ok(all(rc == 0 and not san for _, rc, san in res), "every worker exited 0 with no sanitizer report", res)
shutil.rmtree(KEYS, ignore_errors=True)
sys.exit(tap.done())
