/*
 * store.h - the store module's one public header: key-value backends behind
 * one table of function pointers (kv_backend), so that the response cache
 * and the rate limiter never know where their data lives. Today: the
 * in-memory backend (kv_memory_create) and Redis (kv_redis_create: hiredis
 * on each event loop, shared by every instance that points at it).
 *
 * Operations (the whole vocabulary a feature may use):
 *  - get / set: bytes under a key, set with a time to live. Values are
 *    opaque bytes; keys are opaque bytes (callers prefix them: "c:",
 *    "rl:"), at most KV_KEY_MAX bytes.
 *  - bucket_take: one atomic token-bucket step on a key (refill by the time
 *    passed, take `cost` tokens if there are that many), so that admission
 *    is decided where the counter lives: under the shard's lock in memory,
 *    in one server-side script in Redis. Never read-then-write.
 *  - counter_add: one atomic add to an integer counter, refused when it
 *    would pass a limit (budgets), decided the same way.
 *
 * Callbacks (libuv's rule: a callback fires exactly once):
 *  - Every operation ends in exactly one call of its callback, success or
 *    failure. A backend that answers at once (memory) calls it before the
 *    operation returns, on the calling thread; a remote one (Redis) calls it
 *    later on the thread that runs `base` (the caller's event loop), or on
 *    the calling thread when it fails before sending. Callers must be
 *    written for both: touch nothing of the request after the call that
 *    may have finished it.
 *  - `base` names the caller's event loop (struct event_base *, borrowed);
 *    a remote backend keeps one connection per loop and answers on it. The
 *    memory backend ignores it, and tests pass NULL.
 *  - Values handed to a callback are borrowed for the callback only.
 *  - No callback runs with a backend lock held: a callback may call the
 *    store again.
 *
 * Event loops (remote backends): each loop that will call the store is
 * attached first (kv_attach, before the loop runs, from the thread that
 * owns it), which opens that loop's connection, and detached on its own
 * thread before the loop is freed (kv_detach), which fails whatever is
 * still pending with KV_EUNAVAILABLE. kv_get_health says whether the
 * backend can be reached, and why not. The memory backend needs none of
 * this: attach and detach do nothing, and it is always healthy.
 *
 * Memory backend design:
 *  - The key space is split into shards (a power of two, default 64) by the
 *    top bits of the key's XXH3-64 hash; each shard has its own mutex, hash
 *    table, LRU list and byte budget (max_bytes / n_shards), so threads on
 *    different shards never share a lock and there is no global lock.
 *  - An entry's charge is its key, its value and its bookkeeping
 *    (KV_ENTRY_OVERHEAD bytes). When a shard is over budget, entries are
 *    dropped from the least recently used end (counted as evictions); an
 *    entry larger than a shard's budget is refused (KV_ETOOBIG).
 *  - Expiry: an entry past its time to live is never returned; it is freed
 *    when met (a lookup, the LRU end on insert) or by kv_maintain, which
 *    the owner calls about once a second.
 *  - Token buckets are entries too; their time to live is the time until
 *    they are full again, so an idle bucket (which a new one would equal)
 *    goes away by itself and memory stays bounded however many clients
 *    there are.
 *  - Values are refcounted so a reader copies nothing under the lock.
 *
 * Threads: every function may be called from any thread, except
 * kv_destroy (nothing else may run on that store then or later).
 */
#ifndef AISERVE_STORE_H
#define AISERVE_STORE_H

#include <stdbool.h>
#include "status.h"
#include <stddef.h>
#include <stdint.h>

#include "obs.h"

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;

/* One list generates the status enum, the names and the default messages. */
#define KV_STATUS_MAP(X)                                              \
    X(KV_OK, 0, "success")                                            \
    X(KV_ENOTFOUND, -1, "no such key")                                \
    X(KV_EWRONGTYPE, -2, "the key holds another kind of value")       \
    X(KV_EINVAL, -3, "invalid argument")                              \
    X(KV_ENOMEM, -4, "out of memory")                                 \
    X(KV_ETOOBIG, -5, "the entry is larger than the store may hold")  \
    X(KV_EUNAVAILABLE, -6, "the backend cannot be reached")

typedef enum kv_status { KV_STATUS_MAP(STATUS_ENUM_ROW) } kv_status;

const char *kv_status_name(int status);    /* "KV_ENOTFOUND"; never NULL */
const char *kv_status_message(int status); /* never NULL */

#define KV_KEY_MAX 512
#define KV_ENTRY_OVERHEAD 96 /* bytes charged per entry besides key and value */

typedef struct kv_store kv_store;

/* A token bucket: holds up to `capacity` tokens and gains `refill` tokens
 * per `period_us`, continuously (so 100 per minute is one every 0.6 s). All
 * arithmetic is in integers (a token is period_us units; each microsecond
 * adds `refill` units), so counts are exact, with the same results in every
 * backend. */
typedef struct kv_bucket_params {
    int64_t capacity;  /* >= 1 */
    int64_t refill;    /* tokens per period, >= 1 */
    int64_t period_us; /* >= 1; capacity * period_us must fit in 2^53 */
    int64_t cost;      /* tokens this request takes, 0..capacity */
} kv_bucket_params;

typedef struct kv_bucket_result {
    bool allowed;          /* the tokens were there and were taken */
    int64_t remaining;     /* whole tokens left after this step */
    int64_t retry_after_us;/* refused: until `cost` tokens are there; else 0 */
    int64_t reset_us;      /* until the bucket is full again */
} kv_bucket_result;

/* An integer counter's step (kv_counter_add). */
typedef struct kv_counter_result {
    bool applied;          /* the delta was added */
    int64_t value;         /* the counter after the step (refused: as it stands) */
} kv_counter_result;

typedef void (*kv_get_cb)(int status, const void *value, size_t len, void *ud);
typedef void (*kv_set_cb)(int status, void *ud);
typedef void (*kv_bucket_cb)(int status, const kv_bucket_result *result, void *ud);
typedef void (*kv_counter_cb)(int status, const kv_counter_result *result, void *ud);

/* Whether the backend can be reached now; reason says why not. */
typedef struct kv_health {
    bool ok;
    char reason[256]; /* "" when ok; never holds a password */
} kv_health;

/* What a backend holds, for metrics. Fields a backend cannot know are 0. */
typedef struct kv_stats {
    uint64_t entries;          /* live entries (buckets included) */
    uint64_t bytes;            /* their charge */
    uint64_t max_bytes;        /* the budget; 0: not bounded here */
    uint64_t evicted;          /* dropped for room, since creation */
    uint64_t expired;          /* dropped past their time to live, since creation */
} kv_stats;

/* The table of function pointers every backend fills (STYLE.md: backends
 * behind one table). Contracts are those of the kv_* wrappers below. */
typedef struct kv_backend {
    const char *name; /* "memory", "redis" */
    void (*get)(kv_store *s, struct event_base *base, const void *key, size_t key_len, kv_get_cb cb,
                void *ud);
    void (*set)(kv_store *s, struct event_base *base, const void *key, size_t key_len, const void *value,
                size_t len, uint64_t ttl_us, kv_set_cb cb, void *ud);
    void (*bucket_take)(kv_store *s, struct event_base *base, const void *key, size_t key_len,
                        const kv_bucket_params *params, kv_bucket_cb cb, void *ud);
    void (*counter_add)(kv_store *s, struct event_base *base, const void *key, size_t key_len, int64_t delta,
                        int64_t limit, uint64_t ttl_us, kv_counter_cb cb, void *ud);
    void (*maintain)(kv_store *s);
    void (*get_stats)(kv_store *s, kv_stats *out);
    int (*attach)(kv_store *s, struct event_base *base);
    void (*detach)(kv_store *s, struct event_base *base);
    void (*health)(kv_store *s, struct kv_health *out);
    void (*destroy)(kv_store *s);
} kv_backend;

/* The value under key, to cb: KV_OK with the bytes (borrowed for the
 * callback), KV_ENOTFOUND (absent or expired), KV_EWRONGTYPE (a bucket or a counter),
 * KV_EINVAL (key empty or over KV_KEY_MAX), or a backend failure. A hit
 * makes the entry the most recently used. */
void kv_get(kv_store *s, struct event_base *base, const void *key, size_t key_len, kv_get_cb cb, void *ud);

/* Stores a copy of value[0..len) under key, replacing what was there, for
 * ttl_us (0: until evicted). cb may be NULL. KV_ETOOBIG: the entry does not
 * fit (whatever was under the key is removed). */
void kv_set(kv_store *s, struct event_base *base, const void *key, size_t key_len, const void *value,
            size_t len, uint64_t ttl_us, kv_set_cb cb, void *ud);

/* One token-bucket step on key (a missing or expired bucket starts full).
 * KV_EINVAL for bad params, KV_EWRONGTYPE when key holds a value. */
void kv_bucket_take(kv_store *s, struct event_base *base, const void *key, size_t key_len,
                    const kv_bucket_params *params, kv_bucket_cb cb, void *ud);

/* One atomic step on an integer counter at key (budgets and token limits
 * that hold across every instance sharing the store): a missing or expired
 * counter is 0; when delta <= 0, or when value + delta <= limit, the delta
 * is added (applied); otherwise nothing changes. A counter created by this
 * step expires ttl_us later (0: never); a step on an existing counter keeps
 * its expiry. Decided where the counter lives (under the shard's lock in
 * memory, one server-side script in Redis), never read-then-write.
 *  - Exact int64 arithmetic in every backend (no bound below 2^63); a step
 *    whose sum would not fit in an int64 is refused, whatever its sign.
 *  - delta 0 reads the counter (creating it, with ttl_us, when missing); a
 *    refused step on a missing counter creates nothing (value 0).
 *  - A counter is a kind of entry of its own: kv_get and kv_bucket_take on
 *    it are KV_EWRONGTYPE, as this is on a value or a bucket; kv_set
 *    replaces it.
 *  - In memory a counter is charged like a bucket (key + KV_ENTRY_OVERHEAD)
 *    and, like any entry, may be evicted when its shard is full: it then
 *    starts over from 0. In Redis it goes only if Redis's own maxmemory
 *    policy evicts it.
 * cb gets KV_OK with the result (borrowed for the callback), KV_EINVAL (key
 * NULL, empty or over KV_KEY_MAX; at once), KV_EWRONGTYPE, or a backend
 * failure (result NULL for all of these). */
void kv_counter_add(kv_store *s, struct event_base *base, const void *key, size_t key_len, int64_t delta,
                    int64_t limit, uint64_t ttl_us, kv_counter_cb cb, void *ud);

/* Frees expired entries (a bounded amount of work per shard). The owner
 * calls it about once a second, off the request path. */
void kv_maintain(kv_store *s);

void kv_get_stats(kv_store *s, kv_stats *out);
const char *kv_backend_name(const kv_store *s);

/* Opens the connection base's loop will use (remote backends). Call it for
 * each loop before the loop runs. KV_OK, KV_EINVAL (base NULL), KV_ENOMEM.
 * NULL s is fine (KV_OK). */
int kv_attach(kv_store *s, struct event_base *base);

/* Closes base's connection, on base's own thread, before the loop is freed:
 * pending operations end with KV_EUNAVAILABLE, on this thread, before this
 * returns. Later operations with this base fail with KV_EUNAVAILABLE. */
void kv_detach(kv_store *s, struct event_base *base);

/* Fills *out: ok, or the reason the backend cannot be reached. Any thread.
 * NULL s is healthy. */
void kv_get_health(kv_store *s, kv_health *out);

/* Frees the store and everything in it. NULL is fine. No other call may
 * run on it at the same time or later. */
void kv_destroy(kv_store *s);

/* ---- the memory backend ------------------------------------------------- */

typedef struct kv_memory_options {
    uint64_t max_bytes;  /* budget over all shards; >= n_shards * 1 KiB */
    unsigned n_shards;   /* power of two, 1..1024; 0: 64 */
    /* The clock, in microseconds (monotonic). NULL: CLOCK_MONOTONIC. Tests
     * pass a fake one. Called with a shard lock held: it must not call the
     * store. */
    uint64_t (*now_us)(void *clock_ud);
    void *clock_ud;
} kv_memory_options;

/* Makes an empty memory store (owned by the caller: kv_destroy). Returns
 * KV_OK, KV_EINVAL (bad options) or KV_ENOMEM. */
int kv_memory_create(const kv_memory_options *opts, kv_store **out);

/* ---- the Redis backend -------------------------------------------------- */

typedef struct kv_redis_options {
    /* redis://[[user]:password@]host[:port][/db] (port 6379, db 0 by
     * default; %XX escapes in user and password) or
     * unix://[[user]:password@]/path/to/socket[?db=N]. Borrowed for the call. */
    const char *url;
    const char *key_prefix;       /* before every key; NULL: "aiserve:" (at most 64 bytes) */
    uint64_t connect_timeout_us;  /* connect + handshake; 0: 1 s */
    uint64_t command_timeout_us;  /* a reply later than this drops the connection; 0: 1 s */
    uint64_t retry_min_us;        /* reconnect backoff: first wait (0: 100 ms), doubling to */
    uint64_t retry_max_us;        /* (0: 5 s) */
    metrics_registry *metrics;    /* aiserve_redis_errors_total{kind}, aiserve_redis_connections; may be NULL */
    /* Tests only: the clock token buckets use (microseconds), instead of
     * Redis's own TIME. NULL in production: every instance then shares
     * Redis's clock. */
    uint64_t (*now_us)(void *clock_ud);
    void *clock_ud;
} kv_redis_options;

/* Makes a Redis store (owned by the caller: kv_destroy after every loop
 * was detached). Connects nothing yet: each kv_attach opens its loop's
 * connection, and a Redis that is down is retried with backoff, never an
 * error here. Returns KV_OK, or KV_EINVAL (bad URL or prefix) / KV_ENOMEM
 * with a message in err[cap] (which never repeats a password). */
int kv_redis_create(const kv_redis_options *opts, kv_store **out, char *err, size_t cap);

/* ---- synchronous Redis links, for worker threads ------------------------ */

/* One blocking connection to the Redis of opts->url (opts->key_prefix,
 * connect_timeout_us and command_timeout_us count; the rest is ignored),
 * for one thread whose work is to wait (the batch queue's). Never for an
 * event loop. Connects on first use. KV_OK, KV_EINVAL (bad URL or prefix)
 * or KV_ENOMEM, with a message in err[cap]. */
typedef struct kv_redis_link kv_redis_link;
int kv_redis_link_create(const kv_redis_options *opts, kv_redis_link **out, char *err, size_t cap);

/* Runs one command (hiredis's redisCommandArgv) and returns its
 * redisReply * (the caller frees it with freeReplyObject), connecting
 * first when needed. NULL on failure, with the reason in err[cap]: cannot
 * connect, no answer within the command timeout or a lost connection (the
 * link reconnects on the next command), or an error reply. */
void *kv_redis_link_command(kv_redis_link *l, int argc, const char **argv, const size_t *lens, char *err,
                            size_t cap);

const char *kv_redis_link_prefix(const kv_redis_link *l);   /* "aiserve:" by default */
const char *kv_redis_link_endpoint(const kv_redis_link *l); /* for messages: never the password */
void kv_redis_link_destroy(kv_redis_link *l);               /* NULL is fine */

#ifdef __cplusplus
}
#endif

#endif /* AISERVE_STORE_H */
