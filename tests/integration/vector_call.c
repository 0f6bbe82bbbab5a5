/* vector_call.c - runs one request through libtitan's titan_client_call, for the conformance vectors.
 *
 * Usage: vector_call ENDPOINT HEADER_FILE [FRAME_FILE...]
 * Sends the header file's bytes verbatim as the header and each frame file as a binary frame, then
 * prints one JSON object on stdout: {"rc":0,"header":"<reply header text>","frames":["<base64>",...]},
 * or {"rc":-110,"error":"<libtitan's last error>"} when the call fails. Exit status 0 when the call
 * returned a reply, 1 when it failed, 2 on a usage or local error. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "titan/client.h"

/* Reads the whole file at `path` into a malloc'd buffer with a NUL after it. Returns NULL on error. */
static char *s_slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *bigger = realloc(buf, cap * 2 + 1);
        if (!bigger) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *size = n;
    return buf;
}

/* Returns the standard base64 text of `data` (malloc'd), or NULL when out of memory. */
static char *s_base64(const unsigned char *data, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1), *p = out;
    if (!out) return NULL;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)data[i] << 16;
        if (i + 1 < n) v |= (unsigned)data[i + 1] << 8;
        if (i + 2 < n) v |= data[i + 2];
        *p++ = tab[(v >> 18) & 63];
        *p++ = tab[(v >> 12) & 63];
        *p++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        *p++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *p = '\0';
    return out;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s ENDPOINT HEADER_FILE [FRAME_FILE...]\n", argv[0]);
        return 2;
    }
    int rc = 2;
    size_t hlen = 0, nframes = (size_t)argc - 3;
    char *header = s_slurp(argv[2], &hlen);
    char **bufs = calloc(nframes + 1, sizeof *bufs);
    titan_frame *frames = calloc(nframes + 1, sizeof *frames);
    titan_client *c = NULL;
    titan_reply *r = NULL;
    json_t *out = NULL;
    if (!header || !bufs || !frames) {
        fprintf(stderr, "vector_call: cannot read %s\n", argv[2]);
        goto done;
    }
    for (size_t i = 0; i < nframes; i++) {
        bufs[i] = s_slurp(argv[3 + i], &frames[i].size);
        if (!bufs[i]) {
            fprintf(stderr, "vector_call: cannot read %s\n", argv[3 + i]);
            goto done;
        }
        frames[i].data = bufs[i];
    }
    titan_client_opts opts;
    titan_client_opts_init(&opts);
    opts.timeout_ms = 5000;
    opts.retries = 0;
    c = titan_client_new(argv[1], &opts);
    if (!c) {
        fprintf(stderr, "vector_call: titan_client_new(%s): %s\n", argv[1], strerror(errno));
        goto done;
    }
    int crc = titan_client_call(c, header, frames, nframes, &r);
    out = json_object();
    json_object_set_new(out, "rc", json_integer(crc));
    if (crc != 0) {
        json_object_set_new(out, "error", json_string(titan_client_last_error(c)));
        rc = 1;
    } else {
        json_t *list = json_array();
        json_object_set_new(out, "header", json_string(titan_reply_header(r)));
        json_object_set_new(out, "frames", list);
        for (size_t i = 0; i < titan_reply_frame_count(r); i++) {
            size_t size = 0;
            const void *data = titan_reply_frame(r, i, &size);
            char *text = s_base64(data, size);
            if (!text) goto done;
            json_array_append_new(list, json_string(text));
            free(text);
        }
        rc = 0;
    }
    char *text = json_dumps(out, JSON_COMPACT);
    if (!text) {
        rc = 2;
        goto done;
    }
    puts(text);
    free(text);
done:
    json_decref(out);
    titan_reply_destroy(&r);
    titan_client_destroy(&c);
    for (size_t i = 0; bufs && i < nframes; i++)
        free(bufs[i]);
    free(bufs);
    free(frames);
    free(header);
    return rc;
}
