/* redis.h - titan's one Redis module (internal, not libtitan's API): the URL, connections with their
 * timeouts, AUTH and SELECT, the job key layout and the Lua scripts of docs/JOBS.md. libtitan's job
 * client (jobs.c), the worker's job consumer (src/worker/jobs_*.c) and `titan status` stand on it. */
#ifndef TITAN_REDIS_H
#define TITAN_REDIS_H

#include <stdbool.h>
#include <stddef.h>

#include <hiredis/hiredis.h>

#define TITAN_REDIS_DEFAULT_PORT 6379
#define TITAN_REDIS_MAX_HOST 253  /* a DNS name's longest */
#define TITAN_REDIS_MAX_CRED 1024 /* longest user name or password, decoded */
#define TITAN_REDIS_MAX_DB 1000000
#define TITAN_REDIS_MAX_PREFIX 64 /* TITAN_JOB_MAX_PREFIX_LEN */
#define TITAN_REDIS_DEFAULT_PREFIX "titan"
#define TITAN_REDIS_DEFAULT_GROUP "titan-workers"
/* The syntax every message about a bad URL names. */
#define TITAN_REDIS_URL_SYNTAX "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]"

/* ---- the URL ---- */

typedef struct {
    char host[TITAN_REDIS_MAX_HOST + 1]; /* a name, IPv4, or IPv6 without its brackets */
    int port;
    int db;
    char user[TITAN_REDIS_MAX_CRED + 1];     /* "": AUTH with the password alone */
    char password[TITAN_REDIS_MAX_CRED + 1]; /* "": no AUTH (an empty password is refused) */
} titan_redis_url;

/* Parses "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]" (scheme in any case; PORT defaults to 6379, DB
 * to 0; HOST may be an [IPv6] literal; USER and PASSWORD may use %XX escapes, and the last '@' ends
 * them). TLS (rediss://), Unix sockets, query strings and a '@' part without ':' are refused. Returns
 * 0 and *out (written only then), or -EINVAL with one sentence in why[0..cap) that quotes the URL with
 * its credentials masked. */
int titan_redis_url_parse(const char *url, titan_redis_url *out, char *why, size_t cap);

/* Replaces u's password (a --redis-password or an option). Returns 0, or -EINVAL for an empty one
 * or one longer than TITAN_REDIS_MAX_CRED; u is unchanged then. */
int titan_redis_url_set_password(titan_redis_url *u, const char *password);

/* Zeroes the credentials held in u. */
void titan_redis_url_wipe(titan_redis_url *u);

/* Writes "redis://HOST:PORT/DB" ([HOST] for IPv6) for logs: never the credentials. */
void titan_redis_url_name(const titan_redis_url *u, char *buf, size_t cap);

/* Copies url into buf with its credentials masked as ***: with keep_user false, everything between the
 * scheme and the last '@' (for any text, even one that does not parse); with keep_user true, only the
 * password, after the user (for a URL that parsed, whose user is worth showing). */
void titan_redis_url_redact(const char *url, bool keep_user, char *buf, size_t cap);

/* ---- connections ---- */

typedef struct {
    int connect_ms; /* the TCP connect */
    int command_ms; /* each command's reply; 0: none */
    bool keepalive; /* TCP keepalive, for connections that idle in a blocking read */
} titan_redis_timeouts;

/* Opens a connection to u's host and port (no command sent). Returns 0 and *out (the caller's to
 * redisFree), or -errno (see titan_redis_io_error) with why in why[0..cap). */
int titan_redis_open(const titan_redis_url *u, const titan_redis_timeouts *t, redisContext **out, char *why,
                     size_t cap);

/* Authenticates (AUTH [USER] PASSWORD, when u has a password) and selects u's database (when not 0)
 * on c. Returns 0, or -errno with why: -EACCES when Redis refused AUTH ("AUTH refused: ..."), -EPROTO
 * when it refused SELECT ("SELECT N refused: ..."), or an I/O failure as titan_redis_io_error (c is
 * then unusable). */
int titan_redis_login(redisContext *c, const titan_redis_url *u, int command_ms, char *why, size_t cap);

/* titan_redis_open, then titan_redis_login. Returns 0 and *out, or -errno with why (nothing to free). */
int titan_redis_connect(const titan_redis_url *u, const titan_redis_timeouts *t, redisContext **out,
                        char *why, size_t cap);

/* Maps the failure of a hiredis call on c (NULL: no context could be allocated) to -errno, with
 * saved_errno the errno right after the call, and writes what happened to why: -ETIMEDOUT ("no
 * answer within timeout_ms ms"), -ECONNREFUSED and other socket errors, -ECONNRESET (connection
 * lost), -EHOSTUNREACH (a name that does not resolve), -EPROTO (not Redis's protocol), -ENOMEM. */
int titan_redis_io_error(const redisContext *c, int saved_errno, int timeout_ms, char *why, size_t cap);

/* True for an error reply that refuses for want of (the right) credentials: NOAUTH, WRONGPASS, NOPERM. */
bool titan_redis_reply_is_auth(const redisReply *r);
/* True for an error reply of a Redis that is up but cannot serve yet (LOADING its data, BUSY with a
 * script, MASTERDOWN): an outage to wait out, not a refusal. */
bool titan_redis_reply_is_unavailable(const redisReply *r);
/* True for an error reply whose text starts with prefix (NULL: any error reply). */
bool titan_redis_reply_is_error(const redisReply *r, const char *prefix);

/* ---- the key layout (docs/JOBS.md): every key is "{PREFIX}:..." ---- */

typedef enum {
    TITAN_REDIS_KEY_QUEUE,      /* {P}:jobs      the normal-priority stream */
    TITAN_REDIS_KEY_QUEUE_HIGH, /* {P}:jobs:high the high-priority stream */
    TITAN_REDIS_KEY_DEAD,       /* {P}:dead      the dead-letter stream */
    TITAN_REDIS_KEY_INDEX,      /* {P}:index     every job id, scored by its creation time */
    TITAN_REDIS_KEY_JOB,        /* {P}:job:ID    a job's record (a hash) */
    TITAN_REDIS_KEY_IDEM,       /* {P}:idem:KEY  an idempotency key's job id */
} titan_redis_key_kind;

/* True when prefix can go between the braces: 1..64 bytes, none of "{}", spaces or control characters. */
bool titan_redis_prefix_ok(const char *prefix);

/* Writes the key of kind for prefix (and id, for JOB and IDEM; ignored otherwise) into buf. Returns
 * its length, or -ENAMETOOLONG when it does not fit in cap (buf then holds "" when cap > 0). */
int titan_redis_key(char *buf, size_t cap, const char *prefix, titan_redis_key_kind kind, const char *id);

/* ---- the Lua scripts (each is described where it is written, in redis.c) ---- */

typedef enum {
    TITAN_REDIS_SCRIPT_SUBMIT, /* the client: a record, its index entry and its queue entry */
    TITAN_REDIS_SCRIPT_CANCEL, /* the client: a queued job cancelled */
    TITAN_REDIS_SCRIPT_READ_START, /* the worker: new entries, high priority strictly first, started */
    TITAN_REDIS_SCRIPT_START,      /* the worker: entries in hand started (or skipped, or dead-lettered) */
    TITAN_REDIS_SCRIPT_STORE,  /* the worker: a batch of outcomes stored and acknowledged */
    TITAN_REDIS_SCRIPT_RETRY,  /* the worker: a failed attempt, the entry left pending */
    TITAN_REDIS_SCRIPT_REVERT, /* the worker: the start of an attempt that never ran undone */
    TITAN_REDIS_NSCRIPTS
} titan_redis_script;

/* Returns the Lua text of script s (static) and its length in *len (may be NULL). */
const char *titan_redis_script_text(titan_redis_script s, size_t *len);

/* The scripts' SHA1s on one connection: calls go by EVALSHA where loaded, else by EVAL with the text. */
typedef struct {
    char sha[TITAN_REDIS_NSCRIPTS][41];
    bool loaded;
} titan_redis_scripts;

/* Loads every script on c (SCRIPT LOAD, pipelined) into s. Returns 0 with s->loaded true, 0 with it
 * false when Redis refused (the calls then go by EVAL), or -errno when the connection failed (c is
 * then unusable: see titan_redis_io_error). */
int titan_redis_scripts_load(redisContext *c, titan_redis_scripts *s);

/* Writes the first two arguments of a call of script id into argv[0..2) and lens[0..2) (lens may be
 * NULL): "EVALSHA", SHA1 when s is loaded (s may be NULL), else "EVAL", TEXT. The strings are s's or
 * static. */
void titan_redis_script_args(const titan_redis_scripts *s, titan_redis_script id, const char **argv,
                             size_t *lens);

/* True for the NOSCRIPT reply to an EVALSHA (Redis lost its scripts: SCRIPT FLUSH, a restart behind a
 * proxy): s goes over to EVAL, and that command must be sent again. */
bool titan_redis_scripts_missing(titan_redis_scripts *s, const redisReply *r);

#endif
