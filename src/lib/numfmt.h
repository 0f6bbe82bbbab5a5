/* numfmt.h - fast, correctly rounded JSON number parsing into float32/float64 (internal). */
#ifndef TITAN_NUMFMT_H
#define TITAN_NUMFMT_H

#include <stddef.h>

/* Parses one JSON number (or the tokens NaN, Infinity, -Infinity) starting at p,
 * not reading past end. Returns the characters consumed, or 0 when p does not
 * start a valid number. The result is the correctly rounded value (IEEE 754
 * round-to-nearest-even); out-of-range values become +-Infinity or +-0. */
size_t titan_parse_f32(const char *p, const char *end, float *out);
size_t titan_parse_f64(const char *p, const char *end, double *out);

#endif
