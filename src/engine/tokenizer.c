/*
 * tokenizer.c - the tokenizer interface (tokenizer.h): file selection and a
 * table of operations per implementation.
 *
 * Design:
 *  - Two implementations sit behind tokenizer_ops: WordPiece (wordpiece.c,
 *    which streams its own pipeline) and the tokenizer.json pipeline
 *    (hftok.c) that BPE and Unigram share.
 *  - WordPiece encodes single texts itself; pairs are its two sequences
 *    encoded whole, then truncated and framed by hftok's template code with
 *    the file's pair template (MPNet's "<s> A </s></s> B </s>") or BERT's.
 *  - vocab.json + merges.txt become the tokenizer.json RoBERTa's converter
 *    in transformers would write, so one loader serves both.
 */
#include "tokenizer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bpe.h"
#include "engine_int.h"
#include "hftok.h"
#include "unigram.h"

typedef struct tokenizer_ops {
    int (*encode)(const tokenizer *t, const char *text, size_t len, size_t max_length, int32_t *ids, size_t cap,
                  size_t *n_ids, engine_error *err);
    int (*encode_pair)(const tokenizer *t, const char *a, size_t a_len, const char *b, size_t b_len,
                       size_t max_length, int32_t *ids, uint8_t *types, size_t cap, size_t *n_ids,
                       engine_error *err);
    int (*is_blank)(const tokenizer *t, const char *text, size_t len);
    const char *(*token)(const tokenizer *t, int32_t id);
    size_t (*vocab_size)(const tokenizer *t);
    int32_t (*cls_id)(const tokenizer *t);
    int32_t (*sep_id)(const tokenizer *t);
    int32_t (*pad_id)(const tokenizer *t);
    int32_t (*unk_id)(const tokenizer *t);
} tokenizer_ops;

struct tokenizer {
    const tokenizer_ops *ops;
    tokenizer_kind kind;
    wordpiece *wp;         /* TOKENIZER_WORDPIECE */
    hftok_template wp_tpl; /* its pair (and single) template */
    hftok *hf;             /* TOKENIZER_BPE, TOKENIZER_UNIGRAM */
    char path[4096];
};

/* --- WordPiece ------------------------------------------------------------ */

static int wp_encode(const tokenizer *t, const char *text, size_t len, size_t max_length, int32_t *ids,
                     size_t cap, size_t *n_ids, engine_error *err) {
    return wordpiece_encode(t->wp, text, len, max_length, ids, cap, n_ids, err);
}

/* One sequence's word pieces without [CLS]/[SEP]: at most one id per byte. */
static int wp_sequence(const wordpiece *wp, const char *s, size_t len, hftok_ids *out, engine_error *err) {
    out->cap = len + 2;
    out->p = malloc(out->cap * sizeof *out->p);
    if (!out->p)
        return engine_error_set(err, ENGINE_ENOMEM, "out of memory");
    size_t n = 0;
    int rc = wordpiece_encode(wp, s, len, SIZE_MAX, out->p, out->cap, &n, err);
    if (rc)
        return rc;
    out->n = n - 2;
    memmove(out->p, out->p + 1, out->n * sizeof *out->p);
    return 0;
}

static int wp_encode_pair(const tokenizer *t, const char *a, size_t a_len, const char *b, size_t b_len,
                          size_t max_length, int32_t *ids, uint8_t *types, size_t cap, size_t *n_ids,
                          engine_error *err) {
    *n_ids = 0;
    if (max_length < t->wp_tpl.added_pair)
        return engine_error_set(err, ENGINE_EARG, "max_length %zu leaves no room for the %zu special tokens",
                                max_length, t->wp_tpl.added_pair);
    hftok_ids ia = {0}, ib = {0};
    int rc = wp_sequence(t->wp, a, a_len, &ia, err);
    if (rc == ENGINE_EINPUT)
        engine_error_set(err, rc, "first text is not valid UTF-8");
    if (!rc && (rc = wp_sequence(t->wp, b, b_len, &ib, err)) == ENGINE_EINPUT)
        engine_error_set(err, rc, "second text is not valid UTF-8");
    if (!rc)
        rc = hftok_template_apply(&t->wp_tpl, &ia, &ib, max_length, ids, types, cap, n_ids, err);
    free(ia.p);
    free(ib.p);
    return rc;
}

static int wp_is_blank(const tokenizer *t, const char *text, size_t len) {
    return wordpiece_is_blank(t->wp, text, len);
}
static const char *wp_token(const tokenizer *t, int32_t id) {
    return wordpiece_token(t->wp, id);
}
static size_t wp_vocab_size(const tokenizer *t) {
    return wordpiece_vocab_size(t->wp);
}
static int32_t wp_cls(const tokenizer *t) {
    return wordpiece_cls_id(t->wp);
}
static int32_t wp_sep(const tokenizer *t) {
    return wordpiece_sep_id(t->wp);
}
static int32_t wp_pad(const tokenizer *t) {
    return wordpiece_pad_id(t->wp);
}
static int32_t wp_unk(const tokenizer *t) {
    return wordpiece_unk_id(t->wp);
}

static const tokenizer_ops wordpiece_ops = {wp_encode, wp_encode_pair, wp_is_blank, wp_token, wp_vocab_size,
                                            wp_cls,    wp_sep,         wp_pad,      wp_unk};

/* --- the tokenizer.json pipeline ----------------------------------------- */

static int hf_encode(const tokenizer *t, const char *text, size_t len, size_t max_length, int32_t *ids,
                     size_t cap, size_t *n_ids, engine_error *err) {
    return hftok_encode(t->hf, text, len, max_length, ids, cap, n_ids, err);
}
static int hf_encode_pair(const tokenizer *t, const char *a, size_t a_len, const char *b, size_t b_len,
                          size_t max_length, int32_t *ids, uint8_t *types, size_t cap, size_t *n_ids,
                          engine_error *err) {
    return hftok_encode_pair(t->hf, a, a_len, b, b_len, max_length, ids, types, cap, n_ids, err);
}
static int hf_is_blank(const tokenizer *t, const char *text, size_t len) {
    return hftok_is_blank(t->hf, text, len);
}
static const char *hf_token(const tokenizer *t, int32_t id) {
    return hftok_token(t->hf, id);
}
static size_t hf_vocab_size(const tokenizer *t) {
    return hftok_n_ids(t->hf);
}
static int32_t hf_cls(const tokenizer *t) {
    return hftok_cls_id(t->hf);
}
static int32_t hf_sep(const tokenizer *t) {
    return hftok_sep_id(t->hf);
}
static int32_t hf_pad(const tokenizer *t) {
    return hftok_pad_id(t->hf);
}
static int32_t hf_unk(const tokenizer *t) {
    return hftok_unk_id(t->hf);
}

static const tokenizer_ops hftok_ops = {hf_encode, hf_encode_pair, hf_is_blank, hf_token, hf_vocab_size,
                                        hf_cls,    hf_sep,         hf_pad,      hf_unk};

/* --- loading --------------------------------------------------------------- */

void tokenizer_options_init(tokenizer_options *opts) {
    wordpiece_options_init(&opts->wordpiece);
    opts->add_prefix_space = 0;
}

static tokenizer *tok_alloc(const char *path) {
    tokenizer *t = calloc(1, sizeof *t);
    if (t)
        snprintf(t->path, sizeof t->path, "%s", path);
    return t;
}

void tokenizer_destroy(tokenizer *t) {
    if (!t)
        return;
    wordpiece_destroy(t->wp);
    hftok_template_fini(&t->wp_tpl);
    hftok_destroy(t->hf);
    free(t);
}

static bool file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* model.type, or for files written before it existed, the kind the
 * vocabulary's shape implies. */
static const char *model_type(json_t *model) {
    const char *type = json_string_value(json_object_get(model, "type"));
    if (type)
        return type;
    json_t *vocab = json_object_get(model, "vocab");
    if (json_is_array(vocab))
        return "Unigram";
    if (json_is_object(vocab) && json_object_get(model, "merges"))
        return "BPE";
    if (json_is_object(vocab) && json_object_get(model, "continuing_subword_prefix"))
        return "WordPiece";
    return "?";
}

static int wrap_hftok(json_t *root, const char *path, hftok_model *model, tokenizer_kind kind, tokenizer **out,
                      engine_error *err) {
    tokenizer *t = tok_alloc(path);
    if (!t) {
        model->ops->destroy(model);
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    }
    int rc = hftok_create(root, path, model, &t->hf, err);
    if (rc) {
        tokenizer_destroy(t);
        return rc;
    }
    t->ops = &hftok_ops;
    t->kind = kind;
    *out = t;
    return 0;
}

static int load_wordpiece_json(json_t *root, const char *path, const tokenizer_options *opts, tokenizer **out,
                               engine_error *err) {
    tokenizer *t = tok_alloc(path);
    if (!t)
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    int rc = wordpiece_load_json(path, &opts->wordpiece, &t->wp, err);
    json_t *post = json_object_get(root, "post_processor");
    if (!rc && post && !json_is_null(post))
        rc = hftok_template_parse(&t->wp_tpl, post, path, NULL, NULL, err);
    else if (!rc && hftok_template_bert(&t->wp_tpl, wordpiece_cls_id(t->wp), wordpiece_sep_id(t->wp)))
        rc = engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    if (rc) {
        tokenizer_destroy(t);
        return rc;
    }
    t->ops = &wordpiece_ops;
    t->kind = TOKENIZER_WORDPIECE;
    *out = t;
    return 0;
}

int tokenizer_load_json(const char *path, const tokenizer_options *opts, tokenizer **out, engine_error *err) {
    *out = NULL;
    tokenizer_options def;
    if (!opts) {
        tokenizer_options_init(&def);
        opts = &def;
    }
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_cannot_open_file)
            return engine_error_set(err, ENGINE_EIO, "%s: %s", path, jerr.text);
        return engine_error_set(err, ENGINE_EFORMAT, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    }
    json_t *model = json_object_get(root, "model");
    int rc;
    if (!json_is_object(model)) {
        rc = engine_error_set(err, ENGINE_EFORMAT, "%s: no \"model\" object", path);
    } else {
        const char *type = model_type(model);
        hftok_model *m = NULL;
        if (strcmp(type, "WordPiece") == 0) {
            rc = load_wordpiece_json(root, path, opts, out, err);
        } else if (strcmp(type, "BPE") == 0) {
            rc = bpe_model_from_json(model, path, &m, err);
            if (!rc)
                rc = wrap_hftok(root, path, m, TOKENIZER_BPE, out, err);
        } else if (strcmp(type, "Unigram") == 0) {
            rc = unigram_model_from_json(model, path, &m, err);
            if (!rc)
                rc = wrap_hftok(root, path, m, TOKENIZER_UNIGRAM, out, err);
        } else {
            rc = engine_error_set(err, ENGINE_EUNSUPPORTED,
                                  "%s: tokenizer model \"%s\" is not supported (only WordPiece, BPE and Unigram)",
                                  path, type);
        }
    }
    json_decref(root);
    return rc;
}

/* The tokenizer.json that transformers' RobertaConverter writes for
 * vocab.json + merges.txt: ByteLevel, RobertaProcessing, the five special
 * tokens (ids from the vocabulary, or appended as Rust appends them). */
static json_t *roberta_config(int add_prefix_space) {
    static const char *const specials[] = {"<s>", "</s>", "<unk>", "<pad>", "<mask>"};
    json_t *added = json_array();
    for (size_t i = 0; i < 5; i++)
        json_array_append_new(added, json_pack("{s:s, s:b, s:b, s:b, s:b, s:b}", "content", specials[i],
                                               "single_word", 0, "lstrip", i == 4, "rstrip", 0, "normalized", 0,
                                               "special", 1));
    return json_pack("{s:o, s:n, s:{s:s, s:b, s:b}, s:{s:s, s:[s,n], s:[s,n]}}", "added_tokens", added, "normalizer",
                     "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", add_prefix_space != 0, "trim_offsets", 1,
                     "post_processor", "type", "RobertaProcessing", "sep", "</s>", "cls", "<s>");
}

static int load_vocab_merges(const char *vocab, const char *merges, const tokenizer_options *opts, tokenizer **out,
                             engine_error *err) {
    hftok_model *m = NULL;
    int rc = bpe_model_from_files(vocab, merges, &m, err);
    if (rc)
        return rc;
    json_t *root = roberta_config(opts->add_prefix_space);
    if (!root) {
        m->ops->destroy(m);
        return engine_error_set(err, ENGINE_ENOMEM, "out of memory");
    }
    rc = wrap_hftok(root, vocab, m, TOKENIZER_BPE, out, err);
    json_decref(root);
    return rc;
}

int tokenizer_load(const char *dir, const tokenizer_options *opts, tokenizer **out, engine_error *err) {
    *out = NULL;
    tokenizer_options def;
    if (!opts) {
        tokenizer_options_init(&def);
        opts = &def;
    }
    char path[4096], merges[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (file_exists(path))
        return tokenizer_load_json(path, opts, out, err);
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    if (file_exists(path)) {
        tokenizer *t = tok_alloc(path);
        if (!t)
            return engine_error_set(err, ENGINE_ENOMEM, "out of memory");
        int rc = wordpiece_load_vocab(path, &opts->wordpiece, &t->wp, err);
        if (!rc && hftok_template_bert(&t->wp_tpl, wordpiece_cls_id(t->wp), wordpiece_sep_id(t->wp)))
            rc = engine_error_set(err, ENGINE_ENOMEM, "out of memory");
        if (rc) {
            tokenizer_destroy(t);
            return rc;
        }
        t->ops = &wordpiece_ops;
        t->kind = TOKENIZER_WORDPIECE;
        *out = t;
        return 0;
    }
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    snprintf(merges, sizeof merges, "%s/merges.txt", dir);
    if (file_exists(path) && file_exists(merges))
        return load_vocab_merges(path, merges, opts, out, err);
    static const char *const spm[] = {"sentencepiece.bpe.model", "spiece.model", "tokenizer.model"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, spm[i]);
        if (file_exists(path))
            return engine_error_set(err, ENGINE_EUNSUPPORTED,
                                    "%s: sentencepiece model files are not read; use the model's tokenizer.json "
                                    "(the hub has one, or transformers' AutoTokenizer.save_pretrained writes it)",
                                    path);
    }
    return engine_error_set(err, ENGINE_EIO,
                            "%s: no tokenizer: none of tokenizer.json, vocab.txt, vocab.json + merges.txt is there",
                            dir);
}

/* --- dispatch -------------------------------------------------------------- */

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, size_t max_length, int32_t *ids,
                     size_t cap, size_t *n_ids, engine_error *err) {
    return t->ops->encode(t, text, len, max_length, ids, cap, n_ids, err);
}

int tokenizer_encode_pair(const tokenizer *t, const char *a, size_t a_len, const char *b, size_t b_len,
                          size_t max_length, int32_t *ids, size_t cap, size_t *n_ids, engine_error *err) {
    return tokenizer_encode_pair_types(t, a, a_len, b, b_len, max_length, ids, NULL, cap, n_ids, err);
}

int tokenizer_encode_pair_types(const tokenizer *t, const char *a, size_t a_len, const char *b, size_t b_len,
                                size_t max_length, int32_t *ids, uint8_t *types, size_t cap, size_t *n_ids,
                                engine_error *err) {
    if (n_ids)
        *n_ids = 0;
    if ((!a && a_len) || (!b && b_len) || !n_ids || (!ids && cap))
        return engine_error_set(err, ENGINE_EARG, "tokenizer_encode_pair: NULL argument");
    return t->ops->encode_pair(t, a, a_len, b, b_len, max_length, ids, types, cap, n_ids, err);
}

int tokenizer_is_blank(const tokenizer *t, const char *text, size_t len) {
    return t->ops->is_blank(t, text, len);
}

tokenizer_kind tokenizer_get_kind(const tokenizer *t) {
    return t->kind;
}

const char *tokenizer_kind_name(tokenizer_kind kind) {
    return kind == TOKENIZER_BPE ? "BPE" : kind == TOKENIZER_UNIGRAM ? "Unigram" : "WordPiece";
}

const char *tokenizer_token(const tokenizer *t, int32_t id) {
    return t->ops->token(t, id);
}

size_t tokenizer_vocab_size(const tokenizer *t) {
    return t->ops->vocab_size(t);
}

int32_t tokenizer_cls_id(const tokenizer *t) {
    return t->ops->cls_id(t);
}

int32_t tokenizer_sep_id(const tokenizer *t) {
    return t->ops->sep_id(t);
}

int32_t tokenizer_pad_id(const tokenizer *t) {
    return t->ops->pad_id(t);
}

int32_t tokenizer_unk_id(const tokenizer *t) {
    return t->ops->unk_id(t);
}

int tokenizer_does_lower_case(const tokenizer *t) {
    return t->wp ? wordpiece_does_lower_case(t->wp) : 0;
}

const char *tokenizer_path(const tokenizer *t) {
    return t->path;
}
