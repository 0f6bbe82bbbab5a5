#!/usr/bin/python3
"""test_vm_cli.py - `titan vm` as a program against libvirt's test driver (test:///ABSOLUTE/fixture.xml).

Each titan run is a new process, and the test driver's state lives and dies with its connection, so every
case is a single command on the fixture's initial state (titan-plain and titan-stubborn running).

Usage: test_vm_cli.py TITAN FIXTURE.xml
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from workerproc import Tap

TITAN = sys.argv[1]
FIXTURE = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "../fixtures/vm/libvirt-test-node.xml")
URI = "test://" + FIXTURE
# Host trees with QEMU firmware descriptors shaped as Arch, Debian and Fedora ship them (see its README).
FIRMWARE = os.path.join(os.path.dirname(FIXTURE), "firmware")
EXAMPLE = os.path.join(os.path.dirname(FIXTURE), "../../../deploy/vm/vm.yaml")
DEAD = "qemu+unix:///system?socket=/nonexistent-dir/libvirt-sock"
tap = Tap()


def titan(*args, env=None):
    e = dict(os.environ)
    for k in ("TITAN_LIBVIRT_URI", "XDG_CONFIG_HOME"):
        e.pop(k, None)
    if env:
        e.update(env)
    p = subprocess.run([TITAN, *args], capture_output=True, text=True, timeout=60, env=e)
    return p.returncode, p.stdout, p.stderr


def as_json(out):
    try:
        return json.loads(out)
    except ValueError:
        return {}


def usage_errors():
    for args, why in [
        (["vm"], "no subcommand"),
        (["vm", "reboot", "x"], "unknown subcommand"),
        (["vm", "stop"], "no NAME"),
        (["vm", "stop", "x", "y"], "two names"),
        (["vm", "stop", "x", "--timeout", "abc"], "--timeout not a number"),
        (["vm", "stop", "x", "--timeout", "0"], "--timeout 0"),
        (["vm", "stop", "x", "--timeout"], "--timeout without a value"),
        (["vm", "status", "x", "--timeout", "5"], "--timeout on status"),
        (["vm", "start", "x", "--force"], "--force on start"),
        (["vm", "autostart", "maybe", "x"], "autostart maybe"),
        (["vm", "autostart", "on"], "autostart without NAME"),
        (["vm", "define"], "define without --config"),
        (["vm", "xml"], "xml without --config"),
        (["vm", "xml", "--config", "vm.yaml", "--connect", URI], "--connect on xml"),
        (["vm", "status", "x", "--connect="], "empty --connect"),
        (["vm", "status", "x", "--bogus"], "unknown option"),
        (["vm", "xml", "--config", "vm.yaml", "--sysroot", "/nonexistent-dir"], "--sysroot not a directory"),
        (["vm", "start", "x", "--sysroot", "/"], "--sysroot on start"),
    ]:
        rc, out, err = titan(*args)
        tap.ok(rc == 2 and err.startswith("titan vm"), f"usage error exits 2: {why}", f"rc={rc}\n{out}{err}")


def help_text():
    rc, out, _ = titan("help", "vm")
    tap.ok(rc == 0 and "titan vm stop NAME [--timeout SECONDS]" in out and "4 (stop)" in out,
           "titan help vm documents stop and the exit statuses", out)
    rc, out, _ = titan("vm", "stop", "--help")
    tap.ok(rc == 0 and "usage: titan vm define" in out, "titan vm stop --help prints the help")


def status_lines():
    rc, out, err = titan("vm", "status", "titan-plain", "--connect", URI)
    lines = dict(l.split(":", 1) for l in out.splitlines() if ":" in l)
    lines = {k.strip(): v.strip() for k, v in lines.items()}
    tap.ok(rc == 0 and lines.get("state", "").startswith("running") and lines.get("persistent") == "yes"
           and lines.get("autostart") == "off" and lines.get("vcpus") == "2" and lines.get("uptime") == "unknown"
           and lines.get("hostdevs") == "0000:65:00.0 0000:65:00.1" and "1048576 KiB" in lines.get("memory", ""),
           "status: one line per field", out + err)


def status_json():
    rc, out, err = titan("--json", "vm", "status", "titan-plain", "--connect", URI)
    o = as_json(out)
    tap.ok(rc == 0 and o.get("exists") is True and o.get("state") == "running" and o.get("vcpus") == 2
           and o.get("memory_kib") == 1048576 and o.get("hostdevs") == ["0000:65:00.0", "0000:65:00.1"]
           and o.get("uptime_s", 0) is None and o.get("persistent") is True and o.get("autostart") is False,
           "status --json", out + err)
    rc, out, err = titan("vm", "status", "titan-plain", "--json", "--connect=" + URI)
    tap.ok(rc == 0 and as_json(out).get("name") == "titan-plain", "--json and --connect= after the name")


def status_missing():
    rc, out, err = titan("vm", "status", "no-such-vm", "--connect", URI)
    tap.ok(rc == 1 and "no domain no-such-vm" in err and "titan vm define --config vm.yaml" in err
           and "virsh list --all" in err, "status of a missing domain: exit 1 with a hint", err)
    rc, out, err = titan("--json", "vm", "status", "no-such-vm", "--connect", URI)
    o = as_json(out)
    tap.ok(rc == 1 and o.get("exists") is False and o.get("code") == "no_domain", "status --json of a missing one",
           out)


def env_uri():
    rc, out, err = titan("vm", "status", "titan-stubborn", env={"TITAN_LIBVIRT_URI": URI})
    tap.ok(rc == 0 and "name:       titan-stubborn" in out, "$TITAN_LIBVIRT_URI picks the connection", out + err)
    rc, out, err = titan("vm", "status", "titan-stubborn", "--connect", DEAD, env={"TITAN_LIBVIRT_URI": URI})
    tap.ok(rc == 3, "--connect wins over $TITAN_LIBVIRT_URI", err)


def unreachable():
    rc, out, err = titan("vm", "start", "titan-worker", "--connect", DEAD)
    tap.ok(rc == 3 and "cannot connect to " + DEAD in err and "is libvirtd" in err and "libvirt group" in err
           and "--connect" in err, "an unreachable libvirt: exit 3 with a hint", err)
    rc, out, err = titan("--json", "vm", "stop", "titan-worker", "--connect", DEAD)
    o = as_json(out)
    tap.ok(rc == 3 and o.get("code") == "unreachable" and o.get("exit") == 3, "unreachable under --json", out)


def stop_clean():
    rc, out, err = titan("vm", "stop", "titan-plain", "--connect", URI)
    tap.ok(rc == 0 and "titan-plain shut down cleanly" in out
           and "warning: the driver refused the ACPI power button" in err, "stop: clean, with the fallback warning",
           f"rc={rc}\n{out}{err}")
    rc, out, err = titan("--json", "vm", "stop", "titan-plain", "--connect", URI)
    o = as_json(out)
    tap.ok(rc == 0 and o.get("result") == "stopped" and len(o.get("warnings", [])) == 1,
           "stop --json: result and warnings", out + err)


def stop_destroyed():
    rc, out, err = titan("vm", "stop", "titan-stubborn", "--timeout", "1", "--connect", URI)
    tap.ok(rc == 4 and "warning: still running after 1 s: destroyed" in err
           and "refused the guest agent" in err, "stop of a guest that ignores it: destroyed, exit 4",
           f"rc={rc}\n{out}{err}")
    rc, out, err = titan("--json", "vm", "stop", "titan-stubborn", "--timeout=1", "--connect", URI)
    o = as_json(out)
    tap.ok(rc == 4 and o.get("result") == "destroyed" and o.get("exit") == 4, "stop --json: destroyed", out)


def start_running():
    rc, out, err = titan("vm", "start", "titan-plain", "--connect", URI)
    tap.ok(rc == 0 and "titan-plain is already running" in out, "start of a running domain: exit 0, says so",
           out + err)
    rc, out, err = titan("vm", "start", "no-such-vm", "--connect", URI)
    tap.ok(rc == 1 and "titan vm define --config vm.yaml" in err, "start of a missing domain: exit 1", err)


def undefine():
    rc, out, err = titan("vm", "undefine", "titan-plain", "--connect", URI)
    tap.ok(rc == 1 and "titan-plain is running" in err and "--force" in err, "undefine refuses a running domain",
           err)
    rc, out, err = titan("vm", "undefine", "titan-plain", "--force", "--connect", URI)
    tap.ok(rc == 0 and "undefined titan-plain" in out and "kept its disk /titan-images/titan-plain.qcow2" in out
           and "destroyed" in err, "undefine --force: destroys, undefines, says where the disk stays",
           f"rc={rc}\n{out}{err}")


def autostart():
    rc, out, err = titan("vm", "autostart", "on", "titan-plain", "--connect", URI)
    tap.ok(rc == 0 and "autostart on for titan-plain" in out, "autostart on", out + err)
    rc, out, err = titan("--json", "vm", "autostart", "off", "titan-plain", "--connect", URI)
    tap.ok(rc == 0 and as_json(out).get("autostart") is False, "autostart off --json", out + err)


def xml_and_define():
    with tempfile.TemporaryDirectory(prefix="titan-vm-") as d:
        path = os.path.join(d, "vm.yaml")
        with open(path, "w") as f:
            f.write("name: titan-worker\nmemory: 8GiB\nvcpus: 4\n"
                    "disk:\n  path: /titan-images/titan-worker.qcow2\n  size: 40GiB\n"
                    "gpu: [0000:65:00.0, 0000:65:00.1]\n")
        rc, out, err = titan("vm", "xml", "--config", path, "--sysroot", os.path.join(FIRMWARE, "debian"))
        tap.ok(rc == 0 and "<domain" in out and "<name>titan-worker</name>" in out
               and "bus='0x65'" in out and "managed='yes'" in out, "xml prints the domain XML", (rc, out, err))
        with open(os.path.join(d, "bad.yaml"), "w") as f:
            f.write("name: titan-worker\nmemory: 8 gigs\nvcpus: 4\ndisk: {path: /x.qcow2}\n")
        rc, out, err = titan("vm", "xml", "--config", os.path.join(d, "bad.yaml"))
        tap.ok(rc == 2 and "bad.yaml:2" in err and "memory" in err, "a bad vm.yaml: exit 2, file:line: field", err)
        rc, out, err = titan("vm", "xml", "--config", os.path.join(d, "missing.yaml"))
        tap.ok(rc in (1, 2) and "missing.yaml" in err, "xml of a missing file names it", err)
        rc, out, err = titan("vm", "define", "--config", path, "--connect", DEAD)
        tap.ok(rc in (1, 3) and err, "define reports why it cannot go on", err)


def xml_of(config, sysroot, *more, env=None):
    return titan("vm", "xml", "--config", config, "--sysroot", sysroot, *more, env=env)


def loader_line(loader, secure=False):
    return f"<loader readonly='yes'{' secure=' + repr('yes') if secure else ''} type='pflash'>{loader}</loader>"


def write_json(root, rel, obj):
    path = os.path.join(root, rel.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def touch(root, rel):
    write_json(root, rel, "")


def descriptor(exe, vars_=None, features=(), machines=("pc-q35-*",), fmt="raw"):
    m = {"device": "flash", "executable": {"filename": exe, "format": fmt}}
    if vars_:
        m["nvram-template"] = {"filename": vars_, "format": fmt}
    return {"interface-types": ["uefi"], "mapping": m,
            "targets": [{"architecture": "x86_64", "machines": list(machines)}], "features": list(features)}


def design_names():
    """The example vm.yaml is the design's VM: titan-worker, its disk, and (on Arch) Arch's OVMF."""
    rc, out, err = xml_of(EXAMPLE, os.path.join(FIRMWARE, "arch"))
    tap.ok(rc == 0 and "<name>titan-worker</name>" in out
           and "<source file='/var/lib/libvirt/images/titan-worker.qcow2'/>" in out
           and loader_line("/usr/share/edk2/x64/OVMF_CODE.4m.fd") in out, "deploy/vm/vm.yaml on an Arch host: the "
           "design's domain titan-worker, disk titan-worker.qcow2 and OVMF_CODE.4m.fd", (rc, out, err))
    with open(EXAMPLE) as f:
        text = f.read()
    tap.ok("loader: /usr/share/edk2/x64/OVMF_CODE.4m.fd" in text and "\nname: titan-worker\n" in text,
           "the example names the domain titan-worker and shows Arch's OVMF path")


def firmware_per_distro():
    for distro, loader, tmpl, desc in (
            ("arch", "/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
             "60-edk2-ovmf-x86_64-4m.json"),
            ("debian", "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd", "60-edk2-x86_64.json"),
            ("fedora", "/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd",
             "51-edk2-ovmf-2m-raw-x64-nosb.json")):
        root = os.path.join(FIRMWARE, distro)
        rc, out, err = xml_of(EXAMPLE, root)
        tap.ok(rc == 0 and loader_line(loader) in out and f"<nvram template='{tmpl}'/>" in out
               and "firmware='efi'" not in out and "secure=" not in out and "<smm" not in out and err == "",
               f"firmware: efi on {distro}: {loader} from QEMU's descriptors, without Secure Boot", (rc, out, err))
        rc, out, err = xml_of(EXAMPLE, root, "--json")
        fw = as_json(out).get("firmware") or {}
        tap.ok(rc == 0 and fw.get("descriptor") == "/usr/share/qemu/firmware/" + desc and fw.get("loader") == loader
               and fw.get("nvram_template") == tmpl and fw.get("chosen_by") == "titan",
               f"--json names the {distro} descriptor it used", out)


def firmware_define():
    with tempfile.TemporaryDirectory(prefix="titan-fw-") as d:
        cfg = write_json(d, "vm.yaml", "name: titan-worker\nmemory: 1GiB\nvcpus: 1\n"
                                       "disk: {path: /titan-images/titan-worker.qcow2}\n")
        rc, out, err = titan("vm", "define", "--config", cfg, "--connect", URI, "--sysroot",
                             os.path.join(FIRMWARE, "fedora"))
        tap.ok(rc == 0 and "firmware: /usr/share/edk2/ovmf/OVMF_CODE.fd "
                           "(/usr/share/qemu/firmware/51-edk2-ovmf-2m-raw-x64-nosb.json)" in out
               and "defined titan-worker (new)" in out, "define: says which OVMF it chose, then defines",
               (rc, out, err))
        empty = os.path.join(d, "empty")
        os.mkdir(empty)
        rc, out, err = titan("vm", "define", "--config", cfg, "--connect", URI, "--sysroot", empty)
        tap.ok(rc == 1 and "no UEFI firmware" in err and "defined" not in out,
               "define without OVMF: refused before libvirt", (rc, out, err))


def firmware_missing():
    with tempfile.TemporaryDirectory(prefix="titan-fw-") as d:
        rc, out, err = xml_of(EXAMPLE, d)
        tap.ok(rc == 1 and out == "" and "no UEFI firmware" in err and "apt install ovmf" in err
               and "pacman -S edk2-ovmf" in err and "dnf install edk2-ovmf" in err
               and "firmware: {loader:" in err and "/usr/share/qemu/firmware" in err,
               "no descriptor: exit 1, what to install on each distribution or what to write", err)
        rc, out, err = xml_of(EXAMPLE, d, "--json")
        tap.ok(rc == 1 and as_json(out).get("code") == "no_firmware", "--json: code no_firmware", out)
        for text, why in (("firmware: bios\n", "bios"),
                          ("firmware: {loader: /opt/OVMF_CODE.fd}\n", "an explicit loader")):
            cfg = write_json(d, "vm.yaml", "name: t\nmemory: 1GiB\nvcpus: 1\ndisk: {path: /t.qcow2}\n" + text)
            rc, out, err = xml_of(cfg, d)
            tap.ok(rc == 0 and "firmware='efi'" not in out, f"{why} needs no descriptor", (rc, out, err))
        # only forms titan cannot use: Fedora's qcow2 builds, and a machine with only a -bios image
        write_json(d, "/usr/share/qemu/firmware/50-q.json",
                   descriptor("/usr/share/edk2/ovmf/OVMF_CODE_4M.qcow2", "/usr/share/edk2/ovmf/OVMF_VARS_4M.qcow2",
                              fmt="qcow2"))
        touch(d, "/usr/share/edk2/ovmf/OVMF_CODE_4M.qcow2")
        touch(d, "/usr/share/edk2/ovmf/OVMF_VARS_4M.qcow2")
        rc, out, err = xml_of(EXAMPLE, d)
        tap.ok(rc == 1 and "qcow2" in err and "1 read" in err, "only qcow2 builds: says so", err)
        cfg = write_json(d, "micro.yaml", "name: t\nmemory: 1GiB\nvcpus: 1\ndisk: {path: /t.qcow2}\n"
                                          "machine: microvm\n")
        rc, out, err = xml_of(cfg, os.path.join(FIRMWARE, "arch"))
        tap.ok(rc == 1 and "x86_64 microvm machine" in err and "-bios images" in err,
               "a machine with only a memory-mapped image: refused", err)


def firmware_choice():
    deb = os.path.join(FIRMWARE, "debian")
    with tempfile.TemporaryDirectory(prefix="titan-fw-") as d:
        root = os.path.join(d, "root")
        shutil.copytree(deb, root)
        os.unlink(os.path.join(root, "usr/share/qemu/firmware/60-edk2-x86_64.json"))
        rc, out, err = xml_of(EXAMPLE, root)
        tap.ok(rc == 0 and loader_line("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", secure=True) in out
               and "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'/>" in out and "<smm state='on'/>" in out,
               "only Secure Boot builds: the one without enrolled keys, with secure='yes' and SMM", (rc, out, err))
        # an empty file in /etc masks the descriptor of that name; a file there overrides /usr/share's
        shutil.rmtree(root)
        shutil.copytree(deb, root)
        touch(root, "/etc/qemu/firmware/60-edk2-x86_64.json")
        rc, out, err = xml_of(EXAMPLE, root)
        tap.ok(rc == 0 and "OVMF_CODE_4M.secboot.fd" in out, "an empty /etc/qemu/firmware file masks its name",
               (rc, out, err))
        write_json(root, "/etc/qemu/firmware/60-edk2-x86_64.json", descriptor("/opt/ovmf/CODE.fd", "/opt/ovmf/VARS.fd"))
        touch(root, "/opt/ovmf/CODE.fd")
        touch(root, "/opt/ovmf/VARS.fd")
        rc, out, err = xml_of(EXAMPLE, root, "--json")
        fw = as_json(out).get("firmware") or {}
        tap.ok(rc == 0 and fw.get("loader") == "/opt/ovmf/CODE.fd"
               and fw.get("descriptor") == "/etc/qemu/firmware/60-edk2-x86_64.json",
               "/etc/qemu/firmware overrides /usr/share/qemu/firmware by name", out)
        # a session daemon reads the user's descriptors first; the system one does not
        write_json(root, "/home/u/.config/qemu/firmware/60-edk2-x86_64.json",
                   descriptor("/home/u/ovmf/CODE.fd", "/home/u/ovmf/VARS.fd"))
        touch(root, "/home/u/ovmf/CODE.fd")
        touch(root, "/home/u/ovmf/VARS.fd")
        env = {"XDG_CONFIG_HOME": "/home/u/.config", "TITAN_LIBVIRT_URI": "qemu:///session"}
        rc, out, err = xml_of(EXAMPLE, root, env=env)
        tap.ok(rc == 0 and loader_line("/home/u/ovmf/CODE.fd") in out, "qemu:///session: ~/.config/qemu/firmware wins",
               (rc, out, err))
        rc, out, err = xml_of(EXAMPLE, root, env={"XDG_CONFIG_HOME": "/home/u/.config"})
        tap.ok(rc == 0 and loader_line("/opt/ovmf/CODE.fd") in out,
               "qemu:///system: the user's descriptors are not read", (rc, out, err))


def firmware_untrusted():
    with tempfile.TemporaryDirectory(prefix="titan-fw-") as d:
        root = os.path.join(d, "root")
        shutil.copytree(os.path.join(FIRMWARE, "debian"), root)
        fw = "/usr/share/qemu/firmware/"
        write_json(root, fw + "10-broken.json", '{"interface-types": ["uefi"], ')
        write_json(root, fw + "11-huge.json", "[" + " " * (70 * 1024) + "]")
        write_json(root, fw + "12-shape.json", {"interface-types": "uefi", "mapping": {"device": "flash"},
                                                 "targets": []})
        write_json(root, fw + "13-gone.json", descriptor("/usr/share/OVMF/REMOVED_CODE.fd"))
        write_json(root, fw + "14-relative.json", descriptor("OVMF_CODE.fd"))
        write_json(root, fw + "15-twice.json", '{"interface-types": ["uefi"], "interface-types": ["bios"]}')
        rc, out, err = xml_of(EXAMPLE, root)
        warned = [l for l in err.splitlines() if "warning: firmware descriptor " in l]
        tap.ok(rc == 0 and loader_line("/usr/share/OVMF/OVMF_CODE_4M.fd") in out and len(warned) == 6
               and "10-broken.json: not valid JSON" in err and "11-huge.json: larger than 64 KiB" in err
               and "12-shape.json: has no \"interface-types\" list" in err
               and "13-gone.json: /usr/share/OVMF/REMOVED_CODE.fd does not exist" in err
               and "14-relative.json: has a filename that is not an absolute path" in err
               and "15-twice.json: not valid JSON" in err,
               "broken, oversized, misshapen or stale descriptors: skipped with a warning naming each", (rc, out, err))
        rc, out, err = xml_of(EXAMPLE, root, "--json")
        tap.ok(rc == 0 and len(as_json(out).get("warnings", [])) == 6, "--json lists those warnings", out)


def firmware_remote():
    with tempfile.TemporaryDirectory(prefix="titan-fw-") as d:
        env = {"TITAN_LIBVIRT_URI": "qemu+ssh://root@gpu-host:22/system"}
        rc, out, err = xml_of(EXAMPLE, d, env=env)
        tap.ok(rc == 0 and "<os firmware='efi'>" in out and "<feature enabled='no' name='secure-boot'/>" in out
               and "<loader" not in out, "a remote host: libvirt picks OVMF there, without Secure Boot", (rc, out, err))
        rc, out, err = xml_of(EXAMPLE, d, "--json", env=env)
        tap.ok(rc == 0 and (as_json(out).get("firmware") or {}).get("host") == "gpu-host", "--json says so", out)


for name, fn in [("usage", usage_errors), ("help", help_text), ("status", status_lines), ("status json", status_json),
                 ("status missing", status_missing), ("env", env_uri), ("unreachable", unreachable),
                 ("stop clean", stop_clean), ("stop destroyed", stop_destroyed), ("start", start_running),
                 ("undefine", undefine), ("autostart", autostart), ("xml", xml_and_define),
                 ("design names", design_names), ("firmware per distro", firmware_per_distro),
                 ("firmware define", firmware_define), ("firmware missing", firmware_missing),
                 ("firmware choice", firmware_choice), ("firmware untrusted", firmware_untrusted),
                 ("firmware remote", firmware_remote)]:
    tap.run(name, fn)
sys.exit(tap.done())
