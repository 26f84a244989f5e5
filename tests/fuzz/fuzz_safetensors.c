/*
 * fuzz_safetensors.c - libFuzzer target: any byte string given to the
 * safetensors reader yields either a valid handle whose every tensor byte
 * can be read, or an error; never a crash or an out-of-bounds read.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* an exact-size copy so that ASan catches any read past the end */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    safetensors *st = NULL;
    engine_error err;
    if (safetensors_parse(copy, size, "fuzz", &st, &err) == 0) {
        volatile uint8_t sum = 0;
        for (size_t i = 0; i < safetensors_count(st); i++) {
            const safetensors_tensor *t = safetensors_at(st, i);
            for (uint64_t b = 0; b < t->n_bytes; b++)
                sum += ((const uint8_t *)t->data)[b];
            (void)safetensors_find(st, t->name);
        }
        (void)sum;
        safetensors_close(st);
    }
    free(copy);
    return 0;
}
