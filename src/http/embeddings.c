/*
 * embeddings.c - POST /v1/embeddings in the OpenAI shape, served by the
 * embedding models of the repository (docs/http.md, Embeddings):
 *
 *   {"model": "minilm", "input": "text" | ["text", ...], "encoding_format": "float" | "base64"}
 *   -> {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [...]}],
 *       "model": "minilm", "usage": {"prompt_tokens": N, "total_tokens": N}}
 *
 * The request takes the prediction path (scope embed, rate limit, cache,
 * batcher): http_embeddings_read reads the body, the scheduler pools and
 * normalises as the model's sentence-transformers files say, and
 * http_embeddings_answer writes the answer. base64 is the little-endian
 * float32 bytes of each vector, as OpenAI sends it.
 *
 * Loop thread only.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

int http_embeddings_read(http_call *call, json_t *body, size_t *n_out) {
    http_server *s = call->loop->server;
    if (!json_is_object(body))
        return http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "request body must be a JSON object"), -1;
    json_t *model = json_object_get(body, "model"), *input = json_object_get(body, "input");
    json_t *format = json_object_get(body, "encoding_format");
    if (model && !json_is_string(model))
        return http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "model must be a string"), -1;
    if (format && !(json_is_string(format) && (strcmp(json_string_value(format), "float") == 0 ||
                                               strcmp(json_string_value(format), "base64") == 0)))
        return http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "encoding_format must be float or base64"), -1;
    call->embed_base64 = format && strcmp(json_string_value(format), "base64") == 0;
    if (model) {
        http_copy(call->model_name, sizeof call->model_name, json_string_value(model));
        call->has_model_name = 1;
    }
    int single = json_is_string(input);
    if (!single && !json_is_array(input))
        return http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "input must be a string or a list of strings"), -1;
    size_t n = single ? 1 : json_array_size(input);
    if (n == 0)
        return http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "input must not be empty"), -1;
    if (n > (size_t)s->opts.max_inputs)
        return http_reply_error(call, HTTP_ERR_TOO_MANY_INPUTS, "input has %zu items; the limit is %d per request", n,
                                s->opts.max_inputs),
               -1;
    call->texts = calloc(n, sizeof *call->texts);
    call->lens = calloc(n, sizeof *call->lens);
    if (!call->texts || !call->lens)
        return http_reply_error(call, HTTP_ERR_INTERNAL, "out of memory"), -1;
    for (size_t i = 0; i < n; i++) {
        json_t *v = single ? input : json_array_get(input, i);
        if (http_check_text(call, v, single ? "text" : "input", i) != 0)
            return -1;
        call->texts[i] = json_string_value(v);
        call->lens[i] = json_string_length(v);
    }
    *n_out = n;
    return 0;
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

char *http_embeddings_answer(http_call *call) {
    const engine_model_info *info = serving_version_info(call->version);
    const size_t H = (size_t)info->hidden;
    json_t *data = json_array();
    for (size_t i = 0; i < call->job.n; i++) {
        const float *vec = call->probs + i * H;
        json_t *emb;
        if (call->embed_base64) { /* little-endian float32, as OpenAI (x86 and ARM are little-endian) */
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
    json_int_t tokens = (json_int_t)call->job.n_tokens;
    json_t *out = json_pack("{s:s, s:o, s:s, s:{s:I, s:I}}", "object", "list", "data", data, "model",
                            serving_version_model(call->version), "usage", "prompt_tokens", tokens, "total_tokens",
                            tokens);
    char *text = json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(out);
    return text;
}

size_t http_embeddings_params(http_call *call, char *buf, size_t cap) {
    return (size_t)snprintf(buf, cap, "embed:%s", call->embed_base64 ? "base64" : "float");
}
