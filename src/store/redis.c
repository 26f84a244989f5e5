/*
 * redis.c - the Redis key-value backend (kv_backend "redis"): the same
 * get / set / bucket_take / counter_add as memory.c, against a real Redis
 * shared by every aiserve instance, through hiredis's async API on each
 * event loop, so no loop ever blocks on Redis.
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
 *  - Counters: a second script reads, decides and adds (HINCRBY) in one
 *    step. A counter is a hash {n: value}, so that it is a kind of its own
 *    as in memory.c (GET on it, or a bucket step, is WRONGTYPE; a string or
 *    a bucket under its key is WRONGTYPE to it). Lua numbers are doubles,
 *    so the script never does int64 arithmetic: Redis adds, C computes the
 *    greatest value at which the step applies, and the script compares
 *    decimal strings; exact over the whole int64 range.
 *  - Scripts are called by SHA1 (EVALSHA); when Redis no longer has one
 *    (NOSCRIPT: SCRIPT FLUSH, a failover), the operation is sent once more
 *    with the script itself (EVAL), which also caches it again.
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

/* What a script answers for a key that holds another kind (a counter is a
 * hash {n}, a bucket a hash {l, t}): Redis's own WRONGTYPE error. */
#define LUA_WRONGTYPE "return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')"

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
    "if redis.call('HEXISTS', KEYS[1], 'n') == 1 then " LUA_WRONGTYPE " end\n"
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

/* One kv_counter_add step on the hash {n: value} at KEYS[1]. ARGV: delta,
 * ceiling (the greatest value at which the step applies, '' when any does:
 * delta <= 0), ttl_ms for a new counter ('0': none). Values travel as
 * decimal strings and are compared as such (le, for canonical integers of
 * any length); HINCRBY does the int64 addition and refuses an overflow,
 * which refuses the step. Returns {applied, value as a string}. */
static const char counter_script[] =
    "local function le(a, b)\n"
    "  local neg = a:sub(1, 1) == '-'\n"
    "  if neg ~= (b:sub(1, 1) == '-') then return neg end\n"
    "  if #a ~= #b then return (#a < #b) ~= neg end\n"
    "  for i = 1, #a do\n"
    "    local x, y = a:byte(i), b:byte(i)\n"
    "    if x ~= y then return (x < y) ~= neg end\n"
    "  end\n"
    "  return true\n"
    "end\n"
    "local kind = redis.call('TYPE', KEYS[1])['ok']\n"
    "local cur = '0'\n"
    "if kind ~= 'none' then\n"
    "  cur = kind == 'hash' and redis.call('HGET', KEYS[1], 'n')\n"
    "  if not cur or #cur > 20 or not (cur == '0' or string.find(cur, '^%-?[1-9]%d*$')) then " LUA_WRONGTYPE " end\n"
    "end\n"
    "if ARGV[2] ~= '' and not le(cur, ARGV[2]) then return {0, cur} end\n"
    "if type(redis.pcall('HINCRBY', KEYS[1], 'n', ARGV[1])) == 'table' then return {0, cur} end\n"
    "if kind == 'none' and ARGV[3] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end\n"
    "return {1, redis.call('HGET', KEYS[1], 'n')}\n";

/* A ceiling below every int64: a step that can never apply. */
#define CEILING_NEVER "-9223372036854775809"

/* A script and its SHA1 (what EVALSHA names it by). */
typedef struct redis_script {
    const char *source;
    char sha[41];
} redis_script;

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
    redis_script bucket, counter;

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
    const redis_script *scripts[2] = {&r->bucket, &r->counter};
    for (int i = 0; ok && i < 2; i++) {
        const char *argv[3] = {"SCRIPT", "LOAD", scripts[i]->source};
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

enum op_kind { OP_GET, OP_SET, OP_BUCKET, OP_COUNTER };

#define SCRIPT_ARGS_MAX 7 /* after the SHA1: numkeys, the key, the bucket's 4 numbers and a clock */

typedef struct redis_op {
    redis_conn *conn;
    enum op_kind kind;
    union {
        kv_get_cb get;
        kv_set_cb set;
        kv_bucket_cb bucket;
        kv_counter_cb counter;
    } cb;
    void *ud;
    /* A script's call is kept until its reply, to be sent once more with
     * the script itself on NOSCRIPT. */
    const redis_script *script; /* NULL: not a script */
    bool sent_source;           /* sent with EVAL: no second retry */
    int n_args;                 /* after the script: numkeys, the prefixed key, its arguments */
    const char *args[SCRIPT_ARGS_MAX];
    size_t lens[SCRIPT_ARGS_MAX];
    char buf[];                 /* what args point into */
} redis_op;

/* The counter's value in a script's reply: a decimal string (a Lua number
 * could not hold every int64). */
static bool counter_value(const redisReply *v, int64_t *out) {
    char text[24], *end;
    if (v->type != REDIS_REPLY_STRING || v->len == 0 || v->len >= sizeof text)
        return false;
    memcpy(text, v->str, v->len);
    text[v->len] = 0;
    errno = 0;
    long long x = strtoll(text, &end, 10);
    if (errno || *end)
        return false;
    *out = x;
    return true;
}

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
    case OP_COUNTER: {
        kv_counter_cb cb = op->cb.counter;
        free(op);
        kv_counter_result res = {0};
        if (status == KV_OK) {
            res.applied = rep->element[0]->integer == 1;
            counter_value(rep->element[1], &res.value);
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
    case OP_COUNTER: {
        int64_t value;
        return rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
                       rep->element[0]->type == REDIS_REPLY_INTEGER &&
                       (rep->element[0]->integer == 0 || rep->element[0]->integer == 1) &&
                       counter_value(rep->element[1], &value)
                   ? KV_OK
                   : KV_EUNAVAILABLE;
    }
    }
    return KV_EUNAVAILABLE;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Sends op's script call: by SHA1 (EVALSHA), or, once Redis has answered
 * NOSCRIPT, the script itself (EVAL). 0, or -1 when it cannot be queued. */
static int send_script(redis_conn *c, redis_op *op) {
    const char *argv[2 + SCRIPT_ARGS_MAX];
    size_t lens[2 + SCRIPT_ARGS_MAX];
    argv[0] = op->sent_source ? "EVAL" : "EVALSHA";
    argv[1] = op->sent_source ? op->script->source : op->script->sha;
    lens[0] = strlen(argv[0]);
    lens[1] = strlen(argv[1]);
    memcpy(argv + 2, op->args, (size_t)op->n_args * sizeof *argv);
    memcpy(lens + 2, op->lens, (size_t)op->n_args * sizeof *lens);
    return send_argv(c, on_reply, op, 2 + op->n_args, argv, lens);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)ac;
    redis_op *op = privdata;
    redis_conn *c = op->conn;
    redisReply *rep = reply;
    if (c->pending)
        c->pending--;
    c->progress_us = mono_us();
    if (rep && rep->type == REDIS_REPLY_ERROR && op->script && !op->sent_source &&
        strncmp(rep->str, "NOSCRIPT", 8) == 0 && c->ac == ac) {
        /* SCRIPT FLUSH (or a failover) lost the script: nothing ran, so
         * send the script itself; EVAL caches it for the next EVALSHA. */
        op->sent_source = true;
        if (send_script(c, op) == 0)
            return;
    }
    int status = reply_status(op, rep);
    if (rep && status != KV_OK && status != KV_ENOTFOUND)
        metric_inc(c->store->errors_reply);
    op_finish(op, status, rep);
}

/* base's connection when it can take a command now (queued behind the
 * handshake while it connects); NULL: the operation fails at once. */
static redis_conn *live_conn(redis_store *r, struct event_base *base) {
    redis_conn *c = base ? conn_of(r, base) : NULL;
    return c && c->ac && atomic_load(&c->state) != CONN_DOWN ? c : NULL;
}

/* Queues argv (key at index key_at gets the prefix) on base's connection,
 * or fails op at once. */
static void submit(redis_store *r, struct event_base *base, redis_op *op, int argc, const char **argv,
                   size_t *lens, int key_at) {
    redis_conn *c = live_conn(r, base);
    if (!c) {
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

/* Sends op's script call (script_op_new) on base's connection, or fails
 * op at once. */
static void submit_script(redis_store *r, struct event_base *base, redis_op *op) {
    redis_conn *c = live_conn(r, base);
    op->conn = c;
    if (!c || send_script(c, op) != 0)
        op_finish(op, KV_EUNAVAILABLE, NULL);
}

static redis_op *op_new(enum op_kind kind, void *ud, size_t extra) {
    redis_op *op = calloc(1, sizeof *op + extra);
    if (op) {
        op->kind = kind;
        op->ud = ud;
    }
    return op;
}

/* An operation that calls `script` on key (prefixed here) with args[0..n)
 * (strings), keeping the call for send_script. NULL: out of memory. */
static redis_op *script_op_new(redis_store *r, enum op_kind kind, void *ud, const redis_script *script,
                               const void *key, size_t key_len, int n, const char *const *args) {
    size_t extra = r->prefix_len + key_len;
    for (int i = 0; i < n; i++)
        extra += strlen(args[i]);
    redis_op *op = op_new(kind, ud, extra);
    if (!op)
        return NULL;
    op->script = script;
    op->args[0] = "1";
    op->lens[0] = 1;
    char *p = op->buf;
    memcpy(p, r->prefix, r->prefix_len);
    memcpy(p + r->prefix_len, key, key_len);
    op->args[1] = p;
    op->lens[1] = r->prefix_len + key_len;
    p += op->lens[1];
    for (int i = 0; i < n; i++) {
        op->lens[2 + i] = strlen(args[i]);
        memcpy(p, args[i], op->lens[2 + i]);
        op->args[2 + i] = p;
        p += op->lens[2 + i];
    }
    op->n_args = 2 + n;
    return op;
}

static void redis_get(kv_store *s, struct event_base *base, const void *key, size_t key_len, kv_get_cb cb,
                      void *ud) {
    if (!key || key_len == 0 || key_len > KV_KEY_MAX) {
        cb(KV_EINVAL, NULL, 0, ud);
        return;
    }
    redis_op *op = op_new(OP_GET, ud, 0);
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
    redis_op *op = op_new(OP_SET, ud, 0);
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
    char num[5][24];
    snprintf(num[0], sizeof num[0], "%lld", (long long)p->capacity);
    snprintf(num[1], sizeof num[1], "%lld", (long long)p->refill);
    snprintf(num[2], sizeof num[2], "%lld", (long long)p->period_us);
    snprintf(num[3], sizeof num[3], "%lld", (long long)p->cost);
    if (r->now_us)
        snprintf(num[4], sizeof num[4], "%llu", (unsigned long long)r->now_us(r->clock_ud));
    const char *args[5] = {num[0], num[1], num[2], num[3], num[4]};
    redis_op *op = script_op_new(r, OP_BUCKET, ud, &r->bucket, key, key_len, r->now_us ? 5 : 4, args);
    if (!op) {
        cb(KV_ENOMEM, NULL, ud);
        return;
    }
    op->cb.bucket = cb;
    submit_script(r, base, op);
}

/* kv_counter_add checked the key. */
static void redis_counter_add(kv_store *s, struct event_base *base, const void *key, size_t key_len, int64_t delta,
                              int64_t limit, uint64_t ttl_us, kv_counter_cb cb, void *ud) {
    redis_store *r = (redis_store *)s;
    char num[3][24];
    snprintf(num[0], sizeof num[0], "%lld", (long long)delta);
    /* The step applies when value <= limit - delta (delta > 0); when that
     * is below every int64, it never does. */
    int64_t ceiling;
    if (delta <= 0)
        num[1][0] = 0;
    else if (__builtin_sub_overflow(limit, delta, &ceiling))
        snprintf(num[1], sizeof num[1], "%s", CEILING_NEVER);
    else
        snprintf(num[1], sizeof num[1], "%lld", (long long)ceiling);
    /* Rounded up to whole milliseconds: never shorter than asked. */
    snprintf(num[2], sizeof num[2], "%llu", (unsigned long long)(ttl_us / 1000 + (ttl_us % 1000 != 0)));
    const char *args[3] = {num[0], num[1], num[2]};
    redis_op *op = script_op_new(r, OP_COUNTER, ud, &r->counter, key, key_len, 3, args);
    if (!op) {
        cb(KV_ENOMEM, NULL, ud);
        return;
    }
    op->cb.counter = cb;
    submit_script(r, base, op);
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
    .counter_add = redis_counter_add,
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
    r->bucket.source = bucket_script;
    r->counter.source = counter_script;
    int rc = redis_target_parse(&r->t, opts->url, err, cap);
    if (rc == KV_OK && (sha1_hex(bucket_script, r->bucket.sha) != 0 || sha1_hex(counter_script, r->counter.sha) != 0))
        rc = KV_ENOMEM, snprintf(err, cap, "redis: OpenSSL cannot hash the scripts");
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
