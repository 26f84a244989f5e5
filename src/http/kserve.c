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
 * data flat or nested); it takes the inference pipeline (scope predict,
 * rate limit, cache, batcher) with its own ops (parse, cache parameters,
 * answer), and never a cascade: its answer is one version's tensors. Outputs: "label" (BYTES [N]) and
 * "probabilities" (FP32 [N, labels]), or those the request names.
 * Errors keep aiserve's one error shape (docs/http.md), with the status
 * codes the protocol asks for.
 *
 * The handlers: loop thread only. The infer ops are pure functions of their
 * arguments (the fuzz target drives the parser).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

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

static void handle_model(http_call *call, int ready_only) {
    http_server *s = call->loop->server;
    const char *name = call->params.name;
    long version = call->params.version[0] ? strtol(call->params.version, NULL, 10) : 0;
    serving_version_status *list, *v;
    size_t n;
    size_t count = find_model(s, name, version, &list, &n, &v);
    if (count == 0 || (version && !v)) {
        free(list);
        http_reply_error(call, count ? HTTP_ERR_VERSION_NOT_FOUND : HTTP_ERR_MODEL_NOT_FOUND,
                         count ? "model '%s' has no version %ld" : "model '%s' not found", name, version);
        return;
    }
    int ready = v && v->state == SERVING_STATE_AVAILABLE;
    if (ready_only) {
        json_t *o = json_pack("{s:s, s:b}", "name", name, "ready", ready);
        free(list);
        http_reply_json(call, ready ? 200 : 503, o);
        return;
    }
    json_t *versions = json_array();
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i].model, name) != 0)
            continue;
        char ver[32];
        snprintf(ver, sizeof ver, "%ld", list[i].version);
        json_array_append_new(versions, json_string(ver));
    }
    json_t *o = json_pack("{s:s, s:o, s:s}", "name", name, "versions", versions, "platform", "aiserve");
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

void http_kserve_model(http_call *call) { handle_model(call, 0); }
void http_kserve_model_ready(http_call *call) { handle_model(call, 1); }

void http_kserve_server(http_call *call) {
    http_reply_json(call, 200, json_pack("{s:s, s:s, s:[]}", "name", "aiserve", "version",
                                         call->loop->server->version, "extensions"));
}

void http_kserve_live(http_call *call) { http_reply_json(call, 200, json_pack("{s:b}", "live", 1)); }

void http_kserve_ready(http_call *call) {
    http_server *s = call->loop->server;
    int ready = http_server_ready(s) && !atomic_load(&s->draining);
    http_reply_json(call, ready ? 200 : 503, json_pack("{s:b}", "ready", ready));
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

static int parse(const http_limits *limits, json_t *body, http_inputs *in, http_fail *fail) {
    json_t *inputs = json_is_object(body) ? json_object_get(body, "inputs") : NULL;
    if (!json_is_array(inputs) || json_array_size(inputs) != 1 || !json_is_object(json_array_get(inputs, 0)))
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST,
                             "inputs must be a list of one tensor: {\"name\": \"text\", \"datatype\": \"BYTES\", "
                             "\"shape\": [N], \"data\": [texts]}");
    json_t *tensor = json_array_get(inputs, 0);
    json_t *datatype = json_object_get(tensor, "datatype"), *shape = json_object_get(tensor, "shape");
    json_t *data = json_object_get(tensor, "data");
    if (!json_is_string(datatype) || strcmp(json_string_value(datatype), "BYTES") != 0)
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "the input's datatype must be BYTES (texts)");
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
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "the input's shape must be [N] or [N, 1]");
    json_t *flat = json_array();
    if (!data || flatten(data, flat, 0) != 0) {
        json_decref(flat);
        return http_fail_set(fail, HTTP_ERR_INVALID_TEXT, "the input's data must be a list of strings");
    }
    /* The texts live in `flat`, kept with the body. */
    json_object_set_new(body, "\x01texts", flat);
    size_t n = json_array_size(flat);
    if ((json_int_t)n != count)
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "the input's shape says %lld texts; data has %zu",
                             (long long)count, n);
    if (n == 0 || n > limits->max_inputs)
        return http_fail_set(fail, n ? HTTP_ERR_TOO_MANY_INPUTS : HTTP_ERR_INVALID_REQUEST,
                             "the input has %zu texts; 1 to %zu per request", n, limits->max_inputs);
    /* Requested outputs: names we know, or none (both). */
    json_t *outputs = json_object_get(body, "outputs");
    in->outputs = 3;
    if (outputs) {
        in->outputs = 0;
        for (size_t i = 0; json_is_array(outputs) && i < json_array_size(outputs); i++) {
            json_t *name = json_object_get(json_array_get(outputs, i), "name");
            const char *nm = json_is_string(name) ? json_string_value(name) : "";
            if (strcmp(nm, "label") == 0)
                in->outputs |= 1;
            else if (strcmp(nm, "probabilities") == 0)
                in->outputs |= 2;
            else
                return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST,
                                     "unknown output '%.64s': this model has label and probabilities", nm);
        }
        if (!in->outputs)
            return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "outputs must name label and/or probabilities");
    }
    json_t *id = json_object_get(body, "id");
    if (id && !json_is_string(id))
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "id must be a string");
    return http_inputs_collect(limits, NULL, flat, "data", in, fail);
}

/* What decides a KServe answer besides the texts: the outputs asked for and
 * the id it echoes. */
static size_t cache_params(const http_inputs *in, const serving_request *r, char *buf, size_t cap) {
    (void)r;
    json_t *id = json_object_get(in->body, "id");
    return (size_t)snprintf(buf, cap, "kserve-v2:%d:%s", in->outputs, id ? json_string_value(id) : "");
}

static char *answer(const http_inputs *in, const serving_request *r) {
    const int K = serving_version_info(r->first)->n_labels;
    size_t n = r->n;
    char ver[24];
    json_t *outputs = json_array();
    if (in->outputs & 1) {
        json_t *labels = json_array();
        for (size_t i = 0; i < n; i++) {
            const char *label = serving_version_label(r->first, r->results[i].label);
            json_array_append_new(labels, json_string(label ? label : ""));
        }
        json_t *t = tensor_json("label", "BYTES", (json_int_t)n, 0);
        json_object_set_new(t, "data", labels);
        json_array_append_new(outputs, t);
    }
    if (in->outputs & 2) {
        json_t *probs = json_array();
        for (size_t i = 0; i < n * (size_t)K; i++)
            json_array_append_new(probs, json_real((double)r->out[i]));
        json_t *t = tensor_json("probabilities", "FP32", (json_int_t)n, K);
        json_object_set_new(t, "data", probs);
        json_array_append_new(outputs, t);
    }
    json_t *out = json_pack("{s:s, s:s}", "model_name", serving_version_model(r->first), "model_version",
                            http_format_int(serving_version_number(r->first), ver));
    json_t *id = json_object_get(in->body, "id");
    if (id)
        json_object_set(out, "id", id);
    json_object_set_new(out, "outputs", outputs);
    return http_json_text(out);
}

const http_infer_ops http_kserve_infer_ops = {
    .task = SERVING_TASK_CLASSIFY,
    .allow_cascade = 0,
    .parse = parse,
    .cache_params = cache_params,
    .answer = answer,
};
