/* test_backends_conf.c - compute_backends.yaml: the design's file, every optional field, certificate files,
 * unknown-field warnings, and one error per kind of mistake naming file, line and field. Runs in
 * tests/fixtures (meson's workdir), so fixture paths are relative to it. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "backends_conf.h"

/* The key pairs in backends/keys/ (written by `titan keygen`). */
#define WORKER_PUBLIC "eq1nxnkCe*Bo9P:R17cwk<Irn!r6e^I8I>n=ZXhY"
#define CLIENT_PUBLIC "<:E<lQruZ5ZXy[]upGu*b$a#c98YI^oT:Y%MHNH["
#define CLIENT_SECRET "UiO[-eE]s>L.<sXkG<@efRlx9:t{QD/!aq:jVXEA"

static titan_conf *new_conf(void)
{
    titan_conf *c = malloc(sizeof *c);
    assert_non_null(c);
    memset(c, 0x5a, sizeof *c);
    return c;
}

/* Loads `yaml` as "t.yaml" (certificates from backends/) and expects success. */
static titan_conf *load_ok(const char *yaml)
{
    titan_conf *c = new_conf();
    char err[512] = "";
    int rc = titan_conf_load_string(yaml, strlen(yaml), "t.yaml", "backends", c, err, sizeof err);
    if (rc != 0) fail_msg("unexpected error %d: %s\n--- yaml:\n%s", rc, err, yaml);
    return c;
}

/* Loads `yaml` as "t.yaml" and expects: return code `want`, a one-line message that starts with `prefix`
 * ("t.yaml:LINE: FIELD: ") and contains `needle` (NULL: anything), and *out untouched. */
static void expect_err_at(int srcline, const char *yaml, int want, const char *prefix, const char *needle)
{
    titan_conf *c = new_conf();
    titan_conf *before = new_conf();
    char err[512] = "";
    int rc = titan_conf_load_string(yaml, strlen(yaml), "t.yaml", "backends", c, err, sizeof err);
    bool ok = rc == want && strncmp(err, prefix, strlen(prefix)) == 0 && (!needle || strstr(err, needle)) &&
              !strchr(err, '\n') && memcmp(c, before, sizeof *c) == 0;
    if (!ok)
        fail_msg("case on line %d: rc %d (want %d), message \"%s\" (want prefix \"%s\" and \"%s\"), out %s\n"
                 "--- yaml:\n%s",
                 srcline, rc, want, err, prefix, needle ? needle : "",
                 memcmp(c, before, sizeof *c) ? "written" : "untouched", yaml);
    free(c);
    free(before);
}
#define expect_err(yaml, prefix, needle) expect_err_at(__LINE__, yaml, -EINVAL, prefix, needle)

static const char *tmpdir(void)
{
    const char *d = getenv("TMPDIR");
    return d && d[0] ? d : "/tmp";
}

/* --- files that load --- */

static void test_design_file(void **state)
{
    (void)state;
    titan_conf *c = new_conf();
    char err[512] = "";
    assert_int_equal(titan_conf_load_file("backends/design.yaml", c, err, sizeof err), 0);
    assert_int_equal(c->n, 2);
    titan_conf_backend *p = &c->backends[0], *s = &c->backends[1];
    assert_string_equal(p->name, "primary");
    assert_int_equal(p->line, 2);
    assert_int_equal(p->type, TITAN_CONF_LOCAL);
    assert_string_equal(p->endpoint, "");
    assert_string_equal(p->device, "cuda:0");
    assert_int_equal(p->priority, 1);
    assert_int_equal(p->max_inflight, 1);
    assert_int_equal(p->timeout_ms, 5000);
    assert_true(p->weight == 1.0);
    assert_false(p->caps_given);
    assert_int_equal(p->ncaps, 0);
    assert_string_equal(p->server_key, "");
    assert_string_equal(p->client_public, "");
    assert_string_equal(p->client_secret, "");

    assert_string_equal(s->name, "secondary");
    assert_int_equal(s->line, 3);
    assert_int_equal(s->type, TITAN_CONF_REMOTE);
    assert_string_equal(s->endpoint, "tcp://192.168.122.10:5555");
    assert_string_equal(s->device, "titan-x-vm");
    assert_int_equal(s->priority, 2);
    assert_int_equal(s->max_inflight, 0);
    assert_int_equal(s->timeout_ms, 5000);
    assert_true(s->weight == 1.0);
    assert_true(s->caps_given);
    assert_int_equal(s->ncaps, 2);
    assert_string_equal(s->caps[0], "matrix_ops");
    assert_string_equal(s->caps[1], "legacy_inference");
    assert_string_equal(s->server_key, "");
    assert_string_equal(s->client_public, "");

    assert_int_equal(c->breaker_failures, 2);
    assert_int_equal(c->breaker_cooldown_ms, 1000);
    assert_int_equal(c->breaker_max_cooldown_ms, 30000);
    assert_int_equal(c->nwarnings, 0);
    free(c);
}

/* Every optional field, a router: section, and certificates named relative to the YAML file (the test runs
 * in tests/fixtures, where keys/ does not exist). */
static void test_full_file(void **state)
{
    (void)state;
    titan_conf *c = new_conf();
    char err[512] = "";
    int rc = titan_conf_load_file("backends/full.yaml", c, err, sizeof err);
    if (rc != 0) fail_msg("%s", err);
    assert_int_equal(c->n, 4);

    titan_conf_backend *b = &c->backends[0];
    assert_string_equal(b->name, "gpu0");
    assert_int_equal(b->line, 4);
    assert_int_equal(b->type, TITAN_CONF_LOCAL);
    assert_string_equal(b->device, "cuda:1");
    assert_true(b->caps_given);
    assert_int_equal(b->ncaps, 2);
    assert_string_equal(b->caps[0], "matrix_ops");
    assert_string_equal(b->caps[1], "conv2d");
    assert_int_equal(b->priority, 0);
    assert_true(b->weight == 2.5);
    assert_int_equal(b->max_inflight, 8);
    assert_int_equal(b->timeout_ms, 120000);

    b = &c->backends[1];
    assert_string_equal(b->name, "vm");
    assert_int_equal(b->line, 14);
    assert_int_equal(b->type, TITAN_CONF_REMOTE);
    assert_string_equal(b->endpoint, "tcp://192.168.122.10:5555");
    assert_string_equal(b->device, "titan-x-vm");
    assert_int_equal(b->ncaps, 2);
    assert_int_equal(b->priority, 10);
    assert_true(b->weight == 0.25);
    assert_int_equal(b->max_inflight, 4);
    assert_int_equal(b->timeout_ms, 30000);
    assert_string_equal(b->server_key, WORKER_PUBLIC);
    assert_string_equal(b->client_public, CLIENT_PUBLIC);
    assert_string_equal(b->client_secret, CLIENT_SECRET);

    b = &c->backends[2];
    assert_string_equal(b->name, "inline");
    assert_string_equal(b->endpoint, "ipc:///run/titan/worker.sock");
    assert_string_equal(b->device, "");
    assert_false(b->caps_given);
    assert_int_equal(b->priority, 3); /* its position */
    assert_string_equal(b->server_key, WORKER_PUBLIC);
    assert_string_equal(b->client_secret, CLIENT_SECRET);
    assert_string_equal(b->client_public, CLIENT_PUBLIC); /* derived from the secret */

    b = &c->backends[3];
    assert_string_equal(b->name, "cpu");
    assert_string_equal(b->device, "cpu");
    assert_int_equal(b->priority, 4);

    assert_int_equal(c->breaker_failures, 5);
    assert_int_equal(c->breaker_cooldown_ms, 250);
    assert_int_equal(c->breaker_max_cooldown_ms, 60000);
    assert_int_equal(c->nwarnings, 0);
    free(c);
}

/* Flow and block styles, quotes, comments, a document start and end, the defaults. */
static void test_styles_and_defaults(void **state)
{
    (void)state;
    titan_conf *c =
        load_ok("%YAML 1.1\n"
                "--- # start\n"
                "backends: {a: {type: \"local\"}, 'b.2-x_y': {type: remote, endpoint: 'inproc://w',\n"
                "  capabilities: [\"q\"]}}\n"
                "router: {breaker_cooldown_ms: 60000}\n"
                "...\n");
    assert_int_equal(c->n, 2);
    assert_string_equal(c->backends[0].name, "a");
    assert_int_equal(c->backends[0].line, 3);
    assert_string_equal(c->backends[0].device, "auto");
    assert_int_equal(c->backends[0].priority, 1);
    assert_int_equal(c->backends[0].max_inflight, 1);
    assert_string_equal(c->backends[1].name, "b.2-x_y");
    assert_string_equal(c->backends[1].endpoint, "inproc://w");
    assert_int_equal(c->backends[1].priority, 2);
    assert_int_equal(c->backends[1].max_inflight, 0);
    assert_int_equal(c->backends[1].ncaps, 1);
    assert_string_equal(c->backends[1].caps[0], "q");
    assert_int_equal(c->breaker_failures, 2);
    assert_int_equal(c->breaker_cooldown_ms, 60000);
    /* A first cool-down above the default maximum raises the maximum with it. */
    assert_int_equal(c->breaker_max_cooldown_ms, 60000);
    free(c);

    /* Edge values are accepted; quoted numbers too. */
    c = load_ok("backends:\n"
                "  x:\n"
                "    type: local\n"
                "    device: cuda\n"
                "    priority: 1000000\n"
                "    max_inflight: 100000\n"
                "    timeout_ms: \"3600000\"\n"
                "    weight: 1e-3\n"
                "  y: {type: local, device: cuda:12, priority: 0, max_inflight: 0, timeout_ms: 1}\n"
                "router:\n"
                "  breaker_failures: 100\n"
                "  breaker_cooldown_ms: 10\n"
                "  breaker_max_cooldown_ms: 10\n");
    assert_int_equal(c->backends[0].priority, 1000000);
    assert_int_equal(c->backends[0].max_inflight, 100000);
    assert_int_equal(c->backends[0].timeout_ms, 3600000);
    assert_true(c->backends[0].weight == 1e-3);
    assert_string_equal(c->backends[0].device, "cuda");
    assert_string_equal(c->backends[1].device, "cuda:12");
    assert_int_equal(c->backends[1].priority, 0);
    assert_int_equal(c->backends[1].timeout_ms, 1);
    assert_int_equal(c->breaker_failures, 100);
    assert_int_equal(c->breaker_cooldown_ms, 10);
    assert_int_equal(c->breaker_max_cooldown_ms, 10);
    free(c);
}

/* A relative certificate path is read from `dir`; without a dir, from the current directory. */
static void test_relative_key_paths(void **state)
{
    (void)state;
    const char *yaml = "backends:\n"
                       "  w:\n"
                       "    type: remote\n"
                       "    endpoint: tcp://127.0.0.1:5555\n"
                       "    server_key: keys/worker\n";
    titan_conf *c = new_conf();
    char err[512] = "";
    assert_int_equal(titan_conf_load_string(yaml, strlen(yaml), "t.yaml", "backends", c, err, sizeof err), 0);
    assert_string_equal(c->backends[0].server_key, WORKER_PUBLIC);
    assert_string_equal(c->backends[0].client_public, "");
    assert_string_equal(c->backends[0].client_secret, "");

    /* NULL dir: the current directory (tests/fixtures), where keys/worker is missing... */
    assert_int_equal(titan_conf_load_string(yaml, strlen(yaml), "t.yaml", NULL, c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "t.yaml:5: w.server_key: "));
    assert_non_null(strstr(err, "keys/worker"));
    assert_non_null(strstr(err, "No such file or directory"));

    /* ...and backends/keys/worker is found. */
    const char *yaml2 = "backends:\n"
                        "  w: {type: remote, endpoint: 'tcp://h:1', server_key: backends/keys/worker,\n"
                        "      client_key: backends/keys/client_secret_nopub}\n";
    memset(c, 0, sizeof *c);
    assert_int_equal(titan_conf_load_string(yaml2, strlen(yaml2), "t.yaml", NULL, c, err, sizeof err), 0);
    assert_string_equal(c->backends[0].server_key, WORKER_PUBLIC);
    /* The certificate has no public-key line: the public key is derived from the secret. */
    assert_string_equal(c->backends[0].client_secret, CLIENT_SECRET);
    assert_string_equal(c->backends[0].client_public, CLIENT_PUBLIC);

    /* A public certificate as client_key: its NAME_secret beside it is used, as titan --curve-secret does. */
    const char *yaml4 =
        "backends:\n"
        "  w: {type: remote, endpoint: 'tcp://h:1', server_key: keys/worker, client_key: keys/client}\n";
    memset(c, 0, sizeof *c);
    assert_int_equal(titan_conf_load_string(yaml4, strlen(yaml4), "t.yaml", "backends", c, err, sizeof err),
                     0);
    assert_string_equal(c->backends[0].client_secret, CLIENT_SECRET);
    assert_string_equal(c->backends[0].client_public, CLIENT_PUBLIC);

    /* An absolute path ignores dir. */
    char cwd[1024], yaml3[1400];
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(yaml3, sizeof yaml3,
             "backends:\n  w: {type: remote, endpoint: 'tcp://h:1', server_key: '%s/backends/keys/worker'}\n",
             cwd);
    memset(c, 0, sizeof *c);
    assert_int_equal(
        titan_conf_load_string(yaml3, strlen(yaml3), "t.yaml", "/nonexistent", c, err, sizeof err), 0);
    assert_string_equal(c->backends[0].server_key, WORKER_PUBLIC);
    free(c);
}

static void test_unknown_fields_warn(void **state)
{
    (void)state;
    titan_conf *c = new_conf();
    char err[512] = "";
    int rc = titan_conf_load_file("backends/unknown.yaml", c, err, sizeof err);
    if (rc != 0) fail_msg("%s", err);
    assert_int_equal(c->n, 1);
    assert_int_equal(c->breaker_failures, 3);
    assert_int_equal(c->nwarnings, 4);
    assert_string_equal(c->warnings[0], "backends/unknown.yaml:1: unknown field version ignored");
    assert_string_equal(c->warnings[1], "backends/unknown.yaml:5: unknown field a.colour ignored");
    assert_string_equal(c->warnings[2], "backends/unknown.yaml:6: unknown field a.nested ignored");
    assert_string_equal(c->warnings[3], "backends/unknown.yaml:9: unknown field router.jitter ignored");
    free(c);

    /* Beyond TITAN_CONF_MAX_WARNINGS the warnings are counted but not kept. */
    char yaml[4096];
    size_t n = (size_t)snprintf(yaml, sizeof yaml, "backends:\n  a:\n    type: local\n");
    for (int i = 0; i < TITAN_CONF_MAX_WARNINGS + 4; i++)
        n += (size_t)snprintf(yaml + n, sizeof yaml - n, "    extra%d: %d\n", i, i);
    c = load_ok(yaml);
    assert_int_equal(c->nwarnings, TITAN_CONF_MAX_WARNINGS + 4);
    assert_string_equal(c->warnings[0], "t.yaml:4: unknown field a.extra0 ignored");
    assert_string_equal(c->warnings[TITAN_CONF_MAX_WARNINGS - 1],
                        "t.yaml:19: unknown field a.extra15 ignored");
    free(c);
}

/* The example message in the brief, from a file, in full. */
static void test_error_from_file(void **state)
{
    (void)state;
    titan_conf *c = new_conf(), *before = new_conf();
    char err[512] = "";
    assert_int_equal(titan_conf_load_file("backends/bad_timeout.yaml", c, err, sizeof err), -EINVAL);
    assert_string_equal(err,
                        "backends/bad_timeout.yaml:7: secondary.timeout_ms: must be a whole number from 1 to "
                        "3600000, not \"abc\"");
    assert_memory_equal(c, before, sizeof *c);
    free(c);
    free(before);
}

/* --- errors reading the file --- */

static void test_file_missing(void **state)
{
    (void)state;
    titan_conf *c = new_conf(), *before = new_conf();
    char err[512] = "";
    assert_int_equal(titan_conf_load_file("backends/no-such.yaml", c, err, sizeof err), -ENOENT);
    assert_non_null(strstr(err, "backends/no-such.yaml"));
    assert_non_null(strstr(err, strerror(ENOENT)));
    assert_memory_equal(c, before, sizeof *c);

    /* A directory is not a file. */
    assert_int_equal(titan_conf_load_file("backends", c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "backends: not a regular file"));
    assert_memory_equal(c, before, sizeof *c);
    free(c);
    free(before);
}

/* titan_conf_load_file into a fresh titan_conf; *untouched: whether it was left as it was. */
static int load_file_checked(const char *path, char *err, size_t errcap, bool *untouched)
{
    titan_conf *c = malloc(sizeof *c), *before = malloc(sizeof *c);
    if (!c || !before) {
        free(c);
        free(before);
        return -ENOMEM;
    }
    memset(c, 0x5a, sizeof *c);
    memset(before, 0x5a, sizeof *c);
    int rc = titan_conf_load_file(path, c, err, errcap);
    *untouched = memcmp(c, before, sizeof *c) == 0;
    free(c);
    free(before);
    return rc;
}

/* The same in a child without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so that root (as in CI containers)
 * meets file permissions too; the result and message come back through a pipe. */
static int load_file_without_dac(const char *path, char *err, size_t errcap, bool *untouched)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
        struct __user_cap_data_struct data[2];
        int rc = -1000;
        bool same = false;
        if (syscall(SYS_capget, &hdr, data) == 0) {
            data[0].effective &= ~((1u << CAP_DAC_OVERRIDE) | (1u << CAP_DAC_READ_SEARCH));
            if (syscall(SYS_capset, &hdr, data) == 0) rc = load_file_checked(path, err, errcap, &same);
        }
        bool ok = write(fds[1], &rc, sizeof rc) == sizeof rc &&
                  write(fds[1], &same, sizeof same) == sizeof same &&
                  write(fds[1], err, errcap) == (ssize_t)errcap;
        _exit(ok ? 0 : 1);
    }
    close(fds[1]);
    int rc = 0, status = 0;
    assert_int_equal(read(fds[0], &rc, sizeof rc), (ssize_t)sizeof rc);
    assert_int_equal(read(fds[0], untouched, sizeof *untouched), (ssize_t)sizeof *untouched);
    assert_int_equal(read(fds[0], err, errcap), (ssize_t)errcap);
    close(fds[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return rc;
}

static void test_file_unreadable(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/test_backends_conf_XXXXXX", tmpdir());
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "backends: {a: {type: local}}\n", 29), 29);
    close(fd);
    assert_int_equal(chmod(path, 0), 0);
    char err[512] = "";
    bool untouched = false;
    int rc = geteuid() == 0 ? load_file_without_dac(path, err, sizeof err, &untouched)
                            : load_file_checked(path, err, sizeof err, &untouched);
    unlink(path);
    assert_int_equal(rc, -EACCES);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, strerror(EACCES)));
    assert_true(untouched);
}

static void test_file_too_big(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/test_backends_conf_XXXXXX", tmpdir());
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = TITAN_CONF_MAX_BYTES + 1;
    char *big = malloc(len);
    assert_non_null(big);
    memset(big, '#', len);
    assert_int_equal(write(fd, big, len), (ssize_t)len);
    close(fd);
    titan_conf *c = new_conf(), *before = new_conf();
    char err[512] = "";
    int rc = titan_conf_load_file(path, c, err, sizeof err);
    unlink(path);
    assert_int_equal(rc, -EFBIG);
    assert_non_null(strstr(err, path));
    assert_memory_equal(c, before, sizeof *c);
    assert_int_equal(titan_conf_load_string(big, len, "big.yaml", NULL, c, err, sizeof err), -EFBIG);
    assert_non_null(strstr(err, "big.yaml"));
    assert_memory_equal(c, before, sizeof *c);
    free(big);
    free(c);
    free(before);
}

/* --- errors in the YAML --- */

static void test_not_yaml(void **state)
{
    (void)state;
    expect_err("backends:\n  a: {type: local\n  b: 1\n", "t.yaml:", "not valid YAML");
    expect_err("backends:\n  a:\n    type: local\n    device: cpu: x\n",
               "t.yaml:4: not valid YAML: ", "mapping values are not allowed");
    expect_err("backends:\n  a:\n\ttype: local\n", "t.yaml:3: not valid YAML: ", NULL);
    expect_err("backends:\n  a: {type: \"local}\n", "t.yaml:", "not valid YAML");
    /* Invalid UTF-8 (a reader error: a byte offset turned into a line). */
    expect_err("backends:\n  a: {type: local}\n  b: \xff\xfe\n", "t.yaml:3: not valid YAML: ", NULL);
    expect_err("backends: {a: {type: local}}\n---\nbackends: {b: {type: local}}\n",
               "t.yaml:2: ", "a second YAML document");
    expect_err("x: &loc {type: local}\nbackends:\n  a: *loc\n",
               "t.yaml:3: ", "aliases (*loc) are not supported");
    expect_err("", "t.yaml:1: ", "the file is empty");
    expect_err("# nothing but a comment\n", "t.yaml:1: ", "the file is empty");
    /* Absurd nesting is refused before the document is built. */
    char deep[256];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    deep[200] = '\0';
    expect_err(deep, "t.yaml:1: ", "nested more than");
}

static void test_top_level(void **state)
{
    (void)state;
    expect_err("- backends\n", "t.yaml:1: top level: ", "must be a mapping with a backends: key, not a list");
    expect_err("backends\n", "t.yaml:1: top level: ", "not \"backends\"");
    expect_err("\nrouter: {breaker_failures: 2}\n", "t.yaml:2: backends: ", "missing");
    expect_err("backends:\nrouter: {}\n", "t.yaml:1: backends: ", "is empty");
    expect_err("backends: {}\n", "t.yaml:1: backends: ", "is empty");
    expect_err("backends:\n  - a\n  - b\n",
               "t.yaml:2: backends: ", "must be a mapping of NAME: {settings}, not a list");
    expect_err("backends: local\n", "t.yaml:1: backends: ", "not \"local\"");
    expect_err("backends: {a: {type: local}}\nbackends: {b: {type: local}}\n",
               "t.yaml:2: backends: ", "given twice (first on line 1)");
    expect_err("? [a, b]\n: 1\nbackends: {a: {type: local}}\n",
               "t.yaml:1: key: ", "keys must be plain names");
}

static void test_backend_not_mapping(void **state)
{
    (void)state;
    expect_err("backends:\n  a: {type: local}\n  b: local\n",
               "t.yaml:3: b: ", "must be a mapping of settings such as {type: local}, not \"local\"");
    expect_err("backends:\n  a:\n    - type: local\n", "t.yaml:2: a: ", "not a list");
    expect_err("backends:\n  a:\n  b: {type: local}\n", "t.yaml:2: a: ", "has no settings");
    expect_err("backends:\n  a: {}\n", "t.yaml:2: a: ", "has no settings");
}

static void test_backend_names(void **state)
{
    (void)state;
    expect_err("backends:\n  a: {type: local}\n  b: {type: local}\n  a: {type: local}\n",
               "t.yaml:4: a: ", "the first is on line 2");
    expect_err("backends:\n  a: {type: local}\n  my gpu: {type: local}\n",
               "t.yaml:3: backends: ", "\"my gpu\"");
    expect_err("backends:\n  \"\": {type: local}\n", "t.yaml:2: backends: ", "backend name");
    expect_err("backends:\n  \"a\\0b\": {type: local}\n", "t.yaml:2: backends: ", "\"a\\x00b\"");
    expect_err("backends:\n  [a]: {type: local}\n", "t.yaml:2: backends: ", "a backend name is a list");
    /* 63 characters fit, 64 do not. */
    char yaml[256];
    snprintf(yaml, sizeof yaml, "backends:\n  %.63s: {type: local}\n",
             "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn");
    titan_conf *c = load_ok(yaml);
    assert_int_equal((int)strlen(c->backends[0].name), 63);
    free(c);
    snprintf(yaml, sizeof yaml, "backends:\n  %.64s: {type: local}\n",
             "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn");
    expect_err(yaml, "t.yaml:2: backends: ", "1 to 63");
}

static void test_too_many_backends(void **state)
{
    (void)state;
    char yaml[4096];
    size_t n = (size_t)snprintf(yaml, sizeof yaml, "backends:\n");
    for (int i = 0; i < TITAN_CONF_MAX_BACKENDS; i++)
        n += (size_t)snprintf(yaml + n, sizeof yaml - n, "  b%d: {type: local}\n", i);
    titan_conf *c = load_ok(yaml);
    assert_int_equal(c->n, TITAN_CONF_MAX_BACKENDS);
    assert_int_equal(c->backends[31].priority, 32);
    assert_int_equal(c->backends[31].line, 33);
    free(c);
    snprintf(yaml + n, sizeof yaml - n, "  b32: {type: local}\n");
    expect_err(yaml, "t.yaml:34: backends: ", "more than 32 backends");
}

static void test_type(void **state)
{
    (void)state;
    expect_err("backends:\n  a:\n    device: cpu\n",
               "t.yaml:2: a.type: ", "missing; add type: local or type: remote");
    expect_err("backends:\n  a:\n    type: gpu\n", "t.yaml:3: a.type: ", "\"gpu\"; use local|remote");
    expect_err("backends:\n  a:\n    type: Local\n", "t.yaml:3: a.type: ", "local|remote");
    expect_err("backends:\n  a:\n    type: [local]\n",
               "t.yaml:3: a.type: ", "must be a single value, not a list");
    expect_err("backends:\n  a:\n    type:\n      kind: local\n", "t.yaml:4: a.type: ", "not a mapping");
}

static void test_endpoint(void **state)
{
    (void)state;
    expect_err("backends:\n  r:\n    type: remote\n    device: vm\n",
               "t.yaml:2: r.endpoint: ", "missing; a remote backend needs endpoint");
    expect_err("backends:\n  r:\n    type: remote\n    endpoint: http://h:80\n", "t.yaml:4: r.endpoint: ",
               "must be tcp://HOST:PORT, ipc://PATH or inproc://NAME, not \"http://h:80\"");
    expect_err("backends:\n  r: {type: remote, endpoint: 'tcp://'}\n",
               "t.yaml:2: r.endpoint: ", "not \"tcp://\"");
    expect_err("backends:\n  r: {type: remote, endpoint: 'tcp://a b:1'}\n", "t.yaml:2: r.endpoint: ", NULL);
    expect_err("backends:\n  r: {type: remote, endpoint: }\n",
               "t.yaml:2: r.endpoint: ", "not an empty value");
    expect_err("backends:\n  r: {type: remote, endpoint: [tcp://h:1]}\n",
               "t.yaml:2: r.endpoint: ", "must be a single value");
    expect_err("backends:\n  l:\n    type: local\n    endpoint: tcp://h:1\n",
               "t.yaml:4: l.endpoint: ", "a local backend");
    char yaml[512], host[300];
    memset(host, 'h', 250);
    host[250] = '\0';
    snprintf(yaml, sizeof yaml, "backends:\n  r:\n    type: remote\n    endpoint: tcp://%s:1\n", host);
    expect_err(yaml, "t.yaml:4: r.endpoint: ", "longer than 255 characters");
    /* 255 characters fit. */
    host[255 - 8] = '\0';
    snprintf(yaml, sizeof yaml, "backends:\n  r:\n    type: remote\n    endpoint: tcp://%s:1\n", host);
    titan_conf *c = load_ok(yaml);
    assert_int_equal((int)strlen(c->backends[0].endpoint), 255);
    free(c);
}

static void test_device(void **state)
{
    (void)state;
    expect_err("backends:\n  l:\n    type: local\n    device: tpu\n",
               "t.yaml:4: l.device: ", "must be auto, cpu, cuda or cuda:N, not \"tpu\"");
    expect_err("backends:\n  l: {type: local, device: 'cuda:'}\n", "t.yaml:2: l.device: ", "cuda:N");
    expect_err("backends:\n  l: {type: local, device: 'cuda:x'}\n", "t.yaml:2: l.device: ", "cuda:N");
    expect_err("backends:\n  l: {type: local, device: 'cuda:-1'}\n", "t.yaml:2: l.device: ", "cuda:N");
    expect_err("backends:\n  l: {type: local, device: 'cuda:0 '}\n", "t.yaml:2: l.device: ", "cuda:N");
    /* One grammar with titan-worker's --device: N up to 255 (this file took 65535 before). */
    expect_err("backends:\n  l: {type: local, device: 'cuda:256'}\n", "t.yaml:2: l.device: ", "N: 0 to 255");
    expect_err("backends:\n  l: {type: local, device: 'cuda:65535'}\n", "t.yaml:2: l.device: ", "N: 0 to 255");
    titan_conf *top = load_ok("backends:\n  l: {type: local, device: 'cuda:255'}\n");
    assert_string_equal(top->backends[0].device, "cuda:255");
    free(top);
    expect_err("backends:\n  l: {type: local, device: }\n", "t.yaml:2: l.device: ", "not an empty value");
    char yaml[256];
    snprintf(yaml, sizeof yaml,
             "backends:\n  r:\n    type: remote\n    endpoint: tcp://h:1\n    device: %.64s\n",
             "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd");
    expect_err(yaml, "t.yaml:5: r.device: ", "1 to 63 printable characters");
}

static void test_capabilities(void **state)
{
    (void)state;
    expect_err("backends:\n  l:\n    type: local\n    capabilities: matrix_ops\n",
               "t.yaml:4: l.capabilities: ", "must be a list of names");
    expect_err("backends:\n  l:\n    type: local\n    capabilities: {matrix_ops: 1}\n",
               "t.yaml:4: l.capabilities: ", "not a mapping");
    expect_err("backends:\n  l:\n    type: local\n    capabilities:\n",
               "t.yaml:4: l.capabilities: ", "not an empty value");
    expect_err("backends:\n  l:\n    type: local\n    capabilities: []\n",
               "t.yaml:4: l.capabilities: ", "is an empty list");
    expect_err(
        "backends:\n  l:\n    type: local\n    capabilities:\n      - matrix_ops\n      - matrix ops\n",
        "t.yaml:6: l.capabilities[1]: ", "\"matrix ops\"");
    expect_err("backends:\n  l:\n    type: local\n    capabilities: [a, [b]]\n",
               "t.yaml:4: l.capabilities[1]: ", "not a list");
    expect_err("backends:\n  l:\n    type: local\n    capabilities: [a, b, a]\n",
               "t.yaml:4: l.capabilities[2]: ", "listed twice");
    char yaml[512];
    snprintf(yaml, sizeof yaml, "backends:\n  l:\n    type: local\n    capabilities: [%.48s]\n",
             "cccccccccccccccccccccccccccccccccccccccccccccccccccccccc");
    expect_err(yaml, "t.yaml:4: l.capabilities[0]: ", "1 to 47");
    size_t n = (size_t)snprintf(yaml, sizeof yaml, "backends:\n  l:\n    type: local\n    capabilities:\n");
    for (int i = 0; i < TITAN_CONF_MAX_CAPS; i++)
        n += (size_t)snprintf(yaml + n, sizeof yaml - n, "      - c%d\n", i);
    titan_conf *c = load_ok(yaml);
    assert_int_equal(c->backends[0].ncaps, TITAN_CONF_MAX_CAPS);
    assert_string_equal(c->backends[0].caps[15], "c15");
    free(c);
    snprintf(yaml + n, sizeof yaml - n, "      - c16\n");
    expect_err(yaml, "t.yaml:21: l.capabilities: ", "more than 16 capabilities");
}

/* Whole numbers: junk, overflow, fractions, booleans and the ranges. */
static void test_integers(void **state)
{
    (void)state;
    static const char *const bad[] = {"abc", "-1",   "1000001", "1.5",   "1.0",  "true", "1e3", "99999999999",
                                      "5x",  "0x10", "010",     "1_000", "\"\"", "~",    "+",   "--1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char yaml[256];
        snprintf(yaml, sizeof yaml, "backends:\n  a:\n    type: local\n    priority: %s\n", bad[i]);
        expect_err(yaml, "t.yaml:4: a.priority: ", "must be a whole number from 0 to 1000000, not ");
    }
    expect_err("backends:\n  a: {type: local, priority: [1]}\n",
               "t.yaml:2: a.priority: ", "single value, not a list");
    expect_err("backends:\n  a: {type: local, max_inflight: 100001}\n",
               "t.yaml:2: a.max_inflight: ", "must be a whole number from 0 to 100000, not \"100001\"");
    expect_err("backends:\n  a: {type: local, max_inflight: -1}\n",
               "t.yaml:2: a.max_inflight: ", "0 to 100000");
    expect_err(
        "backends:\n  a: {type: local}\n  b:\n    type: remote\n    endpoint: tcp://h:1\n    timeout_ms: 0\n",
        "t.yaml:6: b.timeout_ms: ", "must be a whole number from 1 to 3600000, not \"0\"");
    expect_err("backends:\n  a: {type: local, timeout_ms: 3600001}\n",
               "t.yaml:2: a.timeout_ms: ", "1 to 3600000");
    expect_err("backends:\n  a: {type: local, timeout_ms: abc}\n",
               "t.yaml:2: a.timeout_ms: ", "must be a whole number from 1 to 3600000, not \"abc\"");
}

static void test_weight(void **state)
{
    (void)state;
    static const char *const bad[] = {"0",     "0.0",    "-1",   "abc", ".inf", "nan",     "NaN",
                                      "1e999", "1e-400", "true", "1,5", "\"\"", "Infinity"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char yaml[256];
        snprintf(yaml, sizeof yaml, "backends:\n  a:\n    type: local\n    weight: %s\n", bad[i]);
        expect_err(yaml, "t.yaml:4: a.weight: ", "must be a finite number greater than 0");
    }
}

static void test_keys(void **state)
{
    (void)state;
    const char *head = "backends:\n  r:\n    type: remote\n    endpoint: tcp://h:1\n";
    char yaml[512];
#define KEYS(lines) (snprintf(yaml, sizeof yaml, "%s%s", head, lines), yaml)
    /* Neither a key nor a readable file. */
    expect_err(KEYS("    server_key: not-a-key\n"), "t.yaml:5: r.server_key: ",
               "\"not-a-key\" is not a 40-character Z85 key nor a readable certificate");
    /* 39 and 41 characters are file names. */
    expect_err(KEYS("    server_key: \"eq1nxnkCe*Bo9P:R17cwk<Irn!r6e^I8I>n=ZXh\"\n"),
               "t.yaml:5: r.server_key: ", "No such file");
    expect_err(KEYS("    server_key: \"" WORKER_PUBLIC "Y\"\n"), "t.yaml:5: r.server_key: ", "No such file");
    /* 40 Z85 characters that do not decode (a group above 2^32 - 1). */
    expect_err(KEYS("    server_key: \"########################################\"\n"),
               "t.yaml:5: r.server_key: ", "not a valid Z85 key");
    /* A space is outside the alphabet. */
    expect_err(KEYS("    server_key: \"eq1nxnkCe*Bo9P:R17cwk<Irn!r6e^I8I>n=ZXh \"\n"),
               "t.yaml:5: r.server_key: ", "not a 40-character Z85 key");
    expect_err(KEYS("    server_key: [a]\n"),
               "t.yaml:5: r.server_key: ", "must be a single value, not a list");
    expect_err(KEYS("    server_key:\n"), "t.yaml:5: r.server_key: ", "is an empty value");
    /* A file that is not a certificate, and a directory. */
    expect_err(KEYS("    server_key: design.yaml\n"), "t.yaml:5: r.server_key: ", "has no public-key line");
    expect_err(KEYS("    server_key: keys\n"), "t.yaml:5: r.server_key: ", "Is a directory");
    /* Not a secret certificate, with no NAME_secret beside it. */
    expect_err(KEYS("    server_key: keys/worker\n    client_key: design.yaml\n"),
               "t.yaml:6: r.client_key: ", "has no secret-key line");
    expect_err(KEYS("    client_key: \"" CLIENT_SECRET "\"\n"),
               "t.yaml:5: r.client_key: ", "needs server_key");
    expect_err("backends:\n  l:\n    type: local\n    server_key: \"" WORKER_PUBLIC "\"\n",
               "t.yaml:4: l.server_key: ", "a local backend uses no CURVE keys");
#undef KEYS
}

/* A certificate whose public-key is not the secret-key's, or malformed. */
static void test_bad_certificates(void **state)
{
    (void)state;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/test_backends_conf_XXXXXX", tmpdir());
    assert_non_null(mkdtemp(dir));
    char path[600];
    snprintf(path, sizeof path, "%s/mixed_secret", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "curve\n    public-key = \"%s\"\n    secret-key = \"%s\"\n", WORKER_PUBLIC, CLIENT_SECRET);
    fclose(f);
    snprintf(path, sizeof path, "%s/short", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "curve\n    public-key = \"abc\"\n");
    fclose(f);

    snprintf(path, sizeof path, "%s/pubonly", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "metadata\ncurve\n    public-key = \"%s\"\n", CLIENT_PUBLIC);
    fclose(f);

    const char *yaml = "backends:\n  r:\n    type: remote\n    endpoint: tcp://h:1\n    server_key: short\n";
    titan_conf *c = new_conf(), *before = new_conf();
    char err[512] = "";
    assert_int_equal(titan_conf_load_string(yaml, strlen(yaml), "t.yaml", dir, c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "t.yaml:5: r.server_key: "));
    assert_non_null(strstr(err, "public-key that is not 40 Z85 characters"));
    yaml = "backends:\n  r:\n    type: remote\n    endpoint: tcp://h:1\n    server_key: short\n"
           "    client_key: mixed_secret\n";
    assert_int_equal(titan_conf_load_string(yaml, strlen(yaml), "t.yaml", dir, c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "t.yaml:5: r.server_key: ")); /* server_key is checked first */
    yaml =
        "backends:\n  r:\n    type: remote\n    endpoint: tcp://h:1\n    server_key: \"" WORKER_PUBLIC "\"\n"
        "    client_key: mixed_secret\n";
    assert_int_equal(titan_conf_load_string(yaml, strlen(yaml), "t.yaml", dir, c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "t.yaml:6: r.client_key: "));
    assert_non_null(strstr(err, "does not belong to its secret-key"));
    yaml =
        "backends:\n  r:\n    type: remote\n    endpoint: tcp://h:1\n    server_key: \"" WORKER_PUBLIC "\"\n"
        "    client_key: pubonly\n";
    assert_int_equal(titan_conf_load_string(yaml, strlen(yaml), "t.yaml", dir, c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "t.yaml:6: r.client_key: "));
    assert_non_null(strstr(err, "pubonly has no secret-key line"));
    assert_memory_equal(c, before, sizeof *c);
    free(c);
    free(before);
    snprintf(path, sizeof path, "%s/pubonly", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/mixed_secret", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/short", dir);
    unlink(path);
    rmdir(dir);
}

static void test_duplicate_keys(void **state)
{
    (void)state;
    expect_err("backends:\n  a:\n    type: local\n    device: cpu\n    device: cuda\n",
               "t.yaml:5: a.device: ", "given twice (first on line 4)");
    expect_err("backends:\n  a: {type: local, type: remote}\n", "t.yaml:2: a.type: ", "given twice");
    expect_err("backends: {a: {type: local}}\nrouter:\n  breaker_failures: 2\n  breaker_failures: 3\n",
               "t.yaml:4: router.breaker_failures: ", "given twice (first on line 3)");
    expect_err("backends:\n  a:\n    type: local\n    ? [x]\n    : 1\n", "t.yaml:4: a.key: ", "is a list");
}

static void test_router(void **state)
{
    (void)state;
    const char *b = "backends: {a: {type: local}}\n";
    char yaml[512];
#define R(lines) (snprintf(yaml, sizeof yaml, "%s%s", b, lines), yaml)
    expect_err(R("router: 5\n"),
               "t.yaml:2: router: ", "must be a mapping such as {breaker_failures: 2}, not \"5\"");
    expect_err(R("router: [a]\n"), "t.yaml:2: router: ", "not a list");
    expect_err(R("router:\n  breaker_failures: 0\n"),
               "t.yaml:3: router.breaker_failures: ", "must be a whole number from 1 to 100, not \"0\"");
    expect_err(R("router:\n  breaker_failures: 101\n"), "t.yaml:3: router.breaker_failures: ", "1 to 100");
    expect_err(R("router:\n  breaker_cooldown_ms: 9\n"),
               "t.yaml:3: router.breaker_cooldown_ms: ", "10 to 3600000");
    expect_err(R("router:\n  breaker_cooldown_ms: 3600001\n"),
               "t.yaml:3: router.breaker_cooldown_ms: ", "10 to 3600000");
    expect_err(R("router:\n  breaker_max_cooldown_ms: 3600001\n"),
               "t.yaml:3: router.breaker_max_cooldown_ms: ", "10 to 3600000");
    expect_err(R("router:\n  breaker_max_cooldown_ms: 9\n"),
               "t.yaml:3: router.breaker_max_cooldown_ms: ", "10 to 3600000");
    expect_err(R("router:\n  breaker_cooldown_ms: 5000\n  breaker_max_cooldown_ms: 4999\n"),
               "t.yaml:4: router.breaker_max_cooldown_ms: ", "less than breaker_cooldown_ms (5000)");
    expect_err(R("router:\n  breaker_failures: {n: 1}\n"),
               "t.yaml:3: router.breaker_failures: ", "not a mapping");
    /* An empty router: keeps the defaults. */
    titan_conf *c = load_ok(R("router:\n"));
    assert_int_equal(c->breaker_failures, 2);
    assert_int_equal(c->breaker_max_cooldown_ms, 30000);
    free(c);
#undef R
}

/* NULL arguments, a missing err buffer and a tiny one. */
static void test_arguments(void **state)
{
    (void)state;
    titan_conf *c = new_conf(), *before = new_conf();
    char err[16];
    const char *yaml = "backends: {a: {type: gpu}}\n";
    assert_int_equal(titan_conf_load_string(yaml, strlen(yaml), "t.yaml", NULL, NULL, err, sizeof err),
                     -EINVAL);
    assert_int_equal(titan_conf_load_string(NULL, 5, "t.yaml", NULL, c, err, sizeof err), -EINVAL);
    assert_int_equal(titan_conf_load_file(NULL, c, err, sizeof err), -EINVAL);
    assert_int_equal(titan_conf_load_string(yaml, strlen(yaml), "t.yaml", NULL, c, NULL, 0), -EINVAL);
    assert_int_equal(titan_conf_load_string(yaml, strlen(yaml), "t.yaml", NULL, c, err, sizeof err), -EINVAL);
    assert_int_equal((int)strlen(err), (int)sizeof err - 1); /* cut short, terminated */
    assert_memory_equal(err, "t.yaml:1: a.typ", sizeof err);
    assert_int_equal(titan_conf_load_string(NULL, 0, NULL, NULL, c, err, sizeof err), -EINVAL);
    assert_memory_equal(c, before, sizeof *c);
    free(c);
    free(before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_design_file),
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_styles_and_defaults),
        cmocka_unit_test(test_relative_key_paths),
        cmocka_unit_test(test_unknown_fields_warn),
        cmocka_unit_test(test_error_from_file),
        cmocka_unit_test(test_file_missing),
        cmocka_unit_test(test_file_unreadable),
        cmocka_unit_test(test_file_too_big),
        cmocka_unit_test(test_not_yaml),
        cmocka_unit_test(test_top_level),
        cmocka_unit_test(test_backend_not_mapping),
        cmocka_unit_test(test_backend_names),
        cmocka_unit_test(test_too_many_backends),
        cmocka_unit_test(test_type),
        cmocka_unit_test(test_endpoint),
        cmocka_unit_test(test_device),
        cmocka_unit_test(test_capabilities),
        cmocka_unit_test(test_integers),
        cmocka_unit_test(test_weight),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_bad_certificates),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_router),
        cmocka_unit_test(test_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
