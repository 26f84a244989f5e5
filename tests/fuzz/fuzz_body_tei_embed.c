/*
 * fuzz_body_tei_embed.c - libFuzzer target for the body of POST /embed
 * (Hugging Face TEI's shape: inputs string or list, normalize, truncate,
 * truncation_direction, prompt_name, model). See fuzz_bodies.h.
 */
#include "fuzz_bodies.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_infer_body(&http_tei_embed_ops, data, size);
    return 0;
}
