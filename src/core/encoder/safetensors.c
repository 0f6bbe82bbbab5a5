/* safetensors.c - the safetensors reader (see safetensors.h): header validation, the mapping, float32 views. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "safetensors.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c reads little-endian data in place: a big-endian host needs byte swapping here"
#endif

static const struct {
    const char *name;
    size_t size;
} s_dtypes[TITAN_ST_NDTYPES] = {
    [TITAN_ST_F32] = {"F32", 4},   [TITAN_ST_F16] = {"F16", 2},   [TITAN_ST_BF16] = {"BF16", 2},
    [TITAN_ST_F64] = {"F64", 8},   [TITAN_ST_I64] = {"I64", 8},   [TITAN_ST_I32] = {"I32", 4},
    [TITAN_ST_I16] = {"I16", 2},   [TITAN_ST_I8] = {"I8", 1},     [TITAN_ST_U64] = {"U64", 8},
    [TITAN_ST_U32] = {"U32", 4},   [TITAN_ST_U16] = {"U16", 2},   [TITAN_ST_U8] = {"U8", 1},
    [TITAN_ST_BOOL] = {"BOOL", 1}, [TITAN_ST_F8_E4M3] = {"F8_E4M3", 1}, [TITAN_ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *titan_st_dtype_name(titan_st_dtype dt)
{
    return (unsigned)dt < TITAN_ST_NDTYPES ? s_dtypes[dt].name : "?";
}

size_t titan_st_dtype_size(titan_st_dtype dt)
{
    return (unsigned)dt < TITAN_ST_NDTYPES ? s_dtypes[dt].size : 0;
}

static int s_dtype_from(const char *s, titan_st_dtype *dt)
{
    for (int i = 0; i < TITAN_ST_NDTYPES; i++)
        if (strcmp(s, s_dtypes[i].name) == 0) {
            *dt = (titan_st_dtype)i;
            return 0;
        }
    return -1;
}

/* A name for messages: "%s" of s_short(name), at most S_SHORT bytes of it cut at a UTF-8 character's start
 * (names come from the file; a message must stay valid UTF-8 for a JSON reply). */
#define S_NAME_FMT "\"%s\""
#define S_SHORT 100
typedef struct {
    char s[S_SHORT + 4];
} s_short_t;

static s_short_t s_shorten(const char *name)
{
    s_short_t o;
    size_t n = strlen(name);
    if (n <= S_SHORT) {
        memcpy(o.s, name, n + 1);
        return o;
    }
    n = S_SHORT;
    while (n > 0 && ((unsigned char)name[n] & 0xC0) == 0x80) n--; /* name[n] starts the first character left out */
    memcpy(o.s, name, n);
    memcpy(o.s + n, "...", 4);
    return o;
}
#define s_short(name) (s_shorten(name).s)

static int s_by_name(const void *a, const void *b)
{
    return strcmp(((const titan_st_tensor *)a)->name, ((const titan_st_tensor *)b)->name);
}

static int s_by_offset(const void *a, const void *b)
{
    const titan_st_tensor *x = *(const titan_st_tensor *const *)a, *y = *(const titan_st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* One tensor's entry: dtype, shape, data_offsets, and their agreement. Bounds against the data area are checked
 * by the caller (to report an incomplete file once, with the furthest end). */
static int s_tensor(const char *what, const char *name, json_t *v, titan_st_tensor *t, titan_error *err)
{
    if (!json_is_object(v))
        return titan_fail(err, "bad_model", "%s: tensor " S_NAME_FMT " in the header is not an object with dtype, shape and data_offsets",
                      what, s_short(name));
    json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
           *offs = json_object_get(v, "data_offsets");
    if (!json_is_string(dt))
        return titan_fail(err, "bad_model", "%s: tensor " S_NAME_FMT " has no dtype string", what, s_short(name));
    if (s_dtype_from(json_string_value(dt), &t->dtype) != 0)
        return titan_fail(err, "bad_model", "%s: tensor " S_NAME_FMT " has dtype \"%s\", which is no safetensors dtype (F32, F16, "
                      "BF16, F64, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, F8_E4M3, F8_E5M2)",
                      what, s_short(name), s_short(json_string_value(dt)));
    if (!json_is_array(shape))
        return titan_fail(err, "bad_model", "%s: tensor " S_NAME_FMT " has no shape array", what, s_short(name));
    size_t rank = json_array_size(shape);
    if (rank > TITAN_ST_MAX_RANK)
        return titan_fail(err, "bad_model", "%s: tensor " S_NAME_FMT " has rank %zu; titan reads tensors of rank at most %d", what,
                      s_short(name), rank, TITAN_ST_MAX_RANK);
    t->rank = (int)rank;
    uint64_t count = 1;
    bool overflow = false, zero = false; /* a 0 dimension makes the count 0 whatever the others */
    for (size_t i = 0; i < rank; i++) {
        json_t *d = json_array_get(shape, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return titan_fail(err, "bad_model", "%s: tensor " S_NAME_FMT ": shape[%zu] is not an integer >= 0", what, s_short(name), i);
        t->shape[i] = (int64_t)json_integer_value(d);
        if (t->shape[i] == 0) zero = true;
        if (!overflow && __builtin_mul_overflow(count, (uint64_t)t->shape[i], &count)) overflow = true;
    }
    if (zero)
        count = 0;
    else if (overflow)
        return titan_fail(err, "bad_model", "%s: tensor " S_NAME_FMT ": the shape's element count overflows 64 bits", what,
                      s_short(name));
    for (size_t i = rank; i < TITAN_ST_MAX_RANK; i++) t->shape[i] = 0;
    t->count = count;
    uint64_t bytes;
    if (__builtin_mul_overflow(count, (uint64_t)s_dtypes[t->dtype].size, &bytes))
        return titan_fail(err, "bad_model", "%s: tensor " S_NAME_FMT ": the shape's byte count overflows 64 bits", what, s_short(name));
    if (!json_is_array(offs) || json_array_size(offs) != 2 || !json_is_integer(json_array_get(offs, 0)) ||
        !json_is_integer(json_array_get(offs, 1)) || json_integer_value(json_array_get(offs, 0)) < 0 ||
        json_integer_value(json_array_get(offs, 1)) < 0)
        return titan_fail(err, "bad_model", "%s: tensor " S_NAME_FMT ": data_offsets is not [BEGIN, END] with integers >= 0", what,
                      s_short(name));
    t->begin = (uint64_t)json_integer_value(json_array_get(offs, 0));
    t->end = (uint64_t)json_integer_value(json_array_get(offs, 1));
    if (t->begin > t->end)
        return titan_fail(err, "bad_model", "%s: tensor " S_NAME_FMT ": data_offsets [%llu, %llu] ends before it begins", what, s_short(name),
                      (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end - t->begin != bytes) {
        char shp[96] = ""; /* found by fuzz_safetensors: a rank-0 shape left this unset */
        int o = 0;
        for (int i = 0; i < t->rank; i++)
            o += snprintf(shp + o, sizeof(shp) - (size_t)o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        return titan_fail(err, "bad_model", "%s: tensor " S_NAME_FMT ": data_offsets [%llu, %llu] hold %llu bytes, but %s [%s] takes "
                      "%llu: the header is damaged",
                      what, s_short(name), (unsigned long long)t->begin, (unsigned long long)t->end,
                      (unsigned long long)(t->end - t->begin), s_dtypes[t->dtype].name, shp,
                      (unsigned long long)bytes);
    }
    return 0;
}

int titan_st_parse(const uint8_t *buf, size_t len, const char *what, titan_st_file *st, titan_error *err)
{
    memset(st, 0, sizeof(*st));
    if (!what) what = "safetensors data";
    if (len < 8)
        return titan_fail(err, "bad_model", "%s is %zu bytes, too short for a safetensors file (8 bytes of header length, the "
                      "header, the data): the download is incomplete; download it again", what, len);
    uint64_t hl;
    memcpy(&hl, buf, 8);
    if (hl > TITAN_ST_MAX_HEADER)
        return titan_fail(err, "bad_model", "%s: its header length is %llu bytes, over the %u MiB titan accepts: this is not a "
                      "safetensors file, or it is damaged", what, (unsigned long long)hl, TITAN_ST_MAX_HEADER >> 20);
    if (hl > len - 8)
        return titan_fail(err, "bad_model", "%s is %zu bytes but its header length says the header alone ends at byte %llu: the "
                      "download is incomplete; download it again", what, len, (unsigned long long)hl + 8);
    if (hl < 2 || buf[8] != '{')
        return titan_fail(err, "bad_model", "%s: the header does not start with '{': this is not a safetensors file", what);
    st->header_len = hl;
    st->data = buf + 8 + hl;
    st->data_len = len - 8 - hl;

    json_error_t jerr;
    json_t *h = json_loadb((const char *)buf + 8, (size_t)hl, JSON_REJECT_DUPLICATES, &jerr);
    if (!h) {
        /* jansson's text may quote the input's bytes: keep the message ASCII */
        for (char *c = jerr.text; *c; c++)
            if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) *c = '?';
        return titan_fail(err, "bad_model", "%s: the header is not valid JSON (%.120s at byte %d of the header)", what, jerr.text,
                      jerr.position);
    }
    if (!json_is_object(h)) {
        json_decref(h);
        return titan_fail(err, "bad_model", "%s: the header is not a JSON object", what);
    }
    size_t members = json_object_size(h);
    if (members > TITAN_ST_MAX_TENSORS + 1) {
        json_decref(h);
        return titan_fail(err, "bad_model", "%s: the header lists %zu tensors, over the %u titan accepts", what, members,
                      TITAN_ST_MAX_TENSORS);
    }

    /* Count the tensors and the bytes of their names. */
    const char *key;
    json_t *v;
    size_t ntensors = 0, namebytes = 0;
    json_object_foreach(h, key, v)
    {
        if (strcmp(key, "__metadata__") == 0) continue;
        ntensors++;
        namebytes += strlen(key) + 1; /* bounded by the header's length */
    }
    st->t = calloc(ntensors ? ntensors : 1, sizeof(*st->t));
    st->names = malloc(namebytes ? namebytes : 1);
    titan_st_tensor **order = calloc(ntensors ? ntensors : 1, sizeof(*order));
    int rc = -1;
    if (!st->t || !st->names || !order) {
        titan_fail(err, "bad_model", "%s: out of memory indexing %zu tensors", what, ntensors);
        goto out;
    }

    size_t ni = 0, no = 0;
    json_object_foreach(h, key, v)
    {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(v)) {
                titan_fail(err, "bad_model", "%s: \"__metadata__\" is not an object of strings", what);
                goto out;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv)
            {
                if (!json_is_string(mv)) {
                    titan_fail(err, "bad_model", "%s: \"__metadata__\" member " S_NAME_FMT " is not a string", what, s_short(mk));
                    goto out;
                }
            }
            st->nmeta = json_object_size(v);
            continue;
        }
        if (key[0] == '\0') {
            titan_fail(err, "bad_model", "%s: a tensor in the header has an empty name", what);
            goto out;
        }
        titan_st_tensor *t = &st->t[st->n];
        size_t kl = strlen(key) + 1;
        memcpy(st->names + ni, key, kl);
        t->name = st->names + ni;
        ni += kl;
        if (s_tensor(what, key, v, t, err) != 0) goto out;
        st->n++;
        order[no++] = t;
    }

    /* Bounds: report the furthest end once, as a file cut short. */
    const titan_st_tensor *far = NULL;
    for (size_t i = 0; i < st->n; i++)
        if (!far || st->t[i].end > far->end) far = &st->t[i];
    if (far && far->end > st->data_len) {
        titan_fail(err, "bad_model", "%s is %zu bytes but its header says the data end at byte %llu (tensor " S_NAME_FMT "): the "
               "download is incomplete or the file is damaged; download it again",
               what, len, (unsigned long long)(8 + hl + far->end), s_short(far->name));
        goto out;
    }

    /* No byte shared by two tensors: sorted by offset, each non-empty one starts at or after the previous end. */
    qsort(order, st->n, sizeof(*order), s_by_offset);
    const titan_st_tensor *prev = NULL;
    for (size_t i = 0; i < st->n; i++) {
        const titan_st_tensor *t = order[i];
        if (t->begin == t->end) continue;
        if (prev && t->begin < prev->end) {
            titan_fail(err, "bad_model", "%s: tensors " S_NAME_FMT " [%llu, %llu) and " S_NAME_FMT " [%llu, %llu) overlap in the data "
                   "area: the header is damaged", what, s_short(prev->name), (unsigned long long)prev->begin,
                   (unsigned long long)prev->end, s_short(t->name), (unsigned long long)t->begin, (unsigned long long)t->end);
            goto out;
        }
        prev = t;
    }
    /* The names are copied; the array is sorted by name (their pointers move with the entries). */
    qsort(st->t, st->n, sizeof(*st->t), s_by_name);
    rc = 0;
out:
    free(order);
    json_decref(h);
    if (rc != 0) {
        free(st->t);
        free(st->names);
        st->t = NULL;
        st->names = NULL;
        st->n = 0;
    }
    return rc;
}

int titan_st_open(const char *path, const char *what, titan_st_file *st, titan_error *err)
{
    memset(st, 0, sizeof(*st));
    if (!what) what = path;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return titan_fail(err, "bad_model", "cannot open %s: %s%s", what, strerror(errno),
                      errno == ENOENT ? " (the model directory needs its weights as model.safetensors)" : "");
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return titan_fail(err, "bad_model", "cannot stat %s: %s", what, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return titan_fail(err, "bad_model", "%s is not a regular file", what);
    }
    if (sb.st_size < 8) {
        close(fd);
        return titan_fail(err, "bad_model", "%s is %lld bytes, too short for a safetensors file: the download is incomplete; "
                      "download it again", what, (long long)sb.st_size);
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return titan_fail(err, "bad_model", "%s is too large to map on this machine", what);
    }
    size_t len = (size_t)sb.st_size;
    void *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) return titan_fail(err, "bad_model", "cannot map %s (%zu bytes): %s", what, len, strerror(e));
    if (titan_st_parse(m, len, what, st, err) != 0) {
        munmap(m, len);
        return -1;
    }
    st->map = m;
    st->map_len = len;
    return 0;
}

void titan_st_close(titan_st_file *st)
{
    if (!st) return;
    free(st->t);
    free(st->names);
    if (st->map) munmap(st->map, st->map_len);
    memset(st, 0, sizeof(*st));
}

const titan_st_tensor *titan_st_find(const titan_st_file *st, const char *name)
{
    if (!st->n) return NULL;
    titan_st_tensor key = {.name = name};
    return bsearch(&key, st->t, st->n, sizeof(*st->t), s_by_name);
}

float titan_f16_bits_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, bits;
    if (e == 0) {
        if (m == 0) {
            bits = sign;
        } else { /* subnormal: m x 2^-24; normalise */
            uint32_t exp = 127 - 15 + 1;
            while (!(m & 0x400u)) {
                m <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((m & 0x3ffu) << 13);
        }
    } else if (e == 31) {
        bits = sign | 0x7f800000u | (m << 13); /* infinity, or NaN with its payload */
    } else {
        bits = sign | ((e + 127 - 15) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float titan_bf16_bits_to_f32(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void titan_f16_to_f32(const void *src, float *dst, size_t n)
{
    const uint8_t *p = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = titan_f16_bits_to_f32(h);
    }
}

void titan_bf16_to_f32(const void *src, float *dst, size_t n)
{
    const uint8_t *p = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = titan_bf16_bits_to_f32(h);
    }
}

const float *titan_st_as_f32(const titan_st_file *st, const titan_st_tensor *t, float **owned, titan_error *err)
{
    *owned = NULL;
    const uint8_t *src = titan_st_bytes(st, t);
    if (t->dtype != TITAN_ST_F32 && t->dtype != TITAN_ST_F16 && t->dtype != TITAN_ST_BF16) {
        titan_fail(err, "bad_model", "tensor " S_NAME_FMT " is %s; titan reads weights stored as F32, F16 or BF16", s_short(t->name),
               s_dtypes[t->dtype].name);
        return NULL;
    }
    if (t->dtype == TITAN_ST_F32 && ((uintptr_t)src & 3u) == 0) return (const float *)(const void *)src;
    size_t bytes;
    if (t->count > SIZE_MAX / sizeof(float) || __builtin_mul_overflow((size_t)t->count, sizeof(float), &bytes)) {
        titan_fail(err, "bad_model", "tensor " S_NAME_FMT " is too large for this machine", s_short(t->name));
        return NULL;
    }
    float *f = malloc(bytes ? bytes : 1);
    if (!f) {
        titan_fail(err, "bad_model", "out of memory: tensor " S_NAME_FMT " needs %zu bytes as float32", s_short(t->name), bytes);
        return NULL;
    }
    if (t->dtype == TITAN_ST_F32)
        memcpy(f, src, bytes);
    else if (t->dtype == TITAN_ST_F16)
        titan_f16_to_f32(src, f, (size_t)t->count);
    else
        titan_bf16_to_f32(src, f, (size_t)t->count);
    *owned = f;
    return f;
}
