/* cmd_keygen.c - the keygen command of the titan CLI, and loading of the CURVE keys given to it. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <czmq.h>
#include <zmq.h>

#include "cli.h"
#include "zpl.h"

#define S_KEY_BYTES 32
#define S_MAX_NAME 200
/* Certificates are a few hundred bytes; anything far larger is not one. */

/* Returns true when `key` is 40 characters of Z85 that decode to a 32-byte key. */
static bool s_z85_key_ok(const char *key)
{
    uint8_t bin[S_KEY_BYTES];
    return strlen(key) == 40 && zmq_z85_decode(bin, key) != NULL;
}

/* Returns true when `path` is a small file that parses as ZPL (a CZMQ certificate's format). */
static bool s_zpl_ok(const char *path)
{
    zconfig_t *root = titan_zpl_load(path);
    bool ok = root != NULL;
    zconfig_destroy(&root);
    return ok;
}

/* Loads the certificate `path` for option `opt`. Returns it (the caller's), or prints why and returns NULL.
 */
static zcert_t *s_load_cert(const char *opt, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        cli_usage_error(NULL, "cannot read %s %s: %s", opt, path, strerror(errno));
        return NULL;
    }
    /* zcert_load reads PATH_secret when it exists, else PATH. */
    char used[PATH_MAX];
    if ((size_t)snprintf(used, sizeof(used), "%s_secret", path) >= sizeof(used) || stat(used, &st) != 0)
        snprintf(used, sizeof(used), "%s", path);
    zcert_t *cert = s_zpl_ok(used) ? zcert_load(path) : NULL;
    if (!cert)
        cli_usage_error(NULL, "%s: %s is not a CZMQ certificate file (make one with `titan keygen`)", opt,
                        used);
    return cert;
}

int cli_curve_keys(const cli_globals *g, cli_curve *out)
{
    memset(out, 0, sizeof(*out));
    if (!g->server_key) {
        /* TITAN_CURVE_SECRET alone is ignored, so it can stay exported for plain local workers. */
        if (g->curve_secret && strcmp(g->curve_secret_from, "--curve-secret") == 0)
            return cli_usage_error(NULL, "--curve-secret needs --server-key (the worker's public key or its "
                                         "public certificate file)");
        return CLI_EXIT_OK;
    }
    struct stat st;
    if (stat(g->server_key, &st) == 0) {
        zcert_t *cert = s_load_cert(g->server_key_from, g->server_key);
        if (!cert) return CLI_EXIT_USAGE;
        snprintf(out->server, sizeof(out->server), "%s", zcert_public_txt(cert));
        zcert_destroy(&cert);
    } else if (s_z85_key_ok(g->server_key)) {
        snprintf(out->server, sizeof(out->server), "%s", g->server_key);
    } else {
        return cli_usage_error(
            NULL,
            "%s expects the worker's public key (40 Z85 characters, printed by `titan keygen` "
            "and in the worker's log) or its public certificate file, not \"%s\"",
            g->server_key_from, g->server_key);
    }
    out->on = true;
    if (!g->curve_secret) return CLI_EXIT_OK;
    zcert_t *cert = s_load_cert(g->curve_secret_from, g->curve_secret);
    if (!cert) return CLI_EXIT_USAGE;
    static const uint8_t zero[S_KEY_BYTES];
    int rc = CLI_EXIT_OK;
    if (memcmp(zcert_secret_key(cert), zero, S_KEY_BYTES) == 0) {
        rc = cli_usage_error(
            NULL,
            "%s %s holds no secret key: give this client's secret certificate (NAME_secret from "
            "`titan keygen`)",
            g->curve_secret_from, g->curve_secret);
    } else {
        snprintf(out->client_public, sizeof(out->client_public), "%s", zcert_public_txt(cert));
        snprintf(out->client_secret, sizeof(out->client_secret), "%s", zcert_secret_txt(cert));
        out->own = true;
    }
    zcert_destroy(&cert);
    return rc;
}

void cli_help_keygen(FILE *f)
{
    fprintf(
        f,
        "usage: titan keygen [--out DIR] [--name NAME] [--force] [--json]\n"
        "\n"
        "Makes a CURVE key pair, for a worker or for a client, as two CZMQ certificate files:\n"
        "  DIR/NAME          the public certificate: give it to the other side\n"
        "  DIR/NAME_secret   the secret certificate (mode 0600): keep it private\n"
        "and prints the public key.\n"
        "\n"
        "options:\n"
        "  --out DIR     where to write the files (default: the current directory; created\n"
        "                with mode 0700 when missing)\n"
        "  --name NAME   the file name (default: titan)\n"
        "  --force       replace existing files (whoever used the old key is refused from then on)\n"
        "\n"
        "examples:\n"
        "  titan keygen --name worker         # titan-worker --curve-secret worker_secret --allow-keys "
        "clients/\n"
        "  titan keygen --out clients --name alice\n"
        "  titan --server-key worker --curve-secret clients/alice_secret ping\n"
        "  titan keygen --name alice --json   # "
        "{\"public_key\":...,\"public_file\":...,\"secret_file\":...}\n"
        "\n"
        "Admit a client by copying its public certificate (not the _secret one) into the\n"
        "worker's --allow-keys directory; remove it to refuse the client: new connections are\n"
        "refused, and a connection already open gets \"unauthorized\" on its next request.\n"
        "No restart needed.\n"
        "\n"
        "exit status: 0 written; 1 the files exist (without --force) or cannot be written; 2 usage error.\n");
}

/* Reports a keygen failure (printf-style) on stderr, and as JSON on stdout under --json. Returns
 * CLI_EXIT_REMOTE. */
__attribute__((format(printf, 3, 4))) static int s_fail(const cli_globals *g, const char *code,
                                                        const char *fmt, ...)
{
    char msg[PATH_MAX + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "titan keygen: %s\n", msg);
    if (g->json)
        cli_print_json(json_pack("{s:s, s:s, s:i}", "error", msg, "code", code, "exit", CLI_EXIT_REMOTE));
    return CLI_EXIT_REMOTE;
}

/* Returns true when something (a file, a link, anything) is at `path`. */
static bool s_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 || errno != ENOENT;
}

int cli_cmd_keygen(cli_globals *g, int argc, char **argv)
{
    const char *dir = ".", *name = "titan";
    bool force = false;
    for (int i = 0; i < argc; i++) {
        int r = cli_global_option("keygen", g, argc, argv, &i);
        if (r < 0) return CLI_EXIT_USAGE;
        if (r > 0) continue;
        if (strcmp(argv[i], "--force") == 0) {
            force = true;
            continue;
        }
        if ((r = cli_match_option("keygen", argc, argv, &i, "--out", &dir)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            continue;
        }
        if ((r = cli_match_option("keygen", argc, argv, &i, "--name", &name)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            continue;
        }
        return cli_unknown_option("keygen", argv[i]);
    }
    if (!*dir) return cli_usage_error("keygen", "--out needs a directory");
    if (!*name || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
        strlen(name) > S_MAX_NAME)
        return cli_usage_error("keygen",
                               "--name must be a file name of 1 to %d characters without '/', not \"%s\"",
                               S_MAX_NAME, name);
    char pub[PATH_MAX], sec[PATH_MAX];
    if ((size_t)snprintf(pub, sizeof(pub), "%s/%s", dir, name) >= sizeof(pub) ||
        (size_t)snprintf(sec, sizeof(sec), "%s/%s_secret", dir, name) >= sizeof(sec))
        return cli_usage_error("keygen", "--out %s is too long", dir);

    struct stat st;
    if (stat(dir, &st) != 0) {
        if (errno != ENOENT || mkdir(dir, 0700) != 0)
            return s_fail(g, "local", "cannot use --out %s: %s", dir, strerror(errno));
    } else if (!S_ISDIR(st.st_mode)) {
        return s_fail(g, "local", "--out %s is not a directory", dir);
    }
    const char *existing = s_exists(pub) ? pub : s_exists(sec) ? sec : NULL;
    if (existing && !force)
        return s_fail(
            g, "exists",
            "%s already exists; pass --force to replace the key pair (whoever uses the old key is then "
            "refused), or choose another --name",
            existing);
    /* Remove rather than overwrite: a rewritten file would keep its old mode, and a link its target. */
    const char *paths[] = {pub, sec};
    for (int i = 0; force && i < 2; i++)
        if (unlink(paths[i]) != 0 && errno != ENOENT)
            return s_fail(g, "local", "cannot replace %s: %s", paths[i], strerror(errno));

    zcert_t *cert = zcert_new();
    if (!cert) return s_fail(g, "local", "cannot make a key pair (is libzmq built with CURVE?)");
    zcert_set_meta(cert, "name", "%s", name);
    zcert_set_meta(cert, "created-by", "titan keygen %s", TITAN_VERSION);
    int rc = CLI_EXIT_OK;
    /* CZMQ writes the secret certificate with umask 077; the chmod covers odd file systems. */
    if (zcert_save_secret(cert, sec) != 0 || chmod(sec, 0600) != 0) {
        rc = s_fail(g, "local", "cannot write %s: %s", sec, strerror(errno));
        goto out;
    }
    if (zcert_save_public(cert, pub) != 0) {
        rc = s_fail(g, "local", "cannot write %s: %s", pub, strerror(errno));
        unlink(sec);
        goto out;
    }
    if (g->json) {
        rc = cli_print_json(json_pack("{s:s, s:s, s:s}", "public_key", zcert_public_txt(cert), "public_file",
                                      pub, "secret_file", sec));
    } else {
        printf("public key:          %s\n", zcert_public_txt(cert));
        printf("public certificate:  %s   (share it: a worker's --allow-keys directory, or a client's "
               "--server-key)\n",
               pub);
        printf("secret certificate:  %s   (keep it private: --curve-secret)\n", sec);
    }
out:
    zcert_destroy(&cert);
    return rc;
}
