/* error.h - a reply's error code and message, shared by the ops and the backends (modules included). */
#ifndef TITAN_WORKER_ERROR_H
#define TITAN_WORKER_ERROR_H

/* A stable error code and a message for the client. */
typedef struct {
    const char *code; /* "bad_request", "too_large", "device_error"... (static string) */
    char msg[512];
} titan_error;

/* Sets err (code, and the message as printf formats it) and returns -1, so that callers can
 * `return titan_fail(...)`. error.c. */
int titan_fail(titan_error *err, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
