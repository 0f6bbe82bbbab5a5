/* redis_ceiling.c - the reference for the jobs benchmark: a bare LPUSH/BRPOP queue through one
 * Redis server, one item per BRPOP, as fast as a C consumer can take them.
 * Usage: redis_ceiling HOST PORT N CONSUMERS   (prints "ceiling items=N consumers=C s=... per_s=...") */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "benchutil.h"

static const char *s_host;
static int s_port;
static long s_per_consumer;

static void *s_consume(void *arg)
{
    (void)arg;
    redisContext *c = redisConnect(s_host, s_port);
    if (!c || c->err) {
        fprintf(stderr, "redis_ceiling: cannot connect: %s\n", c ? c->errstr : "out of memory");
        exit(1);
    }
    for (long i = 0; i < s_per_consumer; i++) {
        redisReply *r = redisCommand(c, "BRPOP bench:ceiling 5");
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "redis_ceiling: BRPOP failed or timed out\n");
            exit(1);
        }
        freeReplyObject(r);
    }
    redisFree(c);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: redis_ceiling HOST PORT N CONSUMERS\n");
        return 2;
    }
    s_host = argv[1];
    s_port = atoi(argv[2]);
    long n = atol(argv[3]);
    int consumers = atoi(argv[4]);
    if (s_port <= 0 || n <= 0 || consumers <= 0 || consumers > 64) {
        fprintf(stderr, "redis_ceiling: bad arguments\n");
        return 2;
    }
    s_per_consumer = n / consumers;
    n = s_per_consumer * consumers;
    redisContext *c = redisConnect(s_host, s_port);
    if (!c || c->err) {
        fprintf(stderr, "redis_ceiling: cannot connect\n");
        return 1;
    }
    freeReplyObject(redisCommand(c, "DEL bench:ceiling"));
    /* the producer pipelines its pushes, as a job submitter would */
    pthread_t th[64];
    double t0 = bench_now();
    for (int i = 0; i < consumers; i++) pthread_create(&th[i], NULL, s_consume, NULL);
    for (long i = 0; i < n; i++) redisAppendCommand(c, "LPUSH bench:ceiling %ld", i);
    for (long i = 0; i < n; i++) {
        redisReply *r;
        if (redisGetReply(c, (void **)&r) != REDIS_OK) return 1;
        freeReplyObject(r);
    }
    for (int i = 0; i < consumers; i++) pthread_join(th[i], NULL);
    double s = bench_now() - t0;
    printf("ceiling items=%ld consumers=%d s=%.4f per_s=%.0f\n", n, consumers, s, (double)n / s);
    redisFree(c);
    return 0;
}
