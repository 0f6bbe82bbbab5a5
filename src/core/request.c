/* request.c - decodes a request's header and tensors, and encodes replies. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hostpool.h"
#include "numfmt.h"
#include "request.h"

void titan_limits_init(titan_limits *l)
{
    l->max_request_bytes = TITAN_DEFAULT_MAX_REQUEST_BYTES;
    l->max_result_bytes = TITAN_DEFAULT_MAX_RESULT_BYTES;
    l->max_inflight_bytes = TITAN_DEFAULT_MAX_INFLIGHT_BYTES;
}

int titan_request_admit(const titan_limits *l, size_t frames, uint64_t bytes, titan_error *err)
{
    if (frames == 0) return titan_fail(err, "bad_request", "empty request: send a JSON header such as {\"op\":\"ping\"}");
    if (frames > TITAN_MAX_BODY_FRAMES)
        return titan_fail(err, "bad_request", "too many frames: a request has at most %d (the header and %d tensors)",
                          TITAN_MAX_BODY_FRAMES, TITAN_MAX_BODY_FRAMES - 1);
    if (bytes > l->max_request_bytes)
        return titan_fail(err, "too_large",
                          "the request has %llu bytes, over this worker's limit of %llu (max_request_bytes)",
                          (unsigned long long)bytes, (unsigned long long)l->max_request_bytes);
    return 0;
}

json_t *titan_request_peek_id(const char *header, size_t len)
{
    const char *val;
    size_t vlen;
    if (!header || titan_json_find_member(header, len, "id", 65536, &val, &vlen) != 0) return NULL;
    /* An id longer than TITAN_ID_MAX is not echoed: a refusal stays small (its text at most 6 bytes an
     * escaped character, plus the quotes). */
    if (vlen > 6 * TITAN_ID_MAX + 2) return NULL;
    json_t *id = json_loadb(val, vlen, JSON_DECODE_ANY, NULL);
    if (id && ((json_is_string(id) && json_string_length(id) <= TITAN_ID_MAX) || json_is_integer(id))) return id;
    if (id) json_decref(id);
    return NULL;
}

int titan_request_parse(titan_request *req, const char *text, size_t len, zmq_msg_t *frames, size_t nframes,
                        const titan_limits *limits, titan_error *err)
{
    memset(req, 0, sizeof(*req));
    req->text = text;
    req->text_len = len;
    req->frames = frames;
    req->nframes = nframes;
    req->limits = limits;
    if (nframes + 1 > TITAN_MAX_BODY_FRAMES)
        return titan_fail(err, "bad_request", "too many frames: a request has at most %d (the header and %d tensors)",
                          TITAN_MAX_BODY_FRAMES, TITAN_MAX_BODY_FRAMES - 1);
    char msg[256];
    /* JSON arrays parse as float32 on the way (the JSON form's default dtype). */
    int rc = titan_json_split_object(text, len, TITAN_DTYPE_FLOAT32, limits->max_request_bytes / 4, &req->split, msg,
                                     sizeof(msg));
    if (rc == -ENOMEM) return titan_fail(err, "internal", "out of memory while reading the request");
    if (rc) return titan_fail(err, "bad_request", "%s", msg);
    json_error_t jerr;
    req->hdr = json_loadb(req->split.rest, req->split.rest_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!req->hdr) return titan_fail(err, "bad_request", "invalid JSON header: %s", jerr.text);
    /* Array values stand as nulls in the DOM: a scalar field given as an array
     * would otherwise read as absent. */
    static const char *scalars[] = {"op", "id", "deadline_ms", "dtype", "ref", "keep", "json", "all"};
    for (size_t i = 0; i < req->split.nspans; i++) {
        for (size_t k = 0; k < sizeof(scalars) / sizeof(scalars[0]); k++) {
            size_t n = strlen(scalars[k]);
            if (req->split.spans[i].key_len == n && memcmp(req->split.spans[i].key, scalars[k], n) == 0)
                return titan_fail(err, "bad_request", "\"%s\" must not be an array", scalars[k]);
        }
    }
    json_t *id = json_object_get(req->hdr, "id");
    if (id && !json_is_null(id)) {
        if (!json_is_string(id) && !json_is_integer(id))
            return titan_fail(err, "bad_request", "\"id\" must be a string or an integer");
        if (json_is_string(id) && json_string_length(id) > TITAN_ID_MAX)
            return titan_fail(err, "bad_request",
                              "\"id\" is %zu bytes long; at most %d are echoed: use a shorter id (this reply "
                              "carries none)",
                              json_string_length(id), TITAN_ID_MAX);
        req->id = id;
    }
    json_t *op = json_object_get(req->hdr, "op");
    if (!op) return titan_fail(err, "bad_request", "missing \"op\": say which operation to run, e.g. {\"op\":\"ping\"}");
    if (!json_is_string(op)) return titan_fail(err, "bad_request", "\"op\" must be a string");
    req->op = json_string_value(op);
    json_t *dl = json_object_get(req->hdr, "deadline_ms");
    if (dl) {
        if (!json_is_integer(dl) || json_integer_value(dl) < 1 || json_integer_value(dl) > 86400000)
            return titan_fail(err, "bad_request", "\"deadline_ms\" must be an integer from 1 to 86400000");
        req->deadline_ms = json_integer_value(dl);
    }
    return 0;
}

static int s_json_tensor(titan_request *req, const char *name, const char *text, size_t len, titan_dtype dt,
                         titan_tensor_view *out, titan_error *err)
{
    char msg[256];
    size_t esize = titan_dtype_size(dt);
    size_t max_elems = req->limits->max_request_bytes / esize;
    void *data = NULL;
    int rc = titan_json_parse_tensor(text, len, dt, max_elems, name, &data, out->shape, &out->rank, msg, sizeof(msg));
    if (rc == -E2BIG) return titan_fail(err, "too_large", "%s", msg);
    if (rc == -ENOMEM) return titan_fail(err, "too_large", "not enough memory for '%s'", name);
    if (rc) return titan_fail(err, "bad_request", "%s", msg);
    out->dtype = dt;
    out->owned = data;
    out->data = data;
    out->binary = false;
    if (titan_shape_elems(dt, out->shape, out->rank, &out->elems)) {
        titan_tensor_view_release(out);
        return titan_fail(err, "too_large", "'%s' is too large", name);
    }
    return 0;
}

static int s_descriptor(titan_request *req, const char *name, json_t *d, titan_tensor_view *out, titan_error *err)
{
    json_t *ref = json_object_get(d, "ref");
    if (ref && !json_is_null(ref)) {
        if (!req->allow_refs)
            return titan_fail(err, "unsupported",
                              "'%s' refers to a resident tensor, which %s does not take; send the data", name,
                              req->op ? req->op : "this operation");
        if (!json_is_string(ref))
            return titan_fail(err, "bad_request", "'%s.ref' must be a tensor handle string from tensor_put", name);
        out->ref = json_string_value(ref);
        return 0;
    }
    json_t *jdt = json_object_get(d, "dtype"), *jshape = json_object_get(d, "shape"),
           *jframe = json_object_get(d, "frame");
    if (!jdt || !json_is_string(jdt))
        return titan_fail(err, "bad_request", "'%s.dtype' must be a string (\"float32\" or \"float64\")", name);
    titan_dtype dt = titan_dtype_from_name(json_string_value(jdt));
    if (dt == TITAN_DTYPE_INVALID)
        return titan_fail(err, "bad_request", "'%s.dtype' \"%s\" is not supported: use \"float32\" or \"float64\"",
                          name, json_string_value(jdt));
    /* The shape array is nested in the descriptor object, so it stays in the DOM. */
    if (!jshape || !json_is_array(jshape))
        return titan_fail(err, "bad_request", "'%s.shape' must be an array of dimensions", name);
    size_t rank = json_array_size(jshape);
    if (rank < 1 || rank > TITAN_MAX_RANK)
        return titan_fail(err, "bad_request", "'%s.shape' must have 1 to %d dimensions, not %zu", name,
                          TITAN_MAX_RANK, rank);
    for (size_t i = 0; i < rank; i++) {
        json_t *v = json_array_get(jshape, i);
        if (!json_is_integer(v))
            return titan_fail(err, "bad_request", "'%s.shape[%zu]' must be an integer", name, i);
        if (json_integer_value(v) < 1)
            return titan_fail(err, "bad_request", "'%s.shape[%zu]' is %lld: every dimension must be at least 1",
                              name, i, (long long)json_integer_value(v));
        out->shape[i] = json_integer_value(v);
    }
    out->rank = (int)rank;
    out->dtype = dt;
    int rc = titan_shape_elems(dt, out->shape, out->rank, &out->elems);
    if (rc == -EOVERFLOW)
        return titan_fail(err, "too_large", "'%s.shape' has more elements than memory can hold (overflow)", name);
    if (rc) return titan_fail(err, "bad_request", "'%s.shape' is invalid", name);
    size_t bytes = out->elems * titan_dtype_size(dt);
    if (bytes > req->limits->max_request_bytes)
        return titan_fail(err, "too_large", "'%s' needs %zu bytes, over the limit of %llu", name, bytes,
                          (unsigned long long)req->limits->max_request_bytes);
    if (!jframe || !json_is_integer(jframe))
        return titan_fail(err, "bad_request", "'%s.frame' must be the integer index of its binary frame", name);
    json_int_t f = json_integer_value(jframe);
    if (f < 1 || (size_t)f > req->nframes)
        return titan_fail(err, "bad_request",
                          "'%s.frame' is %lld but the request has %zu binary frame(s) after the header (frames "
                          "count from 0, the header)",
                          name, (long long)f, req->nframes);
    if (req->frame_used[f]) return titan_fail(err, "bad_request", "frame %lld is used by two tensors", (long long)f);
    zmq_msg_t *m = &req->frames[f - 1];
    size_t have = zmq_msg_size(m);
    if (have != bytes)
        return titan_fail(err, "bad_request", "frame %lld has %zu bytes but '%s' (%s, %zu elements) needs %zu",
                          (long long)f, have, name, titan_dtype_name(dt), out->elems, bytes);
    req->frame_used[f] = true;
    const void *data = zmq_msg_data(m);
    out->binary = true;
    if ((uintptr_t)data % titan_dtype_size(dt) != 0) {
        /* The transport may hand us unaligned bytes; BLAS wants aligned elements. */
        void *copy = titan_hostbuf_alloc(bytes);
        if (!copy) return titan_fail(err, "too_large", "not enough memory for '%s'", name);
        memcpy(copy, data, bytes);
        out->owned_pooled = copy;
        out->data = copy;
    } else {
        out->data = data;
    }
    return 0;
}

int titan_request_tensor(titan_request *req, const char *name, titan_dtype json_dtype, titan_tensor_view *out,
                         titan_error *err)
{
    memset(out, 0, sizeof(*out));
    size_t nlen = strlen(name);
    for (size_t i = 0; i < req->split.nspans; i++) {
        titan_json_span *sp = &req->split.spans[i];
        if (sp->key_len != nlen || memcmp(sp->key, name, nlen) != 0) continue;
        if (sp->status == -E2BIG)
            return titan_fail(err, "too_large", "'%s' has more elements than the request size limit allows", name);
        if (sp->data && sp->dtype == json_dtype) {
            out->dtype = sp->dtype;
            out->rank = sp->rank;
            memcpy(out->shape, sp->shape, sizeof(out->shape));
            out->owned = sp->data;
            out->data = sp->data;
            sp->data = NULL;
            if (titan_shape_elems(out->dtype, out->shape, out->rank, &out->elems)) {
                titan_tensor_view_release(out);
                return titan_fail(err, "too_large", "'%s' is too large", name);
            }
            return 0;
        }
        return s_json_tensor(req, name, sp->val, sp->val_len, json_dtype, out, err);
    }
    json_t *v = json_object_get(req->hdr, name);
    if (!v || json_is_null(v))
        return titan_fail(err, "bad_request",
                          "missing '%s': send a nested array of numbers or a descriptor "
                          "{\"dtype\",\"shape\",\"frame\"}",
                          name);
    if (json_is_object(v)) return s_descriptor(req, name, v, out, err);
    return titan_fail(err, "bad_request", "'%s' must be a nested array of numbers or a tensor descriptor object",
                      name);
}

int titan_request_tensor_list(titan_request *req, const char *name, const titan_dtype *json_dtypes, int max,
                              titan_tensor_view *views, int *n, titan_error *err)
{
    const titan_json_span *sp = NULL;
    size_t nlen = strlen(name);
    for (size_t i = 0; i < req->split.nspans && !sp; i++)
        if (req->split.spans[i].key_len == nlen && memcmp(req->split.spans[i].key, name, nlen) == 0)
            sp = &req->split.spans[i];
    if (!sp) return titan_fail(err, "bad_request", "'%s' must be an array of tensors", name);
    /* Walk the array text's top-level elements: nested arrays parse straight into tensors,
     * descriptor objects go through the DOM (they are small). */
    const char *t = sp->val, *end = sp->val + sp->val_len;
    int count = 0;
    char label[64];
    t++; /* '[' */
    while (t < end) {
        while (t < end && (*t == ' ' || *t == '\t' || *t == '\n' || *t == '\r' || *t == ',')) t++;
        if (t >= end || *t == ']') break;
        const char *s = t;
        int depth = 0;
        bool str = false;
        for (; t < end; t++) {
            if (str) {
                if (*t == '\\') t++;
                else if (*t == '"') str = false;
                continue;
            }
            if (*t == '"') str = true;
            else if (*t == '[' || *t == '{') depth++;
            else if (*t == ']' || *t == '}') {
                if (--depth == 0) {
                    t++;
                    break;
                }
            } else if (depth == 0 && *t == ',') break;
        }
        if (count >= max) {
            titan_fail(err, "bad_request", "'%s' has more than %d tensors", name, max);
            goto fail;
        }
        snprintf(label, sizeof(label), "%s[%d]", name, count);
        memset(&views[count], 0, sizeof(views[count]));
        if (*s == '[') {
            if (s_json_tensor(req, label, s, (size_t)(t - s), json_dtypes[count], &views[count], err)) goto fail;
        } else if (*s == '{') {
            json_error_t jerr;
            json_t *d = json_loadb(s, (size_t)(t - s), 0, &jerr);
            if (!d) {
                titan_fail(err, "bad_request", "'%s' is not a valid descriptor: %s", label, jerr.text);
                goto fail;
            }
            int rc = s_descriptor(req, label, d, &views[count], err);
            json_decref(d);
            if (rc) {
                titan_tensor_view_release(&views[count]);
                goto fail;
            }
        } else {
            titan_fail(err, "bad_request", "'%s' must be a nested array of numbers or a tensor descriptor", label);
            goto fail;
        }
        count++;
    }
    *n = count;
    return 0;
fail:
    for (int i = 0; i < count; i++) titan_tensor_view_release(&views[i]);
    return -1;
}

int titan_request_check_frames(titan_request *req, titan_error *err)
{
    for (size_t f = 1; f <= req->nframes; f++)
        if (!req->frame_used[f])
            return titan_fail(err, "bad_request", "binary frame %zu is not referenced by any tensor descriptor", f);
    return 0;
}

void titan_request_release(titan_request *req)
{
    if (req->hdr) json_decref(req->hdr);
    titan_json_split_release(&req->split);
    memset(req, 0, sizeof(*req));
}

void titan_tensor_view_release(titan_tensor_view *v)
{
    free(v->owned);
    titan_hostbuf_free(v->owned_pooled);
    memset(v, 0, sizeof(*v));
}

int titan_out_json(titan_out *out, json_t *obj, json_t *id)
{
    if (!obj) return -ENOMEM;
    if (id) json_object_set(obj, "id", id);
    char *s = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!s) return -ENOMEM;
    free(out->hdr);
    out->hdr = s;
    out->hdr_len = strlen(s);
    return 0;
}

json_t *titan_json_figure(bool known, double v)
{
    return known && isfinite(v) ? json_real(v) : json_null();
}

int titan_out_json_tensors(titan_out *out, const char *list_key, const titan_json_part *parts, int n, json_t *obj,
                           json_t *id)
{
    char *idtxt = NULL, *objtxt = NULL;
    int rc = -ENOMEM;
    if (id && !(idtxt = json_dumps(id, JSON_ENCODE_ANY | JSON_COMPACT))) goto out;
    if (obj && !(objtxt = json_dumps(obj, JSON_COMPACT))) goto out;
    /* Keys are the handlers' own literals; their quotes, colons, commas and brackets fit in 64 per part. */
    size_t cap = 64 + (list_key ? strlen(list_key) : 0) + (idtxt ? strlen(idtxt) : 0) +
                 (objtxt ? strlen(objtxt) : 0);
    for (int i = 0; i < n; i++) {
        size_t b = titan_tensor_text_bound(parts[i].dtype, parts[i].shape, parts[i].rank);
        if (b == 0 || __builtin_add_overflow(cap, b + 64 + (list_key ? 0 : strlen(parts[i].key)), &cap)) {
            rc = -EOVERFLOW;
            goto out;
        }
    }
    char *buf = malloc(cap), *o = buf;
    if (!buf) goto out;
    o += sprintf(o, "{");
    if (list_key) o += sprintf(o, "\"%s\":[", list_key);
    for (int i = 0; i < n; i++) {
        if (i) *o++ = ',';
        if (!list_key) o += sprintf(o, "\"%s\":", parts[i].key);
        o = titan_tensor_text(o, parts[i].dtype, parts[i].data, parts[i].shape, parts[i].rank);
    }
    if (list_key) *o++ = ']';
    if (objtxt && strcmp(objtxt, "{}") != 0) { /* its members, without the braces */
        size_t len = strlen(objtxt);
        *o++ = ',';
        memcpy(o, objtxt + 1, len - 2);
        o += len - 2;
    }
    if (idtxt) o += sprintf(o, ",\"id\":%s", idtxt);
    *o++ = '}';
    *o = '\0';
    free(out->hdr);
    out->hdr = buf;
    out->hdr_len = (size_t)(o - buf);
    rc = 0;
out:
    if (obj) json_decref(obj);
    free(idtxt);
    free(objtxt);
    return rc;
}

int titan_out_error(titan_out *out, const titan_error *err, json_t *id)
{
    for (size_t i = 0; i < out->ndata; i++) titan_out_free_data(out, i);
    out->ndata = 0;
    json_t *o = json_object();
    if (!o) return -ENOMEM;
    json_object_set_new(o, "error", json_string(err->msg));
    if (!json_object_get(o, "error")) /* a message that is not UTF-8 cannot be echoed */
        json_object_set_new(o, "error", json_string("request rejected"));
    json_object_set_new(o, "code", json_string(err->code ? err->code : "internal"));
    return titan_out_json(out, o, id);
}

void titan_out_release(titan_out *out)
{
    free(out->hdr);
    for (size_t i = 0; i < out->ndata; i++) titan_out_free_data(out, i);
    memset(out, 0, sizeof(*out));
}

void titan_out_free_data(titan_out *out, size_t i)
{
    if (out->pooled[i])
        titan_hostbuf_free(out->data[i]);
    else
        free(out->data[i]);
    out->data[i] = NULL;
    out->pooled[i] = false;
}
