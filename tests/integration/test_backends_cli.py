#!/usr/bin/python3
"""test_backends_cli.py - `titan --backends FILE` (matmul, matmul --split, backends) against real workers.

Usage: test_backends_cli.py TITAN-WORKER TITAN
"""
import json
import os
import socket
import subprocess
import sys
import tempfile

from workerproc import Tap, Worker

WORKER, TITAN = sys.argv[1], sys.argv[2]
tap = Tap()
tmp = tempfile.mkdtemp(prefix="titan-backends-")


def dead_endpoint():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"tcp://127.0.0.1:{port}"


def write(name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def titan(*args, env=None, timeout=60):
    e = dict(os.environ)
    e.pop("TITAN_BACKENDS", None)
    e.update(env or {})
    p = subprocess.run([TITAN, *args], capture_output=True, text=True, env=e, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def check_no_probe_json():
    """--no-probe --json asks nobody, so it must not claim answers (issue 16: it said "answered": 2)."""
    listener = socket.socket()  # a backend that would see any connection titan makes
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    ep = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    path = write("noprobe.yaml", f"backends:\n  cpu: {{type: local, device: cpu}}\n"
                                 f"  watched: {{type: remote, endpoint: \"{ep}\", timeout_ms: 300}}\n")
    try:
        rc, out, err = titan("--backends", path, "--json", "backends", "--no-probe")
        try:
            listener.accept()
            contacted = True
        except BlockingIOError:
            contacted = False
    finally:
        listener.close()
    o = json.loads(out) if out.strip() else {}
    bs = o.get("backends", [])
    tap.ok(rc == 0 and o.get("probed") is False and "answered" in o and o["answered"] is None
           and o.get("total") == 2,
           '--no-probe --json: {"probed": false, "answered": null, "total": 2}, exit 0', out + err)
    tap.ok(len(bs) == 2 and all(b.get("probed") is False and b.get("state") is None and b.get("p50_ms") is None
                                and b.get("requests") == 0 and b.get("last_error") is None for b in bs),
           "--no-probe --json: each backend probed false, no breaker state, no latency, no requests", bs)
    tap.ok(not contacted, "--no-probe --json contacts nothing (a listening backend saw no connection)", "")
    rc, out, err = titan("--backends", path, "--json", "backends")
    o = json.loads(out) if out.strip() else {}
    tap.ok(rc == 1 and o.get("probed") is True and o.get("answered") == 1 and o.get("total") == 2
           and all(b.get("probed") is True for b in o.get("backends", [])),
           'probed --json: {"probed": true, "answered": 1, "total": 2}', out + err)


def main():
    w1 = Worker(WORKER, "--threads", "1", "--log-level", "warn")
    w2 = Worker(WORKER, "--threads", "1", "--log-level", "warn")
    dead = dead_endpoint()
    good = write("good.yaml", f"""# the design's format, plus optional fields
backends:
  primary:   {{type: local, device: cuda:0}}
  secondary:
    type: remote
    endpoint: {w1.endpoint}
    device: titan-x-vm
    capabilities: [matrix_ops, legacy_inference]
    timeout_ms: 2000
  third: {{type: remote, endpoint: "{w2.endpoint}", timeout_ms: 2000, colour: red}}
  gone: {{type: remote, endpoint: "{dead}", timeout_ms: 300, priority: 0}}
""")

    # --- titan backends ---
    rc, out, err = titan("--backends", good, "backends")
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    tap.ok(rc == 1 and set(rows) == {"primary", "secondary", "third", "gone"},
           "backends lists every backend; exit 1 when some did not answer", (rc, out, err))
    tap.ok(" closed " in rows.get("secondary", "") and " ms " in rows.get("secondary", "")
           and w1.endpoint in rows.get("secondary", ""), "a live worker: closed, with its p50 ping time", out)
    tap.ok(" open " in rows.get("gone", "") and "no answer" in rows.get("gone", ""),
           "a dead worker: open, and the last error says why", out)
    tap.ok(" open " in rows.get("primary", "") and "CUDA" in rows.get("primary", ""),
           "a local cuda:0 in a build without CUDA: open, and the error names CUDA", out)
    # the reason: no CUDA device (a build with the CUDA module, on a machine without a GPU), or no CUDA backend
    tap.ok(" down       open " in rows.get("primary", "")
           and ("no CUDA device" in rows.get("primary", "") or "no CUDA backend" in rows.get("primary", ""))
           and " up         closed " in rows.get("secondary", ""),
           "HEALTH: the local cuda:0 without a GPU is down with the reason (no CUDA device or backend), a live worker up", out)
    tap.ok(any(line.startswith("titan: ") and line.endswith("good.yaml:10: unknown field third.colour ignored")
               for line in err.splitlines()), "an unknown field is a titan: warning with its line", err)
    rc, out, err = titan("--backends", good, "--json", "backends")
    o = json.loads(out) if out.strip() else {}
    byname = {b["name"]: b for b in o.get("backends", [])}
    tap.ok(rc == 1 and o.get("answered") == 2 and o.get("total") == 4
           and byname.get("secondary", {}).get("state") == "closed"
           and byname.get("secondary", {}).get("capabilities") == "matrix_ops,legacy_inference"
           and byname.get("gone", {}).get("state") == "open" and byname["gone"]["last_error"]
           and byname["third"]["p50_ms"] > 0 and byname["gone"]["p50_ms"] is None,
           "--json backends: states, capabilities, latencies, errors, counts", out)
    tap.ok(byname.get("primary", {}).get("health") == "down" and byname.get("secondary", {}).get("health") == "up",
           "--json backends: health down for the local cuda:0, up for a live worker", out)
    rc, out, err = titan("--backends", good, "backends", "--no-probe")
    tap.ok(rc == 0 and out.count("unprobed") == 4, "--no-probe checks the file and contacts nothing", (rc, out))
    tap.ok("not probed" in err and "4 backends" in err and " ms " not in out,
           "--no-probe says on stderr that the backends were not probed; no latency shown", (out, err))
    check_no_probe_json()
    rc, out, err = titan("backends", env={"TITAN_BACKENDS": good})
    tap.ok(rc == 1 and "secondary" in out, "TITAN_BACKENDS stands in for --backends", (rc, out, err))
    alldead = write("dead.yaml", f"backends:\n  a: {{type: remote, endpoint: \"{dead}\", timeout_ms: 200}}\n")
    rc, out, err = titan("--backends", alldead, "backends")
    tap.ok(rc == 3, "no backend answers: exit 3", (rc, out, err))
    rc, out, err = titan("backends")
    tap.ok(rc == 2 and "--backends" in err, "backends without a file is a usage error", (rc, err))

    # --- a bad file: exit 2, file:line:field ---
    bad = write("bad.yaml", "backends:\n  a:\n    type: remote\n    endpoint: tcp://127.0.0.1:5555\n"
                            "    timeout_ms: 5s\n")
    for args in (("backends",), ("matmul", "--m", "2", "--k", "2", "--n", "2")):
        rc, out, err = titan("--backends", bad, *args)
        tap.ok(rc == 2 and "bad.yaml:5" in err and "timeout_ms" in err and "5s" in err,
               f"a bad file stops `{args[0]}` with file:line:field (exit 2)", (rc, err))
    rc, out, err = titan("--backends", os.path.join(tmp, "missing.yaml"), "backends")
    tap.ok(rc == 2 and "missing.yaml" in err, "a missing file: exit 2, named", (rc, err))

    # --- routed matmul: failover past the dead backend and the missing CUDA device ---
    rc, out, err = titan("--backends", good, "matmul", "--m", "300", "--k", "200", "--n", "100", "--check")
    tap.ok(rc == 0 and "on backend secondary" in out and "check against OpenBLAS" in out and ": ok" in out,
           "matmul through the router skips the dead and CUDA backends and is right", (rc, out, err))
    rc, out, err = titan("--backends", good, "--json", "matmul", "--m", "64", "--k", "32", "--n", "16")
    o = json.loads(out) if rc == 0 else {}
    tap.ok(o.get("backend") == "secondary" and o.get("tried", 0) >= 2 and "endpoint" not in o,
           "--json names the backend and how many were tried", out + err)

    # --- split ---
    rc, out, err = titan("--backends", good, "--json", "matmul", "--m", "301", "--k", "257", "--n", "129", "--split",
                         "--check", "--dtype", "float64")
    o = json.loads(out) if rc == 0 else {}
    parts = o.get("split", [])
    tap.ok(rc == 0 and o.get("check", {}).get("ok") and sorted(p["backend"] for p in parts) == ["secondary", "third"]
           and sum(p["rows"] for p in parts) == 301, "--split divides the rows over the live workers; --check ok",
           out + err)
    rc, out, err = titan("matmul", "--m", "2", "--k", "2", "--n", "2", "--split")
    tap.ok(rc == 2 and "--backends" in err, "--split without --backends is a usage error", (rc, err))

    # --- every backend unusable: exit 3 with the reason ---
    rc, out, err = titan("--backends", alldead, "matmul", "--m", "2", "--k", "2", "--n", "2")
    tap.ok(rc == 3 and "no backend answered" in err and "titan backends" in err,
           "matmul with no live backend: exit 3, says why and what to run", (rc, err))
    nocap = write("nocap.yaml", f"backends:\n  a: {{type: remote, endpoint: \"{w1.endpoint}\", "
                                "capabilities: [legacy_inference]}\n")
    rc, out, err = titan("--backends", nocap, "matmul", "--m", "2", "--k", "2", "--n", "2")
    tap.ok(rc == 1 and "matrix_ops" in err, "no backend with matrix_ops: exit 1, names the capability", (rc, err))

    results = Worker.stop_all()
    tap.ok(all(rc == 0 and not san for _, rc, san in results), "the workers exited cleanly", results)
    sys.exit(tap.done())


main()
