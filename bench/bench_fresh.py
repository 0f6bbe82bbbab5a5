#!/usr/bin/env python3
"""bench_fresh.py - a fresh worker's first products, with the host buffer pool and without.

Usage: bench_fresh.py WORKER [--n 1024] [--count 20] [--rounds 2] [-- extra titan-worker arguments]

For each round, starts a fresh titan-worker twice, once as configured (the pool: --host-pool-mb 256 by
default) and once with --host-pool-mb 0 (no pool, glibc's malloc defaults: the "before"), in an order that
alternates between rounds, and times its first COUNT float32 n x n products over binary frames from one pyzmq
DEALER (one at a time, each reply awaited).

The client is the measuring instrument, so it is settled first: it runs under fixed glibc malloc thresholds
(it re-executes itself with GLIBC_TUNABLES=glibc.malloc.mmap_threshold=32 MiB, trim_threshold=4 GiB), one
ZeroMQ context serves every start, and before the first measured start it runs a few products against a
throwaway worker. Left to its defaults, a client pays for its own first replies on every new connection (glibc
raises its mmap threshold after the first 4 MiB reply is freed, so the next replies fault in fresh heap pages:
~1,000-2,000 client page faults, 1.5-2x the second product's time, measured 2026-12-07), which is no cost of
the worker. The client's page faults per product are printed beside the worker's, so that this stays
visible. Prints, per start:
  "fresh_run mode=pool|nopool round=R ms=t1,t2,...,tCOUNT faults=f1,... client_faults=c1,... steady_ms=.. second_ratio=..
   max_ratio_from_2=.. mean_ratio_2_12=.."
where steady_ms is the median of the last half of the products, second_ratio the second product's time over
it, max_ratio_from_2 the worst of products 2..COUNT over it, mean_ratio_2_12 the mean of products 2..12 over it,
and faults the worker's minor page faults during each product (/proc/PID/stat). Then one line for all rounds:
  "fresh n=N pool_second_ratio=.. nopool_second_ratio=.. pool_mean_ratio_2_12=.. nopool_mean_ratio_2_12=..
   pool_first12_ms=.. nopool_first12_ms=.. pool_steady_ms=.. nopool_steady_ms=.. check=ok|WRONG"
(medians over the rounds; first12_ms is the time of the first 12 products together). Loopback timings on a
shared machine swing from run to run: compare the two modes within a run, and look at the faults, which do not.
Exit 1 when a worker failed or a product was wrong."""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import zmq


def minflt(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def start(worker, args):
    d = tempfile.mkdtemp(prefix="titan-fresh-")
    ep = os.path.join(d, "endpoint")
    log = open(os.path.join(d, "worker.log"), "w")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}  # the worker keeps its own settings
    p = subprocess.Popen([worker, "--bind", "tcp://127.0.0.1:*", "--endpoint-file", ep, "--log-level", "warn",
                          *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 20
    while not os.path.exists(ep):
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise RuntimeError(f"titan-worker did not start: {open(log.name).read()}")
        time.sleep(0.01)
    time.sleep(0.05)  # the file is written before the rename: let it land
    return p, open(ep).read().split()[0]


def client_minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run_once(ctx, worker, args, n, count, a, b, want):
    p, ep = start(worker, args)
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 120000)
    s.connect(ep)
    hdr = json.dumps({"op": "matrix_multiply", "a": {"dtype": "float32", "shape": [n, n], "frame": 1},
                      "b": {"dtype": "float32", "shape": [n, n], "frame": 2}}).encode()
    ms, faults, cfaults, ok = [], [], [], True
    try:
        for _ in range(count):
            f0, c0 = minflt(p.pid), client_minflt()
            t0 = time.perf_counter()
            s.send_multipart([b"", hdr, a, b], copy=False)
            parts = s.recv_multipart()
            ms.append((time.perf_counter() - t0) * 1e3)
            faults.append(minflt(p.pid) - f0)
            cfaults.append(client_minflt() - c0)
            if len(parts) != 3:
                ok = False
                print(f"bench_fresh: no result: {parts[1][:200]!r}", file=sys.stderr)
                break
        c = np.frombuffer(parts[-1], dtype=np.float32).reshape(n, n)
        ok = ok and np.allclose(c, want, rtol=1e-3, atol=1e-2)
    finally:
        s.close()
        p.terminate()
        p.wait(30)
    return ms, faults, cfaults, ok


CLIENT_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"


def main():
    if os.environ.get("GLIBC_TUNABLES") != CLIENT_TUNABLES:
        env = dict(os.environ, GLIBC_TUNABLES=CLIENT_TUNABLES)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("worker")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    o = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    o.extra = extra
    rng = np.random.default_rng(1)
    a = rng.random((o.n, o.n), dtype=np.float32)
    b = rng.random((o.n, o.n), dtype=np.float32)
    want = a @ b
    res = {"pool": [], "nopool": []}
    ctx = zmq.Context()
    # The client settles first (see the docstring): a throwaway worker, not measured.
    _, _, _, all_ok = run_once(ctx, o.worker, list(o.extra), o.n, 4, a, b, want)
    for r in range(o.rounds):
        order = ["nopool", "pool"] if r % 2 == 0 else ["pool", "nopool"]
        for mode in order:
            args = list(o.extra) + (["--host-pool-mb", "0"] if mode == "nopool" else [])
            ms, faults, cfaults, ok = run_once(ctx, o.worker, args, o.n, o.count, a, b, want)
            all_ok = all_ok and ok
            steady = statistics.median(ms[len(ms) // 2:])
            row = {"second_ratio": ms[1] / steady, "max_ratio_from_2": max(ms[1:]) / steady,
                   "mean_ratio_2_12": statistics.mean(ms[1:12]) / steady, "first12_ms": sum(ms[:12]),
                   "steady_ms": steady}
            res[mode].append(row)
            print(f"fresh_run mode={mode} round={r + 1} ms={','.join(f'{t:.1f}' for t in ms)} "
                  f"faults={','.join(str(f) for f in faults)} client_faults={','.join(str(f) for f in cfaults)} "
                  f"steady_ms={steady:.1f} "
                  f"second_ratio={row['second_ratio']:.2f} max_ratio_from_2={row['max_ratio_from_2']:.2f} "
                  f"mean_ratio_2_12={row['mean_ratio_2_12']:.2f}", flush=True)
    med = {m: {k: statistics.median(x[k] for x in rows) for k in rows[0]} for m, rows in res.items()}
    print(f"fresh n={o.n} pool_second_ratio={med['pool']['second_ratio']:.2f} "
          f"nopool_second_ratio={med['nopool']['second_ratio']:.2f} "
          f"pool_mean_ratio_2_12={med['pool']['mean_ratio_2_12']:.2f} "
          f"nopool_mean_ratio_2_12={med['nopool']['mean_ratio_2_12']:.2f} "
          f"pool_first12_ms={med['pool']['first12_ms']:.1f} nopool_first12_ms={med['nopool']['first12_ms']:.1f} "
          f"pool_steady_ms={med['pool']['steady_ms']:.1f} nopool_steady_ms={med['nopool']['steady_ms']:.1f} "
          f"rounds={o.rounds} check={'ok' if all_ok else 'WRONG'}", flush=True)
    ctx.term()
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
