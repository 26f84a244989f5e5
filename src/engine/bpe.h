/*
 * bpe.h - the BPE model of Hugging Face's tokenizers (byte-level BPE as
 * RoBERTa and GPT-2 use it), behind the tokenizer.json pipeline (hftok.h).
 *
 * A word is split into characters (each with continuing_subword_prefix
 * after the first and end_of_word_suffix on the last, when the file sets
 * them); a character missing from the vocabulary becomes its "<0xXX>" byte
 * tokens (byte_fallback) or unk_token (fused with its neighbours when
 * fuse_unk), or is dropped when there is no unk_token, as in Rust. Then the
 * adjacent pair with the lowest merge rank is merged, leftmost first, until
 * no pair has a merge: Rust's queue-based Word::merge_all, with its rule
 * that a queued merge is stale once its pair no longer yields the same
 * token. No cache and no dropout (a non-zero dropout is refused).
 */
#ifndef AISERVE_BPE_H
#define AISERVE_BPE_H

#include <jansson.h>

#include "hftok.h"

/* The model of a parsed tokenizer.json ("model" object, type "BPE"). On
 * success *out is owned by the caller (ops->destroy, or hftok_create takes
 * it). Errors name `path` and the key. */
int bpe_model_from_json(json_t *model, const char *path, hftok_model **out, engine_error *err);

/* The model of RoBERTa's and GPT-2's slow files: vocab.json (token -> id)
 * and merges.txt ("#version" lines skipped, then "a b" per line), with the
 * settings transformers' converter gives them (no unk_token, no prefix or
 * suffix). Errors name the file and, for merges.txt, the line. */
int bpe_model_from_files(const char *vocab_path, const char *merges_path, hftok_model **out,
                         engine_error *err);

#endif
