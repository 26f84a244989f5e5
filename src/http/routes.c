/*
 * routes.c - the endpoints: which path and method go where, request
 * validation, and turning serving results into the API's JSON shapes.
 *
 *   POST /predict                     {"text"} or {"texts"}, default model
 *   POST /v1/models/{name}/predict    the same, named model
 *   GET  /v1/models, /v1/models/{name}
 *   GET  /health, /health/live, /health/ready
 *   GET  /metrics
 *
 * API keys (guard.h) are checked here, once the route is known and before
 * the method or the body: /predict and /v1/models/{name}/predict need the
 * `predict` scope, the rest of /v1/models any valid key; /health* and
 * /metrics are open, and so is everything when no keys are configured.
 *
 * The prediction path, in order: API key, method, rate limit
 * (protect.c: http_limit_request), body and texts, model version, then
 * the response cache and coalescing (protect.c: http_predict_dispatch),
 * and only on a miss the scheduler (http_predict_submit). Every answer of
 * that path goes through protect.c (http_prediction_answer / _fail), so a
 * request that others coalesced onto always tells them how it went.
 *
 * Validation happens here, before anything is queued: the body must be JSON
 * (jansson rejects invalid UTF-8 and nesting deeper than 2048), the schema is
 * checked field by field with a message naming the field, and limits (body
 * size, header size, text length in code points, inputs per request) are
 * enforced with the statuses of DESIGN.md's table.
 *
 * Loop thread only.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

#include "http_int.h"

static const char *method_name(enum evhttp_cmd_type m) {
    switch (m) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    }
    return "OTHER";
}

/* For the short strings that come from the URL (paths, decoded model
 * names); bodies are checked by jansson as it parses. */
static int is_valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) { len = 1; cp = c; }
        else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
        else return 0;
        if (i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

/* ---- health and metrics ---------------------------------------------- */

static json_t *loaded_models_json(http_server *s, int *any_loaded) {
    serving_version_status *list = NULL;
    size_t n = 0;
    json_t *models = json_object();
    *any_loaded = 0;
    if (serving_repo_list(s->repo, &list, &n) != 0)
        return models;
    for (size_t i = 0; i < n; i++) {
        if (list[i].state != SERVING_STATE_AVAILABLE)
            continue;
        char ver[32];
        snprintf(ver, sizeof ver, "%ld", list[i].version);
        json_object_set_new(models, list[i].model, json_string(ver)); /* newest wins */
        *any_loaded = 1;
    }
    free(list);
    return models;
}

static void handle_health(http_call *call) {
    http_server *s = call->loop->server;
    int ready = serving_repo_is_ready(s->repo);
    int settled = serving_repo_is_settled(s->repo);
    int any_loaded = 0;
    json_t *models = loaded_models_json(s, &any_loaded);
    const char *status = ready ? "healthy" : settled ? "unhealthy" : "loading";
    kv_health store = {.ok = true};
    kv_get_health(s->opts.shared_store, &store);
    char queue_error[200] = "";
    bool queue_ok = !s->opts.jobs || jobs_queue_ok(s->opts.jobs, queue_error, sizeof queue_error);
    if (ready && (!store.ok || !queue_ok))
        status = "degraded"; /* still serving: the cache is bypassed, limits follow their policy, batch waits */
    if (atomic_load(&s->draining))
        status = "shutting_down";
    json_t *body = json_pack("{s:s, s:b, s:b, s:o, s:s, s:f}", "status", status, "model_loaded",
                             any_loaded, "ready", ready, "models", models, "version", s->version,
                             "uptime_seconds", (double)time(NULL) - s->start_time);
    json_t *deps = json_object();
    if (s->opts.shared_store) {
        json_t *dep = json_pack("{s:s}", "status", store.ok ? "up" : "down");
        if (!store.ok)
            json_object_set_new(dep, "error", json_string(store.reason));
        json_object_set_new(deps, kv_backend_name(s->opts.shared_store), dep);
    }
    if (s->opts.jobs && strcmp(jobs_store_name(s->opts.jobs), "redis") == 0) {
        json_t *dep = json_pack("{s:s}", "status", queue_ok ? "up" : "down");
        if (!queue_ok)
            json_object_set_new(dep, "error", json_string(queue_error));
        json_object_set_new(deps, "batch_queue", dep);
    }
    if (json_object_size(deps))
        json_object_set_new(body, "dependencies", deps);
    else
        json_decref(deps);
    if (!ready || atomic_load(&s->draining)) {
        json_object_set_new(body, "error",
                            json_pack("{s:s, s:s, s:s, s:s}", "message",
                                      atomic_load(&s->draining) ? "the server is shutting down"
                                      : settled ? "a model failed to load"
                                                : "models are still loading",
                                      "type", http_error_type(HTTP_ERR_NOT_READY), "code",
                                      http_error_code(HTTP_ERR_NOT_READY), "request_id",
                                      call->request_id));
        http_reply_json(call, 503, body);
        return;
    }
    http_reply_json(call, 200, body);
}

static void handle_ready(http_call *call) {
    http_server *s = call->loop->server;
    if (atomic_load(&s->draining)) {
        http_add_header(call, "Retry-After", "1");
        http_reply_error(call, HTTP_ERR_SHUTTING_DOWN, "the server is shutting down");
    } else if (!serving_repo_is_ready(s->repo)) {
        http_reply_error(call, HTTP_ERR_NOT_READY,
                         serving_repo_is_settled(s->repo) ? "a model failed to load"
                                                          : "models are still loading");
    } else {
        http_reply_json(call, 200, json_pack("{s:s}", "status", "ready"));
    }
}

static void handle_metrics(http_call *call) {
    size_t len = 0;
    char *text = metrics_render(call->loop->server->registry, &len);
    if (!text) {
        http_reply_error(call, HTTP_ERR_INTERNAL, "cannot render metrics");
        return;
    }
    http_reply_text(call, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
}

/* ---- model listing ------------------------------------------------------ */

static json_t *version_json(const serving_version_status *v) {
    char ver[32];
    snprintf(ver, sizeof ver, "%ld", v->version);
    json_t *o = json_pack("{s:s, s:s}", "version", ver, "state", serving_state_name(v->state));
    if (v->state == SERVING_STATE_FAILED)
        json_object_set_new(o, "error", json_string(v->error));
    if (v->has_info) {
        json_t *labels = json_array();
        for (int i = 0; i < v->n_labels_listed; i++)
            json_array_append_new(labels, json_string(v->labels[i]));
        json_object_set_new(o, "architecture", json_string(v->architecture));
        json_object_set_new(o, "model_type", json_string(v->model_type));
        json_object_set_new(o, "task", json_string(v->info.task == ENGINE_TASK_CLASSIFY
                                                       ? "classification" : "embedding"));
        json_object_set_new(o, "labels", labels);
        json_object_set_new(o, "max_length", json_integer(v->info.max_length));
        json_object_set_new(o, "parameters", json_integer((json_int_t)v->info.n_params));
        json_object_set_new(o, "dtype", json_string(v->dtype));
        json_object_set_new(o, "layers", json_integer(v->info.n_layers));
        json_object_set_new(o, "hidden_size", json_integer(v->info.hidden));
        json_object_set_new(o, "load_seconds", json_real(v->load_seconds));
        json_object_set_new(o, "sha256", v->sha256[0] ? json_string(v->sha256) : json_null());
    }
    return o;
}

/* Aliases as {"production": "2"}. */
json_t *http_aliases_json(const serving_alias *aliases, size_t n) {
    json_t *o = json_object();
    for (size_t i = 0; i < n; i++) {
        char ver[32];
        snprintf(ver, sizeof ver, "%ld", aliases[i].version);
        json_object_set_new(o, aliases[i].name, json_string(ver));
    }
    return o;
}

/* A split as {"1": 80, "2": 20} ({} for none). */
json_t *http_split_json(const serving_split *split) {
    json_t *o = json_object();
    for (size_t i = 0; i < split->n; i++) {
        char ver[32];
        snprintf(ver, sizeof ver, "%ld", split->version[i]);
        json_object_set_new(o, ver, json_integer(split->weight[i]));
    }
    return o;
}

/* {"name", "default", "versions": [...]} for each model (or just `only`). */
static json_t *models_json(http_server *s, const char *only) {
    serving_version_status *list = NULL;
    size_t n = 0;
    json_t *models = json_array();
    if (serving_repo_list(s->repo, &list, &n) != 0)
        return models;
    const char *def = serving_repo_default_model(s->repo);
    json_t *cur = NULL;
    const char *cur_name = NULL;
    for (size_t i = 0; i < n; i++) {
        if (only && strcmp(list[i].model, only) != 0)
            continue;
        if (!cur_name || strcmp(cur_name, list[i].model) != 0) {
            cur = json_pack("{s:s, s:s, s:b, s:[]}", "name", list[i].model, "object", "model",
                            "default", strcmp(list[i].model, def) == 0, "versions");
            serving_split split;
            serving_get_split(s->repo, list[i].model, &split);
            json_object_set_new(cur, "traffic", http_split_json(&split));
            serving_alias aliases[SERVING_MAX_ALIASES];
            size_t n_aliases = 0;
            serving_get_aliases(s->repo, list[i].model, aliases, SERVING_MAX_ALIASES, &n_aliases);
            json_object_set_new(cur, "aliases", http_aliases_json(aliases, n_aliases));
            serving_shadow sh;
            serving_get_shadow(s->repo, list[i].model, &sh);
            char shv[24];
            json_object_set_new(cur, "shadow", sh.version ? json_pack("{s:s, s:i}", "version",
                                                                      http_format_int(sh.version, shv), "percent",
                                                                      sh.percent)
                                                          : json_null());
            json_array_append_new(models, cur);
            cur_name = list[i].model;
        }
        json_array_append_new(json_object_get(cur, "versions"), version_json(&list[i]));
    }
    free(list);
    return models;
}

static void handle_models(http_call *call) {
    json_t *data = models_json(call->loop->server, NULL);
    http_reply_json(call, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

static void handle_model(http_call *call, const char *name) {
    json_t *data = models_json(call->loop->server, name);
    if (json_array_size(data) == 0) {
        json_decref(data);
        http_reply_error(call, HTTP_ERR_MODEL_NOT_FOUND, "model '%.100s' not found", name);
        return;
    }
    json_t *model = json_incref(json_array_get(data, 0));
    json_decref(data);
    http_reply_json(call, 200, model);
}

/* ---- prediction --------------------------------------------------------- */

static int version_ref_valid(const char *ref);

/* Checks one text; returns 0 or replies with the error and returns -1. */
int http_check_text(http_call *call, json_t *value, const char *field, size_t index) {
    http_server *s = call->loop->server;
    char where[64];
    if (strcmp(field, "text") == 0)
        snprintf(where, sizeof where, "text");
    else
        snprintf(where, sizeof where, "%.20s[%zu]", field, index);
    if (!json_is_string(value)) {
        http_reply_error(call, HTTP_ERR_INVALID_TEXT, "%s must be a string", where);
        return -1;
    }
    const char *text = json_string_value(value);
    size_t len = json_string_length(value), cps = 0;
    for (size_t i = 0; i < len; i++) /* jansson checked the UTF-8: count lead bytes */
        cps += ((unsigned char)text[i] & 0xC0) != 0x80;
    int blank = 1;
    for (size_t i = 0; i < len && blank; i++)
        blank = text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r';
    if (len == 0 || blank) {
        http_reply_error(call, HTTP_ERR_EMPTY_TEXT, "%s must not be empty", where);
        return -1;
    }
    if (cps > (size_t)s->opts.max_text_chars) {
        http_reply_error(call, HTTP_ERR_TEXT_TOO_LONG,
                         "%s is %zu characters long; the limit is %d", where, cps,
                         s->opts.max_text_chars);
        return -1;
    }
    return 0;
}

/* The prediction path: rate limit (protect.c), then http_predict_admitted.
 * model_name (NULL: the default model) is kept in the call, since the
 * limiter may answer later. */
void http_predict_named(http_call *call, const char *model_name) {
    call->has_model_name = model_name != NULL;
    if (model_name)
        http_copy(call->model_name, sizeof call->model_name, model_name);
    http_limit_request(call);
}

void http_predict_admitted(http_call *call) {
    http_server *s = call->loop->server;
    const char *model_name = call->has_model_name ? call->model_name : NULL;
    if (!call->req) { /* the client left while the limiter answered: 499, as nginx logs it */
        http_reply_text(call, 499, "text/plain", "", 0);
        return;
    }
    /* X-Model-Version pins a version or an alias (the path's, when it names
     * one, wins). */
    const char *pin = evhttp_find_header(evhttp_request_get_input_headers(call->req), "X-Model-Version");
    if (pin && !call->want_version && !call->version_ref[0]) {
        if (!version_ref_valid(pin)) {
            http_reply_error(call, HTTP_ERR_INVALID_REQUEST,
                             "X-Model-Version must be a version number (1, 2, ...) or an alias (production)");
            return;
        }
        http_copy(call->version_ref, sizeof call->version_ref, pin);
    }
    if (call->version_ref[0]) {
        if (call->version_ref[0] >= '1' && call->version_ref[0] <= '9') {
            call->want_version = strtol(call->version_ref, NULL, 10);
        } else if (serving_resolve_alias(s->repo, model_name, call->version_ref, &call->want_version) != 0) {
            http_reply_error(call, HTTP_ERR_VERSION_NOT_FOUND, "model '%.100s' has no version or alias '%s'",
                             model_name ? model_name : serving_repo_default_model(s->repo), call->version_ref);
            return;
        }
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(call->req);
    size_t len = evbuffer_get_length(in);
    if (len > s->opts.max_body_bytes) {
        http_reply_error(call, HTTP_ERR_BODY_TOO_LARGE,
                         "request body is %zu bytes; the limit is %zu", len, s->opts.max_body_bytes);
        return;
    }
    const char *data = len ? (const char *)evbuffer_pullup(in, -1) : "";
    /* One pass: jansson checks the UTF-8 of every byte it reads. */
    json_error_t jerr;
    json_t *body = json_loadb(data, len, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    if (!body && json_error_code(&jerr) == json_error_invalid_utf8) {
        http_reply_error(call, HTTP_ERR_INVALID_UTF8, "request body is not valid UTF-8 (line %d, column %d)",
                         jerr.line, jerr.column);
        return;
    }
    if (!body) {
        http_reply_error(call, HTTP_ERR_INVALID_JSON, "request body is not valid JSON: %s (line %d, column %d)",
                         jerr.text, jerr.line, jerr.column);
        return;
    }
    call->body = body;
    size_t n = 1;
    if (call->kserve || call->embed) {
        if ((call->kserve ? http_kserve_read_inputs(call, body, &n) : http_embeddings_read(call, body, &n)) != 0)
            return;
        if (call->embed && call->has_model_name)
            model_name = call->model_name; /* the body names it */
        goto texts_read;
    }
    if (!json_is_object(body)) {
        http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "request body must be a JSON object");
        return;
    }
    json_t *text = json_object_get(body, "text");
    json_t *texts = json_object_get(body, "texts");
    if ((text && texts) || (!text && !texts)) {
        http_reply_error(call, HTTP_ERR_INVALID_REQUEST,
                         "give exactly one of \"text\" (a string) or \"texts\" (a list of strings)");
        return;
    }
    if (texts) {
        if (!json_is_array(texts)) {
            http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "texts must be a list of strings");
            return;
        }
        n = json_array_size(texts);
        if (n == 0) {
            http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "texts must not be empty");
            return;
        }
        if (n > (size_t)s->opts.max_inputs) {
            http_reply_error(call, HTTP_ERR_TOO_MANY_INPUTS,
                             "texts has %zu items; the limit is %d per request", n, s->opts.max_inputs);
            return;
        }
    }
    call->single = text != NULL;
    call->texts = calloc(n, sizeof *call->texts);
    call->lens = calloc(n, sizeof *call->lens);
    if (!call->texts || !call->lens) {
        http_reply_error(call, HTTP_ERR_INTERNAL, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = text ? text : json_array_get(texts, i);
        if (http_check_text(call, v, text ? "text" : "texts", i) != 0)
            return;
        call->texts[i] = json_string_value(v);
        call->lens[i] = json_string_length(v);
    }

texts_read:;
    serving_error serr = {0};
    /* One pass over the model under the repository lock: the pinned
     * version; or the cascade's first version; or the one the traffic split
     * assigns (by X-User-ID when given: sticky); and the model's shadow. */
    const char *user = call->want_version ? NULL
                                          : evhttp_find_header(evhttp_request_get_input_headers(call->req), "X-User-ID");
    serving_route route;
    int acquired = serving_acquire_request(s->repo, model_name, call->want_version, user, user ? strlen(user) : 0,
                                           !call->kserve && !call->embed, &call->version, &route, &serr);
    call->shadow = route.shadow;
    if (acquired == 0 && route.cascade.first)
        http_cascade_begin(call, &route.cascade);
    if (acquired != 0) {
        if (serr.status == SERVING_ENOTFOUND || serr.status == SERVING_ENOVERSION) {
            http_reply_error(call, serr.status == SERVING_ENOTFOUND ? HTTP_ERR_MODEL_NOT_FOUND
                                                                    : HTTP_ERR_VERSION_NOT_FOUND,
                             "%s", serr.message);
        } else {
            http_add_header(call, "Retry-After", "1");
            http_reply_error(call, HTTP_ERR_NOT_READY, "%s", serr.message);
        }
        return;
    }
    const engine_model_info *info = serving_version_info(call->version);
    if (call->embed && info->task != ENGINE_TASK_EMBED) {
        http_reply_error(call, HTTP_ERR_UNSUPPORTED_MODEL,
                         "model '%s' is a classifier; /v1/embeddings needs an embedding model",
                         serving_version_model(call->version));
        return;
    }
    if (!call->embed && (info->task != ENGINE_TASK_CLASSIFY || info->n_labels <= 0)) {
        http_reply_error(call, HTTP_ERR_UNSUPPORTED_MODEL,
                         "model '%s' is an embedding model; it does not predict labels",
                         serving_version_model(call->version));
        return;
    }
    call->job.n = n;
    http_predict_dispatch(call);
}

void http_predict_submit(http_call *call) {
    http_server *s = call->loop->server;
    const engine_model_info *info = serving_version_info(call->version);
    size_t n = call->job.n;
    call->probs = calloc(n * (size_t)(call->embed ? info->hidden : info->n_labels), sizeof *call->probs);
    if (!call->probs) {
        http_prediction_fail(call, HTTP_ERR_INTERNAL, 0, "out of memory");
        return;
    }
    serving_job *job = &call->job;
    job->texts = call->texts;
    job->lens = call->lens;
    job->n = n;
    job->deadline_us = call->start_us + (uint64_t)s->opts.request_timeout_ms * 1000u;
    job->probs = call->probs;
    job->on_done = http_post_done;
    job->user = call;
    atomic_fetch_add(&s->pending_jobs, 1);
    int rc = serving_submit(call->version, job);
    if (rc != 0) {
        atomic_fetch_sub(&s->pending_jobs, 1);
        const char *type = rc == SERVING_EFULL ? "queue_full" : "stopped";
        const char *et[] = {type};
        metric *m = metric_series(s->metrics.model_errors, et);
        if (m)
            metric_inc(m);
        if (rc == SERVING_EFULL) {
            metric_inc(s->metrics.shed);
            http_prediction_fail(call, HTTP_ERR_OVERLOADED, HTTP_FAIL_RETRY_AFTER,
                                 "model '%s' is overloaded (queue full); retry later",
                                 serving_version_model(call->version));
        } else {
            http_prediction_fail(call, HTTP_ERR_SHUTTING_DOWN, HTTP_FAIL_RETRY_AFTER, "%s",
                                 serving_status_message(rc));
        }
    }
    /* Answered later by http_finish_prediction on this loop. */
}

void http_finish_prediction(http_call *call) {
    if (call->on_posted) {
        call->on_posted(call);
        return;
    }
    http_server *s = call->loop->server;
    serving_job *job = &call->job;
    if (call->cache_role == HTTP_CACHE_FOLLOWER) { /* posted by its leader, not by a batcher */
        http_finish_follower(call);
        return;
    }
    int second_stage = http_cascade_returned(call);
    if (!second_stage && job->status != 0) {
        const char *type = job->status == SERVING_ETIMEOUT ? "timeout"
                           : job->status == SERVING_ESTOPPED ? "stopped"
                           : job->status == SERVING_EINPUT ? "invalid_input"
                                                           : "inference";
        const char *et[] = {type};
        metric *m = metric_series(s->metrics.model_errors, et);
        if (m)
            metric_inc(m);
        if (job->status == SERVING_ETIMEOUT)
            http_prediction_fail(call, HTTP_ERR_TIMEOUT, 0, "the request did not finish within %lld ms",
                                 (long long)s->opts.request_timeout_ms);
        else if (job->status == SERVING_ESTOPPED)
            http_prediction_fail(call, HTTP_ERR_SHUTTING_DOWN, 0, "the model is shutting down");
        else if (job->status == SERVING_EINPUT)
            http_prediction_fail(call, HTTP_ERR_INVALID_TEXT, 0, "%s", job->error);
        else
            http_prediction_fail(call, HTTP_ERR_INTERNAL, 0, "inference failed");
        return;
    }
    /* The answer is built even when the client left (499 then): it may be
     * cached, and followers may be waiting for it. */
    if (!second_stage) {
        if (http_cascade_escalate(call))
            return; /* unsure texts went to the second version: back later */
        http_shadow_maybe(call);
    }
    if (call->kserve || call->embed) {
        char *body = call->kserve ? http_kserve_answer(call) : http_embeddings_answer(call);
        if (!body)
            http_prediction_fail(call, HTTP_ERR_INTERNAL, 0, "out of memory");
        else
            http_prediction_answer(call, body, strlen(body));
        return;
    }
    char ver[32];
    long answered_by = serving_version_number(call->version);
    int cascaded = http_cascade_used(call);
    json_t *preds = call->single ? NULL : json_array();
    json_t *out = NULL;
    for (size_t i = 0; i < call->job.n; i++) {
        const char *label;
        double confidence;
        long version;
        http_cascade_result(call, i, &label, &confidence, &version);
        json_t *pred = json_pack("{s:s, s:f}", "label", label ? label : "", "confidence", confidence);
        if (call->single) {
            out = pred;
            answered_by = version;
        } else {
            if (cascaded) /* texts of one list may be answered by different versions */
                json_object_set_new(pred, "model_version", json_string(http_format_int(version, ver)));
            json_array_append_new(preds, pred);
        }
    }
    if (!call->single)
        out = json_pack("{s:o}", "predictions", preds);
    json_object_set_new(out, "model", json_string(serving_version_model(call->version)));
    json_object_set_new(out, "model_version", json_string(http_format_int(answered_by, ver)));
    /* Serialised as http_reply_json does, so a cache hit is byte-identical. */
    char *text = json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(out);
    if (!text) {
        http_prediction_fail(call, HTTP_ERR_INTERNAL, 0, "out of memory");
        return;
    }
    http_prediction_answer(call, text, strlen(text));
}

/* ---- API keys ------------------------------------------------------------ */

/* The key a request carries: X-API-Key (the seed's header) or
 * "Authorization: Bearer <key>" (OpenAI clients); another Authorization
 * scheme carries no key. *key and *len get the first one found (NULL, 0 for
 * none; they point into the request's headers). Returns 1 when the request
 * carries two different keys. */
static int presented_key(struct evhttp_request *req, const char **key, size_t *len) {
    *key = NULL;
    *len = 0;
    int conflict = 0;
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        const char *v = NULL;
        if (strcasecmp(kv->key, "X-API-Key") == 0) {
            v = kv->value;
        } else if (strcasecmp(kv->key, "Authorization") == 0 && strncasecmp(kv->value, "Bearer", 6) == 0 &&
                   (kv->value[6] == ' ' || kv->value[6] == '\t')) {
            v = kv->value + 6;
        }
        if (!v)
            continue;
        while (*v == ' ' || *v == '\t')
            v++;
        size_t n = strlen(v);
        while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
            n--;
        if (n == 0)
            continue;
        if (!*key) {
            *key = v;
            *len = n;
        } else if (n != *len || memcmp(v, *key, n) != 0) {
            conflict = 1; /* both are the client's own bytes: no secret to protect */
        }
    }
    return conflict;
}

/* Checks the request's API key against the scope its endpoint needs.
 * Returns 1 when the request may go on (a good key, or no keys configured);
 * otherwise answers 401 or 403 and returns 0. Messages name the key's
 * name at most, never the key. */
int http_authorized(http_call *call, guard_scopes required) {
    http_server *s = call->loop->server;
    if (!s->opts.keys)
        return 1;
    const char *key;
    size_t len;
    int conflict = presented_key(call->req, &key, &len);
    guard_auth auth;
    guard_keys_authorize(s->opts.keys, &call->loop->keys_view, key, len, required, &auth);
    if (auth.status == GUARD_AUTH_OPEN)
        return 1;
    if (conflict) {
        if (auth.status == GUARD_AUTH_OK)
            guard_keys_count_failure(s->opts.keys, GUARD_AUTH_INVALID);
        http_add_header(call, "WWW-Authenticate", "Bearer realm=\"aiserve\", error=\"invalid_request\"");
        http_reply_error(call, HTTP_ERR_INVALID_API_KEY,
                         "the request carries two different API keys (X-API-Key and Authorization); send one");
        return 0;
    }
    if (auth.key) {
        http_copy(call->key_name, sizeof call->key_name, auth.key->name);
        http_copy(call->key_tier, sizeof call->key_tier, auth.key->tier);
    }
    switch (auth.status) {
    case GUARD_AUTH_OK:
    case GUARD_AUTH_OPEN:
        return 1;
    case GUARD_AUTH_MISSING:
        http_add_header(call, "WWW-Authenticate", "Bearer realm=\"aiserve\"");
        http_reply_error(call, HTTP_ERR_MISSING_API_KEY,
                         "an API key is required: send it as X-API-Key: <key> or Authorization: Bearer <key>");
        return 0;
    case GUARD_AUTH_INVALID:
    case GUARD_AUTH_REVOKED:
        http_add_header(call, "WWW-Authenticate", "Bearer realm=\"aiserve\", error=\"invalid_token\"");
        http_reply_error(call, HTTP_ERR_INVALID_API_KEY, "%s",
                         auth.status == GUARD_AUTH_REVOKED ? "the API key was revoked" : "the API key is not valid");
        return 0;
    case GUARD_AUTH_SCOPE: {
        const char *scope = guard_scope_name(required & ~auth.key->scopes);
        char challenge[128];
        snprintf(challenge, sizeof challenge, "Bearer realm=\"aiserve\", error=\"insufficient_scope\", scope=\"%s\"",
                 scope);
        http_add_header(call, "WWW-Authenticate", challenge);
        http_reply_error(call, HTTP_ERR_INSUFFICIENT_SCOPE,
                         "the API key '%s' lacks the scope '%s' that %s needs", auth.key->name, scope,
                         http_endpoint_names[call->endpoint]);
        return 0;
    }
    case GUARD_AUTH_COUNT:
        break;
    }
    http_reply_error(call, HTTP_ERR_INTERNAL, "internal error");
    return 0;
}

/* ---- routing ---------------------------------------------------------- */

/* A version number (1, 2, ... no leading zero) or an alias name. */
static int version_ref_valid(const char *ref) {
    size_t digits = strspn(ref, "0123456789");
    if (digits)
        return digits <= 12 && !ref[digits] && ref[0] != '0';
    return serving_alias_name_valid(ref);
}

/* The version ref of a "/versions/{v}/predict" tail (a version number or
 * an alias) into ref[cap]: 1, or 0 for any other tail. */
static int version_predict_tail(const char *tail, char *ref, size_t cap) {
    static const char head[] = "/versions/";
    if (strncmp(tail, head, sizeof head - 1) != 0)
        return 0;
    const char *p = tail + sizeof head - 1;
    size_t n = strcspn(p, "/");
    if (n == 0 || n >= cap || strcmp(p + n, "/predict") != 0)
        return 0;
    memcpy(ref, p, n);
    ref[n] = 0;
    return version_ref_valid(ref);
}

/* What http_route below accepts, for CORS preflights: keep the two in step. */
const char *http_route_methods(const char *path, http_endpoint *ep) {
    static const struct { const char *path; http_endpoint ep; const char *methods; } fixed[] = {
        {"/predict", EP_PREDICT, "POST"},          {"/v1/models", EP_MODELS, "GET"},
        {"/v1/embeddings", EP_EMBEDDINGS, "POST"},
        {"/health", EP_HEALTH, "GET"},             {"/health/live", EP_HEALTH_LIVE, "GET"},
        {"/health/ready", EP_HEALTH_READY, "GET"}, {"/metrics", EP_METRICS, "GET"},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        if (strcmp(path, fixed[i].path) == 0) {
            *ep = fixed[i].ep;
            return fixed[i].methods;
        }
    }
    static const char prefix[] = "/v1/models/";
    if (strncmp(path, prefix, sizeof prefix - 1) == 0) {
        const char *rest = path + sizeof prefix - 1;
        const char *slash = strchr(rest, '/');
        size_t name_len = slash ? (size_t)(slash - rest) : strlen(rest);
        char ref[72];
        if (name_len > 0 && name_len < 256 && slash && version_predict_tail(slash, ref, sizeof ref)) {
            *ep = EP_MODEL_VERSION_PREDICT;
            return "POST";
        }
        if (name_len > 0 && name_len < 256 && (!slash || strcmp(slash, "/predict") == 0)) {
            *ep = slash ? EP_MODEL_PREDICT : EP_MODEL;
            return slash ? "POST" : "GET";
        }
    }
    const char *m = http_kserve_route_methods(path, ep);
    if (!m)
        m = http_batch_route_methods(path, ep);
    return m ? m : http_admin_route_methods(path, ep);
}

int http_method_is(http_call *call, enum evhttp_cmd_type want) {
    if (evhttp_request_get_command(call->req) == want)
        return 1;
    http_add_header(call, "Allow", want == EVHTTP_REQ_GET ? "GET" : "POST");
    http_reply_error(call, HTTP_ERR_METHOD_NOT_ALLOWED, "%s is not allowed on %s; use %s",
                     call->method, http_endpoint_names[call->endpoint],
                     want == EVHTTP_REQ_GET ? "GET" : "POST");
    return 0;
}

void http_route(http_call *call) {
    struct evhttp_request *req = call->req;
    http_copy(call->method, sizeof call->method, method_name(evhttp_request_get_command(req)));
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!path || !*path)
        path = "/";
    http_copy(call->path, sizeof call->path, path);

    if (http_cors_preflight(call, path)) /* before the API key: browsers send none */
        return;

    /* Fixed routes. Trailing slashes are not folded: paths are exact. */
    static const struct { const char *path; http_endpoint ep; } fixed[] = {
        {"/predict", EP_PREDICT},          {"/v1/models", EP_MODELS},
        {"/health", EP_HEALTH},            {"/health/live", EP_HEALTH_LIVE},
        {"/health/ready", EP_HEALTH_READY}, {"/metrics", EP_METRICS},
        {"/v1/embeddings", EP_EMBEDDINGS},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        if (strcmp(path, fixed[i].path) != 0)
            continue;
        call->endpoint = fixed[i].ep;
        switch (fixed[i].ep) {
        case EP_PREDICT:
            if (http_authorized(call, GUARD_SCOPE_PREDICT) && http_method_is(call, EVHTTP_REQ_POST))
                http_predict_named(call, NULL);
            return;
        case EP_MODELS:
            if (http_authorized(call, GUARD_SCOPE_ANY) && http_method_is(call, EVHTTP_REQ_GET))
                handle_models(call);
            return;
        case EP_EMBEDDINGS:
            if (http_authorized(call, GUARD_SCOPE_EMBED) && http_method_is(call, EVHTTP_REQ_POST)) {
                call->embed = 1;
                http_predict_named(call, NULL);
            }
            return;
        case EP_HEALTH:
            if (http_method_is(call, EVHTTP_REQ_GET))
                handle_health(call);
            return;
        case EP_HEALTH_LIVE:
            if (http_method_is(call, EVHTTP_REQ_GET))
                http_reply_json(call, 200, json_pack("{s:s}", "status", "alive"));
            return;
        case EP_HEALTH_READY:
            if (http_method_is(call, EVHTTP_REQ_GET))
                handle_ready(call);
            return;
        case EP_METRICS:
            if (http_method_is(call, EVHTTP_REQ_GET))
                handle_metrics(call);
            return;
        default:
            break;
        }
    }

    /* /v1/models/{name} and /v1/models/{name}/predict. The name is
     * percent-decoded and then only ever compared with the repository's
     * names, so "..", slashes or NULs can never reach the file system. */
    static const char prefix[] = "/v1/models/";
    if (strncmp(path, prefix, sizeof prefix - 1) == 0) {
        const char *rest = path + sizeof prefix - 1;
        const char *slash = strchr(rest, '/');
        size_t name_len = slash ? (size_t)(slash - rest) : strlen(rest);
        const char *tail = slash ? slash : "";
        char ref[72];
        int pinned = version_predict_tail(tail, ref, sizeof ref);
        if (pinned)
            tail = "/predict"; /* /versions/{v}/predict: a prediction, pinned */
        if (name_len > 0 && name_len < 256 && (!*tail || strcmp(tail, "/predict") == 0)) {
            call->endpoint = *tail ? EP_MODEL_PREDICT : EP_MODEL;
            if (!http_authorized(call, *tail ? GUARD_SCOPE_PREDICT : GUARD_SCOPE_ANY))
                return;
            char raw[256];
            memcpy(raw, rest, name_len);
            raw[name_len] = '\0';
            size_t dlen = 0;
            char *name = evhttp_uridecode(raw, 0, &dlen);
            if (name && strlen(name) == dlen && is_valid_utf8((unsigned char *)name, dlen)) {
                if (!*tail) {
                    call->endpoint = EP_MODEL;
                    if (http_method_is(call, EVHTTP_REQ_GET))
                        handle_model(call, name);
                } else {
                    call->endpoint = pinned ? EP_MODEL_VERSION_PREDICT : EP_MODEL_PREDICT;
                    if (pinned)
                        http_copy(call->version_ref, sizeof call->version_ref, ref);
                    if (http_method_is(call, EVHTTP_REQ_POST))
                        http_predict_named(call, name);
                }
                free(name);
                return;
            }
            free(name);
            call->endpoint = EP_OTHER;
            http_reply_error(call, HTTP_ERR_MODEL_NOT_FOUND, "model not found");
            return;
        }
    }
    if (http_route_kserve(call, path) || http_route_batch(call, path) || http_route_admin(call, path))
        return;
    http_reply_error(call, HTTP_ERR_NOT_FOUND, "no route for %s %.200s", call->method,
                     is_valid_utf8((const unsigned char *)path, strlen(path)) ? path : "(path)");
}
