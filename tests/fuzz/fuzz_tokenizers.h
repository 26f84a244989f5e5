/*
 * fuzz_tokenizers.h - what the BPE and Unigram fuzz targets share: any
 * bytes go to tokenizer_encode (and, split at their middle, to
 * tokenizer_encode_pair) of fixture tokenizers loaded once from the source
 * tree. Invalid UTF-8 must give ENGINE_EINPUT and never count as blank;
 * anything else must give a well-formed encoding:
 *  - the specials around the text ([cls] A [sep], each optional), every id
 *    a known token;
 *  - a short max_length gives exactly the start of the long encoding;
 *  - blank (what the server refuses as empty) is "specials only";
 *  - a pair fits max_length and a too-small cap reports the size needed.
 */
#ifndef AISERVE_FUZZ_TOKENIZERS_H
#define AISERVE_FUZZ_TOKENIZERS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_SHORT 9
#define FUZZ_LONG 4096

static inline tokenizer *fuzz_load(const char *name) {
    char path[1024];
    strcpy(path, AISERVE_SOURCE_DIR "/tests/fixtures/tokenizer/");
    strcat(path, name);
    tokenizer *t = NULL;
    engine_error err;
    if (tokenizer_load_json(path, NULL, &t, &err))
        abort(); /* the fixtures must load: nothing else is being tested */
    return t;
}

static inline void fuzz_check_ids(const tokenizer *t, const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= tokenizer_vocab_size(t) || !tokenizer_token(t, ids[i]))
            abort();
}

static inline void fuzz_check(const tokenizer *t, const char *text, size_t size) {
    static int32_t full[FUZZ_LONG], part[FUZZ_SHORT];
    size_t n_full = 0, n_part = 0, n_small = 0;
    engine_error err;
    /* The single template here is [cls] A [sep], each special optional. */
    int32_t cls = tokenizer_cls_id(t), sep = tokenizer_sep_id(t);
    size_t pre = cls >= 0, suf = sep >= 0;
    int rc = tokenizer_encode(t, text, size, FUZZ_LONG, full, FUZZ_LONG, &n_full, &err);
    int rc2 = tokenizer_encode(t, text, size, FUZZ_SHORT, part, FUZZ_SHORT, &n_part, &err);
    if (rc != rc2)
        abort();
    if (tokenizer_is_blank(t, text, size) != (rc == 0 && n_full == pre + suf))
        abort();
    if (rc == ENGINE_EINPUT)
        return;
    if (rc != 0 || n_full < pre + suf || n_part < pre + suf || n_part > FUZZ_SHORT || (pre && full[0] != cls) ||
        (pre && part[0] != cls) || (suf && (full[n_full - 1] != sep || part[n_part - 1] != sep)))
        abort();
    fuzz_check_ids(t, full, n_full);
    size_t want = n_full < FUZZ_SHORT ? n_full : FUZZ_SHORT;
    if (n_part != want || memcmp(part, full, (n_part - suf) * sizeof part[0]) != 0)
        abort();
    if (n_full > 0) {
        rc = tokenizer_encode(t, text, size, FUZZ_LONG, full, n_full - 1, &n_small, &err);
        if (rc != ENGINE_EARG || n_small != n_full)
            abort();
    }
    /* The two halves as a pair (the cut may fall inside a character). */
    size_t half = size / 2;
    rc = tokenizer_encode_pair(t, text, half, text + half, size - half, FUZZ_SHORT + 4, full, FUZZ_LONG, &n_full,
                               &err);
    if (rc == 0) {
        if (n_full > FUZZ_SHORT + 4 || (pre && full[0] != cls) || (suf && full[n_full - 1] != sep))
            abort();
        fuzz_check_ids(t, full, n_full);
    } else if (rc != ENGINE_EINPUT) {
        abort();
    }
}

/* Runs fuzz_check on an exact-size copy, so ASan catches reads past the end. */
static inline void fuzz_run(tokenizer *const *ts, size_t n, const uint8_t *data, size_t size) {
    char *copy = malloc(size ? size : 1);
    if (!copy)
        return;
    memcpy(copy, data, size);
    for (size_t i = 0; i < n; i++)
        fuzz_check(ts[i], copy, size);
    free(copy);
}

#endif
