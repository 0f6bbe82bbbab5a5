/* workerctl.c - real titan-worker processes for the C integration tests (see workerctl.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "workerctl.h"

#define WORKER_READY_MS 20000
#define MAX_LIVE 16

static const char *g_worker_path;
static const char *g_tmpdir;
/* What a failed test (cmocka longjmps out of it) leaves behind, for its teardown. */
static pid_t g_live[MAX_LIVE];

void workerctl_init(const char *worker_path, const char *tmpdir)
{
    g_worker_path = worker_path;
    g_tmpdir = tmpdir;
}

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void s_live_add(pid_t pid)
{
    for (int i = 0; i < MAX_LIVE; i++) {
        if (g_live[i] == 0) {
            g_live[i] = pid;
            return;
        }
    }
}

static void s_live_forget(pid_t pid)
{
    for (int i = 0; i < MAX_LIVE; i++)
        if (g_live[i] == pid) g_live[i] = 0;
}

/* Sends `sig` to `pid` and reaps it; a process still there after 5 s gets SIGKILL. Returns the wait status. */
static int s_pid_stop(pid_t pid, int sig)
{
    int status = -1;
    kill(pid, sig);
    int64_t deadline = now_ms() + 5000;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        sleep_ms(5);
    }
    s_live_forget(pid);
    return status;
}

int worker_stop(worker *w, int sig)
{
    if (w->pid <= 0) return -1;
    int status = s_pid_stop(w->pid, sig);
    unlink(w->epfile);
    w->pid = 0;
    return status;
}

void workers_kill_all(void)
{
    for (int i = 0; i < MAX_LIVE; i++)
        if (g_live[i] > 0) s_pid_stop(g_live[i], SIGKILL);
}

int workerctl_remove_tmpdir(void)
{
    DIR *d = opendir(g_tmpdir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            char path[PATH_MAX];
            snprintf(path, sizeof(path), "%s/%s", g_tmpdir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    return rmdir(g_tmpdir);
}

/* Reads the first complete line of `path` into buf. Returns 0, or -1 while there is none yet. */
static int s_read_first_line(const char *path, char *buf, size_t cap)
{
    char tmp[1024];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, tmp, sizeof(tmp) - 1);
    close(fd);
    if (n <= 0) return -1;
    tmp[n] = '\0';
    char *nl = strchr(tmp, '\n');
    if (!nl || nl == tmp || (size_t)(nl - tmp) >= cap) return -1;
    *nl = '\0';
    memcpy(buf, tmp, (size_t)(nl - tmp) + 1);
    return 0;
}

/* Prints the end of a worker's log (for a worker that would not start). */
static void s_print_log_tail(const char *path)
{
    char buf[2048];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    off_t end = lseek(fd, 0, SEEK_END);
    lseek(fd, end > (off_t)sizeof(buf) - 1 ? end - (off_t)sizeof(buf) + 1 : 0, SEEK_SET);
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n > 0) {
        buf[n] = '\0';
        print_error("--- %s ---\n%s\n", path, buf);
    }
}

int worker_spawn(worker *w, const char *name, const char *bind, const char *const *args)
{
    memset(w, 0, sizeof(*w));
    snprintf(w->name, sizeof(w->name), "%s", name);
    snprintf(w->epfile, sizeof(w->epfile), "%s/%s.endpoint", g_tmpdir, name);
    snprintf(w->logfile, sizeof(w->logfile), "%s/%s.log", g_tmpdir, name);
    unlink(w->epfile);
    const char *argv[40] = {g_worker_path, "--bind", bind, "--endpoint-file", w->epfile};
    size_t na = 5;
    for (size_t i = 0; args && args[i] && na < sizeof(argv) / sizeof(argv[0]) - 1; i++)
        argv[na++] = args[i];
    argv[na] = NULL;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        print_error("fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* Dies with the test, even when the test itself is killed (a meson timeout, a sanitizer abort). */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(126);
        int fd = open(w->logfile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
        }
        execv(g_worker_path, (char *const *)argv);
        _exit(127);
    }
    w->pid = pid;
    s_live_add(pid);
    int64_t deadline = now_ms() + WORKER_READY_MS;
    while (now_ms() < deadline) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            print_error("titan-worker %s (%s) exited before it was ready (wait status 0x%x)\n", name, g_worker_path,
                        (unsigned)status);
            s_print_log_tail(w->logfile);
            s_live_forget(pid);
            w->pid = 0;
            return -1;
        }
        if (s_read_first_line(w->epfile, w->endpoint, sizeof(w->endpoint)) == 0) return 0;
        sleep_ms(5);
    }
    print_error("titan-worker %s did not write %s within %d ms\n", name, w->epfile, WORKER_READY_MS);
    s_print_log_tail(w->logfile);
    worker_stop(w, SIGKILL);
    return -1;
}
