/* http.c - /healthz, /readyz and /metrics over HTTP/1.1, served by libmicrohttpd's own polling
 * thread; it reads the worker's state only through titan_metrics, never the server's. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "http.h"
#include "log.h"

#define HTTP_CONNECTIONS 32     /* scrapers and probes are few; more wait in the backlog */
#define HTTP_TIMEOUT_S 10       /* an idle or stalled connection is closed after this */
#define HTTP_MEMORY (32 * 1024) /* per connection: request headers; nothing else is read */

struct titan_http {
    struct MHD_Daemon *d;
    titan_metrics *m; /* borrowed */
    char url[80];
    bool public;
    char start_error[256]; /* libmicrohttpd's message while starting */
    atomic_bool starting;
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
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | MHD_USE_POLL;
    if (addr.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    char where[INET6_ADDRSTRLEN + 16];
    unsigned port = s_addr_text(&addr, where, sizeof(where));
    h->starting = true;
    /* The address is SOCK_ADDR's; the port argument only names it in libmicrohttpd's messages. */
    h->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, s_handle, h, MHD_OPTION_SOCK_ADDR,
                            (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_CONNECTIONS,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_TIMEOUT_S,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_MEMORY,
                            MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, h, MHD_OPTION_END);
    h->starting = false;
    if (!h->d) {
        snprintf(err, errcap, "cannot serve HTTP on %s: %s", where,
                 h->start_error[0] ? h->start_error : "libmicrohttpd could not start");
        titan_http_stop(&h);
        return NULL;
    }
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
    if (h->d) MHD_stop_daemon(h->d);
    free(h);
    *hp = NULL;
}
