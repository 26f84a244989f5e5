/*
 * hftok.h - the tokenizer.json pipeline that byte-level BPE (bpe.c) and
 * Unigram (unigram.c) share, matching Hugging Face's Rust tokenizers 0.13:
 *
 *  1. Added tokens whose "normalized" is false are split out of the raw text
 *     (leftmost-longest, with their single_word / lstrip / rstrip rules).
 *  2. Each piece between them is normalized: Sequence of Precompiled
 *     (sentencepiece's character map), Replace, Strip; then the added tokens
 *     whose "normalized" is true are split out of the normalized piece.
 *  3. Each remaining piece is pre-tokenized (ByteLevel: GPT-2's split and the
 *     byte-to-character map; Metaspace: spaces to U+2581, split before each)
 *     and every word goes to the model (hftok_model_ops.tokenize).
 *  4. Truncation (longest_first for pairs, as transformers' truncation=True)
 *     and the post-processor's template (RobertaProcessing, BertProcessing,
 *     TemplateProcessing) give the final ids.
 *
 * Steps 1-3 run per sequence; a single sequence stops as soon as it has all
 * the ids truncation keeps. A pipeline is immutable after loading: any
 * number of threads may encode with it at once.
 */
#ifndef AISERVE_HFTOK_H
#define AISERVE_HFTOK_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"

#define HFTOK_MAX_IDS (1u << 24) /* bounds every id a file may declare */

/* A growing list of ids; `limit` stops it (the rest of the text cannot add
 * ids that truncation keeps). */
typedef struct hftok_ids {
    int32_t *p;
    size_t n, cap;
    size_t limit; /* SIZE_MAX: no limit */
    bool oom;
} hftok_ids;

/* Appends an id unless the list is full; false once it is full or out of
 * memory (callers stop then). */
bool hftok_ids_push(hftok_ids *ids, int32_t id);
static inline bool hftok_ids_full(const hftok_ids *ids) {
    return ids->oom || ids->n >= ids->limit;
}

/* A model (the first member of struct bpe / struct unigram). */
typedef struct hftok_model hftok_model;

typedef struct hftok_model_ops {
    const char *kind; /* "BPE", "Unigram": the tokenizer.json model type */
    /* Appends the ids of one pre-tokenized word (len > 0 bytes of valid
     * UTF-8). Returns 0 or ENGINE_ENOMEM. */
    int (*tokenize)(const hftok_model *m, const uint8_t *word, size_t len, hftok_ids *out);
    /* Id of a token string, or -1. */
    int32_t (*lookup)(const hftok_model *m, const char *s, size_t len);
    /* Token string of an id or NULL; borrowed for the model's lifetime. */
    const char *(*token)(const hftok_model *m, int32_t id);
    /* Number of entries (what Rust's get_vocab_size returns); the id of the
     * first added token outside the vocabulary. */
    size_t (*n_entries)(const hftok_model *m);
    /* Largest id + 1. */
    size_t (*n_ids)(const hftok_model *m);
    /* The unknown token's id, or -1 if the model has none. */
    int32_t (*unk_id)(const hftok_model *m);
    void (*destroy)(hftok_model *m);
} hftok_model_ops;

struct hftok_model {
    const hftok_model_ops *ops;
};

typedef struct hftok hftok;

/* Builds a pipeline from a parsed tokenizer.json (root) around `model`,
 * which it takes in every case (freed on failure). `path` names the file in
 * errors. Refuses, with ENGINE_EUNSUPPORTED and the component's name,
 * normalizers, pre-tokenizers and post-processors it does not implement. */
int hftok_create(json_t *root, const char *path, hftok_model *model, hftok **out, engine_error *err);

void hftok_destroy(hftok *t);

/* Encodes text (len bytes of UTF-8) or the pair (a, b) with the
 * post-processor's special tokens, truncated to max_length ids in all
 * (longest_first for a pair). Same contract as wordpiece_encode: writes at
 * most cap ids, *n_ids gets the count; ENGINE_EINPUT for invalid UTF-8
 * (naming the sequence), ENGINE_EARG if cap is too small (*n_ids then gets
 * the count needed) or if max_length cannot hold the special tokens.
 * Thread-safe. */
int hftok_encode(const hftok *t, const char *text, size_t len, size_t max_length, int32_t *ids,
                 size_t cap, size_t *n_ids, engine_error *err);
/* A pair's `types` (NULL, or cap entries) gets each id's token type from the
 * template (type_id; BertProcessing: 1 for B and its separator). */
int hftok_encode_pair(const hftok *t, const char *a, size_t a_len, const char *b, size_t b_len,
                      size_t max_length, int32_t *ids, uint8_t *types, size_t cap, size_t *n_ids,
                      engine_error *err);

/* 1 if text yields no token of its own (only the special tokens), 0
 * otherwise (also for invalid UTF-8 or when memory runs out). Runs the
 * encoder up to its first id. */
int hftok_is_blank(const hftok *t, const char *text, size_t len);

const char *hftok_token(const hftok *t, int32_t id);
int32_t hftok_lookup(const hftok *t, const char *s, size_t len); /* added tokens, then the model */
size_t hftok_n_ids(const hftok *t);                              /* largest id + 1 */
const char *hftok_kind(const hftok *t);                          /* the model's kind */
int32_t hftok_cls_id(const hftok *t); /* first special of the single template, or -1 */
int32_t hftok_sep_id(const hftok *t); /* last special of the single template, or -1 */
int32_t hftok_unk_id(const hftok *t);
int32_t hftok_pad_id(const hftok *t); /* "<pad>" or "[PAD]", or -1 */

/* --- pieces shared with the models and tokenizer.c ---------------------- */

/* The post-processor as a template: items are a sequence (A or B) or a
 * special token's ids. Also used by tokenizer.c for WordPiece pairs. */
typedef struct hftok_piece {
    int seq;         /* 0: A, 1: B, -1: special */
    int32_t *ids;    /* special: its ids */
    size_t n_ids;
    uint8_t type_id; /* token type of its ids (TemplateProcessing's type_id) */
} hftok_piece;

typedef struct hftok_template {
    hftok_piece *single, *pair;
    size_t n_single, n_pair;
    size_t added_single, added_pair; /* special ids each adds */
} hftok_template;

/* Parses post_processor (NULL or null: no special tokens). `lookup`
 * resolves a RobertaProcessing/BertProcessing id given as null by its
 * token string (used for configurations aiserve writes itself). */
int hftok_template_parse(hftok_template *tpl, json_t *post, const char *path,
                         int32_t (*lookup)(const void *ctx, const char *s, size_t len), const void *ctx,
                         engine_error *err);
/* "[first] A [last]" / "[first] A [last] B [last]" (BertProcessing). */
int hftok_template_bert(hftok_template *tpl, int32_t cls, int32_t sep);
void hftok_template_fini(hftok_template *tpl);

/* Truncates a (and b, if not NULL) as Rust's truncate_encodings does for
 * max_length total ids including the template's specials, then writes the
 * template, and each id's token type to `types` unless it is NULL. Same
 * return contract as hftok_encode. */
int hftok_template_apply(const hftok_template *tpl, const hftok_ids *a, const hftok_ids *b,
                         size_t max_length, int32_t *ids, uint8_t *types, size_t cap, size_t *n_ids,
                         engine_error *err);

/* Offset of the first byte that does not start a valid UTF-8 sequence, or n. */
size_t hftok_utf8_check(const uint8_t *s, size_t n);
/* Decodes one character of checked UTF-8 at s[*i], advancing *i. */
uint32_t hftok_utf8_next(const uint8_t *s, size_t *i);
/* Encodes cp; returns its length (1-4). */
size_t hftok_utf8_put(uint32_t cp, uint8_t *out);

/* Appends s[0..n) and a NUL to a growing pool of strings (*pool, *len,
 * *cap; offsets fit 32 bits): *off gets where it starts. 0 or
 * ENGINE_ENOMEM. Shared by the string tables of every tokenizer. */
int hftok_pool_add(char **pool, size_t *len, size_t *cap, const char *s, size_t n, uint32_t *off);

/* Reads a whole file (NUL-terminated for convenience). */
int hftok_read_file(const char *path, char **out, size_t *len, engine_error *err);

/* A string -> id table (FNV-1a, open addressing) over a string pool. A later
 * insert of the same string replaces the id, as a HashMap insert does.
 * Callers may walk slots[0..mask] (id < 0: empty). */
struct hftok_slot {
    uint32_t hash;
    int32_t id;
    uint32_t off, len; /* the string: pool + off, NUL-terminated */
};

typedef struct hftok_strtab {
    char *pool;
    size_t pool_len, pool_cap;
    struct hftok_slot *slots;
    size_t mask, n;
} hftok_strtab;

int hftok_strtab_init(hftok_strtab *t, size_t expected);
void hftok_strtab_fini(hftok_strtab *t);
/* Inserts or replaces; *off gets the string's pool offset. 0 or ENGINE_ENOMEM. */
int hftok_strtab_put(hftok_strtab *t, const char *s, size_t len, int32_t id, uint32_t *off);
int32_t hftok_strtab_get(const hftok_strtab *t, const char *s, size_t len);

#endif
