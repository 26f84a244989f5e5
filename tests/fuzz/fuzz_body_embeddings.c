/*
 * fuzz_body_embeddings.c - libFuzzer target for the body of POST
 * /v1/embeddings (OpenAI's shape: input string or list, model,
 * encoding_format). See fuzz_bodies.h.
 */
#include "fuzz_bodies.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_infer_body(&http_embeddings_ops, data, size);
    return 0;
}
