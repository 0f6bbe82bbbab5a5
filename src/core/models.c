/* models.c - the model registry: manifests, LRU loading under limits, and inference requests. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <limits.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "clock.h"
#include "encoder/bert.h"
#include "encoder/encoder.h"
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
    const titan_runner *runner; /* &s_bert_runner for an encoder */
    bool encoder;               /* a BERT-family model directory: embed and rerank (encoder.h) */
    titan_encoder_opts eopts;
    titan_bert_config ecfg;     /* its config.json, read when the registry is built */
    s_spec in[TITAN_RUNNER_MAX_TENSORS], out[TITAN_RUNNER_MAX_TENSORS];
    int nin, nout;
    uint64_t bytes;   /* the file's size: the memory estimate */
    s_instance *inst; /* NULL when not loaded */
    double last_used; /* unix seconds; 0: never */
    uint64_t tick;    /* LRU order */
} s_model;

struct titan_models {
    titan_backend *backend; /* encoders run their forward pass on it when it has one (NULL: the CPU) */
    pthread_mutex_t mu; /* guards everything below and each model's inst, last_used, tick */
    s_model *models;
    size_t n;
    int max_models;
    uint64_t memory_bytes;
    uint64_t tick;
    void (*note)(const char *msg);
};

/* Encoders are served by the core itself (encoder.h), not by a loadable runner; this entry gives them a name in
 * list_models and frees them. They are loaded by s_ensure_loaded and run by titan_models_encode. */
static void s_bert_unload(void *h)
{
    titan_encoder *e = h;
    titan_encoder_free(&e);
}

static void s_bert_describe(char *buf, size_t cap)
{
    snprintf(buf, cap, "titan BERT encoder, cpu");
}

static const titan_runner s_bert_runner = {"bert", NULL, NULL, s_bert_unload, s_bert_describe};

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

static bool s_name_taken(const titan_models *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->models[i].name, name) == 0) return true;
    return false;
}

/* An encoder: the model directory `mdir` served as `name`, with a manifest's options (manifest may be NULL).
 * Reads its config.json now, so that a model the worker cannot serve stops the start with the reason. `where`
 * names the manifest or directory in errors. */
static int s_read_encoder(titan_models *m, const char *name, const char *mdir, json_t *manifest, const char *where,
                          s_model *md, char *err, size_t errcap)
{
    memset(md, 0, sizeof(*md));
    if (s_name_taken(m, name)) {
        snprintf(err, errcap, "%s: model name '%s' is used twice", where, name);
        return -EINVAL;
    }
    titan_encoder_opts_default(&md->eopts);
    char sub[300];
    if (manifest && titan_encoder_opts_parse(manifest, &md->eopts, sub, sizeof(sub))) {
        snprintf(err, errcap, "%s: %s", where, sub);
        return -EINVAL;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/config.json", mdir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errcap, "%s: %s: %s (a model directory needs the config.json that came with it)", where, path,
                 strerror(errno));
        return -EINVAL;
    }
    enum { CONFIG_MAX = 1 << 20 };
    char *text = malloc(CONFIG_MAX + 1);
    size_t len = text ? fread(text, 1, CONFIG_MAX + 1, f) : 0;
    fclose(f);
    if (!text || len > CONFIG_MAX) {
        free(text);
        snprintf(err, errcap, "%s: %s is %s", where, path, text ? "over 1 MiB: not a model's config" : "unreadable (out of memory)");
        return -EINVAL;
    }
    titan_error cerr = {0};
    int rc = titan_bert_config_parse(text, len, &md->ecfg, &cerr);
    free(text);
    if (rc) {
        snprintf(err, errcap, "%s: %s: %s", where, path, cerr.msg);
        return -EINVAL;
    }
    struct stat st;
    snprintf(path, sizeof(path), "%s/model.safetensors", mdir);
    if (stat(path, &st) != 0) {
        snprintf(err, errcap, "%s: %s: %s (titan reads the weights from model.safetensors)", where, path,
                 strerror(errno));
        return -EINVAL;
    }
    md->bytes = (uint64_t)st.st_size;
    md->encoder = true;
    md->runner = &s_bert_runner;
    md->name = strdup(name);
    md->path = strdup(mdir);
    md->device = strdup("cpu");
    if (!md->name || !md->path || !md->device) {
        free(md->name);
        free(md->path);
        free(md->device);
        memset(md, 0, sizeof(*md));
        snprintf(err, errcap, "out of memory");
        return -ENOMEM;
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
    if (strcmp(rname, "bert") == 0) {
        /* An encoder's manifest names its directory in "file" and sets serving options (encoder.h). */
        char mdir[4096];
        if (mfile[0] == '/') snprintf(mdir, sizeof(mdir), "%s", mfile);
        else snprintf(mdir, sizeof(mdir), "%s/%s", dir, mfile);
        rc = s_read_encoder(m, name, mdir, o, path, md, err, errcap);
        json_decref(o);
        return rc;
    }
    for (size_t i = 0; i < nrunners && !md->runner; i++)
        if (strcmp(runners[i]->name, rname) == 0) md->runner = runners[i];
    if (!md->runner) {
        /* A model no runner serves stops the start: the worker never serves a directory in part. */
        char have[128] = "";
        for (size_t i = 0, n = 0; i < nrunners && n < sizeof(have); i++)
            n += (size_t)snprintf(have + n, sizeof(have) - n, "%s%s", i ? ", " : "", runners[i]->name);
        snprintf(err, errcap, "%s: no runner '%s' in this worker (it has: bert%s%s)", path, rname,
                 nrunners ? ", " : "", nrunners ? have : "; for TorchScript build it with -Dtorch=enabled, which needs libtorch-dev");
        goto out;
    }
    if (s_name_taken(m, name)) {
        snprintf(err, errcap, "%s: model name '%s' is used twice", path, name);
        goto out;
    }
    if (s_parse_specs(json_object_get(o, "inputs"), "inputs", md->in, &md->nin, sub, sizeof(sub)) ||
        s_parse_specs(json_object_get(o, "outputs"), "outputs", md->out, &md->nout, sub, sizeof(sub))) {
        snprintf(err, errcap, "%s: %s", path, sub);
        goto out;
    }
    /* Dynamic batching, when the manifest asks for it (max_batch > 1): requests are stacked along the first
     * dimension, which must then be the batch in every input and output. */
    titan_encoder_opts_default(&md->eopts);
    md->eopts.max_batch = 1;
    if (titan_encoder_opts_parse(o, &md->eopts, sub, sizeof(sub))) {
        snprintf(err, errcap, "%s: %s", path, sub);
        goto out;
    }
    if (md->eopts.max_batch > 1) {
        for (int i = 0; i < md->nin + md->nout; i++) {
            const s_spec *sp = i < md->nin ? &md->in[i] : &md->out[i - md->nin];
            if (sp->shape[0] != -1) {
                snprintf(err, errcap, "%s: \"max_batch\" %d stacks requests along the first dimension, but %s '%s' "
                         "has %lld there: give every input and output -1 (any size) as its first dimension, or "
                         "leave max_batch out", path, md->eopts.max_batch, i < md->nin ? "input" : "output",
                         sp->name, (long long)sp->shape[0]);
                goto out;
            }
        }
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

int titan_models_dir_names_runner(const char *dir, const char *runner)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int found = 0;
    struct dirent *e;
    while (!found && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len <= 11 || strcmp(e->d_name + len - 11, ".model.json") != 0) continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        json_t *o = json_load_file(path, 0, NULL);
        const char *r = json_string_value(json_object_get(o, "runner"));
        /* An unreadable manifest counts as naming it: titan_models_new then says what is wrong with it. */
        found = !o || (r && strcmp(r, runner) == 0);
        json_decref(o);
    }
    closedir(d);
    return found;
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
    /* Then every folder holding a config.json (a model directory as downloaded) that no manifest names: served
     * under the folder's name, with the default options. */
    if (ok) rewinddir(d);
    while (ok && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char sub[4096], cfg[4200];
        snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name);
        snprintf(cfg, sizeof(cfg), "%s/config.json", sub);
        struct stat st;
        if (stat(sub, &st) != 0 || !S_ISDIR(st.st_mode) || access(cfg, F_OK) != 0) continue;
        char real[PATH_MAX];
        bool named = false;
        if (realpath(sub, real)) {
            for (size_t i = 0; i < m->n && !named; i++) {
                char other[PATH_MAX];
                named = m->models[i].encoder && realpath(m->models[i].path, other) && strcmp(real, other) == 0;
            }
        }
        if (named) continue;
        if (strlen(e->d_name) > 128) {
            snprintf(err, errcap, "--models %s: folder name '%.40s...' is over 128 characters: rename it", dir,
                     e->d_name);
            ok = false;
            break;
        }
        if (m->n >= S_MAX_MODELS) {
            snprintf(err, errcap, "--models %s: more than %d models", dir, S_MAX_MODELS);
            ok = false;
            break;
        }
        if (s_read_encoder(m, e->d_name, sub, NULL, sub, &m->models[m->n], err, errcap)) ok = false;
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
        json_t *o = json_pack("{s:s, s:s, s:b, s:o, s:o, s:o, s:s, s:I}", "name", md->name, "runner", md->runner->name,
                              "loaded", md->inst != NULL, "inputs", s_specs_json(md->in, md->nin), "outputs",
                              s_specs_json(md->out, md->nout), "last_used",
                              md->last_used > 0 ? json_real(md->last_used) : json_null(), "device", md->device,
                              "size_bytes", (json_int_t)md->bytes);
        if (o && md->encoder) {
            /* max_tokens: the loaded model's (sentence-transformers' max_seq_length, the tokenizer's cap), before
             * its first load the config's max_position_embeddings. */
            int max_tokens = md->inst ? titan_encoder_max_tokens(md->inst->handle) : md->ecfg.max_positions;
            json_object_set_new(o, "kind", json_string(md->ecfg.num_labels > 0 ? "rerank" : "embedding"));
            json_object_set_new(o, "dims", json_integer(md->ecfg.num_labels > 0 ? md->ecfg.num_labels : md->ecfg.hidden));
            json_object_set_new(o, "max_tokens", json_integer(max_tokens));
            json_object_set_new(o, "device", json_string(m->backend && m->backend->bert_forward
                                                             ? m->backend->info.backend : "cpu"));
        }
        json_array_append_new(a, o);
    }
    pthread_mutex_unlock(&m->mu);
    return a;
}

/* The loader's progress lines for a large model, to the registry's note (the worker's log). */
static void s_progress(void *ctx, const char *line)
{
    titan_models *m = ctx;
    if (m->note) m->note(line);
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
    void *h = NULL;
    if (md->encoder) {
        titan_error lerr = {0};
        titan_encoder *enc = NULL;
        if (titan_encoder_open(md->path, &md->eopts, m->backend, s_progress, m, &enc, &lerr))
            return titan_fail(err, "device_error", "cannot load model '%s' from %s: %s", md->name, md->path, lerr.msg);
        h = enc;
        md->bytes = titan_encoder_bytes(enc); /* the float32 weights, which the file's size only estimated */
    } else {
        h = md->runner->load(md->path, md->device, msg, sizeof(msg));
    }
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

/* A request's inputs, read and checked against the manifest (the manifest is immutable once read: no lock). */
typedef struct {
    titan_tensor_view views[TITAN_RUNNER_MAX_TENSORS];
    int n;
    bool single, binary;
} s_inputs;

static void s_inputs_release(s_inputs *x)
{
    for (int i = 0; i < x->n; i++) titan_tensor_view_release(&x->views[i]);
    x->n = 0;
}

static int s_inputs_read(const s_model *md, titan_request *req, s_inputs *x, titan_error *err)
{
    memset(x, 0, sizeof(*x));
    x->single = json_object_get(req->hdr, "inputs") == NULL;
    titan_dtype dts[TITAN_RUNNER_MAX_TENSORS];
    for (int i = 0; i < md->nin; i++) dts[i] = md->in[i].dtype;
    if (x->single) {
        if (!json_object_get(req->hdr, "input"))
            return titan_fail(err, "bad_request", "send \"inputs\": [tensors] (or \"input\": tensor for a one-input model)");
        if (titan_request_tensor(req, "input", dts[0], &x->views[0], err)) return -1;
        x->n = 1;
    } else if (titan_request_tensor_list(req, "inputs", dts, TITAN_RUNNER_MAX_TENSORS, x->views, &x->n, err)) {
        x->n = 0; /* nothing to release */
        return -1;
    }
    if (titan_request_check_frames(req, err)) goto fail;
    if (x->n != md->nin) {
        titan_fail(err, "bad_request", "model '%s' takes %d input(s), but %d were sent", md->name, md->nin, x->n);
        goto fail;
    }
    for (int i = 0; i < x->n; i++) {
        if (s_check_input(md, i, &x->views[i], err)) goto fail;
        x->binary |= x->views[i].binary;
    }
    return 0;
fail:
    s_inputs_release(x);
    return -1;
}

/* Runs md on ins[0..nin) into outs (the runner's buffers, the caller's to free): loads it when needed, one
 * inference at a time on it. Returns 0, or -1 with err. */
static int s_run(titan_models *m, s_model *md, const titan_runner_tensor *ins, int nin, titan_runner_tensor *outs,
                 int *nouts, titan_error *err)
{
    s_instance *in = NULL;
    *nouts = 0;
    pthread_mutex_lock(&m->mu);
    if (s_ensure_loaded(m, md, err) == 0) {
        in = md->inst;
        in->refs++;
        md->tick = ++m->tick;
        md->last_used = titan_clock_wall_s();
    }
    pthread_mutex_unlock(&m->mu);
    if (!in) return -1;
    /* The runner puts the cause first and its context after, as far as room allows: it gets the room
     * the reply has left after "model 'NAME' failed: " (the reply's message is bounded). */
    char msg[sizeof(err->msg)];
    size_t room = sizeof(msg) - strlen(md->name) - sizeof("model '' failed: ") + 1;
    pthread_mutex_lock(&in->mu);
    int irc = md->runner->infer(in->handle, ins, nin, outs, TITAN_RUNNER_MAX_TENSORS, nouts, msg, room);
    pthread_mutex_unlock(&in->mu);
    pthread_mutex_lock(&m->mu);
    if (--in->refs == 0 && in->detached) {
        md->runner->unload(in->handle);
        pthread_mutex_destroy(&in->mu);
        free(in);
    }
    pthread_mutex_unlock(&m->mu);
    if (irc) {
        *nouts = 0;
        return titan_fail(err, "device_error", "model '%s' failed: %s", md->name, msg);
    }
    return 0;
}

/* Builds the reply of a request from its outputs: binary descriptors and frames (the outputs' buffers move into
 * out: their data set to NULL) when the request sent a binary input, else nested JSON arrays. */
static int s_answer(const s_model *md, titan_request *req, bool single, bool binary, titan_runner_tensor *outs,
                    int nouts, titan_out *out, titan_error *err)
{
    uint64_t total = 0;
    for (int i = 0; i < nouts; i++) total += outs[i].bytes;
    if (total > req->limits->max_result_bytes)
        return titan_fail(err, "too_large", "the outputs (%llu bytes) are larger than the limit of %llu bytes",
                          (unsigned long long)total, (unsigned long long)req->limits->max_result_bytes);
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
    if (wrc) return titan_fail(err, "internal", "out of memory");
    if (binary) {
        for (int i = 0; i < nouts; i++) {
            out->data[i] = outs[i].data;
            out->size[i] = outs[i].bytes;
            outs[i].data = NULL;
        }
        out->ndata = (size_t)nouts;
    }
    return 0;
}

static void s_runner_inputs(const s_inputs *x, titan_runner_tensor *ins)
{
    for (int i = 0; i < x->n; i++) {
        memset(&ins[i], 0, sizeof(ins[i]));
        ins[i].dtype = x->views[i].dtype;
        ins[i].rank = x->views[i].rank;
        memcpy(ins[i].shape, x->views[i].shape, sizeof(ins[i].shape));
        ins[i].data = (void *)x->views[i].data;
        ins[i].bytes = x->views[i].elems * titan_dtype_size(x->views[i].dtype);
    }
}

int titan_models_infer(titan_models *m, titan_request *req, titan_out *out, titan_error *err)
{
    json_t *jm = json_object_get(req->hdr, "model");
    if (!json_is_string(jm)) return titan_fail(err, "bad_request", "\"model\" must name a model (see list_models)");
    const char *name = json_string_value(jm);
    pthread_mutex_lock(&m->mu);
    s_model *md = s_find(m, name);
    pthread_mutex_unlock(&m->mu);
    if (!md) return titan_fail(err, "bad_request", "unknown model '%s': list_models names those available", name);
    if (md->encoder)
        return titan_fail(err, "bad_request", "model '%s' is an encoder: send it \"op\":\"%s\", not inference", name,
                          md->ecfg.num_labels > 0 ? "rerank" : "embed");
    s_inputs x;
    if (s_inputs_read(md, req, &x, err)) return -1;
    titan_runner_tensor ins[TITAN_RUNNER_MAX_TENSORS], outs[TITAN_RUNNER_MAX_TENSORS];
    int nouts = 0, rc = -1;
    s_runner_inputs(&x, ins);
    if (s_run(m, md, ins, x.n, outs, &nouts, err) == 0)
        rc = s_answer(md, req, x.single, x.binary, outs, nouts, out, err);
    for (int i = 0; i < nouts; i++) free(outs[i].data);
    s_inputs_release(&x);
    return rc;
}

/* Whether two requests' inputs can be stacked: every input alike past its first (batch) dimension. */
static bool s_stackable(const s_inputs *a, const s_inputs *b)
{
    for (int i = 0; i < a->n; i++) {
        const titan_tensor_view *x = &a->views[i], *y = &b->views[i];
        if (x->rank != y->rank || x->dtype != y->dtype) return false;
        for (int d = 1; d < x->rank; d++)
            if (x->shape[d] != y->shape[d]) return false;
    }
    return true;
}

/* One merged run of the requests k[0..cnt) of jobs: their inputs stacked along the first dimension, one inference,
 * and each request's rows of every output as its reply. */
static void s_infer_stacked(titan_models *m, s_model *md, titan_encoder_job *jobs, s_inputs *xs, const size_t *k,
                            size_t cnt)
{
    titan_runner_tensor ins[TITAN_RUNNER_MAX_TENSORS], outs[TITAN_RUNNER_MAX_TENSORS];
    int nin = xs[k[0]].n, nouts = 0;
    titan_error err = {0};
    int64_t rows = 0;
    for (size_t j = 0; j < cnt; j++) rows += xs[k[j]].views[0].shape[0];
    memset(ins, 0, sizeof(ins));
    bool ok = true;
    for (int i = 0; i < nin && ok; i++) {
        const titan_tensor_view *v0 = &xs[k[0]].views[i];
        size_t row_bytes = titan_dtype_size(v0->dtype);
        for (int d = 1; d < v0->rank; d++) row_bytes *= (size_t)v0->shape[d];
        ins[i].dtype = v0->dtype;
        ins[i].rank = v0->rank;
        memcpy(ins[i].shape, v0->shape, sizeof(ins[i].shape));
        ins[i].shape[0] = rows;
        ins[i].bytes = row_bytes * (size_t)rows;
        ins[i].data = malloc(ins[i].bytes ? ins[i].bytes : 1);
        if (!ins[i].data) {
            ok = false;
            titan_fail(&err, "too_large", "out of memory for the batch's inputs");
            break;
        }
        size_t off = 0;
        for (size_t j = 0; j < cnt; j++) {
            const titan_tensor_view *v = &xs[k[j]].views[i];
            size_t b = row_bytes * (size_t)v->shape[0];
            memcpy((char *)ins[i].data + off, v->data, b);
            off += b;
        }
    }
    if (ok && s_run(m, md, ins, nin, outs, &nouts, &err) == 0) {
        for (int o = 0; o < nouts && ok; o++) {
            if (outs[o].rank < 1 || outs[o].shape[0] != rows) {
                ok = false;
                titan_fail(&err, "device_error",
                           "model '%s' output %d has %lld rows for a batch of %lld: it is not batch-major along its "
                           "first dimension; set its manifest's max_batch to 1",
                           md->name, o, outs[o].rank < 1 ? 0LL : (long long)outs[o].shape[0], (long long)rows);
            }
        }
    } else {
        ok = false;
    }
    /* Each request's rows of every output. */
    int64_t first = 0;
    for (size_t j = 0; j < cnt; j++) {
        titan_encoder_job *job = &jobs[k[j]];
        int64_t r = xs[k[j]].views[0].shape[0];
        if (!ok) {
            job->rc = -1;
            job->err = err;
            continue;
        }
        titan_runner_tensor mine[TITAN_RUNNER_MAX_TENSORS];
        int made = 0;
        for (int o = 0; o < nouts; o++) {
            size_t row_bytes = outs[o].bytes / (size_t)rows;
            mine[o] = outs[o];
            mine[o].shape[0] = r;
            mine[o].bytes = row_bytes * (size_t)r;
            mine[o].data = malloc(mine[o].bytes ? mine[o].bytes : 1);
            if (!mine[o].data) break;
            memcpy(mine[o].data, (char *)outs[o].data + row_bytes * (size_t)first, mine[o].bytes);
            made++;
        }
        if (made < nouts) {
            job->rc = titan_fail(&job->err, "too_large", "out of memory for the outputs");
        } else {
            job->rc = s_answer(md, job->req, xs[k[j]].single, xs[k[j]].binary, mine, nouts, job->out, &job->err);
        }
        for (int o = 0; o < made; o++) free(mine[o].data);
        first += r;
    }
    for (int o = 0; o < nouts; o++) free(outs[o].data);
    for (int i = 0; i < nin; i++) free(ins[i].data);
}

void titan_models_infer_batch(titan_models *m, const char *name, titan_encoder_job *jobs, size_t n)
{
    pthread_mutex_lock(&m->mu);
    s_model *md = s_find(m, name);
    pthread_mutex_unlock(&m->mu);
    s_inputs *xs = calloc(n ? n : 1, sizeof(*xs));
    size_t *k = calloc(n ? n : 1, sizeof(*k));
    bool *done = calloc(n ? n : 1, sizeof(*done));
    for (size_t i = 0; i < n; i++) {
        jobs[i].rc = 0;
        jobs[i].err = (titan_error){0};
        jobs[i].inputs = jobs[i].tokens = 0;
        if (!xs || !k || !done) jobs[i].rc = titan_fail(&jobs[i].err, "internal", "out of memory");
        else if (!md || md->encoder) jobs[i].rc = titan_models_infer(m, jobs[i].req, jobs[i].out, &jobs[i].err);
        else jobs[i].rc = s_inputs_read(md, jobs[i].req, &xs[i], &jobs[i].err);
        if (done) done[i] = jobs[i].rc != 0 || !md || md->encoder;
        if (jobs[i].rc == 0 && md && !md->encoder && xs) jobs[i].inputs = (size_t)xs[i].views[0].shape[0];
    }
    /* Requests whose inputs stack run together, the first pending one leading each pass. */
    for (size_t lead = 0; done && k && lead < n; lead++) {
        if (done[lead]) continue;
        size_t cnt = 0;
        for (size_t j = lead; j < n; j++)
            if (!done[j] && s_stackable(&xs[lead], &xs[j])) {
                k[cnt++] = j;
                done[j] = true;
            }
        s_infer_stacked(m, md, jobs, xs, k, cnt);
    }
    for (size_t i = 0; xs && i < n; i++) s_inputs_release(&xs[i]);
    free(xs);
    free(k);
    free(done);
}

bool titan_models_batch_opts(titan_models *m, const char *name, const char *op, titan_encoder_opts *opts)
{
    if (!m || !name || !op) return false;
    pthread_mutex_lock(&m->mu);
    s_model *md = s_find(m, name);
    bool yes = md && (md->encoder ? strcmp(op, "embed") == 0 || strcmp(op, "rerank") == 0
                                  : strcmp(op, "inference") == 0 && md->eopts.max_batch > 1);
    if (yes && opts) *opts = md->eopts;
    pthread_mutex_unlock(&m->mu);
    return yes;
}

void titan_models_encode(titan_models *m, const char *name, titan_encoder_job *jobs, size_t n)
{
    titan_error err = {0};
    s_instance *in = NULL;
    pthread_mutex_lock(&m->mu);
    s_model *md = s_find(m, name);
    if (!md)
        titan_fail(&err, "not_found", "unknown model '%s': list_models names those available", name);
    else if (!md->encoder)
        titan_fail(&err, "bad_request", "model '%s' is a %s model, not an encoder: send it \"op\":\"inference\"", name,
                   md->runner->name);
    else if (s_ensure_loaded(m, md, &err) == 0) {
        in = md->inst;
        in->refs++;
        md->tick = ++m->tick;
        md->last_used = titan_clock_wall_s();
    }
    pthread_mutex_unlock(&m->mu);
    if (!in) {
        for (size_t i = 0; i < n; i++) {
            jobs[i].rc = -1;
            jobs[i].err = err;
            jobs[i].inputs = jobs[i].tokens = 0;
        }
        return;
    }
    /* The encoder is read-only once loaded: requests on one model run at once on several executors. */
    titan_encoder_run(in->handle, name, jobs, n);
    pthread_mutex_lock(&m->mu);
    if (--in->refs == 0 && in->detached) {
        md->runner->unload(in->handle);
        pthread_mutex_destroy(&in->mu);
        free(in);
    }
    pthread_mutex_unlock(&m->mu);
}

void titan_models_set_backend(titan_models *m, titan_backend *be)
{
    pthread_mutex_lock(&m->mu);
    m->backend = be;
    pthread_mutex_unlock(&m->mu);
}
