/*
 * fuzz_body_predict.c - libFuzzer target for the body of POST /predict and
 * POST /v1/models/{name}[/versions/{v}]/predict (one parser serves both):
 * {"text": ...} or {"texts": [...]}. See fuzz_bodies.h.
 */
#include "fuzz_bodies.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_infer_body(&http_seed_predict_ops, data, size);
    return 0;
}
