/* redis.c - titan's one Redis module: URL, connections, key layout and Lua scripts (redis.h). */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include "redis.h"

/* ---- the URL ---- */

#define S_EXAMPLE "; expected " TITAN_REDIS_URL_SYNTAX ", e.g. redis://127.0.0.1:6379/0"

void titan_redis_url_redact(const char *url, bool keep_user, char *buf, size_t cap)
{
    if (!buf || cap == 0) return;
    if (!url) url = "";
    const char *scheme = strstr(url, "://");
    const char *from = scheme ? scheme + 3 : url;
    const char *at = NULL;
    if (keep_user) {
        const char *end = from + strcspn(from, "/?#");
        for (const char *p = from; p < end; p++)
            if (*p == '@') at = p;
    } else {
        at = strrchr(from, '@'); /* a malformed URL may hide a password anywhere before it */
    }
    if (!at) {
        snprintf(buf, cap, "%s", url);
        return;
    }
    const char *colon = keep_user ? memchr(from, ':', (size_t)(at - from)) : NULL;
    snprintf(buf, cap, "%.*s%.*s%s%s", (int)(from - url), url, colon ? (int)(colon - from) : 0, from,
             colon ? ":***" : "***", at);
}

void titan_redis_url_name(const titan_redis_url *u, char *buf, size_t cap)
{
    bool v6 = strchr(u->host, ':') != NULL;
    snprintf(buf, cap, "redis://%s%s%s:%d/%d", v6 ? "[" : "", u->host, v6 ? "]" : "", u->port, u->db);
}

void titan_redis_url_wipe(titan_redis_url *u)
{
    if (!u) return;
    explicit_bzero(u->user, sizeof u->user);
    explicit_bzero(u->password, sizeof u->password);
}

int titan_redis_url_set_password(titan_redis_url *u, const char *password)
{
    if (!password || !*password || strlen(password) > TITAN_REDIS_MAX_CRED) return -EINVAL;
    snprintf(u->password, sizeof u->password, "%s", password);
    return 0;
}

static int s_hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decodes the %XX escapes of s[0..n) into out (TITAN_REDIS_MAX_CRED + 1 bytes). Returns 0, or
 * -EINVAL with why for a bad escape, a NUL, or a text too long. */
static int s_decode(const char *s, size_t n, char *out, const char *what, const char *shown, char *why,
                    size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)s[i];
        if (ch == '%') {
            int hi = i + 2 < n ? s_hexval((unsigned char)s[i + 1]) : -1;
            int lo = hi >= 0 ? s_hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                snprintf(why, cap,
                         "'%s': the %s has a bad %%XX escape (write %% as %%25; %%00 is not allowed)", shown,
                         what);
                return -EINVAL;
            }
            ch = hi * 16 + lo;
            i += 2;
        }
        if (o >= TITAN_REDIS_MAX_CRED) {
            snprintf(why, cap, "'%s': the %s is longer than %d bytes", shown, what, TITAN_REDIS_MAX_CRED);
            return -EINVAL;
        }
        out[o++] = (char)ch;
    }
    out[o] = '\0';
    return 0;
}

/* Parses a whole decimal number in s[0..n) within [min, max]. */
static bool s_parse_num(const char *s, size_t n, long min, long max, long *out)
{
    long v = 0;
    if (n == 0 || n > 10) return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v < min || v > max) return false;
    *out = v;
    return true;
}

int titan_redis_url_parse(const char *url, titan_redis_url *out, char *why, size_t cap)
{
    static const char scheme[] = "redis://";
    char buf[256];
    if (!why || cap == 0) {
        why = buf;
        cap = sizeof buf;
    }
    if (!url || !*url) {
        snprintf(why, cap, "the Redis URL is empty%s", S_EXAMPLE);
        return -EINVAL;
    }
    char shown[224]; /* the URL as messages show it: never its credentials */
    titan_redis_url_redact(url, false, shown, sizeof shown);
    if (strncasecmp(url, "rediss://", 9) == 0) {
        snprintf(why, cap,
                 "'%s': TLS (rediss://) is not supported; use redis:// (through a TLS tunnel if needed)",
                 shown);
        return -EINVAL;
    }
    if (strncasecmp(url, "unix:", 5) == 0 || strncasecmp(url, "redis+unix:", 11) == 0) {
        snprintf(why, cap, "'%s': Unix sockets are not supported; use redis://HOST:PORT", shown);
        return -EINVAL;
    }
    if (strncasecmp(url, scheme, sizeof scheme - 1) != 0) {
        snprintf(why, cap, "'%s' must start with redis://%s", shown, S_EXAMPLE);
        return -EINVAL;
    }
    titan_redis_url parsed, *u = &parsed; /* copied to out only on success */
    memset(u, 0, sizeof *u);
    int rc = -EINVAL;
    u->port = TITAN_REDIS_DEFAULT_PORT;
    const char *a = url + sizeof scheme - 1;
    const char *end = a + strcspn(a, "/?#");
    if (*end == '?' || *end == '#' || strchr(end, '?') || strchr(end, '#')) {
        snprintf(why, cap, "'%s': query strings and fragments are not supported%s", shown, S_EXAMPLE);
        goto out;
    }
    /* The last '@' ends the credentials, so a password may hold a raw '@' but not a '/'. */
    const char *at = NULL;
    for (const char *p = a; p < end; p++)
        if (*p == '@') at = p;
    if (at) {
        const char *colon = memchr(a, ':', (size_t)(at - a));
        if (!colon) {
            snprintf(why, cap, "'%s': the part before '@' must be ':PASSWORD' or 'USER:PASSWORD'", shown);
            goto out;
        }
        if (s_decode(a, (size_t)(colon - a), u->user, "user name", shown, why, cap) ||
            s_decode(colon + 1, (size_t)(at - colon - 1), u->password, "password", shown, why, cap))
            goto out;
        if (!u->password[0]) {
            snprintf(why, cap, "'%s': the password is empty; leave out the '@' part for none", shown);
            goto out;
        }
        a = at + 1;
    }
    const char *host = a, *host_end, *port = NULL;
    if (*a == '[') {
        host = a + 1;
        host_end = memchr(host, ']', (size_t)(end - host));
        if (!host_end) {
            snprintf(why, cap, "'%s': the IPv6 address lacks its ']'%s", shown, S_EXAMPLE);
            goto out;
        }
        if (host_end + 1 < end && host_end[1] != ':') {
            snprintf(why, cap, "'%s': expected ':PORT' after the IPv6 address%s", shown, S_EXAMPLE);
            goto out;
        }
        if (host_end + 1 < end) port = host_end + 2;
        for (const char *p = host; p < host_end; p++)
            if (!isxdigit((unsigned char)*p) && *p != ':' && *p != '.') {
                snprintf(why, cap, "'%s': \"%.*s\" is not an IPv6 address", shown, (int)(host_end - host),
                         host);
                goto out;
            }
    } else {
        host_end = memchr(a, ':', (size_t)(end - a));
        if (host_end)
            port = host_end + 1;
        else
            host_end = end;
        for (const char *p = host; p < host_end; p++)
            if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-' && *p != '_') {
                snprintf(why, cap, "'%s': the host has a character '%c' that no host name has%s", shown,
                         isprint((unsigned char)*p) ? *p : '?', at ? "" : " (a password goes before an '@')");
                goto out;
            }
    }
    if (host_end == host) {
        snprintf(why, cap, "'%s' has no host%s", shown, S_EXAMPLE);
        goto out;
    }
    if (host_end - host > TITAN_REDIS_MAX_HOST) {
        snprintf(why, cap, "'%s': the host is longer than %d characters", shown, TITAN_REDIS_MAX_HOST);
        goto out;
    }
    memcpy(u->host, host, (size_t)(host_end - host));
    u->host[host_end - host] = '\0';
    long v;
    if (port) {
        if (!s_parse_num(port, (size_t)(end - port), 1, 65535, &v)) {
            snprintf(why, cap, "'%s': the port must be a number from 1 to 65535", shown);
            goto out;
        }
        u->port = (int)v;
    }
    if (*end == '/' && end[1] != '\0') {
        if (!s_parse_num(end + 1, strlen(end + 1), 0, TITAN_REDIS_MAX_DB, &v)) {
            snprintf(why, cap, "'%s': the database after '/' must be a number from 0 to %d", shown,
                     TITAN_REDIS_MAX_DB);
            goto out;
        }
        u->db = (int)v;
    }
    *out = *u;
    rc = 0;
out:
    titan_redis_url_wipe(u);
    return rc;
}

/* ---- connections ---- */

int titan_redis_io_error(const redisContext *c, int saved_errno, int timeout_ms, char *why, size_t cap)
{
    if (!c) {
        snprintf(why, cap, "cannot allocate a connection");
        return -ENOMEM;
    }
    int e = saved_errno, rc;
    const char *text = c->errstr[0] ? c->errstr : "connection lost";
    switch (c->err) {
    case REDIS_ERR_IO:
        rc = (e == EAGAIN || e == EWOULDBLOCK || e == EINPROGRESS || e == ETIMEDOUT) ? -ETIMEDOUT
             : e > 0                                                                 ? -e
                                                                                     : -ECONNRESET;
        break;
    case REDIS_ERR_EOF:
        rc = -ECONNRESET;
        break;
    case REDIS_ERR_PROTOCOL:
        snprintf(why, cap, "%s (is that a Redis server?)", c->errstr[0] ? c->errstr : "protocol error");
        return -EPROTO;
    case REDIS_ERR_OOM:
        rc = -ENOMEM;
        break;
    default:
        /* hiredis reports a name that does not resolve as a generic error. */
        rc = strstr(text, "resolve") ? -EHOSTUNREACH : -ECONNRESET;
        break;
    }
    if (rc == -ETIMEDOUT)
        snprintf(why, cap, "no answer within %d ms", timeout_ms);
    else
        snprintf(why, cap, "%s", text);
    return rc;
}

static struct timeval s_tv(int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

int titan_redis_open(const titan_redis_url *u, const titan_redis_timeouts *t, redisContext **out, char *why,
                     size_t cap)
{
    errno = 0;
    redisContext *c = redisConnectWithTimeout(u->host, u->port, s_tv(t->connect_ms));
    int e = errno;
    if (!c || c->err) {
        int rc = titan_redis_io_error(c, e, t->connect_ms, why, cap);
        if (c) redisFree(c);
        return rc;
    }
    if (t->command_ms > 0 && redisSetTimeout(c, s_tv(t->command_ms)) != REDIS_OK) {
        int rc = titan_redis_io_error(c, errno, t->connect_ms, why, cap);
        redisFree(c);
        return rc;
    }
    if (t->keepalive) redisEnableKeepAlive(c);
    *out = c;
    return 0;
}

/* Runs one command of login on c: 0, or -errno with why ("WHAT refused: ..." for an error reply). */
static int s_login_cmd(redisContext *c, int argc, const char **argv, const size_t *lens, const char *what,
                       int command_ms, char *why, size_t cap)
{
    errno = 0;
    redisReply *r = redisCommandArgv(c, argc, argv, lens);
    if (!r) return titan_redis_io_error(c, errno, command_ms, why, cap);
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        rc = titan_redis_reply_is_auth(r) ? -EACCES : -EPROTO;
        snprintf(why, cap, "%s refused: %.400s", what, r->str);
    }
    freeReplyObject(r);
    return rc;
}

int titan_redis_login(redisContext *c, const titan_redis_url *u, int command_ms, char *why, size_t cap)
{
    if (u->password[0]) {
        const char *argv[3] = {"AUTH", u->user[0] ? u->user : u->password, u->password};
        size_t lens[3] = {4, strlen(argv[1]), strlen(u->password)};
        int rc = s_login_cmd(c, u->user[0] ? 3 : 2, argv, lens, "AUTH", command_ms, why, cap);
        if (rc) return rc == -EPROTO ? -EACCES : rc;
    }
    if (u->db != 0) {
        char db[16], what[32];
        int n = snprintf(db, sizeof db, "%d", u->db);
        snprintf(what, sizeof what, "SELECT %d", u->db);
        const char *argv[2] = {"SELECT", db};
        size_t lens[2] = {6, (size_t)n};
        int rc = s_login_cmd(c, 2, argv, lens, what, command_ms, why, cap);
        if (rc) return rc;
    }
    return 0;
}

int titan_redis_connect(const titan_redis_url *u, const titan_redis_timeouts *t, redisContext **out,
                        char *why, size_t cap)
{
    redisContext *c = NULL;
    int rc = titan_redis_open(u, t, &c, why, cap);
    if (rc) return rc;
    rc = titan_redis_login(c, u, t->command_ms, why, cap);
    if (rc) {
        redisFree(c);
        return rc;
    }
    *out = c;
    return 0;
}

bool titan_redis_reply_is_error(const redisReply *r, const char *prefix)
{
    return r && r->type == REDIS_REPLY_ERROR && r->str &&
           (!prefix || strncmp(r->str, prefix, strlen(prefix)) == 0);
}

bool titan_redis_reply_is_auth(const redisReply *r)
{
    if (!titan_redis_reply_is_error(r, NULL)) return false;
    const char *s = r->str;
    return strncmp(s, "NOAUTH", 6) == 0 || strncmp(s, "WRONGPASS", 9) == 0 || strncmp(s, "NOPERM", 6) == 0 ||
           strstr(s, "invalid password") || strstr(s, "without any password");
}

bool titan_redis_reply_is_unavailable(const redisReply *r)
{
    return titan_redis_reply_is_error(r, "LOADING") || titan_redis_reply_is_error(r, "BUSY ") ||
           titan_redis_reply_is_error(r, "MASTERDOWN");
}

/* ---- the key layout ---- */

bool titan_redis_prefix_ok(const char *p)
{
    if (!p) return false;
    size_t n = strlen(p);
    if (n == 0 || n > TITAN_REDIS_MAX_PREFIX) return false;
    for (const char *c = p; *c; c++)
        if (*c == '{' || *c == '}' || (unsigned char)*c <= ' ' || *c == 0x7f) return false;
    return true;
}

int titan_redis_key(char *buf, size_t cap, const char *prefix, titan_redis_key_kind kind, const char *id)
{
    static const char *const tail[] = {
        [TITAN_REDIS_KEY_QUEUE] = "jobs", [TITAN_REDIS_KEY_QUEUE_HIGH] = "jobs:high",
        [TITAN_REDIS_KEY_DEAD] = "dead",  [TITAN_REDIS_KEY_INDEX] = "index",
        [TITAN_REDIS_KEY_JOB] = "job:",   [TITAN_REDIS_KEY_IDEM] = "idem:",
    };
    bool with_id = kind == TITAN_REDIS_KEY_JOB || kind == TITAN_REDIS_KEY_IDEM;
    int n = snprintf(buf, cap, "{%s}:%s%s", prefix, tail[kind], with_id && id ? id : "");
    if (n < 0 || (size_t)n >= cap) {
        if (cap > 0) buf[0] = '\0';
        return -ENAMETOOLONG;
    }
    return n;
}

/* ---- the Lua scripts: each step of docs/JOBS.md that touches several keys runs atomically ---- */

/* Writes the record and the queue entry in one atomic step, so that an idempotency key is taken if and
 * only if its job exists, and a worker never sees an id without its record (docs/JOBS.md, "submit").
 * KEYS: job, index, queue[, idem]. ARGV: id, created_ms, then the record's field/value pairs. Replies
 * {1, id} for a new job, {0, id} for the job an idempotency key already names. */
static const char s_submit_lua[] = "if #KEYS == 4 then\n"
                                   "  if not redis.call('SET', KEYS[4], ARGV[1], 'NX') then\n"
                                   "    return {0, redis.call('GET', KEYS[4])}\n"
                                   "  end\n"
                                   "end\n"
                                   "redis.call('HSET', KEYS[1], unpack(ARGV, 3))\n"
                                   "redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])\n"
                                   "redis.call('XADD', KEYS[3], '*', 'id', ARGV[1])\n"
                                   "return {1, ARGV[1]}\n";

/* Cancels a queued job atomically: a worker that takes it up at the same moment either sees it
 * cancelled or has already marked it running. Ends it as JOBS.md says: request frames deleted,
 * TTL set. KEYS: job. ARGV: finished_ms, ttl. Returns the state found ("missing" when none). */
static const char s_cancel_lua[] =
    "local s = redis.call('HGET', KEYS[1], 'state')\n"
    "if not s then return 'missing' end\n"
    "if s ~= 'queued' then return s end\n"
    "local n = math.min(tonumber(redis.call('HGET', KEYS[1], 'nframes') or '0') or 0, 64)\n"
    "redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_ms', ARGV[1])\n"
    "for i = 1, n do redis.call('HDEL', KEYS[1], 'frame:' .. i) end\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[2])\n"
    "return 'queued'\n";

/* Starting one entry (docs/JOBS.md, step 3), shared by the start and read-start scripts. It sees the
 * script's dead, group, maxa, now, worker, ttl and frames. Returns {"skip", why}, {"dead", attempts,
 * error} or {"run", attempts, header, nframes, frame:1, ...}. With `check`, an entry no longer pending
 * on this consumer (another worker reclaimed it meanwhile) is left alone; an entry the same script
 * has just read is this consumer's. A job that already ended (a duplicate entry) is skipped like a
 * cancelled one rather than run again. Two commands start a job: one HMGET reads the record with every
 * frame a request may have, one HSET marks it running (each command a script runs costs Redis more
 * than the work it does for a small job). */
#define S_LUA_START_FN                                                                                       \
    "local frames = {}\n"                                                                                    \
    "for i = 1, 15 do frames[i] = 'frame:' .. i end\n"                                                       \
    "local function start(job, stream, entry, id, check)\n"                                                  \
    "  if check then\n"                                                                                      \
    "    local mine = redis.call('XPENDING', stream, group, entry, entry, 1, worker)\n"                      \
    "    if #mine == 0 then return {'skip', 'no longer pending on this consumer'} end\n"                     \
    "  end\n"                                                                                                \
    "  local rec = redis.call('HMGET', job, 'state', 'attempts', 'header', 'nframes', unpack(frames))\n"     \
    "  local st = rec[1]\n"                                                                                  \
    "  if not st then\n"                                                                                     \
    "    redis.call('XACK', stream, group, entry)\n"                                                         \
    "    return {'skip', 'missing'}\n"                                                                       \
    "  end\n"                                                                                                \
    "  if st == 'cancelled' or st == 'done' or st == 'failed' then\n"                                        \
    "    if st == 'cancelled' then\n"                                                                        \
    "      redis.call('HDEL', job, unpack(frames))\n"                                                        \
    "      if redis.call('TTL', job) < 0 then redis.call('EXPIRE', job, ttl) end\n"                          \
    "    end\n"                                                                                              \
    "    redis.call('XACK', stream, group, entry)\n"                                                         \
    "    return {'skip', st}\n"                                                                              \
    "  end\n"                                                                                                \
    "  local n = (tonumber(rec[2]) or 0) + 1\n"                                                              \
    "  if n > maxa then\n"                                                                                   \
    "    local last = redis.call('HGET', job, 'error')\n"                                                    \
    "    local code = redis.call('HGET', job, 'code') or 'internal'\n"                                       \
    "    local text = 'gave up after ' .. (n - 1) .. ' attempts: ' .. (last or "                             \
    "'no attempt ended (the worker running it stopped or crashed)')\n"                                       \
    "    redis.call('HSET', job, 'attempts', n - 1, 'state', 'failed', 'finished_ms', now, 'error', text, "  \
    "'code', code)\n"                                                                                        \
    "    redis.call('HDEL', job, unpack(frames))\n"                                                          \
    "    redis.call('EXPIRE', job, ttl)\n"                                                                   \
    "    redis.call('XADD', dead, '*', 'id', id, 'error', text, 'attempts', n - 1)\n"                        \
    "    redis.call('XACK', stream, group, entry)\n"                                                         \
    "    return {'dead', tostring(n - 1), text}\n"                                                           \
    "  end\n"                                                                                                \
    "  redis.call('HSET', job, 'attempts', n, 'state', 'running', 'started_ms', now, 'worker', worker)\n"    \
    "  local out = {'run', tostring(n), rec[3] or false, rec[4] or false}\n"                                 \
    "  local k = tonumber(rec[4])\n"                                                                         \
    "  if k and k >= 1 and k <= 15 and k == math.floor(k) then\n"                                            \
    "    for i = 1, k do out[#out + 1] = rec[4 + i] or false end\n"                                          \
    "  end\n"                                                                                                \
    "  return out\n"                                                                                         \
    "end\n"

/* Step 3 up to running the request, for a batch of entries already in hand (reclaimed, or read by
 * a blocking XREADGROUP) in one call (a script call costs Redis more than the commands it runs for one
 * small job). KEYS: dead, then job, stream for each entry. ARGV: group, max attempts, now ms,
 * consumer, ttl, then entry, job id for each. Replies one start result (S_LUA_START_FN) per entry, in
 * order. */
static const char s_start_lua[] =
    "local dead = KEYS[1]\n"
    "local group, maxa, now, worker, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], "
    "ARGV[5]\n" S_LUA_START_FN "local res = {}\n"
    "for i = 2, #KEYS, 2 do\n"
    "  res[#res + 1] = start(KEYS[i], KEYS[i + 1], ARGV[5 + i - 1], ARGV[5 + i], true)\n"
    "end\n"
    "return res\n";

/* Steps 2 and 3 in one call: new entries for up to ARGV[3] free slots, high priority strictly first
 * (the normal queue is read only for what the high one did not fill), each started at once. KEYS:
 * high, normal, dead. ARGV: group, consumer, count, max attempts, now ms, ttl, and the job keys'
 * prefix ("{P}:job:", redis.h's layout), to which an entry's id is appended. Replies nil when nothing
 * was read, else one {stream (0 high, 1 normal), entry, id, result} per entry, where result is the
 * start result (S_LUA_START_FN), or "bad" for an entry without a valid id (acknowledged: nothing to
 * run). */
static const char s_read_start_lua[] =
    "local dead = KEYS[3]\n"
    "local group, worker, count = ARGV[1], ARGV[2], tonumber(ARGV[3])\n"
    "local maxa, now, ttl, jobs = tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]\n" S_LUA_START_FN
    "local read = {}\n"
    "for s = 1, 2 do\n"
    "  if count > 0 then\n"
    "    local r = redis.call('XREADGROUP', 'GROUP', group, worker, 'COUNT', count, 'STREAMS', KEYS[s], "
    "'>')\n"
    "    if r then read[#read + 1] = {s, r[1][2]}; count = count - #r[1][2] end\n"
    "  end\n"
    "end\n"
    "if #read == 0 then return false end\n"
    "local res = {}\n"
    "for _, got in ipairs(read) do\n"
    "  local stream = KEYS[got[1]]\n"
    "  for _, e in ipairs(got[2]) do\n"
    "    local entry, f, id = e[1], e[2], nil\n"
    "    for i = 1, #f - 1, 2 do if f[i] == 'id' then id = f[i + 1] end end\n"
    "    if id and #id <= 128 and string.match(id, '^[%w%-_%.]+$') then\n"
    "      res[#res + 1] = {got[1] - 1, entry, id, start(jobs .. id, stream, entry, id, false)}\n"
    "    else\n"
    "      redis.call('XACK', stream, group, entry)\n"
    "      res[#res + 1] = {got[1] - 1, entry, id or '', 'bad'}\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return res\n";

/* The outcomes of a batch of jobs in one step, then their XACKs, one per stream. KEYS: job, stream
 * for each. ARGV: group, now ms, ttl, then for each: entry, state, result header ("" for none), error
 * ("" for none), code, request frames to delete (its nframes: 0..15), result frame count, frames...
 * Only fields that can be there are deleted (each argument a script passes costs Redis a string): the
 * request's frames, and a result header a concurrent run of the same job may have stored (its frames
 * past result_nframes, if any, are never read). Replies one number per job: 1 stored, 0 the record was
 * gone (the entry is acknowledged all the same). */
static const char s_store_lua[] =
    "local group, now, ttl = ARGV[1], ARGV[2], ARGV[3]\n"
    "local frames = {}\n"
    "for i = 1, 15 do frames[i] = 'frame:' .. i end\n"
    "local res, a, acks = {}, 4, {}\n"
    "for j = 1, #KEYS, 2 do\n"
    "  local job, stream = KEYS[j], KEYS[j + 1]\n"
    "  local entry, state, rhdr, err, code = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]\n"
    "  local qn, rn = math.min(math.max(tonumber(ARGV[a + 5]) or 15, 0), 15), tonumber(ARGV[a + 6])\n"
    "  local base = a + 6\n"
    "  a = a + 7 + rn\n"
    "  if not acks[stream] then acks[stream] = {} end\n"
    "  local ack = acks[stream]\n"
    "  ack[#ack + 1] = entry\n"
    "  if redis.call('EXISTS', job) == 0 then\n"
    "    res[#res + 1] = 0\n"
    "  else\n"
    "    redis.call('HDEL', job, 'result_header', 'result_nframes', unpack(frames, 1, qn))\n"
    "    local set = {'state', state, 'finished_ms', now}\n"
    "    if rhdr ~= '' then\n"
    "      set[#set + 1] = 'result_header'; set[#set + 1] = rhdr\n"
    "      set[#set + 1] = 'result_nframes'; set[#set + 1] = rn\n"
    "      for i = 1, rn do set[#set + 1] = 'result:' .. i; set[#set + 1] = ARGV[base + i] end\n"
    "    end\n"
    "    if err ~= '' then\n"
    "      set[#set + 1] = 'error'; set[#set + 1] = err\n"
    "      set[#set + 1] = 'code'; set[#set + 1] = code\n"
    "    end\n"
    "    redis.call('HSET', job, unpack(set))\n"
    "    redis.call('EXPIRE', job, ttl)\n"
    "    res[#res + 1] = 1\n"
    "  end\n"
    "end\n"
    "for stream, ids in pairs(acks) do redis.call('XACK', stream, group, unpack(ids)) end\n"
    "return res\n";

/* A failed attempt that another attempt may fix: the entry stays pending. KEYS: job. ARGV: error, code. */
static const char s_retry_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'state', 'queued', 'error', ARGV[1], 'code', ARGV[2])\n"
    "return 1\n";

/* An attempt that never ran (the worker is shutting down): undo its start. KEYS: job. ARGV: consumer. */
static const char s_revert_lua[] = "if redis.call('HGET', KEYS[1], 'state') ~= 'running' or "
                                   "redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return 0 end\n"
                                   "redis.call('HINCRBY', KEYS[1], 'attempts', -1)\n"
                                   "redis.call('HSET', KEYS[1], 'state', 'queued')\n"
                                   "return 1\n";

static const struct {
    const char *text;
    size_t len;
} s_scripts[TITAN_REDIS_NSCRIPTS] = {
#define S_SCRIPT(id, s) [id] = {s, sizeof s - 1}
    S_SCRIPT(TITAN_REDIS_SCRIPT_SUBMIT, s_submit_lua),
    S_SCRIPT(TITAN_REDIS_SCRIPT_CANCEL, s_cancel_lua),
    S_SCRIPT(TITAN_REDIS_SCRIPT_READ_START, s_read_start_lua),
    S_SCRIPT(TITAN_REDIS_SCRIPT_START, s_start_lua),
    S_SCRIPT(TITAN_REDIS_SCRIPT_STORE, s_store_lua),
    S_SCRIPT(TITAN_REDIS_SCRIPT_RETRY, s_retry_lua),
    S_SCRIPT(TITAN_REDIS_SCRIPT_REVERT, s_revert_lua),
#undef S_SCRIPT
};

const char *titan_redis_script_text(titan_redis_script s, size_t *len)
{
    if (len) *len = s_scripts[s].len;
    return s_scripts[s].text;
}

int titan_redis_scripts_load(redisContext *c, titan_redis_scripts *s)
{
    s->loaded = false;
    for (int i = 0; i < TITAN_REDIS_NSCRIPTS; i++) {
        const char *argv[3] = {"SCRIPT", "LOAD", s_scripts[i].text};
        size_t lens[3] = {6, 4, s_scripts[i].len};
        if (redisAppendCommandArgv(c, 3, argv, lens) != REDIS_OK) return -ENOMEM;
    }
    /* Every reply is read, so that the connection stays in step even after a refusal. */
    bool all = true;
    for (int i = 0; i < TITAN_REDIS_NSCRIPTS; i++) {
        void *v = NULL;
        errno = 0;
        if (redisGetReply(c, &v) != REDIS_OK || !v) return errno > 0 ? -errno : -ECONNRESET;
        redisReply *r = v;
        if (r->type == REDIS_REPLY_STRING && r->len == 40)
            memcpy(s->sha[i], r->str, 41);
        else
            all = false;
        freeReplyObject(r);
    }
    s->loaded = all;
    return 0;
}

void titan_redis_script_args(const titan_redis_scripts *s, titan_redis_script id, const char **argv,
                             size_t *lens)
{
    bool sha = s && s->loaded;
    argv[0] = sha ? "EVALSHA" : "EVAL";
    argv[1] = sha ? s->sha[id] : s_scripts[id].text;
    if (lens) {
        lens[0] = sha ? 7 : 4;
        lens[1] = sha ? 40 : s_scripts[id].len;
    }
}

bool titan_redis_scripts_missing(titan_redis_scripts *s, const redisReply *r)
{
    if (!titan_redis_reply_is_error(r, "NOSCRIPT")) return false;
    s->loaded = false;
    return true;
}
