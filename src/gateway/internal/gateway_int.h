/*
 * gateway_int.h - what the gateway's files share: the configuration
 * (config.c), the circuit breakers (breaker.c) and the upstream transfers
 * on libcurl's multi interface (upstream.c). Private to aiserve_gateway.
 */
#ifndef AISERVE_GATEWAY_INT_H
#define AISERVE_GATEWAY_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway.h"
#include "guard.h"
#include "wire_int.h"

/* ---- configuration (config.c) ------------------------------------------------ */

#define GW_NAME_MAX 128

typedef enum gw_kind { GW_KIND_OPENAI = 0, GW_KIND_ANTHROPIC = 1 } gw_kind;

typedef struct gw_provider {
    char name[GW_NAME_MAX];
    gw_kind kind;
    char base_url[1024];      /* without a trailing slash: ".../v1" */
    char *api_key;            /* from api_key_env or api_key_file; NULL: none sent. Never logged */
    uint64_t connect_timeout_us;
    uint64_t timeout_us;      /* one try, connect to last byte */
    char api_key_source[160]; /* "env OPENAI_API_KEY", "file /run/..." (for messages) */
} gw_provider;

typedef struct gw_model {
    char name[GW_NAME_MAX];      /* what clients call it */
    char upstream[GW_NAME_MAX];  /* the provider's name for it */
    size_t provider;             /* index into providers */
    double input_price;          /* USD per million prompt tokens */
    double output_price;         /* USD per million completion tokens */
    long context_window;         /* tokens; 0: unknown (fits everything) */
    size_t fallbacks[8];         /* models to try next, in order */
    size_t n_fallbacks;
} gw_model;

typedef enum gw_rule_kind {
    GW_RULE_KEYWORDS = 0,     /* the routing text contains one of the words (case-insensitive) */
    GW_RULE_MIN_CHARS = 1,    /* the routing text has at least n characters */
    GW_RULE_MIN_TOKENS = 2,   /* the request's estimated prompt tokens >= n */
    GW_RULE_MIN_MAX_TOKENS = 3, /* the request asks for max_tokens >= n */
    GW_RULE_CHEAPEST_FIT = 4, /* the cheapest of the listed models whose window fits */
} gw_rule_kind;

typedef struct gw_rule {
    gw_rule_kind kind;
    char **keywords;          /* KEYWORDS: lower-case */
    size_t n_keywords;
    long n;                   /* MIN_*: the threshold */
    size_t model;             /* the model it picks (not CHEAPEST_FIT) */
    size_t candidates[16];    /* CHEAPEST_FIT */
    size_t n_candidates;
    char reason[96];          /* for X-Route-Reason */
} gw_rule;

/* A route's semantic cache (off when model is ""). */
typedef struct gw_semantic {
    char model[GW_NAME_MAX];  /* an embedding model of the local repository */
    double threshold;         /* cosine similarity that counts as the same prompt */
    size_t max_entries;
    size_t max_bytes;         /* vectors, answers and bookkeeping */
    uint64_t ttl_us;
} gw_semantic;

typedef struct gw_route {
    char name[GW_NAME_MAX];
    gw_semantic semantic;
    gw_rule *rules;
    size_t n_rules;
    size_t default_model;
    size_t fallbacks[8];      /* after the chosen model's own */
    size_t n_fallbacks;
    int cache_always;         /* cache: always (also answers that are not deterministic) */
} gw_route;

/* Spending limits of one API key (0: none). */
typedef struct gw_budget {
    double daily_usd, monthly_usd; /* calendar day and month, UTC */
    long tokens_per_minute;        /* prompt + completion tokens per clock minute */
} gw_budget;

typedef struct gw_key_budget {
    char key[72];                  /* the API key's name */
    gw_budget budget;
} gw_key_budget;

typedef struct gw_config {
    gw_provider *providers;
    size_t n_providers;
    gw_model *models;
    size_t n_models;
    gw_route *routes;
    size_t n_routes;
    /* retries */
    int attempts;             /* tries per model, >= 1 */
    uint64_t min_wait_us, max_wait_us;
    double multiplier;
    uint64_t deadline_us;     /* a whole request, every try and fallback */
    /* fallbacks */
    char *default_reply;      /* NULL: none (the last error is answered) */
    int stale_cache;          /* a cached answer before the default reply */
    int context_fallback;     /* a context-window error moves to a larger window */
    /* breakers */
    int breaker_failures;     /* consecutive failures that open it */
    double breaker_ratio;     /* failure ratio over the window that opens it (0: off) */
    int breaker_min_requests; /* calls in the window before the ratio counts */
    uint64_t breaker_window_us;
    uint64_t breaker_cooldown_us;
    /* cache */
    int cache;                /* exact cache on */
    /* guardrails */
    guard_pii_policy input_policy, output_policy;
    /* budgets */
    int budgets;              /* a budgets: section was given */
    gw_budget default_budget; /* keys not listed, and requests without a key */
    gw_key_budget *key_budgets;
    size_t n_key_budgets;
    long reserve_tokens;      /* the completion a request without max_tokens is reserved for */
    /* limits */
    gw_limits limits;
    size_t max_response_bytes; /* an upstream answer (or one stream event) larger is cut off: 502 */
} gw_config;

/* Reads the gateway's YAML file. 0, or -1 with why (path, key and reason). */
int gw_config_load(const char *path, gw_config *out, char *why, size_t cap);
void gw_config_free(gw_config *c);
/* The budget of the key named name ("" or NULL: none given). */
const gw_budget *gw_config_budget(const gw_config *c, const char *name);
/* Index of the model / route named name, or -1. */
long gw_config_model(const gw_config *c, const char *name);
long gw_config_route(const gw_config *c, const char *name);

/* ---- Anthropic's Messages API (anthropic.c) ----------------------------------- */

/* The Messages request for c (anthropic.c's header has the mapping):
 * malloc'd JSON text, *len set; NULL with fail (GATEWAY_EINVAL: something
 * that does not translate, such as tool messages; GATEWAY_ENOMEM). */
char *gw_anthropic_request(const gw_chat *c, const char *upstream_model, long default_max_tokens, size_t *len,
                           gw_fail *fail);
/* A Messages answer as a chat.completion naming model (owned), usage set.
 * 0, or -1 with fail (GATEWAY_EUPSTREAM: not a message). */
int gw_anthropic_completion(const char *data, size_t len, const char *model, json_t **out, gw_usage *usage,
                            gw_fail *fail);

/* A stream's state while its events are translated. */
typedef struct gw_anthropic_stream {
    char id[96];
    long created;
    gw_usage usage;
    size_t n_tools;              /* tool_use blocks so far: the next tool call's index */
    size_t tool_of_block[64];    /* a content block's tool call index + 1 (0: not a tool) */
} gw_anthropic_stream;

/* One event of a Messages stream as at most one chat.completion.chunk
 * (*out malloc'd JSON text, NULL when the event has no counterpart).
 * Returns 0; 1 at message_stop (the stream's end: *out is the usage
 * chunk); -1 with fail for an error event or an event that is not JSON. */
int gw_anthropic_event(gw_anthropic_stream *s, const char *model, const char *event, const char *data, size_t len,
                       char **out, size_t *out_len, gw_fail *fail);

/* ---- the semantic cache's index (semantic.c) ------------------------------------ */

/* Answers keyed by prompt embeddings; one per route that has a semantic
 * cache, shared by every loop (its own mutex). Bounded: past max_entries
 * or max_bytes the oldest entries go; entries past their ttl are skipped
 * and dropped. */
typedef struct gw_semindex gw_semindex;

gw_semindex *gw_semindex_new(const gw_semantic *cfg);
void gw_semindex_free(gw_semindex *x);
/* The most similar entry's answer at or above the threshold, among those
 * stored with the same tag (a hash of everything but the messages that
 * decides the answer: sampling fields, tools, response_format, ...): 1
 * with a malloc'd copy in *body (*len) and its similarity, else 0. vec is
 * unit length (dim floats). */
int gw_semindex_find(gw_semindex *x, uint64_t tag, const float *vec, size_t dim, uint64_t now_us, char **body,
                     size_t *len, double *similarity);
/* Adds an answer under tag and vec (copied). */
void gw_semindex_add(gw_semindex *x, uint64_t tag, const float *vec, size_t dim, const char *body, size_t len,
                     uint64_t now_us);
size_t gw_semindex_entries(gw_semindex *x);

/* ---- circuit breakers (breaker.c) ---------------------------------------------- */

typedef enum gw_breaker_state { GW_BREAKER_CLOSED = 0, GW_BREAKER_HALF_OPEN = 1, GW_BREAKER_OPEN = 2 } gw_breaker_state;

/* One per model, shared by every loop (its own mutex). */
typedef struct gw_breaker {
    pthread_mutex_t lock;
    gw_breaker_state state;
    int consecutive;          /* failures in a row */
    uint64_t window_start_us;
    int window_calls, window_failures;
    uint64_t opened_us;
    int probing;              /* half-open: the one probe is out */
    int failures;             /* thresholds (copied from the config) */
    double ratio;
    int min_requests;
    uint64_t window_us, cooldown_us;
} gw_breaker;

void gw_breaker_init(gw_breaker *b, const gw_config *c);
void gw_breaker_destroy(gw_breaker *b);
/* May a call go to this model now? Half-open lets one probe through (the
 * caller then owes gw_breaker_record). */
int gw_breaker_allow(gw_breaker *b, uint64_t now_us);
/* The outcome of a call that was allowed; returns the state after it. */
gw_breaker_state gw_breaker_record(gw_breaker *b, int ok, uint64_t now_us);
gw_breaker_state gw_breaker_state_now(gw_breaker *b, uint64_t now_us);
/* An allowed call ended without an outcome (the client left): a half-open
 * breaker may send its probe again. */
void gw_breaker_abandon(gw_breaker *b);
const char *gw_breaker_state_name(gw_breaker_state s);

/* ---- upstream transfers (upstream.c) --------------------------------------------- */

/* One loop's libcurl multi handle, driven by its event base. */
typedef struct gw_multi gw_multi;

gw_multi *gw_multi_create(struct event_base *base);
/* Aborts every transfer (their on_done is not called). */
void gw_multi_destroy(gw_multi *m);

typedef struct gw_transfer gw_transfer;

typedef struct gw_transfer_ops {
    /* The status line and headers are in (status, Retry-After in seconds or
     * -1, whether the body is an event stream). Return 0 to go on, non-zero
     * to abort the transfer (on_done then reports GW_XFER_ABORTED). */
    int (*on_head)(void *ud, int status, double retry_after_s, int event_stream);
    /* Body bytes as they arrive. Non-zero aborts. */
    int (*on_body)(void *ud, const char *data, size_t len);
    /* Exactly once, unless the transfer was cancelled: result 0 (the answer
     * is complete; status as in on_head), or a negative GW_XFER_*. */
    void (*on_done)(void *ud, int result, const char *error);
} gw_transfer_ops;

enum {
    GW_XFER_OK = 0,
    GW_XFER_CONNECT = -1,   /* could not connect (refused, DNS, TLS) */
    GW_XFER_TIMEOUT = -2,   /* the try's timeout passed */
    GW_XFER_BROKEN = -3,    /* the connection broke mid-answer */
    GW_XFER_ABORTED = -4,   /* a callback asked to stop */
    GW_XFER_ENOMEM = -5,
};

typedef struct gw_transfer_request {
    const char *url;
    const char *const *headers; /* "Name: value" lines */
    size_t n_headers;
    const char *body;           /* borrowed until on_done */
    size_t body_len;
    uint64_t connect_timeout_us, timeout_us;
} gw_transfer_request;

/* Starts a POST. NULL when it could not be started (out of memory). */
gw_transfer *gw_transfer_start(gw_multi *m, const gw_transfer_request *req, const gw_transfer_ops *ops, void *ud);
/* Stops the transfer at once; no callback runs after this. */
void gw_transfer_cancel(gw_transfer *t);

#endif /* AISERVE_GATEWAY_INT_H */
