#!/usr/bin/python3
"""test_status_page.py - titan serve's status page rendered by headless Chromium against real workers.

Usage: test_status_page.py TITAN-WORKER TITAN BUILD-DIR
Writes screenshots of the page at 1280x900 to BUILD-DIR/test-artifacts/: status_page.png (a live, a dead and a
local backend), status_page_healthy.png (a live worker) and status_page_killed.png (its worker SIGKILLed).
Chromium is /usr/bin/chromium (Debian's, from `scripts/deps.sh test`) or the first chromium on PATH;
$TITAN_TEST_CHROMIUM names another binary. Without one the test fails and says how to install it.
"""
import html.parser
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib

from serveproc import Serve, dead_endpoint, wait_for
from workerproc import Tap, Worker

WORKER, TITAN, BUILD = sys.argv[1], sys.argv[2], sys.argv[3]
tap = Tap()
tmp = tempfile.mkdtemp(prefix="titan-page-")
ARTIFACTS = os.path.join(BUILD, "test-artifacts")
SHOT = os.path.join(ARTIFACTS, "status_page.png")
INTERVAL = 200
MEMORY_LABEL = {"cpu": "Host RAM", "cuda": "GPU memory"}  # by gpu_info's "backend": what the memory is


def find_chromium():
    if os.environ.get("TITAN_TEST_CHROMIUM"):
        c = os.environ["TITAN_TEST_CHROMIUM"]
        return c if os.access(c, os.X_OK) else None
    for c in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if c and os.access(c, os.X_OK):
            return c
    return None


CHROMIUM = find_chromium()


def chromium(url, *mode, budget_ms=5000):
    """Runs headless Chromium on url; returns (exit status, stdout, stderr)."""
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp)
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--force-color-profile=srgb",
           f"--virtual-time-budget={budget_ms}", *mode, url]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        return -1, e.stdout or "", f"chromium timed out after 180 s: {e.stderr or ''}"
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Dom(html.parser.HTMLParser):
    """The elements of a page, each with its attributes and text, and its ancestors."""

    def __init__(self, text):
        super().__init__()
        self.elements = []
        self.stack = []
        self.feed(text)

    VOID = {"meta", "link", "br", "img", "input", "hr", "path", "line", "rect"}

    def handle_starttag(self, tag, attrs):
        e = {"tag": tag, "attrs": dict(attrs), "text": "", "parents": list(self.stack)}
        self.elements.append(e)
        if tag not in self.VOID:
            self.stack.append(e)

    def handle_startendtag(self, tag, attrs):
        self.elements.append({"tag": tag, "attrs": dict(attrs), "text": "", "parents": list(self.stack)})

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i]["tag"] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        for e in self.stack:
            e["text"] += data

    def find(self, tag=None, cls=None, within=None, **attrs):
        out = []
        for e in self.elements:
            if tag and e["tag"] != tag:
                continue
            if cls and cls not in e["attrs"].get("class", "").split():
                continue
            if within is not None and not any(p is within for p in e["parents"]):
                continue
            if all(e["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items()):
                out.append(e)
        return out


def console_problems(stderr):
    """Lines of Chromium's log (--enable-logging=stderr) from the page's console: uncaught exceptions, CSP
    refusals, failed loads, console.error. The page writes nothing there when all is well, and the log
    does not say a message's level, so every console line counts."""
    return [line for line in stderr.splitlines()
            if ":CONSOLE" in line or "Content Security Policy" in line or "Refused to" in line]


def png_info(path):
    """Returns (width, height, distinct byte values of the pixel data, file size) of a PNG."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    pixels = zlib.decompress(idat)
    return w, h, len(set(pixels)), len(data)


def screenshot(url, path):
    """Renders url at 1280x900 into path; tap-checks that it is a real picture. Returns whether it is."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    rc, out, err = chromium(url, f"--screenshot={path}", "--window-size=1280,900")
    ok = rc == 0 and os.path.exists(path)
    info = png_info(path) if ok else None
    return tap.ok(ok and info[0] == 1280 and info[1] == 900 and info[2] > 64 and info[3] > 30000,
                  f"a screenshot of the page: {path}, 1280x900, not blank", (rc, info, err[-2000:]))


def fact(dom, card, key):
    """The text of a card's figure (dd.KEY) and of its label (the dt beside it)."""
    dd = dom.find("dd", cls=key, within=card)
    dt = dom.find("dt", within=dd[0]["parents"][-1]) if dd else []
    return (dd[0]["text"] if dd else None), (dt[0]["text"] if dt else None)


def memory_titles(dom, card):
    """The memory figure's label and the memory chart's title of a card."""
    chart = dom.find("figure", cls="chart", within=card, data_metric="memory")
    title = dom.find(cls="chart-title", within=chart[0]) if chart else []
    return fact(dom, card, "memory")[1], (title[0]["text"] if title else None)


def check_live_worker():
    w = Worker(WORKER, "--threads", "1", "--log-level", "warn")
    s = Serve(TITAN, "--connect", w.endpoint, "--interval", str(INTERVAL))
    try:
        wait_for(lambda: len(s.json("/api/titan/backends")[2]["backends"][0]["history"]) >= 5, 15)
        gi = s.json("/api/titan/backends")[2]["backends"][0]["gpu_info"]
        device, kind = gi["name"], gi.get("backend")
        rc, out, err = chromium(s.url + "/", "--dump-dom")
        dom = Dom(out)
        body = (dom.find("body") or [{"attrs": {}}])[0]["attrs"]
        tap.ok(rc == 0 and body.get("data-ready") == "1" and int(body.get("data-refreshes", "0")) >= 2,
               "the page loads and refreshes itself live (several fetches within the budget)", (rc, body, err[-2000:]))
        tap.ok(body.get("data-errors") == "0" and not dom.find(id="js-errors")[0]["text"].strip(),
               "no script errors on the page", dom.find(id="js-errors")[0]["text"] if dom.find(id="js-errors") else out)
        tap.ok(not console_problems(err), "no console errors or CSP refusals in Chromium's log", console_problems(err))
        cards = dom.find("div", cls="backend")
        card = cards[0] if cards else None
        tap.ok(len(cards) == 1 and card["attrs"].get("data-name") == "worker"
               and card["attrs"].get("data-state") == "closed" and card["attrs"].get("data-health") == "healthy",
               'one card: <div class="backend" data-name="worker" data-state="closed" data-health="healthy">',
               [c["attrs"] for c in cards])
        if card:
            badge = dom.find(cls="state-text", within=card)
            dev = dom.find("dd", cls="device", within=card)
            tap.ok(badge and badge[0]["text"] == "Healthy", "its badge says Healthy", badge)
            tap.ok(dev and dev[0]["text"] == device, f"it shows the device name ({device})", dev)
            tap.ok(all(dom.find("dd", cls=k, within=card) for k in ("memory", "utilization", "p50", "queue",
                                                                     "inflight")),
                   "it shows memory, utilization, p50, queue depth and in flight", "")
            p50 = dom.find("dd", cls="p50", within=card)
            tap.ok(p50 and p50[0]["text"].endswith(" ms"), "p50 latency in ms", p50)
            label = MEMORY_LABEL.get(kind, "Memory")
            tap.ok(memory_titles(dom, card) == (label, label),
                   f"memory is labelled by what it is: {label!r} on a {kind} worker (gpu_info's backend)",
                   memory_titles(dom, card))
            uptime = fact(dom, card, "uptime")[0]
            tap.ok(uptime and uptime != "n/a" and uptime.endswith((" s", " min", " h")),
                   "a healthy worker shows its uptime", uptime)
            charts = {f["attrs"].get("data-metric"): f for f in dom.find("figure", cls="chart", within=card)}
            lat = charts.get("latency")
            tap.ok(set(charts) == {"latency", "queue", "memory"} and lat and int(lat["attrs"].get("data-points", 0)) >= 5
                   and dom.find("path", cls="line", within=lat),
                   "charts of latency, queue depth and memory; the latency chart has a line of the samples",
                   {k: v["attrs"] for k, v in charts.items()})
            err_box = dom.find(cls="last-error", within=card)
            tap.ok(err_box and err_box[0]["attrs"].get("data-error") == "0", "no last error shown", err_box)
        overall = dom.find(id="overall")
        tap.ok(overall and overall[0]["attrs"].get("data-status") == "healthy"
               and "worker" in dom.find(id="overall-text")[0]["text"],
               "the status line at the top comes from /api/titan/health: healthy, from worker", overall)
        screenshot(s.url + "/", os.path.join(ARTIFACTS, "status_page_healthy.png"))
    finally:
        rc = s.stop()
    tap.ok(rc == 0, "titan serve exits 0 on SIGTERM", rc)
    w.stop()


def check_mixed_and_screenshot():
    w = Worker(WORKER, "--threads", "1", "--log-level", "warn")
    dead = dead_endpoint()
    path = os.path.join(tmp, "backends.yaml")
    with open(path, "w") as f:
        f.write(f"""backends:
  titan-x: {{type: remote, endpoint: "{w.endpoint}", device: titan-x-vm, timeout_ms: 1000}}
  spare:   {{type: remote, endpoint: "{dead}", timeout_ms: 300}}
  host-cpu: {{type: local, device: cpu}}
""")
    s = Serve(TITAN, "--backends", path, "--interval", str(INTERVAL))
    try:
        wait_for(lambda: {b["name"]: b["health"] for b in s.json("/api/titan/backends")[2]["backends"]}
                 == {"titan-x": "healthy", "spare": "down", "host-cpu": "healthy"}, 20)
        time.sleep(2)  # a few more samples for the charts
        rc, out, err = chromium(s.url + "/", "--dump-dom")
        dom = Dom(out)
        cards = {c["attrs"].get("data-name"): c for c in dom.find("div", cls="backend")}
        tap.ok(list(cards) == ["titan-x", "spare", "host-cpu"], "one card a backend, in file order", list(cards))
        spare = cards.get("spare")
        tap.ok(spare and spare["attrs"].get("data-state") in ("open", "half-open")
               and spare["attrs"].get("data-health") == "down"
               and dom.find(cls="state-text", within=spare)[0]["text"] == "Down",
               "the dead backend's card: breaker open, Down", spare and spare["attrs"])
        err_box = dom.find(cls="last-error", within=spare) if spare else []
        tap.ok(err_box and err_box[0]["attrs"].get("data-error") == "1" and dead in err_box[0]["text"],
               "it shows its last error", err_box and err_box[0]["text"])
        cpu = cards.get("host-cpu")
        tap.ok(cpu and cpu["attrs"].get("data-health") == "healthy", "the local backend's card is healthy",
               cpu and cpu["attrs"])
        tap.ok(Dom(out).find("body")[0]["attrs"].get("data-errors") == "0" and not console_problems(err),
               "no script or console errors with a backend down", console_problems(err))

        screenshot(s.url + "/", SHOT)
    finally:
        rc = s.stop()
    tap.ok(rc == 0, "titan serve exits 0 on SIGTERM", rc)
    w.stop()


def check_killed_worker():
    """Issue 16: with its worker down, the page showed only "Checking…" and "Loading…" (its fetches waited
    behind a poll), a stale uptime, and host RAM labelled GPU memory. One worker, watched as two backends:
    "slow" waits a minute for an answer, "fast" half a second. Once the worker is SIGKILLed, fast is down
    within a second while slow's poll hangs: the page must paint at once, while that poll is still in
    flight, and show fast as down without the uptime of its last answer."""
    w = Worker(WORKER, "--threads", "1", "--log-level", "warn")
    path = os.path.join(tmp, "killed.yaml")
    with open(path, "w") as f:
        f.write(f"""backends:
  slow: {{type: remote, endpoint: "{w.endpoint}", timeout_ms: 60000}}
  fast: {{type: remote, endpoint: "{w.endpoint}", timeout_ms: 500}}
router: {{breaker_cooldown_ms: 200, breaker_max_cooldown_ms: 1000}}
""")
    s = Serve(TITAN, "--backends", path, "--interval", str(INTERVAL))

    def by_name():
        return {b["name"]: b for b in s.json("/api/titan/backends")[2]["backends"]}

    try:
        up = wait_for(lambda: all(b["health"] == "healthy" and len(b["history"]) >= 3
                                  for b in by_name().values()), 20)
        tap.ok(up, "both backends of the worker are healthy first", s.stderr())
        gi = by_name()["fast"]["gpu_info"] or {}
        device, kind = gi.get("name"), gi.get("backend")
        w.stop(signal.SIGKILL)
        # fast is down; slow's poll of the dead worker waits for its minute (the router counts it in flight)
        ready = wait_for(lambda: (lambda b: b["fast"]["health"] == "down" and b["slow"]["inflight"] == 1)(by_name()),
                         20)
        polls_before = by_name()["slow"]["polls"]
        tap.ok(ready, "killed: fast is down, slow's poll is in flight", by_name())
        rc, out, err = chromium(s.url + "/", "--dump-dom", budget_ms=2000)
        slow_after = by_name()["slow"]
        tap.ok(slow_after["polls"] == polls_before and slow_after["inflight"] == 1,
               "the page was rendered while slow's poll was still in flight (it did not wait for the poll)",
               (polls_before, slow_after["polls"], slow_after["inflight"]))
        dom = Dom(out)
        cards = {c["attrs"].get("data-name"): c for c in dom.find("div", cls="backend")}
        meta = dom.find(id="meta")
        overall = dom.find(id="overall")
        texts = [t["text"] for t in dom.find(cls="state-text")]
        tap.ok(rc == 0 and list(cards) == ["slow", "fast"] and meta and meta[0]["text"] != "Loading…"
               and "Checking…" not in texts and overall and overall[0]["attrs"].get("data-status") != "unknown",
               "the page paints the last known state at once: both cards, the overall status, no Loading…/Checking…",
               (rc, list(cards), meta and meta[0]["text"], texts, overall and overall[0]["attrs"], err[-1500:]))
        fast, slow = cards.get("fast"), cards.get("slow")
        if fast and slow:
            tap.ok(fast["attrs"].get("data-health") == "down"
                   and dom.find(cls="state-text", within=fast)[0]["text"] == "Down",
                   "the killed worker's fast card: Down", fast["attrs"])
            tap.ok(fact(dom, fast, "uptime")[0] == "n/a",
                   "a down backend shows no uptime (its last answer's is stale)", fact(dom, fast, "uptime"))
            tap.ok(fact(dom, fast, "device")[0] == device, "it still names the device of its last answer",
                   fact(dom, fast, "device"))
            label = MEMORY_LABEL.get(kind, "Memory")
            tap.ok(memory_titles(dom, fast) == (label, label) and memory_titles(dom, slow) == (label, label),
                   f"memory labelled {label!r} on a {kind} worker, down or not", memory_titles(dom, fast))
            tap.ok(slow["attrs"].get("data-health") == "healthy" and fact(dom, slow, "uptime")[0] != "n/a",
                   "slow, whose last answer is still current, keeps its figures", fact(dom, slow, "uptime"))
        tap.ok(dom.find("body")[0]["attrs"].get("data-errors") == "0" and not console_problems(err),
               "no script or console errors with the worker killed", console_problems(err))
        screenshot(s.url + "/", os.path.join(ARTIFACTS, "status_page_killed.png"))
    finally:
        rc = s.stop_at_once()  # slow's poll would hold a plain SIGTERM for its minute
    tap.ok(rc == 1 and "stopping (SIGTERM)" in s.stderr(), "a second SIGTERM stops serve at once (exit 1)",
           (rc, s.stderr()))


def main():
    if not CHROMIUM:
        tap.ok(False, "chromium is needed to render the status page: run `scripts/deps.sh test` (as root) to "
                      "install it, or apt-get install chromium")
        sys.exit(tap.done())
    tap.run("the page against a live worker", check_live_worker)
    tap.run("a live, a dead and a local backend; the screenshot", check_mixed_and_screenshot)
    tap.run("a SIGKILLed worker: painted at once, no stale uptime", check_killed_worker)
    results = Worker.stop_all()
    tap.ok(all(rc in (0, -9) and not san for _, rc, san in results), "the workers exited cleanly", results)
    sys.exit(tap.done())


main()
