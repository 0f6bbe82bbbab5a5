/* firmware.c - OVMF through QEMU's firmware descriptors (see firmware.h): list the three directories, read
 * each descriptor (bounded, jansson), keep the first that fits, preferring builds without Secure Boot. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "firmware.h"

/* Real descriptors are about 1 KiB, and a distribution ships a dozen; these caps keep a hostile or broken
 * directory cheap to pass over. */
#define S_MAX_DESCRIPTOR_BYTES (64 * 1024)
#define S_MAX_DESCRIPTORS 256
#define S_MAX_NAME 255

#define S_ETC_DIR "/etc/qemu/firmware"
#define S_SHARE_DIR "/usr/share/qemu/firmware"

typedef struct {
    char name[S_MAX_NAME + 1];
    const char *dir; /* the directory that holds the name with the highest priority */
} s_entry;

/* What a walk over the descriptors found, for the final message when nothing fits. */
typedef struct {
    titan_firmware_warn_fn warn;
    void *arg;
    int read;       /* descriptors read (masks included) */
    int other_form; /* x86_64 UEFI for this machine, but qcow2, memory-mapped or combined/stateless */
} s_walk;

__attribute__((format(printf, 2, 3))) static void s_warn(s_walk *w, const char *fmt, ...)
{
    if (!w->warn) return;
    char line[2 * TITAN_FIRMWARE_PATH_MAX + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* names and parser messages quote the untrusted files: keep the line printable ASCII (and valid JSON
     * text for --json) */
    for (char *p = line; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) *p = '?';
    w->warn(w->arg, line);
}

__attribute__((format(printf, 3, 4))) static int s_fail(char *err, size_t errcap, const char *fmt, ...)
{
    if (err && errcap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errcap, fmt, ap);
        va_end(ap);
    }
    return -ENOENT;
}

/* Matches `s` against a descriptor's machine pattern, where '*' is any run and '?' any one character (as
 * libvirt's g_pattern_match_simple reads them). One backtrack point keeps it O(len(p) * len(s)) whatever
 * the pattern, which comes from an untrusted file. */
static bool s_glob(const char *p, const char *s)
{
    const char *star = NULL, *resume = NULL;
    while (*s) {
        if (*p == '*') {
            star = p++;
            resume = s;
        } else if (*p == '?' || *p == *s) {
            p++;
            s++;
        } else if (star) {
            p = star + 1;
            s = ++resume;
        } else {
            return false;
        }
    }
    while (*p == '*')
        p++;
    return *p == '\0';
}

/* A machine type and its versioned form: "q35" stands for the newest pc-q35-X.Y, "pc" for pc-i440fx-X.Y,
 * which is what descriptors list. */
static bool s_machine_matches(const char *pattern, const char *machine)
{
    if (s_glob(pattern, machine)) return true;
    if (strcmp(machine, "q35") == 0) return s_glob(pattern, "pc-q35-latest");
    if (strcmp(machine, "pc") == 0) return s_glob(pattern, "pc-i440fx-latest");
    return false;
}

static bool s_array_has(const json_t *a, const char *word)
{
    for (size_t i = 0; i < json_array_size(a); i++) {
        const json_t *v = json_array_get(a, i);
        if (json_is_string(v) && strcmp(json_string_value(v), word) == 0) return true;
    }
    return false;
}

/* An array of strings only (interface-types, machines, features). */
static bool s_string_array(const json_t *a)
{
    if (!json_is_array(a)) return false;
    for (size_t i = 0; i < json_array_size(a); i++)
        if (!json_is_string(json_array_get(a, i))) return false;
    return true;
}

/* The "filename" of a FirmwareFlashFile: an absolute path without control characters that fits. Returns
 * NULL and why in *why when it is not one. */
static const char *s_flash_path(const json_t *file, const char **why)
{
    const json_t *f = json_object_get(file, "filename");
    if (!json_is_string(f)) {
        *why = "has no \"filename\" string";
        return NULL;
    }
    const char *s = json_string_value(f);
    size_t n = strlen(s);
    if (s[0] != '/') {
        *why = "has a filename that is not an absolute path";
        return NULL;
    }
    if (n >= TITAN_FIRMWARE_PATH_MAX || n != json_string_length(f)) {
        *why = "has a filename that is too long or holds a NUL";
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) {
            *why = "has a filename with a control character";
            return NULL;
        }
    return s;
}

/* "raw" unless it says otherwise. Returns NULL when "format" is there but not a string. */
static const char *s_flash_format(const json_t *file)
{
    const json_t *f = json_object_get(file, "format");
    if (!f) return "raw";
    return json_is_string(f) ? json_string_value(f) : NULL;
}

typedef enum { S_NO, S_FITS, S_BAD } s_verdict;

/* Checks one parsed descriptor against x86_64 UEFI split flash in raw form for `machine`. Returns S_FITS
 * with *fw filled, S_NO when it describes other firmware (counted in w->other_form when only its form
 * differs), or S_BAD with why in *why. */
static s_verdict s_judge(const json_t *root, const char *machine, s_walk *w, titan_firmware *fw,
                         const char **why)
{
    if (!json_is_object(root)) {
        *why = "is not a JSON object";
        return S_BAD;
    }
    const json_t *types = json_object_get(root, "interface-types");
    const json_t *mapping = json_object_get(root, "mapping");
    const json_t *targets = json_object_get(root, "targets");
    const json_t *features = json_object_get(root, "features");
    if (!s_string_array(types)) {
        *why = "has no \"interface-types\" list of strings";
        return S_BAD;
    }
    if (!json_is_object(mapping) || !json_is_string(json_object_get(mapping, "device"))) {
        *why = "has no \"mapping\" object with a \"device\"";
        return S_BAD;
    }
    if (!json_is_array(targets)) {
        *why = "has no \"targets\" list";
        return S_BAD;
    }
    if (features && !s_string_array(features)) {
        *why = "has a \"features\" value that is not a list of strings";
        return S_BAD;
    }

    bool target_fits = false;
    for (size_t i = 0; i < json_array_size(targets); i++) {
        const json_t *t = json_array_get(targets, i);
        const json_t *arch = json_object_get(t, "architecture");
        const json_t *machines = json_object_get(t, "machines");
        if (!json_is_object(t) || !json_is_string(arch) || !s_string_array(machines)) {
            *why = "has a target without an \"architecture\" string and a \"machines\" list";
            return S_BAD;
        }
        if (strcmp(json_string_value(arch), "x86_64") != 0) continue;
        for (size_t j = 0; j < json_array_size(machines); j++)
            if (s_machine_matches(json_string_value(json_array_get(machines, j)), machine))
                target_fits = true;
    }
    if (!s_array_has(types, "uefi") || !target_fits) return S_NO;

    /* From here on it is UEFI for this machine: what remains is whether titan can use its form. */
    const char *device = json_string_value(json_object_get(mapping, "device"));
    const json_t *mode = json_object_get(mapping, "mode");
    if (strcmp(device, "flash") != 0 ||
        (mode && (!json_is_string(mode) || strcmp(json_string_value(mode), "split") != 0))) {
        w->other_form++; /* a -bios image, or combined/stateless flash: no separate VARS to copy */
        return S_NO;
    }
    const json_t *exe = json_object_get(mapping, "executable");
    const json_t *vars = json_object_get(mapping, "nvram-template");
    if (!json_is_object(exe)) {
        *why = "has a flash mapping without an \"executable\" object";
        return S_BAD;
    }
    if (vars && !json_is_object(vars)) {
        *why = "has an \"nvram-template\" that is not an object";
        return S_BAD;
    }
    const char *exe_format = s_flash_format(exe), *vars_format = vars ? s_flash_format(vars) : "raw";
    if (!exe_format || !vars_format) {
        *why = "has a flash \"format\" that is not a string";
        return S_BAD;
    }
    if (strcmp(exe_format, "raw") != 0 || strcmp(vars_format, "raw") != 0) {
        w->other_form++; /* qcow2 needs libvirt 9.2's <loader format=>; every distribution ships raw too */
        return S_NO;
    }
    const char *loader = s_flash_path(exe, why);
    if (!loader) return S_BAD;
    const char *tmpl = "";
    if (vars && !(tmpl = s_flash_path(vars, why))) return S_BAD;

    memset(fw, 0, sizeof *fw);
    memcpy(fw->loader, loader, strlen(loader) + 1);
    memcpy(fw->nvram_template, tmpl, strlen(tmpl) + 1);
    fw->secure_boot = features && s_array_has(features, "secure-boot");
    fw->enrolled_keys = features && s_array_has(features, "enrolled-keys");
    fw->requires_smm = features && s_array_has(features, "requires-smm");
    return S_FITS;
}

/* Reads and judges the descriptor at host path `path`. Returns S_FITS (with *fw), S_NO (also for a mask:
 * an empty file), S_BAD after a warning, or -ENOMEM. */
static int s_read_one(const titan_sysroot *sr, const char *path, const char *machine, s_walk *w,
                      titan_firmware *fw)
{
    char real[PATH_MAX];
    struct stat st;
    if (titan_sysroot_path(sr, path, real, sizeof real) != 0) {
        s_warn(w, "firmware descriptor %s: the path is too long; skipped", path);
        return S_BAD;
    }
    if (stat(real, &st) != 0) {
        s_warn(w, "firmware descriptor %s: cannot read it (%s); skipped", path, strerror(errno));
        return S_BAD;
    }
    if (!S_ISREG(st.st_mode)) {
        s_warn(w, "firmware descriptor %s: not a regular file; skipped", path);
        return S_BAD;
    }
    w->read++;
    if (st.st_size == 0) return S_NO; /* QEMU's convention: an empty file masks a descriptor of that name */
    if (st.st_size > S_MAX_DESCRIPTOR_BYTES) {
        s_warn(w, "firmware descriptor %s: larger than %d KiB, so not a descriptor; skipped", path,
               S_MAX_DESCRIPTOR_BYTES / 1024);
        return S_BAD;
    }
    char *text = NULL;
    size_t len = 0;
    int rc = titan_sysroot_slurp(sr, path, S_MAX_DESCRIPTOR_BYTES, &text, &len);
    if (rc == -ENOMEM) return rc;
    if (rc < 0) {
        s_warn(w, "firmware descriptor %s: cannot read it (%s); skipped", path,
               rc == -EFBIG ? "it grew too large" : strerror(-rc));
        return S_BAD;
    }
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root) {
        s_warn(w, "firmware descriptor %s: not valid JSON (line %d: %s); skipped", path, jerr.line,
               jerr.text);
        return S_BAD;
    }
    const char *why = "";
    s_verdict v = s_judge(root, machine, w, fw, &why);
    json_decref(root);
    if (v == S_BAD) {
        s_warn(w, "firmware descriptor %s: %s (see QEMU's docs/interop/firmware.json); skipped", path, why);
        return S_BAD;
    }
    if (v == S_FITS) {
        /* a descriptor left behind by a removed package points at nothing */
        const char *missing = !titan_sysroot_exists(sr, fw->loader) ? fw->loader
                              : fw->nvram_template[0] && !titan_sysroot_exists(sr, fw->nvram_template)
                                  ? fw->nvram_template
                                  : NULL;
        if (missing) {
            s_warn(w, "firmware descriptor %s: %s does not exist; skipped", path, missing);
            return S_BAD;
        }
        size_t n = strlen(path);
        if (n >= sizeof fw->descriptor) {
            s_warn(w, "firmware descriptor %s: the path is too long; skipped", path);
            return S_BAD;
        }
        memcpy(fw->descriptor, path, n + 1);
    }
    return v;
}

/* How far a build is from what a GPU VM wants: Secure Boot can be left off while no keys are enrolled, but
 * Microsoft's enrolled keys make the guest refuse an unsigned (DKMS-built) NVIDIA module. */
static int s_cost(const titan_firmware *fw)
{
    return (fw->enrolled_keys ? 2 : 0) + (fw->secure_boot ? 1 : 0);
}

static int s_cmp_entry(const void *a, const void *b)
{
    return strcmp(((const s_entry *)a)->name, ((const s_entry *)b)->name);
}

/* Adds the *.json names of `dir` not already listed by a directory of higher priority. Returns 0 or
 * -ENOMEM. */
static int s_list_dir(const titan_sysroot *sr, const char *dir, s_walk *w, s_entry *e, size_t *n,
                      bool *capped)
{
    char **names = NULL;
    size_t count = 0;
    int rc = titan_sysroot_list(sr, dir, &names, &count);
    if (rc == -ENOMEM) return rc;
    if (rc < 0) {
        if (rc != -ENOENT && rc != -ENOTDIR)
            s_warn(w, "firmware descriptors: cannot list %s (%s); skipped", dir, strerror(-rc));
        return 0;
    }
    for (size_t i = 0; i < count; i++) {
        size_t len = strlen(names[i]);
        if (len <= 5 || len > S_MAX_NAME || names[i][0] == '.' || strcmp(names[i] + len - 5, ".json") != 0)
            continue;
        bool hidden = false;
        for (size_t k = 0; k < *n && !hidden; k++)
            hidden = strcmp(e[k].name, names[i]) == 0;
        if (hidden) continue;
        if (*n >= S_MAX_DESCRIPTORS) {
            *capped = true;
            break;
        }
        memcpy(e[*n].name, names[i], len + 1);
        e[*n].dir = dir;
        (*n)++;
    }
    titan_sysroot_free_list(names, count);
    return 0;
}

int titan_firmware_find(const titan_sysroot *sr, const char *user_dir, const char *machine,
                        titan_firmware_warn_fn warn, void *arg, titan_firmware *out, char *err, size_t errcap)
{
    if (!sr || !out) {
        s_fail(err, errcap, "no sysroot or no place for the result (a bug in the caller)");
        return -EINVAL;
    }
    if (!machine || !*machine) machine = "q35";
    s_walk w = {.warn = warn, .arg = arg};
    const char *dirs[3];
    size_t ndirs = 0;
    if (user_dir && user_dir[0] == '/') dirs[ndirs++] = user_dir;
    dirs[ndirs++] = S_ETC_DIR;
    dirs[ndirs++] = S_SHARE_DIR;

    s_entry *e = calloc(S_MAX_DESCRIPTORS, sizeof *e);
    titan_firmware *fw = malloc(2 * sizeof *fw); /* [0] the one being read, [1] the best so far */
    int rc = 0;
    bool capped = false;
    if (!e || !fw) {
        rc = -ENOMEM;
        goto out;
    }
    size_t n = 0;
    for (size_t d = 0; d < ndirs && rc == 0; d++)
        rc = s_list_dir(sr, dirs[d], &w, e, &n, &capped);
    if (rc < 0) goto out;
    if (capped)
        s_warn(&w, "firmware descriptors: more than %d; those after the first %d names are not read",
               S_MAX_DESCRIPTORS, S_MAX_DESCRIPTORS);
    qsort(e, n, sizeof *e, s_cmp_entry);

    bool have = false;
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", e[i].dir, e[i].name);
        int v = s_read_one(sr, path, machine, &w, &fw[0]);
        if (v == -ENOMEM) {
            rc = v;
            goto out;
        }
        if (v != S_FITS) continue;
        /* names are in priority order, so a later build replaces the best only when it is plainer */
        if (!have || s_cost(&fw[0]) < s_cost(&fw[1])) {
            fw[1] = fw[0];
            have = true;
        }
        if (s_cost(&fw[1]) == 0) break;
    }
    if (have) {
        *out = fw[1];
        goto out;
    }
    char where[PATH_MAX + 64] = "";
    if (sr->root[0]) snprintf(where, sizeof where, " under %s", sr->root);
    rc =
        s_fail(err, errcap,
               "no UEFI firmware for an x86_64 %s machine in QEMU's firmware descriptors (%s%s%s, %s%s: %d "
               "read%s); install OVMF (Debian/Ubuntu: apt install ovmf; Arch: pacman -S edk2-ovmf; Fedora: "
               "dnf install edk2-ovmf), or name it in vm.yaml: firmware: {loader: /path/to/OVMF_CODE.fd, "
               "nvram: /var/lib/libvirt/qemu/nvram/NAME_VARS.fd}",
               machine, user_dir && user_dir[0] == '/' ? user_dir : "",
               user_dir && user_dir[0] == '/' ? ", " : "", S_ETC_DIR, S_SHARE_DIR, where, w.read,
               w.other_form ? ", only in forms titan cannot use: qcow2, -bios images or combined flash" : "");
out:
    if (rc == -ENOMEM) s_fail(err, errcap, "out of memory while reading the firmware descriptors");
    free(e);
    free(fw);
    return rc;
}
