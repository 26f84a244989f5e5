/*
 * console.c - what the operator console (GET /ui, and GET / that redirects
 * there) reads besides the API itself: GET /v1/metrics/history, the last 15 minutes of the metrics its
 * charts draw, one sample a second, kept in memory (obs_history) so the
 * charts have history the moment the page opens, without Prometheus.
 *
 * The history is sampled by a timer on loop 0 (http_console_tick); the
 * handler runs on any loop (obs_history_json takes the history's lock).
 * Memory is bounded by HISTORY_SECONDS x HISTORY_MAX_SERIES whatever the
 * traffic, and so is the answer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "http_int.h"

#define HISTORY_SECONDS 900
#define HISTORY_MAX_SERIES 384

/* The families the console draws (docs/console.md, docs/metrics.md). */
static const char *const history_families[] = {
    "prediction_requests_total",         "prediction_latency_seconds",
    "aiserve_requests_shed_total",       "aiserve_http_requests_in_flight",
    "aiserve_queue_depth",               "aiserve_batch_size",
    "aiserve_inference_seconds",         "aiserve_cache_requests_total",
    "aiserve_predictions_total",         "aiserve_prediction_confidence",
    "aiserve_shadow_predictions_total",  "aiserve_cascade_texts_total",
    "aiserve_batch_queue_inputs",        "aiserve_batch_inputs_processed_total",
    "aiserve_llm_requests_total",        "aiserve_llm_upstream_seconds",
    "aiserve_llm_cost_usd_total",        "aiserve_llm_tokens_total",
    "aiserve_llm_fallbacks_total",       "aiserve_llm_breaker_state",
    "aiserve_llm_budget_refusals_total",
    "process_cpu_seconds_total",         "process_resident_memory_bytes",
};

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* the page draws wall-clock times */
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

obs_history *http_console_history(metrics_registry *r) {
    obs_history *h = obs_history_create(r, history_families,
                                        (int)(sizeof history_families / sizeof history_families[0]),
                                        HISTORY_SECONDS, HISTORY_MAX_SERIES);
    /* The first sample, before any request: what comes after it counts. */
    obs_history_tick(h, wall_ms());
    return h;
}

void http_console_tick(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    http_server *s = arg;
    obs_history_tick(s->history, wall_ms());
}

/* ?since=<ms>&families=<name,name>: 1, or 0 when a value is malformed. */
static int history_query(http_call *call, int64_t *since, char *families, size_t cap) {
    struct evkeyvalq params;
    int bad = http_query_parse(call, &params) != 0;
    *since = (int64_t)http_query_number(&params, "since", 0, INT64_MAX, &bad);
    const char *v = evhttp_find_header(&params, "families");
    size_t n = v ? strlen(v) : 0;
    if (!bad && n >= cap) /* also refuses what would not fit */
        bad = 1;
    if (!bad && strspn(v ? v : "", "abcdefghijklmnopqrstuvwxyz0123456789_,") != n)
        bad = 1;
    families[0] = '\0';
    if (!bad && v)
        memcpy(families, v, n + 1);
    evhttp_clear_headers(&params);
    return !bad;
}

void http_history(http_call *call) {
    int64_t since;
    char families[1024];
    if (!history_query(call, &since, families, sizeof families)) {
        http_reply_error(call, HTTP_ERR_INVALID_REQUEST,
                         "since must be a time in milliseconds since the epoch and families a comma-separated "
                         "list of metric names");
        return;
    }
    size_t len = 0;
    char *text = obs_history_json(call->loop->server->history, since, families, &len);
    if (!text) {
        http_reply_error(call, HTTP_ERR_INTERNAL, "out of memory");
        return;
    }
    http_add_header(call, "Cache-Control", "no-store");
    http_reply_text(call, 200, "application/json", text, len);
    free(text);
}

void http_root(http_call *call) {
    http_add_header(call, "Location", "/ui");
    http_reply_buffer(call, 302, NULL, NULL);
}
