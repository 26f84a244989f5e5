/*
 * test_cache.c - the response cache through guard.h, over the memory store
 * on a fake clock: the key (model, version, kind, every text with its
 * length, parameters: change any and the key changes; versions never
 * share), hit after miss with the same bytes, the time to live, the LRU
 * bounded in bytes with its eviction metrics, bypass counts, and
 * coalescing: one leader, followers answered once with the leader's answer
 * or error, a new flight after publishing, and four threads racing to
 * lead.
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

static _Atomic uint64_t fake_now = 7000000;
static uint64_t fake_clock(void *ud) {
    (void)ud;
    return atomic_load(&fake_now);
}
static void advance(uint64_t us) { atomic_fetch_add(&fake_now, us); }

typedef struct fixture {
    metrics_registry *metrics;
    kv_store *store;
    guard_cache *cache;
} fixture;

static fixture *make(uint64_t max_bytes, unsigned shards, uint64_t ttl_us) {
    fixture *f = calloc(1, sizeof *f);
    f->metrics = metrics_registry_create();
    kv_memory_options mo = {.max_bytes = max_bytes, .n_shards = shards, .now_us = fake_clock};
    assert_int_equal(kv_memory_create(&mo, &f->store), KV_OK);
    guard_cache_options o = {.store = f->store, .ttl_us = ttl_us};
    guard_error err = {0};
    assert_int_equal(guard_cache_create(&o, f->metrics, &f->cache, &err), 0);
    return f;
}

static void destroy(fixture *f) {
    guard_cache_destroy(f->cache);
    kv_destroy(f->store);
    metrics_registry_destroy(f->metrics);
    free(f);
}

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

static guard_cache_key key_of(const char *model, long version, guard_cache_kind kind, const char *const *texts,
                              size_t n) {
    size_t lens[16];
    for (size_t i = 0; i < n; i++)
        lens[i] = strlen(texts[i]);
    guard_cache_input in = {.model = model, .version = version, .kind = kind, .texts = texts, .lens = lens, .n = n};
    guard_cache_key k;
    guard_cache_key_make(&in, &k);
    return k;
}

static int same(guard_cache_key a, guard_cache_key b) { return memcmp(a.bytes, b.bytes, sizeof a.bytes) == 0; }

typedef struct looked {
    int called, hit;
    char body[512];
    size_t len;
} looked;

static void on_lookup(int hit, const void *body, size_t len, void *ud) {
    looked *l = ud;
    l->called++;
    l->hit = hit;
    l->len = len;
    if (hit)
        memcpy(l->body, body, len < sizeof l->body ? len : sizeof l->body);
}

static looked lookup(fixture *f, const guard_cache_key *k) {
    looked l = {0};
    guard_cache_req req;
    guard_cache_lookup(f->cache, NULL, k, &req, on_lookup, &l);
    assert_int_equal(l.called, 1);
    return l;
}

/* ---- keys ------------------------------------------------------------- */

static void test_key_covers_everything(void **state) {
    (void)state;
    const char *ab_c[] = {"ab", "c"}, *a_bc[] = {"a", "bc"}, *c_ab[] = {"c", "ab"}, *one[] = {"great fun"};
    guard_cache_key base = key_of("sentiment", 1, GUARD_CACHE_LIST, ab_c, 2);
    assert_true(same(base, key_of("sentiment", 1, GUARD_CACHE_LIST, ab_c, 2))); /* deterministic */
    /* Versions never share an entry. */
    assert_false(same(base, key_of("sentiment", 2, GUARD_CACHE_LIST, ab_c, 2)));
    assert_false(same(base, key_of("sentimen", 1, GUARD_CACHE_LIST, ab_c, 2)));
    /* Lengths are part of the key: a different split of the same bytes. */
    assert_false(same(base, key_of("sentiment", 1, GUARD_CACHE_LIST, a_bc, 2)));
    assert_false(same(base, key_of("sentiment", 1, GUARD_CACHE_LIST, c_ab, 2)));
    /* One text is not a list of one. */
    assert_false(same(key_of("sentiment", 1, GUARD_CACHE_SINGLE, one, 1),
                      key_of("sentiment", 1, GUARD_CACHE_LIST, one, 1)));
    /* The model name and the first text do not run into each other. */
    const char *x[] = {"1x"};
    assert_false(same(key_of("m", 1, GUARD_CACHE_SINGLE, x, 1), key_of("m1", 1, GUARD_CACHE_SINGLE, (const char *[]){"x"}, 1)));
    /* Bytes after a NUL count. */
    const char *nul_texts[] = {"a\0b", "a\0c"};
    size_t lens[] = {3, 3};
    guard_cache_input in = {.model = "m", .version = 1, .kind = GUARD_CACHE_SINGLE, .texts = nul_texts,
                            .lens = lens, .n = 1};
    guard_cache_key k1, k2;
    guard_cache_key_make(&in, &k1);
    in.texts = nul_texts + 1;
    guard_cache_key_make(&in, &k2);
    assert_false(same(k1, k2));
    /* Parameters: none differs from some, and each value differs. */
    in.texts = nul_texts;
    guard_cache_key_make(&in, &k1);
    in.params = "{\"top_k\":2}";
    in.params_len = strlen(in.params);
    guard_cache_key_make(&in, &k2);
    assert_false(same(k1, k2));
    guard_cache_key k3;
    in.params = "{\"top_k\":3}";
    guard_cache_key_make(&in, &k3);
    assert_false(same(k2, k3));
}

/* ---- lookups and stores ------------------------------------------------- */

static void test_hit_after_miss_same_bytes(void **state) {
    (void)state;
    fixture *f = make(1 << 20, 0, 3600000000u);
    const char *t[] = {"great fun"};
    guard_cache_key v1 = key_of("sentiment", 1, GUARD_CACHE_SINGLE, t, 1);
    guard_cache_key v2 = key_of("sentiment", 2, GUARD_CACHE_SINGLE, t, 1);
    assert_false(lookup(f, &v1).hit);
    static const char body[] = "{\"label\":\"POSITIVE\",\"confidence\":0.987654321,\"model\":\"sentiment\","
                               "\"model_version\":\"1\"}";
    guard_cache_store(f->cache, NULL, &v1, body, sizeof body - 1);
    looked l = lookup(f, &v1);
    assert_true(l.hit);
    assert_int_equal(l.len, sizeof body - 1);
    assert_memory_equal(l.body, body, sizeof body - 1);
    /* The same texts on another version miss. */
    assert_false(lookup(f, &v2).hit);
    guard_cache_count_bypass(f->cache);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_requests_total{result=\"hit\"}"), 1);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_requests_total{result=\"miss\"}"), 2);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_requests_total{result=\"bypass\"}"), 1);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_entries"), 1);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_bytes"), KV_ENTRY_OVERHEAD + 34 + sizeof body - 1);
    destroy(f);
}

static void test_ttl_on_fake_clock(void **state) {
    (void)state;
    fixture *f = make(1 << 20, 0, 60000000); /* one minute */
    const char *t[] = {"x"};
    guard_cache_key k = key_of("m", 1, GUARD_CACHE_SINGLE, t, 1);
    guard_cache_store(f->cache, NULL, &k, "{}", 2);
    advance(59999999);
    assert_true(lookup(f, &k).hit);
    advance(1);
    assert_false(lookup(f, &k).hit);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_evictions_total{reason=\"expired\"}"), 1);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_evictions_total{reason=\"capacity\"}"), 0);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_entries"), 0);
    /* Stored again: served again. Expired entries nobody asks for go too. */
    guard_cache_store(f->cache, NULL, &k, "{}", 2);
    assert_true(lookup(f, &k).hit);
    advance(60000000);
    guard_cache_maintain(f->cache);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_entries"), 0);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_evictions_total{reason=\"expired\"}"), 2);
    destroy(f);
}

static void test_lru_by_bytes_and_eviction_metrics(void **state) {
    (void)state;
    /* One shard of 4 KiB; each answer charges 96 + 34 + 200 = 330 bytes:
     * twelve fit. */
    fixture *f = make(4096, 1, 3600000000u);
    char body[201];
    memset(body, 'x', 200);
    body[200] = 0;
    guard_cache_key keys[20];
    char text[16];
    for (int i = 0; i < 20; i++) {
        snprintf(text, sizeof text, "text %d", i);
        const char *t[] = {text};
        keys[i] = key_of("m", 1, GUARD_CACHE_SINGLE, t, 1);
    }
    for (int i = 0; i < 12; i++)
        guard_cache_store(f->cache, NULL, &keys[i], body, 200);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_entries"), 12);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_bytes"), 12 * 330);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_evictions_total{reason=\"capacity\"}"), 0);
    /* Touch the oldest, then add three: the next three oldest go. */
    assert_true(lookup(f, &keys[0]).hit);
    for (int i = 12; i < 15; i++)
        guard_cache_store(f->cache, NULL, &keys[i], body, 200);
    assert_true(lookup(f, &keys[0]).hit);
    for (int i = 1; i <= 3; i++)
        assert_false(lookup(f, &keys[i]).hit);
    for (int i = 4; i < 15; i++)
        assert_true(lookup(f, &keys[i]).hit);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_evictions_total{reason=\"capacity\"}"), 3);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_entries"), 12);
    assert_true(metric_of(f->metrics, "aiserve_cache_bytes") <= 4096);
    /* An answer larger than the budget is not kept (and breaks nothing). */
    char *huge = malloc(8192);
    memset(huge, 'h', 8192);
    guard_cache_store(f->cache, NULL, &keys[19], huge, 8192);
    assert_false(lookup(f, &keys[19]).hit);
    free(huge);
    destroy(f);
}

static void test_bad_options(void **state) {
    (void)state;
    guard_cache *c = NULL;
    guard_error err = {0};
    guard_cache_options o = {0};
    assert_int_equal(guard_cache_create(&o, NULL, &c, &err), GUARD_EINVAL);
    kv_memory_options mo = {.max_bytes = 1 << 20};
    assert_int_equal(kv_memory_create(&mo, &o.store), KV_OK);
    assert_int_equal(guard_cache_create(&o, NULL, &c, &err), GUARD_EINVAL); /* ttl 0 */
    o.ttl_us = 1;
    assert_int_equal(guard_cache_create(&o, NULL, &c, &err), 0); /* no metrics: fine */
    guard_cache_destroy(c);
    guard_cache_destroy(NULL);
    kv_destroy(o.store);
}

/* ---- coalescing ------------------------------------------------------------ */

typedef struct follower {
    guard_cache_waiter w; /* first: the callback finds the follower from it */
    int called;
    guard_cache_outcome *o;
} follower;

static void on_outcome(guard_cache_waiter *w, guard_cache_outcome *o) {
    follower *fl = (follower *)w;
    fl->called++;
    fl->o = o;
}

static void test_coalescing(void **state) {
    (void)state;
    fixture *f = make(1 << 20, 0, 3600000000u);
    const char *t[] = {"same"};
    guard_cache_key k = key_of("m", 1, GUARD_CACHE_SINGLE, t, 1);
    const char *t2[] = {"other"};
    guard_cache_key other = key_of("m", 1, GUARD_CACHE_SINGLE, t2, 1);
    guard_cache_flight *lead = NULL, *lead2 = NULL, *none = (guard_cache_flight *)1;
    follower a = {.w.on_outcome = on_outcome}, b = {.w.on_outcome = on_outcome}, c = {.w.on_outcome = on_outcome};
    assert_int_equal(guard_cache_join(f->cache, &k, &a.w, &lead), GUARD_CACHE_LEADER);
    assert_non_null(lead);
    assert_int_equal(guard_cache_join(f->cache, &k, &b.w, &none), GUARD_CACHE_FOLLOWER);
    assert_null(none);
    assert_int_equal(guard_cache_join(f->cache, &k, &c.w, &none), GUARD_CACHE_FOLLOWER);
    /* Another key has its own flight. */
    follower d = {.w.on_outcome = on_outcome};
    assert_int_equal(guard_cache_join(f->cache, &other, &d.w, &lead2), GUARD_CACHE_LEADER);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_coalesced_total"), 2);
    assert_int_equal(b.called + c.called, 0); /* nobody is answered before the leader publishes */

    static const char body[] = "{\"label\":\"POSITIVE\"}";
    guard_cache_outcome *o = guard_cache_outcome_create(0, 0, false, body, sizeof body - 1, NULL);
    guard_cache_publish(f->cache, lead, o);
    guard_cache_outcome_release(o); /* the followers keep their own references */
    assert_int_equal(b.called, 1);
    assert_int_equal(c.called, 1);
    assert_int_equal(a.called, 0); /* the leader's own waiter is not called */
    size_t len;
    assert_string_equal(guard_cache_outcome_body(b.o, &len), body);
    assert_int_equal(len, sizeof body - 1);
    assert_int_equal(guard_cache_outcome_error(c.o), 0);
    assert_false(guard_cache_outcome_from_cache(c.o));
    guard_cache_outcome_release(b.o);
    guard_cache_outcome_release(c.o);

    /* After publishing, the next request leads a new flight. */
    guard_cache_flight *again = NULL;
    assert_int_equal(guard_cache_join(f->cache, &k, &a.w, &again), GUARD_CACHE_LEADER);
    /* An error reaches the followers as it was: code, flags, message. */
    follower e = {.w.on_outcome = on_outcome};
    assert_int_equal(guard_cache_join(f->cache, &k, &e.w, &none), GUARD_CACHE_FOLLOWER);
    o = guard_cache_outcome_create(20, 1, false, "ignored", 7, "model 'm' is overloaded");
    guard_cache_publish(f->cache, again, o);
    guard_cache_outcome_release(o);
    assert_int_equal(e.called, 1);
    assert_int_equal(guard_cache_outcome_error(e.o), 20);
    assert_int_equal(guard_cache_outcome_flags(e.o), 1);
    assert_string_equal(guard_cache_outcome_message(e.o), "model 'm' is overloaded");
    assert_string_equal(guard_cache_outcome_body(e.o, &len), "");
    assert_int_equal(len, 0);
    guard_cache_outcome_release(e.o);
    /* Errors are never stored by publishing. */
    assert_false(lookup(f, &k).hit);

    /* A leader without an outcome (out of memory) still answers its
     * followers, with an error. */
    follower g = {.w.on_outcome = on_outcome};
    assert_int_equal(guard_cache_join(f->cache, &other, &g.w, &none), GUARD_CACHE_FOLLOWER);
    guard_cache_publish(f->cache, lead2, NULL);
    assert_int_equal(g.called, 1);
    assert_true(guard_cache_outcome_error(g.o) < 0);
    guard_cache_outcome_release(g.o);
    guard_cache_publish(f->cache, NULL, NULL); /* a leader that had no flight: nothing */
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_coalesced_total"), 4);
    destroy(f);
}

/* Four threads race to join one key, round after round: exactly one leads
 * each round, and every other is answered exactly once. */
typedef struct racer {
    fixture *f;
    pthread_barrier_t *joined, *published;
    int leads;
    follower fl;
    int answered;
} racer;

static void *race(void *arg) {
    racer *r = arg;
    const char *t[] = {"raced"};
    for (int round = 0; round < 300; round++) {
        guard_cache_key k = key_of("m", round, GUARD_CACHE_SINGLE, t, 1);
        r->fl = (follower){.w.on_outcome = on_outcome};
        guard_cache_flight *flight = NULL;
        int role = guard_cache_join(r->f->cache, &k, &r->fl.w, &flight);
        pthread_barrier_wait(r->joined);
        if (role == GUARD_CACHE_LEADER) {
            r->leads++;
            guard_cache_outcome *o = guard_cache_outcome_create(0, 0, false, "{}", 2, NULL);
            guard_cache_publish(r->f->cache, flight, o);
            guard_cache_outcome_release(o);
        }
        pthread_barrier_wait(r->published);
        if (role == GUARD_CACHE_FOLLOWER) {
            assert_int_equal(r->fl.called, 1);
            r->answered++;
            guard_cache_outcome_release(r->fl.o);
        } else {
            assert_int_equal(r->fl.called, 0);
        }
    }
    return NULL;
}

static void test_four_threads_race_to_lead(void **state) {
    (void)state;
    fixture *f = make(1 << 20, 0, 3600000000u);
    pthread_barrier_t joined, published;
    pthread_barrier_init(&joined, NULL, 4);
    pthread_barrier_init(&published, NULL, 4);
    racer r[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (racer){.f = f, .joined = &joined, .published = &published};
        pthread_create(&th[i], NULL, race, &r[i]);
    }
    int leads = 0, answered = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        leads += r[i].leads;
        answered += r[i].answered;
    }
    assert_int_equal(leads, 300);
    assert_int_equal(answered, 900);
    assert_int_equal(metric_of(f->metrics, "aiserve_cache_coalesced_total"), 900);
    pthread_barrier_destroy(&joined);
    pthread_barrier_destroy(&published);
    destroy(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_covers_everything),
        cmocka_unit_test(test_hit_after_miss_same_bytes),
        cmocka_unit_test(test_ttl_on_fake_clock),
        cmocka_unit_test(test_lru_by_bytes_and_eviction_metrics),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_coalescing),
        cmocka_unit_test(test_four_threads_race_to_lead),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
