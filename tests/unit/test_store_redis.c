/*
 * test_store_redis.c - the Redis key-value backend through store.h, against
 * a real redis-server started here on a free loopback port: the token
 * bucket script gives exactly kv_bucket_step's answers (the memory
 * backend's arithmetic) over thousands of random steps, at the edges of the
 * number range, and with a clock that goes back; counters giving exactly
 * the memory backend's answers (int64 edges included), keeping their first
 * time to live, and never passing their limit when two stores (two
 * replicas) add at once; scripts sent again after SCRIPT FLUSH; get / set
 * with binary values and times to live; the wrong kind of value under a
 * key (buckets, counters, values, every way); key
 * prefixes; an operation on a loop that was never attached; detach failing
 * pending operations exactly once; Redis killed (operations fail at once,
 * health says why) and restarted (the connection comes back by itself);
 * and URLs that are refused without echoing a password.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "store.h"
#include "store_int.h"

#include "redis_server.h"

/* ---- a loop and a store ------------------------------------------------- */

static _Atomic uint64_t fake_now = 1000000;
static uint64_t fake_clock(void *ud) {
    (void)ud;
    return fake_now;
}

typedef struct fixture {
    struct event_base *base;
    kv_store *s;
} fixture;

static kv_store *make_store(const char *prefix, bool fake_time) {
    char url[64], err[256] = "";
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/1", redis_port);
    kv_redis_options o = {.url = url, .key_prefix = prefix, .retry_min_us = 20000, .retry_max_us = 100000,
                          .now_us = fake_time ? fake_clock : NULL};
    kv_store *s = NULL;
    assert_int_equal(kv_redis_create(&o, &s, err, sizeof err), KV_OK);
    assert_string_equal(kv_backend_name(s), "redis");
    return s;
}

/* Runs the loop until *count reaches want (at most about 10 s); whether
 * it did. */
static bool loop_until(struct event_base *base, const int *count, int want) {
    for (int i = 0; i < 10000 && *count < want; i++) {
        struct timeval tv = {0, 1000};
        event_base_loopexit(base, &tv);
        event_base_loop(base, 0);
    }
    return *count >= want;
}

/* Runs the loop until *flag is set (at most 10 s). */
static void run_until(struct event_base *base, const int *flag) { assert_true(loop_until(base, flag, 1)); }

/* One command on a plain connection to the tests' database, for what the
 * store does not do (SCRIPT FLUSH, PTTL); the caller frees the reply. */
static redisReply *command(const char *fmt, ...) {
    redisContext *rc = redisConnect("127.0.0.1", redis_port);
    assert_true(rc && !rc->err);
    freeReplyObject(redisCommand(rc, "SELECT 1"));
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    redisFree(rc);
    assert_non_null(r);
    return r;
}

static long long command_int(const char *fmt, const char *arg) {
    redisReply *r = command(fmt, arg);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static void wait_healthy(fixture *f, bool want) {
    kv_health h;
    for (int i = 0; i < 3000; i++) {
        kv_get_health(f->s, &h);
        if (h.ok == want)
            return;
        struct timeval tv = {0, 5000};
        event_base_loopexit(f->base, &tv);
        event_base_loop(f->base, 0);
    }
    fail_msg("health never became %d (%s)", want, h.reason);
}

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    f->base = event_base_new();
    f->s = make_store("t:", true);
    assert_int_equal(kv_attach(f->s, f->base), KV_OK);
    wait_healthy(f, true);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    kv_detach(f->s, f->base);
    kv_destroy(f->s);
    event_base_free(f->base);
    free(f);
    return 0;
}

typedef struct got {
    int called, status;
    char value[256];
    size_t len;
} got;

static void on_get(int status, const void *value, size_t len, void *ud) {
    got *g = ud;
    g->called++;
    g->status = status;
    g->len = len;
    if (value && len < sizeof g->value)
        memcpy(g->value, value, len);
}

static got get(fixture *f, const char *key) {
    got g = {0};
    kv_get(f->s, f->base, key, strlen(key), on_get, &g);
    run_until(f->base, &g.called);
    assert_int_equal(g.called, 1);
    return g;
}

typedef struct done {
    int called, status;
} done;

static void on_set(int status, void *ud) {
    done *d = ud;
    d->called++;
    d->status = status;
}

static int set(fixture *f, const char *key, const void *value, size_t len, uint64_t ttl_us) {
    done d = {0};
    kv_set(f->s, f->base, key, strlen(key), value, len, ttl_us, on_set, &d);
    run_until(f->base, &d.called);
    return d.status;
}

typedef struct took {
    int called, status;
    kv_bucket_result r;
} took;

static void on_bucket(int status, const kv_bucket_result *r, void *ud) {
    took *t = ud;
    t->called++;
    t->status = status;
    if (r)
        t->r = *r;
}

static took take(fixture *f, const char *key, const kv_bucket_params *p) {
    took t = {0};
    kv_bucket_take(f->s, f->base, key, strlen(key), p, on_bucket, &t);
    run_until(f->base, &t.called);
    assert_int_equal(t.called, 1);
    return t;
}

typedef struct added {
    int called, status;
    kv_counter_result r;
} added;

static void on_counter(int status, const kv_counter_result *r, void *ud) {
    added *a = ud;
    a->called++;
    a->status = status;
    if (r)
        a->r = *r;
}

static added add_on(kv_store *s, struct event_base *base, const char *key, int64_t delta, int64_t limit,
                    uint64_t ttl_us) {
    added a = {0};
    kv_counter_add(s, base, key, strlen(key), delta, limit, ttl_us, on_counter, &a);
    if (base)
        run_until(base, &a.called);
    assert_int_equal(a.called, 1);
    return a;
}

static added add(fixture *f, const char *key, int64_t delta, int64_t limit, uint64_t ttl_us) {
    return add_on(f->s, f->base, key, delta, limit, ttl_us);
}

/* ---- token buckets: the script equals kv_bucket_step ------------------------ */

typedef struct model_bucket {
    int fresh;
    int64_t level;
    uint64_t last;
} model_bucket;

static void step_both(fixture *f, const char *key, model_bucket *m, const kv_bucket_params *p) {
    kv_bucket_result want;
    kv_bucket_step(p, m->fresh, &m->level, &m->last, fake_now, &want);
    m->fresh = 0;
    took t = take(f, key, p);
    assert_int_equal(t.status, KV_OK);
    if (t.r.allowed != want.allowed || t.r.remaining != want.remaining ||
        t.r.retry_after_us != want.retry_after_us || t.r.reset_us != want.reset_us)
        fail_msg("%s cap %lld refill %lld period %lld cost %lld now %llu: redis %d/%lld/%lld/%lld, C %d/%lld/%lld/%lld",
                 key, (long long)p->capacity, (long long)p->refill, (long long)p->period_us, (long long)p->cost,
                 (unsigned long long)fake_now, t.r.allowed, (long long)t.r.remaining,
                 (long long)t.r.retry_after_us, (long long)t.r.reset_us, want.allowed, (long long)want.remaining,
                 (long long)want.retry_after_us, (long long)want.reset_us);
}

static void test_bucket_script_equals_c(void **state) {
    fixture *f = *state;
    srandom(7);
    static const int64_t periods[] = {1, 1000, 1000000, 60000000, 3600000000};
    for (int b = 0; b < 40; b++) {
        char key[32];
        snprintf(key, sizeof key, "rl:random:%d", b);
        kv_bucket_params p = {.capacity = 1 + random() % 1000, .refill = 1 + random() % 100000,
                              .period_us = periods[random() % 5]};
        model_bucket m = {.fresh = 1};
        for (int i = 0; i < 60; i++) {
            p.cost = random() % 4 == 0 ? random() % (p.capacity + 1) : 1;
            long r = random() % 10;
            if (r < 6)
                fake_now += (uint64_t)(random() % 2000);
            else if (r < 9)
                fake_now += (uint64_t)(random() % 100000000);
            else
                fake_now -= (uint64_t)(random() % 1000); /* a clock that went back refills nothing */
            step_both(f, key, &m, &p);
        }
    }
}

static void test_bucket_edges(void **state) {
    fixture *f = *state;
    /* Levels near 2^53 (the largest params allow), where doubles are
     * still exact but a careless division is not. */
    kv_bucket_params p = {.capacity = (INT64_C(1) << 22) - 1, .refill = 999983, .period_us = (INT64_C(1) << 31) - 1,
                          .cost = 1};
    assert_int_equal(kv_bucket_params_check(&p), KV_OK);
    model_bucket m = {.fresh = 1};
    for (int i = 0; i < 200; i++) {
        p.cost = i % 3 == 0 ? (INT64_C(1) << 21) + i : 1;
        fake_now += (uint64_t)(i * 7919);
        step_both(f, "rl:edge", &m, &p);
    }
    /* Capacity 1, cost 1, long period: exactly one, then retry_after. */
    kv_bucket_params one = {.capacity = 1, .refill = 1, .period_us = 60000000, .cost = 1};
    took t = take(f, "rl:one", &one);
    assert_true(t.r.allowed);
    assert_int_equal(t.r.remaining, 0);
    t = take(f, "rl:one", &one);
    assert_false(t.r.allowed);
    assert_int_equal(t.r.retry_after_us, 60000000);
    /* Bad params never reach Redis. */
    kv_bucket_params bad = one;
    bad.cost = 2;
    t = (took){0};
    kv_bucket_take(f->s, f->base, "rl:one", 6, &bad, on_bucket, &t);
    assert_int_equal(t.called, 1);
    assert_int_equal(t.status, KV_EINVAL);
}

/* ---- counters ---------------------------------------------------------------- */

/* One step sent to Redis and to the memory backend. Redis answers a
 * connection's commands in order, so many can be in flight at once. */
typedef struct both {
    char key[32];
    int64_t delta, limit;
    added want, have;
    int *answered;
} both;

static void on_both(int status, const kv_counter_result *r, void *ud) {
    both *b = ud;
    on_counter(status, r, &b->have);
    (*b->answered)++;
}

/* Sends steps[0..n) to both backends at once, then compares the answers. */
static void steps_on_both(fixture *f, kv_store *mem, both *steps, int n) {
    int answered = 0;
    for (int i = 0; i < n; i++) {
        both *b = &steps[i];
        b->want = add_on(mem, NULL, b->key, b->delta, b->limit, 0);
        b->answered = &answered;
        kv_counter_add(f->s, f->base, b->key, strlen(b->key), b->delta, b->limit, 0, on_both, b);
    }
    assert_true(loop_until(f->base, &answered, n));
    for (int i = 0; i < n; i++) {
        const both *b = &steps[i];
        if (b->have.called != 1 || b->have.status != b->want.status || b->have.r.applied != b->want.r.applied ||
            b->have.r.value != b->want.r.value)
            fail_msg("step %d, %s %+lld limit %lld: redis %d/%d/%lld, memory %d/%d/%lld", i, b->key,
                     (long long)b->delta, (long long)b->limit, b->have.status, b->have.r.applied,
                     (long long)b->have.r.value, b->want.status, b->want.r.applied, (long long)b->want.r.value);
    }
}

/* A number near one of the places where a careless comparison goes wrong:
 * 0, 2^53 (doubles stop being exact), the ends of int64. */
static int64_t near_edge(void) {
    static const int64_t edges[] = {0, INT64_C(1) << 53, -(INT64_C(1) << 53), INT64_MAX, INT64_MIN};
    int64_t e = edges[random() % 5], off = random() % 21 - 10;
    if ((e == INT64_MAX && off > 0) || (e == INT64_MIN && off < 0))
        off = -off;
    return e + off;
}

static void test_counter_script_equals_memory(void **state) {
    fixture *f = *state;
    kv_store *mem = NULL;
    assert_int_equal(kv_memory_create(&(kv_memory_options){.max_bytes = 1 << 20}, &mem), KV_OK);
    /* The edges, one by one. */
    const int64_t p53 = INT64_C(1) << 53;
#define S(k, d, l) {.key = k, .delta = d, .limit = l}
    both edges[] = {
        S("b:k", 5, 4), S("b:k", 4, 10), S("b:k", 6, 10), S("b:k", 1, 10), S("b:k", 0, 10), S("b:k", -3, 0),
        S("b:k", -100, -1000), S("b:k", 200, 100), S("b:k", 193, 100), S("b:k", 50, INT64_MAX),
        S("b:big", p53 + 1, INT64_MAX), S("b:big", 1, p53 + 2), S("b:big", 1, p53 + 2),
        S("b:hi", INT64_MAX, INT64_MAX), S("b:hi", 1, INT64_MAX), S("b:hi", INT64_MIN, 0),
        S("b:lo", INT64_MIN, 0), S("b:lo", -1, 0), S("b:lo", 1, INT64_MIN), S("b:lo", INT64_MAX, -1),
    };
#undef S
    steps_on_both(f, mem, edges, (int)(sizeof edges / sizeof edges[0]));
    added a = add(f, "b:big", 0, 0, 0);
    assert_int_equal(a.r.value, p53 + 2); /* exact beyond what a double holds */
    /* Then random steps: small numbers, and numbers near the edges. */
    enum { N_RANDOM = 5000 };
    both *steps = calloc(N_RANDOM, sizeof *steps);
    srandom(11);
    for (int i = 0; i < N_RANDOM; i++) {
        snprintf(steps[i].key, sizeof steps[i].key, "b:random:%ld", random() % 6);
        steps[i].delta = random() % 3 ? random() % 201 - 60 : near_edge();
        steps[i].limit = random() % 3 ? random() % 2001 - 200 : near_edge();
    }
    steps_on_both(f, mem, steps, N_RANDOM);
    free(steps);
    kv_destroy(mem);
}

static void test_counter_ttl_and_types(void **state) {
    fixture *f = *state;
    /* Refused on a missing counter: nothing is made. */
    added a = add(f, "b:none", 5, 4, 1000000);
    assert_false(a.r.applied);
    assert_int_equal(a.r.value, 0);
    assert_int_equal(get(f, "b:none").status, KV_ENOTFOUND);
    /* The first step's time to live (300 ms, Redis's real time) holds:
     * a later step asking for a minute does not move it. */
    assert_true(add(f, "b:ttl", 5, 100, 300000).r.applied);
    a = add(f, "b:ttl", 1, 100, 60000000);
    assert_true(a.r.applied);
    assert_int_equal(a.r.value, 6);
    long long pttl = command_int("PTTL t:%s", "b:ttl");
    assert_true(pttl > 0 && pttl <= 300);
    got g = get(f, "b:ttl"); /* there, as a counter */
    assert_int_equal(g.status, KV_EWRONGTYPE);
    for (int i = 0; i < 1000 && g.status != KV_ENOTFOUND; i++) {
        sleep_ms(5);
        g = get(f, "b:ttl");
    }
    assert_int_equal(g.status, KV_ENOTFOUND);
    a = add(f, "b:ttl", 2, 100, 0); /* starts over, now without expiry */
    assert_int_equal(a.r.value, 2);
    assert_int_equal(command_int("PTTL t:%s", "b:ttl"), -1);
    /* The wrong kind under a key, every way, leaving what is there intact. */
    kv_bucket_params p = {.capacity = 5, .refill = 5, .period_us = 1000000, .cost = 1};
    assert_int_equal(set(f, "c:v", "12", 2, 0), KV_OK); /* digits, still a value */
    assert_int_equal(add(f, "c:v", 1, 100, 0).status, KV_EWRONGTYPE);
    g = get(f, "c:v");
    assert_int_equal(g.status, KV_OK);
    assert_memory_equal(g.value, "12", 2);
    assert_int_equal(take(f, "rl:b", &p).status, KV_OK);
    assert_int_equal(add(f, "rl:b", 1, 100, 0).status, KV_EWRONGTYPE);
    assert_int_equal(take(f, "rl:b", &p).r.remaining, 3);
    assert_true(add(f, "b:c", 4, 100, 0).r.applied);
    assert_int_equal(get(f, "b:c").status, KV_EWRONGTYPE);
    assert_int_equal(take(f, "b:c", &p).status, KV_EWRONGTYPE);
    assert_int_equal(add(f, "b:c", 0, 0, 0).r.value, 4);
    redisReply *r = command("LPUSH t:%s x", "b:list"); /* a kind the store never makes */
    freeReplyObject(r);
    assert_int_equal(add(f, "b:list", 1, 100, 0).status, KV_EWRONGTYPE);
    assert_int_equal(set(f, "b:c", "v", 1, 0), KV_OK); /* set replaces a counter */
    assert_int_equal(get(f, "b:c").status, KV_OK);
    /* Bad keys: at once, without Redis. */
    added bad = {0};
    kv_counter_add(f->s, f->base, "", 0, 1, 10, 0, on_counter, &bad);
    assert_int_equal(bad.called, 1);
    assert_int_equal(bad.status, KV_EINVAL);
}

/* SCRIPT FLUSH (or a failover to a server that never saw the scripts):
 * the next steps send the scripts themselves and succeed. */
static void test_scripts_after_flush(void **state) {
    fixture *f = *state;
    kv_bucket_params p = {.capacity = 5, .refill = 5, .period_us = 1000000, .cost = 1};
    assert_true(add(f, "b:flush", 3, 10, 0).r.applied);
    assert_true(take(f, "rl:flush", &p).r.allowed);
    freeReplyObject(command("SCRIPT FLUSH"));
    added a = add(f, "b:flush", 3, 10, 0);
    assert_int_equal(a.status, KV_OK);
    assert_int_equal(a.r.value, 6);
    took t = take(f, "rl:flush", &p);
    assert_int_equal(t.status, KV_OK);
    assert_int_equal(t.r.remaining, 3);
    assert_int_equal(add(f, "b:flush", 3, 10, 0).r.value, 9); /* cached again: EVALSHA */
}

/* Two stores, each on its own loop and thread (two replicas of the server),
 * add to one counter with a limit at once, many steps in flight each. */
typedef struct replica {
    fixture f;
    pthread_barrier_t *go;
    int answered, applied, over, errors;
} replica;

#define REPLICA_STEPS 400
#define REPLICA_DELTA 7
#define REPLICA_LIMIT 1000

static void on_replica_step(int status, const kv_counter_result *r, void *ud) {
    replica *rp = ud;
    rp->answered++;
    if (status != KV_OK)
        rp->errors++;
    else if (r->applied && r->value > REPLICA_LIMIT)
        rp->over++;
    else if (r->applied)
        rp->applied++;
}

static void *replica_run(void *arg) {
    replica *rp = arg;
    pthread_barrier_wait(rp->go);
    for (int sent = 0; sent < REPLICA_STEPS;) {
        for (int k = 0; k < 50; k++, sent++)
            kv_counter_add(rp->f.s, rp->f.base, "b:shared", 8, REPLICA_DELTA, REPLICA_LIMIT, 60000000,
                           on_replica_step, rp);
        if (!loop_until(rp->f.base, &rp->answered, sent))
            break;
    }
    return NULL;
}

static void test_counter_two_replicas(void **state) {
    fixture *f = *state;
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, 2);
    replica rp[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        rp[i] = (replica){.f = {.base = event_base_new(), .s = make_store("t:", false)}, .go = &go};
        assert_int_equal(kv_attach(rp[i].f.s, rp[i].f.base), KV_OK);
        wait_healthy(&rp[i].f, true); /* the loop goes to its thread only after */
    }
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, replica_run, &rp[i]);
    int applied = 0;
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(rp[i].answered, REPLICA_STEPS);
        assert_int_equal(rp[i].errors, 0);
        assert_int_equal(rp[i].over, 0);
        applied += rp[i].applied;
        assert_true(rp[i].applied > 0); /* both took part */
        kv_detach(rp[i].f.s, rp[i].f.base);
        kv_destroy(rp[i].f.s);
        event_base_free(rp[i].f.base);
    }
    pthread_barrier_destroy(&go);
    assert_int_equal(applied, REPLICA_LIMIT / REPLICA_DELTA);
    assert_int_equal(add(f, "b:shared", 0, 0, 0).r.value, (int64_t)applied * REPLICA_DELTA);
}

/* ---- values ------------------------------------------------------------------ */

static void test_get_set_ttl_and_types(void **state) {
    fixture *f = *state;
    assert_int_equal(get(f, "c:missing").status, KV_ENOTFOUND);
    static const char binary[] = {'a', 0, 'b', '\r', '\n', (char)0xff};
    assert_int_equal(set(f, "c:bin", binary, sizeof binary, 0), KV_OK);
    got g = get(f, "c:bin");
    assert_int_equal(g.status, KV_OK);
    assert_int_equal(g.len, sizeof binary);
    assert_memory_equal(g.value, binary, sizeof binary);
    assert_int_equal(set(f, "c:bin", "", 0, 0), KV_OK); /* replaced; empty is a value */
    g = get(f, "c:bin");
    assert_int_equal(g.status, KV_OK);
    assert_int_equal(g.len, 0);
    /* Times to live are Redis's (real time): 150 ms. */
    assert_int_equal(set(f, "c:ttl", "soon gone", 9, 150000), KV_OK);
    assert_int_equal(get(f, "c:ttl").status, KV_OK);
    sleep_ms(300);
    assert_int_equal(get(f, "c:ttl").status, KV_ENOTFOUND);
    /* The wrong kind of entry under a key, both ways. */
    kv_bucket_params p = {.capacity = 5, .refill = 5, .period_us = 1000000, .cost = 1};
    assert_int_equal(take(f, "rl:typed", &p).status, KV_OK);
    assert_int_equal(get(f, "rl:typed").status, KV_EWRONGTYPE);
    assert_int_equal(take(f, "c:bin", &p).status, KV_EWRONGTYPE);
    /* Bad keys are refused at once, without Redis. */
    got bad = {0};
    kv_get(f->s, f->base, "", 0, on_get, &bad);
    assert_int_equal(bad.called, 1);
    assert_int_equal(bad.status, KV_EINVAL);
    char big[KV_KEY_MAX + 2];
    memset(big, 'k', sizeof big);
    bad = (got){0};
    kv_get(f->s, f->base, big, sizeof big, on_get, &bad);
    assert_int_equal(bad.status, KV_EINVAL);
}

static void test_prefix_separates(void **state) {
    fixture *f = *state;
    kv_store *other = make_store("other:", true);
    assert_int_equal(kv_attach(other, f->base), KV_OK);
    assert_int_equal(set(f, "c:shared-name", "mine", 4, 0), KV_OK);
    got g = {0};
    kv_get(other, f->base, "c:shared-name", 13, on_get, &g);
    run_until(f->base, &g.called);
    assert_int_equal(g.status, KV_ENOTFOUND);
    kv_detach(other, f->base);
    kv_destroy(other);
}

/* ---- loops, outages, shutdown --------------------------------------------------- */

static void test_unattached_loop_and_detach(void **state) {
    fixture *f = *state;
    /* A loop that was never attached (and NULL) get KV_EUNAVAILABLE at once. */
    struct event_base *stranger = event_base_new();
    got g = {0};
    kv_get(f->s, stranger, "c:x", 3, on_get, &g);
    assert_int_equal(g.called, 1);
    assert_int_equal(g.status, KV_EUNAVAILABLE);
    g = (got){0};
    kv_get(f->s, NULL, "c:x", 3, on_get, &g);
    assert_int_equal(g.status, KV_EUNAVAILABLE);
    event_base_free(stranger);
    /* Detach ends what is pending, exactly once each, before it returns. */
    struct event_base *base = event_base_new();
    kv_store *s = make_store("t:", false);
    assert_int_equal(kv_attach(s, base), KV_OK);
    got pending[3] = {{0}};
    for (int i = 0; i < 3; i++)
        kv_get(s, base, "c:x", 3, on_get, &pending[i]);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pending[i].called, 0); /* queued behind the handshake */
    kv_detach(s, base);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pending[i].called, 1);
        assert_int_equal(pending[i].status, KV_EUNAVAILABLE);
    }
    g = (got){0};
    kv_get(s, base, "c:x", 3, on_get, &g);
    assert_int_equal(g.status, KV_EUNAVAILABLE);
    kv_destroy(s);
    event_base_free(base);
}

static void test_outage_and_recovery(void **state) {
    fixture *f = *state;
    assert_int_equal(set(f, "c:before", "1", 1, 0), KV_OK);
    redis_kill();
    wait_healthy(f, false);
    kv_health h;
    kv_get_health(f->s, &h);
    char port[16];
    snprintf(port, sizeof port, ":%d", redis_port);
    assert_non_null(strstr(h.reason, port));
    /* Down: every operation fails at once, on this thread. */
    got g = {0};
    kv_get(f->s, f->base, "c:before", 8, on_get, &g);
    assert_int_equal(g.called, 1);
    assert_int_equal(g.status, KV_EUNAVAILABLE);
    took t = {0};
    kv_bucket_params p = {.capacity = 5, .refill = 5, .period_us = 1000000, .cost = 1};
    kv_bucket_take(f->s, f->base, "rl:down", 7, &p, on_bucket, &t);
    assert_int_equal(t.called, 1);
    assert_int_equal(t.status, KV_EUNAVAILABLE);
    /* Back (empty, as after a crash without persistence): it reconnects by itself. */
    redis_start();
    wait_healthy(f, true);
    assert_int_equal(get(f, "c:before").status, KV_ENOTFOUND);
    assert_int_equal(set(f, "c:after", "2", 1, 0), KV_OK);
    assert_int_equal(get(f, "c:after").status, KV_OK);
    assert_int_equal(take(f, "rl:after", &p).status, KV_OK); /* the script was loaded again */
}

/* ---- URLs ---------------------------------------------------------------------- */

static void test_urls(void **state) {
    (void)state;
    static const struct {
        const char *url;
        int status;
        const char *words;
    } cases[] = {
        {"redis://127.0.0.1", KV_OK, NULL},
        {"redis://localhost:6380/15", KV_OK, NULL},
        {"redis://:pa%40ss@[::1]:6379/2", KV_OK, NULL},
        {"redis://user:pw@host", KV_OK, NULL},
        {"unix:///run/redis.sock?db=3", KV_OK, NULL},
        {"", KV_EINVAL, "must start with"},
        {"http://x", KV_EINVAL, "must start with"},
        {"rediss://x", KV_EINVAL, "TLS"},
        {"redis://", KV_EINVAL, "no host"},
        {"redis://h:0", KV_EINVAL, "port"},
        {"redis://h:70000", KV_EINVAL, "port"},
        {"redis://h:12x", KV_EINVAL, "port"},
        {"redis://h/x", KV_EINVAL, "database"},
        {"redis://[::1", KV_EINVAL, "unclosed"},
        {"redis://topsecret@h", KV_EINVAL, "password"},
        {"redis://:top%zzsecret@h", KV_EINVAL, "escape"},
        {"redis://:top%00secret@h", KV_EINVAL, "escape"},
        {"unix://rel.sock", KV_EINVAL, "absolute"},
        {"unix:///a.sock?x=1", KV_EINVAL, "db=N"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[256] = "";
        kv_redis_options o = {.url = cases[i].url};
        kv_store *s = NULL;
        int rc = kv_redis_create(&o, &s, err, sizeof err);
        if (rc != cases[i].status)
            fail_msg("%s: %d (%s)", cases[i].url, rc, err);
        if (rc == KV_OK) {
            kv_health h;
            kv_get_health(s, &h); /* no loop attached yet */
            assert_false(h.ok);
            assert_null(strstr(h.reason, "pa@ss"));
            kv_destroy(s);
            continue;
        }
        assert_null(s);
        if (!strstr(err, cases[i].words))
            fail_msg("%s: '%s' lacks '%s'", cases[i].url, err, cases[i].words);
        assert_null(strstr(err, "secret"));
    }
    char err[64];
    kv_redis_options o = {.url = "redis://h", .key_prefix = "0123456789012345678901234567890123456789012345678901234567890123456789"};
    kv_store *s = NULL;
    assert_int_equal(kv_redis_create(&o, &s, err, sizeof err), KV_EINVAL);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    redis_port = free_port();
    redis_start();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_urls),
        cmocka_unit_test_setup_teardown(test_bucket_script_equals_c, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bucket_edges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counter_script_equals_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counter_ttl_and_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scripts_after_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counter_two_replicas, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_set_ttl_and_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefix_separates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unattached_loop_and_detach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outage_and_recovery, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (redis_pid)
        redis_kill();
    return failed;
}
