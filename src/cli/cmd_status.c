/* cmd_status.c - `titan status`: one line per component (VM, workers, job queue) and an exit status for
 * scripts.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "cli.h"
#include "redis.h"
#include "vm.h"

#define S_DEFAULT_VM "titan-worker" /* the design's name, as in deploy/vm/vm.yaml */
#define S_OLD_DEFAULT_VM "titan-vm" /* the default before; still found when no titan-worker exists */
#define S_DEFAULT_GROUP TITAN_REDIS_DEFAULT_GROUP
#define S_MAX_GPU_INFO_BYTES 65536 /* a larger gpu_info reply is refused, not parsed */
#define S_MAX_COMPONENTS 40        /* a VM, up to 32 backends (TITAN_CONF_MAX_BACKENDS), a queue */
#define S_LAG_SCAN_CAP 100000      /* entries counted one by one when Redis does not know a group's lag */

/* Exit statuses of this command (the 0/1/2; 2 is also a usage error, as everywhere). */
enum { S_EXIT_HEALTHY = 0, S_EXIT_DEGRADED = 1, S_EXIT_DOWN = 2 };

/* Ordered by severity: the overall status is the worst; unknown counts as degraded. */
typedef enum { S_HEALTHY = 0, S_UNKNOWN = 1, S_DEGRADED = 2, S_DOWN = 3 } s_health;

typedef struct {
    const char *kind; /* "vm", "worker", "queue" */
    char name[300];
    s_health health;
    char detail[600];
    json_t *extra; /* more members for --json (owned), or NULL */
} s_comp;

typedef struct {
    const char *vm;     /* domain name */
    const char *uri;    /* libvirt URI */
    bool vm_explicit;   /* --vm, --connect, $TITAN_VM or $TITAN_LIBVIRT_URI: always report the VM */
    bool vm_defaulted;  /* no --vm nor $TITAN_VM: S_DEFAULT_VM, else S_OLD_DEFAULT_VM */
    bool no_vm;         /* --no-vm */
    const char *redis;  /* NULL: no queue line */
    const char *prefix; /* key prefix without braces */
    const char *group;  /* consumer group */
    s_comp comp[S_MAX_COMPONENTS];
    size_t ncomp;
} s_status;

void cli_help_status(FILE *f)
{
    fprintf(
        f,
        "usage: titan status [--vm NAME] [--connect URI] [--no-vm] [--backends FILE]\n"
        "                    [--redis URL] [--redis-prefix P] [--jobs-group G] [--json]\n"
        "\n"
        "Checks every part of the service once and prints one line per component, then the\n"
        "overall status:\n"
        "  vm      the libvirt state of domain NAME: running is healthy; paused or suspended is\n"
        "          degraded; shut off, shutting down, crashed or missing is down; libvirt\n"
        "          unreachable (or unable to say) is unknown, which counts as degraded\n"
        "  worker  gpu_info from each backend of --backends FILE (through the router, at once),\n"
        "          else from the worker at --endpoint (one attempt within --timeout): answered is\n"
        "          healthy, with the device, memory, utilization and queue; busy or an error\n"
        "          answer is degraded; no answer is down\n"
        "  queue   with --redis: jobs waiting in both streams (not yet delivered to a worker plus\n"
        "          delivered but not acknowledged) and the dead letters; Redis unreachable is\n"
        "          down; jobs waiting while no worker has ever joined the group is degraded\n"
        "\n"
        "options:\n"
        "  --vm NAME         the domain (default $TITAN_VM, else %s; else %s, the old default\n"
        "                    name, when only that domain exists)\n"
        "  --connect URI     the libvirt URI (default $TITAN_LIBVIRT_URI, else %s)\n"
        "                    (not a worker endpoint: that is the global --endpoint)\n"
        "  --no-vm           leave the VM out (a worker on bare metal, or no libvirt here)\n"
        "  --redis URL       check the job queue in this Redis (default $TITAN_REDIS; none: no\n"
        "                    queue line; --redis '' turns $TITAN_REDIS off)\n"
        "  --redis-prefix P  job keys are {P}:... (default $TITAN_REDIS_PREFIX, else titan)\n"
        "  --jobs-group G    the workers' consumer group (default %s)\n"
        "\n"
        "Without --vm, --connect, $TITAN_VM or $TITAN_LIBVIRT_URI, the VM line appears only\n"
        "when libvirt answers at the default URI and has a domain called %s (or %s); name it to\n"
        "make a missing domain or an unreachable libvirt count.\n"
        "\n"
        "--json prints {\"status\":\"healthy|degraded|down\",\"components\":[{\"component\":\n"
        "\"vm|worker|queue\",\"name\":...,\"status\":\"healthy|degraded|down|unknown\",\"detail\":...,\n"
        "...}]}, with the raw figures beside each detail.\n"
        "\n"
        "examples:\n"
        "  titan status\n"
        "  titan --backends compute_backends.yaml status --redis redis://127.0.0.1:6379\n"
        "  titan --endpoint tcp://192.168.122.10:5555 --server-key worker status --vm titan\n"
        "  titan status --json | jq -r '.components[] | select(.status != \"healthy\") | .detail'\n"
        "  # ecosystem.sh: start what needs the GPU only when it is there\n"
        "  titan status --redis \"$TITAN_REDIS\" >/dev/null; rc=$?\n"
        "  case $rc in 0) start_all ;; 1) start_all; warn \"titan degraded\" ;; *) use_cpu_fallback ;; esac\n"
        "\n"
        "exit status: 0 every component healthy; 1 something degraded or unknown; 2 something down,\n"
        "or a usage error (bad option, bad backends file or Redis URL; then --json prints nothing).\n",
        S_DEFAULT_VM, S_OLD_DEFAULT_VM, TITAN_VM_DEFAULT_URI, S_DEFAULT_GROUP, S_DEFAULT_VM,
        S_OLD_DEFAULT_VM);
}

static const char *s_health_name(s_health h)
{
    static const char *const names[] = {"healthy", "unknown", "degraded", "down"};
    return names[h];
}

/* Adds a component and returns it (the caller fills it), or NULL when the table is full. */
static s_comp *s_add(s_status *st, const char *kind, const char *name)
{
    if (st->ncomp >= S_MAX_COMPONENTS) return NULL;
    s_comp *c = &st->comp[st->ncomp++];
    memset(c, 0, sizeof *c);
    c->kind = kind;
    snprintf(c->name, sizeof c->name, "%s", name);
    c->health = S_UNKNOWN;
    return c;
}

/* Sets an extra JSON member of c (stealing v). */
static void s_extra(s_comp *c, const char *key, json_t *v)
{
    if (!v) return;
    if (!c->extra) c->extra = json_object();
    if (c->extra)
        json_object_set_new(c->extra, key, v);
    else
        json_decref(v);
}

/* ---- the VM ---- */

/* libvirt prints every error on stderr by default; status reports them itself. */
static void s_virt_quiet(void *arg, virErrorPtr e)
{
    (void)arg;
    (void)e;
}

static const char *s_virt_error(void)
{
    const virError *e = virGetLastError();
    return e && e->message ? e->message : "unknown libvirt error";
}

/* Health of a libvirt state name (titan_vm_status.state, or virsh's names). */
static s_health s_vm_health(const char *state)
{
    static const char *const healthy[] = {"running", "blocked", "idle"};
    static const char *const degraded[] = {"paused", "pmsuspended", "suspended"};
    static const char *const down[] = {"shutoff", "shut off", "shutdown", "in shutdown", "crashed", "dying"};
    for (size_t i = 0; i < sizeof healthy / sizeof healthy[0]; i++)
        if (strcmp(state, healthy[i]) == 0) return S_HEALTHY;
    for (size_t i = 0; i < sizeof degraded / sizeof degraded[0]; i++)
        if (strcmp(state, degraded[i]) == 0) return S_DEGRADED;
    for (size_t i = 0; i < sizeof down / sizeof down[0]; i++)
        if (strcmp(state, down[i]) == 0) return S_DOWN;
    return S_UNKNOWN;
}

static void s_format_uptime(double s, char *buf, size_t cap)
{
    long t = (long)s;
    if (t >= 86400)
        snprintf(buf, cap, "%ldd%02ldh", t / 86400, t % 86400 / 3600);
    else if (t >= 3600)
        snprintf(buf, cap, "%ldh%02ldm", t / 3600, t % 3600 / 60);
    else
        snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
}

static void s_check_vm(s_status *st)
{
    virSetErrorFunc(NULL, s_virt_quiet);
    titan_vm_init(); /* libvirt's default event loop: an embedded driver (qemu:///embed) refuses to open without */
    virConnectPtr conn = virConnectOpen(st->uri);
    if (!conn) conn = virConnectOpenReadOnly(st->uri); /* reading a state needs no write access */
    if (!conn) {
        if (!st->vm_explicit) return; /* no libvirt here: a worker on bare metal */
        s_comp *c = s_add(st, "vm", st->vm);
        c->health = S_UNKNOWN;
        snprintf(c->detail, sizeof c->detail, "libvirt at %s unreachable: %s", st->uri, s_virt_error());
        s_extra(c, "uri", json_string(st->uri));
        s_extra(c, "state", json_null());
        return;
    }
    virDomainPtr dom = virDomainLookupByName(conn, st->vm);
    bool old_name = false;
    if (!dom && st->vm_defaulted) {
        /* a VM defined under the old default name keeps working, with a word on renaming it */
        const virError *e = virGetLastError();
        if (e && e->code == VIR_ERR_NO_DOMAIN && (dom = virDomainLookupByName(conn, S_OLD_DEFAULT_VM))) {
            st->vm = S_OLD_DEFAULT_VM;
            old_name = true;
        }
    }
    if (!dom) {
        const virError *e = virGetLastError();
        bool missing = e && e->code == VIR_ERR_NO_DOMAIN;
        if (st->vm_explicit || !missing) {
            s_comp *c = s_add(st, "vm", st->vm);
            c->health = missing ? S_DOWN : S_UNKNOWN;
            if (missing)
                snprintf(c->detail, sizeof c->detail,
                         "no domain %s%s on %s; define it with `titan vm define --config vm.yaml`", st->vm,
                         st->vm_defaulted ? " (nor " S_OLD_DEFAULT_VM ", the old default name)" : "",
                         st->uri);
            else
                snprintf(c->detail, sizeof c->detail, "cannot look up %s on %s: %s", st->vm, st->uri,
                         s_virt_error());
            s_extra(c, "uri", json_string(st->uri));
            s_extra(c, "state", missing ? json_string("undefined") : json_null());
        }
        virConnectClose(conn);
        return;
    }
    s_comp *c = s_add(st, "vm", st->vm);
    s_extra(c, "uri", json_string(st->uri));
    titan_vm_status vs;
    char err[512] = "";
    int rc = titan_vm_status_get(conn, st->vm, &vs, err, sizeof err);
    if (rc != 0) {
        c->health = S_UNKNOWN;
        snprintf(c->detail, sizeof c->detail, "state of %s on %s unknown: %s", st->vm, st->uri,
                 err[0] ? err : s_virt_error());
        s_extra(c, "state", json_null());
    } else {
        c->health = s_vm_health(vs.state);
        int n = snprintf(c->detail, sizeof c->detail, "%s%s%s%s on %s", vs.state, vs.reason[0] ? " (" : "",
                         vs.reason, vs.reason[0] ? ")" : "", st->uri);
        size_t off = n > 0 && (size_t)n < sizeof c->detail ? (size_t)n : sizeof c->detail - 1;
        if (vs.uptime_s >= 0) {
            char up[32];
            s_format_uptime(vs.uptime_s, up, sizeof up);
            off += (size_t)snprintf(c->detail + off, sizeof c->detail - off, ", up %s", up);
        }
        if (off < sizeof c->detail && vs.vcpus > 0)
            off +=
                (size_t)snprintf(c->detail + off, sizeof c->detail - off, ", %d vCPU%s, %.1f GiB", vs.vcpus,
                                 vs.vcpus == 1 ? "" : "s", (double)vs.memory_kib / (1024.0 * 1024.0));
        for (int i = 0; i < vs.nhostdevs && off < sizeof c->detail; i++)
            off += (size_t)snprintf(c->detail + off, sizeof c->detail - off, "%s%s", i ? " " : ", GPU ",
                                    vs.hostdevs[i]);
        if (old_name && off < sizeof c->detail)
            snprintf(c->detail + off, sizeof c->detail - off,
                     "; found under the old default name " S_OLD_DEFAULT_VM " (no " S_DEFAULT_VM
                     "): pass --vm " S_OLD_DEFAULT_VM
                     ", or rename it while shut off: virsh domrename " S_OLD_DEFAULT_VM " " S_DEFAULT_VM);
        s_extra(c, "state", json_string(vs.state));
        s_extra(c, "reason", vs.reason[0] ? json_string(vs.reason) : json_null());
        s_extra(c, "uptime_s", vs.uptime_s >= 0 ? json_real(vs.uptime_s) : json_null());
    }
    if (old_name) s_extra(c, "old_default_name", json_true());
    virDomainFree(dom);
    virConnectClose(conn);
}

/* ---- workers ---- */

/* Returns the number at key in o when it is a finite one in [lo, hi], else NAN. */
static double s_num(const json_t *o, const char *key, double lo, double hi)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_number(v)) return NAN;
    double d = json_number_value(v);
    return isfinite(d) && d >= lo && d <= hi ? d : NAN;
}

/* Fills c from the gpu_info reply header `hdr`: healthy with a summary, or degraded for an error answer
 * (busy, shutting_down...), or down for a reply that is not a device description. */
static void s_worker_from_reply(s_comp *c, const char *hdr)
{
    if (!hdr || strlen(hdr) > S_MAX_GPU_INFO_BYTES) {
        c->health = S_DOWN;
        snprintf(c->detail, sizeof c->detail, "gpu_info reply missing or over %d bytes",
                 S_MAX_GPU_INFO_BYTES);
        return;
    }
    json_t *o = json_loads(hdr, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(o)) {
        c->health = S_DOWN;
        snprintf(c->detail, sizeof c->detail, "gpu_info reply is not a JSON object (a different version?)");
        json_decref(o);
        return;
    }
    const json_t *err = json_object_get(o, "error");
    if (err) {
        const char *code = json_string_value(json_object_get(o, "code"));
        c->health = S_DEGRADED; /* it answers: busy, draining, or refusing this request */
        snprintf(c->detail, sizeof c->detail, "answered %s: %.300s", code ? code : "an error",
                 json_is_string(err) ? json_string_value(err) : "(no text)");
        s_extra(c, "code", json_string(code ? code : "remote"));
        json_decref(o);
        return;
    }
    const char *name = json_string_value(json_object_get(o, "name"));
    if (!name) {
        c->health = S_DOWN;
        snprintf(c->detail, sizeof c->detail, "gpu_info reply lacks a \"name\"");
        json_decref(o);
        return;
    }
    c->health = S_HEALTHY;
    const char *backend = json_string_value(json_object_get(o, "backend"));
    size_t off = (size_t)snprintf(c->detail, sizeof c->detail, "%.200s", name);
    if (backend) off += (size_t)snprintf(c->detail + off, sizeof c->detail - off, " (%.16s)", backend);
    double used = s_num(o, "memory_used_gb", 0, 1e9), total = s_num(o, "total_memory_gb", 0, 1e9);
    if (off < sizeof c->detail && !isnan(total)) {
        if (!isnan(used))
            off += (size_t)snprintf(c->detail + off, sizeof c->detail - off, ", memory %.1f/%.1f GB", used,
                                    total);
        else
            off += (size_t)snprintf(c->detail + off, sizeof c->detail - off, ", memory %.1f GB", total);
    }
    double util = s_num(o, "utilization", 0, 1);
    if (off < sizeof c->detail && !isnan(util))
        off += (size_t)snprintf(c->detail + off, sizeof c->detail - off, ", utilization %.0f%%", util * 100);
    const json_t *q = json_object_get(o, "queue_depth");
    if (off < sizeof c->detail && json_is_integer(q))
        snprintf(c->detail + off, sizeof c->detail - off, ", queue %lld", (long long)json_integer_value(q));
    json_object_del(o, "id");
    s_extra(c, "gpu_info", o);
}

typedef struct {
    titan_router *router;
    size_t index;
    s_comp *comp;
} s_probe;

/* Asks one backend of the router for gpu_info (a thread body; also called directly). */
static void *s_probe_backend(void *arg)
{
    s_probe *p = arg;
    s_comp *c = p->comp;
    titan_reply *rep = NULL;
    titan_route_info info;
    memset(&info, 0, sizeof info);
    int rc = titan_router_call_on(p->router, p->index, "{\"op\":\"gpu_info\"}", NULL, 0, &rep, &info);
    if (rc == 0) {
        s_worker_from_reply(c, titan_reply_header(rep));
    } else {
        /* The router's reasons start with "NAME: ", which the line already shows. */
        const char *e = info.error[0] ? info.error : strerror(-rc);
        size_t nl = strlen(c->name);
        if (strncmp(e, c->name, nl) == 0 && e[nl] == ':' && e[nl + 1] == ' ') e += nl + 2;
        c->health = rc == -EBUSY ? S_DEGRADED : S_DOWN;
        snprintf(c->detail, sizeof c->detail, "%s%.500s", rc == -EBUSY ? "busy: " : "", e);
        s_extra(c, "code",
                json_string(rc == -EBUSY          ? "busy"
                            : rc == -EHOSTUNREACH ? "unreachable"
                                                  : "local"));
    }
    titan_reply_destroy(&rep);
    return NULL;
}

/* Probes every backend of g->backends at once. Returns CLI_EXIT_OK, or the exit status of a bad file. */
static int s_check_backends(const cli_globals *g, s_status *st)
{
    titan_router *r = NULL;
    cli_globals quiet = *g;
    quiet.json = false; /* a bad file is a usage error: no JSON document, as the help says */
    int rc = cli_router_new(&quiet, &r);
    if (rc != CLI_EXIT_OK) return rc;
    size_t n = titan_router_backend_count(r);
    s_probe probes[S_MAX_COMPONENTS];
    pthread_t threads[S_MAX_COMPONENTS];
    bool started[S_MAX_COMPONENTS] = {false};
    size_t np = 0;
    for (size_t i = 0; i < n && np < S_MAX_COMPONENTS; i++) {
        titan_backend_status bs;
        if (titan_router_backend_status(r, i, &bs) != 0) continue;
        s_comp *c = s_add(st, "worker", bs.name);
        if (!c) break;
        s_extra(c, "type", json_string(bs.type == TITAN_ROUTE_LOCAL ? "local" : "remote"));
        s_extra(c, "endpoint", bs.type == TITAN_ROUTE_LOCAL ? json_null() : json_string(bs.endpoint));
        s_extra(c, "device", json_string(bs.device));
        probes[np] = (s_probe){.router = r, .index = i, .comp = c};
        np++;
    }
    /* At once, so that dead backends cost one timeout in all rather than one each. */
    for (size_t i = 0; i < np; i++)
        started[i] = pthread_create(&threads[i], NULL, s_probe_backend, &probes[i]) == 0;
    for (size_t i = 0; i < np; i++) {
        if (started[i])
            pthread_join(threads[i], NULL);
        else
            s_probe_backend(&probes[i]);
    }
    titan_router_destroy(&r);
    return CLI_EXIT_OK;
}

/* Probes the worker at g->endpoint with one gpu_info attempt. Returns CLI_EXIT_OK or a usage error. */
static int s_check_endpoint(const cli_globals *g, s_status *st)
{
    cli_globals once = *g;
    once.retries = 0; /* a status check waits one --timeout, not three */
    once.json = false;
    titan_client *cl = NULL;
    int rc = cli_client_new(&once, &cl);
    if (rc != CLI_EXIT_OK) return rc;
    s_comp *c = s_add(st, "worker", g->endpoint);
    s_extra(c, "endpoint", json_string(g->endpoint));
    titan_reply *rep = NULL;
    int err = titan_client_call(cl, "{\"op\":\"gpu_info\"}", NULL, 0, &rep);
    if (err == 0) {
        s_worker_from_reply(c, titan_reply_header(rep));
    } else if (err == -ETIMEDOUT) {
        c->health = S_DOWN;
        snprintf(c->detail, sizeof c->detail, "no answer within %d ms%s", g->timeout_ms,
                 g->server_key ? " (or the worker refused this client's CURVE key)" : "");
        s_extra(c, "code", json_string("timeout"));
    } else {
        c->health = S_DOWN;
        const char *msg = titan_client_last_error(cl);
        snprintf(c->detail, sizeof c->detail, "%.500s", msg && *msg ? msg : strerror(-err));
        s_extra(c, "code", json_string(err == -EPROTO ? "protocol" : "local"));
    }
    titan_reply_destroy(&rep);
    titan_client_destroy(&cl);
    return CLI_EXIT_OK;
}

/* ---- the job queue ---- */

/* Runs a command; returns the reply, or NULL with why in err (the connection failed, or Redis said no). */
static redisReply *s_cmd(redisContext *rc, char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    if (!r) {
        snprintf(err, cap, "%s", rc->errstr[0] ? rc->errstr : "connection lost");
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, cap, "%.*s", (int)r->len, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* One queue stream: entries not yet delivered to the group, and delivered but not acknowledged. */
typedef struct {
    long long undelivered;
    long long pending;
    bool group; /* the consumer group exists */
    long long consumers;
    bool lag_exact; /* false: counted up to S_LAG_SCAN_CAP */
} s_stream;

static long long s_int(const redisReply *r)
{
    if (!r) return -1;
    if (r->type == REDIS_REPLY_INTEGER) return r->integer;
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) return atoll(r->str);
    return -1;
}

/* Reads one stream's figures. Returns 0, or -1 with why in err. */
static int s_stream_stats(redisContext *rc, const char *key, const char *group, s_stream *s, char *err,
                          size_t cap)
{
    memset(s, 0, sizeof *s);
    s->lag_exact = true;
    redisReply *len = s_cmd(rc, err, cap, "XLEN %s", key);
    if (!len) return -1;
    long long xlen = s_int(len);
    freeReplyObject(len);
    if (xlen <= 0) return 0; /* no stream (no job ever) or an empty one */
    char why[256];
    redisReply *groups = s_cmd(rc, why, sizeof why, "XINFO GROUPS %s", key);
    if (!groups) {
        snprintf(err, cap, "XINFO GROUPS %s: %s", key, why);
        return -1;
    }
    const redisReply *g = NULL;
    for (size_t i = 0; groups->type == REDIS_REPLY_ARRAY && i < groups->elements && !g; i++) {
        const redisReply *e = groups->element[i];
        for (size_t k = 0; e->type == REDIS_REPLY_ARRAY && k + 1 < e->elements; k += 2)
            if (strcmp(e->element[k]->str, "name") == 0 && e->element[k + 1]->str &&
                strcmp(e->element[k + 1]->str, group) == 0)
                g = e;
    }
    if (!g) {
        s->undelivered = xlen; /* no worker ever read it: every entry waits */
        freeReplyObject(groups);
        return 0;
    }
    s->group = true;
    const char *last_id = "0-0";
    long long lag = -1;
    for (size_t k = 0; k + 1 < g->elements; k += 2) {
        const char *f = g->element[k]->str;
        const redisReply *v = g->element[k + 1];
        if (strcmp(f, "pending") == 0) s->pending = s_int(v);
        if (strcmp(f, "consumers") == 0) s->consumers = s_int(v);
        if (strcmp(f, "lag") == 0) lag = v->type == REDIS_REPLY_NIL ? -1 : s_int(v);
        if (strcmp(f, "last-delivered-id") == 0 && v->str) last_id = v->str;
    }
    if (lag >= 0) {
        s->undelivered = lag;
    } else {
        /* Redis before 7, or a lag it cannot tell (entries deleted): count what follows the last delivery. */
        redisReply *r = s_cmd(rc, why, sizeof why, "XRANGE %s (%s + COUNT %d", key, last_id, S_LAG_SCAN_CAP);
        if (!r) {
            snprintf(err, cap, "XRANGE %s: %s", key, why);
            freeReplyObject(groups);
            return -1;
        }
        s->undelivered = r->type == REDIS_REPLY_ARRAY ? (long long)r->elements : 0;
        s->lag_exact = s->undelivered < S_LAG_SCAN_CAP;
        freeReplyObject(r);
    }
    freeReplyObject(groups);
    return 0;
}

static void s_check_queue(const cli_globals *g, s_status *st)
{
    char name[300];
    titan_redis_url_redact(st->redis, true, name, sizeof name);
    s_comp *c = s_add(st, "queue", name);
    s_extra(c, "prefix", json_string(st->prefix));
    s_extra(c, "group", json_string(st->group));
    titan_redis_url u;
    if (titan_redis_url_parse(st->redis, &u, NULL, 0) != 0) {
        c->health = S_DOWN;
        snprintf(c->detail, sizeof c->detail, "cannot read the Redis URL");
        return;
    }
    titan_redis_timeouts tv = {.connect_ms = g->timeout_ms, .command_ms = g->timeout_ms};
    redisContext *rc = NULL;
    char err[400] = "";
    redisReply *r = NULL;
    int crc = titan_redis_connect(&u, &tv, &rc, err, sizeof err);
    titan_redis_url_wipe(&u);
    if (crc != 0) goto down;
    char key[TITAN_REDIS_MAX_PREFIX + 32];
    s_stream high, normal;
    titan_redis_key(key, sizeof key, st->prefix, TITAN_REDIS_KEY_QUEUE_HIGH, NULL);
    if (s_stream_stats(rc, key, st->group, &high, err, sizeof err) != 0) goto down;
    titan_redis_key(key, sizeof key, st->prefix, TITAN_REDIS_KEY_QUEUE, NULL);
    if (s_stream_stats(rc, key, st->group, &normal, err, sizeof err) != 0) goto down;
    titan_redis_key(key, sizeof key, st->prefix, TITAN_REDIS_KEY_DEAD, NULL);
    if (!(r = s_cmd(rc, err, sizeof err, "XLEN %s", key))) goto down;
    long long dead = s_int(r);
    freeReplyObject(r);
    redisFree(rc);

    long long undelivered = high.undelivered + normal.undelivered, pending = high.pending + normal.pending;
    bool exact = high.lag_exact && normal.lag_exact;
    bool orphaned = (high.undelivered > 0 && !high.group) || (normal.undelivered > 0 && !normal.group);
    c->health = orphaned ? S_DEGRADED : S_HEALTHY;
    snprintf(c->detail, sizeof c->detail,
             "%lld%s waiting (%lld%s not yet delivered, %lld pending; high %lld, normal %lld), %lld dead "
             "letter%s%s",
             undelivered + pending, exact ? "" : "+", undelivered, exact ? "" : "+", pending,
             high.undelivered + high.pending, normal.undelivered + normal.pending, dead, dead == 1 ? "" : "s",
             orphaned ? "; no worker has joined the consumer group yet" : "");
    s_extra(c, "waiting", json_integer(undelivered + pending));
    s_extra(c, "undelivered", json_integer(undelivered));
    s_extra(c, "pending", json_integer(pending));
    s_extra(c, "dead", json_integer(dead));
    s_extra(c, "high",
            json_pack("{s:I, s:I, s:b}", "undelivered", high.undelivered, "pending", high.pending, "group",
                      high.group));
    s_extra(c, "normal",
            json_pack("{s:I, s:I, s:b}", "undelivered", normal.undelivered, "pending", normal.pending,
                      "group", normal.group));
    if (!exact) s_extra(c, "lag_exact", json_false());
    return;
down:
    if (rc) redisFree(rc);
    c->health = S_DOWN;
    snprintf(c->detail, sizeof c->detail, "Redis unreachable: %s", err);
    s_extra(c, "code", json_string("redis_unreachable"));
}

/* ---- the command ---- */

static int s_print(const cli_globals *g, s_status *st, s_health overall)
{
    if (g->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < st->ncomp; i++) {
            s_comp *c = &st->comp[i];
            json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "component", c->kind, "name", c->name, "status",
                                  s_health_name(c->health), "detail", c->detail);
            if (o && c->extra) json_object_update(o, c->extra);
            json_array_append_new(arr, o);
        }
        const char *s = overall == S_HEALTHY ? "healthy" : overall == S_DOWN ? "down" : "degraded";
        return cli_print_json(json_pack("{s:s, s:o}", "status", s, "components", arr));
    }
    size_t w = 4;
    for (size_t i = 0; i < st->ncomp; i++)
        if (strlen(st->comp[i].name) > w) w = strlen(st->comp[i].name);
    if (w > 40) w = 40;
    printf("%-9s %-*s %-9s %s\n", "COMPONENT", (int)w, "NAME", "STATUS", "DETAIL");
    for (size_t i = 0; i < st->ncomp; i++) {
        const s_comp *c = &st->comp[i];
        printf("%-9s %-*s %-9s %s\n", c->kind, (int)w, c->name, s_health_name(c->health), c->detail);
    }
    printf("overall: %s\n", overall == S_HEALTHY ? "healthy" : overall == S_DOWN ? "down" : "degraded");
    return fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_REMOTE;
}

/* Parses the options into *st, checks every component and prints them. Returns the exit status. */
static int s_run(cli_globals *g, s_status *st, int argc, char **argv)
{
    const char *cmd = "status";
    const char *env_vm = getenv("TITAN_VM"), *env_uri = getenv("TITAN_LIBVIRT_URI");
    const char *env_redis = getenv("TITAN_REDIS"), *env_prefix = getenv("TITAN_REDIS_PREFIX");
    st->vm = env_vm && *env_vm ? env_vm : S_DEFAULT_VM;
    st->vm_defaulted = !(env_vm && *env_vm);
    st->uri = env_uri && *env_uri ? env_uri : TITAN_VM_DEFAULT_URI;
    st->vm_explicit = (env_vm && *env_vm) || (env_uri && *env_uri);
    st->redis = env_redis && *env_redis ? env_redis : NULL;
    st->prefix = env_prefix && *env_prefix ? env_prefix : TITAN_REDIS_DEFAULT_PREFIX;
    st->group = S_DEFAULT_GROUP;
    bool vm_given = false;
    for (int i = 0; i < argc; i++) {
        const char *v = NULL;
        int r = cli_global_option(cmd, g, argc, argv, &i);
        if (r < 0) return CLI_EXIT_USAGE;
        if (r > 0) continue;
        if (strcmp(argv[i], "--no-vm") == 0) {
            st->no_vm = true;
            continue;
        }
        if ((r = cli_match_option(cmd, argc, argv, &i, "--vm", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (!*v || strlen(v) >= sizeof((titan_vm_status *)0)->name)
                return cli_usage_error(cmd, "--vm needs a domain name of 1 to %zu characters",
                                       sizeof((titan_vm_status *)0)->name - 1);
            st->vm = v;
            vm_given = st->vm_explicit = true;
            st->vm_defaulted = false;
            continue;
        }
        if ((r = cli_match_option(cmd, argc, argv, &i, "--connect", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (!*v)
                return cli_usage_error(cmd, "--connect needs a libvirt URI such as %s", TITAN_VM_DEFAULT_URI);
            st->uri = v;
            vm_given = st->vm_explicit = true;
            continue;
        }
        if ((r = cli_match_option(cmd, argc, argv, &i, "--redis", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            st->redis = *v ? v : NULL;
            continue;
        }
        if ((r = cli_match_option(cmd, argc, argv, &i, "--redis-prefix", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            st->prefix = v;
            continue;
        }
        if ((r = cli_match_option(cmd, argc, argv, &i, "--jobs-group", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            st->group = v;
            continue;
        }
        return cli_unknown_option(cmd, argv[i]);
    }
    if (st->no_vm && vm_given)
        return cli_usage_error(cmd, "--no-vm leaves the VM out: drop --vm and --connect");
    if (st->redis) {
        char why[256];
        if (titan_jobs_check_url(st->redis, why, sizeof why) != 0)
            return cli_usage_error(cmd, "bad Redis URL (--redis or TITAN_REDIS): %s", why);
    }
    if (!titan_redis_prefix_ok(st->prefix))
        return cli_usage_error(cmd, "--redis-prefix must have 1 to %d characters without braces or spaces",
                               TITAN_JOB_MAX_PREFIX_LEN);
    if (!*st->group || strlen(st->group) > 128 || strpbrk(st->group, " \t\r\n"))
        return cli_usage_error(cmd, "--jobs-group must have 1 to 128 characters without spaces");

    if (!st->no_vm) s_check_vm(st);
    int rc = g->backends ? s_check_backends(g, st) : s_check_endpoint(g, st);
    if (rc != CLI_EXIT_OK) goto out;
    if (st->redis) s_check_queue(g, st);

    s_health worst = S_HEALTHY;
    for (size_t i = 0; i < st->ncomp; i++)
        if (st->comp[i].health > worst) worst = st->comp[i].health;
    if (worst == S_UNKNOWN) worst = S_DEGRADED;
    rc = s_print(g, st, worst);
    if (rc == CLI_EXIT_OK)
        rc = worst == S_HEALTHY ? S_EXIT_HEALTHY : worst == S_DOWN ? S_EXIT_DOWN : S_EXIT_DEGRADED;
out:
    for (size_t i = 0; i < st->ncomp; i++)
        json_decref(st->comp[i].extra);
    return rc;
}

int cli_cmd_status(cli_globals *g, int argc, char **argv)
{
    s_status *st = calloc(1, sizeof *st); /* ~40 KB of component texts */
    if (!st) {
        fprintf(stderr, "titan status: out of memory\n");
        return CLI_EXIT_REMOTE;
    }
    int rc = s_run(g, st, argc, argv);
    bool embedded = !st->no_vm && titan_vm_uri_embedded(st->uri);
    free(st);
    if (embedded) titan_vm_exit(rc);
    return rc;
}
