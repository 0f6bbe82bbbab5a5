/* cmd_serve.c - titan serve: an HTTP health API and a live status page over the router's backends. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "status_page.h" /* generated from status_page.html by scripts/embed.py */

#define S_DEFAULT_LISTEN "127.0.0.1:8080"
#define S_DEFAULT_INTERVAL_MS 2000
#define S_DEFAULT_HISTORY_S 300
#define S_MAX_SAMPLES 3600         /* per backend: what one /api/titan/backends answer may carry */
#define S_MAX_GPU_INFO_BYTES 65536 /* a gpu_info reply larger than this is refused, not kept */
#define S_HTTP_THREADS 4           /* HTTP handlers never wait on a poll; these serve concurrent clients */
#define S_HTTP_CONNECTIONS 64      /* at once, all clients together */
#define S_HTTP_IDLE_TIMEOUT_S 30   /* an idle keep-alive connection is closed after this */
#define S_PROBE_ALLOWANCE_MS 1000  /* a half-open probe (ping) may precede a poll: the router's cap */
#define S_GPU_INFO "{\"op\":\"gpu_info\"}"

static const char *const s_api_csp = "default-src 'none'; frame-ancestors 'none'";
static const char *const s_page_csp =
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/* One poll of one backend, as the charts plot it. */
typedef struct {
    int64_t t_ms;              /* Unix time in ms when the poll ended */
    double ms;                 /* round trip of the gpu_info call; NAN when it was not answered */
    bool ok;                   /* gpu_info answered with a device description */
    titan_breaker_state state; /* the backend's breaker after the poll */
    double mem_used, mem_total, util, temp; /* from the reply; NAN when absent */
    int64_t queue_depth, inflight;          /* from the reply; -1 when absent */
} s_sample;

typedef enum { H_UNKNOWN, H_HEALTHY, H_DEGRADED, H_DOWN } s_health;

struct s_serve;

typedef struct {
    struct s_serve *srv;
    size_t index;
    char name[64];
    int timeout_ms;
    int priority;
    pthread_t thread;
    bool thread_started;
    /* The rest under srv->lock: the last known state, which the HTTP handlers read. Only this backend's
     * poller writes it, and never holds the lock across the gpu_info call, so no answer waits on a poll. */
    json_t *gpu_info; /* the last device description answered; NULL until one is */
    int64_t gpu_info_ms;
    uint64_t polls;
    bool last_ok;
    int last_rc; /* titan_router_call_on's result, or -EREMOTEIO/-EPROTO for an unusable answer */
    double last_ok_mono;
    char poll_error[300]; /* why the last poll did not answer; "" when it did */
    s_health reported;    /* the health last logged, to log changes only */
    s_sample *ring;
    size_t cap, head, count; /* head: where the next sample goes */
} s_backend;

typedef struct s_serve {
    titan_router *router;
    size_t n;
    s_backend *b;
    size_t ninit;  /* backends initialized (to free) */
    size_t *order; /* backend indices in priority order (ties keep the file's order) */
    int interval_ms;
    int history_s;
    pthread_mutex_t lock;
    pthread_cond_t wake; /* on CLOCK_MONOTONIC: stop, or the next poll is due */
    bool stop;
} s_serve;

void cli_help_serve(FILE *f)
{
    fprintf(f,
            "usage: titan serve [--listen HOST:PORT] [--connect URI | --backends FILE] [--interval MS]\n"
            "                   [--history S]\n"
            "\n"
            "Serves an HTTP health API and a live status page for the backends of compute_backends.yaml\n"
            "(--backends FILE or $TITAN_BACKENDS), or for one worker (--connect URI; by default the\n"
            "worker at --endpoint). Every --interval it asks each backend for gpu_info through the\n"
            "router, so breakers and latencies update as for any routed call, and keeps the last answer\n"
            "and --history seconds of samples for the charts. Runs until SIGINT or SIGTERM.\n"
            "\n"
            "options:\n"
            "  --listen HOST:PORT  where to serve HTTP (default %s; [::1]:PORT for IPv6). Port 0\n"
            "                      picks a free port. The first line on stdout is always\n"
            "                      `titan serve: listening on http://HOST:PORT`\n"
            "  --connect URI       watch this one worker; --timeout bounds each poll, and\n"
            "                      --server-key and --curve-secret apply; not with --backends\n"
            "  --interval MS       poll every backend every MS milliseconds (default %d; 100 to\n"
            "                      3600000)\n"
            "  --history S         seconds of samples kept for the charts (default %d; 1 to 86400, and\n"
            "                      at most %d samples a backend, S*1000/MS)\n"
            "\n"
            "endpoints (GET or HEAD; anything else answers 405, an unknown path 404):\n"
            "  /                     the status page: one card a backend, live charts\n"
            "  /api/titan/health     200 {\"status\":\"healthy\", ...gpu_info..., \"backend\":NAME}\n"
            "                        for the first healthy backend in priority order, else 503\n"
            "                        {\"status\":\"unhealthy\",\"error\":...}, or \"unknown\" while a\n"
            "                        backend's first poll is under way\n"
            "  /api/titan/backends   every backend: breaker state, latency, counters, last gpu_info and\n"
            "                        history\n"
            "\n"
            "A backend is healthy while its latest gpu_info poll was answered. Every answer comes at once\n"
            "from the last known state, never waiting for a poll. There is no authentication: keep\n"
            "--listen on loopback (anything else prints a warning) and publish it through a reverse\n"
            "proxy that controls access.\n"
            "\n"
            "examples:\n"
            "  titan serve\n"
            "  titan serve --listen 127.0.0.1:0 --connect tcp://192.168.122.10:5555 --interval 1000\n"
            "  titan --backends compute_backends.yaml serve --listen 127.0.0.1:8080\n"
            "  curl -s http://127.0.0.1:8080/api/titan/health\n"
            "\n"
            "exit status: 0 stopped by SIGINT or SIGTERM; 1 cannot listen or start; 2 usage error or a\n"
            "bad backends file.\n",
            S_DEFAULT_LISTEN, S_DEFAULT_INTERVAL_MS, S_DEFAULT_HISTORY_S, S_MAX_SAMPLES);
}

/* ---- backend health ---- */

static const char *s_health_name(s_health h)
{
    static const char *const names[] = {"unknown", "healthy", "degraded", "down"};
    return names[h];
}

/* How long an answer counts as current: the next poll may take its timeout plus a probe. */
static double s_stale_ms(const s_serve *s, const s_backend *b)
{
    return 2.0 * s->interval_ms + b->timeout_ms + S_PROBE_ALLOWANCE_MS;
}

/* The health of b (under s->lock) given its breaker state now. */
static s_health s_health_of(const s_serve *s, const s_backend *b, titan_breaker_state st, double now)
{
    if (!b->polls) return H_UNKNOWN;
    if (b->last_ok && now - b->last_ok_mono <= s_stale_ms(s, b)) return H_HEALTHY;
    if (st == TITAN_BREAKER_OPEN || b->last_rc == -EHOSTUNREACH) return H_DOWN;
    return H_DEGRADED; /* busy, half-open, an error answer, or an answer gone stale */
}

/* Returns the number at key in o when it is one in [lo, hi], else NAN. */
static double s_num_field(const json_t *o, const char *key, double lo, double hi)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_number(v)) return NAN;
    double d = json_number_value(v);
    return isfinite(d) && d >= lo && d <= hi ? d : NAN;
}

static int64_t s_int_field(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? (int64_t)json_integer_value(v) : -1;
}

/* Parses a gpu_info reply into *gi (a new reference) or says in why what is wrong with it. */
static int s_parse_gpu_info(titan_reply *rep, json_t **gi, char *why, size_t whycap)
{
    const char *hdr = titan_reply_header(rep);
    if (!hdr || strlen(hdr) > S_MAX_GPU_INFO_BYTES) {
        snprintf(why, whycap, "gpu_info reply missing or larger than %d bytes", S_MAX_GPU_INFO_BYTES);
        return -EPROTO;
    }
    json_t *o = json_loads(hdr, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        snprintf(why, whycap, "gpu_info reply is not a JSON object");
        return -EPROTO;
    }
    const json_t *err = json_object_get(o, "error");
    if (err) {
        const char *code = json_string_value(json_object_get(o, "code"));
        snprintf(why, whycap, "answered gpu_info with %s: %.200s", code ? code : "an error",
                 json_is_string(err) ? json_string_value(err) : "(no text)");
        json_decref(o);
        return -EREMOTEIO;
    }
    if (!json_is_string(json_object_get(o, "name"))) {
        json_decref(o);
        snprintf(why, whycap, "gpu_info reply lacks a string \"name\"");
        return -EPROTO;
    }
    json_object_del(o, "id"); /* not part of the device description */
    *gi = o;
    return 0;
}

/* Polls backend i once: gpu_info through the router, the answer and a sample recorded. Called by
 * backend i's poller thread only, so one poll of a backend at a time (a local backend has max_inflight
 * 1). s->lock is taken only to record the outcome, never across the call. */
static void s_poll(s_serve *s, size_t i)
{
    s_backend *b = &s->b[i];
    titan_reply *rep = NULL;
    titan_route_info info;
    char why[300] = "";
    json_t *gi = NULL;
    double t0 = titan_clock_mono_ms();
    int rc = titan_router_call_on(s->router, i, S_GPU_INFO, NULL, 0, &rep, &info);
    double ms = titan_clock_mono_ms() - t0;
    if (rc == 0) {
        rc = s_parse_gpu_info(rep, &gi, why, sizeof(why));
    } else {
        /* The router's reasons start with the backend's name, which the callers add themselves. */
        const char *e = info.error[0] ? info.error : strerror(-rc);
        size_t nl = strlen(b->name);
        if (strncmp(e, b->name, nl) == 0 && e[nl] == ':' && e[nl + 1] == ' ') e += nl + 2;
        snprintf(why, sizeof(why), "%.299s", e);
    }
    titan_reply_destroy(&rep);
    titan_backend_status st;
    titan_breaker_state state = TITAN_BREAKER_CLOSED;
    if (titan_router_backend_status(s->router, i, &st) == 0) state = st.state;

    s_sample smp = {.t_ms = titan_clock_wall_ms(),
                    .ms = rc == 0 ? ms : NAN,
                    .ok = rc == 0,
                    .state = state,
                    .mem_used = NAN,
                    .mem_total = NAN,
                    .util = NAN,
                    .temp = NAN,
                    .queue_depth = -1,
                    .inflight = -1};
    if (gi) {
        smp.mem_used = s_num_field(gi, "memory_used_gb", 0, 1e9);
        smp.mem_total = s_num_field(gi, "total_memory_gb", 0, 1e9);
        smp.util = s_num_field(gi, "utilization", 0, 1);
        smp.temp = s_num_field(gi, "temperature_c", -100, 1000);
        smp.queue_depth = s_int_field(gi, "queue_depth");
        smp.inflight = s_int_field(gi, "inflight");
    }
    double now = titan_clock_mono_ms();
    pthread_mutex_lock(&s->lock);
    b->polls++;
    b->last_ok = rc == 0;
    b->last_rc = rc;
    if (rc == 0) {
        json_decref(b->gpu_info);
        b->gpu_info = gi;
        gi = NULL;
        b->gpu_info_ms = smp.t_ms;
        b->last_ok_mono = now;
        b->poll_error[0] = '\0';
    } else {
        snprintf(b->poll_error, sizeof(b->poll_error), "%s", why);
    }
    b->ring[b->head] = smp;
    b->head = (b->head + 1) % b->cap;
    if (b->count < b->cap) b->count++;
    s_health h = s_health_of(s, b, state, now);
    bool changed = h != b->reported && h != H_UNKNOWN;
    if (changed) b->reported = h;
    pthread_mutex_unlock(&s->lock);
    json_decref(gi);
    /* Changes only: a backend that stays down is not logged every interval. */
    if (changed && h == H_HEALTHY)
        fprintf(stderr, "titan serve: backend %s is healthy\n", b->name);
    else if (changed)
        fprintf(stderr, "titan serve: backend %s is %s: %s\n", b->name, s_health_name(h), why);
}

static void *s_poller(void *arg)
{
    s_backend *b = arg;
    s_serve *s = b->srv;
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        pthread_mutex_unlock(&s->lock);
        /* due an interval after this poll began */
        struct timespec due = titan_clock_mono_in((int64_t)s->interval_ms * 1000000);
        s_poll(s, b->index);
        pthread_mutex_lock(&s->lock);
        while (!s->stop && pthread_cond_timedwait(&s->wake, &s->lock, &due) != ETIMEDOUT) {
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* ---- JSON answers ---- */

static json_t *s_real_or_null(double d)
{
    return isfinite(d) ? json_real(d) : json_null();
}

static json_t *s_int_or_null(int64_t v)
{
    return v >= 0 ? json_integer((json_int_t)v) : json_null();
}

static json_t *s_sample_json(const s_sample *p)
{
    json_t *o = json_object();
    if (!o) return NULL;
    json_object_set_new(o, "t", json_integer((json_int_t)p->t_ms));
    json_object_set_new(o, "ms", s_real_or_null(p->ms));
    json_object_set_new(o, "ok", json_boolean(p->ok));
    json_object_set_new(o, "state", json_string(titan_breaker_state_name(p->state)));
    json_object_set_new(o, "memory_used_gb", s_real_or_null(p->mem_used));
    json_object_set_new(o, "total_memory_gb", s_real_or_null(p->mem_total));
    json_object_set_new(o, "utilization", s_real_or_null(p->util));
    json_object_set_new(o, "temperature_c", s_real_or_null(p->temp));
    json_object_set_new(o, "queue_depth", s_int_or_null(p->queue_depth));
    json_object_set_new(o, "inflight", s_int_or_null(p->inflight));
    return o;
}

/* Backend i as /api/titan/backends shows it; the samples are copied under the lock, then encoded. */
static json_t *s_backend_json(s_serve *s, size_t i, int64_t now_ms, s_sample *scratch)
{
    s_backend *b = &s->b[i];
    titan_backend_status st;
    if (titan_router_backend_status(s->router, i, &st) != 0) return NULL;
    pthread_mutex_lock(&s->lock);
    json_t *gi = b->gpu_info ? json_deep_copy(b->gpu_info) : json_null();
    int64_t gi_ms = b->gpu_info_ms;
    s_health h = s_health_of(s, b, st.state, titan_clock_mono_ms());
    char poll_error[sizeof b->poll_error];
    memcpy(poll_error, b->poll_error, sizeof poll_error);
    uint64_t polls = b->polls;
    size_t count = b->count;
    for (size_t k = 0; k < count; k++)
        scratch[k] = b->ring[(b->head + b->cap - count + k) % b->cap];
    pthread_mutex_unlock(&s->lock);

    json_t *hist = json_array();
    int64_t since = now_ms - (int64_t)s->history_s * 1000;
    for (size_t k = 0; hist && k < count; k++)
        if (scratch[k].t_ms >= since) json_array_append_new(hist, s_sample_json(&scratch[k]));
    json_t *o =
        json_pack("{s:s, s:s, s:s, s:s, s:i, s:s, s:s, s:I, s:i, s:I, s:I, s:I, s:I, s:I}", "name", st.name,
                  "type", st.type == TITAN_ROUTE_LOCAL ? "local" : "remote", "endpoint", st.endpoint,
                  "device", st.device, "priority", st.priority, "state", titan_breaker_state_name(st.state),
                  "health", s_health_name(h), "polls", (json_int_t)polls, "inflight", st.inflight, "requests",
                  (json_int_t)st.requests, "ok", (json_int_t)st.ok, "busy", (json_int_t)st.busy, "failures",
                  (json_int_t)st.failures, "probes", (json_int_t)st.probes);
    if (!o || !hist || !gi) {
        json_decref(o);
        json_decref(hist);
        json_decref(gi);
        return NULL;
    }
    json_object_set_new(o, "p50_ms", st.p50_ms >= 0 ? json_real(st.p50_ms) : json_null());
    json_object_set_new(o, "p99_ms", st.p99_ms >= 0 ? json_real(st.p99_ms) : json_null());
    json_object_set_new(o, "timeout_ms", json_integer(st.timeout_ms));
    json_object_set_new(o, "last_error", st.last_error[0] ? json_string(st.last_error) : json_null());
    json_object_set_new(o, "last_error_at", st.last_error_ms ? json_integer(st.last_error_ms) : json_null());
    json_object_set_new(o, "poll_error", poll_error[0] ? json_string(poll_error) : json_null());
    json_object_set_new(o, "gpu_info", gi);
    json_object_set_new(o, "gpu_info_at", gi_ms ? json_integer((json_int_t)gi_ms) : json_null());
    json_object_set_new(o, "history", hist);
    return o;
}

static json_t *s_backends_json(s_serve *s)
{
    size_t maxcap = 1;
    for (size_t i = 0; i < s->n; i++)
        if (s->b[i].cap > maxcap) maxcap = s->b[i].cap;
    s_sample *scratch = malloc(maxcap * sizeof(*scratch));
    json_t *arr = json_array();
    int64_t now = titan_clock_wall_ms();
    for (size_t i = 0; scratch && arr && i < s->n; i++) {
        json_t *one = s_backend_json(s, i, now, scratch);
        if (!one || json_array_append_new(arr, one) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    free(scratch);
    if (!scratch || !arr) {
        json_decref(arr);
        return NULL;
    }
    return json_pack("{s:o, s:i, s:i, s:I, s:s}", "backends", arr, "interval_ms", s->interval_ms, "history_s",
                     s->history_s, "generated_at", (json_int_t)now, "version", TITAN_VERSION);
}

/* The dashboard's health answer, from the last known state of each backend (it never waits for a poll:
 * a dead backend's poll may take its whole timeout); *status gets the HTTP status. Before a backend's
 * first poll has ended it is unknown; when no backend is healthy and one is still unknown, the answer is
 * 503 {"status":"unknown"}. */
static json_t *s_health_json(s_serve *s, unsigned *status)
{
    char error[2048] = "";
    size_t used = 0;
    bool unknown = false;
    for (size_t k = 0; k < s->n; k++) {
        size_t i = s->order[k];
        s_backend *b = &s->b[i];
        titan_backend_status st;
        titan_breaker_state state = TITAN_BREAKER_CLOSED;
        if (titan_router_backend_status(s->router, i, &st) == 0) state = st.state;
        pthread_mutex_lock(&s->lock);
        s_health h = s_health_of(s, b, state, titan_clock_mono_ms());
        if (h == H_HEALTHY) {
            json_t *o = json_pack("{s:s}", "status", "healthy");
            const char *key;
            json_t *v;
            json_object_foreach(b->gpu_info, key, v)
            {
                if (o && strcmp(key, "status") != 0 && strcmp(key, "backend") != 0)
                    json_object_set_new(o, key, json_deep_copy(v));
            }
            pthread_mutex_unlock(&s->lock);
            if (o) json_object_set_new(o, "backend", json_string(b->name));
            *status = MHD_HTTP_OK;
            return o;
        }
        if (h == H_UNKNOWN) unknown = true;
        const char *why = h == H_UNKNOWN     ? "not known yet: its first poll is under way"
                          : b->poll_error[0] ? b->poll_error
                                             : "its last answer is out of date";
        if (used < sizeof(error)) {
            int w = snprintf(error + used, sizeof(error) - used, "%s%s: %s", used ? "; " : "", b->name, why);
            used += w > 0 ? (size_t)w : 0;
        }
        pthread_mutex_unlock(&s->lock);
    }
    *status = MHD_HTTP_SERVICE_UNAVAILABLE;
    char msg[2200];
    snprintf(msg, sizeof(msg), "no backend answered gpu_info: %s", error);
    return json_pack("{s:s, s:s}", "status", unknown ? "unknown" : "unhealthy", "error", msg);
}

/* ---- HTTP ---- */

static enum MHD_Result s_send(struct MHD_Connection *conn, unsigned status, const char *type, void *body,
                              size_t len, enum MHD_ResponseMemoryMode mode, bool page)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, mode);
    if (!resp) {
        if (mode == MHD_RESPMEM_MUST_FREE) free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, page ? "no-cache" : "no-store");
    MHD_add_response_header(resp, "Content-Security-Policy", page ? s_page_csp : s_api_csp);
    MHD_add_response_header(resp, "X-Frame-Options", "DENY");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return r;
}

/* Sends `o` (stolen) as JSON. */
static enum MHD_Result s_send_json(struct MHD_Connection *conn, unsigned status, json_t *o)
{
    /* jansson's default precision (17 digits) round-trips every double: a figure is never rounded here. */
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    if (!text) {
        static char oom[] = "{\"error\":\"out of memory\"}";
        return s_send(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "application/json", oom, strlen(oom),
                      MHD_RESPMEM_PERSISTENT, false);
    }
    return s_send(conn, status, "application/json", text, strlen(text), MHD_RESPMEM_MUST_FREE, false);
}

__attribute__((format(printf, 3, 4))) static enum MHD_Result
s_send_error(struct MHD_Connection *conn, unsigned status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return s_send_json(conn, status, json_pack("{s:s, s:i}", "error", msg, "status", (int)status));
}

static enum MHD_Result s_handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                const char *version, const char *upload_data, size_t *upload_data_size,
                                void **con_cls)
{
    s_serve *s = cls;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return s_send_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method %.64s not allowed: use GET", method);
    if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0)
        return s_send(conn, MHD_HTTP_OK, "text/html; charset=utf-8", (void *)s_status_page, S_STATUS_PAGE_LEN,
                      MHD_RESPMEM_PERSISTENT, true);
    if (strcmp(url, "/api/titan/health") == 0) {
        unsigned status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        json_t *o = s_health_json(s, &status);
        return s_send_json(conn, status, o);
    }
    if (strcmp(url, "/api/titan/backends") == 0) return s_send_json(conn, MHD_HTTP_OK, s_backends_json(s));
    return s_send_error(conn, MHD_HTTP_NOT_FOUND,
                        "no such path %.200s: try /, /api/titan/health or /api/titan/backends", url);
}

/* ---- setup ---- */

typedef struct {
    struct sockaddr_storage addr;
    socklen_t len;
    char host[INET6_ADDRSTRLEN]; /* numeric */
    bool v6;
    bool loopback;
} s_listen;

/* Parses HOST:PORT ([V6]:PORT, localhost:PORT). Returns 0, or -1 without printing. */
static int s_parse_listen(const char *text, s_listen *out)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *colon;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':' || (size_t)(close - text - 1) >= sizeof(host)) return -1;
        memcpy(host, text + 1, (size_t)(close - text - 1));
        host[close - text - 1] = '\0';
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (!colon || (size_t)(colon - text) >= sizeof(host) || memchr(text, ':', (size_t)(colon - text)))
            return -1;
        memcpy(host, text, (size_t)(colon - text));
        host[colon - text] = '\0';
    }
    const char *p = colon + 1;
    if (!*p || strlen(p) > 5 || strspn(p, "0123456789") != strlen(p)) return -1;
    long port = strtol(p, NULL, 10);
    if (port > 65535) return -1;
    memset(out, 0, sizeof(*out));
    if (strcmp(host, "localhost") == 0) snprintf(host, sizeof(host), "127.0.0.1");
    struct sockaddr_in *v4 = (struct sockaddr_in *)&out->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&out->addr;
    if (text[0] != '[' && inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        out->len = sizeof(*v4);
        out->loopback = (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
    } else if (text[0] == '[' && inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        out->len = sizeof(*v6);
        out->v6 = true;
        out->loopback = IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr) ||
                        (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr) && v6->sin6_addr.s6_addr[12] == 127);
    } else {
        return -1;
    }
    /* the numeric form, as the URL printed at start shows it */
    if (!inet_ntop(out->addr.ss_family, out->v6 ? (const void *)&v6->sin6_addr : (const void *)&v4->sin_addr,
                   out->host, sizeof(out->host)))
        return -1;
    return 0;
}

/* Opens the listening socket; returns it, or -errno. *port gets the port bound. */
static int s_listen_socket(const s_listen *l, int *port)
{
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (l->v6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    struct sockaddr_storage got;
    socklen_t glen = sizeof(got);
    if (bind(fd, (const struct sockaddr *)&l->addr, l->len) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&got, &glen) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    *port = ntohs(l->v6 ? ((struct sockaddr_in6 *)&got)->sin6_port : ((struct sockaddr_in *)&got)->sin_port);
    return fd;
}

/* Writes `v` as a double-quoted YAML scalar into out. Returns 0, or -1 for control characters or
 * when it does not fit. */
static int s_yaml_quote(const char *v, char *out, size_t cap)
{
    size_t o = 0;
    if (cap < 3) return -1;
    out[o++] = '"';
    for (const char *p = v; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) return -1;
        if (o + 3 >= cap) return -1;
        if (*p == '"' || *p == '\\') out[o++] = '\\';
        out[o++] = *p;
    }
    out[o++] = '"';
    out[o] = '\0';
    return 0;
}

/* Makes the one-backend router of --connect (or --endpoint). */
static int s_connect_router(const cli_globals *g, const char *uri, int interval_ms, titan_router **r)
{
    const char *cmd = "serve";
    char ep[600], sk[600] = "", ck[600] = "";
    if (s_yaml_quote(uri, ep, sizeof(ep)) != 0)
        return cli_usage_error(cmd, "--connect expects an endpoint such as %s", CLI_DEFAULT_ENDPOINT);
    if (g->curve_secret && !g->server_key) {
        if (strcmp(g->curve_secret_from, "--curve-secret") == 0)
            return cli_usage_error(cmd, "--curve-secret needs --server-key (the worker's public key)");
    } else if (g->curve_secret && s_yaml_quote(g->curve_secret, ck, sizeof(ck)) != 0) {
        return cli_usage_error(cmd, "%s is not a usable file name", g->curve_secret_from);
    }
    if (g->server_key && s_yaml_quote(g->server_key, sk, sizeof(sk)) != 0)
        return cli_usage_error(cmd, "%s is not a usable key or file name", g->server_key_from);
    /* A status page should notice a restarted worker soon: cool-downs in step with the polls. */
    int cool = interval_ms;
    int max_cool = 4 * interval_ms > 1000 ? 4 * interval_ms : 1000;
    if (max_cool > 30000) max_cool = cool > 30000 ? cool : 30000;
    char yaml[2400];
    snprintf(yaml, sizeof(yaml),
             "router: {breaker_failures: 2, breaker_cooldown_ms: %d, breaker_max_cooldown_ms: %d}\n"
             "backends:\n"
             "  worker:\n"
             "    type: remote\n"
             "    endpoint: %s\n"
             "    timeout_ms: %d\n"
             "%s%s%s%s%s%s",
             cool, max_cool, ep, g->timeout_ms, sk[0] ? "    server_key: " : "", sk, sk[0] ? "\n" : "",
             ck[0] && sk[0] ? "    client_key: " : "", ck[0] && sk[0] ? ck : "", ck[0] && sk[0] ? "\n" : "");
    char err[1024];
    *r = titan_router_new_from_string(yaml, "serve --connect", NULL, err, sizeof(err));
    if (!*r) {
        int e = errno;
        fprintf(stderr, "titan serve: %s\n", err);
        return e == ENOMEM ? CLI_EXIT_REMOTE : CLI_EXIT_USAGE;
    }
    return CLI_EXIT_OK;
}

static volatile sig_atomic_t s_signal; /* the first SIGINT or SIGTERM */
static sem_t s_stop_sem;               /* posted by it */

/* Asks the main thread to stop; a second signal (a poll still waiting for its timeout) stops at once. */
static void s_on_signal(int sig)
{
    if (s_signal) _exit(1);
    s_signal = sig;
    sem_post(&s_stop_sem);
}

static void s_serve_destroy(s_serve *s)
{
    for (size_t i = 0; s->b && i < s->ninit; i++) {
        json_decref(s->b[i].gpu_info);
        free(s->b[i].ring);
    }
    free(s->b);
    free(s->order);
    titan_router_destroy(&s->router);
}

/* Fills s's backends from the router. Returns 0 or -ENOMEM. */
static int s_serve_init(s_serve *s)
{
    s->n = titan_router_backend_count(s->router);
    s->b = calloc(s->n, sizeof(*s->b));
    s->order = calloc(s->n, sizeof(*s->order));
    if (!s->b || !s->order) return -ENOMEM;
    size_t cap = (size_t)s->history_s * 1000 / (size_t)s->interval_ms + 1;
    if (cap > S_MAX_SAMPLES) cap = S_MAX_SAMPLES;
    for (size_t i = 0; i < s->n; i++) {
        s_backend *b = &s->b[i];
        titan_backend_status st;
        b->srv = s;
        b->index = i;
        s->ninit++;
        b->ring = calloc(cap, sizeof(*b->ring));
        b->cap = cap;
        if (!b->ring) return -ENOMEM;
        if (titan_router_backend_status(s->router, i, &st) != 0) return -EINVAL;
        snprintf(b->name, sizeof(b->name), "%s", st.name);
        b->timeout_ms = st.timeout_ms;
        b->priority = st.priority;
        /* insertion sort by priority; equal priorities keep the file's order */
        size_t k = i;
        while (k > 0 && s->b[s->order[k - 1]].priority > st.priority) {
            s->order[k] = s->order[k - 1];
            k--;
        }
        s->order[k] = i;
    }
    return 0;
}

int cli_cmd_serve(cli_globals *g, int argc, char **argv)
{
    const char *cmd = "serve";
    const char *listen_arg = S_DEFAULT_LISTEN, *connect = NULL, *v = NULL;
    uint64_t interval = S_DEFAULT_INTERVAL_MS, history = S_DEFAULT_HISTORY_S;
    const char *env_backends = getenv("TITAN_BACKENDS");
    /* --backends from the command line conflicts with --connect; $TITAN_BACKENDS yields to it */
    bool backends_from_env = g->backends && g->backends == env_backends;
    for (int i = 0; i < argc; i++) {
        int r = cli_global_option(cmd, g, argc, argv, &i);
        if (r < 0) return CLI_EXIT_USAGE;
        if (r > 0) {
            if (g->backends != env_backends) backends_from_env = false;
            continue;
        }
        if ((r = cli_match_option(cmd, argc, argv, &i, "--listen", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            listen_arg = v;
        } else if ((r = cli_match_option(cmd, argc, argv, &i, "--connect", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (!*v)
                return cli_usage_error(cmd, "--connect needs an endpoint such as %s", CLI_DEFAULT_ENDPOINT);
            connect = v;
        } else if ((r = cli_match_option(cmd, argc, argv, &i, "--interval", &v)) != 0) {
            if (r < 0 || cli_parse_u64(cmd, "--interval", v, 100, 3600000, &interval) < 0)
                return CLI_EXIT_USAGE;
        } else if ((r = cli_match_option(cmd, argc, argv, &i, "--history", &v)) != 0) {
            if (r < 0 || cli_parse_u64(cmd, "--history", v, 1, 86400, &history) < 0) return CLI_EXIT_USAGE;
        } else {
            return cli_unknown_option(cmd, argv[i]);
        }
    }
    if (connect && g->backends && !backends_from_env)
        return cli_usage_error(cmd, "--connect watches one worker and --backends a file of them: give one");
    s_listen l;
    if (s_parse_listen(listen_arg, &l) != 0)
        return cli_usage_error(cmd,
                               "--listen expects HOST:PORT such as %s or [::1]:8080 (port 0 picks a free "
                               "port), not \"%s\"",
                               S_DEFAULT_LISTEN, listen_arg);
    if (history * 1000 / interval + 1 > S_MAX_SAMPLES)
        return cli_usage_error(
            cmd,
            "--history %llu at --interval %llu keeps %llu samples a backend, more than %d; "
            "raise --interval or lower --history",
            (unsigned long long)history, (unsigned long long)interval,
            (unsigned long long)(history * 1000 / interval + 1), S_MAX_SAMPLES);

    /* A handler, not sigwait: OpenBLAS starts its threads when the program loads, with these signals
     * unblocked, so a signal for the process may land in any of them. */
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigemptyset(&sa.sa_mask);
    sem_init(&s_stop_sem, 0, 0);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    s_serve s = {.interval_ms = (int)interval, .history_s = (int)history};
    int rc = connect || !g->backends
                 ? s_connect_router(g, connect ? connect : g->endpoint, s.interval_ms, &s.router)
                 : cli_router_new(g, &s.router);
    if (rc != CLI_EXIT_OK) return rc;

    /* The threads started here (HTTP, pollers) inherit a mask without SIGINT and SIGTERM, so the
     * handler does not interrupt their calls. */
    sigset_t sigs, old;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, &old);

    struct MHD_Daemon *d = NULL;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s.wake, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&s.lock, NULL);
    int fd = -1, port = 0;
    if (s_serve_init(&s) != 0) {
        fprintf(stderr, "titan serve: out of memory\n");
        rc = CLI_EXIT_REMOTE;
        goto out;
    }
    fd = s_listen_socket(&l, &port);
    if (fd < 0) {
        fprintf(stderr, "titan serve: cannot listen on %s: %s%s\n", listen_arg, strerror(-fd),
                fd == -EADDRINUSE ? " (another titan serve may be running; pick another port, or port 0)"
                                  : "");
        rc = CLI_EXIT_REMOTE;
        goto out;
    }
    if (!l.loopback)
        fprintf(stderr,
                "titan serve: warning: listening on %s, beyond loopback; the API and the status page have "
                "no authentication, so publish them through a reverse proxy that controls access\n",
                listen_arg);
    d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | (l.v6 ? MHD_USE_IPv6 : 0), 0,
                         NULL, NULL, s_handle, &s, MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_THREAD_POOL_SIZE,
                         (unsigned)S_HTTP_THREADS, MHD_OPTION_CONNECTION_LIMIT, (unsigned)S_HTTP_CONNECTIONS,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)S_HTTP_IDLE_TIMEOUT_S, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "titan serve: cannot start the HTTP server on %s\n", listen_arg);
        close(fd);
        rc = CLI_EXIT_REMOTE;
        goto out;
    }
    for (size_t i = 0; i < s.n; i++) {
        int e = pthread_create(&s.b[i].thread, NULL, s_poller, &s.b[i]);
        if (e) {
            fprintf(stderr, "titan serve: cannot start a poller thread: %s\n", strerror(e));
            rc = CLI_EXIT_REMOTE;
            goto out;
        }
        s.b[i].thread_started = true;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    printf("titan serve: listening on http://%s%s%s:%d\n", l.v6 ? "[" : "", l.host, l.v6 ? "]" : "", port);
    fflush(stdout);
    fprintf(stderr, "titan serve: watching %zu backend%s every %d ms\n", s.n, s.n == 1 ? "" : "s",
            s.interval_ms);

    while (sem_wait(&s_stop_sem) != 0 && errno == EINTR) {
    }
    fprintf(stderr, "titan serve: stopping (%s)\n", s_signal == SIGINT ? "SIGINT" : "SIGTERM");
    rc = CLI_EXIT_OK;
out:
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (d) MHD_stop_daemon(d); /* the handlers have returned; MHD closes the listening socket */
    pthread_mutex_lock(&s.lock);
    s.stop = true;
    pthread_cond_broadcast(&s.wake);
    pthread_mutex_unlock(&s.lock);
    for (size_t i = 0; s.b && i < s.n; i++)
        if (s.b[i].thread_started) pthread_join(s.b[i].thread, NULL);
    s_serve_destroy(&s);
    pthread_cond_destroy(&s.wake);
    pthread_mutex_destroy(&s.lock);
    return rc;
}
