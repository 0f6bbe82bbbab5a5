/* test_redis.c - cmocka tests of the one Redis module (src/lib/redis.c): URLs, key layout, scripts'
 * call arguments, error mapping, and AUTH/SELECT against a fake server on a socketpair. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <cmocka.h>

#include "redis.h"

/* ---- URLs ---- */

static titan_redis_url s_parse_ok(const char *url)
{
    titan_redis_url u;
    char why[512] = "untouched";
    int rc = titan_redis_url_parse(url, &u, why, sizeof why);
    if (rc != 0) fail_msg("%s: %s", url, why);
    return u;
}

/* Parses a bad url: -EINVAL, why holds `words`, never `secret`, and the output is left alone. */
static void s_parse_bad(const char *url, const char *words, const char *secret)
{
    titan_redis_url u;
    memset(&u, 0x5a, sizeof u);
    char why[512] = "";
    int rc = titan_redis_url_parse(url, &u, why, sizeof why);
    if (rc != -EINVAL) fail_msg("%s: accepted (rc %d)", url ? url : "(null)", rc);
    if (!strstr(why, words)) fail_msg("%s: '%s' lacks '%s'", url ? url : "(null)", why, words);
    if (secret && strstr(why, secret)) fail_msg("%s: '%s' shows the secret", url, why);
    for (size_t i = 0; i < sizeof u; i++)
        if (((unsigned char *)&u)[i] != 0x5a) fail_msg("%s: the output was written on failure", url);
}

static void test_url_plain(void **state)
{
    (void)state;
    titan_redis_url u = s_parse_ok("redis://127.0.0.1");
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    assert_string_equal(u.user, "");
    assert_string_equal(u.password, "");
    u = s_parse_ok("REDIS://cache-1.example_net:6380/7");
    assert_string_equal(u.host, "cache-1.example_net");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 7);
    u = s_parse_ok("redis://h:65535/");
    assert_int_equal(u.port, 65535);
    assert_int_equal(u.db, 0);
    u = s_parse_ok("redis://h/1000000");
    assert_int_equal(u.db, 1000000);
    u = s_parse_ok("redis://[::1]:6390/3");
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 6390);
    assert_int_equal(u.db, 3);
    u = s_parse_ok("redis://[fe80::1:2]");
    assert_string_equal(u.host, "fe80::1:2");
    assert_int_equal(u.port, 6379);
}

static void test_url_auth(void **state)
{
    (void)state;
    titan_redis_url u = s_parse_ok("redis://:pass@host:6380/2");
    assert_string_equal(u.user, "");
    assert_string_equal(u.password, "pass");
    assert_string_equal(u.host, "host");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 2);
    u = s_parse_ok("redis://user:pass@host");
    assert_string_equal(u.user, "user");
    assert_string_equal(u.password, "pass");
    /* %XX escapes in both; the last '@' ends the credentials, and ':' after the first is the password's */
    u = s_parse_ok("redis://ad%6Din:p%40ss%25@[::1]:1/3");
    assert_string_equal(u.user, "admin");
    assert_string_equal(u.password, "p@ss%");
    assert_string_equal(u.host, "::1");
    u = s_parse_ok("redis://default:s3cr@t:x@h");
    assert_string_equal(u.user, "default");
    assert_string_equal(u.password, "s3cr@t:x");
    char pw[TITAN_REDIS_MAX_CRED + 32];
    memset(pw, 'p', TITAN_REDIS_MAX_CRED);
    pw[TITAN_REDIS_MAX_CRED] = '\0';
    char url[sizeof pw + 64];
    snprintf(url, sizeof url, "redis://:%s@h", pw);
    u = s_parse_ok(url);
    assert_int_equal(strlen(u.password), TITAN_REDIS_MAX_CRED);
    titan_redis_url_wipe(&u);
    assert_string_equal(u.password, "");
    assert_string_equal(u.user, "");
}

static void test_url_refused(void **state)
{
    (void)state;
    s_parse_bad(NULL, "empty", NULL);
    s_parse_bad("", "empty", NULL);
    s_parse_bad("http://127.0.0.1:6379", "must start with redis://", NULL);
    s_parse_bad("redis//oops", "must start with redis://", NULL);
    s_parse_bad("rediss://:hunter2@h:6380", "TLS (rediss://) is not supported", "hunter2");
    s_parse_bad("unix:///run/redis.sock", "Unix sockets are not supported", NULL);
    s_parse_bad("redis+unix:///run/redis.sock", "Unix sockets are not supported", NULL);
    s_parse_bad("redis://h:6379?db=1", "query strings and fragments", NULL);
    s_parse_bad("redis://h/1#x", "query strings and fragments", NULL);
    s_parse_bad("redis://", "has no host", NULL);
    s_parse_bad("redis://:pw", "has no host", NULL);
    s_parse_bad("redis://:6379", "has no host", NULL);
    s_parse_bad("redis://h:0", "port must be a number from 1 to 65535", NULL);
    s_parse_bad("redis://h:65536", "port must be a number from 1 to 65535", NULL);
    s_parse_bad("redis://h:", "port must be a number from 1 to 65535", NULL);
    s_parse_bad("redis://h:63a", "port must be a number from 1 to 65535", NULL);
    s_parse_bad("redis://h:-1", "port must be a number from 1 to 65535", NULL);
    s_parse_bad("redis://h/x", "database after '/' must be a number", NULL);
    s_parse_bad("redis://h/1000001", "database after '/' must be a number", NULL);
    s_parse_bad("redis://h/1/2", "database after '/' must be a number", NULL);
    s_parse_bad("redis://ho st:1", "character ' '", NULL);
    s_parse_bad("redis://h!:1", "character '!'", NULL);
    s_parse_bad("redis://[::1:6379", "lacks its ']'", NULL);
    s_parse_bad("redis://[::1]6379", "expected ':PORT' after the IPv6 address", NULL);
    s_parse_bad("redis://[nohost]:1", "is not an IPv6 address", NULL);
    /* credentials: masked in every message */
    s_parse_bad("redis://hunter2@h", "the part before '@' must be ':PASSWORD' or 'USER:PASSWORD'", "hunter2");
    s_parse_bad("redis://:@h", "the password is empty", NULL);
    s_parse_bad("redis://user:@h", "the password is empty", NULL);
    s_parse_bad("redis://:hunter2@127.0.0.1:0", "'redis://***@127.0.0.1:0'", "hunter2");
    s_parse_bad("redis://:a%zzhunter2@h", "bad %XX escape", "hunter2");
    s_parse_bad("redis://:hunter2%4@h", "bad %XX escape", "hunter2");
    s_parse_bad("redis://:hunter2%00@h", "%00 is not allowed", "hunter2");
    s_parse_bad("redis://us%zer:hunter2@h", "the user name has a bad %XX escape", "hunter2");
    char pw[TITAN_REDIS_MAX_CRED + 32];
    memset(pw, 'p', TITAN_REDIS_MAX_CRED + 1);
    pw[TITAN_REDIS_MAX_CRED + 1] = '\0';
    char url[sizeof pw + 64];
    snprintf(url, sizeof url, "redis://:%s@h", pw);
    s_parse_bad(url, "the password is longer than 1024 bytes", NULL);
    char host[TITAN_REDIS_MAX_HOST + 8];
    memset(host, 'a', TITAN_REDIS_MAX_HOST + 1);
    host[TITAN_REDIS_MAX_HOST + 1] = '\0';
    snprintf(url, sizeof url, "redis://%s", host);
    s_parse_bad(url, "the host is longer than 253 characters", NULL);
    /* a NULL or zero-sized why is allowed */
    titan_redis_url u;
    assert_int_equal(titan_redis_url_parse("http://x", &u, NULL, 0), -EINVAL);
    char small[8];
    assert_int_equal(titan_redis_url_parse("http://x", &u, small, sizeof small), -EINVAL);
    assert_int_equal(strlen(small), sizeof small - 1);
}

static void test_url_password_name_redact(void **state)
{
    (void)state;
    titan_redis_url u = s_parse_ok("redis://user:old@[::1]:7000/4");
    assert_int_equal(titan_redis_url_set_password(&u, ""), -EINVAL);
    assert_int_equal(titan_redis_url_set_password(&u, NULL), -EINVAL);
    char big[TITAN_REDIS_MAX_CRED + 2];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(titan_redis_url_set_password(&u, big), -EINVAL);
    assert_string_equal(u.password, "old");
    assert_int_equal(titan_redis_url_set_password(&u, "new"), 0);
    assert_string_equal(u.password, "new");
    assert_string_equal(u.user, "user");
    char buf[128];
    titan_redis_url_name(&u, buf, sizeof buf);
    assert_string_equal(buf, "redis://[::1]:7000/4");
    u = s_parse_ok("redis://:pw@10.0.0.1");
    titan_redis_url_name(&u, buf, sizeof buf);
    assert_string_equal(buf, "redis://10.0.0.1:6379/0");

    titan_redis_url_redact("redis://:pw@h:1/2", false, buf, sizeof buf);
    assert_string_equal(buf, "redis://***@h:1/2");
    titan_redis_url_redact("redis://user:pw@h:1/2", false, buf, sizeof buf);
    assert_string_equal(buf, "redis://***@h:1/2");
    titan_redis_url_redact("redis://:pw@h:1/2", true, buf, sizeof buf);
    assert_string_equal(buf, "redis://:***@h:1/2");
    titan_redis_url_redact("redis://user:pw@h:1/2", true, buf, sizeof buf);
    assert_string_equal(buf, "redis://user:***@h:1/2");
    titan_redis_url_redact("redis://h:1/2", true, buf, sizeof buf);
    assert_string_equal(buf, "redis://h:1/2");
    /* a password holding a '/' (unescaped): the malformed URL's message masks it all the same */
    titan_redis_url_redact("redis://:pa/ss@h", false, buf, sizeof buf);
    assert_string_equal(buf, "redis://***@h");
    titan_redis_url_redact(NULL, false, buf, sizeof buf);
    assert_string_equal(buf, "");
}

/* ---- keys ---- */

static void test_keys(void **state)
{
    (void)state;
    char k[128];
    assert_int_equal(titan_redis_key(k, sizeof k, "titan", TITAN_REDIS_KEY_QUEUE, NULL), 12);
    assert_string_equal(k, "{titan}:jobs");
    titan_redis_key(k, sizeof k, "titan", TITAN_REDIS_KEY_QUEUE_HIGH, "ignored");
    assert_string_equal(k, "{titan}:jobs:high");
    titan_redis_key(k, sizeof k, "p6", TITAN_REDIS_KEY_DEAD, NULL);
    assert_string_equal(k, "{p6}:dead");
    titan_redis_key(k, sizeof k, "p6", TITAN_REDIS_KEY_INDEX, NULL);
    assert_string_equal(k, "{p6}:index");
    titan_redis_key(k, sizeof k, "t-a", TITAN_REDIS_KEY_JOB, "0123abcd");
    assert_string_equal(k, "{t-a}:job:0123abcd");
    titan_redis_key(k, sizeof k, "t-a", TITAN_REDIS_KEY_IDEM, "my key");
    assert_string_equal(k, "{t-a}:idem:my key");
    char small[12];
    assert_int_equal(titan_redis_key(small, sizeof small, "titan", TITAN_REDIS_KEY_QUEUE_HIGH, NULL),
                     -ENAMETOOLONG);
    assert_string_equal(small, "");
    assert_int_equal(titan_redis_key(small, sizeof small, "titan", TITAN_REDIS_KEY_QUEUE, NULL),
                     -ENAMETOOLONG);
    char fits[13]; /* "{titan}:jobs" and its NUL */
    assert_int_equal(titan_redis_key(fits, sizeof fits, "titan", TITAN_REDIS_KEY_QUEUE, NULL), 12);

    assert_true(titan_redis_prefix_ok("titan"));
    assert_true(titan_redis_prefix_ok("a:b.c-d_e"));
    char p[TITAN_REDIS_MAX_PREFIX + 2];
    memset(p, 'p', sizeof p);
    p[TITAN_REDIS_MAX_PREFIX] = '\0';
    assert_true(titan_redis_prefix_ok(p));
    p[TITAN_REDIS_MAX_PREFIX] = 'p';
    p[TITAN_REDIS_MAX_PREFIX + 1] = '\0';
    assert_false(titan_redis_prefix_ok(p));
    assert_false(titan_redis_prefix_ok(""));
    assert_false(titan_redis_prefix_ok(NULL));
    assert_false(titan_redis_prefix_ok("a{b"));
    assert_false(titan_redis_prefix_ok("a}b"));
    assert_false(titan_redis_prefix_ok("a b"));
    assert_false(titan_redis_prefix_ok("a\tb"));
    assert_false(titan_redis_prefix_ok("a\x7f"));
}

/* ---- scripts ---- */

static void test_scripts(void **state)
{
    (void)state;
    for (int i = 0; i < TITAN_REDIS_NSCRIPTS; i++) {
        size_t len = 0;
        const char *t = titan_redis_script_text((titan_redis_script)i, &len);
        assert_non_null(t);
        assert_int_equal(strlen(t), len);
        assert_non_null(strstr(t, "redis.call"));
    }
    const char *argv[2];
    size_t lens[2];
    titan_redis_script_args(NULL, TITAN_REDIS_SCRIPT_SUBMIT, argv, lens);
    assert_string_equal(argv[0], "EVAL");
    assert_int_equal(lens[0], 4);
    assert_ptr_equal(argv[1], titan_redis_script_text(TITAN_REDIS_SCRIPT_SUBMIT, NULL));
    titan_redis_scripts s;
    memset(&s, 0, sizeof s);
    for (int i = 0; i < TITAN_REDIS_NSCRIPTS; i++)
        snprintf(s.sha[i], sizeof s.sha[i], "%040d", i);
    titan_redis_script_args(&s, TITAN_REDIS_SCRIPT_STORE, argv, lens);
    assert_string_equal(argv[0], "EVAL"); /* not loaded yet */
    s.loaded = true;
    titan_redis_script_args(&s, TITAN_REDIS_SCRIPT_STORE, argv, lens);
    assert_string_equal(argv[0], "EVALSHA");
    assert_string_equal(argv[1], s.sha[TITAN_REDIS_SCRIPT_STORE]);
    assert_int_equal(lens[0], 7);
    assert_int_equal(lens[1], 40);
    redisReply other = {.type = REDIS_REPLY_ERROR, .str = "ERR something", .len = 13};
    assert_false(titan_redis_scripts_missing(&s, &other));
    assert_true(s.loaded);
    redisReply ok = {.type = REDIS_REPLY_STRING, .str = "NOSCRIPT", .len = 8};
    assert_false(titan_redis_scripts_missing(&s, &ok));
    redisReply nos = {.type = REDIS_REPLY_ERROR, .str = "NOSCRIPT No matching script.", .len = 28};
    assert_true(titan_redis_scripts_missing(&s, &nos));
    assert_false(s.loaded);
    titan_redis_script_args(&s, TITAN_REDIS_SCRIPT_STORE, argv, NULL);
    assert_string_equal(argv[0], "EVAL");
}

/* ---- errors ---- */

static void test_reply_errors(void **state)
{
    (void)state;
    struct {
        const char *text;
        bool auth, unavailable;
    } cases[] = {
        {"NOAUTH Authentication required.", true, false},
        {"WRONGPASS invalid username-password pair or user is disabled.", true, false},
        {"NOPERM this user has no permissions", true, false},
        {"ERR AUTH <password> called without any password configured for the default user.", true, false},
        {"ERR invalid password", true, false},
        {"LOADING Redis is loading the dataset in memory", false, true},
        {"BUSY Redis is busy running a script.", false, true},
        {"MASTERDOWN Link with MASTER is down", false, true},
        {"ERR unknown command", false, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        redisReply r = {
            .type = REDIS_REPLY_ERROR, .str = (char *)cases[i].text, .len = strlen(cases[i].text)};
        assert_int_equal(titan_redis_reply_is_auth(&r), cases[i].auth);
        assert_int_equal(titan_redis_reply_is_unavailable(&r), cases[i].unavailable);
        assert_true(titan_redis_reply_is_error(&r, NULL));
    }
    redisReply s = {.type = REDIS_REPLY_STATUS, .str = "NOAUTH", .len = 6};
    assert_false(titan_redis_reply_is_auth(&s));
    assert_false(titan_redis_reply_is_error(&s, NULL));
    assert_false(titan_redis_reply_is_error(NULL, NULL));
    redisReply e = {
        .type = REDIS_REPLY_ERROR, .str = "BUSYGROUP Consumer Group name already exists", .len = 44};
    assert_true(titan_redis_reply_is_error(&e, "BUSYGROUP"));
    assert_false(titan_redis_reply_is_error(&e, "NOGROUP"));
    assert_false(titan_redis_reply_is_unavailable(&e)); /* "BUSY " only */
}

static void test_io_errors(void **state)
{
    (void)state;
    char why[256];
    assert_int_equal(titan_redis_io_error(NULL, 0, 100, why, sizeof why), -ENOMEM);
    redisContext c;
    memset(&c, 0, sizeof c);
    c.err = REDIS_ERR_IO;
    snprintf(c.errstr, sizeof c.errstr, "Resource temporarily unavailable");
    assert_int_equal(titan_redis_io_error(&c, EAGAIN, 300, why, sizeof why), -ETIMEDOUT);
    assert_string_equal(why, "no answer within 300 ms");
    snprintf(c.errstr, sizeof c.errstr, "Connection refused");
    assert_int_equal(titan_redis_io_error(&c, ECONNREFUSED, 300, why, sizeof why), -ECONNREFUSED);
    assert_string_equal(why, "Connection refused");
    assert_int_equal(titan_redis_io_error(&c, 0, 300, why, sizeof why), -ECONNRESET);
    c.err = REDIS_ERR_EOF;
    snprintf(c.errstr, sizeof c.errstr, "Server closed the connection");
    assert_int_equal(titan_redis_io_error(&c, 0, 300, why, sizeof why), -ECONNRESET);
    assert_string_equal(why, "Server closed the connection");
    c.err = REDIS_ERR_PROTOCOL;
    snprintf(c.errstr, sizeof c.errstr, "Protocol error, got \"H\" as reply type byte");
    assert_int_equal(titan_redis_io_error(&c, 0, 300, why, sizeof why), -EPROTO);
    assert_non_null(strstr(why, "(is that a Redis server?)"));
    c.err = REDIS_ERR_OTHER;
    snprintf(c.errstr, sizeof c.errstr, "Name or service not known (can't resolve)");
    assert_int_equal(titan_redis_io_error(&c, 0, 300, why, sizeof why), -EHOSTUNREACH);
    c.err = REDIS_ERR_OOM;
    assert_int_equal(titan_redis_io_error(&c, 0, 300, why, sizeof why), -ENOMEM);
}

/* ---- connections ---- */

static void test_connect_refused(void **state)
{
    (void)state;
    /* a port nobody listens on: bound, then closed */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &al), 0);
    close(s);
    char url[64], why[256];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", ntohs(a.sin_port));
    titan_redis_url u = s_parse_ok(url);
    titan_redis_timeouts t = {.connect_ms = 1000, .command_ms = 1000};
    redisContext *c = (redisContext *)0x1;
    assert_int_equal(titan_redis_connect(&u, &t, &c, why, sizeof why), -ECONNREFUSED);
    assert_ptr_equal(c, (redisContext *)0x1); /* untouched */
    assert_non_null(strstr(why, "refused"));
}

/* A fake Redis on one end of a socketpair: answers each command with the next canned reply ("": read
 * the command and hang up instead) and records what it read. */
typedef struct {
    int fd;
    const char *replies[4];
    char got[1024];
} s_fake;

static void *s_fake_main(void *arg)
{
    s_fake *f = arg;
    size_t off = 0;
    for (int i = 0; f->replies[i]; i++) {
        /* one command per reply: read until the request's last argument has arrived (RESP arrays) */
        ssize_t n = read(f->fd, f->got + off, sizeof f->got - 1 - off);
        if (n <= 0) break;
        off += (size_t)n;
        f->got[off] = '\0';
        if (!f->replies[i][0] || write(f->fd, f->replies[i], strlen(f->replies[i])) < 0) break;
    }
    shutdown(f->fd, SHUT_RDWR);
    return NULL;
}

/* Runs titan_redis_login for url against replies; returns its rc, why and what the fake read. */
static int s_login(const char *url, const char *r1, const char *r2, char *why, size_t cap, char *got,
                   size_t gotcap)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    s_fake f = {.fd = sv[1], .replies = {r1, r2, NULL}};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_fake_main, &f), 0);
    redisContext *c = redisConnectFd(sv[0]);
    assert_non_null(c);
    titan_redis_url u = s_parse_ok(url);
    int rc = titan_redis_login(c, &u, 2000, why, cap);
    redisFree(c); /* closes sv[0]: the fake's read ends */
    pthread_join(th, NULL);
    close(sv[1]);
    snprintf(got, gotcap, "%s", f.got);
    return rc;
}

static void test_login(void **state)
{
    (void)state;
    char why[512] = "", got[1024];
    /* nothing to do: no command at all */
    assert_int_equal(s_login("redis://h", "+OK\r\n", NULL, why, sizeof why, got, sizeof got), 0);
    assert_string_equal(got, "");
    /* AUTH with the password alone, then SELECT */
    assert_int_equal(s_login("redis://:p%40ss@h/5", "+OK\r\n", "+OK\r\n", why, sizeof why, got, sizeof got),
                     0);
    assert_non_null(strstr(got, "*2\r\n$4\r\nAUTH\r\n$4\r\np@ss\r\n"));
    assert_non_null(strstr(got, "*2\r\n$6\r\nSELECT\r\n$1\r\n5\r\n"));
    /* AUTH USER PASSWORD, refused */
    assert_int_equal(s_login("redis://admin:bad@h/5", "-WRONGPASS invalid username-password pair\r\n",
                             "+OK\r\n", why, sizeof why, got, sizeof got),
                     -EACCES);
    assert_non_null(strstr(got, "*3\r\n$4\r\nAUTH\r\n$5\r\nadmin\r\n$3\r\nbad\r\n"));
    assert_null(strstr(got, "SELECT"));
    assert_string_equal(why, "AUTH refused: WRONGPASS invalid username-password pair");
    /* SELECT refused */
    assert_int_equal(
        s_login("redis://h/99", "-ERR DB index is out of range\r\n", NULL, why, sizeof why, got, sizeof got),
        -EPROTO);
    assert_string_equal(why, "SELECT 99 refused: ERR DB index is out of range");
    /* the server hangs up during AUTH */
    assert_int_equal(s_login("redis://:pw@h", "", NULL, why, sizeof why, got, sizeof got), -ECONNRESET);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_plain),
        cmocka_unit_test(test_url_auth),
        cmocka_unit_test(test_url_refused),
        cmocka_unit_test(test_url_password_name_redact),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_scripts),
        cmocka_unit_test(test_reply_errors),
        cmocka_unit_test(test_io_errors),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_login),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
