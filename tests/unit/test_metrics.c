/* test_metrics.c - cmocka tests of the worker's metrics (labels, histograms, readiness, the text format,
 * concurrent updates) and of the host figures behind the device gauges, read from fixture files. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend.h"
#include "metrics.h"
#include "request.h"
#include "sysinfo.h"
#include "titan/titan.h"

/* The value of the sample whose line starts with `series` and a space; NAN when there is none. */
static double s_value(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
    }
    return NAN;
}

static char *s_render(titan_metrics *m)
{
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(titan_metrics_render(m, &text, &len), 0);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    return text;
}

static void test_requests_by_op_and_code(void **state)
{
    (void)state;
    titan_metrics *m = titan_metrics_new();
    assert_non_null(m);
    titan_metrics_replied(m, "ping", NULL, 50000, 10, true);   /* 50 us */
    titan_metrics_replied(m, "ping", NULL, 100000, 10, true);  /* exactly 100 us: le="0.0001" is inclusive */
    titan_metrics_replied(m, "ping", NULL, 300000, 10, true);  /* 300 us */
    titan_metrics_replied(m, "ping", NULL, 2000000, 10, true); /* 2 ms */
    titan_metrics_replied(m, "matrix_multiply", "bad_request", 1000, 5, true);
    titan_metrics_replied(m, "fly", "unknown_op", 1000, 5, true);
    titan_metrics_replied(m, NULL, "bad_request", 1000, 5, true);
    titan_metrics_replied(m, "matrix_multiply", "no_such_code", 1000, 5, true);
    titan_metrics_replied(m, "inference", "unsupported", 120000000000ULL, 5, true); /* 2 min: only +Inf */
    char *t = s_render(m);
    assert_true(s_value(t, "titan_requests_total{op=\"ping\",code=\"ok\"}") == 4);
    /* every op has its ok series */
    assert_true(s_value(t, "titan_requests_total{op=\"gpu_info\",code=\"ok\"}") == 0);
    assert_true(s_value(t, "titan_requests_total{op=\"matrix_multiply\",code=\"bad_request\"}") == 1);
    assert_true(s_value(t, "titan_requests_total{op=\"matrix_multiply\",code=\"other\"}") == 1);
    assert_true(s_value(t, "titan_requests_total{op=\"other\",code=\"unknown_op\"}") == 1);
    assert_true(s_value(t, "titan_requests_total{op=\"other\",code=\"bad_request\"}") == 1);
    assert_true(s_value(t, "titan_requests_total{op=\"inference\",code=\"unsupported\"}") == 1);
    assert_null(strstr(t, "fly"));
    assert_null(strstr(t, "no_such_code"));
    /* errors appear once they happen, not before */
    assert_null(strstr(t, "code=\"busy\""));
    /* the ping histogram, cumulative */
    assert_true(s_value(t, "titan_request_duration_seconds_bucket{op=\"ping\",le=\"0.0001\"}") == 2);
    assert_true(s_value(t, "titan_request_duration_seconds_bucket{op=\"ping\",le=\"0.00025\"}") == 2);
    assert_true(s_value(t, "titan_request_duration_seconds_bucket{op=\"ping\",le=\"0.0005\"}") == 3);
    assert_true(s_value(t, "titan_request_duration_seconds_bucket{op=\"ping\",le=\"0.001\"}") == 3);
    assert_true(s_value(t, "titan_request_duration_seconds_bucket{op=\"ping\",le=\"0.0025\"}") == 4);
    assert_true(s_value(t, "titan_request_duration_seconds_bucket{op=\"ping\",le=\"60\"}") == 4);
    assert_true(s_value(t, "titan_request_duration_seconds_bucket{op=\"ping\",le=\"+Inf\"}") == 4);
    assert_true(s_value(t, "titan_request_duration_seconds_count{op=\"ping\"}") == 4);
    assert_true(fabs(s_value(t, "titan_request_duration_seconds_sum{op=\"ping\"}") - 0.00245) < 1e-12);
    assert_true(s_value(t, "titan_request_duration_seconds_bucket{op=\"inference\",le=\"60\"}") == 0);
    assert_true(s_value(t, "titan_request_duration_seconds_bucket{op=\"inference\",le=\"+Inf\"}") == 1);
    assert_true(s_value(t, "titan_request_duration_seconds_count{op=\"other\"}") == 2);
    assert_true(s_value(t, "titan_sent_bytes_total") == 65);
    free(t);
    titan_metrics_destroy(&m);
    assert_null(m);
    titan_metrics_destroy(&m); /* NULL is fine */
}

static void test_bytes_busy_queue_and_load(void **state)
{
    (void)state;
    titan_metrics *m = titan_metrics_new();
    titan_metrics_received(m, 1000);
    titan_metrics_received(m, 24);
    titan_metrics_replied(m, "ping", NULL, 1, 7, true);
    titan_metrics_replied(m, "ping", NULL, 1, 9, false); /* not delivered: dropped, not sent */
    titan_metrics_busy(m, TITAN_BUSY_QUEUE_FULL);
    titan_metrics_busy(m, TITAN_BUSY_QUEUE_FULL);
    titan_metrics_busy(m, TITAN_BUSY_INFLIGHT_BYTES);
    titan_metrics_busy(m, (titan_busy_reason)99); /* ignored */
    titan_metrics_queued(m, 3000000);             /* 3 ms */
    titan_metrics_set_load(m, 2, 1, 4096);
    titan_metrics_set_limits(m, 1, 8);
    char *t = s_render(m);
    assert_true(s_value(t, "titan_received_bytes_total") == 1024);
    assert_true(s_value(t, "titan_sent_bytes_total") == 7);
    assert_true(s_value(t, "titan_replies_dropped_total") == 1);
    assert_true(s_value(t, "titan_busy_rejections_total{reason=\"queue_full\"}") == 2);
    assert_true(s_value(t, "titan_busy_rejections_total{reason=\"client_share\"}") == 0);
    assert_true(s_value(t, "titan_busy_rejections_total{reason=\"inflight_bytes\"}") == 1);
    assert_true(s_value(t, "titan_queue_duration_seconds_bucket{le=\"0.0025\"}") == 0);
    assert_true(s_value(t, "titan_queue_duration_seconds_bucket{le=\"0.005\"}") == 1);
    assert_true(s_value(t, "titan_queue_duration_seconds_count") == 1);
    assert_true(fabs(s_value(t, "titan_queue_duration_seconds_sum") - 0.003) < 1e-12);
    assert_true(s_value(t, "titan_queue_depth") == 2);
    assert_true(s_value(t, "titan_requests_inflight") == 3);
    assert_true(s_value(t, "titan_inflight_bytes") == 4096);
    assert_true(s_value(t, "titan_executors") == 1);
    assert_true(s_value(t, "titan_queue_capacity") == 8);
    free(t);
    titan_worker_load ld;
    titan_metrics_load(m, &ld);
    assert_int_equal(ld.queue_depth, 2);
    assert_int_equal(ld.inflight, 3);
    assert_true(ld.uptime_s >= 0 && ld.uptime_s < 60);
    titan_metrics_destroy(&m);
}

static void test_ready_and_jobs(void **state)
{
    (void)state;
    titan_metrics *m = titan_metrics_new();
    char why[160];
    assert_false(titan_metrics_ready(m, why, sizeof(why)));
    assert_true(strncmp(why, "starting", 8) == 0);
    char *t = s_render(m);
    assert_true(s_value(t, "titan_ready") == 0);
    assert_true(s_value(t, "titan_up") == 1);
    assert_null(strstr(t, "titan_jobs_")); /* no consumer, no job families */
    free(t);
    titan_metrics_set_state(m, TITAN_STATE_SERVING);
    assert_true(titan_metrics_ready(m, why, sizeof(why)));
    assert_string_equal(why, "");
    /* A job consumer that cannot reach Redis: still ready, with a note. */
    titan_metrics_set_jobs_redis_up(m, false);
    assert_true(titan_metrics_ready(m, why, sizeof(why)));
    assert_non_null(strstr(why, "Redis unreachable"));
    titan_metrics_job(m, TITAN_JOBS_DONE);
    titan_metrics_job(m, TITAN_JOBS_DONE);
    titan_metrics_job(m, TITAN_JOBS_DEAD_LETTERED);
    titan_metrics_job(m, (titan_job_outcome)42); /* ignored */
    titan_metrics_job(NULL, TITAN_JOBS_DONE);    /* a consumer without metrics */
    t = s_render(m);
    assert_true(s_value(t, "titan_ready") == 1);
    assert_true(s_value(t, "titan_jobs_redis_up") == 0);
    assert_true(s_value(t, "titan_jobs_processed_total{outcome=\"done\"}") == 2);
    assert_true(s_value(t, "titan_jobs_processed_total{outcome=\"failed\"}") == 0);
    assert_true(s_value(t, "titan_jobs_processed_total{outcome=\"retried\"}") == 0);
    assert_true(s_value(t, "titan_jobs_processed_total{outcome=\"dead_lettered\"}") == 1);
    assert_true(s_value(t, "titan_jobs_processed_total{outcome=\"skipped\"}") == 0);
    free(t);
    titan_metrics_set_jobs_redis_up(m, true);
    assert_true(titan_metrics_ready(m, why, sizeof(why)));
    assert_string_equal(why, "");
    titan_metrics_set_state(m, TITAN_STATE_DRAINING);
    assert_false(titan_metrics_ready(m, why, sizeof(why)));
    assert_true(strncmp(why, "draining", 8) == 0);
    assert_null(strchr(why, '\n'));
    titan_metrics_destroy(&m);
}

/* Every line is a comment (HELP or TYPE) or a sample; every family has both, HELP first. */
static void test_format(void **state)
{
    (void)state;
    titan_metrics *m = titan_metrics_new();
    titan_backend *be = NULL;
    assert_int_equal(titan_backend_cpu_open(1, &be), 0);
    char *t = s_render(m);
    assert_non_null(
        strstr(t, "titan_build_info{version=\"" TITAN_VERSION "\",backend=\"\",device=\"\"} 1\n"));
    assert_null(strstr(t, "titan_device_"));
    free(t);
    /* The device name is a label value: quotes, backslashes and newlines are escaped. */
    snprintf(be->info.name, sizeof(be->info.name), "CPU \"X\" \\ v2\nrev");
    titan_metrics_set_backend(m, be);
    t = s_render(m);
    assert_non_null(strstr(t, "titan_build_info{version=\"" TITAN_VERSION
                              "\",backend=\"cpu\",device=\"CPU \\\"X\\\" \\\\ v2\\nrev\"} 1\n"));
    /* Linux has /proc/meminfo: the memory gauges are there, used within total. */
    double total = s_value(t, "titan_device_memory_total_bytes");
    double used = s_value(t, "titan_device_memory_used_bytes");
    assert_true(total > 0 && used > 0 && used <= total);
    char last_help[128] = "";
    int samples = 0;
    for (char *line = t; *line;) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl); /* the body ends with a newline */
        *nl = '\0';
        if (strncmp(line, "# HELP ", 7) == 0) {
            sscanf(line + 7, "%127s", last_help);
        } else if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[128], type[32];
            assert_int_equal(sscanf(line + 7, "%127s %31s", name, type), 2);
            assert_string_equal(name, last_help);
            assert_true(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                        strcmp(type, "histogram") == 0);
            if (strcmp(type, "counter") == 0) assert_non_null(strstr(name, "_total"));
        } else {
            assert_true(line[0] != '#' && line[0] != '\0');
            assert_true(strncmp(line, last_help, strlen(last_help)) == 0); /* under its own family */
            samples++;
        }
        line = nl + 1;
    }
    assert_true(samples > 50);
    free(t);
    titan_metrics_set_backend(m, NULL);
    titan_backend_destroy(&be);
    titan_metrics_destroy(&m);
}

/* Device figures as a backend reported them, NaN, infinities and extremes included. */
static void s_odd_stats(titan_backend *be, titan_device_stats *out)
{
    (void)be;
    memset(out, 0, sizeof(*out));
    out->has_utilization = out->has_temperature = out->has_power = out->has_clocks = true;
    out->utilization = NAN;
    out->temperature_c = INFINITY;
    out->power_w = -INFINITY;
    out->sm_clock_mhz = 3.4028234663852886e38; /* the largest finite float32 */
    out->mem_clock_mhz = 4.9406564584124654e-324; /* the smallest denormal double */
}

/* Prometheus's own tokens for NaN and the infinities, and values that read back exactly (a denormal
 * is not 0.0000); gpu_info writes such figures as null, never dropping the member. */
static void test_odd_values(void **state)
{
    (void)state;
    titan_metrics *m = titan_metrics_new();
    titan_backend *be = NULL;
    assert_int_equal(titan_backend_cpu_open(1, &be), 0);
    be->stats = s_odd_stats;
    titan_metrics_set_backend(m, be);
    char *t = s_render(m);
    assert_non_null(strstr(t, "\ntitan_device_utilization_ratio NaN\n"));
    assert_non_null(strstr(t, "\ntitan_device_temperature_celsius +Inf\n"));
    assert_non_null(strstr(t, "\ntitan_device_power_watts -Inf\n"));
    assert_true(s_value(t, "titan_device_clock_mhz{domain=\"sm\"}") == 3.4028234663852886e38);
    assert_true(s_value(t, "titan_device_clock_mhz{domain=\"memory\"}") == 4.9406564584124654e-324);
    free(t);
    titan_metrics_set_backend(m, NULL);
    titan_backend_destroy(&be);
    titan_metrics_destroy(&m);

    const double vals[] = {NAN, INFINITY, -INFINITY, 3.4028234663852886e38, 4.9406564584124654e-324, 0.1};
    const char *want[] = {"null", "null", "null", "3.4028234663852886e38", "4.9406564584124654e-324", "0.10000000000000001"};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        json_t *o = json_object();
        json_object_set_new(o, "power_w", titan_json_figure(true, vals[i]));
        json_object_set_new(o, "temperature_c", titan_json_figure(false, vals[i]));
        char *txt = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
        char expect[128];
        snprintf(expect, sizeof(expect), "{\"power_w\":%s,\"temperature_c\":null}", want[i]);
        if (strcmp(txt, expect) != 0) fail_msg("figure %a: %s, expected %s", vals[i], txt, expect);
        free(txt);
        json_decref(o);
    }
}

typedef struct {
    titan_metrics *m;
    int n;
} s_writer;

static void *s_write_many(void *arg)
{
    s_writer *w = arg;
    for (int i = 0; i < w->n; i++) {
        titan_metrics_replied(w->m, "ping", NULL, (uint64_t)(i % 7) * 40000, 3, true);
        titan_metrics_received(w->m, 2);
    }
    return NULL;
}

/* Writers on several threads, a reader rendering meanwhile: nothing is lost, and every render has
 * +Inf equal to _count (a scrape never shows a histogram that contradicts itself). */
static void test_concurrent_updates(void **state)
{
    (void)state;
    enum { THREADS = 4, EACH = 50000 };
    titan_metrics *m = titan_metrics_new();
    pthread_t th[THREADS];
    s_writer w = {m, EACH};
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, s_write_many, &w), 0);
    double prev = 0;
    for (int k = 0; k < 50; k++) {
        char *t = s_render(m);
        double inf = s_value(t, "titan_request_duration_seconds_bucket{op=\"ping\",le=\"+Inf\"}");
        double cnt = s_value(t, "titan_request_duration_seconds_count{op=\"ping\"}");
        assert_true(inf == cnt);
        assert_true(cnt >= prev); /* counters never go back */
        prev = cnt;
        free(t);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    char *t = s_render(m);
    assert_true(s_value(t, "titan_requests_total{op=\"ping\",code=\"ok\"}") == THREADS * EACH);
    assert_true(s_value(t, "titan_request_duration_seconds_count{op=\"ping\"}") == THREADS * EACH);
    assert_true(s_value(t, "titan_sent_bytes_total") == 3.0 * THREADS * EACH);
    assert_true(s_value(t, "titan_received_bytes_total") == 2.0 * THREADS * EACH);
    free(t);
    titan_metrics_destroy(&m);
}

/* ---- host figures from fixture files ---- */

static char s_dir[256];

static void s_write(const char *rel, const char *text)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", s_dir, rel);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void s_zone(int i, const char *type, const char *temp)
{
    char rel[64], p[512];
    snprintf(rel, sizeof(rel), "thermal/thermal_zone%d", i);
    snprintf(p, sizeof(p), "%s/%s", s_dir, rel);
    assert_int_equal(mkdir(p, 0755), 0);
    char f[96];
    snprintf(f, sizeof(f), "%s/type", rel);
    s_write(f, type);
    snprintf(f, sizeof(f), "%s/temp", rel);
    if (temp) s_write(f, temp);
}

static int s_setup_dir(void **state)
{
    (void)state;
    snprintf(s_dir, sizeof(s_dir), "/tmp/titan-test-metrics-XXXXXX");
    return mkdtemp(s_dir) ? 0 : -1;
}

static int s_teardown_dir(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_sysinfo_memory_and_ticks(void **state)
{
    (void)state;
    char p[512];
    uint64_t total = 1, avail = 1, busy = 1, ticks = 1;
    s_write("meminfo", "MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     250 kB\n");
    snprintf(p, sizeof(p), "%s/meminfo", s_dir);
    assert_int_equal(titan_sysinfo_memory(p, &total, &avail), 0);
    assert_int_equal(total, 1000 * 1024);
    assert_int_equal(avail, 250 * 1024);
    s_write("meminfo", "MemTotal:        1000 kB\nMemFree:          100 kB\n"); /* kernels before 3.14 */
    assert_int_equal(titan_sysinfo_memory(p, &total, &avail), -ENODATA);
    snprintf(p, sizeof(p), "%s/nothing", s_dir);
    assert_int_equal(titan_sysinfo_memory(p, &total, &avail), -ENOENT);

    s_write("stat", "cpu  10 20 30 400 50 6 7 8 0 0\ncpu0 5 10 15 200 25 3 3 4 0 0\nintr 1 2 3\n");
    snprintf(p, sizeof(p), "%s/stat", s_dir);
    assert_int_equal(titan_sysinfo_cpu_ticks(p, &busy, &ticks), 0);
    assert_int_equal(busy, 10 + 20 + 30 + 6 + 7 + 8); /* iowait (50) counts as idle */
    assert_int_equal(ticks, 81 + 400 + 50);
    s_write("stat", "cpu  1 2 3 4\n"); /* the oldest kernels: four fields */
    assert_int_equal(titan_sysinfo_cpu_ticks(p, &busy, &ticks), 0);
    assert_int_equal(busy, 6);
    assert_int_equal(ticks, 10);
    s_write("stat", "intr 1 2 3\n");
    assert_int_equal(titan_sysinfo_cpu_ticks(p, &busy, &ticks), -ENODATA);
    /* the real files, where they exist */
    if (access("/proc/stat", R_OK) == 0) {
        assert_int_equal(titan_sysinfo_cpu_ticks("/proc/stat", &busy, &ticks), 0);
        assert_true(ticks > 0 && busy <= ticks);
        assert_int_equal(titan_sysinfo_memory("/proc/meminfo", &total, &avail), 0);
        assert_true(total > 0 && avail <= total);
    }
}

static void test_sysinfo_thermal(void **state)
{
    (void)state;
    char root[300], path[600];
    double c = 0;
    snprintf(root, sizeof(root), "%s/thermal", s_dir);
    assert_int_equal(mkdir(root, 0755), 0);
    assert_int_equal(titan_sysinfo_find_cpu_thermal(root, path, sizeof(path)), -ENOENT); /* no zone */
    s_zone(0, "iwlwifi_1\n", "-274000\n"); /* a sensor that is not there */
    s_zone(1, "acpitz\n", "45000\n");
    s_zone(2, "pch_skylake\n", NULL); /* no temp file */
    assert_int_equal(titan_sysinfo_find_cpu_thermal(root, path, sizeof(path)), 0);
    assert_non_null(strstr(path, "thermal_zone1/temp"));
    s_zone(3, "x86_pkg_temp\n", "61500\n"); /* the CPU package wins */
    assert_int_equal(titan_sysinfo_find_cpu_thermal(root, path, sizeof(path)), 0);
    assert_non_null(strstr(path, "thermal_zone3/temp"));
    assert_int_equal(titan_sysinfo_read_temperature(path, &c), 0);
    assert_true(c == 61.5);
    snprintf(path, sizeof(path), "%s/thermal_zone0/temp", root);
    assert_int_equal(titan_sysinfo_read_temperature(path, &c), -ERANGE);
    assert_true(c == 61.5); /* untouched on failure */
    snprintf(path, sizeof(path), "%s/thermal_zone2/temp", root);
    assert_int_equal(titan_sysinfo_read_temperature(path, &c), -ENOENT);
    char small[8];
    assert_int_equal(titan_sysinfo_find_cpu_thermal(root, small, sizeof(small)), -ENAMETOOLONG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_requests_by_op_and_code),
        cmocka_unit_test(test_odd_values),
        cmocka_unit_test(test_bytes_busy_queue_and_load),
        cmocka_unit_test(test_ready_and_jobs),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_concurrent_updates),
        cmocka_unit_test_setup_teardown(test_sysinfo_memory_and_ticks, s_setup_dir, s_teardown_dir),
        cmocka_unit_test_setup_teardown(test_sysinfo_thermal, s_setup_dir, s_teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
