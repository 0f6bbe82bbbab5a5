/* workerctl.h - real titan-worker processes for the C integration tests (test_retry, test_router): start one
 * on a loopback endpoint and wait for its endpoint file, stop it, and kill what a failed test left running. */
#ifndef TITAN_TESTS_WORKERCTL_H
#define TITAN_TESTS_WORKERCTL_H

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
    pid_t pid; /* 0 when not running */
    char name[32];
    char epfile[PATH_MAX];
    char logfile[PATH_MAX];
    char endpoint[256];
} worker;

/* Sets the titan-worker binary and the directory for endpoint files and logs (both borrowed). */
void workerctl_init(const char *worker_path, const char *tmpdir);
int64_t now_ms(void);
void sleep_ms(int ms);

/* Starts titan-worker `name` on `bind` with the NULL-terminated options `args` and waits until it writes its
 * endpoint file (its readiness signal). Output goes to NAME.log in the directory; the worker dies with the
 * test. Returns 0 with w filled, or -1 with the reason and the log's end printed. */
int worker_spawn(worker *w, const char *name, const char *bind, const char *const *args);
/* Sends `sig` (SIGKILL after 5 s) and reaps it. Returns the wait status, or -1 when it was not running. */
int worker_stop(worker *w, int sig);
/* Removes the directory of workerctl_init and the files in it (endpoint files, logs, a test's own). Returns
 * 0 or -1 (rmdir's). */
int workerctl_remove_tmpdir(void);
/* SIGKILLs every worker still running (a cmocka teardown after a failed test). */
void workers_kill_all(void);

#endif
