/* log.c - one line per event on stderr, with a UTC timestamp and level. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* The program's log level: set once at start-up, read by every thread. */
static volatile titan_log_level s_level = TITAN_LOG_INFO;

static const char *s_names[] = {"error", "warn", "info", "debug"};

int titan_log_set_level_name(const char *name)
{
    for (int i = 0; i <= TITAN_LOG_DEBUG; i++) {
        if (strcmp(name, s_names[i]) == 0) {
            s_level = (titan_log_level)i;
            return 0;
        }
    }
    if (strcmp(name, "warning") == 0) {
        s_level = TITAN_LOG_WARN;
        return 0;
    }
    return -EINVAL;
}

void titan_log_set_level(titan_log_level level)
{
    s_level = level;
}

int titan_log_enabled(titan_log_level level)
{
    return level <= s_level;
}

void titan_log(titan_log_level level, const char *fmt, ...)
{
    if (level > s_level) return;
    char line[1024];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ titan-worker %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                     s_names[level]);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof(line)) vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    /* One write per line keeps lines from different threads whole. */
    fprintf(stderr, "%s\n", line);
}
