/* bert_run.c - runs titan's BERT forward pass on the CPU for tests/integration/test_bert_forward.py and the
 * benchmark bench/encoder_cpu.py: loads MODEL_DIR with titan_bert_load, reads token ids as JSON on stdin
 *   {"inputs": [{"ids": [...], "type_ids": [...]}, ...], "normalize": bool}
 * ("type_ids" may be left out: NULL, all 0; "normalize" too: the model's own Normalize module decides) and
 * prints
 *   {"outputs": [[...], ...]}  one row per input (hidden values, or num_labels logits), each float32 as %.9g
 *   (NaN and infinities as Python's json writes them),
 * or {"error": message, "code": code} with exit status 1.
 * Usage: bert_run MODEL_DIR [--repeat N] [--threads K]
 *   --repeat N runs the forward pass N more times after the first and prints the wall times in ms
 *   ({"ms": [...]}) on stderr.
 *   --threads K then runs it 3 times in each of K threads at once on the same model, and adds
 *   "concurrent_max_diff" (the largest difference of any of their outputs from the first) to the output. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "encoder/bert.h"

static int s_fail(const char *code, const char *msg)
{
    json_t *e = json_pack("{s:s, s:s}", "error", msg, "code", code);
    json_dumpf(e, stdout, 0);
    fputc('\n', stdout);
    json_decref(e);
    return 1;
}

static double s_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* ints of a JSON array into a new int32 buffer (at least one element allocated); -1 (nothing allocated) on a
 * non-integer. */
static int s_ints(json_t *a, int32_t **out, size_t *n)
{
    if (!json_is_array(a)) return -1;
    *n = json_array_size(a);
    int32_t *v = malloc((*n ? *n : 1) * sizeof(int32_t));
    if (!v) return -1;
    for (size_t i = 0; i < *n; i++) {
        json_t *x = json_array_get(a, i);
        if (!json_is_integer(x) || json_integer_value(x) < INT32_MIN || json_integer_value(x) > INT32_MAX) {
            free(v);
            return -1;
        }
        v[i] = (int32_t)json_integer_value(x);
    }
    *out = v;
    return 0;
}

typedef struct {
    const titan_bert *m;
    const titan_bert_input *in;
    size_t n, width;
    bool normalize;
    const float *want;
    double maxdiff;
    int failed;
} s_job;

static void *s_thread(void *arg)
{
    s_job *j = arg;
    float *out = malloc(j->n * j->width * sizeof(float));
    if (!out) {
        j->failed = 1;
        return NULL;
    }
    for (int r = 0; r < 3; r++) {
        titan_error err = {0};
        if (titan_bert_forward_cpu(j->m, j->in, j->n, j->normalize, out, &err)) {
            j->failed = 1;
            break;
        }
        for (size_t i = 0; i < j->n * j->width; i++) {
            double d = fabs((double)out[i] - j->want[i]);
            if (!(d <= j->maxdiff)) j->maxdiff = isnan(d) ? INFINITY : d;
        }
    }
    free(out);
    return NULL;
}

int main(int argc, char **argv)
{
    int repeat = 0, threads = 0;
    for (int i = 2; i + 1 < argc && argc % 2 == 0; i += 2) {
        if (!strcmp(argv[i], "--repeat"))
            repeat = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else
            argc = 0;
    }
    if (argc < 2 || argc % 2 || threads < 0 || threads > 64) {
        fprintf(stderr, "usage: %s MODEL_DIR [--repeat N] [--threads K] < inputs.json\n", argv[0]);
        return 2;
    }
    titan_error err = {0};
    titan_bert *m = NULL;
    json_t *req = NULL;
    titan_bert_input *in = NULL;
    float *out = NULL;
    size_t n = 0;
    int rc = 1;
    if (titan_bert_load(argv[1], &m, NULL, NULL, &err)) {
        s_fail(err.code, err.msg);
        goto out;
    }

    json_error_t jerr;
    req = json_loadf(stdin, 0, &jerr);
    json_t *arr = req ? json_object_get(req, "inputs") : NULL;
    if (!json_is_array(arr)) {
        s_fail("bad_request", "stdin: need {\"inputs\": [{\"ids\": [...]}, ...]}");
        goto out;
    }
    size_t count = json_array_size(arr);
    in = calloc(count ? count : 1, sizeof(*in));
    if (!in) {
        s_fail("internal", "out of memory");
        goto out;
    }
    for (; n < count; n++) {
        json_t *x = json_array_get(arr, n), *t = json_object_get(x, "type_ids");
        int32_t *ids = NULL, *types = NULL;
        size_t len, tlen;
        int bad = s_ints(json_object_get(x, "ids"), &ids, &len);
        int tbad = !bad && t && (s_ints(t, &types, &tlen) || tlen != len);
        in[n] = (titan_bert_input){.ids = ids, .type_ids = types, .len = bad ? 0 : len};
        if (bad || tbad) {
            n++; /* freed at the end */
            s_fail("bad_request", bad ? "an input's \"ids\" must be an array of int32"
                                      : "an input's \"type_ids\" must be int32s, as many as its ids");
            goto out;
        }
    }
    json_t *jn = json_object_get(req, "normalize");
    bool normalize = jn ? json_is_true(jn) : m->cfg.normalize;

    size_t width = m->cfg.num_labels > 0 ? (size_t)m->cfg.num_labels : (size_t)m->cfg.hidden;
    out = calloc((n ? n : 1) * width, sizeof(float));
    if (!out) {
        s_fail("internal", "out of memory");
        goto out;
    }
    if (titan_bert_forward_cpu(m, in, n, normalize, out, &err)) {
        s_fail(err.code, err.msg);
        goto out;
    }
    if (repeat > 0) {
        fputs("{\"ms\": [", stderr);
        for (int r = 0; r < repeat; r++) {
            double t0 = s_ms();
            if (titan_bert_forward_cpu(m, in, n, normalize, out, &err)) {
                s_fail(err.code, err.msg);
                goto out;
            }
            fprintf(stderr, "%s%.4f", r ? ", " : "", s_ms() - t0);
        }
        fputs("]}\n", stderr);
    }

    double cmax = 0;
    if (threads > 0) {
        pthread_t tid[64];
        s_job jobs[64];
        int started = 0, failed = 0;
        for (; started < threads; started++) {
            jobs[started] =
                (s_job){.m = m, .in = in, .n = n, .width = width, .normalize = normalize, .want = out};
            if (pthread_create(&tid[started], NULL, s_thread, &jobs[started])) break;
        }
        for (int t = 0; t < started; t++) {
            pthread_join(tid[t], NULL);
            failed |= jobs[t].failed;
            cmax = fmax(cmax, jobs[t].maxdiff);
        }
        if (started < threads || failed) {
            s_fail("internal",
                   started < threads ? "pthread_create failed" : "a concurrent forward pass failed");
            goto out;
        }
    }

    fputs("{\"outputs\": [", stdout);
    for (size_t i = 0; i < n; i++) {
        fputs(i ? ",\n[" : "\n[", stdout);
        for (size_t j = 0; j < width; j++) {
            float v = out[i * width + j];
            if (isfinite(v))
                printf("%s%.9g", j ? ", " : "", v);
            else /* as Python's json reads them */
                printf("%s%s", j ? ", " : "", isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
        }
        fputc(']', stdout);
    }
    fputs("]", stdout);
    if (threads > 0)
        printf(isfinite(cmax) ? ",\n\"concurrent_max_diff\": %.9g" : ",\n\"concurrent_max_diff\": Infinity",
               cmax);
    fputs("}\n", stdout);
    rc = 0;
out:
    for (size_t i = 0; i < n; i++) {
        free((void *)in[i].ids);
        free((void *)in[i].type_ids);
    }
    free(in);
    free(out);
    json_decref(req);
    titan_bert_free(&m);
    return rc;
}
