/*
 * gateway.c - a chat completion through the gateway (gateway.h has the
 * contract, docs/gateway.md the behaviour users see):
 *
 *   parse + limits -> input guardrails -> plan (route rules, fallbacks,
 *   context windows) -> cache lookup -> for each model of the plan:
 *   breaker -> tries with backoff -> answer (filtered, cached, counted)
 *   -> else a stale cached answer -> else the default reply -> else error
 *
 * Design:
 *  - One call is one state machine on its loop: a cache lookup, then one
 *    upstream transfer at a time, and one libevent timer for backoff waits,
 *    the time to first byte and the overall deadline. Nothing blocks.
 *  - Nothing reaches the client until the answer is known to be good: a
 *    non-streamed answer is read whole (bounded by limits.max_response_size)
 *    and checked; a stream starts to the client with its first event, so
 *    an upstream that fails before it falls back as usual. After it, an
 *    upstream failure is sent in-band (an "error" event) and the stream
 *    ends with [DONE].
 *  - Streams are re-encoded chunk by chunk: "model" names the gateway's
 *    model, the content goes through the output guardrail's hold-back
 *    filter, and the usage chunk the gateway asked for is passed on only
 *    when the client asked for it.
 *  - Every good answer is stored in the cache (a stream's assembled as a
 *    chat.completion); it is served as an answer only to deterministic
 *    requests (temperature 0) or on routes with cache: always, and
 *    otherwise only as the stale fallback.
 *  - Budgets: a call reserves its worst case on its key's counters and
 *    settles it when it ends; gateway_budgets_read reads those counters
 *    for GET /v1/gateway/budgets (the "budgets" sections below).
 *
 * Threads: a call and its loop on the loop's thread; the gateway's
 * breakers are shared (each with its own lock), its configuration is read
 * only.
 */
#include <ctype.h>
#include <math.h>
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>
#include <xxhash.h>

#include "gateway_int.h"
#include "obs.h"

static const status_row status_rows[] = {GATEWAY_STATUS_MAP(STATUS_TABLE_ROW)};

const char *gateway_status_name(int status) {
    return status_name(status_rows, STATUS_COUNT(status_rows), status, "GATEWAY_UNKNOWN");
}
const char *gateway_status_message(int status) {
    return status_message(status_rows, STATUS_COUNT(status_rows), status);
}

struct gateway {
    gw_config cfg;
    kv_store *store;      /* budgets' counters */
    serving_repo *repo;   /* the local models (semantic caches embed with one) */
    gw_semindex **semantic; /* per route: its semantic cache's index, or NULL */
    gw_breaker *breakers; /* per model */
    guard_cache *cache;
    metrics_registry *metrics;
    metric_family *f_requests, *f_upstream, *f_upstream_seconds, *f_ttft, *f_tokens, *f_cost, *f_retries,
        *f_fallbacks, *f_breaker, *f_cache, *f_guardrail, *f_budget;
};

struct gateway_loop {
    gateway *g;
    struct event_base *base;
    gw_multi *multi;
    gateway_call *calls; /* running, for gateway_loop_destroy */
    int orphans;         /* cancelled calls whose embedding is still being computed */
};

#define MAX_PLAN 24
#define MAX_CHOICES 16 /* a stream's choices filtered apart; content of others is dropped */

struct gateway_call {
    gateway_loop *l;
    gateway *g;
    gateway_call *prev, *next;
    gateway_reply_ops ops;
    void *ud;
    gateway_call **slot;
    gw_chat chat;
    char key_name[72];
    char request_id[72];
    char target[GW_NAME_MAX];
    long route;                   /* -1: a model was named */
    char route_reason[256];
    size_t plan[MAX_PLAN];
    size_t n_plan, pos;
    int attempt;                  /* tries of plan[pos] so far */
    int tries;                    /* all tries */
    uint64_t start_us, deadline_us;
    char fallbacks[512];          /* "model:reason,..." */
    /* cache */
    int cache_on, servable, lookup_pending, cancelled, no_cache;
    guard_cache_key key;
    guard_cache_req creq;
    char *stale;                  /* a cached answer, for the stale fallback */
    size_t stale_len;
    /* the try in flight */
    gw_transfer *xfer;
    char *up_body;
    size_t up_len;
    struct event *timer;
    int timer_kind;               /* what the timer waits for */
    int breaker_owed;             /* the model's breaker awaits this try's outcome */
    int up_status;
    double retry_after_s;
    int up_stream;                /* the answer is an event stream */
    char *buf;                    /* a non-streamed body or an error body */
    size_t len, cap;
    int overflow;
    uint64_t try_start_us, first_byte_us;
    /* streaming to the client */
    gw_sse *sse;
    int started;                  /* the client got its head */
    int upstream_done;            /* [DONE] seen */
    /* The output filter of a stream, per choice (n > 1 streams interleave
     * their choices' chunks): its hold-back, whether it was finished, and
     * whether it blocked. */
    struct choice_filter {
        guard_pii_stream *pii;
        int done, blocked;
    } choice[MAX_CHOICES];
    size_t n_choices;             /* choice[] entries made */
    size_t max_index;             /* the highest choice index seen (a stream of several is not cached) */
    int blocked;                  /* some answer text was blocked: nothing is cached */
    char *text;                   /* the answer's content so far (for the cache and the estimate) */
    size_t text_len, text_cap;
    char *finish_reason;
    char stream_id[96];
    long created;
    gw_anthropic_stream anthropic; /* a Messages stream being translated */
    /* semantic cache: the prompt's embedding, computed by a local model */
    serving_request sreq;
    int embed_pending;
    struct event *wake;           /* the embedding is back (posted from a batcher thread) */
    char *embed_text;
    size_t embed_len;
    float *semvec;                /* unit length; kept to store the answer under */
    size_t semdim;
    uint64_t semtag;              /* what besides the messages decides the answer, hashed */
    gw_usage usage;
    char last_error[256];
    int last_status;              /* what to answer when nothing else is left */
    char retry_after[24];         /* a refusal's Retry-After header; "" none */
    /* budgets: the worst case reserved on the key's counters before the
     * first try, settled to the real cost at the end */
    int reserve_state;            /* 0 not yet, 1 reserving, 2 done */
    int reserve_step;             /* the counter being reserved: DAY, MONTH, TPM */
    int held[3];                  /* counters holding this call's reservation */
    char counter_key[3][200];
    uint64_t counter_ttl_us[3];   /* settling recreates an expired counter with its ttl */
    int64_t reserved_uusd, reserved_tokens;
};

enum { TIMER_NONE, TIMER_BACKOFF, TIMER_FIRST_BYTE, TIMER_DEADLINE };

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- metrics ------------------------------------------------------------------ */

/* Adds v to f's series of the given label values (NULL-terminated, as
 * metric_get takes them). */
#define count(f, v, ...) metric_add(metric_get((f), __VA_ARGS__), (v))

static void observe(metric_family *f, double v, const char *label) {
    metric_observe(metric_get(f, label, NULL), v);
}

/* How a key is named in metrics, logs and budget counters: requests
 * without a key as "anonymous". */
static const char *label_of(const char *key_name) { return key_name[0] ? key_name : "anonymous"; }
static const char *key_label(const gateway_call *c) { return label_of(c->key_name); }

static void breaker_metric(gateway *g, size_t model, gw_breaker_state s) {
    const char *labels[] = {g->cfg.models[model].name};
    metric_set(metric_series(g->f_breaker, labels), (double)s);
}

/* ---- lifecycle ---------------------------------------------------------------- */

int gateway_create(const gateway_options *o, gateway **out, char *why, size_t cap) {
    *out = NULL;
    gateway *g = calloc(1, sizeof *g);
    if (!g)
        return snprintf(why, cap, "out of memory"), -1;
    if (gw_config_load(o->config_file, &g->cfg, why, cap) != 0) {
        free(g);
        return -1;
    }
    g->cache = g->cfg.cache ? o->cache : NULL;
    g->store = o->store;
    g->repo = o->repo;
    g->semantic = calloc(g->cfg.n_routes + 1, sizeof *g->semantic);
    for (size_t i = 0; g->semantic && i < g->cfg.n_routes; i++) {
        const gw_semantic *sc = &g->cfg.routes[i].semantic;
        if (!sc->model[0])
            continue;
        serving_split split;
        if (!g->repo || serving_get_split(g->repo, sc->model, &split) == SERVING_ENOTFOUND) {
            snprintf(why, cap, "%s: routes '%s': semantic_cache.model '%s' is not a model of the model repository",
                     o->config_file, g->cfg.routes[i].name, sc->model);
            for (size_t k = 0; k < i; k++)
                gw_semindex_free(g->semantic[k]);
            free(g->semantic);
            gw_config_free(&g->cfg);
            free(g);
            return -1;
        }
        g->semantic[i] = gw_semindex_new(sc);
    }
    if (g->cfg.budgets && !g->store) {
        gw_config_free(&g->cfg);
        free(g);
        return snprintf(why, cap, "%s: budgets need a store to count in", o->config_file), -1;
    }
    g->metrics = o->metrics;
    g->breakers = calloc(g->cfg.n_models, sizeof *g->breakers);
    metrics_registry *m = o->metrics;
    double seconds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
    size_t nb = sizeof seconds / sizeof seconds[0];
    g->f_requests = metrics_counter(m, "aiserve_llm_requests_total",
                                    "Chat completions by the model or route asked for and how they were answered: "
                                    "ok, fallback (by another model), stale_cache, default_reply, error",
                                    2, (const char *[]){"target", "outcome"});
    g->f_upstream = metrics_counter(m, "aiserve_llm_upstream_requests_total",
                                    "Calls to upstream models by result: ok, http_429, http_4xx, http_5xx, timeout, "
                                    "connect, broken, invalid",
                                    2, (const char *[]){"model", "result"});
    g->f_upstream_seconds = metrics_histogram(m, "aiserve_llm_upstream_seconds",
                                              "Upstream call time, request sent to last byte", 1,
                                              (const char *[]){"model"}, seconds, nb);
    g->f_ttft = metrics_histogram(m, "aiserve_llm_time_to_first_token_seconds",
                                  "Streamed answers: request sent to the first content chunk", 1,
                                  (const char *[]){"model"}, seconds, nb);
    g->f_tokens = metrics_counter(m, "aiserve_llm_tokens_total",
                                  "Tokens by model, API key and kind (prompt, completion); the upstream's usage, "
                                  "or the gateway's estimate when it reported none",
                                  3, (const char *[]){"model", "key", "kind"});
    g->f_cost = metrics_counter(m, "aiserve_llm_cost_usd_total",
                                "Cost in US dollars: tokens times the model's prices, by model and API key", 2,
                                (const char *[]){"model", "key"});
    g->f_retries = metrics_counter(m, "aiserve_llm_retries_total", "Tries after the first, per model", 1,
                                   (const char *[]){"model"});
    g->f_fallbacks = metrics_counter(m, "aiserve_llm_fallbacks_total",
                                     "Models given up by reason: error, timeout, breaker_open, context_window; "
                                     "and the last resorts: stale_cache, default_reply",
                                     2, (const char *[]){"model", "reason"});
    g->f_breaker = metrics_gauge(m, "aiserve_llm_breaker_state",
                                 "Circuit breaker per model: 0 closed, 1 half-open, 2 open", 1,
                                 (const char *[]){"model"});
    g->f_cache = metrics_counter(m, "aiserve_llm_cache_requests_total",
                                 "Chat completions by cache result: hit, miss, bypass (the exact cache), semantic_hit, "
                                 "semantic_miss (a route's semantic cache)", 1, (const char *[]){"result"});
    g->f_guardrail = metrics_counter(m, "aiserve_llm_guardrail_matches_total",
                                     "Personal data found by the guardrails, by direction (input, output), type "
                                     "and action",
                                     3, (const char *[]){"direction", "type", "action"});
    g->f_budget = metrics_counter(m, "aiserve_llm_budget_refusals_total",
                                  "Chat completions refused for an API key's budget: daily, monthly, or "
                                  "tokens_per_minute",
                                  2, (const char *[]){"key", "limit"});
    if (!g->f_budget || !g->breakers || !g->f_requests || !g->f_upstream || !g->f_upstream_seconds || !g->f_ttft || !g->f_tokens ||
        !g->f_cost || !g->f_retries || !g->f_fallbacks || !g->f_breaker || !g->f_cache || !g->f_guardrail) {
        gw_config_free(&g->cfg);
        free(g->breakers);
        free(g);
        return snprintf(why, cap, "out of memory (or the gateway's metrics are registered twice)"), -1;
    }
    for (size_t i = 0; i < g->cfg.n_models; i++) {
        gw_breaker_init(&g->breakers[i], &g->cfg);
        breaker_metric(g, i, GW_BREAKER_CLOSED);
    }
    *out = g;
    return 0;
}

void gateway_destroy(gateway *g) {
    if (!g)
        return;
    for (size_t i = 0; g->semantic && i < g->cfg.n_routes; i++)
        gw_semindex_free(g->semantic[i]);
    free(g->semantic);
    for (size_t i = 0; i < g->cfg.n_models; i++)
        gw_breaker_destroy(&g->breakers[i]);
    free(g->breakers);
    gw_config_free(&g->cfg);
    free(g);
}

gateway_loop *gateway_loop_create(gateway *g, struct event_base *base) {
    gateway_loop *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->g = g;
    l->base = base;
    if (!(l->multi = gw_multi_create(base))) {
        free(l);
        return NULL;
    }
    return l;
}

void gateway_loop_destroy(gateway_loop *l) {
    if (!l)
        return;
    while (l->calls)
        gateway_call_cancel(l->calls);
    /* An embedding still on a batcher posts to this base when it is done:
     * run the base (its thread is gone) until those calls are freed. */
    while (l->orphans > 0)
        event_base_loop(l->base, EVLOOP_ONCE);
    gw_multi_destroy(l->multi);
    free(l);
}

void gateway_list(gateway *g, void (*fn)(void *ud, const char *id, const char *owned_by), void *ud) {
    for (size_t i = 0; i < g->cfg.n_models; i++)
        fn(ud, g->cfg.models[i].name, g->cfg.providers[g->cfg.models[i].provider].name);
    for (size_t i = 0; i < g->cfg.n_routes; i++)
        fn(ud, g->cfg.routes[i].name, "aiserve-route");
}

void gateway_breakers(gateway *g, size_t *open, size_t *total) {
    uint64_t now = now_us();
    *open = 0;
    *total = g->cfg.n_models;
    for (size_t i = 0; i < g->cfg.n_models; i++)
        *open += gw_breaker_state_now(&g->breakers[i], now) == GW_BREAKER_OPEN;
}

/* ---- the end of a call ----------------------------------------------------------- */

/* Takes c off its loop's list of running calls. */
static void unlink_call(gateway_call *c) {
    gateway_loop *l = c->l;
    if (c->prev)
        c->prev->next = c->next;
    else if (l->calls == c)
        l->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void call_free(gateway_call *c) {
    unlink_call(c);
    gw_transfer_cancel(c->xfer);
    if (c->timer)
        event_free(c->timer);
    if (c->wake)
        event_free(c->wake);
    serving_request_fini(&c->sreq);
    free(c->embed_text);
    free(c->semvec);
    gw_chat_free(&c->chat);
    gw_sse_free(c->sse);
    for (size_t i = 0; i < c->n_choices; i++)
        guard_pii_stream_free(c->choice[i].pii);
    free(c->up_body);
    free(c->buf);
    free(c->text);
    free(c->stale);
    free(c->finish_reason);
    free(c);
}

static void clear_slot(gateway_call *c) {
    if (c->slot)
        *c->slot = NULL;
    c->slot = NULL;
}

static void log_done(gateway_call *c, const char *outcome, const char *model) {
    log_event(LOG_INFO, "llm_request", "request_id", json_string(c->request_id), "target", json_string(c->target),
              "model", model ? json_string(model) : json_null(), "outcome", json_string(outcome), "tries",
              json_integer(c->tries), "fallbacks", json_string(c->fallbacks), "key", json_string(key_label(c)),
              "seconds", json_real((double)(now_us() - c->start_us) / 1e6), NULL);
}

static void settle(gateway_call *c, const gw_model *answered);

/* An error answer (nothing was sent yet). */
static void finish_fail(gateway_call *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void finish_fail(gateway_call *c, int status, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    count(c->g->f_requests, 1, c->target, "error", NULL);
    log_done(c, "error", NULL);
    gateway_header h[2];
    size_t n = 0;
    if (c->fallbacks[0])
        h[n++] = (gateway_header){"X-Gateway-Fallbacks", c->fallbacks};
    if (c->retry_after[0])
        h[n++] = (gateway_header){"Retry-After", c->retry_after};
    settle(c, NULL);
    clear_slot(c);
    c->ops.fail(c->ud, status, "", msg, h, n);
    call_free(c);
}

/* ---- answers ------------------------------------------------------------------------- */

static void note_fallback(gateway_call *c, const char *model, const char *reason) {
    size_t n = strlen(c->fallbacks);
    snprintf(c->fallbacks + n, sizeof c->fallbacks - n, "%s%s:%s", n ? "," : "", model, reason);
    count(c->g->f_fallbacks, 1, model, reason, NULL);
}

/* The headers of an answer by model (NULL: the gateway's own). */
static size_t answer_headers(gateway_call *c, const char *model, const char *cache, gateway_header *h) {
    size_t n = 0;
    h[n++] = (gateway_header){"X-Route-Reason", c->route_reason};
    if (model)
        h[n++] = (gateway_header){"X-Gateway-Model", model};
    if (c->fallbacks[0])
        h[n++] = (gateway_header){"X-Gateway-Fallbacks", c->fallbacks};
    if (cache)
        h[n++] = (gateway_header){"X-Cache", cache};
    return n;
}

static void append(char **buf, size_t *len, size_t *cap, const char *data, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t want = (*cap ? *cap * 2 : 256);
        while (want < *len + n + 1)
            want *= 2;
        char *b = realloc(*buf, want);
        if (!b)
            return; /* the text is for the cache and the estimate only: lose it rather than fail */
        *buf = b;
        *cap = want;
    }
    memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = 0;
}

static void send_sse(gateway_call *c, const char *json, size_t len) {
    c->ops.data(c->ud, "data: ", 6);
    c->ops.data(c->ud, json, len);
    c->ops.data(c->ud, "\n\n", 2);
}

/* A whole answer the gateway has (a cached or default one, as a
 * chat.completion JSON text) sent as the client asked: one JSON body, or a
 * stream of chunks. */
static void send_completion(gateway_call *c, const char *body, size_t len, gateway_header *h, size_t nh) {
    if (!c->chat.stream) {
        c->ops.begin(c->ud, 200, 0, h, nh);
        c->ops.data(c->ud, body, len);
        c->ops.end(c->ud);
        return;
    }
    json_t *o = json_loadb(body, len, 0, NULL);
    const char *model = json_string_value(json_object_get(o, "model"));
    const char *id = json_string_value(json_object_get(o, "id"));
    long created = (long)json_integer_value(json_object_get(o, "created"));
    c->ops.begin(c->ud, 200, 1, h, nh);
    /* Per choice: one chunk with the whole message (content, tool calls
     * with their indexes), then one with its finish_reason. */
    size_t i;
    json_t *choice;
    json_array_foreach(json_object_get(o, "choices"), i, choice) {
        json_t *msg = json_object_get(choice, "message");
        json_t *delta = json_pack("{s:s}", "role", "assistant");
        json_t *content = json_object_get(msg, "content");
        json_object_set(delta, "content", json_is_string(content) ? content : json_null());
        json_t *calls = json_object_get(msg, "tool_calls");
        if (json_is_array(calls) && json_array_size(calls)) {
            json_t *indexed = json_deep_copy(calls);
            size_t k;
            json_t *call;
            json_array_foreach(indexed, k, call) json_object_set_new(call, "index", json_integer((json_int_t)k));
            json_object_set_new(delta, "tool_calls", indexed);
        }
        json_t *fr = json_object_get(choice, "finish_reason");
        for (int part = 0; part < 2; part++) {
            /* "o" steals: the delta (or an empty one) and the finish_reason. */
            json_t *d = part == 0 ? json_incref(delta) : json_object();
            json_t *f = part == 0 ? json_null() : json_is_string(fr) ? json_incref(fr) : json_string("stop");
            json_t *chunk = json_pack("{s:s, s:s, s:I, s:s, s:[{s:I, s:o, s:o}]}", "id", id ? id : "chatcmpl-aiserve",
                                      "object", "chat.completion.chunk", "created", (json_int_t)created, "model",
                                      model ? model : c->target, "choices", "index", (json_int_t)i, "delta", d,
                                      "finish_reason", f);
            char *text = chunk ? json_dumps(chunk, JSON_COMPACT) : NULL;
            if (text)
                send_sse(c, text, strlen(text));
            free(text);
            json_decref(chunk);
        }
        json_decref(delta);
    }
    size_t n;
    char *chunk;
    if (c->chat.include_usage) {
        json_t *u = json_object_get(o, "usage");
        gw_usage usage = {.known = 1, .prompt_tokens = (long)json_integer_value(json_object_get(u, "prompt_tokens")),
                          .completion_tokens = (long)json_integer_value(json_object_get(u, "completion_tokens"))};
        chunk = gw_chunk_make(id ? id : "chatcmpl-aiserve", created, model ? model : c->target, NULL, NULL, &usage, &n);
        if (chunk)
            send_sse(c, chunk, n);
        free(chunk);
    }
    c->ops.data(c->ud, "data: [DONE]\n\n", 14);
    json_decref(o);
    c->ops.end(c->ud);
}

static void make_id(char *buf, size_t cap) {
    unsigned char r[12];
    if (RAND_bytes(r, sizeof r) != 1)
        memset(r, 0, sizeof r);
    int n = snprintf(buf, cap, "chatcmpl-");
    for (size_t i = 0; i < sizeof r && (size_t)n + 2 < cap; i++)
        n += snprintf(buf + n, cap - (size_t)n, "%02x", r[i]);
}

/* Nothing answered: the stale cached answer, else the default reply, else
 * the last error. */
static void last_resort(gateway_call *c) {
    gateway_header h[6];
    settle(c, NULL);
    if (c->g->cfg.stale_cache && c->stale) {
        note_fallback(c, c->target, "stale_cache");
        count(c->g->f_requests, 1, c->target, "stale_cache", NULL);
        log_done(c, "stale_cache", NULL);
        size_t nh = answer_headers(c, NULL, "STALE", h);
        clear_slot(c);
        send_completion(c, c->stale, c->stale_len, h, nh);
        call_free(c);
        return;
    }
    if (c->g->cfg.default_reply) {
        note_fallback(c, c->target, "default_reply");
        count(c->g->f_requests, 1, c->target, "default_reply", NULL);
        log_done(c, "default_reply", NULL);
        char id[64];
        make_id(id, sizeof id);
        gw_usage usage = {.known = 1, .prompt_tokens = 0, .completion_tokens = 0};
        json_t *o = gw_completion_make(id, (long)time(NULL), c->target, c->g->cfg.default_reply, &usage);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text) {
            finish_fail(c, GATEWAY_ENOMEM, "out of memory");
            return;
        }
        size_t nh = answer_headers(c, NULL, NULL, h);
        clear_slot(c);
        send_completion(c, text, strlen(text), h, nh);
        free(text);
        call_free(c);
        return;
    }
    finish_fail(c, c->last_status ? c->last_status : GATEWAY_EUNAVAILABLE, "%s",
                c->last_error[0] ? c->last_error : "no upstream model is available");
}

/* ---- counting ------------------------------------------------------------------------- */

/* The tokens the answer took: the upstream's usage, else the gateway's
 * estimate of the prompt and of the text sent. */
static gw_usage actual_usage(const gateway_call *c) {
    gw_usage u = c->usage;
    if (!u.known) {
        u.prompt_tokens = (long)c->chat.est_tokens;
        u.completion_tokens = (long)gw_estimate_tokens(c->text ? c->text : "", c->text_len);
    }
    return u;
}

static void count_usage(gateway_call *c, const gw_model *m) {
    gw_usage u = actual_usage(c);
    settle(c, m);
    count(c->g->f_tokens, (double)u.prompt_tokens, m->name, key_label(c), "prompt", NULL);
    count(c->g->f_tokens, (double)u.completion_tokens, m->name, key_label(c), "completion", NULL);
    double cost = ((double)u.prompt_tokens * m->input_price + (double)u.completion_tokens * m->output_price) / 1e6;
    count(c->g->f_cost, cost, m->name, key_label(c), NULL);
}

/* ---- guardrails ------------------------------------------------------------------------ */

static void count_found(gateway_call *c, const char *direction, const guard_pii_policy *p, const unsigned *found) {
    static const char *const actions[] = {"off", "redact", "block"};
    for (int t = 0; t < GUARD_PII_COUNT; t++)
        if (found[t])
            count(c->g->f_guardrail, found[t], direction, guard_pii_type_name((guard_pii_type)t),
                  actions[p->action[t]], NULL);
}

static int policy_on(const guard_pii_policy *p) {
    for (int t = 0; t < GUARD_PII_COUNT; t++)
        if (p->action[t] != GUARD_PII_OFF)
            return 1;
    return 0;
}

/* Applies the input policy to one string value in place. 1 when blocked,
 * -1 when out of memory. */
static int filter_input_string(gateway_call *c, json_t *s, guard_pii_type *why) {
    const guard_pii_policy *p = &c->g->cfg.input_policy;
    guard_pii_result r;
    if (guard_pii_apply(p, json_string_value(s), json_string_length(s), &r) != 0)
        return -1;
    count_found(c, "input", p, r.found);
    int rc = 0;
    if (r.blocked) {
        for (int t = 0; t < GUARD_PII_COUNT; t++)
            if (r.found[t] && p->action[t] == GUARD_PII_BLOCK)
                *why = (guard_pii_type)t;
        rc = 1;
    } else if (r.len != json_string_length(s) || memcmp(r.text, json_string_value(s), r.len) != 0) {
        json_string_setn(s, r.text, r.len);
    }
    free(r.text);
    return rc;
}

/* The input guardrail over every message's text. 0, or answers and -1. */
static int filter_input(gateway_call *c) {
    if (!policy_on(&c->g->cfg.input_policy))
        return 0;
    json_t *messages = json_object_get(c->chat.body, "messages");
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        json_t *content = json_object_get(m, "content");
        guard_pii_type why = GUARD_PII_SSN;
        int rc = 0;
        if (json_is_string(content)) {
            rc = filter_input_string(c, content, &why);
        } else if (json_is_array(content)) {
            size_t k;
            json_t *part;
            json_array_foreach(content, k, part) {
                json_t *text = json_object_get(part, "text");
                if (json_is_string(text) && (rc = filter_input_string(c, text, &why)) != 0)
                    break;
            }
        }
        if (rc < 0) {
            finish_fail(c, GATEWAY_ENOMEM, "out of memory");
            return -1;
        }
        if (rc > 0) {
            finish_fail(c, GATEWAY_EBLOCKED,
                        "messages[%zu] contains personal data (%s) that this gateway does not send upstream "
                        "(guardrails.input)",
                        i, guard_pii_type_name(why));
            return -1;
        }
    }
    return 0;
}

static char *filter_output_text(void *ud, size_t choice, const char *text, size_t len) {
    (void)choice;
    gateway_call *c = ud;
    const guard_pii_policy *p = &c->g->cfg.output_policy;
    guard_pii_result r;
    if (guard_pii_apply(p, text, len, &r) != 0)
        return NULL;
    count_found(c, "output", p, r.found);
    if (r.blocked) {
        free(r.text);
        c->blocked = 1;
        return strdup(GUARD_PII_BLOCKED_TEXT);
    }
    if (r.len == len && memcmp(r.text, text, len) == 0) {
        free(r.text);
        return NULL;
    }
    return r.text;
}

/* ---- the plan ---------------------------------------------------------------------------- */

static int plan_has(const gateway_call *c, size_t m) {
    for (size_t i = 0; i < c->n_plan; i++)
        if (c->plan[i] == m)
            return 1;
    return 0;
}

static void plan_add(gateway_call *c, size_t m) {
    if (c->n_plan < MAX_PLAN && !plan_has(c, m))
        c->plan[c->n_plan++] = m;
}

/* Adds m and its fallbacks (theirs too, once each). */
static void plan_add_chain(gateway_call *c, size_t m, int depth) {
    plan_add(c, m);
    const gw_model *model = &c->g->cfg.models[m];
    for (size_t i = 0; depth < 4 && i < model->n_fallbacks; i++)
        if (!plan_has(c, model->fallbacks[i]))
            plan_add_chain(c, model->fallbacks[i], depth + 1);
}

static int contains_word(const char *text, const char *word) {
    size_t n = strlen(word);
    for (const char *p = text; *p; p++) {
        size_t k = 0;
        while (k < n && p[k] && tolower((unsigned char)p[k]) == word[k])
            k++;
        if (k == n)
            return 1;
    }
    return 0;
}

static size_t code_points(const char *s) {
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* The tokens a request needs of a context window: its prompt and the
 * answer it asks room for. */
static long needed_tokens(const gateway_call *c) {
    return (long)c->chat.est_tokens + (c->chat.max_tokens > 0 ? c->chat.max_tokens : 0);
}

static int fits(const gw_model *m, long tokens) { return m->context_window == 0 || tokens <= m->context_window; }

/* Picks the route's model by its rules, first match wins. */
static size_t route_pick(gateway_call *c, const gw_route *r) {
    const gw_config *cfg = &c->g->cfg;
    const char *text = c->chat.routing_text ? c->chat.routing_text : "";
    for (size_t i = 0; i < r->n_rules; i++) {
        const gw_rule *rule = &r->rules[i];
        int match = 0;
        char detail[128] = "";
        switch (rule->kind) {
        case GW_RULE_KEYWORDS:
            for (size_t k = 0; k < rule->n_keywords && !match; k++)
                if ((match = contains_word(text, rule->keywords[k])))
                    snprintf(detail, sizeof detail, " '%.60s'", rule->keywords[k]);
            break;
        case GW_RULE_MIN_CHARS:
            match = (long)code_points(text) >= rule->n;
            break;
        case GW_RULE_MIN_TOKENS:
            match = (long)c->chat.est_tokens >= rule->n;
            break;
        case GW_RULE_MIN_MAX_TOKENS:
            match = c->chat.max_tokens >= rule->n;
            break;
        case GW_RULE_CHEAPEST_FIT: {
            long best = -1;
            double best_price = 0;
            for (size_t k = 0; k < rule->n_candidates; k++) {
                const gw_model *m = &cfg->models[rule->candidates[k]];
                double price = m->input_price + m->output_price;
                if (fits(m, needed_tokens(c)) && (best < 0 || price < best_price)) {
                    best = (long)rule->candidates[k];
                    best_price = price;
                }
            }
            if (best >= 0) {
                snprintf(c->route_reason, sizeof c->route_reason, "route %.60s: rule %zu %.60s", r->name, i + 1,
                         rule->reason);
                return (size_t)best;
            }
            break;
        }
        }
        if (match) {
            snprintf(c->route_reason, sizeof c->route_reason, "route %.60s: rule %zu %.40s%.40s", r->name, i + 1, rule->reason,
                     detail);
            return rule->model;
        }
    }
    snprintf(c->route_reason, sizeof c->route_reason, "route %.60s: default", r->name);
    return r->default_model;
}

/* ---- budgets ---------------------------------------------------------------------------
 *
 * Before its first try, a call reserves its worst case on the key's
 * counters (kv_counter_add with the limit: refused when it would pass it,
 * atomically, wherever the store is, so instances sharing Redis share the
 * budget): cost in micro-dollars on the day's and the month's counters,
 * tokens on the minute's. The worst case is the prompt's estimate plus
 * max_tokens (else budgets.reserve_tokens) at the first model's prices. At
 * the end the reservation is settled to what the answer cost (a refund when
 * nothing was answered). A key can so spend past its budget only by what a
 * call costs beyond its reservation (a model past reserve_tokens, or a
 * pricier fallback). A store that cannot be reached lets calls through. */

enum { COUNTER_DAY, COUNTER_MONTH, COUNTER_TPM };

static int64_t cost_uusd(const gw_model *m, long prompt, long completion) {
    /* USD per million tokens times tokens is micro-dollars. */
    return (int64_t)((double)prompt * m->input_price + (double)completion * m->output_price + 0.5);
}

/* Counter k of the key named key_name, for the period that holds at now:
 * its store key into out[cap]; returns the expiry of a counter it creates
 * (the period and a margin). */
static uint64_t counter_key(const char *key_name, int k, time_t now, char *out, size_t cap) {
    struct tm tm;
    gmtime_r(&now, &tm);
    char period[32];
    uint64_t ttl_us;
    if (k == COUNTER_DAY) {
        strftime(period, sizeof period, "d:%Y%m%d", &tm);
        ttl_us = 2 * 86400ull * 1000000u;
    } else if (k == COUNTER_MONTH) {
        strftime(period, sizeof period, "m:%Y%m", &tm);
        ttl_us = 32 * 86400ull * 1000000u;
    } else {
        snprintf(period, sizeof period, "t:%lld", (long long)(now / 60));
        ttl_us = 120ull * 1000000u;
    }
    snprintf(out, cap, "llm:budget:%s:%s", label_of(key_name), period);
    return ttl_us;
}

/* Seconds from now until counter k's next period (the next clock minute,
 * UTC midnight, the first of next month). */
static long counter_renews_in_s(int k, time_t now) {
    struct tm tm;
    gmtime_r(&now, &tm);
    if (k == COUNTER_DAY)
        return 86400 - (tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec);
    if (k == COUNTER_MONTH) {
        struct tm next = {.tm_year = tm.tm_mon == 11 ? tm.tm_year + 1 : tm.tm_year, .tm_mon = (tm.tm_mon + 1) % 12,
                          .tm_mday = 1};
        return (long)(timegm(&next) - now);
    }
    return 60 - (long)(now % 60);
}

/* The limit of counter k in budget b, in the counter's unit (micro-dollars,
 * tokens); -1: none. */
static int64_t budget_limit(const gw_budget *b, int k) {
    double v = k == COUNTER_DAY     ? b->daily_usd * 1e6
               : k == COUNTER_MONTH ? b->monthly_usd * 1e6
                                    : (double)b->tokens_per_minute;
    return v > 0 ? (int64_t)v : -1;
}

static void on_settled(int status, const kv_counter_result *r, void *ud) {
    (void)status;
    (void)r;
    (void)ud;
}

/* Settles the reservation: answered NULL means nothing was answered. */
static void settle(gateway_call *c, const gw_model *answered) {
    if (c->reserve_state != 2)
        return;
    c->reserve_state = 3; /* once */
    gw_usage u = answered ? actual_usage(c) : (gw_usage){0};
    int64_t cost = answered ? cost_uusd(answered, u.prompt_tokens, u.completion_tokens) : 0;
    int64_t tokens = answered ? u.prompt_tokens + u.completion_tokens : 0;
    for (int k = 0; k < 3; k++) {
        if (!c->held[k])
            continue;
        int64_t delta = k == COUNTER_TPM ? tokens - c->reserved_tokens : cost - c->reserved_uusd;
        if (delta)
            kv_counter_add(c->g->store, c->l->base, c->counter_key[k], strlen(c->counter_key[k]), delta,
                           INT64_MAX, c->counter_ttl_us[k], on_settled, NULL);
        c->held[k] = 0;
    }
}

static void reserve_next(gateway_call *c);
static void next_model(gateway_call *c);

/* The limit of counter k for this call's key. */
static int64_t counter_limit(const gateway_call *c, int k) {
    return budget_limit(gw_config_budget(&c->g->cfg, c->key_name), k);
}

static void refuse_budget(gateway_call *c, int step) {
    static const char *const names[] = {"daily", "monthly", "tokens_per_minute"};
    const gw_budget *b = gw_config_budget(&c->g->cfg, c->key_name);
    count(c->g->f_budget, 1, key_label(c), names[step], NULL);
    /* Give back what this call holds. */
    c->reserve_state = 2;
    settle(c, NULL);
    long wait = counter_renews_in_s(step, time(NULL));
    char who[100];
    if (c->key_name[0])
        snprintf(who, sizeof who, "the API key '%.64s'", c->key_name);
    else
        snprintf(who, sizeof who, "requests without an API key");
    int64_t need = step == COUNTER_TPM ? c->reserved_tokens : c->reserved_uusd;
    if (need > counter_limit(c, step)) { /* this request alone is over the limit: waiting cannot help */
        c->retry_after[0] = 0;
        finish_fail(c, step == COUNTER_TPM ? GATEWAY_ETOKENS : GATEWAY_EBUDGET,
                    "this request alone needs more than the %s limit of %s (about %lld %s); ask for fewer "
                    "max_tokens or send a shorter prompt",
                    names[step], who, (long long)(step == COUNTER_TPM ? need : need / 1000000),
                    step == COUNTER_TPM ? "tokens" : "USD");
        return;
    }
    snprintf(c->retry_after, sizeof c->retry_after, "%ld", wait > 0 ? wait : 1);
    if (step == COUNTER_TPM)
        finish_fail(c, GATEWAY_ETOKENS,
                    "%s is over its %ld tokens per minute (this request needs about %lld); retry in %ld s",
                    who, b->tokens_per_minute, (long long)c->reserved_tokens, wait);
    else
        finish_fail(c, GATEWAY_EBUDGET,
                    "the %s budget of %s ($%.2f) does not cover this request (up to $%.4f); it renews in %ld s",
                    step == COUNTER_DAY ? "daily" : "monthly", who,
                    step == COUNTER_DAY ? b->daily_usd : b->monthly_usd, (double)c->reserved_uusd / 1e6, wait);
}

static void on_reserved(int status, const kv_counter_result *r, void *ud) {
    gateway_call *c = ud;
    if (c->cancelled) { /* the client left meanwhile: give back, then free */
        if (status == KV_OK && r->applied)
            c->held[c->reserve_step] = 1;
        c->reserve_state = 2;
        settle(c, NULL);
        call_free(c);
        return;
    }
    if (status != KV_OK) { /* the store cannot be reached: let the call through */
        log_event(LOG_WARN, "llm_budget_unavailable", "key", json_string(key_label(c)), "error",
                  json_string(kv_status_message(status)), NULL);
    } else if (!r->applied) {
        refuse_budget(c, c->reserve_step);
        return;
    } else {
        c->held[c->reserve_step] = 1;
    }
    c->reserve_step++;
    reserve_next(c);
}

static void reserve_next(gateway_call *c) {
    while (c->reserve_step < 3) {
        int k = c->reserve_step;
        int64_t limit = counter_limit(c, k);
        if (limit < 0) {
            c->reserve_step++;
            continue;
        }
        c->counter_ttl_us[k] = counter_key(c->key_name, k, time(NULL), c->counter_key[k], sizeof c->counter_key[k]);
        int64_t delta = k == COUNTER_TPM ? c->reserved_tokens : c->reserved_uusd;
        kv_counter_add(c->g->store, c->l->base, c->counter_key[k], strlen(c->counter_key[k]), delta, limit,
                       c->counter_ttl_us[k], on_reserved, c);
        return; /* on_reserved goes on (perhaps already has) */
    }
    c->reserve_state = 2;
    next_model(c);
}

/* Starts the reservation for the model the plan starts with. */
static void reserve(gateway_call *c, const gw_model *m) {
    long completion = c->chat.max_tokens > 0 ? c->chat.max_tokens : c->g->cfg.reserve_tokens;
    c->reserved_tokens = (int64_t)c->chat.est_tokens + completion;
    c->reserved_uusd = cost_uusd(m, (long)c->chat.est_tokens, completion);
    c->reserve_state = 1;
    c->reserve_step = COUNTER_DAY;
    reserve_next(c);
}

/* ---- budgets left ---------------------------------------------------------------------
 *
 * gateway_budgets_read starts every counter read at once (a step of 0 with
 * no limit reads a counter) and answers when the last one is back. It
 * holds one count of its own while it starts them, so a store that answers
 * at once (memory) only fills a slot and returns: the answer comes after
 * the last read was started, never from inside a read's callback, and the
 * stack never grows with the number of keys. */

typedef struct budget_read budget_read;

/* One counter to read: its key's entry and which counter. */
typedef struct budget_slot {
    budget_read *read;
    size_t entry;
    int k;
} budget_slot;

struct budget_read {
    const gw_config *cfg;
    gateway_budgets_cb cb;
    void *ud;
    int pending;                 /* reads in flight, plus one while they are being started */
    int status;                  /* KV_OK, or the first failure */
    char (*names)[GW_NAME_MAX];  /* copies of the key names */
    int64_t (*value)[3];         /* per entry and counter; 0 when not read */
    gateway_budget_left *left;
    budget_slot *slots;
    size_t n;
};

static void budget_read_free(budget_read *r) {
    free(r->names);
    free(r->value);
    free(r->left);
    free(r->slots);
    free(r);
}

/* A dollar counter's figures: limit_usd as configured, limit_uusd as
 * enforced, value as read. */
static gateway_budget_usd budget_usd(double limit_usd, int64_t limit_uusd, int64_t value, long renews_in_s) {
    int64_t spent = value > 0 ? value : 0; /* a counter settled below 0 (recreated after it expired) spent nothing */
    return (gateway_budget_usd){.limit_usd = limit_usd, .spent_usd = (double)spent / 1e6,
                                .left_usd = spent < limit_uusd ? (double)(limit_uusd - spent) / 1e6 : 0,
                                .resets_in_s = renews_in_s};
}

/* One read is back (or could not start): when it was the last, answer. */
static void budget_read_done(budget_read *r) {
    if (--r->pending > 0)
        return;
    if (r->status != KV_OK) {
        r->cb(r->ud, GATEWAY_ESTORE, kv_status_message(r->status), NULL, 0);
        budget_read_free(r);
        return;
    }
    time_t now = time(NULL);
    for (size_t i = 0; i < r->n; i++) {
        gateway_budget_left *e = &r->left[i];
        const gw_budget *b = gw_config_budget(r->cfg, r->names[i]);
        const int64_t *v = r->value[i];
        int64_t lim[3] = {budget_limit(b, COUNTER_DAY), budget_limit(b, COUNTER_MONTH), budget_limit(b, COUNTER_TPM)};
        e->key = r->names[i];
        e->own = r->names[i][0] && b != &r->cfg->default_budget;
        if ((e->has_daily = lim[COUNTER_DAY] >= 0))
            e->daily = budget_usd(b->daily_usd, lim[COUNTER_DAY], v[COUNTER_DAY], counter_renews_in_s(COUNTER_DAY, now));
        if ((e->has_monthly = lim[COUNTER_MONTH] >= 0))
            e->monthly = budget_usd(b->monthly_usd, lim[COUNTER_MONTH], v[COUNTER_MONTH],
                                    counter_renews_in_s(COUNTER_MONTH, now));
        if ((e->has_tokens = lim[COUNTER_TPM] >= 0)) {
            int64_t used = v[COUNTER_TPM] > 0 ? v[COUNTER_TPM] : 0;
            e->tokens_per_minute = (gateway_budget_tokens){
                .limit = lim[COUNTER_TPM], .used = used, .left = used < lim[COUNTER_TPM] ? lim[COUNTER_TPM] - used : 0,
                .resets_in_s = counter_renews_in_s(COUNTER_TPM, now)};
        }
    }
    r->cb(r->ud, GATEWAY_OK, NULL, r->left, r->n);
    budget_read_free(r);
}

static void on_budget_counter(int status, const kv_counter_result *res, void *ud) {
    budget_slot *slot = ud;
    budget_read *r = slot->read;
    if (status == KV_OK)
        r->value[slot->entry][slot->k] = res->value;
    else if (r->status == KV_OK)
        r->status = status;
    budget_read_done(r);
}

int gateway_budgets_read(gateway_loop *l, const char *const *keys, size_t n_keys, gateway_budgets_cb cb, void *ud) {
    const gw_config *cfg = &l->g->cfg;
    if (!cfg->budgets) { /* nothing is counted */
        cb(ud, GATEWAY_OK, NULL, NULL, 0);
        return 0;
    }
    size_t n = keys ? n_keys : cfg->n_key_budgets + 1;
    budget_read *r = calloc(1, sizeof *r);
    if (!r)
        return GATEWAY_ENOMEM;
    r->names = calloc(n ? n : 1, sizeof *r->names);
    r->value = calloc(n ? n : 1, sizeof *r->value);
    r->left = calloc(n ? n : 1, sizeof *r->left);
    r->slots = calloc(3 * n + 1, sizeof *r->slots);
    if (!r->names || !r->value || !r->left || !r->slots) {
        budget_read_free(r);
        return GATEWAY_ENOMEM;
    }
    r->cfg = cfg;
    r->cb = cb;
    r->ud = ud;
    r->n = n;
    r->pending = 1;
    time_t now = time(NULL);
    size_t n_slots = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = keys ? keys[i] : i < cfg->n_key_budgets ? cfg->key_budgets[i].key : "";
        snprintf(r->names[i], sizeof r->names[i], "%s", name ? name : "");
        const gw_budget *b = gw_config_budget(cfg, r->names[i]);
        for (int k = 0; k < 3; k++) {
            if (budget_limit(b, k) < 0)
                continue;
            char key[200];
            uint64_t ttl_us = counter_key(r->names[i], k, now, key, sizeof key);
            budget_slot *slot = &r->slots[n_slots++];
            *slot = (budget_slot){r, i, k};
            r->pending++;
            kv_counter_add(l->g->store, l->base, key, strlen(key), 0, INT64_MAX, ttl_us, on_budget_counter, slot);
        }
    }
    budget_read_done(r); /* the count held while starting: answers now when every read is back */
    return 0;
}

/* ---- tries ------------------------------------------------------------------------------ */

static void start_try(gateway_call *c);

static void arm_timer(gateway_call *c, int kind, uint64_t after_us) {
    uint64_t now = now_us();
    uint64_t left = c->deadline_us > now ? c->deadline_us - now : 0;
    if (after_us > left) { /* the deadline comes first */
        after_us = left;
        kind = kind == TIMER_BACKOFF ? TIMER_BACKOFF : TIMER_DEADLINE;
    }
    c->timer_kind = kind;
    struct timeval tv = {.tv_sec = (time_t)(after_us / 1000000u), .tv_usec = (suseconds_t)(after_us % 1000000u)};
    evtimer_add(c->timer, &tv);
}

static void end_try(gateway_call *c) {
    evtimer_del(c->timer);
    c->timer_kind = TIMER_NONE;
    gw_sse_free(c->sse);
    c->sse = NULL;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
    c->overflow = 0;
}

static const gw_model *cur_model(const gateway_call *c) { return &c->g->cfg.models[c->plan[c->pos]]; }

static void record_breaker(gateway_call *c, int ok) {
    if (!c->breaker_owed)
        return;
    c->breaker_owed = 0;
    size_t m = c->plan[c->pos];
    breaker_metric(c->g, m, gw_breaker_record(&c->g->breakers[m], ok, now_us()));
}

/* The try failed in a way another try may fix (connect error, timeout,
 * 429, 5xx): again after a backoff with full jitter, or the next model. */
static void try_failed(gateway_call *c, int status, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void try_failed(gateway_call *c, int status, const char *reason, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof c->last_error, fmt, ap);
    va_end(ap);
    c->last_status = status;
    record_breaker(c, 0);
    const gw_config *cfg = &c->g->cfg;
    double retry_after = c->retry_after_s;
    end_try(c);
    if (c->attempt < cfg->attempts && gw_breaker_state_now(&c->g->breakers[c->plan[c->pos]], now_us()) != GW_BREAKER_OPEN) {
        /* wait_exponential(multiplier, min, max) as the service had, with
         * full jitter: uniform between min and the exponential's value. */
        double hi = cfg->multiplier * (double)(1u << (c->attempt < 20 ? c->attempt : 20)) * 1e6;
        if (hi > (double)cfg->max_wait_us)
            hi = (double)cfg->max_wait_us;
        if (hi < (double)cfg->min_wait_us)
            hi = (double)cfg->min_wait_us;
        uint32_t r = 0;
        RAND_bytes((unsigned char *)&r, sizeof r);
        double wait = (double)cfg->min_wait_us + (hi - (double)cfg->min_wait_us) * ((double)r / 4294967296.0);
        if (retry_after >= 0 && retry_after * 1e6 > wait)
            wait = retry_after * 1e6; /* the upstream said when */
        if ((double)now_us() + wait < (double)c->deadline_us) {
            count(c->g->f_retries, 1, cur_model(c)->name, NULL);
            arm_timer(c, TIMER_BACKOFF, (uint64_t)wait);
            return;
        }
    }
    note_fallback(c, cur_model(c)->name, reason);
    c->pos++;
    next_model(c);
}

/* A model that cannot take the prompt: a larger window next. */
static void context_failed(gateway_call *c) {
    const gw_model *m = cur_model(c);
    record_breaker(c, 1); /* the upstream works */
    end_try(c);
    note_fallback(c, m->name, "context_window");
    snprintf(c->last_error, sizeof c->last_error, "the prompt is longer than the context window of %s", m->name);
    c->last_status = GATEWAY_ETOOBIG;
    long window = m->context_window;
    if (c->g->cfg.context_fallback) {
        /* The cheapest model with a larger window joins the plan when no
         * model left in it has one. */
        int found = 0;
        for (size_t i = c->pos + 1; i < c->n_plan; i++)
            found |= c->g->cfg.models[c->plan[i]].context_window > window;
        if (!found) {
            long best = -1;
            for (size_t i = 0; i < c->g->cfg.n_models; i++) {
                const gw_model *o = &c->g->cfg.models[i];
                if (o->context_window > window &&
                    (best < 0 || o->input_price + o->output_price <
                                     c->g->cfg.models[best].input_price + c->g->cfg.models[best].output_price))
                    best = (long)i;
            }
            if (best >= 0 && !plan_has(c, (size_t)best))
                plan_add(c, (size_t)best);
        }
    }
    /* Models whose window is no larger are skipped. */
    c->pos++;
    while (c->pos < c->n_plan && c->g->cfg.models[c->plan[c->pos]].context_window != 0 &&
           c->g->cfg.models[c->plan[c->pos]].context_window <= window) {
        note_fallback(c, c->g->cfg.models[c->plan[c->pos]].name, "context_window");
        c->pos++;
    }
    next_model(c);
}

/* The stream broke after the client got part of it: an error event, then
 * the end. */
static void stream_failed(gateway_call *c, const char *message) {
    record_breaker(c, 0);
    const gw_model *m = cur_model(c);
    count(c->g->f_upstream, 1, m->name, "broken", NULL);
    json_t *e = json_pack("{s:{s:s, s:s, s:s}}", "error", "message", message, "type", "upstream_error", "code",
                          "upstream_stream_broken");
    char *text = e ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    if (text)
        send_sse(c, text, strlen(text));
    free(text);
    c->ops.data(c->ud, "data: [DONE]\n\n", 14);
    count(c->g->f_requests, 1, c->target, "error", NULL);
    count_usage(c, m);
    log_done(c, "stream_broken", m->name);
    clear_slot(c);
    c->ops.end(c->ud);
    call_free(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    gateway_call *c = arg;
    int kind = c->timer_kind;
    c->timer_kind = TIMER_NONE;
    if (kind == TIMER_BACKOFF) {
        size_t m = c->plan[c->pos];
        if (now_us() >= c->deadline_us) {
            note_fallback(c, cur_model(c)->name, "timeout");
            c->pos = c->n_plan; /* the deadline passed: nothing more to try */
            next_model(c);
        } else if (!gw_breaker_allow(&c->g->breakers[m], now_us())) { /* opened meanwhile */
            note_fallback(c, cur_model(c)->name, "breaker_open");
            c->pos++;
            next_model(c);
        } else {
            c->breaker_owed = 1; /* every try's outcome counts */
            start_try(c);
        }
        return;
    }
    /* The first byte did not come in time, or the deadline passed. */
    gw_transfer_cancel(c->xfer);
    c->xfer = NULL;
    if (c->started) {
        stream_failed(c, "the upstream stopped answering before the deadline");
        return;
    }
    if (kind == TIMER_DEADLINE) {
        count(c->g->f_upstream, 1, cur_model(c)->name, "timeout", NULL);
        record_breaker(c, 0);
        end_try(c);
        note_fallback(c, cur_model(c)->name, "timeout");
        snprintf(c->last_error, sizeof c->last_error, "no answer within the deadline (%g s)",
                 (double)c->g->cfg.deadline_us / 1e6);
        c->last_status = GATEWAY_ETIMEOUT;
        c->pos = c->n_plan;
        next_model(c);
        return;
    }
    count(c->g->f_upstream, 1, cur_model(c)->name, "timeout", NULL);
    try_failed(c, GATEWAY_ETIMEOUT, "timeout", "%s did not start answering within %g s", cur_model(c)->name,
               (double)c->g->cfg.providers[cur_model(c)->provider].timeout_us / 1e6);
}

/* The client's head, once: the stream starts. */
static void start_stream(gateway_call *c) {
    if (c->started)
        return;
    c->started = 1;
    gateway_header h[6];
    size_t nh = answer_headers(c, cur_model(c)->name, c->cache_on ? "MISS" : NULL, h);
    c->ops.begin(c->ud, 200, 1, h, nh);
}

/* Sends filtered content as a chunk shaped like `like` (or a fresh one);
 * text NULL: like's delta as it is (only the model renamed). */
static void send_content(gateway_call *c, const gw_chunk *like, const char *text, size_t len) {
    size_t n = 0;
    char *json = NULL;
    if (like && text) {
        json = gw_chunk_rewrite(like, cur_model(c)->name, text, len, &n);
    } else if (like) {
        json = gw_chunk_rewrite(like, cur_model(c)->name, NULL, 0, &n);
    } else {
        json = gw_chunk_make(c->stream_id, c->created, cur_model(c)->name, text, NULL, NULL, &n);
    }
    if (json)
        send_sse(c, json, n);
    free(json);
}

/* A chunk of the gateway's own with text for choice index. */
static void send_choice_text(gateway_call *c, size_t index, const char *text, size_t len) {
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[{s:I, s:{s:s%}, s:n}]}", "id", c->stream_id, "object",
                          "chat.completion.chunk", "created", (json_int_t)c->created, "model", cur_model(c)->name,
                          "choices", "index", (json_int_t)index, "delta", "content", text, len, "finish_reason");
    char *json = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (json)
        send_sse(c, json, strlen(json));
    free(json);
}

static int on_chunk(gateway_call *c, const char *data, size_t len);

static int is_anthropic(const gateway_call *c) {
    return c->g->cfg.providers[cur_model(c)->provider].kind == GW_KIND_ANTHROPIC;
}

static int on_event(void *ud, const char *event, const char *data, size_t len) {
    gateway_call *c = ud;
    if (is_anthropic(c)) { /* translated to chunks first */
        char *json = NULL;
        size_t n = 0;
        gw_fail fail;
        int rc = gw_anthropic_event(&c->anthropic, cur_model(c)->name, event, data, len, &json, &n, &fail);
        if (rc < 0) {
            snprintf(c->last_error, sizeof c->last_error, "%.60s: %.180s", cur_model(c)->name, fail.message);
            return 1;
        }
        int stop = json ? on_chunk(c, json, n) : 0;
        free(json);
        if (rc == 1)
            c->upstream_done = 1;
        return stop;
    }
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        c->upstream_done = 1;
        return 0;
    }
    return on_chunk(c, data, len);
}

/* One chat.completion.chunk from the upstream: counted, filtered, passed on. */
static int on_chunk(gateway_call *c, const char *data, size_t len) {
    gw_chunk k;
    if (gw_chunk_parse(data, len, &k) != 0) {
        json_t *err = json_loadb(data, len, 0, NULL);
        int is_error = json_is_object(json_object_get(err, "error"));
        json_decref(err);
        snprintf(c->last_error, sizeof c->last_error, "%s sent %s in its stream", cur_model(c)->name,
                 is_error ? "an error" : "an event that is not a chat.completion.chunk");
        return 1;
    }
    json_t *error = json_object_get(k.obj, "error");
    if (json_is_object(error)) { /* an in-band error event: the stream failed */
        const char *msg = json_string_value(json_object_get(error, "message"));
        snprintf(c->last_error, sizeof c->last_error, "%.60s sent an error in its stream: %.150s", cur_model(c)->name,
                 msg ? msg : "(no message)");
        gw_chunk_free(&k);
        return 1;
    }
    if (!c->stream_id[0]) {
        const char *id = json_string_value(json_object_get(k.obj, "id"));
        snprintf(c->stream_id, sizeof c->stream_id, "%s", id ? id : "chatcmpl-aiserve");
        c->created = (long)json_integer_value(json_object_get(k.obj, "created"));
    }
    if (k.usage.known)
        c->usage = k.usage;
    if (k.finish_reason && !c->finish_reason)
        c->finish_reason = strdup(k.finish_reason);
    if (!k.has_choices) { /* the usage chunk: the client's only when it asked */
        if (c->chat.include_usage) {
            start_stream(c);
            size_t n;
            char *json = gw_chunk_rewrite(&k, cur_model(c)->name, NULL, 0, &n);
            if (json)
                send_sse(c, json, n);
            free(json);
        }
        gw_chunk_free(&k);
        return 0;
    }
    if (!c->first_byte_us && k.content_len) {
        c->first_byte_us = now_us();
        observe(c->g->f_ttft, (double)(c->first_byte_us - c->try_start_us) / 1e6, cur_model(c)->name);
        evtimer_del(c->timer);
        arm_timer(c, TIMER_DEADLINE, c->deadline_us - now_us());
    }
    start_stream(c);
    json_t *index = json_object_get(json_array_get(json_object_get(k.obj, "choices"), 0), "index");
    size_t idx = json_is_integer(index) && json_integer_value(index) >= 0 ? (size_t)json_integer_value(index) : 0;
    if (idx > c->max_index)
        c->max_index = idx;
    /* c->text: what the client got of choice 0 (filtered), for the cache
     * and the token estimate. */
    if (k.content && idx == 0 && !policy_on(&c->g->cfg.output_policy))
        append(&c->text, &c->text_len, &c->text_cap, k.content, k.content_len);
    if (!policy_on(&c->g->cfg.output_policy)) {
        send_content(c, &k, k.content, k.content_len);
        gw_chunk_free(&k);
        return 0;
    }
    if (idx >= MAX_CHOICES) { /* no filter for it: its text is not passed on */
        send_content(c, &k, k.content ? "" : NULL, 0);
        gw_chunk_free(&k);
        return 0;
    }
    while (c->n_choices <= idx) {
        if (!(c->choice[c->n_choices].pii = guard_pii_stream_new(&c->g->cfg.output_policy))) {
            gw_chunk_free(&k);
            snprintf(c->last_error, sizeof c->last_error, "out of memory");
            return 1;
        }
        c->n_choices++;
    }
    struct choice_filter *f = &c->choice[idx];
    if (f->blocked) { /* after a block, only the end of the choice (its finish_reason) */
        if (k.finish_reason)
            send_content(c, &k, k.content ? "" : NULL, 0);
        gw_chunk_free(&k);
        return 0;
    }
    /* Through the output filter: what it releases now, and at the choice's
     * last chunk (finish_reason) everything it held back. */
    char *out = NULL, *tail = NULL;
    size_t out_len = 0, tail_len = 0;
    int rc = k.content_len ? guard_pii_stream_feed(f->pii, k.content, k.content_len, &out, &out_len) : 0;
    if (rc == 0 && k.finish_reason && !f->done) {
        f->done = 1;
        rc = guard_pii_stream_finish(f->pii, &tail, &tail_len);
    }
    if (rc == 1) { /* blocked: the service's text, and nothing more of this choice */
        f->blocked = c->blocked = 1;
        send_content(c, &k, GUARD_PII_BLOCKED_TEXT, strlen(GUARD_PII_BLOCKED_TEXT));
    } else if (rc == 0) {
        if (tail_len)
            append(&out, &out_len, &(size_t){out_len}, tail, tail_len);
        if (idx == 0 && out_len)
            append(&c->text, &c->text_len, &c->text_cap, out, out_len);
        if (out_len || (k.content && !k.content_len)) /* text, or the opening role chunk */
            send_content(c, &k, out ? out : "", out_len);
        else if (k.finish_reason || !k.content)
            send_content(c, &k, k.content ? "" : NULL, 0);
    } else {
        free(out);
        free(tail);
        gw_chunk_free(&k);
        snprintf(c->last_error, sizeof c->last_error, "out of memory");
        return 1;
    }
    free(out);
    free(tail);
    gw_chunk_free(&k);
    return 0;
}

static int on_head(void *ud, int status, double retry_after_s, int event_stream) {
    gateway_call *c = ud;
    c->up_status = status;
    c->retry_after_s = retry_after_s;
    c->up_stream = event_stream && status >= 200 && status < 300 && c->chat.stream;
    if (c->up_stream) {
        c->sse = gw_sse_new(c->g->cfg.max_response_bytes, on_event, c);
        if (!c->sse)
            return 1;
    }
    return 0;
}

static int on_body(void *ud, const char *data, size_t len) {
    gateway_call *c = ud;
    if (c->up_stream) {
        int rc = gw_sse_feed(c->sse, data, len);
        if (rc == GW_SSE_ETOOBIG)
            snprintf(c->last_error, sizeof c->last_error, "%s sent a stream event over limits.max_response_size",
                     cur_model(c)->name);
        return rc != 0;
    }
    if (c->len + len > c->g->cfg.max_response_bytes) {
        c->overflow = 1;
        return 1;
    }
    append(&c->buf, &c->len, &c->cap, data, len);
    return 0;
}

/* A good non-streamed answer: filter, count, cache, send. */
static void answer_whole(gateway_call *c) {
    const gw_model *m = cur_model(c);
    json_t *o = NULL;
    gw_fail fail;
    int bad = is_anthropic(c) ? gw_anthropic_completion(c->buf ? c->buf : "", c->len, m->name, &o, &c->usage, &fail)
                              : gw_completion_parse(c->buf ? c->buf : "", c->len, &o, &c->usage, &fail);
    if (bad != 0) {
        count(c->g->f_upstream, 1, m->name, "invalid", NULL);
        try_failed(c, GATEWAY_EUPSTREAM, "error", "%s answered something that is not a chat completion: %.150s",
                   m->name, fail.message);
        return;
    }
    count(c->g->f_upstream, 1, m->name, "ok", NULL);
    record_breaker(c, 1);
    json_object_set_new(o, "model", json_string(m->name));
    if (policy_on(&c->g->cfg.output_policy))
        gw_completion_map_content(o, filter_output_text, c);
    json_t *first = json_object_get(json_object_get(json_array_get(json_object_get(o, "choices"), 0), "message"),
                                    "content");
    if (json_is_string(first))
        append(&c->text, &c->text_len, &c->text_cap, json_string_value(first), json_string_length(first));
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!text) {
        finish_fail(c, GATEWAY_ENOMEM, "out of memory");
        return;
    }
    count_usage(c, m);
    if (c->g->cache && !c->blocked)
        guard_cache_store(c->g->cache, c->l->base, &c->key, text, strlen(text));
    if (c->semvec && !c->blocked)
        gw_semindex_add(c->g->semantic[c->route], c->semtag, c->semvec, c->semdim, text, strlen(text), now_us());
    const char *outcome = c->pos == 0 ? "ok" : "fallback";
    count(c->g->f_requests, 1, c->target, outcome, NULL);
    log_done(c, outcome, m->name);
    gateway_header h[6];
    size_t nh = answer_headers(c, m->name, c->cache_on ? "MISS" : NULL, h);
    end_try(c);
    clear_slot(c);
    send_completion(c, text, strlen(text), h, nh); /* a stream, when the client asked for one */
    free(text);
    call_free(c);
}

/* A stream that ended well: the held-back text, usage, [DONE]. */
static void answer_stream_end(gateway_call *c) {
    const gw_model *m = cur_model(c);
    count(c->g->f_upstream, 1, m->name, "ok", NULL);
    record_breaker(c, 1);
    start_stream(c);
    for (size_t i = 0; i < c->n_choices; i++) { /* choices that never sent a finish_reason */
        struct choice_filter *f = &c->choice[i];
        if (!f->blocked && !f->done) {
            f->done = 1;
            char *out = NULL;
            size_t out_len = 0;
            int rc = guard_pii_stream_finish(f->pii, &out, &out_len);
            if (rc == 1) {
                f->blocked = c->blocked = 1;
                send_choice_text(c, i, GUARD_PII_BLOCKED_TEXT, strlen(GUARD_PII_BLOCKED_TEXT));
            } else if (out_len) {
                send_choice_text(c, i, out, out_len);
                if (i == 0)
                    append(&c->text, &c->text_len, &c->text_cap, out, out_len);
            }
            free(out);
        }
        unsigned found[GUARD_PII_COUNT];
        guard_pii_stream_found(f->pii, found);
        count_found(c, "output", &c->g->cfg.output_policy, found);
    }
    if (c->chat.include_usage && !c->usage.known) { /* the upstream sent none: the gateway's estimate */
        gw_usage u = {.known = 1, .prompt_tokens = (long)c->chat.est_tokens,
                      .completion_tokens = (long)gw_estimate_tokens(c->text ? c->text : "", c->text_len)};
        size_t n;
        char *json = gw_chunk_make(c->stream_id, c->created, m->name, NULL, NULL, &u, &n);
        if (json)
            send_sse(c, json, n);
        free(json);
    }
    c->ops.data(c->ud, "data: [DONE]\n\n", 14);
    count_usage(c, m);
    if ((c->g->cache || c->semvec) && !c->blocked && c->max_index == 0) {
        gw_usage u = c->usage;
        json_t *o = gw_completion_make(c->stream_id, c->created, m->name, c->text ? c->text : "", &u);
        if (o && c->finish_reason)
            json_object_set_new(json_array_get(json_object_get(o, "choices"), 0), "finish_reason",
                                json_string(c->finish_reason));
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (text && c->g->cache)
            guard_cache_store(c->g->cache, c->l->base, &c->key, text, strlen(text));
        if (text && c->semvec)
            gw_semindex_add(c->g->semantic[c->route], c->semtag, c->semvec, c->semdim, text, strlen(text), now_us());
        free(text);
        json_decref(o);
    }
    const char *outcome = c->pos == 0 ? "ok" : "fallback";
    count(c->g->f_requests, 1, c->target, outcome, NULL);
    log_done(c, outcome, m->name);
    end_try(c);
    clear_slot(c);
    c->ops.end(c->ud);
    call_free(c);
}

static void on_done(void *ud, int result, const char *error) {
    gateway_call *c = ud;
    c->xfer = NULL;
    const gw_model *m = cur_model(c);
    observe(c->g->f_upstream_seconds, (double)(now_us() - c->try_start_us) / 1e6, m->name);
    if (c->started) { /* the client has part of a stream */
        if (result == GW_XFER_OK && c->upstream_done)
            answer_stream_end(c);
        else if (result == GW_XFER_OK && !gw_sse_truncated(c->sse))
            answer_stream_end(c); /* ended without [DONE]: what came is the answer */
        else
            stream_failed(c, c->last_error[0] ? c->last_error : "the upstream's stream broke off");
        return;
    }
    if (result != GW_XFER_OK) {
        if (c->overflow || (c->up_stream && c->last_error[0])) {
            count(c->g->f_upstream, 1, m->name, "invalid", NULL);
            try_failed(c, GATEWAY_EUPSTREAM, "error", "%s", c->overflow ? "the upstream's answer is over "
                       "limits.max_response_size" : c->last_error);
        } else {
            const char *what = result == GW_XFER_TIMEOUT ? "timeout" : result == GW_XFER_CONNECT ? "connect" : "broken";
            count(c->g->f_upstream, 1, m->name, what, NULL);
            try_failed(c, result == GW_XFER_TIMEOUT ? GATEWAY_ETIMEOUT : GATEWAY_EUPSTREAM,
                       result == GW_XFER_TIMEOUT ? "timeout" : "error", "%s: %s", m->name, error);
        }
        return;
    }
    int st = c->up_status;
    if (st >= 200 && st < 300) {
        if (c->up_stream) /* a stream with no content at all */
            answer_stream_end(c);
        else
            answer_whole(c);
        return;
    }
    char msg[256];
    gw_error_message(c->buf ? c->buf : "", c->len, msg, sizeof msg);
    if (st < 400) { /* a redirect or an informational answer: not a chat completion */
        count(c->g->f_upstream, 1, m->name, "invalid", NULL);
        try_failed(c, GATEWAY_EUPSTREAM, "error", "%.80s answered %d instead of a chat completion", m->name, st);
        return;
    }
    if (st == 429 || st >= 500) {
        count(c->g->f_upstream, 1, m->name, st == 429 ? "http_429" : "http_5xx", NULL);
        try_failed(c, GATEWAY_EUPSTREAM, "error", "%.80s answered %d: %.120s", m->name, st, msg);
        return;
    }
    count(c->g->f_upstream, 1, m->name, "http_4xx", NULL);
    if (gw_error_is_context_length(st, c->buf ? c->buf : "", c->len)) {
        context_failed(c);
        return;
    }
    if (st == 401 || st == 403 || st == 404) { /* the gateway's key or model name is wrong: another model */
        record_breaker(c, 0);
        end_try(c);
        snprintf(c->last_error, sizeof c->last_error, "%.80s answered %d: %.120s", m->name, st, msg);
        c->last_status = GATEWAY_EUPSTREAM;
        note_fallback(c, m->name, "error");
        c->pos++;
        next_model(c);
        return;
    }
    /* The request itself is wrong for the upstream: the client's to fix. */
    record_breaker(c, 1);
    end_try(c);
    finish_fail(c, GATEWAY_EINVAL, "%s refused the request (%d): %s", m->name, st, msg);
}

static void start_try(gateway_call *c) {
    const gw_model *m = cur_model(c);
    const gw_provider *p = &c->g->cfg.providers[m->provider];
    c->attempt++;
    c->tries++;
    c->retry_after_s = -1;
    c->up_status = 0;
    c->up_stream = 0;
    c->last_error[0] = 0;
    /* The upstream body is the model's: made on its first try, kept for retries. */
    int fresh = c->attempt == 1;
    if (fresh) {
        free(c->up_body);
        c->up_body = NULL;
    }
    char url[1200], auth[4200];
    const char *headers[4];
    size_t nh = 0;
    headers[nh++] = "Content-Type: application/json";
    headers[nh++] = c->chat.stream ? "Accept: text/event-stream" : "Accept: application/json";
    if (p->kind == GW_KIND_ANTHROPIC) {
        gw_fail fail;
        memset(&c->anthropic, 0, sizeof c->anthropic);
        if (fresh)
            c->up_body = gw_anthropic_request(&c->chat, m->upstream, c->g->cfg.reserve_tokens, &c->up_len, &fail);
        if (!c->up_body && fresh && fail.status == GATEWAY_EINVAL) { /* does not translate: the client's to change */
            record_breaker(c, 1);
            finish_fail(c, GATEWAY_EINVAL, "%s (model %s is an Anthropic model)", fail.message, m->name);
            return;
        }
        snprintf(url, sizeof url, "%s/messages", p->base_url);
        headers[nh++] = "anthropic-version: 2023-06-01";
        if (p->api_key) {
            snprintf(auth, sizeof auth, "x-api-key: %s", p->api_key);
            headers[nh++] = auth;
        }
    } else {
        if (fresh)
            c->up_body = gw_chat_upstream_body(&c->chat, m->upstream, &c->up_len);
        snprintf(url, sizeof url, "%s/chat/completions", p->base_url);
        if (p->api_key) {
            snprintf(auth, sizeof auth, "Authorization: Bearer %s", p->api_key);
            headers[nh++] = auth;
        }
    }
    gw_transfer_request req = {.url = url, .headers = headers, .n_headers = nh, .body = c->up_body,
                               .body_len = c->up_len, .connect_timeout_us = p->connect_timeout_us,
                               .timeout_us = c->chat.stream ? 0 : p->timeout_us};
    static const gw_transfer_ops ops = {on_head, on_body, on_done};
    c->try_start_us = now_us();
    c->first_byte_us = 0;
    c->xfer = c->up_body ? gw_transfer_start(c->l->multi, &req, &ops, c) : NULL;
    memset(auth, 0, sizeof auth);
    if (!c->xfer) {
        record_breaker(c, 1);
        finish_fail(c, GATEWAY_ENOMEM, "out of memory");
        return;
    }
    /* Streams: the first byte within the provider's timeout; always: the deadline. */
    if (c->chat.stream)
        arm_timer(c, TIMER_FIRST_BYTE, p->timeout_us);
    else
        arm_timer(c, TIMER_DEADLINE, c->deadline_us - now_us());
}

/* The model at plan[pos], or the next whose breaker lets a call through. */
static void next_model(gateway_call *c) {
    uint64_t now = now_us();
    while (c->pos < c->n_plan && now < c->deadline_us) {
        size_t m = c->plan[c->pos];
        const gw_model *model = &c->g->cfg.models[m];
        if (!fits(model, needed_tokens(c))) {
            note_fallback(c, model->name, "context_window");
            snprintf(c->last_error, sizeof c->last_error,
                     "the prompt (about %ld tokens with max_tokens) is longer than the context window of %s (%ld)",
                     needed_tokens(c), model->name, model->context_window);
            c->last_status = GATEWAY_ETOOBIG;
            c->pos++;
            continue;
        }
        if (!gw_breaker_allow(&c->g->breakers[m], now)) {
            note_fallback(c, model->name, "breaker_open");
            snprintf(c->last_error, sizeof c->last_error, "the circuit breaker of %s is open", model->name);
            c->last_status = GATEWAY_EUNAVAILABLE;
            c->pos++;
            continue;
        }
        if (c->g->cfg.budgets && c->reserve_state == 0) { /* the breaker's probe waits for the reservation */
            gw_breaker_abandon(&c->g->breakers[m]);
            reserve(c, model);
            return;
        }
        breaker_metric(c->g, m, gw_breaker_state_now(&c->g->breakers[m], now));
        c->breaker_owed = 1;
        c->attempt = 0;
        start_try(c);
        return;
    }
    if (c->pos < c->n_plan) { /* the deadline passed */
        snprintf(c->last_error, sizeof c->last_error, "no answer within the deadline (%g s)",
                 (double)c->g->cfg.deadline_us / 1e6);
        c->last_status = GATEWAY_ETIMEOUT;
    }
    last_resort(c);
}

/* ---- the semantic cache -------------------------------------------------------------------
 *
 * For a route with a semantic cache: the prompt (every message's text) is
 * embedded by the local model named in its configuration, through
 * serving_predict as any request; an answer stored under a prompt whose
 * embedding is at least `threshold` similar (cosine) is the answer. The
 * embedding comes back on a batcher thread, which only wakes the call's
 * loop. */

static void semantic_done(gateway_call *c);

static void on_embedded_thread(serving_request *r, void *user) {
    (void)r;
    gateway_call *c = user;
    event_active(c->wake, EV_READ, 0);
}

static void on_embedded(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    gateway_call *c = arg;
    c->embed_pending = 0;
    if (c->cancelled) {
        c->l->orphans--;
        call_free(c);
        return;
    }
    semantic_done(c);
}

/* All of the messages' text, one per line. */
static char *prompt_text(const gateway_call *c, size_t *len) {
    char *buf = NULL;
    size_t n = 0, cap = 0;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(c->chat.body, "messages"), i, m) {
        json_t *content = json_object_get(m, "content");
        if (json_is_string(content)) {
            append(&buf, &n, &cap, json_string_value(content), json_string_length(content));
            append(&buf, &n, &cap, "\n", 1);
        }
        size_t k;
        json_t *part;
        json_array_foreach(content, k, part) {
            json_t *t = json_object_get(part, "text");
            if (json_is_string(t)) {
                append(&buf, &n, &cap, json_string_value(t), json_string_length(t));
                append(&buf, &n, &cap, "\n", 1);
            }
        }
    }
    *len = n;
    return buf;
}

/* Everything of the request but its messages that decides the answer
 * (the cache material's rule: sampling fields, tools, response_format,
 * ...; not stream, user, metadata), hashed: semantic hits only between
 * requests that agree on it. */
static uint64_t semantic_tag(const gateway_call *c) {
    json_t *rest = json_copy(c->chat.body);
    json_object_del(rest, "messages");
    size_t n = 0;
    gw_chat probe = c->chat;
    probe.body = rest;
    char *material = rest ? gw_chat_cache_material(&probe, c->target, &n) : NULL;
    uint64_t tag = material ? XXH3_64bits(material, n) : 0;
    free(material);
    json_decref(rest);
    return tag;
}

static void semantic_stage(gateway_call *c) {
    const gw_route *route = c->route >= 0 ? &c->g->cfg.routes[c->route] : NULL;
    if (!route || !c->g->semantic[c->route] || c->no_cache || !(c->wake = event_new(c->l->base, -1, 0, on_embedded, c))) {
        next_model(c);
        return;
    }
    c->semtag = semantic_tag(c);
    c->embed_text = prompt_text(c, &c->embed_len);
    if (!c->embed_text) {
        next_model(c);
        return;
    }
    serving_request_init(&c->sreq);
    c->sreq.model = route->semantic.model;
    c->sreq.task = SERVING_TASK_EMBED;
    c->sreq.texts = (const char *const *)&c->embed_text;
    c->sreq.lens = &c->embed_len;
    c->sreq.n = 1;
    c->sreq.on_done = on_embedded_thread;
    c->sreq.user = c;
    c->embed_pending = 1;
    if (serving_predict(c->g->repo, &c->sreq) != 0) { /* not loaded, not an embedding model, ...: no semantic cache */
        c->embed_pending = 0;
        log_event(LOG_WARN, "llm_semantic_cache_unavailable", "route", json_string(route->name), "error",
                  json_string(c->sreq.error), NULL);
        serving_request_fini(&c->sreq);
        next_model(c);
    }
}

static void semantic_done(gateway_call *c) {
    gw_semindex *x = c->g->semantic[c->route];
    if (c->sreq.status != 0) {
        log_event(LOG_WARN, "llm_semantic_cache_unavailable", "route", json_string(c->g->cfg.routes[c->route].name),
                  "error", json_string(c->sreq.error), NULL);
        serving_request_fini(&c->sreq);
        next_model(c);
        return;
    }
    size_t dim = (size_t)serving_version_info(c->sreq.first)->hidden;
    c->semvec = malloc(dim * sizeof *c->semvec);
    double norm = 0;
    for (size_t i = 0; i < dim; i++)
        norm += (double)c->sreq.out[i] * c->sreq.out[i];
    norm = norm > 0 ? 1 / sqrt(norm) : 0;
    for (size_t i = 0; c->semvec && i < dim; i++)
        c->semvec[i] = (float)(c->sreq.out[i] * norm);
    c->semdim = c->semvec ? dim : 0;
    serving_request_fini(&c->sreq);
    char *body = NULL;
    size_t len = 0;
    double similarity = 0;
    if (c->semvec && gw_semindex_find(x, c->semtag, c->semvec, dim, now_us(), &body, &len, &similarity)) {
        count(c->g->f_cache, 1, "semantic_hit", NULL);
        count(c->g->f_requests, 1, c->target, "ok", NULL);
        log_done(c, "semantic_cache_hit", NULL);
        char sim[32];
        snprintf(sim, sizeof sim, "%.4f", similarity);
        gateway_header h[7];
        size_t nh = answer_headers(c, NULL, "SEMANTIC", h);
        h[nh++] = (gateway_header){"X-Semantic-Similarity", sim};
        clear_slot(c);
        send_completion(c, body, len, h, nh);
        free(body);
        call_free(c);
        return;
    }
    count(c->g->f_cache, 1, "semantic_miss", NULL);
    next_model(c);
}

/* ---- the start -------------------------------------------------------------------------- */

static void on_lookup(int hit, const void *body, size_t len, void *ud) {
    gateway_call *c = ud;
    c->lookup_pending = 0;
    if (c->cancelled) {
        call_free(c);
        return;
    }
    if (hit && c->servable) {
        count(c->g->f_cache, 1, "hit", NULL);
        count(c->g->f_requests, 1, c->target, "ok", NULL);
        json_t *o = json_loadb(body, len, 0, NULL);
        const char *model = json_string_value(json_object_get(o, "model"));
        char model_name[GW_NAME_MAX];
        snprintf(model_name, sizeof model_name, "%s", model ? model : c->target);
        json_decref(o);
        log_done(c, "cache_hit", model_name);
        gateway_header h[6];
        size_t nh = answer_headers(c, model_name, "HIT", h);
        clear_slot(c);
        send_completion(c, body, len, h, nh);
        call_free(c);
        return;
    }
    if (hit && (c->stale = malloc(len + 1))) { /* kept for the stale fallback */
        memcpy(c->stale, body, len);
        c->stale[len] = 0;
        c->stale_len = len;
    }
    count(c->g->f_cache, 1, c->servable ? "miss" : "bypass", NULL);
    semantic_stage(c);
}

int gateway_chat(gateway_loop *l, const gateway_request *r, const gateway_reply_ops *ops, void *ud,
                 gateway_call **slot) {
    gateway_call *c = calloc(1, sizeof *c);
    if (!c || !(c->timer = evtimer_new(l->base, on_timer, c))) {
        free(c);
        return GATEWAY_ENOMEM;
    }
    gateway *g = l->g;
    c->l = l;
    c->g = g;
    c->ops = *ops;
    c->ud = ud;
    c->slot = slot;
    *slot = c;
    c->next = l->calls;
    if (l->calls)
        l->calls->prev = c;
    l->calls = c;
    c->start_us = now_us();
    c->deadline_us = c->start_us + g->cfg.deadline_us;
    c->route = -1;
    snprintf(c->key_name, sizeof c->key_name, "%s", r->key_name ? r->key_name : "");
    snprintf(c->request_id, sizeof c->request_id, "%s", r->request_id ? r->request_id : "");

    gw_fail fail = {0};
    if (gw_chat_parse(r->body, r->len, &g->cfg.limits, &c->chat, &fail) != 0) {
        snprintf(c->target, sizeof c->target, "(invalid)");
        clear_slot(c);
        count(g->f_requests, 1, "(invalid)", "error", NULL);
        c->ops.fail(c->ud, fail.status, fail.param, fail.message, NULL, 0);
        call_free(c);
        return 0;
    }
    snprintf(c->target, sizeof c->target, "%s", c->chat.model);
    long model = gw_config_model(&g->cfg, c->chat.model);
    c->route = model < 0 ? gw_config_route(&g->cfg, c->chat.model) : -1;
    if (model < 0 && c->route < 0) {
        clear_slot(c);
        count(g->f_requests, 1, "(unknown)", "error", NULL);
        char msg[300];
        snprintf(msg, sizeof msg, "the model '%.100s' is not a model or route of this gateway (GET /v1/models lists them)",
                 c->chat.model);
        c->ops.fail(c->ud, GATEWAY_ENOMODEL, "model", msg, NULL, 0);
        call_free(c);
        return 0;
    }
    if (filter_input(c) != 0)
        return 0;
    const gw_route *route = c->route >= 0 ? &g->cfg.routes[c->route] : NULL;
    if (route) {
        plan_add_chain(c, route_pick(c, route), 0);
        for (size_t i = 0; i < route->n_fallbacks; i++)
            plan_add_chain(c, route->fallbacks[i], 1);
    } else {
        snprintf(c->route_reason, sizeof c->route_reason, "model %s", g->cfg.models[model].name);
        plan_add_chain(c, (size_t)model, 0);
    }

    c->no_cache = r->no_cache;
    c->servable = !r->no_cache && (c->chat.deterministic || (route && route->cache_always));
    if (g->cache) {
        size_t n = 0;
        char *material = gw_chat_cache_material(&c->chat, c->target, &n);
        if (material) {
            const char *texts[] = {material};
            guard_cache_input in = {.model = "llm", .version = 0, .kind = GUARD_CACHE_SINGLE, .texts = texts,
                                    .lens = &n, .n = 1};
            guard_cache_key_make(&in, &c->key);
            free(material);
            c->cache_on = 1;
            c->lookup_pending = 1;
            guard_cache_lookup(g->cache, l->base, &c->key, &c->creq, on_lookup, c);
            return 0;
        }
    }
    semantic_stage(c);
    return 0;
}

void gateway_call_cancel(gateway_call *c) {
    if (!c)
        return;
    int billed = c->xfer || c->started; /* the upstream was working on it (or had answered part) */
    c->slot = NULL;
    if (c->breaker_owed) {
        gw_breaker_abandon(&c->g->breakers[c->plan[c->pos]]);
        c->breaker_owed = 0;
    }
    if (c->xfer || c->started)
        log_done(c, "client_gone", c->pos < c->n_plan ? cur_model(c)->name : NULL);
    if (c->reserve_state == 2 && c->pos < c->n_plan) /* what the upstream may have billed so far */
        settle(c, billed ? cur_model(c) : NULL);
    gw_transfer_cancel(c->xfer);
    c->xfer = NULL;
    if (c->lookup_pending || c->reserve_state == 1 || c->embed_pending) { /* the pending callback frees it */
        c->l->orphans += c->embed_pending;
        c->cancelled = 1;
        evtimer_del(c->timer);
        unlink_call(c);
        return;
    }
    call_free(c);
}
