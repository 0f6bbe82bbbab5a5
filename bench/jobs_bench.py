#!/usr/bin/python3
"""jobs_bench.py - small-job throughput through Redis Streams with 1 and 3 titan-workers, against a
bare LPUSH/BRPOP queue (bench/redis_ceiling, C) measured in the same run on the same redis-server.

Usage: jobs_bench.py BUILD_DIR [--jobs N] [--rounds R]
Jobs are 8x8 float32 binary matmuls queued with `titan submit --count N` (pipelined, as the ceiling's
producer pipelines its pushes) to workers with their default --jobs-inflight; the clock runs from the
first job in Redis until the consumer group has no entry left to deliver or acknowledge, as the
ceiling's runs from its first push to its last pop. Each line also gives s_from_spawn, from the start
of the `titan submit` process (a program that loads some 80 shared libraries: ~40 ms on a 2-core VM,
a tenth of a 5000-job round), the clock of this bench before 2026-12-07.
The ceiling is the issue's "plain Redis LPUSH/BRPOP loop": a C producer pipelining LPUSHes and one
consumer taking them with BRPOP. For 3 workers a stricter ceiling with 3 BRPOP consumers is measured too
and shown for information. Prints one line per figure and a summary with the ratio to the loop
(target >= 0.5).
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import redis

P = "{titan}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(tmp):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp,
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    r = redis.Redis(port=port)
    for _ in range(200):
        try:
            r.ping()
            return proc, port, r
        except redis.exceptions.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


def submit(build, port, n):
    """Starts queueing n jobs the way a user would in bulk: `titan submit --count` (C, libtitan's pipelined
    titan_jobs_submit_many), as the ceiling's producer pipelines its LPUSHes. Returns the process."""
    return subprocess.Popen([os.path.join(build, "titan"), "submit", "--redis", f"redis://127.0.0.1:{port}",
                             "--count", str(n), "matmul", "--m", "8", "--k", "8", "--n", "8"],
                            stdout=subprocess.DEVNULL)


def drained(r):
    for g in r.xinfo_groups(f"{P}:jobs"):
        if g["name"] == b"titan-workers":
            return g.get("lag") == 0 and g["pending"] == 0
    return False


def run_jobs(build, port, r, workers, n, tmp):
    r.flushall()
    procs = []
    for i in range(workers):
        ep = os.path.join(tmp, f"w{i}.ep")
        procs.append(subprocess.Popen([os.path.join(build, "titan-worker"), "--bind", "tcp://127.0.0.1:*",
                                       "--endpoint-file", ep, "--log-level", "warn", "--threads", "1",
                                       "--redis", f"redis://127.0.0.1:{port}"]))
        while not os.path.exists(ep):
            time.sleep(0.01)
    # the group exists once a worker has started consuming
    for _ in range(500):
        try:
            if any(g["name"] == b"titan-workers" for g in r.xinfo_groups(f"{P}:jobs")):
                break
        except redis.exceptions.ResponseError:
            pass
        time.sleep(0.01)
    t_spawn = time.perf_counter()
    sub = submit(build, port, n)
    while r.xlen(f"{P}:jobs") == 0 and sub.poll() is None:  # the submitter starting up
        time.sleep(0.0005)
    t0 = time.perf_counter()
    while sub.poll() is None or not drained(r):
        time.sleep(0.002)
    t1 = time.perf_counter()
    if sub.returncode != 0:
        raise RuntimeError(f"titan submit exited {sub.returncode}")
    s, s_spawn = t1 - t0, t1 - t_spawn
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(20)
    done = sum(1 for k in r.scan_iter(f"{P}:job:*", count=1000) if r.hget(k, "state") == b"done")
    return s, s_spawn, done


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3,
                    help="ceiling and titan alternate this many times per worker count; the summary takes the "
                         "median of the per-round ratios (loopback round trips on a small VM swing a lot)")
    args = ap.parse_args()
    if not shutil.which("redis-server"):
        print("jobs_bench: redis-server not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    if args.jobs < 3 or args.rounds < 1:
        print("jobs_bench: --jobs must be at least 3 and --rounds at least 1", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="titan-jobs-bench-")
    proc, port, r = start_redis(tmp)
    def ceiling(consumers):
        out = subprocess.run([os.path.join(args.build, "bench", "redis_ceiling"), "127.0.0.1", str(port),
                              str(args.jobs), str(consumers)], capture_output=True, text=True, check=True).stdout
        return float(out.split("per_s=")[1])

    try:
        rows = []
        bad = 0
        for workers in (1, 3):
            runs = []
            for rnd in range(args.rounds):
                # The reference: one plain LPUSH/BRPOP loop. With 3 workers, also a ceiling with
                # as many BRPOP consumers (stricter: those consumers scale with round trips, not CPU).
                loop = ceiling(1)
                wide = ceiling(workers) if workers > 1 else loop
                s, s_spawn, done = run_jobs(args.build, port, r, workers, args.jobs, tmp)
                per_s = args.jobs / s
                print(f"jobs workers={workers} round={rnd + 1} jobs={args.jobs} done={done} s={s:.3f} "
                      f"per_s={per_s:.0f} loop_ceiling_per_s={loop:.0f} ratio={per_s / loop:.3f} "
                      f"s_from_spawn={s_spawn:.3f} ratio_from_spawn={args.jobs / s_spawn / loop:.3f}"
                      + (f" ceiling_{workers}_consumers_per_s={wide:.0f} ratio_{workers}={per_s / wide:.3f}"
                         if workers > 1 else ""), flush=True)
                runs.append((per_s / loop, per_s, loop, per_s / wide, args.jobs / s_spawn / loop))
                if done != args.jobs:
                    print(f"jobs_bench: only {done} of {args.jobs} jobs ended done", file=sys.stderr)
                    bad = 1
            ratios = sorted(x[0] for x in runs)
            wides = sorted(x[3] for x in runs)
            spawns = sorted(x[4] for x in runs)
            mid = sorted(runs)[len(runs) // 2]
            rows.append((workers, mid, ratios[0], ratios[-1], wides[len(wides) // 2], spawns[len(spawns) // 2]))
        print(f"\n== jobs summary (ratio = titan jobs/s / a bare LPUSH-BRPOP loop's items/s, same redis-server; "
              f"median of {args.rounds} alternating rounds)")
        print(f"{'workers':>8} {'jobs/s':>10} {'loop/s':>10} {'ratio':>7} {'min':>6} {'max':>6} {'target':>8}  result"
              f"   (vs as many BRPOP consumers as workers) (ratio timed from the submitter's start)")
        for workers, (ratio, per_s, loop, *_), lo, hi, wide, spawn in rows:
            print(f"{workers:>8} {per_s:>10.0f} {loop:>10.0f} {ratio:>7.3f} {lo:>6.2f} {hi:>6.2f} {'>= 0.5':>8}  "
                  f"{'PASS' if ratio >= 0.5 else 'MISS'}     {wide:.3f} (info)                     {spawn:.3f} (info)")
        return bad
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
