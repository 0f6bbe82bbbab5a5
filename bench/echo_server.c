/* echo_server.c - bare libzmq ROUTER echo server: the reference that bench_ping measures titan against. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: echo_server [--endpoint-file PATH] ENDPOINT\n"
               "  Binds a ROUTER socket on ENDPOINT (e.g. tcp://127.0.0.1:*) and sends every\n"
               "  multipart message back, envelope included. --endpoint-file gets the bound\n"
               "  endpoint once the socket is ready. SIGINT/SIGTERM stop it.\n");
}

/* Writes `text` to `path` through a temporary file and rename(), so that a
 * reader polling for the file never sees it half written. */
static int s_write_endpoint_file(const char *path, const char *text)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return -ENAMETOOLONG;
    FILE *f = fopen(tmp, "w");
    if (!f) return -errno;
    int bad = fprintf(f, "%s\n", text) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        int err = errno ? errno : EIO;
        unlink(tmp);
        return -err;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *endpoint = NULL, *endpoint_file = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--endpoint-file") && i + 1 < argc)
            endpoint_file = argv[++i];
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if (argv[i][0] != '-' && !endpoint)
            endpoint = argv[i];
        else {
            s_usage(stderr);
            return 2;
        }
    }
    if (!endpoint) {
        s_usage(stderr);
        return 2;
    }

    struct sigaction sa = {0};
    sa.sa_handler = s_on_signal; /* no SA_RESTART: a blocked zmq_msg_recv returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    int rc = 1;
    void *ctx = zmq_ctx_new();
    void *sock = ctx ? zmq_socket(ctx, ZMQ_ROUTER) : NULL;
    if (!sock) {
        fprintf(stderr, "echo_server: cannot create socket: %s\n", zmq_strerror(zmq_errno()));
        goto out;
    }
    /* Plenty of room for 16 clients x a window of pipelined requests. */
    int hwm = 100000, linger = 0;
    zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(sock, endpoint) != 0) {
        fprintf(stderr, "echo_server: cannot bind %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
        goto out;
    }
    char bound[1024];
    size_t bound_len = sizeof bound;
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, bound, &bound_len) != 0) {
        fprintf(stderr, "echo_server: cannot read the bound endpoint: %s\n", zmq_strerror(zmq_errno()));
        goto out;
    }
    if (endpoint_file) {
        int err = s_write_endpoint_file(endpoint_file, bound);
        if (err < 0) {
            fprintf(stderr, "echo_server: cannot write %s: %s\n", endpoint_file, strerror(-err));
            goto out;
        }
    }

    /* Each frame is received and sent with the same zmq_msg_t, so the payload is never copied. */
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    while (!s_stop) {
        if (zmq_msg_recv(&msg, sock, 0) < 0) {
            if (zmq_errno() == EINTR) continue;
            fprintf(stderr, "echo_server: recv: %s\n", zmq_strerror(zmq_errno()));
            break;
        }
        int more = zmq_msg_more(&msg);
        if (zmq_msg_send(&msg, sock, more ? ZMQ_SNDMORE : 0) < 0 && zmq_errno() != EHOSTUNREACH) {
            fprintf(stderr, "echo_server: send: %s\n", zmq_strerror(zmq_errno()));
            break;
        }
    }
    zmq_msg_close(&msg);
    rc = s_stop ? 0 : 1;

out:
    if (sock) zmq_close(sock);
    if (ctx) zmq_ctx_term(ctx);
    return rc;
}
