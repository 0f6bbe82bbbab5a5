/* host_check.c - `titan host check`: each VFIO passthrough prerequisite of this host, as ok, warn or fail. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "pci.h"
#include "sysroot.h"

#define S_MAX_LIST 32             /* --gpu and --address items at most */
#define S_MAX_CPUINFO (16u << 20) /* /proc/cpuinfo of a few hundred cores fits */
#define S_MAX_CMDLINE (64u << 10)
#define S_MAX_BUILTIN (4u << 20) /* modules.builtin */

typedef enum { S_OK, S_WARN, S_FAIL } s_status;
static const char *const s_status_word[] = {"ok", "warn", "fail"};
static const char *const s_status_col[] = {"ok", "WARN", "FAIL"};

typedef struct {
    s_status st;
    char *id, *what, *msg, *hint;   /* malloc'd; msg/hint NULL when absent (or out of memory) */
    char addr[TITAN_PCI_ADDR_SIZE]; /* the function it is about, "" none */
    int group;                      /* the IOMMU group it is about, -1 none */
} s_finding;

typedef struct {
    int group;
    titan_pci_fn *m; /* members, sorted by address */
    size_t n;
} s_group;

typedef enum { S_CPU_UNKNOWN, S_CPU_INTEL, S_CPU_AMD } s_cpu;

typedef struct {
    titan_sysroot sr;
    const char *sysroot; /* as given, NULL for / */
    titan_pci_names *names;
    titan_pci_fn *fns; /* every function of /sys/bus/pci/devices */
    size_t nfns;
    bool *target; /* target[i]: fns[i] is a target */
    size_t ntargets;
    const char *source; /* how the targets were chosen: "auto", "gpu", "address" */
    s_group *groups;    /* the targets' IOMMU groups */
    size_t ngroups;
    s_cpu cpu;
    char *cmdline; /* /proc/cmdline, NULL when unreadable */
    size_t iommu_groups;
    s_finding *f;
    size_t nf, capf;
    bool lost; /* the last s_add found no memory: s_hint and s_about must not touch the one before */
} s_check;

/* The requested targets. */
typedef struct {
    unsigned ids[S_MAX_LIST][2];
    size_t nids;
    char addrs[S_MAX_LIST][TITAN_PCI_ADDR_SIZE];
    size_t naddrs;
} s_want;

static char *s_vfmt(const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    return s;
}

/* Appends a finding; the next calls of s_hint and s_about refine it. */
__attribute__((format(printf, 5, 6))) static void s_add(s_check *c, s_status st, const char *id,
                                                        const char *what, const char *fmt, ...)
{
    c->lost = false;
    if (c->nf == c->capf) {
        size_t cap = c->capf ? c->capf * 2 : 32;
        s_finding *nv = realloc(c->f, cap * sizeof(*nv));
        c->lost = !nv;
        if (!nv) return; /* out of memory: the finding is lost, and the report says less */
        c->f = nv;
        c->capf = cap;
    }
    s_finding *f = &c->f[c->nf++];
    memset(f, 0, sizeof(*f));
    f->st = st;
    f->id = strdup(id);
    f->what = strdup(what);
    f->group = -1;
    va_list ap;
    va_start(ap, fmt);
    f->msg = s_vfmt(fmt, ap);
    va_end(ap);
}

__attribute__((format(printf, 2, 3))) static void s_hint(s_check *c, const char *fmt, ...)
{
    if (!c->nf || c->lost) return;
    s_finding *f = &c->f[c->nf - 1];
    va_list ap;
    va_start(ap, fmt);
    free(f->hint);
    f->hint = s_vfmt(fmt, ap);
    va_end(ap);
}

static void s_about(s_check *c, const char *addr, int group)
{
    if (!c->nf || c->lost) return;
    s_finding *f = &c->f[c->nf - 1];
    if (addr) snprintf(f->addr, sizeof(f->addr), "%s", addr);
    f->group = group;
}

/* A growing string for lists in messages. */
typedef struct {
    char *s;
    size_t len, cap;
} s_buf;

__attribute__((format(printf, 2, 3))) static void s_cat(s_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *t = s_vfmt(fmt, ap);
    va_end(ap);
    if (!t) return;
    size_t n = strlen(t);
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *ns = realloc(b->s, cap);
        if (!ns) {
            free(t);
            return;
        }
        b->s = ns;
        b->cap = cap;
    }
    memcpy(b->s + b->len, t, n + 1);
    b->len += n;
    free(t);
}

static const char *s_str(const s_buf *b)
{
    return b->s ? b->s : "";
}

/* True when `word` is one of the whitespace-separated words of `list`. */
static bool s_has_word(const char *list, const char *word)
{
    size_t wl = strlen(word);
    for (const char *p = list; *p;) {
        p += strspn(p, " \t\n");
        size_t n = strcspn(p, " \t\n");
        if (n == wl && strncmp(p, word, n) == 0) return true;
        p += n;
    }
    return false;
}

/* True when `opt` is one of the comma-separated options of `value`. */
static bool s_has_opt(const char *value, const char *opt)
{
    size_t ol = strlen(opt);
    for (const char *p = value; *p;) {
        size_t n = strcspn(p, ",");
        if (n == ol && strncmp(p, opt, n) == 0) return true;
        p += n;
        if (*p == ',') p++;
    }
    return false;
}

/* The value of the last `key=VALUE` of the kernel command line (the kernel applies them in order) into
 * out[cap]. Returns true when there is one. */
static bool s_param(const s_check *c, const char *key, char *out, size_t cap)
{
    bool found = false;
    size_t kl = strlen(key);
    if (!c->cmdline) return false;
    for (const char *p = c->cmdline; *p;) {
        p += strspn(p, " \t\n");
        size_t n = strcspn(p, " \t\n");
        if (n > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
            size_t vl = n - kl - 1;
            if (vl >= cap) vl = cap - 1;
            memcpy(out, p + kl + 1, vl);
            out[vl] = '\0';
            found = true;
        }
        p += n;
    }
    return found;
}

static void s_name(s_check *c, const titan_pci_fn *fn, char *out, size_t cap)
{
    titan_pci_names_device(c->names, fn, out, cap);
}

/* "0000:65:00.0 NVIDIA Corporation GM200 [GeForce GTX TITAN X]", or with the ids when there is no name. */
static void s_label(s_check *c, const titan_pci_fn *fn, char *out, size_t cap)
{
    char name[256];
    s_name(c, fn, name, sizeof(name));
    if (name[0])
        snprintf(out, cap, "%s %s", fn->addr, name);
    else
        snprintf(out, cap, "%s [%04x:%04x]", fn->addr, fn->vendor, fn->device);
}

static bool s_is_target_group(const s_check *c, int group)
{
    for (size_t i = 0; i < c->ngroups; i++)
        if (c->groups[i].group == group) return true;
    return false;
}

/* --- host-wide checks --- */

static void s_check_cpu(s_check *c)
{
    char *info = NULL;
    int rc = titan_sysroot_slurp(&c->sr, "/proc/cpuinfo", S_MAX_CPUINFO, &info, NULL);
    if (rc) {
        s_add(c, S_WARN, "cpu.virt", "CPU virtualization", "cannot read /proc/cpuinfo: %s", strerror(-rc));
        return;
    }
    bool vmx = false, svm = false;
    bool flags_seen = false;
    for (char *line = info; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        char *colon = strchr(line, ':');
        if (colon) {
            size_t kl = strcspn(line, " \t:");
            if (c->cpu == S_CPU_UNKNOWN && kl == 9 && strncmp(line, "vendor_id", 9) == 0) {
                if (strstr(colon, "GenuineIntel")) c->cpu = S_CPU_INTEL;
                if (strstr(colon, "AuthenticAMD") || strstr(colon, "HygonGenuine")) c->cpu = S_CPU_AMD;
            }
            if (!flags_seen && kl == 5 && strncmp(line, "flags", 5) == 0) {
                flags_seen = true;
                vmx = s_has_word(colon + 1, "vmx");
                svm = s_has_word(colon + 1, "svm");
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    free(info);
    if (c->cpu == S_CPU_UNKNOWN) c->cpu = vmx ? S_CPU_INTEL : svm ? S_CPU_AMD : S_CPU_UNKNOWN;
    if (vmx || svm) {
        s_add(c, S_OK, "cpu.virt", "CPU virtualization", "%s",
              vmx ? "Intel VT-x (vmx flag)" : "AMD-V (svm flag)");
        return;
    }
    s_add(c, S_FAIL, "cpu.virt", "CPU virtualization", "no vmx or svm flag in /proc/cpuinfo%s",
          flags_seen ? "" : " (no flags line at all)");
    s_hint(
        c,
        "enable Intel Virtualization Technology (VT-x) or AMD SVM Mode in the firmware setup; inside a VM, "
        "give it nested virtualization");
}

static void s_check_acpi(s_check *c)
{
    bool dmar = titan_sysroot_exists(&c->sr, "/sys/firmware/acpi/tables/DMAR");
    bool ivrs = titan_sysroot_exists(&c->sr, "/sys/firmware/acpi/tables/IVRS");
    if (c->cpu == S_CPU_UNKNOWN) c->cpu = dmar ? S_CPU_INTEL : ivrs ? S_CPU_AMD : S_CPU_UNKNOWN;
    if (dmar || ivrs) {
        s_add(c, S_OK, "iommu.acpi", "ACPI IOMMU table", "%s%s%s", dmar ? "DMAR (Intel VT-d)" : "",
              dmar && ivrs ? ", " : "", ivrs ? "IVRS (AMD-Vi)" : "");
        return;
    }
    if (c->iommu_groups) {
        s_add(c, S_WARN, "iommu.acpi", "ACPI IOMMU table",
              "no DMAR or IVRS table in /sys/firmware/acpi/tables, yet the kernel has IOMMU groups");
        return;
    }
    s_add(c, S_FAIL, "iommu.acpi", "ACPI IOMMU table", "no DMAR or IVRS table in /sys/firmware/acpi/tables");
    s_hint(c, "enable %s in the firmware setup (the firmware then publishes the table)",
           c->cpu == S_CPU_AMD     ? "IOMMU (AMD-Vi; often under AMD CBS > NBIO)"
           : c->cpu == S_CPU_INTEL ? "VT-d (Intel Virtualization Technology for Directed I/O)"
                                   : "VT-d (Intel) or IOMMU / AMD-Vi (AMD)");
}

static const char *s_boot_hint(const s_check *c)
{
    return c->cpu == S_CPU_AMD
               ? "enable the IOMMU (AMD-Vi) in the firmware, remove amd_iommu=off from the kernel "
                 "command line if it is there, and reboot"
               : "add intel_iommu=on iommu=pt to the kernel command line (`titan host setup "
                 "--apply-boot` does it), enable VT-d in the firmware, and reboot";
}

static void s_check_groups(s_check *c)
{
    if (c->iommu_groups) {
        s_add(c, S_OK, "iommu.groups", "IOMMU groups",
              "%zu groups in /sys/kernel/iommu_groups: the IOMMU is on", c->iommu_groups);
        return;
    }
    s_add(c, S_FAIL, "iommu.groups", "IOMMU groups", "/sys/kernel/iommu_groups is empty: the IOMMU is off");
    s_hint(c, "%s", s_boot_hint(c));
}

static void s_check_cmdline(s_check *c)
{
    const char *what = "kernel command line: IOMMU";
    char v[128];
    if (!c->cmdline) {
        s_add(c, S_WARN, "cmdline.iommu", what, "cannot read /proc/cmdline");
        s_add(c, S_WARN, "cmdline.iommu_pt", "kernel command line: iommu=pt", "cannot read /proc/cmdline");
        return;
    }
    if (s_param(c, "iommu", v, sizeof(v)) && s_has_opt(v, "off")) {
        s_add(c, S_FAIL, "cmdline.iommu", what, "iommu=off turns every IOMMU off");
        s_hint(c, "remove iommu=off from the kernel command line and reboot");
    } else if (c->cpu == S_CPU_AMD) {
        if (s_param(c, "amd_iommu", v, sizeof(v)) && s_has_opt(v, "off")) {
            s_add(c, S_WARN, "cmdline.iommu", what, "amd_iommu=off turns the AMD IOMMU off");
            s_hint(c, "remove amd_iommu=off from the kernel command line and reboot");
        } else {
            s_add(c, S_OK, "cmdline.iommu", what, "the AMD IOMMU is on by default (no amd_iommu=off)");
        }
    } else if (c->cpu == S_CPU_INTEL) {
        bool set = s_param(c, "intel_iommu", v, sizeof(v));
        if (set && s_has_opt(v, "off")) {
            s_add(c, S_FAIL, "cmdline.iommu", what, "intel_iommu=off turns the Intel IOMMU off");
            s_hint(c, "replace intel_iommu=off by intel_iommu=on on the kernel command line and reboot");
        } else if (set && s_has_opt(v, "on")) {
            s_add(c, S_OK, "cmdline.iommu", what, "intel_iommu=%s", v);
        } else if (c->iommu_groups) {
            s_add(c, S_WARN, "cmdline.iommu", what,
                  "no intel_iommu=on, but this kernel turned the IOMMU on by default");
            s_hint(c,
                   "add intel_iommu=on so that it stays on with kernels built otherwise (`titan host setup "
                   "--apply-boot`)");
        } else {
            s_add(c, S_FAIL, "cmdline.iommu", what, "no intel_iommu=on, and the IOMMU is off");
            s_hint(c, "%s", s_boot_hint(c));
        }
    } else {
        s_add(c, S_WARN, "cmdline.iommu", what,
              "unknown CPU vendor: cannot tell which IOMMU parameter applies");
    }

    bool pt = (s_param(c, "iommu", v, sizeof(v)) && s_has_opt(v, "pt")) ||
              (s_param(c, "iommu.passthrough", v, sizeof(v)) && (strcmp(v, "1") == 0 || strcmp(v, "y") == 0));
    if (pt) {
        s_add(c, S_OK, "cmdline.iommu_pt", "kernel command line: iommu=pt",
              "passthrough mode: the host's own devices skip IOMMU translation");
    } else {
        s_add(c, S_WARN, "cmdline.iommu_pt", "kernel command line: iommu=pt",
              "no iommu=pt: every host device's DMA goes through IOMMU translation (slower)");
        s_hint(c, "add iommu=pt to the kernel command line (`titan host setup --apply-boot`) and reboot");
    }
}

/* True when /proc/interrupts names a remapping interrupt chip ("IR-IO-APIC", "IR-PCI-MSI-0000:00:14.0"): the
 * kernel routes interrupts through the IOMMU's remapping table, on Intel and AMD alike. */
static bool s_ir_chips(s_check *c)
{
    char *text = NULL;
    if (titan_sysroot_slurp(&c->sr, "/proc/interrupts", S_MAX_CPUINFO, &text, NULL) != 0) return false;
    bool found = false;
    for (const char *p = text; (p = strstr(p, "IR-")) && !found; p += 3)
        found = (p == text || p[-1] == ' ') &&
                (strncmp(p + 3, "IO-APIC", 7) == 0 || strncmp(p + 3, "PCI-MSI", 7) == 0);
    free(text);
    return found;
}

/* Interrupt remapping: vfio_iommu_type1 refuses devices without it unless allow_unsafe_interrupts=Y. */
static void s_check_irq_remap(s_check *c)
{
    const char *id = "iommu.irq_remap", *what = "interrupt remapping";
    char unsafe[8] = "", v[64];
    bool unsafe_y =
        titan_sysroot_read(&c->sr, "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", unsafe,
                           sizeof(unsafe), true) >= 0 &&
        (unsafe[0] == 'Y' || unsafe[0] == 'y' || unsafe[0] == '1');
    char **units = NULL;
    size_t nunits = 0, dmar = 0, ivhd = 0, with_ir = 0, unreadable = 0;
    s_buf lacking = {0};
    if (titan_sysroot_list(&c->sr, "/sys/class/iommu", &units, &nunits) != 0) nunits = 0;
    for (size_t i = 0; i < nunits; i++) {
        if (strncmp(units[i], "ivhd", 4) == 0) ivhd++;
        if (strncmp(units[i], "dmar", 4) != 0) continue;
        dmar++;
        char path[300], buf[64];
        snprintf(path, sizeof(path), "/sys/class/iommu/%s/intel-iommu/ecap", units[i]);
        char *end = NULL;
        unsigned long long ecap = 0;
        bool ok = titan_sysroot_read(&c->sr, path, buf, sizeof(buf), true) > 0;
        if (ok) {
            errno = 0;
            ecap = strtoull(buf, &end, 16);
            ok = errno == 0 && end != buf && *end == '\0';
        }
        if (!ok)
            unreadable++;
        else if (ecap & (1ull << 3)) /* ECAP.IR */
            with_ir++;
        else
            s_cat(&lacking, "%s%s", lacking.len ? ", " : "", units[i]);
    }
    titan_sysroot_free_list(units, nunits);

    bool off = s_param(c, "intremap", v, sizeof(v)) && s_has_opt(v, "off");
    int known; /* 1 on, 0 off, -1 unknown */
    char why[256];
    if (off) {
        known = 0;
        snprintf(why, sizeof(why), "intremap=off on the kernel command line turns it off");
    } else if (dmar && lacking.len) {
        known = 0;
        snprintf(why, sizeof(why), "not supported by %s (ecap bit 3 clear)", s_str(&lacking));
    } else if (dmar && !unreadable) {
        known = 1;
        snprintf(why, sizeof(why), "supported by the %zu DMAR unit%s (ecap bit 3)", dmar,
                 dmar == 1 ? "" : "s");
    } else if (s_ir_chips(c)) {
        known = 1;
        snprintf(why, sizeof(why),
                 "on: /proc/interrupts shows remapped interrupt chips (IR-IO-APIC, IR-PCI-MSI)");
    } else if (dmar) {
        known = -1;
        snprintf(why, sizeof(why), "cannot read the ecap of %zu DMAR unit%s", unreadable,
                 unreadable == 1 ? "" : "s");
    } else if (ivhd) {
        known = -1;
        snprintf(why, sizeof(why),
                 "not shown by the kernel for AMD-Vi (AMD IOMMUs remap interrupts unless the "
                 "firmware turns it off)");
    } else {
        known = -1;
        snprintf(why, sizeof(why), "unknown: no IOMMU unit in /sys/class/iommu");
    }
    free(lacking.s);
    if (known == 1) {
        s_add(c, S_OK, id, what, "%s", why);
    } else if (known == 0 && unsafe_y) {
        s_add(c, S_WARN, id, what,
              "%s; vfio_iommu_type1 allow_unsafe_interrupts=Y lets VFIO go on without it", why);
        s_hint(c,
               "without remapping a VM can forge interrupts to the host: pass devices only to trusted VMs");
    } else if (known == 0) {
        s_add(c, S_FAIL, id, what, "%s: VFIO refuses to assign devices", why);
        s_hint(
            c,
            "enable interrupt remapping (x2APIC, VT-d) in the firmware and drop intremap=off; or, trusting "
            "the VM, set `options vfio_iommu_type1 allow_unsafe_interrupts=1`");
    } else {
        s_add(c, S_WARN, id, what, "%s%s", why,
              unsafe_y ? "; allow_unsafe_interrupts=Y would let VFIO go on without it" : "");
        s_hint(c,
               "if VFIO says \"No interrupt remapping support\", check x2APIC and the IOMMU in the firmware "
               "(dmesg | grep -i remapping shows what the kernel found)");
    }
}

/* True when `name` (vfio_pci) is listed in /lib/modules/RELEASE/modules.builtin (vfio-pci.ko). */
static bool s_builtin(s_check *c, const char *release, const char *name)
{
    char path[256], *text = NULL;
    if (!release[0] || strchr(release, '/')) return false;
    snprintf(path, sizeof(path), "/lib/modules/%s/modules.builtin", release);
    if (titan_sysroot_slurp(&c->sr, path, S_MAX_BUILTIN, &text, NULL) != 0) return false;
    bool found = false;
    for (char *line = text; line && *line && !found;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        char *base = strrchr(line, '/');
        base = base ? base + 1 : line;
        size_t n = strlen(base);
        if (n > 3 && strcmp(base + n - 3, ".ko") == 0 && n - 3 == strlen(name)) {
            found = true;
            for (size_t i = 0; i < n - 3 && found; i++)
                found = (base[i] == '-' ? '_' : base[i]) == name[i];
        }
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    return found;
}

static void s_check_modules(s_check *c)
{
    const char *what = "vfio modules";
    char release[128] = "";
    int major = -1, minor = -1;
    if (titan_sysroot_read(&c->sr, "/proc/sys/kernel/osrelease", release, sizeof(release), true) < 0 ||
        sscanf(release, "%d.%d", &major, &minor) != 2)
        major = minor = -1;
    /* vfio_virqfd was its own module until Linux 6.2 folded it into vfio. */
    bool old = major >= 0 && (major < 6 || (major == 6 && minor < 2));
    const char *mods[] = {"vfio", "vfio_pci", "vfio_iommu_type1", "vfio_virqfd"};
    size_t nmods = old ? 4 : 3;
    s_buf missing = {0}, builtin = {0};
    bool loaded[4] = {false, false, false, false};
    size_t nmissing = 0;
    for (size_t i = 0; i < nmods; i++) {
        char path[64];
        snprintf(path, sizeof(path), "/sys/module/%s", mods[i]);
        loaded[i] = titan_sysroot_exists(&c->sr, path);
        if (!loaded[i] && s_builtin(c, release, mods[i])) {
            loaded[i] = true;
            s_cat(&builtin, "%s%s", builtin.len ? ", " : "", mods[i]);
        }
    }
    /* A built-in module without parameters has no /sys/module entry; modules.builtin names it, and in any
     * case vfio_pci cannot load without vfio_virqfd on these kernels, so vfio_pci loaded vouches for it. */
    const char *virqfd_note = "";
    if (old && !loaded[3] && loaded[1]) {
        loaded[3] = true;
        virqfd_note = "; vfio_virqfd is not in /sys/module: built in, since vfio_pci cannot load without it";
    }
    for (size_t i = 0; i < nmods; i++) {
        if (loaded[i]) continue;
        s_cat(&missing, "%s%s", missing.len ? ", " : "", mods[i]);
        nmissing++;
    }
    char kernel[192];
    if (major < 0)
        snprintf(kernel, sizeof(kernel), "kernel version unknown: vfio_virqfd not checked");
    else
        snprintf(kernel, sizeof(kernel), "kernel %d.%d: %s", major, minor,
                 old ? "vfio_virqfd is a module of its own" : "vfio_virqfd is part of vfio");
    if (nmissing) {
        s_add(c, S_FAIL, "vfio.modules", what, "not loaded: %s (%s)", s_str(&missing), kernel);
        s_hint(c, "sudo modprobe vfio-pci (%s load with it); `titan host setup` loads it at every boot",
               old ? "vfio, vfio_iommu_type1 and vfio_virqfd" : "vfio and vfio_iommu_type1");
    } else {
        s_add(c, S_OK, "vfio.modules", what, "vfio, vfio_pci, vfio_iommu_type1%s loaded (%s)%s%s%s",
              old && !virqfd_note[0] ? ", vfio_virqfd" : "", kernel, builtin.len ? "; built in: " : "",
              s_str(&builtin), virqfd_note);
    }
    free(missing.s);
    free(builtin.s);
}

static void s_check_kvm(s_check *c)
{
    if (titan_sysroot_exists(&c->sr, "/dev/kvm")) {
        s_add(c, S_OK, "kvm", "/dev/kvm", "present");
        return;
    }
    s_add(c, S_FAIL, "kvm", "/dev/kvm", "missing: KVM is not available");
    s_hint(c, "sudo modprobe %s, and enable virtualization in the firmware setup",
           c->cpu == S_CPU_AMD     ? "kvm_amd"
           : c->cpu == S_CPU_INTEL ? "kvm_intel"
                                   : "kvm_intel (or kvm_amd)");
}

/* --- targets --- */

/* The GPUs (display-class functions) seen, for hints: "0000:17:00.0 [10de:1e02] NVIDIA ... (nvidia, host
 * display); ...". */
static void s_gpus_seen(s_check *c, s_buf *b)
{
    for (size_t i = 0; i < c->nfns; i++) {
        const titan_pci_fn *fn = &c->fns[i];
        if (!titan_pci_is_display(fn)) continue;
        char name[256];
        s_name(c, fn, name, sizeof(name));
        s_cat(b, "%s%s [%04x:%04x]%s%s (%s%s)", b->len ? "; " : "", fn->addr, fn->vendor, fn->device,
              name[0] ? " " : "", name, fn->driver[0] ? fn->driver : "no driver",
              fn->boot_vga == 1 ? ", host display" : "");
    }
}

static void s_select_targets(s_check *c, const s_want *w)
{
    s_buf missing = {0};
    if (w->naddrs) {
        c->source = "address";
        for (size_t k = 0; k < w->naddrs; k++) {
            const titan_pci_fn *fn = titan_pci_find(c->fns, c->nfns, w->addrs[k]);
            if (fn)
                c->target[fn - c->fns] = true;
            else
                s_cat(&missing, "%s%s", missing.len ? ", " : "", w->addrs[k]);
        }
    } else if (w->nids) {
        c->source = "gpu";
        for (size_t i = 0; i < c->nfns; i++)
            for (size_t k = 0; k < w->nids; k++)
                if (c->fns[i].vendor == w->ids[k][0] && c->fns[i].device == w->ids[k][1]) c->target[i] = true;
    } else {
        /* Every NVIDIA GPU but the host's boot display, with the other functions of its device (audio...). */
        c->source = "auto";
        for (size_t i = 0; i < c->nfns; i++) {
            const titan_pci_fn *fn = &c->fns[i];
            if (fn->vendor != 0x10de || !titan_pci_is_gpu(fn) || fn->boot_vga == 1) continue;
            for (size_t j = 0; j < c->nfns; j++)
                if (titan_pci_same_device(fn->addr, c->fns[j].addr)) c->target[j] = true;
        }
    }
    c->ntargets = 0;
    s_buf list = {0};
    for (size_t i = 0; i < c->nfns; i++) {
        if (!c->target[i]) continue;
        c->ntargets++;
        char label[300];
        s_label(c, &c->fns[i], label, sizeof(label));
        s_cat(&list, "%s%s", list.len ? ", " : "", label);
    }
    const char *what = "target functions";
    if (c->ntargets && !missing.len) {
        s_add(c, S_OK, "targets", what, "%s (%s)", s_str(&list),
              w->naddrs ? "--address"
              : w->nids ? "--gpu"
                        : "auto: NVIDIA GPUs but the host's display, with their functions");
    } else {
        s_buf seen = {0};
        s_gpus_seen(c, &seen);
        if (missing.len)
            s_add(c, S_FAIL, "targets", what, "no PCI function %s%s%s", s_str(&missing),
                  c->ntargets ? "; found: " : "", s_str(&list));
        else if (w->nids)
            s_add(c, S_FAIL, "targets", what, "no PCI function matches --gpu");
        else
            s_add(c, S_FAIL, "targets", what, "no NVIDIA GPU apart from the host's display");
        s_hint(c, "GPUs seen: %s; choose with --address ADDRESS or --gpu VENDOR:DEVICE",
               seen.len ? s_str(&seen) : "none");
        free(seen.s);
    }
    free(missing.s);
    free(list.s);
}

static int s_int_cmp(const void *a, const void *b)
{
    int x = ((const s_group *)a)->group, y = ((const s_group *)b)->group;
    return (x > y) - (x < y);
}

/* Loads the members of every target's IOMMU group. */
static void s_load_groups(s_check *c)
{
    c->groups = calloc(c->ntargets ? c->ntargets : 1, sizeof(*c->groups));
    if (!c->groups) return;
    for (size_t i = 0; i < c->nfns; i++) {
        if (!c->target[i] || c->fns[i].group < 0 || s_is_target_group(c, c->fns[i].group)) continue;
        s_group *g = &c->groups[c->ngroups++];
        g->group = c->fns[i].group;
        if (titan_pci_group_fns(&c->sr, g->group, &g->m, &g->n) != 0) {
            g->m = NULL;
            g->n = 0;
        }
    }
    qsort(c->groups, c->ngroups, sizeof(*c->groups), s_int_cmp);
}

static bool s_is_target(const s_check *c, const char *addr)
{
    const titan_pci_fn *fn = titan_pci_find(c->fns, c->nfns, addr);
    return fn && c->target[fn - c->fns];
}

/* The --gpu list of the targets' ids ("10de:17c2,10de:0fb0"), for hints. */
static void s_target_ids(const s_check *c, s_buf *b)
{
    for (size_t i = 0; i < c->nfns; i++) {
        if (!c->target[i]) continue;
        bool dup = false;
        for (size_t j = 0; j < i && !dup; j++)
            dup =
                c->target[j] && c->fns[j].vendor == c->fns[i].vendor && c->fns[j].device == c->fns[i].device;
        if (!dup) s_cat(b, "%s%04x:%04x", b->len ? "," : "", c->fns[i].vendor, c->fns[i].device);
    }
}

/* The first target function's address (the one to give `titan host bind`) in group g, or of all. */
static const char *s_first_target(const s_check *c, int group)
{
    for (size_t i = 0; i < c->nfns; i++)
        if (c->target[i] && (group < 0 || c->fns[i].group == group)) return c->fns[i].addr;
    return "ADDRESS";
}

static void s_check_target_fns(s_check *c)
{
    s_buf ids = {0};
    s_target_ids(c, &ids);
    for (size_t i = 0; i < c->nfns; i++) {
        if (!c->target[i]) continue;
        const titan_pci_fn *fn = &c->fns[i];
        char id[64], what[64];
        snprintf(id, sizeof(id), "driver:%s", fn->addr);
        snprintf(what, sizeof(what), "driver of %s", fn->addr);
        if (strcmp(fn->driver, "vfio-pci") == 0) {
            s_add(c, S_OK, id, what, "vfio-pci%s",
                  strcmp(fn->driver_override, "vfio-pci") == 0 ? " (driver_override)" : "");
        } else if (!fn->driver[0]) {
            s_add(c, S_WARN, id, what, "no driver bound yet");
            s_hint(
                c,
                "`titan host bind %s` binds it to vfio-pci now (libvirt's managed mode does it when the VM "
                "starts)",
                fn->addr);
        } else if (strcmp(fn->driver, "pci-stub") == 0) {
            s_add(c, S_WARN, id, what, "pci-stub holds it; VFIO wants vfio-pci");
            s_hint(c, "`titan host bind %s` moves it to vfio-pci", fn->addr);
        } else {
            s_add(c, S_FAIL, id, what, "bound to %s, a host driver", fn->driver);
            s_hint(c,
                   "`titan host setup --gpu %s` and a reboot give it to vfio-pci at every boot; `titan host "
                   "bind "
                   "%s` does it now",
                   s_str(&ids), fn->addr);
        }
        s_about(c, fn->addr, fn->group);

        snprintf(id, sizeof(id), "reset:%s", fn->addr);
        snprintf(what, sizeof(what), "reset of %s", fn->addr);
        if (fn->reset_methods[0]) {
            s_add(c, S_OK, id, what, "reset methods: %s%s", fn->reset_methods,
                  strstr(fn->reset_methods, "flr") ? "" : " (no FLR)");
        } else if (fn->has_reset) {
            s_add(c, S_OK, id, what, "the kernel can reset it (this kernel does not list the methods)");
        } else {
            s_add(c, S_WARN, id, what, "no reset method: the GPU may need a host reboot between VM runs");
            s_hint(
                c,
                "keep the VM running instead of restarting it; a slot whose bridge supports a secondary bus "
                "reset helps");
        }
        s_about(c, fn->addr, fn->group);
    }
    free(ids.s);
}

static bool s_vfio_ok(const char *driver)
{
    return !driver[0] || strcmp(driver, "vfio-pci") == 0 || strcmp(driver, "pci-stub") == 0;
}

static void s_check_groups_viable(s_check *c)
{
    s_buf none = {0};
    for (size_t i = 0; i < c->nfns; i++)
        if (c->target[i] && c->fns[i].group < 0) s_cat(&none, "%s%s", none.len ? ", " : "", c->fns[i].addr);
    if (none.len) {
        s_add(c, S_FAIL, "group:none", "IOMMU group", "%s in no IOMMU group: the IOMMU is off", s_str(&none));
        s_hint(c, "%s", s_boot_hint(c));
    }
    free(none.s);

    for (size_t k = 0; k < c->ngroups; k++) {
        const s_group *g = &c->groups[k];
        char id[32], what[64];
        snprintf(id, sizeof(id), "group:%d", g->group);
        snprintf(what, sizeof(what), "IOMMU group %d", g->group);
        if (!g->n) {
            s_add(c, S_FAIL, id, what, "cannot read /sys/kernel/iommu_groups/%d/devices", g->group);
            s_about(c, NULL, g->group);
            continue;
        }
        s_buf bad = {0}, bridges = {0}, unbound = {0}, endpoints = {0};
        bool others_bad = false, all_vfio = true;
        for (size_t j = 0; j < g->n; j++) {
            const titan_pci_fn *m = &g->m[j];
            if (titan_pci_is_bridge(m)) {
                s_cat(&bridges, "%s%s", bridges.len ? ", " : "", m->addr);
                continue;
            }
            s_cat(&endpoints, "%s%s (%s)", endpoints.len ? ", " : "", m->addr,
                  m->driver[0] ? m->driver : "no driver");
            if (strcmp(m->driver, "vfio-pci") != 0) all_vfio = false;
            if (!m->driver[0]) s_cat(&unbound, "%s%s", unbound.len ? ", " : "", m->addr);
            if (s_vfio_ok(m->driver)) continue;
            char label[300];
            s_label(c, m, label, sizeof(label));
            s_cat(&bad, "%s%s (%s)", bad.len ? ", " : "", label, m->driver);
            if (!s_is_target(c, m->addr)) others_bad = true;
        }
        const char *bind = s_first_target(c, g->group);
        if (bad.len) {
            s_add(c, S_FAIL, id, what, "not viable: host drivers hold %s", s_str(&bad));
            if (others_bad)
                s_hint(
                    c,
                    "the group holds devices besides the GPU: move all of them to vfio-pci with `titan host "
                    "bind %s` (the host loses them), or put the card in a slot with an IOMMU group of its "
                    "own (a CPU-attached slot, or a board with ACS)",
                    bind);
            else
                s_hint(c, "`titan host bind %s` moves the whole group to vfio-pci", bind);
        } else {
            s_add(c, S_OK, id, what, "viable: %s%s%s%s%s", s_str(&endpoints),
                  unbound.len ? "; unbound is fine for VFIO: " : "", s_str(&unbound),
                  bridges.len ? "; bridges ignored: " : "", s_str(&bridges));
        }
        s_about(c, NULL, g->group);

        char dev[64];
        snprintf(dev, sizeof(dev), "/dev/vfio/%d", g->group);
        snprintf(id, sizeof(id), "dev_vfio:%d", g->group);
        if (titan_sysroot_exists(&c->sr, dev)) {
            s_add(c, S_OK, id, dev, "present");
        } else if (all_vfio) {
            s_add(c, S_FAIL, id, dev, "missing although vfio-pci holds the group");
            s_hint(c, "check that udev runs and see `dmesg | grep -i vfio`");
        } else {
            s_add(c, S_WARN, id, dev, "missing: it appears once vfio-pci holds every device of the group");
            s_hint(c, "`titan host bind %s`", bind);
        }
        s_about(c, NULL, g->group);
        free(bad.s);
        free(bridges.s);
        free(unbound.s);
        free(endpoints.s);
    }
}

/* The host keeps a display: the boot GPU and every other display device must sit outside the targets'
 * groups. */
static void s_check_host_gpu(s_check *c)
{
    const char *id = "host_gpu", *what = "host display GPU";
    s_buf bad = {0}, good = {0}, unknown = {0};
    for (size_t i = 0; i < c->nfns; i++) {
        const titan_pci_fn *fn = &c->fns[i];
        if (!titan_pci_is_display(fn)) continue;
        char label[300];
        s_label(c, fn, label, sizeof(label));
        bool sibling = false; /* another function of a target device goes with it */
        for (size_t j = 0; j < c->nfns && !sibling; j++)
            sibling = c->target[j] && titan_pci_same_device(c->fns[j].addr, fn->addr);
        if (c->target[i] || sibling) {
            if (fn->boot_vga == 1)
                s_cat(&bad, "%s%s%s is the host's boot display (boot_vga=1)", bad.len ? "; " : "",
                      c->target[i] ? "the target " : "", label);
            continue;
        }
        const char *role = fn->boot_vga == 1 ? "boot display" : "display device";
        if (fn->group < 0 || !c->ngroups)
            s_cat(&unknown, "%s%s (%s)", unknown.len ? ", " : "", label, role);
        else if (s_is_target_group(c, fn->group))
            s_cat(&bad, "%s%s (%s) shares IOMMU group %d with the target", bad.len ? "; " : "", label, role,
                  fn->group);
        else
            s_cat(&good, "%s%s (%s, %s) in group %d", good.len ? "; " : "", label, role,
                  fn->driver[0] ? fn->driver : "no driver", fn->group);
    }
    if (bad.len) {
        s_add(c, S_FAIL, id, what, "%s", s_str(&bad));
        s_hint(c,
               "the host must keep its own GPU: put the cards in slots with separate IOMMU groups, or choose "
               "the host's boot display in the firmware setup (primary display adapter)");
    } else if (unknown.len) {
        s_add(c, S_WARN, id, what, "%s: without IOMMU groups, cannot tell whether it stays with the host",
              s_str(&unknown));
    } else if (good.len) {
        s_add(c, S_OK, id, what, "%s, apart from the target", s_str(&good));
    } else {
        s_add(c, S_OK, id, what, "no other display device: the host runs headless once the target is passed");
    }
    free(bad.s);
    free(good.s);
    free(unknown.s);
}

/* --- output --- */

static json_t *s_fn_json(s_check *c, const titan_pci_fn *fn, bool with_target)
{
    char name[256], cls[128], ids[16], hex[8];
    s_name(c, fn, name, sizeof(name));
    titan_pci_names_class(c->names, fn, cls, sizeof(cls));
    snprintf(ids, sizeof(ids), "%04x:%04x", fn->vendor, fn->device);
    json_t *o = json_object();
    json_object_set_new(o, "address", json_string(fn->addr));
    json_object_set_new(o, "ids", json_string(ids));
    snprintf(hex, sizeof(hex), "%06x", fn->cls);
    json_object_set_new(o, "class", json_string(hex));
    json_object_set_new(o, "name", name[0] ? json_string(name) : json_null());
    json_object_set_new(o, "class_name", cls[0] ? json_string(cls) : json_null());
    json_object_set_new(o, "driver", fn->driver[0] ? json_string(fn->driver) : json_null());
    json_object_set_new(o, "group", fn->group >= 0 ? json_integer(fn->group) : json_null());
    json_object_set_new(o, "boot_vga", json_boolean(fn->boot_vga == 1));
    json_object_set_new(o, "bridge", json_boolean(titan_pci_is_bridge(fn)));
    if (with_target) json_object_set_new(o, "target", json_boolean(s_is_target(c, fn->addr)));
    json_t *rm = json_array();
    for (const char *p = fn->reset_methods; *p;) {
        p += strspn(p, " ");
        size_t n = strcspn(p, " ");
        if (n) json_array_append_new(rm, json_stringn(p, n));
        p += n;
    }
    json_object_set_new(o, "reset_methods", rm);
    return o;
}

static int s_print_json(s_check *c, bool ready, size_t fails, size_t warns)
{
    json_t *o = json_object();
    const char *why = NULL;
    const char *src = titan_pci_names_source(c->names, &why);
    json_object_set_new(o, "ready", json_boolean(ready));
    json_object_set_new(o, "failures", json_integer((json_int_t)fails));
    json_object_set_new(o, "warnings", json_integer((json_int_t)warns));
    json_object_set_new(o, "sysroot", json_string(c->sysroot ? c->sysroot : "/"));
    json_object_set_new(o, "target_source", json_string(c->source));
    json_object_set_new(o, "pci_ids", src ? json_string(src) : json_null());
    json_t *t = json_array();
    for (size_t i = 0; i < c->nfns; i++)
        if (c->target[i]) json_array_append_new(t, s_fn_json(c, &c->fns[i], false));
    json_object_set_new(o, "targets", t);
    json_t *gs = json_array();
    for (size_t k = 0; k < c->ngroups; k++) {
        json_t *m = json_array();
        for (size_t j = 0; j < c->groups[k].n; j++)
            json_array_append_new(m, s_fn_json(c, &c->groups[k].m[j], true));
        json_array_append_new(gs, json_pack("{s:i, s:o}", "group", c->groups[k].group, "members", m));
    }
    json_object_set_new(o, "groups", gs);
    json_t *fs = json_array();
    for (size_t i = 0; i < c->nf; i++) {
        const s_finding *f = &c->f[i];
        json_t *fo = json_object();
        json_object_set_new(fo, "id", json_string(f->id ? f->id : ""));
        json_object_set_new(fo, "status", json_string(s_status_word[f->st]));
        json_object_set_new(fo, "what", json_string(f->what ? f->what : ""));
        json_object_set_new(fo, "message", json_string(f->msg ? f->msg : "(out of memory)"));
        json_object_set_new(fo, "hint", f->hint ? json_string(f->hint) : json_null());
        if (f->addr[0]) json_object_set_new(fo, "address", json_string(f->addr));
        if (f->group >= 0) json_object_set_new(fo, "group", json_integer(f->group));
        json_array_append_new(fs, fo);
    }
    json_object_set_new(o, "findings", fs);
    return cli_print_json(o);
}

static void s_print_text(s_check *c, bool ready, size_t fails, size_t warns)
{
    if (c->sysroot) printf("titan host check under --sysroot %s\n\n", c->sysroot);
    printf("%-6s %-30s %s\n", "STATUS", "CHECK", "DETAIL");
    for (size_t i = 0; i < c->nf; i++) {
        const s_finding *f = &c->f[i];
        printf("%-6s %-30s %s\n", s_status_col[f->st], f->what ? f->what : "",
               f->msg ? f->msg : "(out of memory)");
        if (f->hint && f->st != S_OK) printf("%-6s %-30s hint: %s\n", "", "", f->hint);
    }
    for (size_t k = 0; k < c->ngroups; k++) {
        const s_group *g = &c->groups[k];
        printf("\nIOMMU group %d:\n", g->group);
        for (size_t j = 0; j < g->n; j++) {
            const titan_pci_fn *m = &g->m[j];
            char name[256], cls[128];
            s_name(c, m, name, sizeof(name));
            titan_pci_names_class(c->names, m, cls, sizeof(cls));
            printf("  %s [%04x:%04x]%s%s%s%s  driver: %s%s%s\n", m->addr, m->vendor, m->device,
                   cls[0] || name[0] ? " " : "", cls, cls[0] && name[0] ? ": " : "", name,
                   m->driver[0] ? m->driver : "none", titan_pci_is_bridge(m) ? "  (bridge, ignored)" : "",
                   s_is_target(c, m->addr) ? "  (target)" : "");
        }
    }
    const char *why = NULL;
    const char *src = titan_pci_names_source(c->names, &why);
    if (!src) printf("\nnames: none (%s); ids only\n", why ? why : "");
    if (ready)
        printf("\nready: the host can pass %s through (%zu warning%s)\n", s_first_target(c, -1), warns,
               warns == 1 ? "" : "s");
    else
        printf("\nnot ready: %zu failure%s, %zu warning%s; fix the FAIL lines and run `titan host check` "
               "again\n",
               fails, fails == 1 ? "" : "s", warns, warns == 1 ? "" : "s");
}

/* --- options --- */

static int s_parse_list(const char *cmd, const char *opt, const char *v, s_want *w)
{
    if (!*v) return cli_usage_error(cmd, "%s needs a value", opt);
    bool gpu = strcmp(opt, "--gpu") == 0;
    const char *p = v;
    while (true) {
        size_t n = strcspn(p, ",");
        char item[64];
        if (n == 0 || n >= sizeof(item))
            return cli_usage_error(cmd, "%s: bad list \"%s\"; expected %s", opt, v,
                                   gpu ? "VENDOR:DEVICE[,...] such as 10de:17c2,10de:0fb0"
                                       : "ADDRESS[,...] such as 0000:65:00.0,0000:65:00.1");
        memcpy(item, p, n);
        item[n] = '\0';
        if (gpu) {
            if (w->nids == S_MAX_LIST) return cli_usage_error(cmd, "%s: at most %d ids", opt, S_MAX_LIST);
            if (titan_pci_parse_ids(item, &w->ids[w->nids][0], &w->ids[w->nids][1]) != 0)
                return cli_usage_error(cmd, "--gpu: \"%s\" is not VENDOR:DEVICE in hex, such as 10de:17c2",
                                       item);
            w->nids++;
        } else {
            if (w->naddrs == S_MAX_LIST)
                return cli_usage_error(cmd, "%s: at most %d addresses", opt, S_MAX_LIST);
            if (titan_pci_parse_address(item, w->addrs[w->naddrs]) != 0)
                return cli_usage_error(cmd, "--address: \"%s\" is not a PCI address such as 0000:65:00.0",
                                       item);
            w->naddrs++;
        }
        p += n;
        if (!*p) break;
        p++;
    }
    return CLI_EXIT_OK;
}

static void s_free(s_check *c)
{
    for (size_t i = 0; i < c->nf; i++) {
        free(c->f[i].id);
        free(c->f[i].what);
        free(c->f[i].msg);
        free(c->f[i].hint);
    }
    free(c->f);
    for (size_t k = 0; k < c->ngroups; k++)
        free(c->groups[k].m);
    free(c->groups);
    free(c->target);
    free(c->fns);
    free(c->cmdline);
    titan_pci_names_destroy(&c->names);
}

int cli_host_check(cli_globals *g, int argc, char **argv)
{
    const char *cmd = "host check";
    s_want want;
    memset(&want, 0, sizeof(want));
    const char *sysroot = NULL;
    bool gave_gpu = false, gave_addr = false;
    for (int i = 0; i < argc; i++) {
        const char *v = NULL;
        int r = cli_global_option(cmd, g, argc, argv, &i);
        if (r < 0) return CLI_EXIT_USAGE;
        if (r > 0) continue;
        if ((r = cli_match_option(cmd, argc, argv, &i, "--gpu", &v)) != 0) {
            if (r < 0 || s_parse_list(cmd, "--gpu", v, &want) != CLI_EXIT_OK) return CLI_EXIT_USAGE;
            gave_gpu = true;
            continue;
        }
        if ((r = cli_match_option(cmd, argc, argv, &i, "--address", &v)) != 0) {
            if (r < 0 || s_parse_list(cmd, "--address", v, &want) != CLI_EXIT_OK) return CLI_EXIT_USAGE;
            gave_addr = true;
            continue;
        }
        if ((r = cli_match_option(cmd, argc, argv, &i, "--sysroot", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            sysroot = v;
            continue;
        }
        return cli_unknown_option(cmd, argv[i]);
    }
    if (gave_gpu && gave_addr) return cli_usage_error(cmd, "give --gpu or --address, not both");

    s_check c;
    memset(&c, 0, sizeof(c));
    if (titan_sysroot_init(&c.sr, sysroot) != 0)
        return cli_usage_error(cmd, "--sysroot \"%s\" is not a directory", sysroot ? sysroot : "");
    c.sysroot = c.sr.root[0] ? sysroot : NULL;
    int status = CLI_EXIT_REMOTE;
    c.names = titan_pci_names_new(&c.sr);
    if (!c.names) {
        fprintf(stderr, "titan %s: out of memory\n", cmd);
        goto out;
    }
    int rc = titan_pci_list_fns(&c.sr, &c.fns, &c.nfns);
    if (rc != 0 && rc != -ENOENT) {
        fprintf(stderr, "titan %s: cannot read /sys/bus/pci/devices: %s\n", cmd, strerror(-rc));
        goto out;
    }
    c.target = calloc(c.nfns ? c.nfns : 1, sizeof(*c.target));
    if (!c.target) {
        fprintf(stderr, "titan %s: out of memory\n", cmd);
        goto out;
    }
    if (titan_sysroot_slurp(&c.sr, "/proc/cmdline", S_MAX_CMDLINE, &c.cmdline, NULL) != 0) c.cmdline = NULL;
    char **grp = NULL;
    if (titan_sysroot_list(&c.sr, "/sys/kernel/iommu_groups", &grp, &c.iommu_groups) == 0)
        titan_sysroot_free_list(grp, c.iommu_groups);
    else
        c.iommu_groups = 0;

    s_check_cpu(&c);
    s_check_acpi(&c);
    s_check_groups(&c);
    s_check_cmdline(&c);
    s_check_irq_remap(&c);
    s_check_modules(&c);
    s_check_kvm(&c);
    s_select_targets(&c, &want);
    s_load_groups(&c);
    s_check_target_fns(&c);
    s_check_groups_viable(&c);
    if (c.ntargets) s_check_host_gpu(&c);

    size_t fails = 0, warns = 0;
    for (size_t i = 0; i < c.nf; i++) {
        fails += c.f[i].st == S_FAIL;
        warns += c.f[i].st == S_WARN;
    }
    bool ready = fails == 0;
    if (g->json) {
        if (s_print_json(&c, ready, fails, warns) != CLI_EXIT_OK) goto out;
    } else {
        s_print_text(&c, ready, fails, warns);
    }
    status = ready ? CLI_EXIT_OK : CLI_EXIT_REMOTE;
out:
    s_free(&c);
    return status;
}
