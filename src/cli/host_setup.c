/* host_setup.c - `titan host setup`: the modprobe, initramfs and kernel command line configuration that hands
 * a GPU to vfio-pci at boot; idempotent, a backup of each changed file, --dry-run diffs, --apply-boot. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "setup_diff.h"
#include "setup_edit.h"
#include "sysroot.h"

#define S_CMD "host setup"
#define S_MAX_IDS 8
#define S_MAX_ENTRIES 64               /* boot loader entries edited at most */
#define S_MAX_FILE_BYTES (1024 * 1024) /* configuration files are a few KB */
/* The backup suffix: it matches none of the *.conf globs that modprobe, dracut and systemd-boot read. */
#define S_BACKUP ".titan-bak"
#define S_HOSTPATH 512

typedef enum { S_ARCH, S_DEBIAN, S_FEDORA } s_distro;
typedef enum { S_MKINITCPIO, S_BOOSTER, S_INITRAMFS_TOOLS, S_DRACUT } s_initramfs;

static const char *const s_distro_names[] = {"arch", "debian", "fedora"};
static const char *const s_initramfs_names[] = {"mkinitcpio", "booster", "initramfs-tools", "dracut"};

/* An edit of a text file (setup_edit.h). */
typedef int (*s_edit_fn)(const char *in, const char *const *v, size_t n, char **out);

/* One file setup reads and maybe writes. */
typedef struct {
    char path[S_HOSTPATH]; /* the host path ("/etc/default/grub") */
    char *old;             /* its text, NULL when it does not exist */
    char *new;             /* the text it should have */
    bool changed;
    bool backup_exists; /* PATH.titan-bak was there before this run */
    bool backup_made;   /* this run wrote it */
    bool written;
    char *diff; /* --dry-run */
} s_file;

typedef struct {
    const char *argv[6];
} s_command;

typedef struct {
    const cli_globals *g;
    titan_sysroot sr;
    bool dry_run, apply_boot;
    char ids[S_MAX_IDS][10];
    size_t nids;
    char idlist[S_MAX_IDS * 10];
    s_distro distro;
    s_initramfs initramfs;
    bool grub;           /* /etc/default/grub is edited */
    bool kernel_cmdline; /* /etc/kernel/cmdline is edited */
    bool entries;        /* boot loader entries are edited: no GRUB (whose BLS entries grubby keeps), or a
                            systemd-boot loader.conf beside a leftover GRUB configuration */
    int nentries;        /* how many */
    char kernel[128];
    const char *cpu; /* "intel", "amd" or "unknown" */
    const char *modules[4];
    size_t nmodules;
    const char *params[2];
    size_t nparams;
    char params_joined[64];
    char grubby_args[80];
    s_file *files;
    size_t nfiles;
    s_command cmds[3];
    size_t ncmds;
    json_t *warnings; /* strings */
} s_setup;

/* Reports a failure (stderr, and a JSON object under --json); returns CLI_EXIT_REMOTE. */
__attribute__((format(printf, 2, 3))) static int s_fail(const s_setup *st, const char *fmt, ...)
{
    char msg[2 * PATH_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "titan host setup: %s\n", msg);
    if (st->g->json) cli_print_json(json_pack("{s:s, s:i}", "error", msg, "exit", CLI_EXIT_REMOTE));
    return CLI_EXIT_REMOTE;
}

/* Prints a warning on stderr and keeps it for --json. */
__attribute__((format(printf, 2, 3))) static void s_warn(s_setup *st, const char *fmt, ...)
{
    char msg[2 * PATH_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "titan host setup: warning: %s\n", msg);
    json_array_append_new(st->warnings, json_string(msg));
}

/* The path on this machine of host path `path` (with the sysroot in front), for messages. */
static const char *s_real(const s_setup *st, const char *path, char *buf, size_t cap)
{
    if (titan_sysroot_path(&st->sr, path, buf, cap) != 0) snprintf(buf, cap, "%s", path);
    return buf;
}

/* What to do about error `e` (a positive errno) on a host file. */
static const char *s_hint(int e)
{
    if (e == EACCES || e == EPERM) return "; run as root (sudo titan host setup ...)";
    if (e == EROFS) return "; the file system is mounted read-only";
    return "";
}

/* --- options --- */

/* Parses --gpu "10de:17c2,10de:0fb0" into st->ids (lower case, duplicates dropped). Returns 0, or prints a
 * usage error and returns -1. */
static int s_parse_ids(s_setup *st, const char *s)
{
    const char *example = "e.g. --gpu 10de:17c2,10de:0fb0 (the GPU and its audio function, from `lspci -nn`)";
    if (!*s) return cli_usage_error(S_CMD, "--gpu needs vendor:device ids, %s", example), -1;
    for (const char *p = s;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        bool ok = len == 9 && p[4] == ':';
        for (size_t i = 0; ok && i < 9; i++)
            if (i != 4 && !((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f') ||
                            (p[i] >= 'A' && p[i] <= 'F')))
                ok = false;
        if (!ok)
            return cli_usage_error(S_CMD,
                                   "--gpu: \"%.*s\" is not a vendor:device id of 4 hex digits each; %s",
                                   (int)(len > 40 ? 40 : len), p, example),
                   -1;
        char id[10];
        for (size_t i = 0; i < 9; i++)
            id[i] = (char)(p[i] >= 'A' && p[i] <= 'F' ? p[i] - 'A' + 'a' : p[i]);
        id[9] = '\0';
        bool dup = false;
        for (size_t i = 0; i < st->nids; i++)
            dup = dup || strcmp(st->ids[i], id) == 0;
        if (!dup) {
            if (st->nids == S_MAX_IDS)
                return cli_usage_error(S_CMD, "--gpu takes at most %d ids", S_MAX_IDS), -1;
            memcpy(st->ids[st->nids++], id, sizeof(id));
        }
        if (!comma) break;
        p = comma + 1;
    }
    st->idlist[0] = '\0';
    for (size_t i = 0; i < st->nids; i++) {
        if (i) strcat(st->idlist, ",");
        strcat(st->idlist, st->ids[i]);
    }
    return 0;
}

/* Parses "MAJOR.MINOR..." into *major, *minor. Returns 0 or -1. */
static int s_parse_kernel(const char *s, unsigned *major, unsigned *minor)
{
    char *end;
    if (*s < '0' || *s > '9') return -1;
    unsigned long a = strtoul(s, &end, 10);
    if (*end != '.' || end[1] < '0' || end[1] > '9') return -1;
    unsigned long b = strtoul(end + 1, &end, 10);
    if (a > 1000 || b > 1000) return -1;
    *major = (unsigned)a;
    *minor = (unsigned)b;
    return 0;
}

/* --- what this host is --- */

/* Copies os-release's value of `key` (quotes removed) into out[cap]; "" when absent. */
static void s_os_release_value(const char *text, const char *key, char *out, size_t cap)
{
    size_t kl = strlen(key);
    out[0] = '\0';
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        if (len > kl && strncmp(line, key, kl) == 0 && line[kl] == '=') {
            const char *v = line + kl + 1;
            size_t vl = len - kl - 1;
            if (vl >= 2 && (v[0] == '"' || v[0] == '\'') && v[vl - 1] == v[0]) v++, vl -= 2;
            if (vl >= cap) vl = cap - 1;
            memcpy(out, v, vl);
            out[vl] = '\0';
        }
        line = nl ? nl + 1 : line + len;
    }
}

/* Sets st->distro from /etc/os-release (or /usr/lib/os-release): ID first, then each word of ID_LIKE.
 * Returns CLI_EXIT_OK or reports why not. */
static int s_detect_distro(s_setup *st)
{
    static const struct {
        const char *word;
        s_distro d;
    } known[] = {{"arch", S_ARCH},     {"archarm", S_ARCH}, {"debian", S_DEBIAN}, {"ubuntu", S_DEBIAN},
                 {"fedora", S_FEDORA}, {"rhel", S_FEDORA},  {"centos", S_FEDORA}};
    char *text = NULL, buf[PATH_MAX];
    const char *path = "/etc/os-release";
    int rc = titan_sysroot_slurp(&st->sr, path, 64 * 1024, &text, NULL);
    if (rc == -ENOENT)
        rc = titan_sysroot_slurp(&st->sr, path = "/usr/lib/os-release", 64 * 1024, &text, NULL);
    if (rc)
        return s_fail(st, "cannot read %s: %s; pass --distro arch, debian or fedora",
                      s_real(st, path, buf, sizeof(buf)), strerror(-rc));
    char id[128], like[256], words[400];
    s_os_release_value(text, "ID", id, sizeof(id));
    s_os_release_value(text, "ID_LIKE", like, sizeof(like));
    free(text);
    snprintf(words, sizeof(words), "%s %s", id, like);
    for (char *save = NULL, *w = strtok_r(words, " \t", &save); w; w = strtok_r(NULL, " \t", &save))
        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
            if (strcmp(w, known[i].word) == 0) {
                st->distro = known[i].d;
                return CLI_EXIT_OK;
            }
    return s_fail(
        st,
        "unknown distribution (%s: ID=%s ID_LIKE=%s); pass --distro arch, debian or fedora, whichever "
        "this one is built on",
        s_real(st, path, buf, sizeof(buf)), *id ? id : "(none)", *like ? like : "(none)");
}

/* Reads the running kernel's version unless --kernel gave it. Returns CLI_EXIT_OK or reports why not. */
static int s_detect_kernel(s_setup *st, const char *given, unsigned *major, unsigned *minor)
{
    char buf[PATH_MAX];
    const char *path = "/proc/sys/kernel/osrelease";
    if (given) {
        snprintf(st->kernel, sizeof(st->kernel), "%s", given);
    } else {
        ssize_t n = titan_sysroot_read(&st->sr, path, st->kernel, sizeof(st->kernel), true);
        if (n < 0)
            return s_fail(st, "cannot read %s: %s; pass --kernel VERSION (the kernel this host boots)",
                          s_real(st, path, buf, sizeof(buf)), strerror((int)-n));
    }
    if (s_parse_kernel(st->kernel, major, minor) != 0)
        return s_fail(st, "cannot tell the kernel version from \"%s\" (%s); pass --kernel VERSION",
                      st->kernel, s_real(st, path, buf, sizeof(buf)));
    return CLI_EXIT_OK;
}

/* Sets st->cpu from the vendor_id of /proc/cpuinfo; a warning when it cannot tell. */
static void s_detect_cpu(s_setup *st)
{
    char text[16384], buf[PATH_MAX];
    st->cpu = "unknown";
    ssize_t n = titan_sysroot_read(&st->sr, "/proc/cpuinfo", text, sizeof(text), false);
    if (n < 0) {
        s_warn(st,
               "cannot read %s (%s): only iommu=pt goes on the kernel command line; on an Intel CPU add "
               "intel_iommu=on yourself",
               s_real(st, "/proc/cpuinfo", buf, sizeof(buf)), strerror((int)-n));
        return;
    }
    /* "vendor_id\t: GenuineIntel" */
    char vendor[32] = "";
    const char *v = strstr(text, "vendor_id");
    const char *colon = v ? strchr(v, ':') : NULL;
    if (colon) sscanf(colon + 1, " %31s", vendor);
    if (strcmp(vendor, "GenuineIntel") == 0)
        st->cpu = "intel";
    else if (strcmp(vendor, "AuthenticAMD") == 0 || strcmp(vendor, "HygonGenuine") == 0)
        st->cpu = "amd";
    else
        s_warn(st, "%s names no Intel or AMD CPU: only iommu=pt goes on the kernel command line",
               s_real(st, "/proc/cpuinfo", buf, sizeof(buf)));
}

/* --- the plan: every file, read and edited in memory --- */

/* Reads `path` (missing: an empty file to create, unless `required`, when `why_required` says what to check)
 * and works out its new text: `content` when titan owns the whole file, else edit() with the modules (when
 * `modules`) or the kernel parameters. Returns CLI_EXIT_OK or reports why not. */
static int s_add_file(s_setup *st, const char *path, bool required, const char *why_required, s_edit_fn edit,
                      bool modules, const char *content)
{
    char buf[PATH_MAX];
    s_file *nf = realloc(st->files, (st->nfiles + 1) * sizeof(*nf));
    if (!nf) return s_fail(st, "out of memory");
    st->files = nf;
    s_file *f = &st->files[st->nfiles++];
    memset(f, 0, sizeof(*f));
    snprintf(f->path, sizeof(f->path), "%s", path);
    int rc = titan_sysroot_slurp(&st->sr, path, S_MAX_FILE_BYTES, &f->old, NULL);
    if (rc == -ENOENT && required)
        return s_fail(st, "%s does not exist%s%s", s_real(st, path, buf, sizeof(buf)),
                      why_required ? "; " : "", why_required ? why_required : "");
    if (rc && rc != -ENOENT)
        return s_fail(st, "cannot read %s: %s%s", s_real(st, path, buf, sizeof(buf)), strerror(-rc),
                      rc == -EFBIG ? " (larger than 1 MiB: not a configuration file titan can edit)"
                                   : s_hint(-rc));
    if (content) {
        f->new = strdup(content);
        rc = f->new ? 0 : -ENOMEM;
    } else {
        rc = edit(f->old ? f->old : "", modules ? st->modules : st->params,
                  modules ? st->nmodules : st->nparams, &f->new);
    }
    if (rc == -EINVAL)
        return s_fail(
            st,
            "cannot edit %s: a quote or parenthesis there is never closed; fix the file, or make the "
            "change by hand",
            s_real(st, path, buf, sizeof(buf)));
    if (rc) return s_fail(st, "out of memory");
    f->changed = !f->old || strcmp(f->old, f->new) != 0;
    char backup[S_HOSTPATH + sizeof(S_BACKUP)];
    snprintf(backup, sizeof(backup), "%s%s", path, S_BACKUP);
    f->backup_exists = titan_sysroot_exists(&st->sr, backup);
    return CLI_EXIT_OK;
}

/* Adds the systemd-boot entries (*.conf under loader/entries of /boot, /efi or /boot/efi) to the plan.
 * Returns how many, or -1 after reporting a failure. */
static int s_add_entries(s_setup *st)
{
    static const char *const dirs[] = {"/boot/loader/entries", "/efi/loader/entries",
                                       "/boot/efi/loader/entries"};
    int count = 0;
    for (size_t d = 0; d < sizeof(dirs) / sizeof(dirs[0]); d++) {
        char **names = NULL;
        size_t n = 0;
        if (titan_sysroot_list(&st->sr, dirs[d], &names, &n) != 0) continue;
        for (size_t i = 0; i < n; i++) {
            size_t len = strlen(names[i]);
            if (names[i][0] == '.' || len < 6 || strcmp(names[i] + len - 5, ".conf") != 0) continue;
            char path[S_HOSTPATH];
            if ((size_t)snprintf(path, sizeof(path), "%s/%s", dirs[d], names[i]) >= sizeof(path)) continue;
            if (count == S_MAX_ENTRIES) {
                s_warn(st, "more than %d boot loader entries: the others are left alone", S_MAX_ENTRIES);
                break;
            }
            if (s_add_file(st, path, true, NULL, titan_setup_edit_loader_entry, false, NULL) != CLI_EXIT_OK) {
                titan_sysroot_free_list(names, n);
                return -1;
            }
            count++;
        }
        titan_sysroot_free_list(names, n);
    }
    return count;
}

/* Warns about other /etc/modprobe.d files that give vfio-pci ids too: modprobe would merge them. */
static void s_check_other_modprobe(s_setup *st)
{
    char **names = NULL, buf[PATH_MAX];
    size_t n = 0;
    if (titan_sysroot_list(&st->sr, "/etc/modprobe.d", &names, &n) != 0) return;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(names[i]);
        if (len < 6 || strcmp(names[i] + len - 5, ".conf") != 0 || strcmp(names[i], "vfio.conf") == 0)
            continue;
        char path[S_HOSTPATH], *text = NULL;
        snprintf(path, sizeof(path), "/etc/modprobe.d/%s", names[i]);
        if (titan_sysroot_slurp(&st->sr, path, S_MAX_FILE_BYTES, &text, NULL) != 0) continue;
        for (char *save = NULL, *line = strtok_r(text, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save)) {
            line += strspn(line, " \t");
            if ((strncmp(line, "options vfio-pci", 16) == 0 || strncmp(line, "options vfio_pci", 16) == 0) &&
                strstr(line, "ids=")) {
                s_warn(st,
                       "%s also gives vfio-pci ids (\"%s\"); remove that line so that only "
                       "/etc/modprobe.d/vfio.conf does",
                       s_real(st, path, buf, sizeof(buf)), line);
                break;
            }
        }
        free(text);
    }
    titan_sysroot_free_list(names, n);
}

/* Warns about the files of /etc/default/grub.d that set GRUB_CMDLINE_LINUX_DEFAULT: GRUB reads them after
 * /etc/default/grub, so theirs wins (Ubuntu's cloud images ship one). */
static void s_check_grub_d(s_setup *st)
{
    char **names = NULL, buf[PATH_MAX];
    size_t n = 0;
    if (titan_sysroot_list(&st->sr, "/etc/default/grub.d", &names, &n) != 0) return;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(names[i]);
        if (len < 5 || strcmp(names[i] + len - 4, ".cfg") != 0) continue;
        char path[S_HOSTPATH], *text = NULL;
        snprintf(path, sizeof(path), "/etc/default/grub.d/%s", names[i]);
        if (titan_sysroot_slurp(&st->sr, path, S_MAX_FILE_BYTES, &text, NULL) != 0) continue;
        for (char *save = NULL, *line = strtok_r(text, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save)) {
            line += strspn(line, " \t");
            if (strncmp(line, "GRUB_CMDLINE_LINUX_DEFAULT=", 27) == 0) {
                s_warn(st, "%s sets GRUB_CMDLINE_LINUX_DEFAULT after /etc/default/grub; add %s there too",
                       s_real(st, path, buf, sizeof(buf)), st->params_joined);
                break;
            }
        }
        free(text);
    }
    titan_sysroot_free_list(names, n);
}

/* The text of /etc/modprobe.d/vfio.conf. The softdeps make modprobe load vfio-pci before any driver that
 * could take the GPU or its HDMI audio function; vfio-pci binds only the listed ids, so the host's other
 * graphics and sound devices keep their drivers. snd_hda_intel is always listed: which id is the audio
 * function cannot be told from the ids, and the softdep costs nothing when none is. */
static char *s_modprobe_text(const s_setup *st)
{
    char *s = NULL;
    if (asprintf(&s,
                 "# /etc/modprobe.d/vfio.conf - written by titan host setup --gpu %s;\n"
                 "# run that command again rather than editing this file.\n"
                 "# vfio-pci takes these devices at boot, before their usual drivers: each softdep loads\n"
                 "# vfio-pci first, and vfio-pci binds only the ids below.\n"
                 "options vfio-pci ids=%s\n"
                 "softdep nvidia pre: vfio-pci\n"
                 "softdep nouveau pre: vfio-pci\n"
                 "softdep drm pre: vfio-pci\n"
                 "softdep snd_hda_intel pre: vfio-pci\n",
                 st->idlist, st->idlist) < 0)
        return NULL;
    return s;
}

/* The text of /etc/dracut.conf.d/10-vfio.conf. */
static char *s_dracut_text(const s_setup *st)
{
    char mods[128] = "", *s = NULL;
    for (size_t i = 0; i < st->nmodules; i++) {
        strcat(mods, " ");
        strcat(mods, st->modules[i]);
    }
    if (asprintf(
            &s,
            "# /etc/dracut.conf.d/10-vfio.conf - written by titan host setup: the vfio modules load\n"
            "# early in the initramfs, with /etc/modprobe.d/vfio.conf, so vfio-pci takes the GPU first.\n"
            "force_drivers+=\"%s \"\n"
            "install_items+=\" /etc/modprobe.d/vfio.conf \"\n",
            mods) < 0)
        return NULL;
    return s;
}

/* Works out every file and command. Returns CLI_EXIT_OK or reports why not. */
static int s_plan(s_setup *st)
{
    int rc;
    char *text = s_modprobe_text(st);
    if (!text) return s_fail(st, "out of memory");
    rc = s_add_file(st, "/etc/modprobe.d/vfio.conf", false, NULL, NULL, false, text);
    free(text);
    if (rc) return rc;
    s_check_other_modprobe(st);

    s_command *c = st->cmds;
    switch (st->initramfs) {
    case S_MKINITCPIO:
        if ((rc = s_add_file(st, "/etc/mkinitcpio.conf", true,
                             "is mkinitcpio installed? (pass --distro if this is not Arch)",
                             titan_setup_edit_mkinitcpio, true, NULL)))
            return rc;
        if (!titan_setup_mkinitcpio_has_hook(st->files[st->nfiles - 1].new, "modconf"))
            s_warn(st,
                   "HOOKS in /etc/mkinitcpio.conf has no modconf: add it, or the initramfs will not carry "
                   "/etc/modprobe.d/vfio.conf");
        *c++ = (s_command){{"mkinitcpio", "-P"}};
        break;
    case S_BOOSTER:
        if ((rc = s_add_file(st, "/etc/booster.yaml", true, NULL, titan_setup_edit_booster, true, NULL)))
            return rc;
        *c++ = (s_command){{"/usr/lib/booster/regenerate_images"}};
        break;
    case S_INITRAMFS_TOOLS:
        if ((rc = s_add_file(st, "/etc/initramfs-tools/modules", false, NULL, titan_setup_edit_module_lines,
                             true, NULL)))
            return rc;
        *c++ = (s_command){{"update-initramfs", "-u", "-k", "all"}};
        break;
    case S_DRACUT:
        if (!(text = s_dracut_text(st))) return s_fail(st, "out of memory");
        rc = s_add_file(st, "/etc/dracut.conf.d/10-vfio.conf", false, NULL, NULL, false, text);
        free(text);
        if (rc) return rc;
        *c++ = (s_command){{"dracut", "--regenerate-all", "--force"}};
        break;
    }

    if (st->grub) {
        if ((rc = s_add_file(st, "/etc/default/grub", true, NULL, titan_setup_edit_grub, false, NULL)))
            return rc;
        s_check_grub_d(st);
        if (st->distro == S_ARCH) *c++ = (s_command){{"grub-mkconfig", "-o", "/boot/grub/grub.cfg"}};
        if (st->distro == S_DEBIAN) *c++ = (s_command){{"update-grub"}};
        if (st->distro == S_FEDORA) {
            /* Fedora's GRUB reads the command line from its boot loader entries, which grubby edits. */
            *c++ = (s_command){{"grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"}};
            *c++ = (s_command){{"grubby", "--update-kernel=ALL", st->grubby_args}};
        }
    }
    /* kernel-install builds the entries (or unified kernel images) of kernels installed later from it. */
    if (st->kernel_cmdline && (rc = s_add_file(st, "/etc/kernel/cmdline", true, NULL,
                                               titan_setup_edit_kernel_cmdline, false, NULL)))
        return rc;
    if (st->entries && (st->nentries = s_add_entries(st)) < 0) return CLI_EXIT_REMOTE;
    if (!st->grub && !st->kernel_cmdline && st->nentries == 0)
        s_warn(st,
               "found no boot loader configuration (/etc/default/grub, /etc/kernel/cmdline, *.conf in "
               "/boot/loader/entries, /efi/loader/entries or /boot/efi/loader/entries): add %s to the kernel "
               "command line yourself",
               st->params_joined);
    st->ncmds = (size_t)(c - st->cmds);
    return CLI_EXIT_OK;
}

/* Picks the initramfs generator of st->distro and the boot loader files to edit. */
static void s_detect_boot(s_setup *st)
{
    static const s_initramfs by_distro[] = {S_MKINITCPIO, S_INITRAMFS_TOOLS, S_DRACUT};
    st->initramfs = by_distro[st->distro];
    if (st->distro == S_ARCH && titan_sysroot_exists(&st->sr, "/etc/booster.yaml")) st->initramfs = S_BOOSTER;
    st->grub = titan_sysroot_exists(&st->sr, "/etc/default/grub");
    st->kernel_cmdline = titan_sysroot_exists(&st->sr, "/etc/kernel/cmdline");
    bool sdboot = titan_sysroot_exists(&st->sr, "/boot/loader/loader.conf") ||
                  titan_sysroot_exists(&st->sr, "/efi/loader/loader.conf") ||
                  titan_sysroot_exists(&st->sr, "/boot/efi/loader/loader.conf");
    st->entries = !st->grub || sdboot;
}

/* The boot loader, for output: "grub", "systemd-boot" (entries or /etc/kernel/cmdline), both, or "none". */
static const char *s_loader_name(const s_setup *st)
{
    bool sd = st->kernel_cmdline || st->nentries > 0;
    return st->grub && sd ? "grub+systemd-boot" : st->grub ? "grub" : sd ? "systemd-boot" : "none";
}

/* --- doing it --- */

/* Writes the changed files, each after its backup. Returns CLI_EXIT_OK or reports what failed and what was
 * already written. */
static int s_write(s_setup *st)
{
    char buf[PATH_MAX];
    for (size_t i = 0; i < st->nfiles; i++) {
        s_file *f = &st->files[i];
        if (!f->changed) continue;
        char dir[S_HOSTPATH], backup[S_HOSTPATH + sizeof(S_BACKUP)];
        snprintf(dir, sizeof(dir), "%s", f->path);
        *strrchr(dir, '/') = '\0';
        snprintf(backup, sizeof(backup), "%s%s", f->path, S_BACKUP);
        int rc = 0;
        const char *what = f->path, *role = ""; /* what failed: the file, its backup or its directory */
        if (!f->old && (rc = titan_sysroot_mkdirs(&st->sr, dir, 0755))) what = dir, role = "the directory ";
        if (!rc && f->old && !f->backup_exists) {
            /* The backup keeps the original's mode: /etc/default/grub may be private. */
            struct stat sb;
            mode_t mode = 0644;
            if (titan_sysroot_path(&st->sr, f->path, buf, sizeof(buf)) == 0 && stat(buf, &sb) == 0)
                mode = sb.st_mode & 07777;
            if ((rc = titan_sysroot_replace(&st->sr, backup, f->old, strlen(f->old), mode)) == 0)
                f->backup_made = true;
            else
                what = backup, role = "the backup ";
        }
        if (!rc && (rc = titan_sysroot_replace(&st->sr, f->path, f->new, strlen(f->new), 0644)) == 0)
            f->written = true;
        if (rc) {
            char done[2048] = "";
            for (size_t j = 0; j < i; j++)
                if (st->files[j].written && strlen(done) + strlen(st->files[j].path) + 3 < sizeof(done)) {
                    strcat(done, *done ? ", " : "");
                    strcat(done, st->files[j].path);
                }
            char real[PATH_MAX];
            return s_fail(st, "cannot write %s%s%s%s: %s%s%s%s%s", role, s_real(st, what, buf, sizeof(buf)),
                          *role ? " of " : "", *role ? s_real(st, f->path, real, sizeof(real)) : "",
                          strerror(-rc), s_hint(-rc),
                          *done ? " (already written: " : " (nothing was written)", done,
                          *done ? "; run this again once fixed)" : "");
        }
    }
    return CLI_EXIT_OK;
}

/* Writes command `c` as one shell line into out[cap]. */
static void s_command_line(const s_command *c, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    for (size_t i = 0; c->argv[i] && n < cap; i++) {
        const char *a = c->argv[i];
        bool quote = strchr(a, ' ') != NULL;
        const char *eq = quote ? strchr(a, '=') : NULL;
        /* --args=a b -> --args="a b", as one would type it. */
        int w =
            eq ? snprintf(out + n, cap - n, "%s%.*s\"%s\"", i ? " " : "", (int)(eq - a + 1), a, eq + 1)
               : snprintf(out + n, cap - n, "%s%s%s%s", i ? " " : "", quote ? "'" : "", a, quote ? "'" : "");
        if (w < 0) break;
        n += (size_t)w;
    }
}

/* Runs command `c` (stdout to stderr under --json, so the JSON stays alone). Returns CLI_EXIT_OK or reports
 * how it failed. */
static int s_run(s_setup *st, const s_command *c)
{
    char line[512];
    s_command_line(c, line, sizeof(line));
    fprintf(st->g->json ? stderr : stdout, "running: %s\n", line);
    fflush(stdout);
    fflush(stderr);
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) return s_fail(st, "cannot run %s: %s", line, strerror(errno));
    pid_t pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        return s_fail(st, "cannot run %s: %s", line, strerror(errno));
    }
    if (pid == 0) {
        if (st->g->json) dup2(STDERR_FILENO, STDOUT_FILENO);
        execvp(c->argv[0], (char *const *)c->argv);
        int e = errno;
        ssize_t ignored = write(pfd[1], &e, sizeof(e));
        (void)ignored;
        _exit(127);
    }
    close(pfd[1]);
    int e = 0;
    ssize_t got = read(pfd[0], &e, sizeof(e));
    close(pfd[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (got == (ssize_t)sizeof(e))
        return s_fail(st, "cannot run %s: %s%s", line, strerror(e),
                      e == ENOENT ? " (is it installed? run the commands for this host's setup by hand)"
                                  : "");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return s_fail(st, "%s failed (%s %d); the configuration files are written: fix that and run it again",
                      line, WIFEXITED(status) ? "exit status" : "signal",
                      WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    return CLI_EXIT_OK;
}

/* --- output --- */

static int s_print_json(const s_setup *st, bool applied, bool reboot)
{
    char buf[S_HOSTPATH + sizeof(S_BACKUP)], line[512];
    json_t *changes = json_array(), *cmds = json_array(), *ids = json_array(), *params = json_array(),
           *mods = json_array();
    for (size_t i = 0; i < st->nfiles; i++) {
        const s_file *f = &st->files[i];
        snprintf(buf, sizeof(buf), "%s%s", f->path, S_BACKUP);
        bool has_backup = f->backup_exists || f->backup_made;
        json_t *o = json_pack("{s:s, s:o, s:b, s:b}", "file", f->path, "backup",
                              has_backup ? json_string(buf) : json_null(), "changed", f->changed, "created",
                              f->changed && !f->old);
        if (o && st->dry_run) json_object_set_new(o, "diff", json_string(f->diff ? f->diff : ""));
        json_array_append_new(changes, o);
    }
    for (size_t i = 0; i < st->ncmds; i++) {
        s_command_line(&st->cmds[i], line, sizeof(line));
        json_array_append_new(cmds, json_string(line));
    }
    for (size_t i = 0; i < st->nids; i++)
        json_array_append_new(ids, json_string(st->ids[i]));
    for (size_t i = 0; i < st->nparams; i++)
        json_array_append_new(params, json_string(st->params[i]));
    for (size_t i = 0; i < st->nmodules; i++)
        json_array_append_new(mods, json_string(st->modules[i]));
    return cli_print_json(
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:o, s:o, s:o, s:b, s:o, s:o, s:b, s:O, s:b}", "distro",
                  s_distro_names[st->distro], "initramfs", s_initramfs_names[st->initramfs], "bootloader",
                  s_loader_name(st), "cpu", st->cpu, "kernel", st->kernel, "gpu", ids, "modules", mods,
                  "kernel_params", params, "dry_run", st->dry_run, "changes", changes, "commands", cmds,
                  "applied", applied, "warnings", st->warnings, "reboot_needed", reboot));
}

static void s_print_commands(const s_setup *st)
{
    char line[512];
    for (size_t i = 0; i < st->ncmds; i++) {
        s_command_line(&st->cmds[i], line, sizeof(line));
        printf("  %s\n", line);
    }
}

static void s_free(s_setup *st)
{
    for (size_t i = 0; i < st->nfiles; i++) {
        free(st->files[i].old);
        free(st->files[i].new);
        free(st->files[i].diff);
    }
    free(st->files);
    json_decref(st->warnings);
}

static int s_usage(const char *msg)
{
    return cli_usage_error(S_CMD, "%s; run `titan host setup --help`", msg);
}

int cli_host_setup(cli_globals *g, int argc, char **argv)
{
    s_setup st = {.g = g};
    const char *gpu = NULL, *distro = "auto", *sysroot = NULL, *kernel = NULL;
    for (int i = 0; i < argc; i++) {
        int r = cli_global_option(S_CMD, g, argc, argv, &i);
        if (r < 0) return CLI_EXIT_USAGE;
        if (r > 0) continue;
        if (strcmp(argv[i], "--dry-run") == 0) {
            st.dry_run = true;
            continue;
        }
        if (strcmp(argv[i], "--apply-boot") == 0) {
            st.apply_boot = true;
            continue;
        }
        const char **dst = NULL;
        static const char *const names[] = {"--gpu", "--distro", "--sysroot", "--kernel"};
        const char **dsts[] = {&gpu, &distro, &sysroot, &kernel};
        for (size_t k = 0; k < 4 && !dst; k++) {
            const char *v = NULL;
            if ((r = cli_match_option(S_CMD, argc, argv, &i, names[k], &v)) < 0) return CLI_EXIT_USAGE;
            if (r > 0) *(dst = dsts[k]) = v;
        }
        if (!dst) return cli_unknown_option(S_CMD, argv[i]);
    }
    if (!gpu)
        return s_usage("--gpu is required: the vendor:device ids of the GPU's functions, e.g. --gpu "
                       "10de:17c2,10de:0fb0 (from `lspci -nn`)");
    if (s_parse_ids(&st, gpu) != 0) return CLI_EXIT_USAGE;
    int want = -1;
    if (strcmp(distro, "arch") == 0) want = S_ARCH;
    if (strcmp(distro, "debian") == 0 || strcmp(distro, "ubuntu") == 0) want = S_DEBIAN;
    if (strcmp(distro, "fedora") == 0) want = S_FEDORA;
    if (want < 0 && strcmp(distro, "auto") != 0)
        return cli_usage_error(S_CMD, "--distro must be auto, arch, debian (or ubuntu) or fedora, not \"%s\"",
                               distro);
    unsigned major = 0, minor = 0;
    if (kernel && s_parse_kernel(kernel, &major, &minor) != 0)
        return cli_usage_error(
            S_CMD, "--kernel expects a version such as 6.6.10 or 5.15.0-91-generic, not \"%s\"", kernel);
    if (st.apply_boot && st.dry_run) return s_usage("--apply-boot and --dry-run exclude each other");
    if (titan_sysroot_init(&st.sr, sysroot) != 0)
        return cli_usage_error(S_CMD, "--sysroot %s is not a directory", sysroot);
    if (st.apply_boot && st.sr.root[0])
        return s_usage("--apply-boot runs the boot image commands on this host, not under --sysroot; leave "
                       "one of them out");

    if (!(st.warnings = json_array())) return CLI_EXIT_REMOTE;
    int rc;
    if (want >= 0)
        st.distro = (s_distro)want;
    else if ((rc = s_detect_distro(&st)))
        goto out;
    if ((rc = s_detect_kernel(&st, kernel, &major, &minor))) goto out;
    s_detect_cpu(&st);
    /* vfio_virqfd was folded into vfio in Linux 6.2; initramfs tools fail on a module that does not exist. */
    static const char *const mods[] = {"vfio_pci", "vfio", "vfio_iommu_type1", "vfio_virqfd"};
    st.nmodules = major < 6 || (major == 6 && minor < 2) ? 4 : 3;
    memcpy(st.modules, mods, st.nmodules * sizeof(mods[0]));
    /* The AMD IOMMU driver is on by default (amd_iommu takes no "on" value); iommu=pt keeps the host's own
     * devices off IOMMU translation. */
    if (strcmp(st.cpu, "intel") == 0) st.params[st.nparams++] = "intel_iommu=on";
    st.params[st.nparams++] = "iommu=pt";
    for (size_t i = 0; i < st.nparams; i++) {
        strcat(st.params_joined, i ? " " : "");
        strcat(st.params_joined, st.params[i]);
    }
    snprintf(st.grubby_args, sizeof(st.grubby_args), "--args=%s", st.params_joined);
    s_detect_boot(&st);
    if ((rc = s_plan(&st))) goto out;

    size_t nchanged = 0;
    for (size_t i = 0; i < st.nfiles; i++)
        nchanged += st.files[i].changed;
    char root_note[PATH_MAX + 32] = "";
    if (st.sr.root[0]) snprintf(root_note, sizeof(root_note), " (under %s)", st.sr.root);

    if (st.dry_run) {
        for (size_t i = 0; i < st.nfiles; i++) {
            s_file *f = &st.files[i];
            if (f->changed && titan_setup_diff(f->path + 1, f->old, f->new, &f->diff) != 0) {
                rc = s_fail(&st, "out of memory");
                goto out;
            }
            if (f->diff && !g->json) fputs(f->diff, stdout);
        }
        if (g->json) {
            rc = s_print_json(&st, false, nchanged > 0);
            goto out;
        }
        if (nchanged == 0) {
            fprintf(stderr, "titan host setup --dry-run: nothing to change%s\n", root_note);
        } else {
            fprintf(stderr, "titan host setup --dry-run: would change %zu file%s%s; nothing was written\n",
                    nchanged, nchanged == 1 ? "" : "s", root_note);
        }
        rc = CLI_EXIT_OK;
        goto out;
    }

    if ((rc = s_write(&st))) goto out;
    if (!g->json) {
        char buf[S_HOSTPATH + sizeof(S_BACKUP)];
        printf("titan host setup%s: %s, %s, %s, %s CPU, kernel %s\n", root_note, s_distro_names[st.distro],
               s_initramfs_names[st.initramfs], s_loader_name(&st),
               strcmp(st.cpu, "intel") == 0 ? "Intel"
               : strcmp(st.cpu, "amd") == 0 ? "AMD"
                                            : "unknown",
               st.kernel);
        for (size_t i = 0; i < st.nfiles; i++) {
            const s_file *f = &st.files[i];
            snprintf(buf, sizeof(buf), "%s%s", f->path, S_BACKUP);
            if (!f->changed)
                printf("  unchanged %s\n", f->path);
            else if (!f->old)
                printf("  created   %s\n", f->path);
            else
                printf("  changed   %s (backup: %s%s)\n", f->path, buf,
                       f->backup_made ? "" : ", kept from an earlier run");
        }
    }
    bool applied = false;
    if (st.apply_boot) {
        for (size_t i = 0; i < st.ncmds; i++)
            if ((rc = s_run(&st, &st.cmds[i]))) goto out;
        applied = true;
    }
    bool reboot = nchanged > 0 || (applied && st.ncmds > 0);
    if (g->json) {
        rc = s_print_json(&st, applied, reboot);
        goto out;
    }
    if (nchanged == 0 && !applied) {
        printf("Nothing to change: this host is already set up for %s.\n", st.idlist);
        if (st.ncmds) {
            printf("If the boot images were not regenerated since these files last changed, run:\n");
            s_print_commands(&st);
            printf("and reboot.\n");
        }
    } else if (!applied && st.ncmds) {
        printf("Regenerate the boot images (or run this again with --apply-boot):\n");
        s_print_commands(&st);
        printf("then reboot: vfio-pci takes %s at the next boot.\n", st.idlist);
    } else {
        printf("Reboot now: vfio-pci takes %s at the next boot.\n", st.idlist);
    }
    rc = CLI_EXIT_OK;
out:
    s_free(&st);
    return rc;
}
