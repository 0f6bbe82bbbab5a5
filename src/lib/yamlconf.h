/* yamlconf.h - what the YAML config readers share (internal): reading the file, the libyaml event pre-pass
 * that rejects aliases, extra documents, deep nesting and sheer size, loading the document, and messages of
 * the form "FILE:LINE: FIELD: ...". The field-by-field checks stay with each reader. */
#ifndef TITAN_YAMLCONF_H
#define TITAN_YAMLCONF_H

#include <stdbool.h>
#include <stddef.h>

#include <yaml.h>

/* One load: where its messages go, and the document being checked. */
typedef struct {
    const char *name; /* the file, in messages */
    char *err;
    size_t errcap;
    yaml_document_t *doc;
} yamlconf;

/* What sets one kind of file apart, in limits and in words. */
typedef struct {
    size_t max_bytes;
    int max_depth;
    int max_values;
    const char *what;    /* "larger than N bytes; this is not WHAT" */
    const char *holder;  /* "a second YAML document; HOLDER holds one: ..." */
    const char *path_of; /* "not a regular file; give the path of PATH_OF" */
    const char *needs;   /* "the file is empty; it needs NEEDS" */
    bool name_alias;     /* name the alias in its message (*anchor) rather than writing *name */
} yamlconf_rules;

/* A scalar's text; libyaml keeps the length because "\0" escapes may put NULs inside. */
typedef struct {
    const char *s;
    size_t len;
} yamlconf_text;

/* Writes "NAME:LINE: " (or "NAME: " when line <= 0) and the message into y->err; returns -EINVAL. */
__attribute__((format(printf, 3, 4))) int yamlconf_fail(yamlconf *y, int line, const char *fmt, ...);

/* 1-based line numbers, capped at INT_MAX. */
int yamlconf_mark_line(const yaml_mark_t *m);
int yamlconf_line(const yaml_node_t *n);

yamlconf_text yamlconf_text_of(const yaml_node_t *n);
bool yamlconf_is(yamlconf_text t, const char *word);

/* 1..maxlen characters of [A-Za-z0-9_.-]. */
bool yamlconf_name_ok(yamlconf_text t, size_t maxlen);

/* A whole decimal number in [lo, hi]: no fraction, exponent, junk, leading zeros (YAML 1.1 would read 010
 * as octal) or words, and a leading + or - only where `sign` allows it. */
bool yamlconf_parse_long(yamlconf_text t, bool sign, long lo, long hi, long *out);

/* Writes a printable copy of s[0..len) into out: '"' and '\\' escaped, other bytes that are not printable
 * ASCII as \xNN, cut with "..." after 48 characters or where cap ends. */
void yamlconf_escape(const char *s, size_t len, char *out, size_t cap);

/* Reads a regular file of at most `max` bytes into a NUL-terminated heap buffer. -EISDIR for a directory,
 * -EINVAL for another kind of file, -EFBIG, -ENOMEM or the failing call's -errno. */
int yamlconf_read_file(const char *path, size_t max, char **out, size_t *outlen);

/* yamlconf_read_file of y->name, saying in y->err what went wrong. */
int yamlconf_read(yamlconf *y, const yamlconf_rules *r, char **out, size_t *outlen);

/* The pre-pass, then the document: on success *doc is loaded (y->doc points at it, the caller deletes it)
 * and *root is its top node. -EINVAL with a message, or -ENOMEM (no message). */
int yamlconf_load(yamlconf *y, const yamlconf_rules *r, const char *text, size_t len, yaml_document_t *doc,
                  yaml_node_t **root);

#endif
