/* error.h - a reply's error code and message, shared by the ops and the backends (modules included). */
#ifndef TITAN_WORKER_ERROR_H
#define TITAN_WORKER_ERROR_H

/* A stable error code and a message for the client. */
typedef struct {
    const char *code; /* "bad_request", "too_large", "device_error"... (static string) */
    char msg[512];
} titan_error;

#endif
