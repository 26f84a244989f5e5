/*
 * bpe.c - the BPE model (algorithm in bpe.h).
 *
 * Design:
 *  - The vocabulary is an hftok_strtab (token -> id) plus an id -> string
 *    index; merges are an open-addressing table keyed by the pair of ids,
 *    giving (rank, new id). A later merge of the same pair replaces an
 *    earlier one, as Rust's HashMap collect does.
 *  - Characters below U+0200 (all 256 byte-level characters among them)
 *    have their ids in a table built at load when there is no prefix or
 *    suffix; other characters are looked up in the string table.
 *  - A word's symbols and the merge queue (a binary min-heap on rank, then
 *    position) live on the stack for words of up to 128 characters and on
 *    the heap beyond.
 *  - The model is immutable after loading; any thread may tokenize.
 */
#include "bpe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

#define BPE_MAX_AFFIX 64  /* longest continuing_subword_prefix / end_of_word_suffix */
#define BPE_FAST_CHARS 0x200

typedef struct merge_slot {
    uint64_t key; /* (a << 32) | b; UINT64_MAX: empty */
    uint32_t rank;
    int32_t new_id;
} merge_slot;

typedef struct bpe {
    hftok_model base;
    hftok_strtab vocab;
    uint32_t *tok_off; /* id -> pool offset, UINT32_MAX where no token has that id */
    size_t n_ids;
    merge_slot *merges;
    size_t merge_mask;
    char prefix[BPE_MAX_AFFIX], suffix[BPE_MAX_AFFIX];
    size_t prefix_len, suffix_len;
    int32_t unk_id; /* -1: no unk_token */
    bool fuse_unk, byte_fallback;
    int32_t byte_ids[256];           /* "<0xXX>", or -1 */
    int32_t fast[BPE_FAST_CHARS];    /* plain character -> id (-1 absent), if no affixes */
    bool has_fast;
} bpe;

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static const merge_slot *merge_get(const bpe *m, int32_t a, int32_t b) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = mix64(key) & m->merge_mask;; i = (i + 1) & m->merge_mask) {
        const merge_slot *s = &m->merges[i];
        if (s->key == key)
            return s;
        if (s->key == UINT64_MAX)
            return NULL;
    }
}

static void merge_put(bpe *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = mix64(key) & m->merge_mask;
    while (m->merges[i].key != UINT64_MAX && m->merges[i].key != key)
        i = (i + 1) & m->merge_mask;
    m->merges[i] = (merge_slot){key, rank, new_id};
}

/* ---------------------------------------------------------------------------
 * Tokenizing one word
 * ------------------------------------------------------------------------- */

typedef struct sym {
    int32_t id;
    int32_t prev, next;
    uint32_t len; /* bytes of the word it covers; 0 once merged away */
} sym;

typedef struct qent {
    uint32_t rank, pos;
    int32_t new_id;
} qent;

static bool q_less(const qent *a, const qent *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void q_push(qent *q, size_t *n, qent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!q_less(&e, &q[parent]))
            break;
        q[i] = q[parent];
        i = parent;
    }
    q[i] = e;
}

static qent q_pop(qent *q, size_t *n) {
    qent top = q[0], last = q[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && q_less(&q[c + 1], &q[c]))
            c++;
        if (!q_less(&q[c], &last))
            break;
        q[i] = q[c];
        i = c;
    }
    q[i] = last;
    return top;
}

static void sym_add(sym *s, size_t *n, int32_t id, uint32_t len) {
    size_t i = (*n)++;
    s[i] = (sym){id, (int32_t)i - 1, -1, len};
    if (i > 0)
        s[i - 1].next = (int32_t)i;
}

/* The id of the k-th character c (bytes ch[0..cl)) of a word. */
static int32_t char_id(const bpe *m, const uint8_t *ch, size_t cl, bool first, bool last, uint8_t *buf,
                       size_t *buf_len) {
    size_t n = 0;
    if (!first) {
        memcpy(buf, m->prefix, m->prefix_len);
        n = m->prefix_len;
    }
    memcpy(buf + n, ch, cl);
    n += cl;
    if (last) {
        memcpy(buf + n, m->suffix, m->suffix_len);
        n += m->suffix_len;
    }
    *buf_len = n;
    if (m->has_fast) {
        size_t i = 0;
        uint32_t cp = hftok_utf8_next(ch, &i);
        if (cp < BPE_FAST_CHARS)
            return m->fast[cp];
    }
    return hftok_strtab_get(&m->vocab, (const char *)buf, n);
}

static int bpe_tokenize(const hftok_model *base, const uint8_t *w, size_t len, hftok_ids *out) {
    const bpe *m = (const bpe *)base;
    sym sym_st[128];
    qent q_st[3 * 128];
    /* A character gives one symbol, or with byte fallback one per byte of
     * prefix + character + suffix. */
    size_t max_syms = len * (m->byte_fallback ? 1 + m->prefix_len + m->suffix_len : 1) + 1;
    sym *s = sym_st;
    qent *q = q_st;
    if (max_syms > 128) {
        s = malloc(max_syms * sizeof *s);
        q = malloc(3 * max_syms * sizeof *q);
        if (!s || !q) {
            free(s == sym_st ? NULL : s);
            free(q == q_st ? NULL : q);
            return ENGINE_ENOMEM;
        }
    }
    size_t n = 0;
    int32_t unk = -1; /* pending unknown run */
    uint32_t unk_len = 0;
    uint8_t buf[2 * BPE_MAX_AFFIX + 4];
    for (size_t i = 0; i < len;) {
        size_t c = i;
        hftok_utf8_next(w, &c);
        size_t bl;
        int32_t id = char_id(m, w + i, c - i, i == 0, c == len, buf, &bl);
        uint32_t cl = (uint32_t)(c - i);
        i = c;
        if (id >= 0) {
            if (unk >= 0) {
                sym_add(s, &n, unk, unk_len);
                unk = -1;
            }
            sym_add(s, &n, id, cl);
            continue;
        }
        if (m->byte_fallback) {
            bool all = true;
            for (size_t k = 0; k < bl && all; k++)
                all = m->byte_ids[buf[k]] >= 0;
            if (all) {
                /* Rust adds these before a pending unknown run is flushed. */
                for (size_t k = 0; k < bl; k++)
                    sym_add(s, &n, m->byte_ids[buf[k]], 1);
                continue;
            }
        }
        if (m->unk_id < 0)
            continue; /* no unk_token: the character is dropped */
        if (unk >= 0 && m->fuse_unk) {
            unk_len += cl;
        } else {
            if (unk >= 0)
                sym_add(s, &n, unk, unk_len);
            unk = m->unk_id;
            unk_len = cl;
        }
    }
    if (unk >= 0)
        sym_add(s, &n, unk, unk_len);

    size_t nq = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        const merge_slot *ms = merge_get(m, s[i].id, s[i + 1].id);
        if (ms)
            q_push(q, &nq, (qent){ms->rank, (uint32_t)i, ms->new_id});
    }
    while (nq > 0) {
        qent top = q_pop(q, &nq);
        sym *cur = &s[top.pos];
        if (cur->len == 0 || cur->next < 0)
            continue;
        sym right = s[cur->next];
        const merge_slot *ms = merge_get(m, cur->id, right.id);
        if (!ms || ms->new_id != top.new_id)
            continue; /* stale: the pair changed since it was queued */
        s[cur->next].len = 0;
        cur->id = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        if (right.next >= 0)
            s[right.next].prev = (int32_t)top.pos;
        if (cur->prev >= 0 && (ms = merge_get(m, s[cur->prev].id, cur->id)))
            q_push(q, &nq, (qent){ms->rank, (uint32_t)cur->prev, ms->new_id});
        if (cur->next >= 0 && (ms = merge_get(m, cur->id, s[cur->next].id)))
            q_push(q, &nq, (qent){ms->rank, top.pos, ms->new_id});
    }
    for (size_t i = 0; i < n; i++)
        if (s[i].len && !hftok_ids_push(out, s[i].id))
            break;
    if (s != sym_st) {
        free(s);
        free(q);
    }
    return out->oom ? ENGINE_ENOMEM : 0;
}

/* ---------------------------------------------------------------------------
 * Model operations
 * ------------------------------------------------------------------------- */

static int32_t bpe_lookup(const hftok_model *base, const char *s, size_t len) {
    return hftok_strtab_get(&((const bpe *)base)->vocab, s, len);
}

static const char *bpe_token(const hftok_model *base, int32_t id) {
    const bpe *m = (const bpe *)base;
    if (id < 0 || (size_t)id >= m->n_ids || m->tok_off[id] == UINT32_MAX)
        return NULL;
    return m->vocab.pool + m->tok_off[id];
}

static size_t bpe_n_entries(const hftok_model *base) {
    return ((const bpe *)base)->vocab.n;
}

static size_t bpe_n_ids(const hftok_model *base) {
    return ((const bpe *)base)->n_ids;
}

static int32_t bpe_unk_id(const hftok_model *base) {
    return ((const bpe *)base)->unk_id;
}

static void bpe_destroy(hftok_model *base) {
    bpe *m = (bpe *)base;
    if (!m)
        return;
    hftok_strtab_fini(&m->vocab);
    free(m->tok_off);
    free(m->merges);
    free(m);
}

static const hftok_model_ops bpe_ops = {
    .kind = "BPE",
    .tokenize = bpe_tokenize,
    .lookup = bpe_lookup,
    .token = bpe_token,
    .n_entries = bpe_n_entries,
    .n_ids = bpe_n_ids,
    .unk_id = bpe_unk_id,
    .destroy = bpe_destroy,
};

/* ---------------------------------------------------------------------------
 * Loading
 * ------------------------------------------------------------------------- */

static bpe *bpe_alloc(void) {
    bpe *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->base.ops = &bpe_ops;
    m->unk_id = -1;
    return m;
}

/* vocab: a JSON object token -> id. */
static int load_vocab(bpe *m, json_t *vocab, const char *path, engine_error *err) {
    if (!json_is_object(vocab))
        return engine_error_set(err, ENGINE_EFORMAT, "%s: the BPE vocabulary is not an object", path);
    if (hftok_strtab_init(&m->vocab, json_object_size(vocab)))
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    const char *key;
    size_t key_len;
    json_t *val;
    size_t n_ids = 0;
    json_object_keylen_foreach(vocab, key, key_len, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) >= (json_int_t)HFTOK_MAX_IDS)
            return engine_error_set(err, ENGINE_EFORMAT, "%s: vocab[\"%.100s\"] is not an id in [0, %u)", path, key,
                                    HFTOK_MAX_IDS);
        int32_t id = (int32_t)json_integer_value(val);
        if (hftok_strtab_put(&m->vocab, key, key_len, id, NULL))
            return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
        if ((size_t)id + 1 > n_ids)
            n_ids = (size_t)id + 1;
    }
    m->n_ids = n_ids;
    m->tok_off = malloc((n_ids ? n_ids : 1) * sizeof *m->tok_off);
    if (!m->tok_off)
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < n_ids; i++)
        m->tok_off[i] = UINT32_MAX;
    for (size_t i = 0; i <= m->vocab.mask; i++) {
        const struct hftok_slot *sl = &m->vocab.slots[i];
        if (sl->id >= 0 && (m->tok_off[sl->id] == UINT32_MAX || sl->off < m->tok_off[sl->id]))
            m->tok_off[sl->id] = sl->off;
    }
    return 0;
}

/* Registers merge `rank` (a, b); the merged token is a + b without b's
 * continuing_subword_prefix, as Rust builds it. */
static int add_merge(bpe *m, const char *a, size_t al, const char *b, size_t bl, uint32_t rank, const char *path,
                     const char *where, engine_error *err) {
    int32_t ia = hftok_strtab_get(&m->vocab, a, al), ib = hftok_strtab_get(&m->vocab, b, bl);
    if (ia < 0 || ib < 0)
        return engine_error_set(err, ENGINE_EFORMAT, "%s: %s: merge token \"%.100s\" is not in the vocabulary",
                                path, where, ia < 0 ? a : b);
    size_t pl = m->prefix_len;
    if (bl < pl || (bl > pl && ((uint8_t)b[pl] & 0xC0) == 0x80))
        return engine_error_set(err, ENGINE_EFORMAT, "%s: %s: merge token \"%.100s\" is shorter than the prefix",
                                path, where, b);
    char small[256];
    size_t nl = al + bl - pl;
    char *joined = nl <= sizeof small ? small : malloc(nl);
    if (!joined)
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    memcpy(joined, a, al);
    memcpy(joined + al, b + pl, bl - pl);
    int32_t id = hftok_strtab_get(&m->vocab, joined, nl);
    int rc = 0;
    if (id < 0)
        rc = engine_error_set(err, ENGINE_EFORMAT, "%s: %s: merged token \"%.*s\" is not in the vocabulary", path,
                              where, (int)(nl < 100 ? nl : 100), joined);
    else
        merge_put(m, ia, ib, rank, id);
    if (joined != small)
        free(joined);
    return rc;
}

static int alloc_merges(bpe *m, size_t n, const char *path, engine_error *err) {
    size_t cap = 16;
    while (cap < n * 2)
        cap *= 2;
    m->merges = malloc(cap * sizeof *m->merges);
    if (!m->merges)
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < cap; i++)
        m->merges[i].key = UINT64_MAX;
    m->merge_mask = cap - 1;
    return 0;
}

/* Tables that need the whole vocabulary and the options. */
static int finish(bpe *m, const char *path, const char *unk, size_t unk_len, engine_error *err) {
    if (unk) {
        m->unk_id = hftok_strtab_get(&m->vocab, unk, unk_len);
        if (m->unk_id < 0)
            return engine_error_set(err, ENGINE_EFORMAT, "%s: unk_token \"%.100s\" is not in the vocabulary", path,
                                    unk);
    }
    for (unsigned b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_ids[b] = hftok_strtab_get(&m->vocab, name, 6);
    }
    m->has_fast = m->prefix_len == 0 && m->suffix_len == 0;
    if (m->has_fast)
        for (uint32_t cp = 0; cp < BPE_FAST_CHARS; cp++) {
            uint8_t u[4];
            size_t ul = hftok_utf8_put(cp, u);
            m->fast[cp] = hftok_strtab_get(&m->vocab, (const char *)u, ul);
        }
    return 0;
}

/* An optional string option (null or absent: none). */
static int affix(json_t *v, char *dst, size_t *len, const char *path, const char *key, engine_error *err) {
    *len = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || json_string_length(v) > BPE_MAX_AFFIX)
        return engine_error_set(err, ENGINE_EFORMAT, "%s: model.%s must be null or a string of at most %d bytes",
                                path, key, BPE_MAX_AFFIX);
    *len = json_string_length(v);
    memcpy(dst, json_string_value(v), *len);
    return 0;
}

int bpe_model_from_json(json_t *model, const char *path, hftok_model **out, engine_error *err) {
    *out = NULL;
    bpe *m = bpe_alloc();
    if (!m)
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    int rc = 0;
    json_t *dropout = json_object_get(model, "dropout");
    json_t *unk = json_object_get(model, "unk_token");
    json_t *merges = json_object_get(model, "merges");
    if (dropout && !json_is_null(dropout) && !(json_is_number(dropout) && json_number_value(dropout) == 0)) {
        rc = engine_error_set(err, ENGINE_EUNSUPPORTED, "%s: BPE dropout is not supported (it makes ids random)",
                              path);
        goto done;
    }
    if (json_is_true(json_object_get(model, "ignore_merges"))) {
        rc = engine_error_set(err, ENGINE_EUNSUPPORTED, "%s: BPE ignore_merges is not supported", path);
        goto done;
    }
    if (unk && !json_is_null(unk) && !json_is_string(unk)) {
        rc = engine_error_set(err, ENGINE_EFORMAT, "%s: model.unk_token must be null or a string", path);
        goto done;
    }
    if ((rc = affix(json_object_get(model, "continuing_subword_prefix"), m->prefix, &m->prefix_len, path,
                    "continuing_subword_prefix", err)) ||
        (rc = affix(json_object_get(model, "end_of_word_suffix"), m->suffix, &m->suffix_len, path,
                    "end_of_word_suffix", err)))
        goto done;
    m->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
    m->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    if ((rc = load_vocab(m, json_object_get(model, "vocab"), path, err)))
        goto done;
    if (!json_is_array(merges)) {
        rc = engine_error_set(err, ENGINE_EFORMAT, "%s: model.merges is not an array", path);
        goto done;
    }
    size_t n = json_array_size(merges);
    if ((rc = alloc_merges(m, n, path, err)))
        goto done;
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *e = json_array_get(merges, i);
        char where[48];
        snprintf(where, sizeof where, "model.merges[%zu]", i);
        if (json_is_string(e)) {
            /* "a b": exactly one space, as Rust's split(' ') needs. */
            const char *s = json_string_value(e);
            size_t sl = json_string_length(e);
            const char *sp = memchr(s, ' ', sl);
            if (!sp || memchr(sp + 1, ' ', sl - (size_t)(sp + 1 - s)))
                rc = engine_error_set(err, ENGINE_EFORMAT, "%s: %s is not \"a b\"", path, where);
            else
                rc = add_merge(m, s, (size_t)(sp - s), sp + 1, sl - (size_t)(sp + 1 - s), (uint32_t)i, path, where,
                               err);
        } else if (json_array_size(e) == 2 && json_is_string(json_array_get(e, 0)) &&
                   json_is_string(json_array_get(e, 1))) {
            json_t *a = json_array_get(e, 0), *b = json_array_get(e, 1);
            rc = add_merge(m, json_string_value(a), json_string_length(a), json_string_value(b),
                           json_string_length(b), (uint32_t)i, path, where, err);
        } else {
            rc = engine_error_set(err, ENGINE_EFORMAT, "%s: %s is neither \"a b\" nor [a, b]", path, where);
        }
    }
    if (!rc)
        rc = finish(m, path, json_is_string(unk) ? json_string_value(unk) : NULL, json_string_length(unk), err);
done:
    if (rc) {
        bpe_destroy(&m->base);
        return rc;
    }
    *out = &m->base;
    return 0;
}

int bpe_model_from_files(const char *vocab_path, const char *merges_path, hftok_model **out,
                         engine_error *err) {
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    json_error_t jerr;
    json_t *vocab = json_load_file(vocab_path, JSON_ALLOW_NUL, &jerr);
    if (!vocab) {
        if (json_error_code(&jerr) == json_error_cannot_open_file)
            return engine_error_set(err, ENGINE_EIO, "%s: %s", vocab_path, jerr.text);
        return engine_error_set(err, ENGINE_EFORMAT, "%s:%d:%d: %s", vocab_path, jerr.line, jerr.column, jerr.text);
    }
    bpe *m = bpe_alloc();
    int rc = m ? load_vocab(m, vocab, vocab_path, err) : engine_error_set(err, ENGINE_ENOMEM, "out of memory");
    json_decref(vocab);
    if (!rc)
        rc = hftok_read_file(merges_path, &text, &len, err);
    size_t n_lines = 1;
    for (size_t i = 0; !rc && i < len; i++)
        n_lines += text[i] == '\n';
    if (!rc)
        rc = alloc_merges(m, n_lines, merges_path, err);
    uint32_t rank = 0;
    size_t line_no = 0;
    for (size_t i = 0; !rc && i < len;) {
        const char *line = text + i;
        const char *nl = memchr(line, '\n', len - i);
        size_t ll = nl ? (size_t)(nl - line) : len - i;
        i += ll + (nl ? 1 : 0);
        line_no++;
        if (ll && line[ll - 1] == '\r')
            ll--;
        if (ll >= 8 && memcmp(line, "#version", 8) == 0)
            continue;
        char where[32];
        snprintf(where, sizeof where, "line %zu", line_no);
        const char *sp = memchr(line, ' ', ll);
        if (!sp || memchr(sp + 1, ' ', ll - (size_t)(sp + 1 - line)) ||
            hftok_utf8_check((const uint8_t *)line, ll) < ll) {
            rc = engine_error_set(err, ENGINE_EFORMAT, "%s:%zu: not a merge \"a b\"", merges_path, line_no);
            break;
        }
        rc = add_merge(m, line, (size_t)(sp - line), sp + 1, ll - (size_t)(sp + 1 - line), rank++, merges_path,
                       where, err);
    }
    if (!rc)
        rc = finish(m, vocab_path, NULL, 0, err);
    free(text);
    if (rc) {
        bpe_destroy(m ? &m->base : NULL);
        return rc;
    }
    *out = &m->base;
    return 0;
}
