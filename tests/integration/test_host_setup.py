#!/usr/bin/python3
"""test_host_setup.py - `titan host setup` on temporary copies of tests/fixtures/host-setup: the exact files for
Arch (mkinitcpio, booster), Debian, Ubuntu with systemd-boot and Fedora against golden copies in expected/,
backups, a second run that changes nothing, --dry-run diffs (applied with patch(1) and with a strict applier
here), vfio_virqfd before Linux 6.2 only, edge cases of each file format, and the usage and failure exits.

usage: test_host_setup.py TITAN
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from workerproc import Tap

TITAN = os.path.abspath(sys.argv[1])
FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "host-setup")
GPU = "10de:17c2,10de:0fb0"
BAK = ".titan-bak"

# What each fixture is, and what setup must make of it. `changed`: existing files it edits; `created`: new ones.
DISTROS = {
    "arch": dict(distro="arch", initramfs="mkinitcpio", bootloader="systemd-boot", cpu="intel",
                 virqfd=False, initramfs_file="etc/mkinitcpio.conf",
                 commands=["mkinitcpio -P"],
                 changed=["etc/mkinitcpio.conf", "boot/loader/entries/arch.conf",
                          "boot/loader/entries/arch-fallback.conf"],
                 created=["etc/modprobe.d/vfio.conf"]),
    "arch-booster": dict(distro="arch", initramfs="booster", bootloader="grub", cpu="amd", virqfd=False,
                         initramfs_file="etc/booster.yaml",
                         commands=["/usr/lib/booster/regenerate_images", "grub-mkconfig -o /boot/grub/grub.cfg"],
                         changed=["etc/booster.yaml", "etc/default/grub"],
                         created=["etc/modprobe.d/vfio.conf"]),
    "debian": dict(distro="debian", initramfs="initramfs-tools", bootloader="grub", cpu="intel", virqfd=True,
                   initramfs_file="etc/initramfs-tools/modules",
                   commands=["update-initramfs -u -k all", "update-grub"],
                   changed=["etc/initramfs-tools/modules", "etc/default/grub"],
                   created=["etc/modprobe.d/vfio.conf"]),
    "ubuntu-systemd-boot": dict(
        distro="debian", initramfs="initramfs-tools", bootloader="systemd-boot", cpu="amd", virqfd=True,
        initramfs_file="etc/initramfs-tools/modules",
        commands=["update-initramfs -u -k all"],
        changed=["etc/initramfs-tools/modules", "etc/kernel/cmdline",
                 "efi/loader/entries/4b2f0c5e9d8a4c71a2e3f6b7c8d9e0f1-5.15.0-91-generic.conf",
                 "efi/loader/entries/4b2f0c5e9d8a4c71a2e3f6b7c8d9e0f1-5.15.0-89-generic.conf"],
        created=["etc/modprobe.d/vfio.conf"]),
    "fedora": dict(distro="fedora", initramfs="dracut", bootloader="grub", cpu="intel", virqfd=False,
                   initramfs_file="etc/dracut.conf.d/10-vfio.conf",
                   commands=["dracut --regenerate-all --force", "grub2-mkconfig -o /boot/grub2/grub.cfg",
                             'grubby --update-kernel=ALL --args="intel_iommu=on iommu=pt"'],
                   changed=["etc/default/grub"],
                   created=["etc/modprobe.d/vfio.conf", "etc/dracut.conf.d/10-vfio.conf"]),
}

t = Tap()
tmp = tempfile.mkdtemp(prefix="titan-host-setup-")
sanitizer_reports = []


def copy(name, fixture=None):
    """A fresh copy of fixture `fixture` (default `name`) at TMP/name; returns its path."""
    dst = os.path.join(tmp, name)
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(os.path.join(FIX, fixture or name), dst, symlinks=True)
    return dst


def setup(*args, root=None, gpu=GPU, user=None):
    """Runs `titan host setup` (with --sysroot root and --gpu gpu unless None); returns CompletedProcess."""
    cmd = [TITAN, "host", "setup"]
    if gpu is not None:
        cmd += ["--gpu", gpu]
    if root is not None:
        cmd += ["--sysroot", root]
    cmd += list(args)
    if user is not None:
        cmd = ["setpriv", "--reuid=%d" % user, "--regid=%d" % user, "--clear-groups", "--"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if "Sanitizer" in p.stderr or "runtime error" in p.stderr:
        sanitizer_reports.append(" ".join(cmd) + "\n" + p.stderr)
    return p


def tree(root):
    """Every file under root: {relative path: bytes}."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def read(root, rel):
    with open(os.path.join(root, rel)) as f:
        return f.read()


def write(root, rel, text):
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(text)


def detail(p):
    return "exit %d\nstdout: %s\nstderr: %s" % (p.returncode, p.stdout, p.stderr)


# --- unified diffs: a strict parser and applier, independent of patch(1) ---

def parse_diff(text):
    """[(old name or None, new name, [hunk...])], each hunk (a_start, a_count, b_start, b_count, lines);
    raises ValueError on anything malformed, including counts that disagree with the lines."""
    files, lines, i = [], text.splitlines(keepends=True), 0
    while i < len(lines):
        if not lines[i].startswith("--- ") or i + 1 >= len(lines) or not lines[i + 1].startswith("+++ "):
            raise ValueError("expected a ---/+++ header at line %d: %r" % (i + 1, lines[i]))
        a = lines[i][4:].rstrip("\n")
        b = lines[i + 1][4:].rstrip("\n")
        if not (a == "/dev/null" or a.startswith("a/")) or not b.startswith("b/"):
            raise ValueError("bad file names %r %r" % (a, b))
        i += 2
        hunks = []
        while i < len(lines) and lines[i].startswith("@@ "):
            m = re.match(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@\n$", lines[i])
            if not m:
                raise ValueError("bad hunk header %r" % lines[i])
            a0, ac = int(m[1]), int(m[2]) if m[2] is not None else 1
            b0, bc = int(m[3]), int(m[4]) if m[4] is not None else 1
            i += 1
            body, na, nb = [], 0, 0
            while i < len(lines) and (na < ac or nb < bc or lines[i].startswith("\\")):
                line = lines[i]
                if line.startswith("\\"):
                    if not body or line != "\\ No newline at end of file\n":
                        raise ValueError("stray %r" % line)
                    body[-1] = (body[-1][0], body[-1][1][:-1])  # that line has no newline
                elif line[0] in " -+":
                    body.append((line[0], line[1:]))
                    na += line[0] != "+"
                    nb += line[0] != "-"
                else:
                    raise ValueError("bad hunk line %r" % line)
                i += 1
            if na != ac or nb != bc:
                raise ValueError("hunk %r counts %d,%d but has %d,%d lines" % (m[0], ac, bc, na, nb))
            hunks.append((a0, ac, b0, bc, body))
        if not hunks:
            raise ValueError("no hunk for %s" % b)
        files.append((None if a == "/dev/null" else a[2:], b[2:], hunks))
    return files


def apply_diff(root, text):
    """Applies a unified diff to the tree at root, checking every context and removed line exactly."""
    for old, new, hunks in parse_diff(text):
        src = open(os.path.join(root, old)).read().splitlines(keepends=True) if old else []
        out, pos = [], 0
        for a0, ac, b0, bc, body in hunks:
            start = a0 - 1 if ac else a0
            if start < pos:
                raise ValueError("hunks overlap in %s" % new)
            out += src[pos:start]
            if len(out) != (b0 - 1 if bc else b0):
                raise ValueError("hunk %d,%d lands at line %d of the new %s" % (b0, bc, len(out) + 1, new))
            pos = start
            for op, line in body:
                if op in " -":
                    if pos >= len(src) or src[pos] != line:
                        raise ValueError("%s line %d: expected %r, found %r" %
                                         (new, pos + 1, line, src[pos] if pos < len(src) else None))
                    pos += 1
                if op in " +":
                    out.append(line)
        out += src[pos:]
        write(root, new, "".join(out))


def check_diff_applies(what, fixture, diff, root, want):
    """Checks that `diff` turns the untouched copy `root` of `fixture` into the tree `want`, with the strict
    applier here and with `patch -p1` (on another copy) where patch(1) is installed."""
    before = tree(root)
    try:
        apply_diff(root, diff)
        err = None
    except (ValueError, OSError) as e:
        err = str(e)
    t.ok(err is None and tree(root) == want,
         "%s: the diff's hunks are exact and turn the originals into the result" % what, (err or "") + "\n" + diff)
    if not shutil.which("patch"):
        t.ok(False, "%s: patch(1) is installed (make test installs it) to apply the diff" % what)
        return
    root2 = root + ".patch"
    shutil.rmtree(root2, ignore_errors=True)
    os.makedirs(root2)
    for rel, data in before.items():
        os.makedirs(os.path.dirname(os.path.join(root2, rel)), exist_ok=True)
        open(os.path.join(root2, rel), "wb").write(data)
    # No fuzz: every context line must match; a clean diff leaves no .orig or .rej behind.
    pp = subprocess.run(["patch", "-p1", "--quiet", "--batch", "--fuzz=0"], input=diff, cwd=root2,
                        capture_output=True, text=True)
    t.ok(pp.returncode == 0 and tree(root2) == want, "%s: `patch -p1` applies the diff" % what,
         pp.stdout + pp.stderr + "\n" + diff)


def plain(snapshot):
    """A tree snapshot without backups."""
    return {k: v for k, v in snapshot.items() if not k.endswith(BAK)}


# --- per distribution ---

def check_distro(name, exp):
    root = copy(name)
    before = tree(root)
    golden_dir = os.path.join(FIX, "expected", name)
    golden = tree(golden_dir)

    # First run, --json.
    p = setup("--json", root=root)
    t.ok(p.returncode == 0, "%s: first run exits 0" % name, detail(p))
    try:
        js = json.loads(p.stdout)
    except ValueError:
        js = {}
    t.ok(all(js.get(k) == exp[k] for k in ("distro", "initramfs", "bootloader", "cpu", "commands")) and
         js.get("reboot_needed") is True and js.get("dry_run") is False and js.get("applied") is False and
         js.get("gpu") == GPU.split(","),
         "%s: --json names the setup (%s, %s, %s, %s CPU) and its commands" %
         (name, exp["distro"], exp["initramfs"], exp["bootloader"], exp["cpu"]), p.stdout)
    changes = {c["file"]: c for c in js.get("changes", [])}
    want = {"/" + f: True for f in exp["changed"] + exp["created"]}
    t.ok({f: c["changed"] for f, c in changes.items() if c["changed"]} == want and
         all(changes["/" + f]["backup"] == "/" + f + BAK for f in exp["changed"]) and
         all(changes["/" + f]["backup"] is None and changes["/" + f]["created"] for f in exp["created"]),
         "%s: --json lists each changed file with its backup (none for new files)" % name, p.stdout)

    after = tree(root)
    # The golden files, byte for byte; every other file as it was; a backup for each changed file.
    t.ok(sorted(golden) == sorted(exp["changed"] + exp["created"]),
         "%s: the golden directory holds exactly the files setup should write" % name, sorted(golden))
    bad = [f for f in golden if after.get(f) != golden[f]]
    t.ok(not bad, "%s: resulting files equal expected/%s byte for byte" % (name, name),
         "\n".join("%s:\n%s" % (f, after.get(f, b"(missing)").decode()) for f in bad))
    untouched = [f for f in before if f not in golden and after.get(f) != before[f]]
    extra = sorted(set(after) - set(before) - set(golden) - {f + BAK for f in exp["changed"]})
    t.ok(not untouched and not extra, "%s: no other file changed or appeared" % name,
         "changed: %s\nextra: %s" % (untouched, extra))
    t.ok(all(after.get(f + BAK) == before[f] for f in exp["changed"]) and
         not any(f + BAK in after for f in exp["created"]),
         "%s: a .titan-bak of each changed file equals the original; none for new files" % name)

    # vfio_virqfd in the initramfs configuration only before Linux 6.2.
    init = read(root, exp["initramfs_file"])
    t.ok(("vfio_virqfd" in init) == exp["virqfd"] and "vfio_pci" in init and "vfio_iommu_type1" in init,
         "%s: initramfs configuration has the vfio modules, vfio_virqfd %s" %
         (name, "too (kernel < 6.2)" if exp["virqfd"] else "not (kernel >= 6.2)"), init)

    # Second run: nothing to change, no byte written, no new backup.
    p = setup(root=root)
    t.ok(p.returncode == 0 and "Nothing to change" in p.stdout and tree(root) == after,
         "%s: a second run changes nothing and says so" % name, detail(p))
    p = setup("--json", root=root)
    js2 = json.loads(p.stdout) if p.returncode == 0 else {}
    t.ok(p.returncode == 0 and js2.get("reboot_needed") is False and
         not any(c["changed"] for c in js2.get("changes", [])) and tree(root) == after,
         "%s: a second --json run reports changed:false for every file" % name, detail(p))
    p = setup("--dry-run", root=root)
    t.ok(p.returncode == 0 and p.stdout == "" and "nothing to change" in p.stderr,
         "%s: --dry-run after setup prints no diff" % name, detail(p))

    # --dry-run on a fresh copy: the diff, and nothing written.
    root2 = copy(name + ".dry", name)
    p = setup("--dry-run", root=root2)
    t.ok(p.returncode == 0 and tree(root2) == before, "%s: --dry-run writes nothing" % name, detail(p))
    diff = p.stdout
    headers = re.findall(r"^\+\+\+ b/(.*)$", diff, re.M)
    t.ok(sorted(headers) == sorted(exp["changed"] + exp["created"]) and
         all(("--- /dev/null\n+++ b/%s\n@@ -0,0 +1," % f) in diff for f in exp["created"]) and
         all(("--- a/%s\n+++ b/%s\n@@ -" % (f, f)) in diff for f in exp["changed"]),
         "%s: --dry-run diff has a/ b/ headers for each file (/dev/null for new ones)" % name, diff)
    golden_diff = open(os.path.join(FIX, "expected", name + ".diff")).read()
    t.ok(diff == golden_diff, "%s: --dry-run prints expected/%s.diff (3 lines of context)" % (name, name), diff)
    check_diff_applies(name, name, diff, root2, plain(after))
    p = setup("--dry-run", "--json", root=copy(name + ".dry", name))
    js3 = json.loads(p.stdout) if p.returncode == 0 else {}
    t.ok(p.returncode == 0 and js3.get("dry_run") is True and js3.get("reboot_needed") is True and
         "".join(c.get("diff", "") for c in js3.get("changes", [])) == diff,
         "%s: --dry-run --json carries the same diff per file" % name, detail(p))


for name, exp in DISTROS.items():
    t.run(name, lambda name=name, exp=exp: check_distro(name, exp))


# --- details of the results ---

def check_details():
    # GRUB: the existing parameters stay, in order, inside the same quotes.
    for name, var, quote, old in (("debian", "GRUB_CMDLINE_LINUX_DEFAULT", '"', ["quiet"]),
                                  ("arch-booster", "GRUB_CMDLINE_LINUX_DEFAULT", "'",
                                   ["nowatchdog", "nvme_load=YES",
                                    "resume=UUID=5b1b7d6c-7d2e-4c43-9a1c-0a8f5a2b3c4d", "loglevel=3"])):
        text = read(os.path.join(tmp, name), "etc/default/grub")
        m = re.search(r"^%s=%s([^%s]*)%s$" % (var, quote, quote, quote), text, re.M)
        words = m[1].split() if m else []
        params = ["intel_iommu=on", "iommu=pt"] if DISTROS[name]["cpu"] == "intel" else ["iommu=pt"]
        t.ok(words == old + params, "%s: GRUB keeps %s and adds %s" % (name, " ".join(old), " ".join(params)),
             text)
    # Fedora: GRUB_CMDLINE_LINUX as it was, a new GRUB_CMDLINE_LINUX_DEFAULT; its BLS entry left to grubby.
    fed = os.path.join(tmp, "fedora")
    text = read(fed, "etc/default/grub")
    t.ok('GRUB_CMDLINE_LINUX="rd.luks.uuid=luks-6e1a5f0c-2b9d-4f3e-8a7c-1d2e3f4a5b6c rhgb quiet"\n' in text and
         text.endswith('GRUB_CMDLINE_LINUX_DEFAULT="intel_iommu=on iommu=pt"\n'),
         "fedora: a missing GRUB_CMDLINE_LINUX_DEFAULT line is added", text)
    entry = "boot/loader/entries/6f1c2e3d4b5a69788796a5b4c3d2e1f0-6.6.9-200.fc39.x86_64.conf"
    t.ok(read(fed, entry) == read(os.path.join(FIX, "fedora"), entry),
         "fedora: with GRUB, the BLS entries are not edited (grubby is among the commands)")
    # systemd-boot: each entry's options line gets the parameters, the rest of the entry stays.
    for name, params in (("arch", "intel_iommu=on iommu=pt"), ("ubuntu-systemd-boot", "iommu=pt")):
        root = os.path.join(tmp, name)
        entries = [f for f in DISTROS[name]["changed"] if "/loader/entries/" in f]
        ok = True
        for f in entries:
            old = read(os.path.join(FIX, name), f).splitlines()
            new = read(root, f).splitlines()
            opt = [i for i, line in enumerate(old) if line.startswith("options")]
            ok = ok and len(opt) == 1 and new[opt[0]] == old[opt[0]] + " " + params and \
                all(new[i] == old[i] for i in range(len(old)) if i != opt[0])
        t.ok(ok and len(entries) == 2, "%s: systemd-boot entries' options lines end in %s" % (name, params))
    cmdline = read(os.path.join(tmp, "ubuntu-systemd-boot"), "etc/kernel/cmdline")
    t.ok(cmdline == "root=UUID=8c3e2b41-6a0f-4d8e-9b77-3f1e5c2a9d10 ro quiet splash iommu=pt\n",
         "ubuntu-systemd-boot: /etc/kernel/cmdline gets iommu=pt (AMD: no amd_iommu=on)", cmdline)
    vfio = read(os.path.join(tmp, "debian"), "etc/modprobe.d/vfio.conf")
    t.ok("options vfio-pci ids=10de:17c2,10de:0fb0\n" in vfio and vfio.startswith("# ") and
         "titan host setup" in vfio.splitlines()[0] and
         all("softdep %s pre: vfio-pci\n" % m in vfio for m in ("nvidia", "nouveau", "drm", "snd_hda_intel")),
         "vfio.conf: a titan header, the ids, softdeps for nvidia, nouveau, drm, snd_hda_intel", vfio)
    p = setup(root=copy("text-run", "debian"))
    t.ok(p.returncode == 0 and "update-initramfs -u -k all\n" in p.stdout and "update-grub\n" in p.stdout and
         "reboot" in p.stdout and "backup: /etc/default/grub.titan-bak" in p.stdout and
         "--apply-boot" in p.stdout,
         "text output lists the backups, the commands to run, and says to reboot", detail(p))


t.run("details", check_details)


# --- the kernel version ---

def check_kernel():
    for fixture, kernel, virqfd, rel in (("arch", "5.15.0-91-generic", True, "etc/mkinitcpio.conf"),
                                         ("arch", "6.1.99", True, "etc/mkinitcpio.conf"),
                                         ("debian", "6.2.0", False, "etc/initramfs-tools/modules"),
                                         ("fedora", "5.15.3-100.fc34.x86_64", True,
                                          "etc/dracut.conf.d/10-vfio.conf"),
                                         ("arch-booster", "4.19.0", True, "etc/booster.yaml")):
        root = copy("kernel-" + fixture, fixture)
        p = setup("--kernel", kernel, root=root)
        text = read(root, rel)
        t.ok(p.returncode == 0 and ("vfio_virqfd" in text) == virqfd,
             "--kernel %s on %s: vfio_virqfd %s" % (kernel, fixture, "added" if virqfd else "left out"),
             detail(p) + "\n" + text)
    text = read(os.path.join(tmp, "kernel-arch"), "etc/mkinitcpio.conf")
    t.ok("\nMODULES=(vfio_pci vfio vfio_iommu_type1 vfio_virqfd btrfs)\n" in text,
         "mkinitcpio: vfio_pci vfio vfio_iommu_type1 vfio_virqfd, in that order, before btrfs", text)
    root = copy("kernel-none", "arch")
    os.remove(os.path.join(root, "proc/sys/kernel/osrelease"))
    p = setup(root=root)
    t.ok(p.returncode == 1 and "osrelease" in p.stderr and "--kernel" in p.stderr,
         "an unreadable kernel version: exit 1 and a hint to pass --kernel", detail(p))
    p = setup("--kernel", "6.6.10", root=root)
    t.ok(p.returncode == 0, "--kernel replaces /proc/sys/kernel/osrelease", detail(p))


t.run("kernel", check_kernel)


# --- edge cases of each file format: (fixture, file, its text, --kernel, the text setup must leave) ---

MODS = "vfio_pci vfio vfio_iommu_type1"
EDGES = [
    ("mkinitcpio old quoting MODULES=\"...\"", "arch", "etc/mkinitcpio.conf",
     'MODULES="btrfs"\nHOOKS="base udev modconf block filesystems"\n',
     'MODULES="%s btrfs"\nHOOKS="base udev modconf block filesystems"\n' % MODS),
    ("mkinitcpio empty MODULES=()", "arch", "etc/mkinitcpio.conf",
     "MODULES=()\nHOOKS=(base modconf)\n", "MODULES=(%s)\nHOOKS=(base modconf)\n" % MODS),
    ("mkinitcpio: modules already there are not repeated", "arch", "etc/mkinitcpio.conf",
     "MODULES=(vfio-pci btrfs vfio)\nHOOKS=(base modconf)\n",
     "MODULES=(vfio_iommu_type1 vfio-pci btrfs vfio)\nHOOKS=(base modconf)\n"),
    ("mkinitcpio: an array over several lines with a comment", "arch", "etc/mkinitcpio.conf",
     "MODULES=(\n    # root file system\n    btrfs\n    nvme\n)\nHOOKS=(base modconf)\n",
     "MODULES=(\n    # root file system\n    %s btrfs\n    nvme\n)\nHOOKS=(base modconf)\n" % MODS),
    ("mkinitcpio: the last assignment counts, comments do not", "arch", "etc/mkinitcpio.conf",
     "MODULES=(ext4)\n#MODULES=(usbhid)\nMODULES=(btrfs)\nHOOKS=(base modconf)\n",
     "MODULES=(ext4)\n#MODULES=(usbhid)\nMODULES=(%s btrfs)\nHOOKS=(base modconf)\n" % MODS),
    ("mkinitcpio without MODULES and without a final newline", "arch", "etc/mkinitcpio.conf",
     "HOOKS=(base modconf)", "HOOKS=(base modconf)\nMODULES=(%s)\n" % MODS),
    ("booster without modules_force_load", "arch-booster", "etc/booster.yaml",
     "compression: zstd\n", "compression: zstd\nmodules_force_load: vfio_pci,vfio,vfio_iommu_type1\n"),
    ("booster: present modules (vfio-pci) are not repeated, a comment stays", "arch-booster", "etc/booster.yaml",
     "modules_force_load: vfio-pci, nvme # early\n",
     "modules_force_load: vfio,vfio_iommu_type1,vfio-pci, nvme # early\n"),
    ("initramfs-tools: present modules are kept, the others appended after a final line without newline",
     "debian", "etc/initramfs-tools/modules", "# modules\nvfio\nnvme",
     "# modules\nvfio\nnvme\nvfio_pci\nvfio_iommu_type1\nvfio_virqfd\n"),
    ("GRUB: an unquoted value is quoted", "debian", "etc/default/grub",
     "GRUB_CMDLINE_LINUX_DEFAULT=quiet\nGRUB_CMDLINE_LINUX=\n",
     'GRUB_CMDLINE_LINUX_DEFAULT="quiet intel_iommu=on iommu=pt"\nGRUB_CMDLINE_LINUX=\n'),
    ("GRUB: an empty value", "debian", "etc/default/grub",
     'GRUB_CMDLINE_LINUX_DEFAULT=""\n', 'GRUB_CMDLINE_LINUX_DEFAULT="intel_iommu=on iommu=pt"\n'),
    ("GRUB: a conflicting iommu=soft is replaced, intel_iommu=on,sm_on counts", "debian", "etc/default/grub",
     'GRUB_CMDLINE_LINUX_DEFAULT="quiet iommu=soft splash"\nGRUB_CMDLINE_LINUX="intel_iommu=on,sm_on"\n',
     'GRUB_CMDLINE_LINUX_DEFAULT="quiet iommu=pt splash"\nGRUB_CMDLINE_LINUX="intel_iommu=on,sm_on"\n'),
    ("GRUB: a missing line is added after a final line without newline", "debian", "etc/default/grub",
     "GRUB_TIMEOUT=5", 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT="intel_iommu=on iommu=pt"\n'),
    ("GRUB: a commented line is not the setting", "debian", "etc/default/grub",
     '#GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX_DEFAULT="quiet splash"\n',
     '#GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX_DEFAULT="quiet splash intel_iommu=on iommu=pt"\n'),
    ("kernel/cmdline without a final newline", "ubuntu-systemd-boot", "etc/kernel/cmdline",
     "root=/dev/nvme0n1p2 rw", "root=/dev/nvme0n1p2 rw iommu=pt\n"),
    ("systemd-boot entry without an options line", "arch", "boot/loader/entries/arch.conf",
     "title Arch\nlinux /vmlinuz-linux\n", "title Arch\nlinux /vmlinuz-linux\noptions intel_iommu=on iommu=pt\n"),
    ("systemd-boot entry with two options lines: parameters on the last, none repeated", "arch",
     "boot/loader/entries/arch.conf", "title Arch\noptions root=/dev/sda2 iommu=pt\noptions\trw quiet\n",
     "title Arch\noptions root=/dev/sda2 iommu=pt\noptions\trw quiet intel_iommu=on\n"),
]


def check_edges():
    for i, (what, fixture, rel, text, want) in enumerate(EDGES):
        root = copy("edge%d" % i, fixture)
        write(root, rel, text)
        dry = copy("edge%d.dry" % i, fixture)
        write(dry, rel, text)
        p = setup(root=root)
        got = read(root, rel)
        t.ok(p.returncode == 0 and got == want and read(root, rel + BAK) == text, what,
             detail(p) + "\ngot:\n" + got + "\nwant:\n" + want)
        d = setup("--dry-run", root=dry)
        check_diff_applies(what + ": --dry-run", fixture, d.stdout, dry, plain(tree(root)))
        p = setup(root=root)
        t.ok(p.returncode == 0 and read(root, rel) == want and "Nothing to change" in p.stdout,
             what + ": second run changes nothing", detail(p))
    # A file that already has everything is not rewritten, and gets no backup.
    root = copy("edge-done", "debian")
    text = 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="iommu=pt intel_iommu=on"\n'
    write(root, "etc/default/grub", text)
    p = setup(root=root)
    t.ok(p.returncode == 0 and read(root, "etc/default/grub") == text and
         not os.path.exists(os.path.join(root, "etc/default/grub" + BAK)),
         "GRUB: parameters already in GRUB_CMDLINE_LINUX: file untouched, no backup", detail(p))
    # initramfs-tools/modules missing: created, no backup.
    root = copy("edge-nomodules", "debian")
    os.remove(os.path.join(root, "etc/initramfs-tools/modules"))
    p = setup(root=root)
    t.ok(p.returncode == 0 and read(root, "etc/initramfs-tools/modules") ==
         "vfio_pci\nvfio\nvfio_iommu_type1\nvfio_virqfd\n" and
         not os.path.exists(os.path.join(root, "etc/initramfs-tools/modules" + BAK)),
         "initramfs-tools: a missing modules file is created", detail(p))
    # The first backup is kept: a later change does not overwrite it.
    root = copy("edge-backup", "debian")
    original = read(root, "etc/default/grub")
    setup(root=root)
    grub = read(root, "etc/default/grub").replace(" iommu=pt", "")
    write(root, "etc/default/grub", grub)
    p = setup(root=root)
    t.ok(p.returncode == 0 and "iommu=pt" in read(root, "etc/default/grub") and
         read(root, "etc/default/grub" + BAK) == original and "kept from an earlier run" in p.stdout,
         "an existing .titan-bak is never overwritten (it keeps the original)", detail(p))
    # Another --gpu: vfio.conf rewritten (its earlier version backed up), ids lower-cased and deduplicated.
    p = setup(root=root, gpu="10DE:13C0,10de:0fbb,10de:13c0")
    vfio = read(root, "etc/modprobe.d/vfio.conf")
    t.ok(p.returncode == 0 and "options vfio-pci ids=10de:13c0,10de:0fbb\n" in vfio and
         "ids=10de:17c2,10de:0fb0" in read(root, "etc/modprobe.d/vfio.conf" + BAK),
         "another --gpu rewrites vfio.conf (ids lower-cased, once each)", detail(p) + vfio)
    # Booster is configured instead of mkinitcpio when /etc/booster.yaml exists; HOOKS without modconf warns.
    root = copy("edge-hooks", "arch")
    write(root, "etc/mkinitcpio.conf", "MODULES=()\nHOOKS=(base udev block filesystems)\n")
    p = setup("--json", root=root)
    js = json.loads(p.stdout) if p.returncode == 0 else {}
    t.ok(p.returncode == 0 and any("modconf" in w for w in js.get("warnings", [])),
         "mkinitcpio: HOOKS without modconf gets a warning", detail(p))
    # Another file giving vfio-pci ids: a warning naming it.
    root = copy("edge-otherids", "debian")
    write(root, "etc/modprobe.d/gpu.conf", "options vfio_pci ids=10de:1b80\n")
    p = setup("--json", root=root)
    js = json.loads(p.stdout) if p.returncode == 0 else {}
    t.ok(p.returncode == 0 and any("gpu.conf" in w for w in js.get("warnings", [])),
         "another modprobe.d file with vfio-pci ids gets a warning", detail(p))
    # GRUB beside an installed systemd-boot (a loader.conf): both get the parameters; so does
    # /etc/kernel/cmdline whenever it exists. A grub.d drop-in that sets the command line gets a warning.
    root = copy("edge-both", "debian")
    entry = "boot/efi/loader/entries/debian.conf"
    write(root, "boot/efi/loader/loader.conf", "timeout 3\n")
    write(root, entry, "title Debian\nlinux /vmlinuz\noptions root=/dev/sda2 ro quiet\n")
    write(root, "etc/kernel/cmdline", "root=/dev/sda2 ro quiet\n")
    write(root, "etc/default/grub.d/50-cloudimg-settings.cfg", 'GRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0"\n')
    p = setup("--json", root=root)
    js = json.loads(p.stdout) if p.returncode == 0 else {}
    t.ok(p.returncode == 0 and js.get("bootloader") == "grub+systemd-boot" and
         read(root, entry).endswith("options root=/dev/sda2 ro quiet intel_iommu=on iommu=pt\n") and
         read(root, "etc/kernel/cmdline") == "root=/dev/sda2 ro quiet intel_iommu=on iommu=pt\n" and
         "intel_iommu=on iommu=pt" in read(root, "etc/default/grub"),
         "GRUB and a systemd-boot loader.conf: GRUB, the entries and /etc/kernel/cmdline all edited", detail(p))
    t.ok(any("50-cloudimg-settings.cfg" in w for w in js.get("warnings", [])),
         "a grub.d drop-in setting GRUB_CMDLINE_LINUX_DEFAULT gets a warning", detail(p))
    # --distro overrides os-release.
    root = copy("edge-distro", "debian")
    p = setup("--distro", "fedora", "--json", root=root)
    js = json.loads(p.stdout) if p.returncode == 0 else {}
    t.ok(p.returncode == 0 and js.get("initramfs") == "dracut" and
         os.path.exists(os.path.join(root, "etc/dracut.conf.d/10-vfio.conf")),
         "--distro fedora on a Debian tree configures dracut", detail(p))


t.run("edges", check_edges)


# --- usage errors (exit 2) and failures (exit 1) ---

def check_errors():
    root = copy("errors", "debian")
    before = tree(root)
    for gpu in ("10de:17c", "10de-17c2", "zzzz:17c2", "10de:17c2,", "", "10de:17c2,,10de:0fb0", "10de:17c2x",
                "0x10de:17c2"):
        p = setup(root=root, gpu=gpu)
        t.ok(p.returncode == 2 and "--gpu" in p.stderr and tree(root) == before,
             "bad --gpu %r: exit 2, nothing written" % gpu, detail(p))
    p = setup(root=root, gpu=None)
    t.ok(p.returncode == 2 and "--gpu" in p.stderr and tree(root) == before, "missing --gpu: exit 2", detail(p))
    p = setup("--apply-boot", root=root)
    t.ok(p.returncode == 2 and "--apply-boot" in p.stderr and "--sysroot" in p.stderr and tree(root) == before,
         "--apply-boot with --sysroot: exit 2, nothing written or run", detail(p))
    p = setup("--apply-boot", "--dry-run", root=root)
    t.ok(p.returncode == 2 and tree(root) == before, "--apply-boot with --dry-run: exit 2", detail(p))
    for args in (["--distro", "gentoo"], ["--kernel", "six"], ["--frobnicate"], ["--distro"]):
        p = setup(*args, root=root)
        t.ok(p.returncode == 2 and tree(root) == before, "%s: exit 2" % " ".join(args), detail(p))
    p = setup(root=os.path.join(root, "no-such-dir"))
    t.ok(p.returncode == 2 and "--sysroot" in p.stderr, "a --sysroot that is not a directory: exit 2", detail(p))
    p = subprocess.run([TITAN, "host", "setup", "--help"], capture_output=True, text=True)
    t.ok(p.returncode == 0 and "setup --gpu" in p.stdout, "titan host setup --help: exit 0 with the usage",
         detail(p))

    # Unknown distribution: exit 1 with the hint; --distro gets past it.
    root = copy("unknown")
    before = tree(root)
    p = setup(root=root)
    t.ok(p.returncode == 1 and "--distro" in p.stderr and "void" in p.stderr and tree(root) == before,
         "unknown distribution: exit 1, a hint to pass --distro, nothing written", detail(p))
    p = setup("--json", root=root)
    js = json.loads(p.stdout) if p.stdout.strip() else {}
    t.ok(p.returncode == 1 and "--distro" in js.get("error", "") and js.get("exit") == 1,
         "unknown distribution, --json: one JSON error object", detail(p))
    p = setup("--distro", "arch", root=root)
    t.ok(p.returncode == 1 and "/etc/mkinitcpio.conf does not exist" in p.stderr and tree(root) == before,
         "--distro arch without /etc/mkinitcpio.conf: exit 1 naming it", detail(p))
    p = setup("--distro", "debian", "--json", root=root)
    js = json.loads(p.stdout) if p.returncode == 0 else {}
    t.ok(p.returncode == 0 and js.get("bootloader") == "none" and
         any("kernel command line yourself" in w for w in js.get("warnings", [])),
         "no boot loader configuration: the rest is done, with a warning to add the parameters by hand",
         detail(p))

    # A file that cannot be read: exit 1 naming it, nothing written.
    root = copy("unreadable", "debian")
    shutil.rmtree(os.path.join(root, "etc/modprobe.d"))
    write(root, "etc/modprobe.d.tmp", "not a directory\n")
    os.rename(os.path.join(root, "etc/modprobe.d.tmp"), os.path.join(root, "etc/modprobe.d"))
    before = tree(root)
    p = setup(root=root)
    t.ok(p.returncode == 1 and "cannot read " + os.path.join(root, "etc/modprobe.d/vfio.conf") in p.stderr and
         tree(root) == before, "an unreadable file: exit 1 naming it, nothing written", detail(p))

    # A file that cannot be written (EACCES as an unprivileged user): exit 1 naming it, "run as root".
    root = copy("unwritable", "debian")
    original = read(root, "etc/default/grub")
    user = None
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            t.ok(False, "an unwritable file: setpriv(1) is there to drop root (util-linux)")
            return
        user = 65534  # nobody: owns the copy except /etc/default, so the other files can be written
        os.chmod(tmp, 0o755)
        for d, dirs, files in os.walk(root):
            for f in dirs + files:
                os.chown(os.path.join(d, f), user, user)
        os.chown(root, user, user)
        os.chown(os.path.join(root, "etc/default"), 0, 0)
    os.chmod(os.path.join(root, "etc/default"), 0o555)
    p = setup(root=root, user=user)
    os.chmod(os.path.join(root, "etc/default"), 0o755)
    grub = os.path.join(root, "etc/default/grub")
    t.ok(p.returncode == 1 and grub in p.stderr and "run as root" in p.stderr and
         "already written: /etc/modprobe.d/vfio.conf" in p.stderr and read(root, "etc/default/grub") == original,
         "an unwritable file: exit 1 naming it, a hint to run as root, what was already written", detail(p))


t.run("errors", check_errors)

t.ok(not sanitizer_reports, "no sanitizer reports", "\n".join(sanitizer_reports))
shutil.rmtree(tmp, ignore_errors=True)
sys.exit(t.done())
