/*
 * breaker.c - a circuit breaker per upstream model (gateway_int.h).
 *
 *     CLOSED --N failures in a row, or a failure ratio over the window--> OPEN
 *     OPEN --cooldown passed--> HALF_OPEN (one probe goes through)
 *     HALF_OPEN --probe ok--> CLOSED;  --probe failed--> OPEN (cooldown again)
 *
 * An open breaker is skipped by routing and fallbacks without a network
 * call. The ratio counts only once min_requests calls were seen in the
 * current window (a fixed window, restarted when it ends).
 *
 * Threads: any; each breaker has its own mutex (calls from every loop).
 */
#include "gateway_int.h"

void gw_breaker_init(gw_breaker *b, const gw_config *c) {
    *b = (gw_breaker){.failures = c->breaker_failures, .ratio = c->breaker_ratio,
                      .min_requests = c->breaker_min_requests, .window_us = c->breaker_window_us,
                      .cooldown_us = c->breaker_cooldown_us};
    pthread_mutex_init(&b->lock, NULL);
}

void gw_breaker_destroy(gw_breaker *b) { pthread_mutex_destroy(&b->lock); }

const char *gw_breaker_state_name(gw_breaker_state s) {
    switch (s) {
    case GW_BREAKER_CLOSED: return "closed";
    case GW_BREAKER_HALF_OPEN: return "half_open";
    case GW_BREAKER_OPEN: return "open";
    }
    return "unknown";
}

/* Open long enough: half-open. Caller holds the lock. */
static void tick(gw_breaker *b, uint64_t now) {
    if (b->state == GW_BREAKER_OPEN && now - b->opened_us >= b->cooldown_us) {
        b->state = GW_BREAKER_HALF_OPEN;
        b->probing = 0;
    }
}

int gw_breaker_allow(gw_breaker *b, uint64_t now) {
    pthread_mutex_lock(&b->lock);
    tick(b, now);
    int ok = b->state == GW_BREAKER_CLOSED || (b->state == GW_BREAKER_HALF_OPEN && !b->probing);
    if (ok && b->state == GW_BREAKER_HALF_OPEN)
        b->probing = 1;
    pthread_mutex_unlock(&b->lock);
    return ok;
}

static void trip(gw_breaker *b, uint64_t now) {
    b->state = GW_BREAKER_OPEN;
    b->opened_us = now;
    b->probing = 0;
    b->consecutive = 0;
    b->window_start_us = now;
    b->window_calls = b->window_failures = 0;
}

gw_breaker_state gw_breaker_record(gw_breaker *b, int ok, uint64_t now) {
    pthread_mutex_lock(&b->lock);
    if (b->state == GW_BREAKER_HALF_OPEN) {
        if (ok) {
            b->state = GW_BREAKER_CLOSED;
            b->consecutive = 0;
            b->window_start_us = now;
            b->window_calls = b->window_failures = 0;
        } else {
            trip(b, now);
        }
    } else if (b->state == GW_BREAKER_CLOSED) {
        if (now - b->window_start_us >= b->window_us) {
            b->window_start_us = now;
            b->window_calls = b->window_failures = 0;
        }
        b->window_calls++;
        b->window_failures += !ok;
        b->consecutive = ok ? 0 : b->consecutive + 1;
        if (b->consecutive >= b->failures ||
            (b->ratio > 0 && b->window_calls >= b->min_requests &&
             (double)b->window_failures >= b->ratio * (double)b->window_calls))
            trip(b, now);
    }
    /* OPEN: a call that was let through before it opened; nothing to learn. */
    gw_breaker_state s = b->state;
    pthread_mutex_unlock(&b->lock);
    return s;
}

gw_breaker_state gw_breaker_state_now(gw_breaker *b, uint64_t now) {
    pthread_mutex_lock(&b->lock);
    tick(b, now);
    gw_breaker_state s = b->state;
    pthread_mutex_unlock(&b->lock);
    return s;
}

void gw_breaker_abandon(gw_breaker *b) {
    pthread_mutex_lock(&b->lock);
    if (b->state == GW_BREAKER_HALF_OPEN)
        b->probing = 0;
    pthread_mutex_unlock(&b->lock);
}
