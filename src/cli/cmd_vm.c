/* cmd_vm.c - `titan vm define|xml|start|stop|status|autostart|undefine`: the GPU VM through libvirt. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "firmware.h"
#include "sysroot.h"
#include "vm.h"
#include "vmconf.h"

/* Exit statuses of `titan vm` beyond the common ones (documented in the help). */
#define S_EXIT_DESTROYED 4 /* vm stop: the guest did not power off in time and was destroyed */

#define S_MAX_STOP_TIMEOUT_S 86400

void cli_help_vm(FILE *f)
{
    fprintf(f,
            "usage: titan vm define --config vm.yaml [--connect URI] [--sysroot DIR] [--json]\n"
            "       titan vm xml --config vm.yaml [--sysroot DIR] [--json]\n"
            "       titan vm start NAME [--connect URI] [--json]\n"
            "       titan vm stop NAME [--timeout SECONDS] [--connect URI] [--json]\n"
            "       titan vm status NAME [--connect URI] [--json]\n"
            "       titan vm autostart on|off NAME [--connect URI] [--json]\n"
            "       titan vm undefine NAME [--force] [--connect URI] [--json]\n"
            "\n"
            "Runs the GPU VM through libvirt (design phases 2, 3 and 6):\n"
            "  define     creates the disk image when it is missing and vm.yaml gives a size (a volume of\n"
            "             the libvirt storage pool of its directory, else qemu-img), then defines the\n"
            "             domain, or updates its definition: \"defined NAME (new)\" or \"(updated)\"\n"
            "  xml        prints the domain XML made from vm.yaml; defines nothing, contacts nothing\n"
            "  start      starts the domain; one already running is not an error\n"
            "  stop       asks the guest to power off (the guest agent when the domain has its channel,\n"
            "             else the ACPI power button; a method the driver refuses falls back to the next,\n"
            "             then to the driver's default, with a warning), waits up to --timeout seconds\n"
            "             (default 60) for it to be off, and destroys it (pulls the plug) at the timeout\n"
            "  status     state and reason, persistence, autostart, uptime, vCPUs, memory, passed-through\n"
            "             PCI devices; one line each (or one JSON object)\n"
            "  autostart  on|off: start the domain when the host (libvirtd) starts\n"
            "  undefine   removes the definition (and its UEFI NVRAM where libvirt can); keeps the disk\n"
            "             and says where it is. A running domain is refused unless --force, which\n"
            "             destroys it first\n"
            "\n"
            "options:\n"
            "  --connect URI     the libvirt connection (default: $TITAN_LIBVIRT_URI, else %s);\n"
            "                    e.g. qemu:///session, qemu+ssh://root@host/system, test:///default\n"
            "  --config FILE     vm.yaml (define, xml); its fields are listed in docs/OPERATIONS.md\n"
            "  --sysroot DIR     read QEMU's firmware descriptors under DIR instead of / (define, xml)\n"
            "  --timeout SECONDS how long stop waits for the guest (1..%d, default 60)\n"
            "  --force           undefine a running domain (destroys it first)\n"
            "  --json            one JSON object on stdout (warnings still go to stderr)\n"
            "\n"
            "firmware: efi (vm.yaml's default) is OVMF found through QEMU's firmware descriptors\n"
            "(/etc/qemu/firmware, /usr/share/qemu/firmware; with qemu:///session also\n"
            "~/.config/qemu/firmware), as Arch (edk2-ovmf), Debian (ovmf) and Fedora (edk2-ovmf) ship\n"
            "them; a build without Secure Boot first. On a remote --connect, libvirt picks it there.\n"
            "kvm: auto (vm.yaml's default): define uses KVM where libvirt offers it, else QEMU's TCG\n"
            "emulation with a warning; kvm: on refuses to define without KVM; xml renders auto as KVM.\n"
            "\n"
            "examples:\n"
            "  titan vm define --config /etc/titan/vm.yaml\n"
            "  titan vm start titan-worker && titan vm autostart on titan-worker\n"
            "  titan vm stop titan-worker --timeout 120 || echo \"exit $?\"\n"
            "  titan vm status titan-worker --json | jq .state\n"
            "  titan vm xml --config vm.yaml > vm.xml && virt-xml-validate vm.xml domain\n"
            "\n"
            "exit status: 0 done (stop: powered off cleanly, or was already off; start: also when it was\n"
            "already running; status: the domain exists, whatever its state); 1 libvirt refused or failed\n"
            "(status: no such domain; define, xml: no OVMF found); 2 usage error or a bad vm.yaml;\n"
            "3 cannot connect to libvirt; 4 (stop) the guest did not power off within the timeout and was\n"
            "destroyed.\n",
            TITAN_VM_DEFAULT_URI, S_MAX_STOP_TIMEOUT_S);
}

/* What each subcommand accepts, and what it was given. */
typedef struct {
    const char *cmd; /* "vm stop", for messages */
    bool want_config, want_timeout, want_force, want_connect;
    int npos; /* positional arguments required */
    const char *pos_names;
    const char *uri;
    const char *config;
    const char *sysroot; /* --sysroot (with want_config): where the firmware descriptors are read */
    titan_sysroot sr;
    int timeout_s;
    bool force;
    const char *pos[2];
} s_args;

/* Parses argv into a. Returns CLI_EXIT_OK or CLI_EXIT_USAGE (after printing why). */
static int s_parse(cli_globals *g, s_args *a, int argc, char **argv)
{
    int npos = 0;
    a->timeout_s = 60;
    for (int i = 0; i < argc; i++) {
        const char *v = NULL;
        int r;
        /* --timeout is seconds here, so it is matched before the global (milliseconds) one. */
        if ((r = cli_match_option(a->cmd, argc, argv, &i, "--timeout", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (!a->want_timeout) return cli_unknown_option(a->cmd, "--timeout");
            uint64_t n;
            if (cli_parse_u64(a->cmd, "--timeout", v, 1, S_MAX_STOP_TIMEOUT_S, &n) < 0) return CLI_EXIT_USAGE;
            a->timeout_s = (int)n;
            continue;
        }
        if ((r = cli_match_option(a->cmd, argc, argv, &i, "--connect", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (!a->want_connect) return cli_unknown_option(a->cmd, "--connect");
            if (!*v)
                return cli_usage_error(a->cmd, "--connect needs a libvirt URI such as %s",
                                       TITAN_VM_DEFAULT_URI);
            a->uri = v;
            continue;
        }
        if ((r = cli_match_option(a->cmd, argc, argv, &i, "--config", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (!a->want_config) return cli_unknown_option(a->cmd, "--config");
            if (!*v) return cli_usage_error(a->cmd, "--config needs a file such as vm.yaml");
            a->config = v;
            continue;
        }
        if ((r = cli_match_option(a->cmd, argc, argv, &i, "--sysroot", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (!a->want_config) return cli_unknown_option(a->cmd, "--sysroot");
            a->sysroot = v;
            continue;
        }
        if (strcmp(argv[i], "--force") == 0) {
            if (!a->want_force) return cli_unknown_option(a->cmd, argv[i]);
            a->force = true;
            continue;
        }
        r = cli_global_option(a->cmd, g, argc, argv, &i);
        if (r < 0) return CLI_EXIT_USAGE;
        if (r > 0) continue;
        if (argv[i][0] == '-' && argv[i][1] != '\0') return cli_unknown_option(a->cmd, argv[i]);
        if (npos >= a->npos) return cli_unknown_option(a->cmd, argv[i]);
        a->pos[npos++] = argv[i];
    }
    if (npos < a->npos)
        return cli_usage_error(a->cmd, "give %s; run `titan %s --help`", a->pos_names, a->cmd);
    if (a->want_config && !a->config)
        return cli_usage_error(a->cmd, "give the VM's config: titan %s --config vm.yaml", a->cmd);
    if (titan_sysroot_init(&a->sr, a->sysroot) != 0)
        return cli_usage_error(a->cmd, "--sysroot \"%s\" is not a directory", a->sysroot);
    if (!a->uri) {
        const char *env = getenv("TITAN_LIBVIRT_URI");
        a->uri = env && *env ? env : TITAN_VM_DEFAULT_URI;
    }
    return CLI_EXIT_OK;
}

/* Progress and warnings from src/host/vm.c: printed, and kept for --json. */
typedef struct {
    const cli_globals *g;
    const char *cmd;
    json_t *messages; /* under --json */
    json_t *warnings;
    json_t *firmware; /* under --json: the firmware chosen for define and xml */
} s_out;

static void s_say(void *arg, bool warning, const char *line)
{
    s_out *o = arg;
    if (warning) fprintf(stderr, "titan %s: warning: %s\n", o->cmd, line);
    if (o->g->json) {
        json_array_append_new(warning ? o->warnings : o->messages, json_string(line));
    } else if (!warning) {
        printf("%s\n", line);
        fflush(stdout);
    }
}

static void s_out_init(s_out *o, const cli_globals *g, const char *cmd)
{
    o->g = g;
    o->cmd = cmd;
    o->messages = g->json ? json_array() : NULL;
    o->warnings = g->json ? json_array() : NULL;
    o->firmware = NULL;
}

static void s_out_free(s_out *o)
{
    json_decref(o->messages);
    json_decref(o->warnings);
    json_decref(o->firmware);
    o->messages = o->warnings = o->firmware = NULL;
}

/* Adds the collected messages and warnings to `obj` (when there is one) and prints it. */
static int s_print(s_out *o, json_t *obj)
{
    if (obj) {
        json_object_set(obj, "messages", o->messages);
        json_object_set(obj, "warnings", o->warnings);
        if (o->firmware) json_object_set(obj, "firmware", o->firmware);
    }
    return cli_print_json(obj);
}

/* Reports a failure `rc` with why in err (stderr, and one JSON object under --json); returns the exit status.
 */
static int s_report(s_out *o, const char *name, int rc, const char *err)
{
    const char *code = "libvirt";
    int status = CLI_EXIT_REMOTE;
    switch (rc) {
    case -ENOENT:
        code = "no_domain";
        break;
    case -EBUSY:
        code = "busy";
        break;
    case -EACCES:
        code = "denied";
        break;
    case -ENOTSUP:
        code = "unsupported";
        break;
    default:
        break;
    }
    fprintf(stderr, "titan %s: %s\n", o->cmd, err);
    if (o->g->json) {
        json_t *obj = json_pack("{s:s, s:s, s:i}", "error", err, "code", code, "exit", status);
        if (obj && name) json_object_set_new(obj, "name", json_string(name));
        s_print(o, obj);
    }
    return status;
}

/* Opens a.uri. Returns CLI_EXIT_OK and *conn, or reports why and returns CLI_EXIT_UNREACHABLE. */
static int s_connect(s_out *o, const s_args *a, virConnectPtr *conn)
{
    char err[2048];
    titan_vm_init(); /* before the connection: the default event loop that stop follows */
    *conn = titan_vm_connect(a->uri, err, sizeof err);
    if (*conn) return CLI_EXIT_OK;
    fprintf(stderr, "titan %s: %s\n", o->cmd, err);
    if (o->g->json)
        s_print(o, json_pack("{s:s, s:s, s:s, s:i}", "error", err, "code", "unreachable", "uri", a->uri,
                             "exit", CLI_EXIT_UNREACHABLE));
    return CLI_EXIT_UNREACHABLE;
}

/* Loads a.config into *c. Returns CLI_EXIT_OK, or reports why and returns an exit status. */
static int s_load(s_out *o, const s_args *a, titan_vmconf *c)
{
    char err[2048];
    int rc = titan_vmconf_load_file(a->config, c, err, sizeof err);
    if (rc == 0) return CLI_EXIT_OK;
    int status = rc == -ENOMEM || rc == -ENOTSUP ? CLI_EXIT_REMOTE : CLI_EXIT_USAGE;
    fprintf(stderr, "titan %s: %s\n", o->cmd, err);
    if (o->g->json)
        s_print(o, json_pack("{s:s, s:s, s:s, s:i}", "error", err, "code",
                             rc == -ENOTSUP ? "unsupported" : "config", "file", a->config, "exit", status));
    return status;
}

/* The host of a libvirt URI such as qemu+ssh://root@host:22/system into host[cap]; "" for a local one
 * (qemu:///system, qemu+unix:///system?socket=..., test:///..., or localhost). */
static void s_uri_host(const char *uri, char *host, size_t cap)
{
    host[0] = '\0';
    const char *p = uri ? strstr(uri, "://") : NULL;
    if (!p) return;
    p += 3;
    size_t n = strcspn(p, "/?#");
    const char *at = memchr(p, '@', n);
    if (at) {
        n -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    if (n > 0 && p[0] != '[') {
        const char *colon = memchr(p, ':', n);
        if (colon) n = (size_t)(colon - p);
    }
    if (n == 0 || n >= cap || (n == 9 && strncmp(p, "localhost", 9) == 0)) return;
    memcpy(host, p, n);
    host[n] = '\0';
}

static void s_firmware_warn(void *arg, const char *line)
{
    s_say(arg, true, line);
}

/* firmware: efi without a loader: the OVMF build of QEMU's firmware descriptors goes into c (loader, VARS
 * template, Secure Boot and SMM as the build needs), so the domain names a file that exists on this host.
 * On a remote host libvirt chooses there instead. Returns CLI_EXIT_OK, or reports why and returns an exit
 * status. */
static int s_firmware(s_out *o, const s_args *a, titan_vmconf *c)
{
    if (strcmp(c->firmware, "efi") != 0 || c->loader[0]) return CLI_EXIT_OK;
    char host[256];
    s_uri_host(a->uri, host, sizeof host);
    if (host[0]) {
        char line[512];
        snprintf(line, sizeof line, "firmware: efi on %s: libvirt picks OVMF there (without Secure Boot)",
                 host);
        if (strcmp(a->cmd, "vm xml") != 0 || o->g->json) s_say(o, false, line);
        if (o->g->json) o->firmware = json_pack("{s:s, s:s}", "chosen_by", "libvirt", "host", host);
        return CLI_EXIT_OK;
    }
    /* a session daemon also reads the user's descriptors, as libvirt's does */
    char user_dir[1024] = "";
    if (a->uri &&
        (strncmp(a->uri, "qemu:///session", 15) == 0 || strncmp(a->uri, "qemu+unix:///session", 20) == 0)) {
        const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
        if (xdg && xdg[0] == '/')
            snprintf(user_dir, sizeof user_dir, "%s/qemu/firmware", xdg);
        else if (home && home[0] == '/')
            snprintf(user_dir, sizeof user_dir, "%s/.config/qemu/firmware", home);
    }
    titan_firmware fw;
    char err[2048];
    int rc = titan_firmware_find(&a->sr, user_dir, c->machine, s_firmware_warn, o, &fw, err, sizeof err);
    if (rc < 0) {
        int status = CLI_EXIT_REMOTE;
        fprintf(stderr, "titan %s: %s\n", o->cmd, err);
        if (o->g->json)
            s_print(o,
                    json_pack("{s:s, s:s, s:s, s:i}", "error", err, "code",
                              rc == -ENOENT ? "no_firmware" : "internal", "name", c->name, "exit", status));
        return status;
    }
    memcpy(c->loader, fw.loader, sizeof c->loader);
    memcpy(c->nvram_template, fw.nvram_template, sizeof c->nvram_template);
    c->secure_boot = fw.secure_boot;
    c->smm = fw.requires_smm;
    if (o->g->json)
        o->firmware =
            json_pack("{s:s, s:s, s:s, s:s?, s:b, s:b}", "chosen_by", "titan", "descriptor", fw.descriptor,
                      "loader", fw.loader, "nvram_template", fw.nvram_template[0] ? fw.nvram_template : NULL,
                      "secure_boot", fw.secure_boot, "enrolled_keys", fw.enrolled_keys);
    if (strcmp(a->cmd, "vm xml") != 0) { /* xml's stdout is the document alone */
        char line[2 * TITAN_FIRMWARE_PATH_MAX + 64];
        snprintf(line, sizeof line, "firmware: %s (%s)", fw.loader, fw.descriptor);
        s_say(o, false, line);
    }
    return CLI_EXIT_OK;
}

/* What a command does once its arguments are parsed, its config loaded (when it wants one: c) and libvirt
 * connected (when it wants it: conn). Returns the exit status. */
typedef int (*s_body)(s_out *o, const s_args *a, virConnectPtr conn, titan_vmconf *c);

/* Every vm command: parse, then `check` (usage errors beyond the parser's; may be NULL), load a.config and
 * find its firmware, connect to a.uri, run `body`, close. Returns the exit status. */
static int s_run(cli_globals *g, s_args *a, int argc, char **argv, int (*check)(const s_args *a), s_body body)
{
    int rc = s_parse(g, a, argc, argv);
    if (rc == CLI_EXIT_OK && check) rc = check(a);
    if (rc != CLI_EXIT_OK) return rc;
    s_out o;
    s_out_init(&o, g, a->cmd);
    titan_vmconf c;
    virConnectPtr conn = NULL;
    if ((!a->want_config ||
         ((rc = s_load(&o, a, &c)) == CLI_EXIT_OK && (rc = s_firmware(&o, a, &c)) == CLI_EXIT_OK)) &&
        (!a->want_connect || (rc = s_connect(&o, a, &conn)) == CLI_EXIT_OK))
        rc = body(&o, a, conn, a->want_config ? &c : NULL);
    if (conn) virConnectClose(conn);
    s_out_free(&o);
    if (conn && titan_vm_uri_embedded(a->uri)) titan_vm_exit(rc);
    return rc;
}

static int s_xml(s_out *o, const s_args *a, virConnectPtr conn, titan_vmconf *c)
{
    (void)a;
    (void)conn;
    int rc = CLI_EXIT_OK;
    /* xml contacts nothing and says the same on every host: kvm: auto renders as KVM (define decides per host) */
    char *xml = titan_vmconf_xml(c);
    if (!xml) {
        rc = s_report(o, c->name, -ENOMEM, "cannot make the domain XML (out of memory)");
    } else if (o->g->json) {
        rc = s_print(o, json_pack("{s:s, s:s}", "name", c->name, "xml", xml));
    } else {
        fputs(xml, stdout);
        if (xml[0] && xml[strlen(xml) - 1] != '\n') fputc('\n', stdout);
    }
    free(xml);
    return rc;
}

static int s_cmd_xml(cli_globals *g, int argc, char **argv)
{
    s_args a = {.cmd = "vm xml", .want_config = true};
    return s_run(g, &a, argc, argv, NULL, s_xml);
}

static int s_define(s_out *o, const s_args *a, virConnectPtr conn, titan_vmconf *c)
{
    char err[2048];
    int r = titan_vm_resolve_kvm(conn, c, s_say, o, err, sizeof err);
    if (r < 0) return s_report(o, c->name, r, err);
    r = titan_vm_define(conn, c, s_say, o, err, sizeof err);
    if (r < 0) return s_report(o, c->name, r, err);
    if (o->g->json)
        return s_print(o, json_pack("{s:s, s:s, s:s, s:s}", "name", c->name, "defined", r == 1 ? "new" : "updated",
                                     "uri", a->uri, "disk", c->disk_path));
    return CLI_EXIT_OK;
}

static int s_cmd_define(cli_globals *g, int argc, char **argv)
{
    s_args a = {.cmd = "vm define", .want_config = true, .want_connect = true};
    return s_run(g, &a, argc, argv, NULL, s_define);
}

static int s_start(s_out *o, const s_args *a, virConnectPtr conn, titan_vmconf *c)
{
    (void)c;
    char err[2048];
    int r = titan_vm_start(conn, a->pos[0], err, sizeof err);
    if (r < 0) return s_report(o, a->pos[0], r, err);
    if (o->g->json)
        return s_print(o, json_pack("{s:s, s:b, s:b}", "name", a->pos[0], "started", r == 0, "already_running",
                                    r == 1));
    printf(r == 1 ? "%s is already running\n" : "started %s\n", a->pos[0]);
    return CLI_EXIT_OK;
}

static int s_cmd_start(cli_globals *g, int argc, char **argv)
{
    s_args a = {.cmd = "vm start", .want_connect = true, .npos = 1, .pos_names = "the domain's NAME"};
    return s_run(g, &a, argc, argv, NULL, s_start);
}

static int s_stop(s_out *o, const s_args *a, virConnectPtr conn, titan_vmconf *c)
{
    (void)c;
    char err[2048];
    titan_vm_stop_result res = TITAN_VM_WAS_OFF;
    double t0 = titan_clock_mono_s();
    int r = titan_vm_stop(conn, a->pos[0], a->timeout_s * 1000, s_say, o, &res, err, sizeof err);
    double secs = titan_clock_mono_s() - t0;
    if (r < 0) return s_report(o, a->pos[0], r, err);
    int rc = res == TITAN_VM_DESTROYED ? S_EXIT_DESTROYED : CLI_EXIT_OK;
    const char *what = res == TITAN_VM_STOPPED_CLEANLY ? "stopped"
                       : res == TITAN_VM_WAS_OFF       ? "already_off"
                                                       : "destroyed";
    if (o->g->json) {
        int prc = s_print(o, json_pack("{s:s, s:s, s:f, s:i, s:i}", "name", a->pos[0], "result", what, "seconds",
                                       secs, "timeout_s", a->timeout_s, "exit", rc));
        if (prc != CLI_EXIT_OK) rc = prc;
    } else if (res == TITAN_VM_STOPPED_CLEANLY) {
        printf("%s shut down cleanly in %.1f s\n", a->pos[0], secs);
    } else if (res == TITAN_VM_WAS_OFF) {
        printf("%s is already shut off\n", a->pos[0]);
    }
    /* destroyed: the warning "still running after N s: destroyed" already said it */
    return rc;
}

static int s_cmd_stop(cli_globals *g, int argc, char **argv)
{
    s_args a = {.cmd = "vm stop",
                .want_connect = true,
                .want_timeout = true,
                .npos = 1,
                .pos_names = "the domain's NAME"};
    return s_run(g, &a, argc, argv, NULL, s_stop);
}

static void s_fmt_uptime(double s, char *out, size_t cap)
{
    if (s < 0) {
        snprintf(out, cap, "unknown");
        return;
    }
    unsigned long long t = (unsigned long long)s;
    if (t >= 86400)
        snprintf(out, cap, "%llud %02lluh %02llum (%llu s)", t / 86400, t % 86400 / 3600, t % 3600 / 60, t);
    else
        snprintf(out, cap, "%lluh %02llum %02llus (%llu s)", t / 3600, t % 3600 / 60, t % 60, t);
}

static int s_status(s_out *o, const s_args *a, virConnectPtr conn, titan_vmconf *c)
{
    (void)c;
    char err[2048];
    titan_vm_status s;
    int r = titan_vm_status_get(conn, a->pos[0], &s, err, sizeof err);
    if (r < 0) {
        if (r == -ENOENT && o->g->json) {
            /* a script asking about a domain wants "exists": false, not only an error */
            fprintf(stderr, "titan %s: %s\n", a->cmd, err);
            s_print(o, json_pack("{s:s, s:b, s:s, s:s, s:i}", "name", a->pos[0], "exists", false, "error", err,
                                 "code", "no_domain", "exit", CLI_EXIT_REMOTE));
            return CLI_EXIT_REMOTE;
        }
        return s_report(o, a->pos[0], r, err);
    }
    if (o->g->json) {
        json_t *devs = json_array();
        for (int i = 0; i < s.nhostdevs; i++)
            json_array_append_new(devs, json_string(s.hostdevs[i]));
        json_t *obj = json_pack("{s:s, s:b, s:s, s:s, s:b, s:b, s:i, s:I, s:o, s:s}", "name", s.name,
                                "exists", true, "state", s.state, "reason", s.reason, "persistent",
                                s.persistent, "autostart", s.autostart, "vcpus", s.vcpus, "memory_kib",
                                (json_int_t)s.memory_kib, "hostdevs", devs, "uri", a->uri);
        if (obj) json_object_set_new(obj, "uptime_s", s.uptime_s >= 0 ? json_real(s.uptime_s) : json_null());
        return s_print(o, obj);
    }
    char up[64];
    s_fmt_uptime(s.uptime_s, up, sizeof up);
    if (strcmp(s.state, "running") != 0 && strcmp(s.state, "paused") != 0) snprintf(up, sizeof up, "-");
    printf("name:       %s\n", s.name);
    printf("state:      %s (%s)\n", s.state, s.reason);
    printf("persistent: %s\n", s.persistent ? "yes" : "no");
    printf("autostart:  %s\n", s.autostart ? "on" : "off");
    printf("uptime:     %s\n", up);
    printf("vcpus:      %d\n", s.vcpus);
    printf("memory:     %.1f GiB (%llu KiB)\n", (double)s.memory_kib / (1024.0 * 1024.0),
           (unsigned long long)s.memory_kib);
    printf("hostdevs:  ");
    for (int i = 0; i < s.nhostdevs; i++)
        printf(" %s", s.hostdevs[i]);
    printf("%s\n", s.nhostdevs ? "" : " none");
    return CLI_EXIT_OK;
}

static int s_cmd_status(cli_globals *g, int argc, char **argv)
{
    s_args a = {.cmd = "vm status", .want_connect = true, .npos = 1, .pos_names = "the domain's NAME"};
    return s_run(g, &a, argc, argv, NULL, s_status);
}

static int s_autostart_check(const s_args *a)
{
    if (strcmp(a->pos[0], "on") == 0 || strcmp(a->pos[0], "off") == 0) return CLI_EXIT_OK;
    return cli_usage_error(a->cmd, "expected on or off, not \"%s\": titan vm autostart on|off NAME", a->pos[0]);
}

static int s_autostart(s_out *o, const s_args *a, virConnectPtr conn, titan_vmconf *c)
{
    (void)c;
    bool on = strcmp(a->pos[0], "on") == 0;
    char err[2048];
    int r = titan_vm_autostart(conn, a->pos[1], on, err, sizeof err);
    if (r < 0) return s_report(o, a->pos[1], r, err);
    if (o->g->json) return s_print(o, json_pack("{s:s, s:b}", "name", a->pos[1], "autostart", on));
    printf("autostart %s for %s\n", on ? "on" : "off", a->pos[1]);
    return CLI_EXIT_OK;
}

static int s_cmd_autostart(cli_globals *g, int argc, char **argv)
{
    s_args a = {.cmd = "vm autostart",
                .want_connect = true,
                .npos = 2,
                .pos_names = "on or off, and the domain's NAME"};
    return s_run(g, &a, argc, argv, s_autostart_check, s_autostart);
}

static int s_undefine(s_out *o, const s_args *a, virConnectPtr conn, titan_vmconf *c)
{
    (void)c;
    char err[2048];
    int r = titan_vm_undefine(conn, a->pos[0], a->force, s_say, o, err, sizeof err);
    if (r < 0) return s_report(o, a->pos[0], r, err);
    if (o->g->json) return s_print(o, json_pack("{s:s, s:b}", "name", a->pos[0], "undefined", true));
    return CLI_EXIT_OK;
}

static int s_cmd_undefine(cli_globals *g, int argc, char **argv)
{
    s_args a = {.cmd = "vm undefine",
                .want_connect = true,
                .want_force = true,
                .npos = 1,
                .pos_names = "the domain's NAME"};
    return s_run(g, &a, argc, argv, NULL, s_undefine);
}

int cli_cmd_vm(cli_globals *g, int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*run)(cli_globals *, int, char **);
    } subs[] = {
        {"define", s_cmd_define},     {"xml", s_cmd_xml},       {"start", s_cmd_start},
        {"stop", s_cmd_stop},         {"status", s_cmd_status}, {"autostart", s_cmd_autostart},
        {"undefine", s_cmd_undefine},
    };
    if (argc < 1) {
        fprintf(stderr, "titan vm: give a command: define, xml, start, stop, status, autostart or undefine; "
                        "see `titan help vm`\n");
        return CLI_EXIT_USAGE;
    }
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++)
        if (strcmp(argv[0], subs[i].name) == 0) return subs[i].run(g, argc - 1, argv + 1);
    fprintf(stderr,
            "titan vm: unknown command \"%s\"; use define, xml, start, stop, status, autostart or undefine\n",
            argv[0]);
    return CLI_EXIT_USAGE;
}
