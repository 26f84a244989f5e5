/*
 * wordpiece.h - BERT WordPiece tokenizer, matching Hugging Face's fast
 * (Rust) tokenizer as AutoTokenizer returns it for BERT-family models.
 *
 * Algorithm (BertNormalizer -> BertPreTokenizer -> WordPiece -> BertProcessing):
 *  0. Special tokens written in the raw text ([PAD] [UNK] [CLS] [SEP] [MASK]
 *     from vocab.txt, or tokenizer.json's added_tokens) become their own ids,
 *     as in HF's added vocabulary; the text between them goes through 1-5.
 *  1. Clean: drop U+0000, U+FFFD and control characters; whitespace -> ' '.
 *  2. Surround CJK ideographs with spaces (tokenize_chinese_chars).
 *  3. If strip_accents: NFD and drop Mn marks. If lowercase: lower-case
 *     character by character (no context rules such as final sigma).
 *  4. Split on whitespace, then split off every punctuation character
 *     (ASCII 33-47, 58-64, 91-96, 123-126, and Unicode P*) as its own word.
 *  5. Each word: greedy longest-match-first against the vocabulary, pieces
 *     after the first prefixed "##"; a word with no full match, or longer
 *     than max_input_chars_per_word characters, becomes [UNK].
 *  6. [CLS] ids [SEP], truncated so that the total is <= max_length.
 *
 * Unicode properties come from utf8proc, with a small generated override
 * table where the Rust tokenizer's (older) tables disagree.
 *
 * A wordpiece is immutable after loading: any thread may encode with it.
 */
#ifndef AISERVE_WORDPIECE_H
#define AISERVE_WORDPIECE_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"

typedef struct wordpiece wordpiece;

typedef struct wordpiece_options {
    int do_lower_case;          /* lower-case (default 1) */
    int strip_accents;          /* -1: follow do_lower_case (HF default), 0/1 explicit */
    int tokenize_chinese_chars; /* default 1 */
    int clean_text;             /* default 1 */
} wordpiece_options;

/* Defaults as Hugging Face's BertTokenizerFast. */
void wordpiece_options_init(wordpiece_options *opts);

/* Loads vocab.txt (one token per line, id = 0-based line number; "\r\n" is
 * accepted). Special tokens [UNK] [CLS] [SEP] [PAD] must be present
 * ([PAD] optional). On success *out is owned by the caller
 * (wordpiece_destroy). Errors name the file and the line. */
int wordpiece_load_vocab(const char *path, const wordpiece_options *opts, wordpiece **out,
                         engine_error *err);

/* Loads a tokenizer.json whose model is WordPiece. Normalizer settings
 * (lowercase, strip_accents, handle_chinese_chars, clean_text), the unk
 * token, continuing_subword_prefix, max_input_chars_per_word and the
 * post-processor's [CLS]/[SEP] come from the file; `opts` fills what the
 * file leaves out (may be NULL). */
int wordpiece_load_json(const char *path, const wordpiece_options *opts, wordpiece **out,
                        engine_error *err);

void wordpiece_destroy(wordpiece *wp);

/* Encodes text (len bytes, must be valid UTF-8, may contain NUL bytes) to
 * [CLS] ... [SEP], truncating the word pieces so that the total is at most
 * max_length (max_length >= 2). Writes at most cap ids; *n_ids gets the
 * count. Returns 0; ENGINE_EINPUT for invalid UTF-8; ENGINE_EARG if cap is
 * smaller than the result (*n_ids then gets the count needed). Thread-safe. */
int wordpiece_encode(const wordpiece *wp, const char *text, size_t len, size_t max_length,
                     int32_t *ids, size_t cap, size_t *n_ids, engine_error *err);

/* 1 if text (len bytes) yields no tokens: wordpiece_encode would give
 * [CLS] [SEP] alone because every character is dropped. Which characters
 * those are depends on the options: white space (Rust's char::is_whitespace,
 * e.g. U+3000, U+00A0, U+2028) always; with clean_text, NUL, U+FFFD and
 * Cc/Cf/Co characters (e.g. U+200B, U+FEFF); with strip_accents, Mn marks
 * (e.g. U+0301). It runs the encoder and stops at the first token, so the
 * two cannot disagree. 0 if there is a token, if the text is not valid
 * UTF-8 (wordpiece_encode reports that) or if memory ran out. Uses the heap
 * only where encoding would, e.g. for over 32 combining marks in a row or a
 * tokenizer with normalized added tokens. Thread-safe. */
int wordpiece_is_blank(const wordpiece *wp, const char *text, size_t len);

/* Token string for id, or NULL if out of range. Borrowed. */
const char *wordpiece_token(const wordpiece *wp, int32_t id);

/* Id of a token string, or -1. */
int32_t wordpiece_lookup(const wordpiece *wp, const char *token, size_t len);

size_t wordpiece_vocab_size(const wordpiece *wp);
int32_t wordpiece_cls_id(const wordpiece *wp);
int32_t wordpiece_sep_id(const wordpiece *wp);
int32_t wordpiece_unk_id(const wordpiece *wp);
int32_t wordpiece_pad_id(const wordpiece *wp); /* -1 if absent */
int wordpiece_does_lower_case(const wordpiece *wp);

#endif
