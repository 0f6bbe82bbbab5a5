/* setup_edit.c - configuration edits of `titan host setup` (see setup_edit.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "setup_edit.h"
#include "setup_text.h"

/* A value in the text: in[s..e), inside `quote` ('(', '"', '\'', or 0 for a bare word). */
typedef struct {
    size_t s, e;
    char quote;
} s_value;

static bool s_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Finds the next word of in[*pos..end) into [*ws, *we) and moves *pos past it. With `comments`, a '#' that
 * starts a word starts a comment up to the end of its line (shell arrays). Returns false when there is none.
 */
static bool s_next_word(const char *in, size_t *pos, size_t end, bool comments, size_t *ws, size_t *we)
{
    size_t p = *pos;
    for (;;) {
        while (p < end && s_blank(in[p]))
            p++;
        if (p >= end) {
            *pos = end;
            return false;
        }
        if (comments && in[p] == '#') {
            while (p < end && in[p] != '\n')
                p++;
            continue;
        }
        break;
    }
    *ws = p;
    while (p < end && !s_blank(in[p]))
        p++;
    *we = p;
    *pos = p;
    return true;
}

/* Finds the last line "[blanks]NAME=VALUE" of `in` (not a comment) and the extent of its value. A value in
 * parentheses or quotes may span lines. Returns 1 and *v, 0 when there is none, -EINVAL when the last one has
 * no closing parenthesis or quote. */
static int s_find_assign(const char *in, const char *name, s_value *v)
{
    size_t len = strlen(in), nl = strlen(name);
    size_t found = (size_t)-1;
    for (size_t line = 0; line < len;) {
        size_t p = line;
        while (p < len && (in[p] == ' ' || in[p] == '\t'))
            p++;
        if (len - p > nl && strncmp(in + p, name, nl) == 0 && in[p + nl] == '=') found = p + nl + 1;
        const char *next = memchr(in + line, '\n', len - line);
        line = next ? (size_t)(next - in) + 1 : len;
    }
    if (found == (size_t)-1) return 0;
    size_t p = found;
    char open = in[p], close = open == '(' ? ')' : open;
    if (open == '(' || open == '"' || open == '\'') {
        size_t q = p + 1;
        while (q < len && in[q] != close) {
            if (open == '"' && in[q] == '\\' && q + 1 < len)
                q++;
            else if (open == '(' && in[q] == '#' && (q == p + 1 || s_blank(in[q - 1])))
                while (q + 1 < len && in[q + 1] != '\n')
                    q++;
            q++;
        }
        if (q >= len) return -EINVAL;
        *v = (s_value){p + 1, q, open};
        return 1;
    }
    size_t q = p;
    while (q < len && !s_blank(in[q]) && in[q] != '#' && in[q] != ';')
        q++;
    *v = (s_value){p, q, 0};
    return 1;
}

/* Compares module names with '-' and '_' alike. */
static bool s_same_module(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    if (alen != blen) return false;
    for (size_t i = 0; i < alen; i++) {
        char x = a[i] == '-' ? '_' : a[i], y = b[i] == '-' ? '_' : b[i];
        if (x != y) return false;
    }
    return true;
}

/* Marks in have[] the modules of v[] that are words of in[s..e). */
static void s_mark_modules(const char *in, size_t s, size_t e, bool comments, const char *const *v, size_t n,
                           bool *have)
{
    size_t pos = s, ws, we;
    while (s_next_word(in, &pos, e, comments, &ws, &we)) {
        /* A word may carry its own quotes: MODULES=("btrfs"). */
        if (we - ws >= 2 && (in[ws] == '"' || in[ws] == '\'') && in[we - 1] == in[ws]) ws++, we--;
        for (size_t i = 0; i < n; i++)
            if (s_same_module(in + ws, we - ws, v[i])) have[i] = true;
    }
}

/* Appends the names of v[] not in have[], separated by `sep`. Returns how many. */
static size_t s_put_missing(titan_text *t, const char *const *v, size_t n, const bool *have, const char *sep)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (have[i]) continue;
        if (k++) titan_text_puts(t, sep);
        titan_text_puts(t, v[i]);
    }
    return k;
}

static size_t s_count_missing(const bool *have, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += !have[i];
    return k;
}

/* Ends `t` with a newline unless it is empty. */
static void s_end_line(titan_text *t)
{
    if (t->n && t->p[t->n - 1] != '\n') titan_text_puts(t, "\n");
}

static int s_copy(const char *in, char **out)
{
    return (*out = strdup(in)) ? 0 : -ENOMEM;
}

int titan_setup_edit_mkinitcpio(const char *in, const char *const *v, size_t n, char **out)
{
    bool have[TITAN_SETUP_MAX_NAMES] = {0};
    if (n > TITAN_SETUP_MAX_NAMES) return -EINVAL;
    s_value val;
    int found = s_find_assign(in, "MODULES", &val);
    if (found < 0) return found;
    if (found) s_mark_modules(in, val.s, val.e, val.quote == '(', v, n, have);
    if (s_count_missing(have, n) == 0) return s_copy(in, out);
    titan_text t = {0};
    if (!found) {
        titan_text_puts(&t, in);
        s_end_line(&t);
        titan_text_puts(&t, "MODULES=(");
        s_put_missing(&t, v, n, have, " ");
        titan_text_puts(&t, ")\n");
        return titan_text_finish(&t, out);
    }
    size_t pos = val.s, ws, we;
    bool any = s_next_word(in, &pos, val.e, val.quote == '(', &ws, &we);
    if (val.quote == 0) {
        /* MODULES=word: a bare word, rewritten as the array mkinitcpio documents. */
        titan_text_put(&t, in, val.s);
        titan_text_puts(&t, "(");
        s_put_missing(&t, v, n, have, " ");
        if (any) titan_text_puts(&t, " ");
        titan_text_put(&t, in + val.s, val.e - val.s);
        titan_text_puts(&t, ")");
        titan_text_puts(&t, in + val.e);
        return titan_text_finish(&t, out);
    }
    size_t at = any ? ws : val.s;
    titan_text_put(&t, in, at);
    s_put_missing(&t, v, n, have, " ");
    if (any) titan_text_puts(&t, " ");
    titan_text_puts(&t, in + at);
    return titan_text_finish(&t, out);
}

bool titan_setup_mkinitcpio_has_hook(const char *in, const char *hook)
{
    s_value val;
    if (s_find_assign(in, "HOOKS", &val) <= 0) return false;
    size_t pos = val.s, ws, we;
    while (s_next_word(in, &pos, val.e, val.quote == '(', &ws, &we))
        if (we - ws == strlen(hook) && strncmp(in + ws, hook, we - ws) == 0) return true;
    return false;
}

int titan_setup_edit_booster(const char *in, const char *const *v, size_t n, char **out)
{
    static const char key[] = "modules_force_load:";
    bool have[TITAN_SETUP_MAX_NAMES] = {0};
    if (n > TITAN_SETUP_MAX_NAMES) return -EINVAL;
    size_t len = strlen(in), klen = sizeof(key) - 1;
    size_t found = (size_t)-1;
    for (size_t line = 0; line < len;) {
        if (len - line >= klen && strncmp(in + line, key, klen) == 0) found = line + klen;
        const char *next = memchr(in + line, '\n', len - line);
        line = next ? (size_t)(next - in) + 1 : len;
    }
    titan_text t = {0};
    if (found == (size_t)-1) {
        titan_text_puts(&t, in);
        s_end_line(&t);
        titan_text_puts(&t, key);
        titan_text_puts(&t, " ");
        s_put_missing(&t, v, n, have, ",");
        titan_text_puts(&t, "\n");
        return titan_text_finish(&t, out);
    }
    /* The value: to the end of the line or a " #" comment, or inside its quotes. */
    size_t s = found;
    while (s < len && (in[s] == ' ' || in[s] == '\t'))
        s++;
    size_t e = s;
    if (s < len && (in[s] == '"' || in[s] == '\'')) {
        const char *q = memchr(in + s + 1, in[s], len - s - 1);
        const char *nl = memchr(in + s + 1, '\n', len - s - 1);
        if (!q || (nl && nl < q)) return -EINVAL;
        s++;
        e = (size_t)(q - in);
    } else {
        while (e < len && in[e] != '\n' && !(in[e] == '#' && e > found && s_blank(in[e - 1])))
            e++;
        while (e > s && s_blank(in[e - 1]))
            e--;
    }
    size_t first = (size_t)-1;
    for (size_t p = s; p < e;) {
        while (p < e && (in[p] == ',' || in[p] == ' ' || in[p] == '\t'))
            p++;
        size_t ws = p;
        while (p < e && in[p] != ',')
            p++;
        size_t we = p;
        while (we > ws && (in[we - 1] == ' ' || in[we - 1] == '\t'))
            we--;
        if (we == ws) continue;
        if (first == (size_t)-1) first = ws;
        for (size_t i = 0; i < n; i++)
            if (s_same_module(in + ws, we - ws, v[i])) have[i] = true;
    }
    if (s_count_missing(have, n) == 0) return s_copy(in, out);
    size_t at = first != (size_t)-1 ? first : s;
    titan_text_put(&t, in, at);
    if (at == found) titan_text_puts(&t, " "); /* "modules_force_load:" with nothing after it */
    s_put_missing(&t, v, n, have, ",");
    if (first != (size_t)-1) titan_text_puts(&t, ",");
    titan_text_puts(&t, in + at);
    return titan_text_finish(&t, out);
}

int titan_setup_edit_module_lines(const char *in, const char *const *v, size_t n, char **out)
{
    bool have[TITAN_SETUP_MAX_NAMES] = {0};
    if (n > TITAN_SETUP_MAX_NAMES) return -EINVAL;
    size_t len = strlen(in);
    for (size_t line = 0; line < len;) {
        const char *next = memchr(in + line, '\n', len - line);
        size_t end = next ? (size_t)(next - in) : len, pos = line, ws, we;
        if (s_next_word(in, &pos, end, true, &ws, &we))
            for (size_t i = 0; i < n; i++)
                if (s_same_module(in + ws, we - ws, v[i])) have[i] = true;
        line = next ? end + 1 : len;
    }
    if (s_count_missing(have, n) == 0) return s_copy(in, out);
    titan_text t = {0};
    titan_text_puts(&t, in);
    s_end_line(&t);
    s_put_missing(&t, v, n, have, "\n");
    titan_text_puts(&t, "\n");
    return titan_text_finish(&t, out);
}

/* --- kernel parameters --- */

/* The length of the key of `word` (up to '=' or its end). */
static size_t s_key_len(const char *word, size_t len)
{
    const char *eq = memchr(word, '=', len);
    return eq ? (size_t)(eq - word) : len;
}

/* 1 when word[0..len) has the key of parameter `p` and p's value among its comma-separated values (or is p,
 * for a parameter without a value); -1 when it has the key and not the value; 0 for another key. */
static int s_param_match(const char *word, size_t len, const char *p)
{
    size_t kw = s_key_len(word, len), kp = s_key_len(p, strlen(p));
    if (kw != kp || strncmp(word, p, kw) != 0) return 0;
    if (p[kp] == '\0') return kw == len ? 1 : -1;
    const char *want = p + kp + 1;
    size_t wl = strlen(want);
    for (size_t s = kw + 1; s <= len;) {
        const char *comma = memchr(word + s, ',', len - s);
        size_t e = comma ? (size_t)(comma - word) : len;
        if (e - s == wl && strncmp(word + s, want, wl) == 0) return 1;
        s = e + 1;
    }
    return -1;
}

/* Marks in have[] the parameters whose key some word of in[s..e) has (a word with another value is replaced,
 * so it counts as present too). */
static void s_mark_params(const char *in, size_t s, size_t e, const char *const *v, size_t n, bool *have)
{
    size_t pos = s, ws, we;
    while (s_next_word(in, &pos, e, false, &ws, &we))
        for (size_t i = 0; i < n; i++)
            if (s_param_match(in + ws, we - ws, v[i]) != 0) have[i] = true;
}

/* Appends in[s..e) with each word that has a parameter's key but not its value replaced by the parameter;
 * with `append`, the parameters not in have[] follow the last word (or open the value when it has none). */
static void s_put_params(titan_text *t, const char *in, size_t s, size_t e, const char *const *v, size_t n,
                         const bool *have, bool append)
{
    size_t pos = s, ws, we, copied = s;
    bool any = false;
    size_t last = s;
    while (s_next_word(in, &pos, e, false, &ws, &we)) {
        any = true;
        titan_text_put(t, in + copied, ws - copied);
        const char *repl = NULL;
        for (size_t i = 0; i < n && !repl; i++)
            if (s_param_match(in + ws, we - ws, v[i]) < 0) repl = v[i];
        if (repl)
            titan_text_puts(t, repl);
        else
            titan_text_put(t, in + ws, we - ws);
        copied = last = we;
    }
    if (append && s_count_missing(have, n)) {
        titan_text_put(t, in + copied, last - copied);
        copied = last;
        if (any) titan_text_puts(t, " ");
        s_put_missing(t, v, n, have, " ");
    }
    titan_text_put(t, in + copied, e - copied);
}

/* True when some word of in[s..e) needs replacing. */
static bool s_has_conflict(const char *in, size_t s, size_t e, const char *const *v, size_t n)
{
    size_t pos = s, ws, we;
    while (s_next_word(in, &pos, e, false, &ws, &we))
        for (size_t i = 0; i < n; i++)
            if (s_param_match(in + ws, we - ws, v[i]) < 0) return true;
    return false;
}

int titan_setup_edit_grub(const char *in, const char *const *v, size_t n, char **out)
{
    bool have[TITAN_SETUP_MAX_NAMES] = {0};
    if (n > TITAN_SETUP_MAX_NAMES) return -EINVAL;
    s_value lin, def;
    int has_lin = s_find_assign(in, "GRUB_CMDLINE_LINUX", &lin);
    int has_def = s_find_assign(in, "GRUB_CMDLINE_LINUX_DEFAULT", &def);
    if (has_lin < 0) return has_lin;
    if (has_def < 0) return has_def;
    if (has_lin) s_mark_params(in, lin.s, lin.e, v, n, have);
    if (has_def) s_mark_params(in, def.s, def.e, v, n, have);
    size_t missing = s_count_missing(have, n);
    bool conflict = (has_lin && s_has_conflict(in, lin.s, lin.e, v, n)) ||
                    (has_def && s_has_conflict(in, def.s, def.e, v, n));
    if (!missing && !conflict) return s_copy(in, out);
    titan_text t = {0};
    /* The two values, in the order they appear in the file. */
    s_value *parts[2] = {has_lin ? &lin : NULL, has_def ? &def : NULL};
    if (parts[0] && parts[1] && parts[1]->s < parts[0]->s) parts[0] = &def, parts[1] = &lin;
    size_t copied = 0;
    for (int k = 0; k < 2; k++) {
        s_value *p = parts[k];
        if (!p) continue;
        bool is_def = p == &def;
        titan_text_put(&t, in + copied, p->s - copied);
        if (is_def && p->quote == 0 && missing) {
            /* A bare word cannot take more words: quote it. */
            titan_text_puts(&t, "\"");
            s_put_params(&t, in, p->s, p->e, v, n, have, true);
            titan_text_puts(&t, "\"");
        } else {
            s_put_params(&t, in, p->s, p->e, v, n, have, is_def);
        }
        copied = p->e;
    }
    titan_text_puts(&t, in + copied);
    if (!has_def && missing) {
        s_end_line(&t);
        titan_text_puts(&t, "GRUB_CMDLINE_LINUX_DEFAULT=\"");
        s_put_missing(&t, v, n, have, " ");
        titan_text_puts(&t, "\"\n");
    }
    return titan_text_finish(&t, out);
}

int titan_setup_edit_kernel_cmdline(const char *in, const char *const *v, size_t n, char **out)
{
    bool have[TITAN_SETUP_MAX_NAMES] = {0};
    if (n > TITAN_SETUP_MAX_NAMES) return -EINVAL;
    size_t len = strlen(in);
    s_mark_params(in, 0, len, v, n, have);
    if (!s_count_missing(have, n) && !s_has_conflict(in, 0, len, v, n)) return s_copy(in, out);
    titan_text t = {0};
    s_put_params(&t, in, 0, len, v, n, have, true);
    s_end_line(&t);
    return titan_text_finish(&t, out);
}

/* Finds the `options` lines of a loader entry: the values (the rest of each line) into starts[]/ends[], at
 * most `cap`. Returns how many there are (more than `cap` when they did not fit). */
static size_t s_options_lines(const char *in, size_t *starts, size_t *ends, size_t cap)
{
    size_t len = strlen(in), k = 0;
    for (size_t line = 0; line < len;) {
        const char *next = memchr(in + line, '\n', len - line);
        size_t end = next ? (size_t)(next - in) : len, p = line;
        while (p < end && (in[p] == ' ' || in[p] == '\t'))
            p++;
        if (end - p >= 7 && strncmp(in + p, "options", 7) == 0 && (p + 7 == end || s_blank(in[p + 7]))) {
            p += 7;
            while (p < end && (in[p] == ' ' || in[p] == '\t'))
                p++;
            if (k < cap) {
                starts[k] = p;
                ends[k] = end;
            }
            k++;
        }
        line = next ? end + 1 : len;
    }
    return k;
}

int titan_setup_edit_loader_entry(const char *in, const char *const *v, size_t n, char **out)
{
    enum { S_MAX_OPTIONS = 64 };
    size_t starts[S_MAX_OPTIONS], ends[S_MAX_OPTIONS];
    bool have[TITAN_SETUP_MAX_NAMES] = {0};
    if (n > TITAN_SETUP_MAX_NAMES) return -EINVAL;
    size_t k = s_options_lines(in, starts, ends, S_MAX_OPTIONS);
    if (k > S_MAX_OPTIONS) return -EINVAL;
    bool conflict = false;
    for (size_t i = 0; i < k; i++) {
        s_mark_params(in, starts[i], ends[i], v, n, have);
        conflict = conflict || s_has_conflict(in, starts[i], ends[i], v, n);
    }
    size_t missing = s_count_missing(have, n);
    if (!missing && !conflict) return s_copy(in, out);
    titan_text t = {0};
    size_t copied = 0;
    for (size_t i = 0; i < k; i++) {
        titan_text_put(&t, in + copied, starts[i] - copied);
        bool last = i + 1 == k;
        /* "options" alone on its line: the parameters need a blank after the keyword. */
        if (last && missing && starts[i] == ends[i] && !s_blank(in[starts[i] - 1])) titan_text_puts(&t, " ");
        s_put_params(&t, in, starts[i], ends[i], v, n, have, last);
        copied = ends[i];
    }
    titan_text_puts(&t, in + copied);
    if (k == 0) {
        s_end_line(&t);
        titan_text_puts(&t, "options ");
        s_put_missing(&t, v, n, have, " ");
        titan_text_puts(&t, "\n");
    }
    return titan_text_finish(&t, out);
}
