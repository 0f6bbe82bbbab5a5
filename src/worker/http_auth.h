/* http_auth.h - who may call the /v1 routes: the peer rule (loopback; beyond it a bearer token or --insecure-http)
 * and the --http-token file's tokens, compared in constant time and re-read when the file changes. */
#ifndef TITAN_WORKER_HTTP_AUTH_H
#define TITAN_WORKER_HTTP_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#define TITAN_HTTP_TOKEN_MIN 16    /* characters: a shorter token is refused when the file is read */
#define TITAN_HTTP_TOKEN_MAX 256   /* characters; every comparison runs over this many */
#define TITAN_HTTP_MAX_TOKENS 1024 /* lines of tokens in one file */

/* True when sa is a loopback address: 127.0.0.0/8, ::1, or ::ffff:127.0.0.0/104. NULL and other families are not. */
bool titan_http_peer_is_loopback(const struct sockaddr *sa);

typedef enum {
    TITAN_HTTP_ACCESS_OK,
    TITAN_HTTP_ACCESS_UNAUTHORIZED, /* 401: tokens are configured and the request has none of them */
    TITAN_HTTP_ACCESS_FORBIDDEN,    /* 403: a peer beyond loopback, and neither tokens nor --insecure-http */
} titan_http_access;

/* The rule for the /v1 routes: with tokens configured every request needs one (loopback included); without,
 * loopback peers are served, and other peers only with --insecure-http. */
titan_http_access titan_http_access_rule(bool peer_loopback, bool tokens_configured, bool token_ok, bool insecure);

/* Compares two tokens in time that depends on neither: both are padded to TITAN_HTTP_TOKEN_MAX bytes and every
 * byte and the lengths are compared, without an early exit. Tokens longer than that are unequal to all. */
bool titan_http_token_equal(const char *a, size_t alen, const char *b, size_t blen);

/* Finds the token of an Authorization header's value ("Bearer TOKEN", the scheme in any case). Returns 0 with
 * *tok (borrowed from value) and *len, or -EINVAL (NULL, another scheme, no token). */
int titan_http_bearer(const char *value, const char **tok, size_t *len);

typedef struct titan_http_tokens titan_http_tokens;

/* Reads the token file at path: one token a line (TITAN_HTTP_TOKEN_MIN to TITAN_HTTP_TOKEN_MAX visible ASCII
 * characters; blank lines and lines starting with '#' are skipped; spaces around a token are trimmed). Returns
 * NULL with the reason (the file, the line) in err when it cannot be read or holds no token. */
titan_http_tokens *titan_http_tokens_open(const char *path, char *err, size_t errcap);
/* The number of tokens held now. */
size_t titan_http_tokens_count(const titan_http_tokens *t);
/* True when tok is one of the tokens, compared with each of them in constant time. At most once a second it first
 * looks whether the file changed (size, times, inode) and re-reads it; a file that became unreadable or holds no
 * valid token admits nobody until it is fixed (logged). One thread only: libmicrohttpd's. */
bool titan_http_tokens_check(titan_http_tokens *t, const char *tok, size_t len);
/* Frees; takes NULL and sets *t to NULL. */
void titan_http_tokens_destroy(titan_http_tokens **t);

#endif
