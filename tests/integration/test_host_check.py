#!/usr/bin/python3
"""test_host_check.py - `titan host check` and `titan host bind|unbind` on the fixture trees of
tests/fixtures/host (made by make_fixtures.py into a temporary directory, a fresh copy for every case that
writes or changes one). Nothing here reads or writes the real /sys: every run has --sysroot.

Usage: test_host_check.py TITAN [MAKE_FIXTURES.PY]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from workerproc import Tap

TITAN = sys.argv[1]
MAKE = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                          "../fixtures/host/make_fixtures.py")
tap = Tap()
tmp = tempfile.mkdtemp(prefix="titan-host-")
_count = [0]

TX, TXA = "0000:65:00.0", "0000:65:00.1"  # the Titan X and its audio function on the Intel hosts
RTX = "0000:17:00.0"                      # the Titan RTX, the Intel hosts' display


def fixture(name):
    """A fresh tree of fixture `name`; returns its root."""
    _count[0] += 1
    out = os.path.join(tmp, str(_count[0]))
    subprocess.run([sys.executable, MAKE, out, name], check=True)
    return os.path.join(out, name)


def titan(*args):
    p = subprocess.run([TITAN, *args], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def check(root, *args):
    return titan("host", "check", "--sysroot", root, *args)


def check_json(root, *args):
    rc, out, err = titan("--json", "host", "check", "--sysroot", root, *args)
    try:
        o = json.loads(out)
    except ValueError:
        o = {}
    return rc, o, out + err


def findings(o):
    return {f["id"]: f for f in o.get("findings", [])}


def statuses(o):
    return {f["id"]: f["status"] for f in o.get("findings", [])}


def targets(o):
    return [t["address"] for t in o.get("targets", [])]


def read(root, rel):
    with open(os.path.join(root, rel)) as f:
        return f.read()


def write(root, rel, text):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def remove(root, rel):
    path = os.path.join(root, rel)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def relink(root, rel, target_rel):
    """Points the symlink rel (relative to root) at target_rel, relatively, as make_fixtures.py does."""
    path = os.path.join(root, rel)
    if os.path.lexists(path):
        os.remove(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    target, start = os.path.join(root, target_rel), os.path.dirname(path)
    rel = os.path.relpath(target, start)
    if os.path.basename(rel) in ("..", "."):  # an ancestor: by name, as sysfs links it
        rel = os.path.join(os.path.relpath(os.path.dirname(target), start), os.path.basename(target))
    os.symlink(rel, path)


def dev(root, addr, attr=""):
    """The real directory (relative to root) of a function, or one of its attributes."""
    real = os.path.realpath(os.path.join(root, "sys/bus/pci/devices", addr))
    return os.path.join(os.path.relpath(real, root), attr) if attr else os.path.relpath(real, root)


def snapshot(root):
    """Every file's content and every link's target, to show that nothing was written."""
    snap = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            if os.path.islink(p):
                snap[p] = "-> " + os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    snap[p] = f.read()
    return snap


def all_ok_but(o, expected):
    """The findings whose status differs from `expected` (default ok), as {id: (got, wanted)}."""
    return {k: (v, expected.get(k, "ok")) for k, v in statuses(o).items() if v != expected.get(k, "ok")} | \
        {k: (None, v) for k, v in expected.items() if k not in statuses(o)}


# --- titan host check ---

def test_intel_healthy():
    root = fixture("intel-healthy")
    rc, o, raw = check_json(root)
    tap.ok(rc == 0 and o.get("ready") is True and o.get("failures") == 0 and o.get("warnings") == 0,
           "intel-healthy: ready, exit 0", raw)
    want = {i: "ok" for i in ["cpu.virt", "iommu.acpi", "iommu.groups", "cmdline.iommu", "cmdline.iommu_pt",
                              "iommu.irq_remap", "vfio.modules", "kvm", "targets", f"driver:{TX}", f"driver:{TXA}",
                              f"reset:{TX}", f"reset:{TXA}", "group:13", "dev_vfio:13", "host_gpu"]}
    tap.ok(statuses(o) == want, "intel-healthy: exactly the expected findings, every one ok", statuses(o))
    f = findings(o)
    tap.ok("vmx" in f["cpu.virt"]["message"] and "DMAR" in f["iommu.acpi"]["message"]
           and "intel_iommu=on" in f["cmdline.iommu"]["message"] and "ecap bit 3" in f["iommu.irq_remap"]["message"]
           and "kernel 6.6" in f["vfio.modules"]["message"], "intel-healthy: the messages say what was seen", f)
    tap.ok(o.get("target_source") == "auto" and targets(o) == [TX, TXA],
           "auto-detected targets: the Titan X and its audio function, not the host's display", o.get("targets"))
    t = {x["address"]: x for x in o.get("targets", [])}
    tap.ok(t.get(TX, {}).get("name") == "NVIDIA Corporation GM200 [GeForce GTX TITAN X]"
           and t[TX]["ids"] == "10de:17c2" and t[TX]["class"] == "030000" and t[TX]["driver"] == "vfio-pci"
           and t[TX]["group"] == 13 and t[TX]["boot_vga"] is False and t[TX]["reset_methods"] == ["bus"]
           and t[TXA]["name"] == "NVIDIA Corporation GM200 High Definition Audio",
           "targets in --json: names (pci.ids through libpci), ids, class, driver, group, reset methods", t)
    g = o.get("groups", [])
    tap.ok(len(g) == 1 and g[0]["group"] == 13 and [m["address"] for m in g[0]["members"]] == [TX, TXA]
           and all(m["target"] for m in g[0]["members"]), "--json lists group 13 and its members", g)
    tap.ok("TU102 [TITAN RTX]" in f["host_gpu"]["message"] and "group 1" in f["host_gpu"]["message"],
           "host_gpu: the Titan RTX stays with the host, in group 1", f["host_gpu"])

    rc, out, err = check(root)
    lines = out.splitlines()
    member = [l for l in lines if l.startswith("  0000:65:00.")]
    tap.ok(rc == 0 and "IOMMU group 13:" in out and len(member) == 2
           and "NVIDIA Corporation GM200 [GeForce GTX TITAN X]" in member[0] and "driver: vfio-pci" in member[0]
           and "(target)" in member[0] and "GM200 High Definition Audio" in member[1]
           and "VGA compatible controller" in member[0] and "Audio device" in member[1],
           "the table lists group 13's members with names, classes and drivers", out + err)
    tap.ok(lines[2].split()[:3] == ["STATUS", "CHECK", "DETAIL"]
           and any(l.startswith("ok") and "IOMMU group 13" in l for l in lines)
           and "ready: the host can pass 0000:65:00.0 through" in out and "FAIL" not in out,
           "the table: a header, one row a finding, the verdict", out)


def test_intel_targets_by_option():
    root = fixture("intel-healthy")
    rc, o, raw = check_json(root, "--gpu", "10de:17c2")
    g = o.get("groups", [{}])[0].get("members", [])
    tap.ok(rc == 0 and o.get("target_source") == "gpu" and targets(o) == [TX]
           and [(m["address"], m["target"]) for m in g] == [(TX, True), (TXA, False)],
           "--gpu 10de:17c2: only that function is a target; the audio function is group context", raw)
    rc, o, raw = check_json(root, "--gpu", "10DE:17C2,10de:0fb0")
    tap.ok(rc == 0 and targets(o) == [TX, TXA], "--gpu takes a list, in any case", raw)

    rc, o, raw = check_json(root, "--address", "65:00.1")
    g = o.get("groups", [{}])[0].get("members", [])
    tap.ok(rc == 0 and o.get("target_source") == "address" and targets(o) == [TXA]
           and [(m["address"], m["target"]) for m in g] == [(TX, False), (TXA, True)],
           "--address 65:00.1 (no domain): that function, its group's other function as context", raw)

    rc, o, raw = check_json(root, "--address", RTX)
    st = statuses(o)
    f = findings(o)
    tap.ok(rc == 1 and targets(o) == [RTX] and st.get("host_gpu") == "fail"
           and "boot display" in f["host_gpu"]["message"] and st.get(f"driver:{RTX}") == "fail"
           and st.get("group:1") == "fail", "--address of the host display: fails (boot display, nvidia, group)",
           raw)
    msg = f.get("group:1", {}).get("message", "")
    tap.ok(all(s in msg for s in ["0000:17:00.1", "snd_hda_intel", "0000:17:00.2", "xhci_hcd", "0000:17:00.3",
                                  "nvidia-gpu"]), "group 1 not viable: names every member on a host driver", msg)
    rc, out, err = check(root, "--address", RTX)
    tap.ok(rc == 1 and "IOMMU group 1:" in out and "TU102 USB 3.1 Host Controller" in out
           and "TU102 USB Type-C UCSI Controller" in out and "TU102 High Definition Audio Controller" in out
           and "driver: nvidia-gpu" in out and "not ready:" in out,
           "the table lists group 1's four functions with names and drivers", out + err)

    rc, o, raw = check_json(root, "--gpu", "10de:1234")
    f = findings(o).get("targets", {})
    tap.ok(rc == 1 and f.get("status") == "fail" and targets(o) == [] and "0000:17:00.0" in (f.get("hint") or "")
           and "0000:65:00.0" in f["hint"] and "host display" in f["hint"],
           "--gpu matching nothing: targets fails, the hint lists the GPUs seen", raw)
    rc, o, raw = check_json(root, "--address", "0000:99:00.0")
    f = findings(o).get("targets", {})
    tap.ok(rc == 1 and f.get("status") == "fail" and "0000:99:00.0" in f.get("message", ""),
           "--address of a missing function: targets fails and names it", raw)


def test_usage_errors():
    root = fixture("intel-healthy")
    bad = [["--gpu", "10de"], ["--gpu", "10de:xyz1"], ["--gpu", ""], ["--gpu", "10de:17c2,"], ["--gpu", "12345:1"],
           ["--gpu", "10de:17c2,,10de:0fb0"], ["--address", "0000:65:00.8"], ["--address", "65:20.0"],
           ["--address", "zz:00.0"], ["--address", "0000:65:00.0,"], ["--address", "0000:065:00.0"],
           ["--gpu", "10de:17c2", "--address", TX], ["--frobnicate"], ["extra"], ["--gpu"]]
    for args in bad:
        rc, out, err = check(root, *args)
        tap.ok(rc == 2 and err.strip() and not out.strip(), f"host check {' '.join(args) or '(empty)'}: usage, exit 2",
               (rc, out, err))
    rc, out, err = titan("host", "check", "--sysroot", os.path.join(tmp, "no-such-dir"))
    tap.ok(rc == 2 and "--sysroot" in err, "--sysroot of a missing directory: exit 2", (rc, err))


def test_usb_group():
    root = fixture("intel-usb-group")
    rc, o, raw = check_json(root)
    f = findings(o)
    g = f.get("group:13", {})
    tap.ok(rc == 1 and o.get("ready") is False and all_ok_but(o, {"group:13": "fail"}) == {}
           and targets(o) == ["0000:03:00.0", "0000:03:00.1"],
           "intel-usb-group: only the group fails, exit 1", all_ok_but(o, {"group:13": "fail"}))
    tap.ok("0000:04:00.0" in g.get("message", "") and "xhci_hcd" in g["message"] and "ASM1142" in g["message"]
           and "0000:03:00" not in g["message"], "the failure names the USB controller and its driver only", g)
    tap.ok("titan host bind 0000:03:00.0" in (g.get("hint") or "") and "ACS" in g["hint"],
           "the hint: bind the whole group, or another slot / ACS", g)
    rc, out, err = check(root)
    rows = [l for l in out.splitlines() if l.startswith("  0000:")]
    tap.ok(len(rows) == 5 and sum("(bridge, ignored)" in r for r in rows) == 2
           and any("0000:04:00.0" in r and "ASM1142" in r and "driver: xhci_hcd" in r and "(target)" not in r
                   for r in rows), "the table lists all five members: bridges ignored, the USB controller", out)

    # Unbound, the USB controller no longer spoils the group; the root ports on pcieport never did.
    root = fixture("intel-usb-group")
    remove(root, dev(root, "0000:04:00.0", "driver"))
    rc, o, raw = check_json(root)
    g = findings(o).get("group:13", {})
    tap.ok(rc == 0 and g.get("status") == "ok" and "0000:04:00.0" in g.get("message", "")
           and "bridges ignored: 0000:00:1c.0, 0000:00:1c.4" in g["message"],
           "a member with no driver is viable, bridges are ignored", g)


def test_nvidia_bound():
    root = fixture("intel-nvidia-bound")
    rc, o, raw = check_json(root)
    want = {f"driver:{TX}": "fail", f"driver:{TXA}": "fail", "group:13": "fail", "dev_vfio:13": "warn"}
    tap.ok(rc == 1 and all_ok_but(o, want) == {} and o.get("failures") == 3 and o.get("warnings") == 1,
           "intel-nvidia-bound: both drivers and the group fail, /dev/vfio/13 warns", all_ok_but(o, want))
    f = findings(o)
    d = f.get(f"driver:{TX}", {})
    tap.ok("nvidia" in d.get("message", "") and "titan host bind 0000:65:00.0" in (d.get("hint") or "")
           and "titan host setup --gpu 10de:17c2,10de:0fb0" in d["hint"] and "reboot" in d["hint"]
           and "snd_hda_intel" in f[f"driver:{TXA}"]["message"],
           "the driver failures name nvidia and snd_hda_intel; hint: titan host setup, reboot, titan host bind", d)
    rc, out, err = check(root)
    tap.ok(rc == 1 and "hint: `titan host setup --gpu 10de:17c2,10de:0fb0`" in out and "driver: nvidia" in out
           and "driver: snd_hda_intel" in out and "3 failures, 1 warning" in out,
           "the table shows the hints under the failures", out)

    root = fixture("intel-nvidia-bound")
    for a in (TX, TXA):
        remove(root, dev(root, a, "driver"))
    rc, o, raw = check_json(root)
    want = {f"driver:{TX}": "warn", f"driver:{TXA}": "warn", "dev_vfio:13": "warn"}
    tap.ok(rc == 0 and all_ok_but(o, want) == {}, "targets with no driver: warnings only, ready",
           all_ok_but(o, want))


def test_iommu_off():
    root = fixture("intel-iommu-off")
    rc, o, raw = check_json(root)
    want = {"iommu.groups": "fail", "cmdline.iommu": "fail", "cmdline.iommu_pt": "warn", "iommu.irq_remap": "warn",
            "vfio.modules": "fail", f"driver:{TX}": "fail", f"driver:{TXA}": "fail", "group:none": "fail",
            "host_gpu": "warn"}
    tap.ok(rc == 1 and all_ok_but(o, want) == {}, "intel-iommu-off: no groups, no intel_iommu=on, no vfio",
           all_ok_but(o, want))
    f = findings(o)
    tap.ok("intel_iommu=on" in (f["iommu.groups"].get("hint") or "") and "vfio_pci" in f["vfio.modules"]["message"]
           and "vfio_virqfd" not in f["vfio.modules"]["message"].split("(")[0] and "modprobe vfio-pci" in f["vfio.modules"]["hint"]
           and TX in f["group:none"]["message"] and o.get("groups") == [],
           "the hints: intel_iommu=on, modprobe vfio-pci; no vfio_virqfd on kernel 6.6", f)

    # Groups there but the parameter missing: a kernel that turns VT-d on by default.
    root = fixture("intel-healthy")
    write(root, "proc/cmdline", "BOOT_IMAGE=/vmlinuz-linux root=/dev/sda2 rw iommu=pt\n")
    rc, o, raw = check_json(root)
    tap.ok(rc == 0 and all_ok_but(o, {"cmdline.iommu": "warn"}) == {}
           and "default" in findings(o)["cmdline.iommu"]["message"],
           "groups without intel_iommu=on: a warning, groups are the truth", raw)
    write(root, "proc/cmdline", "BOOT_IMAGE=/vmlinuz-linux root=/dev/sda2 rw intel_iommu=off\n")
    rc, o, raw = check_json(root)
    tap.ok(rc == 1 and statuses(o).get("cmdline.iommu") == "fail" and statuses(o).get("cmdline.iommu_pt") == "warn",
           "intel_iommu=off fails, no iommu=pt warns", raw)


def test_amd():
    root = fixture("amd-healthy")
    rc, o, raw = check_json(root)
    tap.ok(rc == 0 and o.get("ready") is True and all_ok_but(o, {}) == {}
           and targets(o) == ["0000:09:00.0", "0000:09:00.1"], "amd-healthy: every finding ok, exit 0",
           all_ok_but(o, {}))
    f = findings(o)
    tap.ok("svm" in f["cpu.virt"]["message"] and "IVRS" in f["iommu.acpi"]["message"]
           and "amd_iommu" in f["cmdline.iommu"]["message"] and "group:17" in f
           and "IR-" in f["iommu.irq_remap"]["message"] and "Ellesmere" in f["host_gpu"]["message"],
           "AMD: svm, IVRS, amd_iommu on by default, remapped interrupts, the Radeon stays", f)
    tap.ok("kernel 6.1" in f["vfio.modules"]["message"] and "vfio_virqfd" in f["vfio.modules"]["message"],
           "kernel 6.1: vfio_virqfd absent from /sys/module is fine while vfio_pci is loaded", f["vfio.modules"])

    root = fixture("amd-healthy")
    write(root, "proc/cmdline", "BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 ro quiet amd_iommu=off iommu=pt\n")
    remove(root, "proc/interrupts")
    remove(root, "sys/module/vfio_pci")
    rc, o, raw = check_json(root)
    f = findings(o)
    tap.ok(rc == 1 and statuses(o).get("cmdline.iommu") == "warn" and statuses(o).get("iommu.irq_remap") == "warn"
           and statuses(o).get("vfio.modules") == "fail"
           and "vfio_pci, vfio_virqfd" in f["vfio.modules"]["message"],
           "amd_iommu=off warns; remapping unknown warns; on 6.1 vfio_virqfd is missing with vfio_pci", raw)


def test_host_variants():
    root = fixture("intel-healthy")
    write(root, "sys/class/iommu/dmar1/intel-iommu/ecap", "f020d7\n")
    rc, o, raw = check_json(root)
    f = findings(o).get("iommu.irq_remap", {})
    tap.ok(rc == 1 and f.get("status") == "fail" and "dmar1" in f.get("message", "")
           and "allow_unsafe_interrupts" in (f.get("hint") or ""),
           "a DMAR unit without interrupt remapping (ecap bit 3): fail, with the escape hatch in the hint", raw)
    write(root, "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", "Y\n")
    rc, o, raw = check_json(root)
    tap.ok(rc == 0 and statuses(o).get("iommu.irq_remap") == "warn",
           "allow_unsafe_interrupts=Y turns it into a warning", raw)

    root = fixture("intel-healthy")
    write(root, "proc/cpuinfo", read(root, "proc/cpuinfo").replace(" vmx ", " "))
    remove(root, "dev/kvm")
    rc, o, raw = check_json(root)
    tap.ok(rc == 1 and all_ok_but(o, {"cpu.virt": "fail", "kvm": "fail"}) == {},
           "no vmx flag and no /dev/kvm: both fail", all_ok_but(o, {"cpu.virt": "fail", "kvm": "fail"}))

    root = fixture("intel-healthy")
    remove(root, dev(root, TX, "reset_method"))
    remove(root, dev(root, TX, "reset"))
    remove(root, dev(root, TXA, "reset_method"))
    rc, o, raw = check_json(root)
    f = findings(o)
    tap.ok(rc == 0 and f[f"reset:{TX}"]["status"] == "warn" and "reboot" in f[f"reset:{TX}"]["message"]
           and f[f"reset:{TXA}"]["status"] == "ok", "no reset method warns (reboot between runs); `reset` alone is ok",
           raw)

    root = fixture("intel-healthy")
    remove(root, "dev/vfio/13")
    rc, o, raw = check_json(root)
    tap.ok(rc == 1 and statuses(o).get("dev_vfio:13") == "fail",
           "/dev/vfio/13 missing while vfio-pci holds the group: fail", raw)

    # The host's GPU moved into the target's group.
    root = fixture("intel-healthy")
    relink(root, dev(root, RTX, "iommu_group"), "sys/kernel/iommu_groups/13")
    relink(root, f"sys/kernel/iommu_groups/13/devices/{RTX}", dev(root, RTX))
    remove(root, f"sys/kernel/iommu_groups/1/devices/{RTX}")
    rc, o, raw = check_json(root)
    f = findings(o)
    tap.ok(rc == 1 and f.get("host_gpu", {}).get("status") == "fail" and "shares IOMMU group 13" in
           f["host_gpu"]["message"] and f["group:13"]["status"] == "fail",
           "the host's GPU in the target's group: host_gpu fails", raw)

    # No NVIDIA GPU but the host's own display.
    root = fixture("intel-healthy")
    for a in (TX, TXA):
        remove(root, f"sys/bus/pci/devices/{a}")
    rc, o, raw = check_json(root)
    f = findings(o).get("targets", {})
    tap.ok(rc == 1 and f.get("status") == "fail" and RTX in (f.get("hint") or "") and "host display" in f["hint"]
           and "host_gpu" not in findings(o), "no target: fail, the hint lists the GPUs seen", raw)


def test_names():
    root = fixture("intel-healthy")
    remove(root, "usr/share/misc/pci.ids")
    rc, o, raw = check_json(root)
    tap.ok(rc == 0 and o.get("pci_ids") is None and all(t["name"] is None for t in o.get("targets", [])),
           "without pci.ids: no names in --json, still ready", raw)
    rc, out, err = check(root)
    tap.ok(rc == 0 and "  0000:65:00.0 [10de:17c2]  driver: vfio-pci" in out and "GM200" not in out and "names: none" in out,
           "without pci.ids: the table shows ids only", out)

    root = fixture("intel-healthy")
    os.makedirs(os.path.join(root, "usr/share/hwdata"))
    os.rename(os.path.join(root, "usr/share/misc/pci.ids"), os.path.join(root, "usr/share/hwdata/pci.ids"))
    rc, o, raw = check_json(root)
    tap.ok(rc == 0 and o.get("pci_ids") == "/usr/share/hwdata/pci.ids" and "GM200" in (o["targets"][0]["name"] or ""),
           "pci.ids in /usr/share/hwdata is used too", raw)

    root = fixture("intel-healthy")
    write(root, "usr/share/misc/pci.ids", "10de  NVIDIA Corporation\n\t17c2  GM200\nzz this is not pci.ids\n")
    rc, out, err = check(root)
    tap.ok(rc == 0 and "names: none" in out and "Parse error" in out and "[10de:17c2]" in out,
           "a malformed pci.ids: ids only, and the parse error is shown", out + err)


# --- titan host bind / unbind ---

def bind(root, *args, action="bind"):
    return titan("host", action, *args, "--sysroot", root)


def bind_json(root, *args, action="bind"):
    rc, out, err = titan("--json", "host", action, *args, "--sysroot", root)
    try:
        o = json.loads(out)
    except ValueError:
        o = {}
    return rc, o, out + err


def steps(o):
    return [(s["path"], s["value"], s["done"]) for s in o.get("steps", [])]


def bind_steps(addr):
    return [(f"/sys/bus/pci/devices/{addr}/driver_override", "vfio-pci", True),
            (f"/sys/bus/pci/devices/{addr}/driver/unbind", addr, True),
            ("/sys/bus/pci/drivers_probe", addr, True)]


def unbind_steps(addr):
    return [(f"/sys/bus/pci/devices/{addr}/driver_override", "\n", True),
            (f"/sys/bus/pci/devices/{addr}/driver/unbind", addr, True),
            ("/sys/bus/pci/drivers_probe", addr, True)]


def test_bind():
    root = fixture("intel-nvidia-bound")
    rc, out, err = bind(root, TX)
    tap.ok(rc == 0 and read(root, dev(root, TX, "driver_override")) == "vfio-pci"
           and read(root, dev(root, TXA, "driver_override")) == "vfio-pci",
           "bind: driver_override holds vfio-pci for both functions", (rc, out, err))
    tap.ok(read(root, "sys/bus/pci/drivers/nvidia/unbind") == TX
           and read(root, "sys/bus/pci/drivers/snd_hda_intel/unbind") == TXA
           and read(root, "sys/bus/pci/drivers_probe") == TXA,
           "bind: each function unbound from its driver (through driver/unbind), then drivers_probe",
           [read(root, p) for p in ("sys/bus/pci/drivers/nvidia/unbind", "sys/bus/pci/drivers/snd_hda_intel/unbind",
                                    "sys/bus/pci/drivers_probe")])
    tap.ok(read(root, dev(root, RTX, "driver_override")) == "(null)\n" and read(root, "sys/bus/pci/drivers/vfio-pci/unbind") == "",
           "bind: nothing outside the group is touched", "")
    tap.ok(out.count(": ok") == 6 and f'write "vfio-pci" to /sys/bus/pci/devices/{TX}/driver_override: ok' in out
           and "IOMMU group 13, 2 functions" in out and "done:" in out, "bind reports each step", out)

    # By the audio function's address: the same whole group, in the same order.
    root = fixture("intel-nvidia-bound")
    rc, o, raw = bind_json(root, TXA)
    tap.ok(rc == 0 and o.get("ok") is True and o.get("refused") is False and o.get("group") == 13
           and steps(o) == bind_steps(TX) + bind_steps(TXA)
           and [(f["address"], f["driver"]) for f in o.get("functions", [])] == [(TX, "nvidia"), (TXA, "snd_hda_intel")],
           "bind --json by the audio address: the exact writes, for the whole group", raw)

    # The group with a USB controller: all endpoints move, the root ports stay.
    root = fixture("intel-usb-group")
    rc, o, raw = bind_json(root, "0000:03:00.0")
    usb = "0000:04:00.0"
    want = [(f"/sys/bus/pci/devices/0000:03:00.0/driver_override", "vfio-pci", True),
            (f"/sys/bus/pci/devices/0000:03:00.1/driver_override", "vfio-pci", True)] + bind_steps(usb)
    tap.ok(rc == 0 and steps(o) == want and read(root, "sys/bus/pci/drivers/xhci_hcd/unbind") == usb
           and read(root, dev(root, "0000:00:1c.0", "driver_override")) == "(null)\n"
           and read(root, "sys/bus/pci/drivers/pcieport/unbind") == "",
           "bind moves every endpoint of the group (the USB controller too), never the bridges", raw)

    # Already on vfio-pci: only driver_override is set, so that it stays there.
    root = fixture("intel-healthy")
    rc, o, raw = bind_json(root, TX)
    tap.ok(rc == 0 and steps(o) == [(f"/sys/bus/pci/devices/{TX}/driver_override", "vfio-pci", True),
                                    (f"/sys/bus/pci/devices/{TXA}/driver_override", "vfio-pci", True)]
           and read(root, "sys/bus/pci/drivers_probe") == "", "bind of a group on vfio-pci: driver_override only", raw)
    rc, o, raw = bind_json(root, TX)
    tap.ok(rc == 0 and steps(o) == [], "bind again: nothing to do", raw)


def test_bind_dry_run():
    root = fixture("intel-nvidia-bound")
    before = snapshot(root)
    rc, out, err = bind(root, TX, "--dry-run")
    tap.ok(rc == 0 and snapshot(root) == before and out.count("would write") == 6 and "dry run" in out,
           "bind --dry-run: prints the six writes, writes nothing", out + err)
    rc, o, raw = bind_json(root, TX, "--dry-run")
    tap.ok(rc == 0 and o.get("dry_run") is True and [(p, v) for p, v, d in steps(o)] ==
           [(p, v) for p, v, d in bind_steps(TX) + bind_steps(TXA)] and not any(d for p, v, d in steps(o))
           and snapshot(root) == before, "bind --dry-run --json: the plan, nothing done", raw)


def test_bind_refusals():
    root = fixture("intel-healthy")
    before = snapshot(root)
    rc, out, err = bind(root, RTX)
    tap.ok(rc == 1 and "refused" in err and "boot display" in err and snapshot(root) == before,
           "bind of the host's boot display: refused, nothing written", (rc, out, err))
    rc, out, err = bind(root, "0000:17:00.1")
    tap.ok(rc == 1 and "0000:17:00.0" in err and "same IOMMU group" in err and snapshot(root) == before,
           "bind of a function in the display's group: refused", (rc, out, err))
    rc, o, raw = bind_json(root, RTX)
    tap.ok(rc == 1 and o.get("ok") is False and o.get("refused") is True and "boot display" in (o.get("error") or "")
           and o.get("steps") == [], "bind --json refusal: ok false, refused true, the reason", raw)

    root = fixture("intel-nvidia-bound")
    write(root, "sys/class/drm/card1-DP-2/status", "connected\n")
    before = snapshot(root)
    rc, out, err = bind(root, TX)
    tap.ok(rc == 1 and "card1-DP-2" in err and "connected" in err and snapshot(root) == before,
           "bind of a GPU whose DRM connector is connected: refused", (rc, out, err))

    root = fixture("intel-nvidia-bound")
    fb = dev(root, TX, "graphics/fb1")
    write(root, fb + "/dev", "29:1\n")
    relink(root, fb + "/device", dev(root, TX))
    relink(root, "sys/class/graphics/fb1", fb)
    before = snapshot(root)
    rc, out, err = bind(root, TX)
    tap.ok(rc == 1 and "fb1" in err and snapshot(root) == before, "bind of a GPU with a framebuffer: refused",
           (rc, out, err))

    root = fixture("intel-nvidia-bound")
    remove(root, "sys/bus/pci/drivers/vfio-pci")
    remove(root, "sys/module/vfio_pci")
    before = snapshot(root)
    rc, out, err = bind(root, TX)
    tap.ok(rc == 1 and "vfio-pci" in err and "modprobe vfio-pci" in err and snapshot(root) == before,
           "bind without the vfio-pci module: refused, with the modprobe hint", (rc, out, err))

    root = fixture("intel-iommu-off")
    rc, out, err = bind(root, TX)
    tap.ok(rc == 1 and "no IOMMU group" in err, "bind without an IOMMU: refused", (rc, out, err))
    rc, out, err = bind(root, "0000:99:00.0")
    tap.ok(rc == 1 and "no PCI function 0000:99:00.0" in err, "bind of a missing function: exit 1", (rc, out, err))
    rc, out, err = bind(root, "0000:16:00.0")
    tap.ok(rc == 1 and "bridge" in err, "bind of a PCI bridge: refused", (rc, out, err))


def test_bind_failure():
    # drivers_probe made a directory: the third write fails, the rest are not tried.
    root = fixture("intel-nvidia-bound")
    remove(root, "sys/bus/pci/drivers_probe")
    os.makedirs(os.path.join(root, "sys/bus/pci/drivers_probe"))
    rc, out, err = bind(root, TX)
    tap.ok(rc == 1 and "/sys/bus/pci/drivers_probe: FAILED" in out and "not reached" in out
           and "drivers_probe" in err and read(root, dev(root, TXA, "driver_override")) == "(null)\n",
           "a failed write stops the bind, says where, exit 1", (rc, out, err))


def test_unbind():
    root = fixture("intel-healthy")
    rc, o, raw = bind_json(root, TX, action="unbind")
    tap.ok(rc == 0 and o.get("ok") is True and steps(o) == unbind_steps(TX) + unbind_steps(TXA),
           "unbind --json: clear driver_override, unbind from vfio-pci, drivers_probe, for the whole group", raw)
    tap.ok(read(root, dev(root, TX, "driver_override")) == "\n" and read(root, dev(root, TXA, "driver_override")) == "\n"
           and read(root, "sys/bus/pci/drivers/vfio-pci/unbind") == TXA and read(root, "sys/bus/pci/drivers_probe") == TXA,
           "unbind: the writes are in the files", "")

    root = fixture("intel-nvidia-bound")
    before = snapshot(root)
    rc, out, err = bind(root, TX, action="unbind")
    tap.ok(rc == 0 and snapshot(root) == before and "nothing to do" in out,
           "unbind of a group on its host drivers: nothing to do, nothing written", (rc, out, err))

    root = fixture("intel-healthy")
    before = snapshot(root)
    rc, out, err = bind(root, TXA, "--dry-run", action="unbind")
    tap.ok(rc == 0 and snapshot(root) == before and out.count("would write") == 6,
           "unbind --dry-run writes nothing", out)


def test_bind_usage():
    root = fixture("intel-healthy")
    for args in ([], ["zz:00.0"], [TX, TXA], ["--frobnicate", TX], ["0000:65:00.9"]):
        rc, out, err = bind(root, *args)
        tap.ok(rc == 2 and err.strip(), f"host bind {' '.join(args) or '(no address)'}: usage, exit 2", (rc, err))
    rc, out, err = titan("host", "unbind", TX, "--sysroot", os.path.join(tmp, "no-such-dir"))
    tap.ok(rc == 2, "host unbind --sysroot of a missing directory: exit 2", (rc, err))


def main():
    for t in (test_intel_healthy, test_intel_targets_by_option, test_usage_errors, test_usb_group, test_nvidia_bound,
              test_iommu_off, test_amd, test_host_variants, test_names, test_bind, test_bind_dry_run,
              test_bind_refusals, test_bind_failure, test_unbind, test_bind_usage):
        tap.run(t.__name__, t)
    shutil.rmtree(tmp, ignore_errors=True)
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
