/*
 * admin.c - the admin API (scope admin): GET and PUT
 * /admin/models/{name}/traffic, a model's traffic split between its
 * versions (serving.h, serving_set_split); GET /admin/models/{name}/aliases
 * and PUT / DELETE /admin/models/{name}/aliases/{alias}, names for
 * versions (serving_set_alias); GET and PUT /admin/models/{name}/shadow, a
 * candidate version that a share of requests is also sent to (serving_predict);
 * GET and PUT /admin/models/{name}/cascade, "ask this version, then that
 * one when unsure" (serving_predict); POST
 * /admin/models/{name}/versions/{v}/load and /unload, whatever the version
 * policy says (serving_admin_version; 202, done by the loader thread). Changes take effect for the next request;
 * they live in memory (a restart starts without them).
 *
 *   PUT /admin/models/sentiment/traffic  {"1": 80, "2": 20}
 *     -> 200 {"model": "sentiment", "traffic": {"1": 80, "2": 20}}
 *   PUT ... {} clears the split (the newest version takes everything).
 *
 * A split that does not sum to 100, has a weight outside 0..100 or names a
 * version the model does not have is 422 and the old split stays.
 *
 * Loop thread only.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "http_int.h"

/* Answers a refused change (rc from serving_set_*): 404 for an unknown
 * model, else 422 saying that `what` in use is unchanged. */
static void reply_refused(http_call *call, int rc, const serving_error *err, const char *what) {
    if (rc == SERVING_ENOTFOUND)
        http_reply_error(call, HTTP_ERR_MODEL_NOT_FOUND, "%s", err->message);
    else
        http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "%s; the %s in use is unchanged", err->message, what);
}

/* A version number from JSON (an integer or a string of digits); -1 if not. */
static long json_version(json_t *v) {
    if (json_is_integer(v))
        return json_integer_value(v) >= 0 && json_integer_value(v) < (1ll << 40) ? (long)json_integer_value(v) : -1;
    if (json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) < 13 &&
        strspn(json_string_value(v), "0123456789") == json_string_length(v))
        return strtol(json_string_value(v), NULL, 10);
    return -1;
}

void http_admin_cascade(http_call *call) {
    const char *model = call->params.name;
    serving_repo *repo = call->loop->server->repo;
    enum evhttp_cmd_type m = evhttp_request_get_command(call->req);
    if (m == EVHTTP_REQ_PUT) {
        json_t *body = http_read_json(call);
        if (!body)
            return;
        serving_cascade c = {0};
        int bad = !json_is_object(body);
        if (!bad && json_object_size(body) > 0) {
            c.first = json_version(json_object_get(body, "first"));
            c.then = json_version(json_object_get(body, "then"));
            json_t *t = json_object_get(body, "threshold");
            bad = c.first <= 0 || c.then <= 0 || !json_is_number(t);
            c.threshold = json_is_number(t) ? json_number_value(t) : 0;
        }
        json_decref(body);
        if (bad) {
            http_reply_error(call, HTTP_ERR_INVALID_REQUEST,
                             "the body must be {\"first\": N, \"then\": M, \"threshold\": 0.9}, or {} to turn the "
                             "cascade off");
            return;
        }
        serving_error err = {0};
        int rc = serving_set_cascade(repo, model, &c, &err);
        if (rc != 0) {
            reply_refused(call, rc, &err, "cascade");
            return;
        }
        log_event(LOG_INFO, "cascade_set", "model", json_string(model), "first", json_integer(c.first), "then",
                  json_integer(c.then), "threshold", json_real(c.threshold), "request_id",
                  json_string(call->request_id), NULL);
    }
    serving_cascade c;
    if (serving_get_cascade(repo, model, &c) != 0) {
        http_reply_error(call, HTTP_ERR_MODEL_NOT_FOUND, "model '%.100s' not found", model);
        return;
    }
    http_reply_json(call, 200, json_pack("{s:s, s:o}", "model", model, "cascade", http_cascade_json(&c)));
}

/* A shadow as {"version": "2", "percent": 10}, or {} for none. */
static json_t *shadow_json(const serving_shadow *sh) {
    if (!sh->version)
        return json_object();
    char ver[24];
    return json_pack("{s:s, s:i}", "version", http_format_int(sh->version, ver), "percent", sh->percent);
}

void http_admin_shadow(http_call *call) {
    const char *model = call->params.name;
    serving_repo *repo = call->loop->server->repo;
    enum evhttp_cmd_type m = evhttp_request_get_command(call->req);
    if (m == EVHTTP_REQ_PUT) {
        json_t *body = http_read_json(call);
        if (!body)
            return;
        json_t *v = json_object_get(body, "version"), *p = json_object_get(body, "percent");
        serving_shadow sh = {0};
        int bad = !json_is_object(body);
        if (!bad && (v || p)) {
            bad = !json_is_integer(p) && !(json_is_integer(v) && json_integer_value(v) == 0);
            json_int_t vi = json_is_integer(v) ? json_integer_value(v)
                            : json_is_string(v) && strspn(json_string_value(v), "0123456789") == json_string_length(v)
                                ? strtoll(json_string_value(v), NULL, 10) : -1;
            json_int_t pi = json_is_integer(p) ? json_integer_value(p) : 0;
            bad = bad || vi < 0 || vi > (1ll << 40) || pi < 0 || pi > 100;
            sh.version = (long)vi;
            sh.percent = (int)pi;
        }
        json_decref(body);
        if (bad) {
            http_reply_error(call, HTTP_ERR_INVALID_REQUEST,
                             "the body must be {\"version\": N, \"percent\": 1..100}, or {} to turn the shadow off");
            return;
        }
        serving_error err = {0};
        int rc = serving_set_shadow(repo, model, &sh, &err);
        if (rc != 0) {
            reply_refused(call, rc, &err, "shadow");
            return;
        }
        log_event(LOG_INFO, "shadow_set", "model", json_string(model), "version", json_integer(sh.version),
                  "percent", json_integer(sh.percent), "request_id", json_string(call->request_id), NULL);
    }
    serving_shadow sh;
    if (serving_get_shadow(repo, model, &sh) != 0) {
        http_reply_error(call, HTTP_ERR_MODEL_NOT_FOUND, "model '%.100s' not found", model);
        return;
    }
    http_reply_json(call, 200, json_pack("{s:s, s:o}", "model", model, "shadow", shadow_json(&sh)));
}

static void reply_aliases(http_call *call, const char *model) {
    serving_alias aliases[SERVING_MAX_ALIASES];
    size_t n = 0;
    if (serving_get_aliases(call->loop->server->repo, model, aliases, SERVING_MAX_ALIASES, &n) != 0) {
        http_reply_error(call, HTTP_ERR_MODEL_NOT_FOUND, "model '%.100s' not found", model);
        return;
    }
    http_reply_json(call, 200, json_pack("{s:s, s:o}", "model", model, "aliases", http_aliases_json(aliases, n)));
}

static void set_alias(http_call *call, const char *model, const char *alias, int remove) {
    long version = 0;
    if (!remove) {
        json_t *body = http_read_json(call);
        if (!body)
            return;
        json_t *v = json_object_get(body, "version");
        if (json_is_string(v) && strspn(json_string_value(v), "0123456789") == json_string_length(v))
            version = strtol(json_string_value(v), NULL, 10);
        else if (json_is_integer(v))
            version = json_integer_value(v) > 0 && json_integer_value(v) < (1ll << 40) ? (long)json_integer_value(v) : -1;
        json_decref(body);
        if (version <= 0) {
            http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "the body must be {\"version\": N}, N a version number");
            return;
        }
    }
    serving_error err = {0};
    int rc = serving_set_alias(call->loop->server->repo, model, alias, version, &err);
    if (rc == SERVING_EINPUT)
        http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "%s", err.message);
    else if (rc != 0)
        http_reply_status(call, STATUS_MODULE_SERVING, rc, err.message);
    else {
        log_event(LOG_INFO, remove ? "alias_removed" : "alias_set", "model", json_string(model), "alias",
                  json_string(alias), "version", json_integer(version), "request_id", json_string(call->request_id),
                  NULL);
        reply_aliases(call, model);
    }
}

static void reply_split(http_call *call, const char *model) {
    serving_split split;
    if (serving_get_split(call->loop->server->repo, model, &split) != 0) {
        http_reply_error(call, HTTP_ERR_MODEL_NOT_FOUND, "model '%.100s' not found", model);
        return;
    }
    http_reply_json(call, 200, json_pack("{s:s, s:o}", "model", model, "traffic", http_split_json(&split)));
}

static void put_split(http_call *call, const char *model) {
    json_t *body = http_read_json(call);
    if (!body)
        return;
    serving_split split = {0};
    const char *key;
    json_t *value;
    int bad = !json_is_object(body) || json_object_size(body) > SERVING_MAX_SPLIT;
    json_object_foreach(body, key, value) {
        if (bad)
            break;
        char *end;
        long v = strtol(key, &end, 10);
        if (v <= 0 || *end || key[0] == '0' || key[0] == '+' || !json_is_integer(value)) {
            bad = 1;
            break;
        }
        split.version[split.n] = v;
        json_int_t w = json_integer_value(value);
        split.weight[split.n++] = w < -1 ? -1 : w > 101 ? 101 : (int)w;
    }
    json_decref(body);
    if (bad) {
        http_reply_error(call, HTTP_ERR_INVALID_REQUEST,
                         "the body must be an object of version numbers to whole percentages, as {\"1\": 80, "
                         "\"2\": 20} (at most %d versions; {} clears the split)", SERVING_MAX_SPLIT);
        return;
    }
    serving_error err = {0};
    int rc = serving_set_split(call->loop->server->repo, model, &split, &err);
    if (rc != 0) {
        reply_refused(call, rc, &err, "split");
        return;
    }
    log_event(LOG_INFO, "traffic_split_set", "model", json_string(model), "key", json_string(call->key_name),
              "request_id", json_string(call->request_id), NULL);
    reply_split(call, model);
}

void http_admin_traffic_get(http_call *call) { reply_split(call, call->params.name); }
void http_admin_traffic_put(http_call *call) { put_split(call, call->params.name); }
void http_admin_aliases_get(http_call *call) { reply_aliases(call, call->params.name); }
void http_admin_alias_put(http_call *call) { set_alias(call, call->params.name, call->params.alias, 0); }
void http_admin_alias_delete(http_call *call) { set_alias(call, call->params.name, call->params.alias, 1); }

static void version_action(http_call *call, int load) {
    const char *name = call->params.name;
    long version = strtol(call->params.version, NULL, 10);
    serving_error err = {0};
    int rc = serving_admin_version(call->loop->server->repo, name, version, load, &err);
    if (rc != 0) {
        if (rc == SERVING_ENOTREADY)
            http_add_header(call, "Retry-After", "1");
        http_reply_status(call, STATUS_MODULE_SERVING, rc, err.message);
        return;
    }
    log_event(LOG_INFO, load ? "version_load_requested" : "version_unload_requested", "model", json_string(name),
              "version", json_integer(version), "request_id", json_string(call->request_id), NULL);
    char ver[24];
    http_reply_json(call, 202, json_pack("{s:s, s:s, s:s}", "model", name, "version", http_format_int(version, ver),
                                         "action", load ? "load" : "unload"));
}

void http_admin_version_load(http_call *call) { version_action(call, 1); }
void http_admin_version_unload(http_call *call) { version_action(call, 0); }
