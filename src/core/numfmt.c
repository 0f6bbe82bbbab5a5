/* numfmt.c - JSON number parsing and round-trip-safe formatting for float32 and float64. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "numfmt.h"
#include "titan/tensor.h"

/* Exact powers of ten in a double go up to 1e22; larger ones are rounded. */
static const double s_pow10[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22, 1e23, 1e24, 1e25, 1e26, 1e27, 1e28, 1e29, 1e30, 1e31,
    1e32, 1e33, 1e34, 1e35, 1e36, 1e37, 1e38, 1e39, 1e40, 1e41, 1e42, 1e43, 1e44, 1e45, 1e46, 1e47,
    1e48, 1e49, 1e50, 1e51, 1e52, 1e53, 1e54, 1e55, 1e56, 1e57, 1e58, 1e59, 1e60, 1e61, 1e62, 1e63,
};

typedef struct {
    uint64_t mant;   /* up to 19 significant digits */
    int64_t e10;     /* value = mant * 10^e10 */
    bool neg;
    bool truncated;  /* nonzero digits beyond the 19th were dropped */
    int special;     /* 0 number, 1 NaN, 2 infinity */
} s_decimal;

static inline bool s_isdigit(char c)
{
    return c >= '0' && c <= '9';
}

/* True when all 8 bytes of v are ASCII digits. */
static inline bool s_is_8digits(uint64_t v)
{
    /* each byte must be 0x30..0x39: its high nibble 3, and adding 6 must not carry out of the low nibble */
    return ((v & 0xF0F0F0F0F0F0F0F0ULL) | (((v + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL) >> 4)) ==
           0x3333333333333333ULL;
}

/* The value of 8 ASCII digits loaded little-endian (first digit in the lowest byte). */
static inline uint32_t s_parse_8digits(uint64_t v)
{
    v -= 0x3030303030303030ULL;
    v = v * 10 + (v >> 8);                 /* pairs: bytes 0,2,4,6 now hold 2-digit values */
    uint64_t lo = v & 0x000000FF000000FFULL; /* pairs 0 and 4 */
    uint64_t hi = (v >> 16) & 0x000000FF000000FFULL; /* pairs 2 and 6 */
    /* combine: pair0*1e6 + pair2*1e4 + pair4*1e2 + pair6, gathered in the top 32 bits */
    return (uint32_t)((lo * ((1000000ULL << 32) + 100) + hi * ((10000ULL << 32) + 1)) >> 32);
}

/* Scans the JSON number grammar (plus NaN/Infinity); returns its length or 0. */
static size_t s_scan(const char *p, const char *end, s_decimal *d)
{
    const char *s = p;
    int ndigits = 0;
    memset(d, 0, sizeof(*d));
    if (p < end && *p == '-') {
        d->neg = true;
        p++;
    }
    if (p >= end) return 0;
    if (*p == 'N') {
        if (d->neg || end - p < 3 || memcmp(p, "NaN", 3) != 0) return 0;
        d->special = 1;
        return (size_t)(p + 3 - s);
    }
    if (*p == 'I') {
        if (end - p < 8 || memcmp(p, "Infinity", 8) != 0) return 0;
        d->special = 2;
        return (size_t)(p + 8 - s);
    }
    /* The first 19 significant digits go into mant; later ones only move the exponent. */
    uint64_t mant = 0;
    int64_t e10 = 0;
    bool trunc = false;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && s_isdigit(*p)) {
            if (ndigits < 19) {
                mant = mant * 10 + (uint64_t)(*p - '0');
                ndigits++;
            } else {
                e10++;
                trunc |= *p != '0';
            }
            p++;
        }
    } else {
        return 0;
    }
    if (p < end && *p == '.') {
        p++;
        const char *fs = p;
        if (mant == 0) {
            while (p < end && *p == '0') p++;
            e10 -= p - fs;
        }
        /* eight digits at a time while they fit in the 19 we keep */
        while (ndigits <= 11 && end - p >= 8) {
            uint64_t v;
            memcpy(&v, p, 8);
            if (!s_is_8digits(v)) break;
            mant = mant * 100000000ULL + s_parse_8digits(v);
            ndigits += 8;
            e10 -= 8;
            p += 8;
        }
        while (p < end && s_isdigit(*p)) {
            if (ndigits < 19) {
                mant = mant * 10 + (uint64_t)(*p - '0');
                ndigits++;
                e10--;
            } else {
                trunc |= *p != '0';
            }
            p++;
        }
        if (p == fs) return 0;
    }
    d->mant = mant;
    d->e10 = e10;
    d->truncated = trunc;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        bool eneg = false;
        if (p < end && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        if (p >= end || !s_isdigit(*p)) return 0;
        int64_t e = 0;
        while (p < end && s_isdigit(*p)) {
            if (e < 1000000) e = e * 10 + (*p - '0');
            p++;
        }
        d->e10 += eneg ? -e : e;
    }
    return (size_t)(p - s);
}

/* Slow path: the C library's correctly rounded conversion on a NUL-terminated copy. */
static double s_strtod_token(const char *p, size_t len, bool single, float *fout)
{
    char small[128];
    char *buf = small;
    if (len >= sizeof(small)) {
        buf = malloc(len + 1);
        if (!buf) { /* unreachable in practice; keep a sane answer */
            if (single) *fout = NAN;
            return NAN;
        }
    }
    memcpy(buf, p, len);
    buf[len] = '\0';
    double d = 0;
    if (single)
        *fout = strtof(buf, NULL);
    else
        d = strtod(buf, NULL);
    if (buf != small) free(buf);
    return d;
}

/* Approximates mant*10^e10 in double with a few roundings at most; false if out of reach. */
static bool s_approx(const s_decimal *d, double *out)
{
    double m = (double)d->mant;
    int64_t e = d->e10;
    if (e >= 0 && e <= 22) {
        *out = m * s_pow10[e];
    } else if (e < 0 && e >= -22) {
        *out = m / s_pow10[-e];
    } else if (e > 22 && e <= 44) {
        *out = m * s_pow10[22] * s_pow10[e - 22];
    } else if (e < -22 && e >= -44) {
        *out = m / s_pow10[22] / s_pow10[-e - 22];
    } else {
        return false;
    }
    return true;
}

size_t titan_parse_f64(const char *p, const char *end, double *out)
{
    s_decimal d;
    size_t n = s_scan(p, end, &d);
    if (n == 0) return 0;
    double v;
    if (d.special) {
        v = d.special == 1 ? NAN : INFINITY;
    } else if (d.mant == 0) {
        v = 0.0;
    } else if (!d.truncated && d.mant <= (1ULL << 53) && d.e10 >= -22 && d.e10 <= 22) {
        /* Clinger's fast path: both operands exact, one rounding. */
        v = d.e10 >= 0 ? (double)d.mant * s_pow10[d.e10] : (double)d.mant / s_pow10[-d.e10];
    } else {
        v = s_strtod_token(p, n, false, NULL);
        *out = v;
        return n;
    }
    *out = d.neg ? -v : v;
    return n;
}

size_t titan_parse_f32(const char *p, const char *end, float *out)
{
    s_decimal d;
    size_t n = s_scan(p, end, &d);
    if (n == 0) return 0;
    if (d.special) {
        float v = d.special == 1 ? NAN : INFINITY;
        *out = d.neg ? -v : v;
        return n;
    }
    if (d.mant == 0) {
        *out = d.neg ? -0.0f : 0.0f;
        return n;
    }
    double a;
    if (s_approx(&d, &a) && a >= (double)FLT_MIN && a <= (double)FLT_MAX) {
        /* a is within a few double ulps of the true value. Rounding it to float is
         * then correct unless it sits next to a float32 rounding midpoint. */
        uint64_t bits;
        memcpy(&bits, &a, sizeof(bits));
        uint64_t low = bits & ((1ULL << 29) - 1);
        uint64_t mid = 1ULL << 28;
        uint64_t dist = low > mid ? low - mid : mid - low;
        if (dist > 16) {
            float v = (float)a;
            *out = d.neg ? -v : v;
            return n;
        }
    }
    float v;
    s_strtod_token(p, n, true, &v);
    *out = v;
    return n;
}

static int s_special(double v, char *buf)
{
    if (isnan(v)) {
        memcpy(buf, "NaN", 4);
        return 3;
    }
    if (v > 0) {
        memcpy(buf, "Infinity", 9);
        return 8;
    }
    memcpy(buf, "-Infinity", 10);
    return 9;
}

/* Writes digits (ndigits significant, decimal exponent e10 of the first digit) like Python's repr. */
static int s_layout(char *buf, bool neg, const char *digits, int nd, int e10)
{
    char *o = buf;
    if (neg) *o++ = '-';
    if (e10 >= -4 && e10 < 16) {
        if (e10 < 0) {
            *o++ = '0';
            *o++ = '.';
            for (int i = -1; i > e10; i--) *o++ = '0';
            memcpy(o, digits, (size_t)nd);
            o += nd;
        } else {
            int intd = e10 + 1;
            for (int i = 0; i < intd; i++) *o++ = i < nd ? digits[i] : '0';
            *o++ = '.';
            if (nd > intd) {
                memcpy(o, digits + intd, (size_t)(nd - intd));
                o += nd - intd;
            } else {
                *o++ = '0'; /* "17.0", so that readers see a float as Python's repr does */
            }
        }
    } else {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, (size_t)(nd - 1));
            o += nd - 1;
        }
        *o++ = 'e';
        int e = e10;
        if (e < 0) {
            *o++ = '-';
            e = -e;
        }
        char tmp[8];
        int t = 0;
        do {
            tmp[t++] = (char)('0' + e % 10);
            e /= 10;
        } while (e);
        while (t) *o++ = tmp[--t];
    }
    *o = '\0';
    return (int)(o - buf);
}

static const uint64_t s_pow10_u64[] = {1ULL,      10ULL,      100ULL,      1000ULL,      10000ULL,
                                         100000ULL, 1000000ULL, 10000000ULL, 100000000ULL, 1000000000ULL};

/* The float32 nearest to mant * 10^e10 (mant > 0, under 10^9), correctly rounded. */
static float s_dec_to_f32(uint64_t mant, int e10)
{
    s_decimal d = {.mant = mant, .e10 = e10};
    double a;
    if (s_approx(&d, &a) && a >= (double)FLT_MIN && a <= (double)FLT_MAX) {
        uint64_t bits;
        memcpy(&bits, &a, sizeof(bits));
        uint64_t low = bits & ((1ULL << 29) - 1), mid = 1ULL << 28;
        if ((low > mid ? low - mid : mid - low) > 16) return (float)a;
    }
    char text[48];
    snprintf(text, sizeof(text), "%llue%d", (unsigned long long)mant, e10);
    return strtof(text, NULL);
}

/* v * 10^k for |k| <= 63, the range float32 formatting needs. */
static inline double s_scale(double v, int k)
{
    return k >= 0 ? v * s_pow10[k] : v / s_pow10[-k];
}

TITAN_API int titan_format_float32(float f, char *buf, size_t cap)
{
    if (!buf || cap < 32) return -ENOSPC;
    double v = f;
    if (!isfinite(v)) return s_special(v, buf);
    bool neg = signbit(v);
    if (v == 0) {
        if (neg) {
            memcpy(buf, "-0.0", 5);
            return 4;
        }
        memcpy(buf, "0.0", 4);
        return 3;
    }
    double a = fabs(v);
    uint32_t bits;
    memcpy(&bits, &f, sizeof(bits));
    int e2 = (int)((bits >> 23) & 0xff) - 127;
    if (e2 == -127) frexp(a, &e2), e2 -= 1; /* subnormal */
    /* floor(e2 * log10(2)), off by at most one; corrected below */
    int e10 = (e2 * 78913) >> 18;
    /* 9 significant digits always identify a float32; the double scaling error
     * (a few 1e-16) is far below the half-digit that could change the answer. */
    double s = s_scale(a, 8 - e10);
    if (s >= 999999999.5) {
        e10++;
        s = s_scale(a, 8 - e10);
    } else if (s < 99999999.5) {
        e10--;
        s = s_scale(a, 8 - e10);
    }
    uint64_t q = (uint64_t)(s + 0.5);
    if (q >= 1000000000ULL) { /* rounding carried into a tenth digit */
        q /= 10;
        e10++;
    }
    /* Nine digits always round-trip; fewer often do. Take the shortest rounding that reads back as
     * f, trying 8 digits, then 7, ..., and stopping at the first that does not (a shorter one then
     * only exists right at a power of two, where it may be missed: the text is still exact). */
    int nd = 9;
    for (int d = 8; d >= 1; d--) {
        int de10 = e10;
        double sd = s_scale(a, d - 1 - de10);
        uint64_t r = (uint64_t)(sd + 0.5);
        if (r >= s_pow10_u64[d]) { /* carried into another digit */
            r /= 10;
            de10++;
        }
        if (r == 0 || s_dec_to_f32(r, de10 - d + 1) != (float)a) break;
        q = r;
        nd = d;
        e10 = de10;
    }
    while (nd > 1 && q % 10 == 0) {
        q /= 10;
        nd--;
    }
    char digits[10];
    for (int i = nd - 1; i >= 0; i--) {
        digits[i] = (char)('0' + q % 10);
        q /= 10;
    }
    return s_layout(buf, neg, digits, nd, e10);
}

TITAN_API int titan_format_float64(double v, char *buf, size_t cap)
{
    if (!buf || cap < 32) return -ENOSPC;
    if (!isfinite(v)) return s_special(v, buf);
    /* The shortest of 15, 16 and 17 significant digits that reads back as v (17 always does). */
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(buf, cap, "%.*g", prec, v);
        if (n < 0 || (size_t)n >= cap) return -ENOSPC;
        if (prec == 17 || strtod(buf, NULL) == v) break;
    }
    /* Keep the value a float on the wire: "3" would read back as an integer. */
    if (!strpbrk(buf, ".en") && (size_t)n + 2 < cap) {
        memcpy(buf + n, ".0", 3);
        n += 2;
    }
    return n;
}

size_t titan_tensor_text_bound(titan_dtype dt, const int64_t *shape, int rank)
{
    size_t per = (dt == TITAN_DTYPE_FLOAT32 ? TITAN_FLOAT32_TEXT_MAX : TITAN_FLOAT64_TEXT_MAX) + 1;
    if (dt != TITAN_DTYPE_FLOAT32 && dt != TITAN_DTYPE_FLOAT64) return 0;
    if (rank < 0 || rank > TITAN_MAX_RANK) return 0;
    size_t elems = 1, arrays = rank > 0 ? 1 : 0, level = 1, text, brackets;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 1) return 0;
        if (__builtin_mul_overflow(elems, (size_t)shape[i], &elems)) return 0;
        if (i + 1 < rank) { /* the arrays one level down: one per element of this level */
            if (__builtin_mul_overflow(level, (size_t)shape[i], &level) ||
                __builtin_add_overflow(arrays, level, &arrays))
                return 0;
        }
    }
    if (__builtin_mul_overflow(elems, per, &text) || __builtin_mul_overflow(arrays, (size_t)3, &brackets) ||
        __builtin_add_overflow(text, brackets, &text))
        return 0;
    return text;
}

static char *s_tensor_text(char *o, titan_dtype dt, const void *data, const int64_t *shape, int rank,
                           size_t *pos)
{
    *o++ = '[';
    for (int64_t i = 0; i < shape[0]; i++) {
        if (i) *o++ = ',';
        if (rank > 1)
            o = s_tensor_text(o, dt, data, shape + 1, rank - 1, pos);
        else if (dt == TITAN_DTYPE_FLOAT32)
            o += titan_format_float32(((const float *)data)[(*pos)++], o, 32);
        else
            o += titan_format_float64(((const double *)data)[(*pos)++], o, 32);
    }
    *o++ = ']';
    return o;
}

char *titan_tensor_text(char *o, titan_dtype dt, const void *data, const int64_t *shape, int rank)
{
    size_t pos = 0;
    if (rank > 0) return s_tensor_text(o, dt, data, shape, rank, &pos);
    return o + (dt == TITAN_DTYPE_FLOAT32 ? titan_format_float32(*(const float *)data, o, 32)
                                          : titan_format_float64(*(const double *)data, o, 32));
}
