/*
 * tokenizer.h - one interface over the tokenizers a Hugging Face model
 * directory may hold: WordPiece (wordpiece.h), byte-level BPE (bpe.h) and
 * Unigram (unigram.h), the last two through the tokenizer.json pipeline
 * (hftok.h).
 *
 * tokenizer_load picks, as AutoTokenizer does:
 *  1. tokenizer.json, by its model.type (WordPiece, BPE, Unigram; files
 *     without a type by the shape of model.vocab and model.merges);
 *  2. else vocab.txt (WordPiece);
 *  3. else vocab.json + merges.txt (byte-level BPE with RoBERTa's settings:
 *     <s> A </s>, <s> A </s></s> B </s>, <mask> stripping spaces on its left);
 *  4. sentencepiece .model files alone are refused (ENGINE_EUNSUPPORTED): the
 *     hub ships tokenizer.json beside them, or transformers writes one.
 *
 * Encoding adds the special tokens of the file's post-processor and
 * truncates to max_length ids in all; a pair (query and document for a
 * reranker) is truncated longest_first, as transformers' truncation=True.
 * A tokenizer is immutable after loading: any thread may use it.
 */
#ifndef AISERVE_TOKENIZER_H
#define AISERVE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "wordpiece.h"

typedef struct tokenizer tokenizer;

typedef enum tokenizer_kind {
    TOKENIZER_WORDPIECE,
    TOKENIZER_BPE,
    TOKENIZER_UNIGRAM,
} tokenizer_kind;

typedef struct tokenizer_options {
    wordpiece_options wordpiece; /* vocab.txt, and what a WordPiece tokenizer.json leaves out */
    int add_prefix_space;        /* vocab.json + merges.txt only (RoBERTa's default: 0) */
} tokenizer_options;

void tokenizer_options_init(tokenizer_options *opts);

/* Loads the tokenizer of model directory `dir` (opts may be NULL). On
 * success *out is owned by the caller (tokenizer_destroy). Errors name the
 * file and what is wrong or unsupported. */
int tokenizer_load(const char *dir, const tokenizer_options *opts, tokenizer **out, engine_error *err);

/* Loads one tokenizer.json file. */
int tokenizer_load_json(const char *path, const tokenizer_options *opts, tokenizer **out, engine_error *err);

void tokenizer_destroy(tokenizer *t);

/* Encodes text (len bytes of UTF-8, NUL bytes allowed) with the special
 * tokens, at most max_length ids in all. Writes at most cap ids; *n_ids
 * gets the count. Returns 0; ENGINE_EINPUT for invalid UTF-8; ENGINE_EARG
 * if cap is too small (*n_ids then gets the count needed) or max_length
 * cannot hold the special tokens. Thread-safe. */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, size_t max_length, int32_t *ids,
                     size_t cap, size_t *n_ids, engine_error *err);

/* The same for a pair (a, b), truncated longest_first. */
int tokenizer_encode_pair(const tokenizer *t, const char *a, size_t a_len, const char *b, size_t b_len,
                          size_t max_length, int32_t *ids, size_t cap, size_t *n_ids, engine_error *err);

/* tokenizer_encode_pair, and each id's token type (token_type_ids) into
 * `types` (cap entries; NULL: not wanted) as the post-processor gives them:
 * TemplateProcessing's type_id; BertProcessing and vocab.txt's template 0
 * for [CLS] A [SEP] and 1 for B [SEP]; RobertaProcessing 0 for every id (as
 * Rust's tokenizers 0.13). */
int tokenizer_encode_pair_types(const tokenizer *t, const char *a, size_t a_len, const char *b, size_t b_len,
                                size_t max_length, int32_t *ids, uint8_t *types, size_t cap, size_t *n_ids,
                                engine_error *err);

/* 1 if text gives no token of its own (only the special tokens): what the
 * server refuses as an empty text. 0 otherwise, and for invalid UTF-8. */
int tokenizer_is_blank(const tokenizer *t, const char *text, size_t len);

tokenizer_kind tokenizer_get_kind(const tokenizer *t);
const char *tokenizer_kind_name(tokenizer_kind kind); /* "WordPiece", "BPE", "Unigram" */

/* Token string of an id, or NULL. Borrowed for the tokenizer's lifetime. */
const char *tokenizer_token(const tokenizer *t, int32_t id);

size_t tokenizer_vocab_size(const tokenizer *t); /* largest id + 1 */
int32_t tokenizer_cls_id(const tokenizer *t);    /* [CLS] / <s>: first special of a single text, or -1 */
int32_t tokenizer_sep_id(const tokenizer *t);    /* [SEP] / </s>: last special of a single text, or -1 */
int32_t tokenizer_pad_id(const tokenizer *t);    /* [PAD] / <pad>, or -1 */
int32_t tokenizer_unk_id(const tokenizer *t);    /* or -1 */
int tokenizer_does_lower_case(const tokenizer *t); /* WordPiece's setting; 0 for the others */

/* The file the tokenizer was read from (tokenizer.json, vocab.txt or
 * vocab.json). Borrowed. */
const char *tokenizer_path(const tokenizer *t);

#endif
