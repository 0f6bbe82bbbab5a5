#!/usr/bin/python3
"""test_result_width.py - JSON results whose numbers take the longest text (fuzz_reply's finding).

Fixed notation runs up to 1e16, so a float32 such as -9876543590000000.0 takes 19 characters and a
float64 such as -2.2250738585072014e-308 takes 24. A reply made only of such numbers must fit the
buffer the worker reserves for it (a heap overflow under ASan otherwise) and read back exactly.
Usage: test_result_width.py WORKER
"""
import json
import sys

import numpy as np
import zmq

from workerproc import Tap, Worker

CASES = [  # (dtype, value whose text is longest, result columns)
    ("float32", -9876543590000000.0, 1),
    ("float32", -9876543590000000.0, 200),
    ("float32", -1.17549435e-38, 200),
    ("float64", -2.2250738585072014e-308, 200),
    ("float64", -12345678901234568.0, 200),
]


def main():
    tap = Tap()
    w = Worker(sys.argv[1], log_level="warn")
    ctx = zmq.Context()

    def case(dt, x, n, rows):
        # a = x in every row, b = a row of ones: every element of the m x n result is x exactly
        req = {"op": "matrix_multiply", "dtype": dt, "id": "w", "a": [[x]] * rows, "b": [[1.0] * n]}
        if w.proc.poll() is not None:
            tap.ok(False, f"{dt} {rows}x{n} result of {x!r}: the worker has died ({w.proc.returncode})")
            return
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(w.endpoint)
        s.send(json.dumps(req).encode())
        if not s.poll(10000):
            s.close()
            tap.ok(False, f"{dt} {rows}x{n} result of {x!r}: no reply in 10 s",
                   "worker exit code: " + str(w.proc.poll()) + "\n" + w.read_log()[-2000:])
            return
        r = json.loads(s.recv())
        s.close()
        want = np.full((rows, n), x, dtype=dt)
        got = np.array(r.get("result", []), dtype=np.float64).astype(dt)
        tap.ok(got.shape == want.shape and np.array_equal(got, want) and r.get("id") == "w",
               f"{dt} {rows}x{n} result of {x!r} reads back exactly", str(r)[:300])

    for dt, x, n in CASES:
        tap.run(f"{dt} {x!r}", lambda: case(dt, x, n, 1))
    tap.run("float32 50x50", lambda: case("float32", -9876543590000000.0, 50, 50))
    tap.run("float64 50x50", lambda: case("float64", -2.2250738585072014e-308, 50, 50))
    ctx.term()
    rc = w.stop()
    log = open(w.logpath).read()
    tap.ok(rc == 0 and "Sanitizer" not in log and "runtime error" not in log,
           "worker exited 0 after SIGTERM, no sanitizer report", f"exit {rc}\n{log[-3000:]}")
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
