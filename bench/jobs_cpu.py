#!/usr/bin/python3
"""jobs_cpu.py - where the CPU of small batch jobs goes: runs N 8x8 matmul jobs through W titan-workers
(--threads 1) on its own redis-server and prints jobs/s with the CPU seconds that redis-server and each
worker spent meanwhile (from /proc/PID/stat), then the CPU per job of each thread (user + system, from
/proc/PID/task/TID/stat: a worker's first thread is its I/O loop, then come its executors, its tensor
sweeper and its job consumer) and of the `titan submit` process. A diagnostic beside jobs_bench.py, not
a target.

Usage: jobs_cpu.py BUILD_DIR [--workers W] [--jobs N] [--worker-build DIR] [-- WORKER_OPTION...]
--worker-build takes titan-worker from another build (to compare two commits on one redis-server).
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from jobs_bench import drained, start_redis, P


def cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_cpu(pid):
    """{tid: (user s, system s)} of every thread of pid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK"))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--worker-build")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.extra = extra
    if not shutil.which("redis-server"):
        print("jobs_cpu: redis-server not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    wbin = os.path.join(args.worker_build or args.build, "titan-worker")
    tmp = tempfile.mkdtemp(prefix="titan-jobs-cpu-")
    rproc, port, r = start_redis(tmp)
    procs = []
    try:
        for i in range(args.workers):
            ep = os.path.join(tmp, f"w{i}.ep")
            procs.append(subprocess.Popen([wbin, "--bind", "tcp://127.0.0.1:*", "--endpoint-file", ep, "--log-level",
                                           "warn", "--threads", "1", "--redis", f"redis://127.0.0.1:{port}",
                                           *args.extra]))
            while not os.path.exists(ep):
                if procs[-1].poll() is not None:
                    print("jobs_cpu: titan-worker exited", file=sys.stderr)
                    return 1
                time.sleep(0.01)
        time.sleep(0.3)
        w0 = [cpu_s(p.pid) for p in procs]
        r0 = cpu_s(rproc.pid)
        th0 = {p.pid: threads_cpu(p.pid) for p in procs + [rproc]}
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        sub = subprocess.Popen([os.path.join(args.build, "titan"), "submit", "--redis", f"redis://127.0.0.1:{port}",
                                "--count", str(args.jobs), "matmul", "--m", "8", "--k", "8", "--n", "8"],
                               stdout=subprocess.DEVNULL)
        while sub.poll() is None or not drained(r):
            time.sleep(0.005)
        s = time.perf_counter() - t0
        w1 = [cpu_s(p.pid) for p in procs]
        r1 = cpu_s(rproc.pid)
        th1 = {p.pid: threads_cpu(p.pid) for p in procs + [rproc]}
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = sum(1 for k in r.scan_iter(f"{P}:job:*", count=1000) if r.hget(k, "state") == b"done")
        per_job = lambda x: x / args.jobs * 1e6
        print(f"jobs_cpu workers={args.workers} jobs={args.jobs} done={done} s={s:.3f} per_s={args.jobs / s:.0f} "
              f"redis_cpu_s={r1 - r0:.2f} ({per_job(r1 - r0):.0f} us/job) "
              f"workers_cpu_s={[round(b - a, 2) for a, b in zip(w0, w1)]} "
              f"({per_job(sum(w1) - sum(w0)):.0f} us/job)")
        total = 0.0
        for name, p in [("redis-server", rproc)] + [(f"worker{i}", p) for i, p in enumerate(procs)]:
            for tid in sorted(th1[p.pid]):
                u0, k0 = th0[p.pid].get(tid, (0.0, 0.0))
                u1, k1 = th1[p.pid][tid]
                if u1 + k1 - u0 - k0 <= 0:
                    continue
                total += per_job(u1 + k1 - u0 - k0)
                print(f"  {name} thread {tid}{' (main)' if tid == p.pid else ''}: {per_job(u1 + k1 - u0 - k0):.1f} "
                      f"us/job = {per_job(u1 - u0):.1f} user + {per_job(k1 - k0):.1f} system")
        su, ss = ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime
        total += per_job(su + ss)
        print(f"  titan submit: {per_job(su + ss):.1f} us/job = {per_job(su):.1f} user + {per_job(ss):.1f} system")
        print(f"  all: {total:.1f} us/job, at most {2e6 / total if total else 0:.0f} jobs/s on 2 cores")
        return 0 if done == args.jobs else 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
        rproc.terminate()
        rproc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
