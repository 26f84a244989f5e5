/*
 * http_int.h - what the HTTP module's files share: the server and loop
 * structs, the per-request call record, the error table and the reply
 * helpers. Not a public header.
 *
 * Ownership: a call is created by the loop that received the request and is
 * freed by that loop after its answer was written (or its connection died).
 * While a call waits for the scheduler, the batcher thread only touches its
 * job and then posts the call to the loop's done list.
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

/* One list generates the error codes with their HTTP status and OpenAI
 * error type (DESIGN.md's status table). */
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
    X(RATE_LIMITED, 429, "rate_limit_error", "rate_limited")                       \
    X(TOO_MANY_JOBS, 429, "rate_limit_error", "too_many_jobs")                     \
    X(JOB_NOT_FOUND, 404, "invalid_request_error", "job_not_found")                \
    X(JOB_FINISHED, 409, "invalid_request_error", "job_finished")                  \
    X(BATCH_DISABLED, 503, "service_unavailable_error", "batch_disabled")          \
    X(RATE_LIMITER_UNAVAILABLE, 503, "service_unavailable_error", "rate_limiter_unavailable") \
    X(JOB_QUEUE_UNAVAILABLE, 503, "service_unavailable_error", "job_queue_unavailable") \
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

typedef struct http_loop http_loop;
typedef struct http_call http_call;
typedef struct http_conn http_conn;
typedef struct http_cors http_cors;
typedef struct http_cascade http_cascade;
struct ssl_ctx_st; /* OpenSSL's SSL_CTX */

/* Endpoint label values: route templates, never the client's path. */
typedef enum http_endpoint {
    EP_PREDICT,
    EP_MODEL_PREDICT,
    EP_MODEL_VERSION_PREDICT,
    EP_MODELS,
    EP_EMBEDDINGS,
    EP_MODEL,
    EP_HEALTH,
    EP_HEALTH_LIVE,
    EP_HEALTH_READY,
    EP_METRICS,
    EP_BATCH_PREDICT,
    EP_BATCH_RESULT,
    EP_BATCHES,
    EP_BATCH,
    EP_BATCH_RESULTS,
    EP_V2,
    EP_V2_MODEL,
    EP_V2_INFER,
    EP_ADMIN_TRAFFIC,
    EP_ADMIN_ALIASES,
    EP_ADMIN_SHADOW,
    EP_ADMIN_CASCADE,
    EP_ADMIN_VERSION,
    EP_OTHER,
    EP_COUNT
} http_endpoint;
extern const char *const http_endpoint_names[EP_COUNT];

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
    /* Calls whose job finished, posted by batcher threads. */
    pthread_mutex_t done_lock;
    http_call *done_head;
    struct event *done_event;
    /* Connections accepted by this loop (conn.c). */
    http_conn *conns;
    int n_conns;
    struct event *sweep_event;
    /* This loop's reference to the current API keyset (guard.h). */
    guard_keys_view keys_view;
};

/* Metric series looked up once at start. */
typedef struct http_metrics {
    metric_family *requests;      /* prediction_requests_total{endpoint,status} */
    metric *latency[EP_COUNT];    /* prediction_latency_seconds{endpoint} */
    metric_family *model_errors;  /* model_errors_total{error_type} */
    metric_family *shadow;        /* aiserve_shadow_predictions_total{model,version,result} */
    metric_family *cascade;       /* aiserve_cascade_texts_total{model,result} */
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
    atomic_int pending_jobs;      /* calls the scheduler still holds */
    atomic_int connections;
    atomic_int accept_paused;     /* listeners off: at max_connections */
    http_conn **conn_by_fd;       /* entries written by the fd's loop only */
    size_t n_conn_by_fd;
    struct ssl_ctx_st *tls;       /* HTTPS when set (tls.c); owned */
    http_cors *cors;              /* CORS allow-list (cors.c); owned */
};

struct http_call {
    http_loop *loop;
    struct evhttp_request *req;   /* NULL once the connection died */
    http_endpoint endpoint;
    uint64_t start_us;
    char request_id[72];
    char method[8];
    char path[256];               /* for the log only; truncated */
    char client[64];
    char key_name[GUARD_NAME_MAX + 1]; /* the API key's name once known; "" otherwise */
    char key_tier[GUARD_NAME_MAX + 1]; /* that key's rate-limit tier */
    /* Rate limit and response cache (protect.c). */
    char model_name[256];         /* /v1/models/{name}/predict: the name asked for */
    int has_model_name;
    guard_ratelimit_req ratelimit_req;
    int cache_role;               /* HTTP_CACHE_*: how this prediction uses the cache */
    guard_cache_key cache_key;
    guard_cache_req cache_req;
    guard_cache_waiter waiter;    /* follower: how the leader's outcome reaches it */
    guard_cache_flight *flight;   /* leader: the flight to publish (may be NULL) */
    guard_cache_outcome *outcome; /* follower: the leader's outcome, once posted */
    int status;
    /* Prediction state. */
    json_t *body;                 /* parsed request; texts point into it */
    serving_version *version;
    serving_job job;
    const char **texts;
    size_t *lens;
    float *probs;
    int single;                   /* {"text": ...} rather than {"texts": [...]} */
    int kserve;                   /* an Open Inference Protocol infer request (kserve.c) */
    int embed;                    /* a /v1/embeddings request (embeddings.c) */
    int embed_base64;             /* its vectors as base64 */
    int kserve_outputs;           /* its outputs: 1 label, 2 probabilities */
    long want_version;            /* the version the path names; 0: the newest */
    char version_ref[72];         /* the version or alias the path or X-Model-Version names; "" none */
    http_cascade *cascade;        /* the model's cascade, when this request takes it (cascade.c) */
    serving_shadow shadow;        /* the model's shadow when the version was chosen (shadow.c) */
    int discard;                  /* server stopping: free without answering */
    http_call *next_done;
    /* Set when the call was posted to its loop for something other than a
     * prediction (a batch job being stored): the loop calls it instead of
     * http_finish_prediction. */
    void (*on_posted)(http_call *call);
    void *posted_state;
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

/* The index of the largest of p[0..k): the predicted label. */
static inline int http_best_label(const float *p, int k) {
    int best = 0;
    for (int j = 1; j < k; j++)
        if (p[j] > p[best])
            best = j;
    return best;
}

/* routes.c */
void http_route(http_call *call);
/* The request's key may use an endpoint that needs `required`: 1, or 0
 * after answering 401/403. */
int http_authorized(http_call *call, guard_scopes required);
/* The request's method is `want`: 1, or 0 after answering 405 with Allow. */
int http_method_is(http_call *call, enum evhttp_cmd_type want);
/* Checks one text of a request (a string, not blank, within the length
 * limit); field "text", or a list's name with index i ("texts[3]").
 * Returns 0, or -1 after answering 422. */
int http_check_text(http_call *call, json_t *value, const char *field, size_t index);

/* The prediction path for a model by name (NULL: the default model): rate
 * limit, then http_predict_admitted. */
void http_predict_named(http_call *call, const char *model_name);

/* embeddings.c: /v1/embeddings. read: the body into call (texts, model,
 * format); 0, or -1 after answering. answer: the response body (malloc'd)
 * or NULL. params: the cache parameters. */
int http_embeddings_read(http_call *call, json_t *body, size_t *n);
char *http_embeddings_answer(http_call *call);
size_t http_embeddings_params(http_call *call, char *buf, size_t cap);

/* kserve.c: /v2 (Open Inference Protocol). http_route_kserve returns 1 when
 * path is one of its paths (answered, or on the prediction path). */
int http_route_kserve(http_call *call, const char *path);
const char *http_kserve_route_methods(const char *path, http_endpoint *ep);
/* Reads an infer request's texts into call (texts, lens; *n); 0, or -1
 * after answering the error. */
int http_kserve_read_inputs(http_call *call, json_t *body, size_t *n);
/* The cache parameters of an infer request into buf; returns the length. */
size_t http_kserve_params(http_call *call, char *buf, size_t cap);
/* The infer response body for a computed call (malloc'd), or NULL (ENOMEM). */
char *http_kserve_answer(http_call *call);

/* cascade.c. begin: the request takes the cascade cfg (its version, the
 * first stage, is acquired already).
 * escalate: after the first stage; 1 when a second job went out (the call
 * comes back through the done list). returned: 1 when the call came back
 * from that second job. result: text i's label, confidence and version.
 * used: some text was answered by the second version. */
void http_cascade_begin(http_call *call, const serving_cascade *cfg);
size_t http_cascade_params(http_call *call, char *buf, size_t cap);
int http_cascade_escalate(http_call *call);
int http_cascade_returned(http_call *call);
void http_cascade_result(http_call *call, size_t i, const char **label, double *confidence, long *version);
int http_cascade_used(const http_call *call);
void http_cascade_free(http_cascade *c);

/* shadow.c: after a computed prediction (call->probs), maybe send a copy
 * to the model's shadow version as background work, to be compared. */
void http_shadow_maybe(http_call *call);

/* admin.c: /admin/... (scope admin). Returns 1 when path is one of them. */
int http_route_admin(http_call *call, const char *path);
const char *http_admin_route_methods(const char *path, http_endpoint *ep);
/* routes.c: a split as {"1": 80, "2": 20} ({} for none); aliases as
 * {"production": "2"}. */
json_t *http_split_json(const serving_split *split);
json_t *http_aliases_json(const serving_alias *aliases, size_t n);

/* batch.c: /batch_predict, /batch_result/{id}, /v1/batch[...]. Returns 1
 * when path is one of them (and the call was answered), else 0. */
int http_route_batch(http_call *call, const char *path);
/* For CORS preflights: the methods a batch path takes, or NULL. */
const char *http_batch_route_methods(const char *path, http_endpoint *ep);
void http_finish_prediction(http_call *call);
/* The prediction path after the rate limit: reads and validates the body,
 * borrows the model version, then http_predict_dispatch. */
void http_predict_admitted(http_call *call);
/* Queues call's texts on its version's scheduler (answered later through
 * the done list), or answers the refusal (503) at once. */
void http_predict_submit(http_call *call);

/* protect.c: rate limiting and the response cache on the prediction path.
 * Every prediction answer goes through http_prediction_answer or
 * http_prediction_fail (or a cache hit), so a leader always publishes to
 * its followers. */
enum { HTTP_CACHE_NONE = 0, HTTP_CACHE_BYPASS, HTTP_CACHE_LEADER, HTTP_CACHE_FOLLOWER };
#define HTTP_FAIL_RETRY_AFTER 1 /* flag: the answer carries Retry-After: 1 */
/* Rate-limits call (X-RateLimit-* headers; 429 over the limit), then
 * http_predict_admitted. */
void http_limit_request(http_call *call);
/* With a version borrowed and texts checked: a cache hit, a follower of an
 * identical request in flight, or http_predict_submit. */
void http_predict_dispatch(http_call *call);
/* The model's answer, as its JSON text (body, malloc'd, taken): stored in
 * the cache, given to followers, sent. */
void http_prediction_answer(http_call *call, char *body, size_t len);
/* A failed prediction: given to followers (never cached), sent. */
void http_prediction_fail(http_call *call, http_error e, int flags, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A follower whose outcome was posted to its loop: answers it. */
void http_finish_follower(http_call *call);
/* The methods path answers ("GET", "POST") and its endpoint label, or NULL
 * when no route matches (CORS preflights). */
const char *http_route_methods(const char *path, http_endpoint *ep);

/* reply.c */
void http_reply_json(http_call *call, int status, json_t *body); /* takes body */
void http_reply_text(http_call *call, int status, const char *content_type, const char *text,
                     size_t len);
void http_reply_error(http_call *call, http_error e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Adds a response header before the reply (e.g. Retry-After). */
void http_add_header(http_call *call, const char *name, const char *value);
void http_call_free(http_call *call);
void http_request_id_make(struct evhttp_request *req, char *out, size_t cap);

/* conn.c */
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
/* Answers call when it is a CORS preflight on a known route (before API
 * keys are checked) and returns 1; returns 0 for anything else. */
int http_cors_preflight(http_call *call, const char *path);
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

/* server.c */
uint64_t http_now_us(void);
/* Loop thread: enables, disables or closes this loop's listener as the
 * server's accept_paused and draining flags say. */
void http_loop_apply_listener_state(http_loop *loop);
/* serving_job.on_done for calls: posts the call to its loop (batcher thread). */
void http_post_done(serving_job *job, void *user);

#endif /* AISERVE_HTTP_INT_H */
