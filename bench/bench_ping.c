/* bench_ping.c - ping round-trip latency and pipelined throughput (16 DEALER clients) against any ROUTER
 * endpoint. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "benchutil.h"

#define PING_JSON "{\"op\":\"ping\"}"
#define MAX_CLIENTS 256

typedef struct {
    const char *endpoint;
    const char *label;
    const char *ref_endpoint, *ref_label; /* optional reference for the RTT part */
    int block;
    int pings;
    int warmup;
    int clients;
    int window;
    double duration_s;
    double warmup_s;
    int timeout_ms;
    bool skip_rtt, skip_throughput;
} s_config;

static void *s_dealer(void *ctx, const s_config *cfg, const char *endpoint)
{
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    if (!sock) return NULL;
    int linger = 0, hwm = 100000;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &cfg->timeout_ms, sizeof cfg->timeout_ms);
    zmq_setsockopt(sock, ZMQ_SNDTIMEO, &cfg->timeout_ms, sizeof cfg->timeout_ms);
    if (zmq_connect(sock, endpoint) != 0) {
        zmq_close(sock);
        return NULL;
    }
    return sock;
}

/* Sends one REQ-style ping: an empty delimiter frame, then the JSON. */
static int s_send_ping(void *sock)
{
    if (zmq_send(sock, "", 0, ZMQ_SNDMORE) < 0) return -zmq_errno();
    if (zmq_send(sock, PING_JSON, sizeof PING_JSON - 1, 0) < 0) return -zmq_errno();
    return 0;
}

/* Receives one reply. Returns 1 for a good reply, 0 for a reply the server
 * answered with an error ("busy"...), or -errno (-EAGAIN on timeout, -EPROTO
 * for a reply that is not [empty, JSON object]). */
static int s_recv_reply(void *sock, int flags)
{
    char buf[512];
    int frames = 0, result = -EPROTO;
    bool more = true;
    while (more) {
        int n = zmq_recv(sock, buf, sizeof buf - 1, frames ? 0 : flags);
        if (n < 0) return frames ? -EPROTO : -zmq_errno();
        int m = 0;
        size_t ml = sizeof m;
        zmq_getsockopt(sock, ZMQ_RCVMORE, &m, &ml);
        more = m != 0;
        if (frames == 0 && n != 0)
            result = -EPROTO; /* no empty delimiter */
        else if (frames == 1) {
            if (n > (int)sizeof buf - 1) n = (int)sizeof buf - 1;
            buf[n] = '\0';
            if (n == 0 || buf[0] != '{')
                result = -EPROTO;
            else
                result = strstr(buf, "\"error\"") ? 0 : 1;
        }
        frames++;
    }
    return frames == 2 ? result : -EPROTO;
}

static double s_percentile(const double *sorted, int n, double p)
{
    int i = (int)(p * (n - 1) + 0.5);
    return sorted[i < 0 ? 0 : i >= n ? n - 1 : i];
}

typedef struct {
    const char *endpoint, *label;
    void *sock;
    double *t; /* timed round trips */
    int done, errors;
} s_rtt_target;

/* One sequential ping; stores its time in tg->t once the warmup is over. */
static int s_rtt_one(s_rtt_target *tg, int i, int warmup)
{
    double t0 = bench_now();
    int err = s_send_ping(tg->sock);
    int got = err < 0 ? err : s_recv_reply(tg->sock, 0);
    double dt = bench_now() - t0;
    if (got < 0) {
        fprintf(stderr, "bench_ping: %s: ping %d failed: %s\n", tg->label, i,
                got == -EAGAIN   ? "timed out"
                : got == -EPROTO ? "malformed reply"
                                 : zmq_strerror(-got));
        return -1;
    }
    if (got == 0) tg->errors++;
    if (i >= warmup) tg->t[tg->done++] = dt;
    return 0;
}

/* Sequential round trips. With a reference endpoint the two targets take turns
 * in blocks of `block` pings, so drift on a shared machine hits both alike. */
static int s_bench_rtt(void *ctx, const s_config *cfg)
{
    int rc = -1;
    s_rtt_target tg[2] = {{.endpoint = cfg->endpoint, .label = cfg->label},
                          {.endpoint = cfg->ref_endpoint, .label = cfg->ref_label}};
    int ntg = cfg->ref_endpoint ? 2 : 1;
    for (int k = 0; k < ntg; k++) {
        tg[k].t = calloc((size_t)cfg->pings, sizeof *tg[k].t);
        tg[k].sock = s_dealer(ctx, cfg, tg[k].endpoint);
        if (!tg[k].t || !tg[k].sock) {
            fprintf(stderr, "bench_ping: setup failed: %s\n",
                    tg[k].t ? zmq_strerror(zmq_errno()) : "out of memory");
            goto out;
        }
    }
    int total = cfg->warmup + cfg->pings;
    for (int i0 = 0; i0 < total; i0 += cfg->block)
        for (int k = 0; k < ntg; k++)
            for (int i = i0; i < i0 + cfg->block && i < total; i++)
                if (s_rtt_one(&tg[k], i, cfg->warmup) != 0) goto out;
    double median[2] = {0, 0};
    for (int k = ntg - 1; k >= 0; k--) { /* the reference first */
        double *t = tg[k].t;
        int n = tg[k].done;
        qsort(t, (size_t)n, sizeof *t, bench_cmp_double);
        double sum = 0;
        for (int i = 0; i < n; i++)
            sum += t[i];
        median[k] = s_percentile(t, n, 0.5);
        printf(
            "ping_rtt target=%s n=%d median_us=%.2f p99_us=%.2f mean_us=%.2f min_us=%.2f error_replies=%d\n",
            tg[k].label, n, median[k] * 1e6, s_percentile(t, n, 0.99) * 1e6, sum / n * 1e6, t[0] * 1e6,
            tg[k].errors);
    }
    if (ntg == 2)
        printf("ping_rtt_ratio target=%s reference=%s block=%d median_ratio=%.3f\n", tg[0].label, tg[1].label,
               cfg->block, median[0] / median[1]);
    fflush(stdout);
    rc = 0;
out:
    for (int k = 0; k < ntg; k++) {
        if (tg[k].sock) zmq_close(tg[k].sock);
        free(tg[k].t);
    }
    return rc;
}

typedef struct {
    void *ctx;
    const s_config *cfg;
    pthread_barrier_t *start;
    double t_begin, t_end; /* counting window, set before the barrier is released */
    uint64_t ok, errors;   /* replies inside the counting window */
    int failed;            /* -errno when the thread gave up */
} s_worker;

static void *s_throughput_thread(void *arg)
{
    s_worker *w = arg;
    void *sock = s_dealer(w->ctx, w->cfg, w->cfg->endpoint);
    if (!sock) w->failed = -zmq_errno();
    pthread_barrier_wait(w->start);
    if (!sock) return NULL;
    const double t_begin = w->t_begin, t_end = w->t_end;
    int in_flight = 0;
    for (; in_flight < w->cfg->window; in_flight++) {
        int err = s_send_ping(sock);
        if (err < 0) {
            w->failed = err;
            goto out;
        }
    }
    for (;;) {
        /* Block for one reply, then take whatever else is already queued, and
         * refill the window once: fewer wakeups, like a real pipelined client. */
        int got = s_recv_reply(sock, 0);
        if (got < 0) {
            w->failed = got;
            goto out;
        }
        int batch = 0;
        for (;;) {
            batch++;
            double now = bench_now();
            if (now >= t_begin && now < t_end) {
                if (got)
                    w->ok++;
                else
                    w->errors++;
            }
            if (batch >= w->cfg->window) break;
            got = s_recv_reply(sock, ZMQ_DONTWAIT);
            if (got == -EAGAIN) break;
            if (got < 0) {
                w->failed = got;
                goto out;
            }
        }
        in_flight -= batch;
        if (bench_now() >= t_end) break;
        for (int i = 0; i < batch; i++, in_flight++) {
            int err = s_send_ping(sock);
            if (err < 0) {
                w->failed = err;
                goto out;
            }
        }
    }
out:
    zmq_close(sock); /* linger 0: whatever is still in flight is dropped */
    return NULL;
}

static int s_bench_throughput(void *ctx, const s_config *cfg)
{
    int nclients = cfg->clients;
    s_worker w[MAX_CLIENTS];
    pthread_t th[MAX_CLIENTS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)nclients + 1);
    double t_begin = bench_now() + 0.05 + cfg->warmup_s; /* the connects happen during the warmup */
    double t_end = t_begin + cfg->duration_s;
    int started = 0;
    for (int i = 0; i < nclients; i++) {
        w[i] = (s_worker){.ctx = ctx, .cfg = cfg, .start = &start, .t_begin = t_begin, .t_end = t_end};
        if (pthread_create(&th[i], NULL, s_throughput_thread, &w[i]) != 0) {
            fprintf(stderr, "bench_ping: cannot start thread %d\n", i);
            abort(); /* the barrier would wait forever */
        }
        started++;
    }
    pthread_barrier_wait(&start);
    uint64_t ok = 0, errors = 0;
    int failed = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        ok += w[i].ok;
        errors += w[i].errors;
        if (w[i].failed && !failed) failed = w[i].failed;
    }
    pthread_barrier_destroy(&start);
    if (failed) {
        fprintf(stderr, "bench_ping: %s: a throughput client failed: %s\n", cfg->label,
                failed == -EAGAIN   ? "timed out"
                : failed == -EPROTO ? "malformed reply"
                                    : zmq_strerror(-failed));
        return -1;
    }
    printf("ping_throughput target=%s clients=%d window=%d duration_s=%.2f replies=%" PRIu64
           " error_replies=%" PRIu64 " per_s=%.0f\n",
           cfg->label, nclients, cfg->window, cfg->duration_s, ok, errors, (double)ok / cfg->duration_s);
    fflush(stdout);
    return 0;
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: bench_ping [options] ENDPOINT\n"
               "  --label NAME       name printed in the result lines (default: the endpoint)\n"
               "  --pings N          timed sequential pings (default 20000)\n"
               "  --warmup N         untimed pings first, per endpoint (default 2000)\n"
               "  --ref ENDPOINT     also time the RTT of this reference endpoint, taking turns\n"
               "                     with ENDPOINT in blocks of --block pings (default 250)\n"
               "  --ref-label NAME   its name in the result lines (default: ref)\n"
               "  --clients N        pipelined DEALER clients, one thread each (default 16)\n"
               "  --window N         requests each client keeps in flight (default 64)\n"
               "  --duration S       seconds of counted pipelined traffic (default 3)\n"
               "  --warmup-s S       uncounted pipelined seconds first (default 0.5)\n"
               "  --timeout-ms N     give up when one reply takes longer (default 5000)\n"
               "  --no-rtt | --no-throughput   skip one of the two parts\n"
               "Prints 'ping_rtt ...' (and with --ref 'ping_rtt_ratio ...') and 'ping_throughput ...'\n"
               "lines of key=value pairs. The throughput part runs against ENDPOINT only.\n");
}

static bool s_parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

static bool s_parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    s_config cfg = {.ref_label = "ref",
                    .block = 250,
                    .pings = 20000,
                    .warmup = 2000,
                    .clients = 16,
                    .window = 64,
                    .duration_s = 3.0,
                    .warmup_s = 0.5,
                    .timeout_ms = 5000};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true, takes = true;
        if (!strcmp(a, "--label") && v)
            cfg.label = v;
        else if (!strcmp(a, "--ref") && v)
            cfg.ref_endpoint = v;
        else if (!strcmp(a, "--ref-label") && v)
            cfg.ref_label = v;
        else if (!strcmp(a, "--block") && v)
            ok = s_parse_int(v, 1, 100000000, &cfg.block);
        else if (!strcmp(a, "--pings") && v)
            ok = s_parse_int(v, 1, 100000000, &cfg.pings);
        else if (!strcmp(a, "--warmup") && v)
            ok = s_parse_int(v, 0, 100000000, &cfg.warmup);
        else if (!strcmp(a, "--clients") && v)
            ok = s_parse_int(v, 1, MAX_CLIENTS, &cfg.clients);
        else if (!strcmp(a, "--window") && v)
            ok = s_parse_int(v, 1, 10000, &cfg.window);
        else if (!strcmp(a, "--duration") && v)
            ok = s_parse_double(v, 0.01, 3600, &cfg.duration_s);
        else if (!strcmp(a, "--warmup-s") && v)
            ok = s_parse_double(v, 0, 3600, &cfg.warmup_s);
        else if (!strcmp(a, "--timeout-ms") && v)
            ok = s_parse_int(v, 1, 3600000, &cfg.timeout_ms);
        else {
            takes = false;
            if (!strcmp(a, "--no-rtt"))
                cfg.skip_rtt = true;
            else if (!strcmp(a, "--no-throughput"))
                cfg.skip_throughput = true;
            else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
                s_usage(stdout);
                return 0;
            } else if (a[0] != '-' && !cfg.endpoint)
                cfg.endpoint = a;
            else
                ok = false;
        }
        if (!ok) {
            fprintf(stderr, "bench_ping: bad argument: %s%s%s\n", a, takes && v ? " " : "",
                    takes && v ? v : "");
            s_usage(stderr);
            return 2;
        }
        if (takes) i++;
    }
    if (!cfg.endpoint) {
        s_usage(stderr);
        return 2;
    }
    if (!cfg.label) cfg.label = cfg.endpoint;

    void *ctx = zmq_ctx_new();
    if (!ctx) {
        fprintf(stderr, "bench_ping: zmq_ctx_new: %s\n", zmq_strerror(zmq_errno()));
        return 1;
    }
    int rc = 0;
    if (!cfg.skip_rtt && s_bench_rtt(ctx, &cfg) != 0) rc = 1;
    if (!rc && !cfg.skip_throughput && s_bench_throughput(ctx, &cfg) != 0) rc = 1;
    zmq_ctx_term(ctx);
    return rc;
}
