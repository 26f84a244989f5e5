/*
 * redis.c - the Redis key-value backend (kv_backend "redis"): the same
 * get / set / bucket_take as memory.c, against a real Redis shared by every
 * aiserve instance, through hiredis's async API on each event loop, so no
 * loop ever blocks on Redis.
 *
 *  - One connection per event loop (kv_attach), used only on that loop's
 *    thread; an operation finds its loop's connection by `base` (a short
 *    array scanned without a lock: it is filled before the loops run).
 *  - A connection: connect, then AUTH / SELECT / SCRIPT LOAD / PING sent at
 *    once (pipelined); the PING's PONG makes it ready. Operations issued
 *    while it connects wait behind the handshake; while it is down they fail
 *    at once with KV_EUNAVAILABLE (the caller bypasses the cache and applies
 *    the rate limiter's failure policy), so an outage costs no latency.
 *  - A tick every 100 ms per connection: reconnect when due (backoff from
 *    retry_min doubling to retry_max, with jitter, reset once ready), drop a
 *    connection whose handshake takes longer than connect_timeout, or whose
 *    oldest unanswered command has waited longer than command_timeout
 *    (hiredis 0.14 has no timeouts of its own). Dropping fails every
 *    pending operation with KV_EUNAVAILABLE (hiredis calls each callback
 *    with a NULL reply).
 *  - Token buckets: one Lua script (EVALSHA; loaded on every connection)
 *    does kv_bucket_step's integer arithmetic inside Redis, atomically,
 *    with Redis's clock (TIME), so every instance shares one clock and one
 *    counter: no read-then-write race. The bucket is a hash {l: level,
 *    t: last step} that expires when it would be full again.
 *  - Every key gets the configured prefix ("aiserve:" by default), so
 *    several deployments can share one Redis.
 *  - Replies that are not what the command answers (an error, a wrong
 *    type, garbage) fail the operation and count as errors; they never
 *    admit or serve anything on their own.
 *
 * Threads: kv_redis_create, kv_attach (before the loop runs) and kv_destroy
 * from the controlling thread; operations and kv_detach on the loop's own
 * thread; health and stats from any thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>

#include "obs.h"
#include "store_int.h"

#define MAX_CONNS 256
#define TICK_US 100000
#define DEFAULT_PREFIX "aiserve:"

/* The token bucket of kv_bucket_step (kv.c), step for step, in Lua 5.1
 * numbers (doubles, exact below 2^53, which kv_bucket_params_check
 * guarantees for the levels). Divisions are corrected to exact integer
 * results. ARGV: capacity, refill, period_us, cost[, now_us for tests]. */
static const char bucket_script[] =
    "local function ceil_div(a, b)\n"
    "  if a <= 0 then return 0 end\n"
    "  local q = math.floor(a / b)\n"
    "  while q * b < a do q = q + 1 end\n"
    "  while q > 0 and (q - 1) * b >= a do q = q - 1 end\n"
    "  return q\n"
    "end\n"
    "local function floor_div(a, b)\n"
    "  local q = math.floor(a / b)\n"
    "  while q * b > a do q = q - 1 end\n"
    "  while (q + 1) * b <= a do q = q + 1 end\n"
    "  return q\n"
    "end\n"
    "local cap, refill = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "local period, cost = tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    "local now\n"
    "if ARGV[5] then now = tonumber(ARGV[5]) else\n"
    "  local t = redis.call('TIME')\n"
    "  now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "end\n"
    "local full, need = cap * period, cost * period\n"
    "local st = redis.call('HMGET', KEYS[1], 'l', 't')\n"
    "local level, last = tonumber(st[1]), tonumber(st[2])\n"
    "if not level or not last then\n"
    "  level, last = full, now\n"
    "elseif now > last then\n"
    "  local room = full - level\n"
    "  if room <= 0 or now - last >= ceil_div(room, refill) then level = full\n"
    "  else level = level + (now - last) * refill end\n"
    "  last = now\n"
    "end\n"
    "if level > full then level = full end\n"
    "if level < 0 then level = 0 end\n"
    "local allowed, retry = 0, 0\n"
    "if level >= need then level = level - need; allowed = 1\n"
    "else retry = ceil_div(need - level, refill) end\n"
    "local reset = ceil_div(full - level, refill)\n"
    "redis.call('HSET', KEYS[1], 'l', string.format('%d', level), 't', string.format('%d', last))\n"
    "redis.call('PEXPIRE', KEYS[1], ceil_div(reset, 1000) + 1000)\n"
    "return {allowed, floor_div(level, period), retry, reset}\n";

enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_READY };

typedef struct redis_store redis_store;

typedef struct redis_conn {
    redis_store *store;
    struct event_base *base;
    redisAsyncContext *ac; /* NULL while down */
    struct event *tick;
    _Atomic int state;     /* conn_state; read by health from any thread */
    uint64_t state_since_us;
    uint64_t next_attempt_us;
    uint64_t backoff_us;
    unsigned pending;      /* commands sent and not yet answered */
    uint64_t progress_us;  /* last reply, or the send that made pending non-zero */
    bool logged_down;      /* an outage is logged once, its end once */
} redis_conn;

struct redis_store {
    kv_store base;
    redis_target t; /* where Redis is (parsed from the URL) */
    char *prefix;
    size_t prefix_len;
    uint64_t connect_timeout_us, command_timeout_us, retry_min_us, retry_max_us;
    uint64_t (*now_us)(void *);
    void *clock_ud;
    char script_sha[41];

    redis_conn *conns[MAX_CONNS];
    _Atomic int n_conns;

    pthread_mutex_t reason_lock; /* guards last_error */
    char last_error[200];

    metric *errors_connect, *errors_timeout, *errors_reply, *connected;
};

static uint64_t mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void set_reason(redis_store *r, const char *fmt, const char *detail) {
    pthread_mutex_lock(&r->reason_lock);
    snprintf(r->last_error, sizeof r->last_error, fmt, detail ? detail : "");
    pthread_mutex_unlock(&r->reason_lock);
}

/* ---- connection lifecycle ----------------------------------------------- */

static void set_state(redis_conn *c, enum conn_state st) {
    int old = atomic_exchange(&c->state, (int)st);
    if (old == (int)st)
        return;
    c->state_since_us = mono_us();
    if (st == CONN_READY)
        metric_inc(c->store->connected);
    else if (old == (int)CONN_READY)
        metric_dec(c->store->connected);
}

/* The connection failed (why, for health and the log): forget it and plan
 * the next attempt. The context is already gone or being freed by hiredis. */
static void conn_lost(redis_conn *c, const char *why) {
    redis_store *r = c->store;
    c->ac = NULL;
    c->pending = 0;
    set_reason(r, "%s", why);
    if (!c->logged_down) {
        c->logged_down = true;
        log_event(LOG_WARN, "redis_unavailable", "redis", json_string(r->t.endpoint), "error", json_string(why),
                  "message",
                  json_string("cache lookups are bypassed and rate limiting follows its backend-failure "
                              "policy until Redis answers again"),
                  NULL);
    }
    uint64_t now = mono_us();
    /* Full jitter over the upper half: instances and loops do not retry in
     * step. */
    uint64_t wait = c->backoff_us / 2 + (uint64_t)random() % (c->backoff_us / 2 + 1);
    c->next_attempt_us = now + wait;
    c->backoff_us = c->backoff_us * 2 > r->retry_max_us ? r->retry_max_us : c->backoff_us * 2;
    set_state(c, CONN_DOWN);
}

/* Drops a live context from our side (timeout, bad handshake, detach):
 * pending commands get NULL replies, then the disconnect callback. */
static void conn_drop(redis_conn *c, const char *why) {
    redisAsyncContext *ac = c->ac;
    if (!ac)
        return;
    conn_lost(c, why); /* before the free: callbacks see the connection down */
    ac->data = NULL;   /* the disconnect callback must not touch c again */
    redisAsyncFree(ac);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
    redis_conn *c = ac->data;
    if (!c || c->ac != ac)
        return; /* dropped by conn_drop: already accounted for */
    char why[160];
    snprintf(why, sizeof why, "connection lost: %s",
             status == REDIS_OK ? "closed" : ac->errstr[0] ? ac->errstr : "I/O error");
    metric_inc(c->store->errors_connect);
    conn_lost(c, why);
}

static void on_connect(const redisAsyncContext *ac, int status) {
    redis_conn *c = ac->data;
    if (!c || c->ac != ac || status == REDIS_OK)
        return; /* connected: the PING's reply makes it ready */
    char why[160];
    snprintf(why, sizeof why, "cannot connect: %s", ac->errstr[0] ? ac->errstr : "error");
    metric_inc(c->store->errors_connect);
    conn_lost(c, why); /* hiredis frees the context after this callback */
}

/* Handshake replies. privdata: the connection (live while the context is). */
static void on_handshake(redisAsyncContext *ac, void *reply, void *privdata) {
    redis_conn *c = privdata;
    redisReply *rep = reply;
    if (c->pending)
        c->pending--;
    c->progress_us = mono_us();
    if (!rep || ac->data != c || c->ac != ac)
        return; /* the connection is going away; already accounted for */
    if (rep->type == REDIS_REPLY_ERROR) {
        char why[200];
        snprintf(why, sizeof why, "handshake refused: %.160s", rep->str);
        metric_inc(c->store->errors_reply);
        conn_drop(c, why);
        return;
    }
    if (rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "PONG") == 0) {
        c->backoff_us = c->store->retry_min_us;
        set_state(c, CONN_READY);
        if (c->logged_down) {
            c->logged_down = false;
            log_event(LOG_INFO, "redis_available", "redis", json_string(c->store->t.endpoint), NULL);
        }
    }
}

static int send_argv(redis_conn *c, redisCallbackFn *fn, void *privdata, int argc, const char **argv,
                     const size_t *lens) {
    if (redisAsyncCommandArgv(c->ac, fn, privdata, argc, argv, lens) != REDIS_OK)
        return -1;
    if (c->pending++ == 0)
        c->progress_us = mono_us();
    return 0;
}

static void conn_start(redis_conn *c) {
    redis_store *r = c->store;
    redisAsyncContext *ac =
        r->t.unix_path ? redisAsyncConnectUnix(r->t.unix_path) : redisAsyncConnect(r->t.host, r->t.port);
    if (!ac || ac->err) {
        char why[200];
        snprintf(why, sizeof why, "cannot connect: %.160s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        metric_inc(r->errors_connect);
        c->ac = NULL;
        conn_lost(c, why);
        return;
    }
    ac->data = c;
    c->ac = ac;
    c->pending = 0;
    if (redisLibeventAttach(ac, c->base) != REDIS_OK) {
        conn_drop(c, "cannot attach to the event loop");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    set_state(c, CONN_CONNECTING);
    char db[16];
    snprintf(db, sizeof db, "%d", r->t.db);
    int ok = 1;
    if (r->t.password) {
        const char *argv[3] = {"AUTH", r->t.user ? r->t.user : r->t.password, r->t.password};
        ok = send_argv(c, on_handshake, c, r->t.user ? 3 : 2, argv, NULL) == 0;
    }
    if (ok && r->t.db) {
        const char *argv[2] = {"SELECT", db};
        ok = send_argv(c, on_handshake, c, 2, argv, NULL) == 0;
    }
    if (ok) {
        const char *argv[3] = {"SCRIPT", "LOAD", bucket_script};
        ok = send_argv(c, on_handshake, c, 3, argv, NULL) == 0;
    }
    if (ok) {
        const char *argv[1] = {"PING"};
        ok = send_argv(c, on_handshake, c, 1, argv, NULL) == 0;
    }
    if (!ok)
        conn_drop(c, "cannot queue the handshake");
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    redis_conn *c = arg;
    redis_store *r = c->store;
    uint64_t now = mono_us();
    int st = atomic_load(&c->state);
    if (st == CONN_DOWN) {
        if (now >= c->next_attempt_us)
            conn_start(c);
        return;
    }
    if (st == CONN_CONNECTING && now - c->state_since_us > r->connect_timeout_us) {
        metric_inc(r->errors_timeout);
        conn_drop(c, "connect timed out");
    } else if (c->pending && now - c->progress_us > r->command_timeout_us) {
        metric_inc(r->errors_timeout);
        conn_drop(c, "no reply within the command timeout");
    }
}

static redis_conn *conn_of(redis_store *r, struct event_base *base) {
    int n = atomic_load_explicit(&r->n_conns, memory_order_acquire);
    for (int i = 0; i < n; i++)
        if (r->conns[i] && r->conns[i]->base == base)
            return r->conns[i];
    return NULL;
}

static int redis_attach(kv_store *s, struct event_base *base) {
    redis_store *r = (redis_store *)s;
    if (!base)
        return KV_EINVAL;
    if (conn_of(r, base))
        return KV_OK;
    int n = atomic_load(&r->n_conns);
    if (n == MAX_CONNS)
        return KV_ENOMEM;
    redis_conn *c = calloc(1, sizeof *c);
    if (!c)
        return KV_ENOMEM;
    c->store = r;
    c->base = base;
    c->backoff_us = r->retry_min_us;
    atomic_init(&c->state, CONN_DOWN);
    c->state_since_us = mono_us();
    c->tick = event_new(base, -1, EV_PERSIST, on_tick, c);
    struct timeval tv = {0, TICK_US};
    if (!c->tick || event_add(c->tick, &tv) != 0) {
        if (c->tick)
            event_free(c->tick);
        free(c);
        return KV_ENOMEM;
    }
    r->conns[n] = c;
    atomic_store_explicit(&r->n_conns, n + 1, memory_order_release);
    conn_start(c);
    return KV_OK;
}

static void redis_detach(kv_store *s, struct event_base *base) {
    redis_store *r = (redis_store *)s;
    redis_conn *c = conn_of(r, base);
    if (!c)
        return;
    c->logged_down = true; /* closing is not an outage: no log line */
    conn_drop(c, "closed");
    event_free(c->tick);
    c->tick = NULL;
    c->base = NULL; /* no operation finds it again */
}

/* ---- operations ------------------------------------------------------- */

enum op_kind { OP_GET, OP_SET, OP_BUCKET };

typedef struct redis_op {
    redis_conn *conn;
    enum op_kind kind;
    union {
        kv_get_cb get;
        kv_set_cb set;
        kv_bucket_cb bucket;
    } cb;
    void *ud;
} redis_op;

static void op_finish(redis_op *op, int status, const redisReply *rep) {
    void *ud = op->ud;
    switch (op->kind) {
    case OP_GET: {
        kv_get_cb cb = op->cb.get;
        free(op);
        cb(status, status == KV_OK ? rep->str : NULL, status == KV_OK ? (size_t)rep->len : 0, ud);
        break;
    }
    case OP_SET: {
        kv_set_cb cb = op->cb.set;
        free(op);
        if (cb)
            cb(status, ud);
        break;
    }
    case OP_BUCKET: {
        kv_bucket_cb cb = op->cb.bucket;
        free(op);
        kv_bucket_result res = {0};
        if (status == KV_OK) {
            res.allowed = rep->element[0]->integer == 1;
            res.remaining = rep->element[1]->integer;
            res.retry_after_us = rep->element[2]->integer;
            res.reset_us = rep->element[3]->integer;
        }
        cb(status, status == KV_OK ? &res : NULL, ud);
        break;
    }
    }
}

/* What a reply means for the operation; garbage is an error. */
static int reply_status(const redis_op *op, const redisReply *rep) {
    if (!rep)
        return KV_EUNAVAILABLE;
    if (rep->type == REDIS_REPLY_ERROR)
        return strncmp(rep->str, "WRONGTYPE", 9) == 0 ? KV_EWRONGTYPE : KV_EUNAVAILABLE;
    switch (op->kind) {
    case OP_GET:
        return rep->type == REDIS_REPLY_STRING ? KV_OK : rep->type == REDIS_REPLY_NIL ? KV_ENOTFOUND
                                                                                   : KV_EUNAVAILABLE;
    case OP_SET:
        return rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "OK") == 0 ? KV_OK : KV_EUNAVAILABLE;
    case OP_BUCKET:
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 4)
            return KV_EUNAVAILABLE;
        for (int i = 0; i < 4; i++)
            if (rep->element[i]->type != REDIS_REPLY_INTEGER || rep->element[i]->integer < 0)
                return KV_EUNAVAILABLE;
        return rep->element[0]->integer <= 1 ? KV_OK : KV_EUNAVAILABLE;
    }
    return KV_EUNAVAILABLE;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)ac;
    redis_op *op = privdata;
    redis_conn *c = op->conn;
    redisReply *rep = reply;
    if (c->pending)
        c->pending--;
    c->progress_us = mono_us();
    int status = reply_status(op, rep);
    if (rep && status != KV_OK && status != KV_ENOTFOUND) {
        metric_inc(c->store->errors_reply);
        if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0 && c->ac == ac) {
            /* SCRIPT FLUSH (or a failover) lost the script: load it again. */
            const char *argv[3] = {"SCRIPT", "LOAD", bucket_script};
            send_argv(c, on_handshake, c, 3, argv, NULL);
        }
    }
    op_finish(op, status, rep);
}

/* Queues argv (key at index key_at gets the prefix) on base's connection,
 * or fails op at once. */
static void submit(redis_store *r, struct event_base *base, redis_op *op, int argc, const char **argv,
                   size_t *lens, int key_at) {
    redis_conn *c = base ? conn_of(r, base) : NULL;
    int st = c ? atomic_load(&c->state) : CONN_DOWN;
    if (!c || !c->ac || st == CONN_DOWN) {
        op_finish(op, KV_EUNAVAILABLE, NULL);
        return;
    }
    op->conn = c;
    char stack[KV_KEY_MAX + 64];
    char *key = r->prefix_len + lens[key_at] <= sizeof stack ? stack : malloc(r->prefix_len + lens[key_at]);
    if (!key) {
        op_finish(op, KV_ENOMEM, NULL);
        return;
    }
    memcpy(key, r->prefix, r->prefix_len);
    memcpy(key + r->prefix_len, argv[key_at], lens[key_at]);
    argv[key_at] = key;
    lens[key_at] += r->prefix_len;
    int rc = send_argv(c, on_reply, op, argc, argv, lens);
    if (key != stack)
        free(key);
    if (rc != 0)
        op_finish(op, KV_EUNAVAILABLE, NULL);
}

static redis_op *op_new(enum op_kind kind, void *ud) {
    redis_op *op = calloc(1, sizeof *op);
    if (op) {
        op->kind = kind;
        op->ud = ud;
    }
    return op;
}

static void redis_get(kv_store *s, struct event_base *base, const void *key, size_t key_len, kv_get_cb cb,
                      void *ud) {
    if (!key || key_len == 0 || key_len > KV_KEY_MAX) {
        cb(KV_EINVAL, NULL, 0, ud);
        return;
    }
    redis_op *op = op_new(OP_GET, ud);
    if (!op) {
        cb(KV_ENOMEM, NULL, 0, ud);
        return;
    }
    op->cb.get = cb;
    const char *argv[2] = {"GET", key};
    size_t lens[2] = {3, key_len};
    submit((redis_store *)s, base, op, 2, argv, lens, 1);
}

static void redis_set(kv_store *s, struct event_base *base, const void *key, size_t key_len, const void *value,
                      size_t len, uint64_t ttl_us, kv_set_cb cb, void *ud) {
    if (!key || key_len == 0 || key_len > KV_KEY_MAX || (!value && len)) {
        if (cb)
            cb(KV_EINVAL, ud);
        return;
    }
    if (len > 512u * 1024 * 1024) { /* Redis's largest string */
        if (cb)
            cb(KV_ETOOBIG, ud);
        return;
    }
    redis_op *op = op_new(OP_SET, ud);
    if (!op) {
        if (cb)
            cb(KV_ENOMEM, ud);
        return;
    }
    op->cb.set = cb;
    char ms[32];
    /* Rounded up: an entry never lives shorter than asked. */
    snprintf(ms, sizeof ms, "%llu", (unsigned long long)((ttl_us + 999) / 1000));
    const char *argv[5] = {"SET", key, value ? value : "", "PX", ms};
    size_t lens[5] = {3, key_len, len, 2, strlen(ms)};
    submit((redis_store *)s, base, op, ttl_us ? 5 : 3, argv, lens, 1);
}

static void redis_bucket_take(kv_store *s, struct event_base *base, const void *key, size_t key_len,
                              const kv_bucket_params *p, kv_bucket_cb cb, void *ud) {
    redis_store *r = (redis_store *)s;
    if (!key || key_len == 0 || key_len > KV_KEY_MAX || kv_bucket_params_check(p) != KV_OK) {
        cb(KV_EINVAL, NULL, ud);
        return;
    }
    redis_op *op = op_new(OP_BUCKET, ud);
    if (!op) {
        cb(KV_ENOMEM, NULL, ud);
        return;
    }
    op->cb.bucket = cb;
    char num[5][24];
    snprintf(num[0], sizeof num[0], "%lld", (long long)p->capacity);
    snprintf(num[1], sizeof num[1], "%lld", (long long)p->refill);
    snprintf(num[2], sizeof num[2], "%lld", (long long)p->period_us);
    snprintf(num[3], sizeof num[3], "%lld", (long long)p->cost);
    if (r->now_us)
        snprintf(num[4], sizeof num[4], "%llu", (unsigned long long)r->now_us(r->clock_ud));
    const char *argv[9] = {"EVALSHA", r->script_sha, "1", key, num[0], num[1], num[2], num[3], num[4]};
    size_t lens[9] = {7, 40, 1, key_len, strlen(num[0]), strlen(num[1]), strlen(num[2]), strlen(num[3]),
                      strlen(num[4])};
    submit(r, base, op, r->now_us ? 9 : 8, argv, lens, 3);
}

/* ---- health, stats, lifetime ---------------------------------------------- */

static void redis_health(kv_store *s, kv_health *out) {
    redis_store *r = (redis_store *)s;
    int n = atomic_load_explicit(&r->n_conns, memory_order_acquire);
    int ready = 0, attached = 0;
    for (int i = 0; i < n; i++) {
        if (!r->conns[i]->base)
            continue;
        attached++;
        ready += atomic_load(&r->conns[i]->state) == CONN_READY;
    }
    out->ok = attached > 0 && ready == attached;
    if (out->ok)
        return;
    pthread_mutex_lock(&r->reason_lock);
    if (attached == 0)
        snprintf(out->reason, sizeof out->reason, "redis at %.100s: not connected", r->t.endpoint);
    else if (r->last_error[0])
        snprintf(out->reason, sizeof out->reason, "redis at %.60s: %d of %d connections down (%.120s)", r->t.endpoint,
                 attached - ready, attached, r->last_error);
    else
        snprintf(out->reason, sizeof out->reason, "redis at %.100s: connecting", r->t.endpoint);
    pthread_mutex_unlock(&r->reason_lock);
}

static void redis_destroy(kv_store *s) {
    redis_store *r = (redis_store *)s;
    int n = atomic_load(&r->n_conns);
    for (int i = 0; i < n; i++) {
        redis_conn *c = r->conns[i];
        if (c->base) /* never detached: its loop must be gone; free what we own */
            redis_detach(s, c->base);
        free(c);
    }
    pthread_mutex_destroy(&r->reason_lock);
    redis_target_free(&r->t);
    free(r->prefix);
    free(r);
}

static const kv_backend redis_backend = {
    .name = "redis",
    .get = redis_get,
    .set = redis_set,
    .bucket_take = redis_bucket_take,
    .attach = redis_attach,
    .detach = redis_detach,
    .health = redis_health,
    .destroy = redis_destroy,
};

static int sha1_hex(const char *text, char out[41]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_Digest(text, strlen(text), md, &n, EVP_sha1(), NULL) != 1 || n != 20)
        return -1;
    for (unsigned i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

int kv_redis_create(const kv_redis_options *opts, kv_store **out, char *err, size_t cap) {
    char scratch[8];
    if (!err)
        err = scratch, cap = sizeof scratch;
    *out = NULL;
    if (!opts || !opts->url)
        return snprintf(err, cap, "redis: no URL"), KV_EINVAL;
    redis_store *r = calloc(1, sizeof *r);
    if (!r)
        return snprintf(err, cap, "redis: out of memory"), KV_ENOMEM;
    r->base.backend = &redis_backend;
    pthread_mutex_init(&r->reason_lock, NULL);
    atomic_init(&r->n_conns, 0);
    int rc = redis_target_parse(&r->t, opts->url, err, cap);
    if (rc == KV_OK && sha1_hex(bucket_script, r->script_sha) != 0)
        rc = KV_ENOMEM, snprintf(err, cap, "redis: OpenSSL cannot hash the bucket script");
    const char *prefix = opts->key_prefix ? opts->key_prefix : DEFAULT_PREFIX;
    if (rc == KV_OK && strlen(prefix) > 64)
        rc = KV_EINVAL, snprintf(err, cap, "redis: the key prefix is longer than 64 bytes");
    if (rc == KV_OK && !(r->prefix = strdup(prefix)))
        rc = KV_ENOMEM, snprintf(err, cap, "redis: out of memory");
    if (rc != KV_OK) {
        redis_destroy(&r->base);
        return rc;
    }
    r->prefix_len = strlen(r->prefix);
    r->connect_timeout_us = opts->connect_timeout_us ? opts->connect_timeout_us : 1000000;
    r->command_timeout_us = opts->command_timeout_us ? opts->command_timeout_us : 1000000;
    r->retry_min_us = opts->retry_min_us ? opts->retry_min_us : 100000;
    r->retry_max_us = opts->retry_max_us > r->retry_min_us ? opts->retry_max_us : 5000000;
    if (r->retry_max_us < r->retry_min_us)
        r->retry_max_us = r->retry_min_us;
    r->now_us = opts->now_us;
    r->clock_ud = opts->clock_ud;
    if (opts->metrics) {
        metric_family *f = metrics_counter(opts->metrics, "aiserve_redis_errors_total",
                                           "Failures talking to Redis, by kind: connect (cannot connect, "
                                           "connection lost), timeout (no answer in time), reply (an error "
                                           "or an answer that makes no sense).",
                                           1, (const char *[]){"kind"});
        r->errors_connect = metric_get(f, "connect", NULL);
        r->errors_timeout = metric_get(f, "timeout", NULL);
        r->errors_reply = metric_get(f, "reply", NULL);
        metric_family *g = metrics_gauge(opts->metrics, "aiserve_redis_connections",
                                         "Connections to Redis that are up (one per event loop when healthy).",
                                         0, NULL);
        r->connected = g ? metric_series(g, NULL) : NULL;
    }
    *out = &r->base;
    return KV_OK;
}
