"""test_router.py - titan_client.Router (libtitan's router through ctypes) against real titan-workers.

A product on one backend against numpy within titan_matmul_tolerance(k), overflow past a busy worker,
failover past a stopped one, the circuit breaker opening and closing again, split products over two workers
(each part byte-identical to that worker's own product of those rows), backends() with a down backend and its
reason, errors as titan_client's exceptions, threads and close(), the library search (TITAN_LIBRARY, pkg-config
on a `meson install --destdir` tree, the error without libtitan) and that the package imports without it.

TITAN_LIBRARY names the libtitan.so under test (meson sets it to the build's); TITAN_BUILD_DIR, when set,
enables the install check."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from titan_client import (BackendStatus, Router, TitanBusy, TitanClient, TitanError,
                          TitanTooLarge, TitanUnknownOp, TitanUnreachable, TitanUnsupported, matmul_tolerance)
from workerproc import Worker

LIVE_MS = 30000  # a live worker never times out, even on a loaded 2-core machine under ASan
DEAD_MS = 1000   # a stopped one fails over after this
CLIENT_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

if not os.environ.get("TITAN_LIBRARY"):
    pytest.skip("TITAN_LIBRARY is not set (meson test python_router sets it to the build's libtitan.so)",
                allow_module_level=True)


def remote(name, w_or_ep, timeout_ms=LIVE_MS, **extra):
    ep = w_or_ep if isinstance(w_or_ep, str) else w_or_ep.endpoint
    lines = [f"  {name}:", "    type: remote", f'    endpoint: "{ep}"', f"    timeout_ms: {timeout_ms}"]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def router_file(tmp_path):
    """Writes compute_backends.yaml text to a file and opens a Router on it; closes them after the test."""
    opened = []

    def make(text, name="compute_backends.yaml"):
        p = tmp_path / name
        p.write_text(text)
        r = Router.from_file(p)
        opened.append(r)
        assert r.warnings == [], r.warnings
        return r
    yield make
    for r in opened:
        r.close()


def rel_error(got, want):
    return float(np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want)))


def rand(rng, shape, dtype):
    return rng.uniform(-1, 1, shape).astype(dtype)


def status(r, name):
    return next(b for b in r.backends() if b.name == name)


# ---- one backend ----

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_product_on_one_backend(start_worker, router_file, dtype):
    w = start_worker("--device", "cpu")
    r = router_file("backends:\n" + remote("w1", w))
    rng = np.random.default_rng(7)
    for m, k, n in [(200, 300, 150), (1, 1, 1), (64, 1000, 3), (129, 257, 65)]:
        a, b = rand(rng, (m, k), dtype), rand(rng, (k, n), dtype)
        c = r.matmul(a, b)
        assert c.dtype == dtype and c.shape == (m, n) and c.flags.c_contiguous and c.flags.writeable
        tol = matmul_tolerance(dtype, k)
        rel = rel_error(c, a.astype(np.float64) @ b.astype(np.float64))
        assert rel <= tol, f"{m}x{k}x{n}: relative error {rel:.3g} over {tol:.3g}"
        route = r.last_route
        assert route.backend == "w1" and route.tried == 1 and not route.overflowed and not route.failed_over
        assert route.error == "" and not route.split
    # the same bytes as the plain client's product from that worker
    a, b = rand(rng, (100, 80), dtype), rand(rng, (80, 60), dtype)
    with TitanClient(w.endpoint, timeout_ms=LIVE_MS) as c:
        assert np.array_equal(r.matmul(a, b), c.matmul(a, b))
    # a transposed view and big-endian data are converted, not misread
    at = np.asfortranarray(a)
    assert np.array_equal(r.matmul(at, b), r.matmul(a, b))
    assert np.array_equal(r.matmul(a.astype(a.dtype.newbyteorder(">")), b), r.matmul(a, b))
    assert matmul_tolerance(dtype, 400) == pytest.approx(2 * matmul_tolerance(dtype, 100))
    s = r.stats()
    assert s["matmuls"] == s["ok"] == 4 + 1 + 2 + 2 and s["errors"] == {} and s["answered_by"] == {"w1": 9}
    assert s["backends"]["w1"]["ok"] == 9 and s["backends"]["w1"]["gflops"] > 0


def test_local_backend_and_validation(router_file):
    r = router_file("backends:\n  cpu: {type: local, device: cpu}\n")
    rng = np.random.default_rng(1)
    a, b = rand(rng, (33, 44), np.float64), rand(rng, (44, 55), np.float64)
    c = r.matmul(a, b)
    assert rel_error(c, a @ b) <= matmul_tolerance(np.float64, 44)
    assert r.last_route.backend == "cpu"
    (cpu,) = r.backends()
    assert cpu.type == "local" and cpu.device == "cpu" and cpu.endpoint == "" and cpu.state == "up"
    for x, y in [(a, b.astype(np.float32)), (a, a), (a[0], b), (a.astype(np.int64), b), (np.zeros((0, 44)), b)]:
        with pytest.raises(ValueError):
            r.matmul(x, y)
    assert status(r, "cpu").requests == 1  # nothing was sent


def test_errors_are_the_clients_exceptions(start_worker, router_file):
    w = start_worker("--device", "cpu", "--max-result-bytes", "1K")
    r = router_file("backends:\n" + remote("w1", w, capabilities="[matrix_ops]"))
    with pytest.raises(TitanTooLarge) as e:
        r.matmul(np.ones((100, 10), np.float32), np.ones((10, 100), np.float32))
    assert e.value.code == "too_large" and "answered" not in e.value.message and e.value.message
    assert e.value.route.backend == "w1" and r.last_route is e.value.route
    assert status(r, "w1").breaker == "closed"  # an answer, not a failure
    assert r.call({"op": "ping"}).header["status"] == "ok" and r.last_route.backend == "w1"
    rep = r.request({"op": "no_such_op"})
    assert rep.is_error and rep.header["code"] == "unknown_op"
    with pytest.raises(TitanUnknownOp):
        r.call('{"op":"no_such_op"}')
    assert r.request({"op": "ping"}, capability="matrix_ops").header["status"] == "ok"
    with pytest.raises(TitanUnsupported) as e:
        r.request({"op": "ping"}, capability="quantum_annealing")
    assert "quantum_annealing" in e.value.message and e.value.code == "unsupported"
    assert r.stats()["errors"] == {"too_large": 1, "unsupported": 1}  # error answers are answers


# ---- overflow ----

class Hog:
    """Keeps a worker with one executor and no queue busy with 1500^3 float32 products."""

    def __init__(self, endpoint):
        self.endpoint, self.stop, self.products, self.failure = endpoint, False, 0, None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while self.products < 1 and self.failure is None and time.monotonic() < deadline:
            time.sleep(0.005)  # one product done: the hog is sending the next, so the worker is occupied
        assert self.failure is None and self.products >= 1, self.failure or "the hog never finished a product"

    def run(self):
        a = (np.arange(1500 * 1500) % 7).astype(np.float32).reshape(1500, 1500)
        with TitanClient(self.endpoint, timeout_ms=120000, retries=0) as c:
            while not self.stop:
                try:
                    c.matmul(a, a)
                    self.products += 1
                except TitanBusy:
                    pass  # a routed request holds the executor: try again at once
                except Exception as e:  # noqa: BLE001 - reported by the test
                    self.failure = repr(e)
                    return

    def end(self):
        self.stop = True
        self.thread.join(180)
        assert self.failure is None, self.failure


def test_overflow_to_the_second_backend_when_the_first_is_busy(start_worker, router_file):
    w1 = start_worker("--device", "cpu", "--threads", "1", "--queue", "0", "--blas-threads", "1")
    w2 = start_worker("--device", "cpu")
    r = router_file("backends:\n" + remote("w1", w1, priority=1) + remote("w2", w2, priority=2))
    only_w1 = router_file("backends:\n" + remote("w1", w1), name="only_w1.yaml")
    rng = np.random.default_rng(3)
    hog = Hog(w1.endpoint)
    try:
        by = {"w1": 0, "w2": 0}
        overflowed = 0
        for i in range(24):
            a, b = rand(rng, (40, 30), np.float32), rand(rng, (30, 20), np.float32)
            c = r.matmul(a, b)
            assert rel_error(c, a.astype(np.float64) @ b) <= matmul_tolerance(np.float32, 30)
            route = r.last_route
            by[route.backend] += 1
            if route.overflowed:
                overflowed += 1
                assert route.backend == "w2" and route.skipped_busy == 1 and route.skipped_failed == 0
        # every backend busy: TitanBusy, with the router's message (a product between two of the hog's may
        # find w1 idle and succeed: keep asking until one finds it busy)
        deadline = time.monotonic() + 60
        while True:
            try:
                only_w1.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))
            except TitanBusy as e:
                assert e.code == "busy" and "busy" in e.message and e.route.skipped_busy == 1
                assert e.route.backend is None
                break
            assert time.monotonic() < deadline, "the only backend never answered busy"
    finally:
        hog.end()
    s1, s2 = status(r, "w1"), status(r, "w2")
    assert overflowed > 0 and by["w2"] == overflowed, (by, overflowed)
    assert s1.busy == overflowed and s1.requests == s1.ok + s1.busy and s2.ok == by["w2"]
    assert s1.breaker == "closed" and s1.state == "up" and s1.failures == 0  # busy is alive, not failed
    st = r.stats()
    assert st["overflowed"] == overflowed and st["failed_over"] == 0 and st["answered_by"] == {
        k: v for k, v in by.items() if v}


# ---- failover and the breaker ----

def test_failover_when_a_worker_stops_and_the_breaker_opens(start_worker, router_file):
    w1 = start_worker("--device", "cpu")
    w2 = start_worker("--device", "cpu")
    r = router_file("router: {breaker_failures: 2, breaker_cooldown_ms: 600000, breaker_max_cooldown_ms: 600000}\n"
                    "backends:\n" + remote("w1", w1, DEAD_MS, priority=1) + remote("w2", w2, priority=2))
    a, b = np.eye(3), np.arange(9.0).reshape(3, 3)
    assert np.array_equal(r.matmul(a, b), b) and r.last_route.backend == "w1"
    w1.stop(signal.SIGKILL)
    # 1st failure: failed over to w2; w1's breaker stays closed (breaker_failures: 2)
    assert np.array_equal(r.matmul(a, b), b)
    route = r.last_route
    assert route.backend == "w2" and route.failed_over and route.skipped_failed == 1 and route.tried == 2
    s1 = status(r, "w1")
    assert s1.breaker == "closed" and s1.failures == 1 and w1.endpoint in s1.last_error
    # 2nd failure: the breaker opens
    assert np.array_equal(r.matmul(a, b), b) and r.last_route.backend == "w2"
    s1 = status(r, "w1")
    assert s1.breaker == "open" and s1.state == "down" and s1.failures == 2
    assert w1.endpoint in s1.reason and "no answer" in s1.reason
    # open: w1 is passed over without being asked
    before = s1.requests
    assert np.array_equal(r.matmul(a, b), b)
    route = r.last_route
    assert route.backend == "w2" and route.tried == 1 and route.skipped_failed == 1
    assert status(r, "w1").requests == before
    assert r.stats()["failed_over"] == 3


def test_breaker_recovers_when_the_worker_comes_back(worker_bin, router_file):
    w = Worker(worker_bin, "--device", "cpu")
    ep = w.endpoint
    w.stop(signal.SIGKILL)
    back = None
    try:
        r = router_file("router: {breaker_failures: 1, breaker_cooldown_ms: 300, breaker_max_cooldown_ms: 300}\n"
                        "backends:\n" + remote("w1", ep, DEAD_MS))
        a = np.ones((4, 4), np.float32)
        with pytest.raises(TitanUnreachable) as e:
            r.matmul(a, a)
        assert e.value.code == "unreachable" and ep in e.value.message and e.value.route.skipped_failed == 1
        assert status(r, "w1").breaker == "open"
        with pytest.raises(TitanUnreachable) as e:  # open: not even tried
            r.matmul(a, a)
        assert e.value.route.tried == 0 and status(r, "w1").requests == 1
        back = Worker(worker_bin, "--device", "cpu", "--bind", ep)
        deadline = time.monotonic() + 30
        while status(r, "w1").breaker != "half-open":  # the cool-down ends: the next call probes it
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert np.array_equal(r.matmul(a, a), np.full((4, 4), 4, np.float32))
        s = status(r, "w1")
        assert r.last_route.backend == "w1" and s.breaker == "closed" and s.state == "up" and s.probes >= 1
        assert r.stats()["errors"] == {"unreachable": 2}
    finally:
        if back is not None:
            assert back.stop() == 0


# ---- split ----

M, K, N = 301, 257, 129  # odd rows: uneven shares


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_across_two_workers(start_worker, router_file, dtype):
    w1 = start_worker("--device", "cpu", "--blas-threads", "1")
    w2 = start_worker("--device", "cpu", "--blas-threads", "1")
    r = router_file("backends:\n" + remote("w1", w1) + remote("w2", w2))
    rng = np.random.default_rng(11)
    a, b = rand(rng, (M, K), dtype), rand(rng, (K, N), dtype)
    c = r.matmul(a, b, split=True)
    route = r.last_route
    assert route.split and route.backend is None and route.note == "" and route.error == ""
    assert [p[0] for p in route.parts] == ["w1", "w2"] and sum(p[1] for p in route.parts) == M
    assert route.parts[0][1] in (128, 192)  # 1:1 over 5 blocks of 64 rows (nothing measured yet)
    assert rel_error(c, a.astype(np.float64) @ b.astype(np.float64)) <= matmul_tolerance(dtype, K)
    clients = {"w1": TitanClient(w1.endpoint, timeout_ms=LIVE_MS), "w2": TitanClient(w2.endpoint, timeout_ms=LIVE_MS)}
    try:
        whole = clients["w1"].matmul(a, b)
        assert rel_error(c, whole.astype(np.float64)) <= matmul_tolerance(dtype, K)
        row = 0
        for name, rows in route.parts:  # each part: the same bytes as that worker's product of those rows
            assert np.array_equal(c[row:row + rows], clients[name].matmul(a[row:row + rows], b)), name
            row += rows
    finally:
        for cl in clients.values():
            cl.close()
    st = r.stats()
    assert st["splits"] == 1 and st["answered_by"] == {"w1": 1, "w2": 1}
    assert all(x.gflops > 0 for x in r.backends())


def test_split_says_when_it_ran_on_one_backend(start_worker, router_file):
    w1 = start_worker("--device", "cpu")
    w2 = start_worker("--device", "cpu")
    ep2 = w2.endpoint
    w2.stop(signal.SIGKILL)
    r = router_file("backends:\n" + remote("w1", w1) + remote("w2", ep2, DEAD_MS) +
                    "  gpu:\n    type: remote\n    endpoint: tcp://127.0.0.1:1\n    capabilities: [legacy_inference]\n")
    rng = np.random.default_rng(5)
    a, b = rand(rng, (200, 50), np.float32), rand(rng, (50, 40), np.float32)
    c = r.matmul(a, b, split=True)
    assert rel_error(c, a.astype(np.float64) @ b) <= matmul_tolerance(np.float32, 50)
    route = r.last_route
    assert route.parts == (("w1", 200),) and route.split
    assert route.note.startswith("split ran on one backend (w1): w2 is down (") and ep2 in route.note
    assert "gpu" not in route.note  # it does not offer matrix_ops
    assert r.stats()["split_on_one_backend"] == 1


# ---- backends() ----

def test_backends_show_state_reason_and_load(start_worker, router_file, tmp_path):
    w = start_worker("--device", "cpu")
    dead = start_worker("--device", "cpu")
    dead_ep = dead.endpoint
    dead.stop(signal.SIGKILL)
    r = router_file("backends:\n" + remote("live", w, capabilities="[matrix_ops, legacy_inference]", priority=2,
                                           weight=2.5, max_inflight=4) +
                    remote("gone", dead_ep, DEAD_MS, device="titan-x-vm") +
                    "  cpu: {type: local, device: cpu}\n")
    before = r.backends()
    assert [b.name for b in before] == ["live", "gone", "cpu"] and all(isinstance(b, BackendStatus) for b in before)
    assert all(b.state == "unknown" and b.reason is None and b.breaker == "closed" for b in before)
    live, gone, cpu = r.backends(probe=True)
    assert (live.type, live.endpoint, live.capabilities) == ("remote", w.endpoint, ("matrix_ops", "legacy_inference"))
    assert (live.priority, live.weight, live.max_inflight, live.timeout_ms) == (2, 2.5, 4, LIVE_MS)
    assert live.state == "up" and live.reason is None and live.p50_ms is not None and live.probes == 1
    assert live.inflight == 0 and live.load == 0.0 and live.offers("inference") and not live.offers("other")
    assert gone.state == "down" and gone.breaker == "open" and gone.device == "titan-x-vm"
    assert dead_ep in gone.reason and gone.reason == gone.last_error and gone.last_error_time > 1.6e9
    assert gone.load is None and gone.p50_ms is None
    assert cpu.state == "up" and cpu.type == "local"
    assert r.probe() == 2
    assert set(r.stats()["backends"]) == {"live", "gone", "cpu"}
    assert r.stats()["backends"]["gone"]["state"] == "down"


def test_config_errors_and_warnings(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        Router.from_file(tmp_path / "missing.yaml")
    assert "missing.yaml" in str(e.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends:\n  w:\n    type: remote\n    endpoint: tcp://127.0.0.1:1\n    priority: high\n")
    with pytest.raises(ValueError) as e:
        Router.from_file(bad)
    assert "bad.yaml" in str(e.value) and ":5" in str(e.value) and "priority" in str(e.value)
    with Router.from_string("backends:\n  cpu: {type: local, device: cpu, colour: blue}\n", "inline") as r:
        assert len(r.warnings) == 1 and "colour" in r.warnings[0] and r.source == "inline"
        assert r.library and os.path.exists(r.library)


# ---- threads and close ----

def test_threads_and_close(start_worker, router_file):
    w = start_worker("--device", "cpu")
    r = router_file("backends:\n  cpu: {type: local, device: cpu, max_inflight: 2}\n" + remote("w1", w))
    failures, routes = [], []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for i in range(12):
                a, b = rand(rng, (30 + i, 20), np.float64), rand(rng, (20, 10), np.float64)
                c = r.matmul(a, b, split=i % 3 == 0)
                if rel_error(c, a @ b) > matmul_tolerance(np.float64, 20):
                    failures.append(f"thread {seed} product {i} wrong")
                routes.append(r.last_route)
        except Exception as e:  # noqa: BLE001
            failures.append(repr(e))
    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(routes) == 72 and r.stats()["ok"] == 72
    assert all(b.inflight == 0 for b in r.backends())
    r.close()
    r.close()  # twice is fine
    assert r.closed
    with pytest.raises(TitanError) as e:
        r.matmul(np.ones((1, 1)), np.ones((1, 1)))
    assert e.value.code == "local" and "closed" in e.value.message


# ---- finding libtitan ----

def run_python(code, env, cwd=None):
    """Runs `code` in a fresh /usr/bin/python3 with titan_client on its path and exactly `env`."""
    env = {**env, "PYTHONPATH": CLIENT_DIR, "PYTHONDONTWRITEBYTECODE": "1"}
    for k in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):  # an ASan build's test runs
        if k in os.environ:
            env.setdefault(k, os.environ[k])
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True,
                       text=True, timeout=120)
    return p


def base_env():
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}


def test_without_libtitan_the_rest_works(worker):
    p = run_python(f"""
        import titan_client as t
        with t.TitanClient({worker.endpoint!r}) as c:
            assert c.ping()["status"] == "ok"
        for make in (lambda: t.Router.from_file("x.yaml"), lambda: t.matmul_tolerance("float32", 4)):
            try:
                make()
            except t.TitanLibraryNotFound as e:
                assert isinstance(e, t.TitanError) and e.code == "no_library"
                print(e.message)
            else:
                raise SystemExit("no error")
    """, {**base_env(), "TITAN_LIBRARY": "/nonexistent/libtitan.so"})
    assert p.returncode == 0, p.stderr
    msg = p.stdout.splitlines()[0]
    assert "TITAN_LIBRARY=/nonexistent/libtitan.so (no such file)" in msg
    assert "make install" in msg and "TITAN_LIBRARY=" in msg and "build/libtitan.so" in msg
    assert "pkg-config" not in msg.split("Router needs it")[0]  # an explicit setting is not second-guessed


def test_not_found_anywhere_says_where_it_looked(tmp_path):
    env = {**base_env(), "PKG_CONFIG_LIBDIR": str(tmp_path)}  # pkg-config there, titan.pc not
    # (meson's LD_LIBRARY_PATH, which would let the linker find the build's libtitan, is left out too)
    p = run_python("""
        import os, ctypes.util
        from titan_client.router import _multiarch_dirs
        print(bool(ctypes.util.find_library("titan") or
                   any(os.path.exists(os.path.join(d, "libtitan.so.0")) for d in _multiarch_dirs())))
    """, env)
    assert p.returncode == 0, p.stderr
    if p.stdout.strip() == "True":
        pytest.skip("libtitan is installed on this machine, so it is found")
    p = run_python("""
        import titan_client as t
        try:
            t.Router.from_string("backends: {cpu: {type: local, device: cpu}}")
        except t.TitanLibraryNotFound as e:
            print(e.message)
    """, env)
    assert p.returncode == 0, p.stderr
    assert "libtitan.so was not found" in p.stdout and "TITAN_LIBRARY (not set)" in p.stdout
    assert "pkg-config" in p.stdout and "/usr/local/lib" in p.stdout and "make install" in p.stdout


def test_a_library_that_is_not_libtitan_is_refused(tmp_path):
    import ctypes.util
    other = ctypes.util.find_library("m")
    path = next((os.path.join(d, other) for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64",
                                                  "/usr/lib64") if other and os.path.exists(os.path.join(d, other))),
                None)
    if path is None:
        pytest.skip("no libm file to point TITAN_LIBRARY at")
    p = run_python("""
        import titan_client as t
        try:
            t.Router.from_string("backends: {cpu: {type: local, device: cpu}}")
        except t.TitanLibraryNotFound as e:
            print(e.message)
    """, {**base_env(), "TITAN_LIBRARY": path})
    assert p.returncode == 0, p.stderr
    assert "is not a libtitan this binding can use" in p.stdout


def test_build_directory_as_titan_library():
    lib = os.environ["TITAN_LIBRARY"]
    p = run_python("""
        import titan_client as t, numpy as np
        with t.Router.from_string("backends: {cpu: {type: local, device: cpu}}") as r:
            print(r.library)
            assert (r.matmul(np.eye(2), np.eye(2)) == np.eye(2)).all()
    """, {**base_env(), "TITAN_LIBRARY": os.path.dirname(lib)})
    assert p.returncode == 0, p.stderr
    assert os.path.dirname(p.stdout.strip()) == os.path.dirname(lib)


def test_installed_libtitan_is_found_through_pkg_config(tmp_path):
    build = os.environ.get("TITAN_BUILD_DIR")
    if not build:
        pytest.skip("TITAN_BUILD_DIR is not set (meson test python_router sets it)")
    dest = tmp_path / "root"
    p = subprocess.run(["meson", "install", "-C", build, "--no-rebuild", "--quiet", "--destdir", str(dest)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    pcs = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs if f == "titan.pc"]
    assert len(pcs) == 1, pcs
    libdir = os.path.dirname(os.path.dirname(pcs[0]))
    assert os.path.islink(os.path.join(libdir, "libtitan.so.0"))
    headers = sorted(f for d, _, fs in os.walk(dest) for f in fs if f.endswith(".h"))
    assert headers == ["client.h", "export.h", "jobs.h", "router.h", "tensor.h", "titan.h"], headers
    # A staged tree: PKG_CONFIG_SYSROOT_DIR maps titan.pc's libdir (the real prefix) into it.
    env = {**base_env(), "PKG_CONFIG_PATH": os.path.dirname(pcs[0]), "PKG_CONFIG_SYSROOT_DIR": str(dest)}
    p = run_python("""
        import titan_client as t, numpy as np
        print(t.find_libtitan()[0])
        with t.Router.from_string("backends: {cpu: {type: local, device: cpu}}") as r:
            print(r.library)
            a = np.arange(6.0).reshape(2, 3)
            assert (r.matmul(a, a.T) == a @ a.T).all()
    """, env)
    assert p.returncode == 0, p.stderr
    found, loaded = p.stdout.split()
    assert found == loaded == os.path.join(libdir, "libtitan.so.0")
