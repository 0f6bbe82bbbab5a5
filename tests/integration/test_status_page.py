#!/usr/bin/python3
"""test_status_page.py - titan serve's status page rendered by headless Chromium against real workers.

Usage: test_status_page.py TITAN-WORKER TITAN BUILD-DIR
Writes BUILD-DIR/test-artifacts/status_page.png (a screenshot of the page at 1280x900).
Chromium is /usr/bin/chromium (Debian's, from `scripts/deps.sh test`) or the first chromium on PATH;
$TITAN_TEST_CHROMIUM names another binary. Without one the test fails and says how to install it.
"""
import html.parser
import os
import shutil
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


def check_live_worker():
    w = Worker(WORKER, "--threads", "1", "--log-level", "warn")
    s = Serve(TITAN, "--connect", w.endpoint, "--interval", str(INTERVAL))
    try:
        wait_for(lambda: len(s.json("/api/titan/backends")[2]["backends"][0]["history"]) >= 5, 15)
        device = s.json("/api/titan/backends")[2]["backends"][0]["gpu_info"]["name"]
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

        os.makedirs(ARTIFACTS, exist_ok=True)
        if os.path.exists(SHOT):
            os.unlink(SHOT)
        rc, out, err = chromium(s.url + "/", f"--screenshot={SHOT}", "--window-size=1280,900")
        ok = rc == 0 and os.path.exists(SHOT)
        info = png_info(SHOT) if ok else None
        tap.ok(ok and info[0] == 1280 and info[1] == 900 and info[2] > 64 and info[3] > 30000,
               f"a screenshot of the page: {SHOT}, 1280x900, not blank", (rc, info, err[-2000:]))
    finally:
        rc = s.stop()
    tap.ok(rc == 0, "titan serve exits 0 on SIGTERM", rc)
    w.stop()


def main():
    if not CHROMIUM:
        tap.ok(False, "chromium is needed to render the status page: run `scripts/deps.sh test` (as root) to "
                      "install it, or apt-get install chromium")
        sys.exit(tap.done())
    tap.run("the page against a live worker", check_live_worker)
    tap.run("a live, a dead and a local backend; the screenshot", check_mixed_and_screenshot)
    results = Worker.stop_all()
    tap.ok(all(rc == 0 and not san for _, rc, san in results), "the workers exited cleanly", results)
    sys.exit(tap.done())


main()
