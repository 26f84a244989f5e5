/*
 * fuzz_unigram.c - libFuzzer target: any byte string given to the Unigram
 * tokenizers (XLM-RoBERTa's layout with its Precompiled character map;
 * Strip, Replace and normalized added tokens; Viterbi ties) yields
 * ENGINE_EINPUT or a well-formed encoding (checks in fuzz_tokenizers.h);
 * never a crash, a hang or an out-of-bounds access.
 */
#include "fuzz_tokenizers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static tokenizer *ts[3];
    if (!ts[0]) {
        ts[0] = fuzz_load("unigram_xlmr.json");
        ts[1] = fuzz_load("unigram_options.json");
        ts[2] = fuzz_load("unigram_ties.json");
    }
    fuzz_run(ts, 3, data, size);
    return 0;
}
