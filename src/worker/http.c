/* http.c - /healthz, /readyz and /metrics over HTTP/1.1, served by libmicrohttpd's own polling
 * thread; it reads the worker's state only through titan_metrics, never the server's. */
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
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include "clock.h"
#include "http.h"
#include "log.h"

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
/* libmicrohttpd's own limits refuse rather than evict, so they sit above ours, as a backstop: a
 * connection shut here still counts for it until its next turn has reaped it. */
#define HTTP_CLOSING_SLACK 16
#define HTTP_SLOTS (HTTP_CONNECTIONS + HTTP_CLOSING_SLACK)

/* One accepted connection, from NOTIFY_STARTED to NOTIFY_CLOSED; guarded by titan_http.lock. */
struct s_conn {
    bool used;
    bool answering; /* its request header is complete: the access handler has run */
    bool closing;   /* shut by us; counts for no limit any more */
    int fd;
    sa_family_t family;
    unsigned char peer[16]; /* the address (IPv4: 4 bytes; IPv6: its /64), the rest zero */
    int64_t since_ms;       /* when it began waiting for the current request header */
    uint64_t seq;           /* the order in which it began waiting: the oldest goes first */
};

struct titan_http {
    struct MHD_Daemon *d;
    titan_metrics *m; /* borrowed */
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
    if (h->starting)
        snprintf(h->start_error, sizeof(h->start_error), "%s", msg);
    else
        titan_log(TITAN_LOG_WARN, "http: %s", msg);
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

/* The connection (of peer's address, or of any) that has waited longest for its request header,
 * or NULL when none waits. Called with h->lock held. */
static struct s_conn *s_oldest_waiting(titan_http *h, const struct s_conn *peer)
{
    struct s_conn *best = NULL;
    for (size_t i = 0; i < HTTP_SLOTS; i++) {
        struct s_conn *c = &h->slots[i];
        if (!c->used || c->closing || c->answering) continue;
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

/* Marks the connection's request header as complete (answering) or, after an answer on a
 * kept-alive connection, as waiting again, with a new deadline. */
static void s_set_answering(titan_http *h, struct MHD_Connection *conn, bool answering)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    pthread_mutex_lock(&h->lock);
    struct s_conn *c = ci ? ci->socket_context : NULL;
    if (c && c->used && c->answering != answering) {
        c->answering = answering;
        if (!answering) {
            c->since_ms = titan_clock_mono_ms64();
            c->seq = ++h->seq;
        }
    }
    pthread_mutex_unlock(&h->lock);
}

static void s_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                        enum MHD_RequestTerminationCode toe)
{
    (void)con_cls;
    (void)toe;
    s_set_answering(cls, conn, false);
}

/* The header deadline: every HTTP_SWEEP_MS, closes each connection that has waited longer than
 * HTTP_HEADER_DEADLINE_MS for its request header. The access handler cannot: libmicrohttpd calls
 * it only once the header is complete. */
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
            if (c->used && !c->answering && now - c->since_ms >= HTTP_HEADER_DEADLINE_MS) s_shut(c);
        }
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

static enum MHD_Result s_respond(struct MHD_Connection *conn, unsigned status, const char *ctype, char *body,
                                 size_t len)
{
    /* body is malloc'd; the response frees it once sent */
    struct MHD_Response *r = MHD_create_response_from_buffer_with_free_callback(len, body, free);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
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
    return s_respond(conn, status, "text/plain; charset=utf-8", body, (size_t)n);
}

static enum MHD_Result s_handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                const char *version, const char *upload_data, size_t *upload_data_size,
                                void **con_cls)
{
    titan_http *h = cls;
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)con_cls;
    s_set_answering(h, conn, true); /* the header is complete: no deadline any more */
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
        return s_respond(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len);
    }
    return s_text(conn, MHD_HTTP_NOT_FOUND, "not found: this worker serves /healthz, /readyz and /metrics\n");
}

titan_http *titan_http_start(const char *spec, titan_metrics *m, char *err, size_t errcap)
{
    struct sockaddr_storage addr;
    if (titan_http_parse_listen(spec, &addr, err, errcap) != 0) return NULL;
    titan_http *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    h->m = m;
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
        free(h);
        return NULL;
    }
    h->lock_ready = true;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | MHD_USE_POLL;
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
    if (h->watchdog_running) {
        pthread_mutex_lock(&h->lock);
        h->stopping = true;
        pthread_cond_signal(&h->wake);
        pthread_mutex_unlock(&h->lock);
        pthread_join(h->watchdog, NULL);
    }
    /* libmicrohttpd's CLOSED notifications still take the lock: it goes only after them. */
    if (h->d) MHD_stop_daemon(h->d);
    if (h->lock_ready) {
        pthread_mutex_destroy(&h->lock);
        pthread_cond_destroy(&h->wake);
    }
    free(h);
    *hp = NULL;
}
