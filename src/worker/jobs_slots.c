/* jobs_slots.c - the job consumer's slots (one job in flight each) and its side of the worker's server:
 * room for more jobs, requests sent over the DEALER without copying, replies collected and sorted,
 * and the wait on them (jobs_pump). */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jobs_internal.h"
#include "jsonscan.h"
#include "log.h"
#include "server.h"

void jobs_holder_release(jobs_holder *h)
{
    if (atomic_fetch_sub(&h->refs, 1) == 1) {
        freeReplyObject(h->reply);
        free(h);
    }
}

static void s_holder_free_fn(void *data, void *hint)
{
    (void)data;
    jobs_holder_release(hint);
}

static void s_outcome_clear(jobs_outcome *o)
{
    for (int i = 0; i < o->nframes; i++)
        zmq_msg_close(&o->frames[i]);
    o->nframes = 0;
    o->kind = O_DONE;
    o->code[0] = o->error[0] = '\0';
}

/* How many more jobs the consumer may take up now: none while the worker has answered one in hand
 * "busy" (it holds all it takes) or the requests in hand hold --max-inflight-bytes, and no more than
 * fit in what is left of it, so that a deep --jobs-inflight of large jobs neither fills memory nor
 * keeps jobs from other workers. */
int jobs_room(const titan_jobs_consumer *c, int as_free)
{
    int used = c->used;
    double bytes = 0;
    for (int i = 0; i < c->nslots; i++) {
        const jobs_slot *sl = &c->slots[i];
        if ((int)sl->state == as_free) {
            used--;
            continue;
        }
        if (sl->state == SL_BUSY) return 0;
        for (int k = 0; k < sl->nparts; k++)
            if (sl->parts[k]) bytes += (double)sl->parts[k]->len;
    }
    if (used >= c->inflight || bytes >= c->max_bytes) return 0;
    int room = c->inflight - used;
    /* As many as fit the bytes left at the recent request size; one at a time while that is unknown. */
    double fit = c->req_bytes > 0 ? (c->max_bytes - bytes) / c->req_bytes + 1 : 1;
    return fit < room ? (int)fit : room;
}

void *jobs_dealer_open(void *zmq_ctx)
{
    void *d = zmq_socket(zmq_ctx, ZMQ_DEALER);
    int linger = 0;
    if (d && (zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
              zmq_connect(d, TITAN_SERVER_INPROC) != 0)) {
        zmq_close(d);
        d = NULL;
    }
    return d;
}

jobs_slot *jobs_slot_take(titan_jobs_consumer *c)
{
    for (int i = 0; i < c->nslots; i++) {
        jobs_slot *sl = &c->slots[i];
        if (sl->state != SL_FREE) continue;
        sl->state = SL_READ;
        sl->seq++;
        sl->attempt = 0;
        sl->nparts = 0;
        sl->h = NULL;
        s_outcome_clear(&sl->o);
        c->used++;
        return sl;
    }
    return NULL;
}

void jobs_slot_release(titan_jobs_consumer *c, jobs_slot *sl)
{
    s_outcome_clear(&sl->o);
    if (sl->h) jobs_holder_release(sl->h);
    sl->h = NULL;
    sl->nparts = 0;
    sl->state = SL_FREE;
    c->used--;
}

/* Sends [tag, "", header, frames...] without copying the frames. Returns 0, -EAGAIN when nothing
 * was sent (the inproc pipe is full), or another -errno: the socket is then unusable. */
static int s_send(titan_jobs_consumer *c, jobs_slot *sl)
{
    char tag[32];
    int tl = snprintf(tag, sizeof(tag), "j%d.%u", (int)(sl - c->slots), sl->seq);
    if (!c->dealer) return -ENOTSOCK;
    if (zmq_send(c->dealer, tag, (size_t)tl, ZMQ_SNDMORE | ZMQ_DONTWAIT) != tl) return -zmq_errno();
    if (zmq_send(c->dealer, "", 0, ZMQ_SNDMORE) != 0) {
        int e = zmq_errno();
        return e == EAGAIN ? -EPIPE : -e;
    }
    for (int i = 0; i < sl->nparts; i++) {
        zmq_msg_t m;
        atomic_fetch_add(&sl->h->refs, 1);
        /* hiredis gives "" (never NULL) for an empty string, so the pointer is always valid */
        if (zmq_msg_init_data(&m, sl->parts[i]->str, sl->parts[i]->len, s_holder_free_fn, sl->h) != 0) {
            jobs_holder_release(sl->h);
            return -zmq_errno();
        }
        if (zmq_msg_send(&m, c->dealer, i + 1 < sl->nparts ? ZMQ_SNDMORE : 0) < 0) {
            int e = zmq_errno();
            zmq_msg_close(&m);
            return e == EAGAIN ? -EPIPE : -e;
        }
    }
    return 0;
}

/* The socket failed (err): a half-sent or half-received message cannot be taken back, so a new
 * socket replaces it, and the replies owed on the old one are lost: every job waiting for one is
 * given up, its entry pending for another attempt after the visibility timeout. */
void jobs_reset_dealer(titan_jobs_consumer *c, int err)
{
    titan_log(TITAN_LOG_ERROR, "jobs: the socket to the worker failed: %s", zmq_strerror(err));
    if (c->dealer) zmq_close(c->dealer);
    c->dealer = jobs_dealer_open(c->zmq_ctx);
    for (int i = 0; i < c->nslots; i++) {
        jobs_slot *sl = &c->slots[i];
        if (sl->state != SL_SENT) continue;
        s_outcome_clear(&sl->o);
        sl->o.kind = O_ABANDON;
        sl->state = SL_DONE;
    }
}

/* Sends the request of sl: SENT, BUSY (the inproc pipe is full: as good as busy), or given up. */
void jobs_dispatch(titan_jobs_consumer *c, jobs_slot *sl)
{
    int rc = s_send(c, sl);
    if (rc == 0) {
        sl->state = SL_SENT;
    } else if (rc == -EAGAIN) {
        sl->state = SL_BUSY;
        sl->retry_at = titan_clock_mono_ms() + BUSY_RETRY_MS;
    } else {
        sl->state = SL_SENT; /* given up with the others in jobs_reset_dealer */
        jobs_reset_dealer(c, -rc);
    }
}

/* The slot whose request the routing frame m names, or NULL (a stale or foreign reply). */
static jobs_slot *s_slot_of(titan_jobs_consumer *c, zmq_msg_t *m)
{
    char tag[32];
    size_t n = zmq_msg_size(m);
    if (n < 4 || n >= sizeof(tag)) return NULL;
    memcpy(tag, zmq_msg_data(m), n);
    tag[n] = '\0';
    char *dot, *end;
    long idx = strtol(tag + 1, &dot, 10);
    if (tag[0] != 'j' || *dot != '.' || idx < 0 || idx >= c->nslots) return NULL;
    unsigned long seq = strtoul(dot + 1, &end, 10);
    jobs_slot *sl = &c->slots[idx];
    if (*end || seq != sl->seq || sl->state != SL_SENT) return NULL;
    return sl;
}

static int s_classify(jobs_outcome *o);

/* Takes every reply waiting on the socket to its slot: DONE, or BUSY when the answer is "busy".
 * Returns 0, or -errno when the socket failed. */
static int s_collect(titan_jobs_consumer *c)
{
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->dealer, ZMQ_DONTWAIT) < 0) {
            int err = zmq_errno();
            zmq_msg_close(&m);
            if (err == EINTR) continue;
            return err == EAGAIN ? 0 : -err;
        }
        jobs_slot *sl = s_slot_of(c, &m);
        jobs_outcome *o = sl ? &sl->o : NULL;
        int more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        bool first = true;
        while (more) { /* the rest of a message is there once its first frame is */
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, c->dealer, 0) < 0) {
                int err = zmq_errno();
                zmq_msg_close(&m);
                if (err == EINTR) continue;
                return -err;
            }
            more = zmq_msg_more(&m);
            if (first && zmq_msg_size(&m) == 0) {
                zmq_msg_close(&m); /* the delimiter */
            } else if (o && o->nframes < MAX_REPLY_FRAMES) {
                o->frames[o->nframes++] = m;
            } else {
                zmq_msg_close(&m);
            }
            first = false;
        }
        if (!sl) continue;
        if (s_classify(o) == 1) {
            /* busy: the entry stays pending (and ours) while the worker's queue is full */
            s_outcome_clear(o);
            sl->state = SL_BUSY;
            sl->retry_at = titan_clock_mono_ms() + BUSY_RETRY_MS;
        } else {
            sl->state = SL_DONE;
        }
    }
}

static bool s_final_code(const char *code)
{
    static const char *final[] = {"bad_request", "unknown_op", "too_large", "unsupported", "unauthorized"};
    for (size_t i = 0; i < sizeof(final) / sizeof(final[0]); i++)
        if (strcmp(code, final[i]) == 0) return true;
    return false;
}

/* Sorts a reply into done / failed / retry / busy (returns 1) / shutting_down. */
static int s_classify(jobs_outcome *o)
{
    if (o->nframes == 0) {
        o->kind = O_RETRY;
        snprintf(o->code, sizeof(o->code), "internal");
        snprintf(o->error, sizeof(o->error), "the worker sent an empty reply");
        return 0;
    }
    /* Only "error" and "code" matter here, and a result may be large and hold NaN or Infinity tokens,
     * which jansson refuses: find those two members without parsing the rest. */
    const char *txt = zmq_msg_data(&o->frames[0]), *ev = NULL, *cv = NULL;
    size_t len = zmq_msg_size(&o->frames[0]), elen = 0, clen = 0;
    int found = titan_json_find_member(txt, len, "error", len, &ev, &elen);
    if (found == -EINVAL) {
        o->kind = O_RETRY;
        snprintf(o->code, sizeof(o->code), "internal");
        snprintf(o->error, sizeof(o->error), "the worker's reply header is not a JSON object");
        return 0;
    }
    if (found == -ENOENT) {
        o->kind = O_DONE;
        return 0;
    }
    json_t *err = json_loadb(ev, elen, JSON_DECODE_ANY, NULL);
    json_t *code = titan_json_find_member(txt, len, "code", len, &cv, &clen) == 0
                       ? json_loadb(cv, clen, JSON_DECODE_ANY, NULL)
                       : NULL;
    snprintf(o->code, sizeof(o->code), "%s", json_is_string(code) ? json_string_value(code) : "internal");
    snprintf(o->error, sizeof(o->error), "%s", json_is_string(err) ? json_string_value(err) : "error");
    if (err) json_decref(err);
    if (code) json_decref(code);
    if (strcmp(o->code, "busy") == 0) return 1;
    if (strcmp(o->code, "shutting_down") == 0)
        o->kind = O_REVERT;
    else
        o->kind = s_final_code(o->code) ? O_FAILED : O_RETRY;
    return 0;
}

/* Serves the slots in flight for up to wait_ms (less when a reply comes, or a heartbeat or a busy
 * retry is due): sends busy requests again, collects replies, resets idle times, and records the
 * outcomes. Once stop is asked for, a reply that is not there will not come (the server has
 * drained): those jobs stay pending. */
void jobs_pump(titan_jobs_consumer *c, double wait_ms)
{
    double now = titan_clock_mono_ms();
    for (int i = 0; i < c->nslots; i++) {
        jobs_slot *sl = &c->slots[i];
        if (sl->state != SL_BUSY || sl->retry_at > now) continue;
        if (jobs_stopping(c) || jobs_draining(c)) {
            sl->o.kind = O_REVERT; /* it never ran: undo its start */
            sl->state = SL_DONE;
        } else {
            jobs_dispatch(c, sl);
        }
    }
    double until = now + (wait_ms > 100 ? 100 : wait_ms);
    bool waiting = false; /* for a reply */
    for (int i = 0; i < c->nslots; i++) {
        jobs_slot *sl = &c->slots[i];
        if (sl->state == SL_DONE) until = now;
        if (sl->state != SL_SENT && sl->state != SL_BUSY) continue;
        if (sl->next_hb < until) until = sl->next_hb;
        if (sl->state == SL_BUSY && sl->retry_at < until) until = sl->retry_at;
        waiting |= sl->state == SL_SENT;
    }
    long wait = until <= now ? 0 : (long)(until - now) + 1;
    if (waiting) {
        zmq_pollitem_t it = {c->dealer, 0, ZMQ_POLLIN, 0};
        int n = c->dealer ? zmq_poll(&it, 1, wait) : 0;
        if (n > 0 && (it.revents & ZMQ_POLLIN)) {
            int rc = s_collect(c);
            if (rc != 0) jobs_reset_dealer(c, -rc);
        }
    } else if (wait > 0) {
        jobs_nap(c, (double)wait);
    }
    if (jobs_stopping(c)) {
        for (int i = 0; i < c->nslots; i++) {
            jobs_slot *sl = &c->slots[i];
            if (sl->state == SL_SENT) {
                sl->o.kind = O_ABANDON;
                sl->state = SL_DONE;
            } else if (sl->state == SL_BUSY) {
                sl->o.kind = O_REVERT;
                sl->state = SL_DONE;
            }
        }
    }
    jobs_heartbeats(c);
    jobs_finish(c, true);
}
