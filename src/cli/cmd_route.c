/* cmd_route.c - the backends command and the router plumbing of the titan CLI (--backends FILE). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

void cli_help_backends(FILE *f)
{
    fprintf(f, "usage: titan --backends FILE [--json] backends [--no-probe]\n"
               "\n"
               "Reads compute_backends.yaml FILE (or $TITAN_BACKENDS), pings every backend at once and\n"
               "prints one line each: name, type, endpoint (or local device), health (up; down: it did not\n"
            "answer, and calls go elsewhere until its breaker's cool-down ends), breaker state, p50 ping\n"
               "latency, requests in flight, and the last error. A local backend is opened in this process\n"
               "(OpenBLAS, or CUDA when built with it), so its ping says whether its device works here.\n"
               "\n"
               "options:\n"
               "  --no-probe   only check the file and list the backends; nothing is contacted, so\n"
               "               the state reads \"unprobed\" (--json: \"probed\": false, \"answered\": null)\n"
               "\n"
               "The file (docs/OPERATIONS.md, \"Routing across backends\"):\n"
               "  backends:\n"
               "    primary:   {type: local, device: cuda:0}\n"
               "    secondary:\n"
               "      type: remote\n"
               "      endpoint: tcp://192.168.122.10:5555\n"
               "      device: titan-x-vm\n"
               "      capabilities: [matrix_ops, legacy_inference]\n"
               "      # optional: priority, weight, max_inflight, timeout_ms, server_key, client_key\n"
               "\n"
               "With --backends, `titan matmul` goes to the first healthy backend with room (overflow on\n"
               "busy, failover on timeouts), and `titan matmul --split` divides the rows among them.\n"
               "\n"
               "examples:\n"
               "  titan --backends compute_backends.yaml backends\n"
               "  titan --backends compute_backends.yaml --json backends | jq '.backends[].state'\n"
               "  titan --backends compute_backends.yaml matmul --m 4096 --k 4096 --n 4096 --split --check\n"
               "\n"
               "exit status: 0 every backend answered; 1 some did not; 2 usage error or a bad file;\n"
               "3 no backend answered.\n");
}

int cli_router_new(const cli_globals *g, titan_router **r)
{
    char err[1024];
    *r = titan_router_new_from_file(g->backends, NULL, err, sizeof(err));
    if (!*r) {
        int e = errno;
        fprintf(stderr, "titan: %s\n", err);
        if (g->json)
            cli_print_json(
                json_pack("{s:s, s:s, s:i}", "error", err, "code", "config", "exit", CLI_EXIT_USAGE));
        return e == ENOMEM ? CLI_EXIT_REMOTE : CLI_EXIT_USAGE;
    }
    /* each line "FILE:LINE: unknown field X ignored", said by titan like every other message */
    for (const char *w = titan_router_warnings(*r), *nl; *w; w = nl + 1) {
        if (!(nl = strchr(w, '\n'))) nl = w + strlen(w) - 1;
        fprintf(stderr, "titan: %.*s\n", (int)(nl - w), w);
    }
    return CLI_EXIT_OK;
}

int cli_report_route_failure(const cli_globals *g, int rc, const titan_route_info *info, const char *what)
{
    const char *code = "local";
    int status = CLI_EXIT_REMOTE;
    const char *hint = "";
    switch (rc) {
    case -EBUSY:
        code = "busy";
        status = CLI_EXIT_UNREACHABLE;
        hint = "; retry later, or add a backend";
        break;
    case -EHOSTUNREACH:
        code = "unreachable";
        status = CLI_EXIT_UNREACHABLE;
        hint = "; `titan backends` shows each backend's state and last error";
        break;
    case -ENOTSUP:
        code = "unsupported";
        break;
    case -EREMOTEIO:
        code = "remote";
        break;
    case -EPROTO:
        code = "protocol";
        break;
    case -EINVAL:
        code = "usage";
        status = CLI_EXIT_USAGE;
        break;
    default:
        break;
    }
    const char *msg = info && info->error[0] ? info->error : strerror(-rc);
    fprintf(stderr, "titan: %s failed: %s%s\n", what, msg, hint);
    if (g->json) cli_print_json(json_pack("{s:s, s:s, s:i}", "error", msg, "code", code, "exit", status));
    return status;
}

static const char *s_type_name(titan_route_type t)
{
    return t == TITAN_ROUTE_LOCAL ? "local" : "remote";
}

/* What a probed backend's breaker means to a reader: up (closed), down (open: it failed and gets no calls
 * until its cool-down ends), or recovering (half-open: trial calls go through). */
static const char *s_health_name(titan_breaker_state st)
{
    return st == TITAN_BREAKER_CLOSED ? "up" : st == TITAN_BREAKER_OPEN ? "down" : "recovering";
}

/* One backend for --json. Unprobed, it has no breaker state to speak of: "state" is null, "probed" false. */
static json_t *s_status_json(const titan_backend_status *s, bool probed)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:f, s:i, s:i, s:s, s:i, s:I, s:I, s:I, s:I, s:I}",
                          "name", s->name, "type", s_type_name(s->type), "endpoint", s->endpoint, "device",
                          s->device, "capabilities", s->capabilities, "priority", s->priority, "weight",
                          s->weight, "max_inflight", s->max_inflight, "timeout_ms", s->timeout_ms, "state",
                          titan_breaker_state_name(s->state), "inflight", s->inflight, "requests",
                          (json_int_t)s->requests, "ok", (json_int_t)s->ok, "busy", (json_int_t)s->busy,
                          "failures", (json_int_t)s->failures, "probes", (json_int_t)s->probes);
    if (!o) return NULL;
    json_object_set_new(o, "probed", json_boolean(probed));
    json_object_set_new(o, "health", probed ? json_string(s_health_name(s->state)) : json_null());
    if (!probed) json_object_set_new(o, "state", json_null());
    json_object_set_new(o, "p50_ms", s->p50_ms >= 0 ? json_real(s->p50_ms) : json_null());
    json_object_set_new(o, "p99_ms", s->p99_ms >= 0 ? json_real(s->p99_ms) : json_null());
    json_object_set_new(o, "last_error", s->last_error[0] ? json_string(s->last_error) : json_null());
    return o;
}

int cli_cmd_backends(cli_globals *g, int argc, char **argv)
{
    const char *cmd = "backends";
    bool probe = true;
    for (int i = 0; i < argc; i++) {
        int r = cli_global_option(cmd, g, argc, argv, &i);
        if (r < 0) return CLI_EXIT_USAGE;
        if (r > 0) continue;
        if (strcmp(argv[i], "--no-probe") == 0) {
            probe = false;
            continue;
        }
        return cli_unknown_option(cmd, argv[i]);
    }
    if (!g->backends)
        return cli_usage_error(cmd, "give the backends file: titan --backends compute_backends.yaml backends "
                                    "(or set TITAN_BACKENDS)");
    titan_router *r = NULL;
    int rc = cli_router_new(g, &r);
    if (rc != CLI_EXIT_OK) return rc;
    size_t n = titan_router_backend_count(r);
    int up = probe ? titan_router_probe(r) : 0; /* unprobed, nothing answered: nothing was asked */
    json_t *arr = g->json ? json_array() : NULL;
    if (!g->json)
        printf("%-16s %-6s %-32s %-10s %-9s %9s %8s  %s\n", "NAME", "TYPE", "ENDPOINT", "HEALTH", "STATE", "P50",
               "INFLIGHT", "LAST ERROR");
    for (size_t i = 0; i < n; i++) {
        titan_backend_status s;
        if (titan_router_backend_status(r, i, &s) != 0) continue;
        if (g->json) {
            json_array_append_new(arr, s_status_json(&s, probe));
            continue;
        }
        char where[300], p50[32];
        if (s.type == TITAN_ROUTE_LOCAL)
            snprintf(where, sizeof(where), "(local %s)", s.device);
        else
            snprintf(where, sizeof(where), "%s", s.endpoint);
        if (s.p50_ms >= 0)
            snprintf(p50, sizeof(p50), "%.2f ms", s.p50_ms);
        else
            snprintf(p50, sizeof(p50), "-");
        printf("%-16s %-6s %-32s %-10s %-9s %9s %8d  %s\n", s.name, s_type_name(s.type), where,
               probe ? s_health_name(s.state) : "-", probe ? titan_breaker_state_name(s.state) : "unprobed",
               p50, s.inflight, s.last_error[0] ? s.last_error : "-");
    }
    rc = !probe || up == (int)n ? CLI_EXIT_OK : up > 0 ? CLI_EXIT_REMOTE : CLI_EXIT_UNREACHABLE;
    if (g->json) {
        json_t *o = json_pack("{s:s, s:o, s:b, s:o, s:i}", "file", g->backends, "backends", arr, "probed",
                              probe, "answered", probe ? json_integer(up) : json_null(), "total", (int)n);
        int prc = cli_print_json(o);
        if (rc == CLI_EXIT_OK) rc = prc;
    } else if (probe && up < (int)n) {
        fprintf(stderr, "titan backends: %d of %zu backends answered; see LAST ERROR above\n", up, n);
    } else if (!probe) {
        fprintf(stderr, "titan backends: %s is valid; %zu backend%s, not probed (--no-probe)\n", g->backends,
                n, n == 1 ? "" : "s");
    }
    titan_router_destroy(&r);
    return rc;
}
