/*
 * guard.h - the guard module's one public header: what stands between a
 * request and the model: API keys (guard_keys_*, guard_keyset_*,
 * guard_keystore_*), rate limiting (guard_ratelimit_*) and the response
 * cache with request coalescing (guard_cache_*). Rate limits and cached
 * answers live in a key-value backend (store.h) that this module sees only
 * through its table of functions, so memory and Redis are interchangeable.
 *
 * API keys
 * --------
 * A key is "ais_" followed by 43 characters of unpadded base64url: 32
 * random bytes from OpenSSL's RAND_bytes (256 bits). `aiserve keys create`
 * shows it once; only its SHA-256 is stored.
 *
 * The key store is one JSON file (auth.keys_file, default ./data/keys.json):
 *
 *     {"version": 1, "keys": [
 *       {"name": "web", "sha256": "<64 hex digits: SHA-256 of the key>",
 *        "scopes": ["predict", "embed"], "tier": "default",
 *        "created": "2026-11-27T11:02:10Z", "revoked": false},
 *       {"name": "old", ..., "revoked": true, "revoked_at": "2026-12-01T09:00:00Z"}]}
 *
 *  - name: unique, [A-Za-z0-9._-]{1,64}; tier: the same alphabet (default
 *    "default"); scopes: a subset of predict, embed, batch, chat, admin
 *    (each scope is its own; admin does not imply the others); sha256:
 *    unique; created and revoked_at: RFC 3339 UTC (informational).
 *  - Fields this version does not know are kept when `aiserve keys` rewrites
 *    the file; a record that breaks these rules makes the whole file invalid.
 *  - Written atomically: a temporary file in the same directory, fsync,
 *    rename, fsync of the directory; mode 0600. Writers (`aiserve keys`)
 *    serialise on an flock of the file's directory.
 *
 * Checking a key: SHA-256 of the presented bytes, then an open-addressing
 * table indexed by that hash (the hash of a 256-bit secret reveals nothing
 * about it), and every candidate compared with CRYPTO_memcmp, which reads
 * all 32 bytes whatever they hold.
 *
 * Reloading without stopping readers (guard_keys):
 *  - A keyset is immutable once built and reference-counted. The live store
 *    holds one reference to the current set and a generation counter.
 *  - Each reader thread (an event loop) keeps a guard_keys_view: its own
 *    reference and the generation it was taken at. guard_keys_authorize
 *    compares that generation with the store's (one atomic load, no write to
 *    shared memory on the hot path) and only when they differ swaps its
 *    reference under the store's mutex.
 *  - A reload builds the new set completely, then swaps it in under the
 *    mutex and bumps the generation. The old set is freed by whoever drops
 *    its last reference: the store, or the last view to move on (a view that
 *    sees no request keeps the old set until its next request or release).
 *  - A file that fails to load never replaces the current set.
 *
 * Threads: guard_keys_open/reload/poll/close from one controlling thread
 * (the server's main thread); guard_keys_authorize from any thread, each
 * with its own view; the keystore functions from any thread (they lock the
 * directory against other writers); keyset functions from any thread.
 */
#ifndef AISERVE_GUARD_H
#define AISERVE_GUARD_H

#include <stdbool.h>
#include "status.h"
#include <stddef.h>
#include <stdint.h>

#include "obs.h"
#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One list generates the status enum, the names and the default messages. */
#define GUARD_STATUS_MAP(X)                                      \
    X(GUARD_OK, 0, "success")                                    \
    X(GUARD_EINVAL, -1, "invalid argument")                      \
    X(GUARD_EEXIST, -2, "a key with this name exists")           \
    X(GUARD_ENOTFOUND, -3, "no key with this name")              \
    X(GUARD_EFORMAT, -4, "the key store file is not valid")      \
    X(GUARD_EIO, -5, "cannot read or write the key store file")  \
    X(GUARD_ENOMEM, -6, "out of memory")                         \
    X(GUARD_ECRYPTO, -7, "OpenSSL failed")

typedef enum guard_status { GUARD_STATUS_MAP(STATUS_ENUM_ROW) } guard_status;

const char *guard_status_name(int status);    /* "GUARD_EEXIST"; never NULL */
const char *guard_status_message(int status); /* never NULL */

/* Caller-owned error record; message is always NUL-terminated and never
 * holds a key. */
typedef struct guard_error {
    int status;
    char message[512];
} guard_error;

/* ---- scopes ----------------------------------------------------------- */

#define GUARD_SCOPE_MAP(X)  \
    X(PREDICT, "predict")   \
    X(EMBED, "embed")       \
    X(BATCH, "batch")       \
    X(CHAT, "chat")         \
    X(ADMIN, "admin")

enum guard_scope_bit {
#define GUARD_SCOPE_BIT(name, text) GUARD_SCOPE_BIT_##name,
    GUARD_SCOPE_MAP(GUARD_SCOPE_BIT)
#undef GUARD_SCOPE_BIT
    GUARD_N_SCOPES
};

/* Scopes are a bit set; 0 (GUARD_SCOPE_ANY as a requirement) means "any
 * valid key". */
typedef unsigned guard_scopes;
#define GUARD_SCOPE_ANY 0u
#define GUARD_SCOPE_PREDICT (1u << GUARD_SCOPE_BIT_PREDICT)
#define GUARD_SCOPE_EMBED (1u << GUARD_SCOPE_BIT_EMBED)
#define GUARD_SCOPE_BATCH (1u << GUARD_SCOPE_BIT_BATCH)
#define GUARD_SCOPE_CHAT (1u << GUARD_SCOPE_BIT_CHAT)
#define GUARD_SCOPE_ADMIN (1u << GUARD_SCOPE_BIT_ADMIN)
#define GUARD_SCOPE_ALL ((1u << GUARD_N_SCOPES) - 1u)

/* "predict" for GUARD_SCOPE_PREDICT: the name of the lowest bit set in
 * scopes, or "" for 0. Static string. */
const char *guard_scope_name(guard_scopes scopes);

/* Parses a comma-separated list ("predict,embed") into *out. Each item must
 * be a scope name; repeats are fine; an empty list or empty item is an
 * error. Returns 0, or GUARD_EINVAL with err filled (naming the bad item and
 * the valid ones); *out is untouched on error. */
int guard_scopes_parse(const char *text, guard_scopes *out, guard_error *err);

/* Writes the scopes as "predict,embed" (table order) into buf[cap]. Returns
 * the length, as snprintf. */
int guard_scopes_format(guard_scopes scopes, char *buf, size_t cap);

/* ---- keys and keysets ------------------------------------------------- */

#define GUARD_NAME_MAX 64        /* name and tier: 1..64 of [A-Za-z0-9._-] */
#define GUARD_KEY_PREFIX "ais_"
#define GUARD_KEY_CHARS 47       /* "ais_" + 43 base64url characters */
#define GUARD_PRESENTED_MAX 512  /* longer credentials are refused unhashed */

/* 1 if s is a valid key name or tier ([A-Za-z0-9._-]{1,64}). */
bool guard_name_is_valid(const char *s);

/* One record of the store, as the server and `keys list` see it: never the
 * key, never its hash. */
typedef struct guard_key_info {
    char name[GUARD_NAME_MAX + 1];
    char tier[GUARD_NAME_MAX + 1];
    char created[40];    /* as stored; "" when absent */
    char revoked_at[40]; /* as stored; "" when absent */
    guard_scopes scopes;
    bool revoked;
} guard_key_info;

/* An immutable set of key records with its lookup table. Refcounted. */
typedef struct guard_keyset guard_keyset;

/* Reads and validates the key store at path into a new set (one reference,
 * owned by the caller: guard_keyset_release). A missing file, and a file of
 * zero bytes, give an empty set with *exists (may be NULL) set to false.
 * Returns 0, or a guard_status with err filled ("path: ..."): GUARD_EIO
 * (cannot read; not a regular file; over 16 MiB), GUARD_EFORMAT (not JSON,
 * with line and column; a bad record, naming it and its field). */
int guard_keyset_load(const char *path, guard_keyset **out, bool *exists, guard_error *err);

void guard_keyset_retain(guard_keyset *set);
void guard_keyset_release(guard_keyset *set); /* NULL is fine */

size_t guard_keyset_size(const guard_keyset *set);       /* records, revoked included */
size_t guard_keyset_n_active(const guard_keyset *set);   /* records not revoked */
/* Record i (file order), borrowed from the set; NULL when i is out of range. */
const guard_key_info *guard_keyset_get(const guard_keyset *set, size_t i);

/* The record whose hash equals SHA-256(key[0..len)), or NULL. Borrowed
 * from the set. The comparison is constant-time per candidate. */
const guard_key_info *guard_keyset_lookup(const guard_keyset *set, const char *key, size_t len);

/* ---- the key store file, as `aiserve keys` edits it -------------------- */

/* Makes a new key, adds its record (name, scopes, tier, created now) and
 * rewrites the file atomically; creates the file (mode 0600) and, if
 * missing, its directory (mode 0700). Writes the key, NUL-terminated, to
 * key_out (cap >= GUARD_KEY_CHARS + 1): the only copy there will ever be.
 * tier NULL means "default". Returns 0, or GUARD_EINVAL (bad name, tier or
 * scopes 0), GUARD_EEXIST (name taken), GUARD_EFORMAT (the existing file is
 * invalid: it is left as it is), GUARD_EIO, GUARD_ECRYPTO, with err. */
int guard_keystore_create(const char *path, const char *name, guard_scopes scopes, const char *tier,
                          char *key_out, size_t cap, guard_error *err);

/* Marks the record revoked (revoked: true, revoked_at: now) and rewrites the
 * file. Returns 0; 1 when it was already revoked (file untouched);
 * GUARD_ENOTFOUND, GUARD_EFORMAT or GUARD_EIO with err. */
int guard_keystore_revoke(const char *path, const char *name, guard_error *err);

/* ---- the live store, for the server ----------------------------------- */

/* The outcome of checking one request. One list gives the enum and the
 * `reason` label of aiserve_auth_failures_total. */
#define GUARD_AUTH_MAP(X)                     \
    X(OK, NULL)                               \
    X(OPEN, NULL)      /* no keys: open */    \
    X(MISSING, "missing")                     \
    X(INVALID, "invalid")                     \
    X(REVOKED, "revoked")                     \
    X(SCOPE, "scope")

typedef enum guard_auth_status {
#define GUARD_AUTH_ENUM(name, reason) GUARD_AUTH_##name,
    GUARD_AUTH_MAP(GUARD_AUTH_ENUM)
#undef GUARD_AUTH_ENUM
    GUARD_AUTH_COUNT
} guard_auth_status;

typedef struct guard_keys guard_keys;

/* A reader's reference to the current keyset. Zero-initialise it; one per
 * thread; release it with guard_keys_view_release before guard_keys_close. */
typedef struct guard_keys_view {
    guard_keyset *set;
    uint64_t generation;
} guard_keys_view;

typedef struct guard_auth {
    guard_auth_status status;
    /* The matching record (OK, REVOKED, SCOPE), else NULL. Borrowed from the
     * view's keyset: valid until the next authorize or release on that view. */
    const guard_key_info *key;
} guard_auth;

/* Opens the live store on path (copied) and loads it (guard_keyset_load's
 * rules). metrics (borrowed, may be NULL) gets aiserve_auth_failures_total
 * {reason}, aiserve_api_keys{state} and aiserve_keys_reloads_total{result}.
 * With `required`, a set without an active key is an error, at open and at
 * every reload (a deployment that must never run open: a missing secret
 * stops the start instead of opening every endpoint). Returns 0 with *out
 * (free with guard_keys_close), or a guard_status with err: the server must
 * not start on a key store it cannot read. */
int guard_keys_open(const char *path, bool required, metrics_registry *metrics, guard_keys **out,
                    guard_error *err);

/* Frees the store. Every view must have been released. NULL is fine. */
void guard_keys_close(guard_keys *k);

/* Loads the file again and swaps the new set in. Returns 1 when a new set
 * is in use, or a guard_status (< 0) with err and the current set kept:
 * the file fails to load, or it is missing or zero bytes while keys are in
 * use (a file being rewritten in place must never open the server: to
 * drop every key, write {"keys": []} or restart without a file), or the
 * store is `required` and the new set has no active key. */
int guard_keys_reload(guard_keys *k, guard_error *err);

/* Reloads when the file's identity (device, inode, size, modification
 * time; following symlinks, so a Kubernetes secret's swapped ..data link
 * counts) differs from what was last read, checking at most once a second
 * (now_us: any monotonic clock in microseconds). Returns 0 when nothing
 * changed, else what guard_keys_reload returns. A file that failed to load
 * is not retried until it changes again. */
int guard_keys_poll(guard_keys *k, uint64_t now_us, guard_error *err);

/* What is in use now, for the log. */
typedef struct guard_keys_stats {
    size_t n_keys, n_active;
    bool exists;        /* the file was there at the last (good) load */
    unsigned mode;      /* its permission bits (st_mode & 07777); 0 if missing */
    const char *path;   /* borrowed from the store */
} guard_keys_stats;
void guard_keys_get_stats(guard_keys *k, guard_keys_stats *out);

/* Checks a presented credential (key[0..len), not NUL-terminated; NULL or
 * len 0 when the request carried none) against the current set and the
 * scope the endpoint requires (GUARD_SCOPE_ANY: any valid key). With no
 * keys configured the answer is GUARD_AUTH_OPEN whatever was presented.
 * Counts failures in aiserve_auth_failures_total. Never logs, never keeps
 * the key. Any thread, with that thread's own view. */
void guard_keys_authorize(guard_keys *k, guard_keys_view *view, const char *key, size_t len,
                          guard_scopes required, guard_auth *out);

/* Counts one failure of this kind (for a refusal decided by the caller,
 * such as two different keys in one request). Any thread. */
void guard_keys_count_failure(guard_keys *k, guard_auth_status status);

/* Drops the view's reference. Any thread; the view may be used again. */
void guard_keys_view_release(guard_keys_view *view);

/* ---- rate limiting ------------------------------------------------------
 *
 * A token bucket per API key (by the key's name), or per client address for
 * requests without a key. Each key has a tier (guard_key_info.tier); the
 * tier gives the bucket's size (burst) and refill rate (requests per
 * minute). A tier that is not configured gets the limits of "default";
 * requests without a key use "anonymous".
 *
 * The bucket lives in a kv_store and one kv_bucket_take decides (atomic in
 * every backend: never read-then-write). The answer comes to a callback:
 * at once from the memory backend, later (on the caller's event loop) from
 * a remote one. When the backend fails (Redis unreachable), the request is
 * admitted (fail open, the default) or refused (deny_on_backend_failure);
 * either way the result says so in `status`.
 *
 * Client addresses: a request's address is its TCP peer. X-Forwarded-For
 * is believed only when the peer is a trusted proxy: then the header's
 * addresses are read from the right, skipping trusted proxies, and the
 * first untrusted one is the client. IPv6 clients are limited per /64
 * (one subscriber's allocation), so hopping inside it does not help.
 *
 * Threads: create and destroy from one controlling thread; everything else
 * from any thread.
 */

typedef struct guard_tier {
    char name[GUARD_NAME_MAX + 1];
    int64_t requests_per_minute; /* refill rate, >= 1 */
    int64_t burst;               /* bucket size, >= 1 */
} guard_tier;

typedef struct guard_ratelimit_options {
    const guard_tier *tiers;     /* n_tiers, copied; "default" and "anonymous" must be among them */
    size_t n_tiers;
    const char *trusted_proxies; /* "10.0.0.0/8,::1" (addresses or CIDR blocks); NULL or "": none */
    kv_store *store;             /* borrowed; must outlive the limiter */
    bool deny_on_backend_failure;/* refuse, rather than admit, what the store cannot decide */
} guard_ratelimit_options;

typedef struct guard_ratelimit guard_ratelimit;

/* Makes a limiter over opts->store. metrics (borrowed, must outlive the
 * limiter; may be NULL) gets aiserve_ratelimit_decisions_total{result} and
 * the gauge aiserve_ratelimit_buckets. Returns 0 with *out (free with
 * guard_ratelimit_destroy), or GUARD_EINVAL (a tier missing or out of
 * range, a bad proxy address) / GUARD_ENOMEM with err. */
int guard_ratelimit_create(const guard_ratelimit_options *opts, metrics_registry *metrics,
                           guard_ratelimit **out, guard_error *err);
void guard_ratelimit_destroy(guard_ratelimit *rl); /* NULL is fine */

/* The tier that a key's tier name (NULL: no key) maps to; borrowed from
 * the limiter. Never NULL. */
const guard_tier *guard_ratelimit_tier(const guard_ratelimit *rl, const char *tier_name);

#define GUARD_CLIENT_MAX 64 /* enough for any address as text */

/* The client address a request without a key is limited by, as text into
 * out[cap]: peer (the TCP peer, as text) unless it is a trusted proxy, and
 * then the rightmost untrusted address of the X-Forwarded-For values (the
 * n_forwarded header values in the order received; each may list several
 * addresses). An entry that is not an address ends the walk (the last
 * trusted hop is the client). IPv4-mapped IPv6 addresses are written as
 * IPv4; IPv6 addresses as their /64 ("2001:db8:1:2::/64"). */
void guard_ratelimit_client(const guard_ratelimit *rl, const char *peer, const char *const *forwarded,
                            size_t n_forwarded, char *out, size_t cap);

typedef struct guard_ratelimit_result {
    bool allowed;
    int status;            /* KV_OK, or the backend's failure (decided by the failure policy) */
    const guard_tier *tier;/* borrowed from the limiter */
    int64_t limit;         /* the tier's burst: X-RateLimit-Limit */
    int64_t remaining;     /* whole requests left now: X-RateLimit-Remaining */
    int64_t reset_s;       /* seconds until the bucket is full (rounded up): X-RateLimit-Reset */
    int64_t retry_after_s; /* refused: seconds until one request is allowed, >= 1; else 0 */
} guard_ratelimit_result;

typedef void (*guard_ratelimit_cb)(const guard_ratelimit_result *result, void *ud);

/* Per-check state, owned by the caller (embed it in the request); it must
 * stay valid until the callback has run. Fields are private. */
typedef struct guard_ratelimit_req {
    guard_ratelimit *rl;
    const guard_tier *tier;
    guard_ratelimit_cb cb;
    void *ud;
} guard_ratelimit_req;

/* Takes one request from the bucket of key_name (a valid key's name) or,
 * when key_name is NULL or "", of client (guard_ratelimit_client's text),
 * with the limits of tier_name (the key's tier; ignored without a key).
 * cb(result, ud) runs exactly once: before this returns for the memory
 * backend, later on `base`'s loop for a remote one. Counts the decision. */
void guard_ratelimit_check(guard_ratelimit *rl, struct event_base *base, const char *key_name,
                           const char *tier_name, const char *client, guard_ratelimit_req *req,
                           guard_ratelimit_cb cb, void *ud);

/* ---- the response cache -------------------------------------------------
 *
 * Answers to prediction requests, stored as the exact response body under
 * a 128-bit XXH3 key of everything that decides the answer: the model
 * name, the resolved version (so versions never share entries), the kind
 * of request (one text or a list), each text and the parameters, every
 * field length-prefixed so no two different inputs hash the same bytes.
 * Entries live in a kv_store with a time to live.
 *
 * Coalescing: identical requests in flight at the same time run once. The
 * first to guard_cache_join a key is the leader (it looks the key up, runs
 * the model on a miss, stores the answer, and publishes the outcome); the
 * others are followers, which hold no thread: their waiter's callback is
 * called once, from the leader's thread, with the leader's outcome (its
 * answer, or its error). A flight ends when it is published, after the
 * answer was stored, so a request that arrives later finds it stored.
 *
 * Threads: create and destroy from one controlling thread; everything else
 * from any thread. Metrics: aiserve_cache_requests_total{result=hit|miss|
 * bypass}, aiserve_cache_coalesced_total, aiserve_cache_evictions_total
 * {reason=capacity|expired}, aiserve_cache_bytes, aiserve_cache_entries.
 */

typedef struct guard_cache guard_cache;

typedef struct guard_cache_options {
    kv_store *store;  /* borrowed; must outlive the cache */
    uint64_t ttl_us;  /* how long an answer is kept; >= 1 */
} guard_cache_options;

/* Returns 0 with *out (free with guard_cache_destroy), or GUARD_EINVAL /
 * GUARD_ENOMEM with err. metrics as for the limiter. */
int guard_cache_create(const guard_cache_options *opts, metrics_registry *metrics, guard_cache **out,
                       guard_error *err);
/* Every flight must have been published. NULL is fine. */
void guard_cache_destroy(guard_cache *c);

typedef struct guard_cache_key {
    unsigned char bytes[16];
} guard_cache_key;

typedef enum guard_cache_kind { GUARD_CACHE_SINGLE = 1, GUARD_CACHE_LIST = 2 } guard_cache_kind;

/* Everything an answer depends on. Strings are borrowed for the call. */
typedef struct guard_cache_input {
    const char *model;         /* the model's name */
    long version;              /* the resolved version */
    guard_cache_kind kind;
    const char *const *texts;  /* n texts of lens[i] bytes */
    const size_t *lens;
    size_t n;
    const void *params;        /* canonical bytes of any parameters; NULL/0: none */
    size_t params_len;
} guard_cache_input;

void guard_cache_key_make(const guard_cache_input *in, guard_cache_key *out);

typedef void (*guard_cache_lookup_cb)(int hit, const void *body, size_t len, void *ud);

/* Per-lookup state, owned by the caller; valid until the callback ran. */
typedef struct guard_cache_req {
    guard_cache *cache;
    guard_cache_lookup_cb cb;
    void *ud;
} guard_cache_req;

/* Looks the key up: cb(hit, body, len, ud) exactly once (body borrowed for
 * the callback; a backend failure is a miss). Counts hit or miss. */
void guard_cache_lookup(guard_cache *c, struct event_base *base, const guard_cache_key *key,
                        guard_cache_req *req, guard_cache_lookup_cb cb, void *ud);

/* Stores body[0..len) (copied) under key for the cache's time to live.
 * Only answers; never errors. */
void guard_cache_store(guard_cache *c, struct event_base *base, const guard_cache_key *key, const void *body,
                       size_t len);

/* Counts a request that skipped the lookup (Cache-Control: no-cache). */
void guard_cache_count_bypass(guard_cache *c);

/* Frees expired entries of the backend; about once a second, any thread. */
void guard_cache_maintain(guard_cache *c);

/* What a leader tells its followers: an answer (error 0, the body) or an
 * error (the caller's own code > 0, a message, flags). Immutable,
 * refcounted. */
typedef struct guard_cache_outcome guard_cache_outcome;

/* Returns a new outcome (one reference, the caller's) or NULL when out of
 * memory. body is copied (error 0); message (may be NULL) is copied and
 * cut at 511 bytes. */
guard_cache_outcome *guard_cache_outcome_create(int error, int flags, bool from_cache, const void *body,
                                                size_t len, const char *message);
void guard_cache_outcome_retain(guard_cache_outcome *o);
void guard_cache_outcome_release(guard_cache_outcome *o); /* NULL is fine */
int guard_cache_outcome_error(const guard_cache_outcome *o);
int guard_cache_outcome_flags(const guard_cache_outcome *o);
bool guard_cache_outcome_from_cache(const guard_cache_outcome *o);
const char *guard_cache_outcome_body(const guard_cache_outcome *o, size_t *len);
const char *guard_cache_outcome_message(const guard_cache_outcome *o); /* "" when none */

/* A follower's registration, owned by the caller (embed it in the
 * request). on_outcome runs exactly once, on the leader's thread, with a
 * reference the waiter then owns (release it when done); like a batcher's
 * on_done, it must only hand the request back to its own thread. */
typedef struct guard_cache_waiter guard_cache_waiter;
struct guard_cache_waiter {
    void (*on_outcome)(guard_cache_waiter *w, guard_cache_outcome *o);
    guard_cache_waiter *next_; /* private */
};

typedef struct guard_cache_flight guard_cache_flight;

#define GUARD_CACHE_LEADER 1
#define GUARD_CACHE_FOLLOWER 0

/* Joins the flight for key. Returns GUARD_CACHE_LEADER with *flight set:
 * the caller must guard_cache_publish it exactly once (even on failure);
 * *flight may be NULL when memory ran out (lead alone; publishing NULL is
 * fine). Or GUARD_CACHE_FOLLOWER: w's on_outcome will be called; counts
 * aiserve_cache_coalesced_total. */
int guard_cache_join(guard_cache *c, const guard_cache_key *key, guard_cache_waiter *w,
                     guard_cache_flight **flight);

/* Ends the flight and calls every follower's on_outcome, on this thread,
 * with its own reference to o (borrowed here). o NULL (out of memory):
 * followers get an outcome with error -1. */
void guard_cache_publish(guard_cache *c, guard_cache_flight *flight, guard_cache_outcome *o);

/* ---- guardrails: PII detectors (pii.c) --------------------------------------
 *
 * Detectors for personal data in text going to an upstream LLM (input) or
 * coming back from it (output), each with an action: off, redact (the match
 * becomes "[REDACTED:<type>]") or block (the caller refuses the input with
 * 422, or replaces the whole output with GUARD_PII_BLOCKED_TEXT).
 *
 *  - ssn:   US social security numbers, 123-45-6789 (dashes; also spaces,
 *           the same separator twice), not 000, 666 or 9xx in the area,
 *           not 00 in the group, not 0000 in the serial.
 *  - card:  payment card numbers: 13 to 19 digits passing the Luhn check,
 *           in one run or grouped as cards are printed (a first group of
 *           4, then groups of 3 to 6, separated by the same single space or
 *           dash throughout). A match ends after a group, the longest that
 *           passes, so a card followed by its CVV is still found.
 *  - email: local@domain.tld as RFC 5321 mailboxes are written in practice:
 *           the local part is a whole run of [A-Za-z0-9._%+-], 1 to 64
 *           bytes; the domain is labels of [A-Za-z0-9-] (1 to 63, no hyphen
 *           at either end) joined by single dots, at most 253 bytes, ending
 *           with a TLD of 2+ letters (the longest such domain).
 *  - phone: North American numbers ((415) 555-0123, (415)555-0123,
 *           415-555-0123, 415.555.0123, 415 555 0123, +1 415 555 0123,
 *           +1(415)555-0123, 1-800-555-0199) and international numbers in E.164 style (+
 *           then 8 to 15 digits, the first not 0, optionally grouped by
 *           single spaces, dashes or dots; the longest, ending after a group).
 * A match never starts or ends inside a longer run of letters or digits
 * (word boundaries), so order numbers and hashes are not hit. Only ASCII
 * letters and digits make runs: any other byte, non-ASCII included, is a
 * boundary (so numbers in text without spaces, such as Chinese, are found).
 *
 * Pure functions over bytes (UTF-8 passes through untouched: only ASCII
 * bytes are ever part of a match); any thread. docs/guardrails.md has
 * examples of matches and near misses.
 */

typedef enum guard_pii_type {
    GUARD_PII_SSN = 0,
    GUARD_PII_CARD = 1,
    GUARD_PII_EMAIL = 2,
    GUARD_PII_PHONE = 3,
    GUARD_PII_COUNT = 4,
} guard_pii_type;

typedef enum guard_pii_action {
    GUARD_PII_OFF = 0,
    GUARD_PII_REDACT = 1,
    GUARD_PII_BLOCK = 2,
} guard_pii_action;

/* The service's fixed reply for a blocked output. */
#define GUARD_PII_BLOCKED_TEXT "[Output filtered for security]"

/* "ssn", "card", "email", "phone"; "unknown" otherwise. */
const char *guard_pii_type_name(guard_pii_type t);
/* Parses "off", "redact", "block" (any case): 0, or -1 (out untouched). */
int guard_pii_action_parse(const char *s, guard_pii_action *out);

typedef struct guard_pii_policy {
    guard_pii_action action[GUARD_PII_COUNT];
} guard_pii_policy;

typedef struct guard_pii_match {
    guard_pii_type type;
    size_t start, len; /* bytes of the text */
} guard_pii_match;

/* The matches of every detector whose action is not off, in text order,
 * non-overlapping (where two overlap, the earlier start wins, then the
 * longer, then the lower type). Writes up to cap into out; returns how
 * many there are (may be more than cap). */
size_t guard_pii_scan(const guard_pii_policy *p, const char *text, size_t len, guard_pii_match *out, size_t cap);

/* What the policy makes of a text. */
typedef struct guard_pii_result {
    char *text;                        /* malloc'd, NUL-terminated: the text with every match (redact
                                          or block) replaced by "[REDACTED:<type>]" (a copy even when
                                          nothing matched); NULL when out of memory */
    size_t len;
    int blocked;                       /* a detector with action block matched */
    unsigned found[GUARD_PII_COUNT];   /* matches per type (redact or block; off types are not
                                          looked for) */
} guard_pii_result;

/* Applies the policy to text[len]. Returns 0, or -1 when out of memory. */
int guard_pii_apply(const guard_pii_policy *p, const char *text, size_t len, guard_pii_result *out);

/* Streaming: text arriving in chunks (an LLM's answer token by token). Each
 * feed returns the part that can be released now, already redacted: all of
 * it except a tail that a pattern could still grow into (a match split
 * across chunks is caught), and that tail is held back no longer than a
 * pattern could need (so the added delay is a few tokens at most). What
 * the feeds and the finish release, put together, is exactly what
 * guard_pii_apply makes of the whole text, however it was cut.
 *
 * The tail held back is at most 319 bytes (the longest an email can be
 * read before it is decided: a local part of 64, '@', a domain of 253 and
 * the byte after it); in prose it is the word being written, which could
 * still become an email's local part, and a number being written.
 *
 * Once a block detector matched, nothing more is released (not even the
 * text before the match in that chunk) and the text is scanned no further.
 *
 * Owned by the caller; one thread at a time. */
typedef struct guard_pii_stream guard_pii_stream;

guard_pii_stream *guard_pii_stream_new(const guard_pii_policy *p); /* NULL: out of memory */
/* Feeds chunk[len] (borrowed for the call); sets *out (malloc'd, free
 * with free(); NUL-terminated, possibly "") and *out_len to what may be
 * released. Returns 0, 1 once blocked (*out is then ""), or -1 when out
 * of memory (*out NULL; the stream is then only fit to be freed). */
int guard_pii_stream_feed(guard_pii_stream *s, const char *chunk, size_t len, char **out, size_t *out_len);
/* The end of the text: releases the held-back tail the same way. Call it
 * once, last; then only guard_pii_stream_found and _free. */
int guard_pii_stream_finish(guard_pii_stream *s, char **out, size_t *out_len);
/* Matches per type so far (up to and including the one that blocked). */
void guard_pii_stream_found(const guard_pii_stream *s, unsigned found[GUARD_PII_COUNT]);
void guard_pii_stream_free(guard_pii_stream *s);

#ifdef __cplusplus
}
#endif

#endif /* AISERVE_GUARD_H */
