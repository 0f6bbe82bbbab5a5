/* tensor.c - dtype names and sizes, overflow-checked shape arithmetic, and how closely two products agree. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "titan/tensor.h"

TITAN_API titan_dtype titan_dtype_from_name(const char *name)
{
    if (!name) return TITAN_DTYPE_INVALID;
    if (strcmp(name, "float32") == 0) return TITAN_DTYPE_FLOAT32;
    if (strcmp(name, "float64") == 0) return TITAN_DTYPE_FLOAT64;
    return TITAN_DTYPE_INVALID;
}

TITAN_API const char *titan_dtype_name(titan_dtype dt)
{
    switch (dt) {
    case TITAN_DTYPE_FLOAT32: return "float32";
    case TITAN_DTYPE_FLOAT64: return "float64";
    default: return NULL;
    }
}

TITAN_API size_t titan_dtype_size(titan_dtype dt)
{
    switch (dt) {
    case TITAN_DTYPE_FLOAT32: return 4;
    case TITAN_DTYPE_FLOAT64: return 8;
    default: return 0;
    }
}

TITAN_API int titan_shape_elems(titan_dtype dt, const int64_t *shape, int rank, size_t *elems)
{
    size_t esize = titan_dtype_size(dt);
    if (!shape || !elems || esize == 0 || rank < 1 || rank > TITAN_MAX_RANK) return -EINVAL;
    size_t n = 1;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 1) return -EINVAL;
        if ((uint64_t)shape[i] > SIZE_MAX) return -EOVERFLOW;
        if (__builtin_mul_overflow(n, (size_t)shape[i], &n)) return -EOVERFLOW;
    }
    size_t bytes;
    if (__builtin_mul_overflow(n, esize, &bytes)) return -EOVERFLOW;
    *elems = n;
    return 0;
}

TITAN_API double titan_matmul_tolerance(titan_dtype dt, size_t k)
{
    double eps = dt == TITAN_DTYPE_FLOAT32 ? (double)FLT_EPSILON : DBL_EPSILON;
    return 8.0 * sqrt((double)(k ? k : 1)) * eps;
}

TITAN_API double titan_matmul_rel_error(titan_dtype dt, size_t count, const void *got, const void *want,
                                        double *max_abs)
{
    double worst = 0, scale = 0;
    bool bad = false;
    for (size_t i = 0; i < count; i++) {
        double w = dt == TITAN_DTYPE_FLOAT32 ? ((const float *)want)[i] : ((const double *)want)[i];
        double g = dt == TITAN_DTYPE_FLOAT32 ? ((const float *)got)[i] : ((const double *)got)[i];
        if (isfinite(w) && fabs(w) > scale) scale = fabs(w);
        if (g == w || (isnan(g) && isnan(w))) continue;
        double d = fabs(g - w);
        if (!isfinite(d))
            bad = true; /* NaN or infinity against another value */
        else if (d > worst)
            worst = d;
    }
    if (max_abs) *max_abs = bad ? NAN : worst;
    if (bad) return NAN;
    return worst == 0 ? 0 : worst / (scale > 0 ? scale : DBL_MIN);
}
