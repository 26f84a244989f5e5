/*
 * predict.c - the seed service's prediction shape, for POST /predict and
 * POST /v1/models/{name}[/versions/{v}]/predict (the pipeline runs it):
 *
 *   {"text": "..."}          -> {"label", "confidence", "model", "model_version"}
 *   {"texts": ["...", ...]}  -> {"predictions": [{"label", "confidence"}...], "model", "model_version"}
 *
 * Requests that name no version take the model's cascade; a list whose
 * texts were answered by different versions says so per prediction
 * ("model_version" inside each), and "model_version" outside names the
 * version that answered first.
 *
 * Pure functions of their arguments (the fuzz target drives the parser).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

static int parse(const http_limits *limits, json_t *body, http_inputs *in, http_fail *fail) {
    if (!json_is_object(body))
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "request body must be a JSON object");
    json_t *text = json_object_get(body, "text");
    json_t *texts = json_object_get(body, "texts");
    if ((text && texts) || (!text && !texts))
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST,
                             "give exactly one of \"text\" (a string) or \"texts\" (a list of strings)");
    if (texts) {
        if (!json_is_array(texts))
            return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "texts must be a list of strings");
        size_t n = json_array_size(texts);
        if (n == 0)
            return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "texts must not be empty");
        if (n > limits->max_inputs)
            return http_fail_set(fail, HTTP_ERR_TOO_MANY_INPUTS, "texts has %zu items; the limit is %zu per request",
                                 n, limits->max_inputs);
    }
    in->single = text != NULL;
    return http_inputs_collect(limits, text, texts, "texts", in, fail);
}

static size_t cache_params(const http_inputs *in, const serving_request *r, char *buf, size_t cap) {
    (void)in;
    if (!r->cascade.first) /* the answer is the version's alone */
        return 0;
    return (size_t)snprintf(buf, cap, "cascade:%ld:%ld:%.17g", r->cascade.first, r->cascade.then,
                            r->cascade.threshold);
}

static char *answer(const http_inputs *in, const serving_request *r) {
    char ver[24];
    long answered_by = serving_version_number(r->first);
    json_t *preds = in->single ? NULL : json_array();
    json_t *out = NULL;
    for (size_t i = 0; i < r->n; i++) {
        const serving_text_result *t = &r->results[i];
        const char *label = serving_version_label(t->version, t->label);
        json_t *pred = json_pack("{s:s, s:f}", "label", label ? label : "", "confidence", (double)t->confidence);
        if (in->single) {
            out = pred;
            answered_by = serving_version_number(t->version);
        } else {
            if (r->n_escalated) /* texts of one list may be answered by different versions */
                json_object_set_new(pred, "model_version",
                                    json_string(http_format_int(serving_version_number(t->version), ver)));
            json_array_append_new(preds, pred);
        }
    }
    if (!in->single)
        out = json_pack("{s:o}", "predictions", preds);
    json_object_set_new(out, "model", json_string(serving_version_model(r->first)));
    json_object_set_new(out, "model_version", json_string(http_format_int(answered_by, ver)));
    return http_json_text(out);
}

const http_infer_ops http_seed_predict_ops = {
    .task = SERVING_TASK_CLASSIFY,
    .allow_cascade = 1,
    .parse = parse,
    .cache_params = cache_params,
    .answer = answer,
};
