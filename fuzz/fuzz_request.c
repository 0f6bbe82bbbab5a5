/* fuzz_request.c - libFuzzer target: the request codec (JSON split, tensor parsing, numbers) on any bytes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jsonscan.h"
#include "numfmt.h"
#include "titan/tensor.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    char err[256];
    titan_json_split sp;
    if (titan_json_split_object(text, size, TITAN_DTYPE_FLOAT32, 1 << 20, &sp, err, sizeof(err)) == 0) {
        json_error_t jerr;
        json_t *hdr = json_loadb(sp.rest, sp.rest_len, JSON_REJECT_DUPLICATES, &jerr);
        json_decref(hdr);
        for (size_t i = 0; i < sp.nspans; i++) {
            void *t = NULL;
            int64_t shape[TITAN_MAX_RANK];
            int rank;
            if (titan_json_parse_tensor(sp.spans[i].val, sp.spans[i].val_len, TITAN_DTYPE_FLOAT64, 1 << 20, "a", &t,
                                        shape, &rank, err, sizeof(err)) == 0) {
                size_t n;
                if (titan_shape_elems(TITAN_DTYPE_FLOAT64, shape, rank, &n) != 0) abort();
                char buf[64];
                for (size_t k = 0; k < n && k < 64; k++) {
                    /* formatting then parsing must give the same value back */
                    double v = ((double *)t)[k];
                    int len = titan_format_float64(v, buf, sizeof(buf));
                    double back;
                    if (len <= 0 || titan_parse_f64(buf, buf + len, &back) != (size_t)len) abort();
                    if (back != v && !(back != back && v != v)) abort();
                    float f = (float)v, fb;
                    len = titan_format_float32(f, buf, sizeof(buf));
                    if (len <= 0 || titan_parse_f32(buf, buf + len, &fb) != (size_t)len) abort();
                    if (fb != f && !(fb != fb && f != f)) abort();
                }
                free(t);
            }
        }
        titan_json_split_release(&sp);
    }
    /* the array parser alone, from the first '[' */
    const char *b = memchr(text, '[', size);
    if (b) {
        void *t = NULL;
        int64_t shape[TITAN_MAX_RANK];
        int rank;
        if (titan_json_parse_tensor(b, size - (size_t)(b - text), TITAN_DTYPE_FLOAT32, 1 << 20, "a", &t, shape, &rank,
                                    err, sizeof(err)) == 0)
            free(t);
    }
    return 0;
}
