#!/usr/bin/python3
"""test_status_cli.py - `titan status`: VM (libvirt's test driver), workers (real and fake), queue (real redis-server).

Usage: test_status_cli.py TITAN-WORKER TITAN   (prints TAP; needs python3-zmq; the queue checks need redis-server
and python3-redis and are skipped without them)
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import zmq

from workerproc import Tap, Worker

WORKER, TITAN = sys.argv[1], sys.argv[2]
tap = Tap()
tmp = tempfile.mkdtemp(prefix="titan-status-")

# Domains of libvirt's test driver in each state (test:runstate is virDomainState: 3 paused, 5 shutoff, 6 crashed).
def node_xml(domains):
    return "<node>\n" + "".join(f"""  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>{name}</name>
    <memory>1048576</memory>
    <vcpu>1</vcpu>
    <os><type>hvm</type></os>
    <test:runstate>{state}</test:runstate>
  </domain>
""" for name, state in domains) + "</node>\n"


NODE_XML = node_xml((("up", 1), ("paused", 3), ("off", 5), ("crashed", 6)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def titan(*args, env=None, timeout=60):
    """Runs titan with a clean environment for the variables status reads; returns (rc, stdout, stderr)."""
    e = {k: v for k, v in os.environ.items()
         if k not in ("TITAN_BACKENDS", "TITAN_ENDPOINT", "TITAN_VM", "TITAN_LIBVIRT_URI", "TITAN_REDIS",
                      "TITAN_REDIS_PREFIX", "TITAN_SERVER_KEY", "TITAN_CURVE_SECRET")}
    e.update(env or {})
    p = subprocess.run([TITAN, *args], capture_output=True, text=True, env=e, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def rows(out):
    """The table's lines by component and name: {(component, name): (status, detail)}."""
    got = {}
    for line in out.splitlines()[1:]:
        if line.startswith("overall:") or not line.strip():
            continue
        parts = line.split(None, 3)
        got[(parts[0], parts[1])] = (parts[2], parts[3] if len(parts) > 3 else "")
    return got


def as_json(out):
    try:
        return json.loads(out)
    except ValueError:
        return {}


class FakeWorker:
    """A ZeroMQ ROUTER that answers every request with `reply` (e.g. busy), on a free loopback port."""

    def __init__(self, reply):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.reply = reply
        self.stop_flag = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stop_flag:
            if not poller.poll(50):
                continue
            msg = self.sock.recv_multipart()
            # The envelope runs to the empty delimiter (REQ, or a DEALER that sends one), else it is the id frame.
            env = msg[:msg.index(b"") + 1] if b"" in msg else msg[:1]
            reply = dict(self.reply)
            try:
                req = json.loads(msg[len(env)])
                if "id" in req:
                    reply["id"] = req["id"]  # a client may match replies by id
            except (ValueError, IndexError):
                pass
            self.sock.send_multipart(env + [json.dumps(reply).encode()])

    def stop(self):
        self.stop_flag = True
        self.thread.join()
        self.sock.close()
        self.ctx.term()


def dead_endpoint():
    return f"tcp://127.0.0.1:{free_port()}"  # nothing listens there


def check_workers(w1, w2, dead, busy):
    rc, out, err = titan("--endpoint", w1.endpoint, "status", "--no-vm")
    r = rows(out)
    st = r.get(("worker", w1.endpoint), ("", ""))
    tap.ok(rc == 0 and len(r) == 1 and st[0] == "healthy" and "(cpu)" in st[1] and "memory " in st[1]
           and "queue 0" in st[1] and out.rstrip().endswith("overall: healthy"),
           "--endpoint: a live worker is healthy, with its device, memory and queue; exit 0", (rc, out, err))
    rc, out, err = titan("--endpoint", dead, "--timeout", "300", "status", "--no-vm")
    st = rows(out).get(("worker", dead), ("", ""))
    tap.ok(rc == 2 and st[0] == "down" and "no answer within 300 ms" in st[1] and "overall: down" in out,
           "--endpoint: a dead worker is down (one attempt of --timeout); exit 2", (rc, out, err))
    rc, out, err = titan("--endpoint", busy.endpoint, "status", "--no-vm")
    st = rows(out).get(("worker", busy.endpoint), ("", ""))
    tap.ok(rc == 1 and st[0] == "degraded" and "busy" in st[1] and "overall: degraded" in out,
           "--endpoint: a worker answering busy is degraded; exit 1", (rc, out, err))

    good = write("good.yaml", f"backends:\n"
                              f"  one: {{type: remote, endpoint: \"{w1.endpoint}\", timeout_ms: 2000}}\n"
                              f"  two: {{type: remote, endpoint: \"{w2.endpoint}\", timeout_ms: 2000}}\n")
    rc, out, err = titan("--backends", good, "status", "--no-vm")
    r = rows(out)
    tap.ok(rc == 0 and set(r) == {("worker", "one"), ("worker", "two")}
           and all(v[0] == "healthy" and "(cpu)" in v[1] for v in r.values()),
           "--backends: a line per backend, each healthy; exit 0", (rc, out, err))
    rc, out, err = titan("status", "--no-vm", env={"TITAN_BACKENDS": good})
    tap.ok(rc == 0 and ("worker", "two") in rows(out), "$TITAN_BACKENDS stands in for --backends", (rc, out, err))

    mixed = write("mixed.yaml", f"backends:\n"
                                f"  one: {{type: remote, endpoint: \"{w1.endpoint}\", timeout_ms: 2000}}\n"
                                f"  gone: {{type: remote, endpoint: \"{dead}\", timeout_ms: 700}}\n"
                                f"  gone2: {{type: remote, endpoint: \"{dead_endpoint()}\", timeout_ms: 700}}\n"
                                f"  full: {{type: remote, endpoint: \"{busy.endpoint}\", timeout_ms: 2000}}\n")
    t0 = time.monotonic()
    rc, out, err = titan("--backends", mixed, "status", "--no-vm")
    took = time.monotonic() - t0
    r = rows(out)
    tap.ok(rc == 2 and r.get(("worker", "one"), ("",))[0] == "healthy"
           and r.get(("worker", "gone"), ("",))[0] == "down" and r.get(("worker", "gone2"), ("",))[0] == "down"
           and r.get(("worker", "full"), ("",))[0] == "degraded" and "overall: down" in out,
           "--backends: a dead backend is down (exit 2), a busy one degraded, the live one healthy",
           (rc, out, err))
    tap.ok(not r.get(("worker", "gone"), ("", "gone:"))[1].startswith("gone:"),
           "a backend's detail does not repeat its name", out)
    # Two dead backends of 0.7 s each, probed at once: well under their sum plus start-up (generous bound).
    tap.ok(took < 1.4 + 1.0, f"backends are probed at once ({took:.2f} s for two 0.7 s timeouts)", took)
    onlybusy = write("busy.yaml", f"backends:\n  one: {{type: remote, endpoint: \"{w1.endpoint}\"}}\n"
                                  f"  full: {{type: remote, endpoint: \"{busy.endpoint}\"}}\n")
    rc, out, err = titan("--backends", onlybusy, "status", "--no-vm")
    tap.ok(rc == 1 and "overall: degraded" in out, "--backends: busy but nothing down: exit 1", (rc, out, err))

    rc, out, err = titan("--backends", mixed, "--json", "status", "--no-vm")
    o = as_json(out)
    comps = {c.get("name"): c for c in o.get("components", [])}
    one = comps.get("one", {})
    tap.ok(rc == 2 and o.get("status") == "down" and set(o) == {"status", "components"}
           and all({"component", "name", "status", "detail"} <= set(c) for c in o.get("components", []))
           and one.get("component") == "worker" and one.get("status") == "healthy"
           and one.get("endpoint") == w1.endpoint and one.get("gpu_info", {}).get("backend") == "cpu"
           and "id" not in one.get("gpu_info", {})
           and comps.get("gone", {}).get("status") == "down" and comps["gone"].get("code") == "unreachable"
           and comps.get("full", {}).get("code") == "busy",
           "--json: status, components with component/name/status/detail, gpu_info and codes", out + err)

    bad = write("bad.yaml", "backends:\n  a:\n    type: remote\n    endpoint: tcp://127.0.0.1:5555\n"
                            "    timeout_ms: 5s\n")
    rc, out, err = titan("--backends", bad, "--json", "status", "--no-vm")
    tap.ok(rc == 2 and out == "" and "bad.yaml:5" in err, "a bad backends file: exit 2, no JSON, file:line", (rc, out, err))


def check_vm(w1):
    ep = ("--endpoint", w1.endpoint)
    rc, out, err = titan(*ep, "status", "--connect", "test:///default", "--vm", "test")
    r = rows(out)
    vm = r.get(("vm", "test"), ("", ""))
    tap.ok(rc == 0 and vm[0] == "healthy" and vm[1].startswith("running") and "test:///default" in vm[1]
           and list(r)[0] == ("vm", "test"),
           "--connect test:///default --vm test: running is healthy, first line; exit 0", (rc, out, err))
    rc, out, err = titan(*ep, "--json", "status", "--connect", "test:///default", "--vm", "test")
    c = (as_json(out).get("components") or [{}])[0]
    tap.ok(rc == 0 and c.get("component") == "vm" and c.get("state") == "running"
           and c.get("uri") == "test:///default", "--json: the VM's state and URI", out)
    rc, out, err = titan(*ep, "status", "--connect", "test:///default", "--vm", "nosuch")
    vm = rows(out).get(("vm", "nosuch"), ("", ""))
    tap.ok(rc == 2 and vm[0] == "down" and "no domain nosuch" in vm[1] and "titan vm define" in vm[1],
           "--vm nosuch: a missing domain is down, with what to do; exit 2", (rc, out, err))
    rc, out, err = titan(*ep, "status", "--connect", "test:///default")
    vm = rows(out).get(("vm", "titan-worker"), ("", ""))
    tap.ok(rc == 2 and vm[0] == "down" and "no domain titan-worker (nor titan-vm, the old default name)" in vm[1],
           "--connect alone checks the default domain titan-worker (missing there: down)", (rc, out, err))
    rc, out, err = titan(*ep, "status", env={"TITAN_LIBVIRT_URI": "test:///default", "TITAN_VM": "test"})
    tap.ok(rc == 0 and rows(out).get(("vm", "test"), ("",))[0] == "healthy",
           "$TITAN_LIBVIRT_URI and $TITAN_VM stand in for --connect and --vm", (rc, out, err))

    node = write("node.xml", NODE_XML)
    uri = "test://" + node
    for name, health, code in (("up", "healthy", 0), ("paused", "degraded", 1), ("off", "down", 2),
                               ("crashed", "down", 2)):
        rc, out, err = titan(*ep, "status", "--connect", uri, "--vm", name)
        vm = rows(out).get(("vm", name), ("", ""))
        tap.ok(rc == code and vm[0] == health, f"a {name} domain is {health}; exit {code}", (rc, out, err))

    sock = os.path.join(tmp, "no-libvirtd.sock")
    rc, out, err = titan(*ep, "--json", "status", "--connect", f"qemu:///system?socket={sock}", "--vm", "titan")
    c = (as_json(out).get("components") or [{}])[0]
    tap.ok(rc == 1 and as_json(out).get("status") == "degraded" and c.get("status") == "unknown"
           and "unreachable" in c.get("detail", "") and err == "",
           "libvirt unreachable: unknown, counted as degraded (exit 1); libvirt prints nothing itself", (rc, out, err))
    rc, out, err = titan(*ep, "status", "--no-vm", env={"TITAN_VM": "test", "TITAN_LIBVIRT_URI": "test:///default"})
    tap.ok(rc == 0 and not any(k[0] == "vm" for k in rows(out)), "--no-vm leaves the VM out", (rc, out, err))
    if os.path.exists("/run/libvirt/libvirt-sock") or os.path.exists("/run/libvirt/libvirt-sock-ro"):
        tap.ok(True, "# SKIP a libvirtd runs here: the default VM line depends on its domains")
    else:
        rc, out, err = titan(*ep, "status")
        tap.ok(rc == 0 and not any(k[0] == "vm" for k in rows(out)),
               "no --vm/--connect and no libvirt at the default URI: no VM line, still healthy", (rc, out, err))


def check_default_vm(w1):
    """The default domain is the design's titan-worker; a VM still named titan-vm (the old default) is found."""
    ep = ("--endpoint", w1.endpoint)
    both = "test://" + write("both.xml", node_xml((("titan-worker", 1), ("titan-vm", 5))))
    rc, out, err = titan(*ep, "status", env={"TITAN_LIBVIRT_URI": both})
    vm = rows(out).get(("vm", "titan-worker"), ("", ""))
    tap.ok(rc == 0 and vm[0] == "healthy" and vm[1].startswith("running") and "old default" not in vm[1],
           "no options (only $TITAN_LIBVIRT_URI): the domain titan-worker, as the design names it", (rc, out, err))
    rc, out, err = titan(*ep, "--json", "status", "--connect", both)
    c = (as_json(out).get("components") or [{}])[0]
    tap.ok(rc == 0 and c.get("name") == "titan-worker" and c.get("state") == "running"
           and "old_default_name" not in c, "--connect alone: titan-worker, not the old name beside it", out)

    old = "test://" + write("old.xml", node_xml((("titan-vm", 1),)))
    rc, out, err = titan(*ep, "status", "--connect", old)
    vm = rows(out).get(("vm", "titan-vm"), ("", ""))
    tap.ok(rc == 0 and vm[0] == "healthy" and "found under the old default name titan-vm" in vm[1]
           and "--vm titan-vm" in vm[1] and "virsh domrename titan-vm titan-worker" in vm[1],
           "only titan-vm (the old default): found, with how to rename it", (rc, out, err))
    rc, out, err = titan(*ep, "--json", "status", "--connect", old)
    c = (as_json(out).get("components") or [{}])[0]
    tap.ok(rc == 0 and c.get("name") == "titan-vm" and c.get("old_default_name") is True, "--json: old_default_name",
           out)
    rc, out, err = titan(*ep, "status", "--connect", old, "--vm", "titan-worker")
    tap.ok(rc == 2 and rows(out).get(("vm", "titan-worker"), ("",))[0] == "down",
           "--vm titan-worker names it: no fallback to titan-vm", (rc, out, err))
    rc, out, err = titan(*ep, "status", "--connect", old, env={"TITAN_VM": "titan-worker"})
    tap.ok(rc == 2 and rows(out).get(("vm", "titan-worker"), ("",))[0] == "down",
           "$TITAN_VM=titan-worker names it too", (rc, out, err))
    rc, out, err = titan("help", "status")
    tap.ok("else titan-worker; else titan-vm" in out, "titan help status gives the default and the fallback", out)


def start_redis():
    exe = shutil.which("redis-server")
    try:
        import redis  # noqa: F401
    except ImportError:
        return None, None, "python3-redis is not installed"
    if not exe:
        return None, None, "redis-server is not installed"
    import redis
    for _ in range(5):
        port = free_port()
        p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", "",
                              "--appendonly", "no", "--daemonize", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(200):  # readiness: a PING answered
            if p.poll() is not None:
                break
            try:
                if r.ping():
                    return p, port, None
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        p.kill()
        p.wait()
    raise RuntimeError("redis-server did not start")


def check_queue(w1, proc, port):
    import redis
    r = redis.Redis(host="127.0.0.1", port=port)
    url = f"redis://127.0.0.1:{port}"
    ep = ("--endpoint", w1.endpoint)
    rc, out, err = titan(*ep, "status", "--no-vm", "--redis", url)
    q = rows(out).get(("queue", url), ("", ""))
    tap.ok(rc == 0 and q[0] == "healthy" and q[1].startswith("0 waiting") and "0 dead letters" in q[1],
           "an empty queue is healthy: 0 waiting, 0 dead letters; exit 0", (rc, out, err))

    for s in ("{titan}:jobs", "{titan}:jobs:high"):
        r.xgroup_create(s, "titan-workers", id="$", mkstream=True)
    for i in range(3):
        r.xadd("{titan}:jobs", {"id": f"n{i}"})
    for i in range(2):
        r.xadd("{titan}:jobs:high", {"id": f"h{i}"})
    r.xreadgroup("titan-workers", "host:1", {"{titan}:jobs": ">"}, count=1)  # delivered, not acknowledged
    r.xadd("{titan}:dead", {"id": "d0", "error": "x", "attempts": "3"})
    rc, out, err = titan(*ep, "--json", "status", "--no-vm", "--redis", url)
    o = as_json(out)
    q = next((c for c in o.get("components", []) if c.get("component") == "queue"), {})
    tap.ok(rc == 0 and q.get("status") == "healthy" and q.get("waiting") == 5 and q.get("undelivered") == 4
           and q.get("pending") == 1 and q.get("dead") == 1
           and q.get("high") == {"undelivered": 2, "pending": 0, "group": True}
           and q.get("normal") == {"undelivered": 2, "pending": 1, "group": True}
           and q.get("name") == url and "5 waiting" in q.get("detail", ""),
           "--json: waiting = not yet delivered + pending over both streams, and dead letters", out + err)
    # An undelivered entry deleted: Redis no longer knows the group's lag, so status counts past the last delivery.
    last = r.xrange("{titan}:jobs", "-", "+")[-1][0]
    r.xdel("{titan}:jobs", last)
    rc, out, err = titan(*ep, "--json", "status", "--no-vm", "--redis", url)
    q = next((c for c in as_json(out).get("components", []) if c.get("component") == "queue"), {})
    tap.ok(rc == 0 and q.get("normal") == {"undelivered": 1, "pending": 1, "group": True} and q.get("waiting") == 4,
           "a lag Redis cannot tell (an entry deleted) is counted from the last delivered id", out + err)
    rc, out, err = titan(*ep, "status", "--no-vm", "--redis", url, "--jobs-group", "other")
    q = rows(out).get(("queue", url), ("", ""))
    tap.ok(rc == 1 and q[0] == "degraded" and "no worker has joined" in q[1],
           "jobs waiting and no such consumer group (--jobs-group): degraded; exit 1", (rc, out, err))
    r.xadd("{other}:jobs", {"id": "o1"})
    rc, out, err = titan(*ep, "status", "--no-vm", "--redis-prefix", "other", env={"TITAN_REDIS": url})
    q = rows(out).get(("queue", url), ("", ""))
    tap.ok(rc == 1 and q[0] == "degraded" and q[1].startswith("1 waiting"),
           "$TITAN_REDIS and --redis-prefix: {other}: keys, 1 waiting with no worker: degraded", (rc, out, err))
    rc, out, err = titan(*ep, "status", "--no-vm", "--redis", "", env={"TITAN_REDIS": url})
    tap.ok(rc == 0 and not any(k[0] == "queue" for k in rows(out)), "--redis '' turns $TITAN_REDIS off",
           (rc, out, err))
    rc, out, err = titan(*ep, "status", "--no-vm", "--redis", f"{url}/3")
    tap.ok(rc == 0 and "0 waiting" in out, "the URL's database is selected (db 3 is empty)", (rc, out, err))

    r.config_set("requirepass", "s3cr@t")
    try:
        rc, out, err = titan(*ep, "status", "--no-vm", "--redis", f"redis://:s3cr%40t@127.0.0.1:{port}")
        name = f"redis://:***@127.0.0.1:{port}"
        q = rows(out).get(("queue", name), ("", ""))
        tap.ok(rc == 0 and q[0] == "healthy" and "s3cr" not in out, "a password works and is not printed",
               (rc, out, err))
        rc, out, err = titan(*ep, "status", "--no-vm", "--redis", url)
        tap.ok(rc == 2 and "NOAUTH" in out, "no password where Redis needs one: down; exit 2", (rc, out, err))
    finally:
        redis.Redis(host="127.0.0.1", port=port, password="s3cr@t").config_set("requirepass", "")

    proc.terminate()
    proc.wait()
    rc, out, err = titan(*ep, "--json", "status", "--no-vm", "--redis", url)
    o = as_json(out)
    q = next((c for c in o.get("components", []) if c.get("component") == "queue"), {})
    tap.ok(rc == 2 and o.get("status") == "down" and q.get("status") == "down"
           and "Redis unreachable" in q.get("detail", "") and q.get("code") == "redis_unreachable",
           "Redis down: the queue is down; exit 2", (rc, out, err))


def check_usage():
    for args, what in ((("status", "--bogus"), "unknown option"), (("status", "extra"), "unknown argument"),
                       (("status", "--vm"), "needs a value"), (("status", "--vm", ""), "--vm needs"),
                       (("status", "--no-vm", "--vm", "x"), "--no-vm"),
                       (("status", "--redis", "http://x"), "bad Redis URL"),
                       (("status", "--redis-prefix", "a{b}"), "--redis-prefix"),
                       (("status", "--connect", ""), "--connect needs")):
        rc, out, err = titan("--json", *args)
        tap.ok(rc == 2 and what in err and out == "", f"usage error: {' '.join(args)!r} (exit 2, no JSON)",
               (rc, out, err))
    rc, out, err = titan("help", "status")
    tap.ok(rc == 0 and "usage: titan status" in out and "exit status: 0" in out and "ecosystem.sh" in out
           and "--no-vm" in out, "titan help status: usage, options, example, exit statuses", (rc, out, err))
    rc, out2, err = titan("status", "--help")
    tap.ok(rc == 0 and out2 == out, "titan status --help prints the same", (rc, err))


def main():
    w1 = Worker(WORKER, "--threads", "1", "--log-level", "warn")
    w2 = Worker(WORKER, "--threads", "1", "--log-level", "warn")
    busy = FakeWorker({"error": "queue full, try again", "code": "busy"})
    dead = dead_endpoint()
    proc = None
    try:
        tap.run("workers", lambda: check_workers(w1, w2, dead, busy))
        tap.run("vm", lambda: check_vm(w1))
        tap.run("default vm", lambda: check_default_vm(w1))
        proc, port, why = start_redis()
        if proc:
            tap.run("queue", lambda: check_queue(w1, proc, port))
        else:
            tap.ok(False, f"queue checks: a redis-server of our own starts (make test installs it): {why}")
        tap.run("usage", check_usage)
    finally:
        busy.stop()
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        for endpoint, rc, sanitizer in Worker.stop_all():
            tap.ok(rc == 0 and not sanitizer, f"worker {endpoint} exited cleanly", rc)
        shutil.rmtree(tmp, ignore_errors=True)
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
