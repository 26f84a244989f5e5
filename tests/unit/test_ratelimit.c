/*
 * test_ratelimit.c - the rate limiter through guard.h, over the memory
 * store on a fake clock: exact counts per key and per client address, the
 * header values (limit, remaining, reset, retry after), refill, burst,
 * tiers (a key's own, an unknown one, anonymous), keys limited
 * independently, idle buckets evicted, the client address behind trusted
 * and untrusted proxies (X-Forwarded-For), IPv6 clients per /64, the
 * metrics, options that are refused, and four threads on one key.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "guard.h"
#include "obs.h"
#include "store.h"

/* ---- helpers ---------------------------------------------------------- */

static _Atomic uint64_t fake_now = 5000000;
static uint64_t fake_clock(void *ud) {
    (void)ud;
    return atomic_load(&fake_now);
}
static void advance(uint64_t us) { atomic_fetch_add(&fake_now, us); }

typedef struct fixture {
    metrics_registry *metrics;
    kv_store *store;
    guard_ratelimit *rl;
} fixture;

static const guard_tier TIERS[] = {
    {"default", 100, 100},
    {"anonymous", 10, 10},
    {"pro", 600, 5}, /* ten a second, five at once */
};

static fixture *make(const char *proxies) {
    fixture *f = calloc(1, sizeof *f);
    f->metrics = metrics_registry_create();
    kv_memory_options mo = {.max_bytes = 1 << 20, .now_us = fake_clock};
    assert_int_equal(kv_memory_create(&mo, &f->store), KV_OK);
    guard_ratelimit_options o = {.tiers = TIERS, .n_tiers = 3, .trusted_proxies = proxies, .store = f->store};
    guard_error err = {0};
    int rc = guard_ratelimit_create(&o, f->metrics, &f->rl, &err);
    if (rc != 0)
        print_error("%s\n", err.message);
    assert_int_equal(rc, 0);
    return f;
}

static void destroy(fixture *f) {
    guard_ratelimit_destroy(f->rl);
    kv_destroy(f->store);
    metrics_registry_destroy(f->metrics);
    free(f);
}

typedef struct decided {
    int called;
    guard_ratelimit_result r;
} decided;

static void on_decided(const guard_ratelimit_result *r, void *ud) {
    decided *d = ud;
    d->called++;
    d->r = *r;
}

static guard_ratelimit_result check(fixture *f, const char *key, const char *tier, const char *client) {
    decided d = {0};
    guard_ratelimit_req req;
    guard_ratelimit_check(f->rl, NULL, key, tier, client, &req, on_decided, &d);
    assert_int_equal(d.called, 1); /* memory: at once, exactly once */
    return d.r;
}

/* The value of one rendered series ("name{labels}"), or -1. */
static double metric_of(metrics_registry *r, const char *series) {
    char *text = metrics_render(r, NULL);
    assert_non_null(text);
    double v = -1;
    size_t n = strlen(series);
    for (char *line = text; line && *line;) {
        char *next = strchr(line, '\n');
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            v = strtod(line + n + 1, NULL);
        line = next ? next + 1 : NULL;
    }
    free(text);
    return v;
}

static const char *client_of(fixture *f, const char *peer, const char *const *xff, size_t n) {
    static char out[GUARD_CLIENT_MAX];
    guard_ratelimit_client(f->rl, peer, xff, n, out, sizeof out);
    return out;
}

/* ---- decisions ---------------------------------------------------------- */

static void test_exact_count_and_headers(void **state) {
    (void)state;
    fixture *f = make(NULL);
    for (int i = 0; i < 100; i++) {
        guard_ratelimit_result r = check(f, "web", "default", NULL);
        assert_true(r.allowed);
        assert_int_equal(r.status, KV_OK);
        assert_int_equal(r.limit, 100);
        assert_int_equal(r.remaining, 99 - i);
        assert_int_equal(r.retry_after_s, 0);
        assert_int_equal(r.reset_s, ((i + 1) * 600000 + 999999) / 1000000); /* 0.6 s a request */
        assert_string_equal(r.tier->name, "default");
    }
    guard_ratelimit_result r = check(f, "web", "default", NULL);
    assert_false(r.allowed);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.retry_after_s, 1); /* 0.6 s, rounded up */
    assert_int_equal(r.reset_s, 60);
    /* Refill: one request every 0.6 s. */
    advance(599999);
    assert_false(check(f, "web", "default", NULL).allowed);
    advance(1);
    assert_true(check(f, "web", "default", NULL).allowed);
    assert_false(check(f, "web", "default", NULL).allowed);
    advance(6000000);
    int n = 0;
    while (check(f, "web", "default", NULL).allowed)
        n++;
    assert_int_equal(n, 10);
    /* Another key is untouched. */
    r = check(f, "batch", "default", NULL);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 99);
    assert_int_equal(metric_of(f->metrics, "aiserve_ratelimit_decisions_total{result=\"allowed\"}"), 100 + 1 + 10 + 1);
    assert_int_equal(metric_of(f->metrics, "aiserve_ratelimit_decisions_total{result=\"limited\"}"), 1 + 1 + 1 + 1);
    assert_int_equal(metric_of(f->metrics, "aiserve_ratelimit_buckets"), 2);
    destroy(f);
}

static void test_tiers_and_burst(void **state) {
    (void)state;
    fixture *f = make(NULL);
    /* pro: burst 5, then one every 100 ms. */
    for (int i = 0; i < 5; i++)
        assert_true(check(f, "fast", "pro", NULL).allowed);
    guard_ratelimit_result r = check(f, "fast", "pro", NULL);
    assert_false(r.allowed);
    assert_int_equal(r.limit, 5);
    assert_int_equal(r.retry_after_s, 1);
    assert_int_equal(r.reset_s, 1); /* 0.5 s to full */
    advance(250000);
    assert_true(check(f, "fast", "pro", NULL).allowed);
    assert_true(check(f, "fast", "pro", NULL).allowed);
    assert_false(check(f, "fast", "pro", NULL).allowed);
    /* A tier that is not configured gets "default"; so does a NULL tier. */
    r = check(f, "gold", "gold", NULL);
    assert_string_equal(r.tier->name, "default");
    assert_int_equal(r.limit, 100);
    assert_string_equal(check(f, "nameless", NULL, NULL).tier->name, "default");
    assert_string_equal(guard_ratelimit_tier(f->rl, "pro")->name, "pro");
    assert_string_equal(guard_ratelimit_tier(f->rl, NULL)->name, "anonymous");
    /* Without a key: the client address and the anonymous tier, whatever
     * tier is passed. */
    for (int i = 0; i < 10; i++) {
        r = check(f, NULL, "pro", "192.0.2.1");
        assert_true(r.allowed);
        assert_string_equal(r.tier->name, "anonymous");
    }
    assert_false(check(f, "", NULL, "192.0.2.1").allowed);
    assert_true(check(f, NULL, NULL, "192.0.2.2").allowed);
    /* A key named like an address has its own bucket. */
    assert_true(check(f, "192.0.2.1", "default", NULL).allowed);
    destroy(f);
}

static void test_idle_buckets_evicted(void **state) {
    (void)state;
    fixture *f = make(NULL);
    char client[32];
    for (int i = 0; i < 500; i++) {
        snprintf(client, sizeof client, "198.51.100.%d", i % 250);
        check(f, NULL, NULL, client); /* 250 clients, two requests each */
    }
    assert_int_equal(metric_of(f->metrics, "aiserve_ratelimit_buckets"), 250);
    /* anonymous: 10 a minute; two taken, full again after 12 s. */
    advance(11999999);
    kv_maintain(f->store);
    assert_int_equal(metric_of(f->metrics, "aiserve_ratelimit_buckets"), 250);
    advance(1);
    kv_maintain(f->store);
    assert_int_equal(metric_of(f->metrics, "aiserve_ratelimit_buckets"), 0);
    /* A client that comes back starts with a full bucket, as it would have. */
    assert_int_equal(check(f, NULL, NULL, "198.51.100.1").remaining, 9);
    destroy(f);
}

/* ---- client addresses ------------------------------------------------------ */

static void test_client_address(void **state) {
    (void)state;
    fixture *f = make("10.0.0.0/8, ::1 ,192.168.1.5");
    const char *one[] = {"203.0.113.9"};
    /* An untrusted peer: the header is ignored, whatever it says. */
    assert_string_equal(client_of(f, "198.51.100.7", one, 1), "198.51.100.7");
    /* A trusted peer: the header's last address. */
    assert_string_equal(client_of(f, "10.1.2.3", one, 1), "203.0.113.9");
    assert_string_equal(client_of(f, "::1", one, 1), "203.0.113.9");
    assert_string_equal(client_of(f, "192.168.1.5", one, 1), "203.0.113.9");
    assert_string_equal(client_of(f, "192.168.1.6", one, 1), "192.168.1.6");
    /* Read from the right, skipping trusted proxies; what the client wrote
     * itself on the left is never believed. */
    const char *chain[] = {"6.6.6.6, 203.0.113.9, 10.0.0.2"};
    assert_string_equal(client_of(f, "10.0.0.1", chain, 1), "203.0.113.9");
    /* Several header lines are one list, in order. */
    const char *lines[] = {"6.6.6.6", "203.0.113.9", "10.0.0.2,10.0.0.3"};
    assert_string_equal(client_of(f, "10.0.0.1", lines, 3), "203.0.113.9");
    /* Every hop trusted: the leftmost. */
    const char *all[] = {"10.9.9.9, 10.0.0.2"};
    assert_string_equal(client_of(f, "10.0.0.1", all, 1), "10.9.9.9");
    /* Garbage ends the walk at the last good hop. */
    const char *junk[] = {"203.0.113.9, unknown, 10.0.0.2"};
    assert_string_equal(client_of(f, "10.0.0.1", junk, 1), "10.0.0.2");
    const char *blank[] = {""};
    assert_string_equal(client_of(f, "10.0.0.1", blank, 1), "10.0.0.1");
    assert_string_equal(client_of(f, "10.0.0.1", NULL, 0), "10.0.0.1");
    /* Ports and brackets as proxies write them. */
    const char *ported[] = {"203.0.113.9:4711"};
    assert_string_equal(client_of(f, "10.0.0.1", ported, 1), "203.0.113.9");
    const char *v6[] = {"[2001:db8:aa:bb:1:2:3:4]:443"};
    assert_string_equal(client_of(f, "10.0.0.1", v6, 1), "2001:db8:aa:bb::/64");
    /* IPv6 clients by /64; IPv4-mapped as IPv4. */
    assert_string_equal(client_of(f, "2001:db8:1:2:dead:beef:0:1", NULL, 0), "2001:db8:1:2::/64");
    assert_string_equal(client_of(f, "2001:db8:1:2:ffff::9", NULL, 0), "2001:db8:1:2::/64");
    assert_string_equal(client_of(f, "::ffff:198.51.100.7", NULL, 0), "198.51.100.7");
    assert_string_equal(client_of(f, "::ffff:10.0.0.1", one, 1), "203.0.113.9");
    /* A peer that is not an address is used as it is. */
    assert_string_equal(client_of(f, "", NULL, 0), "unknown");
    assert_string_equal(client_of(f, NULL, NULL, 0), "unknown");
    destroy(f);

    /* Without trusted proxies nobody's header counts. */
    f = make(NULL);
    assert_string_equal(client_of(f, "10.0.0.1", one, 1), "10.0.0.1");
    assert_string_equal(client_of(f, "127.0.0.1", one, 1), "127.0.0.1");
    destroy(f);
}

/* ---- options ---------------------------------------------------------- */

static void test_bad_options(void **state) {
    (void)state;
    kv_memory_options mo = {.max_bytes = 1 << 20};
    kv_store *store;
    assert_int_equal(kv_memory_create(&mo, &store), KV_OK);
    guard_ratelimit *rl = NULL;
    guard_error err = {0};
    guard_ratelimit_options o = {.tiers = TIERS, .n_tiers = 1, .store = store}; /* no anonymous */
    assert_int_equal(guard_ratelimit_create(&o, NULL, &rl, &err), GUARD_EINVAL);
    assert_non_null(strstr(err.message, "anonymous"));
    assert_null(rl);
    o.n_tiers = 3;
    o.trusted_proxies = "10.0.0.0/33";
    assert_int_equal(guard_ratelimit_create(&o, NULL, &rl, &err), GUARD_EINVAL);
    o.trusted_proxies = "proxy.example";
    assert_int_equal(guard_ratelimit_create(&o, NULL, &rl, &err), GUARD_EINVAL);
    assert_non_null(strstr(err.message, "proxy.example"));
    guard_tier zero[] = {{"default", 0, 1}, {"anonymous", 1, 1}};
    o = (guard_ratelimit_options){.tiers = zero, .n_tiers = 2, .store = store};
    assert_int_equal(guard_ratelimit_create(&o, NULL, &rl, &err), GUARD_EINVAL);
    o = (guard_ratelimit_options){.tiers = TIERS, .n_tiers = 3};
    assert_int_equal(guard_ratelimit_create(&o, NULL, &rl, &err), GUARD_EINVAL); /* no store */
    /* Fine without metrics. */
    o.store = store;
    assert_int_equal(guard_ratelimit_create(&o, NULL, &rl, &err), 0);
    guard_ratelimit_destroy(rl);
    guard_ratelimit_destroy(NULL);
    kv_destroy(store);
}

/* The registry may render after the limiter is gone. */
static void test_metrics_outlive_limiter(void **state) {
    (void)state;
    fixture *f = make(NULL);
    check(f, "a", "default", NULL);
    guard_ratelimit_destroy(f->rl);
    f->rl = NULL;
    kv_destroy(f->store);
    f->store = NULL;
    assert_int_equal(metric_of(f->metrics, "aiserve_ratelimit_decisions_total{result=\"allowed\"}"), 1);
    destroy(f);
}

/* ---- threads ---------------------------------------------------------- */

typedef struct worker {
    fixture *f;
    pthread_barrier_t *go;
    const char *key;
    int allowed;
} worker;

static void on_count(const guard_ratelimit_result *r, void *ud) {
    if (r->allowed)
        ((worker *)ud)->allowed++;
}

static void *hammer(void *arg) {
    worker *w = arg;
    pthread_barrier_wait(w->go);
    for (int i = 0; i < 60; i++) {
        guard_ratelimit_req req;
        guard_ratelimit_check(w->f->rl, NULL, w->key, "default", NULL, &req, on_count, w);
    }
    return NULL;
}

static void test_four_threads_one_key(void **state) {
    (void)state;
    fixture *f = make(NULL);
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, 4);
    worker w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){.f = f, .go = &go, .key = "shared"};
        pthread_create(&th[i], NULL, hammer, &w[i]);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        total += w[i].allowed;
    }
    assert_int_equal(total, 100); /* 240 tries, limit 100 with burst 100, clock frozen */
    assert_int_equal(metric_of(f->metrics, "aiserve_ratelimit_decisions_total{result=\"allowed\"}"), 100);
    assert_int_equal(metric_of(f->metrics, "aiserve_ratelimit_decisions_total{result=\"limited\"}"), 140);
    pthread_barrier_destroy(&go);
    destroy(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_count_and_headers),
        cmocka_unit_test(test_tiers_and_burst),
        cmocka_unit_test(test_idle_buckets_evicted),
        cmocka_unit_test(test_client_address),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_metrics_outlive_limiter),
        cmocka_unit_test(test_four_threads_one_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
