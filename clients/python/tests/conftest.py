"""conftest.py - fixtures that start real titan-workers (tests/integration/workerproc.py), and TAP output.

TITAN_WORKER names the titan-worker binary (default: build/titan-worker in the repository).
With TITAN_TAP=1 (how meson runs this suite), each test prints one TAP line and the plan comes last;
pytest's own report then goes to stderr, so nothing else shares stdout."""
import os
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "tests", "vectors"))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))

from workerproc import Worker  # noqa: E402


@pytest.fixture(scope="session")
def worker_bin():
    path = os.environ.get("TITAN_WORKER", os.path.join(ROOT, "build", "titan-worker"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"no titan-worker at {path} (set TITAN_WORKER)")
    return path


@pytest.fixture(scope="session")
def titan_cli(worker_bin):
    return os.environ.get("TITAN_CLI", os.path.join(os.path.dirname(worker_bin), "titan"))


@pytest.fixture(scope="module")
def worker(worker_bin):
    w = Worker(worker_bin)
    yield w
    assert w.stop() == 0


@pytest.fixture
def start_worker(worker_bin):
    """Starts workers with extra arguments; stops them after the test."""
    started = []

    def start(*args):
        w = Worker(worker_bin, *args)
        started.append(w)
        return w
    yield start
    for w in started:
        w.stop()


_tap = {"n": 0, "on": os.environ.get("TITAN_TAP") == "1"}


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """With TITAN_TAP=1, pytest's terminal report goes to stderr and stdout carries only TAP."""
    if _tap["on"]:
        from _pytest.config import create_terminal_writer
        reporter = config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            reporter._tw = create_terminal_writer(config, sys.stderr)


def _emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def pytest_runtest_logreport(report):
    if not _tap["on"]:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed) or \
            (report.when == "teardown" and report.failed):
        _tap["n"] += 1
        name = report.nodeid + ("" if report.when == "call" else f" ({report.when})")
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            _emit(f"ok {_tap['n']} - {name} # SKIP {reason}")
        elif report.passed:
            _emit(f"ok {_tap['n']} - {name}")
        else:
            _emit(f"not ok {_tap['n']} - {name}")
            for line in str(report.longrepr).splitlines():
                _emit("# " + line)


def pytest_collectreport(report):
    if _tap["on"] and report.failed:
        _tap["n"] += 1
        _emit(f"not ok {_tap['n']} - collecting {report.nodeid}")
        for line in str(report.longrepr).splitlines():
            _emit("# " + line)


def pytest_sessionfinish(session, exitstatus):
    if _tap["on"]:
        _emit(f"1..{_tap['n']}")
