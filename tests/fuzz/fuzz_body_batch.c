/*
 * fuzz_body_batch.c - libFuzzer target for batch submissions: the first
 * byte picks the shape (0: POST /batch_predict, a JSON list or {"texts"};
 * 1: POST /v1/batch as JSON, {"model", "inputs"}; 2: POST /v1/batch as JSON
 * Lines), the rest is the body, parsed by http_batch_parse as the server
 * parses it. See fuzz_bodies.h.
 */
#include "fuzz_bodies.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    int mode = data[0] % 3;
    http_inputs in = {0};
    http_fail fail = {0};
    int ok = http_batch_parse(&fuzz_limits, (const char *)data + 1, size - 1, mode == 2,
                              mode == 0 ? JOBS_KIND_SEED : JOBS_KIND_V1, &in, &fail);
    fuzz_check_inputs(&in, ok, &fail);
    return 0;
}
