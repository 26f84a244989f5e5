/*
 * rerank.c - reranking with a cross-encoder (a sequence classifier with one
 * label, such as cross-encoder/ms-marco-MiniLM-L-6-v2 or BAAI/bge-reranker-
 * base): each document is scored as the pair (query, document), in the two
 * shapes clients use (the pipeline runs both):
 *
 *   POST /rerank     Hugging Face TEI's: {"query", "texts", "raw_scores",
 *                    "return_text", "truncate", "model"?}
 *                    -> [{"index", "score", "text"?}] best first
 *   POST /v1/rerank  Cohere's and Jina's: {"model"?, "query", "documents"
 *                    (strings or {"text"}), "top_n", "return_documents"}
 *                    -> {"id", "model", "results": [{"index",
 *                    "relevance_score", "document"?: {"text"}}],
 *                    "usage": {"total_tokens"}, "meta": {"billed_units":
 *                    {"search_units": 1}}}
 *
 * The score is the sigmoid of the model's one logit (TEI's raw_scores: the
 * logit itself), as sentence-transformers' CrossEncoder.predict and TEI
 * give it, whatever the model's problem_type (a regression cross-encoder's
 * raw value is raw_scores).
 * A model with more than one label is not a reranker: 422. Pairs take no
 * cascade and no shadow. The cache key holds the query, and the flags that
 * change the answer.
 *
 * Pure functions of their arguments (the fuzz target drives the parsers).
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "http_int.h"

enum { SHAPE_TEI, SHAPE_COHERE };

/* The query and the documents (a list of strings, or for Cohere of
 * {"text"} objects too, copied into a list of strings the body owns). */
static int parse_common(const http_limits *limits, json_t *body, const char *docs_field, int objects_ok,
                        http_inputs *in, http_fail *fail) {
    if (!json_is_object(body))
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "request body must be a JSON object");
    json_t *query = json_object_get(body, "query");
    if (!query)
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "query is required: the text to rank against");
    if (http_check_text(limits, query, "query", HTTP_FIELD_ITSELF, fail) != 0)
        return -1;
    json_t *model = json_object_get(body, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model) || json_string_length(model) == 0)
            return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "model must be a model name");
        in->model = json_string_value(model);
    }
    json_t *docs = json_object_get(body, docs_field);
    if (!json_is_array(docs) || json_array_size(docs) == 0)
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "%s must be a non-empty list of %s", docs_field,
                             objects_ok ? "strings or {\"text\": ...} objects" : "strings");
    size_t n = json_array_size(docs);
    if (n > limits->max_inputs)
        return http_fail_set(fail, HTTP_ERR_TOO_MANY_INPUTS, "%s has %zu items; the limit is %zu per request",
                             docs_field, n, limits->max_inputs);
    if (objects_ok) { /* {"text": "..."} items become their text */
        json_t *texts = json_array();
        for (size_t i = 0; i < n; i++) {
            json_t *d = json_array_get(docs, i), *t = json_is_object(d) ? json_object_get(d, "text") : d;
            json_array_append(texts, t ? t : d);
        }
        json_object_set_new(body, "\x01documents", texts); /* owned by the body */
        docs = texts;
    }
    in->query = json_string_value(query);
    in->query_len = json_string_length(query);
    return http_inputs_collect(limits, NULL, docs, docs_field, in, fail);
}

static int parse_tei(const http_limits *limits, json_t *body, http_inputs *in, http_fail *fail) {
    if (parse_common(limits, body, "texts", 0, in, fail) != 0)
        return -1;
    int truncate;
    in->shape = SHAPE_TEI;
    in->top_n = in->n;
    if (http_body_flag(body, "raw_scores", 0, &in->raw_scores, fail) ||
        http_body_flag(body, "return_text", 0, &in->return_text, fail) ||
        http_body_flag(body, "truncate", 1, &truncate, fail))
        return -1;
    return 0; /* texts longer than the model takes are truncated either way, as the other endpoints do */
}

static int parse_cohere(const http_limits *limits, json_t *body, http_inputs *in, http_fail *fail) {
    if (parse_common(limits, body, "documents", 1, in, fail) != 0)
        return -1;
    in->shape = SHAPE_COHERE;
    in->top_n = in->n;
    json_t *top = json_object_get(body, "top_n");
    if (top && !json_is_null(top)) {
        if (!json_is_integer(top) || json_integer_value(top) < 1)
            return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "top_n must be a whole number of at least 1");
        if ((size_t)json_integer_value(top) < in->n)
            in->top_n = (size_t)json_integer_value(top);
    }
    return http_body_flag(body, "return_documents", 1, &in->return_text, fail);
}

/* The query (by its hash) and what shapes the answer. */
static size_t cache_params(const http_inputs *in, const serving_request *r, char *buf, size_t cap) {
    (void)r;
    XXH128_hash_t h = XXH3_128bits(in->query, in->query_len);
    return (size_t)snprintf(buf, cap, "rerank:%d:%016llx%016llx:%zu:%zu:%d:%d", in->shape,
                            (unsigned long long)h.high64, (unsigned long long)h.low64, in->query_len, in->top_n,
                            in->raw_scores, in->return_text);
}

typedef struct ranked {
    size_t index;
    double score;
} ranked;

static int by_score(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    return x->index < y->index ? -1 : x->index > y->index; /* ties: input order */
}

static char *answer(const http_inputs *in, const serving_request *r) {
    ranked *order = malloc(r->n * sizeof *order);
    if (!order)
        return NULL;
    for (size_t i = 0; i < r->n; i++) {
        double logit = r->results[i].logits ? r->results[i].logits[0] : 0;
        order[i] = (ranked){i, in->raw_scores ? logit : 1.0 / (1.0 + exp(-logit))};
    }
    qsort(order, r->n, sizeof *order, by_score);
    json_t *list = json_array();
    for (size_t k = 0; k < in->top_n && k < r->n; k++) {
        size_t i = order[k].index;
        json_t *text = json_stringn(in->texts[i], in->lens[i]);
        json_t *item;
        if (in->shape == SHAPE_TEI) {
            item = json_pack("{s:I, s:f}", "index", (json_int_t)i, "score", order[k].score);
            if (in->return_text)
                json_object_set(item, "text", text);
        } else {
            item = json_pack("{s:I, s:f}", "index", (json_int_t)i, "relevance_score", order[k].score);
            if (in->return_text)
                json_object_set_new(item, "document", json_pack("{s:O}", "text", text));
        }
        json_decref(text);
        json_array_append_new(list, item);
    }
    free(order);
    if (in->shape == SHAPE_TEI)
        return http_json_text(list);
    char id[48]; /* names the query and its documents, as a cached answer repeats it */
    snprintf(id, sizeof id, "rerank-%016llx", (unsigned long long)(XXH3_64bits(in->query, in->query_len) ^ r->n));
    return http_json_text(json_pack("{s:s, s:s, s:o, s:{s:I}, s:{s:{s:i}}}", "id", id, "model",
                                    serving_version_model(r->first), "results", list, "usage", "total_tokens",
                                    (json_int_t)r->n_tokens, "meta", "billed_units", "search_units", 1));
}

const http_infer_ops http_tei_rerank_ops = {
    .task = SERVING_TASK_CLASSIFY,
    .pairs = 1,
    .parse = parse_tei,
    .cache_params = cache_params,
    .answer = answer,
};

const http_infer_ops http_rerank_ops = {
    .task = SERVING_TASK_CLASSIFY,
    .pairs = 1,
    .parse = parse_cohere,
    .cache_params = cache_params,
    .answer = answer,
};
