/*
 * unigram.h - the Unigram model of Hugging Face's tokenizers (XLM-RoBERTa's
 * sentencepiece vocabulary as tokenizer.json carries it), behind the
 * tokenizer.json pipeline (hftok.h).
 *
 * A word is segmented by Viterbi over its characters: every vocabulary
 * piece that starts at a character boundary is an edge scored by its log
 * probability; a character with no one-character piece also gets an edge to
 * unk_id scored min_score - 10. Ties keep the earliest-found path, as Rust's
 * optimized encoder does. Adjacent unknown pieces are fused into one
 * (tokenizers always fuses for Unigram), then each piece becomes its id: a
 * fused piece that is itself in the vocabulary takes that id, otherwise its
 * "<0xXX>" byte pieces when byte_fallback is set and all exist, otherwise
 * unk_id.
 */
#ifndef AISERVE_UNIGRAM_H
#define AISERVE_UNIGRAM_H

#include <jansson.h>

#include "hftok.h"

/* The model of a parsed tokenizer.json ("model" object, type "Unigram":
 * "vocab" as [piece, score] pairs, "unk_id", optional "byte_fallback").
 * A model without unk_id is refused. On success *out is owned by the
 * caller (ops->destroy, or hftok_create takes it). */
int unigram_model_from_json(json_t *model, const char *path, hftok_model **out, engine_error *err);

#endif
