/*
 * health.c - the server's own state as answers: GET /health (the seed's
 * shape, with dependencies), /health/live, /health/ready (503 until every
 * configured model is loaded, and while draining), /metrics (Prometheus
 * text), and the model listing GET /v1/models and /v1/models/{name}.
 *
 * Loop thread only.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http_int.h"

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

/* Ready to serve: every model has a version available; or, for a server
 * that is only an LLM gateway, its empty repository has been looked at. */
int http_server_ready(http_server *s) {
    if (serving_repo_is_ready(s->repo))
        return 1;
    if (!s->opts.gateway || !serving_repo_is_settled(s->repo))
        return 0;
    serving_version_status *list = NULL;
    size_t n = 0;
    if (serving_repo_list(s->repo, &list, &n) != 0)
        return 0;
    free(list);
    return n == 0;
}

void http_health(http_call *call) {
    http_server *s = call->loop->server;
    int ready = http_server_ready(s);
    int settled = serving_repo_is_settled(s->repo);
    int any_loaded = 0;
    json_t *models = loaded_models_json(s, &any_loaded);
    const char *status = ready ? "healthy" : settled ? "unhealthy" : "loading";
    kv_health store = {.ok = true};
    kv_get_health(s->opts.shared_store, &store);
    char queue_error[200] = "";
    bool queue_ok = !s->opts.jobs || jobs_queue_ok(s->opts.jobs, queue_error, sizeof queue_error);
    size_t open_breakers = 0, llm_models = 0;
    if (s->opts.gateway)
        gateway_breakers(s->opts.gateway, &open_breakers, &llm_models);
    if (ready && (!store.ok || !queue_ok || open_breakers))
        status = "degraded"; /* still serving: the cache is bypassed, limits follow their policy, batch waits,
                                the gateway falls back */
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
    if (s->opts.gateway) {
        /* Up while every model's breaker is closed; degraded while some
         * are open (the others and the fallbacks answer); down when all are. */
        const char *st = !open_breakers ? "up" : open_breakers < llm_models ? "degraded" : "down";
        json_object_set_new(deps, "llm_upstreams", json_pack("{s:s, s:I, s:I}", "status", st, "models",
                                                             (json_int_t)llm_models, "open_breakers",
                                                             (json_int_t)open_breakers));
    }
    if (json_object_size(deps))
        json_object_set_new(body, "dependencies", deps);
    else
        json_decref(deps);
    if (!ready || atomic_load(&s->draining)) {
        json_t *err = http_error_body(call, HTTP_ERR_NOT_READY,
                                      atomic_load(&s->draining) ? "the server is shutting down"
                                      : settled                 ? "a model failed to load"
                                                                : "models are still loading");
        json_object_update(body, err); /* "error" and "detail" beside the health fields */
        json_decref(err);
        http_reply_json(call, 503, body);
        return;
    }
    http_reply_json(call, 200, body);
}

void http_health_ready(http_call *call) {
    http_server *s = call->loop->server;
    if (atomic_load(&s->draining)) {
        http_add_header(call, "Retry-After", "1");
        http_reply_error(call, HTTP_ERR_SHUTTING_DOWN, "the server is shutting down");
    } else if (!http_server_ready(s)) {
        http_reply_error(call, HTTP_ERR_NOT_READY,
                         serving_repo_is_settled(s->repo) ? "a model failed to load"
                                                          : "models are still loading");
    } else {
        http_reply_json(call, 200, json_pack("{s:s}", "status", "ready"));
    }
}

void http_metrics_page(http_call *call) {
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
        json_object_set_new(o, "quantization", json_string(engine_quantization_name(v->info.quantization)));
        json_object_set_new(o, "weight_memory_bytes", json_integer((json_int_t)v->info.weight_memory_bytes));
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
json_t *http_cascade_json(const serving_cascade *c) {
    if (!c->first)
        return json_object();
    char a[24], b[24];
    return json_pack("{s:s, s:s, s:f}", "first", http_format_int(c->first, a), "then", http_format_int(c->then, b),
                     "threshold", c->threshold);
}

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
            cur = json_pack("{s:s, s:s, s:s, s:s, s:b, s:[]}", "id", list[i].model, "name", list[i].model,
                            "object", "model", "owned_by", "aiserve", "default", strcmp(list[i].model, def) == 0,
                            "versions");
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
            serving_cascade cascade;
            serving_get_cascade(s->repo, list[i].model, &cascade);
            json_object_set_new(cur, "cascade", cascade.first ? http_cascade_json(&cascade) : json_null());
            json_array_append_new(models, cur);
            cur_name = list[i].model;
        }
        json_array_append_new(json_object_get(cur, "versions"), version_json(&list[i]));
    }
    free(list);
    return models;
}

static void list_gateway_model(void *ud, const char *id, const char *owned_by) {
    json_array_append_new(ud, json_pack("{s:s, s:s, s:s, s:i, s:s}", "id", id, "name", id, "object", "model",
                                        "created", 0, "owned_by", owned_by));
}

void http_models(http_call *call) {
    json_t *data = models_json(call->loop->server, NULL);
    if (call->loop->server->opts.gateway) /* as OpenAI clients expect: the gateway's models and routes too */
        gateway_list(call->loop->server->opts.gateway, list_gateway_model, data);
    http_reply_json(call, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

/* The gateway's model or route called `name`, as /v1/models lists it. */
typedef struct gateway_find {
    const char *name;
    json_t *found;
} gateway_find;

static void find_gateway_model(void *ud, const char *id, const char *owned_by) {
    gateway_find *f = ud;
    if (!f->found && strcmp(id, f->name) == 0)
        f->found = json_pack("{s:s, s:s, s:s, s:i, s:s}", "id", id, "name", id, "object", "model", "created", 0,
                             "owned_by", owned_by);
}

void http_model(http_call *call) {
    const char *name = call->params.name;
    json_t *data = models_json(call->loop->server, name);
    gateway_find f = {.name = name};
    if (json_array_size(data) == 0 && call->loop->server->opts.gateway)
        gateway_list(call->loop->server->opts.gateway, find_gateway_model, &f);
    if (f.found) {
        json_decref(data);
        http_reply_json(call, 200, f.found);
        return;
    }
    if (json_array_size(data) == 0) {
        json_decref(data);
        http_reply_error(call, HTTP_ERR_MODEL_NOT_FOUND, "model '%.100s' not found", name);
        return;
    }
    json_t *model = json_incref(json_array_get(data, 0));
    json_decref(data);
    http_reply_json(call, 200, model);
}

void http_health_live(http_call *call) { http_reply_json(call, 200, json_pack("{s:s}", "status", "alive")); }
