/* backends_conf.h - reads compute_backends.yaml (libyaml) into plain structs; internal to libtitan.
 *
 * The format (docs/OPERATIONS.md, "Routing across backends"):
 *
 *   backends:
 *     primary:   {type: local, device: cuda:0}
 *     secondary:
 *       type: remote
 *       endpoint: tcp://192.168.122.10:5555
 *       device: titan-x-vm
 *       capabilities: [matrix_ops, legacy_inference]
 *       priority: 2          # optional: lower is tried first; default: the position in the file (1, 2...)
 *       weight: 1.0          # optional: share of a split before throughput is measured; > 0, default 1
 *       max_inflight: 4      # optional: requests at once; 0 = no limit; default 1 local, 0 remote
 *       timeout_ms: 5000     # optional: per request; 1..3600000, default 5000
 *       server_key: KEY|FILE # optional: the worker's CURVE public key (40 Z85 chars) or a public
 *                            #   certificate file from `titan keygen`
 *       client_key: KEY|FILE # optional, needs server_key: this client's secret key (40 Z85 chars)
 *                            #   or secret certificate file; default: a fresh key pair
 *   router:                  # optional
 *     breaker_failures: 2       # consecutive failures that open a backend's breaker (1..100)
 *     breaker_cooldown_ms: 1000 # first open period (10..3600000); doubles while probes fail
 *     breaker_max_cooldown_ms: 30000
 *
 * Relative certificate paths are read from the YAML file's directory. Unknown fields are ignored
 * with a warning (so files written for a later version still load). Everything else that is wrong
 * is an error "FILE:LINE: FIELD: what is wrong; what to do". */
#ifndef TITAN_BACKENDS_CONF_H
#define TITAN_BACKENDS_CONF_H

#include <stdbool.h>
#include <stddef.h>

#define TITAN_CONF_MAX_BACKENDS 32
#define TITAN_CONF_MAX_CAPS 16
#define TITAN_CONF_MAX_WARNINGS 16
#define TITAN_CONF_MAX_BYTES (1 << 20) /* the largest file read */

enum { TITAN_CONF_LOCAL = 1, TITAN_CONF_REMOTE = 2 };

typedef struct {
    char name[64];   /* the mapping key: 1..63 characters of [A-Za-z0-9_.-] */
    int line;        /* 1-based line of the name in the file */
    int type;        /* TITAN_CONF_LOCAL or TITAN_CONF_REMOTE (required) */
    char endpoint[256]; /* remote: required, tcp://, ipc:// or inproc://; local: must be absent */
    char device[64];    /* local: "auto", "cpu", "cuda" or "cuda:N" (default "auto"); remote: a free label */
    char caps[TITAN_CONF_MAX_CAPS][48]; /* each 1..47 characters of [A-Za-z0-9_.-] */
    int ncaps;
    bool caps_given;  /* false: the backend offers everything */
    int priority;     /* lower first; default: position in the file, 1-based */
    double weight;    /* > 0 and finite; default 1 */
    int max_inflight; /* 0..100000; default 1 local, 0 remote */
    int timeout_ms;   /* 1..3600000; default 5000 */
    char server_key[41];    /* Z85 public key of the worker; "" for none */
    char client_public[41]; /* "" for none (then the router makes a fresh pair) */
    char client_secret[41];
} titan_conf_backend;

typedef struct {
    titan_conf_backend backends[TITAN_CONF_MAX_BACKENDS];
    int n; /* at least 1 */
    int breaker_failures;        /* default 2 */
    int breaker_cooldown_ms;     /* default 1000 */
    int breaker_max_cooldown_ms; /* default 30000; >= breaker_cooldown_ms */
    char warnings[TITAN_CONF_MAX_WARNINGS][256]; /* "FILE:LINE: unknown field X ignored" */
    int nwarnings;
} titan_conf;

/* Reads and checks the file. Returns 0 and fills *out, or -errno (-ENOENT, -EACCES, -EFBIG for a file
 * over TITAN_CONF_MAX_BYTES, -EINVAL for a bad file, -ENOMEM) with a sentence in err. */
int titan_conf_load_file(const char *path, titan_conf *out, char *err, size_t errcap);

/* The same from text[0..len); `name` stands for the file in messages; `dir` is where relative
 * certificate paths are read from (NULL: the current directory). */
int titan_conf_load_string(const char *text, size_t len, const char *name, const char *dir, titan_conf *out,
                           char *err, size_t errcap);

#endif
