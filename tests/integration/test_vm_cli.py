#!/usr/bin/python3
"""test_vm_cli.py - `titan vm` as a program against libvirt's test driver (test:///ABSOLUTE/fixture.xml).

Each titan run is a new process, and the test driver's state lives and dies with its connection, so every
case is a single command on the fixture's initial state (titan-plain and titan-stubborn running).

Usage: test_vm_cli.py TITAN FIXTURE.xml
"""
import json
import os
import subprocess
import sys
import tempfile

from workerproc import Tap

TITAN = sys.argv[1]
FIXTURE = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "../fixtures/vm/libvirt-test-node.xml")
URI = "test://" + FIXTURE
DEAD = "qemu+unix:///system?socket=/nonexistent-dir/libvirt-sock"
tap = Tap()


def titan(*args, env=None):
    e = dict(os.environ)
    e.pop("TITAN_LIBVIRT_URI", None)
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
    rc, out, err = titan("vm", "start", "titan-vm", "--connect", DEAD)
    tap.ok(rc == 3 and "cannot connect to " + DEAD in err and "is libvirtd" in err and "libvirt group" in err
           and "--connect" in err, "an unreachable libvirt: exit 3 with a hint", err)
    rc, out, err = titan("--json", "vm", "stop", "titan-vm", "--connect", DEAD)
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
            f.write("name: titan-vm\nmemory: 8GiB\nvcpus: 4\n"
                    "disk:\n  path: /titan-images/titan-vm.qcow2\n  size: 40GiB\n"
                    "gpu: [0000:65:00.0, 0000:65:00.1]\n")
        rc, out, err = titan("vm", "xml", "--config", path)
        tap.ok(rc == 0 and "<domain" in out and "<name>titan-vm</name>" in out
               and "bus='0x65'" in out and "managed='yes'" in out, "xml prints the domain XML", (rc, out, err))
        with open(os.path.join(d, "bad.yaml"), "w") as f:
            f.write("name: titan-vm\nmemory: 8 gigs\nvcpus: 4\ndisk: {path: /x.qcow2}\n")
        rc, out, err = titan("vm", "xml", "--config", os.path.join(d, "bad.yaml"))
        tap.ok(rc == 2 and "bad.yaml:2" in err and "memory" in err, "a bad vm.yaml: exit 2, file:line: field", err)
        rc, out, err = titan("vm", "xml", "--config", os.path.join(d, "missing.yaml"))
        tap.ok(rc in (1, 2) and "missing.yaml" in err, "xml of a missing file names it", err)
        rc, out, err = titan("vm", "define", "--config", path, "--connect", DEAD)
        tap.ok(rc in (1, 3) and err, "define reports why it cannot go on", err)


for name, fn in [("usage", usage_errors), ("help", help_text), ("status", status_lines), ("status json", status_json),
                 ("status missing", status_missing), ("env", env_uri), ("unreachable", unreachable),
                 ("stop clean", stop_clean), ("stop destroyed", stop_destroyed), ("start", start_running),
                 ("undefine", undefine), ("autostart", autostart), ("xml", xml_and_define)]:
    tap.run(name, fn)
sys.exit(tap.done())
