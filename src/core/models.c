/* models.c - the model registry: manifests, LRU loading under limits, and inference requests. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "clock.h"
#include "models.h"

#define S_MAX_MODELS 256

typedef struct {
    char *name;
    titan_dtype dtype;
    int rank;
    int64_t shape[TITAN_MAX_RANK]; /* -1: any size */
} s_spec;

/* A loaded model. Inference holds a reference, so an unload while it runs frees it after. */
typedef struct {
    void *handle;
    int refs;
    bool detached;
    pthread_mutex_t mu; /* one inference at a time on this model */
} s_instance;

typedef struct {
    char *name, *path, *device;
    const titan_runner *runner;
    s_spec in[TITAN_RUNNER_MAX_TENSORS], out[TITAN_RUNNER_MAX_TENSORS];
    int nin, nout;
    uint64_t bytes;   /* the file's size: the memory estimate */
    s_instance *inst; /* NULL when not loaded */
    double last_used; /* unix seconds; 0: never */
    uint64_t tick;    /* LRU order */
} s_model;

struct titan_models {
    pthread_mutex_t mu; /* guards everything below and each model's inst, last_used, tick */
    s_model *models;
    size_t n;
    int max_models;
    uint64_t memory_bytes;
    uint64_t tick;
    void (*note)(const char *msg);
};

static void s_spec_free(s_spec *s, int n)
{
    for (int i = 0; i < n; i++) free(s[i].name);
}

static int s_parse_specs(json_t *arr, const char *what, s_spec *out, int *n, char *err, size_t errcap)
{
    if (!json_is_array(arr) || json_array_size(arr) < 1 || json_array_size(arr) > TITAN_RUNNER_MAX_TENSORS) {
        snprintf(err, errcap, "\"%s\" must be an array of 1 to %d tensor specs", what, TITAN_RUNNER_MAX_TENSORS);
        return -EINVAL;
    }
    *n = 0;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *o = json_array_get(arr, i), *nm = json_object_get(o, "name"), *dt = json_object_get(o, "dtype"),
               *sh = json_object_get(o, "shape");
        s_spec *s = &out[i];
        memset(s, 0, sizeof(*s));
        s->dtype = json_is_string(dt) ? titan_dtype_from_name(json_string_value(dt)) : TITAN_DTYPE_INVALID;
        if (!json_is_string(nm) || s->dtype == TITAN_DTYPE_INVALID || !json_is_array(sh) || json_array_size(sh) < 1 ||
            json_array_size(sh) > TITAN_MAX_RANK) {
            snprintf(err, errcap,
                     "%s[%zu] needs \"name\", \"dtype\" (float32 or float64) and \"shape\" (1 to %d dimensions, -1 "
                     "for any size)",
                     what, i, TITAN_MAX_RANK);
            return -EINVAL;
        }
        s->rank = (int)json_array_size(sh);
        for (int d = 0; d < s->rank; d++) {
            json_t *v = json_array_get(sh, (size_t)d);
            if (!json_is_integer(v) || (json_integer_value(v) < 1 && json_integer_value(v) != -1)) {
                snprintf(err, errcap, "%s[%zu].shape[%d] must be a positive integer or -1", what, i, d);
                return -EINVAL;
            }
            s->shape[d] = json_integer_value(v);
        }
        s->name = strdup(json_string_value(nm));
        if (!s->name) return -ENOMEM;
        (*n)++;
    }
    return 0;
}

static int s_read_manifest(titan_models *m, const char *dir, const char *file, const titan_runner *const *runners,
                           size_t nrunners, s_model *md, char *err, size_t errcap)
{
    char path[4096], sub[384];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    memset(md, 0, sizeof(*md));
    json_error_t jerr;
    json_t *o = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    int rc = -EINVAL;
    if (!o) {
        snprintf(err, errcap, "%s:%d: %s", path, jerr.line, jerr.text);
        return -EINVAL;
    }
    const char *name = json_string_value(json_object_get(o, "name"));
    const char *rname = json_string_value(json_object_get(o, "runner"));
    const char *mfile = json_string_value(json_object_get(o, "file"));
    const char *device = json_object_get(o, "device") ? json_string_value(json_object_get(o, "device")) : "auto";
    if (!name || !*name || strlen(name) > 128 || !rname || !mfile || !*mfile || !device) {
        snprintf(err, errcap, "%s: needs string fields \"name\", \"runner\" and \"file\" (and \"device\", if given)",
                 path);
        goto out;
    }
    if (strcmp(device, "auto") && strcmp(device, "cpu") && strcmp(device, "cuda")) {
        snprintf(err, errcap, "%s: \"device\" must be auto, cpu or cuda, not '%s'", path, device);
        goto out;
    }
    for (size_t i = 0; i < nrunners && !md->runner; i++)
        if (strcmp(runners[i]->name, rname) == 0) md->runner = runners[i];
    if (!md->runner) {
        /* A model no runner serves stops the start: the worker never serves a directory in part. */
        char have[128] = "";
        for (size_t i = 0, n = 0; i < nrunners && n < sizeof(have); i++)
            n += (size_t)snprintf(have + n, sizeof(have) - n, "%s%s", i ? ", " : "", runners[i]->name);
        snprintf(err, errcap, "%s: no runner '%s' in this worker (it has: %s)", path, rname,
                 nrunners ? have : "none; build it with -Dtorch=enabled, which needs libtorch-dev");
        goto out;
    }
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->models[i].name, name) == 0) {
            snprintf(err, errcap, "%s: model name '%s' is used twice", path, name);
            goto out;
        }
    if (s_parse_specs(json_object_get(o, "inputs"), "inputs", md->in, &md->nin, sub, sizeof(sub)) ||
        s_parse_specs(json_object_get(o, "outputs"), "outputs", md->out, &md->nout, sub, sizeof(sub))) {
        snprintf(err, errcap, "%s: %s", path, sub);
        goto out;
    }
    char mpath[4096];
    if (mfile[0] == '/') snprintf(mpath, sizeof(mpath), "%s", mfile);
    else snprintf(mpath, sizeof(mpath), "%s/%s", dir, mfile);
    struct stat st;
    if (stat(mpath, &st) != 0) {
        snprintf(err, errcap, "%s: model file %s: %s", path, mpath, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errcap, "%s: model file %s is not a regular file", path, mpath);
        goto out;
    }
    md->bytes = (uint64_t)st.st_size;
    md->name = strdup(name);
    md->path = strdup(mpath);
    md->device = strdup(device);
    rc = md->name && md->path && md->device ? 0 : -ENOMEM;
out:
    json_decref(o);
    if (rc) {
        s_spec_free(md->in, md->nin);
        s_spec_free(md->out, md->nout);
        free(md->name);
        free(md->path);
        free(md->device);
        memset(md, 0, sizeof(*md));
    }
    return rc;
}

titan_models *titan_models_new(const char *dir, const titan_runner *const *runners, size_t nrunners, int max_models,
                               uint64_t memory_bytes, void (*note)(const char *msg), char *err, size_t errcap)
{
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errcap, "--models %s: %s", dir, strerror(errno));
        return NULL;
    }
    titan_models *m = calloc(1, sizeof(*m));
    if (!m) {
        closedir(d);
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&m->mu, NULL);
    m->max_models = max_models;
    m->memory_bytes = memory_bytes;
    m->note = note;
    m->models = calloc(S_MAX_MODELS, sizeof(s_model));
    struct dirent *e;
    bool ok = m->models != NULL;
    if (!ok) snprintf(err, errcap, "out of memory");
    while (ok && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len <= 11 || strcmp(e->d_name + len - 11, ".model.json") != 0) continue;
        if (m->n >= S_MAX_MODELS) {
            snprintf(err, errcap, "--models %s: more than %d manifests", dir, S_MAX_MODELS);
            ok = false;
            break;
        }
        if (s_read_manifest(m, dir, e->d_name, runners, nrunners, &m->models[m->n], err, errcap)) ok = false;
        else m->n++;
    }
    closedir(d);
    if (!ok) titan_models_destroy(&m);
    return m;
}

/* Called with m->mu held. Frees the instance once nobody infers with it. */
static void s_detach(titan_models *m, s_model *md)
{
    s_instance *in = md->inst;
    if (!in) return;
    md->inst = NULL;
    in->detached = true;
    if (in->refs == 0) {
        md->runner->unload(in->handle);
        pthread_mutex_destroy(&in->mu);
        free(in);
    }
}

void titan_models_destroy(titan_models **p)
{
    titan_models *m = p ? *p : NULL;
    if (!m) return;
    for (size_t i = 0; i < m->n; i++) {
        s_model *md = &m->models[i];
        s_detach(m, md);
        s_spec_free(md->in, md->nin);
        s_spec_free(md->out, md->nout);
        free(md->name);
        free(md->path);
        free(md->device);
    }
    free(m->models);
    pthread_mutex_destroy(&m->mu);
    free(m);
    *p = NULL;
}

static s_model *s_find(titan_models *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->models[i].name, name) == 0) return &m->models[i];
    return NULL;
}

static json_t *s_specs_json(const s_spec *s, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++) {
        json_t *sh = json_array();
        for (int d = 0; d < s[i].rank; d++) json_array_append_new(sh, json_integer(s[i].shape[d]));
        json_array_append_new(a, json_pack("{s:s, s:s, s:o}", "name", s[i].name, "dtype",
                                           titan_dtype_name(s[i].dtype), "shape", sh));
    }
    return a;
}

json_t *titan_models_list(titan_models *m)
{
    json_t *a = json_array();
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->n; i++) {
        s_model *md = &m->models[i];
        json_array_append_new(
            a, json_pack("{s:s, s:s, s:b, s:o, s:o, s:o, s:s, s:I}", "name", md->name, "runner", md->runner->name,
                         "loaded", md->inst != NULL, "inputs", s_specs_json(md->in, md->nin), "outputs",
                         s_specs_json(md->out, md->nout), "last_used",
                         md->last_used > 0 ? json_real(md->last_used) : json_null(), "device", md->device,
                         "size_bytes", (json_int_t)md->bytes));
    }
    pthread_mutex_unlock(&m->mu);
    return a;
}

/* Called with m->mu held: makes md loaded, evicting the least recently used models as the
 * limits require. Loading happens under the registry lock: loads are rare and serialized. */
static int s_ensure_loaded(titan_models *m, s_model *md, titan_error *err)
{
    if (md->inst) return 0;
    if (md->bytes > m->memory_bytes)
        return titan_fail(err, "too_large", "model '%s' (%llu bytes) is larger than --model-memory-mb allows",
                          md->name, (unsigned long long)md->bytes);
    for (;;) {
        int loaded = 0;
        uint64_t used = 0;
        s_model *lru = NULL;
        for (size_t i = 0; i < m->n; i++) {
            s_model *o = &m->models[i];
            if (!o->inst) continue;
            loaded++;
            used += o->bytes;
            if (!lru || o->tick < lru->tick) lru = o;
        }
        if (loaded < m->max_models && used + md->bytes <= m->memory_bytes) break;
        if (!lru) break;
        char msg[512];
        snprintf(msg, sizeof(msg), "unloading model '%s' (least recently used) to make room for '%s' (%s)",
                 lru->name, md->name, loaded >= m->max_models ? "--max-models" : "--model-memory-mb");
        if (m->note) m->note(msg);
        s_detach(m, lru);
    }
    char msg[384];
    void *h = md->runner->load(md->path, md->device, msg, sizeof(msg));
    if (!h) return titan_fail(err, "device_error", "cannot load model '%s' from %s: %s", md->name, md->path, msg);
    s_instance *in = calloc(1, sizeof(*in));
    if (!in) {
        md->runner->unload(h);
        return titan_fail(err, "internal", "out of memory");
    }
    in->handle = h;
    pthread_mutex_init(&in->mu, NULL);
    md->inst = in;
    md->tick = ++m->tick;
    return 0;
}

int titan_models_load(titan_models *m, const char *name, titan_error *err)
{
    pthread_mutex_lock(&m->mu);
    s_model *md = s_find(m, name);
    int rc = md ? s_ensure_loaded(m, md, err)
                : titan_fail(err, "bad_request", "unknown model '%s': list_models names those available", name);
    pthread_mutex_unlock(&m->mu);
    return rc;
}

int titan_models_unload(titan_models *m, const char *name, titan_error *err)
{
    pthread_mutex_lock(&m->mu);
    s_model *md = s_find(m, name);
    if (md) s_detach(m, md);
    pthread_mutex_unlock(&m->mu);
    if (!md) return titan_fail(err, "bad_request", "unknown model '%s': list_models names those available", name);
    return 0;
}

/* Writes "[d0,d1,...]" into buf (S_SHAPE_TEXT bytes: room for TITAN_MAX_RANK 64-bit sizes). */
#define S_SHAPE_TEXT (TITAN_MAX_RANK * 21 + 3)
static void s_shape_text(char *buf, const int64_t *shape, int rank)
{
    size_t n = 0;
    buf[n++] = '[';
    for (int d = 0; d < rank && d < TITAN_MAX_RANK; d++) {
        int w = snprintf(buf + n, S_SHAPE_TEXT - n - 1, "%s%lld", d ? "," : "", (long long)shape[d]);
        if (w < 0 || (size_t)w >= S_SHAPE_TEXT - n - 1) break;
        n += (size_t)w;
    }
    buf[n++] = ']';
    buf[n] = '\0';
}

/* The errors read "expected <the manifest's>, got <the request's>". */
static int s_check_input(const s_model *md, int i, const titan_tensor_view *v, titan_error *err)
{
    const s_spec *s = &md->in[i];
    if (v->dtype != s->dtype)
        return titan_fail(err, "bad_request", "model '%s' input %d ('%s'): expected dtype %s, got %s", md->name, i,
                          s->name, titan_dtype_name(s->dtype), titan_dtype_name(v->dtype));
    bool ok = v->rank == s->rank;
    for (int d = 0; ok && d < s->rank; d++) ok = s->shape[d] == -1 || s->shape[d] == v->shape[d];
    if (!ok) {
        char want[S_SHAPE_TEXT], got[S_SHAPE_TEXT];
        s_shape_text(want, s->shape, s->rank);
        s_shape_text(got, v->shape, v->rank);
        return titan_fail(err, "bad_request", "model '%s' input %d ('%s'): expected shape %s (-1: any size), got %s",
                          md->name, i, s->name, want, got);
    }
    return 0;
}

int titan_models_infer(titan_models *m, titan_request *req, titan_out *out, titan_error *err)
{
    json_t *jm = json_object_get(req->hdr, "model");
    if (!json_is_string(jm)) return titan_fail(err, "bad_request", "\"model\" must name a model (see list_models)");
    const char *name = json_string_value(jm);
    titan_tensor_view views[TITAN_RUNNER_MAX_TENSORS];
    titan_runner_tensor ins[TITAN_RUNNER_MAX_TENSORS], outs[TITAN_RUNNER_MAX_TENSORS];
    int nviews = 0, nouts = 0, rc = -1;
    bool single = json_object_get(req->hdr, "inputs") == NULL, binary = false;
    s_instance *in = NULL;
    s_model *md;

    pthread_mutex_lock(&m->mu);
    md = s_find(m, name);
    pthread_mutex_unlock(&m->mu);
    if (!md) return titan_fail(err, "bad_request", "unknown model '%s': list_models names those available", name);
    /* The manifest is immutable once read: the inputs are checked without the lock. */
    titan_dtype dts[TITAN_RUNNER_MAX_TENSORS];
    for (int i = 0; i < md->nin; i++) dts[i] = md->in[i].dtype;
    if (single) {
        if (!json_object_get(req->hdr, "input"))
            return titan_fail(err, "bad_request", "send \"inputs\": [tensors] (or \"input\": tensor for a one-input model)");
        if (titan_request_tensor(req, "input", dts[0], &views[0], err)) return -1;
        nviews = 1;
    } else if (titan_request_tensor_list(req, "inputs", dts, TITAN_RUNNER_MAX_TENSORS, views, &nviews, err)) {
        return -1;
    }
    if (titan_request_check_frames(req, err)) goto out;
    if (nviews != md->nin) {
        titan_fail(err, "bad_request", "model '%s' takes %d input(s), but %d were sent", md->name, md->nin, nviews);
        goto out;
    }
    for (int i = 0; i < nviews; i++) {
        if (s_check_input(md, i, &views[i], err)) goto out;
        binary |= views[i].binary;
        memset(&ins[i], 0, sizeof(ins[i]));
        ins[i].dtype = views[i].dtype;
        ins[i].rank = views[i].rank;
        memcpy(ins[i].shape, views[i].shape, sizeof(ins[i].shape));
        ins[i].data = (void *)views[i].data;
        ins[i].bytes = views[i].elems * titan_dtype_size(views[i].dtype);
    }

    pthread_mutex_lock(&m->mu);
    if (s_ensure_loaded(m, md, err) == 0) {
        in = md->inst;
        in->refs++;
        md->tick = ++m->tick;
        md->last_used = titan_clock_wall_s();
    }
    pthread_mutex_unlock(&m->mu);
    if (!in) goto out;
    /* The runner puts the cause first and its context after, as far as room allows: it gets the room
     * the reply has left after "model 'NAME' failed: " (the reply's message is bounded). */
    char msg[sizeof(err->msg)];
    size_t room = sizeof(msg) - strlen(md->name) - sizeof("model '' failed: ") + 1;
    pthread_mutex_lock(&in->mu);
    int irc = md->runner->infer(in->handle, ins, nviews, outs, TITAN_RUNNER_MAX_TENSORS, &nouts, msg, room);
    pthread_mutex_unlock(&in->mu);
    pthread_mutex_lock(&m->mu);
    if (--in->refs == 0 && in->detached) {
        md->runner->unload(in->handle);
        pthread_mutex_destroy(&in->mu);
        free(in);
    }
    pthread_mutex_unlock(&m->mu);
    if (irc) {
        nouts = 0;
        titan_fail(err, "device_error", "model '%s' failed: %s", md->name, msg);
        goto out;
    }
    uint64_t total = 0;
    for (int i = 0; i < nouts; i++) total += outs[i].bytes;
    if (total > req->limits->max_result_bytes) {
        titan_fail(err, "too_large", "the outputs (%llu bytes) are larger than the limit of %llu bytes",
                   (unsigned long long)total, (unsigned long long)req->limits->max_result_bytes);
        goto out;
    }
    int wrc;
    if (binary) {
        json_t *list = json_array();
        for (int i = 0; i < nouts; i++) {
            json_t *sh = json_array();
            for (int d = 0; d < outs[i].rank; d++) json_array_append_new(sh, json_integer(outs[i].shape[d]));
            json_t *t =
                json_pack("{s:s, s:o, s:i}", "dtype", titan_dtype_name(outs[i].dtype), "shape", sh, "frame", i + 1);
            if (t && i < md->nout) json_object_set_new(t, "name", json_string(md->out[i].name));
            json_array_append_new(list, t);
        }
        json_t *o = single && nouts == 1 ? json_pack("{s:O}", "output", json_array_get(list, 0))
                                         : json_pack("{s:O}", "outputs", list);
        json_decref(list);
        wrc = titan_out_json(out, o, req->id);
    } else {
        /* The values as text of our own: jansson cannot write NaN or infinities, and would write a
         * float32 with 17 digits. */
        titan_json_part parts[TITAN_RUNNER_MAX_TENSORS];
        for (int i = 0; i < nouts; i++)
            parts[i] = (titan_json_part){"output", outs[i].dtype, outs[i].data, outs[i].shape, outs[i].rank};
        wrc = single && nouts == 1 ? titan_out_json_tensors(out, NULL, parts, 1, NULL, req->id)
                                   : titan_out_json_tensors(out, "outputs", parts, nouts, NULL, req->id);
    }
    if (wrc) {
        titan_fail(err, "internal", "out of memory");
        goto out;
    }
    if (binary) {
        for (int i = 0; i < nouts; i++) {
            out->data[i] = outs[i].data;
            out->size[i] = outs[i].bytes;
            outs[i].data = NULL;
        }
        out->ndata = (size_t)nouts;
    }
    rc = 0;
out:
    for (int i = 0; i < nouts; i++) free(outs[i].data);
    for (int i = 0; i < nviews; i++) titan_tensor_view_release(&views[i]);
    return rc;
}
