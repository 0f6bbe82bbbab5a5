/* test_client_local.c - cmocka tests of the libtitan client that need no worker: argument checks,
 * timeouts against a closed port, and reply handling against a scripted in-process fake worker. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
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
    assert_null(o.server_key);
    assert_null(o.public_key);
    assert_null(o.secret_key);
    assert_int_equal(o.heartbeat_ms, 5000);
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
    const char *bad[] = {"",
                         "not-an-endpoint",
                         "tcp://",
                         "tcp://127.0.0.1",
                         "tcp://127.0.0.1:notaport",
                         "bogus://127.0.0.1:5555",
                         "tcp://127.0.0.1:99999",
                         "tcp://127.0.0.1:0",
                         "tcp://127.0.0.1:*",
                         "tcp://127.0.0.1:-1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        titan_client *c = titan_client_new(bad[i], NULL);
        if (c) fail_msg("endpoint \"%s\" was accepted", bad[i]);
        assert_int_equal(errno, EINVAL);
    }
    const char *good[] = {"tcp://localhost:5555", "tcp://[::1]:5555", "ipc:///tmp/titan.sock",
                          "inproc://titan"};
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
    assert_int_equal(
        titan_client_matmul(c, TITAN_DTYPE_FLOAT64, (size_t)1 << 31, (size_t)1 << 31, 2, a, b, &out),
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

/* --- a scripted fake worker: a ROUTER socket in a thread that answers each request with the
 * next canned reply (the frames that follow the client's identity), after an optional delay --- */

typedef struct {
    int delay_ms;
    int nframes;
    struct {
        const void *data;
        size_t size;
    } frames[70];
} canned_reply;

typedef struct {
    void *ctx;
    void *router;
    char endpoint[128];
    pthread_t thread;
    atomic_int stop;
    const canned_reply *script;
    int nscript;
    pthread_mutex_t lock; /* guards what the server records below */
    int served;
    char last_header[512];
    size_t last_frame_sizes[4];
    int last_nframes;
} fake_worker;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Thread body: receives [identity, "", header, frames...] and sends [identity, canned frames]. */
static void *fake_run(void *arg)
{
    fake_worker *f = arg;
    while (!atomic_load(&f->stop)) {
        zmq_pollitem_t it = {.socket = f->router, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 20) <= 0) continue;
        zmq_msg_t id, part;
        zmq_msg_init(&id);
        zmq_msg_recv(&id, f->router, 0);
        pthread_mutex_lock(&f->lock);
        f->last_nframes = 0;
        /* Parts after the identity: 0 the delimiter, 1 the header, 2.. binary frames. */
        for (int idx = 0, more = zmq_msg_more(&id); more; idx++) {
            zmq_msg_init(&part);
            zmq_msg_recv(&part, f->router, 0);
            if (idx == 1) {
                size_t n = zmq_msg_size(&part) < sizeof f->last_header - 1 ? zmq_msg_size(&part)
                                                                           : sizeof f->last_header - 1;
                memcpy(f->last_header, zmq_msg_data(&part), n);
                f->last_header[n] = '\0';
            } else if (idx > 1 && idx - 2 < 4) {
                f->last_frame_sizes[idx - 2] = zmq_msg_size(&part);
                f->last_nframes = idx - 1;
            }
            more = zmq_msg_more(&part);
            zmq_msg_close(&part);
        }
        int k = f->served++;
        pthread_mutex_unlock(&f->lock);
        if (k >= f->nscript) {
            zmq_msg_close(&id);
            continue;
        }
        const canned_reply *r = &f->script[k];
        if (r->delay_ms) sleep_ms(r->delay_ms);
        zmq_msg_send(&id, f->router, r->nframes ? ZMQ_SNDMORE : 0);
        for (int i = 0; i < r->nframes; i++)
            zmq_send(f->router, r->frames[i].data, r->frames[i].size, i + 1 < r->nframes ? ZMQ_SNDMORE : 0);
    }
    return NULL;
}

/* Starts a fake worker on an ephemeral loopback port that plays `script` in order; a CURVE
 * server (admitting any client key) when `curve_secret` (Z85) is not NULL. */
static void fake_start_curve(fake_worker *f, const canned_reply *script, int nscript,
                             const char *curve_secret)
{
    memset(f, 0, sizeof *f);
    f->script = script;
    f->nscript = nscript;
    pthread_mutex_init(&f->lock, NULL);
    f->ctx = zmq_ctx_new();
    assert_non_null(f->ctx);
    f->router = zmq_socket(f->ctx, ZMQ_ROUTER);
    assert_non_null(f->router);
    int linger = 0;
    zmq_setsockopt(f->router, ZMQ_LINGER, &linger, sizeof linger);
    if (curve_secret) {
        int on = 1;
        assert_int_equal(zmq_setsockopt(f->router, ZMQ_CURVE_SERVER, &on, sizeof on), 0);
        assert_int_equal(zmq_setsockopt(f->router, ZMQ_CURVE_SECRETKEY, curve_secret, 41), 0);
    }
    assert_int_equal(zmq_bind(f->router, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof f->endpoint;
    assert_int_equal(zmq_getsockopt(f->router, ZMQ_LAST_ENDPOINT, f->endpoint, &len), 0);
    assert_int_equal(pthread_create(&f->thread, NULL, fake_run, f), 0);
}

static void fake_start(fake_worker *f, const canned_reply *script, int nscript)
{
    fake_start_curve(f, script, nscript, NULL);
}

static void fake_stop(fake_worker *f)
{
    atomic_store(&f->stop, 1);
    pthread_join(f->thread, NULL);
    zmq_close(f->router);
    zmq_ctx_term(f->ctx);
    pthread_mutex_destroy(&f->lock);
}

#define TXT(s)                                                                                               \
    {                                                                                                        \
        s, sizeof(s) - 1                                                                                     \
    }

static const float g_c22[4] = {19, 22, 43, 50};

static const canned_reply g_script[] = {
    /* 0 */ {0, 2, {TXT(""), TXT("{\"status\":\"ok\",\"gpu\":\"Fake GPU\"}")}},
    /* 1 */ {0, 2, {TXT(""), TXT("{\"error\":\"worker busy: 4 requests running\",\"code\":\"busy\"}")}},
    /* 2 */ {0, 2, {TXT(""), TXT("this is not json")}},
    /* 3 */ {0, 1, {TXT("{\"status\":\"ok\",\"gpu\":\"no delimiter\"}")}},
    /* 4 */ {0, 2, {TXT(""), TXT("{\"status\":\"ok\",\"gpu\":\"after\"}")}},
    /* 5 */
    {0,
     2,
     {TXT(""), TXT("{\"name\":\"Fake GPU\",\"total_memory_gb\":12,\"multi_processor_count\":24,"
                   "\"cuda_capability\":null,\"backend\":\"cpu\"}")}},
    /* 6 */ {0, 2, {TXT(""), TXT("{\"total_memory_gb\":12,\"multi_processor_count\":24}")}},
    /* 7 */
    {0,
     3,
     {TXT(""),
      TXT("{\"result\":{\"dtype\":\"float32\",\"shape\":[2,2],\"frame\":1}}"),
      {g_c22, sizeof g_c22}}},
    /* 8 */
    {0, 3, {TXT(""), TXT("{\"result\":{\"dtype\":\"float32\",\"shape\":[2,2],\"frame\":1}}"), {g_c22, 12}}},
    /* 9 */
    {0,
     3,
     {TXT(""),
      TXT("{\"result\":{\"dtype\":\"float32\",\"shape\":[1,4],\"frame\":1}}"),
      {g_c22, sizeof g_c22}}},
    /* 10 */
    {0,
     3,
     {TXT(""),
      TXT("{\"result\":{\"dtype\":\"float64\",\"shape\":[2,2],\"frame\":1}}"),
      {g_c22, sizeof g_c22}}},
    /* 11 */ {0, 2, {TXT(""), TXT("{\"result\":[[19,22],[43,50]]}")}},
    /* 12 */ {0, 2, {TXT(""), TXT("{\"error\":\"something odd\"}")}},
    /* 13 */ {0, 4, {TXT(""), TXT("{\"anything\":1}"), TXT("abc"), TXT("")}},
    /* 14 */ {0, 2, {TXT(""), TXT("[1,2,3]")}},
};

/* Replies of every shape reach the caller as documented: results, worker errors, malformed replies. */
static void test_fake_worker_replies(void **state)
{
    static fake_worker f;
    fake_start(&f, g_script, (int)(sizeof g_script / sizeof g_script[0]));
    titan_client_opts o = {.timeout_ms = 5000, .retries = 0};
    titan_client *c = titan_client_new(f.endpoint, &o);
    assert_non_null(c);
    char *dev = NULL;

    assert_int_equal(titan_client_ping(c, &dev), 0); /* 0 */
    assert_string_equal(dev, "Fake GPU");
    free(dev);
    dev = NULL;
    pthread_mutex_lock(&f.lock);
    assert_string_equal(f.last_header, "{\"op\":\"ping\"}");
    pthread_mutex_unlock(&f.lock);

    assert_int_equal(titan_client_ping(c, &dev), -EREMOTEIO); /* 1 */
    assert_null(dev);
    assert_string_equal(titan_client_last_code(c), "busy");
    assert_string_equal(titan_client_last_error(c), "worker busy: 4 requests running");

    assert_int_equal(titan_client_ping(c, &dev), -EPROTO); /* 2 */
    assert_string_equal(titan_client_last_code(c), "protocol");
    assert_int_equal(titan_client_ping(c, &dev), -EPROTO); /* 3 */
    assert_string_equal(titan_client_last_code(c), "protocol");
    assert_null(dev);
    /* After a malformed reply the client goes on with a fresh socket. */
    assert_int_equal(titan_client_ping(c, &dev), 0); /* 4 */
    assert_string_equal(dev, "after");
    assert_string_equal(titan_client_last_code(c), "");
    free(dev);

    titan_gpu_info gi;
    char *raw = NULL;
    assert_int_equal(titan_client_gpu_info(c, &gi, &raw), 0); /* 5 */
    assert_string_equal(gi.name, "Fake GPU");
    assert_string_equal(gi.backend, "cpu");
    assert_true(gi.total_memory_gb == 12.0);
    assert_int_equal(gi.multi_processor_count, 24);
    assert_string_equal(gi.cuda_capability, "");
    assert_non_null(strstr(raw, "\"Fake GPU\""));
    free(raw);
    raw = NULL;
    memset(&gi, 0x5a, sizeof gi);
    assert_int_equal(titan_client_gpu_info(c, &gi, &raw), -EPROTO); /* 6 */
    assert_null(raw);
    assert_int_equal((unsigned char)gi.name[0], 0x5a); /* untouched on failure */

    float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
    void *out = NULL;
    assert_int_equal(titan_client_matmul(c, TITAN_DTYPE_FLOAT32, 2, 2, 2, a, b, &out), 0); /* 7 */
    assert_non_null(out);
    assert_memory_equal(out, g_c22, sizeof g_c22);
    free(out);
    pthread_mutex_lock(&f.lock);
    assert_string_equal(f.last_header,
                        "{\"op\":\"matrix_multiply\",\"a\":{\"dtype\":\"float32\",\"shape\":[2,2],"
                        "\"frame\":1},\"b\":{\"dtype\":\"float32\",\"shape\":[2,2],\"frame\":2}}");
    assert_int_equal(f.last_nframes, 2);
    assert_int_equal(f.last_frame_sizes[0], 16);
    assert_int_equal(f.last_frame_sizes[1], 16);
    pthread_mutex_unlock(&f.lock);

    float mine[4] = {-1, -1, -1, -1};
    void *pmine = mine;
    for (int i = 8; i <= 11; i++) { /* wrong size, shape, dtype; JSON result */
        out = NULL;
        assert_int_equal(titan_client_matmul(c, TITAN_DTYPE_FLOAT32, 2, 2, 2, a, b, i == 9 ? &pmine : &out),
                         -EPROTO);
        assert_null(out);
        assert_string_equal(titan_client_last_code(c), "protocol");
    }
    assert_true(pmine == mine && mine[0] == -1 && mine[3] == -1);

    assert_int_equal(titan_client_ping(c, NULL), -EREMOTEIO); /* 12: an error without a code */
    assert_string_equal(titan_client_last_code(c), "remote");
    assert_string_equal(titan_client_last_error(c), "something odd");

    titan_reply *r = NULL;
    titan_frame fr[2] = {{"xy", 2}, {NULL, 0}};
    assert_int_equal(titan_client_call(c, "{\"op\":\"anything\"}", fr, 2, &r), 0); /* 13 */
    assert_string_equal(titan_reply_header(r), "{\"anything\":1}");
    assert_int_equal(titan_reply_frame_count(r), 2);
    size_t size = 99;
    const void *d = titan_reply_frame(r, 0, &size);
    assert_int_equal(size, 3);
    assert_memory_equal(d, "abc", 3);
    assert_non_null(titan_reply_frame(r, 1, &size));
    assert_int_equal(size, 0);
    size = 99;
    assert_null(titan_reply_frame(r, 2, &size));
    assert_int_equal(size, 99);
    titan_reply_destroy(&r);
    assert_null(r);
    pthread_mutex_lock(&f.lock);
    assert_int_equal(f.last_nframes, 2);
    assert_int_equal(f.last_frame_sizes[0], 2);
    assert_int_equal(f.last_frame_sizes[1], 0);
    pthread_mutex_unlock(&f.lock);

    assert_int_equal(titan_client_ping(c, NULL), -EPROTO); /* 14: JSON, but not an object */

    titan_client_destroy(&c);
    fake_stop(&f);
}

static const canned_reply g_late_script[] = {
    {400, 2, {TXT(""), TXT("{\"status\":\"ok\",\"gpu\":\"late\"}")}},
    {0, 2, {TXT(""), TXT("{\"status\":\"ok\",\"gpu\":\"retried\"}")}},
    {400, 2, {TXT(""), TXT("{\"status\":\"ok\",\"gpu\":\"stale\"}")}},
    {0, 2, {TXT(""), TXT("{\"status\":\"ok\",\"gpu\":\"fresh\"}")}},
};

/* Replies with many frames keep them all, in order; more than the client's cap is a protocol error. */
static void test_many_frames(void **state)
{
    static canned_reply script[2];
    static const char digits[] = "0123456789";
    static fake_worker f;
    memset(script, 0, sizeof script);
    for (int k = 0; k < 2; k++) {
        script[k].nframes = k == 0 ? 2 + 10 : 2 + 65;
        script[k].frames[0].data = "";
        script[k].frames[1].data = "{\"many\":true}";
        script[k].frames[1].size = 13;
        for (int i = 2; i < script[k].nframes; i++) {
            script[k].frames[i].data = digits;
            script[k].frames[i].size = (size_t)(i - 2) % 10 + 1;
        }
    }
    fake_start(&f, script, 2);
    titan_client_opts o = {.timeout_ms = 5000, .retries = 0};
    titan_client *c = titan_client_new(f.endpoint, &o);
    assert_non_null(c);
    titan_reply *r = NULL;
    assert_int_equal(titan_client_call(c, "{\"op\":\"many\"}", NULL, 0, &r), 0);
    assert_int_equal(titan_reply_frame_count(r), 10);
    for (size_t i = 0; i < 10; i++) {
        size_t size = 0;
        const void *d = titan_reply_frame(r, i, &size);
        assert_int_equal(size, i + 1);
        assert_memory_equal(d, digits, size);
    }
    titan_reply_destroy(&r);
    assert_int_equal(titan_client_call(c, "{\"op\":\"many\"}", NULL, 0, &r), -EPROTO);
    assert_null(r);
    assert_string_equal(titan_client_last_code(c), "protocol");
    titan_client_destroy(&c);
    fake_stop(&f);
}

/* A slow answer is retried on a fresh socket, and a reply that comes after its call gave
 * up never reaches a later call. */
static void test_late_and_stale_replies(void **state)
{
    static fake_worker f;
    fake_start(&f, g_late_script, 4);
    titan_client_opts o = {.timeout_ms = 300, .retries = 1};
    titan_client *c = titan_client_new(f.endpoint, &o);
    assert_non_null(c);
    char *dev = NULL;
    assert_int_equal(titan_client_ping(c, &dev), 0);
    assert_string_equal(dev, "retried");
    assert_int_equal(titan_client_last_retries(c), 1);
    free(dev);
    titan_client_destroy(&c);

    o.retries = 0;
    c = titan_client_new(f.endpoint, &o);
    assert_non_null(c);
    dev = NULL;
    assert_int_equal(titan_client_ping(c, &dev), -ETIMEDOUT);
    sleep_ms(500); /* the fake worker has now sent "stale" for the abandoned request */
    assert_int_equal(titan_client_ping(c, &dev), 0);
    assert_string_equal(dev, "fresh");
    free(dev);
    titan_client_destroy(&c);
    fake_stop(&f);
}

/* Returns a client for `ep` with the given CURVE settings, or NULL with errno. */
static titan_client *curve_client(const char *ep, const char *server, const char *pub, const char *sec,
                                  int hb)
{
    titan_client_opts o;
    titan_client_opts_init(&o);
    o.timeout_ms = 300;
    o.retries = 0;
    o.server_key = server;
    o.public_key = pub;
    o.secret_key = sec;
    o.heartbeat_ms = hb;
    errno = 0;
    return titan_client_new(ep, &o);
}

/* Keys must be 40 valid Z85 characters, given consistently; bad ones fail early with EINVAL. */
static void test_curve_key_validation(void **state)
{
    const char *ep = "tcp://127.0.0.1:5555";
    char srv_pub[41], srv_sec[41], pub[41], sec[41], other_pub[41], other_sec[41];
    assert_int_equal(zmq_curve_keypair(srv_pub, srv_sec), 0);
    assert_int_equal(zmq_curve_keypair(pub, sec), 0);
    assert_int_equal(zmq_curve_keypair(other_pub, other_sec), 0);
    char short_key[41], bad_char[41];
    snprintf(short_key, sizeof short_key, "%.39s", srv_pub);
    snprintf(bad_char, sizeof bad_char, "%s", srv_pub);
    bad_char[7] = '~'; /* not in the Z85 alphabet */
    const struct {
        const char *server, *pub, *sec;
        int hb;
    } bad[] = {
        {short_key, NULL, NULL, 0},  {bad_char, NULL, NULL, 0},    {"", NULL, NULL, 0},
        {NULL, pub, sec, 0},         {NULL, pub, NULL, 0},         {srv_pub, pub, NULL, 0},
        {srv_pub, NULL, sec, 0},     {srv_pub, other_pub, sec, 0}, {srv_pub, pub, short_key, 0},
        {srv_pub, bad_char, sec, 0}, {NULL, NULL, NULL, -1},       {NULL, NULL, NULL, 3600001},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        titan_client *c = curve_client(ep, bad[i].server, bad[i].pub, bad[i].sec, bad[i].hb);
        if (c) fail_msg("case %zu was accepted", i);
        assert_int_equal(errno, EINVAL);
    }
    titan_client *c = curve_client(ep, srv_pub, NULL, NULL, 0); /* an ephemeral pair */
    assert_non_null(c);
    titan_client_destroy(&c);
    c = curve_client(ep, srv_pub, pub, sec, 1000);
    assert_non_null(c);
    titan_client_destroy(&c);
}

static const canned_reply g_pong[] = {
    {0, 2, {TXT(""), TXT("{\"status\":\"ok\",\"gpu\":\"Curve GPU\"}")}},
    {0, 2, {TXT(""), TXT("{\"status\":\"ok\",\"gpu\":\"Curve GPU\"}")}},
};

/* Against a CURVE server: the right server key is answered (ephemeral or given client keys);
 * no key or the wrong one gets a timeout whose message mentions a refused key. */
static void test_curve_round_trip(void **state)
{
    char srv_pub[41], srv_sec[41], pub[41], sec[41], wrong[41], wrong_sec[41];
    assert_int_equal(zmq_curve_keypair(srv_pub, srv_sec), 0);
    assert_int_equal(zmq_curve_keypair(pub, sec), 0);
    assert_int_equal(zmq_curve_keypair(wrong, wrong_sec), 0);
    static fake_worker f;
    fake_start_curve(&f, g_pong, 2, srv_sec);
    char *dev = NULL;

    titan_client *c = curve_client(f.endpoint, srv_pub, NULL, NULL, 0);
    assert_non_null(c);
    assert_int_equal(titan_client_ping(c, &dev), 0);
    assert_string_equal(dev, "Curve GPU");
    free(dev);
    titan_client_destroy(&c);

    c = curve_client(f.endpoint, srv_pub, pub, sec, 100);
    assert_non_null(c);
    assert_int_equal(titan_client_ping(c, NULL), 0);
    titan_client_destroy(&c);

    c = curve_client(f.endpoint, NULL, NULL, NULL, 0);
    assert_non_null(c);
    assert_int_equal(titan_client_ping(c, NULL), -ETIMEDOUT);
    assert_null(strstr(titan_client_last_error(c), "refused"));
    titan_client_destroy(&c);

    c = curve_client(f.endpoint, wrong, NULL, NULL, 0);
    assert_non_null(c);
    assert_int_equal(titan_client_ping(c, NULL), -ETIMEDOUT);
    assert_non_null(strstr(titan_client_last_error(c), "refused"));
    titan_client_destroy(&c);

    pthread_mutex_lock(&f.lock);
    assert_int_equal(f.served, 2);
    pthread_mutex_unlock(&f.lock);
    fake_stop(&f);
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
        cmocka_unit_test(test_fake_worker_replies),
        cmocka_unit_test(test_many_frames),
        cmocka_unit_test(test_late_and_stale_replies),
        cmocka_unit_test(test_curve_key_validation),
        cmocka_unit_test(test_curve_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
