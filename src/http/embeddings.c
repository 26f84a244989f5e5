/*
 * embeddings.c - embeddings served by the embedding models of the
 * repository, in two shapes (docs/http.md, Embeddings):
 *
 *   POST /v1/embeddings  OpenAI's:
 *     {"model": "minilm", "input": "text" | ["text", ...], "encoding_format": "float" | "base64",
 *      "prompt_name": "query"}
 *     -> {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [...]}],
 *         "model": "minilm", "usage": {"prompt_tokens": N, "total_tokens": N}}
 *   POST /embed          Hugging Face TEI's:
 *     {"inputs": "text" | ["text", ...], "normalize": true, "truncate", "truncation_direction",
 *      "prompt_name": "query", "model"?}
 *     -> [[...], ...]
 *
 * Each request takes the inference pipeline (scope embed, rate limit, cache,
 * batcher) with these ops: parse reads the body, resolved prepends the
 * named prompt of the version that answers (config_sentence_transformers.json;
 * its default_prompt_name when the request names none) to every input, so
 * the cache key and the usage count the prompted texts (one reader of
 * prompt_name and one resolver for both shapes); the scheduler pools and
 * normalises as the model's sentence-transformers files say, and answer
 * writes the answer. base64 is the little-endian float32 bytes of each
 * vector, as OpenAI sends it. TEI's normalize (default true) L2-normalises
 * the vectors of a model whose files do not; false on a model whose files
 * normalise is 422, since the vectors are computed normalised.
 *
 * Pure functions of their arguments (the fuzz target drives the parser).
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_int.h"

/* What both shapes share: "model" (a string; null or absent: the default
 * model), "prompt_name" (a string; null or absent: the model's default) and
 * the texts at `field` (a string, or a non-empty list of at most
 * max_inputs strings). 0, or -1 with fail filled. */
static int parse_common(const http_limits *limits, json_t *body, const char *field, http_inputs *in,
                        http_fail *fail) {
    if (!json_is_object(body))
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "request body must be a JSON object");
    json_t *model = json_object_get(body, "model"), *input = json_object_get(body, field);
    json_t *prompt = json_object_get(body, "prompt_name");
    if (model && !json_is_null(model) && !json_is_string(model))
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "model must be a string");
    in->model = json_string_value(model);
    if (prompt && !json_is_null(prompt) && !json_is_string(prompt))
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "prompt_name must be a string");
    in->prompt_name = json_string_value(prompt);
    int single = json_is_string(input);
    if (!single && !json_is_array(input))
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "%s must be a string or a list of strings", field);
    size_t n = single ? 1 : json_array_size(input);
    if (n == 0)
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "%s must not be empty", field);
    if (n > limits->max_inputs)
        return http_fail_set(fail, HTTP_ERR_TOO_MANY_INPUTS, "%s has %zu items; the limit is %zu per request",
                             field, n, limits->max_inputs);
    return http_inputs_collect(limits, single ? input : NULL, input, field, in, fail);
}

static int parse(const http_limits *limits, json_t *body, http_inputs *in, http_fail *fail) {
    if (parse_common(limits, body, "input", in, fail) != 0)
        return -1;
    json_t *format = json_object_get(body, "encoding_format");
    if (format && !(json_is_string(format) && (strcmp(json_string_value(format), "float") == 0 ||
                                               strcmp(json_string_value(format), "base64") == 0)))
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "encoding_format must be float or base64");
    in->base64 = format && strcmp(json_string_value(format), "base64") == 0;
    return 0;
}

/* TEI's: texts longer than the model takes are truncated whatever
 * "truncate" says (as on every endpoint), so only the right end can go. */
static int parse_tei(const http_limits *limits, json_t *body, http_inputs *in, http_fail *fail) {
    if (parse_common(limits, body, "inputs", in, fail) != 0)
        return -1;
    int truncate;
    if (http_body_flag(body, "normalize", 1, &in->normalize, fail) ||
        http_body_flag(body, "truncate", 0, &truncate, fail))
        return -1;
    json_t *dir = json_object_get(body, "truncation_direction");
    if (dir && !json_is_null(dir) && !(json_is_string(dir) && strcasecmp(json_string_value(dir), "right") == 0))
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST,
                             "truncation_direction must be Right: a text longer than the model takes keeps its "
                             "beginning");
    return 0;
}

/* Prepends the version's prompt (the one asked for, else its default) to
 * every input: the prompted strings, kept in the body (which owns them),
 * replace the texts. An unknown name is a 422 that lists the known ones.
 * The one resolver of both shapes. */
static int resolved(http_inputs *in, const serving_request *r, http_fail *fail) {
    const engine_model_info *info = serving_version_info(r->first);
    const char *name = in->prompt_name ? in->prompt_name : info->default_prompt_name, *prompt = NULL;
    if (!name)
        return 0;
    char known[256] = "";
    size_t used = 0;
    for (int i = 0; i < info->n_prompts; i++) {
        if (strcmp(info->prompt_names[i], name) == 0)
            prompt = info->prompts[i];
        if (used < sizeof known)
            used += (size_t)snprintf(known + used, sizeof known - used, "%s'%s'", i ? ", " : "",
                                     info->prompt_names[i]);
    }
    if (!prompt) {
        if (info->n_prompts == 0)
            return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST,
                                 "prompt_name '%.64s': model '%s' has no named prompts", name,
                                 serving_version_model(r->first));
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "prompt_name '%.64s' is unknown; model '%s' has the prompts %s",
                             name, serving_version_model(r->first), known);
    }
    const size_t plen = strlen(prompt);
    json_t *prompted = json_array();
    if (!prompted || json_object_set_new(in->body, "\x01prompted", prompted) != 0)
        return http_fail_set(fail, HTTP_ERR_INTERNAL, "out of memory");
    for (size_t i = 0; i < in->n; i++) {
        char *text = malloc(plen + in->lens[i] + 1);
        if (!text)
            return http_fail_set(fail, HTTP_ERR_INTERNAL, "out of memory");
        memcpy(text, prompt, plen);
        memcpy(text + plen, in->texts[i], in->lens[i]);
        json_t *v = json_stringn_nocheck(text, plen + in->lens[i]);
        free(text);
        if (!v || json_array_append_new(prompted, v) != 0)
            return http_fail_set(fail, HTTP_ERR_INTERNAL, "out of memory");
        in->texts[i] = json_string_value(v);
        in->lens[i] += plen;
    }
    return 0;
}

/* TEI's normalize false cannot undo the normalisation of a model whose
 * files ask for it; then the prompt, as /v1/embeddings applies it. */
static int resolved_tei(http_inputs *in, const serving_request *r, http_fail *fail) {
    if (!in->normalize && serving_version_info(r->first)->normalize)
        return http_fail_set(fail, HTTP_ERR_UNSUPPORTED_MODEL,
                             "normalize false: model '%s' gives L2-normalised vectors (its modules.json has a "
                             "Normalize module, or it has no modules.json)",
                             serving_version_model(r->first));
    return resolved(in, r, fail);
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Standard base64 (with padding) of n bytes, malloc'd. */
static char *base64(const unsigned char *p, size_t n) {
    char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        *o++ = b64[v >> 18 & 63];
        *o++ = b64[v >> 12 & 63];
        *o++ = i + 1 < n ? b64[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? b64[v & 63] : '=';
    }
    *o = 0;
    return out;
}

static char *answer(const http_inputs *in, const serving_request *r) {
    const engine_model_info *info = serving_version_info(r->first);
    const size_t H = (size_t)info->hidden;
    json_t *data = json_array();
    for (size_t i = 0; i < r->n; i++) {
        const float *vec = r->out + i * H;
        json_t *emb;
        if (in->base64) { /* little-endian float32, as OpenAI (x86 and ARM are little-endian) */
            char *text = base64((const unsigned char *)vec, H * sizeof(float));
            emb = text ? json_string(text) : json_null();
            free(text);
        } else {
            emb = json_array();
            for (size_t k = 0; k < H; k++)
                json_array_append_new(emb, json_real((double)vec[k]));
        }
        json_array_append_new(data, json_pack("{s:s, s:I, s:o}", "object", "embedding", "index", (json_int_t)i,
                                              "embedding", emb));
    }
    json_int_t tokens = (json_int_t)r->n_tokens;
    json_t *out = json_pack("{s:s, s:o, s:s, s:{s:I, s:I}}", "object", "list", "data", data, "model",
                            serving_version_model(r->first), "usage", "prompt_tokens", tokens, "total_tokens",
                            tokens);
    return http_json_text(out);
}

static size_t cache_params(const http_inputs *in, const serving_request *r, char *buf, size_t cap) {
    (void)r;
    return (size_t)snprintf(buf, cap, "embed:%s", in->base64 ? "base64" : "float");
}

/* [[...], ...]: each vector as the model gives it, L2-normalised when asked
 * and the model's files do not (engine_l2_normalize, as engine_embed does). */
static char *answer_tei(const http_inputs *in, const serving_request *r) {
    const engine_model_info *info = serving_version_info(r->first);
    const size_t H = (size_t)info->hidden;
    float *vec = malloc(H * sizeof *vec);
    json_t *list = json_array();
    if (!vec || !list) {
        free(vec);
        json_decref(list);
        return NULL;
    }
    for (size_t i = 0; i < r->n; i++) {
        memcpy(vec, r->out + i * H, H * sizeof *vec);
        if (in->normalize && !info->normalize)
            engine_l2_normalize(vec, H);
        json_t *emb = json_array();
        for (size_t k = 0; k < H; k++)
            json_array_append_new(emb, json_real(vec[k]));
        json_array_append_new(list, emb);
    }
    free(vec);
    return http_json_text(list);
}

/* The answer's shape is the endpoint's: keyed apart from /v1/embeddings. */
static size_t cache_params_tei(const http_inputs *in, const serving_request *r, char *buf, size_t cap) {
    (void)r;
    return (size_t)snprintf(buf, cap, "tei-embed:%d", in->normalize);
}

const http_infer_ops http_embeddings_ops = {
    .task = SERVING_TASK_EMBED,
    .allow_cascade = 0,
    .parse = parse,
    .resolved = resolved,
    .cache_params = cache_params,
    .answer = answer,
};

const http_infer_ops http_tei_embed_ops = {
    .task = SERVING_TASK_EMBED,
    .allow_cascade = 0,
    .parse = parse_tei,
    .resolved = resolved_tei,
    .cache_params = cache_params_tei,
    .answer = answer_tei,
};
