/* tensor.h - dtypes, shapes and tensor descriptors shared by clients and the worker. */
#ifndef TITAN_TENSOR_H
#define TITAN_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "titan/export.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TITAN_MAX_RANK 8

typedef enum {
    TITAN_DTYPE_INVALID = 0,
    TITAN_DTYPE_FLOAT32,
    TITAN_DTYPE_FLOAT64,
} titan_dtype;

/* Returns the dtype named by `name` ("float32", "float64"), or TITAN_DTYPE_INVALID. */
TITAN_API titan_dtype titan_dtype_from_name(const char *name);
/* Returns the wire name of `dt` ("float32"...), or NULL for an invalid dtype. */
TITAN_API const char *titan_dtype_name(titan_dtype dt);
/* Returns the size in bytes of one element of `dt`, or 0 for an invalid dtype. */
TITAN_API size_t titan_dtype_size(titan_dtype dt);

/* Multiplies the `rank` dims of `shape` into *elems. Returns 0, -EINVAL if a
 * dim is < 1 or rank is outside 1..TITAN_MAX_RANK, -EOVERFLOW if the element
 * count or its byte size for `dt` does not fit in size_t. *elems is written only on success. */
TITAN_API int titan_shape_elems(titan_dtype dt, const int64_t *shape, int rank, size_t *elems);

/* The tolerance titan holds two results of one float matrix product C = A (m x k) * B (k x n) to when
 * they come from different code paths (another BLAS, kernel, blocking, thread count, or a split of the
 * rows over several backends): 8 * sqrt(k) * eps(dt), relative to the largest |C| element; a few times
 * the typical rounding error of a length-k dot product. `titan matmul --check` uses it. */
TITAN_API double titan_matmul_tolerance(titan_dtype dt, size_t k);
/* Compares `count` elements of got with want (both dt): returns max |got - want| / max |want| (the
 * relative error that titan_matmul_tolerance bounds) and the largest absolute difference in *max_abs
 * (may be NULL). Elements equal as values (both the same infinity, or both NaN) agree; a NaN or
 * infinity against a different value makes the result NaN, which fails any `<=` check. */
TITAN_API double titan_matmul_rel_error(titan_dtype dt, size_t count, const void *got, const void *want,
                                        double *max_abs);

/* The longest text titan_format_float32/64 write, without the NUL: fixed notation
 * runs up to 1e16, so a float32 can take 19 characters ("-9876543590000000.0");
 * a float64 takes at most 24 ("-2.2250738585072014e-308"). */
#define TITAN_FLOAT32_TEXT_MAX 19
#define TITAN_FLOAT64_TEXT_MAX 24

/* Writes at most `cap` bytes of the shortest-round-trip-safe JSON text for one
 * float32 (9 significant digits) into `buf`, NUL-terminated. NaN and infinities
 * are written as NaN, Infinity and -Infinity. Returns the length (no NUL; at most
 * TITAN_FLOAT32_TEXT_MAX), or -ENOSPC when `cap` < 32. */
TITAN_API int titan_format_float32(float v, char *buf, size_t cap);
/* Same for float64, 17 significant digits (at most TITAN_FLOAT64_TEXT_MAX characters). */
TITAN_API int titan_format_float64(double v, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif

#endif
