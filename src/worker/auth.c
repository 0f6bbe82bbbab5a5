/* auth.c - CURVE security for the worker: server key, loopback-only rule, and a ZAP 1.0 handler thread. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <czmq.h>
#include <zmq.h>

#include "auth.h"
#include "clock.h"
#include "zpl.h"
#include "log.h"

#define S_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define S_ZAP_DOMAIN "titan"
#define S_KEY_BYTES 32
/* Caps on what the allow-keys directory can make us hold or read. */
#define S_MAX_KEYS 65536
/* How often the allow-keys files are compared with what was loaded, at most. */
#define S_RESCAN_MS 1000
/* Refusals logged per second; the others are counted and reported with the next logged one. */
#define S_LOG_PER_SEC 5
/* A ZAP request has 6 frames plus the credentials (1 frame for CURVE); more is malformed. */
#define S_ZAP_MAX_FRAMES 12
/* How long an admission waits before its ZAP reply goes out (see s_handle_zap). */
#define S_ZAP_REPLY_DELAY_NS 500000

struct titan_auth {
    void *zap;      /* REP on S_ZAP_ENDPOINT; the handler thread's once started */
    void *ctl;      /* PAIR: destroy sends one message here to stop the thread */
    void *ctl_peer; /* PAIR: the thread's end */
    void *mon;      /* PAIR: the router's failed-handshake events (no CURVE, wrong server key) */
    pthread_t thread;
    bool started;
    atomic_ullong refused;
    char *allow_dir; /* NULL: every CURVE key is admitted */

    /* The key set, shared by the handler thread (new connections) and the I/O thread
     * (every request of a connected client, so a revoked key stops working at once). */
    pthread_mutex_t keys_mu;
    uint8_t (*keys)[S_KEY_BYTES]; /* sorted, for bsearch */
    size_t nkeys;
    bool loaded;  /* keys reflect the directory as of `sig` */
    uint64_t sig; /* signature of the directory listing (names, sizes, mtimes) */
    struct timespec dir_mtime;
    int64_t last_scan_ms;
    int64_t log_window_ms; /* start of the current one-second refusal log window */
    int logged_in_window;
    unsigned long long unlogged;
};

/* Returns true when `host` (no brackets, no port) names only this machine. */
static bool s_host_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (strcasecmp(host, "localhost") == 0) return true;
    if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1) {
        if (IN6_IS_ADDR_LOOPBACK(&a6)) return true;
        return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
    }
    return false;
}

/* Returns true when a bind to `ep` is reachable from this machine only (loopback TCP, ipc, inproc).
 * Wildcards ("*", 0.0.0.0), interface names and host names count as reachable from elsewhere. */
static bool s_endpoint_is_loopback(const char *ep)
{
    if (strncmp(ep, "ipc://", 6) == 0 || strncmp(ep, "inproc://", 9) == 0) return true;
    if (strncmp(ep, "tcp://", 6) != 0) return false;
    const char *host = ep + 6;
    const char *colon = strrchr(host, ':');
    if (!colon || strchr(host, ';')) return false;
    size_t len = (size_t)(colon - host);
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
        host++;
        len -= 2;
    }
    char buf[INET6_ADDRSTRLEN + 8];
    if (len == 0 || len >= sizeof(buf)) return false;
    memcpy(buf, host, len);
    buf[len] = '\0';
    return s_host_is_loopback(buf);
}

/* Without CURVE: refuses non-loopback binds unless cfg->insecure. Returns 0 or -EPERM with err set. */
static int s_check_plain_binds(const titan_config *cfg, char *err, size_t errcap)
{
    for (int i = 0; i < cfg->nbinds; i++) {
        if (s_endpoint_is_loopback(cfg->binds[i])) continue;
        if (cfg->insecure) {
            titan_log(
                TITAN_LOG_WARN,
                "--insecure: %s is served without authentication or encryption; anyone who can reach it "
                "can use this worker",
                cfg->binds[i]);
            continue;
        }
        snprintf(
            err, errcap,
            "refusing to bind %s without authentication: it is reachable from other machines. Give the "
            "worker a key with --curve-secret FILE (make one with `titan keygen`) and admit clients with "
            "--allow-keys DIR, or pass --insecure to serve it unauthenticated on a trusted network",
            cfg->binds[i]);
        return -EPERM;
    }
    return 0;
}

/* qsort/bsearch order of raw keys. */
static int s_key_cmp(const void *a, const void *b)
{
    return memcmp(a, b, S_KEY_BYTES);
}

/* FNV-1a over `n` bytes, continuing from `h`. */
static uint64_t s_fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

/* Returns true for a directory entry that may hold a public certificate (not hidden, not a
 * CZMQ secret certificate), and its stat in *st. */
static bool s_candidate(const char *dir, const char *name, char *path, size_t pathcap, struct stat *st)
{
    size_t len = strlen(name);
    if (name[0] == '.') return false;
    if (len > 7 && strcmp(name + len - 7, "_secret") == 0) return false;
    if ((size_t)snprintf(path, pathcap, "%s/%s", dir, name) >= pathcap) return false;
    return stat(path, st) == 0 && S_ISREG(st->st_mode);
}

/* Returns a signature of the listing of the allow-keys directory, or 0 when it cannot be read. */
static uint64_t s_dir_signature(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    /* Order-independent (readdir order may change): sum the per-entry hashes. */
    uint64_t sum = 0x9e3779b97f4a7c15ULL;
    struct dirent *de;
    char path[4096];
    while ((de = readdir(d)) != NULL) {
        struct stat st;
        if (!s_candidate(dir, de->d_name, path, sizeof(path), &st)) continue;
        uint64_t h = s_fnv(0xcbf29ce484222325ULL, de->d_name, strlen(de->d_name));
        h = s_fnv(h, &st.st_size, sizeof(st.st_size));
        h = s_fnv(h, &st.st_mtim, sizeof(st.st_mtim));
        h = s_fnv(h, &st.st_ino, sizeof(st.st_ino));
        sum += h;
    }
    closedir(d);
    return sum ? sum : 1;
}

/* Reads the public key of the certificate file `path` into `key`. Returns 0, or -EINVAL when it
 * is not a certificate with a valid 40-character Z85 public key. */
static int s_read_public_key(const char *path, uint8_t key[S_KEY_BYTES])
{
    /* Not zcert_load: it prefers PATH_secret and accepts a malformed key. */
    zconfig_t *root = titan_zpl_load(path);
    if (!root) return -EINVAL;
    const char *txt = zconfig_get(root, "/curve/public-key", NULL);
    int rc = txt && strlen(txt) == 40 && zmq_z85_decode(key, txt) ? 0 : -EINVAL;
    zconfig_destroy(&root);
    return rc;
}

/* Loads every public certificate of the allow-keys directory, replacing the key set. On a
 * directory that cannot be read, the set becomes empty: a revoked directory admits nobody. */
static void s_load_keys(titan_auth *a, uint64_t sig)
{
    uint8_t(*keys)[S_KEY_BYTES] = NULL;
    size_t n = 0, cap = 0, bad = 0;
    bool capped = false;
    DIR *d = opendir(a->allow_dir);
    if (!d) {
        titan_log(TITAN_LOG_WARN, "--allow-keys %s cannot be read (%s): refusing every client until it can",
                  a->allow_dir, strerror(errno));
    } else {
        struct dirent *de;
        char path[4096];
        while ((de = readdir(d)) != NULL) {
            struct stat st;
            if (!s_candidate(a->allow_dir, de->d_name, path, sizeof(path), &st)) continue;
            if (n == S_MAX_KEYS) {
                capped = true;
                break;
            }
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 16;
                void *p = realloc(keys, ncap * sizeof(*keys));
                if (!p) break;
                keys = p;
                cap = ncap;
            }
            if (s_read_public_key(path, keys[n]) != 0) {
                titan_log(TITAN_LOG_WARN,
                          "--allow-keys: %s is not a public certificate with a valid key; ignored", path);
                bad++;
                continue;
            }
            n++;
        }
        closedir(d);
        if (capped)
            titan_log(TITAN_LOG_WARN, "--allow-keys %s: only the first %d keys are used", a->allow_dir,
                      S_MAX_KEYS);
    }
    if (n) qsort(keys, n, sizeof(*keys), s_key_cmp);
    free(a->keys);
    a->keys = keys;
    a->nkeys = n;
    a->sig = sig;
    a->loaded = true;
    titan_log(TITAN_LOG_INFO, "allow-keys: %zu client key%s admitted from %s%s", n, n == 1 ? "" : "s",
              a->allow_dir, bad ? " (some files ignored)" : "");
}

/* Brings the key set up to date: at once when the directory itself changed (a file added,
 * removed or renamed), else at most every S_RESCAN_MS (a file rewritten in place). */
static void s_refresh_keys(titan_auth *a)
{
    int64_t now = titan_clock_mono_ms64();
    struct stat st;
    struct timespec mtime = {0};
    if (stat(a->allow_dir, &st) == 0) mtime = st.st_mtim;
    bool dir_changed = mtime.tv_sec != a->dir_mtime.tv_sec || mtime.tv_nsec != a->dir_mtime.tv_nsec;
    if (a->loaded && !dir_changed && now - a->last_scan_ms < S_RESCAN_MS) return;
    a->last_scan_ms = now;
    a->dir_mtime = mtime;
    uint64_t sig = s_dir_signature(a->allow_dir);
    if (!a->loaded || sig != a->sig) s_load_keys(a, sig);
}

/* Counts one refused client and logs "refused a client <fmt...>", at most S_LOG_PER_SEC lines a second. */
__attribute__((format(printf, 2, 3))) static void s_refused(titan_auth *a, const char *fmt, ...)
{
    atomic_fetch_add(&a->refused, 1);
    int64_t now = titan_clock_mono_ms64();
    if (now - a->log_window_ms >= 1000) {
        a->log_window_ms = now;
        a->logged_in_window = 0;
    }
    if (a->logged_in_window >= S_LOG_PER_SEC) {
        a->unlogged++;
        return;
    }
    a->logged_in_window++;
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (a->unlogged)
        titan_log(TITAN_LOG_WARN, "refused a client %s (and %llu more refusals not logged)", why,
                  a->unlogged);
    else
        titan_log(TITAN_LOG_WARN, "refused a client %s", why);
    a->unlogged = 0;
}

/* Copies frame `m` as a NUL-terminated string into buf (truncated). */
static void s_frame_str(zmq_msg_t *m, char *buf, size_t cap)
{
    size_t n = zmq_msg_size(m);
    if (n >= cap) n = cap - 1;
    memcpy(buf, zmq_msg_data(m), n);
    buf[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] > 0x7e) buf[i] = '?';
}

/* Appends one ZMTP metadata property (a 1-byte name length, the name, a 4-byte big-endian value
 * length, the value) to buf at *len; returns false when it does not fit. */
static bool s_put_property(uint8_t *buf, size_t cap, size_t *len, const char *name, const char *value)
{
    size_t n = strlen(name), v = strlen(value);
    if (n > 255 || *len + 1 + n + 4 + v > cap) return false;
    uint8_t *p = buf + *len;
    *p++ = (uint8_t)n;
    memcpy(p, name, n);
    p += n;
    *p++ = (uint8_t)(v >> 24);
    *p++ = (uint8_t)(v >> 16);
    *p++ = (uint8_t)(v >> 8);
    *p++ = (uint8_t)v;
    memcpy(p, value, v);
    *len += 1 + n + 4 + v;
    return true;
}

/* Makes a fresh routing id ("c-" and 32 hex digits from 16 random bytes). Returns 0 or -errno. */
static int s_new_routing_id(char id[TITAN_AUTH_ROUTING_ID_LEN + 1])
{
    uint8_t r[16];
    size_t got = 0;
    while (got < sizeof(r)) {
        ssize_t n = getrandom(r + got, sizeof(r) - got, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        got += (size_t)n;
    }
    memcpy(id, "c-", 2);
    for (size_t i = 0; i < sizeof(r); i++) snprintf(id + 2 + 2 * i, 3, "%02x", r[i]);
    return 0;
}

/* Answers one ZAP request (RFC 27) waiting on a->zap. Returns 0, or -errno when the socket failed. */
static int s_handle_zap(titan_auth *a)
{
    zmq_msg_t f[S_ZAP_MAX_FRAMES], extra;
    int n = 0, more = 1, rc = 0;
    bool overflow = false;
    /* Read the whole request; frames beyond S_ZAP_MAX_FRAMES are dropped and make it malformed. */
    while (more) {
        zmq_msg_t *m = n < S_ZAP_MAX_FRAMES ? &f[n] : &extra;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, a->zap, 0) < 0) {
            rc = -errno;
            zmq_msg_close(m);
            if (rc == -EINTR) continue;
            goto out;
        }
        more = zmq_msg_more(m);
        if (m == &extra) {
            zmq_msg_close(m);
            overflow = true;
        } else {
            n++;
        }
    }
    const char *status = "200", *text = "OK";
    char user[64] = "", address[64] = "?", mech[32] = "", key_txt[41] = "";
    char rid[TITAN_AUTH_ROUTING_ID_LEN + 1] = "";
    uint8_t meta[128];
    size_t meta_len = 0;
    bool valid =
        !overflow && n >= 6 && zmq_msg_size(&f[0]) == 3 && memcmp(zmq_msg_data(&f[0]), "1.0", 3) == 0;
    if (!valid) {
        status = "500";
        text = "malformed ZAP request";
    } else {
        s_frame_str(&f[3], address, sizeof(address));
        s_frame_str(&f[5], mech, sizeof(mech));
        bool domain_ok = zmq_msg_size(&f[2]) == strlen(S_ZAP_DOMAIN) &&
                         memcmp(zmq_msg_data(&f[2]), S_ZAP_DOMAIN, strlen(S_ZAP_DOMAIN)) == 0;
        if (!domain_ok || strcmp(mech, "CURVE") != 0 || n != 7 || zmq_msg_size(&f[6]) != S_KEY_BYTES) {
            status = "400";
            text = "only CURVE clients are admitted";
            if (strcmp(mech, "CURVE") != 0)
                s_refused(a, "from %s: it uses the %s mechanism, not CURVE", address, mech);
            else
                s_refused(a, "from %s: malformed ZAP request for domain \"%.*s\"", address,
                          (int)(zmq_msg_size(&f[2]) < 64 ? zmq_msg_size(&f[2]) : 64),
                          (char *)zmq_msg_data(&f[2]));
        } else {
            const uint8_t *key = zmq_msg_data(&f[6]);
            zmq_z85_encode(key_txt, key, S_KEY_BYTES);
            if (a->allow_dir) {
                pthread_mutex_lock(&a->keys_mu);
                s_refresh_keys(a);
                bool known = a->nkeys && bsearch(key, a->keys, a->nkeys, S_KEY_BYTES, s_key_cmp);
                pthread_mutex_unlock(&a->keys_mu);
                if (!known) {
                    status = "400";
                    text = "client key not admitted";
                    s_refused(a, "from %s: its public key %s is not in --allow-keys %s", address, key_txt,
                              a->allow_dir);
                }
            }
            /* The connection's routing id is ours to give, not the client's to choose: "Identity" in
             * the reply's metadata replaces the one the client sent, so that no connection can take
             * the routing id (and with it the replies) of another. A copy under our own name lets the
             * I/O thread check that it took (TITAN_AUTH_ROUTING_ID). */
            if (strcmp(status, "200") == 0 &&
                (s_new_routing_id(rid) != 0 || !s_put_property(meta, sizeof(meta), &meta_len, "Identity", rid) ||
                 !s_put_property(meta, sizeof(meta), &meta_len, TITAN_AUTH_ROUTING_ID, rid))) {
                status = "300";
                text = "no routing id could be made for the connection; try again";
                meta_len = 0;
                titan_log(TITAN_LOG_WARN, "refused a client from %s for now: no random routing id (%s)", address,
                          strerror(errno));
            }
            if (strcmp(status, "200") == 0) {
                snprintf(user, sizeof(user), "%s", key_txt);
                titan_log_debug("admitted CURVE client %s from %s as routing id %s", key_txt, address, rid);
            }
        }
    }
    if (meta_len) {
        /* libzmq 4.3 (curve_server.cpp, process_initiate) sends the ZAP request, looks once for a reply at
         * once, and only then reads the client's own metadata: a reply that is already there is read
         * first, and the client's "Identity" then replaces ours. Waking this thread often preempts
         * libzmq's I/O thread right in between (a third of the connections, measured). Let that thread
         * go past its look first: it needs a microsecond; under four busy loops on two cores, 500 us
         * left no connection with its client's routing id in 500. The I/O thread checks the rare one
         * that still does (TITAN_AUTH_ROUTING_ID). */
        sched_yield();
        struct timespec delay = {0, S_ZAP_REPLY_DELAY_NS};
        while (nanosleep(&delay, &delay) != 0 && errno == EINTR) {
        }
    }
    /* Reply: version, request id, status code, status text, user id, metadata. */
    const void *reqid = n >= 2 ? zmq_msg_data(&f[1]) : "";
    size_t reqid_len = n >= 2 ? zmq_msg_size(&f[1]) : 0;
    if (zmq_send(a->zap, "1.0", 3, ZMQ_SNDMORE) < 0 || zmq_send(a->zap, reqid, reqid_len, ZMQ_SNDMORE) < 0 ||
        zmq_send(a->zap, status, 3, ZMQ_SNDMORE) < 0 ||
        zmq_send(a->zap, text, strlen(text), ZMQ_SNDMORE) < 0 ||
        zmq_send(a->zap, user, strlen(user), ZMQ_SNDMORE) < 0 || zmq_send(a->zap, meta, meta_len, 0) < 0)
        rc = -errno;
out:
    for (int i = 0; i < n; i++)
        zmq_msg_close(&f[i]);
    return rc;
}

/* Reads one monitor event of the router (a handshake that failed before ZAP was asked) and
 * counts it as a refusal. Returns 0 or -errno. */
static int s_handle_monitor(titan_auth *a)
{
    zmq_msg_t ev, ep;
    zmq_msg_init(&ev);
    zmq_msg_init(&ep);
    int rc = 0;
    if (zmq_msg_recv(&ev, a->mon, 0) < 0 || (zmq_msg_more(&ev) && zmq_msg_recv(&ep, a->mon, 0) < 0)) {
        rc = -errno;
        goto out;
    }
    if (zmq_msg_size(&ev) != 6) goto out;
    uint16_t event;
    uint32_t value;
    memcpy(&event, zmq_msg_data(&ev), sizeof(event));
    memcpy(&value, (const char *)zmq_msg_data(&ev) + 2, sizeof(value));
    if (event != ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) goto out;
    char where[128];
    s_frame_str(&ep, where, sizeof(where));
    if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        s_refused(a,
                  "on %s: it does not use CURVE (a client needs the worker's public key: titan --server-key)",
                  where);
    else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
        s_refused(a, "on %s: its CURVE handshake failed (it may use another server key than this worker's)",
                  where);
    else
        s_refused(a, "on %s: its handshake failed (ZMTP protocol error 0x%x)", where, (unsigned)value);
out:
    zmq_msg_close(&ev);
    zmq_msg_close(&ep);
    return rc;
}

/* The ZAP handler thread: answers requests and watches handshakes until destroy writes to the control pipe.
 */
static void *s_zap_main(void *arg)
{
    titan_auth *a = arg;
    for (;;) {
        zmq_pollitem_t items[] = {{.socket = a->ctl_peer, .events = ZMQ_POLLIN},
                                  {.socket = a->zap, .events = ZMQ_POLLIN},
                                  {.socket = a->mon, .events = ZMQ_POLLIN}};
        if (zmq_poll(items, 3, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (items[0].revents & ZMQ_POLLIN) break;
        if ((items[1].revents & ZMQ_POLLIN) && s_handle_zap(a) == -ETERM) break;
        if ((items[2].revents & ZMQ_POLLIN) && s_handle_monitor(a) == -ETERM) break;
    }
    return NULL;
}

/* Loads the worker's secret certificate and makes `router` a CURVE server. Returns 0 or -errno with err. */
static int s_setup_server_key(void *router, const char *path, char *err, size_t errcap)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        int e = errno;
        snprintf(err, errcap, "cannot read --curve-secret %s: %s (make a key pair with `titan keygen`)", path,
                 strerror(e));
        return -e;
    }
    /* zcert_load reads PATH_secret instead of PATH when there is one: check what it will read. */
    char used[4096];
    struct stat sst;
    if ((size_t)snprintf(used, sizeof(used), "%s_secret", path) >= sizeof(used) || stat(used, &sst) != 0) {
        snprintf(used, sizeof(used), "%s", path);
        sst = st;
    }
    zconfig_t *zpl = titan_zpl_load(used);
    zcert_t *cert = zpl ? zcert_load(path) : NULL;
    zconfig_destroy(&zpl);
    if (!cert) {
        snprintf(err, errcap,
                 "--curve-secret: %s is not a readable CZMQ certificate file (make one with `titan "
                 "keygen`)",
                 used);
        return -EINVAL;
    }
    static const uint8_t zero[S_KEY_BYTES];
    int rc = 0;
    if (memcmp(zcert_secret_key(cert), zero, S_KEY_BYTES) == 0) {
        snprintf(err, errcap,
                 "--curve-secret %s holds no secret key: give the secret certificate (NAME_secret "
                 "from `titan keygen`), not the public one",
                 path);
        rc = -EINVAL;
        goto out;
    }
    /* Group read is how a service account is usually given the file (root:titan 0640). */
    if ((sst.st_mode & 027) != 0)
        titan_log(TITAN_LOG_WARN, "--curve-secret: %s can be read or written by other users (mode %03o); chmod 600 "
                  "(or 640 for the service's group) it", used, (unsigned)(sst.st_mode & 0777));
    int on = 1;
    if (zmq_setsockopt(router, ZMQ_CURVE_SERVER, &on, sizeof(on)) != 0 ||
        zmq_setsockopt(router, ZMQ_CURVE_SECRETKEY, zcert_secret_key(cert), S_KEY_BYTES) != 0 ||
        zmq_setsockopt(router, ZMQ_ZAP_DOMAIN, S_ZAP_DOMAIN, strlen(S_ZAP_DOMAIN)) != 0) {
        rc = -errno;
        snprintf(err, errcap, "cannot enable CURVE on the socket: %s", zmq_strerror(errno));
        goto out;
    }
    titan_log(TITAN_LOG_INFO, "CURVE on: server public key %s (from %s)", zcert_public_txt(cert), used);
out:
    zcert_destroy(&cert);
    return rc;
}

int titan_auth_setup(void *ctx, void *router, const titan_config *cfg, titan_auth **out, char *err,
                     size_t errcap)
{
    titan_auth *a = NULL;
    int rc;
    if (!cfg->curve_secret) {
        if (cfg->allow_keys) {
            snprintf(err, errcap,
                     "--allow-keys needs --curve-secret (the worker's own key; make one with `titan "
                     "keygen`)");
            return -EINVAL;
        }
        rc = s_check_plain_binds(cfg, err, errcap);
        if (rc == 0) *out = NULL;
        return rc;
    }
    if (!zmq_has("curve")) {
        snprintf(err, errcap, "--curve-secret: this libzmq was built without CURVE support");
        return -ENOTSUP;
    }
    if (cfg->allow_keys) {
        struct stat st;
        if (stat(cfg->allow_keys, &st) != 0) {
            rc = -errno;
            snprintf(err, errcap, "cannot read --allow-keys %s: %s", cfg->allow_keys, strerror(errno));
            return rc;
        }
        if (!S_ISDIR(st.st_mode)) {
            snprintf(err, errcap,
                     "--allow-keys %s is not a directory (give the directory of the clients' "
                     "public certificates)",
                     cfg->allow_keys);
            return -ENOTDIR;
        }
    }
    rc = s_setup_server_key(router, cfg->curve_secret, err, errcap);
    if (rc) return rc;
    rc = -ENOMEM;
    a = calloc(1, sizeof(*a));
    if (!a) goto nomem;
    atomic_init(&a->refused, 0);
    pthread_mutex_init(&a->keys_mu, NULL);
    if (cfg->allow_keys && !(a->allow_dir = strdup(cfg->allow_keys))) goto nomem;
    /* Load the keys now, so the start-up log says how many clients are admitted. */
    if (a->allow_dir)
        s_refresh_keys(a);
    else
        titan_log(TITAN_LOG_WARN,
                  "no --allow-keys: any CURVE client that knows the server's public key is admitted");
    int linger = 0;
    char ctl_name[64], mon_name[64];
    snprintf(ctl_name, sizeof(ctl_name), "inproc://titan-auth-ctl-%p", (void *)a);
    snprintf(mon_name, sizeof(mon_name), "inproc://titan-auth-mon-%p", (void *)a);
    a->zap = zmq_socket(ctx, ZMQ_REP);
    a->ctl = zmq_socket(ctx, ZMQ_PAIR);
    a->ctl_peer = zmq_socket(ctx, ZMQ_PAIR);
    a->mon = zmq_socket(ctx, ZMQ_PAIR);
    if (!a->zap || !a->ctl || !a->ctl_peer || !a->mon) goto zmqfail;
    void *socks[] = {a->zap, a->ctl, a->ctl_peer, a->mon};
    for (size_t i = 0; i < sizeof(socks) / sizeof(socks[0]); i++)
        zmq_setsockopt(socks[i], ZMQ_LINGER, &linger, sizeof(linger));
    if (zmq_bind(a->zap, S_ZAP_ENDPOINT) != 0) {
        rc = -errno;
        snprintf(err, errcap, "cannot start the ZAP handler on %s: %s", S_ZAP_ENDPOINT, zmq_strerror(errno));
        goto fail;
    }
    if (zmq_bind(a->ctl_peer, ctl_name) != 0 || zmq_connect(a->ctl, ctl_name) != 0) goto zmqfail;
    /* Clients without CURVE or with another server key fail before ZAP: the monitor sees them. */
    if (zmq_socket_monitor(router, mon_name, ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) != 0 ||
        zmq_connect(a->mon, mon_name) != 0)
        goto zmqfail;
    if ((rc = -pthread_create(&a->thread, NULL, s_zap_main, a)) != 0) {
        snprintf(err, errcap, "cannot start the ZAP handler thread: %s", strerror(-rc));
        goto fail;
    }
    a->started = true;
    *out = a;
    return 0;
zmqfail:
    rc = -errno;
    snprintf(err, errcap, "ZeroMQ setup of the ZAP handler failed: %s", zmq_strerror(errno));
    goto fail;
nomem:
    snprintf(err, errcap, "out of memory");
fail:
    titan_auth_destroy(&a);
    return rc;
}

bool titan_auth_admits(titan_auth *a, const char *z85)
{
    if (!a || !a->allow_dir) return true;
    uint8_t key[S_KEY_BYTES];
    if (!z85 || strlen(z85) != 40 || !zmq_z85_decode(key, z85)) return false;
    pthread_mutex_lock(&a->keys_mu);
    s_refresh_keys(a);
    bool known = a->nkeys && bsearch(key, a->keys, a->nkeys, S_KEY_BYTES, s_key_cmp);
    pthread_mutex_unlock(&a->keys_mu);
    if (!known) atomic_fetch_add(&a->refused, 1);
    return known;
}

unsigned long long titan_auth_refused(const titan_auth *a)
{
    return a ? atomic_load(&a->refused) : 0;
}

void titan_auth_destroy(titan_auth **ap)
{
    if (!ap || !*ap) return;
    titan_auth *a = *ap;
    if (a->started) {
        zmq_send(a->ctl, "", 0, 0);
        pthread_join(a->thread, NULL);
    }
    if (a->zap) zmq_close(a->zap);
    if (a->ctl) zmq_close(a->ctl);
    if (a->ctl_peer) zmq_close(a->ctl_peer);
    if (a->mon) zmq_close(a->mon);
    free(a->keys);
    free(a->allow_dir);
    pthread_mutex_destroy(&a->keys_mu);
    free(a);
    *ap = NULL;
}
