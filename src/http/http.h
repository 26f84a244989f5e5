/*
 * http.h - the HTTP front end's one public header: aiserve's API served by
 * libevent's evhttp, one event loop per thread, all loops sharing the port
 * through SO_REUSEPORT.
 *
 * Lifecycle:
 *
 *     http_server_create -> http_server_start -> (serving)
 *         -> http_server_stop_accepting -> (wait for in-flight to reach 0)
 *         -> http_server_destroy
 *
 * A request never holds a thread while it waits for inference: the loop
 * hands the texts to the model version's scheduler and goes on; the batcher
 * posts the finished job back to the loop that owns the connection, which
 * writes the answer.
 *
 * Threads: create, start, drain and destroy from one controlling thread (the
 * CLI's main thread); the server runs its own loop threads.
 */
#ifndef AISERVE_HTTP_H
#define AISERVE_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "gateway.h"
#include "guard.h"
#include "jobs.h"
#include "obs.h"
#include "serving.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct http_options {
    const char *host;            /* address to bind, e.g. "127.0.0.1" or "0.0.0.0"; copied */
    int port;                    /* 0: any free port (see http_server_port) */
    int n_threads;               /* event loops; >= 1 */
    int max_connections;         /* open client connections over all loops */
    size_t max_body_bytes;       /* larger bodies: 413 */
    size_t max_header_bytes;     /* larger request heads: 431 */
    int64_t read_timeout_ms;     /* a request must arrive whole within this */
    int64_t idle_timeout_ms;     /* keep-alive connections idle this long are closed */
    int64_t request_timeout_ms;  /* deadline from arrival to answer: 504 */
    int max_text_chars;          /* code points per text: 422 above */
    int max_inputs;              /* texts per request: 422 above */
    int access_log;              /* one JSON line per request */
    const char *version;         /* aiserve version, for /health and build info */
    guard_keys *keys;            /* API keys; borrowed, must outlive the server; NULL: open */
    guard_ratelimit *ratelimit;  /* rate limits on the model endpoints; borrowed; NULL: none */
    guard_cache *cache;          /* response cache and coalescing; borrowed; NULL: none */
    /* A remote store (Redis) the limiter and the cache use: each loop opens
     * its connection to it at start (kv_attach) and closes it on its own
     * thread at shutdown (kv_detach); /health reports "degraded" with the
     * reason while it cannot be reached. Borrowed; NULL: none. */
    kv_store *shared_store;
    jobs *jobs;                  /* batch jobs (/batch_predict, /v1/batch); borrowed; NULL: 503 batch_disabled */
    gateway *gateway;            /* the LLM gateway (/v1/chat/completions); borrowed; NULL: 404 gateway_not_configured */
    size_t max_batch_inputs;     /* inputs per batch job: 422 above */
    /* Read by http_server_create only: */
    const char *tls_cert_file;   /* PEM certificate chain; with tls_key_file: HTTPS. NULL or "": HTTP */
    const char *tls_key_file;    /* PEM private key matching the certificate */
    const char *cors_allowed_origins; /* comma-separated origins, or "*"; NULL or "": none */
    int64_t cors_max_age_s;      /* Access-Control-Max-Age on preflight answers */
} http_options;

typedef struct http_server http_server;

/* Makes the server (nothing bound yet). repo and metrics are borrowed and
 * must outlive the server. Returns 0, or -1 with a message in err. */
int http_server_create(const http_options *opts, serving_repo *repo, metrics_registry *metrics,
                       http_server **out, char *err, size_t err_len);

/* Binds the port and starts the loop threads. Returns 0 or -1 with err. */
int http_server_start(http_server *s, char *err, size_t err_len);

/* The port actually bound (useful with port 0). */
int http_server_port(const http_server *s);

/* Graceful stop, first half: stop accepting connections; requests that
 * still arrive on open connections are served with "Connection: close".
 * The caller then waits for http_server_in_flight to reach 0 (bounded by
 * its drain timeout) before http_server_destroy. */
void http_server_stop_accepting(http_server *s);

/* Requests received and not yet answered. Any thread. */
int http_server_in_flight(const http_server *s);

/* Stops the loops, closes every connection, frees. NULL is fine. Requests
 * still pending are dropped (their jobs finish and are discarded). */
void http_server_destroy(http_server *s);

#ifdef __cplusplus
}
#endif

#endif /* AISERVE_HTTP_H */
