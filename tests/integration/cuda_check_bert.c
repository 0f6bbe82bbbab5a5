/* cuda_check_bert.c - writes the BERT model directories of cuda_check's encoder checks (cuda_check_bert.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cuda_check_bert.h"

static const char *const s_files[] = {"config.json", "tokenizer_config.json", "vocab.txt", "model.safetensors"};

typedef struct {
    char name[96];
    int64_t d0, d1; /* d1 0: a vector */
    float std, mean;
} s_tensor;

static uint64_t s_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* uniform in [mean - std sqrt 3, mean + std sqrt 3): standard deviation std */
static float s_draw(uint64_t *s, float mean, float std)
{
    double u = (double)(s_next(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
    return mean + (float)(u * std * 1.7320508075688772);
}

static int s_fail(char *why, size_t cap, const char *what, const char *path)
{
    snprintf(why, cap, "%s %s: %s", what, path, strerror(errno));
    return -1;
}

static size_t s_tensors(const cc_bert_shape *s, s_tensor *t)
{
    size_t n = 0;
    int64_t H = s->hidden, F = s->intermediate;
#define T(nm, a, b, sd, mu) (snprintf(t[n].name, sizeof t[n].name, "%s", nm), t[n].d0 = a, t[n].d1 = b, t[n].std = sd, t[n].mean = mu, n++)
    T("embeddings.word_embeddings.weight", s->vocab, H, 0.05f, 0.0f);
    T("embeddings.position_embeddings.weight", s->max_positions, H, 0.02f, 0.0f);
    T("embeddings.token_type_embeddings.weight", 2, H, 0.02f, 0.0f);
    T("embeddings.LayerNorm.weight", H, 0, 0.1f, 1.0f);
    T("embeddings.LayerNorm.bias", H, 0, 0.02f, 0.0f);
    static const char *const mats[] = {"attention.self.query", "attention.self.key", "attention.self.value",
                                       "attention.output.dense"};
    for (int l = 0; l < s->layers; l++) {
        char nm[96];
        for (int k = 0; k < 4; k++) {
            snprintf(nm, sizeof nm, "encoder.layer.%d.%s.weight", l, mats[k]);
            T(nm, H, H, 0.02f, 0.0f);
            snprintf(nm, sizeof nm, "encoder.layer.%d.%s.bias", l, mats[k]);
            T(nm, H, 0, 0.02f, 0.0f);
        }
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.output.LayerNorm.weight", l);
        T(nm, H, 0, 0.1f, 1.0f);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.output.LayerNorm.bias", l);
        T(nm, H, 0, 0.02f, 0.0f);
        snprintf(nm, sizeof nm, "encoder.layer.%d.intermediate.dense.weight", l);
        T(nm, F, H, 0.02f, 0.0f);
        snprintf(nm, sizeof nm, "encoder.layer.%d.intermediate.dense.bias", l);
        T(nm, F, 0, 0.02f, 0.0f);
        snprintf(nm, sizeof nm, "encoder.layer.%d.output.dense.weight", l);
        T(nm, H, F, 0.02f, 0.0f);
        snprintf(nm, sizeof nm, "encoder.layer.%d.output.dense.bias", l);
        T(nm, H, 0, 0.02f, 0.0f);
        snprintf(nm, sizeof nm, "encoder.layer.%d.output.LayerNorm.weight", l);
        T(nm, H, 0, 0.1f, 1.0f);
        snprintf(nm, sizeof nm, "encoder.layer.%d.output.LayerNorm.bias", l);
        T(nm, H, 0, 0.02f, 0.0f);
    }
#undef T
    return n;
}

static int s_text(const char *dir, const char *file, const char *text, char *why, size_t cap)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    FILE *f = fopen(p, "w");
    if (!f) return s_fail(why, cap, "cannot write", p);
    fputs(text, f);
    if (fclose(f) != 0) return s_fail(why, cap, "cannot write", p);
    return 0;
}

int cc_bert_write(const char *dir, const cc_bert_shape *s, uint64_t seed, char *why, size_t cap)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) return s_fail(why, cap, "cannot create", dir);
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"BertModel\"], \"model_type\": \"bert\", \"hidden_act\": \"gelu\", "
             "\"hidden_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
             "\"intermediate_size\": %d, \"vocab_size\": %d, \"max_position_embeddings\": %d, "
             "\"type_vocab_size\": 2, \"layer_norm_eps\": 1e-12, \"position_embedding_type\": \"absolute\"}\n",
             s->hidden, s->layers, s->heads, s->intermediate, s->vocab, s->max_positions);
    if (s_text(dir, "config.json", cfg, why, cap) ||
        s_text(dir, "tokenizer_config.json",
               "{\"do_lower_case\": true, \"unk_token\": \"[UNK]\", \"sep_token\": \"[SEP]\", \"pad_token\": "
               "\"[PAD]\", \"cls_token\": \"[CLS]\", \"mask_token\": \"[MASK]\"}\n",
               why, cap))
        return -1;
    char p[512];
    snprintf(p, sizeof p, "%s/vocab.txt", dir);
    FILE *f = fopen(p, "w");
    if (!f) return s_fail(why, cap, "cannot write", p);
    fputs("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", f);
    for (int i = 5; i < s->vocab; i++) fprintf(f, "w%d\n", i);
    if (fclose(f) != 0) return s_fail(why, cap, "cannot write", p);

    size_t max = 5 + 16 * (size_t)s->layers;
    s_tensor *t = calloc(max, sizeof *t);
    size_t hcap = 256 * max, hl = 0;
    char *hdr = malloc(hcap);
    if (!t || !hdr) {
        free(t);
        free(hdr);
        snprintf(why, cap, "out of memory");
        return -1;
    }
    size_t n = s_tensors(s, t);
    uint64_t off = 0;
    hl += (size_t)snprintf(hdr + hl, hcap - hl, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < n; i++) {
        uint64_t count = (uint64_t)t[i].d0 * (uint64_t)(t[i].d1 ? t[i].d1 : 1);
        if (t[i].d1)
            hl += (size_t)snprintf(hdr + hl, hcap - hl, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],\"data_offsets\":[%llu,%llu]}",
                                   t[i].name, (long long)t[i].d0, (long long)t[i].d1, (unsigned long long)off,
                                   (unsigned long long)(off + 4 * count));
        else
            hl += (size_t)snprintf(hdr + hl, hcap - hl, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld],\"data_offsets\":[%llu,%llu]}",
                                   t[i].name, (long long)t[i].d0, (unsigned long long)off,
                                   (unsigned long long)(off + 4 * count));
        off += 4 * count;
    }
    hl += (size_t)snprintf(hdr + hl, hcap - hl, "}");
    while (hl % 8) hdr[hl++] = ' '; /* the data start aligned, as the safetensors library writes it */
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    f = fopen(p, "wb");
    int rc = -1;
    float *buf = malloc(sizeof(float) * 65536);
    if (!f || !buf) {
        s_fail(why, cap, "cannot write", p);
        goto out;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(hdr, 1, hl, f);
    uint64_t st = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        uint64_t count = (uint64_t)t[i].d0 * (uint64_t)(t[i].d1 ? t[i].d1 : 1);
        for (uint64_t done = 0; done < count;) {
            size_t k = count - done < 65536 ? (size_t)(count - done) : 65536;
            for (size_t j = 0; j < k; j++) buf[j] = s_draw(&st, t[i].mean, t[i].std);
            fwrite(buf, sizeof(float), k, f); /* little-endian: x86-64 and aarch64 */
            done += k;
        }
    }
    if (ferror(f)) {
        s_fail(why, cap, "cannot write", p);
        goto out;
    }
    rc = 0;
out:
    if (f && fclose(f) != 0 && rc == 0) rc = s_fail(why, cap, "cannot write", p);
    free(buf);
    free(hdr);
    free(t);
    return rc;
}

void cc_bert_remove(const char *dir)
{
    for (size_t i = 0; i < sizeof s_files / sizeof s_files[0]; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, s_files[i]);
        unlink(p);
    }
    rmdir(dir);
}
