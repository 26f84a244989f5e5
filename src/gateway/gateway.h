/*
 * gateway.h - the gateway module's one public header: the LLM gateway in
 * front of upstream providers (POST /v1/chat/completions).
 *
 * A client sends an OpenAI chat-completions request naming a model or a
 * route of the gateway's configuration (gateway.config; docs/gateway.md).
 * The gateway checks it, applies the input guardrails, picks the model
 * (a route's rules), and calls the upstream, with retries (backoff with
 * full jitter, Retry-After), a circuit breaker per model, fallbacks (the
 * model's, the route's, a larger context window), then a cached answer
 * (marked stale), then the configured default reply. Answers are filtered
 * (output guardrails), cached (exact match), counted (tokens, cost, per
 * API key), and streamed as server-sent events when asked. What each key's
 * budgets have left is read with gateway_budgets_read.
 *
 * Ownership and threads:
 *  - gateway_create/destroy on the main thread; the gateway outlives every
 *    loop and call.
 *  - A gateway_loop belongs to one libevent base (an HTTP loop) and is used
 *    only on its thread: its calls, their upstream transfers (libcurl
 *    multi) and timers all run there; no call ever holds a thread.
 *  - A call is owned by the gateway from gateway_chat until its final
 *    callback (end or fail) or gateway_call_cancel.
 */
#ifndef AISERVE_GATEWAY_H
#define AISERVE_GATEWAY_H

#include <stddef.h>

#include "guard.h"
#include "obs.h"
#include "serving.h"
#include "status.h"

struct event_base;

#ifdef __cplusplus
extern "C" {
#endif

/* One list generates the enum, the names and the default messages. */
#define GATEWAY_STATUS_MAP(X)                                                        \
    X(GATEWAY_OK, 0, "success")                                                      \
    X(GATEWAY_EJSON, -1, "the request body is not valid JSON")                      \
    X(GATEWAY_EUTF8, -2, "the request body is not valid UTF-8")                     \
    X(GATEWAY_EINVAL, -3, "invalid chat request")                                   \
    X(GATEWAY_ETOOBIG, -4, "the request is over the gateway's input limits")        \
    X(GATEWAY_ENOMODEL, -5, "no such model or route")                               \
    X(GATEWAY_EBLOCKED, -6, "the input was refused by a guardrail")                 \
    X(GATEWAY_EUPSTREAM, -7, "the upstream model failed")                           \
    X(GATEWAY_ETIMEOUT, -8, "the upstream model did not answer in time")            \
    X(GATEWAY_EUNAVAILABLE, -9, "no upstream model is available")                   \
    X(GATEWAY_ENOMEM, -10, "out of memory")                                         \
    X(GATEWAY_EBUDGET, -11, "the API key's budget is spent")                        \
    X(GATEWAY_ETOKENS, -12, "the API key is over its tokens per minute")            \
    X(GATEWAY_ESTORE, -13, "the store that counts budgets cannot be reached")

typedef enum gateway_status { GATEWAY_STATUS_MAP(STATUS_ENUM_ROW) } gateway_status;

const char *gateway_status_name(int status);    /* "GATEWAY_EINVAL"; never NULL */
const char *gateway_status_message(int status); /* never NULL */

typedef struct gateway gateway;
typedef struct gateway_loop gateway_loop;
typedef struct gateway_call gateway_call;

typedef struct gateway_options {
    const char *config_file;   /* the gateway's YAML file (docs/gateway.md) */
    metrics_registry *metrics; /* borrowed; outlives the gateway */
    guard_cache *cache;        /* the response cache (exact answers); borrowed; NULL: none */
    kv_store *store;           /* where budgets are counted: Redis shares them between instances;
                                  borrowed; NULL: budgets in the configuration are refused */
    serving_repo *repo;        /* the local models: a route's semantic cache embeds prompts with one;
                                  borrowed; NULL: semantic caches are refused */
} gateway_options;

/* Reads the configuration and registers the aiserve_llm_* metrics. 0, or -1
 * with why (the file, the key and the reason; never an API key). */
int gateway_create(const gateway_options *o, gateway **out, char *why, size_t cap);
void gateway_destroy(gateway *g); /* NULL is fine; every loop is gone */

/* The gateway's part of one event loop. NULL when out of memory. */
gateway_loop *gateway_loop_create(gateway *g, struct event_base *base);
/* Cancels the loop's calls still running (no callbacks), then frees. */
void gateway_loop_destroy(gateway_loop *l);

/* For GET /v1/models: fn(ud, id, owned_by) for every model (owned_by: its
 * provider) and route (owned_by "aiserve-route"). */
void gateway_list(gateway *g, void (*fn)(void *ud, const char *id, const char *owned_by), void *ud);
/* For /health: models whose breaker is open now, of how many. */
void gateway_breakers(gateway *g, size_t *open, size_t *total);

typedef struct gateway_header {
    const char *name, *value;
} gateway_header;

/* How a call answers; the caller (HTTP) implements them. Exactly one of:
 * begin, data..., end (an answer: 200, a JSON body, or an event stream);
 * or fail (nothing was sent: an error the caller formats). */
typedef struct gateway_reply_ops {
    void (*begin)(void *ud, int status, int stream, const gateway_header *headers, size_t n_headers);
    void (*data)(void *ud, const char *buf, size_t len);
    void (*end)(void *ud);
    void (*fail)(void *ud, int status, const char *param, const char *message, const gateway_header *headers,
                 size_t n_headers);
} gateway_reply_ops;

typedef struct gateway_request {
    const char *body;          /* the client's JSON, borrowed for the call to gateway_chat */
    size_t len;
    const char *key_name;      /* the API key's name, for cost per key; NULL or "": none */
    int no_cache;              /* Cache-Control: no-cache: never answered from the cache */
    const char *request_id;    /* for the logs */
} gateway_request;

/* Starts a chat completion. *slot is set to the call at once and back to
 * NULL just before its final callback, so the caller always knows whether
 * it may cancel it. The callbacks run on the loop's thread, possibly before
 * gateway_chat returns. Returns 0, or GATEWAY_ENOMEM (nothing called). */
int gateway_chat(gateway_loop *l, const gateway_request *r, const gateway_reply_ops *ops, void *ud,
                 gateway_call **slot);
/* The client went away: the upstream transfer stops, no callback runs, the
 * call is freed. */
void gateway_call_cancel(gateway_call *c);

/* ---- budgets left (GET /v1/gateway/budgets) --------------------------------------- */

/* A dollar counter of one key: its limit, what the counter holds now (the
 * answers settled plus the reservations of requests still running), what
 * is left (never below 0) and the seconds until the period renews. */
typedef struct gateway_budget_usd {
    double limit_usd, spent_usd, left_usd;
    long resets_in_s;
} gateway_budget_usd;

typedef struct gateway_budget_tokens {
    long long limit, used, left;
    long resets_in_s;
} gateway_budget_tokens;

/* One key's counters this UTC day, month and clock minute. */
typedef struct gateway_budget_left {
    const char *key;        /* the API key's name; "": requests without a key */
    int own;                /* 1: its entry of budgets.keys; 0: the default budget */
    int has_daily, has_monthly, has_tokens; /* 0: no such limit (the field is not filled) */
    gateway_budget_usd daily, monthly;
    gateway_budget_tokens tokens_per_minute;
} gateway_budget_left;

/* status GATEWAY_OK with left[0..n) (borrowed for the callback), or
 * GATEWAY_ESTORE with why (the store's own message; left NULL). */
typedef void (*gateway_budgets_cb)(void *ud, int status, const char *why, const gateway_budget_left *left,
                                   size_t n);

/* Reads, on l's loop, the current counters of the keys named keys[0..n_keys)
 * ("": requests without a key; names are copied), or with keys NULL of
 * every key named in the budgets section and then "". A counter that does
 * not exist is 0 (reading creates it at 0, with the expiry a reservation
 * would give it). Without a budgets section nothing is counted: n is 0.
 * cb runs exactly once, on the loop's thread, possibly before this returns
 * (a store that answers at once). Returns 0, or GATEWAY_ENOMEM (cb not
 * called). */
int gateway_budgets_read(gateway_loop *l, const char *const *keys, size_t n_keys, gateway_budgets_cb cb, void *ud);

#ifdef __cplusplus
}
#endif

#endif /* AISERVE_GATEWAY_H */
