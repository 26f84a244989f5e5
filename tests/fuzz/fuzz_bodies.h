/*
 * fuzz_bodies.h - what the request-body fuzz targets share: any bytes as a
 * body go through the endpoint's parser exactly as the server runs it
 * (http_parse_json, then the endpoint's ops->parse), with small limits so
 * the refusals are reached too. A parse either succeeds with 1..max_inputs
 * texts, each a string within the limit, or fails with an error a client
 * would get (never 500 internal_error, never a crash or a leak).
 *
 * Test-only: it reaches the HTTP module's internal header through the
 * aiserve_http_internal target.
 */
#ifndef AISERVE_FUZZ_BODIES_H
#define AISERVE_FUZZ_BODIES_H

#include <stdint.h>
#include <stdlib.h>

#include "http_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const http_limits fuzz_limits = {.max_text_chars = 64, .max_inputs = 8};

/* Checks what a successful parse left in `in`, then frees it. */
static inline void fuzz_check_inputs(http_inputs *in, int ok, const http_fail *fail) {
    if (ok != 0) {
        if (fail->error == HTTP_ERR_INTERNAL || fail->error >= HTTP_ERR_COUNT)
            abort();
    } else {
        if (in->n < 1 || in->n > fuzz_limits.max_inputs || !in->texts || !in->lens)
            abort();
        for (size_t i = 0; i < in->n; i++) {
            if (!in->texts[i] || !http_is_valid_utf8((const unsigned char *)in->texts[i], in->lens[i]))
                abort();
        }
        if (in->query && !http_is_valid_utf8((const unsigned char *)in->query, in->query_len))
            abort();
        if (in->query && (in->top_n < 1 || in->top_n > in->n)) /* rerank: results to give */
            abort();
    }
    http_inputs_free(in);
}

/* Runs an inference endpoint's parser on data. */
static inline void fuzz_infer_body(const http_infer_ops *ops, const uint8_t *data, size_t size) {
    http_fail fail = {0};
    http_inputs in = {0};
    json_t *body = http_parse_json((const char *)data, size, &fail);
    if (!body) {
        fuzz_check_inputs(&in, -1, &fail);
        return;
    }
    in.body = body;
    int ok = ops->parse(&fuzz_limits, body, &in, &fail);
    fuzz_check_inputs(&in, ok, &fail);
}

#endif /* AISERVE_FUZZ_BODIES_H */
