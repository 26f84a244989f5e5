/*
 * kv.c - the backend-independent half of the store: statuses, the kv_*
 * wrappers that dispatch through a store's kv_backend table (kv_counter_add
 * checks its key here, once for every backend), and the token
 * bucket's integer arithmetic, which every backend must reproduce exactly
 * (the Redis backend's script does the same steps), so a limit means the
 * same on one machine and on many.
 *
 * Any thread; no state of its own.
 */
#include <string.h>

#include "store_int.h"

static const status_row rows[] = {KV_STATUS_MAP(STATUS_TABLE_ROW)};

const char *kv_status_name(int status) { return status_name(rows, STATUS_COUNT(rows), status, "KV_UNKNOWN"); }
const char *kv_status_message(int status) { return status_message(rows, STATUS_COUNT(rows), status); }

void kv_get(kv_store *s, struct event_base *base, const void *key, size_t key_len, kv_get_cb cb, void *ud) {
    s->backend->get(s, base, key, key_len, cb, ud);
}

void kv_set(kv_store *s, struct event_base *base, const void *key, size_t key_len, const void *value,
            size_t len, uint64_t ttl_us, kv_set_cb cb, void *ud) {
    s->backend->set(s, base, key, key_len, value, len, ttl_us, cb, ud);
}

void kv_bucket_take(kv_store *s, struct event_base *base, const void *key, size_t key_len,
                    const kv_bucket_params *params, kv_bucket_cb cb, void *ud) {
    s->backend->bucket_take(s, base, key, key_len, params, cb, ud);
}

void kv_counter_add(kv_store *s, struct event_base *base, const void *key, size_t key_len, int64_t delta,
                    int64_t limit, uint64_t ttl_us, kv_counter_cb cb, void *ud) {
    if (!key || key_len == 0 || key_len > KV_KEY_MAX) {
        cb(KV_EINVAL, NULL, ud);
        return;
    }
    s->backend->counter_add(s, base, key, key_len, delta, limit, ttl_us, cb, ud);
}

void kv_maintain(kv_store *s) {
    if (s && s->backend->maintain)
        s->backend->maintain(s);
}

void kv_get_stats(kv_store *s, kv_stats *out) {
    memset(out, 0, sizeof *out);
    if (s && s->backend->get_stats)
        s->backend->get_stats(s, out);
}

const char *kv_backend_name(const kv_store *s) { return s ? s->backend->name : "none"; }

int kv_attach(kv_store *s, struct event_base *base) {
    return s && s->backend->attach ? s->backend->attach(s, base) : KV_OK;
}

void kv_detach(kv_store *s, struct event_base *base) {
    if (s && s->backend->detach)
        s->backend->detach(s, base);
}

void kv_get_health(kv_store *s, kv_health *out) {
    out->ok = true;
    out->reason[0] = 0;
    if (s && s->backend->health)
        s->backend->health(s, out);
}

void kv_destroy(kv_store *s) {
    if (s)
        s->backend->destroy(s);
}

/* ---- token buckets ------------------------------------------------------ */

#define KV_BUCKET_UNITS_MAX (INT64_C(1) << 53) /* exact in a Lua (double) number */

int kv_bucket_params_check(const kv_bucket_params *p) {
    int64_t units;
    if (!p || p->capacity < 1 || p->refill < 1 || p->period_us < 1 || p->cost < 0 || p->cost > p->capacity ||
        p->refill > KV_BUCKET_UNITS_MAX || __builtin_mul_overflow(p->capacity, p->period_us, &units) ||
        units > KV_BUCKET_UNITS_MAX)
        return KV_EINVAL;
    return KV_OK;
}

static int64_t ceil_div(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }

void kv_bucket_step(const kv_bucket_params *p, int fresh, int64_t *level, uint64_t *last_us, uint64_t now_us,
                    kv_bucket_result *out) {
    const int64_t full = p->capacity * p->period_us;
    const int64_t cost = p->cost * p->period_us;
    if (fresh) {
        *level = full;
        *last_us = now_us;
    } else if (now_us > *last_us) {
        /* Refill by the time passed, without overflow: past the time that
         * fills the room, the bucket is simply full. */
        uint64_t elapsed = now_us - *last_us;
        int64_t room = full - *level;
        if (room <= 0 || elapsed >= (uint64_t)ceil_div(room, p->refill))
            *level = full;
        else
            *level += (int64_t)elapsed * p->refill;
        *last_us = now_us;
    } /* a clock that went back refills nothing */
    if (*level > full) /* the limit was lowered since the last step */
        *level = full;
    if (*level < 0)
        *level = 0;
    out->allowed = *level >= cost;
    if (out->allowed) {
        *level -= cost;
        out->retry_after_us = 0;
    } else {
        out->retry_after_us = ceil_div(cost - *level, p->refill);
    }
    out->remaining = *level / p->period_us;
    out->reset_us = ceil_div(full - *level, p->refill);
}
