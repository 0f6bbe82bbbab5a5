/* pci.c - PCI functions from sysfs under a sysroot, and their names through libpci (see pci.h). */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pci/pci.h>

#include "pci.h"

/* Parses 1..maxdigits hex digits (an optional "0x" first when `prefix`) that fill all of s. */
static int s_parse_hex(const char *s, size_t maxdigits, bool prefix, unsigned *out)
{
    if (prefix && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s += 2;
    size_t n = strlen(s);
    if (n == 0 || n > maxdigits) return -EINVAL;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isxdigit((unsigned char)s[i])) return -EINVAL;
        v = v * 16 +
            (unsigned)(isdigit((unsigned char)s[i]) ? s[i] - '0' : tolower((unsigned char)s[i]) - 'a' + 10);
    }
    *out = v;
    return 0;
}

/* Copies the n characters at s into a NUL-terminated buffer and parses them as hex. */
static int s_parse_hex_n(const char *s, size_t n, unsigned *out)
{
    char b[16];
    if (n == 0 || n >= sizeof(b)) return -EINVAL;
    memcpy(b, s, n);
    b[n] = '\0';
    return s_parse_hex(b, n, false, out);
}

int titan_pci_parse_address(const char *s, char out[TITAN_PCI_ADDR_SIZE])
{
    /* DDDD:BB:dd.f or BB:dd.f: the domain is optional, the rest fixed-width as lspci and sysfs print it. */
    unsigned dom = 0, bus, dev, fn;
    size_t len = strlen(s);
    const char *p = s;
    if (len == 12) {
        if (s[4] != ':' || s_parse_hex_n(s, 4, &dom) < 0) return -EINVAL;
        p = s + 5;
    } else if (len != 7) {
        return -EINVAL;
    }
    if (p[2] != ':' || p[5] != '.' || s_parse_hex_n(p, 2, &bus) < 0 || s_parse_hex_n(p + 3, 2, &dev) < 0 ||
        s_parse_hex_n(p + 6, 1, &fn) < 0 || dev > 0x1f || fn > 7)
        return -EINVAL;
    snprintf(out, TITAN_PCI_ADDR_SIZE, "%04x:%02x:%02x.%x", dom, bus, dev, fn);
    return 0;
}

int titan_pci_parse_ids(const char *s, unsigned *vendor, unsigned *device)
{
    const char *colon = strchr(s, ':');
    unsigned v, d;
    if (!colon || s_parse_hex_n(s, (size_t)(colon - s), &v) < 0 || (size_t)(colon - s) > 4 ||
        s_parse_hex(colon + 1, 4, false, &d) < 0)
        return -EINVAL;
    *vendor = v;
    *device = d;
    return 0;
}

/* Reads /sys/bus/pci/devices/ADDR/ATTR (trimmed) into buf. */
static ssize_t s_read_attr(const titan_sysroot *sr, const char *addr, const char *attr, char *buf, size_t cap)
{
    char path[256];
    snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/%s", addr, attr);
    return titan_sysroot_read(sr, path, buf, cap, true);
}

/* Reads a hex attribute ("0x10de") of at most `digits` digits. */
static int s_read_hex_attr(const titan_sysroot *sr, const char *addr, const char *attr, size_t digits,
                           unsigned *out)
{
    char buf[32];
    ssize_t r = s_read_attr(sr, addr, attr, buf, sizeof(buf));
    if (r < 0) return (int)r;
    return s_parse_hex(buf, digits, true, out);
}

/* The last component of a link under the device directory ("iommu_group", "driver"), "" when absent. */
static void s_read_link(const titan_sysroot *sr, const char *addr, const char *attr, char *out, size_t cap)
{
    char path[256];
    snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/%s", addr, attr);
    if (titan_sysroot_link_name(sr, path, out, cap) != 0) out[0] = '\0';
}

int titan_pci_read_fn(const titan_sysroot *sr, const char *addr, titan_pci_fn *fn)
{
    titan_pci_fn f;
    memset(&f, 0, sizeof(f));
    char path[256], buf[128];
    if (strlen(addr) >= sizeof(f.addr)) return -EINVAL;
    snprintf(f.addr, sizeof(f.addr), "%s", addr);
    snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s", addr);
    if (!titan_sysroot_exists(sr, path)) return -ENOENT;
    int rc;
    if ((rc = s_read_hex_attr(sr, addr, "vendor", 4, &f.vendor)) < 0 ||
        (rc = s_read_hex_attr(sr, addr, "device", 4, &f.device)) < 0 ||
        (rc = s_read_hex_attr(sr, addr, "class", 6, &f.cls)) < 0)
        return rc;
    f.boot_vga = -1;
    if (s_read_attr(sr, addr, "boot_vga", buf, sizeof(buf)) >= 0) f.boot_vga = strcmp(buf, "1") == 0;
    f.group = -1;
    s_read_link(sr, addr, "iommu_group", buf, sizeof(buf));
    if (buf[0]) {
        char *end = NULL;
        errno = 0;
        long g = strtol(buf, &end, 10);
        if (isdigit((unsigned char)buf[0]) && *end == '\0' && errno == 0 && g <= INT_MAX) f.group = (int)g;
    }
    s_read_link(sr, addr, "driver", f.driver, sizeof(f.driver));
    if (s_read_attr(sr, addr, "driver_override", buf, sizeof(buf)) >= 0 && strcmp(buf, "(null)") != 0)
        snprintf(f.driver_override, sizeof(f.driver_override), "%.*s", (int)sizeof(f.driver_override) - 1,
                 buf);
    if (s_read_attr(sr, addr, "reset_method", buf, sizeof(buf)) >= 0) {
        /* One line of method names separated by spaces; keep printable characters only. */
        size_t j = 0;
        for (size_t i = 0; buf[i] && j + 1 < sizeof(f.reset_methods); i++)
            if (isprint((unsigned char)buf[i])) f.reset_methods[j++] = buf[i];
        f.reset_methods[j] = '\0';
    }
    snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/reset", addr);
    f.has_reset = titan_sysroot_exists(sr, path);
    *fn = f;
    return 0;
}

static int s_fn_cmp(const void *a, const void *b)
{
    return strcmp(((const titan_pci_fn *)a)->addr, ((const titan_pci_fn *)b)->addr);
}

/* Reads the functions named in names[0..n) (PCI addresses; others are skipped) into a sorted array. */
static int s_read_fns(const titan_sysroot *sr, char **names, size_t n, size_t max, titan_pci_fn **fns,
                      size_t *count)
{
    if (n > max) return -E2BIG;
    titan_pci_fn *v = calloc(n ? n : 1, sizeof(*v));
    if (!v) return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char addr[TITAN_PCI_ADDR_SIZE];
        if (strlen(names[i]) != 12 || titan_pci_parse_address(names[i], addr) != 0 ||
            strcmp(addr, names[i]) != 0)
            continue;
        if (titan_pci_read_fn(sr, addr, &v[k]) == 0) k++;
    }
    qsort(v, k, sizeof(*v), s_fn_cmp);
    *fns = v;
    *count = k;
    return 0;
}

int titan_pci_list_fns(const titan_sysroot *sr, titan_pci_fn **fns, size_t *n)
{
    char **names = NULL;
    size_t cnt = 0;
    int rc = titan_sysroot_list(sr, "/sys/bus/pci/devices", &names, &cnt);
    if (rc) return rc;
    rc = s_read_fns(sr, names, cnt, TITAN_PCI_MAX_FNS, fns, n);
    titan_sysroot_free_list(names, cnt);
    return rc;
}

const titan_pci_fn *titan_pci_find(const titan_pci_fn *fns, size_t n, const char *addr)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(fns[i].addr, addr) == 0) return &fns[i];
    return NULL;
}

int titan_pci_group_fns(const titan_sysroot *sr, int group, titan_pci_fn **fns, size_t *n)
{
    char path[128], **names = NULL;
    size_t cnt = 0;
    if (group < 0) return -EINVAL;
    snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%d/devices", group);
    int rc = titan_sysroot_list(sr, path, &names, &cnt);
    if (rc) return rc;
    rc = s_read_fns(sr, names, cnt, TITAN_PCI_MAX_GROUP, fns, n);
    titan_sysroot_free_list(names, cnt);
    return rc;
}

bool titan_pci_is_bridge(const titan_pci_fn *fn)
{
    return (fn->cls >> 8) == 0x0604;
}

bool titan_pci_is_display(const titan_pci_fn *fn)
{
    return (fn->cls >> 16) == 0x03;
}

bool titan_pci_is_gpu(const titan_pci_fn *fn)
{
    return (fn->cls >> 8) == 0x0300 || (fn->cls >> 8) == 0x0302;
}

bool titan_pci_same_device(const char *a, const char *b)
{
    const char *dot = strrchr(a, '.');
    size_t n = dot ? (size_t)(dot - a) : strlen(a);
    return strncmp(a, b, n) == 0 && b[n] == '.';
}

/* True when the last component of `link` (under the sysroot) is `addr`. */
static bool s_link_is(const titan_sysroot *sr, const char *link, const char *addr)
{
    char name[128];
    return titan_sysroot_link_name(sr, link, name, sizeof(name)) == 0 && strcmp(name, addr) == 0;
}

/* True when `s` is "card" followed by digits only. */
static bool s_is_card(const char *s)
{
    if (strncmp(s, "card", 4) != 0 || !s[4]) return false;
    for (const char *p = s + 4; *p; p++)
        if (!isdigit((unsigned char)*p)) return false;
    return true;
}

int titan_pci_display_use(const titan_sysroot *sr, const char *addr, char *why, size_t cap)
{
    char **names = NULL, path[512], buf[64];
    size_t n = 0;
    int found = 0;
    if (titan_sysroot_list(sr, "/sys/class/drm", &names, &n) == 0) {
        for (size_t i = 0; i < n && !found; i++) {
            if (!s_is_card(names[i])) continue;
            snprintf(path, sizeof(path), "/sys/class/drm/%s/device", names[i]);
            if (!s_link_is(sr, path, addr)) continue;
            size_t len = strlen(names[i]);
            for (size_t j = 0; j < n && !found; j++) {
                if (strncmp(names[j], names[i], len) != 0 || names[j][len] != '-') continue;
                snprintf(path, sizeof(path), "/sys/class/drm/%s/status", names[j]);
                if (titan_sysroot_read(sr, path, buf, sizeof(buf), true) >= 0 &&
                    strcmp(buf, "connected") == 0) {
                    snprintf(why, cap, "its DRM connector %s is connected to a display", names[j]);
                    found = 1;
                }
            }
        }
        titan_sysroot_free_list(names, n);
    }
    if (!found && titan_sysroot_list(sr, "/sys/class/graphics", &names, &n) == 0) {
        for (size_t i = 0; i < n && !found; i++) {
            if (strncmp(names[i], "fb", 2) != 0) continue;
            snprintf(path, sizeof(path), "/sys/class/graphics/%s/device", names[i]);
            if (s_link_is(sr, path, addr)) {
                snprintf(why, cap, "the framebuffer %s is on it (the host's console)", names[i]);
                found = 1;
            }
        }
        titan_sysroot_free_list(names, n);
    }
    return found;
}

/* --- names through libpci --- */

struct titan_pci_names {
    struct pci_access *pa; /* NULL: names are off */
    char source[64];       /* the host path of the pci.ids in use */
    char why[160];         /* why names are off */
};

/* libpci reports a malformed pci.ids through a->error, which must not return; the parse closes its file
 * before that, so the loader jumps back out of it (the partial list is freed by pci_cleanup). */
static __thread jmp_buf *s_pci_jump;
static __thread char s_pci_error_text[128];

__attribute__((noreturn, format(printf, 1, 2))) static void s_pci_error(char *msg, ...)
{
    va_list ap;
    va_start(ap, msg);
    vsnprintf(s_pci_error_text, sizeof(s_pci_error_text), msg, ap);
    va_end(ap);
    if (s_pci_jump) longjmp(*s_pci_jump, 1);
    abort(); /* only the name loader below calls into libpci in a way that can fail */
}

__attribute__((format(printf, 1, 2))) static void s_pci_quiet(char *msg, ...)
{
    (void)msg;
}

/* Loads pa's name list. Returns 1, 0 when the file cannot be opened, -1 on a parse error (the text is in
 * s_pci_error_text). */
static int s_load_names(struct pci_access *pa)
{
    jmp_buf jb;
    s_pci_jump = &jb;
    if (setjmp(jb) != 0) {
        s_pci_jump = NULL;
        return -1;
    }
    int r = pci_load_name_list(pa);
    s_pci_jump = NULL;
    return r ? 1 : 0;
}

titan_pci_names *titan_pci_names_new(const titan_sysroot *sr)
{
    static const char *const paths[] = {"/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"};
    titan_pci_names *nm = calloc(1, sizeof(*nm));
    if (!nm) return NULL;
    snprintf(nm->why, sizeof(nm->why), "no pci.ids in /usr/share/misc or /usr/share/hwdata");
    const char *found = NULL;
    char full[PATH_MAX];
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]) && !found; i++)
        if (titan_sysroot_exists(sr, paths[i]) && titan_sysroot_path(sr, paths[i], full, sizeof(full)) == 0)
            found = paths[i];
    if (!found) return nm;
    char *name = strdup(full);
    struct pci_access *pa = name ? pci_alloc() : NULL;
    if (!pa) {
        free(name);
        free(nm);
        return NULL;
    }
    pa->error = s_pci_error;
    pa->warning = s_pci_quiet;
    pa->debug = s_pci_quiet;
    pa->id_lookup_mode = 0; /* no ~/.pciids-cache, no DNS: only the file below */
    pci_set_name_list_path(pa, name, 1);
    int loaded = s_load_names(pa);
    if (loaded == 0) {
        snprintf(nm->why, sizeof(nm->why), "%s cannot be read", found);
    } else if (loaded < 0) {
        size_t l = strlen(s_pci_error_text);
        while (l && s_pci_error_text[l - 1] == '\n')
            s_pci_error_text[--l] = '\0';
        /* libpci writes "ERROR at FULL-PATH, line N"; the host path is what the user knows. */
        const char *at = strstr(s_pci_error_text, " at ");
        const char *line = strstr(s_pci_error_text, ", line ");
        int cut = at ? (int)(at - s_pci_error_text) : (int)l;
        snprintf(nm->why, sizeof(nm->why), "%s: %.*s%s", found, cut, s_pci_error_text, line ? line : "");
    }
    if (loaded <= 0) {
        pci_cleanup(pa);
        return nm;
    }
    nm->pa = pa;
    snprintf(nm->source, sizeof(nm->source), "%s", found);
    nm->why[0] = '\0';
    return nm;
}

void titan_pci_names_destroy(titan_pci_names **p)
{
    if (!p || !*p) return;
    if ((*p)->pa) pci_cleanup((*p)->pa);
    free(*p);
    *p = NULL;
}

const char *titan_pci_names_source(const titan_pci_names *nm, const char **why)
{
    if (nm && nm->pa) return nm->source;
    if (why) *why = nm ? nm->why : "out of memory";
    return NULL;
}

/* One libpci lookup with names only (NULL when unknown). */
static const char *s_lookup(titan_pci_names *nm, char *buf, int size, int what, unsigned a, unsigned b)
{
    const int flags = PCI_LOOKUP_NO_NUMBERS | PCI_LOOKUP_NO_HWDB;
    if (!nm || !nm->pa) return NULL;
    if (what == PCI_LOOKUP_DEVICE) return pci_lookup_name(nm->pa, buf, size, flags | what, (int)a, (int)b);
    return pci_lookup_name(nm->pa, buf, size, flags | what, (int)a);
}

void titan_pci_names_device(titan_pci_names *nm, const titan_pci_fn *fn, char *out, size_t cap)
{
    char vb[128], db[160];
    const char *v = s_lookup(nm, vb, sizeof(vb), PCI_LOOKUP_VENDOR, fn->vendor, 0);
    const char *d = v ? s_lookup(nm, db, sizeof(db), PCI_LOOKUP_DEVICE, fn->vendor, fn->device) : NULL;
    if (v && d)
        snprintf(out, cap, "%s %s", v, d);
    else if (v)
        snprintf(out, cap, "%s (device %04x)", v, fn->device);
    else if (cap)
        out[0] = '\0';
}

void titan_pci_names_class(titan_pci_names *nm, const titan_pci_fn *fn, char *out, size_t cap)
{
    char b[128];
    const char *c = s_lookup(nm, b, sizeof(b), PCI_LOOKUP_CLASS, fn->cls >> 8, 0);
    if (c)
        snprintf(out, cap, "%s", c);
    else if (cap)
        out[0] = '\0';
}
