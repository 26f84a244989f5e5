/*
 * fuzz_safetensors.c - libFuzzer target: any byte string given to the
 * safetensors reader yields either a valid handle whose every tensor byte
 * can be read, or an error; never a crash or an out-of-bounds read.
 */
#include <stdint.h>

#include "fuzz_tensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_tensors_parse(safetensors_parse, data, size);
    return 0;
}
