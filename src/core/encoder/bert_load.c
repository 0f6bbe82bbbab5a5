/* bert_load.c - titan_bert_load: a HuggingFace BERT model directory into a titan_bert (bert.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bert.h"
#include "bert_config.h"
#include "safetensors.h"

#define S_PROGRESS_BYTES (64ull << 20) /* a progress line per this many bytes of weights, in models this large */

typedef struct {
    titan_st_file st;
    float **owned; /* converted or copied tensors */
    size_t nowned, capowned;
    size_t inplace; /* tensors used from the mapping */
} s_priv;

static bool s_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Reads a small file whole (at most `max` bytes). Returns 0 with *buf (malloc'd, to free) and *len; 1 when
 * the file does not exist (and `required` is false); -1 with err. */
static int s_read(const char *path, const char *name, size_t max, bool required, char **buf, size_t *len,
                  titan_error *err)
{
    *buf = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT && !required) return 1;
        return titan_fail(err, "bad_model", "cannot open %s: %s", name, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return titan_fail(err, "bad_model", "%s is not a regular file", name);
    }
    if ((uint64_t)sb.st_size > max) {
        close(fd);
        return titan_fail(err, "bad_model", "%s is %lld bytes, over the %zu KiB titan reads: is it the right file?", name,
                      (long long)sb.st_size, max >> 10);
    }
    char *b = malloc((size_t)sb.st_size + 1);
    if (!b) {
        close(fd);
        return titan_fail(err, "bad_model", "out of memory reading %s", name);
    }
    size_t got = 0;
    while (got < (size_t)sb.st_size) {
        ssize_t r = read(fd, b + got, (size_t)sb.st_size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            free(b);
            close(fd);
            return titan_fail(err, "bad_model", "cannot read %s: %s", name, e ? strerror(e) : "it shrank while being read");
        }
        got += (size_t)r;
    }
    close(fd);
    b[got] = '\0';
    *buf = b;
    *len = got;
    return 0;
}

/* dir + "/" + rel into out (PATH_MAX). */
static int s_join(char *out, const char *dir, const char *rel, titan_error *err)
{
    int n = snprintf(out, PATH_MAX, "%s/%s", dir, rel);
    if (n < 0 || n >= PATH_MAX) return titan_fail(err, "bad_model", "the model directory's path is too long");
    return 0;
}

/* The sentence-transformers files, for a bi-encoder: modules.json (Pooling path, Normalize), the Pooling
 * module's config.json, sentence_bert_config.json. All optional together: without modules.json, mean pooling. */
static int s_sentence_transformers(const char *dir, titan_bert_config *cfg, titan_error *err)
{
    char path[PATH_MAX], *buf;
    size_t len;
    if (s_join(path, dir, "modules.json", err)) return -1;
    int r = s_read(path, "modules.json", TITAN_BERT_MAX_JSON, false, &buf, &len, err);
    if (r < 0) return -1;
    if (r == 0) {
        char pool_dir[TITAN_BERT_MAX_PATH + 1];
        bool normalize;
        r = titan_bert_st_modules_parse(buf, len, pool_dir, &normalize, err);
        free(buf);
        if (r) return -1;
        cfg->normalize = normalize;
        char rel[TITAN_BERT_MAX_PATH + 32];
        snprintf(rel, sizeof(rel), "%s/config.json", pool_dir);
        if (s_join(path, dir, rel, err)) return -1;
        if (s_read(path, rel, TITAN_BERT_MAX_JSON, true, &buf, &len, err) < 0) {
            size_t l = strlen(err->msg);
            snprintf(err->msg + l, sizeof(err->msg) - l, " (modules.json names a Pooling module there: download the "
                     "whole model directory)");
            return -1;
        }
        r = titan_bert_st_pooling_parse(buf, len, cfg->hidden, &cfg->pooling, err);
        free(buf);
        if (r) return -1;
    }
    if (s_join(path, dir, "sentence_bert_config.json", err)) return -1;
    r = s_read(path, "sentence_bert_config.json", TITAN_BERT_MAX_JSON, false, &buf, &len, err);
    if (r < 0) return -1;
    if (r == 0) {
        int max_seq = cfg->max_seq;
        r = titan_bert_st_maxseq_parse(buf, len, &max_seq, err);
        free(buf);
        if (r) return -1;
        /* A model never takes more than its position embeddings hold; some configs say more. */
        cfg->max_seq = max_seq < cfg->max_positions ? max_seq : cfg->max_positions;
    }
    return 0;
}

typedef struct {
    titan_bert *m;
    s_priv *p;
    const char *file; /* the safetensors file's name in messages */
    void (*progress)(void *ctx, const char *line);
    void *ctx;
    uint64_t total, done, next_report; /* float32 bytes */
    int layer;                         /* the layer being loaded, -1 outside */
} s_loader;

static void s_shape_text(char *out, size_t cap, const int64_t *shape, int rank)
{
    int o = snprintf(out, cap, "[");
    for (int i = 0; i < rank && o > 0 && (size_t)o < cap; i++)
        o += snprintf(out + o, cap - (size_t)o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o > 0 && (size_t)o < cap) snprintf(out + o, cap - (size_t)o, "]");
}

/* Finds `name` with or without the "bert." prefix (and a LayerNorm's weight/bias under TF's old names
 * gamma/beta). */
static const titan_st_tensor *s_find(const titan_st_file *st, const char *name)
{
    char alt[256];
    const titan_st_tensor *t = titan_st_find(st, name);
    if (!t && snprintf(alt, sizeof(alt), "bert.%s", name) < (int)sizeof(alt)) t = titan_st_find(st, alt);
    if (t) return t;
    size_t n = strlen(name);
    const char *from = NULL, *to = NULL;
    if (n >= 16 && strcmp(name + n - 16, "LayerNorm.weight") == 0) {
        from = "weight";
        to = "gamma";
    } else if (n >= 14 && strcmp(name + n - 14, "LayerNorm.bias") == 0) {
        from = "bias";
        to = "beta";
    }
    if (!from || n - strlen(from) + strlen(to) + 6 > sizeof(alt)) return NULL;
    snprintf(alt, sizeof(alt), "%.*s%s", (int)(n - strlen(from)), name, to);
    t = titan_st_find(st, alt);
    if (!t) {
        char alt2[sizeof(alt) + 8];
        snprintf(alt2, sizeof(alt2), "bert.%s", alt);
        t = titan_st_find(st, alt2);
    }
    return t;
}

/* One weight: found, its shape checked against [d0] or [d0, d1] (d1 = 0: rank 1), as float32. `why` says which
 * config fields make that shape. optional: a missing tensor gives NULL without an error. Returns 0 (with *out,
 * NULL only when optional and absent), or -1 with err. */
static int s_weight(s_loader *L, const char *name, int64_t d0, int64_t d1, const char *why, bool optional,
                    const float **out, titan_error *err)
{
    *out = NULL;
    const titan_st_tensor *t = s_find(&L->p->st, name);
    if (!t) {
        if (optional) return 0;
        return titan_fail(err, "bad_model", "%s has no tensor \"%s\" (nor \"bert.%s\"): is it a BERT model's weights? Download the "
                      "model's model.safetensors again", L->file, name, name);
    }
    int64_t want[2] = {d0, d1};
    int rank = d1 ? 2 : 1;
    bool ok = t->rank == rank;
    for (int i = 0; ok && i < rank; i++) ok = t->shape[i] == want[i];
    if (!ok) {
        char has[96], exp[64];
        s_shape_text(has, sizeof(has), t->shape, t->rank);
        s_shape_text(exp, sizeof(exp), want, rank);
        return titan_fail(err, "bad_model", "%s: tensor \"%s\" has shape %s, but config.json makes it %s (%s): config.json and the "
                      "weights do not belong together", L->file, t->name, has, exp, why);
    }
    float *owned;
    const float *f = titan_st_as_f32(&L->p->st, t, &owned, err);
    if (!f) return -1;
    if (owned) {
        if (L->p->nowned == L->p->capowned) {
            size_t cap = L->p->capowned ? 2 * L->p->capowned : 64;
            float **o = realloc(L->p->owned, cap * sizeof(*o));
            if (!o) {
                free(owned);
                return titan_fail(err, "bad_model", "out of memory loading the weights");
            }
            L->p->owned = o;
            L->p->capowned = cap;
        }
        L->p->owned[L->p->nowned++] = owned;
    } else {
        L->p->inplace++;
    }
    uint64_t bytes = t->count * sizeof(float);
    L->m->weight_bytes += bytes;
    L->done += bytes;
    if (L->progress && L->total >= S_PROGRESS_BYTES && L->done >= L->next_report) {
        char line[400];
        if (L->layer >= 0)
            snprintf(line, sizeof(line), "loading %s: %llu of %llu MiB of weights (layer %d of %d)", L->file,
                     (unsigned long long)(L->done >> 20), (unsigned long long)(L->total >> 20), L->layer + 1,
                     L->m->cfg.layers);
        else
            snprintf(line, sizeof(line), "loading %s: %llu of %llu MiB of weights", L->file,
                     (unsigned long long)(L->done >> 20), (unsigned long long)(L->total >> 20));
        L->progress(L->ctx, line);
        while (L->next_report <= L->done) L->next_report += S_PROGRESS_BYTES;
    }
    *out = f;
    return 0;
}

/* A tensor of an encoder layer at or past cfg.layers means config.json describes fewer layers than the file
 * holds: the model would run cut short. */
static int s_extra_layers(const titan_st_file *st, const char *file, int layers, titan_error *err)
{
    for (size_t i = 0; i < st->n; i++) {
        const char *n = st->t[i].name;
        if (strncmp(n, "bert.", 5) == 0) n += 5;
        if (strncmp(n, "encoder.layer.", 14) != 0) continue;
        char *end;
        errno = 0;
        unsigned long k = strtoul(n + 14, &end, 10);
        if (end == n + 14 || *end != '.' || errno) continue;
        if (k >= (unsigned long)layers)
            return titan_fail(err, "bad_model", "%s has tensor \"%.120s\", but config.json says num_hidden_layers %d: config.json and "
                          "the weights do not belong together", file, st->t[i].name, layers);
    }
    return 0;
}

static void s_priv_free(s_priv *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->nowned; i++) free(p->owned[i]);
    free(p->owned);
    titan_st_close(&p->st);
    free(p);
}

void titan_bert_free(titan_bert **pm)
{
    if (!pm || !*pm) return;
    titan_bert *m = *pm;
    s_priv_free(m->priv);
    free(m->layer);
    free(m);
    *pm = NULL;
}

int titan_bert_load(const char *dir, titan_bert **out, void (*progress)(void *ctx, const char *line), void *ctx,
                    titan_error *err)
{
    *out = NULL;
    if (!dir || !*dir) return titan_fail(err, "bad_model", "no model directory given");
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return titan_fail(err, "bad_model", "the model directory %.300s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return titan_fail(err, "bad_model", "the model directory %.300s is not a directory", dir);

    titan_bert *m = calloc(1, sizeof(*m));
    s_priv *p = calloc(1, sizeof(*p));
    if (!m || !p) {
        free(m);
        free(p);
        return titan_fail(err, "bad_model", "out of memory");
    }
    m->priv = p;

    char path[PATH_MAX], *buf;
    size_t len;
    if (s_join(path, dir, "config.json", err)) goto fail;
    int r = s_read(path, "config.json", TITAN_BERT_MAX_JSON, false, &buf, &len, err);
    if (r < 0) goto fail;
    if (r == 1) {
        titan_fail(err, "bad_model", "the model directory %.300s has no config.json: download the whole model (config.json, "
               "model.safetensors, tokenizer.json or vocab.txt)", dir);
        goto fail;
    }
    r = titan_bert_config_parse(buf, len, &m->cfg, err);
    free(buf);
    if (r) goto fail;
    if (m->cfg.num_labels == 0 && s_sentence_transformers(dir, &m->cfg, err)) goto fail;

    if (s_join(path, dir, "model.safetensors", err)) goto fail;
    char file[200]; /* the file's name in messages: its path when short, else its name */
    size_t pl = strlen(path);
    if (pl < sizeof(file))
        memcpy(file, path, pl + 1);
    else
        memcpy(file, "model.safetensors", sizeof("model.safetensors"));
    if (!s_exists(path)) {
        char alt[PATH_MAX];
        if (s_join(alt, dir, "model.safetensors.index.json", err)) goto fail;
        if (s_exists(alt)) {
            titan_fail(err, "bad_model", "%s holds a sharded model (model.safetensors.index.json): titan reads one model.safetensors",
                   strlen(dir) < 300 ? dir : "the model directory");
            goto fail;
        }
        if (s_join(alt, dir, "pytorch_model.bin", err)) goto fail;
        titan_fail(err, "bad_model", "%s has no model.safetensors%s", strlen(dir) < 300 ? dir : "the model directory",
               s_exists(alt) ? " (only pytorch_model.bin, which titan does not read: download the model's "
                               "model.safetensors, or convert the checkpoint to safetensors)"
                             : ": download it with the model");
        goto fail;
    }
    if (titan_st_open(path, file, &p->st, err) != 0) goto fail;
    const titan_bert_config *c = &m->cfg;
    if (s_extra_layers(&p->st, file, c->layers, err)) goto fail;

    m->layer = calloc((size_t)c->layers, sizeof(*m->layer));
    if (!m->layer) {
        titan_fail(err, "bad_model", "out of memory");
        goto fail;
    }
    int64_t H = c->hidden, I = c->intermediate;
    s_loader L = {.m = m, .p = p, .file = file, .progress = progress, .ctx = ctx, .layer = -1};
    L.total = (uint64_t)c->vocab * H + (uint64_t)c->max_positions * H + (uint64_t)c->type_vocab * H + 2 * H +
              (uint64_t)c->layers * (4 * H * H + 4 * H + 2 * I * H + I + H + 4 * H) +
              H * H + H + (uint64_t)c->num_labels * H + c->num_labels; /* the pooler (optional) and classifier */
    L.total *= sizeof(float);
    L.next_report = S_PROGRESS_BYTES;

    if (s_weight(&L, "embeddings.word_embeddings.weight", c->vocab, H, "vocab_size, hidden_size", false, &m->word_emb,
                 err) ||
        s_weight(&L, "embeddings.position_embeddings.weight", c->max_positions, H,
                 "max_position_embeddings, hidden_size", false, &m->pos_emb, err) ||
        s_weight(&L, "embeddings.token_type_embeddings.weight", c->type_vocab, H, "type_vocab_size, hidden_size",
                 false, &m->type_emb, err) ||
        s_weight(&L, "embeddings.LayerNorm.weight", H, 0, "hidden_size", false, &m->emb_ln_g, err) ||
        s_weight(&L, "embeddings.LayerNorm.bias", H, 0, "hidden_size", false, &m->emb_ln_b, err))
        goto fail;
    for (int i = 0; i < c->layers; i++) {
        titan_bert_layer *y = &m->layer[i];
        L.layer = i;
        struct {
            const char *name;
            int64_t d0, d1;
            const char *why;
            const float **dst;
        } w[] = {
            {"attention.self.query.weight", H, H, "hidden_size", &y->q_w},
            {"attention.self.query.bias", H, 0, "hidden_size", &y->q_b},
            {"attention.self.key.weight", H, H, "hidden_size", &y->k_w},
            {"attention.self.key.bias", H, 0, "hidden_size", &y->k_b},
            {"attention.self.value.weight", H, H, "hidden_size", &y->v_w},
            {"attention.self.value.bias", H, 0, "hidden_size", &y->v_b},
            {"attention.output.dense.weight", H, H, "hidden_size", &y->ao_w},
            {"attention.output.dense.bias", H, 0, "hidden_size", &y->ao_b},
            {"attention.output.LayerNorm.weight", H, 0, "hidden_size", &y->ln1_g},
            {"attention.output.LayerNorm.bias", H, 0, "hidden_size", &y->ln1_b},
            {"intermediate.dense.weight", I, H, "intermediate_size, hidden_size", &y->i_w},
            {"intermediate.dense.bias", I, 0, "intermediate_size", &y->i_b},
            {"output.dense.weight", H, I, "hidden_size, intermediate_size", &y->o_w},
            {"output.dense.bias", H, 0, "hidden_size", &y->o_b},
            {"output.LayerNorm.weight", H, 0, "hidden_size", &y->ln2_g},
            {"output.LayerNorm.bias", H, 0, "hidden_size", &y->ln2_b},
        };
        for (size_t k = 0; k < sizeof(w) / sizeof(w[0]); k++) {
            char name[96];
            snprintf(name, sizeof(name), "encoder.layer.%d.%s", i, w[k].name);
            if (s_weight(&L, name, w[k].d0, w[k].d1, w[k].why, false, w[k].dst, err)) goto fail;
        }
    }
    L.layer = -1;
    /* The pooler: a cross-encoder's classifier reads it; a bi-encoder's sentence-transformers pooling does not. */
    bool cross = c->num_labels > 0;
    if (s_weight(&L, "pooler.dense.weight", H, H, "hidden_size", !cross, &m->pool_w, err) ||
        s_weight(&L, "pooler.dense.bias", H, 0, "hidden_size", !cross, &m->pool_b, err))
        goto fail;
    if (!m->pool_w != !m->pool_b) {
        titan_fail(err, "bad_model", "%s has only one of pooler.dense.weight and pooler.dense.bias", file);
        goto fail;
    }
    if (cross) {
        if (s_weight(&L, "classifier.weight", c->num_labels, H, "num_labels or id2label, hidden_size", false,
                     &m->cls_w, err) ||
            s_weight(&L, "classifier.bias", c->num_labels, 0, "num_labels or id2label", false, &m->cls_b, err))
            goto fail;
    }
    if (progress && L.total >= S_PROGRESS_BYTES) {
        char line[400];
        snprintf(line, sizeof(line), "loaded %s: %llu MiB of float32 weights (%zu tensors used in place, %zu "
                 "converted or copied)", file, (unsigned long long)(m->weight_bytes >> 20), p->inplace, p->nowned);
        progress(ctx, line);
    }
    /* Nothing used from the mapping (F16/BF16 weights, all converted): give it back. */
    if (p->inplace == 0) titan_st_close(&p->st);
    *out = m;
    return 0;
fail:
    titan_bert_free(&m);
    return -1;
}
