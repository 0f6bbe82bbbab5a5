/* bert_config.c - config.json and the sentence-transformers files of a BERT model directory (bert_config.h). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "bert_config.h"

/* A value from the file for a message: at most 60 bytes, cut at a UTF-8 character's start. */
typedef struct {
    char s[64];
} s_short_t;

static s_short_t s_shorten(const char *v)
{
    s_short_t o;
    size_t n = strlen(v);
    if (n > 60) {
        n = 60;
        while (n > 0 && ((unsigned char)v[n] & 0xC0) == 0x80) n--;
        memcpy(o.s, v, n);
        memcpy(o.s + n, "...", 4);
    } else {
        memcpy(o.s, v, n + 1);
    }
    return o;
}
#define s_short(v) (s_shorten(v).s)

#define S_SUPPORTED "titan runs model_type \"bert\" (BertModel bi-encoders and BertForSequenceClassification " \
                    "cross-encoders)"

static json_t *s_load(const char *json, size_t len, const char *file, titan_error *err)
{
    if (len > TITAN_BERT_MAX_JSON) {
        titan_fail(err, "bad_model", "%s is %zu bytes, over the %u KiB titan reads: is it the right file?", file, len,
               TITAN_BERT_MAX_JSON >> 10);
        return NULL;
    }
    json_error_t jerr;
    json_t *j = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        /* jansson's text may quote the input's bytes: keep the message ASCII */
        for (char *c = jerr.text; *c; c++)
            if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) *c = '?';
        titan_fail(err, "bad_model", "%s is not valid JSON: %s (line %d, column %d)", file, jerr.text, jerr.line, jerr.column);
        return NULL;
    }
    return j;
}

/* An integer member in [lo, hi]; `def` when absent (def < lo: required). */
static int s_int(json_t *o, const char *file, const char *key, long long lo, long long hi, long long def, int *out,
                 titan_error *err)
{
    json_t *v = json_object_get(o, key);
    if (!v) {
        if (def < lo) return titan_fail(err, "bad_model", "%s has no \"%s\": a BERT config names it (an integer)", file, key);
        *out = (int)def;
        return 0;
    }
    if (!json_is_integer(v)) return titan_fail(err, "bad_model", "%s: \"%s\" must be an integer", file, key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return titan_fail(err, "bad_model", "%s: \"%s\" is %lld; titan accepts %lld to %lld", file, key, x, lo, hi);
    *out = (int)x;
    return 0;
}

int titan_bert_config_parse(const char *json, size_t len, titan_bert_config *cfg, titan_error *err)
{
    static const char f[] = "config.json";
    memset(cfg, 0, sizeof(*cfg));
    json_t *c = s_load(json, len, f, err);
    if (!c) return -1;
    int rc = -1;
    if (!json_is_object(c)) {
        titan_fail(err, "bad_model", "%s is not a JSON object", f);
        goto out;
    }
    json_t *mt = json_object_get(c, "model_type");
    if (!mt) {
        titan_fail(err, "bad_model", "%s has no model_type: " S_SUPPORTED, f);
        goto out;
    }
    if (!json_is_string(mt)) {
        titan_fail(err, "bad_model", "%s: model_type is not a string: " S_SUPPORTED, f);
        goto out;
    }
    if (strcmp(json_string_value(mt), "bert") != 0) {
        titan_fail(err, "bad_model", "%s: model_type \"%s\" is not supported: " S_SUPPORTED, f, s_short(json_string_value(mt)));
        goto out;
    }

    if (s_int(c, f, "hidden_size", 1, TITAN_BERT_MAX_HIDDEN, 0, &cfg->hidden, err) ||
        s_int(c, f, "num_hidden_layers", 1, TITAN_BERT_MAX_LAYERS, 0, &cfg->layers, err) ||
        s_int(c, f, "num_attention_heads", 1, TITAN_BERT_MAX_HIDDEN, 0, &cfg->heads, err) ||
        s_int(c, f, "intermediate_size", 1, TITAN_BERT_MAX_INTERMEDIATE, 0, &cfg->intermediate, err) ||
        s_int(c, f, "vocab_size", 1, TITAN_BERT_MAX_VOCAB, 0, &cfg->vocab, err) ||
        /* HF's BertConfig defaults, for old configs that leave them out */
        s_int(c, f, "max_position_embeddings", 1, TITAN_BERT_MAX_POSITIONS, 512, &cfg->max_positions, err) ||
        s_int(c, f, "type_vocab_size", 1, TITAN_BERT_MAX_TYPE_VOCAB, 2, &cfg->type_vocab, err))
        goto out;
    if (cfg->hidden % cfg->heads != 0) {
        titan_fail(err, "bad_model", "%s: num_attention_heads (%d) does not divide hidden_size (%d)", f, cfg->heads, cfg->hidden);
        goto out;
    }

    json_t *eps = json_object_get(c, "layer_norm_eps");
    cfg->eps = 1e-12;
    if (eps) {
        if (!json_is_number(eps) || !(json_number_value(eps) > 0) || !(json_number_value(eps) <= 1)) {
            titan_fail(err, "bad_model", "%s: layer_norm_eps must be a number above 0 and at most 1", f);
            goto out;
        }
        cfg->eps = json_number_value(eps);
    }

    json_t *act = json_object_get(c, "hidden_act");
    const char *a = act ? json_string_value(act) : "gelu";
    if (!a) {
        titan_fail(err, "bad_model", "%s: hidden_act must be a string (\"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\" or \"relu\")", f);
        goto out;
    }
    if (strcmp(a, "gelu") == 0)
        cfg->act = TITAN_BERT_GELU;
    else if (strcmp(a, "gelu_new") == 0 || strcmp(a, "gelu_pytorch_tanh") == 0)
        cfg->act = TITAN_BERT_GELU_TANH;
    else if (strcmp(a, "relu") == 0)
        cfg->act = TITAN_BERT_RELU;
    else {
        titan_fail(err, "bad_model", "%s: hidden_act \"%s\" is not supported: titan runs \"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\" "
               "and \"relu\"", f, s_short(a));
        goto out;
    }

    json_t *pet = json_object_get(c, "position_embedding_type");
    if (pet && !json_is_null(pet)) {
        if (!json_is_string(pet) || strcmp(json_string_value(pet), "absolute") != 0) {
            titan_fail(err, "bad_model", "%s: position_embedding_type \"%s\" is not supported: titan runs \"absolute\" position "
                   "embeddings only", f, json_is_string(pet) ? s_short(json_string_value(pet)) : "(not a string)");
            goto out;
        }
    }
    if (json_is_true(json_object_get(c, "is_decoder")) || json_is_true(json_object_get(c, "add_cross_attention"))) {
        titan_fail(err, "bad_model", "%s: is_decoder/add_cross_attention is set: titan runs BERT as an encoder only", f);
        goto out;
    }

    /* A cross-encoder: BertForSequenceClassification. Labels as HF counts them: id2label's size when present,
     * else num_labels, else 2. */
    json_t *arch = json_object_get(c, "architectures");
    bool cross = false;
    if (arch && !json_is_null(arch)) {
        if (!json_is_array(arch)) {
            titan_fail(err, "bad_model", "%s: architectures must be a list of names", f);
            goto out;
        }
        size_t i;
        json_t *v;
        json_array_foreach(arch, i, v)
        {
            if (!json_is_string(v)) {
                titan_fail(err, "bad_model", "%s: architectures must be a list of names", f);
                goto out;
            }
            if (strcmp(json_string_value(v), "BertForSequenceClassification") == 0) cross = true;
        }
    }
    if (cross) {
        json_t *id2label = json_object_get(c, "id2label");
        if (id2label && !json_is_null(id2label)) {
            if (!json_is_object(id2label)) {
                titan_fail(err, "bad_model", "%s: id2label must be an object", f);
                goto out;
            }
            size_t n = json_object_size(id2label);
            if (n < 1 || n > TITAN_BERT_MAX_LABELS) {
                titan_fail(err, "bad_model", "%s: id2label has %zu labels; titan accepts 1 to %d", f, n, TITAN_BERT_MAX_LABELS);
                goto out;
            }
            cfg->num_labels = (int)n;
        } else if (s_int(c, f, "num_labels", 1, TITAN_BERT_MAX_LABELS, 2, &cfg->num_labels, err)) {
            goto out;
        }
    }

    cfg->pooling = TITAN_POOL_MEAN;
    cfg->normalize = false;
    cfg->max_seq = cfg->max_positions;
    rc = 0;
out:
    json_decref(c);
    return rc;
}

/* A module's path: relative, no "..", no backslash or control characters, bounded. */
static int s_path_ok(const char *p)
{
    size_t n = strlen(p);
    if (n == 0 || n > TITAN_BERT_MAX_PATH || p[0] == '/') return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || p[i] == '\\') return 0;
    for (const char *s = p; *s;) {
        const char *e = strchr(s, '/');
        size_t l = e ? (size_t)(e - s) : strlen(s);
        if ((l == 2 && s[0] == '.' && s[1] == '.') || l == 0) return 0;
        s += l + (e ? 1 : 0);
    }
    return 1;
}

/* The class name after the last '.' of a module's type. */
static const char *s_class(const char *type)
{
    const char *d = strrchr(type, '.');
    return d ? d + 1 : type;
}

int titan_bert_st_modules_parse(const char *json, size_t len, char pool_dir[TITAN_BERT_MAX_PATH + 1],
                                bool *normalize, titan_error *err)
{
    static const char f[] = "modules.json";
    pool_dir[0] = '\0';
    *normalize = false;
    json_t *m = s_load(json, len, f, err);
    if (!m) return -1;
    int rc = -1;
    if (!json_is_array(m) || json_array_size(m) == 0 || json_array_size(m) > 64) {
        titan_fail(err, "bad_model", "%s is not a list of 1 to 64 modules", f);
        goto out;
    }
    size_t i;
    json_t *v;
    int stage = 0; /* 0: expect the Transformer; 1: the Pooling; 2: after it (Normalize) */
    json_array_foreach(m, i, v)
    {
        const char *type = json_string_value(json_object_get(v, "type"));
        const char *path = json_string_value(json_object_get(v, "path"));
        if (!json_is_object(v) || !type || !path) {
            titan_fail(err, "bad_model", "%s: module %zu has no \"type\" and \"path\" strings", f, i);
            goto out;
        }
        const char *cls = s_class(type);
        if (strcmp(cls, "Transformer") == 0 && stage == 0) {
            if (path[0] != '\0') {
                titan_fail(err, "bad_model", "%s puts the Transformer in \"%s\"/: titan reads config.json and model.safetensors at "
                       "the top of the model directory (as sentence-transformers 2 and later save them)",
                       f, s_short(path));
                goto out;
            }
            stage = 1;
        } else if (strcmp(cls, "Pooling") == 0 && stage == 1) {
            if (!s_path_ok(path)) {
                titan_fail(err, "bad_model", "%s: the Pooling module's path \"%s\" is not a relative directory inside the model", f,
                       s_short(path));
                goto out;
            }
            memcpy(pool_dir, path, strlen(path) + 1);
            stage = 2;
        } else if (strcmp(cls, "Normalize") == 0 && stage == 2 && !*normalize) {
            *normalize = true;
        } else {
            titan_fail(err, "bad_model", "%s: module %zu is %s%s; titan runs a Transformer, then Pooling, then optionally Normalize, "
                   "and nothing else (its output would not be this model's)", f, i, s_short(type),
                   stage == 0 ? " before the Transformer" : "");
            goto out;
        }
    }
    if (stage != 2) {
        titan_fail(err, "bad_model", "%s has %s: titan needs a Transformer followed by a Pooling module", f,
               stage == 0 ? "no Transformer" : "no Pooling module");
        goto out;
    }
    rc = 0;
out:
    json_decref(m);
    return rc;
}

int titan_bert_st_pooling_parse(const char *json, size_t len, int hidden, titan_pooling *pool, titan_error *err)
{
    static const char f[] = "the Pooling module's config.json";
    static const struct {
        const char *key, *mode;
        int pool; /* -1: not supported */
    } modes[] = {
        {"pooling_mode_mean_tokens", "mean", TITAN_POOL_MEAN},
        {"pooling_mode_cls_token", "cls", TITAN_POOL_CLS},
        {"pooling_mode_max_tokens", "max", TITAN_POOL_MAX},
        {"pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens", -1},
        {"pooling_mode_weightedmean_tokens", "weightedmean", -1},
        {"pooling_mode_lasttoken", "lasttoken", -1},
    };
    json_t *c = s_load(json, len, f, err);
    if (!c) return -1;
    int rc = -1;
    if (!json_is_object(c)) {
        titan_fail(err, "bad_model", "%s is not a JSON object", f);
        goto out;
    }
    json_t *dim = json_object_get(c, "word_embedding_dimension");
    if (dim && (!json_is_integer(dim) || json_integer_value(dim) != hidden)) {
        titan_fail(err, "bad_model", "%s: word_embedding_dimension is not the model's hidden_size (%d)", f, hidden);
        goto out;
    }
    /* Every pooling_mode_* flag, known or not, must be a boolean; the true ones are the modes. */
    const char *key, *chosen = NULL, *second = NULL;
    json_t *v;
    json_object_foreach(c, key, v)
    {
        if (strncmp(key, "pooling_mode_", 13) != 0) continue;
        if (!json_is_boolean(v)) {
            titan_fail(err, "bad_model", "%s: \"%s\" must be true or false", f, s_short(key));
            goto out;
        }
        if (json_is_true(v)) {
            if (chosen) second = key;
            else chosen = key;
        }
    }
    if (second) {
        titan_fail(err, "bad_model", "%s sets %s and %s: titan pools one way (mean, cls or max)", f, s_short(chosen), s_short(second));
        goto out;
    }
    const char *mode = NULL; /* the mode's short name, from a flag or "pooling_mode" */
    if (chosen) {
        for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
            if (strcmp(chosen, modes[i].key) == 0) mode = modes[i].mode;
        if (!mode) {
            titan_fail(err, "bad_model", "%s: %s is not supported: titan pools mean, cls or max", f, s_short(chosen));
            goto out;
        }
    } else {
        mode = json_string_value(json_object_get(c, "pooling_mode"));
        if (!mode) {
            titan_fail(err, "bad_model", "%s sets no pooling mode (pooling_mode_mean_tokens, _cls_token or _max_tokens)", f);
            goto out;
        }
    }
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (strcmp(mode, modes[i].mode) != 0) continue;
        if (modes[i].pool < 0) {
            titan_fail(err, "bad_model", "%s: pooling mode \"%s\" is not supported: titan pools mean, cls or max", f, modes[i].mode);
            goto out;
        }
        *pool = (titan_pooling)modes[i].pool;
        rc = 0;
        goto out;
    }
    titan_fail(err, "bad_model", "%s: pooling mode \"%s\" is not supported: titan pools mean, cls or max", f, s_short(mode));
out:
    json_decref(c);
    return rc;
}

int titan_bert_st_maxseq_parse(const char *json, size_t len, int *max_seq, titan_error *err)
{
    static const char f[] = "sentence_bert_config.json";
    json_t *c = s_load(json, len, f, err);
    if (!c) return -1;
    int rc = -1;
    if (!json_is_object(c)) {
        titan_fail(err, "bad_model", "%s is not a JSON object", f);
        goto out;
    }
    json_t *v = json_object_get(c, "max_seq_length");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > TITAN_BERT_MAX_POSITIONS) {
            titan_fail(err, "bad_model", "%s: max_seq_length must be an integer from 1 to %d", f, TITAN_BERT_MAX_POSITIONS);
            goto out;
        }
        *max_seq = (int)json_integer_value(v);
    }
    rc = 0;
out:
    json_decref(c);
    return rc;
}
