/* http.c - /healthz, /readyz and /metrics over HTTP/1.1, served by libmicrohttpd's own polling
 * thread, which reads the worker's state only through titan_metrics; and the connection side of the
 * /v1 API: bodies, limits, who may call, and connections suspended while the bridge (http_bridge.c)
 * has their request with the server. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include "clock.h"
#include "http.h"
#include "http_auth.h"
#include "http_bridge.h"
#include "log.h"
#include "server.h"

/* Slowloris (issue 17): libmicrohttpd's timeout counts idleness, and every byte resets it, so a
 * client that sends one header line every few seconds holds its connection for ever; a few dozen
 * of them used to fill every slot, and a liveness probe then restarted a healthy worker. Three
 * rules keep the slots turning over, all kept in this file (docs/OPERATIONS.md, "HTTP health and
 * metrics", states them):
 * - a header deadline: a connection must have sent a whole request header within
 *   HTTP_HEADER_DEADLINE_MS of connecting, however steadily it trickles, or it is closed. Each
 *   connection carries one request: libmicrohttpd 0.9.75 closes it after an answer queued in the
 *   first call of the access handler, as ours all are. Were one kept alive, the deadline of its
 *   next header would run from the previous answer (s_completed);
 * - at most HTTP_PER_ADDRESS connections per client address (an IPv6 /64 counts as one address)
 *   and HTTP_CONNECTIONS in all. A connection over either limit does not wait and is not refused:
 *   it closes the one connection of that address (or of all) that has waited longest for its
 *   header. A probe sends its whole request at once, so it stops being a candidate within a
 *   millisecond of connecting, and an attacker from its own address only pushes out its own
 *   half-sent requests;
 * - a body deadline: a /v1 request body must be complete within HTTP_BODY_DEADLINE_MS of its header,
 *   however steadily it trickles, or the connection is closed; until then the connection counts as
 *   waiting, and the limits below may close it like one waiting for its header;
 * - HTTP_TIMEOUT_S of idleness still closes a connection stalled anywhere else.
 * "Closed" is shutdown(2) of the socket: libmicrohttpd's poll() then sees the end of the stream
 * and frees the connection the usual way. libmicrohttpd calls a connection's CLOSED notification
 * before it closes the descriptor, and every shutdown here happens under h->lock while the
 * connection's slot (which that notification empties under the same lock) is still in use, so a
 * descriptor is never shut after its number was reused. Admission runs in libmicrohttpd's thread
 * (NOTIFY_CONNECTION); only the deadline needs a clock, a small watchdog thread. */
#define HTTP_HEADER_DEADLINE_MS 10000 /* documented: "10 s" */
#define HTTP_PER_ADDRESS 16           /* documented */
#define HTTP_CONNECTIONS 128          /* documented; 32 KiB each at most (HTTP_MEMORY) */
#define HTTP_TIMEOUT_S 10             /* an idle or stalled connection is closed after this */
#define HTTP_MEMORY (32 * 1024)       /* per connection: request headers; nothing else is read */
#define HTTP_SWEEP_MS 250             /* the watchdog's period: deadlines hold to within this */
#define HTTP_BODY_DEADLINE_MS 30000   /* documented: "30 s" */
/* All /v1 bodies held at once, from their header until their answer is sent: this many of the largest
 * (--http-max-body-kb), so that 128 connections cannot hold 128 of them; documented. */
#define HTTP_BODIES_HELD 8
/* A /v1 request whose reply has not come this long after it went to the server is answered 504. */
#define HTTP_REPLY_TIMEOUT_MS 600000  /* documented: "10 minutes" */
/* libmicrohttpd's own limits refuse rather than evict, so they sit above ours, as a backstop: a
 * connection shut here still counts for it until its next turn has reaped it. */
#define HTTP_CLOSING_SLACK 16
#define HTTP_SLOTS (HTTP_CONNECTIONS + HTTP_CLOSING_SLACK)

/* Where a connection's current request stands. */
typedef enum {
    S_HEADER, /* waiting for its header: the header deadline applies */
    S_BODY,   /* header in, waiting for its body: the body deadline applies */
    S_DONE,   /* the request is in: no deadline (answered, or with the server) */
} s_phase;

/* One accepted connection, from NOTIFY_STARTED to NOTIFY_CLOSED; guarded by titan_http.lock. */
struct s_conn {
    bool used;
    s_phase phase;
    bool closing;   /* shut by us; counts for no limit any more */
    int fd;
    sa_family_t family;
    unsigned char peer[16]; /* the address (IPv4: 4 bytes; IPv6: its /64), the rest zero */
    int64_t since_ms;       /* when it began waiting for the current request header */
    int64_t body_since_ms;  /* S_BODY: when its header was complete */
    uint64_t seq;           /* the order in which it began waiting: the oldest goes first */
};

struct titan_http {
    struct MHD_Daemon *d;
    titan_metrics *m; /* borrowed */
    titan_http_opts opts;
    titan_http_tokens *tokens;            /* --http-token; NULL: none */
    _Atomic(titan_http_bridge *) bridge;  /* NULL until attached; closed (not freed) once detached */
    uint64_t bodies_max;                  /* HTTP_BODIES_HELD x the largest body */
    _Atomic uint64_t bodies_held;         /* bytes of /v1 bodies reserved now */
    char url[80];
    bool public;
    char start_error[256]; /* libmicrohttpd's message while starting */
    atomic_bool starting;
    pthread_mutex_t lock; /* the slots, seq and stopping */
    pthread_cond_t wake;  /* wakes the watchdog to stop */
    bool lock_ready, watchdog_running, stopping;
    pthread_t watchdog;
    uint64_t seq;
    struct s_conn slots[HTTP_SLOTS];
};

static int s_parse_port(const char *s, unsigned *port)
{
    size_t n = strlen(s);
    if (n == 0 || n > 5 || strspn(s, "0123456789") != n) return -EINVAL;
    unsigned long v = strtoul(s, NULL, 10);
    if (v > 65535) return -ERANGE;
    *port = (unsigned)v;
    return 0;
}

int titan_http_parse_listen(const char *spec, struct sockaddr_storage *addr, char *err, size_t errcap)
{
    struct sockaddr_storage a;
    memset(&a, 0, sizeof(a));
    char host[64];
    const char *port_txt;
    const char *usage =
        "expected PORT (9100, on 127.0.0.1), IPV4:PORT (0.0.0.0:9100) or [IPV6]:PORT ([::1]:9100); "
        "port 0 picks a free port";
    unsigned port;
    if (!spec || !*spec) {
        snprintf(err, errcap, "--http needs a value: %s", usage);
        return -EINVAL;
    }
    if (strstr(spec, "://")) {
        snprintf(err, errcap, "--http: '%s' is not a URL but [ADDR:]PORT: %s", spec, usage);
        return -EINVAL;
    }
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        size_t hl = close ? (size_t)(close - spec - 1) : 0;
        if (!close || hl == 0 || hl >= sizeof(host) || close[1] != ':') {
            snprintf(err, errcap, "--http: '%s' is not [IPV6]:PORT: %s", spec, usage);
            return -EINVAL;
        }
        memcpy(host, spec + 1, hl);
        host[hl] = '\0';
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a;
        s6->sin6_family = AF_INET6;
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1) {
            snprintf(err, errcap, "--http: '%s' is not an IPv6 address (names are not resolved): %s", host,
                     usage);
            return -EINVAL;
        }
        port_txt = close + 2;
    } else if (strchr(spec, ':')) {
        const char *colon = strchr(spec, ':');
        if (strchr(colon + 1, ':')) {
            snprintf(err, errcap, "--http: '%s': put an IPv6 address in brackets, as in [::1]:9100", spec);
            return -EINVAL;
        }
        size_t hl = (size_t)(colon - spec);
        if (hl == 0 || hl >= sizeof(host)) {
            snprintf(err, errcap, "--http: '%s' is not IPV4:PORT: %s", spec, usage);
            return -EINVAL;
        }
        memcpy(host, spec, hl);
        host[hl] = '\0';
        struct sockaddr_in *s4 = (struct sockaddr_in *)&a;
        s4->sin_family = AF_INET;
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1) {
            snprintf(err, errcap,
                     "--http: '%s' is not an IPv4 address (names are not resolved; use 127.0.0.1 for "
                     "loopback): %s",
                     host, usage);
            return -EINVAL;
        }
        port_txt = colon + 1;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&a;
        s4->sin_family = AF_INET;
        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        port_txt = spec;
    }
    int rc = s_parse_port(port_txt, &port);
    if (rc) {
        snprintf(err, errcap, "--http: '%s' %s: %s", port_txt,
                 rc == -ERANGE ? "is not a port (0 to 65535)" : "is not a port number", usage);
        return -EINVAL;
    }
    if (a.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&a)->sin6_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in *)&a)->sin_port = htons((uint16_t)port);
    if (addr) *addr = a;
    return 0;
}

/* Writes "127.0.0.1:9100" or "[::1]:9100"; returns the port. */
static unsigned s_addr_text(const struct sockaddr_storage *a, char *buf, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port;
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)a;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        port = ntohs(s6->sin6_port);
        snprintf(buf, cap, "[%s]:%u", ip, port);
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)a;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        port = ntohs(s4->sin_port);
        snprintf(buf, cap, "%s:%u", ip, port);
    }
    return port;
}

/* libmicrohttpd's own messages: errors while starting go to the caller, the rest to the log. */
static void s_mhd_log(void *cls, const char *fmt, va_list ap)
{
    titan_http *h = cls;
    char msg[256];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    if (h->starting) {
        snprintf(h->start_error, sizeof(h->start_error), "%s", msg);
    } else {
        /* Clients cause most of these (one that left before its answer was sent): a few lines a second. Only
         * libmicrohttpd's thread logs here once it runs. */
        static titan_log_limit limit = {.per_sec = 5};
        titan_log_limited(&limit, TITAN_LOG_WARN, "http: %s", msg);
    }
}

/* The key that the per-address limit counts by. An IPv6 client usually holds a whole /64, so that
 * is its address here; an IPv4 address mapped into IPv6 counts as the IPv4 address. */
static void s_peer_key(const struct sockaddr *sa, struct s_conn *c)
{
    memset(c->peer, 0, sizeof(c->peer));
    c->family = sa ? sa->sa_family : AF_UNSPEC;
    if (c->family == AF_INET) {
        memcpy(c->peer, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (c->family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            c->family = AF_INET;
            memcpy(c->peer, a6->s6_addr + 12, 4);
        } else {
            memcpy(c->peer, a6->s6_addr, 8);
        }
    }
}

static bool s_same_peer(const struct s_conn *a, const struct s_conn *b)
{
    return a->family == b->family && memcmp(a->peer, b->peer, sizeof(a->peer)) == 0;
}

/* Counts the connections that hold a slot and are not being closed: all of them, or those of
 * peer's address. Called with h->lock held. */
static unsigned s_count(const titan_http *h, const struct s_conn *peer)
{
    unsigned n = 0;
    for (size_t i = 0; i < HTTP_SLOTS; i++) {
        const struct s_conn *c = &h->slots[i];
        if (!c->used || c->closing) continue;
        if (peer && !s_same_peer(c, peer)) continue;
        n++;
    }
    return n;
}

/* The connection (of peer's address, or of any) that has waited longest for its request (its
 * header, or its body), or NULL when none waits. Called with h->lock held. */
static struct s_conn *s_oldest_waiting(titan_http *h, const struct s_conn *peer)
{
    struct s_conn *best = NULL;
    for (size_t i = 0; i < HTTP_SLOTS; i++) {
        struct s_conn *c = &h->slots[i];
        if (!c->used || c->closing || c->phase == S_DONE) continue;
        if (peer && !s_same_peer(c, peer)) continue;
        if (!best || c->seq < best->seq) best = c;
    }
    return best;
}

/* Ends a connection from outside libmicrohttpd's request handling: its poll() sees the stream end
 * and it closes the connection itself. Called with h->lock held, the slot in use (see the top). */
static void s_shut(struct s_conn *c)
{
    if (!c || c->closing) return;
    c->closing = true;
    shutdown(c->fd, SHUT_RDWR);
}

/* Gives a new connection a slot, then applies the per-address and global limits by closing the
 * oldest waiting connection over each (possibly this one, when all the others are answering). */
static void s_admit(titan_http *h, struct MHD_Connection *conn, void **socket_context)
{
    const union MHD_ConnectionInfo *fdi = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    const union MHD_ConnectionInfo *ai = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!fdi) return;
    struct s_conn *c = NULL;
    for (size_t i = 0; i < HTTP_SLOTS && !c; i++)
        if (!h->slots[i].used) c = &h->slots[i];
    if (!c) {
        /* Cannot happen while libmicrohttpd's own limit is HTTP_SLOTS; refuse rather than track
         * a connection that no deadline would cover. */
        shutdown(fdi->connect_fd, SHUT_RDWR);
        return;
    }
    memset(c, 0, sizeof(*c));
    c->used = true;
    c->fd = fdi->connect_fd;
    s_peer_key(ai ? ai->client_addr : NULL, c);
    c->since_ms = titan_clock_mono_ms64();
    c->seq = ++h->seq;
    *socket_context = c;
    if (s_count(h, c) > HTTP_PER_ADDRESS) s_shut(s_oldest_waiting(h, c));
    if (s_count(h, NULL) > HTTP_CONNECTIONS) s_shut(s_oldest_waiting(h, NULL));
}

static void s_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                     enum MHD_ConnectionNotificationCode code)
{
    titan_http *h = cls;
    pthread_mutex_lock(&h->lock);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        s_admit(h, conn, socket_context);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        struct s_conn *c = *socket_context;
        c->used = false;
        *socket_context = NULL;
    }
    pthread_mutex_unlock(&h->lock);
}

/* Moves the connection's request to phase: its body awaited (with the body deadline from now), all
 * in, or, after an answer on a kept-alive connection, waiting for the next header with a new deadline. */
static void s_set_phase(titan_http *h, struct MHD_Connection *conn, s_phase phase)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    pthread_mutex_lock(&h->lock);
    struct s_conn *c = ci ? ci->socket_context : NULL;
    if (c && c->used && c->phase != phase) {
        c->phase = phase;
        if (phase == S_HEADER) {
            c->since_ms = titan_clock_mono_ms64();
            c->seq = ++h->seq;
        } else if (phase == S_BODY) {
            c->body_since_ms = titan_clock_mono_ms64();
        }
    }
    pthread_mutex_unlock(&h->lock);
}

struct s_req;
static void s_req_free(titan_http *h, struct s_req *r);

static void s_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                        enum MHD_RequestTerminationCode toe)
{
    (void)toe;
    /* A /v1 request's state goes with it: it is never with the bridge now (a suspended connection is
     * not completed before the bridge resumes it). */
    if (con_cls && *con_cls) {
        s_req_free(cls, *con_cls);
        *con_cls = NULL;
    }
    s_set_phase(cls, conn, S_HEADER);
}

/* The deadlines: every HTTP_SWEEP_MS, closes each connection that has waited longer than
 * HTTP_HEADER_DEADLINE_MS for its request header, or HTTP_BODY_DEADLINE_MS since its header for its
 * body. The access handler cannot: libmicrohttpd calls it only when bytes come. */
static void *s_watchdog(void *arg)
{
    titan_http *h = arg;
    pthread_mutex_lock(&h->lock);
    while (!h->stopping) {
        struct timespec until = titan_clock_mono_in((int64_t)HTTP_SWEEP_MS * 1000000);
        pthread_cond_timedwait(&h->wake, &h->lock, &until);
        int64_t now = titan_clock_mono_ms64();
        for (size_t i = 0; i < HTTP_SLOTS && !h->stopping; i++) {
            struct s_conn *c = &h->slots[i];
            if (!c->used) continue;
            if ((c->phase == S_HEADER && now - c->since_ms >= HTTP_HEADER_DEADLINE_MS) ||
                (c->phase == S_BODY && now - c->body_since_ms >= HTTP_BODY_DEADLINE_MS))
                s_shut(c);
        }
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

/* What an answer carries besides its type and body. */
typedef struct {
    const char *allow;  /* a 405's Allow (the health paths': "GET, HEAD") */
    int retry_after_s;  /* > 0: Retry-After */
    bool close;         /* Connection: close (a /v1 answer: one request per connection) */
    bool bearer;        /* a 401's WWW-Authenticate */
} s_extra;

static enum MHD_Result s_respond(struct MHD_Connection *conn, unsigned status, const char *ctype, char *body,
                                 size_t len, const s_extra *x)
{
    /* body is malloc'd; the response frees it once sent */
    struct MHD_Response *r = MHD_create_response_from_buffer_with_free_callback(len, body, free);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (x && x->allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, x->allow);
    else if (status == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    if (x && x->retry_after_s > 0) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", x->retry_after_s);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    if (x && x->close) MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    if (x && x->bearer) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"titan\"");
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result s_text(struct MHD_Connection *conn, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static enum MHD_Result s_text(struct MHD_Connection *conn, unsigned status, const char *fmt, ...)
{
    char *body = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&body, fmt, ap);
    va_end(ap);
    if (n < 0) return MHD_NO;
    return s_respond(conn, status, "text/plain; charset=utf-8", body, (size_t)n, NULL);
}

/* ---- the /v1 routes: the connection's side (translations: http_api.c; the server: http_bridge.c) ---- */

#define S_JSON "application/json"
static const char s_oom_json[] =
    "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"code\":\"internal\"}}\n";

/* A /v1 request, from its header until its connection completes. */
struct s_req {
    titan_http_work work; /* work.arg: the connection */
    char *body;
    size_t len, cap; /* bytes in, and its Content-Length */
    uint64_t held;   /* its bytes of h->bodies_held */
    bool submitted;  /* with the bridge, or answered by it */
};

static void s_req_free(titan_http *h, struct s_req *r)
{
    if (r->held) atomic_fetch_sub(&h->bodies_held, r->held);
    free(r->body);
    free(r->work.answer);
    free(r);
}

/* The bridge's answer is in: libmicrohttpd takes the connection up again and calls s_handle. */
static void s_work_done(titan_http_work *w)
{
    MHD_resume_connection(w->arg);
}

static enum MHD_Result s_json(struct MHD_Connection *conn, unsigned status, char *body, size_t len,
                              const s_extra *x)
{
    if (!body) {
        body = strdup(s_oom_json);
        if (!body) return MHD_NO;
        len = strlen(body);
        status = MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
    return s_respond(conn, status, S_JSON, body, len, x);
}

static enum MHD_Result s_v1_error(struct MHD_Connection *conn, const titan_http_error *e, const char *allow)
{
    size_t len = 0;
    char *body = titan_http_error_body(e, &len);
    s_extra x = {.allow = allow, .retry_after_s = e->retry_after_s, .close = true, .bearer = e->status == 401};
    return s_json(conn, e->status, body, len, &x);
}

static enum MHD_Result s_v1_fail(struct MHD_Connection *conn, const char *code, const char *allow, const char *fmt,
                                 ...) __attribute__((format(printf, 4, 5)));
static enum MHD_Result s_v1_fail(struct MHD_Connection *conn, const char *code, const char *allow, const char *fmt,
                                 ...)
{
    titan_http_error e;
    char msg[sizeof(e.message)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    titan_http_fail(&e, code, "%s", msg);
    return s_v1_error(conn, &e, allow);
}

static const struct {
    const char *path;
    titan_http_route route;
    const char *allow; /* the methods it takes */
} s_routes[] = {
    {"/v1/embeddings", TITAN_HTTP_EMBEDDINGS, "POST"},
    {"/v1/rerank", TITAN_HTTP_RERANK, "POST"},
    {"/v1/models", TITAN_HTTP_MODELS, "GET, HEAD"},
};

/* Reserves n bytes of the bodies' budget; false when it is spent. */
static bool s_hold(titan_http *h, uint64_t n)
{
    uint64_t cur = atomic_load(&h->bodies_held);
    do {
        if (cur > h->bodies_max || n > h->bodies_max - cur) return false;
    } while (!atomic_compare_exchange_weak(&h->bodies_held, &cur, cur + n));
    return true;
}

/* True for "application/json", with parameters, a charset only of UTF-8. */
static bool s_json_type(const char *ct)
{
    if (!ct) return false;
    while (*ct == ' ' || *ct == '\t') ct++;
    size_t n = strlen("application/json");
    if (strncasecmp(ct, "application/json", n) != 0) return false;
    const char *p = ct + n;
    while (*p == ' ' || *p == '\t') p++;
    if (!*p) return true;
    if (*p != ';') return false;
    const char *cs = strcasestr(p, "charset=");
    if (!cs) return true;
    cs += strlen("charset=");
    if (*cs == '"') cs++;
    return strncasecmp(cs, "utf-8", 5) == 0 && (cs[5] == '\0' || cs[5] == '"' || cs[5] == ';' || cs[5] == ' ');
}

/* Hands r to the bridge: the connection sleeps (libmicrohttpd's thread goes on with the others) until the answer
 * is in. More than --http-max-inflight at once are answered 429. */
static enum MHD_Result s_v1_submit(titan_http *h, struct MHD_Connection *conn, struct s_req *r)
{
    titan_http_bridge *b = atomic_load(&h->bridge);
    int rc = b ? titan_http_bridge_reserve(b) : -ESHUTDOWN;
    if (rc == -EBUSY)
        return s_v1_fail(conn, "busy", NULL,
                         "worker busy: %d /v1 requests are in hand, its limit (--http-max-inflight); retry later",
                         h->opts.max_inflight);
    if (rc)
        return s_v1_fail(conn, "shutting_down", NULL,
                         "the worker is shutting down; retry on another worker or after its restart");
    r->work.body = r->body;
    r->work.len = r->len;
    r->submitted = true;
    /* Suspended first, then handed over: the bridge may resume it as soon as it has it. */
    MHD_suspend_connection(conn);
    titan_http_bridge_submit(b, &r->work);
    return MHD_YES;
}

/* A /v1 request whose header is complete: who may call, the route, readiness and the body's limits are checked
 * before any of the body is read; then a body is awaited (POST) or the request goes (GET). */
static enum MHD_Result s_v1_start(titan_http *h, struct MHD_Connection *conn, const char *url, const char *method,
                                  void **con_cls)
{
    const union MHD_ConnectionInfo *ai = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    bool loopback = titan_http_peer_is_loopback(ai ? ai->client_addr : NULL);
    bool token_ok = false;
    if (h->tokens) {
        const char *tok;
        size_t tlen;
        const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        token_ok = titan_http_bearer(auth, &tok, &tlen) == 0 && titan_http_tokens_check(h->tokens, tok, tlen);
    }
    switch (titan_http_access_rule(loopback, h->tokens != NULL, token_ok, h->opts.insecure)) {
    case TITAN_HTTP_ACCESS_UNAUTHORIZED:
        return s_v1_fail(conn, "unauthorized", NULL,
                         "send 'Authorization: Bearer TOKEN' with a token of this worker's --http-token file");
    case TITAN_HTTP_ACCESS_FORBIDDEN:
        return s_v1_fail(conn, "forbidden", NULL,
                         "this worker serves /v1 to loopback clients only: start it with --http-token FILE (bearer "
                         "tokens) to serve other machines, or --insecure-http on a trusted network");
    case TITAN_HTTP_ACCESS_OK:
        break;
    }
    size_t ri = 0;
    while (ri < sizeof(s_routes) / sizeof(s_routes[0]) && strcmp(url, s_routes[ri].path) != 0) ri++;
    if (ri == sizeof(s_routes) / sizeof(s_routes[0]))
        return s_v1_fail(conn, "not_found", NULL,
                         "no route %.64s: this worker serves POST /v1/embeddings, POST /v1/rerank and GET /v1/models",
                         url);
    titan_http_route route = s_routes[ri].route;
    bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    if (route == TITAN_HTTP_MODELS ? !get : !post)
        return s_v1_fail(conn, "method_not_allowed", s_routes[ri].allow, "method %.16s is not allowed on %s: use %s",
                         method, url, s_routes[ri].allow);
    char why[160];
    if (!atomic_load(&h->bridge)) {
        return s_v1_fail(conn, "not_ready", NULL, "the worker is starting: the backend and the sockets are not up yet");
    } else if (!titan_metrics_ready(h->m, why, sizeof(why))) {
        return s_v1_fail(conn, strncmp(why, "draining", 8) == 0 ? "shutting_down" : "not_ready", NULL, "%s", why);
    }
    struct s_req *r;
    if (route == TITAN_HTTP_MODELS) {
        r = calloc(1, sizeof(*r));
        if (!r) return s_json(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, 0, NULL);
    } else {
        if (!s_json_type(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE)))
            return s_v1_fail(conn, "unsupported_media_type", NULL, "send the body as JSON: Content-Type: %s", S_JSON);
        if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))
            return s_v1_fail(conn, "length_required", NULL,
                             "send the body with a Content-Length (no Transfer-Encoding: chunked bodies are not taken)");
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (!cl) return s_v1_fail(conn, "length_required", NULL, "send the body with a Content-Length");
        char *end;
        errno = 0;
        unsigned long long len = strtoull(cl, &end, 10);
        if (errno || end == cl || *end || cl[0] == '-' || cl[0] == '+')
            return s_v1_fail(conn, "bad_request", NULL, "Content-Length '%.32s' is not a number of bytes", cl);
        if (len > h->opts.max_body_bytes)
            return s_v1_fail(conn, "too_large", NULL,
                             "the body is %llu bytes, over this worker's limit of %llu (--http-max-body-kb); split the "
                             "request",
                             len, (unsigned long long)h->opts.max_body_bytes);
        if (len == 0) return s_v1_fail(conn, "bad_request", NULL, "the body is empty: send a JSON object");
        if (!s_hold(h, len))
            return s_v1_fail(conn, "busy", NULL,
                             "worker busy: the HTTP request bodies in hand take %llu of their %llu bytes "
                             "(%d x --http-max-body-kb); retry later",
                             (unsigned long long)atomic_load(&h->bodies_held), (unsigned long long)h->bodies_max,
                             HTTP_BODIES_HELD);
        r = calloc(1, sizeof(*r));
        char *body = r ? malloc((size_t)len) : NULL;
        if (!body) {
            free(r);
            atomic_fetch_sub(&h->bodies_held, len);
            return s_json(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, 0, NULL);
        }
        r->body = body;
        r->cap = (size_t)len;
        r->held = len;
    }
    r->work.route = route;
    r->work.done = s_work_done;
    r->work.arg = conn;
    *con_cls = r;
    if (route != TITAN_HTTP_MODELS) {
        s_set_phase(h, conn, S_BODY);
        return MHD_YES; /* the body comes in the next calls (after "100 Continue" when the client asks for it) */
    }
    return s_v1_submit(h, conn, r);
}

/* The next calls of a /v1 request: its body, its end, and its answer once the bridge has resumed it. */
static enum MHD_Result s_v1_more(titan_http *h, struct MHD_Connection *conn, struct s_req *r, const char *data,
                                 size_t *size)
{
    if (r->submitted) {
        char *body = r->work.answer;
        r->work.answer = NULL;
        s_extra x = {.retry_after_s = r->work.retry_after_s, .close = true};
        return s_json(conn, r->work.status ? r->work.status : MHD_HTTP_INTERNAL_SERVER_ERROR, body,
                      r->work.answer_len, &x);
    }
    if (*size) {
        /* libmicrohttpd never passes more than the Content-Length; kept to it all the same */
        size_t n = *size < r->cap - r->len ? *size : r->cap - r->len;
        memcpy(r->body + r->len, data, n);
        r->len += n;
        *size = 0;
        return MHD_YES;
    }
    s_set_phase(h, conn, S_DONE);
    return s_v1_submit(h, conn, r);
}

static enum MHD_Result s_handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                const char *version, const char *upload_data, size_t *upload_data_size,
                                void **con_cls)
{
    titan_http *h = cls;
    (void)version;
    if (*con_cls) return s_v1_more(h, conn, *con_cls, upload_data, upload_data_size);
    s_set_phase(h, conn, S_DONE); /* the header is complete: no header deadline any more */
    if (strcmp(url, "/v1") == 0 || strncmp(url, "/v1/", 4) == 0) return s_v1_start(h, conn, url, method, con_cls);
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return s_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method %.16s not allowed: use GET\n", method);
    if (strcmp(url, "/healthz") == 0) return s_text(conn, MHD_HTTP_OK, "ok\n");
    if (strcmp(url, "/readyz") == 0) {
        char why[160];
        if (titan_metrics_ready(h->m, why, sizeof(why)))
            return why[0] ? s_text(conn, MHD_HTTP_OK, "ok; %s\n", why) : s_text(conn, MHD_HTTP_OK, "ok\n");
        return s_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "%s\n", why);
    }
    if (strcmp(url, "/metrics") == 0) {
        char *text;
        size_t len;
        if (titan_metrics_render(h->m, &text, &len) != 0)
            return s_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        return s_respond(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL);
    }
    return s_text(conn, MHD_HTTP_NOT_FOUND,
                  "not found: this worker serves /healthz, /readyz, /metrics and the API under /v1 "
                  "(/v1/embeddings, /v1/rerank, /v1/models)\n");
}

titan_http *titan_http_start(const char *spec, const titan_http_opts *opts, titan_metrics *m, char *err,
                             size_t errcap)
{
    struct sockaddr_storage addr;
    if (titan_http_parse_listen(spec, &addr, err, errcap) != 0) return NULL;
    titan_http *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    h->m = m;
    h->opts = *opts;
    h->opts.token_file = NULL; /* the caller's; read here */
    h->bodies_max = opts->max_body_bytes * HTTP_BODIES_HELD;
    atomic_init(&h->bodies_held, 0);
    atomic_init(&h->bridge, NULL);
    if (opts->token_file && !(h->tokens = titan_http_tokens_open(opts->token_file, err, errcap))) {
        free(h);
        return NULL;
    }
    pthread_condattr_t ca;
    bool cond_ok = false;
    if (pthread_condattr_init(&ca) == 0) {
        cond_ok =
            pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 && pthread_cond_init(&h->wake, &ca) == 0;
        pthread_condattr_destroy(&ca);
    }
    if (!cond_ok || pthread_mutex_init(&h->lock, NULL) != 0) {
        snprintf(err, errcap, "cannot serve HTTP: cannot set up the header watchdog");
        if (cond_ok) pthread_cond_destroy(&h->wake);
        titan_http_tokens_destroy(&h->tokens);
        free(h);
        return NULL;
    }
    h->lock_ready = true;
    /* Suspend and resume: a /v1 connection sleeps while its request is with the server. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME;
    if (addr.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    char where[INET6_ADDRSTRLEN + 16];
    unsigned port = s_addr_text(&addr, where, sizeof(where));
    h->starting = true;
    /* The address is SOCK_ADDR's; the port argument only names it in libmicrohttpd's messages. */
    h->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, s_handle, h, MHD_OPTION_SOCK_ADDR,
                            (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_SLOTS,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                            (unsigned)(HTTP_PER_ADDRESS + HTTP_CLOSING_SLACK), MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)HTTP_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_MEMORY,
                            MHD_OPTION_NOTIFY_CONNECTION, s_notify, h, MHD_OPTION_NOTIFY_COMPLETED,
                            s_completed, h, MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, h, MHD_OPTION_END);
    h->starting = false;
    if (!h->d) {
        snprintf(err, errcap, "cannot serve HTTP on %s: %s", where,
                 h->start_error[0] ? h->start_error : "libmicrohttpd could not start");
        titan_http_stop(&h);
        return NULL;
    }
    int rc = pthread_create(&h->watchdog, NULL, s_watchdog, h);
    if (rc != 0) {
        snprintf(err, errcap, "cannot serve HTTP on %s: cannot start the header watchdog: %s", where,
                 strerror(rc));
        titan_http_stop(&h);
        return NULL;
    }
    h->watchdog_running = true;
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);
    if (!info || getsockname(info->listen_fd, (struct sockaddr *)&bound, &blen) != 0) bound = addr;
    s_addr_text(&bound, where, sizeof(where));
    snprintf(h->url, sizeof(h->url), "http://%s", where);
    if (bound.ss_family == AF_INET6)
        h->public = !IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)&bound)->sin6_addr);
    else
        h->public = (ntohl(((const struct sockaddr_in *)&bound)->sin_addr.s_addr) >> 24) != 127;
    return h;
}

int titan_http_attach(titan_http *h, void *zmq_ctx, char *err, size_t errcap)
{
    if (atomic_load(&h->bridge)) {
        snprintf(err, errcap, "the HTTP API is already attached");
        return -EALREADY;
    }
    titan_http_bridge *b =
        titan_http_bridge_new(zmq_ctx, TITAN_SERVER_INPROC, h->opts.max_inflight, HTTP_REPLY_TIMEOUT_MS, err, errcap);
    if (!b) return -ENOMEM;
    atomic_store(&h->bridge, b);
    return 0;
}

void titan_http_detach(titan_http *h)
{
    /* Closed, not freed: libmicrohttpd's thread may still look at it, and is answered 503 by it. */
    if (h) titan_http_bridge_close(atomic_load(&h->bridge));
}

const char *titan_http_url(const titan_http *h)
{
    return h->url;
}

bool titan_http_public(const titan_http *h)
{
    return h->public;
}

void titan_http_stop(titan_http **hp)
{
    if (!hp || !*hp) return;
    titan_http *h = *hp;
    /* Every suspended connection must be resumed before libmicrohttpd stops: closing the bridge answers them. */
    titan_http_detach(h);
    if (h->watchdog_running) {
        pthread_mutex_lock(&h->lock);
        h->stopping = true;
        pthread_cond_signal(&h->wake);
        pthread_mutex_unlock(&h->lock);
        pthread_join(h->watchdog, NULL);
    }
    /* libmicrohttpd's CLOSED notifications still take the lock: it goes only after them. */
    if (h->d) MHD_stop_daemon(h->d);
    titan_http_bridge *b = atomic_load(&h->bridge);
    titan_http_bridge_destroy(&b);
    titan_http_tokens_destroy(&h->tokens);
    if (h->lock_ready) {
        pthread_mutex_destroy(&h->lock);
        pthread_cond_destroy(&h->wake);
    }
    free(h);
    *hp = NULL;
}
