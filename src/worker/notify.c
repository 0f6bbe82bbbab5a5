/* notify.c - systemd service notifications through libsystemd's sd_notify (Type=notify units). */
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#include <systemd/sd-daemon.h>

#include "notify.h"

/* The notify protocol is newline-separated KEY=VALUE, so a newline in a status would
 * start a bogus assignment; flatten control characters to spaces. */
static void s_flatten(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) *s = ' ';
}

void titan_notify_ready(const char *status)
{
    if (!status) {
        (void)sd_notify(0, "READY=1");
        return;
    }
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", status);
    s_flatten(buf);
    (void)sd_notifyf(0, "READY=1\nSTATUS=%s", buf);
}

void titan_notify_status(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    s_flatten(buf);
    (void)sd_notifyf(0, "STATUS=%s", buf);
}

void titan_notify_stopping(void)
{
    (void)sd_notify(0, "STOPPING=1");
}

void titan_notify_watchdog(void)
{
    (void)sd_notify(0, "WATCHDOG=1");
}

int titan_notify_watchdog_interval_ms(void)
{
    uint64_t usec = 0;
    /* > 0 only when WATCHDOG_USEC is set and WATCHDOG_PID is unset or names this process. */
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return 0;
    uint64_t ms = usec / 2000; /* half the timeout, so one late tick does not kill us */
    if (ms == 0) ms = 1;
    if (ms > INT_MAX) ms = INT_MAX;
    return (int)ms;
}
