/*
 * test_store.c - the memory key-value backend through store.h: get and set
 * (copies, replacement, bad keys), times to live on a fake clock, the LRU
 * bounded in bytes (exact, on one shard), entries too large to keep, token
 * buckets (exact counts, refill, burst, a lowered limit, a clock that goes
 * back, expiry of idle buckets so memory stays bounded), counters (the
 * limit, negative deltas, the int64 edges, the first time to live kept,
 * the byte budget), the wrong kind of entry under a key, statistics, and
 * four threads on one bucket, on one counter with a limit and on many keys
 * at once.
 *
 * Callbacks of the memory backend run before the call returns; the tests
 * rely on that (and check it).
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

#include "store.h"

/* ---- helpers ---------------------------------------------------------- */

static _Atomic uint64_t fake_now = 1000000;
static uint64_t fake_clock(void *ud) {
    (void)ud;
    return atomic_load(&fake_now);
}
static void advance(uint64_t us) { atomic_fetch_add(&fake_now, us); }

static kv_store *make(uint64_t max_bytes, unsigned shards) {
    kv_memory_options o = {.max_bytes = max_bytes, .n_shards = shards, .now_us = fake_clock};
    kv_store *s = NULL;
    assert_int_equal(kv_memory_create(&o, &s), KV_OK);
    assert_non_null(s);
    return s;
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
    g->value[len < sizeof g->value ? len : 0] = 0;
}

static got get(kv_store *s, const char *key) {
    got g = {0};
    kv_get(s, NULL, key, strlen(key), on_get, &g);
    assert_int_equal(g.called, 1); /* the memory backend answers at once, exactly once */
    return g;
}

static void on_set(int status, void *ud) {
    int *out = ud;
    *out = status;
}

static int set(kv_store *s, const char *key, const char *value, uint64_t ttl_us) {
    int status = 99;
    kv_set(s, NULL, key, strlen(key), value, strlen(value), ttl_us, on_set, &status);
    assert_int_not_equal(status, 99);
    return status;
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

static took take(kv_store *s, const char *key, const kv_bucket_params *p) {
    took t = {0};
    kv_bucket_take(s, NULL, key, strlen(key), p, on_bucket, &t);
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

static added add(kv_store *s, const char *key, int64_t delta, int64_t limit, uint64_t ttl_us) {
    added a = {0};
    kv_counter_add(s, NULL, key, strlen(key), delta, limit, ttl_us, on_counter, &a);
    assert_int_equal(a.called, 1);
    return a;
}

/* One step that must end KV_OK with this answer. */
static void add_expect(kv_store *s, const char *key, int64_t delta, int64_t limit, bool applied, int64_t value) {
    added a = add(s, key, delta, limit, 0);
    if (a.status != KV_OK || a.r.applied != applied || a.r.value != value)
        fail_msg("%s %+lld limit %lld: status %d applied %d value %lld, want applied %d value %lld", key,
                 (long long)delta, (long long)limit, a.status, a.r.applied, (long long)a.r.value, applied,
                 (long long)value);
}

#define MINUTE INT64_C(60000000)

/* ---- values ------------------------------------------------------------ */

static void test_get_set_replace(void **state) {
    (void)state;
    kv_store *s = make(1 << 20, 0);
    assert_string_equal(kv_backend_name(s), "memory");
    assert_int_equal(get(s, "a").status, KV_ENOTFOUND);
    assert_int_equal(set(s, "a", "one", 0), KV_OK);
    got g = get(s, "a");
    assert_int_equal(g.status, KV_OK);
    assert_string_equal(g.value, "one");
    assert_int_equal(set(s, "a", "second", 0), KV_OK);
    assert_string_equal(get(s, "a").value, "second");
    /* Binary keys and values, NULs included; an empty value is a value. */
    static const char key[] = {'k', 0, 'x'}, value[] = {0, 1, 2, 0};
    int status = 99;
    kv_set(s, NULL, key, sizeof key, value, sizeof value, 0, on_set, &status);
    assert_int_equal(status, KV_OK);
    got b = {0};
    kv_get(s, NULL, key, sizeof key, on_get, &b);
    assert_int_equal(b.status, KV_OK);
    assert_int_equal(b.len, sizeof value);
    assert_memory_equal(b.value, value, sizeof value);
    kv_get(s, NULL, key, 1, on_get, &b); /* a prefix is another key */
    assert_int_equal(b.status, KV_ENOTFOUND);
    assert_int_equal(set(s, "empty", "", 0), KV_OK);
    got e = get(s, "empty");
    assert_int_equal(e.status, KV_OK);
    assert_int_equal(e.len, 0);
    /* Bad keys; a NULL callback on set is fine. */
    got bad = {0};
    kv_get(s, NULL, "", 0, on_get, &bad);
    assert_int_equal(bad.status, KV_EINVAL);
    char long_key[KV_KEY_MAX + 2];
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = 0;
    assert_int_equal(set(s, long_key, "v", 0), KV_EINVAL);
    kv_set(s, NULL, "quiet", 5, "v", 1, 0, NULL, NULL);
    assert_string_equal(get(s, "quiet").value, "v");
    kv_stats st;
    kv_get_stats(s, &st);
    assert_int_equal(st.entries, 4);
    assert_int_equal(st.bytes, 4 * KV_ENTRY_OVERHEAD + (1 + 6) + (3 + 4) + (5 + 0) + (5 + 1));
    assert_int_equal(st.max_bytes, 1 << 20);
    kv_destroy(s);
    kv_destroy(NULL);
}

static void test_ttl_on_fake_clock(void **state) {
    (void)state;
    kv_store *s = make(1 << 20, 4);
    assert_int_equal(set(s, "short", "x", 1000), KV_OK);
    assert_int_equal(set(s, "long", "y", 60 * MINUTE), KV_OK);
    assert_int_equal(set(s, "forever", "z", 0), KV_OK);
    advance(999);
    assert_int_equal(get(s, "short").status, KV_OK);
    advance(1); /* exactly the time to live: gone */
    assert_int_equal(get(s, "short").status, KV_ENOTFOUND);
    kv_stats st;
    kv_get_stats(s, &st);
    assert_int_equal(st.expired, 1);
    assert_int_equal(st.entries, 2);
    /* kv_maintain frees what expired without anyone asking for it. */
    advance(60 * MINUTE);
    kv_maintain(s);
    kv_get_stats(s, &st);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.expired, 2);
    assert_int_equal(st.evicted, 0);
    assert_string_equal(get(s, "forever").value, "z");
    /* Setting again restarts the time to live. */
    assert_int_equal(set(s, "long", "y2", 10), KV_OK);
    advance(5);
    assert_int_equal(set(s, "long", "y3", 10), KV_OK);
    advance(6);
    assert_string_equal(get(s, "long").value, "y3");
    kv_destroy(s);
}

/* One shard, so the budget is exact: entries of known charge. */
static void test_lru_bounded_in_bytes(void **state) {
    (void)state;
    const uint64_t charge = KV_ENTRY_OVERHEAD + 2 + 300; /* key "kN", 300-byte value */
    kv_store *s = make(4 * charge + charge / 2, 1);       /* room for 4 */
    char value[301];
    memset(value, 'v', 300);
    value[300] = 0;
    char key[8];
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(set(s, key, value, 0), KV_OK);
    }
    kv_stats st;
    kv_get_stats(s, &st);
    assert_int_equal(st.entries, 4);
    assert_int_equal(st.bytes, 4 * charge);
    /* Using k0 makes k1 the least recently used: it goes first. */
    assert_int_equal(get(s, "k0").status, KV_OK);
    assert_int_equal(set(s, "k4", value, 0), KV_OK);
    assert_int_equal(get(s, "k1").status, KV_ENOTFOUND);
    assert_int_equal(get(s, "k0").status, KV_OK);
    assert_int_equal(get(s, "k2").status, KV_OK);
    kv_get_stats(s, &st);
    assert_int_equal(st.entries, 4);
    assert_int_equal(st.evicted, 1);
    assert_true(st.bytes <= st.max_bytes);
    /* A bigger entry pushes out as many as it needs, oldest first (k3, k4). */
    char big[2 * 300 + 50];
    memset(big, 'b', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_int_equal(set(s, "kb", big, 0), KV_OK);
    assert_int_equal(get(s, "k3").status, KV_ENOTFOUND);
    assert_int_equal(get(s, "k4").status, KV_ENOTFOUND);
    assert_int_equal(get(s, "k0").status, KV_OK);
    assert_int_equal(get(s, "k2").status, KV_OK);
    kv_get_stats(s, &st);
    assert_int_equal(st.evicted, 3);
    assert_true(st.bytes <= st.max_bytes);
    /* An entry larger than the whole budget is refused, and the old value
     * under its key is gone (never a stale answer). */
    char *huge = malloc(8192);
    memset(huge, 'h', 8191);
    huge[8191] = 0;
    assert_int_equal(set(s, "k0", huge, 0), KV_ETOOBIG);
    assert_int_equal(get(s, "k0").status, KV_ENOTFOUND);
    free(huge);
    /* Expired entries at the old end go before live ones are evicted. */
    kv_store *t = make(4 * charge + charge / 2, 1);
    assert_int_equal(set(t, "k0", value, 10), KV_OK);
    for (int i = 1; i < 4; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(set(t, key, value, 0), KV_OK);
    }
    advance(10);
    assert_int_equal(set(t, "k4", value, 0), KV_OK);
    kv_get_stats(t, &st);
    assert_int_equal(st.expired, 1);
    assert_int_equal(st.evicted, 0);
    kv_destroy(t);
    kv_destroy(s);
}

static void test_memory_options(void **state) {
    (void)state;
    kv_store *s = NULL;
    kv_memory_options o = {.max_bytes = 1 << 20, .n_shards = 3};
    assert_int_equal(kv_memory_create(&o, &s), KV_EINVAL); /* not a power of two */
    o.n_shards = 2048;
    assert_int_equal(kv_memory_create(&o, &s), KV_EINVAL);
    o.n_shards = 64;
    o.max_bytes = 1000; /* under 1 KiB a shard */
    assert_int_equal(kv_memory_create(&o, &s), KV_EINVAL);
    assert_null(s);
    assert_int_equal(kv_memory_create(NULL, &s), KV_EINVAL);
    o = (kv_memory_options){.max_bytes = 1 << 20}; /* the real clock */
    assert_int_equal(kv_memory_create(&o, &s), KV_OK);
    assert_int_equal(set(s, "a", "b", 60 * MINUTE), KV_OK);
    assert_int_equal(get(s, "a").status, KV_OK);
    kv_destroy(s);
    assert_string_equal(kv_status_name(KV_ETOOBIG), "KV_ETOOBIG");
    assert_string_equal(kv_status_name(12345), "KV_UNKNOWN");
    assert_true(strlen(kv_status_message(KV_EUNAVAILABLE)) > 5);
}

/* ---- token buckets ---------------------------------------------------- */

static void test_bucket_exact_burst_and_refill(void **state) {
    (void)state;
    kv_store *s = make(1 << 20, 0);
    kv_bucket_params p = {.capacity = 10, .refill = 10, .period_us = MINUTE, .cost = 1};
    /* Exactly `capacity` at once, then refused with the wait for one. */
    for (int i = 0; i < 10; i++) {
        took t = take(s, "rl:k:web", &p);
        assert_int_equal(t.status, KV_OK);
        assert_true(t.r.allowed);
        assert_int_equal(t.r.remaining, 9 - i);
        assert_int_equal(t.r.retry_after_us, 0);
        assert_int_equal(t.r.reset_us, (i + 1) * 6000000);
    }
    took t = take(s, "rl:k:web", &p);
    assert_false(t.r.allowed);
    assert_int_equal(t.r.remaining, 0);
    assert_int_equal(t.r.retry_after_us, 6000000); /* 10 a minute: one every 6 s */
    assert_int_equal(t.r.reset_us, MINUTE);
    /* Refused requests take nothing; a token comes back exactly on time. */
    advance(5999999);
    assert_false(take(s, "rl:k:web", &p).r.allowed);
    assert_int_equal(take(s, "rl:k:web", &p).r.retry_after_us, 1);
    advance(1);
    t = take(s, "rl:k:web", &p);
    assert_true(t.r.allowed);
    assert_false(take(s, "rl:k:web", &p).r.allowed);
    /* Half a token's time twice is one token. */
    advance(3000000);
    assert_false(take(s, "rl:k:web", &p).r.allowed);
    advance(3000000);
    assert_true(take(s, "rl:k:web", &p).r.allowed);
    /* A long idle time fills the bucket, never beyond its size. */
    advance(100 * MINUTE);
    int n = 0;
    while (take(s, "rl:k:web", &p).r.allowed)
        n++;
    assert_int_equal(n, 10);
    /* Other keys have their own buckets. */
    assert_true(take(s, "rl:k:other", &p).r.allowed);
    assert_int_equal(take(s, "rl:k:other", &p).r.remaining, 8);
    kv_destroy(s);
}

static void test_bucket_burst_differs_from_rate(void **state) {
    (void)state;
    kv_store *s = make(1 << 20, 0);
    /* 600 a minute (one every 100 ms), burst 3. */
    kv_bucket_params p = {.capacity = 3, .refill = 600, .period_us = MINUTE, .cost = 1};
    for (int i = 0; i < 3; i++)
        assert_true(take(s, "b", &p).r.allowed);
    took t = take(s, "b", &p);
    assert_false(t.r.allowed);
    assert_int_equal(t.r.retry_after_us, 100000);
    assert_int_equal(t.r.reset_us, 300000);
    advance(250000); /* two and a half tokens */
    assert_true(take(s, "b", &p).r.allowed);
    assert_true(take(s, "b", &p).r.allowed);
    assert_false(take(s, "b", &p).r.allowed);
    /* A cost of more than one, and cost 0 (a peek). */
    advance(MINUTE);
    kv_bucket_params two = p;
    two.cost = 2;
    assert_true(take(s, "b", &two).r.allowed);
    took peek;
    kv_bucket_params zero = p;
    zero.cost = 0;
    peek = take(s, "b", &zero);
    assert_true(peek.r.allowed);
    assert_int_equal(peek.r.remaining, 1);
    assert_false(take(s, "b", &two).r.allowed);
    /* The limit lowered between steps: the level is cut to the new size. */
    advance(MINUTE);
    kv_bucket_params small = {.capacity = 1, .refill = 1, .period_us = MINUTE, .cost = 1};
    t = take(s, "b", &small);
    assert_true(t.r.allowed);
    assert_int_equal(t.r.remaining, 0);
    assert_false(take(s, "b", &small).r.allowed);
    /* A clock that goes back refills nothing and breaks nothing. */
    atomic_fetch_sub(&fake_now, 10 * MINUTE);
    assert_false(take(s, "b", &small).r.allowed);
    atomic_fetch_add(&fake_now, 10 * MINUTE);
    /* Bad parameters. */
    kv_bucket_params bad[] = {
        {0, 1, MINUTE, 1}, {1, 0, MINUTE, 1}, {1, 1, 0, 1}, {1, 1, MINUTE, 2}, {1, 1, MINUTE, -1},
        {INT64_C(1) << 40, 1, MINUTE, 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(take(s, "b", &bad[i]).status, KV_EINVAL);
    took none = {0};
    kv_bucket_take(s, NULL, "b", 1, NULL, on_bucket, &none);
    assert_int_equal(none.status, KV_EINVAL);
    kv_destroy(s);
}

static void test_wrong_type(void **state) {
    (void)state;
    kv_store *s = make(1 << 20, 0);
    kv_bucket_params p = {.capacity = 1, .refill = 1, .period_us = MINUTE, .cost = 1};
    assert_int_equal(set(s, "v", "value", 0), KV_OK);
    assert_int_equal(take(s, "v", &p).status, KV_EWRONGTYPE);
    assert_string_equal(get(s, "v").value, "value");
    assert_true(take(s, "b", &p).r.allowed);
    assert_int_equal(get(s, "b").status, KV_EWRONGTYPE);
    /* Counters are a kind of their own, both ways, and stay intact. */
    assert_int_equal(add(s, "v", 1, 10, 0).status, KV_EWRONGTYPE);
    assert_int_equal(add(s, "b", 1, 10, 0).status, KV_EWRONGTYPE);
    assert_true(add(s, "c", 4, 10, 0).r.applied);
    assert_int_equal(get(s, "c").status, KV_EWRONGTYPE);
    assert_int_equal(take(s, "c", &p).status, KV_EWRONGTYPE);
    add_expect(s, "c", 0, 0, true, 4);
    assert_string_equal(get(s, "v").value, "value");
    /* An entry past its time to live is gone, whatever its kind. */
    assert_int_equal(set(s, "old", "x", 10), KV_OK);
    advance(10);
    add_expect(s, "old", 2, 10, true, 2);
    /* set replaces whatever was there. */
    assert_int_equal(set(s, "b", "now a value", 0), KV_OK);
    assert_string_equal(get(s, "b").value, "now a value");
    assert_int_equal(set(s, "c", "no longer a counter", 0), KV_OK);
    assert_string_equal(get(s, "c").value, "no longer a counter");
    kv_destroy(s);
}

/* ---- counters ----------------------------------------------------------- */

static void test_counter_limit(void **state) {
    (void)state;
    kv_store *s = make(1 << 20, 0);
    /* Refused on a missing counter: 0, and nothing is made. */
    add_expect(s, "b:k", 5, 4, false, 0);
    assert_int_equal(get(s, "b:k").status, KV_ENOTFOUND);
    kv_stats st;
    kv_get_stats(s, &st);
    assert_int_equal(st.entries, 0);
    /* Up to the limit exactly, then refused with the value as it stands. */
    add_expect(s, "b:k", 4, 10, true, 4);
    add_expect(s, "b:k", 6, 10, true, 10);
    add_expect(s, "b:k", 1, 10, false, 10);
    add_expect(s, "b:k", 0, 10, true, 10); /* a read */
    /* Negative deltas always apply, whatever the limit (a refund). */
    add_expect(s, "b:k", -3, 0, true, 7);
    add_expect(s, "b:k", -100, -1000, true, -93);
    add_expect(s, "b:k", 200, 100, false, -93);
    add_expect(s, "b:k", 193, 100, true, 100);
    /* Settling with no limit. */
    add_expect(s, "b:k", 50, INT64_MAX, true, 150);
    /* Charged like a bucket: its key and the overhead. */
    kv_get_stats(s, &st);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.bytes, KV_ENTRY_OVERHEAD + 3);
    /* The int64 edges: exact (2^53 + 1 is no double), a sum that would not
     * fit is refused whatever its sign, and a limit below every reachable
     * value refuses. */
    const int64_t p53 = INT64_C(1) << 53;
    add_expect(s, "b:big", p53 + 1, INT64_MAX, true, p53 + 1);
    add_expect(s, "b:big", 1, p53 + 2, true, p53 + 2);
    add_expect(s, "b:big", 1, p53 + 2, false, p53 + 2);
    add_expect(s, "b:hi", INT64_MAX, INT64_MAX, true, INT64_MAX);
    add_expect(s, "b:hi", 1, INT64_MAX, false, INT64_MAX);
    add_expect(s, "b:hi", INT64_MIN, 0, true, -1);
    add_expect(s, "b:lo", INT64_MIN, 0, true, INT64_MIN);
    add_expect(s, "b:lo", -1, 0, false, INT64_MIN);
    add_expect(s, "b:lo", 1, INT64_MIN, false, INT64_MIN);
    add_expect(s, "b:lo", INT64_MAX, -1, true, -1);
    /* Bad keys: at once, exactly once, with no result. */
    added bad = {0};
    kv_counter_add(s, NULL, "", 0, 1, 10, 0, on_counter, &bad);
    assert_int_equal(bad.called, 1);
    assert_int_equal(bad.status, KV_EINVAL);
    char long_key[KV_KEY_MAX + 1];
    memset(long_key, 'k', sizeof long_key);
    bad = (added){0};
    kv_counter_add(s, NULL, long_key, sizeof long_key, 1, 10, 0, on_counter, &bad);
    assert_int_equal(bad.status, KV_EINVAL);
    bad = (added){0};
    kv_counter_add(s, NULL, NULL, 3, 1, 10, 0, on_counter, &bad);
    assert_int_equal(bad.status, KV_EINVAL);
    kv_destroy(s);
}

static void test_counter_ttl(void **state) {
    (void)state;
    kv_store *s = make(1 << 20, 4);
    /* The first step's time to live holds; later steps keep it. */
    assert_true(add(s, "b:day", 5, 100, 1000).r.applied);
    advance(600);
    added a = add(s, "b:day", 1, 100, 60 * MINUTE);
    assert_true(a.r.applied);
    assert_int_equal(a.r.value, 6);
    advance(399);
    add_expect(s, "b:day", 0, 100, true, 6);
    advance(1);
    assert_int_equal(get(s, "b:day").status, KV_ENOTFOUND);
    kv_stats st;
    kv_get_stats(s, &st);
    assert_int_equal(st.expired, 1);
    /* Expired, it starts over from 0, refused or not, with a new time to live. */
    add_expect(s, "b:day", 101, 100, false, 0);
    assert_int_equal(get(s, "b:day").status, KV_ENOTFOUND);
    assert_true(add(s, "b:day", 2, 100, 1000).r.applied);
    advance(999);
    add_expect(s, "b:day", 0, 100, true, 2);
    advance(1);
    add_expect(s, "b:day", 0, 100, true, 0);
    /* 0: never. */
    assert_true(add(s, "b:forever", 1, 10, 0).r.applied);
    advance(1000 * MINUTE);
    add_expect(s, "b:forever", 0, 10, true, 1);
    /* kv_maintain frees expired counters like any entry. */
    char key[32];
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof key, "b:tpm:%d", i);
        assert_true(add(s, key, 7, 100, MINUTE).r.applied);
    }
    kv_get_stats(s, &st);
    uint64_t before = st.entries;
    assert_true(before >= 500);
    advance(MINUTE);
    for (int k = 0; k < 4; k++)
        kv_maintain(s);
    kv_get_stats(s, &st);
    assert_int_equal(st.entries, before - 500);
    /* The byte budget bounds counters too: the least recently used go. */
    kv_store *small = make(8 * 1024, 1);
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "b:many:%d", i);
        assert_int_equal(add(small, key, 1, 10, 0).status, KV_OK);
    }
    kv_get_stats(small, &st);
    assert_true(st.bytes <= 8 * 1024);
    assert_int_equal(st.evicted + st.entries, 1000);
    kv_destroy(small);
    kv_destroy(s);
}

/* A bucket is kept only until it would be full again: an idle client costs
 * nothing, so many distinct clients do not grow memory without bound. */
static void test_idle_buckets_expire(void **state) {
    (void)state;
    kv_store *s = make(1 << 20, 8);
    kv_bucket_params p = {.capacity = 5, .refill = 60, .period_us = MINUTE, .cost = 1}; /* one a second */
    char key[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "rl:a:10.0.%d.%d", i / 256, i % 256);
        assert_true(take(s, key, &p).r.allowed);
    }
    kv_stats st;
    kv_get_stats(s, &st);
    assert_int_equal(st.entries, 1000);
    /* One token gone: full again after one second. */
    advance(999999);
    kv_maintain(s);
    kv_get_stats(s, &st);
    assert_int_equal(st.entries, 1000);
    advance(1);
    for (int k = 0; k < 4; k++) /* bounded work per call: a few calls clear it all */
        kv_maintain(s);
    kv_get_stats(s, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.expired, 1000);
    /* A bucket that expired and is used again starts full, as a new one. */
    snprintf(key, sizeof key, "rl:a:again");
    for (int i = 0; i < 5; i++)
        assert_true(take(s, key, &p).r.allowed);
    assert_false(take(s, key, &p).r.allowed);
    advance(5 * 1000000);
    assert_int_equal(take(s, key, &p).r.remaining, 4);
    /* The byte budget bounds buckets too, whatever their expiry. */
    kv_store *small = make(8 * 1024, 1);
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof key, "rl:a:%d", i);
        assert_int_equal(take(small, key, &p).status, KV_OK);
    }
    kv_get_stats(small, &st);
    assert_true(st.bytes <= 8 * 1024);
    assert_true(st.entries > 0 && st.entries < 100);
    assert_int_equal(st.evicted + st.entries, 10000);
    kv_destroy(small);
    kv_destroy(s);
}

/* ---- threads ---------------------------------------------------------- */

typedef struct race {
    kv_store *s;
    kv_bucket_params p;
    pthread_barrier_t *go;
    int id;
    int allowed;
} race;

static void *race_bucket(void *arg) {
    race *r = arg;
    pthread_barrier_wait(r->go);
    for (int i = 0; i < 2000; i++) {
        took t = {0};
        kv_bucket_take(r->s, NULL, "rl:k:shared", 11, &r->p, on_bucket, &t);
        if (t.status == KV_OK && t.r.allowed)
            r->allowed++;
    }
    return NULL;
}

typedef struct counter_race {
    kv_store *s;
    pthread_barrier_t *go;
    int applied, over, errors;
} counter_race;

#define RACE_DELTA 3
#define RACE_LIMIT 3000

static void *race_counter(void *arg) {
    counter_race *r = arg;
    pthread_barrier_wait(r->go);
    for (int i = 0; i < 2000; i++) {
        added a = {0};
        kv_counter_add(r->s, NULL, "b:shared", 8, RACE_DELTA, RACE_LIMIT, MINUTE, on_counter, &a);
        if (a.status != KV_OK)
            r->errors++;
        else if (a.r.applied && (a.r.value > RACE_LIMIT || a.r.value % RACE_DELTA != 0))
            r->over++;
        else if (a.r.applied)
            r->applied++;
    }
    return NULL;
}

static void *race_values(void *arg) {
    race *r = arg;
    pthread_barrier_wait(r->go);
    char key[32], value[40];
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof key, "k%d", (i * 7 + r->id) % 500);
        snprintf(value, sizeof value, "%s=v", key);
        if (i % 3 == 0) {
            kv_set(r->s, NULL, key, strlen(key), value, strlen(value), i % 2 ? 0 : 1000, NULL, NULL);
        } else {
            got g = {0};
            kv_get(r->s, NULL, key, strlen(key), on_get, &g);
            if (g.status == KV_OK && strcmp(g.value, value) != 0)
                r->allowed = -1; /* a value under the wrong key */
        }
        if (r->id == 0 && i % 1000 == 0)
            kv_maintain(r->s);
    }
    return NULL;
}

static void test_four_threads(void **state) {
    (void)state;
    /* 4 threads x 2000 attempts on one bucket of 1000 with time frozen:
     * exactly 1000 admitted, whoever wins. */
    kv_store *s = make(1 << 20, 0);
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, 4);
    race r[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (race){.s = s, .p = {.capacity = 1000, .refill = 1000, .period_us = MINUTE, .cost = 1},
                      .go = &go, .id = i};
        pthread_create(&th[i], NULL, race_bucket, &r[i]);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        total += r[i].allowed;
    }
    assert_int_equal(total, 1000);
    kv_destroy(s);

    /* 4 threads x 2000 steps of 3 on one counter limited to 3000: exactly
     * 1000 apply, no step sees the counter past the limit, and the counter
     * ends at the applied steps times 3. */
    s = make(1 << 20, 0);
    counter_race cr[4];
    for (int i = 0; i < 4; i++) {
        cr[i] = (counter_race){.s = s, .go = &go};
        pthread_create(&th[i], NULL, race_counter, &cr[i]);
    }
    total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(cr[i].errors, 0);
        assert_int_equal(cr[i].over, 0);
        total += cr[i].applied;
    }
    assert_int_equal(total, RACE_LIMIT / RACE_DELTA);
    add_expect(s, "b:shared", 0, 0, true, (int64_t)total * RACE_DELTA);
    kv_destroy(s);

    /* Sets, gets and sweeps from 4 threads over a small budget: every value
     * read is the one written under that key, and the budget holds. */
    s = make(64 * 1024, 4);
    for (int i = 0; i < 4; i++) {
        r[i] = (race){.s = s, .go = &go, .id = i};
        pthread_create(&th[i], NULL, race_values, &r[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_not_equal(r[i].allowed, -1);
    }
    kv_stats st;
    kv_get_stats(s, &st);
    assert_true(st.bytes <= st.max_bytes);
    pthread_barrier_destroy(&go);
    kv_destroy(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_set_replace),
        cmocka_unit_test(test_ttl_on_fake_clock),
        cmocka_unit_test(test_lru_bounded_in_bytes),
        cmocka_unit_test(test_memory_options),
        cmocka_unit_test(test_bucket_exact_burst_and_refill),
        cmocka_unit_test(test_bucket_burst_differs_from_rate),
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_counter_limit),
        cmocka_unit_test(test_counter_ttl),
        cmocka_unit_test(test_idle_buckets_expire),
        cmocka_unit_test(test_four_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
