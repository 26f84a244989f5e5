/*
 * fuzz_bpe.c - libFuzzer target: any byte string given to the byte-level
 * BPE tokenizers (RoBERTa's layout; prefix space, added tokens with
 * single_word / lstrip / rstrip; a Metaspace BPE with unk, fuse_unk and byte
 * fallback) yields ENGINE_EINPUT or a well-formed encoding (checks in
 * fuzz_tokenizers.h); never a crash, a hang or an out-of-bounds access.
 */
#include "fuzz_tokenizers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static tokenizer *ts[3];
    if (!ts[0]) {
        ts[0] = fuzz_load("bpe_roberta.json");
        ts[1] = fuzz_load("bpe_options.json");
        ts[2] = fuzz_load("bpe_fallback.json");
    }
    fuzz_run(ts, 3, data, size);
    return 0;
}
