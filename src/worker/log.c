/* log.c - one line per event on stderr, with a UTC timestamp and level. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "clock.h"
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

/* Copies text into out (cap bytes), escaping control characters and backslashes. */
static void s_escape(const char *text, char *out, size_t cap)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p && o + 5 < cap; p++) {
        unsigned char c = *p;
        if (c >= 0x20 && c != 0x7f && c != '\\') {
            out[o++] = (char)c;
        } else if (c == '\n' || c == '\r' || c == '\t' || c == '\\') {
            out[o++] = '\\';
            out[o++] = c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : '\\';
        } else {
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
        }
    }
    out[o] = '\0';
}

static void s_vlog(titan_log_level level, const char *suffix, const char *fmt, va_list ap)
{
    char text[1024], esc[1200];
    vsnprintf(text, sizeof(text), fmt, ap);
    s_escape(text, esc, sizeof(esc));
    struct timespec ts = titan_clock_wall_ts();
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    /* One write per line keeps lines from different threads whole. */
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ titan-worker %s: %s%s\n", tm.tm_year + 1900, tm.tm_mon + 1,
            tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, s_names[level], esc, suffix);
}

void titan_log_limited(titan_log_limit *l, titan_log_level level, const char *fmt, ...)
{
    if (level > s_level) return;
    long long now = titan_clock_mono_ms64();
    if (now - l->window_ms >= 1000) {
        l->window_ms = now;
        l->in_window = 0;
    }
    if (l->in_window >= l->per_sec) {
        l->suppressed++;
        return;
    }
    l->in_window++;
    char suffix[96] = "";
    if (l->suppressed)
        snprintf(suffix, sizeof(suffix), " (%llu more like it not logged: at most %d a second)", l->suppressed,
                 l->per_sec);
    l->suppressed = 0;
    va_list ap;
    va_start(ap, fmt);
    s_vlog(level, suffix, fmt, ap);
    va_end(ap);
}

void titan_log(titan_log_level level, const char *fmt, ...)
{
    if (level > s_level) return;
    va_list ap;
    va_start(ap, fmt);
    s_vlog(level, "", fmt, ap);
    va_end(ap);
}
