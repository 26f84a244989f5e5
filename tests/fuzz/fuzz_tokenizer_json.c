/*
 * fuzz_tokenizer_json.c - libFuzzer target: any bytes as a tokenizer.json
 * either fail to load with an error that names the file, or load into a
 * tokenizer that encodes a few fixed texts, singly and as a pair, into ids
 * it knows; never a crash, a hang, a huge allocation or an out-of-bounds
 * access (hostile merges, ids out of range, broken base64 or double-array
 * tries in the Precompiled map, templates naming missing tokens).
 *
 * The bytes reach the loader through an in-memory file (memfd).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const texts[] = {"Hello, world! It's 2024.", "  caf\xc3\xa9 \xef\xbc\xa1\xe2\x91\xa0 ",
                                    "<s>a<mask> b</s>", "", "\xe4\xb8\xad\xe6\x96\x87 e\xcc\x81 \xe2\x96\x81x"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fd = memfd_create("tokenizer.json", 0);
    if (fd < 0)
        return 0;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    tokenizer *t = NULL;
    engine_error err = {0};
    int rc = tokenizer_load_json(path, NULL, &t, &err);
    close(fd);
    if (rc) {
        if (!strstr(err.message, path) || t)
            abort();
        return 0;
    }
    int32_t ids[256];
    size_t n;
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        const char *s = texts[i];
        rc = tokenizer_encode(t, s, strlen(s), 256, ids, 256, &n, &err);
        if (rc == 0) {
            for (size_t k = 0; k < n; k++)
                if (ids[k] < 0 || (size_t)ids[k] >= tokenizer_vocab_size(t))
                    abort();
        } else if (rc != ENGINE_EARG) { /* a template with more than 256 specials */
            abort();
        }
        rc = tokenizer_encode_pair(t, s, strlen(s), texts[0], strlen(texts[0]), 256, ids, 256, &n, &err);
        if (rc != 0 && rc != ENGINE_EARG)
            abort();
        tokenizer_is_blank(t, s, strlen(s));
    }
    tokenizer_destroy(t);
    return 0;
}
