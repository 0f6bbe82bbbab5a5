#!/usr/bin/python3
"""test_vm_qemu.py - the VM life cycle against a real QEMU through libvirt's QEMU driver (issue 21).

Everything runs under a temporary root: libvirt's embedded QEMU driver (qemu:///embed?root=DIR: the driver
runs inside each titan process, its state, NVRAM, logs and QEMU's sockets all under DIR), two guests built
by tests/vm/make_guest.sh from Debian's cloud kernel, busybox and this build's titan-worker, booted by OVMF
from a FAT disk, networked by QEMU's user mode with forwards on 127.0.0.1 only. Without /dev/kvm QEMU runs
them under TCG; a machine where TCG does not work fails this test (it never skips).

The cycle, each step through the titan CLI: define (kvm: auto resolved; a TCG warning exactly when no KVM),
start, the guest worker (started with deploy/guest/titan-worker.service's flags) answers `titan ping` with
CURVE through the forward, `titan status` shows the VM running and the worker healthy, `vm status --json`,
autostart on and off, `vm stop` of the guest that honours the ACPI power button (exit 0, its worker drained,
no destroy), `vm stop --timeout 5` of the one that ignores it (destroyed, exit 4), undefine with the UEFI
NVRAM (the disk kept). Then the design's vm.yaml with GPU hostdevs 99:00.0 and 99:00.1: its XML validates
(virt-xml-validate), the real driver defines it, and its start fails for want of the device, saying so.

Usage: test_vm_qemu.py TITAN BUILD_DIR SOURCE_ROOT
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from workerproc import Tap

TITAN = os.path.abspath(sys.argv[1])
BUILD = os.path.abspath(sys.argv[2])
SRC = os.path.abspath(sys.argv[3])
KERNEL = os.path.join(SRC, ".deps", "guest-kernel")
MAKE_GUEST = os.path.join(SRC, "tests", "vm", "make_guest.sh")
DEPS = "run scripts/deps.sh test (as root) to install it"
tap = Tap()
T0 = time.monotonic()


def elapsed():
    return f"{time.monotonic() - T0:.1f} s"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Env:
    """The temporary root, the embedded driver's URI and the environment every titan run gets."""

    def __init__(self):
        # short: QEMU's monitor socket lives under it, and a unix socket path has at most 107 bytes
        self.dir = tempfile.mkdtemp(prefix="titan-vmq-", dir="/tmp")
        self.root = os.path.join(self.dir, "libvirt")
        os.makedirs(os.path.join(self.root, "etc"))
        with open(os.path.join(self.root, "etc", "qemu.conf"), "w") as f:  # the embedded driver reads ROOT/etc
            # QEMU as this user, no confinement or cgroups of its own (it lives and dies with this test),
            # the console log written by QEMU itself rather than by a virtlogd this test would have to run
            f.write('user = "root"\ngroup = "root"\n' if os.geteuid() == 0 else "")
            f.write('security_driver = "none"\nnamespaces = []\ncgroup_controllers = []\n'
                    'stdio_handler = "file"\n')
        self.uri = "qemu:///embed?root=" + self.root
        self.env = dict(os.environ)
        for k in ("TITAN_LIBVIRT_URI", "TITAN_VM", "TITAN_ENDPOINT", "LIBVIRT_DEFAULT_URI"):
            self.env.pop(k, None)
        # the embedded driver logs its warnings to stderr by default: keep them in a file
        self.env["LIBVIRT_LOG_OUTPUTS"] = "3:file:" + os.path.join(self.dir, "libvirtd.log")

    def titan(self, *args, timeout=120):
        p = subprocess.run([TITAN, *args], capture_output=True, text=True, timeout=timeout, env=self.env)
        return p.returncode, p.stdout, p.stderr

    def vm(self, *args, timeout=120):
        return self.titan("vm", *args, "--connect", self.uri, timeout=timeout)

    def virsh(self, *args, timeout=60):
        p = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=timeout,
                           env=self.env)
        return p.returncode, p.stdout, p.stderr

    def qemu_pids(self):
        """QEMU processes started under this root (their command lines name it)."""
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "qemu-system" in cmd and self.root in cmd:
                pids.append(int(d))
        return pids

    def cleanup(self):
        """Destroys and undefines whatever is left, kills stray QEMUs, removes the root. Returns the QEMU
        processes that were still running after the destroy (should be none)."""
        rc, out, _ = self.virsh("list", "--all", "--name")
        for name in out.split() if rc == 0 else []:
            self.virsh("destroy", name)
            self.virsh("undefine", "--nvram", name)
        left = self.qemu_pids()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while self.qemu_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)
        return left


def preconditions():
    """Everything scripts/deps.sh test installs. Returns the list of what is missing, with what to do."""
    missing = []
    for prog, pkg in (("qemu-system-x86_64", "qemu-system-x86"), ("virsh", "libvirt-clients"),
                      ("virt-xml-validate", "libvirt-clients"), ("mformat", "mtools"),
                      ("objcopy", "binutils")):
        if not shutil.which(prog):
            missing.append(f"{prog} (Debian package {pkg})")
    for path, pkg in (("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"), ("/bin/busybox", "busybox-static"),
                      ("/usr/lib/systemd/boot/efi/linuxx64.efi.stub", "systemd-boot-efi")):
        if not os.path.exists(path):
            missing.append(f"{path} (Debian package {pkg})")
    drivers = "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so"
    if not os.path.exists(drivers):
        missing.append(f"{drivers} (Debian package libvirt-daemon-driver-qemu)")
    if not any(n.startswith("vmlinuz-") for n in (os.listdir(KERNEL) if os.path.isdir(KERNEL) else [])):
        missing.append(f"{KERNEL}/vmlinuz-* (scripts/deps.sh test unpacks Debian's cloud kernel there)")
    return missing


def guest_command():
    """The worker command line the guest must run: the unit's ExecStart, with the two substitutions
    make_guest.sh documents (computed here on their own, from the unit file)."""
    with open(os.path.join(SRC, "deploy", "guest", "titan-worker.service")) as f:
        line = next(l for l in f if l.startswith("ExecStart="))
    cmd = line[len("ExecStart="):].strip()
    return cmd.replace("--device cuda", "--device cpu").replace("192.168.122.10", "10.0.2.15")


def write_yaml(path, text):
    with open(path, "w") as f:
        f.write(text)


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def wait_console(path, needle, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in read(path):
            return True
        time.sleep(0.25)
    return False


def ping(e, port, guest, timeout):
    """`titan ping` through the forward, with the guest's CURVE keys, until it answers or timeout s pass."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = e.titan("--endpoint", f"tcp://127.0.0.1:{port}", "--server-key", os.path.join(guest, "worker"),
                       "--curve-secret", os.path.join(guest, "client_secret"), "--timeout", "3000",
                       "--retries", "0", "ping", timeout=30)
        if last[0] == 0:
            return last
        time.sleep(0.5)
    return last


def main():
    missing = preconditions()
    if not tap.ok(not missing, "the QEMU test setup is installed", "missing: " + "; ".join(missing) + "; " + DEPS):
        return tap.done()
    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
    tap.note(f"/dev/kvm {'usable: guests run under KVM' if kvm else 'missing: guests run under TCG emulation'}")

    # meson's timeout sends SIGTERM: end through the finally below, so that the cleanup still runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("test_vm_qemu: terminated; cleaning up"))
    e = Env()
    try:
        cycle(e, kvm)
    finally:
        left = e.cleanup()
        tap.ok(not left, "every QEMU of the test was gone after its domain was stopped or destroyed", left)
        tap.ok(not os.path.exists(e.dir) and not e.qemu_pids(), "cleanup left no process and no file", e.dir)
        tap.note(f"whole test: {elapsed()}")
    return tap.done()


def cycle(e, kvm):
    # --- the guest ---
    guest = os.path.join(e.dir, "guest")
    p = subprocess.run([MAKE_GUEST, BUILD, KERNEL, guest], capture_output=True, text=True, timeout=300)
    if not tap.ok(p.returncode == 0, "make_guest.sh builds the guest (kernel, busybox, titan-worker and its "
                  "libraries)", p.stderr[-3000:]):
        return
    tap.note(p.stderr.strip() + f" ({elapsed()})")
    want_cmd = guest_command()
    tap.ok(read(os.path.join(guest, "worker.cmd")).strip() == want_cmd,
           "the guest runs deploy/guest/titan-worker.service's ExecStart (--device cpu, the user-mode address)",
           read(os.path.join(guest, "worker.cmd")))

    ports = {k: free_port() for k in ("a_zmq", "a_http", "b_zmq", "b_http")}
    guests = {
        # a: honours the ACPI power button; b: ignores it
        "a": ("titan-qemu-a", "guest-acpi.raw", ports["a_zmq"], ports["a_http"]),
        "b": ("titan-qemu-b", "guest-noacpi.raw", ports["b_zmq"], ports["b_http"]),
    }
    consoles = {}
    for key, (name, disk, zp, hp) in guests.items():
        consoles[key] = os.path.join(e.dir, f"console-{key}.log")
        write_yaml(os.path.join(e.dir, f"{key}.yaml"), f"""\
# a guest of test_vm_qemu: no hostdevs, QEMU's user-mode network with forwards on loopback only
name: {name}
memory: 512MiB
vcpus: 1
disk:
  path: {os.path.join(guest, disk)}
  format: raw
firmware: efi
network: user
forward:
  - 127.0.0.1:{zp}:5555
  - 127.0.0.1:{hp}:9100
kvm: auto
console_log: {consoles[key]}
""")

    # --- define ---
    for key, (name, *_rest) in guests.items():
        rc, out, err = e.vm("define", "--config", os.path.join(e.dir, f"{key}.yaml"))
        tap.ok(rc == 0 and f"defined {name} (new)" in out, f"vm define {name}: exit 0, new", (rc, out, err))
        warned = "kvm: auto: no KVM on this host" in err and "TCG" in err
        tap.ok(warned != kvm, f"kvm: auto {'uses KVM, no warning' if kvm else 'falls back to TCG with a warning'}",
               err)
        rc, xml, err = e.virsh("dumpxml", name)
        dtype = re.search(r"<domain type='(\w+)'", xml)
        tap.ok(dtype and dtype.group(1) == ("kvm" if kvm else "qemu"),
               f"the defined domain's type is {'kvm' if kvm else 'qemu (TCG)'}", xml[:400] + err)
        nv = re.search(r"<nvram[^>]*>([^<]+)</nvram>", xml)
        guests[key] = guests[key] + (nv.group(1) if nv else "",)
    tap.ok(all(g[4].startswith(e.root) for g in guests.values()),
           "each domain has its UEFI NVRAM under the driver's root", [g[4] for g in guests.values()])

    # --- start both (they boot side by side) ---
    for key, (name, *_rest) in guests.items():
        rc, out, err = e.vm("start", name)
        if not tap.ok(rc == 0 and f"started {name}" in out, f"vm start {name}: exit 0", (rc, out, err)):
            return
    rc, out, err = e.vm("start", guests["a"][0])
    tap.ok(rc == 0 and "already running" in out, "vm start again: already running, exit 0", (rc, out, err))

    for key, (name, _disk, zp, _hp, _nv) in guests.items():
        r = ping(e, zp, guest, 150)
        if not tap.ok(r and r[0] == 0 and "pong" in r[1],
                      f"{name}'s worker answers titan ping through 127.0.0.1:{zp} (CURVE)",
                      (r, read(consoles[key])[-3000:])):
            return
        tap.note(f"{name}: worker answered at {elapsed()}")
    con_a = read(consoles["a"])
    tap.ok(f"titan-guest: starting: {want_cmd}" in con_a and "listening on tcp://10.0.2.15:5555" in con_a,
           "the guest worker started with the deployed flags and listens on the guest's address", con_a[-2000:])

    # --- titan status: the VM running, the worker healthy ---
    name_a, _, zp_a, hp_a, nvram_a = guests["a"]
    rc, out, err = e.titan("--endpoint", f"tcp://127.0.0.1:{zp_a}", "--server-key", os.path.join(guest, "worker"),
                           "--curve-secret", os.path.join(guest, "client_secret"), "status", "--vm", name_a,
                           "--connect", e.uri, "--json")
    try:
        st = json.loads(out)
    except ValueError:
        st = {}
    comps = {c.get("component"): c for c in st.get("components", [])} if isinstance(st, dict) else {}
    vmc, wc = comps.get("vm", {}), comps.get("worker", {})
    tap.ok(rc == 0 and vmc.get("status") == "healthy" and "running" in vmc.get("detail", ""),
           "titan status: the VM running (healthy)", (rc, out, err))
    tap.ok(wc.get("status") == "healthy", "titan status: the guest's worker healthy", (rc, out, err))

    # --- vm status --json, autostart ---
    rc, out, err = e.vm("status", name_a, "--json")
    s = json.loads(out) if rc == 0 else {}
    tap.ok(s.get("state") == "running" and s.get("vcpus") == 1 and s.get("memory_kib") == 524288
           and s.get("hostdevs") == [] and s.get("persistent") is True,
           "vm status --json: running, 1 vCPU, 512 MiB, no hostdevs, persistent", (rc, out, err))
    tap.ok(isinstance(s.get("uptime_s"), (int, float)) and 0 <= s["uptime_s"] < 600,
           "vm status --json: the QEMU process's uptime", out)
    for on in ("on", "off"):
        rc, out, err = e.vm("autostart", on, name_a)
        rc2, out2, _ = e.vm("status", name_a, "--json")
        auto = json.loads(out2).get("autostart") if rc2 == 0 else None
        tap.ok(rc == 0 and auto is (on == "on"), f"vm autostart {on}: status shows autostart {on}",
               (rc, out, err, out2))

    # --- stop: a guest that honours the power button, and one that ignores it ---
    t = time.monotonic()
    rc, out, err = e.vm("stop", name_a, "--timeout", "60")
    secs = time.monotonic() - t
    tap.ok(rc == 0 and "shut down cleanly" in out and "destroyed" not in err,
           f"vm stop {name_a} (honours ACPI): exit 0, no destroy ({secs:.1f} s)", (rc, out, err))
    con_a = read(consoles["a"])
    tap.ok("power button: stopping the worker" in con_a and "titan-worker stopped after" in con_a
           and "powering off" in con_a, "the guest's worker drained and stopped before the power-off",
           con_a[-1500:])
    rc, out, _ = e.vm("status", name_a, "--json")
    tap.ok(rc == 0 and json.loads(out).get("state") == "shutoff", "vm status after stop: shutoff", out)
    tap.ok(not ping(e, zp_a, guest, 1)[0] == 0, "the stopped guest's worker no longer answers")

    name_b = guests["b"][0]
    t = time.monotonic()
    rc, out, err = e.vm("stop", name_b, "--timeout", "5")
    secs = time.monotonic() - t
    tap.ok(rc == 4 and "still running after 5 s: destroyed" in err and 5 <= secs < 30,
           f"vm stop --timeout 5 {name_b} (ignores ACPI): destroyed, exit 4 ({secs:.1f} s)", (rc, out, err))
    con_b = read(consoles["b"])
    tap.ok("ignoring the ACPI power button" in con_b and "powering off" not in con_b,
           "that guest ignored the power button (it was destroyed, not shut down)", con_b[-1500:])
    rc, out, _ = e.vm("stop", name_b)
    tap.ok(rc == 0 and "already shut off" in out, "vm stop of a stopped domain: already shut off, exit 0",
           (rc, out))

    # --- undefine, with the NVRAM ---
    for key in ("a", "b"):
        name, disk, *_x, nvram = guests[key]
        had = os.path.exists(nvram)
        rc, out, err = e.vm("undefine", name)
        tap.ok(rc == 0 and had and not os.path.exists(nvram) and f"removed its NVRAM {nvram}" in out
               and os.path.exists(os.path.join(guest, disk)),
               f"vm undefine {name}: NVRAM removed, disk kept", (rc, out, err, had))
    rc, out, _ = e.virsh("list", "--all", "--name")
    tap.ok(rc == 0 and not out.split(), "no domain is left defined", out)

    hostdevs(e, guest)


def hostdevs(e, guest):
    """The design's vm.yaml with the GPU at 99:00.0 and 99:00.1 (deploy/vm/vm.yaml with its disk here)."""
    with open(os.path.join(SRC, "deploy", "vm", "vm.yaml")) as f:
        text = f.read()
    text = re.sub(r"(?m)^  - 0000:03:00\.0$", "  - 0000:99:00.0", text)
    text = re.sub(r"(?m)^  - 0000:03:00\.1$", "  - 0000:99:00.1", text)
    text = re.sub(r"(?m)^  path: .*$", "  path: " + os.path.join(guest, "guest-acpi.raw"), text)
    text = re.sub(r"(?m)^  size: .*\n", "", text)
    text = re.sub(r"(?m)^  format: qcow2.*$", "  format: raw", text)
    # no libvirt network "default" exists in the embedded driver: the start must fail for the GPU alone
    text = re.sub(r"(?m)^network: default$", "network: none", text)
    text = re.sub(r"(?m)^mac: .*\n", "", text)
    cfg = os.path.join(e.dir, "gpu.yaml")
    write_yaml(cfg, text)
    name = re.search(r"(?m)^name: (\S+)", text).group(1)

    rc, xml, err = e.titan("vm", "xml", "--config", cfg)
    tap.ok(rc == 0 and "<hostdev" in xml and "bus='0x99'" in xml and "function='0x1'" in xml,
           "vm xml renders the GPU's two functions as hostdevs", (rc, xml[-600:], err))
    path = os.path.join(e.dir, "gpu.xml")
    write_yaml(path, xml)
    p = subprocess.run(["virt-xml-validate", path, "domain"], capture_output=True, text=True, timeout=60)
    tap.ok(p.returncode == 0, "virt-xml-validate accepts that XML", p.stdout + p.stderr)

    rc, out, err = e.vm("define", "--config", cfg)
    tap.ok(rc == 0 and f"defined {name} (new)" in out, "the real QEMU driver defines the domain with the hostdevs",
           (rc, out, err))
    rc, dump, _ = e.virsh("dumpxml", name)
    tap.ok("bus='0x99'" in dump and dump.count("<hostdev") == 2, "the defined domain keeps both hostdevs",
           dump[-800:])
    rc, out, err = e.vm("start", name)
    tap.ok(rc == 1 and "0000:99:00.0, 0000:99:00.1" in err and "do not exist on this host" in err
           and "titan host check" in err,
           "vm start fails for want of the device and says so (titan host check)", (rc, out, err))
    rc, out, _ = e.vm("status", name, "--json")
    tap.ok(rc == 0 and json.loads(out).get("state") == "shutoff", "the failed start left it shut off", out)
    rc, out, err = e.vm("undefine", name)
    tap.ok(rc == 0, f"vm undefine {name}", (rc, out, err))


if __name__ == "__main__":
    sys.exit(main())
