/*
 * kserve.c - the Open Inference Protocol (KServe v2) REST endpoints, for
 * clients written against Triton, KServe, Seldon MLServer or OpenVINO Model
 * Server (docs/http.md, "Open Inference Protocol"):
 *
 *   GET  /v2                                  server metadata
 *   GET  /v2/health/live, /v2/health/ready    200 or 503
 *   GET  /v2/models/{name}[/versions/{v}]     model metadata (inputs, outputs)
 *   GET  /v2/models/{name}[/versions/{v}]/ready
 *   POST /v2/models/{name}[/versions/{v}]/infer
 *
 * An infer request carries one BYTES input of texts (shape [N] or [N, 1],
 * data flat or nested); it takes the /predict path (scope predict, rate
 * limit, cache, batcher) with its own reader (http_kserve_read_inputs) and
 * writer (http_kserve_answer). Outputs: "label" (BYTES [N]) and
 * "probabilities" (FP32 [N, labels]), or those the request names.
 * Errors keep aiserve's one error shape (docs/http.md), with the status
 * codes the protocol asks for.
 *
 * Loop thread only.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

/* ---- paths --------------------------------------------------------------- */

typedef struct v2_path {
    char name[256];
    long version; /* 0: none given */
    const char *tail; /* "", "/ready" or "/infer" */
} v2_path;

/* Parses "/v2/models/{name}[/versions/{v}][/ready|/infer]". 1, or 0 when
 * the path is not of that form. */
static int parse_model_path(const char *path, v2_path *out) {
    static const char prefix[] = "/v2/models/";
    if (strncmp(path, prefix, sizeof prefix - 1) != 0)
        return 0;
    const char *rest = path + sizeof prefix - 1;
    size_t n = strcspn(rest, "/");
    if (n == 0 || n >= sizeof out->name)
        return 0;
    memcpy(out->name, rest, n);
    out->name[n] = 0;
    rest += n;
    out->version = 0;
    if (strncmp(rest, "/versions/", 10) == 0) {
        rest += 10;
        char *end;
        long v = strtol(rest, &end, 10);
        if (end == rest || v <= 0 || (*end && *end != '/') || rest[0] == '+' || rest[0] == '-')
            return 0;
        out->version = v;
        rest = end;
    }
    if (*rest && strcmp(rest, "/ready") != 0 && strcmp(rest, "/infer") != 0)
        return 0;
    out->tail = rest;
    return 1;
}

const char *http_kserve_route_methods(const char *path, http_endpoint *ep) {
    v2_path p;
    if (strcmp(path, "/v2") == 0 || strcmp(path, "/v2/health/live") == 0 || strcmp(path, "/v2/health/ready") == 0)
        return *ep = EP_V2, "GET";
    if (!parse_model_path(path, &p))
        return NULL;
    if (strcmp(p.tail, "/infer") == 0)
        return *ep = EP_V2_INFER, "POST";
    return *ep = EP_V2_MODEL, "GET";
}

/* ---- metadata -------------------------------------------------------------- */

/* The versions of model `name` (and the one that serves `version`, or the
 * newest available when 0): status list entries into *chosen (NULL when
 * none). Returns the number of versions the model has (0: unknown model). */
static size_t find_model(http_server *s, const char *name, long version, serving_version_status **list,
                         size_t *n, serving_version_status **chosen) {
    *list = NULL;
    *n = 0;
    *chosen = NULL;
    if (serving_repo_list(s->repo, list, n) != 0)
        return 0;
    size_t count = 0;
    for (size_t i = 0; i < *n; i++) {
        serving_version_status *v = &(*list)[i];
        if (strcmp(v->model, name) != 0)
            continue;
        count++;
        if (version ? v->version == version
                    : v->state == SERVING_STATE_AVAILABLE && (!*chosen || v->version > (*chosen)->version))
            *chosen = v;
    }
    return count;
}

static json_t *tensor_json(const char *name, const char *datatype, json_int_t d0, json_int_t d1) {
    json_t *shape = d1 ? json_pack("[I, I]", d0, d1) : json_pack("[I]", d0);
    return json_pack("{s:s, s:s, s:o}", "name", name, "datatype", datatype, "shape", shape);
}

static void handle_model(http_call *call, const v2_path *p, int ready_only) {
    http_server *s = call->loop->server;
    serving_version_status *list, *v;
    size_t n;
    size_t count = find_model(s, p->name, p->version, &list, &n, &v);
    if (count == 0 || (p->version && !v)) {
        free(list);
        http_reply_error(call, count ? HTTP_ERR_VERSION_NOT_FOUND : HTTP_ERR_MODEL_NOT_FOUND,
                         count ? "model '%s' has no version %ld" : "model '%s' not found", p->name, p->version);
        return;
    }
    int ready = v && v->state == SERVING_STATE_AVAILABLE;
    if (ready_only) {
        json_t *o = json_pack("{s:s, s:b}", "name", p->name, "ready", ready);
        free(list);
        http_reply_json(call, ready ? 200 : 503, o);
        return;
    }
    json_t *versions = json_array();
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i].model, p->name) != 0)
            continue;
        char ver[32];
        snprintf(ver, sizeof ver, "%ld", list[i].version);
        json_array_append_new(versions, json_string(ver));
    }
    json_t *o = json_pack("{s:s, s:o, s:s}", "name", p->name, "versions", versions, "platform", "aiserve");
    json_t *inputs = json_array(), *outputs = json_array();
    json_array_append_new(inputs, tensor_json("text", "BYTES", -1, 0));
    if (v && v->has_info && v->info.task == ENGINE_TASK_CLASSIFY) {
        json_array_append_new(outputs, tensor_json("label", "BYTES", -1, 0));
        json_array_append_new(outputs, tensor_json("probabilities", "FP32", -1, v->info.n_labels));
    }
    json_object_set_new(o, "inputs", inputs);
    json_object_set_new(o, "outputs", outputs);
    free(list);
    http_reply_json(call, 200, o);
}

/* ---- routing ------------------------------------------------------------- */

int http_route_kserve(http_call *call, const char *path) {
    http_endpoint ep;
    if (!http_kserve_route_methods(path, &ep))
        return 0;
    call->endpoint = ep;
    http_server *s = call->loop->server;
    if (ep == EP_V2) {
        if (!http_method_is(call, EVHTTP_REQ_GET))
            return 1;
        if (strcmp(path, "/v2") == 0) {
            if (http_authorized(call, GUARD_SCOPE_ANY))
                http_reply_json(call, 200, json_pack("{s:s, s:s, s:[]}", "name", "aiserve", "version", s->version,
                                                     "extensions"));
        } else if (strcmp(path, "/v2/health/live") == 0) {
            http_reply_json(call, 200, json_pack("{s:b}", "live", 1));
        } else {
            int ready = serving_repo_is_ready(s->repo) && !atomic_load(&s->draining);
            http_reply_json(call, ready ? 200 : 503, json_pack("{s:b}", "ready", ready));
        }
        return 1;
    }
    v2_path p;
    parse_model_path(path, &p);
    if (ep == EP_V2_INFER) {
        if (!http_authorized(call, GUARD_SCOPE_PREDICT) || !http_method_is(call, EVHTTP_REQ_POST))
            return 1;
        call->kserve = 1;
        call->want_version = p.version;
        http_predict_named(call, p.name);
        return 1;
    }
    if (http_authorized(call, GUARD_SCOPE_ANY) && http_method_is(call, EVHTTP_REQ_GET))
        handle_model(call, &p, strcmp(p.tail, "/ready") == 0);
    return 1;
}

/* ---- infer: request and response ------------------------------------------ */

/* Appends the strings of v (a string, or arrays of them, nested) to out.
 * 0, or -1 when something else is inside. */
static int flatten(json_t *v, json_t *out, int depth) {
    if (json_is_string(v))
        return json_array_append(out, v);
    if (!json_is_array(v) || depth > 4)
        return -1;
    for (size_t i = 0; i < json_array_size(v); i++)
        if (flatten(json_array_get(v, i), out, depth + 1) != 0)
            return -1;
    return 0;
}

int http_kserve_read_inputs(http_call *call, json_t *body, size_t *n_out) {
    http_server *s = call->loop->server;
    json_t *inputs = json_is_object(body) ? json_object_get(body, "inputs") : NULL;
    if (!json_is_array(inputs) || json_array_size(inputs) != 1 || !json_is_object(json_array_get(inputs, 0)))
        return http_reply_error(call, HTTP_ERR_INVALID_REQUEST,
                                "inputs must be a list of one tensor: {\"name\": \"text\", \"datatype\": \"BYTES\", "
                                "\"shape\": [N], \"data\": [texts]}"),
               -1;
    json_t *in = json_array_get(inputs, 0);
    json_t *datatype = json_object_get(in, "datatype"), *shape = json_object_get(in, "shape");
    json_t *data = json_object_get(in, "data");
    if (!json_is_string(datatype) || strcmp(json_string_value(datatype), "BYTES") != 0)
        return http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "the input's datatype must be BYTES (texts)"), -1;
    json_int_t count = 1;
    size_t dims = json_is_array(shape) ? json_array_size(shape) : 0;
    for (size_t i = 0; i < dims; i++) {
        json_t *d = json_array_get(shape, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0 || json_integer_value(d) > 1000000)
            dims = 0;
        else
            count *= json_integer_value(d);
    }
    if (dims < 1 || dims > 2 || (dims == 2 && json_integer_value(json_array_get(shape, 1)) != 1))
        return http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "the input's shape must be [N] or [N, 1]"), -1;
    json_t *flat = json_array();
    if (!data || flatten(data, flat, 0) != 0) {
        json_decref(flat);
        return http_reply_error(call, HTTP_ERR_INVALID_TEXT, "the input's data must be a list of strings"), -1;
    }
    size_t n = json_array_size(flat);
    if ((json_int_t)n != count) {
        json_decref(flat);
        return http_reply_error(call, HTTP_ERR_INVALID_REQUEST,
                                "the input's shape says %lld texts; data has %zu", (long long)count, n),
               -1;
    }
    if (n == 0 || n > (size_t)s->opts.max_inputs) {
        json_decref(flat);
        return http_reply_error(call, n ? HTTP_ERR_TOO_MANY_INPUTS : HTTP_ERR_INVALID_REQUEST,
                                "the input has %zu texts; 1 to %d per request", n, s->opts.max_inputs),
               -1;
    }
    /* Requested outputs: names we know, or none (both). */
    json_t *outputs = json_object_get(body, "outputs");
    call->kserve_outputs = 3;
    if (outputs) {
        call->kserve_outputs = 0;
        for (size_t i = 0; json_is_array(outputs) && i < json_array_size(outputs); i++) {
            json_t *name = json_object_get(json_array_get(outputs, i), "name");
            const char *nm = json_is_string(name) ? json_string_value(name) : "";
            if (strcmp(nm, "label") == 0)
                call->kserve_outputs |= 1;
            else if (strcmp(nm, "probabilities") == 0)
                call->kserve_outputs |= 2;
            else {
                json_decref(flat);
                return http_reply_error(call, HTTP_ERR_INVALID_REQUEST,
                                        "unknown output '%.64s': this model has label and probabilities", nm),
                       -1;
            }
        }
        if (!call->kserve_outputs) {
            json_decref(flat);
            return http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "outputs must name label and/or probabilities"),
                   -1;
        }
    }
    json_t *id = json_object_get(body, "id");
    if (id && !json_is_string(id)) {
        json_decref(flat);
        return http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "id must be a string"), -1;
    }
    /* The texts live in `flat`, kept with the body. */
    json_object_set_new(body, "\x01texts", flat);
    call->texts = calloc(n, sizeof *call->texts);
    call->lens = calloc(n, sizeof *call->lens);
    if (!call->texts || !call->lens)
        return http_reply_error(call, HTTP_ERR_INTERNAL, "out of memory"), -1;
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(flat, i);
        if (http_check_text(call, v, "data", i) != 0)
            return -1;
        call->texts[i] = json_string_value(v);
        call->lens[i] = json_string_length(v);
    }
    *n_out = n;
    return 0;
}

/* What decides a KServe answer besides the texts: the outputs asked for and
 * the id it echoes (for the cache key). */
size_t http_kserve_params(http_call *call, char *buf, size_t cap) {
    json_t *id = call->body ? json_object_get(call->body, "id") : NULL;
    return (size_t)snprintf(buf, cap, "kserve-v2:%d:%s", call->kserve_outputs, id ? json_string_value(id) : "");
}

char *http_kserve_answer(http_call *call) {
    const engine_model_info *info = serving_version_info(call->version);
    const int K = info->n_labels;
    size_t n = call->job.n;
    char ver[32];
    snprintf(ver, sizeof ver, "%ld", serving_version_number(call->version));
    json_t *outputs = json_array();
    if (call->kserve_outputs & 1) {
        json_t *labels = json_array();
        for (size_t i = 0; i < n; i++) {
            int best = http_best_label(call->probs + i * (size_t)K, K);
            const char *label = serving_version_label(call->version, best);
            json_array_append_new(labels, json_string(label ? label : ""));
        }
        json_t *t = tensor_json("label", "BYTES", (json_int_t)n, 0);
        json_object_set_new(t, "data", labels);
        json_array_append_new(outputs, t);
    }
    if (call->kserve_outputs & 2) {
        json_t *probs = json_array();
        for (size_t i = 0; i < n * (size_t)K; i++)
            json_array_append_new(probs, json_real((double)call->probs[i]));
        json_t *t = tensor_json("probabilities", "FP32", (json_int_t)n, K);
        json_object_set_new(t, "data", probs);
        json_array_append_new(outputs, t);
    }
    json_t *out = json_pack("{s:s, s:s}", "model_name", serving_version_model(call->version), "model_version", ver);
    json_t *id = json_object_get(call->body, "id");
    if (id)
        json_object_set(out, "id", id);
    json_object_set_new(out, "outputs", outputs);
    char *text = json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(out);
    return text;
}
