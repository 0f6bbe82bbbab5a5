/* yamlconf.c - what the YAML config readers share (see yamlconf.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "yamlconf.h"

int yamlconf_fail(yamlconf *y, int line, const char *fmt, ...)
{
    if (!y->err || y->errcap == 0) return -EINVAL;
    int n = line > 0 ? snprintf(y->err, y->errcap, "%s:%d: ", y->name, line)
                     : snprintf(y->err, y->errcap, "%s: ", y->name);
    if (n >= 0 && (size_t)n < y->errcap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(y->err + n, y->errcap - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

int yamlconf_mark_line(const yaml_mark_t *m)
{
    return m->line >= INT_MAX - 1 ? INT_MAX : (int)m->line + 1;
}

int yamlconf_line(const yaml_node_t *n)
{
    return yamlconf_mark_line(&n->start_mark);
}

yamlconf_text yamlconf_text_of(const yaml_node_t *n)
{
    yamlconf_text t = {(const char *)n->data.scalar.value, n->data.scalar.length};
    return t;
}

bool yamlconf_is(yamlconf_text t, const char *word)
{
    return t.len == strlen(word) && memcmp(t.s, word, t.len) == 0;
}

bool yamlconf_name_ok(yamlconf_text t, size_t maxlen)
{
    if (t.len == 0 || t.len > maxlen) return false;
    for (size_t i = 0; i < t.len; i++) {
        char ch = t.s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
              ch == '.' || ch == '-'))
            return false;
    }
    return true;
}

bool yamlconf_parse_long(yamlconf_text t, bool sign, long lo, long hi, long *out)
{
    size_t i = 0;
    bool neg = false;
    if (sign && i < t.len && (t.s[i] == '-' || t.s[i] == '+')) neg = t.s[i++] == '-';
    if (i == t.len || t.len - i > 12) return false;
    if (t.s[i] == '0' && t.len - i > 1) return false;
    long v = 0;
    for (; i < t.len; i++) {
        if (t.s[i] < '0' || t.s[i] > '9') return false;
        v = v * 10 + (t.s[i] - '0');
    }
    if (neg) v = -v;
    if (v < lo || v > hi) return false;
    *out = v;
    return true;
}

void yamlconf_escape(const char *s, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    const size_t limit = 48;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        char piece[8];
        if (i >= limit) {
            snprintf(piece, sizeof piece, "...");
        } else if (ch == '"' || ch == '\\') {
            snprintf(piece, sizeof piece, "\\%c", ch);
        } else if (ch >= 0x20 && ch < 0x7f) {
            snprintf(piece, sizeof piece, "%c", ch);
        } else {
            snprintf(piece, sizeof piece, "\\x%02x", ch);
        }
        size_t pn = strlen(piece);
        if (o + pn + 1 > cap) break;
        memcpy(out + o, piece, pn);
        o += pn;
        if (i >= limit) break;
    }
    if (cap > 0) out[o < cap ? o : cap - 1] = '\0';
}

int yamlconf_read_file(const char *path, size_t max, char **out, size_t *outlen)
{
    int rc = 0;
    char *buf = NULL;
    struct stat st;
    /* O_NONBLOCK: a FIFO must not hang us before fstat says what it is */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return -errno;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = -EISDIR;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = -EINVAL; /* a FIFO or device could block or never end */
        goto out;
    }
    if (st.st_size > (off_t)max) {
        rc = -EFBIG;
        goto out;
    }
    buf = malloc(max + 2);
    if (!buf) {
        rc = -ENOMEM;
        goto out;
    }
    size_t len = 0;
    for (;;) {
        ssize_t got = read(fd, buf + len, max + 1 - len);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            rc = -errno;
            goto out;
        }
        if (got == 0) break;
        len += (size_t)got;
        if (len > max) { /* grew since fstat */
            rc = -EFBIG;
            goto out;
        }
    }
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

int yamlconf_read(yamlconf *y, const yamlconf_rules *r, char **out, size_t *outlen)
{
    int rc = yamlconf_read_file(y->name, r->max_bytes, out, outlen);
    if (rc == -EFBIG)
        yamlconf_fail(y, 0, "larger than %zu bytes; this is not %s", r->max_bytes, r->what);
    else if (rc == -EISDIR || rc == -EINVAL)
        return yamlconf_fail(y, 0, "not a regular file; give the path of %s", r->path_of);
    else if (rc == -ENOMEM)
        yamlconf_fail(y, 0, "out of memory while reading it");
    else if (rc < 0)
        yamlconf_fail(y, 0, "cannot read it (%s); check the path and its permissions", strerror(-rc));
    return rc;
}

static int s_syntax_error(yamlconf *y, const yaml_parser_t *p, const char *text, size_t len)
{
    if (p->error == YAML_MEMORY_ERROR) return -ENOMEM;
    int line;
    if (p->error == YAML_READER_ERROR) { /* the reader gives a byte offset, not a line */
        size_t nl = 0;
        for (size_t i = 0; i < p->problem_offset && i < len; i++)
            nl += text[i] == '\n';
        line = nl >= INT_MAX - 1 ? INT_MAX : (int)nl + 1;
    } else {
        line = yamlconf_mark_line(&p->problem_mark);
    }
    const char *problem = p->problem ? p->problem : "unknown error";
    if (p->context)
        return yamlconf_fail(y, line, "not valid YAML: %s (%s on line %d); fix the syntax", problem,
                             p->context, yamlconf_mark_line(&p->context_mark));
    return yamlconf_fail(y, line, "not valid YAML: %s; fix the syntax", problem);
}

static int s_alias(yamlconf *y, const yamlconf_rules *r, int line, const char *anchor)
{
    if (!r->name_alias)
        return yamlconf_fail(y, line, "YAML aliases (*name) are not supported; write the value out in full");
    char esc[256];
    yamlconf_escape(anchor, strlen(anchor), esc, sizeof esc);
    return yamlconf_fail(y, line, "YAML aliases (*%s) are not supported; write the value out in full", esc);
}

/* One pass over the events for what the document loader would accept silently: aliases, several
 * documents, deep nesting, sheer size. Syntax errors are reported from here. */
static int s_prescan(yamlconf *y, const yamlconf_rules *r, const char *text, size_t len)
{
    yaml_parser_t p;
    yaml_event_t ev;
    int rc = 0, depth = 0, docs = 0, values = 0;
    if (!yaml_parser_initialize(&p)) return -ENOMEM;
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    for (bool done = false; !done && rc == 0;) {
        if (!yaml_parser_parse(&p, &ev)) {
            rc = s_syntax_error(y, &p, text, len);
            break;
        }
        int line = yamlconf_mark_line(&ev.start_mark);
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1)
                rc = yamlconf_fail(y, line,
                                   "a second YAML document; %s holds one: remove this --- and what follows",
                                   r->holder);
            break;
        case YAML_ALIAS_EVENT:
            rc = s_alias(y, r, line, (const char *)ev.data.alias.anchor);
            break;
        case YAML_MAPPING_START_EVENT:
        case YAML_SEQUENCE_START_EVENT:
            if (++depth > r->max_depth)
                rc = yamlconf_fail(y, line, "nested more than %d levels deep; this is not %s", r->max_depth,
                                   r->what);
            /* fall through */
        case YAML_SCALAR_EVENT:
            if (rc == 0 && ++values > r->max_values)
                rc = yamlconf_fail(y, line, "more than %d YAML values; this is not %s", r->max_values,
                                   r->what);
            break;
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT:
            depth--;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    if (rc == 0 && docs == 0) rc = yamlconf_fail(y, 1, "the file is empty; it needs %s", r->needs);
    return rc;
}

int yamlconf_load(yamlconf *y, const yamlconf_rules *r, const char *text, size_t len, yaml_document_t *doc,
                  yaml_node_t **root)
{
    int rc = s_prescan(y, r, text, len);
    if (rc < 0) return rc;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) return -ENOMEM;
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    if (!yaml_parser_load(&p, doc)) {
        rc = s_syntax_error(y, &p, text, len);
        yaml_parser_delete(&p);
        return rc;
    }
    yaml_parser_delete(&p);
    *root = yaml_document_get_root_node(doc);
    if (!*root) {
        yaml_document_delete(doc);
        return yamlconf_fail(y, 1, "the file is empty; it needs %s", r->needs);
    }
    y->doc = doc;
    return 0;
}
