/* test_safetensors.c - cmocka tests of the safetensors reader (src/core/encoder/safetensors.c): header validation
 * on buffers built here (good files, overlaps, offsets out of range, spans that disagree with the shape, header
 * lengths too large or past the end, bad JSON, bad dtypes, rank over 4, negative dimensions, element counts that
 * overflow), F16 and BF16 conversion (known bit patterns, then all 65536 of each against the formula), the float32
 * view (in place when aligned, copied when not; other dtypes refused), and the file mapping. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "encoder/safetensors.h"

/* A buffer: 8-byte length (hl, or the header's real length when hl is UINT64_MAX), the header, `data_len` bytes
 * of data (byte i = i & 0xff). */
static uint8_t *s_build(const char *header, uint64_t hl, size_t data_len, size_t *len)
{
    size_t h = strlen(header);
    if (hl == UINT64_MAX) hl = h;
    *len = 8 + h + data_len;
    uint8_t *b = malloc(*len ? *len : 1);
    assert_non_null(b);
    memcpy(b, &hl, 8);
    memcpy(b + 8, header, h);
    for (size_t i = 0; i < data_len; i++) b[8 + h + i] = (uint8_t)i;
    return b;
}

/* Parses header + data_len bytes; returns the rc; err's message in msg. */
static int s_parse(const char *header, size_t data_len, titan_error *err)
{
    size_t len;
    uint8_t *b = s_build(header, UINT64_MAX, data_len, &len);
    titan_st_file st;
    memset(err, 0, sizeof(*err));
    int rc = titan_st_parse(b, len, "t.safetensors", &st, err);
    titan_st_close(&st);
    free(b);
    return rc;
}

/* The header must be refused with a message containing `needle`. */
#define REFUSED(header, data_len, needle)                                                                            \
    do {                                                                                                             \
        titan_error e_;                                                                                              \
        int rc_ = s_parse(header, data_len, &e_);                                                                    \
        if (rc_ != -1 || !strstr(e_.msg, needle))                                                                    \
            fail_msg("header %s: rc %d, message \"%s\", wanted \"%s\"", header, rc_, e_.msg, needle);               \
        assert_string_equal(e_.code, "bad_model");                                                                   \
    } while (0)

static void test_good_header(void **state)
{
    (void)state;
    const char *h = "{\"__metadata__\":{\"format\":\"pt\",\"x\":\"y\"},"
                    "\"b\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[16,22]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                    "\"scalar\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[24,32]},"
                    "\"empty\":{\"dtype\":\"BF16\",\"shape\":[4,0],\"data_offsets\":[8,8]},"
                    "\"r4\":{\"dtype\":\"U8\",\"shape\":[1,1,1,2],\"data_offsets\":[22,24]}}  ";
    size_t len;
    uint8_t *b = s_build(h, UINT64_MAX, 32, &len);
    titan_st_file st;
    titan_error err = {0};
    assert_int_equal(titan_st_parse(b, len, "t", &st, &err), 0);
    assert_int_equal(st.n, 5);
    assert_int_equal(st.nmeta, 2);
    assert_int_equal(st.data_len, 32);
    assert_ptr_equal(st.data, b + 8 + strlen(h));
    const titan_st_tensor *a = titan_st_find(&st, "a");
    assert_non_null(a);
    assert_int_equal(a->dtype, TITAN_ST_F32);
    assert_int_equal(a->rank, 2);
    assert_int_equal(a->shape[0], 2);
    assert_int_equal(a->count, 4);
    assert_int_equal(a->begin, 0);
    assert_int_equal(a->end, 16);
    const titan_st_tensor *s = titan_st_find(&st, "scalar");
    assert_non_null(s);
    assert_int_equal(s->rank, 0);
    assert_int_equal(s->count, 1);
    assert_int_equal(titan_st_find(&st, "empty")->count, 0);
    assert_int_equal(titan_st_find(&st, "r4")->rank, 4);
    assert_null(titan_st_find(&st, "c"));
    assert_null(titan_st_find(&st, "__metadata__"));
    assert_ptr_equal(titan_st_bytes(&st, titan_st_find(&st, "b")), st.data + 16);
    titan_st_close(&st);
    titan_st_close(&st); /* closing twice is harmless */
    free(b);

    /* No tensors at all, and data bytes nobody uses (gaps are allowed; overlaps are not). */
    titan_error e;
    assert_int_equal(s_parse("{}", 0, &e), 0);
    assert_int_equal(s_parse("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}", 10, &e), 0);
    /* Empty tensors may sit at any offset inside the data, even inside another tensor. */
    assert_int_equal(s_parse("{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                             "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
                             8, &e),
                     0);
    /* Unknown members of a tensor entry are ignored (a later format may add some). */
    assert_int_equal(s_parse("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],\"extra\":1}}", 2, &e), 0);
}

static void test_lengths(void **state)
{
    (void)state;
    titan_error e;
    titan_st_file st;
    size_t len;
    uint8_t tiny[7] = {2, 0, 0, 0, 0, 0, 0};
    assert_int_equal(titan_st_parse(tiny, sizeof(tiny), "t", &st, &e), -1);
    assert_non_null(strstr(e.msg, "7 bytes"));
    assert_non_null(strstr(e.msg, "incomplete"));
    assert_int_equal(titan_st_parse(tiny, 0, "t", &st, &e), -1);

    /* A header length over the bound, and one past the end of the buffer. */
    uint8_t *b = s_build("{}", (uint64_t)1 << 40, 0, &len);
    assert_int_equal(titan_st_parse(b, len, "t", &st, &e), -1);
    assert_non_null(strstr(e.msg, "100 MiB"));
    free(b);
    b = s_build("{}", UINT64_MAX - 1, 0, &len);
    assert_int_equal(titan_st_parse(b, len, "t", &st, &e), -1);
    assert_non_null(strstr(e.msg, "100 MiB"));
    free(b);
    b = s_build("{}", TITAN_ST_MAX_HEADER, 0, &len);
    assert_int_equal(titan_st_parse(b, len, "t", &st, &e), -1);
    assert_non_null(strstr(e.msg, "is 10 bytes but its header length says the header alone ends at byte"));
    free(b);
    b = s_build("{}", 3, 0, &len);
    assert_int_equal(titan_st_parse(b, len, "t", &st, &e), -1);
    assert_non_null(strstr(e.msg, "incomplete"));
    free(b);
    /* A header of length 0 or 1, or one that is not an object. */
    b = s_build("{}", 0, 0, &len);
    assert_int_equal(titan_st_parse(b, len, "t", &st, &e), -1);
    assert_non_null(strstr(e.msg, "'{'"));
    free(b);
    b = s_build("{}", 1, 1, &len);
    assert_int_equal(titan_st_parse(b, len, "t", &st, &e), -1);
    free(b);
}

static void test_bad_json(void **state)
{
    (void)state;
    REFUSED("{\"a\":", 0, "not valid JSON");
    REFUSED("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
            "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
            8, "not valid JSON"); /* a duplicate name */
    REFUSED("[1,2]", 0, "'{'");
    REFUSED("{} x", 0, "not valid JSON");
    REFUSED("{\"a\":1}", 0, "not an object");
    REFUSED("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "no dtype");
    REFUSED("{\"a\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "no dtype");
    REFUSED("{\"a\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "\"F17\", which is no safetensors");
    REFUSED("{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "no safetensors dtype");
    REFUSED("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "no shape");
    REFUSED("{\"a\":{\"dtype\":\"F32\",\"shape\":3,\"data_offsets\":[0,4]}}", 4, "no shape");
    REFUSED("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, "rank 5");
    REFUSED("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,-1],\"data_offsets\":[0,1]}}", 1, "shape[1] is not an integer >= 0");
    REFUSED("{\"a\":{\"dtype\":\"U8\",\"shape\":[1.0],\"data_offsets\":[0,1]}}", 1, "shape[0]");
    REFUSED("{\"a\":{\"dtype\":\"U8\",\"shape\":[\"1\"],\"data_offsets\":[0,1]}}", 1, "shape[0]");
    REFUSED("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1, "data_offsets is not");
    REFUSED("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1, "data_offsets is not");
    REFUSED("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1, "data_offsets is not");
    REFUSED("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1.0]}}", 1, "data_offsets is not");
    REFUSED("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":\"0-1\"}}", 1, "data_offsets is not");
    REFUSED("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,99999999999999999999]}}", 1, "not valid JSON");
    REFUSED("{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "empty name");
    REFUSED("{\"__metadata__\":{\"format\":1}}", 0, "\"__metadata__\" member \"format\" is not a string");
    REFUSED("{\"__metadata__\":[\"pt\"]}", 0, "\"__metadata__\" is not an object");
}

static void test_offsets(void **state)
{
    (void)state;
    /* The span disagrees with the shape (both ways). */
    REFUSED("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 16,
            "\"w\": data_offsets [0, 12] hold 12 bytes, but F32 [2, 2] takes 16");
    REFUSED("{\"w\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, "takes 8");
    REFUSED("{\"w\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,0]}}", 16, "hold 0 bytes, but F32 [] takes 4");
    /* Begin after end. */
    REFUSED("{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}", 16, "ends before it begins");
    /* Past the data area: reported as an incomplete file, naming the furthest tensor and where the data end. */
    REFUSED("{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[14,18]}}", 16,
            "but its header says the data end at byte");
    REFUSED("{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[14,18]},"
            "\"v\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}",
            16, "(tensor \"w\")");
    REFUSED("{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[17,17]}}", 16, "incomplete");
    REFUSED("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[9223372036854775806,9223372036854775807]}}", 16,
            "incomplete");
    /* Overlaps: partial, contained, identical, and found whatever the order in the header. */
    REFUSED("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
            "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
            24, "tensors \"a\" [0, 16) and \"b\" [8, 24) overlap");
    REFUSED("{\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]},"
            "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
            24, "overlap");
    REFUSED("{\"a\":{\"dtype\":\"U8\",\"shape\":[24],\"data_offsets\":[0,24]},"
            "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[10,12]}}",
            24, "overlap");
    REFUSED("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]},"
            "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
            24, "overlap");
    REFUSED("{\"c\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[20,22]},"
            "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
            "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[5,5]},"
            "\"b\":{\"dtype\":\"U8\",\"shape\":[20],\"data_offsets\":[4,24]}}",
            24, "\"b\" [4, 24) and \"c\" [20, 22) overlap");
    /* Adjacent is fine. */
    titan_error e;
    assert_int_equal(s_parse("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                             "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
                             8, &e),
                     0);
}

static void test_overflow(void **state)
{
    (void)state;
    /* 2^32 x 2^32: the element count overflows. */
    REFUSED("{\"w\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0,
            "element count overflows");
    REFUSED("{\"w\":{\"dtype\":\"U8\",\"shape\":[9223372036854775807,2,1,3],\"data_offsets\":[0,0]}}", 0,
            "element count overflows");
    /* 2^61 elements of 8 bytes: the byte count overflows. */
    REFUSED("{\"w\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,0]}}", 0,
            "byte count overflows");
    /* 2^62 x 4 bytes = 2^64: overflows too (not 0). */
    REFUSED("{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}", 0,
            "byte count overflows");
    /* A count that fits but whose span does not match. */
    REFUSED("{\"w\":{\"dtype\":\"F32\",\"shape\":[1073741824,2],\"data_offsets\":[0,8]}}", 8, "takes 8589934592");
    /* A zero dimension makes the count 0 whatever the others, before or after it (no overflow). */
    titan_error e;
    assert_int_equal(s_parse("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,0],\"data_offsets\":[0,0]}}",
                             0, &e),
                     0);
    assert_int_equal(s_parse("{\"w\":{\"dtype\":\"F32\",\"shape\":[9223372036854775807,0],\"data_offsets\":[0,0]}}",
                             0, &e),
                     0);
}

static uint32_t s_bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

static void test_f16(void **state)
{
    (void)state;
    static const struct {
        uint16_t h;
        uint32_t f; /* float32 bits */
    } known[] = {
        {0x0000, 0x00000000}, /* +0 */
        {0x8000, 0x80000000}, /* -0 */
        {0x3C00, 0x3F800000}, /* 1 */
        {0xC000, 0xC0000000}, /* -2 */
        {0x3555, 0x3EAAA000}, /* 0.333251953125 */
        {0x7BFF, 0x477FE000}, /* 65504, the largest */
        {0xFBFF, 0xC77FE000}, /* -65504 */
        {0x0400, 0x38800000}, /* 2^-14, the smallest normal */
        {0x03FF, 0x387FC000}, /* 1023 x 2^-24, the largest subnormal */
        {0x0200, 0x38000000}, /* 2^-15 */
        {0x0001, 0x33800000}, /* 2^-24, the smallest subnormal */
        {0x8001, 0xB3800000}, /* -2^-24 */
        {0x7C00, 0x7F800000}, /* +inf */
        {0xFC00, 0xFF800000}, /* -inf */
        {0x7E00, 0x7FC00000}, /* quiet NaN */
        {0x7C01, 0x7F802000}, /* signalling NaN, payload kept */
        {0xFFFF, 0xFFFFE000}, /* negative NaN, all payload bits */
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        uint32_t got = s_bits(titan_f16_bits_to_f32(known[i].h));
        if (got != known[i].f) fail_msg("f16 0x%04x -> 0x%08x, want 0x%08x", known[i].h, got, known[i].f);
    }
    /* Every value, against the definition: (-1)^s x (e == 0 ? m 2^-24 : (1 + m/1024) 2^(e-15)). */
    uint16_t all[65536];
    float out[65536];
    for (uint32_t h = 0; h < 65536; h++) all[h] = (uint16_t)h;
    titan_f16_to_f32(all, out, 65536);
    for (uint32_t h = 0; h < 65536; h++) {
        int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
        float got = out[h];
        assert_int_equal(s_bits(got), s_bits(titan_f16_bits_to_f32((uint16_t)h)));
        if (e == 31) {
            if (m == 0)
                assert_true(isinf(got) && (signbit(got) != 0) == s);
            else
                assert_true(isnan(got) && (signbit(got) != 0) == s);
            continue;
        }
        double want = e == 0 ? ldexp(m, -24) : ldexp(1.0 + m / 1024.0, e - 15);
        if (s) want = -want;
        if ((double)got != want || (signbit(got) != 0) != s) fail_msg("f16 0x%04x -> %.9g, want %.9g", h, got, want);
#ifdef __FLT16_MAX__
        _Float16 c;
        uint16_t hh = (uint16_t)h;
        memcpy(&c, &hh, 2);
        assert_int_equal(s_bits((float)c) | (isnan(got) ? 0x00400000u : 0), s_bits(got) | (isnan(got) ? 0x00400000u : 0));
#endif
    }
}

static void test_bf16(void **state)
{
    (void)state;
    static const struct {
        uint16_t b;
        uint32_t f;
    } known[] = {
        {0x0000, 0x00000000}, {0x8000, 0x80000000}, /* +-0 */
        {0x3F80, 0x3F800000},                       /* 1 */
        {0xC040, 0xC0400000},                       /* -3 */
        {0x7F7F, 0x7F7F0000},                       /* the largest, ~3.3895e38 */
        {0x0080, 0x00800000},                       /* 2^-126, the smallest normal */
        {0x0001, 0x00010000},                       /* 2^-133, the smallest subnormal */
        {0x807F, 0x807F0000},                       /* the largest negative subnormal */
        {0x7F80, 0x7F800000}, {0xFF80, 0xFF800000}, /* +-inf */
        {0x7FC0, 0x7FC00000}, {0x7F81, 0x7F810000}, /* NaNs, payload kept */
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        assert_int_equal(s_bits(titan_bf16_bits_to_f32(known[i].b)), known[i].f);
    assert_true(titan_bf16_bits_to_f32(0x7F7F) == 3.38953138925153547590470800371487866880e38f);
    uint16_t all[65536];
    float out[65536];
    for (uint32_t h = 0; h < 65536; h++) all[h] = (uint16_t)h;
    titan_bf16_to_f32(all, out, 65536);
    for (uint32_t h = 0; h < 65536; h++) {
        int s = h >> 15, e = (h >> 7) & 255, m = h & 127;
        float got = out[h];
        if (e == 255) {
            assert_true(m == 0 ? isinf(got) : isnan(got));
            continue;
        }
        double want = e == 0 ? ldexp(m, -133) : ldexp(1.0 + m / 128.0, e - 127);
        if (s) want = -want;
        if ((double)got != want || (signbit(got) != 0) != s) fail_msg("bf16 0x%04x -> %.9g, want %.9g", h, got, want);
    }
    /* Unaligned sources. */
    uint8_t raw[7] = {0xAA, 0x80, 0x3F, 0x00, 0xC0, 0x80, 0x7F};
    float f[3];
    titan_bf16_to_f32(raw + 1, f, 3);
    assert_true(f[0] == 1.0f && f[1] == -2.0f && isinf(f[2]));
    titan_f16_to_f32(raw + 1, f, 1); /* 0x3F80 as f16 = 1.875 */
    assert_true(f[0] == 1.875f);
}

/* A buffer holding an F32 [3] tensor at data offset 0, an F16 [2] at 12, a BF16 [2] at 16 and an I64 [1] at 24,
 * its data area starting at `shift` bytes past an 8-byte boundary. */
static void s_views(size_t shift)
{
    /* The header's length makes the data start at 8 + hl; pad it with spaces to 8 + hl = 0 mod 8. */
    char h[512];
    snprintf(h, sizeof(h), "{\"f\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                           "\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[12,16]},"
                           "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[16,20]},"
                           "\"i\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[24,32]}}");
    while ((8 + strlen(h)) % 8) strcat(h, " ");
    size_t hl = strlen(h), len = 8 + hl + 32;
    uint8_t *mem = aligned_alloc(64, (len + 64 + 63) / 64 * 64);
    assert_non_null(mem);
    uint8_t *b = mem + shift;
    uint64_t hl64 = hl;
    memcpy(b, &hl64, 8);
    memcpy(b + 8, h, hl);
    uint8_t *d = b + 8 + hl;
    float fv[3] = {1.5f, -2.25f, 1e-30f};
    memcpy(d, fv, 12);
    uint16_t hv[2] = {0x3C00, 0x0001}, bv[2] = {0xBF80, 0x7F80};
    memcpy(d + 12, hv, 4);
    memcpy(d + 16, bv, 4);
    memset(d + 20, 0, 12);

    titan_st_file st;
    titan_error err = {0};
    assert_int_equal(titan_st_parse(b, len, "t", &st, &err), 0);
    float *owned = (float *)1;
    const float *x = titan_st_as_f32(&st, titan_st_find(&st, "f"), &owned, &err);
    assert_non_null(x);
    if (shift % 4 == 0) {
        assert_null(owned); /* in place */
        assert_ptr_equal(x, d);
    } else {
        assert_non_null(owned); /* copied */
        assert_ptr_equal(x, owned);
    }
    assert_memory_equal(x, fv, 12);
    free(owned);
    x = titan_st_as_f32(&st, titan_st_find(&st, "h"), &owned, &err);
    assert_non_null(owned);
    assert_true(x[0] == 1.0f && x[1] == ldexpf(1.0f, -24));
    free(owned);
    x = titan_st_as_f32(&st, titan_st_find(&st, "b"), &owned, &err);
    assert_non_null(owned);
    assert_true(x[0] == -1.0f && isinf(x[1]));
    free(owned);
    x = titan_st_as_f32(&st, titan_st_find(&st, "i"), &owned, &err);
    assert_null(x);
    assert_null(owned);
    assert_non_null(strstr(err.msg, "\"i\" is I64"));
    titan_st_close(&st);
    free(mem);
}

static void test_f32_views(void **state)
{
    (void)state;
    for (size_t shift = 0; shift < 8; shift++) s_views(shift);
}

static void test_open(void **state)
{
    (void)state;
    char path[] = "/tmp/titan-st-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    char h[128] = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    while ((8 + strlen(h)) % 8) strcat(h, " ");
    size_t len;
    uint8_t *b = s_build(h, UINT64_MAX, 8, &len);
    float v[2] = {3.0f, -0.5f};
    memcpy(b + len - 8, v, 8);
    assert_int_equal(write(fd, b, len), (ssize_t)len);
    close(fd);
    titan_st_file st;
    titan_error err = {0};
    assert_int_equal(titan_st_open(path, "w.safetensors", &st, &err), 0);
    assert_non_null(st.map);
    assert_int_equal(st.map_len, len);
    float *owned;
    const float *x = titan_st_as_f32(&st, titan_st_find(&st, "w"), &owned, &err);
    assert_null(owned); /* the mapping is page-aligned and 8 + hl is a multiple of 4 */
    assert_true(x[0] == 3.0f && x[1] == -0.5f);
    titan_st_close(&st);
    assert_null(st.map);

    /* Truncated on disk: the message gives both sizes. */
    assert_int_equal(truncate(path, (off_t)len - 3), 0);
    assert_int_equal(titan_st_open(path, "w.safetensors", &st, &err), -1);
    char want[128];
    snprintf(want, sizeof(want), "w.safetensors is %zu bytes but its header says the data end at byte %zu", len - 3,
             len);
    if (!strstr(err.msg, want)) fail_msg("message \"%s\", wanted \"%s\"", err.msg, want);
    assert_int_equal(truncate(path, 0), 0);
    assert_int_equal(titan_st_open(path, NULL, &st, &err), -1);
    assert_non_null(strstr(err.msg, "0 bytes"));
    unlink(path);
    assert_int_equal(titan_st_open(path, NULL, &st, &err), -1);
    assert_non_null(strstr(err.msg, "cannot open"));
    assert_int_equal(titan_st_open("/tmp", NULL, &st, &err), -1);
    assert_non_null(strstr(err.msg, "not a regular file"));
    free(b);
}

/* Names from the file are cut short in messages at a character's start, so that a message stays UTF-8. */
static void test_long_names(void **state)
{
    (void)state;
    char h[1024];
    char name[400] = "";
    for (int i = 0; i < 100; i++) strcat(name, "\xc3\xa9"); /* 200 bytes of 'é' */
    snprintf(h, sizeof(h), "{\"x%s\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", name);
    titan_error e;
    assert_int_equal(s_parse(h, 4, &e), -1);
    const char *q = strstr(e.msg, "\"x");
    assert_non_null(q);
    const char *dots = strstr(q, "...\"");
    assert_non_null(dots);
    /* 'x' then whole 2-byte characters: an odd count of bytes between the quote and the dots. */
    assert_int_equal((dots - (q + 1)) % 2, 1);
    assert_true(dots - (q + 1) <= 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_header), cmocka_unit_test(test_lengths),   cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_offsets),     cmocka_unit_test(test_overflow),  cmocka_unit_test(test_f16),
        cmocka_unit_test(test_bf16),        cmocka_unit_test(test_f32_views), cmocka_unit_test(test_open),
        cmocka_unit_test(test_long_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
