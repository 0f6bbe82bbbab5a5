/* setup_text.h - a growable text buffer for the file edits and diffs of `titan host setup`. */
#ifndef TITAN_HOST_SETUP_TEXT_H
#define TITAN_HOST_SETUP_TEXT_H

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Text being built; `failed` is set (and kept) when an allocation fails, so callers check once at the end. */
typedef struct {
    char *p;
    size_t n, cap;
    bool failed;
} titan_text;

/* Appends `len` bytes of `s`; on allocation failure sets t->failed and keeps what was there. */
static inline void titan_text_put(titan_text *t, const char *s, size_t len)
{
    if (t->failed) return;
    if (t->n + len + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->n + len + 1)
            cap *= 2;
        char *np = realloc(t->p, cap);
        if (!np) {
            t->failed = true;
            return;
        }
        t->p = np;
        t->cap = cap;
    }
    memcpy(t->p + t->n, s, len);
    t->n += len;
    t->p[t->n] = '\0';
}

static inline void titan_text_puts(titan_text *t, const char *s)
{
    titan_text_put(t, s, strlen(s));
}

/* Hands the text to the caller as *out (never NULL on success: "" when empty). Returns 0, or -ENOMEM after
 * freeing it. */
static inline int titan_text_finish(titan_text *t, char **out)
{
    if (!t->failed && !t->p) titan_text_put(t, "", 0);
    if (t->failed) {
        free(t->p);
        *t = (titan_text){0};
        return -ENOMEM;
    }
    *out = t->p;
    *t = (titan_text){0};
    return 0;
}

#endif
