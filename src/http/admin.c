/*
 * admin.c - the admin API (scope admin): GET and PUT
 * /admin/models/{name}/traffic, a model's traffic split between its
 * versions (serving.h, serving_set_split); GET /admin/models/{name}/aliases
 * and PUT / DELETE /admin/models/{name}/aliases/{alias}, names for
 * versions (serving_set_alias); GET and PUT /admin/models/{name}/shadow, a
 * candidate version that a share of requests is also sent to (shadow.c);
 * GET and PUT /admin/models/{name}/cascade, "ask this version, then that
 * one when unsure" (cascade.c); POST
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

/* The request body as JSON, or NULL after answering 400. */
static json_t *json_body(http_call *call) {
    struct evbuffer *in = evhttp_request_get_input_buffer(call->req);
    size_t len = evbuffer_get_length(in);
    json_error_t jerr;
    json_t *body = json_loadb(len ? (const char *)evbuffer_pullup(in, -1) : "", len, 0, &jerr);
    if (!body)
        http_reply_error(call, HTTP_ERR_INVALID_JSON, "request body is not valid JSON: %s", jerr.text);
    return body;
}

/* Answers a refused change (rc from serving_set_*): 404 for an unknown
 * model, else 422 saying that `what` in use is unchanged. */
static void reply_refused(http_call *call, int rc, const serving_error *err, const char *what) {
    if (rc == SERVING_ENOTFOUND)
        http_reply_error(call, HTTP_ERR_MODEL_NOT_FOUND, "%s", err->message);
    else
        http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "%s; the %s in use is unchanged", err->message, what);
}

/* "/admin/models/{name}<suffix>" -> name (at most cap - 1 bytes); 1, else 0. */
static int model_path(const char *path, const char *suffix, char *name, size_t cap) {
    static const char prefix[] = "/admin/models/";
    if (strncmp(path, prefix, sizeof prefix - 1) != 0)
        return 0;
    const char *rest = path + sizeof prefix - 1;
    const char *slash = strchr(rest, '/');
    if (!slash || slash == rest || strcmp(slash, suffix) != 0 || (size_t)(slash - rest) >= cap)
        return 0;
    memcpy(name, rest, (size_t)(slash - rest));
    name[slash - rest] = 0;
    return 1;
}

static int traffic_model(const char *path, char *name, size_t cap) { return model_path(path, "/traffic", name, cap); }

/* "/admin/models/{name}/aliases[/{alias}]" -> name and alias ("" when
 * none); 1, else 0. */
static int alias_path(const char *path, char *name, size_t cap, char *alias, size_t alias_cap) {
    static const char prefix[] = "/admin/models/", mid[] = "/aliases";
    if (strncmp(path, prefix, sizeof prefix - 1) != 0)
        return 0;
    const char *rest = path + sizeof prefix - 1;
    const char *slash = strchr(rest, '/');
    if (!slash || slash == rest || strncmp(slash, mid, sizeof mid - 1) != 0 || (size_t)(slash - rest) >= cap)
        return 0;
    const char *tail = slash + sizeof mid - 1;
    if (*tail && (*tail != '/' || !tail[1] || strchr(tail + 1, '/') || strlen(tail + 1) >= alias_cap))
        return 0;
    memcpy(name, rest, (size_t)(slash - rest));
    name[slash - rest] = 0;
    snprintf(alias, alias_cap, "%s", *tail ? tail + 1 : "");
    return 1;
}

/* "/admin/models/{name}/versions/{v}/load|unload" -> name, version and
 * whether to load; 1, else 0. */
static int version_action_path(const char *path, char *name, size_t cap, long *version, int *load) {
    static const char prefix[] = "/admin/models/";
    if (strncmp(path, prefix, sizeof prefix - 1) != 0)
        return 0;
    const char *rest = path + sizeof prefix - 1;
    const char *slash = strchr(rest, '/');
    if (!slash || slash == rest || (size_t)(slash - rest) >= cap || strncmp(slash, "/versions/", 10) != 0)
        return 0;
    const char *num = slash + 10;
    size_t digits = strspn(num, "0123456789");
    if (digits == 0 || digits > 12 || num[0] == '0')
        return 0;
    if (strcmp(num + digits, "/load") == 0)
        *load = 1;
    else if (strcmp(num + digits, "/unload") == 0)
        *load = 0;
    else
        return 0;
    memcpy(name, rest, (size_t)(slash - rest));
    name[slash - rest] = 0;
    *version = strtol(num, NULL, 10);
    return 1;
}

const char *http_admin_route_methods(const char *path, http_endpoint *ep) {
    char name[256], alias[SERVING_ALIAS_MAX + 2];
    long version;
    int load;
    if (version_action_path(path, name, sizeof name, &version, &load)) {
        *ep = EP_ADMIN_VERSION;
        return "POST";
    }
    if (traffic_model(path, name, sizeof name)) {
        *ep = EP_ADMIN_TRAFFIC;
        return "GET, PUT";
    }
    if (alias_path(path, name, sizeof name, alias, sizeof alias)) {
        *ep = EP_ADMIN_ALIASES;
        return alias[0] ? "PUT, DELETE" : "GET";
    }
    if (model_path(path, "/shadow", name, sizeof name)) {
        *ep = EP_ADMIN_SHADOW;
        return "GET, PUT";
    }
    if (model_path(path, "/cascade", name, sizeof name)) {
        *ep = EP_ADMIN_CASCADE;
        return "GET, PUT";
    }
    return NULL;
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

static json_t *cascade_json(const serving_cascade *c) {
    if (!c->first)
        return json_object();
    char a[24], b[24];
    return json_pack("{s:s, s:s, s:f}", "first", http_format_int(c->first, a), "then", http_format_int(c->then, b),
                     "threshold", c->threshold);
}

static void cascade_endpoint(http_call *call, const char *model) {
    serving_repo *repo = call->loop->server->repo;
    enum evhttp_cmd_type m = evhttp_request_get_command(call->req);
    if (m == EVHTTP_REQ_PUT) {
        json_t *body = json_body(call);
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
    } else if (m != EVHTTP_REQ_GET) {
        http_add_header(call, "Allow", "GET, PUT");
        http_reply_error(call, HTTP_ERR_METHOD_NOT_ALLOWED, "%s is not allowed here", call->method);
        return;
    }
    serving_cascade c;
    if (serving_get_cascade(repo, model, &c) != 0) {
        http_reply_error(call, HTTP_ERR_MODEL_NOT_FOUND, "model '%.100s' not found", model);
        return;
    }
    http_reply_json(call, 200, json_pack("{s:s, s:o}", "model", model, "cascade", cascade_json(&c)));
}

/* A shadow as {"version": "2", "percent": 10}, or {} for none. */
static json_t *shadow_json(const serving_shadow *sh) {
    if (!sh->version)
        return json_object();
    char ver[24];
    return json_pack("{s:s, s:i}", "version", http_format_int(sh->version, ver), "percent", sh->percent);
}

static void shadow_endpoint(http_call *call, const char *model) {
    serving_repo *repo = call->loop->server->repo;
    enum evhttp_cmd_type m = evhttp_request_get_command(call->req);
    if (m == EVHTTP_REQ_PUT) {
        json_t *body = json_body(call);
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
    } else if (m != EVHTTP_REQ_GET) {
        http_add_header(call, "Allow", "GET, PUT");
        http_reply_error(call, HTTP_ERR_METHOD_NOT_ALLOWED, "%s is not allowed here", call->method);
        return;
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
        json_t *body = json_body(call);
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
    if (rc == SERVING_ENOTFOUND)
        http_reply_error(call, HTTP_ERR_MODEL_NOT_FOUND, "%s", err.message);
    else if (rc == SERVING_ENOVERSION)
        http_reply_error(call, HTTP_ERR_VERSION_NOT_FOUND, "%s", err.message);
    else if (rc != 0)
        http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "%s", err.message);
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
    json_t *body = json_body(call);
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

int http_route_admin(http_call *call, const char *path) {
    char name[256], alias[SERVING_ALIAS_MAX + 2];
    long version;
    int load;
    if (version_action_path(path, name, sizeof name, &version, &load)) {
        call->endpoint = EP_ADMIN_VERSION;
        if (!http_authorized(call, GUARD_SCOPE_ADMIN) || !http_method_is(call, EVHTTP_REQ_POST))
            return 1;
        serving_error err = {0};
        int rc = serving_admin_version(call->loop->server->repo, name, version, load, &err);
        if (rc == SERVING_ENOTFOUND)
            http_reply_error(call, HTTP_ERR_MODEL_NOT_FOUND, "%s", err.message);
        else if (rc == SERVING_ENOVERSION)
            http_reply_error(call, HTTP_ERR_VERSION_NOT_FOUND, "%s", err.message);
        else if (rc != 0) {
            http_add_header(call, "Retry-After", "1");
            http_reply_error(call, HTTP_ERR_NOT_READY, "%s", err.message);
        } else {
            log_event(LOG_INFO, load ? "version_load_requested" : "version_unload_requested", "model",
                      json_string(name), "version", json_integer(version), "request_id",
                      json_string(call->request_id), NULL);
            char ver[24];
            http_reply_json(call, 202, json_pack("{s:s, s:s, s:s}", "model", name, "version",
                                                 http_format_int(version, ver), "action", load ? "load" : "unload"));
        }
        return 1;
    }
    if (alias_path(path, name, sizeof name, alias, sizeof alias)) {
        call->endpoint = EP_ADMIN_ALIASES;
        if (!http_authorized(call, GUARD_SCOPE_ADMIN))
            return 1;
        enum evhttp_cmd_type m = evhttp_request_get_command(call->req);
        if (!alias[0] && m == EVHTTP_REQ_GET)
            reply_aliases(call, name);
        else if (alias[0] && (m == EVHTTP_REQ_PUT || m == EVHTTP_REQ_DELETE))
            set_alias(call, name, alias, m == EVHTTP_REQ_DELETE);
        else {
            http_add_header(call, "Allow", alias[0] ? "PUT, DELETE" : "GET");
            http_reply_error(call, HTTP_ERR_METHOD_NOT_ALLOWED, "%s is not allowed here", call->method);
        }
        return 1;
    }
    if (model_path(path, "/cascade", name, sizeof name)) {
        call->endpoint = EP_ADMIN_CASCADE;
        if (http_authorized(call, GUARD_SCOPE_ADMIN))
            cascade_endpoint(call, name);
        return 1;
    }
    if (model_path(path, "/shadow", name, sizeof name)) {
        call->endpoint = EP_ADMIN_SHADOW;
        if (http_authorized(call, GUARD_SCOPE_ADMIN))
            shadow_endpoint(call, name);
        return 1;
    }
    if (!traffic_model(path, name, sizeof name))
        return 0;
    call->endpoint = EP_ADMIN_TRAFFIC;
    if (!http_authorized(call, GUARD_SCOPE_ADMIN))
        return 1;
    enum evhttp_cmd_type m = evhttp_request_get_command(call->req);
    if (m == EVHTTP_REQ_GET) {
        reply_split(call, name);
    } else if (m == EVHTTP_REQ_PUT) {
        put_split(call, name);
    } else {
        http_add_header(call, "Allow", "GET, PUT");
        http_reply_error(call, HTTP_ERR_METHOD_NOT_ALLOWED, "%s is not allowed on %s; use GET or PUT", call->method,
                         http_endpoint_names[EP_ADMIN_TRAFFIC]);
    }
    return 1;
}
