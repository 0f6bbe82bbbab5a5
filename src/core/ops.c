/* ops.c - ping, gpu_info, ops, matrix_multiply, inference and the model ops. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hostpool.h"
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

static json_t *s_str_or_null(const char *v)
{
    return v && v[0] ? json_string(v) : json_null();
}

static int s_gpu_info(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    const titan_device_info *di = &w->backend->info;
    json_t *o = json_pack("{s:s, s:o, s:i, s:o, s:s, s:i, s:i}", "name", di->name, "total_memory_gb",
                          titan_json_figure(true, di->total_memory_gb), "multi_processor_count", di->multi_processor_count,
                          "cuda_capability", s_str_or_null(di->cuda_capability), "backend", di->backend, "executors",
                          w->threads, "blas_threads", w->blas_threads);
    if (!o) return titan_fail(err, "internal", "out of memory");
    if (strcmp(di->backend, "cpu") == 0) json_object_set_new(o, "cores", json_integer(di->multi_processor_count));
    json_object_set_new(o, "device_index", di->device_index >= 0 ? json_integer(di->device_index) : json_null());
    json_object_set_new(o, "driver_version", s_str_or_null(di->driver_version));
    json_object_set_new(o, "runtime_version", s_str_or_null(di->runtime_version));
    json_object_set_new(o, "pci_bus_id", s_str_or_null(di->pci_bus_id));
    /* Live figures (PROTOCOL.md 5.2): null when unknown, never invented. */
    if (w->backend->stats) {
        titan_device_stats st;
        memset(&st, 0, sizeof(st));
        w->backend->stats(w->backend, &st);
        json_object_set_new(o, "memory_used_gb",
                            titan_json_figure(st.has_memory, (double)st.memory_used_bytes / 1e9));
        json_object_set_new(o, "memory_free_gb",
                            titan_json_figure(st.has_memory && st.memory_total_bytes >= st.memory_used_bytes,
                                              (double)(st.memory_total_bytes - st.memory_used_bytes) / 1e9));
        json_object_set_new(o, "utilization", titan_json_figure(st.has_utilization, st.utilization));
        json_object_set_new(o, "temperature_c", titan_json_figure(st.has_temperature, st.temperature_c));
        json_object_set_new(o, "power_w", titan_json_figure(st.has_power, st.power_w));
        json_object_set_new(o, "sm_clock_mhz", titan_json_figure(st.has_clocks, st.sm_clock_mhz));
        json_object_set_new(o, "mem_clock_mhz", titan_json_figure(st.has_clocks, st.mem_clock_mhz));
        if (st.has_pool)
            json_object_set_new(o, "memory_pool",
                                json_pack("{s:I, s:I, s:I, s:I}", "held_bytes", (json_int_t)st.pool_held_bytes,
                                          "cached_bytes", (json_int_t)st.pool_cached_bytes, "device_allocs",
                                          (json_int_t)st.pool_device_allocs, "workspace_bytes",
                                          (json_int_t)st.pool_workspace_bytes));
    }
    /* The host buffer pool (hostpool.h): "os_allocs" counts buffers that came fresh from the allocator. */
    titan_devpool_stats hp;
    titan_hostpool_get_stats(&hp);
    json_object_set_new(o, "host_pool",
                        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "cap_bytes", (json_int_t)titan_hostpool_cap(),
                                  "cached_bytes", (json_int_t)hp.cached_bytes, "in_use_bytes",
                                  (json_int_t)hp.in_use_bytes, "os_allocs", (json_int_t)hp.device_allocs, "os_frees",
                                  (json_int_t)hp.device_frees, "hits", (json_int_t)hp.hits));
    char why[256] = "";
    bool ready = !w->backend->ready || w->backend->ready(w->backend, why, sizeof(why));
    json_object_set_new(o, "ready", json_boolean(ready));
    json_object_set_new(o, "device_state", ready ? json_null() : json_string(why));
    if (w->tensors) {
        uint64_t bytes, count, clients, expired;
        titan_tstore_usage(w->tensors, &bytes, &count, &clients, &expired);
        const titan_tstore_quota *q = titan_tstore_get_quota(w->tensors);
        json_object_set_new(o, "resident",
                            json_pack("{s:I, s:I, s:I, s:I, s:I}", "bytes", (json_int_t)bytes, "tensors",
                                      (json_int_t)count, "clients", (json_int_t)clients, "worker_bytes_limit",
                                      (json_int_t)q->worker_bytes, "client_bytes_limit",
                                      (json_int_t)q->client_bytes));
    }
    if (w->load) {
        titan_worker_load ld;
        w->load(w->load_arg, &ld);
        json_object_set_new(o, "queue_depth", json_integer(ld.queue_depth));
        json_object_set_new(o, "inflight", json_integer(ld.inflight));
        json_object_set_new(o, "uptime_s", titan_json_figure(true, ld.uptime_s));
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

static const char *s_model_name(titan_request *req, titan_error *err);

/* embed and rerank, one request (the worker's server merges requests into batches itself and calls
 * titan_models_encode with many: server.c). */
static int s_encode(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    if (!w->models) return s_no_models(w, err);
    const char *name = s_model_name(req, err);
    if (!name) return -1;
    if (titan_request_check_frames(req, err)) return -1;
    titan_encoder_job job = {.req = req, .out = out};
    titan_models_encode(w->models, name, &job, 1);
    if (job.rc) *err = job.err;
    return job.rc;
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

/* Writes a tensor as nested JSON arrays into a reply {"result":[[...]]}. */
static int s_json_tensor_reply(titan_out *out, titan_dtype dt, const void *c, const int64_t *shape, int rank,
                               json_t *id)
{
    titan_json_part part = {"result", dt, c, shape, rank};
    return titan_out_json_tensors(out, NULL, &part, 1, NULL, id);
}

static int s_no_tensors(titan_error *err)
{
    return titan_fail(err, "unsupported",
                      "resident tensors are not available on this backend (an in-process local backend); send the "
                      "data, or use a titan-worker");
}

static json_t *s_shape_json(const int64_t *shape, int rank)
{
    json_t *a = json_array();
    for (int i = 0; a && i < rank; i++) json_array_append_new(a, json_integer(shape[i]));
    return a;
}

/* {"ref","dtype","shape","bytes"} of a resident tensor. */
static json_t *s_entry_json(const titan_tensor_entry *e)
{
    return json_pack("{s:s, s:s, s:o, s:I}", "ref", e->handle, "dtype", titan_dtype_name(e->dtype), "shape",
                     s_shape_json(e->shape, e->rank), "bytes", (json_int_t)e->bytes);
}

/* Reads "dtype" (the JSON form's element type; float32 when absent) into *dt. */
static int s_json_dtype(titan_request *req, titan_dtype *dt, titan_error *err)
{
    *dt = TITAN_DTYPE_FLOAT32;
    json_t *jd = json_object_get(req->hdr, "dtype");
    if (jd && (!json_is_string(jd) || (*dt = titan_dtype_from_name(json_string_value(jd))) == TITAN_DTYPE_INVALID))
        return titan_fail(err, "bad_request", "\"dtype\" must be \"float32\" or \"float64\"");
    return 0;
}

/* Reads the string member `name` of the header; NULL with err set when it is absent or not a string. */
static const char *s_handle_arg(titan_request *req, const char *name, titan_error *err)
{
    json_t *v = json_object_get(req->hdr, name);
    if (!json_is_string(v)) {
        titan_fail(err, "bad_request", "\"%s\" must be a tensor handle string from tensor_put (see tensor_list)",
                   name);
        return NULL;
    }
    return json_string_value(v);
}

/* Reads an optional boolean member; -1 with err set when it is not a boolean. */
static int s_bool_arg(titan_request *req, const char *name, bool *out, titan_error *err)
{
    json_t *v = json_object_get(req->hdr, name);
    *out = false;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return titan_fail(err, "bad_request", "\"%s\" must be true or false", name);
    *out = json_is_true(v);
    return 0;
}

static int s_tensor_put(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    if (!w->tensors) return s_no_tensors(err);
    titan_dtype jdt;
    if (s_json_dtype(req, &jdt, err)) return -1;
    titan_tensor_view v;
    if (titan_request_tensor(req, "tensor", jdt, &v, err)) return -1;
    titan_tensor_entry *e = NULL;
    int rc = -1;
    if (titan_request_check_frames(req, err)) goto out;
    if (titan_tstore_create(w->tensors, req->client, v.dtype, v.rank, v.shape, &e, err)) goto out;
    if (w->backend->upload(w->backend, e->dev, v.data, e->bytes, err)) goto out;
    titan_tstore_commit(w->tensors, e);
    if (titan_out_json(out, s_entry_json(e), req->id)) {
        size_t freed;
        titan_tstore_free(w->tensors, req->client, e->handle, &freed, err);
        titan_fail(err, "internal", "out of memory");
        goto out;
    }
    rc = 0;
out:
    titan_tstore_release(w->tensors, e);
    titan_tensor_view_release(&v);
    return rc;
}

static int s_tensor_get(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    if (!w->tensors) return s_no_tensors(err);
    const char *h = s_handle_arg(req, "ref", err);
    bool as_json;
    if (!h || s_bool_arg(req, "json", &as_json, err)) return -1;
    titan_tensor_entry *e;
    if (titan_tstore_acquire(w->tensors, req->client, h, &e, err)) return -1;
    int rc = -1;
    void *buf = NULL;
    if (e->bytes > w->limits.max_result_bytes) {
        /* The reply is bounded like any result; the tensor stays, for products that use it. */
        titan_fail(err, "too_large", "tensor '%s' has %zu bytes, over this worker's limit of %llu for a reply "
                   "(max_result_bytes)", h, e->bytes, (unsigned long long)w->limits.max_result_bytes);
        goto out;
    }
    buf = titan_hostbuf_alloc(e->bytes);
    if (!buf) {
        titan_fail(err, "too_large", "not enough host memory to read back %zu bytes", e->bytes);
        goto out;
    }
    if (w->backend->download(w->backend, buf, e->dev, e->bytes, err)) goto out;
    if (as_json) {
        if (s_json_tensor_reply(out, e->dtype, buf, e->shape, e->rank, req->id)) {
            titan_fail(err, "too_large", "not enough memory to write the tensor as JSON; leave out \"json\"");
            goto out;
        }
    } else {
        json_t *o = json_pack("{s:{s:s, s:o, s:i}}", "result", "dtype", titan_dtype_name(e->dtype), "shape",
                              s_shape_json(e->shape, e->rank), "frame", 1);
        if (titan_out_json(out, o, req->id)) {
            titan_fail(err, "internal", "out of memory");
            goto out;
        }
        out->data[0] = buf;
        out->size[0] = e->bytes;
        out->pooled[0] = true;
        out->ndata = 1;
        buf = NULL;
    }
    rc = 0;
out:
    titan_hostbuf_free(buf);
    titan_tstore_release(w->tensors, e);
    return rc;
}

static int s_tensor_free(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    if (!w->tensors) return s_no_tensors(err);
    bool all;
    if (s_bool_arg(req, "all", &all, err)) return -1;
    json_t *o;
    if (all) {
        int n = titan_tstore_free_all(w->tensors, req->client);
        o = json_pack("{s:s, s:i}", "status", "ok", "freed", n);
    } else {
        const char *h = s_handle_arg(req, "ref", err);
        size_t bytes;
        if (!h) return titan_fail(err, "bad_request", "tensor_free needs \"ref\" (a handle) or \"all\": true");
        if (titan_tstore_free(w->tensors, req->client, h, &bytes, err)) return -1;
        o = json_pack("{s:s, s:s, s:I}", "status", "ok", "ref", h, "bytes", (json_int_t)bytes);
    }
    if (titan_out_json(out, o, req->id)) return titan_fail(err, "internal", "out of memory");
    return 0;
}

static int s_tensor_list(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    if (!w->tensors) return s_no_tensors(err);
    if (titan_out_json(out, titan_tstore_list(w->tensors, req->client), req->id))
        return titan_fail(err, "internal", "out of memory");
    return 0;
}

/* Resolves matmul operand `name`: data in the request, or a resident tensor (then *e holds a reference). */
static int s_operand(titan_worker_ctx *w, titan_request *req, const char *name, titan_dtype jdt, titan_tensor_view *v,
                     titan_tensor_entry **e, titan_error *err)
{
    *e = NULL;
    if (titan_request_tensor(req, name, jdt, v, err)) return -1;
    if (!v->ref) return 0;
    if (!w->tensors) {
        titan_tensor_view_release(v);
        return s_no_tensors(err);
    }
    if (titan_tstore_acquire(w->tensors, req->client, v->ref, e, err)) {
        titan_tensor_view_release(v);
        return -1;
    }
    v->dtype = (*e)->dtype;
    v->rank = (*e)->rank;
    memcpy(v->shape, (*e)->shape, sizeof(int64_t) * (size_t)(*e)->rank);
    v->elems = (*e)->bytes / titan_dtype_size((*e)->dtype);
    return 0;
}

static int s_matmul(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    titan_dtype jdt;
    bool keep;
    if (s_json_dtype(req, &jdt, err) || s_bool_arg(req, "keep", &keep, err)) return -1;
    if (keep && !w->tensors) return s_no_tensors(err);
    titan_tensor_view a, b;
    memset(&b, 0, sizeof(b));
    titan_tensor_entry *ea = NULL, *eb = NULL, *ec = NULL;
    void *c = NULL;
    int rc = -1;
    req->allow_refs = true;
    if (s_operand(w, req, "a", jdt, &a, &ea, err)) return -1;
    if (s_operand(w, req, "b", jdt, &b, &eb, err)) goto out;
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
        (!keep && bytes > w->limits.max_result_bytes)) {
        titan_fail(err, "too_large", "the result (%zux%zu %s) is larger than the limit of %llu bytes", m, n,
                   titan_dtype_name(a.dtype), (unsigned long long)w->limits.max_result_bytes);
        goto out;
    }
    titan_operand oa = {ea ? NULL : a.data, ea ? ea->dev : NULL}, ob = {eb ? NULL : b.data, eb ? eb->dev : NULL};
    titan_result oc = {NULL, NULL};
    if (keep) {
        int64_t shape[2] = {(int64_t)m, (int64_t)n};
        if (titan_tstore_create(w->tensors, req->client, a.dtype, 2, shape, &ec, err)) goto out;
        oc.dev = ec->dev;
    } else {
        c = titan_hostbuf_alloc(bytes);
        if (!c) {
            titan_fail(err, "too_large", "not enough memory for a %zux%zu result", m, n);
            goto out;
        }
        oc.host = c;
    }
    if (w->backend->matmul(w->backend, a.dtype, m, k, n, oa, ob, oc, err)) goto out;
    if (keep) {
        titan_tstore_commit(w->tensors, ec);
        if (titan_out_json(out, json_pack("{s:o}", "result", s_entry_json(ec)), req->id)) {
            size_t freed;
            titan_tstore_free(w->tensors, req->client, ec->handle, &freed, err);
            titan_fail(err, "internal", "out of memory");
            goto out;
        }
    } else if (a.binary || b.binary || ea || eb) {
        json_t *o = json_pack("{s:{s:s, s:[I,I], s:i}}", "result", "dtype", titan_dtype_name(a.dtype), "shape",
                              (json_int_t)m, (json_int_t)n, "frame", 1);
        if (titan_out_json(out, o, req->id)) {
            titan_fail(err, "internal", "out of memory");
            goto out;
        }
        out->data[0] = c;
        out->size[0] = bytes;
        out->pooled[0] = true;
        out->ndata = 1;
        c = NULL;
    } else {
        int64_t shape[2] = {(int64_t)m, (int64_t)n};
        if (s_json_tensor_reply(out, a.dtype, c, shape, 2, req->id)) {
            titan_fail(err, "too_large", "not enough memory to write the result as JSON; use binary frames");
            goto out;
        }
    }
    rc = 0;
out:
    titan_hostbuf_free(c);
    if (w->tensors) {
        titan_tstore_release(w->tensors, ea);
        titan_tstore_release(w->tensors, eb);
        titan_tstore_release(w->tensors, ec);
    }
    titan_tensor_view_release(&a);
    titan_tensor_view_release(&b);
    return rc;
}

static const titan_op s_table[] = {
    {"ping", s_ping, false, "liveness check; answers the device name"},
    {"gpu_info", s_gpu_info, false, "the device: name, memory, multiprocessors, CUDA capability"},
    {"ops", s_ops, false, "this list, with limits and the protocol version"},
    {"matrix_multiply", s_matmul, true,
     "C = A x B for 2-D float32/float64 matrices: JSON arrays, binary frames or resident tensors ({\"ref\"}); "
     "\"keep\": true leaves C resident"},
    {"tensor_put", s_tensor_put, true, "stores a tensor in the device's memory and answers its handle {\"ref\"}"},
    {"tensor_get", s_tensor_get, true, "reads a resident tensor back (a binary frame, or JSON with \"json\": true)"},
    {"tensor_free", s_tensor_free, true, "frees a resident tensor (\"ref\"), or all of this client's (\"all\": true)"},
    /* On an executor: a client's list may have thousands of entries, too long a build for the I/O thread. */
    {"tensor_list", s_tensor_list, true, "this client's resident tensors, its usage and the quotas"},
    {"inference", s_inference, true, "runs a model: {\"model\", \"inputs\":[tensors]} answers {\"outputs\"}"},
    {"embed", s_encode, true,
     "text embeddings from an encoder model: {\"model\", \"input\": text, [texts] or [[token ids]]} answers "
     "{\"embeddings\": [n, d]}"},
    {"rerank", s_encode, true,
     "scores documents against a query with a cross-encoder: {\"model\", \"query\", \"documents\"} answers "
     "{\"results\": [{index, score, relevance_score}]}, best first"},
    {"list_models", s_list_models, false, "the models of --models: name, runner, loaded, inputs, outputs"},
    {"load_model", s_load_model, true, "loads a model now (evicting the least recently used over the limits)"},
    {"unload_model", s_unload_model, true, "unloads a model"},
};

static bool s_is_model_op(titan_op_fn fn)
{
    return fn == s_inference || fn == s_encode || fn == s_list_models || fn == s_load_model || fn == s_unload_model;
}

static bool s_is_tensor_op(titan_op_fn fn)
{
    return fn == s_tensor_put || fn == s_tensor_get || fn == s_tensor_free || fn == s_tensor_list;
}

static int s_ops(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err)
{
    json_t *list = json_array();
    for (size_t i = 0; i < sizeof(s_table) / sizeof(s_table[0]); i++) {
        bool supported = s_is_model_op(s_table[i].fn) ? w->models != NULL
                         : s_is_tensor_op(s_table[i].fn) ? w->tensors != NULL
                                                          : true;
        json_t *o = json_pack("{s:s, s:s, s:b}", "name", s_table[i].name, "summary", s_table[i].summary,
                              "supported", supported);
        if (o && s_table[i].fn == s_matmul) {
            json_object_set_new(o, "dtypes", json_pack("[s,s]", "float32", "float64"));
            json_object_set_new(o, "forms", json_pack("[s,s,s]", "json", "binary", "ref"));
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
    if (lim && w->tensors) {
        const titan_tstore_quota *q = titan_tstore_get_quota(w->tensors);
        json_object_set_new(lim, "resident",
                            json_pack("{s:I, s:I, s:i, s:f, s:I, s:f, s:i, s:i}", "worker_bytes",
                                      (json_int_t)q->worker_bytes, "client_bytes", (json_int_t)q->client_bytes,
                                      "client_tensors", q->client_tensors, "idle_ttl_s", q->idle_ttl_s,
                                      "worker_tensors", (json_int_t)q->worker_tensors, "orphan_ttl_s",
                                      q->orphan_ttl_s, "tensor_overhead_bytes", TITAN_TSTORE_TENSOR_OVERHEAD,
                                      "tensor_align_bytes", TITAN_TSTORE_ALIGN));
    }
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
