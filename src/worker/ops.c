/* ops.c - ping, gpu_info, ops, matrix_multiply, inference and the model ops. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "titan/titan.h"

static int s_ping(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    if (!req->id) {
        out->hdr = malloc(w->ping_reply_len + 1);
        if (!out->hdr) return titan_fail(err, "internal", "out of memory");
        memcpy(out->hdr, w->ping_reply, w->ping_reply_len + 1);
        out->hdr_len = w->ping_reply_len;
        return 0;
    }
    json_t *o = json_loadb(w->ping_reply, w->ping_reply_len, 0, NULL);
    if (titan_out_json(out, o, req->id)) return titan_fail(err, "internal", "out of memory");
    return 0;
}

static json_t *s_ping_object(const titan_worker_ctx *w)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:i}", "status", "ok", "gpu", w->backend->info.name, "backend",
                     w->backend->info.backend, "version", TITAN_VERSION, "protocol", TITAN_PROTOCOL_VERSION);
}

static int s_gpu_info(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    const titan_device_info *di = &w->backend->info;
    json_t *o = json_pack("{s:s, s:f, s:i, s:o, s:s, s:i, s:i}", "name", di->name, "total_memory_gb",
                          di->total_memory_gb, "multi_processor_count", di->multi_processor_count,
                          "cuda_capability", di->cuda_capability[0] ? json_string(di->cuda_capability) : json_null(),
                          "backend", di->backend, "executors", w->threads, "blas_threads", w->blas_threads);
    if (o && strcmp(di->backend, "cpu") == 0) json_object_set_new(o, "cores", json_integer(di->multi_processor_count));
    /* Live figures (PROTOCOL.md 5.2): null when unknown, absent where the worker cannot tell at all. */
    if (o && w->backend->stats) {
        titan_device_stats st;
        w->backend->stats(w->backend, &st);
        if (st.has_memory)
            json_object_set_new(o, "memory_used_gb", json_real((double)st.memory_used_bytes / 1e9));
        json_object_set_new(o, "utilization", st.has_utilization ? json_real(st.utilization) : json_null());
        json_object_set_new(o, "temperature_c",
                            st.has_temperature ? json_real(st.temperature_c) : json_null());
    }
    if (o && w->load) {
        titan_worker_load ld;
        w->load(w->load_arg, &ld);
        json_object_set_new(o, "queue_depth", json_integer(ld.queue_depth));
        json_object_set_new(o, "inflight", json_integer(ld.inflight));
        json_object_set_new(o, "uptime_s", json_real(ld.uptime_s));
    }
    if (titan_out_json(out, o, req->id)) return titan_fail(err, "internal", "out of memory");
    return 0;
}

static int s_ops(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err);

static int s_no_models(titan_worker_ctx *w, titan_error *err)
{
    if (w->runner_info)
        return titan_fail(err, "unsupported",
                          "this worker serves no models: start it with --models DIR (docs/OPERATIONS.md)");
    return titan_fail(err, "unsupported",
                      "inference is not available: this worker has no model runner (build with -Dtorch=enabled and "
                      "start it with --models DIR); matrix_multiply works");
}

static int s_inference(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    if (!w->models) return s_no_models(w, err);
    return titan_models_infer(w->models, req, out, err);
}

static const char *s_model_name(titan_request *req, titan_error *err)
{
    json_t *m = json_object_get(req->hdr, "model");
    if (!json_is_string(m)) {
        titan_fail(err, "bad_request", "\"model\" must name a model (see list_models)");
        return NULL;
    }
    return json_string_value(m);
}

static int s_list_models(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    if (!w->models) return s_no_models(w, err);
    json_t *o = json_pack("{s:o, s:s}", "models", titan_models_list(w->models), "runner", w->runner_info);
    if (titan_out_json(out, o, req->id)) return titan_fail(err, "internal", "out of memory");
    return 0;
}

static int s_load_model(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    if (!w->models) return s_no_models(w, err);
    const char *name = s_model_name(req, err);
    if (!name || titan_models_load(w->models, name, err)) return -1;
    if (titan_out_json(out, json_pack("{s:s, s:s, s:b}", "status", "ok", "model", name, "loaded", 1), req->id))
        return titan_fail(err, "internal", "out of memory");
    return 0;
}

static int s_unload_model(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    if (!w->models) return s_no_models(w, err);
    const char *name = s_model_name(req, err);
    if (!name || titan_models_unload(w->models, name, err)) return -1;
    if (titan_out_json(out, json_pack("{s:s, s:s, s:b}", "status", "ok", "model", name, "loaded", 0), req->id))
        return titan_fail(err, "internal", "out of memory");
    return 0;
}

/* Writes the m x n matrix as nested JSON arrays into a reply {"result":[[...]]}. */
static int s_json_matrix_reply(titan_out *out, titan_dtype dt, const void *c, size_t m, size_t n, json_t *id)
{
    char *idtxt = NULL;
    size_t idlen = 0;
    if (id) {
        idtxt = json_dumps(id, JSON_ENCODE_ANY | JSON_COMPACT);
        if (!idtxt) return -ENOMEM;
        idlen = strlen(idtxt);
    }
    /* The longest number text plus a separator, for every element. */
    size_t per = (dt == TITAN_DTYPE_FLOAT32 ? TITAN_FLOAT32_TEXT_MAX : TITAN_FLOAT64_TEXT_MAX) + 1;
    size_t cap = m * n * per + m * 3 + idlen + 64;
    char *buf = malloc(cap);
    if (!buf) {
        free(idtxt);
        return -ENOMEM;
    }
    char *o = buf;
    memcpy(o, "{\"result\":[", 11);
    o += 11;
    for (size_t i = 0; i < m; i++) {
        if (i) *o++ = ',';
        *o++ = '[';
        if (dt == TITAN_DTYPE_FLOAT32) {
            const float *row = (const float *)c + i * n;
            for (size_t j = 0; j < n; j++) {
                if (j) *o++ = ',';
                o += titan_format_float32(row[j], o, 32);
            }
        } else {
            const double *row = (const double *)c + i * n;
            for (size_t j = 0; j < n; j++) {
                if (j) *o++ = ',';
                o += titan_format_float64(row[j], o, 32);
            }
        }
        *o++ = ']';
    }
    *o++ = ']';
    if (idtxt) {
        memcpy(o, ",\"id\":", 6);
        o += 6;
        memcpy(o, idtxt, idlen);
        o += idlen;
        free(idtxt);
    }
    *o++ = '}';
    *o = '\0';
    out->hdr = buf;
    out->hdr_len = (size_t)(o - buf);
    return 0;
}

static int s_matmul(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    titan_dtype jdt = TITAN_DTYPE_FLOAT32;
    json_t *jd = json_object_get(req->hdr, "dtype");
    if (jd) {
        if (!json_is_string(jd) || (jdt = titan_dtype_from_name(json_string_value(jd))) == TITAN_DTYPE_INVALID)
            return titan_fail(err, "bad_request", "\"dtype\" must be \"float32\" or \"float64\"");
    }
    titan_tensor_view a, b;
    memset(&b, 0, sizeof(b));
    void *c = NULL;
    int rc = -1;
    if (titan_request_tensor(req, "a", jdt, &a, err)) return -1;
    if (titan_request_tensor(req, "b", jdt, &b, err)) goto out;
    if (titan_request_check_frames(req, err)) goto out;
    if (a.dtype != b.dtype) {
        titan_fail(err, "bad_request", "a is %s but b is %s: both operands must have the same dtype",
                   titan_dtype_name(a.dtype), titan_dtype_name(b.dtype));
        goto out;
    }
    if (a.rank != 2 || b.rank != 2) {
        titan_fail(err, "bad_request", "matrix_multiply needs two 2-D matrices, but a has %d dimension(s) and b %d",
                   a.rank, b.rank);
        goto out;
    }
    size_t m = (size_t)a.shape[0], k = (size_t)a.shape[1], n = (size_t)b.shape[1];
    if ((size_t)b.shape[0] != k) {
        titan_fail(err, "bad_request",
                   "inner dimensions do not match: a is %zux%zu and b is %lldx%zu; a's columns must equal b's rows", m,
                   k, (long long)b.shape[0], n);
        goto out;
    }
    size_t esize = titan_dtype_size(a.dtype), elems, bytes;
    if (__builtin_mul_overflow(m, n, &elems) || __builtin_mul_overflow(elems, esize, &bytes) ||
        bytes > w->limits.max_result_bytes) {
        titan_fail(err, "too_large", "the result (%zux%zu %s) is larger than the limit of %llu bytes", m, n,
                   titan_dtype_name(a.dtype), (unsigned long long)w->limits.max_result_bytes);
        goto out;
    }
    c = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!c) {
        titan_fail(err, "too_large", "not enough memory for a %zux%zu result", m, n);
        goto out;
    }
    int grc = w->backend->gemm(w->backend, a.dtype, m, k, n, a.data, b.data, c);
    if (grc) {
        titan_fail(err, grc == -EOVERFLOW ? "too_large" : "device_error", "the %s backend failed: %s",
                   w->backend->info.backend, strerror(-grc));
        goto out;
    }
    if (a.binary || b.binary) {
        json_t *o = json_pack("{s:{s:s, s:[I,I], s:i}}", "result", "dtype", titan_dtype_name(a.dtype), "shape",
                              (json_int_t)m, (json_int_t)n, "frame", 1);
        if (titan_out_json(out, o, req->id)) {
            titan_fail(err, "internal", "out of memory");
            goto out;
        }
        out->data[0] = c;
        out->size[0] = bytes;
        out->ndata = 1;
        c = NULL;
    } else if (s_json_matrix_reply(out, a.dtype, c, m, n, req->id)) {
        titan_fail(err, "too_large", "not enough memory to write the result as JSON; use binary frames");
        goto out;
    }
    rc = 0;
out:
    free(c);
    titan_tensor_view_release(&a);
    titan_tensor_view_release(&b);
    return rc;
}

static const titan_op s_table[] = {
    {"ping", s_ping, false, "liveness check; answers the device name"},
    {"gpu_info", s_gpu_info, false, "the device: name, memory, multiprocessors, CUDA capability"},
    {"ops", s_ops, false, "this list, with limits and the protocol version"},
    {"matrix_multiply", s_matmul, true, "C = A x B for 2-D float32/float64 matrices, JSON arrays or binary frames"},
    {"inference", s_inference, true, "runs a model: {\"model\", \"inputs\":[tensors]} answers {\"outputs\"}"},
    {"list_models", s_list_models, false, "the models of --models: name, runner, loaded, inputs, outputs"},
    {"load_model", s_load_model, true, "loads a model now (evicting the least recently used over the limits)"},
    {"unload_model", s_unload_model, true, "unloads a model"},
};

static bool s_is_model_op(titan_op_fn fn)
{
    return fn == s_inference || fn == s_list_models || fn == s_load_model || fn == s_unload_model;
}

static int s_ops(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    json_t *list = json_array();
    for (size_t i = 0; i < sizeof(s_table) / sizeof(s_table[0]); i++) {
        json_t *o = json_pack("{s:s, s:s, s:b}", "name", s_table[i].name, "summary", s_table[i].summary,
                              "supported", !s_is_model_op(s_table[i].fn) || w->models != NULL);
        if (o && s_table[i].fn == s_matmul) {
            json_object_set_new(o, "dtypes", json_pack("[s,s]", "float32", "float64"));
            json_object_set_new(o, "forms", json_pack("[s,s]", "json", "binary"));
        }
        json_array_append_new(list, o);
    }
    json_t *o = json_pack("{s:i, s:s, s:s, s:s, s:o, s:{s:I, s:I, s:I, s:i, s:i, s:i, s:i}}", "protocol",
                          TITAN_PROTOCOL_VERSION, "version", TITAN_VERSION, "backend", w->backend->info.backend,
                          "device", w->backend->info.name, "ops", list, "limits", "max_request_bytes",
                          (json_int_t)w->limits.max_request_bytes, "max_result_bytes",
                          (json_int_t)w->limits.max_result_bytes, "max_inflight_bytes",
                          (json_int_t)w->limits.max_inflight_bytes, "max_frames", TITAN_MAX_BODY_FRAMES,
                          "max_rank", TITAN_MAX_RANK, "max_json_depth", TITAN_JSON_MAX_DEPTH, "queue", w->queue);
    /* A tensor's elements are capped through its bytes: the request cap over the smallest dtype. */
    if (o) json_object_set_new(o, "runner", w->runner_info ? json_string(w->runner_info) : json_null());
    json_t *lim = o ? json_object_get(o, "limits") : NULL;
    if (lim) json_object_set_new(lim, "max_tensor_elements", json_integer((json_int_t)(w->limits.max_request_bytes / 4)));
    if (titan_out_json(out, o, req->id)) return titan_fail(err, "internal", "out of memory");
    return 0;
}

const titan_op *titan_op_find(const char *name)
{
    for (size_t i = 0; i < sizeof(s_table) / sizeof(s_table[0]); i++)
        if (strcmp(s_table[i].name, name) == 0) return &s_table[i];
    return NULL;
}

int titan_ops_init(titan_worker_ctx *w)
{
    json_t *o = s_ping_object(w);
    if (!o) return -ENOMEM;
    w->ping_reply = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!w->ping_reply) return -ENOMEM;
    w->ping_reply_len = strlen(w->ping_reply);
    return 0;
}

void titan_ops_fini(titan_worker_ctx *w)
{
    free(w->ping_reply);
    w->ping_reply = NULL;
}

int titan_op_run(titan_worker_ctx *w, const titan_op *op, titan_request *req, titan_out *out, titan_error *err)
{
    if (op->fn(w, req, out, err) == 0) return 0;
    if (titan_out_error(out, err, req->id)) {
        /* Even the error reply failed to allocate: answer a fixed text. */
        out->hdr = strdup("{\"error\":\"out of memory\",\"code\":\"internal\"}");
        out->hdr_len = out->hdr ? strlen(out->hdr) : 0;
    }
    return -1;
}
