#!/usr/bin/python3
"""test_vectors.py - every conformance vector (tests/vectors/*.json) through libtitan's C client
(titan_client_call, by way of the vector_call program) against a real worker.
Usage: test_vectors.py PATH/TO/titan-worker PATH/TO/vector_call   (prints TAP)"""
import base64
import json
import os
import subprocess
import sys
import tempfile

from workerproc import Tap, Worker

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vectors"))
import make_vectors  # noqa: E402  (load, request_parts, check_reply)

BIN, CALL = sys.argv[1], sys.argv[2]
tap = Tap()
vectors = make_vectors.load()
tap.ok(len(vectors) >= 12, f"found {len(vectors)} vectors")
worker = Worker(BIN)
tmp = tempfile.mkdtemp(prefix="titan-vectors-")


def run_one(v):
    header, frames = make_vectors.request_parts(v)
    paths = []
    for i, data in enumerate([header, *frames]):
        p = os.path.join(tmp, f"{v['name']}.{i}")
        with open(p, "wb") as f:
            f.write(data)
        paths.append(p)
    r = subprocess.run([CALL, worker.endpoint, *paths], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        tap.ok(False, v["name"], f"vector_call exit {r.returncode}: {r.stdout}{r.stderr}")
        return
    out = json.loads(r.stdout)
    bad = make_vectors.check_reply(v, json.loads(out["header"]), [base64.b64decode(f) for f in out["frames"]])
    tap.ok(not bad, v["name"], "\n".join(bad))


for v in vectors:
    tap.run(v["name"], lambda v=v: run_one(v))

rc = worker.stop()
tap.ok(rc == 0, "worker exited cleanly", open(worker.logpath).read())
sys.exit(tap.done())
