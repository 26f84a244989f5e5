/*
 * test_store_redis.c - the Redis key-value backend through store.h, against
 * a real redis-server started here on a free loopback port: the token
 * bucket script gives exactly kv_bucket_step's answers (the memory
 * backend's arithmetic) over thousands of random steps, at the edges of the
 * number range, and with a clock that goes back; get / set with binary
 * values and times to live; the wrong kind of value under a key; key
 * prefixes; an operation on a loop that was never attached; detach failing
 * pending operations exactly once; Redis killed (operations fail at once,
 * health says why) and restarted (the connection comes back by itself);
 * and URLs that are refused without echoing a password.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
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

/* Runs the loop until *flag is set (at most 10 s). */
static void run_until(struct event_base *base, const int *flag) {
    for (int i = 0; i < 10000 && !*flag; i++) {
        struct timeval tv = {0, 1000};
        event_base_loopexit(base, &tv);
        event_base_loop(base, 0);
    }
    assert_true(*flag);
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
