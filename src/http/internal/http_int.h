/*
 * http_int.h - what the HTTP module's files share: the server and loop
 * structs, the per-request call, the route table's row, the inference
 * pipeline's endpoint shape, the error list and the reply helpers. Private
 * to the aiserve_http library (tests reach it through tests/internal/).
 *
 * Ownership: a call is created by the loop that received the request and is
 * freed by that loop after its answer was written (or its connection died).
 * While a call waits for a model, for the job store or for a coalesced
 * request, other threads only post it back to its loop's done list
 * (http_post), and the loop runs its on_posted.
 */
#ifndef AISERVE_HTTP_INT_H
#define AISERVE_HTTP_INT_H

#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "http.h"
#include "status.h"

/* ---- errors ---------------------------------------------------------------
 *
 * The answers' error codes, each with its HTTP status and OpenAI error type
 * (DESIGN.md's status table). Other modules' statuses become one of these
 * through the one table in status.c (http_error_of). */
#define HTTP_ERROR_MAP(X)                                                          \
    X(INVALID_JSON, 400, "invalid_request_error", "invalid_json")                  \
    X(INVALID_UTF8, 400, "invalid_request_error", "invalid_utf8")                  \
    X(INVALID_REQUEST_FRAMING, 400, "invalid_request_error", "invalid_framing")    \
    X(CORS_FORBIDDEN, 400, "invalid_request_error", "cors_forbidden")              \
    X(MISSING_API_KEY, 401, "authentication_error", "missing_api_key")             \
    X(INVALID_API_KEY, 403, "permission_error", "invalid_api_key")                 \
    X(INSUFFICIENT_SCOPE, 403, "permission_error", "insufficient_scope")           \
    X(NOT_FOUND, 404, "invalid_request_error", "not_found")                        \
    X(MODEL_NOT_FOUND, 404, "invalid_request_error", "model_not_found")            \
    X(VERSION_NOT_FOUND, 404, "invalid_request_error", "version_not_found")        \
    X(METHOD_NOT_ALLOWED, 405, "invalid_request_error", "method_not_allowed")      \
    X(BODY_TOO_LARGE, 413, "invalid_request_error", "body_too_large")              \
    X(HEADERS_TOO_LARGE, 431, "invalid_request_error", "headers_too_large")        \
    X(INVALID_REQUEST, 422, "invalid_request_error", "invalid_request")            \
    X(INVALID_TEXT, 422, "invalid_request_error", "invalid_text")                  \
    X(EMPTY_TEXT, 422, "invalid_request_error", "empty_text")                      \
    X(TEXT_TOO_LONG, 422, "invalid_request_error", "text_too_long")                \
    X(TOO_MANY_INPUTS, 422, "invalid_request_error", "too_many_inputs")            \
    X(UNSUPPORTED_MODEL, 422, "invalid_request_error", "unsupported_model")        \
    X(INPUT_TOO_LARGE, 422, "invalid_request_error", "input_too_large")            \
    X(INPUT_BLOCKED, 422, "invalid_request_error", "input_blocked")                \
    X(UPSTREAM_ERROR, 502, "upstream_error", "upstream_error")                     \
    X(UPSTREAM_UNAVAILABLE, 503, "service_unavailable_error", "upstream_unavailable") \
    X(UPSTREAM_TIMEOUT, 504, "timeout_error", "upstream_timeout")                  \
    X(GATEWAY_DISABLED, 404, "invalid_request_error", "gateway_not_configured")    \
    X(RATE_LIMITED, 429, "rate_limit_error", "rate_limited")                       \
    X(BUDGET_EXCEEDED, 429, "insufficient_quota", "budget_exceeded")               \
    X(TOKENS_RATE_LIMITED, 429, "rate_limit_error", "tokens_per_minute_exceeded")  \
    X(TOO_MANY_JOBS, 429, "rate_limit_error", "too_many_jobs")                     \
    X(JOB_NOT_FOUND, 404, "invalid_request_error", "job_not_found")                \
    X(JOB_FINISHED, 409, "invalid_request_error", "job_finished")                  \
    X(BATCH_DISABLED, 503, "service_unavailable_error", "batch_disabled")          \
    X(RATE_LIMITER_UNAVAILABLE, 503, "service_unavailable_error", "rate_limiter_unavailable") \
    X(JOB_QUEUE_UNAVAILABLE, 503, "service_unavailable_error", "job_queue_unavailable") \
    X(BUDGETS_UNAVAILABLE, 503, "service_unavailable_error", "budgets_unavailable") \
    X(NOT_READY, 503, "service_unavailable_error", "not_ready")                    \
    X(OVERLOADED, 503, "service_unavailable_error", "overloaded")                  \
    X(SHUTTING_DOWN, 503, "service_unavailable_error", "shutting_down")            \
    X(TIMEOUT, 504, "timeout_error", "timeout")                                    \
    X(INTERNAL, 500, "server_error", "internal_error")

typedef enum http_error {
#define HTTP_ERROR_ENUM(name, status, type, code) HTTP_ERR_##name,
    HTTP_ERROR_MAP(HTTP_ERROR_ENUM)
#undef HTTP_ERROR_ENUM
    HTTP_ERR_COUNT
} http_error;

int http_error_status(http_error e);
const char *http_error_type(http_error e);
const char *http_error_code(http_error e);

/* status.c: the one table from another module's status to an answer's
 * error. Statuses a client never causes (ENOMEM, EDB, ...) are INTERNAL. */
http_error http_error_of(status_module module, int status);

/* A refusal decided away from any call (parsers): the error and its message. */
typedef struct http_fail {
    http_error error;
    char message[256];
} http_fail;
/* Fills f; returns -1, so parsers can `return http_fail_set(...)`. */
int http_fail_set(http_fail *f, http_error e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

typedef struct http_loop http_loop;
typedef struct http_call http_call;
typedef struct http_conn http_conn;
typedef struct http_cors http_cors;
typedef struct http_infer http_infer;
struct ssl_ctx_st; /* OpenSSL's SSL_CTX */

/* ---- the route table (routes.c) -------------------------------------------- */

/* Methods as a bit set. */
enum {
    HTTP_GET = 1 << 0,
    HTTP_POST = 1 << 1,
    HTTP_PUT = 1 << 2,
    HTTP_DELETE = 1 << 3,
};

/* Values the path's {placeholders} matched, each checked and decoded. */
typedef struct http_path_params {
    char name[256];    /* {name}: a model name, percent-decoded, valid UTF-8, no NUL */
    char version[72];  /* {version}: a version number; {ref}: a number or an alias */
    char id[72];       /* {id}: a job id as the client wrote it ("" when too long) */
    char alias[72];    /* {alias}: as the client wrote it ("" when too long) */
    char file[128];    /* {file}: a file name of an embedded page, [A-Za-z0-9._-], no leading dot */
} http_path_params;

typedef void http_handler(http_call *call);
typedef struct http_infer_ops http_infer_ops;

#define HTTP_SCOPE_OPEN ((guard_scopes)~0u)

/* What the OpenAPI document (openapi.c) says of a row's operation. Schema
 * names are those of openapi.c's components. */
typedef struct http_route_doc {
    const char *summary;   /* one line */
    const char *request;   /* the request body's schema; NULL: no body */
    /* The answers besides those every row of its kind gets (401 and 403 with
     * a scope, 400 and 413 with a body): "200=Prediction 404 422", a status
     * and its body's schema, or a media type ("200=text/plain"); a status
     * without one is the error shape. */
    const char *responses;
    const char *query;     /* its query parameters ("offset limit"); NULL: none */
} http_route_doc;

/* One row of the one route table: every path the server answers. */
typedef struct http_route {
    unsigned methods;            /* HTTP_GET ...; HEAD is answered wherever GET is */
    const char *pattern;         /* "/v1/models/{name}/predict"; {name} {version} {ref} {id} {alias} {file} */
    const char *label;           /* the metrics' endpoint label */
    guard_scopes scope;          /* what the API key needs (GUARD_SCOPE_ANY: any valid key);
                                    HTTP_SCOPE_OPEN: no key at all */
    http_handler *handler;       /* or, for inference endpoints: */
    const http_infer_ops *infer; /* the pipeline runs these (pipeline.c) */
    http_route_doc doc;          /* for GET /openapi.json */
} http_route;

extern const http_route http_routes[];
extern const size_t http_n_routes;
#define HTTP_LABEL_OTHER "other" /* answers no route matched */

/* Finds the route for the call's request and runs it: 404, 405 with
 * Allow, CORS preflights, the scope check, then the handler. */
void http_dispatch(http_call *call);

/* ---- server, loops, calls ----------------------------------------------- */

struct http_loop {
    http_server *server;
    int index;
    struct event_base *base;
    struct evhttp *http;
    struct evconnlistener *listener;
    struct evhttp_bound_socket *bound;  /* NULL once closed for the drain */
    int listening;                      /* listener enabled */
    struct event *control_event;        /* other threads: "re-read the listener state" */
    struct event *stop_event;           /* http_server_destroy: close the store connection, stop */
    uint64_t stop_deadline_us;          /* set by the first stop event: stop flushing then */
    pthread_t thread;
    /* Calls posted back by other threads (http_post). */
    pthread_mutex_t done_lock;
    http_call *done_head;
    struct event *done_event;
    /* Connections accepted by this loop (conn.c). */
    http_conn *conns;
    int n_conns;
    struct event *sweep_event;
    struct event *history_event;  /* loop 0 only: the console's history, sampled once a second */
    /* This loop's reference to the current API keyset (guard.h). */
    guard_keys_view keys_view;
    gateway_loop *gateway;              /* the LLM gateway's part of this loop; NULL: no gateway */
};

/* What parsers may accept (the server's limits). */
typedef struct http_limits {
    size_t max_text_chars; /* code points per text */
    size_t max_inputs;     /* texts per request */
} http_limits;

/* Metric series looked up once at start. */
typedef struct http_metrics {
    metric_family *requests;      /* prediction_requests_total{endpoint,status} */
    metric **latency;             /* prediction_latency_seconds{endpoint}, per route (http_n_routes) */
    metric *latency_other;        /* ... for answers no route matched */
    metric_family *model_errors;  /* model_errors_total{error_type} */
    metric *connections;          /* aiserve_http_connections */
    metric *in_flight;            /* aiserve_http_requests_in_flight */
    metric *shed;                 /* aiserve_requests_shed_total */
} http_metrics;

struct http_server {
    http_options opts;
    char host[256];
    char version[64];
    serving_repo *repo;
    metrics_registry *registry;
    http_metrics metrics;
    int port;
    int n_loops;
    http_loop *loops;
    double start_time;            /* wall clock */
    atomic_int draining;
    atomic_int in_flight;         /* requests received and not yet answered */
    atomic_int pending_jobs;      /* calls posted elsewhere and not yet back */
    atomic_int connections;
    atomic_int accept_paused;     /* listeners off: at max_connections */
    http_conn **conn_by_fd;       /* entries written by the fd's loop only */
    size_t n_conn_by_fd;
    struct ssl_ctx_st *tls;       /* HTTPS when set (tls.c); owned */
    http_cors *cors;              /* CORS allow-list (cors.c); owned */
    http_limits limits;           /* what a request's parser accepts (from opts) */
    http_limits batch_limits;     /* what a batch job's parser accepts (from opts) */
    obs_history *history;         /* the console's metrics, last 15 minutes (console.c); owned */
};

struct http_call {
    http_loop *loop;
    struct evhttp_request *req;   /* NULL once the connection died */
    struct evhttp_request *orphan_req; /* the request libevent let go of when the connection died; ours to free */
    const http_route *route;      /* NULL until routed, and when no route matched */
    http_path_params params;
    uint64_t start_us;
    char request_id[72];
    char method[8];
    char path[256];               /* for the log only; truncated */
    char client[64];
    char key_name[GUARD_NAME_MAX + 1]; /* the API key's name once known; "" otherwise */
    char key_tier[GUARD_NAME_MAX + 1]; /* that key's rate-limit tier */
    guard_scopes key_scopes;      /* that key's scopes; GUARD_SCOPE_ALL when no keys are configured (every
                                     endpoint is open); 0 on open routes of a server with keys */
    int status;                   /* the answer's, once sent */
    int discard;                  /* server stopping: free without answering */
    http_infer *infer;            /* inference endpoints: the pipeline's state (pipeline.c) */
    struct gateway_call *chat;    /* /v1/chat/completions: the gateway's call while it runs (chat.c) */
    struct chat_state *chat_state; /* ... and its own state (chat.c) */
    int streaming;                /* the answer's head is out; chunks follow (http_stream_*) */
    /* The client's connection closed while the call waited (req is NULL
     * from then on); NULL: nothing to do (the call is answered 499 when it
     * comes back). */
    void (*on_gone)(http_call *call);
    /* What the rate limit stage runs when it admits the call (http_admit). */
    void (*admitted)(http_call *call);
    /* What the loop runs when another thread posts the call back. */
    void (*on_posted)(http_call *call);
    void *posted_state;
    http_call *next_done;
};

/* Copies the string src into dst[cap], cut to fit, always terminated: the
 * per-request copies, without snprintf's format parsing. */
static inline void http_copy(char *dst, size_t cap, const char *src) {
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Writes v in decimal into buf (>= 21 bytes); returns buf. */
static inline char *http_format_int(long long v, char buf[24]) {
    char tmp[24];
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    int n = 0;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    int k = 0;
    if (v < 0)
        buf[k++] = '-';
    while (n)
        buf[k++] = tmp[--n];
    buf[k] = '\0';
    return buf;
}

/* The endpoint label a call is counted under. */
static inline const char *http_call_label(const http_call *call) {
    return call->route ? call->route->label : HTTP_LABEL_OTHER;
}

/* ---- the inference pipeline (pipeline.c) --------------------------------------
 *
 * Every inference endpoint has one shape: it supplies how to parse its
 * body, what besides the texts decides its answer (for the cache key), and
 * how to format the answer; pipeline.c runs the stages in order:
 *
 *   admit (rate limit) -> parse -> resolve version -> cache lookup or
 *   coalesce -> serving_predict -> store in the cache -> answer
 */

/* A request's inputs as an endpoint's parser read them. The texts point
 * into `body`, which the inputs own. */
typedef struct http_inputs {
    json_t *body;
    const char **texts;
    size_t *lens;
    size_t n;
    const char *model;   /* the model the body names (embeddings); NULL: the path's or the default */
    int single;          /* seed {"text": ...}: one prediction object instead of a list */
    const char *field;   /* how errors name the texts: "text", or a list's name ("texts[3]") */
    int outputs;         /* KServe: 1 label, 2 probabilities */
    int base64;          /* embeddings: vectors as base64 */
    int normalize;       /* TEI embed: L2-normalised vectors */
    const char *query;   /* rerank: each text is scored paired with it; NULL: single texts */
    size_t query_len;
    int shape;           /* rerank: TEI's or Cohere's answer */
    size_t top_n;        /* rerank: results in the answer */
    int raw_scores;      /* rerank: the logit instead of its sigmoid */
    int return_text;     /* rerank: each result carries its text */
    const char *prompt_name; /* embeddings, TEI embed: the named prompt asked for; NULL: the model's default */
} http_inputs;

struct http_infer_ops {
    serving_task task;
    int allow_cascade;   /* requests that name no version take the model's cascade */
    int pairs;           /* a cross-encoder's scores of (query, text) pairs: a model with one label */
    /* Reads body (a parsed JSON value) into in (taking no reference: the
     * pipeline keeps the body). 0, or -1 with fail filled. */
    int (*parse)(const http_limits *limits, json_t *body, http_inputs *in, http_fail *fail);
    /* Optional: adapts the inputs to the version that answers (r->first),
     * after blank texts were refused and before the cache key is made
     * (texts it changes are the ones cached and computed). 0, or -1 with
     * fail filled. */
    int (*resolved)(http_inputs *in, const serving_request *r, http_fail *fail);
    /* What else decides the answer for the same texts and version: written
     * into buf[cap]; returns the length (0: nothing). */
    size_t (*cache_params)(const http_inputs *in, const serving_request *r, char *buf, size_t cap);
    /* The answer's body (malloc'd JSON text), or NULL when out of memory. */
    char *(*answer)(const http_inputs *in, const serving_request *r);
};

extern const http_infer_ops http_seed_predict_ops; /* predict.c */
extern const http_infer_ops http_kserve_infer_ops; /* kserve.c */
extern const http_infer_ops http_embeddings_ops;   /* embeddings.c: POST /v1/embeddings */
extern const http_infer_ops http_tei_embed_ops;    /* embeddings.c: POST /embed */
extern const http_infer_ops http_tei_rerank_ops;   /* rerank.c: POST /rerank */
extern const http_infer_ops http_rerank_ops;       /* rerank.c: POST /v1/rerank */

/* The route handler of every inference row: runs call->route->infer. */
void http_infer_handler(http_call *call);
void http_infer_free(http_infer *infer);
/* For the access log: the model, version and largest batch of an answered
 * inference call; 0 when it has none. */
int http_infer_describe(const http_infer *infer, const char **model, long *version, int *batch_size);

/* The request's query parameters, into params (the caller clears them
 * with evhttp_clear_headers): 0, or -1 when the query is not name=value
 * pairs. (inputs.c) */
struct evkeyvalq;
int http_query_parse(http_call *call, struct evkeyvalq *params);
/* A whole number parameter (digits only, at most max), dflt when absent;
 * sets *bad when it is not one. */
uint64_t http_query_number(const struct evkeyvalq *params, const char *name, uint64_t dflt, uint64_t max,
                           int *bad);

#define HTTP_FIELD_ITSELF ((size_t)-1) /* http_check_text: the field is one string, not a list */
/* Checks one text (a string, not blank, within the limit) at field
 * ("text") or field[index] ("texts[3]"): 0, or -1 with fail filled. */
int http_check_text(const http_limits *limits, json_t *value, const char *field, size_t index, http_fail *fail);
/* inputs.c: 422 empty_text (0, or -1 with fail) when a text is blank for
 * the version that will read it: nothing but what its tokenizer drops
 * (engine_text_is_blank), so the model would see an empty input. */
int http_check_blank(const http_inputs *in, const serving_version *v, http_fail *fail);
/* inputs.c: data[len] as any JSON value (NULL with fail: 400 invalid_json
 * or invalid_utf8). The caller owns the value. */
json_t *http_parse_json(const char *data, size_t len, http_fail *fail);
/* inputs.c: points in->texts at the one string `one`, or at the strings of
 * the array list, each checked (field names them in errors). 0, or -1. */
int http_inputs_collect(const http_limits *limits, json_t *one, json_t *list, const char *field, http_inputs *in,
                        http_fail *fail);
/* inputs.c: v as the answers' JSON text (compact, 9 significant digits:
 * one serialisation, so a cache hit is byte-identical to the answer it
 * stored); malloc'd, NULL when out of memory. Takes v. */
char *http_json_text(json_t *v);
/* inputs.c: ref names a version: a number (digits, no leading zero, at
 * most 12), or with alias_ok an alias name (serving_alias_name_valid). The
 * one rule for paths ({version}, {ref}) and X-Model-Version. */
int http_version_ref_valid(const char *ref, int alias_ok);
/* inputs.c: the boolean body[name] into *out: dflt when absent or null;
 * anything but true or false is 422 (-1 with fail filled). */
int http_body_flag(json_t *body, const char *name, int dflt, int *out, http_fail *fail);
/* inputs.c: frees what in holds and zeroes it. */
void http_inputs_free(http_inputs *in);
/* pipeline.c: the client asked for a fresh answer (Cache-Control or
 * Pragma: no-cache). */
int http_wants_fresh(struct evhttp_request *req);
/* Whether s (n bytes) is valid UTF-8 (for strings from the URL). */
int http_is_valid_utf8(const unsigned char *s, size_t n);

/* ---- handlers ---------------------------------------------------------------- */

/* chat.c: POST /v1/chat/completions through the LLM gateway;
 * http_chat_free frees what it keeps in the call (http_call_free calls it). */
void http_chat(http_call *call);
void http_chat_free(http_call *call);
/* chat.c: 1 when the server has an LLM gateway; else answers 404
 * gateway_not_configured and returns 0. */
int http_gateway_present(http_call *call);

/* budgets.c: GET /v1/gateway/budgets, what the caller's key (with scope
 * admin: every configured key's) gateway budgets have left. */
void http_gateway_budgets(http_call *call);

/* health.c: ready to serve: every model has a version available, or (a
 * server that is only an LLM gateway) its empty repository was read. The
 * one readiness rule of /health, /health/ready and /v2/health/ready. */
int http_server_ready(http_server *s);

/* health.c: /health, /health/live, /health/ready, /metrics, /v1/models[/{name}]. */
void http_health(http_call *call);
void http_health_live(http_call *call);
void http_health_ready(http_call *call);
void http_metrics_page(http_call *call);
void http_models(http_call *call);
void http_model(http_call *call);
json_t *http_split_json(const serving_split *split);
json_t *http_cascade_json(const serving_cascade *c); /* {"first", "then", "threshold"}, {} when off */
json_t *http_aliases_json(const serving_alias *aliases, size_t n);

/* kserve.c: /v2 metadata. */
void http_kserve_server(http_call *call);
void http_kserve_live(http_call *call);
void http_kserve_ready(http_call *call);
void http_kserve_model(http_call *call);
void http_kserve_model_ready(http_call *call);

/* Page sizes of the batch listings: GET /v1/batch/{id}/results and GET
 * /v1/batch (batch.c checks them, openapi.c documents them). */
#define HTTP_RESULTS_PAGE_DEFAULT 1000
#define HTTP_RESULTS_PAGE_MAX 10000
#define HTTP_JOBS_PAGE_DEFAULT 20
#define HTTP_JOBS_PAGE_MAX 100

/* batch.c: /batch_predict, /batch_result/{id}, /v1/batch[...]. The body
 * parser is pure (data[len]: JSON, or JSON Lines when jsonl; the seed's
 * list or {"texts"}, or /v1/batch's {"model", "inputs"}): 0 with in filled
 * (in->body owns the texts), or -1 with fail. */
int http_batch_parse(const http_limits *limits, const char *data, size_t len, int jsonl, jobs_kind kind,
                     http_inputs *in, http_fail *fail);
void http_batch_seed_submit(http_call *call);
void http_batch_seed_result(http_call *call);
void http_batch_submit(http_call *call);
void http_batch_list(http_call *call);
void http_batch_get(http_call *call);
void http_batch_cancel(http_call *call);
void http_batch_results(http_call *call);

/* admin.c: /admin/models/{name}/... (scope admin). */
void http_admin_traffic_get(http_call *call);
void http_admin_traffic_put(http_call *call);
void http_admin_aliases_get(http_call *call);
void http_admin_alias_put(http_call *call);
void http_admin_alias_delete(http_call *call);
void http_admin_shadow(http_call *call);
void http_admin_cascade(http_call *call);
void http_admin_version_load(http_call *call);
void http_admin_version_unload(http_call *call);

/* openapi.c: GET /openapi.json (the OpenAPI 3.1 document made from the
 * route table). */
void http_openapi(http_call *call);

/* console.c: what the operator console reads besides the API: the
 * history of its metrics (GET /v1/metrics/history), sampled by loop 0. */
obs_history *http_console_history(metrics_registry *r);
void http_console_tick(evutil_socket_t fd, short what, void *arg); /* the loop's history_event */
void http_history(http_call *call);
void http_root(http_call *call); /* GET /: 302 to /ui */

/* assets.c: the embedded pages' files (GET /docs and /docs/{file}), by the
 * row's pattern and {file}. */
void http_static(http_call *call);

/* routes.c: the API key check (answers 401/403 and returns 0 when the key
 * lacks `required`). */
int http_authorized(http_call *call, guard_scopes required);

/* ---- replies (reply.c) ------------------------------------------------------ */

void http_reply_json(http_call *call, int status, json_t *body); /* takes body */
/* A streamed answer (server-sent events): the head with content_type (-1
 * when the client is gone), chunks as they come, then the end, which
 * counts, logs and frees the call like any answer. */
int http_stream_start(http_call *call, int status, const char *content_type);
void http_stream_write(http_call *call, const char *data, size_t len);
void http_stream_end(http_call *call);
/* The rate limit stage of every model endpoint (pipeline.c): answers 429
 * (or 503) itself, or runs call->admitted. slot: the caller's storage for
 * the limiter's pending request, alive until then. */
void http_admit(http_call *call, guard_ratelimit_req *slot, void (*admitted)(http_call *call));
void http_reply_text(http_call *call, int status, const char *content_type, const char *text,
                     size_t len);
/* The same with a body already in a buffer (taken; NULL: empty). */
void http_reply_buffer(http_call *call, int status, const char *content_type, struct evbuffer *body);
void http_reply_error(http_call *call, http_error e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void http_reply_fail(http_call *call, const http_fail *fail);
/* Another module's status as an error answer (http_error_of), with message. */
void http_reply_status(http_call *call, status_module module, int status, const char *message);
/* The request body as JSON (any value): the body-size limit (413), then
 * JSON and UTF-8 (400). NULL after answering. The caller owns the value. */
json_t *http_read_json(http_call *call);
/* The error object of a body (with "detail") as JSON, for answers that
 * carry an error inside another status (/health's 503). */
json_t *http_error_body(http_call *call, http_error e, const char *message);
/* Adds a response header before the reply (e.g. Retry-After). */
void http_add_header(http_call *call, const char *name, const char *value);
void http_call_free(http_call *call);
void http_request_id_make(struct evhttp_request *req, char *out, size_t cap);
/* The call's request header, or NULL. */
const char *http_header(http_call *call, const char *name);

/* ---- connections (conn.c) ------------------------------------------------- */

struct bufferevent *http_conn_bev_create(struct event_base *base, void *loop);
void http_conn_request_started(http_loop *loop, struct evhttp_request *req);
void http_conn_sweep(evutil_socket_t fd, short what, void *loop);
int http_conn_table_init(http_server *s);
void http_conn_release_all(http_loop *loop);
int http_conn_unsent(http_loop *loop);

/* reply.c: a whole HTTP response (head and JSON error body) for a
 * connection evhttp has not parsed a request from (limits caught in
 * conn.c), written into out[cap]; counted and logged like any answer.
 * Returns its length, 0 when it does not fit. conn.c sends it. */
size_t http_raw_error_format(http_loop *loop, http_error e, const char *message, char *out, size_t cap);

/* tls.c: HTTPS through libevent's OpenSSL bufferevents. */
/* Loads a PEM certificate chain and its private key into a new server
 * context (TLS 1.2+). Returns 0, or -1 with a message naming the file and
 * OpenSSL's error in err. Any thread; the context is freed with
 * http_tls_destroy. */
int http_tls_create(const char *cert_file, const char *key_file, struct ssl_ctx_st **out, char *err,
                    size_t err_len);
void http_tls_destroy(struct ssl_ctx_st *ctx);
/* An accepting OpenSSL bufferevent for one connection (evhttp sets its
 * socket); NULL when out of memory. Loop thread. */
struct bufferevent *http_tls_bev_new(struct ssl_ctx_st *ctx, struct event_base *base);
/* Whether the handshake finished. */
int http_tls_is_established(struct bufferevent *bev);
/* Best effort: writes n bytes as one TLS record straight to the
 * connection, when its handshake is done and no answer is being written.
 * Returns what SSL_write returned, or -1. Loop thread. */
int http_tls_send(struct bufferevent *bev, const void *data, size_t n);

/* cors.c: the CORS allow-list and preflights. */
/* Parses cors.allowed_origins (comma-separated origins, or "*"; "" or
 * NULL allows none). Returns 0 (*out owned, freed with http_cors_destroy),
 * or -1 with a message naming the bad entry. */
int http_cors_create(const char *allowed_origins, int64_t max_age_s, http_cors **out, char *err,
                     size_t err_len);
void http_cors_destroy(http_cors *cors);
/* 1 when the request is a CORS preflight (OPTIONS with Origin and
 * Access-Control-Request-Method). */
int http_cors_is_preflight(struct evhttp_request *req);
/* Answers a preflight on a route that takes `methods` ("GET, POST"), before
 * API keys are checked (browsers send none). */
void http_cors_preflight(http_call *call, const char *methods);
/* Adds the CORS response headers call's answer needs (reply.c, for every
 * answer). */
void http_cors_add_headers(http_call *call);

/* head_scan.c: facts from a raw request head (n bytes, not NUL-terminated). */
/* The Content-Length value; -1 when there is none; -2 when two disagree or
 * one does not parse. */
int64_t http_head_content_length(const char *head, size_t n);
/* 1 when a Transfer-Encoding header names chunked. */
int http_head_is_chunked(const char *head, size_t n);
/* 1 when n bytes are a plausible start of a chunk-size line. */
int http_chunk_size_line_ok(const char *p, size_t n);

/* ---- server.c --------------------------------------------------------------- */

uint64_t http_now_us(void);
/* Loop thread: enables, disables or closes this loop's listener as the
 * server's accept_paused and draining flags say. */
void http_loop_apply_listener_state(http_loop *loop);
/* Any thread: hands call back to its loop, which runs call->on_posted. The
 * caller counted it in pending_jobs when it sent the call away. */
void http_post(http_call *call);

#endif /* AISERVE_HTTP_INT_H */
