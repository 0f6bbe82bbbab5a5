/* fuzz_safetensors.c - libFuzzer target: the safetensors reader (src/core/encoder/safetensors.c) on arbitrary
 * bytes, (a) as a whole file and (b) as the JSON header of a file whose data area is 64 bytes. An accepted file
 * must keep every promise of safetensors.h (every tensor inside the data area, its span equal to its shape's
 * bytes, no two tensors sharing a byte, lookup by name finds each one, the float32 views equal the element-wise
 * conversions); a refused one must say why with code bad_model, in UTF-8. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "encoder/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                                  \
    do {                                                                                                             \
        if (!(cond)) {                                                                                               \
            fprintf(stderr, "fuzz_safetensors: check failed at line %d: %s\n", __LINE__, #cond);                    \
            abort();                                                                                                 \
        }                                                                                                            \
    } while (0)

static bool s_same_bits(float a, float b)
{
    return memcmp(&a, &b, 4) == 0;
}

static void s_check(const uint8_t *buf, size_t len)
{
    titan_st_file st;
    titan_error err = {0};
    if (titan_st_parse(buf, len, "fuzz.safetensors", &st, &err) != 0) {
        CHECK(err.code && strcmp(err.code, "bad_model") == 0);
        CHECK(err.msg[0] != '\0');
        json_t *s = json_string(err.msg); /* NULL when the message is not UTF-8 */
        if (!s) fprintf(stderr, "fuzz_safetensors: message is not UTF-8: %s\n", err.msg);
        CHECK(s != NULL);
        json_decref(s);
        CHECK(st.t == NULL && st.n == 0);
        titan_st_close(&st);
        return;
    }
    CHECK(8 + st.header_len + st.data_len == len);
    CHECK(st.data == buf + 8 + st.header_len);
    for (size_t i = 0; i < st.n; i++) {
        const titan_st_tensor *t = &st.t[i];
        CHECK(t->name && t->name[0]);
        if (i) CHECK(strcmp(st.t[i - 1].name, t->name) < 0);
        CHECK(titan_st_find(&st, t->name) == t);
        CHECK(t->rank >= 0 && t->rank <= TITAN_ST_MAX_RANK);
        uint64_t count = 1;
        bool zero = false;
        for (int d = 0; d < t->rank; d++) {
            CHECK(t->shape[d] >= 0);
            if (t->shape[d] == 0) zero = true;
            else if (count <= UINT64_MAX / (uint64_t)t->shape[d]) count *= (uint64_t)t->shape[d];
        }
        if (zero) count = 0;
        CHECK(t->count == count);
        CHECK(t->begin <= t->end && t->end <= st.data_len);
        CHECK(t->end - t->begin == t->count * titan_st_dtype_size(t->dtype));
        /* no byte shared (quadratic, on the few tensors fuzz inputs hold) */
        for (size_t j = 0; j < i && st.n <= 256; j++) {
            const titan_st_tensor *u = &st.t[j];
            if (t->begin == t->end || u->begin == u->end) continue;
            CHECK(t->end <= u->begin || u->end <= t->begin);
        }
        float *owned;
        const float *f = titan_st_as_f32(&st, t, &owned, &err);
        if (t->dtype != TITAN_ST_F32 && t->dtype != TITAN_ST_F16 && t->dtype != TITAN_ST_BF16) {
            CHECK(f == NULL && owned == NULL && strstr(err.msg, "F32, F16 or BF16"));
            continue;
        }
        CHECK(f != NULL);
        const uint8_t *src = titan_st_bytes(&st, t);
        for (uint64_t k = 0; k < t->count; k++) {
            if (t->dtype == TITAN_ST_F32) {
                float v;
                memcpy(&v, src + 4 * k, 4);
                CHECK(s_same_bits(f[k], v));
            } else {
                uint16_t h;
                memcpy(&h, src + 2 * k, 2);
                CHECK(s_same_bits(f[k], t->dtype == TITAN_ST_F16 ? titan_f16_bits_to_f32(h) : titan_bf16_bits_to_f32(h)));
            }
        }
        if (t->dtype == TITAN_ST_F32 && ((uintptr_t)src & 3u) == 0) CHECK(owned == NULL && f == (const void *)src);
        else CHECK(owned == f);
        free(owned);
    }
    titan_st_close(&st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* (a) the bytes as a whole file */
    s_check(data, size);
    /* (b) the bytes as the header, followed by a data area of 64 bytes (0, 1, 2, ...) */
    size_t len = 8 + size + 64;
    uint8_t *buf = malloc(len);
    CHECK(buf);
    uint64_t hl = size;
    memcpy(buf, &hl, 8);
    memcpy(buf + 8, data, size);
    for (size_t i = 0; i < 64; i++) buf[8 + size + i] = (uint8_t)(i * 37 + 11);
    s_check(buf, len);
    /* (c) the same, the data area shifted by one byte (F32 views copied instead of used in place) */
    uint8_t *odd = malloc(len + 1);
    CHECK(odd);
    memcpy(odd + 1, buf, len);
    s_check(odd + 1, len);
    free(odd);
    free(buf);
    return 0;
}
