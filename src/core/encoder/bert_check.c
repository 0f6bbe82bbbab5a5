/* bert_check.c - the checks every forward pass makes of its model and inputs (bert.h's titan_bert_check), one copy
 * for the CPU (bert_cpu.c) and the CUDA module (backends/cuda_bert.c), which links this file alone: no dependency
 * beyond libc, so that the module stays free of the rest of the core. */
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>

#include "bert.h"

int titan_bert_check(const titan_bert *m, const titan_bert_input *in, size_t n, const float *out, titan_error *err)
{
    const titan_bert_config *c = &m->cfg;
    if (c->hidden < 1 || c->heads < 1 || c->hidden % c->heads || c->layers < 0 || c->intermediate < 1 ||
        c->max_positions < 1 || c->type_vocab < 1 || c->vocab < 1 || c->num_labels < 0 ||
        (size_t)c->hidden * 3 > INT_MAX)
        return titan_fail(err, "internal", "the model's configuration is inconsistent (hidden %d, heads %d)", c->hidden,
                      c->heads);
    if (c->num_labels > 0 && (!m->pool_w || !m->pool_b || !m->cls_w || !m->cls_b))
        return titan_fail(err, "internal", "the cross-encoder has no pooler or classifier weights");
    if (n == 0 || !in) return titan_fail(err, "bad_request", "no inputs: give at least one tokenized text");
    if (!out) return titan_fail(err, "internal", "no output buffer");
    for (size_t i = 0; i < n; i++) {
        const titan_bert_input *x = &in[i];
        if (x->len == 0)
            return titan_fail(err, "bad_request", "input %zu is empty: each input needs at least one token", i);
        if (x->len > (size_t)c->max_positions)
            return titan_fail(err, "bad_request", "input %zu has %zu tokens, over the model's %d positions: truncate it",
                          i, x->len, c->max_positions);
        if (!x->ids) return titan_fail(err, "bad_request", "input %zu has no token ids", i);
        for (size_t p = 0; p < x->len; p++) {
            if (x->ids[p] < 0 || x->ids[p] >= c->vocab)
                return titan_fail(err, "bad_request",
                              "input %zu: token id %" PRId32 " at position %zu is outside the vocabulary (0..%d)", i,
                              x->ids[p], p, c->vocab - 1);
            if (x->type_ids && (x->type_ids[p] < 0 || x->type_ids[p] >= c->type_vocab))
                return titan_fail(err, "bad_request",
                              "input %zu: token type id %" PRId32 " at position %zu is outside 0..%d "
                              "(the model's type_vocab_size is %d)",
                              i, x->type_ids[p], p, c->type_vocab - 1, c->type_vocab);
        }
    }
    return 0;
}
