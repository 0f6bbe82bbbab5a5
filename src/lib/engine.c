/* engine.c - the worker's compute code in-process (see engine.h): one request, start to finish, on the
 * calling thread, through the same parse, op table and reply encoding as titan-worker's executors. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <zmq.h>

#include "engine.h"
#include "jsonscan.h"
#include "ops.h"
#include "reply_internal.h"
#include "backends/select.h"
#include "request.h"
#include "sysinfo.h"


struct titan_engine {
    /* Written once by titan_engine_new and only read afterwards: calls share nothing mutable (ops.c and
     * request.c allocate per request; OpenBLAS is called concurrently by the worker's executors too), so
     * titan_engine_call needs no lock. */
    titan_worker_ctx w;
};

static void s_set_err(char *err, size_t errcap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void s_set_err(char *err, size_t errcap, const char *fmt, ...)
{
    if (!err || errcap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errcap, fmt, ap);
    va_end(ap);
}

int titan_engine_new(const char *device, int blas_threads, titan_engine **out, char *err, size_t errcap)
{
    if (!device || !out) {
        s_set_err(err, errcap, "titan_engine_new needs a device name and an output pointer");
        return -EINVAL;
    }
    if (blas_threads < 0) {
        s_set_err(err, errcap, "blas_threads must be 0 (all cores) or more, not %d", blas_threads);
        return -EINVAL;
    }
    titan_engine *e = calloc(1, sizeof(*e));
    if (!e) {
        s_set_err(err, errcap, "out of memory");
        return -ENOMEM;
    }
    titan_sysinfo si;
    titan_sysinfo_read(&si);
    /* The same context a worker builds in main.c, with one executor (the caller's thread) and no queue. */
    e->w.threads = 1;
    e->w.blas_threads = blas_threads > 0 ? blas_threads : si.cores;
    e->w.queue = 0;
    /* The core's default limits, which a default titan-worker has too: a local backend refuses what it does. */
    titan_limits_init(&e->w.limits);
    /* OpenBLAS's thread count is per process: the last engine (or worker backend) opened sets it. */
    char msg[512] = "";
    char why[512] = "";
    bool why_warns = false;
    /* The worker's own choice (backends/select.c): cuda and cuda:N load titan-backend-cuda.so in-process,
     * with its memory pool, errors and readiness; auto falls back to the CPU as the worker does. */
    int rc = titan_backend_select(device, e->w.blas_threads, NULL, &e->w.backend, why, sizeof(why), &why_warns, msg,
                                  sizeof(msg));
    if (rc) {
        if (rc == -ENOMEM) {
            s_set_err(err, errcap, "out of memory while opening device '%s'", device);
        } else {
            /* titan_backend_select says -EINVAL for a name it does not know: no such device, for our contract.
             */
            if (rc != -ENOTSUP) rc = -ENODEV;
            if (msg[0])
                s_set_err(err, errcap, "%s", msg);
            else
                s_set_err(err, errcap, "cannot open device '%s': %s", device, strerror(-rc));
        }
        goto fail;
    }
    if (titan_ops_init(&e->w)) {
        rc = -ENOMEM;
        s_set_err(err, errcap, "out of memory");
        goto fail;
    }
    *out = e;
    return 0;
fail:
    titan_engine_destroy(&e);
    return rc;
}

void titan_engine_destroy(titan_engine **e)
{
    if (!e || !*e) return;
    titan_ops_fini(&(*e)->w);
    titan_backend_destroy(&(*e)->w.backend);
    free(*e);
    *e = NULL;
}

/* Replaces whatever out holds with the error reply for err (server.c, s_job_error). */
static void s_out_fail(titan_out *out, const titan_error *err, json_t *id)
{
    titan_out_release(out);
    if (titan_out_error(out, err, id)) {
        out->hdr = strdup("{\"error\":\"out of memory\",\"code\":\"internal\"}");
        out->hdr_len = out->hdr ? strlen(out->hdr) : 0;
    }
}

int titan_engine_call(titan_engine *e, const char *header_json, const titan_frame *frames, size_t nframes,
                      titan_reply **reply)
{
    if (!e || !header_json || !reply || (nframes && !frames)) return -EINVAL;
    for (size_t i = 0; i < nframes; i++)
        if (!frames[i].data && frames[i].size) return -EINVAL;

    titan_request req;
    titan_out out;
    titan_error err;
    memset(&req, 0, sizeof(req));
    memset(&out, 0, sizeof(out));
    memset(&err, 0, sizeof(err));
    json_t *peek_id = NULL;
    zmq_msg_t msgs[TITAN_MAX_BODY_FRAMES - 1];
    size_t nmsgs = 0;
    size_t hlen = strlen(header_json);
    int rc;

    /* The worker's admission checks (the core's, request.c), in its order; an empty header counts as no
     * header, as an empty first frame does for the worker. */
    uint64_t bytes = hlen;
    bool over = false;
    for (size_t i = 0; i < nframes && !over; i++)
        over = __builtin_add_overflow(bytes, (uint64_t)frames[i].size, &bytes);
    if (titan_request_admit(&e->w.limits, hlen ? nframes + 1 : 0, over ? UINT64_MAX : bytes, &err)) {
        if (hlen) peek_id = titan_request_peek_id(header_json, hlen);
        s_out_fail(&out, &err, peek_id);
        goto reply;
    }

    /* Messages that borrow the caller's memory: with no free function ZeroMQ makes a constant message,
     * which allocates nothing, copies nothing and never writes to the data. */
    for (; nmsgs < nframes; nmsgs++)
        zmq_msg_init_data(&msgs[nmsgs], (void *)frames[nmsgs].data, frames[nmsgs].size, NULL, NULL);

    if (titan_request_parse(&req, header_json, hlen, msgs, nframes, &e->w.limits, &err)) {
        s_out_fail(&out, &err, req.id);
        goto reply;
    }
    const titan_op *op = titan_op_find(req.op);
    if (!op) {
        titan_fail(&err, "unknown_op", "Unknown operation: %s", req.op);
        s_out_fail(&out, &err, req.id);
        goto reply;
    }
    /* "deadline_ms" bounds the wait in a worker's queue. The engine has no queue: the op starts as soon
     * as the call is made, so a (valid) deadline is always met. Light and heavy ops alike run here, on
     * the calling thread. */
    titan_op_run(&e->w, op, &req, &out, &err);
    if (!out.hdr) {
        titan_fail(&err, "internal", "the operation produced no reply");
        s_out_fail(&out, &err, req.id);
    }

reply:
    /* The reply header and result frames move into the reply as they are: no copy. */
    if (out.hdr)
        rc = titan_reply_adopt_pooled(&out.hdr, out.data, out.size, out.pooled, out.ndata, reply);
    else
        rc = -ENOMEM;
    titan_out_release(&out);
    titan_request_release(&req);
    for (size_t i = 0; i < nmsgs; i++)
        zmq_msg_close(&msgs[i]);
    if (peek_id) json_decref(peek_id);
    return rc;
}

const char *titan_engine_device_name(const titan_engine *e)
{
    return e->w.backend->info.name;
}

const char *titan_engine_backend(const titan_engine *e)
{
    return e->w.backend->info.backend;
}
