/*
 * protect.c - rate limiting and the response cache on the prediction path
 * (/predict, /v1/models/{name}/predict): the HTTP half of guard.h's
 * guard_ratelimit_* and guard_cache_*.
 *
 *   http_limit_request    X-RateLimit-* headers; 429 with Retry-After over
 *                         the limit; else http_predict_admitted (routes.c)
 *   http_predict_dispatch the cache key; Cache-Control: no-cache bypasses the
 *                         lookup; otherwise join the key's flight: a follower
 *                         waits (no thread held), the leader looks the key up
 *                         and on a miss submits to the scheduler
 *   http_prediction_answer / _fail
 *                         the one exit of a computed prediction: store the
 *                         answer (never an error), publish the outcome to the
 *                         followers, then reply
 *   http_finish_follower  a follower's answer, on its own loop
 *
 * Followers may live on other loops. The leader's thread calls each
 * follower's waiter (guard_cache_publish), which only posts the follower's
 * call to its own loop's done list (http_post_done) and wakes that loop;
 * the loop then answers it in http_finish_prediction -> http_finish_follower.
 * A follower counts in the server's pending_jobs while it waits, as a
 * queued job does, so shutdown waits for it too.
 *
 * Guard callbacks may run before the call that started them returns
 * (memory backend) or later on this loop (a remote one): nothing here
 * touches a call after handing it to a function that may have answered it.
 *
 * Loop thread only, except on_outcome (the leader's thread).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/keyvalq_struct.h>

#include "http_int.h"

/* ---- rate limiting ---------------------------------------------------- */

static void add_number_header(http_call *call, const char *name, long long v) {
    char text[24];
    http_add_header(call, name, http_format_int(v, text));
}

static void on_limited(const guard_ratelimit_result *r, void *ud) {
    http_call *call = ud;
    add_number_header(call, "X-RateLimit-Limit", (long long)r->limit);
    add_number_header(call, "X-RateLimit-Remaining", (long long)r->remaining);
    add_number_header(call, "X-RateLimit-Reset", (long long)r->reset_s);
    if (r->allowed) {
        http_predict_admitted(call);
        return;
    }
    add_number_header(call, "Retry-After", (long long)r->retry_after_s);
    if (r->status != KV_OK)
        http_reply_error(call, HTTP_ERR_RATE_LIMITER_UNAVAILABLE,
                         "the rate limiter's store cannot be reached, and ratelimit.on_backend_failure is deny; "
                         "retry in %lld s",
                         (long long)r->retry_after_s);
    else if (call->key_name[0])
        http_reply_error(call, HTTP_ERR_RATE_LIMITED,
                         "the API key '%s' is over its rate limit (tier %s: %lld requests a minute, burst %lld); "
                         "retry in %lld s",
                         call->key_name, r->tier->name, (long long)r->tier->requests_per_minute,
                         (long long)r->tier->burst, (long long)r->retry_after_s);
    else
        http_reply_error(call, HTTP_ERR_RATE_LIMITED,
                         "this client is over the rate limit (%lld requests a minute, burst %lld); retry in %lld s",
                         (long long)r->tier->requests_per_minute, (long long)r->tier->burst,
                         (long long)r->retry_after_s);
}

void http_limit_request(http_call *call) {
    http_server *s = call->loop->server;
    guard_ratelimit *rl = s->opts.ratelimit;
    if (!rl) {
        http_predict_admitted(call);
        return;
    }
    char client[GUARD_CLIENT_MAX] = "";
    if (!call->key_name[0]) {
        /* Only the addresses of trusted proxies make X-Forwarded-For count
         * (guard_ratelimit_client decides). */
        const char *forwarded[16];
        size_t n = 0;
        struct evkeyvalq *h = evhttp_request_get_input_headers(call->req);
        for (struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
            if (strcasecmp(kv->key, "X-Forwarded-For") != 0)
                continue;
            if (n == 16) { /* keep the last lines: the ones our proxies added */
                memmove(forwarded, forwarded + 1, 15 * sizeof *forwarded);
                n--;
            }
            forwarded[n++] = kv->value;
        }
        guard_ratelimit_client(rl, call->client, forwarded, n, client, sizeof client);
    }
    guard_ratelimit_check(rl, call->loop->base, call->key_name, call->key_tier, client, &call->ratelimit_req,
                          on_limited, call);
}

/* ---- the cache ---------------------------------------------------------- */

/* Whether the client asked for a fresh answer: a "no-cache" directive in
 * Cache-Control, or (HTTP/1.0) Pragma: no-cache. */
static int wants_fresh(struct evhttp_request *req) {
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, "Cache-Control") != 0 && strcasecmp(kv->key, "Pragma") != 0)
            continue;
        for (const char *p = kv->value; *p;) {
            while (*p == ' ' || *p == '\t' || *p == ',')
                p++;
            size_t n = strcspn(p, ",");
            size_t m = n;
            while (m && (p[m - 1] == ' ' || p[m - 1] == '\t'))
                m--;
            if (m == 8 && strncasecmp(p, "no-cache", 8) == 0)
                return 1;
            p += n;
        }
    }
    return 0;
}

/* Sends a 200 prediction body (or logs 499 when the client left). */
static void send_body(http_call *call, const char *body, size_t len, const char *x_cache) {
    if (!call->req || call->discard) { /* the client left: 499, as nginx logs it */
        http_reply_text(call, 499, "text/plain", "", 0);
        return;
    }
    if (x_cache)
        http_add_header(call, "X-Cache", x_cache);
    if (call->version && !call->cascade) { /* which version answered (a cascade's: per text, in the body) */
        char ver[24];
        http_add_header(call, "X-Model-Version", http_format_int(serving_version_number(call->version), ver));
    }
    http_reply_text(call, 200, "application/json", body, len);
}

/* Leader's thread: hand the follower back to its own loop. */
static void on_outcome(guard_cache_waiter *w, guard_cache_outcome *o) {
    http_call *call = (http_call *)((char *)w - offsetof(http_call, waiter));
    call->outcome = o;
    http_post_done(NULL, call);
}

static void on_lookup(int hit, const void *body, size_t len, void *ud) {
    http_call *call = ud;
    if (!hit) {
        http_predict_submit(call);
        return;
    }
    http_server *s = call->loop->server;
    guard_cache_outcome *o = guard_cache_outcome_create(0, 0, true, body, len, NULL);
    guard_cache_publish(s->opts.cache, call->flight, o);
    guard_cache_outcome_release(o);
    call->flight = NULL;
    send_body(call, body, len, "HIT");
}

void http_predict_dispatch(http_call *call) {
    http_server *s = call->loop->server;
    guard_cache *cache = s->opts.cache;
    if (!cache) {
        http_predict_submit(call);
        return;
    }
    guard_cache_input in = {
        .model = serving_version_model(call->version),
        .version = serving_version_number(call->version),
        .kind = call->single ? GUARD_CACHE_SINGLE : GUARD_CACHE_LIST,
        .texts = call->texts,
        .lens = call->lens,
        .n = call->job.n,
    };
    char params[160];
    if (call->kserve || call->cascade || call->embed) { /* another body for the same texts */
        in.params = params;
        in.params_len = call->kserve  ? http_kserve_params(call, params, sizeof params)
                        : call->embed ? http_embeddings_params(call, params, sizeof params)
                                      : http_cascade_params(call, params, sizeof params);
        if (in.params_len >= sizeof params)
            in.params_len = sizeof params - 1;
    }
    guard_cache_key_make(&in, &call->cache_key);
    if (wants_fresh(call->req)) {
        call->cache_role = HTTP_CACHE_BYPASS;
        guard_cache_count_bypass(cache);
        http_predict_submit(call);
        return;
    }
    call->waiter.on_outcome = on_outcome;
    /* Counted before joining: once joined, the leader may post it at once. */
    atomic_fetch_add(&s->pending_jobs, 1);
    if (guard_cache_join(cache, &call->cache_key, &call->waiter, &call->flight) == GUARD_CACHE_FOLLOWER) {
        call->cache_role = HTTP_CACHE_FOLLOWER;
        return; /* answered by http_finish_follower on this loop */
    }
    atomic_fetch_sub(&s->pending_jobs, 1);
    call->cache_role = HTTP_CACHE_LEADER;
    guard_cache_lookup(cache, call->loop->base, &call->cache_key, &call->cache_req, on_lookup, call);
}

void http_prediction_answer(http_call *call, char *body, size_t len) {
    guard_cache *cache = call->loop->server->opts.cache;
    if (cache && (call->cache_role == HTTP_CACHE_LEADER || call->cache_role == HTTP_CACHE_BYPASS))
        guard_cache_store(cache, call->loop->base, &call->cache_key, body, len);
    if (call->cache_role == HTTP_CACHE_LEADER) {
        /* After the store: a request arriving once the flight is over finds
         * the answer stored. */
        guard_cache_outcome *o = guard_cache_outcome_create(0, 0, false, body, len, NULL);
        guard_cache_publish(cache, call->flight, o);
        guard_cache_outcome_release(o);
        call->flight = NULL;
    }
    send_body(call, body, len, cache ? "MISS" : NULL);
    free(body);
}

void http_prediction_fail(http_call *call, http_error e, int flags, const char *fmt, ...) {
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    if (call->cache_role == HTTP_CACHE_LEADER) {
        /* Errors are shared with the followers, never stored. Codes are
         * shifted by one: 0 means an answer. */
        guard_cache_outcome *o = guard_cache_outcome_create((int)e + 1, flags, false, NULL, 0, message);
        guard_cache_publish(call->loop->server->opts.cache, call->flight, o);
        guard_cache_outcome_release(o);
        call->flight = NULL;
    }
    if (flags & HTTP_FAIL_RETRY_AFTER)
        http_add_header(call, "Retry-After", "1");
    http_reply_error(call, e, "%s", message);
}

void http_finish_follower(http_call *call) {
    guard_cache_outcome *o = call->outcome;
    call->outcome = NULL; /* the reply frees the call; o is released after it */
    int error = guard_cache_outcome_error(o);
    if (error == 0) {
        size_t len;
        const char *body = guard_cache_outcome_body(o, &len);
        send_body(call, body, len, guard_cache_outcome_from_cache(o) ? "HIT" : "MISS");
    } else if (error < 0 || error > HTTP_ERR_COUNT) {
        http_reply_error(call, HTTP_ERR_INTERNAL, "%s", guard_cache_outcome_message(o));
    } else {
        if (guard_cache_outcome_flags(o) & HTTP_FAIL_RETRY_AFTER)
            http_add_header(call, "Retry-After", "1");
        http_reply_error(call, (http_error)(error - 1), "%s", guard_cache_outcome_message(o));
    }
    guard_cache_outcome_release(o);
}
