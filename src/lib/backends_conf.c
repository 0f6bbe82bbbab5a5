/* backends_conf.c - compute_backends.yaml reader (see backends_conf.h): libyaml document, checked field by
 * field. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>
#include <zmq.h>

#include "backend.h"
#include "backends_conf.h"
#include "numfmt.h"
#include "yamlconf.h"

#define S_CERT_MAX_BYTES (64 * 1024)
/* A backends file is a few dozen nodes; these caps keep a hostile file from costing much. */
#define S_MAX_DEPTH 32
#define S_MAX_NODES 100000
#define S_KEY_LEN 40

static const yamlconf_rules s_rules = {
    .max_bytes = TITAN_CONF_MAX_BYTES,
    .max_depth = S_MAX_DEPTH,
    .max_values = S_MAX_NODES,
    .what = "a backends file",
    .holder = "a backends file",
    .path_of = "compute_backends.yaml",
    .needs = "a backends: mapping (see docs/OPERATIONS.md)",
    .name_alias = true,
};

static const char s_z85_chars[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

typedef struct {
    yamlconf y;
    const char *dir; /* where relative certificate paths are read from; NULL: the current directory */
    titan_conf *conf;
} s_ctx;

/* The settings a backend may have, in the order they are checked. */
enum {
    F_TYPE,
    F_ENDPOINT,
    F_DEVICE,
    F_CAPS,
    F_PRIORITY,
    F_WEIGHT,
    F_MAX_INFLIGHT,
    F_TIMEOUT,
    F_SERVER_KEY,
    F_CLIENT_KEY,
    F_COUNT
};
static const char *const s_backend_fields[F_COUNT] = {
    "type",   "endpoint",     "device",     "capabilities", "priority",
    "weight", "max_inflight", "timeout_ms", "server_key",   "client_key"};

enum { R_FAILURES, R_COOLDOWN, R_MAX_COOLDOWN, R_COUNT };
static const char *const s_router_fields[R_COUNT] = {"breaker_failures", "breaker_cooldown_ms",
                                                     "breaker_max_cooldown_ms"};

enum { T_BACKENDS, T_ROUTER, T_COUNT };
static const char *const s_top_fields[T_COUNT] = {"backends", "router"};

/* snprintf that may cut the text short on purpose (messages have fixed-size homes). */
__attribute__((format(printf, 3, 4))) static void s_print(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
}

/* How a value reads in a message: "\"abc\"", "an empty value", "a list" or "a mapping". */
static const char *s_show(const yaml_node_t *n, char *buf, size_t cap)
{
    if (n->type == YAML_SEQUENCE_NODE) return "a list";
    if (n->type == YAML_MAPPING_NODE) return "a mapping";
    if (n->type != YAML_SCALAR_NODE) return "nothing";
    if (n->data.scalar.length == 0) return "an empty value";
    buf[0] = '"';
    yamlconf_escape((const char *)n->data.scalar.value, n->data.scalar.length, buf + 1, cap - 2);
    size_t o = strlen(buf);
    buf[o] = '"';
    buf[o + 1] = '\0';
    return buf;
}

/* The YAML spellings of "no value" on a plain scalar. */
static bool s_is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
    yamlconf_text t = yamlconf_text_of(n);
    return t.len == 0 || yamlconf_is(t, "~") || yamlconf_is(t, "null") || yamlconf_is(t, "Null") ||
           yamlconf_is(t, "NULL");
}

/* No control characters (NUL included) and no bytes beyond what fits. */
static bool s_printable(yamlconf_text t)
{
    for (size_t i = 0; i < t.len; i++) {
        unsigned char ch = (unsigned char)t.s[i];
        if (ch < 0x20 || ch == 0x7f) return false;
    }
    return true;
}

/* 40 characters of the Z85 alphabet: what is taken as a key rather than a file name. */
static bool s_z85_shape(const char *s, size_t len)
{
    if (len != S_KEY_LEN) return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\0' || !strchr(s_z85_chars, s[i])) return false;
    return true;
}

/* A key that decodes: the right shape, and no 5-character group beyond 2^32 - 1. */
static bool s_z85_key(const char *s, size_t len)
{
    if (!s_z85_shape(s, len)) return false;
    char copy[S_KEY_LEN + 1];
    uint8_t bin[32];
    memcpy(copy, s, S_KEY_LEN);
    copy[S_KEY_LEN] = '\0';
    return zmq_z85_decode(bin, copy) != NULL;
}

/* A finite number > 0 in JSON's spelling (1, 0.5, 2e3). */
static bool s_parse_weight(yamlconf_text t, double *out)
{
    if (t.len == 0 || t.len > 64 || t.s[0] < '0' || t.s[0] > '9') return false;
    double d = 0;
    if (titan_parse_f64(t.s, t.s + t.len, &d) != t.len) return false;
    if (!isfinite(d) || !(d > 0)) return false;
    *out = d;
    return true;
}

static int s_warn(s_ctx *c, int line, const char *prefix, const yaml_node_t *key)
{
    titan_conf *conf = c->conf;
    if (conf->nwarnings < TITAN_CONF_MAX_WARNINGS) {
        char esc[256];
        yamlconf_escape((const char *)key->data.scalar.value, key->data.scalar.length, esc, sizeof esc);
        s_print(conf->warnings[conf->nwarnings], sizeof conf->warnings[0],
                "%s:%d: unknown field %s%s%s ignored", c->y.name, line, prefix ? prefix : "",
                prefix ? "." : "", esc);
    }
    if (conf->nwarnings < INT_MAX) conf->nwarnings++;
    return 0;
}

/* Sorts a mapping's pairs into vals[] by `names`, warning about unknown keys and failing on a key given
 * twice or a key that is not a name. `prefix` is the path of the mapping ("secondary", "router", NULL). */
static int s_collect(s_ctx *c, const yaml_node_t *map, const char *prefix, const char *const *names,
                     int nnames, yaml_node_t **vals, int *keylines)
{
    for (int i = 0; i < nnames; i++) {
        vals[i] = NULL;
        keylines[i] = 0;
    }
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(c->y.doc, p->key);
        yaml_node_t *v = yaml_document_get_node(c->y.doc, p->value);
        if (!k || !v)
            return yamlconf_fail(&c->y, yamlconf_line(map), "%s: damaged YAML document; rewrite it",
                                 prefix ? prefix : "");
        if (k->type != YAML_SCALAR_NODE) {
            char buf[80];
            return yamlconf_fail(&c->y, yamlconf_line(k), "%s%skey: is %s; keys must be plain names",
                                 prefix ? prefix : "", prefix ? "." : "", s_show(k, buf, sizeof buf));
        }
        yamlconf_text t = yamlconf_text_of(k);
        int f = -1;
        for (int i = 0; i < nnames && f < 0; i++)
            if (yamlconf_is(t, names[i])) f = i;
        if (f < 0) {
            s_warn(c, yamlconf_line(k), prefix, k);
            continue;
        }
        if (vals[f])
            return yamlconf_fail(&c->y, yamlconf_line(k), "%s%s%s: given twice (first on line %d); keep one",
                                 prefix ? prefix : "", prefix ? "." : "", names[f], keylines[f]);
        vals[f] = v;
        keylines[f] = yamlconf_line(k);
    }
    return 0;
}

/* Finds `name = "VALUE"` on a line of a zcert file (leading blanks, optional quotes); false if absent. */
static bool s_cert_field(const char *text, size_t len, const char *name, yamlconf_text *value)
{
    size_t nlen = strlen(name);
    size_t i = 0;
    while (i < len) {
        size_t end = i;
        while (end < len && text[end] != '\n')
            end++;
        size_t p = i;
        while (p < end && (text[p] == ' ' || text[p] == '\t'))
            p++;
        if (end - p > nlen && memcmp(text + p, name, nlen) == 0 &&
            (text[p + nlen] == ' ' || text[p + nlen] == '\t' || text[p + nlen] == '=')) {
            p += nlen;
            while (p < end && (text[p] == ' ' || text[p] == '\t'))
                p++;
            if (p < end && text[p] == '=') {
                p++;
                while (p < end && (text[p] == ' ' || text[p] == '\t'))
                    p++;
                bool quoted = p < end && text[p] == '"';
                if (quoted) p++;
                size_t v = p;
                while (p < end &&
                       (quoted ? text[p] != '"' : (text[p] != ' ' && text[p] != '\t' && text[p] != '\r')))
                    p++;
                value->s = text + v;
                value->len = p - v;
                return true;
            }
        }
        i = end + 1;
    }
    return false;
}

/* Fills pub (server) or pub+sec (client) from a 40-character Z85 key or a zcert file named by node. */
static int s_key(s_ctx *c, const char *bname, const char *field, const yaml_node_t *n, bool secret, char *pub,
                 char *sec)
{
    char buf[80];
    const char *want =
        secret ? "give this client's secret key (40 Z85 characters) or its _secret certificate "
                 "from titan keygen"
               : "give the worker's public key (40 Z85 characters) or its public certificate from "
                 "titan keygen";
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.length == 0)
        return yamlconf_fail(&c->y, yamlconf_line(n), "%s.%s: is %s; %s", bname, field,
                             s_show(n, buf, sizeof buf), want);
    yamlconf_text t = yamlconf_text_of(n);
    char key[S_KEY_LEN + 1] = "";
    char file_pub[S_KEY_LEN + 1] = "";
    if (s_z85_shape(t.s, t.len)) {
        if (!s_z85_key(t.s, t.len))
            return yamlconf_fail(
                &c->y, yamlconf_line(n),
                "%s.%s: %s is not a valid Z85 key (a group of 5 characters is out of range); %s", bname,
                field, s_show(n, buf, sizeof buf), want);
        memcpy(key, t.s, S_KEY_LEN);
        key[S_KEY_LEN] = '\0';
    } else {
        char path[PATH_MAX];
        char esc[256];
        char *text = NULL;
        size_t len = 0;
        if (memchr(t.s, '\0', t.len) || t.len >= PATH_MAX)
            return yamlconf_fail(&c->y, yamlconf_line(n),
                                 "%s.%s: %s is not a 40-character Z85 key nor a file name; %s", bname, field,
                                 s_show(n, buf, sizeof buf), want);
        int pn = t.s[0] != '/' && c->dir && c->dir[0] ? snprintf(path, sizeof path, "%s/%s", c->dir, t.s)
                                                      : snprintf(path, sizeof path, "%s", t.s);
        if (pn < 0 || (size_t)pn >= sizeof path)
            return yamlconf_fail(&c->y, yamlconf_line(n),
                                 "%s.%s: the certificate path is too long; shorten it", bname, field);
        yamlconf_escape(path, strlen(path), esc, sizeof esc);
        int rc = yamlconf_read_file(path, S_CERT_MAX_BYTES, &text, &len);
        if (rc == -ENOMEM) return rc;
        if (rc == -EFBIG)
            return yamlconf_fail(&c->y, yamlconf_line(n),
                                 "%s.%s: %s is larger than %d bytes, so not a certificate; %s", bname, field,
                                 esc, S_CERT_MAX_BYTES, want);
        if (rc < 0)
            return yamlconf_fail(
                &c->y, yamlconf_line(n),
                "%s.%s: %s is not a 40-character Z85 key nor a readable certificate (%s: %s); %s", bname,
                field, s_show(n, buf, sizeof buf), esc, strerror(-rc), want);
        yamlconf_text kpub = {NULL, 0}, ksec = {NULL, 0};
        bool has_pub = s_cert_field(text, len, "public-key", &kpub);
        bool has_sec = s_cert_field(text, len, "secret-key", &ksec);
        if (secret && !has_sec && strlen(path) + sizeof "_secret" <= sizeof path) {
            /* A public certificate NAME: take NAME_secret beside it, as titan --curve-secret does. */
            char *text2 = NULL;
            size_t len2 = 0;
            strcat(path, "_secret");
            rc = yamlconf_read_file(path, S_CERT_MAX_BYTES, &text2, &len2);
            if (rc == -ENOMEM) {
                free(text);
                return rc;
            }
            if (rc == 0 && s_cert_field(text2, len2, "secret-key", &ksec)) {
                free(text);
                text = text2;
                len = len2;
                has_pub = s_cert_field(text, len, "public-key", &kpub);
                has_sec = true;
                yamlconf_escape(path, strlen(path), esc, sizeof esc);
            } else {
                free(text2);
            }
        }
        const char *problem = NULL;
        if (!secret && !has_pub)
            problem = "has no public-key line, so it is not a certificate";
        else if (secret && !has_sec)
            problem = "has no secret-key line (a public certificate, and no NAME_secret beside it)";
        else if (has_pub && !s_z85_key(kpub.s, kpub.len))
            problem = "has a public-key that is not 40 Z85 characters";
        else if (secret && !s_z85_key(ksec.s, ksec.len))
            problem = "has a secret-key that is not 40 Z85 characters";
        if (!problem) {
            yamlconf_text use = secret ? ksec : kpub;
            memcpy(key, use.s, S_KEY_LEN);
            key[S_KEY_LEN] = '\0';
            if (has_pub) {
                memcpy(file_pub, kpub.s, S_KEY_LEN);
                file_pub[S_KEY_LEN] = '\0';
            }
        }
        free(text);
        if (problem)
            return yamlconf_fail(&c->y, yamlconf_line(n), "%s.%s: %s %s; %s", bname, field, esc, problem,
                                 want);
    }
    if (!secret) {
        memcpy(pub, key, S_KEY_LEN + 1);
        return 0;
    }
    char derived[S_KEY_LEN + 1];
    if (zmq_curve_public(derived, key) != 0)
        return yamlconf_fail(&c->y, yamlconf_line(n),
                             "%s.%s: cannot derive the public key (%s); use a libzmq built with CURVE", bname,
                             field, zmq_strerror(zmq_errno()));
    if (file_pub[0] && strcmp(file_pub, derived) != 0)
        return yamlconf_fail(&c->y, yamlconf_line(n),
                             "%s.%s: the certificate's public-key does not belong to its secret-key; %s",
                             bname, field, want);
    memcpy(sec, key, S_KEY_LEN + 1);
    memcpy(pub, derived, S_KEY_LEN + 1);
    return 0;
}

static int s_int_field(s_ctx *c, const char *bname, const char *field, const yaml_node_t *n, long lo, long hi,
                       int *out)
{
    char buf[80];
    long v = 0;
    if (n->type == YAML_SCALAR_NODE && yamlconf_parse_long(yamlconf_text_of(n), true, lo, hi, &v)) {
        *out = (int)v;
        return 0;
    }
    return yamlconf_fail(&c->y, yamlconf_line(n), "%s.%s: must be a whole number from %ld to %ld, not %s",
                         bname, field, lo, hi, s_show(n, buf, sizeof buf));
}

/* The core's one device grammar (backends/select.c), as titan-worker's --device reads it. */
static bool s_device_ok(yamlconf_text t)
{
    titan_device_spec d;
    return titan_device_parse(t.s, t.len, &d) == 0;
}

static int s_caps(s_ctx *c, const char *bname, const yaml_node_t *n, titan_conf_backend *b)
{
    char buf[80];
    if (n->type != YAML_SEQUENCE_NODE)
        return yamlconf_fail(
            &c->y, yamlconf_line(n),
            "%s.capabilities: must be a list of names such as [matrix_ops, legacy_inference], not %s; "
            "leave it out to offer every operation",
            bname, s_show(n, buf, sizeof buf));
    int count = 0;
    for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
         it++, count++) {
        yaml_node_t *item = yaml_document_get_node(c->y.doc, *it);
        if (!item)
            return yamlconf_fail(&c->y, yamlconf_line(n),
                                 "%s.capabilities: damaged YAML document; rewrite it", bname);
        if (count >= TITAN_CONF_MAX_CAPS)
            return yamlconf_fail(&c->y, yamlconf_line(item),
                                 "%s.capabilities: more than %d capabilities; list at most %d", bname,
                                 TITAN_CONF_MAX_CAPS, TITAN_CONF_MAX_CAPS);
        if (item->type != YAML_SCALAR_NODE ||
            !yamlconf_name_ok(yamlconf_text_of(item), sizeof b->caps[0] - 1))
            return yamlconf_fail(
                &c->y, yamlconf_line(item),
                "%s.capabilities[%d]: must be a name of 1 to %zu letters, digits, '_', '.' or '-', not %s",
                bname, count, sizeof b->caps[0] - 1, s_show(item, buf, sizeof buf));
        yamlconf_text t = yamlconf_text_of(item);
        for (int j = 0; j < count; j++)
            if (yamlconf_is(t, b->caps[j]))
                return yamlconf_fail(&c->y, yamlconf_line(item),
                                     "%s.capabilities[%d]: %s is listed twice; list it once", bname, count,
                                     b->caps[j]);
        memcpy(b->caps[count], t.s, t.len);
        b->caps[count][t.len] = '\0';
    }
    if (count == 0)
        return yamlconf_fail(
            &c->y, yamlconf_line(n),
            "%s.capabilities: is an empty list; name at least one, or leave it out to offer every operation",
            bname);
    b->ncaps = count;
    b->caps_given = true;
    return 0;
}

/* Checks one backend (its name already checked) and fills b; `position` is its 1-based place in the file. */
static int s_backend(s_ctx *c, const yaml_node_t *key, const yaml_node_t *map, int position,
                     titan_conf_backend *b)
{
    char buf[80];
    const char *bname = b->name;
    int nline = yamlconf_line(key);
    if (map->type != YAML_MAPPING_NODE || map->data.mapping.pairs.top == map->data.mapping.pairs.start) {
        if (map->type == YAML_MAPPING_NODE || s_is_null(map))
            return yamlconf_fail(&c->y, nline,
                                 "%s: has no settings; give it at least type: local or type: remote", bname);
        return yamlconf_fail(&c->y, nline, "%s: must be a mapping of settings such as {type: local}, not %s",
                             bname, s_show(map, buf, sizeof buf));
    }
    yaml_node_t *v[F_COUNT];
    int kl[F_COUNT];
    int rc = s_collect(c, map, bname, s_backend_fields, F_COUNT, v, kl);
    if (rc < 0) return rc;
    for (int f = 0; f < F_COUNT; f++)
        if (v[f] && f != F_CAPS && v[f]->type != YAML_SCALAR_NODE)
            return yamlconf_fail(&c->y, yamlconf_line(v[f]), "%s.%s: must be a single value, not %s", bname,
                                 s_backend_fields[f], s_show(v[f], buf, sizeof buf));

    if (!v[F_TYPE])
        return yamlconf_fail(&c->y, nline, "%s.type: missing; add type: local or type: remote", bname);
    yamlconf_text t = yamlconf_text_of(v[F_TYPE]);
    if (yamlconf_is(t, "local"))
        b->type = TITAN_CONF_LOCAL;
    else if (yamlconf_is(t, "remote"))
        b->type = TITAN_CONF_REMOTE;
    else
        return yamlconf_fail(&c->y, yamlconf_line(v[F_TYPE]), "%s.type: unknown type %s; use local|remote",
                             bname, s_show(v[F_TYPE], buf, sizeof buf));
    bool local = b->type == TITAN_CONF_LOCAL;

    if (local && v[F_ENDPOINT])
        return yamlconf_fail(
            &c->y, kl[F_ENDPOINT],
            "%s.endpoint: a local backend runs in this process and has no endpoint; remove it or use "
            "type: remote",
            bname);
    if (!local && !v[F_ENDPOINT])
        return yamlconf_fail(
            &c->y, nline,
            "%s.endpoint: missing; a remote backend needs endpoint: tcp://HOST:PORT (or ipc://PATH, "
            "inproc://NAME)",
            bname);
    if (v[F_ENDPOINT]) {
        t = yamlconf_text_of(v[F_ENDPOINT]);
        if (t.len >= sizeof b->endpoint)
            return yamlconf_fail(&c->y, yamlconf_line(v[F_ENDPOINT]),
                                 "%s.endpoint: longer than %zu characters; shorten it", bname,
                                 sizeof b->endpoint - 1);
        size_t plen = t.len >= 6 && memcmp(t.s, "tcp://", 6) == 0      ? 6
                      : t.len >= 6 && memcmp(t.s, "ipc://", 6) == 0    ? 6
                      : t.len >= 9 && memcmp(t.s, "inproc://", 9) == 0 ? 9
                                                                       : 0;
        bool blank = false;
        for (size_t i = 0; i < t.len; i++)
            if (t.s[i] == ' ' || t.s[i] == '\t') blank = true;
        if (plen == 0 || t.len == plen || blank || !s_printable(t))
            return yamlconf_fail(&c->y, yamlconf_line(v[F_ENDPOINT]),
                                 "%s.endpoint: must be tcp://HOST:PORT, ipc://PATH or inproc://NAME, not %s",
                                 bname, s_show(v[F_ENDPOINT], buf, sizeof buf));
        memcpy(b->endpoint, t.s, t.len);
        b->endpoint[t.len] = '\0';
    }

    snprintf(b->device, sizeof b->device, "%s", local ? "auto" : "");
    if (v[F_DEVICE]) {
        t = yamlconf_text_of(v[F_DEVICE]);
        if (local && !s_device_ok(t))
            return yamlconf_fail(&c->y, yamlconf_line(v[F_DEVICE]),
                                 "%s.device: must be auto, cpu, cuda or cuda:N, not %s (N: 0 to %d, as "
                                 "titan-worker's --device)",
                                 bname, s_show(v[F_DEVICE], buf, sizeof buf), TITAN_DEVICE_INDEX_MAX);
        if (!local && (t.len == 0 || t.len >= sizeof b->device || !s_printable(t)))
            return yamlconf_fail(
                &c->y, yamlconf_line(v[F_DEVICE]),
                "%s.device: must be a label of 1 to %zu printable characters, not %s; shorten it or "
                "leave it out",
                bname, sizeof b->device - 1, s_show(v[F_DEVICE], buf, sizeof buf));
        memcpy(b->device, t.s, t.len);
        b->device[t.len] = '\0';
    }

    if (v[F_CAPS] && (rc = s_caps(c, bname, v[F_CAPS], b)) < 0) return rc;

    b->priority = position;
    if (v[F_PRIORITY] &&
        (rc = s_int_field(c, bname, "priority", v[F_PRIORITY], 0, 1000000, &b->priority)) < 0)
        return rc;
    b->weight = 1.0;
    if (v[F_WEIGHT] && !s_parse_weight(yamlconf_text_of(v[F_WEIGHT]), &b->weight))
        return yamlconf_fail(&c->y, yamlconf_line(v[F_WEIGHT]),
                             "%s.weight: must be a finite number greater than 0 (such as 1 or 0.5), "
                             "not %s",
                             bname, s_show(v[F_WEIGHT], buf, sizeof buf));
    b->max_inflight = local ? 1 : 0;
    if (v[F_MAX_INFLIGHT] &&
        (rc = s_int_field(c, bname, "max_inflight", v[F_MAX_INFLIGHT], 0, 100000, &b->max_inflight)) < 0)
        return rc;
    b->timeout_ms = 5000;
    if (v[F_TIMEOUT] &&
        (rc = s_int_field(c, bname, "timeout_ms", v[F_TIMEOUT], 1, 3600000, &b->timeout_ms)) < 0)
        return rc;

    for (int f = F_SERVER_KEY; f <= F_CLIENT_KEY; f++)
        if (local && v[f])
            return yamlconf_fail(&c->y, kl[f],
                                 "%s.%s: a local backend uses no CURVE keys; remove it or use type: remote",
                                 bname, s_backend_fields[f]);
    if (v[F_CLIENT_KEY] && !v[F_SERVER_KEY])
        return yamlconf_fail(
            &c->y, kl[F_CLIENT_KEY],
            "%s.client_key: needs server_key; add the worker's public key as server_key, or remove "
            "client_key",
            bname);
    if (v[F_SERVER_KEY] &&
        (rc = s_key(c, bname, "server_key", v[F_SERVER_KEY], false, b->server_key, NULL)) < 0)
        return rc;
    if (v[F_CLIENT_KEY] &&
        (rc = s_key(c, bname, "client_key", v[F_CLIENT_KEY], true, b->client_public, b->client_secret)) < 0)
        return rc;
    return 0;
}

static int s_backends(s_ctx *c, int kline, const yaml_node_t *map)
{
    char buf[80];
    titan_conf *conf = c->conf;
    if (map->type != YAML_MAPPING_NODE) {
        if (s_is_null(map))
            return yamlconf_fail(&c->y, kline,
                                 "backends: is empty; add at least one backend, such as "
                                 "local: {type: local}");
        return yamlconf_fail(&c->y, yamlconf_line(map),
                             "backends: must be a mapping of NAME: {settings}, not %s",
                             s_show(map, buf, sizeof buf));
    }
    if (map->data.mapping.pairs.top == map->data.mapping.pairs.start)
        return yamlconf_fail(&c->y, kline,
                             "backends: is empty; add at least one backend, such as local: {type: local}");
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(c->y.doc, p->key);
        yaml_node_t *v = yaml_document_get_node(c->y.doc, p->value);
        if (!k || !v)
            return yamlconf_fail(&c->y, yamlconf_line(map), "backends: damaged YAML document; rewrite it");
        if (k->type != YAML_SCALAR_NODE)
            return yamlconf_fail(&c->y, yamlconf_line(k),
                                 "backends: a backend name is %s; names are plain words such as primary",
                                 s_show(k, buf, sizeof buf));
        yamlconf_text t = yamlconf_text_of(k);
        if (!yamlconf_name_ok(t, sizeof conf->backends[0].name - 1))
            return yamlconf_fail(
                &c->y, yamlconf_line(k),
                "backends: backend name %s must be 1 to %zu letters, digits, '_', '.' or '-'; rename it",
                s_show(k, buf, sizeof buf), sizeof conf->backends[0].name - 1);
        for (int i = 0; i < conf->n; i++)
            if (yamlconf_is(t, conf->backends[i].name))
                return yamlconf_fail(
                    &c->y, yamlconf_line(k),
                    "%s: a second backend of that name (the first is on line %d); rename one",
                    conf->backends[i].name, conf->backends[i].line);
        if (conf->n >= TITAN_CONF_MAX_BACKENDS)
            return yamlconf_fail(&c->y, yamlconf_line(k), "backends: more than %d backends; remove some",
                                 TITAN_CONF_MAX_BACKENDS);
        titan_conf_backend *b = &conf->backends[conf->n];
        memcpy(b->name, t.s, t.len);
        b->name[t.len] = '\0';
        b->line = yamlconf_line(k);
        int rc = s_backend(c, k, v, conf->n + 1, b);
        if (rc < 0) return rc;
        conf->n++;
    }
    return 0;
}

static int s_router(s_ctx *c, int kline, const yaml_node_t *map)
{
    char buf[80];
    titan_conf *conf = c->conf;
    if (s_is_null(map)) return 0; /* "router:" with every line commented out */
    if (map->type != YAML_MAPPING_NODE)
        return yamlconf_fail(&c->y, kline, "router: must be a mapping such as {breaker_failures: 2}, not %s",
                             s_show(map, buf, sizeof buf));
    yaml_node_t *v[R_COUNT];
    int kl[R_COUNT];
    int rc = s_collect(c, map, "router", s_router_fields, R_COUNT, v, kl);
    if (rc < 0) return rc;
    if (v[R_FAILURES] && (rc = s_int_field(c, "router", s_router_fields[R_FAILURES], v[R_FAILURES], 1, 100,
                                           &conf->breaker_failures)) < 0)
        return rc;
    if (v[R_COOLDOWN] && (rc = s_int_field(c, "router", s_router_fields[R_COOLDOWN], v[R_COOLDOWN], 10,
                                           3600000, &conf->breaker_cooldown_ms)) < 0)
        return rc;
    if (v[R_MAX_COOLDOWN]) {
        if ((rc = s_int_field(c, "router", s_router_fields[R_MAX_COOLDOWN], v[R_MAX_COOLDOWN], 10, 3600000,
                              &conf->breaker_max_cooldown_ms)) < 0)
            return rc;
        if (conf->breaker_max_cooldown_ms < conf->breaker_cooldown_ms)
            return yamlconf_fail(
                &c->y, yamlconf_line(v[R_MAX_COOLDOWN]),
                "router.breaker_max_cooldown_ms: %d is less than breaker_cooldown_ms (%d); raise it",
                conf->breaker_max_cooldown_ms, conf->breaker_cooldown_ms);
    } else if (conf->breaker_max_cooldown_ms < conf->breaker_cooldown_ms) {
        conf->breaker_max_cooldown_ms =
            conf->breaker_cooldown_ms; /* a long first cool-down, never shortened */
    }
    return 0;
}

static int s_top(s_ctx *c, const yaml_node_t *root)
{
    char buf[80];
    if (root->type != YAML_MAPPING_NODE)
        return yamlconf_fail(&c->y, yamlconf_line(root),
                             "top level: must be a mapping with a backends: key, not %s",
                             s_show(root, buf, sizeof buf));
    yaml_node_t *v[T_COUNT];
    int kl[T_COUNT];
    int rc = s_collect(c, root, NULL, s_top_fields, T_COUNT, v, kl);
    if (rc < 0) return rc;
    if (!v[T_BACKENDS])
        return yamlconf_fail(&c->y, yamlconf_line(root),
                             "backends: missing; add a backends: mapping with at least one backend");
    if ((rc = s_backends(c, kl[T_BACKENDS], v[T_BACKENDS])) < 0) return rc;
    if (v[T_ROUTER]) return s_router(c, kl[T_ROUTER], v[T_ROUTER]);
    return 0;
}

static int s_load(s_ctx *c, const char *text, size_t len, titan_conf *out)
{
    yaml_document_t doc;
    yaml_node_t *root = NULL;
    int rc = yamlconf_load(&c->y, &s_rules, text, len, &doc, &root);
    if (rc < 0) return rc;
    titan_conf *conf = calloc(1, sizeof *conf);
    if (conf) {
        conf->breaker_failures = 2;
        conf->breaker_cooldown_ms = 1000;
        conf->breaker_max_cooldown_ms = 30000;
        c->conf = conf;
        rc = s_top(c, root);
        if (rc == 0) memcpy(out, conf, sizeof *conf);
        free(conf);
    } else {
        rc = -ENOMEM;
    }
    yaml_document_delete(&doc);
    return rc;
}

int titan_conf_load_string(const char *text, size_t len, const char *name, const char *dir, titan_conf *out,
                           char *err, size_t errcap)
{
    s_ctx c = {.y = {.name = name ? name : "(string)", .err = err, .errcap = errcap}, .dir = dir};
    if (!out || (!text && len > 0)) {
        yamlconf_fail(&c.y, 0, "no text or no place for the result (a bug in the caller)");
        return -EINVAL;
    }
    if (len > TITAN_CONF_MAX_BYTES) {
        yamlconf_fail(&c.y, 0, "larger than %d bytes; this is not a backends file", TITAN_CONF_MAX_BYTES);
        return -EFBIG;
    }
    int rc = s_load(&c, text ? text : "", len, out);
    if (rc == -ENOMEM) yamlconf_fail(&c.y, 0, "out of memory while reading it");
    return rc;
}

int titan_conf_load_file(const char *path, titan_conf *out, char *err, size_t errcap)
{
    yamlconf y = {.name = path ? path : "(null)", .err = err, .errcap = errcap};
    if (!path || !out)
        return yamlconf_fail(&y, 0, "no path or no place for the result (a bug in the caller)");
    char *text = NULL;
    size_t len = 0;
    int rc = yamlconf_read(&y, &s_rules, &text, &len);
    if (rc < 0) return rc;
    char *dir = strdup(path);
    if (!dir) {
        free(text);
        yamlconf_fail(&y, 0, "out of memory while reading it");
        return -ENOMEM;
    }
    char *slash = strrchr(dir, '/');
    const char *use_dir = NULL;
    if (slash == dir)
        use_dir = "/";
    else if (slash) {
        *slash = '\0';
        use_dir = dir;
    }
    rc = titan_conf_load_string(text, len, path, use_dir, out, err, errcap);
    free(dir);
    free(text);
    return rc;
}
