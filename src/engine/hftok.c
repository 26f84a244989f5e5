/*
 * hftok.c - the tokenizer.json pipeline shared by BPE and Unigram (steps in
 * hftok.h), written to give the ids of Hugging Face's Rust tokenizers 0.13.
 *
 * Design:
 *  - Encoding works on byte buffers: each step (normalizer, pre-tokenizer)
 *    writes a new buffer from the previous one. Offsets are never needed:
 *    the ids are all that leaves the pipeline.
 *  - Added tokens are matched as Rust's AddedVocabulary does with its
 *    Aho-Corasick automaton (leftmost-longest, non-overlapping, a match
 *    discarded by single_word still consumes its bytes); the patterns are
 *    few, so a first-byte bitmap and a scan stand in for the automaton.
 *  - Empty pieces vanish at every step, as Rust's PreTokenizedString drops
 *    empty splits: an empty text never gets ByteLevel's prefix space.
 *  - Character classes: White_Space is the fixed Unicode list (Rust's
 *    char::is_whitespace, the \s of both regex engines); letters, numbers
 *    and marks come from utf8proc; grapheme clusters (for Precompiled) from
 *    utf8proc's extended grapheme rules, as unicode-segmentation computes.
 *  - Scratch buffers live in the encoder's frame and grow on the heap only
 *    for long input; the pipeline itself is never written after loading.
 */
#include "hftok.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "engine_int.h"

/* ---------------------------------------------------------------------------
 * Small utilities: ids, buffers, UTF-8, files, the string table
 * ------------------------------------------------------------------------- */

bool hftok_ids_push(hftok_ids *ids, int32_t id) {
    if (hftok_ids_full(ids))
        return false;
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *p = realloc(ids->p, cap * sizeof *p);
        if (!p) {
            ids->oom = true;
            return false;
        }
        ids->p = p;
        ids->cap = cap;
    }
    ids->p[ids->n++] = id;
    return !hftok_ids_full(ids);
}

/* A byte buffer; `oom` sticks once an append fails. */
typedef struct hbuf {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} hbuf;

static bool hbuf_reserve(hbuf *b, size_t more) {
    if (b->oom)
        return false;
    if (b->n + more <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->n + more)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

static void hbuf_add(hbuf *b, const void *s, size_t n) {
    if (n && hbuf_reserve(b, n)) {
        memcpy(b->p + b->n, s, n);
        b->n += n;
    }
}

size_t hftok_utf8_check(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (n - i >= 8) { /* eight ASCII bytes at a time: most text */
            uint64_t v;
            memcpy(&v, s + i, 8);
            if (!(v & 0x8080808080808080ULL)) {
                i += 8;
                continue;
            }
        }
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            return i;
        }
        if (n - i <= need || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
        i += need + 1;
    }
    return n;
}

int hftok_pool_add(char **pool, size_t *len, size_t *cap, const char *s, size_t n, uint32_t *off) {
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap * 2 : 4096;
        while (c < *len + n + 1)
            c *= 2;
        if (c > UINT32_MAX)
            return ENGINE_ENOMEM;
        char *p = realloc(*pool, c);
        if (!p)
            return ENGINE_ENOMEM;
        *pool = p;
        *cap = c;
    }
    memcpy(*pool + *len, s, n);
    (*pool)[*len + n] = '\0';
    *off = (uint32_t)*len;
    *len += n + 1;
    return 0;
}

uint32_t hftok_utf8_next(const uint8_t *s, size_t *i) {
    uint8_t c = s[*i];
    if (c < 0x80) {
        *i += 1;
        return c;
    }
    if (c < 0xE0) {
        *i += 2;
        return ((uint32_t)(c & 0x1F) << 6) | (s[*i - 1] & 0x3F);
    }
    if (c < 0xF0) {
        *i += 3;
        return ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[*i - 2] & 0x3F) << 6) | (s[*i - 1] & 0x3F);
    }
    *i += 4;
    return ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[*i - 3] & 0x3F) << 12) |
           ((uint32_t)(s[*i - 2] & 0x3F) << 6) | (s[*i - 1] & 0x3F);
}

size_t hftok_utf8_put(uint32_t cp, uint8_t *out) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* The character that ends s[0..n) (n > 0, valid UTF-8). */
static uint32_t utf8_last(const uint8_t *s, size_t n) {
    size_t i = n - 1;
    while (i > 0 && (s[i] & 0xC0) == 0x80)
        i--;
    return hftok_utf8_next(s, &i);
}

int hftok_read_file(const char *path, char **out, size_t *len, engine_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return engine_error_set(err, ENGINE_EIO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
        }
        n += fread(buf + n, 1, cap - 1 - n, f);
        if (n < cap - 1)
            break;
        char *p = realloc(buf, cap * 2);
        if (!p)
            free(buf);
        buf = p;
        cap *= 2;
    }
    bool failed = ferror(f) != 0;
    fclose(f);
    if (failed) {
        free(buf);
        return engine_error_set(err, ENGINE_EIO, "%s: read error", path);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

#define FNV_OFFSET 2166136261u
#define FNV_PRIME 16777619u

static uint32_t fnv(const uint8_t *s, size_t n) {
    uint32_t h = FNV_OFFSET;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * FNV_PRIME;
    return h;
}

static struct hftok_slot *strtab_alloc_slots(size_t cap) {
    struct hftok_slot *s = malloc(cap * sizeof *s);
    if (s)
        for (size_t i = 0; i < cap; i++)
            s[i].id = -1;
    return s;
}

int hftok_strtab_init(hftok_strtab *t, size_t expected) {
    memset(t, 0, sizeof *t);
    size_t cap = 16;
    while (cap < expected * 2)
        cap *= 2;
    t->slots = strtab_alloc_slots(cap);
    if (!t->slots)
        return ENGINE_ENOMEM;
    t->mask = cap - 1;
    return 0;
}

void hftok_strtab_fini(hftok_strtab *t) {
    free(t->pool);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

static struct hftok_slot *strtab_find(const hftok_strtab *t, uint32_t h, const char *s, size_t len) {
    for (size_t i = (h ^ (h >> 15)) & t->mask;; i = (i + 1) & t->mask) {
        struct hftok_slot *sl = &t->slots[i];
        if (sl->id < 0 || (sl->hash == h && sl->len == len && memcmp(t->pool + sl->off, s, len) == 0))
            return sl;
    }
}

static int strtab_grow(hftok_strtab *t) {
    size_t cap = (t->mask + 1) * 2;
    struct hftok_slot *old = t->slots, *s = strtab_alloc_slots(cap);
    if (!s)
        return ENGINE_ENOMEM;
    size_t old_cap = t->mask + 1;
    t->slots = s;
    t->mask = cap - 1;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].id >= 0)
            *strtab_find(t, old[i].hash, t->pool + old[i].off, old[i].len) = old[i];
    free(old);
    return 0;
}

int hftok_strtab_put(hftok_strtab *t, const char *s, size_t len, int32_t id, uint32_t *off) {
    if ((t->n + 1) * 2 > t->mask + 1 && strtab_grow(t))
        return ENGINE_ENOMEM;
    uint32_t h = fnv((const uint8_t *)s, len);
    struct hftok_slot *sl = strtab_find(t, h, s, len);
    if (sl->id >= 0) {
        sl->id = id;
        if (off)
            *off = sl->off;
        return 0;
    }
    uint32_t at;
    if (hftok_pool_add(&t->pool, &t->pool_len, &t->pool_cap, s, len, &at))
        return ENGINE_ENOMEM;
    *sl = (struct hftok_slot){h, id, at, (uint32_t)len};
    if (off)
        *off = at;
    t->n++;
    return 0;
}

int32_t hftok_strtab_get(const hftok_strtab *t, const char *s, size_t len) {
    if (!t->slots)
        return -1;
    return strtab_find(t, fnv((const uint8_t *)s, len), s, len)->id;
}

/* ---------------------------------------------------------------------------
 * Character classes
 * ------------------------------------------------------------------------- */

/* Unicode White_Space: Rust's char::is_whitespace and \s in both regex
 * engines the Rust tokenizer uses. */
static bool is_ws(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

enum { CL_OTHER, CL_LETTER, CL_NUMBER, CL_SPACE };

/* GPT-2's classes: \p{L}, \p{N}, \s, anything else. */
static int gpt2_class(uint32_t c) {
    if (c < 0x80) {
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
            return CL_LETTER;
        if (c >= '0' && c <= '9')
            return CL_NUMBER;
        return is_ws(c) ? CL_SPACE : CL_OTHER;
    }
    if (is_ws(c))
        return CL_SPACE;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
        return CL_LETTER;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
        return CL_NUMBER;
    default:
        return CL_OTHER;
    }
}

/* The regex crate's \w: Alphabetic, marks, decimal digits, connector
 * punctuation, joiners. Alphabetic is letters, letter numbers and the
 * Other_Alphabetic symbols (circled and squared Latin letters); its marks
 * are inside M anyway. */
static bool is_word_char(uint32_t c) {
    if (c < 0x80)
        return ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || (c >= '0' && c <= '9') || c == '_';
    if (c == 0x200C || c == 0x200D || (c >= 0x24B6 && c <= 0x24E9) || (c >= 0x1F130 && c <= 0x1F149) ||
        (c >= 0x1F150 && c <= 0x1F169) || (c >= 0x1F170 && c <= 0x1F189))
        return true;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
        return true;
    default:
        return false;
    }
}

/* ---------------------------------------------------------------------------
 * The pipeline object
 * ------------------------------------------------------------------------- */

enum { NORM_PRECOMPILED, NORM_REPLACE, NORM_STRIP };

typedef struct norm_step {
    int kind;
    /* Precompiled: sentencepiece's double-array trie over UTF-8 bytes, whose
     * leaves point into a blob of NUL-terminated replacements. */
    uint32_t *trie;
    size_t n_trie;
    char *repl;
    size_t n_repl;
    /* Replace: `pattern` (min_run 0), or runs of at least min_run copies of
     * the one-character `pattern` (the regex "c{n,}" / "c+"), become content. */
    char *pattern, *content;
    size_t pattern_len, content_len, min_run;
    /* Strip */
    bool left, right;
} norm_step;

enum { PRE_NONE, PRE_BYTELEVEL, PRE_METASPACE };
enum { PREPEND_ALWAYS, PREPEND_NEVER, PREPEND_FIRST };

struct added_name {
    int32_t id;
    const char *content; /* in added_map's pool */
};

typedef struct added_tok {
    char *match;      /* what is matched: the content, normalized if `normalized` */
    size_t match_len;
    int32_t id;
    bool single_word, lstrip, rstrip, normalized;
} added_tok;

struct hftok {
    hftok_model *model;
    norm_step *norm;
    size_t n_norm;
    int pre;
    bool add_prefix_space; /* ByteLevel */
    bool use_regex;        /* ByteLevel */
    int prepend;           /* Metaspace */
    bool split;            /* Metaspace */
    uint8_t repl[4];       /* Metaspace replacement, UTF-8 */
    size_t repl_len;
    added_tok *added;      /* matching order: specials first, then the others */
    size_t n_added;
    uint8_t first_raw[32], first_norm[32];
    bool has_raw, has_norm;
    hftok_strtab added_map; /* content -> id, for lookups */
    struct added_name *names; /* id -> content of every added id, sorted by id */
    size_t n_names;
    size_t n_ids;
    hftok_template tpl;
    int32_t unk_id, pad_id;
};

static void set_bit(uint8_t *bits, uint8_t b) {
    bits[b >> 3] |= (uint8_t)(1u << (b & 7));
}
static bool has_bit(const uint8_t *bits, uint8_t b) {
    return (bits[b >> 3] >> (b & 7)) & 1;
}

/* ---------------------------------------------------------------------------
 * Normalizers
 * ------------------------------------------------------------------------- */

/* Darts-clone's unit layout, as sentencepiece writes it. */
static bool da_has_leaf(uint32_t u) {
    return (u >> 8) & 1;
}
static uint32_t da_value(uint32_t u) {
    return u & 0x7FFFFFFFu;
}
static uint32_t da_label(uint32_t u) {
    return u & 0x800000FFu;
}
static size_t da_offset(uint32_t u) {
    return (size_t)(u >> 10) << ((u & (1u << 9)) >> 6);
}

/* spm_precompiled's transform: the replacement of the SHORTEST key that is
 * a prefix of s[0..n) (common_prefix_search's first result), or NULL. A
 * corrupt map (a walk off the array, a replacement outside the blob or not
 * on a character boundary) matches nothing. */
static const char *precompiled_find(const norm_step *st, const uint8_t *s, size_t n, size_t *out_len) {
    if (st->n_trie == 0)
        return NULL;
    size_t pos = da_offset(st->trie[0]);
    for (size_t k = 0; k < n && s[k]; k++) {
        pos ^= s[k];
        if (pos >= st->n_trie)
            return NULL;
        uint32_t u = st->trie[pos];
        if (da_label(u) != s[k])
            return NULL;
        pos ^= da_offset(u);
        if (!da_has_leaf(u))
            continue;
        if (pos >= st->n_trie)
            return NULL;
        size_t v = da_value(st->trie[pos]);
        if (v > st->n_repl || (v < st->n_repl && ((uint8_t)st->repl[v] & 0xC0) == 0x80))
            return NULL;
        const char *r = st->repl + v;
        const char *end = memchr(r, '\0', st->n_repl - v);
        *out_len = end ? (size_t)(end - r) : st->n_repl - v;
        return r;
    }
    return NULL;
}

/* tokenizers' Precompiled normalizer: grapheme by grapheme, a grapheme of
 * under 6 bytes is first looked up whole (and replaced whole by the
 * replacement of its shortest mapped prefix); otherwise, or if that finds
 * nothing, character by character. */
static void norm_precompiled(const norm_step *st, const uint8_t *s, size_t n, hbuf *out) {
    utf8proc_int32_t state = 0; /* carried across breaks: one call per adjacent pair */
    for (size_t start = 0; start < n;) {
        size_t end = start;
        uint32_t prev = hftok_utf8_next(s, &end);
        while (end < n) {
            size_t k = end;
            uint32_t c = hftok_utf8_next(s, &k);
            if (utf8proc_grapheme_break_stateful((utf8proc_int32_t)prev, (utf8proc_int32_t)c, &state))
                break;
            prev = c;
            end = k;
        }
        size_t rl;
        const char *r = NULL;
        if (end - start < 6 && (r = precompiled_find(st, s + start, end - start, &rl))) {
            hbuf_add(out, r, rl);
        } else {
            for (size_t c = start; c < end;) {
                size_t c0 = c;
                hftok_utf8_next(s, &c);
                if ((r = precompiled_find(st, s + c0, c - c0, &rl)))
                    hbuf_add(out, r, rl);
                else
                    hbuf_add(out, s + c0, c - c0);
            }
        }
        start = end;
    }
}

static void norm_replace(const norm_step *st, const uint8_t *s, size_t n, hbuf *out) {
    size_t pl = st->pattern_len;
    for (size_t i = 0; i < n;) {
        if (st->min_run == 0) {
            if (n - i >= pl && memcmp(s + i, st->pattern, pl) == 0) {
                hbuf_add(out, st->content, st->content_len);
                i += pl;
                continue;
            }
        } else {
            size_t run = 0;
            while (i + (run + 1) * pl <= n && memcmp(s + i + run * pl, st->pattern, pl) == 0)
                run++;
            if (run >= st->min_run) {
                hbuf_add(out, st->content, st->content_len);
                i += run * pl;
                continue;
            }
            if (run) { /* too short a run: copy it whole */
                hbuf_add(out, s + i, run * pl);
                i += run * pl;
                continue;
            }
        }
        size_t c = i;
        hftok_utf8_next(s, &c);
        hbuf_add(out, s + i, c - i);
        i = c;
    }
}

static void norm_strip(const norm_step *st, const uint8_t *s, size_t n, hbuf *out) {
    size_t a = 0, b = n;
    if (st->left)
        while (a < b) {
            size_t k = a;
            if (!is_ws(hftok_utf8_next(s, &k)))
                break;
            a = k;
        }
    if (st->right)
        while (b > a) {
            size_t k = b - 1;
            while ((s[k] & 0xC0) == 0x80)
                k--;
            size_t e = k;
            if (!is_ws(hftok_utf8_next(s, &e)))
                break;
            b = k;
        }
    hbuf_add(out, s + a, b - a);
}

/* Runs the normalizer chain on s[0..n); the result is in *res (one of the
 * two buffers, or s itself when there is no normalizer). */
static void normalize(const hftok *t, const uint8_t *s, size_t n, hbuf bufs[2], const uint8_t **res,
                      size_t *res_len) {
    const uint8_t *cur = s;
    size_t len = n;
    for (size_t k = 0; k < t->n_norm; k++) {
        hbuf *o = &bufs[k & 1];
        o->n = 0;
        const norm_step *st = &t->norm[k];
        if (st->kind == NORM_PRECOMPILED)
            norm_precompiled(st, cur, len, o);
        else if (st->kind == NORM_REPLACE)
            norm_replace(st, cur, len, o);
        else
            norm_strip(st, cur, len, o);
        cur = o->p;
        len = o->n;
        if (o->oom)
            break;
    }
    *res = cur;
    *res_len = len;
}

/* ---------------------------------------------------------------------------
 * Encoding
 * ------------------------------------------------------------------------- */

typedef struct enc {
    const hftok *t;
    hftok_ids *out;
    hbuf norm[2]; /* normalizer output */
    hbuf pre;     /* the piece as the pre-tokenizer rewrites it */
    hbuf word;    /* one word as the model sees it */
    bool oom;
} enc;

static void enc_fini(enc *e) {
    free(e->norm[0].p);
    free(e->norm[1].p);
    free(e->pre.p);
    free(e->word.p);
}

static bool enc_stop(const enc *e) {
    return e->oom || hftok_ids_full(e->out);
}

static void enc_word(enc *e, const uint8_t *w, size_t n) {
    if (n == 0 || enc_stop(e))
        return;
    if (e->t->model->ops->tokenize(e->t->model, w, n, e->out))
        e->oom = true;
}

/* GPT-2's byte-to-character map: printable Latin-1 bytes stand for
 * themselves, the 68 others for U+0100 upwards in byte order. */
static uint32_t byte_char(uint8_t b) {
    if (b <= 0x20)
        return 256u + b;
    if (b >= 0x7F && b <= 0xA0)
        return 256u + 33 + (b - 0x7Fu);
    if (b == 0xAD)
        return 256u + 33 + 34;
    return b;
}

static void enc_bytelevel_word(enc *e, const uint8_t *w, size_t n) {
    e->word.n = 0;
    if (!hbuf_reserve(&e->word, 2 * n)) {
        e->oom = true;
        return;
    }
    for (size_t i = 0; i < n; i++)
        e->word.n += hftok_utf8_put(byte_char(w[i]), e->word.p + e->word.n);
    enc_word(e, e->word.p, e->word.n);
}

/* GPT-2's split: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
 * ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ ; returns the end of the match at i. */
static size_t gpt2_match(const uint8_t *s, size_t n, size_t i) {
    if (s[i] == '\'' && i + 1 < n) {
        uint8_t a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd')
            return i + 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
            return i + 3;
    }
    size_t j = i;
    uint32_t c = hftok_utf8_next(s, &j);
    int cl = gpt2_class(c);
    size_t run_start = i;
    if (c == ' ' && j < n) { /* the optional space before a run */
        size_t k = j;
        int next = gpt2_class(hftok_utf8_next(s, &k));
        if (next != CL_SPACE) {
            cl = next;
            run_start = j;
        }
    }
    if (cl != CL_SPACE) {
        size_t k = run_start;
        while (k < n) {
            size_t m = k;
            if (gpt2_class(hftok_utf8_next(s, &m)) != cl)
                break;
            k = m;
        }
        return k;
    }
    /* White space: all of it at the end of the text, else all but the last
     * character before the next non-space (\s+(?!\S)), at least one (\s+). */
    size_t k = i, last = i;
    size_t count = 0;
    while (k < n) {
        size_t m = k;
        if (gpt2_class(hftok_utf8_next(s, &m)) != CL_SPACE)
            break;
        last = k;
        k = m;
        count++;
    }
    if (k == n || count == 1)
        return k;
    return last;
}

static void enc_bytelevel(enc *e, const uint8_t *s, size_t n) {
    const hftok *t = e->t;
    if (t->add_prefix_space && s[0] != ' ') {
        e->pre.n = 0;
        hbuf_add(&e->pre, " ", 1);
        hbuf_add(&e->pre, s, n);
        if (e->pre.oom) {
            e->oom = true;
            return;
        }
        s = e->pre.p;
        n = e->pre.n;
    }
    if (!t->use_regex) {
        enc_bytelevel_word(e, s, n);
        return;
    }
    for (size_t i = 0; i < n && !enc_stop(e);) {
        size_t end = gpt2_match(s, n, i);
        enc_bytelevel_word(e, s + i, end - i);
        i = end;
    }
}

static void enc_metaspace(enc *e, const uint8_t *s, size_t n, bool at_start) {
    const hftok *t = e->t;
    hbuf *p = &e->pre;
    p->n = 0;
    bool starts = n >= t->repl_len && memcmp(s, t->repl, t->repl_len) == 0;
    bool prepend = t->prepend == PREPEND_ALWAYS || (t->prepend == PREPEND_FIRST && at_start);
    if (prepend && !starts && s[0] != ' ')
        hbuf_add(p, t->repl, t->repl_len);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ')
            hbuf_add(p, t->repl, t->repl_len);
        else
            hbuf_add(p, s + i, 1);
    }
    if (p->oom) {
        e->oom = true;
        return;
    }
    if (!t->split) {
        enc_word(e, p->p, p->n);
        return;
    }
    /* MergedWithNext: every replacement character starts a word. */
    size_t w = 0;
    for (size_t i = 1; i + t->repl_len <= p->n && !enc_stop(e); i++) {
        if (memcmp(p->p + i, t->repl, t->repl_len) == 0) {
            enc_word(e, p->p + w, i - w);
            w = i;
        }
    }
    enc_word(e, p->p + w, p->n - w);
}

/* One piece of normalized text between added tokens. */
static void enc_piece(enc *e, const uint8_t *s, size_t n, bool at_start) {
    if (n == 0 || enc_stop(e))
        return;
    switch (e->t->pre) {
    case PRE_BYTELEVEL:
        enc_bytelevel(e, s, n);
        break;
    case PRE_METASPACE:
        enc_metaspace(e, s, n, at_start);
        break;
    default:
        enc_word(e, s, n);
    }
}

/* The leftmost-longest added token of one kind at or after `from`
 * (earliest pattern on a tie); returns its start, or n. */
static size_t find_added(const hftok *t, bool normalized, const uint8_t *s, size_t n, size_t from,
                         const added_tok **hit) {
    const uint8_t *first = normalized ? t->first_norm : t->first_raw;
    for (size_t i = from; i < n; i++) {
        if (!has_bit(first, s[i]))
            continue;
        const added_tok *best = NULL;
        for (size_t k = 0; k < t->n_added; k++) {
            const added_tok *a = &t->added[k];
            if (a->normalized != normalized || a->match_len > n - i || (best && a->match_len <= best->match_len))
                continue;
            if (memcmp(a->match, s + i, a->match_len) == 0)
                best = a;
        }
        if (best) {
            *hit = best;
            return i;
        }
    }
    return n;
}

typedef void (*piece_fn)(enc *e, const uint8_t *s, size_t n, bool at_start);

/* Rust's AddedVocabulary::find_matches: splits s into text pieces (handed
 * to `piece`) and added tokens (pushed), with single_word, lstrip, rstrip. */
static void split_added(enc *e, bool normalized, const uint8_t *s, size_t n, bool at_start, piece_fn piece) {
    const hftok *t = e->t;
    size_t done = 0; /* end of the last split */
    size_t from = 0;
    while (from < n && !enc_stop(e)) {
        const added_tok *a = NULL;
        size_t ms = find_added(t, normalized, s, n, from, &a);
        if (ms == n)
            break;
        size_t me = ms + a->match_len;
        from = me;
        if (a->single_word) {
            bool before = ms == 0 || !is_word_char(utf8_last(s, ms));
            size_t k = me;
            bool after = me == n || !is_word_char(hftok_utf8_next(s, &k));
            if (!before || !after)
                continue;
        }
        size_t start = ms, stop = me;
        if (a->lstrip) {
            size_t b = ms;
            while (b > 0) {
                size_t k = b - 1;
                while ((s[k] & 0xC0) == 0x80)
                    k--;
                size_t m = k;
                if (!is_ws(hftok_utf8_next(s, &m)))
                    break;
                b = k;
            }
            start = b > done ? b : done;
        }
        if (a->rstrip)
            while (stop < n) {
                size_t k = stop;
                if (!is_ws(hftok_utf8_next(s, &k)))
                    break;
                stop = k;
            }
        if (done < start)
            piece(e, s + done, start - done, at_start && done == 0);
        if (!enc_stop(e))
            hftok_ids_push(e->out, a->id);
        done = stop;
    }
    if (done < n)
        piece(e, s + done, n - done, at_start && done == 0);
}

/* A raw piece: normalized, then split on the normalized added tokens. */
static void enc_raw_piece(enc *e, const uint8_t *s, size_t n, bool at_start) {
    const uint8_t *ns;
    size_t nl;
    normalize(e->t, s, n, e->norm, &ns, &nl);
    if (e->norm[0].oom || e->norm[1].oom) {
        e->oom = true;
        return;
    }
    if (!e->t->has_norm) {
        enc_piece(e, ns, nl, at_start);
        return;
    }
    /* The pre-tokenizer's buffer is separate from the normalizer's, so the
     * normalized text stays valid while its pieces are encoded. */
    split_added(e, true, ns, nl, at_start, enc_piece);
}

/* The ids of one sequence, without special tokens, into out. */
static int enc_sequence(const hftok *t, const uint8_t *s, size_t n, hftok_ids *out) {
    enc e = {.t = t, .out = out};
    if (t->has_raw)
        split_added(&e, false, s, n, true, enc_raw_piece);
    else if (n)
        enc_raw_piece(&e, s, n, true);
    enc_fini(&e);
    return e.oom || out->oom ? ENGINE_ENOMEM : 0;
}

static int check_utf8(const char *text, size_t len, const char *what, engine_error *err) {
    const uint8_t *s = (const uint8_t *)text;
    size_t bad = hftok_utf8_check(s, len);
    if (bad < len)
        return engine_error_set(err, ENGINE_EINPUT, "%stext is not valid UTF-8 (byte 0x%02x at offset %zu)",
                                what, s[bad], bad);
    return 0;
}

int hftok_encode(const hftok *t, const char *text, size_t len, size_t max_length, int32_t *ids,
                 size_t cap, size_t *n_ids, engine_error *err) {
    if (n_ids)
        *n_ids = 0;
    if (!t || (!text && len) || !n_ids || (!ids && cap))
        return engine_error_set(err, ENGINE_EARG, "hftok_encode: NULL argument");
    if (max_length < t->tpl.added_single)
        return engine_error_set(err, ENGINE_EARG, "max_length %zu leaves no room for the %zu special tokens",
                                max_length, t->tpl.added_single);
    int rc = check_utf8(text, len, "", err);
    if (rc)
        return rc;
    hftok_ids a = {.limit = max_length - t->tpl.added_single};
    rc = enc_sequence(t, (const uint8_t *)text, len, &a);
    if (rc == 0)
        rc = hftok_template_apply(&t->tpl, &a, NULL, max_length, ids, NULL, cap, n_ids, err);
    else
        engine_error_set(err, rc, "out of memory while tokenizing %zu bytes", len);
    free(a.p);
    return rc;
}

int hftok_encode_pair(const hftok *t, const char *a, size_t a_len, const char *b, size_t b_len,
                      size_t max_length, int32_t *ids, uint8_t *types, size_t cap, size_t *n_ids,
                      engine_error *err) {
    if (n_ids)
        *n_ids = 0;
    if (!t || (!a && a_len) || (!b && b_len) || !n_ids || (!ids && cap))
        return engine_error_set(err, ENGINE_EARG, "hftok_encode_pair: NULL argument");
    if (max_length < t->tpl.added_pair)
        return engine_error_set(err, ENGINE_EARG, "max_length %zu leaves no room for the %zu special tokens",
                                max_length, t->tpl.added_pair);
    int rc = check_utf8(a, a_len, "first ", err);
    if (!rc)
        rc = check_utf8(b, b_len, "second ", err);
    if (rc)
        return rc;
    /* longest_first needs both full lengths when both are long. */
    hftok_ids ia = {.limit = SIZE_MAX}, ib = {.limit = SIZE_MAX};
    rc = enc_sequence(t, (const uint8_t *)a, a_len, &ia);
    if (!rc)
        rc = enc_sequence(t, (const uint8_t *)b, b_len, &ib);
    if (rc == 0)
        rc = hftok_template_apply(&t->tpl, &ia, &ib, max_length, ids, types, cap, n_ids, err);
    else
        engine_error_set(err, rc, "out of memory while tokenizing %zu + %zu bytes", a_len, b_len);
    free(ia.p);
    free(ib.p);
    return rc;
}

int hftok_is_blank(const hftok *t, const char *text, size_t len) {
    if (!t || (!text && len) || hftok_utf8_check((const uint8_t *)text, len) < len)
        return 0;
    hftok_ids a = {.limit = 1};
    int rc = enc_sequence(t, (const uint8_t *)text, len, &a);
    free(a.p);
    return rc == 0 && a.n == 0;
}

/* ---------------------------------------------------------------------------
 * Templates and truncation
 * ------------------------------------------------------------------------- */

void hftok_template_fini(hftok_template *tpl) {
    for (size_t i = 0; i < tpl->n_single; i++)
        free(tpl->single[i].ids);
    for (size_t i = 0; i < tpl->n_pair; i++)
        free(tpl->pair[i].ids);
    free(tpl->single);
    free(tpl->pair);
    memset(tpl, 0, sizeof *tpl);
}

static int tpl_special(hftok_piece *p, const int32_t *ids, size_t n) {
    p->seq = -1;
    p->n_ids = n;
    p->ids = malloc((n ? n : 1) * sizeof *ids);
    if (!p->ids)
        return ENGINE_ENOMEM;
    memcpy(p->ids, ids, n * sizeof *ids);
    return 0;
}

static void tpl_count(hftok_template *tpl) {
    tpl->added_single = tpl->added_pair = 0;
    for (size_t i = 0; i < tpl->n_single; i++)
        tpl->added_single += tpl->single[i].n_ids;
    for (size_t i = 0; i < tpl->n_pair; i++)
        tpl->added_pair += tpl->pair[i].n_ids;
}

/* cls A sep and cls A sep [sep] B sep (RobertaProcessing doubles the
 * middle separator). BertProcessing gives B and its separator token type 1;
 * RobertaProcessing gives every id type 0 (as Rust's 0.13 does). */
static int tpl_cls_sep(hftok_template *tpl, int32_t cls, int32_t sep, bool double_sep) {
    memset(tpl, 0, sizeof *tpl);
    tpl->single = calloc(3, sizeof *tpl->single);
    tpl->pair = calloc(6, sizeof *tpl->pair);
    if (!tpl->single || !tpl->pair)
        return ENGINE_ENOMEM;
    tpl->n_single = 3;
    int rc = tpl_special(&tpl->single[0], &cls, 1);
    tpl->single[1].seq = 0;
    rc |= tpl_special(&tpl->single[2], &sep, 1);
    size_t k = 0;
    rc |= tpl_special(&tpl->pair[k++], &cls, 1);
    tpl->pair[k++].seq = 0;
    rc |= tpl_special(&tpl->pair[k++], &sep, 1);
    if (double_sep)
        rc |= tpl_special(&tpl->pair[k++], &sep, 1);
    tpl->pair[k].type_id = !double_sep;
    tpl->pair[k++].seq = 1;
    tpl->pair[k].type_id = !double_sep;
    rc |= tpl_special(&tpl->pair[k++], &sep, 1);
    tpl->n_pair = k;
    tpl_count(tpl);
    return rc ? ENGINE_ENOMEM : 0;
}

int hftok_template_bert(hftok_template *tpl, int32_t cls, int32_t sep) {
    return tpl_cls_sep(tpl, cls, sep, false);
}

static bool json_id(json_t *v, int32_t *id) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= (json_int_t)HFTOK_MAX_IDS)
        return false;
    *id = (int32_t)json_integer_value(v);
    return true;
}

/* ["token", id] as RobertaProcessing and BertProcessing write them. */
static bool json_token_id(json_t *pair, int32_t (*lookup)(const void *, const char *, size_t), const void *ctx,
                          int32_t *id) {
    json_t *tok = json_array_get(pair, 0), *v = json_array_get(pair, 1);
    if (json_array_size(pair) != 2 || !json_is_string(tok))
        return false;
    if (json_is_null(v) && lookup) {
        *id = lookup(ctx, json_string_value(tok), json_string_length(tok));
        return *id >= 0;
    }
    return json_id(v, id);
}

static int tpl_parse_items(hftok_piece **out, size_t *n_out, json_t *items, json_t *specials, bool pair,
                           const char *path, engine_error *err) {
    size_t n = json_array_size(items);
    if (!json_is_array(items) || n == 0 || n > 64)
        return engine_error_set(err, ENGINE_EFORMAT, "%s: TemplateProcessing.%s must be a list of 1 to 64 items",
                                path, pair ? "pair" : "single");
    *out = calloc(n, sizeof **out);
    if (!*out)
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    *n_out = n;
    bool seen[2] = {false, false};
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(items, i);
        json_t *seq = json_object_get(it, "Sequence"), *sp = json_object_get(it, "SpecialToken");
        json_t *type_id = json_object_get(seq ? seq : sp, "type_id");
        if (type_id && (!json_is_integer(type_id) || json_integer_value(type_id) < 0 ||
                        json_integer_value(type_id) > 255))
            return engine_error_set(err, ENGINE_EFORMAT, "%s: TemplateProcessing.%s[%zu] has a type_id outside 0..255",
                                    path, pair ? "pair" : "single", i);
        (*out)[i].type_id = (uint8_t)json_integer_value(type_id); /* 0 when absent */
        if (seq) {
            const char *id = json_string_value(json_object_get(seq, "id"));
            if (!id || (strcmp(id, "A") != 0 && strcmp(id, "B") != 0) || (!pair && id[0] == 'B'))
                return engine_error_set(err, ENGINE_EFORMAT, "%s: TemplateProcessing.%s[%zu] names no sequence %s",
                                        path, pair ? "pair" : "single", i, pair ? "A or B" : "A");
            (*out)[i].seq = id[0] - 'A';
            seen[id[0] - 'A'] = true;
            continue;
        }
        const char *name = json_string_value(json_object_get(sp, "id"));
        json_t *ids = json_object_get(json_object_get(specials, name ? name : ""), "ids");
        size_t k = json_array_size(ids);
        if (!name || !json_is_array(ids) || k > 64)
            return engine_error_set(err, ENGINE_EFORMAT, "%s: TemplateProcessing.%s[%zu] is not a known special token",
                                    path, pair ? "pair" : "single", i);
        int32_t v[64];
        for (size_t j = 0; j < k; j++)
            if (!json_id(json_array_get(ids, j), &v[j]))
                return engine_error_set(err, ENGINE_EFORMAT, "%s: special token \"%s\" has a bad id", path, name);
        if (tpl_special(&(*out)[i], v, k))
            return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    }
    if (!seen[0] || (pair && !seen[1]))
        return engine_error_set(err, ENGINE_EFORMAT, "%s: TemplateProcessing.%s must use %s", path,
                                pair ? "pair" : "single", pair ? "both sequences" : "sequence A");
    return 0;
}

int hftok_template_parse(hftok_template *tpl, json_t *post, const char *path,
                         int32_t (*lookup)(const void *ctx, const char *s, size_t len), const void *ctx,
                         engine_error *err) {
    memset(tpl, 0, sizeof *tpl);
    if (!post || json_is_null(post)) {
        /* No post-processor: the sequences alone. */
        tpl->single = calloc(1, sizeof *tpl->single);
        tpl->pair = calloc(2, sizeof *tpl->pair);
        if (!tpl->single || !tpl->pair)
            return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
        tpl->n_single = 1;
        tpl->n_pair = 2;
        tpl->pair[1].seq = 1;
        return 0;
    }
    const char *type = json_string_value(json_object_get(post, "type"));
    if (type && strcmp(type, "Sequence") == 0) {
        /* transformers' newer files: ByteLevel (offsets only) plus one
         * processor that adds the special tokens. */
        json_t *procs = json_object_get(post, "processors"), *adder = NULL;
        for (size_t i = 0; i < json_array_size(procs); i++) {
            json_t *p = json_array_get(procs, i);
            const char *pt = json_string_value(json_object_get(p, "type"));
            if (pt && strcmp(pt, "ByteLevel") == 0)
                continue;
            if (adder)
                return engine_error_set(err, ENGINE_EUNSUPPORTED,
                                        "%s: a post_processor Sequence with more than one processor that adds tokens is not supported",
                                        path);
            adder = p;
        }
        return hftok_template_parse(tpl, adder, path, lookup, ctx, err);
    }
    if (type && strcmp(type, "ByteLevel") == 0)
        return hftok_template_parse(tpl, NULL, path, lookup, ctx, err);
    if (type && (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0)) {
        int32_t cls, sep;
        if (!json_token_id(json_object_get(post, "cls"), lookup, ctx, &cls) ||
            !json_token_id(json_object_get(post, "sep"), lookup, ctx, &sep))
            return engine_error_set(err, ENGINE_EFORMAT, "%s: %s needs cls and sep as [token, id]", path, type);
        if (tpl_cls_sep(tpl, cls, sep, type[0] == 'R'))
            return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
        return 0;
    }
    if (type && strcmp(type, "TemplateProcessing") == 0) {
        json_t *specials = json_object_get(post, "special_tokens");
        int rc = tpl_parse_items(&tpl->single, &tpl->n_single, json_object_get(post, "single"), specials, false,
                                 path, err);
        if (!rc)
            rc = tpl_parse_items(&tpl->pair, &tpl->n_pair, json_object_get(post, "pair"), specials, true, path, err);
        if (rc)
            return rc;
        tpl_count(tpl);
        return 0;
    }
    return engine_error_set(err, ENGINE_EUNSUPPORTED,
                            "%s: post_processor \"%s\" is not supported (only RobertaProcessing, BertProcessing, "
                            "TemplateProcessing, ByteLevel and a Sequence of them)",
                            path, type ? type : "?");
}

int hftok_template_apply(const hftok_template *tpl, const hftok_ids *a, const hftok_ids *b,
                         size_t max_length, int32_t *ids, uint8_t *types, size_t cap, size_t *n_ids,
                         engine_error *err) {
    size_t added = b ? tpl->added_pair : tpl->added_single;
    if (max_length < added)
        return engine_error_set(err, ENGINE_EARG, "max_length %zu leaves no room for the %zu special tokens",
                                max_length, added);
    size_t budget = max_length - added;
    size_t n1 = a->n, n2 = b ? b->n : 0;
    if (!b) {
        if (n1 > budget)
            n1 = budget;
    } else if (n1 + n2 > budget) {
        /* Rust's truncate_encodings, longest_first: the shorter keeps what
         * it can; if both must give, they split the budget, the extra one
         * going to the longer (to the second on a tie). */
        bool swap = n1 > n2;
        size_t s = swap ? n2 : n1, l;
        if (s > budget)
            l = s;
        else
            l = s > budget - s ? s : budget - s;
        if (s + l > budget) {
            s = budget / 2;
            l = s + budget % 2;
        }
        n1 = swap ? l : s;
        n2 = swap ? s : l;
    }
    const hftok_piece *items = b ? tpl->pair : tpl->single;
    size_t n_items = b ? tpl->n_pair : tpl->n_single;
    size_t n = 0;
    for (size_t i = 0; i < n_items; i++) {
        const int32_t *src = items[i].ids;
        size_t k = items[i].n_ids;
        if (items[i].seq == 0) {
            src = a->p;
            k = n1;
        } else if (items[i].seq == 1) {
            src = b->p;
            k = n2;
        }
        if (k && n < cap) {
            const size_t room = cap - n < k ? cap - n : k;
            memcpy(ids + n, src, room * sizeof *ids);
            if (types)
                memset(types + n, items[i].type_id, room);
        }
        n += k;
    }
    *n_ids = n;
    if (n > cap)
        return engine_error_set(err, ENGINE_EARG, "ids buffer holds %zu ids but the text needs %zu", cap, n);
    return 0;
}

/* ---------------------------------------------------------------------------
 * Loading
 * ------------------------------------------------------------------------- */

static int b64_value(uint8_t c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Standard base64 with padding, as Rust's base64 STANDARD engine decodes. */
static uint8_t *b64_decode(const char *s, size_t n, size_t *out_len) {
    if (n % 4)
        return NULL;
    size_t pad = n && s[n - 1] == '=' ? (n > 1 && s[n - 2] == '=' ? 2 : 1) : 0;
    uint8_t *out = malloc(n / 4 * 3 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        uint32_t v = 0;
        for (size_t k = 0; k < 4; k++) {
            uint8_t c = (uint8_t)s[i + k];
            int d = b64_value(c);
            if (c == '=' && i + k >= n - pad)
                d = 0;
            else if (d < 0) {
                free(out);
                return NULL;
            }
            v = v << 6 | (uint32_t)d;
        }
        out[o++] = (uint8_t)(v >> 16);
        out[o++] = (uint8_t)(v >> 8);
        out[o++] = (uint8_t)v;
    }
    *out_len = o - pad;
    return out;
}

static int load_precompiled(norm_step *st, json_t *norm, const char *path, engine_error *err) {
    json_t *map = json_object_get(norm, "precompiled_charsmap");
    if (!json_is_string(map))
        return engine_error_set(err, ENGINE_EFORMAT, "%s: Precompiled.precompiled_charsmap is not a string", path);
    size_t n = 0;
    uint8_t *blob = b64_decode(json_string_value(map), json_string_length(map), &n);
    if (!blob)
        return engine_error_set(err, ENGINE_EFORMAT, "%s: Precompiled.precompiled_charsmap is not valid base64",
                                path);
    int rc = 0;
    uint32_t trie_bytes = n >= 4 ? (uint32_t)blob[0] | (uint32_t)blob[1] << 8 | (uint32_t)blob[2] << 16 |
                                       (uint32_t)blob[3] << 24
                                 : 0;
    size_t units = trie_bytes / 4;
    if (n < 4 || units > (n - 4) / 4) {
        rc = engine_error_set(err, ENGINE_EFORMAT,
                              "%s: Precompiled.precompiled_charsmap: a %u-byte trie does not fit in %zu bytes", path,
                              trie_bytes, n);
        goto done;
    }
    st->n_trie = units;
    st->trie = malloc((units ? units : 1) * sizeof *st->trie);
    size_t rest = n - 4 - units * 4;
    st->repl = malloc(rest + 1);
    if (!st->trie || !st->repl) {
        rc = engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    for (size_t i = 0; i < units; i++) {
        const uint8_t *u = blob + 4 + 4 * i;
        st->trie[i] = (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
    }
    memcpy(st->repl, blob + 4 + units * 4, rest);
    st->repl[rest] = '\0';
    st->n_repl = rest;
    if (hftok_utf8_check((const uint8_t *)st->repl, rest) < rest)
        rc = engine_error_set(err, ENGINE_EFORMAT,
                              "%s: Precompiled.precompiled_charsmap: the replacement strings are not valid UTF-8", path);
done:
    free(blob);
    return rc;
}

static char *dup_bytes(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        if (n)
            memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* Replace's pattern: {"String": s} or {"Regex": r} where r is one literal
 * character repeated ("c{n,}" or "c+"), the only regexes in the layouts
 * transformers writes (" {2,}"). */
static int load_replace(norm_step *st, json_t *norm, const char *path, engine_error *err) {
    json_t *pat = json_object_get(norm, "pattern"), *content = json_object_get(norm, "content");
    json_t *str = json_object_get(pat, "String"), *re = json_object_get(pat, "Regex");
    if (!json_is_string(content) || (!json_is_string(str) && !json_is_string(re)))
        return engine_error_set(err, ENGINE_EFORMAT, "%s: Replace needs a String or Regex pattern and a content",
                                path);
    const char *p = json_string_value(str ? str : re);
    size_t pl = json_string_length(str ? str : re);
    if (re) {
        size_t one = 0, min = 0;
        if (pl > 0 && hftok_utf8_check((const uint8_t *)p, pl) == pl && !strchr("\\.[](){}*+?|^$", p[0]))
            hftok_utf8_next((const uint8_t *)p, &one);
        const char *rest = p + one;
        if (one && strcmp(rest, "+") == 0) {
            min = 1;
        } else if (one && rest[0] == '{') {
            size_t k = 1;
            while (rest[k] >= '0' && rest[k] <= '9' && min <= 1000)
                min = min * 10 + (size_t)(rest[k++] - '0');
            if (k == 1 || strcmp(rest + k, ",}") != 0 || min > 1000)
                min = 0;
        }
        if (min == 0)
            return engine_error_set(err, ENGINE_EUNSUPPORTED,
                                    "%s: Replace regex \"%s\" is not supported (only a repeated character, as \" {2,}\")",
                                    path, p);
        st->min_run = min;
        pl = one;
    } else if (pl == 0) {
        return engine_error_set(err, ENGINE_EUNSUPPORTED, "%s: Replace with an empty pattern is not supported", path);
    }
    st->pattern = dup_bytes(p, pl);
    st->content = dup_bytes(json_string_value(content), json_string_length(content));
    if (!st->pattern || !st->content)
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    st->pattern_len = pl;
    st->content_len = json_string_length(content);
    return 0;
}

static int load_normalizer(hftok *t, json_t *norm, const char *path, int depth, engine_error *err) {
    if (!norm || json_is_null(norm))
        return 0;
    const char *type = json_string_value(json_object_get(norm, "type"));
    if (type && strcmp(type, "Sequence") == 0 && depth < 4) {
        json_t *list = json_object_get(norm, "normalizers");
        for (size_t i = 0; i < json_array_size(list); i++) {
            int rc = load_normalizer(t, json_array_get(list, i), path, depth + 1, err);
            if (rc)
                return rc;
        }
        return 0;
    }
    int kind = !type ? -1
               : strcmp(type, "Precompiled") == 0 ? NORM_PRECOMPILED
               : strcmp(type, "Replace") == 0     ? NORM_REPLACE
               : strcmp(type, "Strip") == 0       ? NORM_STRIP
                                                  : -1;
    if (kind < 0)
        return engine_error_set(err, ENGINE_EUNSUPPORTED,
                                "%s: normalizer \"%s\" is not supported (only Precompiled, Replace, Strip and a Sequence of them)",
                                path, type ? type : "?");
    if (t->n_norm >= 16)
        return engine_error_set(err, ENGINE_EUNSUPPORTED, "%s: more than 16 normalizers", path);
    norm_step *steps = realloc(t->norm, (t->n_norm + 1) * sizeof *steps);
    if (!steps)
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    t->norm = steps;
    norm_step *st = &steps[t->n_norm++];
    memset(st, 0, sizeof *st);
    st->kind = kind;
    if (kind == NORM_PRECOMPILED)
        return load_precompiled(st, norm, path, err);
    if (kind == NORM_REPLACE)
        return load_replace(st, norm, path, err);
    json_t *l = json_object_get(norm, "strip_left"), *r = json_object_get(norm, "strip_right");
    st->left = json_is_true(l);
    st->right = json_is_true(r);
    return 0;
}

static bool json_flag(json_t *obj, const char *key, bool dflt) {
    json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static int load_pretokenizer(hftok *t, json_t *pre, const char *path, engine_error *err) {
    t->pre = PRE_NONE;
    if (!pre || json_is_null(pre))
        return 0;
    const char *type = json_string_value(json_object_get(pre, "type"));
    if (type && strcmp(type, "ByteLevel") == 0) {
        t->pre = PRE_BYTELEVEL;
        t->add_prefix_space = json_flag(pre, "add_prefix_space", true);
        t->use_regex = json_flag(pre, "use_regex", true);
        return 0;
    }
    if (type && strcmp(type, "Metaspace") == 0) {
        t->pre = PRE_METASPACE;
        json_t *r = json_object_get(pre, "replacement");
        const uint8_t *rs = (const uint8_t *)json_string_value(r);
        size_t rl = json_string_length(r), one = 0;
        if (rs && rl > 0 && rl <= 4)
            hftok_utf8_next(rs, &one);
        if (!rs || one != rl)
            return engine_error_set(err, ENGINE_EFORMAT, "%s: Metaspace.replacement must be one character", path);
        memcpy(t->repl, rs, rl);
        t->repl_len = rl;
        t->split = json_flag(pre, "split", true);
        const char *scheme = json_string_value(json_object_get(pre, "prepend_scheme"));
        if (!scheme)
            t->prepend = json_flag(pre, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
        else if (strcmp(scheme, "always") == 0)
            t->prepend = PREPEND_ALWAYS;
        else if (strcmp(scheme, "never") == 0)
            t->prepend = PREPEND_NEVER;
        else if (strcmp(scheme, "first") == 0)
            t->prepend = PREPEND_FIRST;
        else
            return engine_error_set(err, ENGINE_EFORMAT, "%s: Metaspace.prepend_scheme \"%s\" is unknown", path,
                                    scheme);
        return 0;
    }
    return engine_error_set(err, ENGINE_EUNSUPPORTED,
                            "%s: pre_tokenizer \"%s\" is not supported (only ByteLevel and Metaspace)", path,
                            type ? type : "?");
}

int32_t hftok_lookup(const hftok *t, const char *s, size_t len) {
    int32_t id = hftok_strtab_get(&t->added_map, s, len);
    return id >= 0 ? id : t->model->ops->lookup(t->model, s, len);
}

static int32_t lookup_cb(const void *ctx, const char *s, size_t len) {
    return hftok_lookup(ctx, s, len);
}

/* A normalized token's match text: its content through the normalizer. */
static int added_match_text(const hftok *t, added_tok *a, const char *content, size_t cl) {
    hbuf bufs[2] = {{0}, {0}};
    const uint8_t *ns;
    size_t nl;
    normalize(t, (const uint8_t *)content, cl, bufs, &ns, &nl);
    a->match = bufs[0].oom || bufs[1].oom ? NULL : dup_bytes((const char *)ns, nl);
    a->match_len = nl;
    free(bufs[0].p);
    free(bufs[1].p);
    return a->match ? 0 : ENGINE_ENOMEM;
}

/* Registers the added tokens in file order as tokenizers 0.13 does:
 *  - a special token always joins the special list (once per content);
 *  - its id, and any token's, is that of its content among the added
 *    tokens so far, else in the model's vocabulary, else the next new id
 *    (entries + new tokens so far); the file's "id" is only compared, with
 *    a warning, by Rust;
 *  - a non-special token is matched only if its content was new: one that
 *    the vocabulary already has is not split out of the text (newer
 *    tokenizers split it out too);
 *  - single_word, lstrip and rstrip come from the latest definition of the
 *    id, "normalized" from the entry itself.
 * Matching tries the special tokens first, then the others. */
static int load_added(hftok *t, json_t *list, const char *path, engine_error *err) {
    if (list && !json_is_array(list))
        return engine_error_set(err, ENGINE_EFORMAT, "%s: added_tokens is not an array", path);
    size_t n = json_array_size(list);
    if (hftok_strtab_init(&t->added_map, n))
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    /* Specials are appended to t->added (owned there from the start, so
     * hftok_destroy frees them on any error); the others wait in `rest`. */
    t->added = calloc(2 * n + 1, sizeof *t->added);
    added_tok *rest = calloc(n + 1, sizeof *rest);
    json_t **latest = calloc(2 * n + 1, sizeof *latest); /* entry -> latest definition of its id */
    size_t n_rest = 0, n_new = 0;
    size_t n_entries = t->model->ops->n_entries(t->model);
    int rc = 0;
    if (!t->added || !rest || !latest) {
        rc = engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    for (size_t k = 0; k < n; k++) {
        json_t *tok = json_array_get(list, k);
        json_t *c = json_object_get(tok, "content");
        if (!json_is_string(c)) {
            rc = engine_error_set(err, ENGINE_EFORMAT, "%s: added_tokens[%zu] has no content", path, k);
            goto done;
        }
        const char *content = json_string_value(c);
        size_t cl = json_string_length(c);
        bool special = json_flag(tok, "special", false);
        bool normalized = json_flag(tok, "normalized", !special);
        if (special && cl > 0) {
            bool seen = false;
            for (size_t j = 0; j < t->n_added && !seen; j++)
                seen = t->added[j].match_len == cl && memcmp(t->added[j].match, content, cl) == 0;
            if (!seen) {
                added_tok *a = &t->added[t->n_added++];
                a->match = dup_bytes(content, cl); /* normalized below if it says so */
                a->match_len = cl;
                a->normalized = normalized;
                a->id = -1;
                if (!a->match) {
                    rc = engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
                    goto done;
                }
            }
        }
        if (cl == 0)
            continue;
        int32_t id = hftok_lookup(t, content, cl);
        if (id < 0) {
            if (n_entries + n_new >= HFTOK_MAX_IDS) {
                rc = engine_error_set(err, ENGINE_EFORMAT, "%s: too many added tokens", path);
                goto done;
            }
            id = (int32_t)(n_entries + n_new++);
            if (hftok_strtab_put(&t->added_map, content, cl, id, NULL)) {
                rc = engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
                goto done;
            }
            if (!special) {
                added_tok *a = &rest[n_rest++];
                a->match = dup_bytes(content, cl);
                a->match_len = cl;
                a->normalized = normalized;
                a->id = id;
                if (!a->match) {
                    rc = engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
                    goto done;
                }
            }
        }
        for (size_t j = 0; j < t->n_added; j++) {
            added_tok *a = &t->added[j];
            if (a->id < 0 && a->match_len == cl && memcmp(a->match, content, cl) == 0)
                a->id = id;
            if (a->id == id)
                latest[j] = tok;
        }
        for (size_t j = 0; j < n_rest; j++)
            if (rest[j].id == id)
                latest[n + j] = tok;
    }
    for (size_t j = 0; j < n_rest; j++) {
        latest[t->n_added] = latest[n + j];
        t->added[t->n_added++] = rest[j];
    }
    n_rest = 0;
    size_t kept = 0;
    for (size_t k = 0; k < t->n_added; k++) {
        added_tok *a = &t->added[k];
        a->single_word = json_flag(latest[k], "single_word", false);
        a->lstrip = json_flag(latest[k], "lstrip", false);
        a->rstrip = json_flag(latest[k], "rstrip", false);
        if (a->normalized) {
            char *content = a->match;
            a->match = NULL;
            rc = added_match_text(t, a, content, a->match_len);
            if (rc == 0 && a->match_len == 0)
                rc = engine_error_set(err, ENGINE_EUNSUPPORTED,
                                      "%s: added token \"%s\" is empty once normalized, which is not supported", path,
                                      content);
            else if (rc)
                rc = engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
            free(content);
            if (rc)
                goto done;
        }
    }
    for (size_t k = 0; k < t->n_added; k++) {
        added_tok a = t->added[k];
        if (a.id < 0) { /* never given an id: cannot happen for a non-empty special */
            free(a.match);
            continue;
        }
        t->added[kept++] = a;
        set_bit(a.normalized ? t->first_norm : t->first_raw, (uint8_t)a.match[0]);
        if (a.normalized)
            t->has_norm = true;
        else
            t->has_raw = true;
    }
    t->n_added = kept;
done:
    for (size_t j = 0; j < n_rest; j++)
        free(rest[j].match);
    free(rest);
    free(latest);
    return rc;
}

static int name_cmp(const void *x, const void *y) {
    const struct added_name *a = x, *b = y;
    return (a->id > b->id) - (a->id < b->id);
}

static int fill_ids(hftok *t, const char *path, engine_error *err) {
    size_t n_ids = t->model->ops->n_ids(t->model);
    for (size_t k = 0; k < t->n_added; k++)
        if ((size_t)t->added[k].id + 1 > n_ids)
            n_ids = (size_t)t->added[k].id + 1;
    const hftok_template *tpl = &t->tpl;
    for (int p = 0; p < 2; p++)
        for (size_t i = 0; i < (p ? tpl->n_pair : tpl->n_single); i++) {
            const hftok_piece *pc = p ? &tpl->pair[i] : &tpl->single[i];
            for (size_t j = 0; j < pc->n_ids; j++)
                if ((size_t)pc->ids[j] + 1 > n_ids)
                    n_ids = (size_t)pc->ids[j] + 1;
        }
    t->n_ids = n_ids;
    /* The content (not the normalized form) names an added id. */
    t->names = malloc((t->added_map.n ? t->added_map.n : 1) * sizeof *t->names);
    if (!t->names)
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    for (size_t i = 0; i <= t->added_map.mask; i++) {
        const struct hftok_slot *sl = &t->added_map.slots[i];
        if (sl->id >= 0)
            t->names[t->n_names++] = (struct added_name){sl->id, t->added_map.pool + sl->off};
    }
    qsort(t->names, t->n_names, sizeof *t->names, name_cmp);
    return 0;
}

int hftok_create(json_t *root, const char *path, hftok_model *model, hftok **out, engine_error *err) {
    *out = NULL;
    hftok *t = calloc(1, sizeof *t);
    if (!t) {
        model->ops->destroy(model);
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    }
    t->model = model;
    int rc = load_normalizer(t, json_object_get(root, "normalizer"), path, 0, err);
    if (!rc)
        rc = load_pretokenizer(t, json_object_get(root, "pre_tokenizer"), path, err);
    if (!rc)
        rc = load_added(t, json_object_get(root, "added_tokens"), path, err);
    if (!rc)
        rc = hftok_template_parse(&t->tpl, json_object_get(root, "post_processor"), path, lookup_cb, t, err);
    if (!rc)
        rc = fill_ids(t, path, err);
    if (rc) {
        hftok_destroy(t);
        return rc;
    }
    t->unk_id = model->ops->unk_id(model);
    t->pad_id = hftok_lookup(t, "<pad>", 5);
    if (t->pad_id < 0)
        t->pad_id = hftok_lookup(t, "[PAD]", 5);
    *out = t;
    return 0;
}

void hftok_destroy(hftok *t) {
    if (!t)
        return;
    if (t->model)
        t->model->ops->destroy(t->model);
    for (size_t k = 0; k < t->n_norm; k++) {
        free(t->norm[k].trie);
        free(t->norm[k].repl);
        free(t->norm[k].pattern);
        free(t->norm[k].content);
    }
    free(t->norm);
    for (size_t k = 0; k < t->n_added; k++)
        free(t->added[k].match);
    free(t->added);
    free(t->names);
    hftok_strtab_fini(&t->added_map);
    hftok_template_fini(&t->tpl);
    free(t);
}

/* ---------------------------------------------------------------------------
 * Accessors
 * ------------------------------------------------------------------------- */

const char *hftok_token(const hftok *t, int32_t id) {
    if (id < 0 || (size_t)id >= t->n_ids)
        return NULL;
    size_t lo = 0, hi = t->n_names;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->names[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < t->n_names && t->names[lo].id == id)
        return t->names[lo].content; /* Rust names an id by its added token first */
    return t->model->ops->token(t->model, id);
}

size_t hftok_n_ids(const hftok *t) {
    return t->n_ids;
}

const char *hftok_kind(const hftok *t) {
    return t->model->ops->kind;
}

int32_t hftok_cls_id(const hftok *t) {
    const hftok_template *tpl = &t->tpl;
    return tpl->n_single && tpl->single[0].seq < 0 && tpl->single[0].n_ids ? tpl->single[0].ids[0] : -1;
}

int32_t hftok_sep_id(const hftok *t) {
    const hftok_template *tpl = &t->tpl;
    const hftok_piece *last = tpl->n_single ? &tpl->single[tpl->n_single - 1] : NULL;
    return last && last->seq < 0 && last->n_ids ? last->ids[last->n_ids - 1] : -1;
}

int32_t hftok_unk_id(const hftok *t) {
    return t->unk_id;
}

int32_t hftok_pad_id(const hftok *t) {
    return t->pad_id;
}
