/*
 * fuzz_body_rerank.c - libFuzzer target for the bodies of POST /rerank
 * (TEI's shape) and POST /v1/rerank (Cohere's): the first byte picks the
 * parser, the rest is the body. See fuzz_bodies.h.
 */
#include "fuzz_bodies.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0)
        return 0;
    fuzz_infer_body(data[0] & 1 ? &http_rerank_ops : &http_tei_rerank_ops, data + 1, size - 1);
    return 0;
}
