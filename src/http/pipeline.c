/*
 * pipeline.c - the one path of every inference endpoint (/predict,
 * /v1/models/{name}[/versions/{v}]/predict, /v2/.../infer, /v1/embeddings).
 * An endpoint supplies only its http_infer_ops (parse, cache parameters,
 * answer); this file runs the stages, in order, each in one function:
 *
 *   admit      the rate limit (X-RateLimit-* headers; 429 over it). The API
 *              key was checked by the route table before the handler ran.
 *   parse      the pinned version (the path's, else X-Model-Version), the
 *              JSON body (413, 400), then the endpoint's parser (422).
 *   resolve    serving_resolve: the version that answers (pin, alias,
 *              split sticky by X-User-ID, or the cascade's first), held;
 *              blank texts refused; the endpoint's resolved op (422).
 *   cache      the key (model, version, texts, the endpoint's parameters);
 *              Cache-Control: no-cache bypasses the lookup; otherwise join
 *              the key's flight: a follower waits for the leader's outcome
 *              (no thread held), the leader looks the key up.
 *   predict    on a miss, serving_predict (cascade and shadow happen there);
 *              its on_done posts the call back to its loop.
 *   answer     the endpoint formats the body; it is stored in the cache
 *              (never an error), published to followers, then sent.
 *
 * Every answer after the cache stage goes through answer() or fail(), so a
 * leader always tells its followers how it went. Followers may live on
 * other loops: the leader's thread only posts them back (http_post) and
 * their own loop answers them. A call sent away (serving, a flight) counts
 * in the server's pending_jobs until it is back, so shutdown waits for it.
 *
 * Guard callbacks may run before the call that started them returns
 * (memory backend) or later on this loop (a remote one): nothing here
 * touches a call after handing it to a function that may have answered it.
 *
 * Loop thread only, except on_predicted and on_outcome (other threads,
 * which only post the call back).
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

enum { CACHE_NONE = 0, CACHE_BYPASS, CACHE_LEADER, CACHE_FOLLOWER };
#define FAIL_RETRY_AFTER 1 /* flag: the answer carries Retry-After: 1 */

struct http_infer {
    const http_infer_ops *ops;
    http_call *call;
    char version_ref[72];         /* the pinned version or alias; "" none */
    http_inputs in;
    serving_request req;
    guard_ratelimit_req ratelimit_req;
    int cache_role;
    guard_cache_key cache_key;
    guard_cache_req cache_req;
    guard_cache_waiter waiter;    /* follower: how the leader's outcome reaches it */
    guard_cache_flight *flight;   /* leader: the flight to publish (may be NULL) */
    guard_cache_outcome *outcome; /* follower: the leader's outcome, once posted */
};

static void parse_stage(http_call *call);
static void resolve_stage(http_call *call);
static void cache_stage(http_call *call);
static void predict_stage(http_call *call);

void http_infer_free(http_infer *f) {
    if (!f)
        return;
    serving_request_fini(&f->req);
    http_inputs_free(&f->in);
    free(f);
}

int http_infer_describe(const http_infer *f, const char **model, long *version, int *batch_size) {
    if (!f || !f->req.first)
        return 0;
    *model = serving_version_model(f->req.first);
    *version = serving_version_number(f->req.first);
    *batch_size = f->req.batch_size;
    return 1;
}

static void count_model_error(http_call *call, const char *type) {
    metric *m = metric_series(call->loop->server->metrics.model_errors, (const char *[]){type});
    if (m)
        metric_inc(m);
}

/* ---- answers ---------------------------------------------------------------- */

/* Sends a 200 body (or logs 499 when the client left). */
static void send_body(http_call *call, const char *body, size_t len, const char *x_cache) {
    if (!call->req || call->discard) { /* the client left: 499, as nginx logs it */
        http_reply_text(call, 499, "text/plain", "", 0);
        return;
    }
    const serving_request *r = &call->infer->req;
    if (x_cache)
        http_add_header(call, "X-Cache", x_cache);
    if (r->first && !r->cascade.first) { /* which version answered (a cascade's: per text, in the body) */
        char ver[24];
        http_add_header(call, "X-Model-Version", http_format_int(serving_version_number(r->first), ver));
    }
    http_reply_text(call, 200, "application/json", body, len);
}

/* The answer body (malloc'd, taken): stored, given to followers, sent. */
static void answer(http_call *call, char *body, size_t len) {
    http_infer *f = call->infer;
    guard_cache *cache = call->loop->server->opts.cache;
    if (cache && (f->cache_role == CACHE_LEADER || f->cache_role == CACHE_BYPASS))
        guard_cache_store(cache, call->loop->base, &f->cache_key, body, len);
    if (f->cache_role == CACHE_LEADER) {
        /* After the store: a request arriving once the flight is over finds
         * the answer stored. */
        guard_cache_outcome *o = guard_cache_outcome_create(0, 0, false, body, len, NULL);
        guard_cache_publish(cache, f->flight, o);
        guard_cache_outcome_release(o);
        f->flight = NULL;
    }
    send_body(call, body, len, cache ? "MISS" : NULL);
    free(body);
}

/* A failed prediction: given to followers (never cached), sent. */
static void fail(http_call *call, http_error e, int flags, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(http_call *call, http_error e, int flags, const char *fmt, ...) {
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    http_infer *f = call->infer;
    if (f->cache_role == CACHE_LEADER) {
        /* Codes are shifted by one: 0 means an answer. */
        guard_cache_outcome *o = guard_cache_outcome_create((int)e + 1, flags, false, NULL, 0, message);
        guard_cache_publish(call->loop->server->opts.cache, f->flight, o);
        guard_cache_outcome_release(o);
        f->flight = NULL;
    }
    if (flags & FAIL_RETRY_AFTER)
        http_add_header(call, "Retry-After", "1");
    http_reply_error(call, e, "%s", message);
}

/* ---- admit ------------------------------------------------------------------ */

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
        call->admitted(call);
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

void http_infer_handler(http_call *call) {
    http_infer *f = calloc(1, sizeof *f);
    if (!f) {
        http_reply_error(call, HTTP_ERR_INTERNAL, "out of memory");
        return;
    }
    f->ops = call->route->infer;
    f->call = call;
    serving_request_init(&f->req);
    call->infer = f;
    http_admit(call, &f->ratelimit_req, parse_stage);
}

void http_admit(http_call *call, guard_ratelimit_req *slot, void (*admitted)(http_call *call)) {
    call->admitted = admitted;
    guard_ratelimit *rl = call->loop->server->opts.ratelimit;
    if (!rl) {
        admitted(call);
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
    guard_ratelimit_check(rl, call->loop->base, call->key_name, call->key_tier, client, slot, on_limited, call);
}

/* ---- parse ------------------------------------------------------------------ */

static void parse_stage(http_call *call) {
    http_infer *f = call->infer;
    if (!call->req) { /* the client left while the limiter answered: 499, as nginx logs it */
        http_reply_text(call, 499, "text/plain", "", 0);
        return;
    }
    /* The path's version (checked by the route table) wins; else
     * X-Model-Version pins a version or an alias. */
    const char *pin = call->params.version;
    if (!pin[0] && (pin = http_header(call, "X-Model-Version")) != NULL && !http_version_ref_valid(pin, 1)) {
        http_reply_error(call, HTTP_ERR_INVALID_REQUEST,
                         "X-Model-Version must be a version number (1, 2, ...) or an alias (production)");
        return;
    }
    if (pin)
        http_copy(f->version_ref, sizeof f->version_ref, pin);
    json_t *body = http_read_json(call); /* NULL: answered, and the call is gone */
    if (!body)
        return;
    f->in.body = body;
    http_fail why;
    if (f->ops->parse(&call->loop->server->limits, body, &f->in, &why) != 0) {
        http_reply_fail(call, &why);
        return;
    }
    resolve_stage(call);
}

/* ---- resolve ------------------------------------------------------------------ */

static void resolve_stage(http_call *call) {
    http_server *s = call->loop->server;
    http_infer *f = call->infer;
    serving_request *r = &f->req;
    r->model = call->params.name[0] ? call->params.name : f->in.model;
    r->version_ref = f->version_ref;
    if (!f->version_ref[0]) { /* X-User-ID keeps a user on one side of a split */
        r->user_id = http_header(call, "X-User-ID");
        r->user_id_len = r->user_id ? strlen(r->user_id) : 0;
    }
    r->task = f->ops->task;
    r->allow_cascade = f->ops->allow_cascade && !f->version_ref[0];
    r->allow_shadow = !f->ops->pairs;
    r->want_logits = f->ops->pairs; /* a reranker's score is its logit's sigmoid */
    r->texts = f->in.texts;
    r->lens = f->in.lens;
    r->n = f->in.n;
    r->query = f->in.query;
    r->query_len = f->in.query_len;
    r->deadline_us = call->start_us + (uint64_t)s->opts.request_timeout_ms * 1000u;
    serving_error err = {0};
    int rc = serving_resolve(s->repo, r, &err);
    if (rc != 0) {
        if (rc == SERVING_ENOTREADY)
            http_add_header(call, "Retry-After", "1");
        http_reply_status(call, STATUS_MODULE_SERVING, rc, err.message);
        return;
    }
    int n_labels = serving_version_info(r->first)->n_labels;
    if (f->ops->pairs && n_labels != 1) {
        http_reply_error(call, HTTP_ERR_UNSUPPORTED_MODEL,
                         "model '%s' has %d labels; a reranker (a cross-encoder) has one, its relevance score",
                         serving_version_model(r->first), n_labels);
        return;
    }
    http_fail why;
    if (f->in.query && serving_version_text_is_blank(r->first, f->in.query, f->in.query_len)) {
        http_reply_error(call, HTTP_ERR_EMPTY_TEXT, "query must not be empty");
        return;
    }
    if (http_check_blank(&f->in, r->first, &why) != 0 ||
        (f->ops->resolved && f->ops->resolved(&f->in, r, &why) != 0)) {
        http_reply_fail(call, &why);
        return;
    }
    cache_stage(call);
}

/* ---- cache ------------------------------------------------------------------ */

/* Whether the client asked for a fresh answer: a "no-cache" directive in
 * Cache-Control, or (HTTP/1.0) Pragma: no-cache. */
int http_wants_fresh(struct evhttp_request *req) {
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

/* A follower, back on its loop with the leader's outcome. */
static void follower_back(http_call *call) {
    http_infer *f = call->infer;
    guard_cache_outcome *o = f->outcome;
    f->outcome = NULL; /* the reply frees the call; o is released after it */
    int error = guard_cache_outcome_error(o);
    if (error == 0) {
        size_t len;
        const char *body = guard_cache_outcome_body(o, &len);
        send_body(call, body, len, guard_cache_outcome_from_cache(o) ? "HIT" : "MISS");
    } else if (error < 0 || error > HTTP_ERR_COUNT) {
        http_reply_error(call, HTTP_ERR_INTERNAL, "%s", guard_cache_outcome_message(o));
    } else {
        if (guard_cache_outcome_flags(o) & FAIL_RETRY_AFTER)
            http_add_header(call, "Retry-After", "1");
        http_reply_error(call, (http_error)(error - 1), "%s", guard_cache_outcome_message(o));
    }
    guard_cache_outcome_release(o);
}

/* The leader's thread: hand the follower back to its own loop. */
static void on_outcome(guard_cache_waiter *w, guard_cache_outcome *o) {
    http_infer *f = (http_infer *)((char *)w - offsetof(http_infer, waiter));
    f->outcome = o;
    f->call->on_posted = follower_back;
    http_post(f->call);
}

static void on_lookup(int hit, const void *body, size_t len, void *ud) {
    http_call *call = ud;
    if (!hit) {
        predict_stage(call);
        return;
    }
    http_infer *f = call->infer;
    guard_cache_outcome *o = guard_cache_outcome_create(0, 0, true, body, len, NULL);
    guard_cache_publish(call->loop->server->opts.cache, f->flight, o);
    guard_cache_outcome_release(o);
    f->flight = NULL;
    send_body(call, body, len, "HIT");
}

static void cache_stage(http_call *call) {
    http_server *s = call->loop->server;
    http_infer *f = call->infer;
    guard_cache *cache = s->opts.cache;
    if (!cache) {
        predict_stage(call);
        return;
    }
    char params[160];
    guard_cache_input in = {
        .model = serving_version_model(f->req.first),
        .version = serving_version_number(f->req.first),
        .kind = f->in.single ? GUARD_CACHE_SINGLE : GUARD_CACHE_LIST,
        .texts = f->in.texts,
        .lens = f->in.lens,
        .n = f->in.n,
        .params = params,
        .params_len = f->ops->cache_params(&f->in, &f->req, params, sizeof params),
    };
    if (in.params_len >= sizeof params)
        in.params_len = sizeof params - 1;
    guard_cache_key_make(&in, &f->cache_key);
    if (http_wants_fresh(call->req)) {
        f->cache_role = CACHE_BYPASS;
        guard_cache_count_bypass(cache);
        predict_stage(call);
        return;
    }
    f->waiter.on_outcome = on_outcome;
    /* Counted before joining: once joined, the leader may post it at once. */
    atomic_fetch_add(&s->pending_jobs, 1);
    if (guard_cache_join(cache, &f->cache_key, &f->waiter, &f->flight) == GUARD_CACHE_FOLLOWER) {
        f->cache_role = CACHE_FOLLOWER;
        return; /* answered by follower_back on this loop */
    }
    atomic_fetch_sub(&s->pending_jobs, 1);
    f->cache_role = CACHE_LEADER;
    guard_cache_lookup(cache, call->loop->base, &f->cache_key, &f->cache_req, on_lookup, call);
}

/* ---- predict and answer --------------------------------------------------------- */

static void predicted(http_call *call) {
    http_server *s = call->loop->server;
    http_infer *f = call->infer;
    serving_request *r = &f->req;
    if (r->status != 0) {
        count_model_error(call, r->status == SERVING_ETIMEOUT   ? "timeout"
                                : r->status == SERVING_ESTOPPED ? "stopped"
                                : r->status == SERVING_EINPUT   ? "invalid_input"
                                                                : "inference");
        http_error e = http_error_of(STATUS_MODULE_SERVING, r->status);
        if (r->status == SERVING_ETIMEOUT)
            fail(call, e, 0, "the request did not finish within %lld ms", (long long)s->opts.request_timeout_ms);
        else if (r->status == SERVING_EINPUT)
            fail(call, e, 0, "%s", r->error);
        else /* the model's own words; "inference failed" hides a bug's details */
            fail(call, e, 0, "%s", e == HTTP_ERR_INTERNAL ? "inference failed" : serving_status_message(r->status));
        return;
    }
    /* Built even when the client left (499 then): it may be cached, and
     * followers may be waiting for it. */
    char *body = f->ops->answer(&f->in, r);
    if (!body)
        fail(call, HTTP_ERR_INTERNAL, 0, "out of memory");
    else
        answer(call, body, strlen(body));
}

/* A batcher thread: the request is done; hand the call back to its loop. */
static void on_predicted(serving_request *r, void *user) {
    (void)r;
    http_call *call = user;
    call->on_posted = predicted;
    http_post(call);
}

static void predict_stage(http_call *call) {
    http_server *s = call->loop->server;
    serving_request *r = &call->infer->req;
    r->on_done = on_predicted;
    r->user = call;
    atomic_fetch_add(&s->pending_jobs, 1);
    int rc = serving_predict(s->repo, r);
    if (rc == 0)
        return; /* answered by predicted() on this loop */
    atomic_fetch_sub(&s->pending_jobs, 1);
    http_error e = http_error_of(STATUS_MODULE_SERVING, rc);
    if (rc == SERVING_EFULL) {
        count_model_error(call, "queue_full");
        metric_inc(s->metrics.shed);
        fail(call, e, FAIL_RETRY_AFTER, "model '%s' is overloaded (queue full); retry later",
             serving_version_model(r->first));
    } else if (rc == SERVING_ESTOPPED) {
        count_model_error(call, "stopped");
        fail(call, e, FAIL_RETRY_AFTER, "%s", serving_status_message(rc));
    } else {
        fail(call, e, 0, "%s", r->error);
    }
}
