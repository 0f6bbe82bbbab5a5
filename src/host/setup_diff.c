/* setup_diff.c - unified diffs of small text files: longest common subsequence on lines (see setup_diff.h).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "setup_diff.h"
#include "setup_text.h"

#define S_CONTEXT 3
/* The LCS table of the part between the common head and tail is at most this many cells (16 MB); past that
 * the diff replaces that whole part, which is still correct, only longer. Configuration edits change a few
 * lines, so the part is tiny in practice. */
#define S_MAX_CELLS (4u << 20)

typedef struct {
    const char *s;
    size_t len; /* with the '\n', when there is one */
} s_line;

typedef struct {
    char op;     /* ' ', '-' or '+' */
    size_t line; /* index into a (' ', '-') or b ('+') */
} s_edit;

/* Splits `text` into lines (*lines, *n; the caller frees *lines). Returns 0 or -ENOMEM. */
static int s_split(const char *text, s_line **lines, size_t *n)
{
    size_t cnt = 0, len = text ? strlen(text) : 0;
    for (size_t i = 0; i < len; i++)
        if (text[i] == '\n') cnt++;
    if (len && text[len - 1] != '\n') cnt++;
    s_line *v = malloc((cnt ? cnt : 1) * sizeof(*v));
    if (!v) return -ENOMEM;
    size_t k = 0;
    for (const char *p = text, *end = text + len; p < end; k++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t l = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        v[k] = (s_line){p, l};
        p += l;
    }
    *lines = v;
    *n = cnt;
    return 0;
}

static bool s_same(const s_line *x, const s_line *y)
{
    return x->len == y->len && memcmp(x->s, y->s, x->len) == 0;
}

/* Appends the edits that turn a[0..m) into b[0..n) to e (*ne advanced): LCS by dynamic programming, or
 * all deletions then all insertions when the table would be too large. Returns 0 or -ENOMEM. */
static int s_lcs(const s_line *a, size_t a0, size_t m, const s_line *b, size_t b0, size_t n, s_edit *e,
                 size_t *ne)
{
    if (m && n && (uint64_t)(m + 1) * (n + 1) <= S_MAX_CELLS) {
        /* t[i][j]: LCS length of a[i..m) and b[j..n). */
        uint32_t *t = calloc((m + 1) * (n + 1), sizeof(*t));
        if (!t) return -ENOMEM;
#define T(i, j) t[(i) * (n + 1) + (j)]
        for (size_t i = m; i-- > 0;)
            for (size_t j = n; j-- > 0;)
                T(i, j) = s_same(&a[a0 + i], &b[b0 + j]) ? T(i + 1, j + 1) + 1
                          : T(i + 1, j) >= T(i, j + 1)   ? T(i + 1, j)
                                                         : T(i, j + 1);
        size_t i = 0, j = 0;
        while (i < m || j < n) {
            if (i < m && j < n && s_same(&a[a0 + i], &b[b0 + j])) {
                e[(*ne)++] = (s_edit){' ', a0 + i++};
                j++;
            } else if (j == n || (i < m && T(i + 1, j) >= T(i, j + 1))) {
                e[(*ne)++] = (s_edit){'-', a0 + i++};
            } else {
                e[(*ne)++] = (s_edit){'+', b0 + j++};
            }
        }
#undef T
        free(t);
        return 0;
    }
    for (size_t i = 0; i < m; i++)
        e[(*ne)++] = (s_edit){'-', a0 + i};
    for (size_t j = 0; j < n; j++)
        e[(*ne)++] = (s_edit){'+', b0 + j};
    return 0;
}

/* Writes "start,count" (",count" left out when it is 1, as GNU diff does). `before` counts the lines of that
 * file before the hunk; an empty range names the line before it. */
static void s_range(titan_text *t, size_t before, size_t count)
{
    char buf[64];
    if (count == 1)
        snprintf(buf, sizeof(buf), "%zu", before + 1);
    else
        snprintf(buf, sizeof(buf), "%zu,%zu", count ? before + 1 : before, count);
    titan_text_puts(t, buf);
}

static void s_put_line(titan_text *t, char op, const s_line *l)
{
    titan_text_put(t, &op, 1);
    titan_text_put(t, l->s, l->len);
    if (l->len == 0 || l->s[l->len - 1] != '\n') titan_text_puts(t, "\n\\ No newline at end of file\n");
}

int titan_setup_diff(const char *name, const char *a, const char *b, char **out)
{
    s_line *la = NULL, *lb = NULL;
    s_edit *e = NULL;
    size_t na = 0, nb = 0, ne = 0;
    titan_text t = {0};
    int rc = s_split(a, &la, &na);
    if (!rc) rc = s_split(b, &lb, &nb);
    if (rc) goto out;
    if (!(e = malloc((na + nb + 1) * sizeof(*e)))) {
        rc = -ENOMEM;
        goto out;
    }
    size_t head = 0, tail = 0;
    while (head < na && head < nb && s_same(&la[head], &lb[head]))
        head++;
    while (tail < na - head && tail < nb - head && s_same(&la[na - 1 - tail], &lb[nb - 1 - tail]))
        tail++;
    if (head == na && head == nb) goto out; /* equal */
    for (size_t i = 0; i < head; i++)
        e[ne++] = (s_edit){' ', i};
    if ((rc = s_lcs(la, head, na - head - tail, lb, head, nb - head - tail, e, &ne))) goto out;
    for (size_t i = 0; i < tail; i++)
        e[ne++] = (s_edit){' ', na - tail + i};

    titan_text_puts(&t, a ? "--- a/" : "--- /dev/null");
    if (a) titan_text_puts(&t, name);
    titan_text_puts(&t, "\n+++ b/");
    titan_text_puts(&t, name);
    titan_text_puts(&t, "\n");
    /* a_before/b_before: lines of a and b before edit k. */
    size_t k = 0, a_before = 0, b_before = 0;
    while (k < ne) {
        size_t c = k;
        while (c < ne && e[c].op == ' ')
            c++;
        if (c == ne) break;
        size_t start = c - k > S_CONTEXT ? c - S_CONTEXT : k;
        for (size_t i = k; i < start; i++)
            a_before++, b_before++;
        /* The hunk runs to S_CONTEXT lines past its last change, swallowing changes that close. */
        size_t end = c;
        for (;;) {
            while (end < ne && e[end].op != ' ')
                end++;
            size_t next = end;
            while (next < ne && e[next].op == ' ')
                next++;
            if (next < ne && next - end <= 2 * S_CONTEXT)
                end = next;
            else
                break;
        }
        size_t stop = ne - end > S_CONTEXT ? end + S_CONTEXT : ne;
        size_t ca = 0, cb = 0;
        for (size_t i = start; i < stop; i++) {
            ca += e[i].op != '+';
            cb += e[i].op != '-';
        }
        titan_text_puts(&t, "@@ -");
        s_range(&t, a_before, ca);
        titan_text_puts(&t, " +");
        s_range(&t, b_before, cb);
        titan_text_puts(&t, " @@\n");
        for (size_t i = start; i < stop; i++)
            s_put_line(&t, e[i].op, e[i].op == '+' ? &lb[e[i].line] : &la[e[i].line]);
        a_before += ca;
        b_before += cb;
        k = stop;
    }
out:
    free(la);
    free(lb);
    free(e);
    if (rc) {
        free(t.p);
        return rc;
    }
    return titan_text_finish(&t, out);
}
