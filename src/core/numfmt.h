/* numfmt.h - fast, correctly rounded JSON number parsing into float32/float64 (internal). */
#ifndef TITAN_NUMFMT_H
#define TITAN_NUMFMT_H

#include <stddef.h>
#include <stdint.h>

#include "titan/tensor.h"

/* Parses one JSON number (or the tokens NaN, Infinity, -Infinity) starting at p,
 * not reading past end. Returns the characters consumed, or 0 when p does not
 * start a valid number. The result is the correctly rounded value (IEEE 754
 * round-to-nearest-even); out-of-range values become +-Infinity or +-0. */
size_t titan_parse_f32(const char *p, const char *end, float *out);
size_t titan_parse_f64(const char *p, const char *end, double *out);

/* The most bytes titan_tensor_text writes for a tensor of dtype dt and the given shape (rank 0 is one
 * number), without a NUL; 0 when that does not fit in size_t or the shape is invalid. Each element
 * takes at most TITAN_FLOAT32/64_TEXT_MAX characters and a comma, and each nested array two
 * brackets and a comma: elems * (max + 1) + 3 * arrays, where arrays = 1 + d0 + d0*d1 + ... +
 * d0*...*d(rank-2). tests/unit/test_codec.c checks the bound against the written length. */
size_t titan_tensor_text_bound(titan_dtype dt, const int64_t *shape, int rank);
/* Writes the elements of data (row-major, dtype dt) as nested JSON arrays (a bare number for rank
 * 0) at o, which must have titan_tensor_text_bound() bytes; NaN and infinities as NaN, Infinity
 * and -Infinity. Returns the end of the text (no NUL written). */
char *titan_tensor_text(char *o, titan_dtype dt, const void *data, const int64_t *shape, int rank);

#endif
