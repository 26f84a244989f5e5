/*
 * fuzz_torchbin.c - libFuzzer target: any byte string given to the
 * pytorch_model.bin reader yields either a handle whose every tensor byte
 * can be read, or an error; never a crash, an out-of-bounds read or an
 * unbounded allocation.
 *
 * Two input forms, so that mutations reach the unpickler (a mutated pickle
 * inside a zip would only ever fail its CRC):
 *  - starting with "PK": the whole file;
 *  - otherwise a bare pickle: one byte n (at most 16), n u32 little-endian
 *    storage sizes (each at most 64 KiB), then data.pkl; it is wrapped in an
 *    archive with archive/data/0 .. n-1 of those sizes.
 * tools/make_torchbin_fixtures.py writes seeds of both forms.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_tensors.h"
#include "torchbin.h"
#include "zip_image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size >= 2 && data[0] == 'P' && data[1] == 'K') {
        fuzz_tensors_parse(torchbin_parse, data, size);
        return 0;
    }
    if (size < 1 || data[0] > 16 || size < 1 + 4 * (size_t)data[0])
        return 0;
    int n = data[0];
    zip_image_entry e[18];
    char names[16][24];
    static uint8_t fill[65536]; /* storage bytes: a fixed pattern */
    if (!fill[1])
        for (size_t i = 0; i < sizeof fill; i++)
            fill[i] = (uint8_t)(i * 131 + 7);
    for (int i = 0; i < n; i++) {
        const uint8_t *s = data + 1 + 4 * i;
        size_t len = (size_t)s[0] | (size_t)s[1] << 8 | (size_t)s[2] << 16 | (size_t)s[3] << 24;
        snprintf(names[i], sizeof names[i], "archive/data/%d", i);
        e[i] = (zip_image_entry){names[i], fill, len < sizeof fill ? len : sizeof fill, 0};
    }
    size_t head = 1 + 4 * (size_t)n;
    e[n] = (zip_image_entry){"archive/data.pkl", data + head, size - head, 0};
    e[n + 1] = (zip_image_entry){"archive/version", "3\n", 2, 0};
    size_t len = 0;
    uint8_t *zip = zip_image(e, (size_t)n + 2, &len);
    if (zip)
        fuzz_tensors_parse(torchbin_parse, zip, len);
    free(zip);
    return 0;
}
