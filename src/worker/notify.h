/* notify.h - systemd service notifications (sd_notify): READY, STATUS, WATCHDOG, STOPPING. */
#ifndef TITAN_WORKER_NOTIFY_H
#define TITAN_WORKER_NOTIFY_H

/* Each call does nothing when the worker was not started by systemd (no NOTIFY_SOCKET). */
void titan_notify_ready(const char *status);
void titan_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void titan_notify_stopping(void);
void titan_notify_watchdog(void);
/* How often to send WATCHDOG, in ms (half of systemd's WatchdogSec), or 0 when none was asked for. */
int titan_notify_watchdog_interval_ms(void);

#endif
