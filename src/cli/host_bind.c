/* host_bind.c - `titan host bind|unbind ADDRESS`: moves every function of a device's IOMMU group between
 * vfio-pci and its host driver now, the way driverctl does (driver_override, unbind, drivers_probe). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "pci.h"
#include "sysroot.h"

/* One sysfs write. */
typedef struct {
    char addr[TITAN_PCI_ADDR_SIZE]; /* the function it is for */
    char path[160];
    char value[32];
    int err; /* 0, or -errno once tried */
    bool done;
} s_step;

/* One function of the group (bridges excluded). */
typedef struct {
    titan_pci_fn fn;
    char name[256];
    char after[64]; /* the driver after the writes, on the real root */
} s_func;

typedef struct {
    const char *cmd; /* "host bind" or "host unbind" */
    bool bind, dry_run, json;
    titan_sysroot sr;
    const char *sysroot; /* as given, NULL for / */
    char addr[TITAN_PCI_ADDR_SIZE];
    int group;
    s_func *f;
    size_t nf;
    s_step *s;
    size_t ns;
    char error[512], hint[256]; /* why it was refused or failed */
} s_bind;

static void s_plan(s_bind *b, const char *addr, const char *path, const char *value)
{
    s_step *st = &b->s[b->ns++];
    memset(st, 0, sizeof(*st));
    snprintf(st->addr, sizeof(st->addr), "%s", addr);
    snprintf(st->path, sizeof(st->path), "%s", path);
    snprintf(st->value, sizeof(st->value), "%s", value);
}

/* Plans the writes of every function; each takes at most 3. */
static void s_plan_all(s_bind *b)
{
    char path[160];
    for (size_t i = 0; i < b->nf; i++) {
        const titan_pci_fn *fn = &b->f[i].fn;
        bool on_vfio = strcmp(fn->driver, "vfio-pci") == 0;
        if (b->bind) {
            /* driver_override makes drivers_probe pick vfio-pci, and keeps the host driver off after it. */
            if (strcmp(fn->driver_override, "vfio-pci") != 0) {
                snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/driver_override", fn->addr);
                s_plan(b, fn->addr, path, "vfio-pci");
            }
            if (on_vfio) continue;
            if (fn->driver[0]) {
                snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/driver/unbind", fn->addr);
                s_plan(b, fn->addr, path, fn->addr);
            }
            s_plan(b, fn->addr, "/sys/bus/pci/drivers_probe", fn->addr);
        } else {
            bool held = on_vfio || strcmp(fn->driver, "pci-stub") == 0;
            if (fn->driver_override[0] || held) {
                snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/driver_override", fn->addr);
                s_plan(b, fn->addr, path, "\n");
            }
            if (held) {
                snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/driver/unbind", fn->addr);
                s_plan(b, fn->addr, path, fn->addr);
            }
            if (held || !fn->driver[0]) s_plan(b, fn->addr, "/sys/bus/pci/drivers_probe", fn->addr);
        }
    }
}

/* Shows a written value: "vfio-pci", "\n". */
static const char *s_shown(const char *v)
{
    return strcmp(v, "\n") == 0 ? "\\n" : v;
}

/* Why a write failed, in words. */
static void s_write_error(s_bind *b, const s_step *st)
{
    int e = -st->err;
    if ((e == EACCES || e == EPERM) && !b->sysroot) {
        snprintf(b->error, sizeof(b->error), "permission denied writing %s", st->path);
        snprintf(b->hint, sizeof(b->hint), "run it as root: sudo titan %s %s", b->cmd, b->addr);
    } else if (e == ENOENT && strstr(st->path, "driver_override")) {
        snprintf(b->error, sizeof(b->error), "%s is missing", st->path);
        snprintf(b->hint, sizeof(b->hint), "this kernel has no driver_override (Linux 3.16 or later has it)");
    } else {
        snprintf(b->error, sizeof(b->error), "writing \"%s\" to %s failed: %s", s_shown(st->value), st->path,
                 strerror(e));
        snprintf(b->hint, sizeof(b->hint),
                 "see `dmesg | tail`; `titan host check` shows the state of the group");
    }
}

/* Runs the plan; stops at the first failed write. Returns 0 or -errno. */
static int s_run(s_bind *b)
{
    for (size_t i = 0; i < b->ns; i++) {
        s_step *st = &b->s[i];
        st->err = titan_sysroot_write_attr(&b->sr, st->path, st->value);
        st->done = st->err == 0;
        if (st->err) {
            s_write_error(b, st);
            return st->err;
        }
    }
    return 0;
}

/* On the real root, reads each function's driver again: bind wants vfio-pci, unbind anything else. Under
 * --sysroot nothing acted on the writes (the tree's attributes are plain files), so there is nothing to
 * read back. Returns 0 or -EIO. */
static int s_verify(s_bind *b)
{
    if (b->sysroot) return 0;
    int rc = 0;
    for (size_t i = 0; i < b->nf; i++) {
        titan_pci_fn now;
        s_func *f = &b->f[i];
        if (titan_pci_read_fn(&b->sr, f->fn.addr, &now) != 0) continue;
        snprintf(f->after, sizeof(f->after), "%s", now.driver[0] ? now.driver : "none");
        bool on_vfio = strcmp(now.driver, "vfio-pci") == 0;
        if (b->bind != on_vfio && !rc) {
            rc = -EIO;
            snprintf(b->error, sizeof(b->error), "%s is on %s after drivers_probe, not %s", f->fn.addr,
                     now.driver[0] ? now.driver : "no driver", b->bind ? "vfio-pci" : "its host driver");
            snprintf(b->hint, sizeof(b->hint), "see `dmesg | tail`");
        }
    }
    return rc;
}

/* Refuses (with b->error and b->hint) when the group cannot move. Returns true when refused. */
static bool s_refuse(s_bind *b)
{
    for (size_t i = 0; b->bind && i < b->nf; i++) {
        const titan_pci_fn *fn = &b->f[i].fn;
        char why[160];
        const char *whose = strcmp(fn->addr, b->addr) == 0 ? "" : " (in the same IOMMU group)";
        if (fn->boot_vga == 1) {
            snprintf(b->error, sizeof(b->error), "%s%s is the host's boot display (boot_vga=1)", fn->addr,
                     whose);
            snprintf(b->hint, sizeof(b->hint),
                     "the host needs it; pass through another GPU (`titan host check` "
                     "lists the candidates)");
            return true;
        }
        if (titan_pci_display_use(&b->sr, fn->addr, why, sizeof(why))) {
            snprintf(b->error, sizeof(b->error), "%s%s drives the host's display: %s", fn->addr, whose, why);
            snprintf(b->hint, sizeof(b->hint), "unplug its displays or stop the display manager first");
            return true;
        }
    }
    if (b->bind && !titan_sysroot_exists(&b->sr, "/sys/bus/pci/drivers/vfio-pci")) {
        snprintf(b->error, sizeof(b->error),
                 "the vfio-pci module is not loaded (no /sys/bus/pci/drivers/vfio-pci)");
        snprintf(b->hint, sizeof(b->hint), "sudo modprobe vfio-pci");
        return true;
    }
    return false;
}

/* Loads the function, its group and the group's functions (bridges excluded). Returns false with b->error. */
static bool s_load(s_bind *b)
{
    titan_pci_fn fn;
    int rc = titan_pci_read_fn(&b->sr, b->addr, &fn);
    if (rc) {
        snprintf(b->error, sizeof(b->error),
                 rc == -ENOENT ? "no PCI function %s (no /sys/bus/pci/devices/%s)"
                               : "cannot read /sys/bus/pci/devices/%s%s",
                 b->addr, rc == -ENOENT ? b->addr : "");
        snprintf(b->hint, sizeof(b->hint), "`lspci -D` or `titan host check` lists the functions");
        return false;
    }
    if (titan_pci_is_bridge(&fn)) {
        snprintf(b->error, sizeof(b->error), "%s is a PCI bridge", b->addr);
        snprintf(b->hint, sizeof(b->hint), "give the address of the GPU behind it");
        return false;
    }
    b->group = fn.group;
    if (fn.group < 0) {
        snprintf(b->error, sizeof(b->error), "%s is in no IOMMU group: the IOMMU is off", b->addr);
        snprintf(b->hint, sizeof(b->hint), "`titan host check` says how to turn it on");
        return false;
    }
    titan_pci_fn *members = NULL;
    size_t n = 0;
    rc = titan_pci_group_fns(&b->sr, fn.group, &members, &n);
    if (rc || !titan_pci_find(members, n, b->addr)) {
        snprintf(b->error, sizeof(b->error),
                 "cannot read IOMMU group %d (/sys/kernel/iommu_groups/%d/devices)%s%s", fn.group, fn.group,
                 rc ? ": " : " does not list the function", rc ? strerror(-rc) : "");
        free(members);
        return false;
    }
    b->f = calloc(n, sizeof(*b->f));
    b->s = calloc(3 * n, sizeof(*b->s));
    if (!b->f || !b->s) {
        free(members);
        snprintf(b->error, sizeof(b->error), "out of memory");
        return false;
    }
    titan_pci_names *names = titan_pci_names_new(&b->sr);
    for (size_t i = 0; i < n; i++) {
        if (titan_pci_is_bridge(&members[i])) continue;
        s_func *f = &b->f[b->nf++];
        f->fn = members[i];
        titan_pci_names_device(names, &f->fn, f->name, sizeof(f->name));
    }
    titan_pci_names_destroy(&names);
    free(members);
    return true;
}

static json_t *s_json(const s_bind *b, bool ok, bool refused)
{
    json_t *o = json_object();
    json_object_set_new(o, "action", json_string(b->bind ? "bind" : "unbind"));
    json_object_set_new(o, "address", json_string(b->addr));
    json_object_set_new(o, "group", b->group >= 0 ? json_integer(b->group) : json_null());
    json_object_set_new(o, "dry_run", json_boolean(b->dry_run));
    json_object_set_new(o, "sysroot", json_string(b->sysroot ? b->sysroot : "/"));
    json_object_set_new(o, "ok", json_boolean(ok));
    json_object_set_new(o, "refused", json_boolean(refused));
    json_t *fs = json_array();
    for (size_t i = 0; i < b->nf; i++) {
        const s_func *f = &b->f[i];
        json_array_append_new(fs,
                              json_pack("{s:s, s:o, s:o, s:o}", "address", f->fn.addr, "name",
                                        f->name[0] ? json_string(f->name) : json_null(), "driver",
                                        f->fn.driver[0] ? json_string(f->fn.driver) : json_null(),
                                        "driver_after", f->after[0] ? json_string(f->after) : json_null()));
    }
    json_object_set_new(o, "functions", fs);
    json_t *ss = json_array();
    for (size_t i = 0; i < b->ns; i++) {
        const s_step *st = &b->s[i];
        json_array_append_new(ss, json_pack("{s:s, s:s, s:s, s:b, s:o}", "address", st->addr, "path",
                                            st->path, "value", st->value, "done", st->done, "error",
                                            st->err ? json_string(strerror(-st->err)) : json_null()));
    }
    json_object_set_new(o, "steps", ss);
    json_object_set_new(o, "error", b->error[0] ? json_string(b->error) : json_null());
    json_object_set_new(o, "hint", b->hint[0] ? json_string(b->hint) : json_null());
    return o;
}

static void s_print(const s_bind *b)
{
    const char *to = b->bind ? "to vfio-pci" : "back to the host drivers";
    printf("%s %s: IOMMU group %d, %zu function%s %s%s\n", b->bind ? "bind" : "unbind", b->addr, b->group,
           b->nf, b->nf == 1 ? "" : "s", to, b->dry_run ? " (dry run: nothing is written)" : "");
    for (size_t i = 0; i < b->nf; i++) {
        const s_func *f = &b->f[i];
        printf("  %s [%04x:%04x]%s%s  driver: %s%s%s\n", f->fn.addr, f->fn.vendor, f->fn.device,
               f->name[0] ? " " : "", f->name, f->fn.driver[0] ? f->fn.driver : "none",
               f->after[0] ? " -> " : "", f->after);
        bool any = false;
        for (size_t k = 0; k < b->ns; k++) {
            const s_step *st = &b->s[k];
            if (strcmp(st->addr, f->fn.addr) != 0) continue;
            any = true;
            const char *res = b->dry_run ? "" : st->done ? ": ok" : st->err ? ": FAILED" : ": not reached";
            printf("    %s \"%s\" to %s%s\n", b->dry_run ? "would write" : "write", s_shown(st->value),
                   st->path, res);
        }
        if (!any) printf("    nothing to do: already %s\n", b->bind ? "on vfio-pci" : "with its host driver");
    }
}

int cli_host_bind(cli_globals *g, bool bind, int argc, char **argv)
{
    s_bind b;
    memset(&b, 0, sizeof(b));
    b.cmd = bind ? "host bind" : "host unbind";
    b.bind = bind;
    b.group = -1;
    const char *sysroot = NULL, *addr = NULL;
    for (int i = 0; i < argc; i++) {
        const char *v = NULL;
        int r = cli_global_option(b.cmd, g, argc, argv, &i);
        if (r < 0) return CLI_EXIT_USAGE;
        if (r > 0) continue;
        if ((r = cli_match_option(b.cmd, argc, argv, &i, "--sysroot", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            sysroot = v;
            continue;
        }
        if (strcmp(argv[i], "--dry-run") == 0) {
            b.dry_run = true;
            continue;
        }
        if (argv[i][0] == '-' || addr) return cli_unknown_option(b.cmd, argv[i]);
        addr = argv[i];
    }
    if (!addr) return cli_usage_error(b.cmd, "give the device's PCI address, such as 0000:65:00.0");
    if (titan_pci_parse_address(addr, b.addr) != 0)
        return cli_usage_error(b.cmd, "\"%s\" is not a PCI address such as 0000:65:00.0", addr);
    if (titan_sysroot_init(&b.sr, sysroot) != 0)
        return cli_usage_error(b.cmd, "--sysroot \"%s\" is not a directory", sysroot ? sysroot : "");
    b.sysroot = b.sr.root[0] ? sysroot : NULL;
    b.json = g->json;

    bool refused = !s_load(&b) || s_refuse(&b);
    bool ok = !refused;
    if (ok) s_plan_all(&b);
    if (ok && !b.dry_run) ok = s_run(&b) == 0 && s_verify(&b) == 0;

    if (!b.json && !refused) s_print(&b);
    if (!ok) {
        fprintf(stderr, "titan %s: %s%s%s%s\n", b.cmd, refused ? "refused: " : "", b.error,
                b.hint[0] ? "; " : "", b.hint);
    } else if (!b.json && !b.dry_run) {
        if (!b.ns)
            printf("done: nothing to do, group %d is %s\n", b.group,
                   b.bind ? "on vfio-pci already" : "with its host drivers already");
        else if (b.sysroot)
            printf("done: the writes went to the files under %s (no kernel acts on them there)\n", b.sysroot);
        else
            printf("done: group %d is %s\n", b.group, b.bind ? "on vfio-pci" : "back with the host drivers");
    }
    int status = ok ? CLI_EXIT_OK : CLI_EXIT_REMOTE;
    if (b.json && cli_print_json(s_json(&b, ok, refused)) != CLI_EXIT_OK) status = CLI_EXIT_REMOTE;
    free(b.f);
    free(b.s);
    return status;
}
