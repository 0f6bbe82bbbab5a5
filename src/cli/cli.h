/* cli.h - shared declarations of the titan command-line tool (options, errors, output). */
#ifndef TITAN_CLI_H
#define TITAN_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "clock.h"
#include "titan/titan.h"

#define CLI_DEFAULT_ENDPOINT "tcp://127.0.0.1:5555"
#define CLI_MAX_DIM 1048576 /* largest matrix dimension the CLI accepts */
#define CLI_MAX_TIMEOUT_MS 3600000
#define CLI_MAX_RETRIES 100

/* Exit statuses, documented in `titan help`. */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_REMOTE = 1,      /* the worker answered an error, a --check failed, or a local failure */
    CLI_EXIT_USAGE = 2,       /* unknown command or option, bad number */
    CLI_EXIT_UNREACHABLE = 3, /* no answer after all retries */
};

typedef struct {
    const char *endpoint;
    int timeout_ms;
    int retries;
    bool json;
    const char *server_key;        /* a Z85 key or the worker's public certificate file; NULL: no CURVE */
    const char *server_key_from;   /* "--server-key" or "TITAN_SERVER_KEY", for messages */
    const char *curve_secret;      /* this client's secret certificate file; NULL: an ephemeral key pair */
    const char *curve_secret_from; /* "--curve-secret" or "TITAN_CURVE_SECRET" */
    const char *backends;          /* compute_backends.yaml: matmul goes through the router; NULL: --endpoint */
} cli_globals;

/* The CURVE keys of a client, as Z85 text. */
typedef struct {
    bool on;  /* a server key was given */
    bool own; /* client_public/_secret hold this client's pair; false: libtitan makes one */
    char server[41];
    char client_public[41];
    char client_secret[41];
} cli_curve;

typedef struct {
    const char *name;
    const char *summary;
    /* Runs the command on argv[0..argc) (the arguments after its name); returns an exit status. */
    int (*run)(cli_globals *g, int argc, char **argv);
    void (*help)(FILE *f);
} cli_command;

/* Commands (cmd_basic.c, cmd_bench.c, cmd_keygen.c, cmd_jobs.c). */
int cli_cmd_ping(cli_globals *g, int argc, char **argv);
int cli_cmd_info(cli_globals *g, int argc, char **argv);
int cli_cmd_matmul(cli_globals *g, int argc, char **argv);
int cli_cmd_bench(cli_globals *g, int argc, char **argv);
int cli_cmd_keygen(cli_globals *g, int argc, char **argv);
void cli_help_ping(FILE *f);
void cli_help_info(FILE *f);
void cli_help_matmul(FILE *f);
void cli_help_bench(FILE *f);
void cli_help_keygen(FILE *f);
/* Batch jobs in Redis (cmd_jobs.c). */
int cli_cmd_submit(cli_globals *g, int argc, char **argv);
int cli_cmd_job(cli_globals *g, int argc, char **argv);
int cli_cmd_jobs(cli_globals *g, int argc, char **argv);
void cli_help_submit(FILE *f);
void cli_help_job(FILE *f);
void cli_help_jobs(FILE *f);

/* Routing across backends (cmd_route.c). */
int cli_cmd_backends(cli_globals *g, int argc, char **argv);
void cli_help_backends(FILE *f);
/* Loads g->backends into a router. Returns CLI_EXIT_OK and *r, or prints why and returns an exit status. */
int cli_router_new(const cli_globals *g, titan_router **r);
/* Reports a routed call's failure `rc` (stderr, and JSON under --json); returns the exit status. */
int cli_report_route_failure(const cli_globals *g, int rc, const titan_route_info *info, const char *what);

/* The health API and status page over HTTP (cmd_serve.c). */
int cli_cmd_serve(cli_globals *g, int argc, char **argv);
void cli_help_serve(FILE *f);

/* VFIO host preparation (cmd_host.c dispatches to host_check.c, host_setup.c, host_bind.c; files go
 * through src/host/sysroot.h so that --sysroot DIR redirects every read and write). */
int cli_cmd_host(cli_globals *g, int argc, char **argv);
void cli_help_host(FILE *f);
int cli_host_check(cli_globals *g, int argc, char **argv);
int cli_host_setup(cli_globals *g, int argc, char **argv);
int cli_host_bind(cli_globals *g, bool bind, int argc, char **argv);

/* The VM (cmd_vm.c, over src/host/vm.h and vmconf.h) and the whole picture (cmd_status.c). */
int cli_cmd_vm(cli_globals *g, int argc, char **argv);
void cli_help_vm(FILE *f);
int cli_cmd_status(cli_globals *g, int argc, char **argv);
void cli_help_status(FILE *f);

/* CURVE keys (cmd_keygen.c). */

/* Resolves g's --server-key and --curve-secret (Z85 keys or CZMQ certificate files) into *out.
 * Returns CLI_EXIT_OK, or prints why and returns CLI_EXIT_USAGE. Wipe out->client_secret after use. */
int cli_curve_keys(const cli_globals *g, cli_curve *out);

/* Option parsing (main.c). */

/* If argv[*i] is `name` or `name=VALUE`, sets *value (taking the next argument for
 * the first form, advancing *i) and returns 1; returns 0 when it is another
 * argument, or prints a usage error and returns -1 when the value is missing. */
int cli_match_option(const char *cmd, int argc, char **argv, int *i, const char *name, const char **value);
/* Consumes a global option (--endpoint, --timeout, --retries, --server-key, --curve-secret,
 * --json) at argv[*i] into `g`. Returns 1 when consumed, 0 when argv[*i] is not one, -1 after printing a
 * usage error. */
int cli_global_option(const char *cmd, cli_globals *g, int argc, char **argv, int *i);
/* Parses `s`, the value of option `opt`, as a decimal integer in [min, max]. Returns 0
 * and *out, or prints a usage error naming the accepted range and returns -1. */
int cli_parse_u64(const char *cmd, const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* Prints "titan CMD: unknown option X" with a pointer to the help; returns CLI_EXIT_USAGE. */
int cli_unknown_option(const char *cmd, const char *arg);
/* Prints a usage error (printf-style) for `cmd` to stderr; returns CLI_EXIT_USAGE. */
__attribute__((format(printf, 2, 3))) int cli_usage_error(const char *cmd, const char *fmt, ...);

/* Clients and errors (main.c). */

/* Makes a client for g->endpoint with g's timeout and retries. Returns 0 and *c, or
 * prints why and returns an exit status. */
int cli_client_new(const cli_globals *g, titan_client **c);
/* Reports the failure `rc` of `what` ("ping"...) on `c` to stderr, and as one JSON
 * object on stdout under --json, with a hint of what to do next. Returns the exit status. */
int cli_report_failure(const cli_globals *g, const titan_client *c, int rc, const char *what);
/* Prints `obj` (stolen) as one line of JSON on stdout. Returns CLI_EXIT_OK, or
 * CLI_EXIT_REMOTE when it could not be built or written. */
int cli_print_json(json_t *obj);

/* Helpers (cmd_basic.c). */

/* Fills `count` elements of dtype `dt` at `buf` with uniform values in [-1, 1) drawn
 * from the splitmix64 stream at *state (advanced). */
void cli_fill_random(titan_dtype dt, void *buf, size_t count, uint64_t *state);
/* Parses a --dtype value. Returns 0 and *dt, or prints a usage error and returns -1. */
int cli_parse_dtype(const char *cmd, const char *s, titan_dtype *dt);

#endif
