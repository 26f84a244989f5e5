/*
 * fuzz_tensors.h - what the checkpoint-reader fuzz targets share: a parse
 * of an exact-size copy of the bytes (so ASan sees the true end), and on
 * success a read of every tensor byte and a lookup of every name before
 * the handle is closed: a reader that says yes must have told the truth.
 */
#ifndef AISERVE_FUZZ_TENSORS_H
#define AISERVE_FUZZ_TENSORS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

typedef int (*fuzz_tensors_parser)(const void *buf, size_t len, const char *label, safetensors **out,
                                   engine_error *err);

static void fuzz_tensors_parse(fuzz_tensors_parser parse, const uint8_t *bytes, size_t len) {
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return;
    memcpy(copy, bytes, len);
    safetensors *st = NULL;
    engine_error err;
    if (parse(copy, len, "fuzz", &st, &err) == 0) {
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
}

#endif
