/*
 * memory.c - the in-memory key-value backend: sharded hash tables with an
 * LRU list and a byte budget per shard, times to live, and token buckets
 * and integer counters (store.h has the design; this file implements
 * kv_backend "memory").
 *
 *  - Shard = top bits of XXH3-64(key); chain slot = low bits. Each shard
 *    has one mutex; nothing is shared between shards, so there is no
 *    global lock and no false sharing (shards are cache-line aligned).
 *  - LRU: a doubly linked list per shard through a sentinel; lru.next is
 *    the most recently used entry, lru.prev the least.
 *  - Values are refcounted: a get retains the value under the lock and
 *    hands it to the callback after unlocking.
 *  - Buckets and counters are entries of their own kinds: a step on one
 *    is decided under its shard's lock, and an entry of another kind under
 *    the key is KV_EWRONGTYPE.
 *  - Every callback runs after the shard's lock is released, before the
 *    operation returns.
 *
 * Invariants (per shard, under its lock): bytes == sum of charges of the
 * entries in the table; every entry is in both the table and the LRU list;
 * bytes <= max_bytes after every insert.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "store_int.h"

#define NEVER UINT64_MAX
#define INITIAL_SLOTS 16
#define SWEEP_SLOTS 512      /* chains examined per shard per kv_maintain */
#define TAIL_POPS 4          /* expired entries freed from the LRU end per insert */

typedef struct kv_value {
    atomic_uint refs;
    size_t len;
    unsigned char data[];
} kv_value;

enum { ENTRY_VALUE = 1, ENTRY_BUCKET = 2, ENTRY_COUNTER = 3 };

typedef struct entry {
    struct entry *hnext;         /* hash chain */
    struct entry *prev, *next;   /* LRU list */
    uint64_t hash;
    uint64_t expires_us;         /* NEVER, or the first instant it is gone */
    uint64_t charge;
    uint32_t key_len;
    uint8_t kind;
    union {
        kv_value *value;
        struct {
            int64_t level;
            uint64_t last_us;
        } bucket;
        int64_t counter;
    } u;
    unsigned char key[];
} entry;

typedef struct shard {
    pthread_mutex_t lock;
    entry **slots;
    size_t mask;                 /* slots - 1 (a power of two less one) */
    size_t n_entries;
    uint64_t bytes, max_bytes;
    uint64_t evicted, expired;
    size_t sweep_cursor;
    /* LRU sentinel; last, because an entry ends in its key bytes (a struct
     * with a flexible array member may only come at the end). */
    entry lru;
} __attribute__((aligned(64))) shard;

typedef struct memory_store {
    kv_store base;
    unsigned n_shards, shift;    /* shard = hash >> shift (0 shards bits: shift 64 is avoided) */
    uint64_t (*now_us)(void *);
    void *clock_ud;
    uint64_t max_bytes;
    shard *shards;
} memory_store;

static uint64_t monotonic_us(void *ud) {
    (void)ud;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void value_release(kv_value *v) {
    if (v && atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) == 1)
        free(v);
}

static shard *shard_of(memory_store *m, uint64_t hash) {
    return m->n_shards == 1 ? &m->shards[0] : &m->shards[hash >> m->shift];
}

static int expired_at(const entry *e, uint64_t now) { return e->expires_us != NEVER && now >= e->expires_us; }

/* When an entry made at `now` with a time to live of ttl_us (0: none) is gone. */
static uint64_t expiry_of(uint64_t now, uint64_t ttl_us) {
    return ttl_us && ttl_us < NEVER - now ? now + ttl_us : NEVER;
}

static void lru_unlink(entry *e) {
    e->prev->next = e->next;
    e->next->prev = e->prev;
}

static void lru_push_front(shard *sh, entry *e) {
    e->prev = &sh->lru;
    e->next = sh->lru.next;
    sh->lru.next->prev = e;
    sh->lru.next = e;
}

static entry *find(shard *sh, uint64_t hash, const void *key, size_t key_len) {
    for (entry *e = sh->slots[hash & sh->mask]; e; e = e->hnext)
        if (e->hash == hash && e->key_len == key_len && memcmp(e->key, key, key_len) == 0)
            return e;
    return NULL;
}

static void entry_free(entry *e) {
    if (e->kind == ENTRY_VALUE)
        value_release(e->u.value);
    free(e);
}

/* Takes e out of the table and the list and frees it. */
static void remove_entry(shard *sh, entry *e) {
    entry **pp = &sh->slots[e->hash & sh->mask];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(e);
    sh->bytes -= e->charge;
    sh->n_entries--;
    entry_free(e);
}

static void grow(shard *sh) {
    size_t n = (sh->mask + 1) * 2;
    entry **slots = calloc(n, sizeof *slots);
    if (!slots)
        return; /* longer chains, still correct */
    for (size_t i = 0; i <= sh->mask; i++) {
        entry *e = sh->slots[i];
        while (e) {
            entry *next = e->hnext;
            e->hnext = slots[e->hash & (n - 1)];
            slots[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(sh->slots);
    sh->slots = slots;
    sh->mask = n - 1;
    sh->sweep_cursor = 0;
}

/* Inserts e (not in the table) as the most recent entry, then makes room:
 * expired entries at the old end first, then the least recently used. */
static void insert_entry(shard *sh, entry *e, uint64_t now) {
    size_t slot = e->hash & sh->mask;
    e->hnext = sh->slots[slot];
    sh->slots[slot] = e;
    lru_push_front(sh, e);
    sh->bytes += e->charge;
    sh->n_entries++;
    for (int i = 0; i < TAIL_POPS && sh->lru.prev != e && expired_at(sh->lru.prev, now); i++) {
        remove_entry(sh, sh->lru.prev);
        sh->expired++;
    }
    while (sh->bytes > sh->max_bytes && sh->lru.prev != e) {
        entry *victim = sh->lru.prev;
        if (expired_at(victim, now))
            sh->expired++;
        else
            sh->evicted++;
        remove_entry(sh, victim);
    }
    if (sh->n_entries > sh->mask + 1)
        grow(sh);
}

static entry *entry_new(uint64_t hash, const void *key, size_t key_len, int kind) {
    entry *e = calloc(1, sizeof *e + key_len);
    if (!e)
        return NULL;
    e->hash = hash;
    e->key_len = (uint32_t)key_len;
    e->kind = (uint8_t)kind;
    e->expires_us = NEVER;
    e->charge = KV_ENTRY_OVERHEAD + key_len;
    memcpy(e->key, key, key_len);
    return e;
}

/* The live entry of `kind` under key (under sh's lock), made the most
 * recently used; NULL when there is none (one past its time to live is
 * freed: a bucket or counter then starts over, as a new one). *status is
 * KV_EWRONGTYPE when key holds another kind, else left alone. */
static entry *find_kind(shard *sh, uint64_t hash, const void *key, size_t key_len, int kind, uint64_t now,
                        int *status) {
    entry *e = find(sh, hash, key, key_len);
    if (e && expired_at(e, now)) {
        remove_entry(sh, e);
        sh->expired++;
        return NULL;
    }
    if (e && e->kind != kind) {
        *status = KV_EWRONGTYPE;
        return NULL;
    }
    if (e) {
        lru_unlink(e);
        lru_push_front(sh, e);
    }
    return e;
}

/* A new entry of `kind` (no value) under key, inserted as the most recent
 * (under sh's lock); NULL with *status KV_ETOOBIG or KV_ENOMEM. */
static entry *create_kind(shard *sh, uint64_t hash, const void *key, size_t key_len, int kind, uint64_t now,
                          int *status) {
    if (KV_ENTRY_OVERHEAD + key_len > sh->max_bytes) {
        *status = KV_ETOOBIG;
        return NULL;
    }
    entry *e = entry_new(hash, key, key_len, kind);
    if (!e) {
        *status = KV_ENOMEM;
        return NULL;
    }
    insert_entry(sh, e, now);
    return e;
}

/* ---- operations ------------------------------------------------------- */

static int key_ok(const void *key, size_t key_len) { return key && key_len > 0 && key_len <= KV_KEY_MAX; }

static void mem_get(kv_store *s, struct event_base *base, const void *key, size_t key_len, kv_get_cb cb,
                    void *ud) {
    (void)base;
    memory_store *m = (memory_store *)s;
    if (!key_ok(key, key_len)) {
        cb(KV_EINVAL, NULL, 0, ud);
        return;
    }
    uint64_t hash = XXH3_64bits(key, key_len);
    shard *sh = shard_of(m, hash);
    pthread_mutex_lock(&sh->lock);
    int status = KV_ENOTFOUND;
    entry *e = find_kind(sh, hash, key, key_len, ENTRY_VALUE, m->now_us(m->clock_ud), &status);
    if (!e) {
        pthread_mutex_unlock(&sh->lock);
        cb(status, NULL, 0, ud);
        return;
    }
    kv_value *v = e->u.value;
    atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&sh->lock);
    cb(KV_OK, v->data, v->len, ud);
    value_release(v);
}

static void mem_set(kv_store *s, struct event_base *base, const void *key, size_t key_len, const void *value,
                    size_t len, uint64_t ttl_us, kv_set_cb cb, void *ud) {
    (void)base;
    memory_store *m = (memory_store *)s;
    if (!key_ok(key, key_len) || (!value && len)) {
        if (cb)
            cb(KV_EINVAL, ud);
        return;
    }
    uint64_t hash = XXH3_64bits(key, key_len);
    shard *sh = shard_of(m, hash);
    uint64_t charge = KV_ENTRY_OVERHEAD + key_len + len;
    entry *e = NULL;
    kv_value *v = NULL;
    int status = KV_OK;
    if (charge > sh->max_bytes) {
        status = KV_ETOOBIG;
    } else {
        e = entry_new(hash, key, key_len, ENTRY_VALUE);
        v = malloc(sizeof *v + len);
        if (!e || !v) {
            free(e);
            free(v);
            e = NULL;
            status = KV_ENOMEM;
        } else {
            atomic_init(&v->refs, 1);
            v->len = len;
            if (len)
                memcpy(v->data, value, len);
            e->u.value = v;
            e->charge = charge;
        }
    }
    pthread_mutex_lock(&sh->lock);
    uint64_t now = m->now_us(m->clock_ud);
    entry *old = find(sh, hash, key, key_len);
    if (old) /* replaced (or, on failure, removed: never leave a stale answer) */
        remove_entry(sh, old);
    if (e) {
        e->expires_us = expiry_of(now, ttl_us);
        insert_entry(sh, e, now);
    }
    pthread_mutex_unlock(&sh->lock);
    if (cb)
        cb(status, ud);
}

static void mem_bucket_take(kv_store *s, struct event_base *base, const void *key, size_t key_len,
                            const kv_bucket_params *params, kv_bucket_cb cb, void *ud) {
    (void)base;
    memory_store *m = (memory_store *)s;
    if (!key_ok(key, key_len) || kv_bucket_params_check(params) != KV_OK) {
        cb(KV_EINVAL, NULL, ud);
        return;
    }
    uint64_t hash = XXH3_64bits(key, key_len);
    shard *sh = shard_of(m, hash);
    kv_bucket_result result;
    int status = KV_OK;
    pthread_mutex_lock(&sh->lock);
    uint64_t now = m->now_us(m->clock_ud);
    /* Past its time to live a bucket is full: the same as a new one. */
    entry *e = find_kind(sh, hash, key, key_len, ENTRY_BUCKET, now, &status);
    int fresh = !e;
    if (!e && status == KV_OK)
        e = create_kind(sh, hash, key, key_len, ENTRY_BUCKET, now, &status);
    if (status == KV_OK) {
        kv_bucket_step(params, fresh, &e->u.bucket.level, &e->u.bucket.last_us, now, &result);
        e->expires_us = (uint64_t)result.reset_us < NEVER - now ? now + (uint64_t)result.reset_us : NEVER;
    }
    pthread_mutex_unlock(&sh->lock);
    cb(status, status == KV_OK ? &result : NULL, ud);
}

/* The counter rule of kv_counter_add: delta is added when it is <= 0 or
 * the sum stays within limit, and the sum fits in an int64. */
static bool counter_step(int64_t *value, int64_t delta, int64_t limit) {
    int64_t sum;
    if (__builtin_add_overflow(*value, delta, &sum) || (delta > 0 && sum > limit))
        return false;
    *value = sum;
    return true;
}

/* kv_counter_add checked the key. A refused step on a missing counter
 * creates nothing. */
static void mem_counter_add(kv_store *s, struct event_base *base, const void *key, size_t key_len, int64_t delta,
                            int64_t limit, uint64_t ttl_us, kv_counter_cb cb, void *ud) {
    (void)base;
    memory_store *m = (memory_store *)s;
    uint64_t hash = XXH3_64bits(key, key_len);
    shard *sh = shard_of(m, hash);
    kv_counter_result result = {0};
    int status = KV_OK;
    pthread_mutex_lock(&sh->lock);
    uint64_t now = m->now_us(m->clock_ud);
    entry *e = find_kind(sh, hash, key, key_len, ENTRY_COUNTER, now, &status);
    if (status == KV_OK) {
        result.value = e ? e->u.counter : 0;
        result.applied = counter_step(&result.value, delta, limit);
        if (result.applied && !e && (e = create_kind(sh, hash, key, key_len, ENTRY_COUNTER, now, &status)))
            e->expires_us = expiry_of(now, ttl_us); /* kept by later steps */
        if (e)
            e->u.counter = result.value;
    }
    pthread_mutex_unlock(&sh->lock);
    cb(status, status == KV_OK ? &result : NULL, ud);
}

static void mem_maintain(kv_store *s) {
    memory_store *m = (memory_store *)s;
    for (unsigned i = 0; i < m->n_shards; i++) {
        shard *sh = &m->shards[i];
        pthread_mutex_lock(&sh->lock);
        uint64_t now = m->now_us(m->clock_ud);
        /* The old end of the list first: usually where the expired are. */
        for (int k = 0; k < 4096 && sh->lru.prev != &sh->lru && expired_at(sh->lru.prev, now); k++) {
            remove_entry(sh, sh->lru.prev);
            sh->expired++;
        }
        /* Then a slice of the table, for entries whose time to live is
         * shorter than that of entries used before them. */
        for (size_t k = 0; k < SWEEP_SLOTS && k <= sh->mask; k++) {
            size_t slot = sh->sweep_cursor;
            sh->sweep_cursor = (sh->sweep_cursor + 1) & sh->mask;
            entry *e = sh->slots[slot];
            while (e) {
                entry *next = e->hnext;
                if (expired_at(e, now)) {
                    remove_entry(sh, e);
                    sh->expired++;
                }
                e = next;
            }
        }
        pthread_mutex_unlock(&sh->lock);
    }
}

static void mem_get_stats(kv_store *s, kv_stats *out) {
    memory_store *m = (memory_store *)s;
    out->max_bytes = m->max_bytes;
    for (unsigned i = 0; i < m->n_shards; i++) {
        shard *sh = &m->shards[i];
        pthread_mutex_lock(&sh->lock);
        out->entries += sh->n_entries;
        out->bytes += sh->bytes;
        out->evicted += sh->evicted;
        out->expired += sh->expired;
        pthread_mutex_unlock(&sh->lock);
    }
}

static void mem_destroy(kv_store *s) {
    memory_store *m = (memory_store *)s;
    for (unsigned i = 0; m->shards && i < m->n_shards; i++) {
        shard *sh = &m->shards[i];
        if (sh->slots) {
            for (size_t k = 0; k <= sh->mask; k++) {
                entry *e = sh->slots[k];
                while (e) {
                    entry *next = e->hnext;
                    entry_free(e);
                    e = next;
                }
            }
            free(sh->slots);
        }
        pthread_mutex_destroy(&sh->lock);
    }
    free(m->shards);
    free(m);
}

static const kv_backend memory_backend = {
    .name = "memory",
    .get = mem_get,
    .set = mem_set,
    .bucket_take = mem_bucket_take,
    .counter_add = mem_counter_add,
    .maintain = mem_maintain,
    .get_stats = mem_get_stats,
    .destroy = mem_destroy,
};

int kv_memory_create(const kv_memory_options *opts, kv_store **out) {
    *out = NULL;
    unsigned n = opts && opts->n_shards ? opts->n_shards : 64;
    if (!opts || n > 1024 || (n & (n - 1)) != 0 || opts->max_bytes < (uint64_t)n * 1024)
        return KV_EINVAL;
    memory_store *m = calloc(1, sizeof *m);
    if (!m)
        return KV_ENOMEM;
    m->base.backend = &memory_backend;
    m->n_shards = n;
    m->shift = 64;
    for (unsigned k = n; k > 1; k >>= 1)
        m->shift--;
    m->now_us = opts->now_us ? opts->now_us : monotonic_us;
    m->clock_ud = opts->clock_ud;
    m->max_bytes = opts->max_bytes;
    if (posix_memalign((void **)&m->shards, 64, n * sizeof *m->shards) != 0) {
        free(m);
        return KV_ENOMEM;
    }
    memset(m->shards, 0, n * sizeof *m->shards);
    for (unsigned i = 0; i < n; i++) {
        shard *sh = &m->shards[i];
        pthread_mutex_init(&sh->lock, NULL);
        sh->lru.next = sh->lru.prev = &sh->lru;
        sh->max_bytes = opts->max_bytes / n;
        sh->slots = calloc(INITIAL_SLOTS, sizeof *sh->slots);
        sh->mask = INITIAL_SLOTS - 1;
        if (!sh->slots) {
            m->n_shards = i + 1;
            mem_destroy(&m->base);
            return KV_ENOMEM;
        }
    }
    *out = &m->base;
    return KV_OK;
}
