/* jsonscan.h - splits a request header into a small JSON remainder and raw array spans, and
 * parses numeric nested arrays straight into tensors (internal to titan). */
#ifndef TITAN_JSONSCAN_H
#define TITAN_JSONSCAN_H

#include <stddef.h>
#include <stdint.h>

#include "titan/tensor.h"

#define TITAN_JSON_MAX_SPANS 32
#define TITAN_JSON_MAX_DEPTH 64
/* JSON values and member names a header may hold outside nested numeric arrays: what jansson builds a
 * DOM of costs up to ~300 bytes each, so this bounds that DOM (2 million members took 325 MB). */
#define TITAN_JSON_MAX_VALUES 16384

/* One top-level member whose value is an array. */
typedef struct {
    const char *key; /* raw key bytes between the quotes (borrowed from the input) */
    size_t key_len;
    const char *val; /* the array text, '[' to ']' (borrowed from the input) */
    size_t val_len;
    /* When the array is a numeric tensor it is already parsed into the split's dtype: */
    void *data;      /* owned by the split until taken (set to NULL when taken); NULL if not numeric */
    titan_dtype dtype;
    int64_t shape[TITAN_MAX_RANK];
    int rank;
    int status;      /* 0 parsed, -E2BIG over max_elems, -EINVAL not a numeric tensor (but valid JSON) */
} titan_json_span;

typedef struct {
    char *rest;      /* malloc'd JSON object text: the input with array values replaced by null */
    size_t rest_len;
    titan_json_span spans[TITAN_JSON_MAX_SPANS];
    size_t nspans;
} titan_json_split;

/* Splits the JSON object text[0..len). Top-level array values become spans
 * (more than TITAN_JSON_MAX_SPANS of them is an error), parsed on the way as tensors of
 * dtype `dt` (up to max_elems elements) when they are numeric, else checked as JSON without a DOM;
 * everything else is copied into `rest` for a DOM parser. Checks the structure, string syntax, nesting
 * depth (<= TITAN_JSON_MAX_DEPTH) and the values a DOM would hold (<= TITAN_JSON_MAX_VALUES); UTF-8 and
 * duplicate keys of `rest` are left to its DOM parser. Memory follows what is parsed, never the header's
 * length: `rest` takes at most twice its text, a tensor twice its data (three times while it grows).
 * Returns 0, -EINVAL with a message in err, or -ENOMEM. On 0 the caller releases `out`
 * with titan_json_split_release. */
int titan_json_split_object(const char *text, size_t len, titan_dtype dt, size_t max_elems, titan_json_split *out,
                            char *err, size_t errcap);
/* Finds top-level member `key` of the JSON object text without parsing the rest, reading at
 * most `max_scan` bytes (members that start later are not seen). Returns 0 and the raw
 * value text in *val and *val_len (borrowed), -ENOENT, or -EINVAL for malformed input. */
int titan_json_find_member(const char *text, size_t len, const char *key, size_t max_scan, const char **val,
                           size_t *val_len);

/* Frees `rest` and any tensor data not taken; takes a zeroed split. */
void titan_json_split_release(titan_json_split *s);

/* Parses a numeric nested array (a rectangular tensor of rank <= TITAN_MAX_RANK) of
 * JSON numbers into a new 64-byte-aligned buffer of dtype `dt`, sized by the elements it holds (grown
 * by doubling: at most twice them). `name` labels errors.
 * Returns 0 and fills *data (free() it), shape, *rank; -EINVAL for ragged, empty,
 * non-numeric or malformed arrays (message in err); -E2BIG when it has more than
 * max_elems elements; -ENOMEM. */
int titan_json_parse_tensor(const char *text, size_t len, titan_dtype dt, size_t max_elems,
                            const char *name, void **data, int64_t shape[TITAN_MAX_RANK], int *rank,
                            char *err, size_t errcap);

#endif
