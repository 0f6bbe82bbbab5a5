/* main.c - the titan command-line tool: global options, dispatch, help and error reporting. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void s_help_main(FILE *f);

static const cli_command s_commands[] = {
    {"ping", "check that the worker answers; prints its device and the round-trip time", cli_cmd_ping,
     cli_help_ping},
    {"info", "show the worker's device: name, backend, memory, multiprocessors", cli_cmd_info, cli_help_info},
    {"matmul", "multiply random matrices on the worker; --check verifies against OpenBLAS", cli_cmd_matmul,
     cli_help_matmul},
    {"bench", "measure ping latency and matmul throughput", cli_cmd_bench, cli_help_bench},
    {"keygen", "make a CURVE key pair (certificate files) for a worker or a client", cli_cmd_keygen,
     cli_help_keygen},
    {"submit", "queue a request as a batch job in Redis; prints the job id", cli_cmd_submit, cli_help_submit},
    {"job", "status, result, wait or cancel of batch jobs: titan job wait ID...", cli_cmd_job, cli_help_job},
    {"jobs", "list batch jobs: titan jobs list --state failed", cli_cmd_jobs, cli_help_jobs},
    {"backends", "probe the backends of compute_backends.yaml (--backends FILE) and show their state",
     cli_cmd_backends, cli_help_backends},
    {"host", "VFIO passthrough of a GPU on this host: check, setup, bind, unbind", cli_cmd_host, cli_help_host},
    {"vm", "the GPU VM through libvirt: define, xml, start, stop, status, autostart, undefine", cli_cmd_vm,
     cli_help_vm},
    {"status", "one line per component (VM, worker, queue); exit 0 healthy, 1 degraded, 2 down", cli_cmd_status,
     cli_help_status},
    {"serve", "serve the health API and a live status page over HTTP: titan serve --listen 127.0.0.1:8080",
     cli_cmd_serve, cli_help_serve},
};
#define S_NCOMMANDS (sizeof s_commands / sizeof s_commands[0])

/* Returns the command called `name`, or NULL. */
static const cli_command *s_find_command(const char *name)
{
    for (size_t i = 0; i < S_NCOMMANDS; i++)
        if (strcmp(s_commands[i].name, name) == 0) return &s_commands[i];
    return NULL;
}

static void s_help_main(FILE *f)
{
    fprintf(f, "usage: titan [--endpoint E] [--timeout MS] [--retries N] [--server-key KEY|FILE]\n"
               "             [--curve-secret FILE] [--backends FILE] [--json] COMMAND [ARGS]\n"
               "\n"
               "Sends compute requests to a titan-worker over ZeroMQ.\n"
               "\n"
               "commands:\n");
    for (size_t i = 0; i < S_NCOMMANDS; i++)
        fprintf(f, "  %-8s %s\n", s_commands[i].name, s_commands[i].summary);
    fprintf(f, "  %-8s %s\n", "help", "show this help, or the help of one command: titan help matmul");
    fprintf(f,
            "\n"
            "global options (before or after COMMAND):\n"
            "  --endpoint E   the worker's ZeroMQ endpoint (default: $TITAN_ENDPOINT, else %s)\n"
            "  --timeout MS   milliseconds to wait for each attempt's answer (default 5000)\n"
            "  --retries N    attempts after the first one times out (default 2)\n"
            "  --server-key KEY|FILE\n"
            "                 talk CURVE (encrypted, authenticated) to a worker started with\n"
            "                 --curve-secret: its public key (40 Z85 characters) or its public\n"
            "                 certificate file (default: $TITAN_SERVER_KEY; none: plain)\n"
            "  --curve-secret FILE\n"
            "                 this client's secret certificate (from `titan keygen`), whose public\n"
            "                 key must be in the worker's --allow-keys directory (default:\n"
            "                 $TITAN_CURVE_SECRET; none: a throwaway key, which only a worker\n"
            "                 without --allow-keys admits)\n"
            "  --backends FILE\n"
            "                 route matmul through the backends of compute_backends.yaml FILE\n"
            "                 (overflow, failover, --split) instead of --endpoint (default:\n"
            "                 $TITAN_BACKENDS); see `titan help backends`\n"
            "  --json         print one JSON object on stdout, for scripts\n"
            "  --version      print the version and exit\n"
            "  -h, --help     print this help and exit\n"
            "\n"
            "examples:\n"
            "  titan ping\n"
            "  titan --endpoint tcp://192.168.122.10:5555 info\n"
            "  titan matmul --m 1024 --k 512 --n 256 --check\n"
            "  titan bench --sizes 256,512,1024,2048 --json\n"
            "  TITAN_ENDPOINT=tcp://10.0.0.2:5555 titan --timeout 60000 matmul --m 8192 --k 8192 --n 8192\n"
            "  titan --server-key worker --curve-secret alice_secret ping   # files from `titan keygen`\n"
            "\n"
            "No worker yet? Start one with `make run` in the titan source tree.\n"
            "\n"
            "Batch jobs (submit, job, jobs) go through Redis instead: --redis URL or $TITAN_REDIS\n"
            "(default redis://127.0.0.1:6379); see `titan help submit`.\n"
            "\n"
            "exit status: 0 ok; 1 the worker answered an error (a job failed), a --check failed or a local\n"
            "failure; 2 usage error; 3 the worker (or Redis) is unreachable or did not answer in time.\n",
            CLI_DEFAULT_ENDPOINT);
}

/* Prints the version, as JSON under --json. */
static int s_version(const cli_globals *g)
{
    if (g->json)
        return cli_print_json(
            json_pack("{s:s, s:i}", "version", TITAN_VERSION, "protocol", TITAN_PROTOCOL_VERSION));
    printf("titan %s (wire protocol %d)\n", TITAN_VERSION, TITAN_PROTOCOL_VERSION);
    return CLI_EXIT_OK;
}

/* Runs `titan help [COMMAND]`. */
static int s_cmd_help(int argc, char **argv)
{
    if (argc == 0) {
        s_help_main(stdout);
        return CLI_EXIT_OK;
    }
    const cli_command *cmd = s_find_command(argv[0]);
    if (!cmd || argc > 1) {
        fprintf(stderr, "titan help: no command \"%s\"; run `titan help` for the list\n", argv[0]);
        return CLI_EXIT_USAGE;
    }
    cmd->help(stdout);
    return CLI_EXIT_OK;
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "titan%s%s: ", cmd ? " " : "", cmd ? cmd : "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return CLI_EXIT_USAGE;
}

int cli_unknown_option(const char *cmd, const char *arg)
{
    return cli_usage_error(cmd, "unknown %s \"%s\"; run `titan %s%s--help` for the options",
                           arg[0] == '-' ? "option" : "argument", arg, cmd ? cmd : "", cmd ? " " : "");
}

int cli_match_option(const char *cmd, int argc, char **argv, int *i, const char *name, const char **value)
{
    const char *arg = argv[*i];
    size_t len = strlen(name);
    if (strncmp(arg, name, len) != 0) return 0;
    if (arg[len] == '=') {
        *value = arg + len + 1;
        return 1;
    }
    if (arg[len] != '\0') return 0;
    if (*i + 1 >= argc) {
        cli_usage_error(cmd, "%s needs a value; run `titan %s%s--help`", name, cmd ? cmd : "",
                        cmd ? " " : "");
        return -1;
    }
    *value = argv[++*i];
    return 1;
}

int cli_parse_u64(const char *cmd, const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    /* strtoull accepts spaces, signs ("-1" wraps around) and empty text: check digits first. */
    bool digits = *s != '\0';
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9') digits = false;
    errno = 0;
    char *end = NULL;
    unsigned long long v = digits ? strtoull(s, &end, 10) : 0;
    if (!digits || errno == ERANGE || *end != '\0' || v < min || v > max) {
        cli_usage_error(cmd, "%s expects a whole number from %llu to %llu, not \"%s\"", opt,
                        (unsigned long long)min, (unsigned long long)max, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_global_option(const char *cmd, cli_globals *g, int argc, char **argv, int *i)
{
    const char *v = NULL;
    uint64_t n;
    int r;
    if (strcmp(argv[*i], "--json") == 0) {
        g->json = true;
        return 1;
    }
    if ((r = cli_match_option(cmd, argc, argv, i, "--endpoint", &v)) != 0) {
        if (r < 0) return -1;
        if (!*v) {
            cli_usage_error(cmd, "--endpoint needs a value such as %s", CLI_DEFAULT_ENDPOINT);
            return -1;
        }
        g->endpoint = v;
        return 1;
    }
    if ((r = cli_match_option(cmd, argc, argv, i, "--backends", &v)) != 0) {
        if (r < 0) return -1;
        g->backends = *v ? v : NULL;
        return 1;
    }
    if ((r = cli_match_option(cmd, argc, argv, i, "--server-key", &v)) != 0) {
        if (r < 0) return -1;
        g->server_key = *v ? v : NULL;
        g->server_key_from = "--server-key";
        return 1;
    }
    if ((r = cli_match_option(cmd, argc, argv, i, "--curve-secret", &v)) != 0) {
        if (r < 0) return -1;
        g->curve_secret = *v ? v : NULL;
        g->curve_secret_from = "--curve-secret";
        return 1;
    }
    if ((r = cli_match_option(cmd, argc, argv, i, "--timeout", &v)) != 0) {
        if (r < 0 || cli_parse_u64(cmd, "--timeout", v, 1, CLI_MAX_TIMEOUT_MS, &n) < 0) return -1;
        g->timeout_ms = (int)n;
        return 1;
    }
    if ((r = cli_match_option(cmd, argc, argv, i, "--retries", &v)) != 0) {
        if (r < 0 || cli_parse_u64(cmd, "--retries", v, 0, CLI_MAX_RETRIES, &n) < 0) return -1;
        g->retries = (int)n;
        return 1;
    }
    return 0;
}

int cli_client_new(const cli_globals *g, titan_client **c)
{
    titan_client_opts o;
    cli_curve keys;
    int rc = cli_curve_keys(g, &keys);
    if (rc != CLI_EXIT_OK) return rc;
    titan_client_opts_init(&o);
    o.timeout_ms = g->timeout_ms;
    o.retries = g->retries;
    o.server_key = keys.on ? keys.server : NULL;
    o.public_key = keys.own ? keys.client_public : NULL;
    o.secret_key = keys.own ? keys.client_secret : NULL;
    titan_client *p = titan_client_new(g->endpoint, &o);
    int e = errno;
    explicit_bzero(keys.client_secret, sizeof keys.client_secret);
    if (!p) {
        if (e == EINVAL)
            return cli_usage_error(NULL, "invalid endpoint \"%s\"; expected e.g. %s or ipc:///run/titan.sock",
                                   g->endpoint, CLI_DEFAULT_ENDPOINT);
        if (e == ENOTSUP)
            fprintf(stderr, "titan: this libzmq has no CURVE support, so --server-key cannot be used\n");
        else
            fprintf(stderr, "titan: cannot create a client: %s\n", strerror(e));
        return CLI_EXIT_REMOTE;
    }
    *c = p;
    return CLI_EXIT_OK;
}

/* Returns advice for a stable error code from the worker, or NULL. */
static const char *s_remote_hint(const char *code)
{
    static const struct {
        const char *code, *hint;
    } hints[] = {
        {"busy", "the worker's queue is full; retry in a moment, or start the worker with a larger --queue"},
        {"too_large",
         "the request exceeds the worker's limits; use smaller sizes, or start the worker with a "
         "larger --max-request-bytes"},
        {"timeout", "the request waited too long in the worker's queue; retry when the worker is less busy"},
        {"unsupported", "this worker's backend cannot do that; see `titan info`"},
        {"unknown_op", "the worker is older than this titan; upgrade titan-worker"},
        {"bad_request", "the worker rejected the request; if the arguments look right, please report a bug"},
        {"unauthorized", "the worker requires credentials this client did not send"},
        {"device_error", "the device failed; see the worker's log"},
        {"internal", "the worker hit an internal error; see the worker's log"},
    };
    for (size_t i = 0; i < sizeof hints / sizeof hints[0]; i++)
        if (strcmp(hints[i].code, code) == 0) return hints[i].hint;
    return NULL;
}

int cli_report_failure(const cli_globals *g, const titan_client *c, int rc, const char *what)
{
    const char *code = titan_client_last_code(c);
    const char *msg = titan_client_last_error(c);
    int status = CLI_EXIT_REMOTE;
    if (rc == -ETIMEDOUT) {
        status = CLI_EXIT_UNREACHABLE;
        fprintf(stderr,
                "titan: no answer from %s after %d tr%s of %d ms; is titan-worker running? start it with "
                "`make run`, or point --endpoint/TITAN_ENDPOINT at a running worker (large requests may need "
                "a longer --timeout)%s\n",
                g->endpoint, titan_client_last_retries(c) + 1, titan_client_last_retries(c) ? "ies" : "y",
                g->timeout_ms,
                g->server_key
                    ? ". With --server-key, a worker that refused this client's key does not answer "
                      "either: check that the client's public key is in the worker's --allow-keys "
                      "directory (the worker logs each refusal) and that the server key is the "
                      "worker's"
                    : ". A worker started with --curve-secret answers only clients given its "
                      "--server-key");
        code = "timeout";
    } else if (rc == -EREMOTEIO) {
        const char *hint = s_remote_hint(code);
        fprintf(stderr, "titan: the worker refused the %s: %s (code %s)%s%s\n", what, msg, code,
                hint ? "; " : "", hint ? hint : "");
    } else if (rc == -EPROTO) {
        fprintf(stderr,
                "titan: %s; are titan and titan-worker the same version? (compare `titan --version` "
                "and `titan-worker --version`)\n",
                msg);
        code = "protocol";
    } else {
        fprintf(stderr, "titan: %s failed: %s\n", what, *msg ? msg : strerror(-rc));
        code = "local";
    }
    if (g->json) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:i}", "error", *msg ? msg : strerror(-rc), "code", code,
                              "endpoint", g->endpoint, "exit", status);
        cli_print_json(o);
    }
    return status;
}

int cli_print_json(json_t *obj)
{
    int rc = CLI_EXIT_REMOTE;
    if (obj && json_dumpf(obj, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6)) == 0 &&
        fputc('\n', stdout) != EOF)
        rc = CLI_EXIT_OK;
    else
        fprintf(stderr, "titan: cannot write the JSON output\n");
    json_decref(obj);
    return rc;
}

/* Returns true when `arg` asks for help. */
static bool s_is_help(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

int main(int argc, char **argv)
{
    const char *env = getenv("TITAN_ENDPOINT");
    const char *env_key = getenv("TITAN_SERVER_KEY");
    const char *env_secret = getenv("TITAN_CURVE_SECRET");
    const char *env_backends = getenv("TITAN_BACKENDS");
    cli_globals g = {
        .endpoint = env && *env ? env : CLI_DEFAULT_ENDPOINT,
        .timeout_ms = 5000,
        .retries = 2,
        .json = false,
        .server_key = env_key && *env_key ? env_key : NULL,
        .server_key_from = "TITAN_SERVER_KEY",
        .curve_secret = env_secret && *env_secret ? env_secret : NULL,
        .curve_secret_from = "TITAN_CURVE_SECRET",
        .backends = env_backends && *env_backends ? env_backends : NULL,
    };
    bool version = false;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        int r = cli_global_option(NULL, &g, argc, argv, &i);
        if (r < 0) return CLI_EXIT_USAGE;
        if (r > 0) continue;
        if (s_is_help(argv[i])) {
            s_help_main(stdout);
            return CLI_EXIT_OK;
        }
        if (strcmp(argv[i], "--version") == 0) {
            version = true;
            continue;
        }
        return cli_unknown_option(NULL, argv[i]);
    }
    if (version) return s_version(&g);
    if (i >= argc) {
        fprintf(stderr, "titan: no command given; try `titan ping`, or `titan help` for all commands\n");
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[i];
    int cargc = argc - i - 1;
    char **cargv = argv + i + 1;
    if (strcmp(name, "help") == 0) return s_cmd_help(cargc, cargv);
    const cli_command *cmd = s_find_command(name);
    if (!cmd) {
        fprintf(stderr, "titan: unknown command \"%s\"; run `titan help` for the list of commands\n", name);
        return CLI_EXIT_USAGE;
    }
    for (int j = 0; j < cargc; j++) {
        if (s_is_help(cargv[j])) {
            cmd->help(stdout);
            return CLI_EXIT_OK;
        }
    }
    return cmd->run(&g, cargc, cargv);
}
