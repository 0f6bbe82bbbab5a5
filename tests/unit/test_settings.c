/* test_settings.c - the worker's settings table against its parsers, titan-worker --help and docs/OPERATIONS.md; TAP.
 *
 * Usage: test_settings PATH/TO/titan-worker PATH/TO/docs/OPERATIONS.md
 *
 * The table in src/worker/settings.c drives the options, the config file, --help and the checks; this test
 * holds the documentation to it: every setting has a row in OPERATIONS.md's option table with the same
 * range and default, every row there is a setting, and --help lists every setting. A setting added
 * without its row fails here. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "request.h"
#include "settings.h"

static int s_n, s_failed;

static bool s_ok(bool cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool s_ok(bool cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%sok %d - ", cond ? "" : "not ", ++s_n);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (!cond) s_failed++;
    fflush(stdout);
    return cond;
}

static void s_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void s_diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("# ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

static char *s_read_all(FILE *f)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (cap - len < 4096) {
            char *b = realloc(buf, cap *= 2);
            if (!b) free(buf);
            buf = b;
        }
    }
    if (buf) buf[len] = '\0';
    return buf;
}

/* Parses a command line (NULL-terminated) into a fresh cfg. */
static int s_parse(titan_config *cfg, char *err, size_t errcap, ...)
{
    char *argv[32] = {"titan-worker"};
    int argc = 1;
    va_list ap;
    va_start(ap, errcap);
    for (char *a; argc < 31 && (a = va_arg(ap, char *)); argc++)
        argv[argc] = a;
    va_end(ap);
    argv[argc] = NULL;
    titan_settings_action action;
    if (titan_settings_init(cfg) != 0) return -ENOMEM;
    err[0] = '\0';
    opterr = 0; /* what getopt_long would print, the test checks through rc */
    int rc = titan_settings_parse_args(cfg, argc, argv, &action, err, errcap);
    opterr = 1;
    if (rc == 0 && action != TITAN_SETTINGS_RUN) rc = 1;
    return rc;
}

static char s_dir[] = "/tmp/titan-settings-XXXXXX";

static const char *s_write_file(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", s_dir, name);
    FILE *f = fopen(path, "w");
    if (!f) return NULL;
    fputs(text, f);
    fclose(f);
    return path;
}

/* ---- the table itself ---- */

static void test_table(void)
{
    size_t n;
    const titan_setting *t = titan_settings_table(&n);
    s_ok(n >= 36, "the table has every setting (%zu)", n);
    for (size_t i = 0; i < n; i++) {
        const titan_setting *s = &t[i];
        bool good = s->name && *s->name && s->help && *s->help;
        for (const char *p = s->name; good && *p; p++)
            good = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-';
        good &= (s->type == TITAN_SETTING_FLAG) == (s->metavar == NULL);
        good &= s->type != TITAN_SETTING_ENUM || (s->choices && s->choices[0]);
        good &= s->type != TITAN_SETTING_LIST || (s->hi > 0 && s->count_offset > 0);
        good &= s->type != TITAN_SETTING_INT || (s->lo <= s->hi && s->hi <= INT_MAX);
        good &= s->type != TITAN_SETTING_U64 || s->lo <= s->hi;
        for (size_t j = 0; j < n; j++) {
            if (j == i) continue;
            good &= strcmp(s->name, t[j].name) != 0 && (!t[j].alias || strcmp(s->name, t[j].alias) != 0);
            good &=
                !s->alias || (strcmp(s->alias, t[j].name) != 0 && (!t[j].alias || strcmp(s->alias, t[j].alias) != 0));
        }
        good &= titan_settings_find(s->name) == s && (!s->alias || titan_settings_find(s->alias) == s);
        s_ok(good, "--%s: a well-formed row (unique name, help, metavar, range)", s->name);
        /* The help's "(default X)" says the table's default, so the two cannot drift apart. */
        if (s->def && s->type != TITAN_SETTING_FLAG) {
            char want[128];
            snprintf(want, sizeof(want), "default %s", s->def);
            s_ok(strstr(s->help, want) != NULL, "--%s: its help says '%s'", s->name, want);
        }
    }
}

static void test_defaults(void)
{
    titan_config c;
    char err[512];
    int rc = s_parse(&c, err, sizeof(err), NULL);
    s_ok(rc == 0, "no options: rc %d %s", rc, err);
    s_ok(c.nbinds == 1 && strcmp(c.binds[0], "tcp://127.0.0.1:5555") == 0, "default bind tcp://127.0.0.1:5555");
    s_ok(c.device && strcmp(c.device, "auto") == 0 && c.log_level && strcmp(c.log_level, "info") == 0,
         "default device auto, log level info");
    s_ok(c.threads == 0 && c.blas_threads == 0 && c.jobs_inflight == 0,
         "threads, BLAS threads, jobs in flight: 0 (sized at start)");
    s_ok(c.queue == 64 && c.max_client_share == 50 && c.max_request_bytes == 1ULL << 30 &&
             c.max_result_bytes == 1ULL << 30 && c.max_inflight_bytes == 4ULL << 30 && c.max_unread_mb == 256,
         "default queue and byte limits");
    s_ok(c.max_request_bytes == TITAN_DEFAULT_MAX_REQUEST_BYTES && c.max_result_bytes == TITAN_DEFAULT_MAX_RESULT_BYTES &&
             c.max_inflight_bytes == TITAN_DEFAULT_MAX_INFLIGHT_BYTES,
         "the byte limits' defaults are the core's (request.h), which libtitan's in-process engine uses");
    s_ok(c.drain_timeout_ms == 30000 && c.heartbeat_ms == 5000 && !c.insecure && c.visibility_timeout_ms == 60000 &&
             c.max_attempts == 3 && c.result_ttl_s == 86400 && c.max_models == 8 && c.model_memory_mb == 4096,
         "default timeouts, jobs and models");
    s_ok(c.tensor_memory_mb == 0 && c.tensor_quota_mb == 0 && c.max_tensors == 4096 && c.tensor_ttl_s == 0 &&
             c.tensor_orphan_ttl_s == 600 && c.max_worker_tensors == 65536 && c.pool_cache_mb == 0,
         "default resident tensors and pool");
    s_ok(!c.redis_url && !c.http && !c.models && !c.curve_secret && !c.endpoint_file && c.redis_prefix &&
             strcmp(c.redis_prefix, "titan") == 0 && c.jobs_group && strcmp(c.jobs_group, "titan-workers") == 0,
         "off by default: Redis, HTTP, models, CURVE; prefix titan, group titan-workers");
    titan_settings_free(&c);
}

/* ---- values, by name and by alias, on the command line and in the file ---- */

/* A value every setting accepts, other than its default where it has one. */
static const char *s_sample(const titan_setting *s, char *buf, size_t cap)
{
    if (strcmp(s->name, "bind") == 0) return "tcp://127.0.0.1:7";
    if (strcmp(s->name, "http") == 0) return "[::1]:9100";
    switch (s->type) {
    case TITAN_SETTING_INT:
    case TITAN_SETTING_U64:
        snprintf(buf, cap, "%llu", (unsigned long long)s->hi);
        return buf;
    case TITAN_SETTING_ENUM:
        return s->choices[0];
    case TITAN_SETTING_FLAG:
        return "true";
    default:
        return "some-name";
    }
}

static bool s_has_value(const titan_config *c, const titan_setting *s, const char *v)
{
    const char *field = (const char *)c + s->offset;
    switch (s->type) {
    case TITAN_SETTING_INT:
        return (unsigned long long)*(const int *)field == strtoull(v, NULL, 10);
    case TITAN_SETTING_U64:
        return *(const uint64_t *)field == strtoull(v, NULL, 10);
    case TITAN_SETTING_FLAG:
        return *(const bool *)field;
    case TITAN_SETTING_LIST: {
        int count = *(const int *)((const char *)c + s->count_offset);
        return count == 1 && strcmp(((char *const *)field)[0], v) == 0;
    }
    default:
        return *(char *const *)field && strcmp(*(char *const *)field, v) == 0;
    }
}

static void test_every_setting_everywhere(void)
{
    size_t n;
    const titan_setting *t = titan_settings_table(&n);
    for (size_t i = 0; i < n; i++) {
        const titan_setting *s = &t[i];
        char buf[64], opt[80], line[160], err[512];
        const char *v = s_sample(s, buf, sizeof(buf));
        for (int by_alias = 0; by_alias < (s->alias ? 2 : 1); by_alias++) {
            const char *name = by_alias ? s->alias : s->name;
            titan_config c;
            snprintf(opt, sizeof(opt), "--%s", name);
            int rc = s->type == TITAN_SETTING_FLAG ? s_parse(&c, err, sizeof(err), opt, NULL)
                                                   : s_parse(&c, err, sizeof(err), opt, v, NULL);
            s_ok(rc == 0 && s_has_value(&c, s, v), "%s %s on the command line (rc %d %s)", opt,
                 s->type == TITAN_SETTING_FLAG ? "" : v, rc, err);
            titan_settings_free(&c);
            snprintf(line, sizeof(line), "# a file\n%s = %s   # a comment\n", name, v);
            const char *path = s_write_file("one.conf", line);
            rc = s_parse(&c, err, sizeof(err), "--config", path, NULL);
            s_ok(rc == 0 && s_has_value(&c, s, v), "%s = %s in the config file (rc %d %s)", name, v, rc, err);
            titan_settings_free(&c);
        }
    }
}

/* One bad value: the usage error (rc) and its words. */
static void s_refused(const char *what, const char *words, int rc, const char *err)
{
    bool good = rc != 0 && rc != 1 && strstr(err, words);
    s_ok(good, "%s is refused: '%s'", what, words);
    if (!good) s_diag("rc %d, err '%s'", rc, err);
}

static void test_checks(void)
{
    titan_config c;
    char err[512];
    s_refused("--threads 0", "--threads 0: must be 1 to 256", s_parse(&c, err, sizeof(err), "--threads", "0", NULL),
              err);
    titan_settings_free(&c);
    s_refused("--threads many", "--threads many: not a number; must be 1 to 256",
              s_parse(&c, err, sizeof(err), "--threads", "many", NULL), err);
    titan_settings_free(&c);
    s_refused("--max-queue x", "--max-queue x:", s_parse(&c, err, sizeof(err), "--max-queue", "x", NULL), err);
    titan_settings_free(&c);
    s_refused("--max-request-bytes 1", "--max-request-bytes 1: must be 1024 to 1099511627776 bytes",
              s_parse(&c, err, sizeof(err), "--max-request-bytes", "1", NULL), err);
    titan_settings_free(&c);
    s_refused("--drain-timeout 3600001", "must be 0 to 3600000 ms",
              s_parse(&c, err, sizeof(err), "--drain-timeout", "3600001", NULL), err);
    titan_settings_free(&c);
    s_refused("--log-level loud", "--log-level must be error, warn, warning, info or debug, not 'loud'",
              s_parse(&c, err, sizeof(err), "--log-level", "loud", NULL), err);
    titan_settings_free(&c);
    s_refused("--redis-prefix a{b", "--redis-prefix must be 1 to 64 printable characters",
              s_parse(&c, err, sizeof(err), "--redis-prefix", "a{b", NULL), err);
    titan_settings_free(&c);
    s_refused("--jobs-group ''", "--jobs-group must be 1 to 64",
              s_parse(&c, err, sizeof(err), "--jobs-group", "", NULL), err);
    titan_settings_free(&c);
    s_refused("--http nine", "--http: 'nine' is not a port number",
              s_parse(&c, err, sizeof(err), "--http", "nine", NULL), err);
    titan_settings_free(&c);
    s_refused("--bind foo", "bad endpoint 'foo'", s_parse(&c, err, sizeof(err), "--bind", "foo", NULL), err);
    titan_settings_free(&c);
    const char *b = "tcp://127.0.0.1:1";
    s_refused("a ninth --bind", "at most 8 --bind endpoints",
              s_parse(&c, err, sizeof(err), "--bind", b, "--bind", b, "--bind", b, "--bind", b, "--bind", b, "--bind",
                      b, "--bind", b, "--bind", b, "--bind", b, NULL),
              err);
    titan_settings_free(&c);
    s_refused("an unknown option", "", s_parse(&c, err, sizeof(err), "--frobnicate", NULL), err);
    titan_settings_free(&c);
    s_refused("an argument", "unexpected argument 'extra'", s_parse(&c, err, sizeof(err), "extra", NULL), err);
    titan_settings_free(&c);

    /* Numbers take K, M and G (powers of 1024) in either case; the last value given wins. */
    int rc = s_parse(&c, err, sizeof(err), "--max-request-bytes", "2m", "--max-result-bytes", "3K", "--queue", "5",
                     "--max-queue", "6", "--insecure", NULL);
    s_ok(rc == 0 && c.max_request_bytes == 2ULL << 20 && c.max_result_bytes == 3ULL << 10 && c.queue == 6 && c.insecure,
         "suffixes, the alias, the last value and a flag (%s)", err);
    titan_settings_free(&c);
    s_ok(s_parse(&c, err, sizeof(err), "--help", "--frobnicate", NULL) == 1, "--help stops the parse");
    titan_settings_free(&c);
    s_ok(s_parse(&c, err, sizeof(err), "--version", NULL) == 1, "--version stops the parse");
    titan_settings_free(&c);
}

static void test_file(void)
{
    titan_config c;
    char err[512];
    const char *path = s_write_file("w.conf", "# worker\n\nbind = tcp://127.0.0.1:1\nbind = ipc:///tmp/x.sock\n"
                                              "threads = 3\n  queue=7  # spaces and comments\ninsecure = yes\n"
                                              "max-unread-mb = 64\nlog-level = warn\n");
    int rc = s_parse(&c, err, sizeof(err), "--config", path, NULL);
    s_ok(rc == 0 && c.nbinds == 2 && c.threads == 3 && c.queue == 7 && c.insecure && c.max_unread_mb == 64 &&
             strcmp(c.log_level, "warn") == 0,
         "the file's settings; binds add up (%s)", err);
    titan_settings_free(&c);
    rc = s_parse(&c, err, sizeof(err), "--bind", "tcp://127.0.0.1:9", "--config", path, "--queue", "9", NULL);
    s_ok(rc == 0 && c.nbinds == 1 && strcmp(c.binds[0], "tcp://127.0.0.1:9") == 0 && c.queue == 9 && c.threads == 3,
         "the command line wins, and its --bind replaces the file's (%s)", err);
    titan_settings_free(&c);

    struct {
        const char *what, *text, *words;
    } bad[] = {
        {"a bad number on line 2", "queue = 7\nthreads = many\n", "bad.conf:2: --threads many: not a number"},
        {"an unknown key", "colour = blue\n", "bad.conf:1: unknown setting 'colour'"},
        {"a config key", "config = other.conf\n", "bad.conf:1: unknown setting 'config'"},
        {"a key with underscores", "max_request_bytes = 1M\n", "unknown setting 'max_request_bytes'"},
        {"insecure = maybe", "insecure = maybe\n", "bad.conf:1: insecure must be true or false, not 'maybe'"},
        {"a line without =", "threads\n", "bad.conf:1: expected 'key = value'"},
        {"http = nine", "http = nine\n", "bad.conf:1: --http: 'nine' is not a port number"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *p = s_write_file("bad.conf", bad[i].text);
        s_refused(bad[i].what, bad[i].words, s_parse(&c, err, sizeof(err), "--config", p, NULL), err);
        titan_settings_free(&c);
    }
    s_refused("a missing file", "cannot open config file",
              s_parse(&c, err, sizeof(err), "--config", "/nonexistent/w.conf", NULL), err);
    titan_settings_free(&c);
}

/* ---- titan-worker --help ---- */

static void test_help(const char *worker)
{
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "'%s' --help", worker);
    FILE *p = popen(cmd, "r");
    char *out = p ? s_read_all(p) : NULL;
    int st = p ? pclose(p) : -1;
    if (!s_ok(out && st == 0, "titan-worker --help exits 0")) {
        free(out);
        return;
    }
    char *mine = NULL;
    size_t mine_len = 0;
    FILE *m = open_memstream(&mine, &mine_len);
    titan_settings_print_help(m);
    fclose(m);
    s_ok(strcmp(out, mine) == 0, "titan-worker --help is the table's help");
    size_t n;
    const titan_setting *t = titan_settings_table(&n);
    for (size_t i = 0; i < n; i++) {
        char want[96], alias[96] = "";
        snprintf(want, sizeof(want), "\n  --%s ", t[i].name);
        if (t[i].alias) snprintf(alias, sizeof(alias), ", --%s", t[i].alias);
        s_ok(strstr(out, want) && (!t[i].alias || strstr(out, alias)), "--help lists --%s%s%s", t[i].name,
             t[i].alias ? " and --" : "", t[i].alias ? t[i].alias : "");
    }
    free(mine);
    free(out);
}

/* ---- docs/OPERATIONS.md's option table ---- */

/* How the docs write a range's end: bytes with the largest exact K/M/G/T suffix, the rest in full. */
static void s_doc_number(uint64_t v, bool bytes, char *buf, size_t cap)
{
    const char *suffix = "KMGT";
    int k = -1;
    while (bytes && v >= 1024 && v % 1024 == 0 && k < 3) {
        v /= 1024;
        k++;
    }
    snprintf(buf, cap, "%llu%.*s", (unsigned long long)v, k >= 0 ? 1 : 0, k >= 0 ? suffix + k : "");
}

typedef struct {
    char *options, *values, *def;
} s_row;

static void test_docs(const char *doc_path)
{
    FILE *f = fopen(doc_path, "r");
    char *doc = f ? s_read_all(f) : NULL;
    if (f) fclose(f);
    if (!s_ok(doc != NULL, "%s is readable", doc_path)) return;
    const char *header = "\n| option | values | default | notes |\n|---|---|---|---|\n";
    char *p = strstr(doc, header);
    if (!s_ok(p != NULL, "OPERATIONS.md has the option table ('| option | values | default | notes |')")) {
        free(doc);
        return;
    }
    p += strlen(header);
    s_row rows[128];
    size_t nrows = 0;
    while (*p == '|' && nrows < 128) {
        char *eol = strchr(p, '\n');
        if (eol) *eol = '\0';
        /* | OPTIONS | VALUES | DEFAULT | NOTES |: the notes, last, may hold anything */
        char *cells[3];
        char *q = p + 1;
        int k = 0;
        for (; k < 3; k++) {
            char *bar = strstr(q, " | ");
            if (!bar) break;
            *bar = '\0';
            while (*q == ' ')
                q++;
            cells[k] = q;
            q = bar + 3;
        }
        if (s_ok(k == 3, "a table row of four cells: %.60s", p + 1))
            rows[nrows++] = (s_row){.options = cells[0], .values = cells[1], .def = cells[2]};
        if (!eol) break;
        p = eol + 1;
    }

    size_t n;
    const titan_setting *t = titan_settings_table(&n);
    for (size_t i = 0; i < n; i++) {
        const titan_setting *s = &t[i];
        char name[80], alias[80] = "";
        snprintf(name, sizeof(name), "`--%s`", s->name);
        if (s->alias) snprintf(alias, sizeof(alias), "`--%s`", s->alias);
        s_row *r = NULL;
        for (size_t j = 0; j < nrows && !r; j++) {
            if (strstr(rows[j].options, name)) r = &rows[j];
        }
        if (!s_ok(r != NULL, "--%s has a row in OPERATIONS.md's option table", s->name)) continue;
        if (s->alias) s_ok(strstr(r->options, alias) != NULL, "--%s is documented beside --%s", s->alias, s->name);
        /* The default: `VALUE` as the table has it, or words for a setting without one. */
        if (s->def) {
            char want[128];
            snprintf(want, sizeof(want), "`%s`", s->def);
            bool good = strncmp(r->def, want, strlen(want)) == 0;
            s_ok(good, "--%s: the documented default is %s", s->name, want);
            if (!good) s_diag("documented: '%s'", r->def);
        } else {
            bool good = r->def[0] && r->def[0] != '`';
            s_ok(good, "--%s: no default in the table, and none documented as a value", s->name);
            if (!good) s_diag("documented: '%s'", r->def);
        }
        /* The range, in the docs' notation. */
        if (s->type == TITAN_SETTING_INT || s->type == TITAN_SETTING_U64) {
            bool bytes = s->unit && strcmp(s->unit, "bytes") == 0;
            char lo[32], hi[32], want[128];
            s_doc_number(s->lo, bytes, lo, sizeof(lo));
            s_doc_number(s->hi, bytes, hi, sizeof(hi));
            snprintf(want, sizeof(want), "%s … %s%s%s", lo, hi, s->unit && !bytes ? " (" : "",
                     s->unit && !bytes ? s->unit : "");
            bool good = strncmp(r->values, want, strlen(want)) == 0;
            s_ok(good, "--%s: the documented range is %s", s->name, want);
            if (!good) s_diag("documented: '%s'", r->values);
        } else if (s->type == TITAN_SETTING_ENUM) {
            bool good = true;
            for (const char *const *c = s->choices; *c; c++) {
                char want[64];
                snprintf(want, sizeof(want), "`%s`", *c);
                good &= strstr(r->values, want) != NULL;
            }
            s_ok(good, "--%s: every value it takes is documented", s->name);
        }
    }
    /* Every option the table documents is a setting. */
    for (size_t j = 0; j < nrows; j++) {
        for (char *o = rows[j].options; (o = strstr(o, "`--"));) {
            char *end = strchr(o + 3, '`');
            if (!end) break;
            char opt[80];
            snprintf(opt, sizeof(opt), "%.*s", (int)(end - o - 3), o + 3);
            s_ok(titan_settings_find(opt) != NULL, "documented --%s is a setting", opt);
            o = end + 1;
        }
    }
    free(doc);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s PATH/TO/titan-worker PATH/TO/OPERATIONS.md\n", argv[0]);
        return 2;
    }
    if (!mkdtemp(s_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_table();
    test_defaults();
    test_every_setting_everywhere();
    test_checks();
    test_file();
    test_help(argv[1]);
    test_docs(argv[2]);
    printf("1..%d\n", s_n);
    char rm[128];
    snprintf(rm, sizeof(rm), "rm -rf '%s'", s_dir);
    if (system(rm) != 0) s_diag("could not remove %s", s_dir);
    return s_failed ? 1 : 0;
}
