/*
 * fuzz_body_kserve.c - libFuzzer target for the body of POST
 * /v2/models/{name}/infer (the Open Inference Protocol: one BYTES input,
 * shape [N] or [N, 1], nested data, named outputs, id). See fuzz_bodies.h.
 */
#include "fuzz_bodies.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_infer_body(&http_kserve_infer_ops, data, size);
    return 0;
}
