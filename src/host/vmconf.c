/* vmconf.c - vm.yaml (see vmconf.h): a libyaml document checked field by field, and the domain XML made from
 * it. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "../lib/yamlconf.h"
#include "vmconf.h"

/* A vm.yaml is a few dozen lines; these caps keep a hostile or wrong file cheap to reject. */
#define S_MAX_BYTES (64 * 1024)
#define S_MAX_DEPTH 16
#define S_MAX_NODES 10000

#define S_KIB 1024ULL
#define S_MIB (1024ULL * S_KIB)
#define S_GIB (1024ULL * S_MIB)
#define S_TIB (1024ULL * S_GIB)
#define S_MIN_MEMORY (256ULL * S_MIB)
#define S_MAX_MEMORY (64ULL * S_TIB)
#define S_MIN_DISK S_MIB
#define S_MAX_DISK (1024ULL * S_TIB)

#define S_MAX_VCPUS 256

static const yamlconf_rules s_rules = {
    .max_bytes = S_MAX_BYTES,
    .max_depth = S_MAX_DEPTH,
    .max_values = S_MAX_NODES,
    .what = "a vm.yaml",
    .holder = "vm.yaml",
    .path_of = "vm.yaml",
    .needs = "name:, memory:, vcpus: and disk:",
};

enum {
    K_NAME,
    K_MEMORY,
    K_VCPUS,
    K_TOPOLOGY,
    K_DISK,
    K_GPU,
    K_FIRMWARE,
    K_NETWORK,
    K_MAC,
    K_GUEST_AGENT,
    K_HIDE_KVM,
    K_GRAPHICS,
    K_MACHINE,
    K_FORWARD,
    K_KVM,
    K_CONSOLE_LOG,
    K_COUNT
};
static const char *const s_top_keys[K_COUNT] = {
    "name",     "memory",   "vcpus",   "topology", "disk",    "gpu", "firmware",   "network",
    "mac",      "guest_agent", "hide_kvm", "graphics", "machine", "forward", "kvm", "console_log"};

enum { D_PATH, D_SIZE, D_FORMAT, D_COUNT };
static const char *const s_disk_keys[D_COUNT] = {"path", "size", "format"};

enum { P_SOCKETS, P_CORES, P_THREADS, P_COUNT };
static const char *const s_topo_keys[P_COUNT] = {"sockets", "cores", "threads"};

enum { W_LOADER, W_NVRAM, W_COUNT };
static const char *const s_fw_keys[W_COUNT] = {"loader", "nvram"};

/* A short, one-line, printable rendering of a value for messages: "\"8 gigs\"", "a list", ... */
static const char *s_show(const yaml_node_t *n, char *buf, size_t cap)
{
    if (n->type == YAML_SEQUENCE_NODE) return "a list";
    if (n->type == YAML_MAPPING_NODE) return "a mapping";
    if (n->type != YAML_SCALAR_NODE) return "nothing";
    if (n->data.scalar.length == 0) return "an empty value";
    yamlconf_text t = yamlconf_text_of(n);
    size_t o = 0;
    buf[o++] = '"';
    for (size_t i = 0; i < t.len && o + 8 < cap; i++) {
        unsigned char ch = (unsigned char)t.s[i];
        if (i >= 60) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (ch == '"' || ch == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)ch;
        } else if (ch >= 0x20 && ch < 0x7f) {
            buf[o++] = (char)ch;
        } else {
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", ch);
        }
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

static bool s_alnum(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
}

static int s_hexval(char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static char s_lower(char ch)
{
    return ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
}

/* Edit distance, for "did you mean" on a mistyped key; keys are short, so the O(n*m) table is tiny. */
static size_t s_distance(yamlconf_text a, const char *b)
{
    size_t bl = strlen(b);
    if (a.len > 32 || bl > 32) return SIZE_MAX;
    size_t row[33];
    for (size_t j = 0; j <= bl; j++)
        row[j] = j;
    for (size_t i = 1; i <= a.len; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= bl; j++) {
            size_t up = row[j];
            size_t best = diag + (s_lower(a.s[i - 1]) == s_lower(b[j - 1]) ? 0 : 1);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[bl];
}

/* Sorts a mapping's pairs into vals[] by `names`. An unknown key is an error (a typo would silently drop a
 * GPU or a disk), and so is a key given twice. `prefix` is the mapping's path ("disk.") or "". */
static int s_collect(yamlconf *c, const yaml_node_t *map, const char *prefix, const char *const *names,
                     int nnames, yaml_node_t **vals, int *lines)
{
    char buf[96];
    for (int i = 0; i < nnames; i++) {
        vals[i] = NULL;
        lines[i] = 0;
    }
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(c->doc, p->value);
        if (!k || !v)
            return yamlconf_fail(c, yamlconf_line(map), "%s: damaged YAML document; rewrite it", prefix);
        if (k->type != YAML_SCALAR_NODE)
            return yamlconf_fail(c, yamlconf_line(k), "%skey: is %s; keys must be plain field names", prefix,
                                 s_show(k, buf, sizeof buf));
        yamlconf_text t = yamlconf_text_of(k);
        int f = -1;
        for (int i = 0; i < nnames && f < 0; i++)
            if (yamlconf_is(t, names[i])) f = i;
        if (f < 0) {
            char known[256] = "";
            size_t o = 0;
            int near = -1;
            size_t near_d = 3; /* suggest only what is at most two edits away */
            for (int i = 0; i < nnames; i++) {
                int w = snprintf(known + o, sizeof known - o, "%s%s", i ? ", " : "", names[i]);
                if (w > 0 && (size_t)w < sizeof known - o) o += (size_t)w;
                size_t d = s_distance(t, names[i]);
                if (d < near_d) {
                    near_d = d;
                    near = i;
                }
            }
            if (near >= 0)
                return yamlconf_fail(c, yamlconf_line(k),
                                     "%s%s: unknown field (did you mean %s?); the fields are: %s", prefix,
                                     s_show(k, buf, sizeof buf), names[near], known);
            return yamlconf_fail(c, yamlconf_line(k), "%s%s: unknown field; remove it or use one of: %s",
                                 prefix, s_show(k, buf, sizeof buf), known);
        }
        if (vals[f])
            return yamlconf_fail(c, yamlconf_line(k), "%s%s: given twice (first on line %d); keep one",
                                 prefix, names[f], lines[f]);
        vals[f] = v;
        lines[f] = yamlconf_line(k);
    }
    return 0;
}

/* The value must be a non-empty scalar; `want` says what to write instead. */
static int s_need_scalar(yamlconf *c, const yaml_node_t *v, const char *field, const char *want)
{
    char buf[96];
    if (v->type == YAML_SCALAR_NODE && v->data.scalar.length > 0) return 0;
    return yamlconf_fail(c, yamlconf_line(v), "%s: is %s; %s", field, s_show(v, buf, sizeof buf), want);
}

/* "N UNIT" with an optional blank: KiB/MiB/GiB/TiB, K/M/G/T (binary) and KB/MB/GB/TB (read as binary too,
 * as libvirt and qemu-img do). Bare numbers get `bare_unit` (0: a unit is required). */
static bool s_parse_size(yamlconf_text t, uint64_t bare_unit, uint64_t *bytes)
{
    size_t i = 0;
    uint64_t v = 0;
    while (i < t.len && t.s[i] >= '0' && t.s[i] <= '9') {
        if (v > (UINT64_MAX - 9) / 10) return false;
        v = v * 10 + (uint64_t)(t.s[i] - '0');
        i++;
    }
    if (i == 0) return false;
    if (t.s[0] == '0' && i > 1) return false;
    size_t u = i;
    if (u < t.len && t.s[u] == ' ') u++;
    yamlconf_text unit = {t.s + u, t.len - u};
    uint64_t mult = 0;
    static const struct {
        const char *word;
        uint64_t mult;
    } units[] = {{"KiB", S_KIB}, {"MiB", S_MIB}, {"GiB", S_GIB}, {"TiB", S_TIB},
                 {"K", S_KIB},   {"M", S_MIB},   {"G", S_GIB},   {"T", S_TIB},
                 {"KB", S_KIB},  {"MB", S_MIB},  {"GB", S_GIB},  {"TB", S_TIB}};
    if (unit.len == 0) {
        if (u != i) return false; /* "8 " */
        mult = bare_unit;
    } else {
        for (size_t k = 0; k < sizeof units / sizeof units[0] && mult == 0; k++)
            if (yamlconf_is(unit, units[k].word)) mult = units[k].mult;
    }
    if (mult == 0) return false;
    if (v > UINT64_MAX / mult) return false;
    *bytes = v * mult;
    return true;
}

/* YAML 1.1's booleans, as people write them: true when `t` is one, with its value in *out. */
static bool s_bool_word(yamlconf_text t, bool *out)
{
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (yamlconf_is(t, yes[i])) {
            *out = true;
            return true;
        }
        if (yamlconf_is(t, no[i])) {
            *out = false;
            return true;
        }
    }
    return false;
}

static int s_parse_bool(yamlconf *c, const yaml_node_t *v, const char *field, bool *out)
{
    char buf[96];
    if (v->type == YAML_SCALAR_NODE && s_bool_word(yamlconf_text_of(v), out)) return 0;
    return yamlconf_fail(c, yamlconf_line(v), "%s: %s is not true or false; write true or false", field,
                         s_show(v, buf, sizeof buf));
}

/* An absolute path without control characters that fits `cap` with its NUL. */
static int s_parse_path(yamlconf *c, const yaml_node_t *v, const char *field, const char *example, char *out,
                        size_t cap)
{
    char buf[96];
    int rc = s_need_scalar(c, v, field, "give an absolute path");
    if (rc < 0) return rc;
    yamlconf_text t = yamlconf_text_of(v);
    for (size_t i = 0; i < t.len; i++) {
        unsigned char ch = (unsigned char)t.s[i];
        if (ch < 0x20 || ch == 0x7f)
            return yamlconf_fail(c, yamlconf_line(v),
                                 "%s: %s has a control character; give a plain absolute path", field,
                                 s_show(v, buf, sizeof buf));
    }
    if (t.s[0] != '/')
        return yamlconf_fail(c, yamlconf_line(v), "%s: %s is a relative path; give an absolute path, e.g. %s",
                             field, s_show(v, buf, sizeof buf), example);
    if (t.len >= cap)
        return yamlconf_fail(c, yamlconf_line(v), "%s: the path is longer than %zu bytes; shorten it", field,
                             cap - 1);
    memcpy(out, t.s, t.len);
    out[t.len] = '\0';
    return 0;
}

/* DDDD:BB:SS.F or BB:SS.F in hex (slot <= 1f, function <= 7), written out as 0000:bb:ss.f. */
static bool s_parse_pci(yamlconf_text t, char out[16])
{
    size_t i = 0;
    char dom[5] = "0000";
    if (t.len == 12) {
        for (; i < 4; i++) {
            if (s_hexval(t.s[i]) < 0) return false;
            dom[i] = s_lower(t.s[i]);
        }
        if (t.s[i++] != ':') return false;
    } else if (t.len != 7) {
        return false;
    }
    const char *r = t.s + i; /* BB:SS.F */
    if (s_hexval(r[0]) < 0 || s_hexval(r[1]) < 0 || r[2] != ':' || s_hexval(r[3]) < 0 || s_hexval(r[4]) < 0 ||
        r[5] != '.' || r[6] < '0' || r[6] > '7')
        return false;
    if (s_hexval(r[3]) * 16 + s_hexval(r[4]) > 0x1f) return false;
    snprintf(out, 16, "%s:%c%c:%c%c.%c", dom, s_lower(r[0]), s_lower(r[1]), s_lower(r[3]), s_lower(r[4]),
             r[6]);
    return true;
}

/* Six hex pairs split by ':' (or '-'), unicast; written in lowercase with ':'. */
static bool s_parse_mac(yamlconf_text t, char out[18], bool *multicast)
{
    if (t.len != 17) return false;
    char sep = t.s[2];
    if (sep != ':' && sep != '-') return false;
    for (size_t i = 0; i < 17; i++) {
        if (i % 3 == 2) {
            if (t.s[i] != sep) return false;
        } else if (s_hexval(t.s[i]) < 0) {
            return false;
        }
    }
    for (size_t i = 0; i < 17; i++)
        out[i] = i % 3 == 2 ? ':' : s_lower(t.s[i]);
    out[17] = '\0';
    *multicast = (s_hexval(t.s[1]) & 1) != 0;
    return true;
}

static int s_topology(yamlconf *c, const yaml_node_t *v, titan_vmconf *o)
{
    char buf[96];
    yaml_node_t *vals[P_COUNT];
    int lines[P_COUNT];
    if (v->type != YAML_MAPPING_NODE)
        return yamlconf_fail(c, yamlconf_line(v),
                             "topology: is %s; write e.g. {sockets: 1, cores: 4, threads: 1}",
                             s_show(v, buf, sizeof buf));
    int rc = s_collect(c, v, "topology.", s_topo_keys, P_COUNT, vals, lines);
    if (rc < 0) return rc;
    int got[P_COUNT];
    for (int i = 0; i < P_COUNT; i++) {
        got[i] = 1; /* a missing level counts once: {cores: 4} means 1 socket, 1 thread */
        if (!vals[i]) continue;
        long n = 0;
        if (vals[i]->type != YAML_SCALAR_NODE ||
            !yamlconf_parse_long(yamlconf_text_of(vals[i]), false, 1, S_MAX_VCPUS, &n))
            return yamlconf_fail(c, yamlconf_line(vals[i]),
                                 "topology.%s: %s is not a whole number from 1 to %d; fix it", s_topo_keys[i],
                                 s_show(vals[i], buf, sizeof buf), S_MAX_VCPUS);
        got[i] = (int)n;
    }
    long product = (long)got[P_SOCKETS] * got[P_CORES] * got[P_THREADS];
    if (product != o->vcpus)
        return yamlconf_fail(
            c, yamlconf_line(v),
            "topology: sockets %d x cores %d x threads %d = %ld, but vcpus is %d; make the product "
            "equal vcpus",
            got[P_SOCKETS], got[P_CORES], got[P_THREADS], product, o->vcpus);
    o->sockets = got[P_SOCKETS];
    o->cores = got[P_CORES];
    o->threads = got[P_THREADS];
    return 0;
}

static int s_disk(yamlconf *c, int keyline, const yaml_node_t *v, titan_vmconf *o)
{
    char buf[96];
    yaml_node_t *vals[D_COUNT];
    int lines[D_COUNT];
    if (v->type != YAML_MAPPING_NODE)
        return yamlconf_fail(c, yamlconf_line(v),
                             "disk: is %s; write a mapping with path: (and optionally size:, format:)",
                             s_show(v, buf, sizeof buf));
    int rc = s_collect(c, v, "disk.", s_disk_keys, D_COUNT, vals, lines);
    if (rc < 0) return rc;
    if (!vals[D_PATH])
        return yamlconf_fail(c, keyline,
                             "disk.path: missing; add e.g. path: /var/lib/libvirt/images/%s.qcow2", o->name);
    rc = s_parse_path(c, vals[D_PATH], "disk.path", "/var/lib/libvirt/images/titan-worker.qcow2",
                      o->disk_path, sizeof o->disk_path);
    if (rc < 0) return rc;
    if (vals[D_SIZE]) {
        const yaml_node_t *s = vals[D_SIZE];
        uint64_t bytes = 0;
        if (s->type != YAML_SCALAR_NODE || !s_parse_size(yamlconf_text_of(s), 0, &bytes))
            return yamlconf_fail(c, yamlconf_line(s),
                                 "disk.size: %s is not a size with a unit; write e.g. 40GiB or 40960MiB",
                                 s_show(s, buf, sizeof buf));
        if (bytes < S_MIN_DISK || bytes > S_MAX_DISK)
            return yamlconf_fail(c, yamlconf_line(s),
                                 "disk.size: %s is out of range; give 1MiB to 1024TiB, e.g. 40GiB",
                                 s_show(s, buf, sizeof buf));
        o->disk_size_bytes = bytes;
    }
    if (vals[D_FORMAT]) {
        const yaml_node_t *f = vals[D_FORMAT];
        if (f->type == YAML_SCALAR_NODE && yamlconf_is(yamlconf_text_of(f), "qcow2"))
            snprintf(o->disk_format, sizeof o->disk_format, "qcow2");
        else if (f->type == YAML_SCALAR_NODE && yamlconf_is(yamlconf_text_of(f), "raw"))
            snprintf(o->disk_format, sizeof o->disk_format, "raw");
        else
            return yamlconf_fail(c, yamlconf_line(f),
                                 "disk.format: %s is not a disk format; write qcow2 or raw",
                                 s_show(f, buf, sizeof buf));
    }
    return 0;
}

static int s_one_gpu(yamlconf *c, const yaml_node_t *g, titan_vmconf *o, int *lines)
{
    char buf[96];
    char pci[16];
    if (g->type != YAML_SCALAR_NODE || !s_parse_pci(yamlconf_text_of(g), pci))
        return yamlconf_fail(
            c, yamlconf_line(g),
            "gpu: %s is not a PCI address; write DDDD:BB:SS.F or BB:SS.F as lspci -D shows it, "
            "e.g. 0000:03:00.0",
            s_show(g, buf, sizeof buf));
    for (int i = 0; i < o->ngpus; i++)
        if (strcmp(o->gpus[i], pci) == 0)
            return yamlconf_fail(c, yamlconf_line(g), "gpu: %s is listed twice (first on line %d); keep one",
                                 pci, lines[i]);
    if (o->ngpus >= TITAN_VM_MAX_GPUS)
        return yamlconf_fail(c, yamlconf_line(g), "gpu: more than %d PCI functions; pass at most %d",
                             TITAN_VM_MAX_GPUS, TITAN_VM_MAX_GPUS);
    lines[o->ngpus] = yamlconf_line(g);
    memcpy(o->gpus[o->ngpus++], pci, sizeof pci);
    return 0;
}

/* Calls `one` on each item of the list `v` (a single scalar is a list of one); `want` completes "FIELD: is a
 * mapping; write ..." for anything else. */
typedef int (*s_item_fn)(yamlconf *c, const yaml_node_t *item, titan_vmconf *o, void *ctx);
static int s_each(yamlconf *c, const yaml_node_t *v, const char *field, const char *want, s_item_fn one,
                  titan_vmconf *o, void *ctx)
{
    if (v->type == YAML_SCALAR_NODE) return one(c, v, o, ctx);
    if (v->type != YAML_SEQUENCE_NODE) {
        char buf[96];
        return yamlconf_fail(c, yamlconf_line(v), "%s: is %s; write %s", field, s_show(v, buf, sizeof buf), want);
    }
    for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
        yaml_node_t *g = yaml_document_get_node(c->doc, *it);
        if (!g) return yamlconf_fail(c, yamlconf_line(v), "%s: damaged YAML document; rewrite it", field);
        int rc = one(c, g, o, ctx);
        if (rc < 0) return rc;
    }
    return 0;
}

static int s_gpu_item(yamlconf *c, const yaml_node_t *g, titan_vmconf *o, void *lines)
{
    return s_one_gpu(c, g, o, lines);
}

static int s_gpus(yamlconf *c, const yaml_node_t *v, titan_vmconf *o)
{
    int lines[TITAN_VM_MAX_GPUS] = {0};
    return s_each(c, v, "gpu", "a list of PCI addresses, e.g. [0000:03:00.0, 0000:03:00.1]", s_gpu_item, o, lines);
}

static int s_firmware(yamlconf *c, const yaml_node_t *v, titan_vmconf *o)
{
    char buf[96];
    if (v->type == YAML_SCALAR_NODE) {
        yamlconf_text t = yamlconf_text_of(v);
        if (yamlconf_is(t, "efi") || yamlconf_is(t, "bios")) {
            memcpy(o->firmware, t.s, t.len);
            o->firmware[t.len] = '\0';
            return 0;
        }
    }
    if (v->type != YAML_MAPPING_NODE)
        return yamlconf_fail(c, yamlconf_line(v),
                             "firmware: %s is not a firmware; write efi, bios, or {loader: "
                             "/usr/share/edk2/x64/OVMF_CODE.4m.fd, nvram: PATH}",
                             s_show(v, buf, sizeof buf));
    yaml_node_t *vals[W_COUNT];
    int lines[W_COUNT];
    int rc = s_collect(c, v, "firmware.", s_fw_keys, W_COUNT, vals, lines);
    if (rc < 0) return rc;
    if (!vals[W_LOADER])
        return yamlconf_fail(
            c, yamlconf_line(v),
            "firmware.loader: missing; add e.g. loader: /usr/share/edk2/x64/OVMF_CODE.4m.fd");
    rc = s_parse_path(c, vals[W_LOADER], "firmware.loader", "/usr/share/edk2/x64/OVMF_CODE.4m.fd", o->loader,
                      sizeof o->loader);
    if (rc < 0) return rc;
    if (vals[W_NVRAM]) {
        rc = s_parse_path(c, vals[W_NVRAM], "firmware.nvram",
                          "/var/lib/libvirt/qemu/nvram/titan-worker_VARS.fd", o->nvram, sizeof o->nvram);
        if (rc < 0) return rc;
    }
    snprintf(o->firmware, sizeof o->firmware, "efi");
    return 0;
}

/* A port number 1..65535 in t[*i..] up to `stop` (or the end); advances *i. */
static bool s_port(yamlconf_text t, size_t *i, char stop, int *out)
{
    long v = 0;
    size_t start = *i;
    while (*i < t.len && t.s[*i] != stop) {
        if (t.s[*i] < '0' || t.s[*i] > '9' || *i - start >= 5) return false;
        v = v * 10 + (t.s[*i] - '0');
        (*i)++;
    }
    if (*i == start || t.s[start] == '0' || v < 1 || v > 65535) return false;
    *out = (int)v;
    return true;
}

/* A dotted IPv4 address, four numbers 0..255 without leading zeros. */
static bool s_ipv4(const char *s, size_t len)
{
    int parts = 0;
    size_t i = 0;
    while (parts < 4) {
        size_t start = i;
        int v = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9' && i - start < 3) v = v * 10 + (s[i++] - '0');
        if (i == start || v > 255 || (s[start] == '0' && i - start > 1)) return false;
        parts++;
        if (parts < 4) {
            if (i >= len || s[i] != '.') return false;
            i++;
        }
    }
    return i == len;
}

/* "[HOST_ADDR:]HOST_PORT:GUEST_PORT" */
static int s_one_forward(yamlconf *c, const yaml_node_t *v, titan_vmconf *o)
{
    char buf[96];
    static const char want[] =
        "write [HOST_ADDR:]HOST_PORT:GUEST_PORT, e.g. 127.0.0.1:5555:5555 (the address defaults to 127.0.0.1)";
    if (v->type != YAML_SCALAR_NODE)
        return yamlconf_fail(c, yamlconf_line(v), "forward: an entry is %s; %s", s_show(v, buf, sizeof buf),
                             want);
    if (o->nforwards >= TITAN_VM_MAX_FORWARDS)
        return yamlconf_fail(c, yamlconf_line(v), "forward: more than %d entries; forward fewer ports",
                             TITAN_VM_MAX_FORWARDS);
    yamlconf_text t = yamlconf_text_of(v);
    titan_vm_forward f = {.host_addr = "127.0.0.1"};
    size_t colons = 0, last = 0, prev = 0;
    for (size_t i = 0; i < t.len; i++)
        if (t.s[i] == ':') {
            colons++;
            prev = last;
            last = i;
        }
    size_t i = 0;
    bool ok = colons == 1 || colons == 2;
    if (ok && colons == 2) {
        ok = prev < sizeof f.host_addr && s_ipv4(t.s, prev);
        if (ok) {
            memcpy(f.host_addr, t.s, prev);
            f.host_addr[prev] = '\0';
            i = prev + 1;
        }
    }
    if (ok) ok = s_port(t, &i, ':', &f.host_port);
    if (ok) {
        i++;
        ok = s_port(t, &i, '\0', &f.guest_port);
    }
    if (!ok) return yamlconf_fail(c, yamlconf_line(v), "forward: %s is not a port forward; %s", s_show(v, buf, sizeof buf), want);
    for (int k = 0; k < o->nforwards; k++)
        if (o->forwards[k].host_port == f.host_port && strcmp(o->forwards[k].host_addr, f.host_addr) == 0)
            return yamlconf_fail(c, yamlconf_line(v), "forward: %s:%d is forwarded twice; keep one", f.host_addr,
                                 f.host_port);
    o->forwards[o->nforwards++] = f;
    return 0;
}

static int s_forward_item(yamlconf *c, const yaml_node_t *g, titan_vmconf *o, void *ctx)
{
    (void)ctx;
    return s_one_forward(c, g, o);
}

static int s_forwards(yamlconf *c, const yaml_node_t *v, titan_vmconf *o)
{
    return s_each(c, v, "forward", "a list of port forwards, e.g. [127.0.0.1:5555:5555]", s_forward_item, o, NULL);
}

static int s_kvm(yamlconf *c, const yaml_node_t *v, titan_vmconf *o)
{
    char buf[96];
    if (v->type == YAML_SCALAR_NODE) {
        yamlconf_text t = yamlconf_text_of(v);
        if (yamlconf_is(t, "auto")) {
            o->kvm = TITAN_VM_KVM_AUTO;
            return 0;
        }
        bool on;
        if (s_bool_word(t, &on)) {
            o->kvm = on ? TITAN_VM_KVM_ON : TITAN_VM_KVM_OFF;
            return 0;
        }
    }
    return yamlconf_fail(c, yamlconf_line(v),
                         "kvm: %s is not auto, on or off; write auto (KVM where the host has it, else TCG "
                         "emulation), on (KVM, or fail) or off (TCG emulation)",
                         s_show(v, buf, sizeof buf));
}

bool titan_vmconf_user_net(const titan_vmconf *c)
{
    return c && strcmp(c->network, "user") == 0;
}

static int s_top(yamlconf *c, const yaml_node_t *root, titan_vmconf *o)
{
    char buf[96];
    yaml_node_t *v[K_COUNT];
    int kl[K_COUNT];
    int rc;
    if (root->type != YAML_MAPPING_NODE)
        return yamlconf_fail(c, yamlconf_line(root),
                             "the file is %s; it must be a mapping with name:, memory:, vcpus: and disk:",
                             s_show(root, buf, sizeof buf));
    if ((rc = s_collect(c, root, "", s_top_keys, K_COUNT, v, kl)) < 0) return rc;

    static const char *const missing[K_COUNT] = {
        [K_NAME] = "add e.g. name: titan-worker",
        [K_MEMORY] = "add e.g. memory: 8GiB",
        [K_VCPUS] = "add e.g. vcpus: 4",
        [K_DISK] = "add a disk: mapping with path: /var/lib/libvirt/images/titan-worker.qcow2",
    };
    for (int i = 0; i < K_COUNT; i++)
        if (missing[i] && !v[i])
            return yamlconf_fail(c, yamlconf_line(root), "%s: missing; %s", s_top_keys[i], missing[i]);

    /* name */
    if ((rc = s_need_scalar(c, v[K_NAME], "name", "write e.g. name: titan-worker")) < 0) return rc;
    yamlconf_text name = yamlconf_text_of(v[K_NAME]);
    if (!yamlconf_name_ok(name, sizeof o->name - 1) || !s_alnum(name.s[0]))
        return yamlconf_fail(
            c, yamlconf_line(v[K_NAME]),
            "name: %s is not a VM name; use 1 to %zu of A-Z a-z 0-9 _ . - starting with a letter or "
            "digit, e.g. titan-worker",
            s_show(v[K_NAME], buf, sizeof buf), sizeof o->name - 1);
    memcpy(o->name, name.s, name.len);
    o->name[name.len] = '\0';

    /* memory: a bare number is MiB, as virt-install reads it */
    uint64_t mem = 0;
    const yaml_node_t *m = v[K_MEMORY];
    if (m->type != YAML_SCALAR_NODE || !s_parse_size(yamlconf_text_of(m), S_MIB, &mem))
        return yamlconf_fail(c, yamlconf_line(m), "memory: %s is not a size; write e.g. 8GiB or 8192MiB",
                             s_show(m, buf, sizeof buf));
    if (mem < S_MIN_MEMORY || mem > S_MAX_MEMORY)
        return yamlconf_fail(c, yamlconf_line(m),
                             "memory: %s is out of range; give 256MiB to 64TiB, e.g. 8GiB",
                             s_show(m, buf, sizeof buf));
    o->memory_kib = mem / S_KIB;

    long vcpus = 0;
    if (v[K_VCPUS]->type != YAML_SCALAR_NODE ||
        !yamlconf_parse_long(yamlconf_text_of(v[K_VCPUS]), false, 1, S_MAX_VCPUS, &vcpus))
        return yamlconf_fail(c, yamlconf_line(v[K_VCPUS]),
                             "vcpus: %s is not a whole number from 1 to %d; write e.g. 4",
                             s_show(v[K_VCPUS], buf, sizeof buf), S_MAX_VCPUS);
    o->vcpus = (int)vcpus;

    if (v[K_TOPOLOGY] && (rc = s_topology(c, v[K_TOPOLOGY], o)) < 0) return rc;
    if ((rc = s_disk(c, kl[K_DISK], v[K_DISK], o)) < 0) return rc;
    if (v[K_GPU] && (rc = s_gpus(c, v[K_GPU], o)) < 0) return rc;
    if (v[K_FIRMWARE] && (rc = s_firmware(c, v[K_FIRMWARE], o)) < 0) return rc;

    if (v[K_NETWORK]) {
        const yaml_node_t *n = v[K_NETWORK];
        if (n->type == YAML_SCALAR_NODE && yamlconf_is(yamlconf_text_of(n), "none")) {
            o->network[0] = '\0';
        } else if (n->type == YAML_SCALAR_NODE &&
                   yamlconf_name_ok(yamlconf_text_of(n), sizeof o->network - 1)) { /* also "user" */
            memcpy(o->network, n->data.scalar.value, n->data.scalar.length);
            o->network[n->data.scalar.length] = '\0';
        } else {
            return yamlconf_fail(
                c, yamlconf_line(n),
                "network: %s is not a libvirt network name; write none or a name of 1 to %zu of "
                "A-Z a-z 0-9 _ . - (virsh net-list --all shows them), e.g. default; or user for QEMU's "
                "user-mode network",
                s_show(n, buf, sizeof buf), sizeof o->network - 1);
        }
    }
    if (v[K_MAC]) {
        const yaml_node_t *n = v[K_MAC];
        bool multicast = false;
        if (n->type != YAML_SCALAR_NODE || !s_parse_mac(yamlconf_text_of(n), o->mac, &multicast))
            return yamlconf_fail(c, yamlconf_line(n),
                                 "mac: %s is not a MAC address; write six hex pairs, e.g. 52:54:00:12:34:56",
                                 s_show(n, buf, sizeof buf));
        if (multicast)
            return yamlconf_fail(c, yamlconf_line(n),
                                 "mac: %s is a multicast address; use a unicast one (even first byte), e.g. "
                                 "52:54:00:12:34:56",
                                 s_show(n, buf, sizeof buf));
        if (!o->network[0])
            return yamlconf_fail(c, yamlconf_line(n),
                                 "mac: given, but network is none; remove mac or name a network");
    }
    if (v[K_FORWARD]) {
        if (!titan_vmconf_user_net(o))
            return yamlconf_fail(c, yamlconf_line(v[K_FORWARD]),
                                 "forward: given, but network is not user; port forwards belong to QEMU's "
                                 "user-mode network (network: user); on a libvirt network reach the guest's "
                                 "address instead");
        if ((rc = s_forwards(c, v[K_FORWARD], o)) < 0) return rc;
    }
    if (v[K_KVM] && (rc = s_kvm(c, v[K_KVM], o)) < 0) return rc;
    if (v[K_CONSOLE_LOG] && (rc = s_parse_path(c, v[K_CONSOLE_LOG], "console_log",
                                               "/var/log/titan/vm-console.log", o->console_log,
                                               sizeof o->console_log)) < 0)
        return rc;
    if (v[K_GUEST_AGENT] && (rc = s_parse_bool(c, v[K_GUEST_AGENT], "guest_agent", &o->guest_agent)) < 0)
        return rc;
    if (v[K_HIDE_KVM] && (rc = s_parse_bool(c, v[K_HIDE_KVM], "hide_kvm", &o->hide_kvm)) < 0) return rc;
    if (v[K_GRAPHICS]) {
        const yaml_node_t *g = v[K_GRAPHICS];
        if (g->type == YAML_SCALAR_NODE &&
            (yamlconf_is(yamlconf_text_of(g), "none") || yamlconf_is(yamlconf_text_of(g), "spice"))) {
            memcpy(o->graphics, g->data.scalar.value, g->data.scalar.length);
            o->graphics[g->data.scalar.length] = '\0';
        } else {
            return yamlconf_fail(c, yamlconf_line(g),
                                 "graphics: %s is not a graphics choice; write none or spice",
                                 s_show(g, buf, sizeof buf));
        }
    }
    if (v[K_MACHINE]) {
        const yaml_node_t *g = v[K_MACHINE];
        if (g->type != YAML_SCALAR_NODE || !yamlconf_name_ok(yamlconf_text_of(g), sizeof o->machine - 1) ||
            !s_alnum(g->data.scalar.value[0]))
            return yamlconf_fail(
                c, yamlconf_line(g),
                "machine: %s is not a machine type; write q35 (or a versioned one such as pc-q35-7.2, "
                "see qemu-system-x86_64 -machine help)",
                s_show(g, buf, sizeof buf));
        memcpy(o->machine, g->data.scalar.value, g->data.scalar.length);
        o->machine[g->data.scalar.length] = '\0';
    }
    return 0;
}

static void s_defaults(titan_vmconf *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->disk_format, sizeof o->disk_format, "qcow2");
    snprintf(o->firmware, sizeof o->firmware, "efi");
    snprintf(o->network, sizeof o->network, "default");
    snprintf(o->graphics, sizeof o->graphics, "none");
    snprintf(o->machine, sizeof o->machine, "q35");
}

static int s_load(yamlconf *c, const char *text, size_t len, titan_vmconf *out)
{
    yaml_document_t doc;
    yaml_node_t *root = NULL;
    int rc = yamlconf_load(c, &s_rules, text, len, &doc, &root);
    if (rc < 0) return rc;
    titan_vmconf *o = malloc(sizeof *o); /* ~4 KiB: built aside so *out is written only on success */
    if (o) {
        s_defaults(o);
        rc = s_top(c, root, o);
        if (rc == 0) *out = *o;
        free(o);
    } else {
        rc = -ENOMEM;
    }
    yaml_document_delete(&doc);
    return rc;
}

int titan_vmconf_load_string(const char *text, size_t len, const char *name, titan_vmconf *out, char *err,
                             size_t errcap)
{
    yamlconf c = {.name = name ? name : "(string)", .err = err, .errcap = errcap};
    if (!out || (!text && len > 0))
        return yamlconf_fail(&c, 0, "no text or no place for the result (a bug in the caller)");
    if (len > S_MAX_BYTES) {
        yamlconf_fail(&c, 0, "larger than %d bytes; this is not a vm.yaml", S_MAX_BYTES);
        return -EFBIG;
    }
    int rc = s_load(&c, text ? text : "", len, out);
    if (rc == -ENOMEM) yamlconf_fail(&c, 0, "out of memory while reading it");
    return rc;
}

int titan_vmconf_load_file(const char *path, titan_vmconf *out, char *err, size_t errcap)
{
    yamlconf c = {.name = path ? path : "(null)", .err = err, .errcap = errcap};
    if (!path || !out)
        return yamlconf_fail(&c, 0, "no path or no place for the result (a bug in the caller)");
    char *buf = NULL;
    size_t len = 0;
    int rc = yamlconf_read(&c, &s_rules, &buf, &len);
    if (rc == -EFBIG) return -EINVAL; /* as for any other bad file */
    if (rc < 0) return rc;
    rc = titan_vmconf_load_string(buf, len, path, out, err, errcap);
    free(buf);
    return rc;
}

/* --- the domain XML --- */

typedef struct {
    char *s;
    size_t len, cap;
    bool oom;
} s_buf;

static void s_put(s_buf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *s2 = realloc(b->s, cap);
        if (!s2) {
            b->oom = true;
            return;
        }
        b->s = s2;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

__attribute__((format(printf, 2, 3))) static void s_putf(s_buf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    /* only numbers and fixed words go through here; strings from the config go through s_put_esc */
    if (n < 0 || (size_t)n >= sizeof tmp) {
        b->oom = true;
        return;
    }
    s_put(b, tmp, (size_t)n);
}

/* Writes field `s` (at most `cap` bytes, NUL or not) escaped for both text and quoted attributes.
 * Control characters cannot be written in XML 1.0 at all; the loader rejects them, and a hand-built
 * config gets '?' in their place rather than a document libvirt refuses. */
static void s_put_esc(s_buf *b, const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        switch (ch) {
        case '&':
            s_put(b, "&amp;", 5);
            break;
        case '<':
            s_put(b, "&lt;", 4);
            break;
        case '>':
            s_put(b, "&gt;", 4);
            break;
        case '\'':
            s_put(b, "&apos;", 6);
            break;
        case '"':
            s_put(b, "&quot;", 6);
            break;
        default:
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
                s_put(b, "?", 1);
            else
                s_put(b, (const char *)&s[i], 1);
        }
    }
}

/* A string literal, its length counted by the compiler. */
#define S_LIT(b, lit) s_put((b), "" lit, sizeof(lit) - 1)
#define S_ESC(b, field) s_put_esc((b), (field), sizeof(field))

static void s_put_pci(s_buf *b, const char *pci)
{
    /* pci is normalized DDDD:BB:SS.F; anything else (a hand-built config) is skipped by the caller */
    s_putf(b,
           "    <hostdev mode='subsystem' type='pci' managed='yes'>\n"
           "      <source>\n"
           "        <address domain='0x%.4s' bus='0x%.2s' slot='0x%.2s' function='0x%.1s'/>\n"
           "      </source>\n"
           "    </hostdev>\n",
           pci, pci + 5, pci + 8, pci + 11);
}

char *titan_vmconf_xml(const titan_vmconf *c)
{
    s_buf b = {0};
    if (!c) return NULL;
    bool tcg = c->kvm == TITAN_VM_KVM_OFF;
    bool user_net = titan_vmconf_user_net(c);
    if (tcg)
        S_LIT(&b, "<domain type='qemu'");
    else
        S_LIT(&b, "<domain type='kvm'");
    if (user_net) S_LIT(&b, " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'");
    S_LIT(&b, ">\n  <name>");
    S_ESC(&b, c->name);
    s_putf(&b,
           "</name>\n"
           "  <memory unit='KiB'>%llu</memory>\n"
           "  <currentMemory unit='KiB'>%llu</currentMemory>\n"
           "  <vcpu placement='static'>%d</vcpu>\n",
           (unsigned long long)c->memory_kib, (unsigned long long)c->memory_kib, c->vcpus);

    bool efi = strcmp(c->firmware, "bios") != 0;
    bool explicit_loader = efi && c->loader[0];
    if (efi && !explicit_loader)
        S_LIT(&b, "  <os firmware='efi'>\n");
    else
        S_LIT(&b, "  <os>\n");
    S_LIT(&b, "    <type arch='x86_64' machine='");
    if (c->machine[0])
        S_ESC(&b, c->machine);
    else
        S_LIT(&b, "q35");
    S_LIT(&b, "'>hvm</type>\n");
    if (efi && !explicit_loader) /* libvirt picks; steer it off Secure Boot, as titan's own choice does */
        S_LIT(&b, "    <firmware>\n"
                  "      <feature enabled='no' name='enrolled-keys'/>\n"
                  "      <feature enabled='no' name='secure-boot'/>\n"
                  "    </firmware>\n");
    if (explicit_loader) {
        if (c->secure_boot)
            S_LIT(&b, "    <loader readonly='yes' secure='yes' type='pflash'>");
        else
            S_LIT(&b, "    <loader readonly='yes' type='pflash'>");
        S_ESC(&b, c->loader);
        S_LIT(&b, "</loader>\n");
        if (c->nvram[0] || c->nvram_template[0]) {
            S_LIT(&b, "    <nvram");
            if (c->nvram_template[0]) {
                S_LIT(&b, " template='");
                S_ESC(&b, c->nvram_template);
                S_LIT(&b, "'");
            }
            if (c->nvram[0]) {
                S_LIT(&b, ">");
                S_ESC(&b, c->nvram);
                S_LIT(&b, "</nvram>\n");
            } else {
                S_LIT(&b, "/>\n"); /* libvirt makes /var/lib/libvirt/qemu/nvram/NAME_VARS.fd from it */
            }
        }
    }
    S_LIT(&b, "    <boot dev='hd'/>\n  </os>\n");

    S_LIT(&b, "  <features>\n    <acpi/>\n    <apic/>\n");
    if (explicit_loader && c->smm) S_LIT(&b, "    <smm state='on'/>\n");
    if (c->hide_kvm && !tcg) /* under TCG there is no KVM to hide */
        S_LIT(&b, "    <hyperv>\n      <vendor_id state='on' value='titanvm'/>\n    </hyperv>\n"
                  "    <kvm>\n      <hidden state='on'/>\n    </kvm>\n");
    S_LIT(&b, "  </features>\n");

    /* TCG cannot pass the host's CPU through: QEMU's "max" model, every feature TCG emulates */
    if (tcg)
        S_LIT(&b, "  <cpu mode='maximum' check='none'");
    else
        S_LIT(&b, "  <cpu mode='host-passthrough'");
    if (c->sockets > 0 && c->cores > 0 && c->threads > 0)
        s_putf(&b,
               ">\n"
               "    <topology sockets='%d' cores='%d' threads='%d'/>\n"
               "  </cpu>\n",
               c->sockets, c->cores, c->threads);
    else
        S_LIT(&b, "/>\n");
    S_LIT(&b, "  <clock offset='utc'/>\n"
              "  <on_poweroff>destroy</on_poweroff>\n"
              "  <on_reboot>restart</on_reboot>\n"
              "  <on_crash>destroy</on_crash>\n"
              "  <devices>\n");

    S_LIT(&b, "    <disk type='file' device='disk'>\n      <driver name='qemu' type='");
    if (strcmp(c->disk_format, "raw") == 0)
        S_LIT(&b, "raw");
    else
        S_LIT(&b, "qcow2");
    S_LIT(&b, "'/>\n      <source file='");
    S_ESC(&b, c->disk_path);
    S_LIT(&b, "'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n");

    if (c->network[0] && !user_net) {
        S_LIT(&b, "    <interface type='network'>\n");
        if (c->mac[0]) {
            S_LIT(&b, "      <mac address='");
            S_ESC(&b, c->mac);
            S_LIT(&b, "'/>\n");
        }
        S_LIT(&b, "      <source network='");
        S_ESC(&b, c->network);
        S_LIT(&b, "'/>\n      <model type='virtio'/>\n    </interface>\n");
    }

    int ngpus = c->ngpus < 0 ? 0 : c->ngpus > TITAN_VM_MAX_GPUS ? TITAN_VM_MAX_GPUS : c->ngpus;
    for (int i = 0; i < ngpus; i++) {
        char pci[16];
        yamlconf_text t = {c->gpus[i], strnlen(c->gpus[i], sizeof c->gpus[i])};
        if (s_parse_pci(t, pci)) s_put_pci(&b, pci);
    }

    S_LIT(&b, "    <serial type='pty'>\n");
    if (c->console_log[0]) {
        S_LIT(&b, "      <log file='");
        S_ESC(&b, c->console_log);
        S_LIT(&b, "' append='off'/>\n");
    }
    S_LIT(&b, "      <target port='0'/>\n    </serial>\n"
              "    <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>\n");
    if (c->guest_agent)
        S_LIT(&b, "    <channel type='unix'>\n      <target type='virtio' name='org.qemu.guest_agent.0'/>\n"
                  "    </channel>\n");
    if (strcmp(c->graphics, "spice") == 0)
        S_LIT(
            &b,
            "    <graphics type='spice' autoport='yes'>\n      <listen type='address' address='127.0.0.1'/>\n"
            "    </graphics>\n    <video>\n      <model type='qxl'/>\n    </video>\n");
    else
        S_LIT(&b, "    <video>\n      <model type='none'/>\n    </video>\n");
    S_LIT(&b, "    <memballoon model='none'/>\n  </devices>\n");
    if (user_net) {
        /* libvirt 9's own <interface type='user'> forwards ports only through passt: QEMU's built-in user-mode
         * network (slirp) is given to QEMU directly, one -netdev with every forward and its virtio NIC (no option
         * ROM: nothing boots from it) */
        S_LIT(&b, "  <qemu:commandline>\n    <qemu:arg value='-netdev'/>\n    <qemu:arg value='user,id=titannet0");
        for (int i = 0; i < c->nforwards && i < TITAN_VM_MAX_FORWARDS; i++)
            s_putf(&b, ",hostfwd=tcp:%s:%d-:%d", c->forwards[i].host_addr, c->forwards[i].host_port,
                   c->forwards[i].guest_port);
        /* the device in QEMU's JSON form, as libvirt writes its own: QEMU creates JSON devices after the others,
         * and this one must come after libvirt's PCIe root ports, whose slots it would take otherwise */
        S_LIT(&b, "'/>\n    <qemu:arg value='-device'/>\n"
                  "    <qemu:arg value='{\"driver\":\"virtio-net-pci\",\"netdev\":\"titannet0\",\"romfile\":\"\"");
        if (c->mac[0]) {
            S_LIT(&b, ",\"mac\":\"");
            S_ESC(&b, c->mac);
            S_LIT(&b, "\"");
        }
        S_LIT(&b, "}'/>\n  </qemu:commandline>\n");
    }
    S_LIT(&b, "</domain>\n");

    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
