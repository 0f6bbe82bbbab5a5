/* log.h - the worker's leveled logging to stderr. */
#ifndef TITAN_WORKER_LOG_H
#define TITAN_WORKER_LOG_H

typedef enum { TITAN_LOG_ERROR = 0, TITAN_LOG_WARN, TITAN_LOG_INFO, TITAN_LOG_DEBUG } titan_log_level;

/* Returns 0 and sets the process log level from its name, or -EINVAL. */
int titan_log_set_level_name(const char *name);
void titan_log_set_level(titan_log_level level);
/* True when messages of `level` are written: test it before building costly debug text. */
int titan_log_enabled(titan_log_level level);
/* Writes one line. Control characters in the text (a client's op, model name or error text among
 * them) are escaped as \n, \r, \t, \\ and \xHH, so that no client can forge a line or send escape
 * sequences to a terminal. */
void titan_log(titan_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A rate limit for lines a client can cause (one per failed request): at most per_sec lines a second;
 * the first line after suppressed ones says how many were left out. One limiter per thread. */
typedef struct {
    int per_sec;
    long long window_ms; /* start of the current one-second window */
    int in_window;       /* lines written in it */
    unsigned long long suppressed;
} titan_log_limit;
void titan_log_limited(titan_log_limit *l, titan_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define titan_log_debug(...)                                                                                 \
    do {                                                                                                     \
        if (titan_log_enabled(TITAN_LOG_DEBUG)) titan_log(TITAN_LOG_DEBUG, __VA_ARGS__);                     \
    } while (0)

#endif
