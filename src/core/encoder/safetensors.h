/* safetensors.h - a reader for the safetensors format (HuggingFace's weight files), built for hostile input.
 *
 * The format: 8 bytes, a little-endian uint64 N (the header's length); N bytes of JSON, an object whose members
 * are tensors {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]} and an optional "__metadata__"
 * object of strings; then the data area, where a tensor's bytes are [BEGIN, END) counted from the data area's
 * start, little-endian, row-major.
 *
 * Every field is checked: N (at most TITAN_ST_MAX_HEADER and within the file), the JSON (a bounded object), each
 * tensor's dtype (a known safetensors dtype), shape (rank at most TITAN_ST_MAX_RANK, dimensions >= 0, element
 * count x dtype size without overflow and equal to END - BEGIN), data_offsets (BEGIN <= END <= the data area's
 * length) and no two tensors sharing a byte. A file whose header points past its end is reported as an
 * incomplete download. The file is mapped read-only (MAP_PRIVATE) and read once, by the mapping.
 */
#ifndef TITAN_CORE_SAFETENSORS_H
#define TITAN_CORE_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define TITAN_ST_MAX_HEADER (100u << 20) /* bytes of JSON header */
#define TITAN_ST_MAX_TENSORS (1u << 20)
#define TITAN_ST_MAX_RANK 4

/* The safetensors dtypes. The float ones (F32, F16, BF16) can be read as float32; the rest exist in files
 * (HF's embeddings.position_ids is I64) and are refused when a weight needs them. */
typedef enum {
    TITAN_ST_F32, TITAN_ST_F16, TITAN_ST_BF16, TITAN_ST_F64,
    TITAN_ST_I64, TITAN_ST_I32, TITAN_ST_I16, TITAN_ST_I8,
    TITAN_ST_U64, TITAN_ST_U32, TITAN_ST_U16, TITAN_ST_U8,
    TITAN_ST_BOOL, TITAN_ST_F8_E4M3, TITAN_ST_F8_E5M2,
    TITAN_ST_NDTYPES
} titan_st_dtype;

typedef struct {
    const char *name;   /* NUL-terminated, owned by the file */
    titan_st_dtype dtype;
    int rank;           /* 0..TITAN_ST_MAX_RANK */
    int64_t shape[TITAN_ST_MAX_RANK];
    uint64_t count;     /* elements: the product of shape (1 for rank 0) */
    uint64_t begin, end; /* byte offsets in the data area */
} titan_st_tensor;

typedef struct {
    titan_st_tensor *t; /* sorted by name */
    size_t n;
    size_t nmeta;       /* "__metadata__" entries (all strings) */
    uint64_t header_len;
    const uint8_t *data; /* the data area (inside base) */
    uint64_t data_len;
    /* the mapping, when opened from a file */
    void *map;
    size_t map_len;
    char *names;        /* one block holding every tensor's name */
} titan_st_file;

/* The dtype's name in files ("F32") and its element size in bytes. */
const char *titan_st_dtype_name(titan_st_dtype dt);
size_t titan_st_dtype_size(titan_st_dtype dt);

/* Validates and indexes the safetensors bytes buf[0..len) (a whole file: the length prefix, the header, the data
 * area); `what` names the source in messages (a file's name). st keeps pointers into buf (data), which must
 * outlive it. Returns 0, or -1 with err (code "bad_model") saying what is wrong and, for a short buffer, that
 * the download is incomplete. Frees nothing of buf; call titan_st_close(st) after either outcome. */
int titan_st_parse(const uint8_t *buf, size_t len, const char *what, titan_st_file *st, titan_error *err);

/* Maps `path` (read-only, private) and parses it as above; `what` names it in messages (NULL: the path). */
int titan_st_open(const char *path, const char *what, titan_st_file *st, titan_error *err);

/* Releases the index and, if any, the mapping; st can be reused. Takes a zeroed or closed st. */
void titan_st_close(titan_st_file *st);

/* The tensor called `name`, or NULL. */
const titan_st_tensor *titan_st_find(const titan_st_file *st, const char *name);

/* The tensor's bytes, inside the data area. */
static inline const uint8_t *titan_st_bytes(const titan_st_file *st, const titan_st_tensor *t)
{
    return st->data + t->begin;
}

/* The tensor as float32: F32 data that are 4-byte aligned in memory are returned in place (*owned = NULL);
 * F32 unaligned data are copied, F16 and BF16 converted, into a new buffer (*owned, to free()). Another dtype is
 * refused with err naming the tensor and its dtype; so is an allocation failure. Returns NULL on error. */
const float *titan_st_as_f32(const titan_st_file *st, const titan_st_tensor *t, float **owned, titan_error *err);

/* Conversions of n elements from little-endian bit patterns (src may be unaligned). Exact: float32 holds every
 * float16 and bfloat16 value, subnormals, infinities and NaNs (payload kept) included. */
void titan_f16_to_f32(const void *src, float *dst, size_t n);
void titan_bf16_to_f32(const void *src, float *dst, size_t n);
float titan_f16_bits_to_f32(uint16_t h);
float titan_bf16_bits_to_f32(uint16_t b);

#endif
