/* test_client_local.c - cmocka tests of the libtitan client that need no worker. */
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "titan/titan.h"

/* Returns the monotonic clock in milliseconds. */
static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Binds (without listening) a TCP socket on an ephemeral loopback port and returns its fd;
 * while it stays open, connections to *port are refused and no one else can take the port. */
static int reserve_closed_port(int *port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

static void test_opts_defaults(void **state)
{
    titan_client_opts o;
    memset(&o, 0xab, sizeof o);
    titan_client_opts_init(&o);
    assert_int_equal(o.timeout_ms, 5000);
    assert_int_equal(o.retries, 2);
    assert_null(o.zmq_ctx);
    titan_client_opts_init(NULL); /* must not crash */
}

static void test_new_with_null_opts_and_destroy(void **state)
{
    titan_client *c = titan_client_new("tcp://127.0.0.1:5555", NULL);
    assert_non_null(c);
    assert_string_equal(titan_client_last_error(c), "");
    assert_string_equal(titan_client_last_code(c), "");
    assert_int_equal(titan_client_last_retries(c), 0);
    titan_client_destroy(&c);
    assert_null(c);
    titan_client_destroy(&c);
    titan_client_destroy(NULL);
}

static void test_bad_endpoint(void **state)
{
    const char *bad[] = {"", "not-an-endpoint", "tcp://", "tcp://127.0.0.1", "tcp://127.0.0.1:notaport",
                         "bogus://127.0.0.1:5555", "tcp://127.0.0.1:99999", "tcp://127.0.0.1:0",
                         "tcp://127.0.0.1:*", "tcp://127.0.0.1:-1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        titan_client *c = titan_client_new(bad[i], NULL);
        if (c) fail_msg("endpoint \"%s\" was accepted", bad[i]);
        assert_int_equal(errno, EINVAL);
    }
    const char *good[] = {"tcp://localhost:5555", "tcp://[::1]:5555", "ipc:///tmp/titan.sock", "inproc://titan"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        titan_client *c = titan_client_new(good[i], NULL);
        if (!c) fail_msg("endpoint \"%s\" was refused: %s", good[i], strerror(errno));
        titan_client_destroy(&c);
    }
    errno = 0;
    assert_null(titan_client_new(NULL, NULL));
    assert_int_equal(errno, EINVAL);
}

static void test_bad_opts(void **state)
{
    titan_client_opts o;
    titan_client_opts_init(&o);
    o.timeout_ms = 0;
    errno = 0;
    assert_null(titan_client_new("tcp://127.0.0.1:5555", &o));
    assert_int_equal(errno, EINVAL);
    titan_client_opts_init(&o);
    o.timeout_ms = -5;
    assert_null(titan_client_new("tcp://127.0.0.1:5555", &o));
    titan_client_opts_init(&o);
    o.retries = -1;
    errno = 0;
    assert_null(titan_client_new("tcp://127.0.0.1:5555", &o));
    assert_int_equal(errno, EINVAL);
}

/* A call to a port where nothing listens times out after 1 + retries attempts, in bounded time. */
static void test_timeout_closed_port(void **state)
{
    int port;
    int fd = reserve_closed_port(&port);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    titan_client_opts o;
    titan_client_opts_init(&o);
    o.timeout_ms = 100;
    o.retries = 2;
    titan_client *c = titan_client_new(ep, &o);
    assert_non_null(c);

    char *dev = (char *)"untouched";
    int64_t t0 = now_ms();
    assert_int_equal(titan_client_ping(c, &dev), -ETIMEDOUT);
    int64_t dt = now_ms() - t0;
    assert_string_equal(dev, "untouched");
    assert_true(dt >= 280);
    assert_true(dt < 2000);
    assert_string_equal(titan_client_last_code(c), "timeout");
    assert_non_null(strstr(titan_client_last_error(c), ep));
    assert_int_equal(titan_client_last_retries(c), 2);

    /* The generic call and a second typed call behave the same, with fresh sockets each time. */
    titan_reply *r = NULL;
    assert_int_equal(titan_client_call(c, "{\"op\":\"ping\"}", NULL, 0, &r), -ETIMEDOUT);
    assert_null(r);
    assert_int_equal(titan_client_last_retries(c), 2);

    float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
    void *out = NULL;
    assert_int_equal(titan_client_matmul(c, TITAN_DTYPE_FLOAT32, 2, 2, 2, a, b, &out), -ETIMEDOUT);
    assert_null(out);
    titan_client_destroy(&c);
    close(fd);
}

/* retries = 0 means exactly one attempt. */
static void test_timeout_no_retries(void **state)
{
    int port;
    int fd = reserve_closed_port(&port);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    titan_client_opts o = {.timeout_ms = 50, .retries = 0};
    titan_client *c = titan_client_new(ep, &o);
    assert_non_null(c);
    int64_t t0 = now_ms();
    titan_gpu_info gi;
    assert_int_equal(titan_client_gpu_info(c, &gi, NULL), -ETIMEDOUT);
    int64_t dt = now_ms() - t0;
    assert_true(dt >= 45 && dt < 1000);
    assert_int_equal(titan_client_last_retries(c), 0);
    assert_string_equal(titan_client_last_code(c), "timeout");
    titan_client_destroy(&c);
    close(fd);
}

/* A shared context is used and left alive: it must still work after the client is gone. */
static void test_shared_ctx_not_terminated(void **state)
{
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    titan_client_opts o;
    titan_client_opts_init(&o);
    o.zmq_ctx = ctx;
    titan_client *c1 = titan_client_new("tcp://127.0.0.1:5555", &o);
    titan_client *c2 = titan_client_new("ipc:///tmp/titan-nothing-here", &o);
    assert_non_null(c1);
    assert_non_null(c2);
    titan_client_destroy(&c1);
    titan_client_destroy(&c2);
    void *s = zmq_socket(ctx, ZMQ_PAIR);
    assert_non_null(s);
    zmq_close(s);
    assert_int_equal(zmq_ctx_term(ctx), 0);
}

static void test_invalid_arguments(void **state)
{
    titan_client_opts o = {.timeout_ms = 50, .retries = 0};
    titan_client *c = titan_client_new("tcp://127.0.0.1:5555", &o);
    assert_non_null(c);
    titan_reply *r = NULL;
    titan_frame fr = {NULL, 8};
    float a[4] = {0}, b[4] = {0};
    void *out = NULL;
    titan_gpu_info gi;

    assert_int_equal(titan_client_call(NULL, "{}", NULL, 0, &r), -EINVAL);
    assert_int_equal(titan_client_call(c, NULL, NULL, 0, &r), -EINVAL);
    assert_string_equal(titan_client_last_code(c), "local");
    assert_int_equal(titan_client_call(c, "", NULL, 0, &r), -EINVAL);
    assert_int_equal(titan_client_call(c, "{}", NULL, 0, NULL), -EINVAL);
    assert_int_equal(titan_client_call(c, "{}", NULL, 1, &r), -EINVAL);
    assert_int_equal(titan_client_call(c, "{}", &fr, 1, &r), -EINVAL);
    assert_null(r);

    assert_int_equal(titan_client_ping(NULL, NULL), -EINVAL);
    assert_int_equal(titan_client_gpu_info(NULL, &gi, NULL), -EINVAL);
    assert_int_equal(titan_client_gpu_info(c, NULL, NULL), -EINVAL);

    assert_int_equal(titan_client_matmul(NULL, TITAN_DTYPE_FLOAT32, 2, 2, 2, a, b, &out), -EINVAL);
    assert_int_equal(titan_client_matmul(c, TITAN_DTYPE_INVALID, 2, 2, 2, a, b, &out), -EINVAL);
    assert_int_equal(titan_client_matmul(c, (titan_dtype)99, 2, 2, 2, a, b, &out), -EINVAL);
    assert_int_equal(titan_client_matmul(c, TITAN_DTYPE_FLOAT32, 0, 2, 2, a, b, &out), -EINVAL);
    assert_int_equal(titan_client_matmul(c, TITAN_DTYPE_FLOAT32, 2, 0, 2, a, b, &out), -EINVAL);
    assert_int_equal(titan_client_matmul(c, TITAN_DTYPE_FLOAT32, 2, 2, 0, a, b, &out), -EINVAL);
    assert_int_equal(titan_client_matmul(c, TITAN_DTYPE_FLOAT32, 2, 2, 2, NULL, b, &out), -EINVAL);
    assert_int_equal(titan_client_matmul(c, TITAN_DTYPE_FLOAT32, 2, 2, 2, a, NULL, &out), -EINVAL);
    assert_int_equal(titan_client_matmul(c, TITAN_DTYPE_FLOAT32, 2, 2, 2, a, b, NULL), -EINVAL);
    assert_int_equal(titan_client_matmul(c, TITAN_DTYPE_FLOAT32, (size_t)INT64_MAX + 1, 2, 2, a, b, &out),
                     -EINVAL);
    /* Sizes whose byte counts overflow are refused before anything is sent. */
    assert_int_equal(titan_client_matmul(c, TITAN_DTYPE_FLOAT64, (size_t)1 << 31, (size_t)1 << 31, 2, a, b, &out),
                     -EOVERFLOW);
    assert_null(out);

    /* Accessors take NULL. */
    assert_string_equal(titan_client_last_error(NULL), "");
    assert_string_equal(titan_client_last_code(NULL), "");
    assert_int_equal(titan_client_last_retries(NULL), 0);
    titan_client_destroy(&c);
}

static void test_reply_null_safe(void **state)
{
    titan_reply *r = NULL;
    size_t size = 77;
    titan_reply_destroy(NULL);
    titan_reply_destroy(&r);
    assert_null(r);
    assert_null(titan_reply_header(NULL));
    assert_int_equal(titan_reply_frame_count(NULL), 0);
    assert_null(titan_reply_frame(NULL, 0, &size));
    assert_int_equal(size, 77);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_opts_defaults),
        cmocka_unit_test(test_new_with_null_opts_and_destroy),
        cmocka_unit_test(test_bad_endpoint),
        cmocka_unit_test(test_bad_opts),
        cmocka_unit_test(test_timeout_closed_port),
        cmocka_unit_test(test_timeout_no_retries),
        cmocka_unit_test(test_shared_ctx_not_terminated),
        cmocka_unit_test(test_invalid_arguments),
        cmocka_unit_test(test_reply_null_safe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
