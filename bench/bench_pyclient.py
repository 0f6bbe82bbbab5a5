#!/usr/bin/env python3
"""bench_pyclient.py - the Python client's binary matmul against the C client's, side by side on one worker.

Usage: bench_pyclient.py ENDPOINT --lib BUILD/libtitan.so [--sizes 2048] [--dtype float32] [--rounds N]

Three clients multiply the same n x n matrices on the worker at ENDPOINT, taking turns in every round (the
order rotates), so that drift on a shared machine hits all three alike:
  c       libtitan's titan_client_matmul, called through ctypes into the output buffer (as bench_matmul does;
          the call itself is C from end to end: ctypes adds about a microsecond and releases the GIL);
  python  titan_client.TitanClient.matmul (pyzmq, clients/python);
  router  titan_client.Router.matmul over a compute_backends.yaml naming that one worker (libtitan's router).
Prints one line per size: "pyclient n=N dtype=D c_s=.. python_s=.. router_s=.. python_ratio=.. router_ratio=..
python_ratio_of_medians=.. router_ratio_of_medians=.. rounds=R check=ok|WRONG". The times are medians over the
rounds; a ratio is the median over the rounds of (that client's time / the C client's time in the same round),
which cancels the drift a loaded machine adds between rounds; the ratio of the medians is printed beside it.
Exit 1 when a call failed or the products differ (all three run the same worker code, so they must be the same
bytes)."""
import argparse
import ctypes
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))


class _ClientOpts(ctypes.Structure):  # titan_client_opts (include/titan/client.h)
    _fields_ = [("timeout_ms", ctypes.c_int), ("retries", ctypes.c_int), ("zmq_ctx", ctypes.c_void_p),
                ("server_key", ctypes.c_char_p), ("public_key", ctypes.c_char_p), ("secret_key", ctypes.c_char_p),
                ("heartbeat_ms", ctypes.c_int), ("identity", ctypes.c_char_p), ("_spare", ctypes.c_char * 256)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("endpoint")
    ap.add_argument("--lib", required=True, help="libtitan.so of the build (also used by the Router)")
    ap.add_argument("--sizes", default="2048")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--rounds", type=int, default=0, help="timed rounds (default: as many as fit --budget)")
    ap.add_argument("--budget", type=float, default=30.0, help="seconds of timed rounds per size (default 30)")
    ap.add_argument("--timeout-ms", type=int, default=120000)
    args = ap.parse_args()
    os.environ["TITAN_LIBRARY"] = args.lib
    from titan_client import Router, TitanClient

    lib = ctypes.CDLL(args.lib)
    lib.titan_client_new.restype = ctypes.c_void_p
    lib.titan_client_new.argtypes = [ctypes.c_char_p, ctypes.POINTER(_ClientOpts)]
    lib.titan_client_destroy.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.titan_client_matmul.restype = ctypes.c_int
    lib.titan_client_matmul.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t,
                                        ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.POINTER(ctypes.c_void_p)]
    lib.titan_client_last_error.restype = ctypes.c_char_p
    lib.titan_client_last_error.argtypes = [ctypes.c_void_p]
    opts = _ClientOpts()
    lib.titan_client_opts_init(ctypes.byref(opts))
    opts.timeout_ms, opts.retries = args.timeout_ms, 0  # a retry would hide a slow call inside one timing
    cc = lib.titan_client_new(args.endpoint.encode(), ctypes.byref(opts))
    if not cc:
        sys.exit(f"bench_pyclient: cannot make a C client for {args.endpoint}")
    py = TitanClient(args.endpoint, timeout_ms=args.timeout_ms, retries=0)
    router = Router.from_string(f'backends:\n  w:\n    type: remote\n    endpoint: "{args.endpoint}"\n'
                                f"    timeout_ms: {args.timeout_ms}\n", "bench")
    dt = np.dtype(args.dtype)
    code = 1 if dt == np.float32 else 2
    rc = 0
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            rng = np.random.default_rng(n)
            a = rng.uniform(-1, 1, (n, n)).astype(dt)
            b = rng.uniform(-1, 1, (n, n)).astype(dt)
            c_out = np.empty((n, n), dt)

            def c_client():
                p = ctypes.c_void_p(c_out.ctypes.data)
                err = lib.titan_client_matmul(cc, code, n, n, n, a.ctypes.data, b.ctypes.data, ctypes.byref(p))
                if err:
                    raise RuntimeError(f"titan_client_matmul: {err}: {lib.titan_client_last_error(cc).decode()}")
                return c_out

            runs = {"c": c_client, "python": lambda: py.matmul(a, b), "router": lambda: router.matmul(a, b)}
            results, t = {}, {k: [] for k in runs}
            for k, f in runs.items():  # untimed: connections, first-touch pages on the worker
                results[k] = f().copy()
            t0 = time.perf_counter()
            runs["c"]()
            one = time.perf_counter() - t0
            rounds = args.rounds or max(15, min(99, int(args.budget / (3 * one))))
            names = list(runs)
            for i in range(rounds):
                for k in names[i % 3:] + names[:i % 3]:  # rotate who goes first
                    t0 = time.perf_counter()
                    runs[k]()
                    t[k].append(time.perf_counter() - t0)
            same = all(np.array_equal(results["c"], results[k]) for k in ("python", "router"))
            med = {k: statistics.median(v) for k, v in t.items()}
            paired = {k: statistics.median(x / c for x, c in zip(t[k], t["c"])) for k in ("python", "router")}
            print(f"pyclient n={n} dtype={dt.name} c_s={med['c']:.6g} python_s={med['python']:.6g} "
                  f"router_s={med['router']:.6g} python_ratio={paired['python']:.3f} "
                  f"router_ratio={paired['router']:.3f} python_ratio_of_medians={med['python'] / med['c']:.3f} "
                  f"router_ratio_of_medians={med['router'] / med['c']:.3f} rounds={rounds} "
                  f"check={'ok' if same else 'WRONG'}", flush=True)
            if not same:
                print(f"bench_pyclient: n={n}: the clients' products differ", file=sys.stderr)
                rc = 1
    finally:
        router.close()
        py.close()
        lib.titan_client_destroy(ctypes.byref(ctypes.c_void_p(cc)))
    return rc


if __name__ == "__main__":
    sys.exit(main())
