/*
 * cache.c - the response cache: keys (XXH3-128 over everything that
 * decides an answer), lookups and stores through the key-value backend,
 * and coalescing of identical requests in flight (guard.h has the rules).
 *
 * Design:
 *  - The key hashes a domain tag and then every field with its length in
 *    front (8 bytes, little-endian), so "ab"+"c" and "a"+"bc" differ, and
 *    a single text differs from a list of one. The backend key is "c:"
 *    followed by the 32 hex digits.
 *  - Flights live in a table of 64 shards, each with its own mutex and 64
 *    chains, picked by the key's first bytes. A flight is created by its
 *    leader, collects followers' waiters, and is removed and freed by the
 *    leader's guard_cache_publish, which then calls each waiter outside
 *    the lock.
 *  - An outcome is immutable and refcounted: every follower gets its own
 *    reference and may use it on its own thread after the leader is gone.
 *
 * Threads: guard.h. Nothing here blocks but the shard mutexes, held for a
 * few pointer operations.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "guard_int.h"

#define FLIGHT_SHARDS 64
#define FLIGHT_SLOTS 64
#define KEY_TEXT_LEN 34 /* "c:" + 32 hex digits */

struct guard_cache_flight {
    guard_cache_flight *next;
    guard_cache_key key;
    guard_cache_waiter *waiters;
    unsigned shard;
};

typedef struct flight_shard {
    pthread_mutex_t lock;
    guard_cache_flight *slots[FLIGHT_SLOTS];
} __attribute__((aligned(64))) flight_shard;

struct guard_cache {
    kv_store *store;
    uint64_t ttl_us;
    metric *hit, *miss, *bypass, *coalesced;
    guard_collector *collector;
    flight_shard *flights;
};

struct guard_cache_outcome {
    atomic_int refs;
    int error, flags;
    bool from_cache, is_static;
    size_t len;
    char message[512];
    char body[];
};

/* Handed to followers when the leader could not make an outcome. */
static guard_cache_outcome oom_outcome = {.error = -1, .is_static = true, .message = "out of memory"};

/* ---- keys ----------------------------------------------------------------- */

static void put_u64(XXH3_state_t *st, uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    XXH3_128bits_update(st, b, sizeof b);
}

static void put_bytes(XXH3_state_t *st, const void *p, size_t n) {
    put_u64(st, n);
    if (n)
        XXH3_128bits_update(st, p, n);
}

void guard_cache_key_make(const guard_cache_input *in, guard_cache_key *out) {
    XXH3_state_t st;
    XXH3_128bits_reset(&st);
    static const char tag[] = "aiserve/predict/1";
    put_bytes(&st, tag, sizeof tag - 1);
    put_bytes(&st, in->model ? in->model : "", in->model ? strlen(in->model) : 0);
    put_u64(&st, (uint64_t)in->version);
    put_u64(&st, (uint64_t)in->kind);
    put_u64(&st, in->n);
    for (size_t i = 0; i < in->n; i++)
        put_bytes(&st, in->texts[i], in->lens[i]);
    put_bytes(&st, in->params, in->params ? in->params_len : 0);
    XXH128_canonical_t canon;
    XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(&st));
    memcpy(out->bytes, canon.digest, sizeof out->bytes);
}

static void key_text(const guard_cache_key *k, char out[KEY_TEXT_LEN + 1]) {
    static const char hex[] = "0123456789abcdef";
    out[0] = 'c';
    out[1] = ':';
    for (int i = 0; i < 16; i++) {
        out[2 + 2 * i] = hex[k->bytes[i] >> 4];
        out[3 + 2 * i] = hex[k->bytes[i] & 15];
    }
    out[KEY_TEXT_LEN] = 0;
}

/* ---- the cache ------------------------------------------------------------ */

static void collect(void *ud, kv_store *store, metric *const *series) {
    (void)ud;
    kv_stats st;
    kv_get_stats(store, &st);
    metric_set(series[0], (double)st.bytes);
    metric_set(series[1], (double)st.entries);
    metric_set(series[2], (double)st.evicted);
    metric_set(series[3], (double)st.expired);
}

int guard_cache_create(const guard_cache_options *opts, metrics_registry *metrics, guard_cache **out,
                       guard_error *err) {
    *out = NULL;
    if (!opts || !opts->store || opts->ttl_us == 0)
        return guard_set_error(err, GUARD_EINVAL, "the cache needs a store and a time to live");
    guard_cache *c = calloc(1, sizeof *c);
    if (!c || posix_memalign((void **)&c->flights, 64, FLIGHT_SHARDS * sizeof *c->flights) != 0) {
        free(c);
        return guard_set_error(err, GUARD_ENOMEM, "out of memory");
    }
    memset(c->flights, 0, FLIGHT_SHARDS * sizeof *c->flights);
    for (int i = 0; i < FLIGHT_SHARDS; i++)
        pthread_mutex_init(&c->flights[i].lock, NULL);
    c->store = opts->store;
    c->ttl_us = opts->ttl_us;
    if (metrics) {
        const char *result[] = {"result"}, *reason[] = {"reason"};
        metric_family *f = metrics_counter(metrics, "aiserve_cache_requests_total",
                                           "Prediction requests by cache result: hit, miss, or bypass "
                                           "(Cache-Control: no-cache); coalesced requests are counted apart",
                                           1, result);
        c->hit = metric_get(f, "hit", NULL);
        c->miss = metric_get(f, "miss", NULL);
        c->bypass = metric_get(f, "bypass", NULL);
        f = metrics_counter(metrics, "aiserve_cache_coalesced_total",
                            "Requests answered by an identical request already in flight (no inference of their own)",
                            0, NULL);
        c->coalesced = f ? metric_series(f, NULL) : NULL;
        metric *series[4] = {NULL};
        f = metrics_gauge(metrics, "aiserve_cache_bytes", "Bytes the cached answers take, with keys and bookkeeping",
                          0, NULL);
        series[0] = f ? metric_series(f, NULL) : NULL;
        f = metrics_gauge(metrics, "aiserve_cache_entries", "Answers in the cache", 0, NULL);
        series[1] = f ? metric_series(f, NULL) : NULL;
        f = metrics_counter(metrics, "aiserve_cache_evictions_total",
                            "Answers dropped from the cache: for room (capacity) or past their time to live (expired)",
                            1, reason);
        series[2] = metric_get(f, "capacity", NULL);
        series[3] = metric_get(f, "expired", NULL);
        c->collector = guard_collector_attach(metrics, c->store, collect, NULL, series, 4);
        if (!c->collector) {
            guard_cache_destroy(c);
            return guard_set_error(err, GUARD_ENOMEM, "out of memory");
        }
    }
    *out = c;
    return 0;
}

void guard_cache_destroy(guard_cache *c) {
    if (!c)
        return;
    guard_collector_detach(c->collector);
    for (int i = 0; i < FLIGHT_SHARDS; i++)
        pthread_mutex_destroy(&c->flights[i].lock);
    free(c->flights);
    free(c);
}

static void on_get(int status, const void *value, size_t len, void *ud) {
    guard_cache_req *req = ud;
    int hit = status == KV_OK;
    metric_inc(hit ? req->cache->hit : req->cache->miss);
    guard_cache_lookup_cb cb = req->cb;
    void *cb_ud = req->ud;
    cb(hit, hit ? value : NULL, hit ? len : 0, cb_ud); /* may free req */
}

void guard_cache_lookup(guard_cache *c, struct event_base *base, const guard_cache_key *key,
                        guard_cache_req *req, guard_cache_lookup_cb cb, void *ud) {
    char text[KEY_TEXT_LEN + 1];
    key_text(key, text);
    req->cache = c;
    req->cb = cb;
    req->ud = ud;
    kv_get(c->store, base, text, KEY_TEXT_LEN, on_get, req);
}

void guard_cache_store(guard_cache *c, struct event_base *base, const guard_cache_key *key, const void *body,
                       size_t len) {
    char text[KEY_TEXT_LEN + 1];
    key_text(key, text);
    kv_set(c->store, base, text, KEY_TEXT_LEN, body, len, c->ttl_us, NULL, NULL);
}

void guard_cache_count_bypass(guard_cache *c) { metric_inc(c->bypass); }

void guard_cache_maintain(guard_cache *c) {
    if (c)
        kv_maintain(c->store);
}

/* ---- outcomes ------------------------------------------------------------- */

guard_cache_outcome *guard_cache_outcome_create(int error, int flags, bool from_cache, const void *body,
                                                size_t len, const char *message) {
    if (error != 0 || !body)
        len = 0;
    guard_cache_outcome *o = malloc(sizeof *o + len + 1);
    if (!o)
        return NULL;
    atomic_init(&o->refs, 1);
    o->error = error;
    o->flags = flags;
    o->from_cache = from_cache;
    o->is_static = false;
    o->len = len;
    snprintf(o->message, sizeof o->message, "%s", message ? message : "");
    if (len)
        memcpy(o->body, body, len);
    o->body[len] = 0;
    return o;
}

void guard_cache_outcome_retain(guard_cache_outcome *o) {
    if (o && !o->is_static)
        atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
}

void guard_cache_outcome_release(guard_cache_outcome *o) {
    if (o && !o->is_static && atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) == 1)
        free(o);
}

int guard_cache_outcome_error(const guard_cache_outcome *o) { return o->error; }
int guard_cache_outcome_flags(const guard_cache_outcome *o) { return o->flags; }
bool guard_cache_outcome_from_cache(const guard_cache_outcome *o) { return o->from_cache; }
const char *guard_cache_outcome_message(const guard_cache_outcome *o) { return o->message; }

const char *guard_cache_outcome_body(const guard_cache_outcome *o, size_t *len) {
    if (len)
        *len = o->len;
    return o->body;
}

/* ---- flights -------------------------------------------------------------- */

static unsigned shard_of(const guard_cache_key *k) { return k->bytes[0] % FLIGHT_SHARDS; }
static unsigned slot_of(const guard_cache_key *k) { return k->bytes[1] % FLIGHT_SLOTS; }

int guard_cache_join(guard_cache *c, const guard_cache_key *key, guard_cache_waiter *w,
                     guard_cache_flight **flight) {
    flight_shard *sh = &c->flights[shard_of(key)];
    guard_cache_flight **slot = &sh->slots[slot_of(key)];
    pthread_mutex_lock(&sh->lock);
    for (guard_cache_flight *f = *slot; f; f = f->next) {
        if (memcmp(f->key.bytes, key->bytes, sizeof key->bytes) == 0) {
            w->next_ = f->waiters;
            f->waiters = w;
            pthread_mutex_unlock(&sh->lock);
            metric_inc(c->coalesced);
            *flight = NULL;
            return GUARD_CACHE_FOLLOWER;
        }
    }
    guard_cache_flight *f = calloc(1, sizeof *f);
    if (f) {
        f->key = *key;
        f->shard = shard_of(key);
        f->next = *slot;
        *slot = f;
    }
    pthread_mutex_unlock(&sh->lock);
    *flight = f;
    return GUARD_CACHE_LEADER;
}

void guard_cache_publish(guard_cache *c, guard_cache_flight *flight, guard_cache_outcome *o) {
    if (!flight)
        return;
    flight_shard *sh = &c->flights[flight->shard];
    pthread_mutex_lock(&sh->lock);
    guard_cache_flight **pp = &sh->slots[slot_of(&flight->key)];
    while (*pp != flight)
        pp = &(*pp)->next;
    *pp = flight->next;
    guard_cache_waiter *w = flight->waiters;
    pthread_mutex_unlock(&sh->lock);
    free(flight);
    if (!o)
        o = &oom_outcome;
    while (w) {
        /* The callback hands w's request to another thread, which may free
         * it at once: read the link first. */
        guard_cache_waiter *next = w->next_;
        guard_cache_outcome_retain(o);
        w->on_outcome(w, o);
        w = next;
    }
}
