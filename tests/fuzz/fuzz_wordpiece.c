/*
 * fuzz_wordpiece.c - libFuzzer target: any byte string given to the WordPiece
 * tokenizer yields either ENGINE_EINPUT (invalid UTF-8) or a well-formed
 * encoding; never a crash, a hang or an out-of-bounds access.
 *
 * Checked on every input, with the uncased BERT vocabulary and with the small
 * tokenizer.json fixture that has normalized added tokens and no cleaning:
 *  - [CLS] first, [SEP] last, every id inside the vocabulary;
 *  - a short max_length gives exactly the start of the long encoding;
 *  - a too-small cap is refused with ENGINE_EARG and the needed count.
 * The tokenizers are loaded once, from the source tree and the shared data
 * folder beside it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wordpiece.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SHORT_LEN 8
#define LONG_LEN 4096

static wordpiece *load(int json, const char *path) {
    wordpiece *wp = NULL;
    engine_error err;
    int rc = json ? wordpiece_load_json(path, NULL, &wp, &err) : wordpiece_load_vocab(path, NULL, &wp, &err);
    if (rc)
        abort(); /* the fixtures must load: nothing else is being tested */
    return wp;
}

static void check(const wordpiece *wp, const char *text, size_t size) {
    static int32_t full[LONG_LEN], part[SHORT_LEN];
    size_t n_full = 0, n_part = 0, n_small = 0;
    engine_error err;
    int rc = wordpiece_encode(wp, text, size, LONG_LEN, full, LONG_LEN, &n_full, &err);
    int rc2 = wordpiece_encode(wp, text, size, SHORT_LEN, part, SHORT_LEN, &n_part, &err);
    if (rc != rc2)
        abort();
    /* Blank (what the server refuses as empty_text) is exactly "the
     * tokenizer keeps nothing"; invalid UTF-8 is never blank. */
    if (wordpiece_is_blank(wp, text, size) != (rc == 0 && n_full == 2))
        abort();
    if (rc == ENGINE_EINPUT)
        return;
    if (rc != 0 || n_full < 2 || n_full > LONG_LEN || n_part < 2 || n_part > SHORT_LEN)
        abort();
    if (full[0] != wordpiece_cls_id(wp) || full[n_full - 1] != wordpiece_sep_id(wp) ||
        part[n_part - 1] != wordpiece_sep_id(wp))
        abort();
    for (size_t i = 0; i < n_full; i++)
        if (full[i] < 0 || (size_t)full[i] >= wordpiece_vocab_size(wp) || !wordpiece_token(wp, full[i]))
            abort();
    size_t want = n_full < SHORT_LEN ? n_full : SHORT_LEN;
    if (n_part != want || memcmp(part, full, (n_part - 1) * sizeof part[0]) != 0)
        abort();
    if (n_full > 2) {
        rc = wordpiece_encode(wp, text, size, LONG_LEN, full, n_full - 1, &n_small, &err);
        if (rc != ENGINE_EARG || n_small != n_full)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static wordpiece *uncased, *options;
    if (!uncased) {
        uncased = load(0, AISERVE_SOURCE_DIR "/../shared/data/bert-base-uncased-vocab.txt");
        options = load(1, AISERVE_SOURCE_DIR "/tests/fixtures/tokenizer/small_tokenizer_options.json");
    }
    /* an exact-size copy so that ASan catches any read past the end */
    char *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    check(uncased, copy, size);
    check(options, copy, size);
    free(copy);
    return 0;
}
