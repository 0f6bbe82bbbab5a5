/* http_auth.c - the /v1 routes' peer rule and bearer tokens: the --http-token file, read at start and again when
 * it changes, and comparisons whose time tells nothing of the tokens. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http_auth.h"
#include "log.h"

#define S_MAX_FILE (1 << 20) /* bytes of a token file, at most */

bool titan_http_peer_is_loopback(const struct sockaddr *sa)
{
    if (!sa) return false;
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

titan_http_access titan_http_access_rule(bool peer_loopback, bool tokens_configured, bool token_ok, bool insecure)
{
    if (tokens_configured) return token_ok ? TITAN_HTTP_ACCESS_OK : TITAN_HTTP_ACCESS_UNAUTHORIZED;
    return peer_loopback || insecure ? TITAN_HTTP_ACCESS_OK : TITAN_HTTP_ACCESS_FORBIDDEN;
}

bool titan_http_token_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    unsigned char pa[TITAN_HTTP_TOKEN_MAX] = {0}, pb[TITAN_HTTP_TOKEN_MAX] = {0};
    if (a) memcpy(pa, a, alen < sizeof(pa) ? alen : sizeof(pa));
    if (b) memcpy(pb, b, blen < sizeof(pb) ? blen : sizeof(pb));
    /* Every byte is looked at whatever the others are; a length over the pad differs from every padded one. */
    volatile unsigned char diff = 0;
    for (size_t i = 0; i < sizeof(pa); i++) diff |= pa[i] ^ pb[i];
    size_t dl = (alen ^ blen) | (alen > TITAN_HTTP_TOKEN_MAX) | (blen > TITAN_HTTP_TOKEN_MAX);
    return (diff | (dl != 0)) == 0;
}

int titan_http_bearer(const char *value, const char **tok, size_t *len)
{
    if (!value) return -EINVAL;
    while (*value == ' ' || *value == '\t') value++;
    if (strncasecmp(value, "Bearer", 6) != 0 || (value[6] != ' ' && value[6] != '\t')) return -EINVAL;
    const char *s = value + 6;
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    if (n == 0) return -EINVAL;
    *tok = s;
    *len = n;
    return 0;
}

struct titan_http_tokens {
    char *path;
    size_t n;
    unsigned char (*tok)[TITAN_HTTP_TOKEN_MAX]; /* each padded with zeros */
    size_t *len;
    bool broken;       /* the last read failed: nobody is admitted */
    struct stat seen;  /* the file as last read (or tried) */
    bool have_seen;
};

/* Reads path into the token set. Returns 0, or -EINVAL with the reason in err; the set is left as it was. */
static int s_read(titan_http_tokens *t, struct stat *st, char *err, size_t errcap)
{
    int fd = open(t->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, errcap, "--http-token %s: %s", t->path, strerror(errno));
        return -EINVAL;
    }
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode) || st->st_size > S_MAX_FILE) {
        snprintf(err, errcap, "--http-token %s: not a regular file of at most %d bytes", t->path, S_MAX_FILE);
        close(fd);
        return -EINVAL;
    }
    size_t size = (size_t)st->st_size, got = 0;
    char *text = malloc(size + 1);
    if (!text) {
        close(fd);
        snprintf(err, errcap, "--http-token %s: out of memory", t->path);
        return -EINVAL;
    }
    while (got < size) {
        ssize_t r = read(fd, text + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    text[got] = '\0';
    unsigned char(*tok)[TITAN_HTTP_TOKEN_MAX] = calloc(TITAN_HTTP_MAX_TOKENS, sizeof(*tok));
    size_t *len = calloc(TITAN_HTTP_MAX_TOKENS, sizeof(*len));
    size_t n = 0;
    int rc = 0, lineno = 0;
    if (!tok || !len) {
        snprintf(err, errcap, "--http-token %s: out of memory", t->path);
        rc = -EINVAL;
    }
    for (char *line = text, *next; rc == 0 && line && *line; line = next) {
        lineno++;
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        char *s = line, *e = line + strlen(line);
        while (*s == ' ' || *s == '\t') s++;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) *--e = '\0';
        if (!*s || *s == '#') continue;
        size_t l = (size_t)(e - s);
        bool visible = true;
        for (char *c = s; c < e; c++) visible &= *c > 0x20 && *c < 0x7f;
        if (!visible || l < TITAN_HTTP_TOKEN_MIN || l > TITAN_HTTP_TOKEN_MAX) {
            snprintf(err, errcap,
                     "--http-token %s:%d: a token is %d to %d visible ASCII characters without spaces (make one with "
                     "`head -c 32 /dev/urandom | base64`)",
                     t->path, lineno, TITAN_HTTP_TOKEN_MIN, TITAN_HTTP_TOKEN_MAX);
            rc = -EINVAL;
        } else if (n == TITAN_HTTP_MAX_TOKENS) {
            snprintf(err, errcap, "--http-token %s: more than %d tokens", t->path, TITAN_HTTP_MAX_TOKENS);
            rc = -EINVAL;
        } else {
            memcpy(tok[n], s, l);
            len[n++] = l;
        }
    }
    if (rc == 0 && n == 0) {
        snprintf(err, errcap, "--http-token %s holds no token: put one token a line", t->path);
        rc = -EINVAL;
    }
    /* The text held secrets: not left in freed memory. */
    explicit_bzero(text, got);
    free(text);
    if (rc) {
        if (tok) explicit_bzero(tok, TITAN_HTTP_MAX_TOKENS * sizeof(*tok));
        free(tok);
        free(len);
        return rc;
    }
    if (t->tok) explicit_bzero(t->tok, TITAN_HTTP_MAX_TOKENS * sizeof(*t->tok));
    free(t->tok);
    free(t->len);
    t->tok = tok;
    t->len = len;
    t->n = n;
    return 0;
}

titan_http_tokens *titan_http_tokens_open(const char *path, char *err, size_t errcap)
{
    titan_http_tokens *t = calloc(1, sizeof(*t));
    if (!t || !(t->path = strdup(path))) {
        free(t);
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    struct stat st;
    if (s_read(t, &st, err, errcap) != 0) {
        titan_http_tokens_destroy(&t);
        return NULL;
    }
    t->seen = st;
    t->have_seen = true;
    if (st.st_mode & 077)
        titan_log(TITAN_LOG_WARN, "--http-token %s can be read by other users: chmod 600 it", path);
    return t;
}

size_t titan_http_tokens_count(const titan_http_tokens *t)
{
    return t && !t->broken ? t->n : 0;
}

static bool s_same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Re-reads the file when it is not the one read last. */
static void s_refresh(titan_http_tokens *t)
{
    struct stat st;
    char err[512];
    if (stat(t->path, &st) != 0) {
        if (!t->broken)
            titan_log(TITAN_LOG_WARN, "--http-token %s: %s; no /v1 request is admitted until it is back", t->path,
                      strerror(errno));
        t->broken = true;
        t->have_seen = false;
        return;
    }
    if (t->have_seen && s_same_file(&st, &t->seen)) return;
    t->seen = st;
    t->have_seen = true;
    if (s_read(t, &st, err, sizeof(err)) != 0) {
        titan_log(TITAN_LOG_WARN, "%s; no /v1 request is admitted until the file is fixed", err);
        t->broken = true;
        return;
    }
    t->seen = st;
    t->broken = false;
    titan_log(TITAN_LOG_INFO, "--http-token %s re-read: %zu token%s", t->path, t->n, t->n == 1 ? "" : "s");
}

bool titan_http_tokens_check(titan_http_tokens *t, const char *tok, size_t len)
{
    if (!t) return false;
    s_refresh(t);
    if (t->broken) return false;
    bool ok = false;
    for (size_t i = 0; i < t->n; i++) ok |= titan_http_token_equal(tok, len, (const char *)t->tok[i], t->len[i]);
    return ok;
}

void titan_http_tokens_destroy(titan_http_tokens **tp)
{
    if (!tp || !*tp) return;
    titan_http_tokens *t = *tp;
    if (t->tok) explicit_bzero(t->tok, TITAN_HTTP_MAX_TOKENS * sizeof(*t->tok));
    free(t->tok);
    free(t->len);
    free(t->path);
    free(t);
    *tp = NULL;
}
