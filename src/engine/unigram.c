/*
 * unigram.c - the Unigram model (algorithm in unigram.h).
 *
 * Design:
 *  - Pieces are found with a byte trie built once at load: nodes laid out
 *    breadth-first so that each node's children are contiguous and sorted
 *    by byte, found by binary search. A node that ends a piece holds the id
 *    the string maps to (the last of duplicate pieces, as Rust's HashMap).
 *  - Viterbi keeps, per byte position, the best score of a path ending
 *    there, where that last piece starts and its id; arrays on the stack up
 *    to 256 bytes, on the heap beyond. Scores are doubles added in Rust's
 *    order, so equal paths tie the same way.
 *  - The model is immutable after loading; any thread may tokenize.
 */
#include "unigram.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

#define UNK_PENALTY 10.0

typedef struct tnode {
    uint32_t first;   /* index of the first child */
    uint16_t n_child; /* up to 256 */
    uint8_t label;    /* the byte leading here */
    int32_t id;       /* piece ending here, or -1 */
} tnode;

typedef struct unigram {
    hftok_model base;
    hftok_strtab vocab;
    uint32_t *tok_off; /* id -> pool offset */
    double *score;
    size_t n;
    tnode *trie;
    size_t n_nodes;
    double min_score;
    int32_t unk_id;
    bool byte_fallback;
    int32_t byte_ids[256];
} unigram;

static const tnode *child(const unigram *m, const tnode *nd, uint8_t b) {
    size_t lo = nd->first, hi = (size_t)nd->first + nd->n_child;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->trie[mid].label < b)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < (size_t)nd->first + nd->n_child && m->trie[lo].label == b ? &m->trie[lo] : NULL;
}

typedef struct best {
    double score;
    int32_t start; /* -1: not reached yet */
    int32_t id;
} best;

static void relax(best *b, double score, size_t start, int32_t id) {
    if (b->start < 0 || score > b->score) {
        b->score = score;
        b->start = (int32_t)start;
        b->id = id;
    }
}

/* The ids of one piece of the best path. */
static void emit_piece(const unigram *m, const uint8_t *w, size_t start, size_t end, int32_t id, bool fused,
                       hftok_ids *out) {
    if (!fused) {
        hftok_ids_push(out, id);
        return;
    }
    int32_t found = hftok_strtab_get(&m->vocab, (const char *)w + start, end - start);
    if (found >= 0) {
        hftok_ids_push(out, found);
        return;
    }
    if (m->byte_fallback) {
        bool all = true;
        for (size_t k = start; k < end && all; k++)
            all = m->byte_ids[w[k]] >= 0;
        if (all) {
            for (size_t k = start; k < end; k++)
                hftok_ids_push(out, m->byte_ids[w[k]]);
            return;
        }
    }
    hftok_ids_push(out, m->unk_id);
}

static int unigram_tokenize(const hftok_model *base, const uint8_t *w, size_t len, hftok_ids *out) {
    const unigram *m = (const unigram *)base;
    best st_best[257];
    int32_t st_ends[256];
    best *b = st_best;
    int32_t *ends = st_ends;
    if (len > 256) {
        b = malloc((len + 1) * sizeof *b);
        ends = malloc(len * sizeof *ends);
        if (!b || !ends) {
            free(b == st_best ? NULL : b);
            free(ends == st_ends ? NULL : ends);
            return ENGINE_ENOMEM;
        }
    }
    for (size_t i = 0; i <= len; i++)
        b[i] = (best){0.0, -1, -1};
    double unk_score = m->min_score - UNK_PENALTY;
    for (size_t at = 0; at < len;) {
        double here = b[at].score;
        size_t c = at;
        hftok_utf8_next(w, &c);
        bool single = false;
        const tnode *nd = &m->trie[0];
        for (size_t k = at; k < len && (nd = child(m, nd, w[k])); k++) {
            if (nd->id < 0)
                continue;
            relax(&b[k + 1], m->score[nd->id] + here, at, nd->id);
            if (k + 1 == c)
                single = true;
        }
        if (!single)
            relax(&b[c], unk_score + here, at, m->unk_id);
        at = c;
    }
    /* Walk back, then emit forwards, fusing runs of unknown pieces. */
    size_t n_ends = 0;
    for (size_t e = len; e > 0; e = (size_t)b[e].start)
        ends[n_ends++] = (int32_t)e;
    for (size_t k = n_ends; k > 0 && !hftok_ids_full(out); k--) {
        size_t e = (size_t)ends[k - 1];
        int32_t id = b[e].id;
        size_t s = (size_t)b[e].start;
        if (id == m->unk_id) {
            size_t run_end = e;
            while (k > 1 && b[ends[k - 2]].id == m->unk_id)
                run_end = (size_t)ends[--k - 1];
            emit_piece(m, w, s, run_end, id, true, out);
            continue;
        }
        emit_piece(m, w, s, e, id, false, out);
    }
    if (b != st_best) {
        free(b);
        free(ends);
    }
    return out->oom ? ENGINE_ENOMEM : 0;
}

/* ---------------------------------------------------------------------------
 * Model operations
 * ------------------------------------------------------------------------- */

static int32_t unigram_lookup(const hftok_model *base, const char *s, size_t len) {
    return hftok_strtab_get(&((const unigram *)base)->vocab, s, len);
}

static const char *unigram_token(const hftok_model *base, int32_t id) {
    const unigram *m = (const unigram *)base;
    return id >= 0 && (size_t)id < m->n ? m->vocab.pool + m->tok_off[id] : NULL;
}

static size_t unigram_n_entries(const hftok_model *base) {
    return ((const unigram *)base)->n;
}

static int32_t unigram_unk_id(const hftok_model *base) {
    return ((const unigram *)base)->unk_id;
}

static void unigram_destroy(hftok_model *base) {
    unigram *m = (unigram *)base;
    if (!m)
        return;
    hftok_strtab_fini(&m->vocab);
    free(m->tok_off);
    free(m->score);
    free(m->trie);
    free(m);
}

static const hftok_model_ops unigram_ops = {
    .kind = "Unigram",
    .tokenize = unigram_tokenize,
    .lookup = unigram_lookup,
    .token = unigram_token,
    .n_entries = unigram_n_entries,
    .n_ids = unigram_n_entries, /* ids are positions in the list */
    .unk_id = unigram_unk_id,
    .destroy = unigram_destroy,
};

/* ---------------------------------------------------------------------------
 * Loading
 * ------------------------------------------------------------------------- */

typedef struct piece_ref {
    const char *s;
    uint32_t len;
    int32_t id;
} piece_ref;

static int piece_cmp(const void *x, const void *y) {
    const piece_ref *a = x, *b = y;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->s, b->s, n);
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

/* Builds the trie from the distinct pieces: a first-child / next-sibling
 * tree by sorted insertion, then laid out breadth-first. */
static int build_trie(unigram *m) {
    size_t n = m->vocab.n;
    piece_ref *refs = malloc((n ? n : 1) * sizeof *refs);
    if (!refs)
        return ENGINE_ENOMEM;
    size_t k = 0, total = 1;
    for (size_t i = 0; i <= m->vocab.mask; i++) {
        const struct hftok_slot *sl = &m->vocab.slots[i];
        if (sl->id >= 0) {
            refs[k++] = (piece_ref){m->vocab.pool + sl->off, sl->len, sl->id};
            total += sl->len;
        }
    }
    qsort(refs, k, sizeof *refs, piece_cmp);
    /* Temporary tree: label, id, first child, next sibling. */
    typedef struct tmp {
        uint32_t first, next;
        int32_t id;
        uint8_t label;
    } tmp;
    tmp *t = malloc(total * sizeof *t);
    uint32_t *path = malloc((total + 1) * sizeof *path);
    uint32_t *last_child = malloc(total * sizeof *last_child);
    int rc = ENGINE_ENOMEM;
    if (!t || !path || !last_child)
        goto done;
    size_t nt = 1;
    t[0] = (tmp){UINT32_MAX, UINT32_MAX, -1, 0};
    last_child[0] = UINT32_MAX;
    const piece_ref *prev = NULL;
    for (size_t i = 0; i < k; i++) {
        const piece_ref *p = &refs[i];
        /* Share the prefix with the previous piece (its path is in `path`). */
        size_t common = 0;
        if (prev)
            while (common < prev->len && common < p->len && prev->s[common] == p->s[common])
                common++;
        path[0] = 0;
        for (size_t d = common; d < p->len; d++) {
            uint32_t parent = path[d];
            uint32_t node = (uint32_t)nt++;
            t[node] = (tmp){UINT32_MAX, UINT32_MAX, -1, (uint8_t)p->s[d]};
            last_child[node] = UINT32_MAX;
            if (last_child[parent] == UINT32_MAX)
                t[parent].first = node;
            else
                t[last_child[parent]].next = node;
            last_child[parent] = node;
            path[d + 1] = node;
        }
        t[path[p->len]].id = p->id;
        prev = p;
    }
    /* Breadth-first layout: children of each node contiguous. */
    m->trie = malloc(nt * sizeof *m->trie);
    uint32_t *queue = path; /* reused: old index of the node at each new index */
    if (!m->trie)
        goto done;
    size_t head = 0, tail = 1;
    queue[0] = 0;
    m->trie[0] = (tnode){0, 0, 0, t[0].id};
    while (head < tail) {
        uint32_t old = queue[head];
        tnode *nd = &m->trie[head++];
        nd->first = (uint32_t)tail;
        for (uint32_t c = t[old].first; c != UINT32_MAX; c = t[c].next) {
            m->trie[tail] = (tnode){0, 0, t[c].label, t[c].id};
            queue[tail++] = c;
            nd->n_child++;
        }
    }
    m->n_nodes = nt;
    rc = 0;
done:
    free(refs);
    free(t);
    free(path);
    free(last_child);
    return rc;
}

int unigram_model_from_json(json_t *model, const char *path, hftok_model **out, engine_error *err) {
    *out = NULL;
    unigram *m = calloc(1, sizeof *m);
    if (!m)
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
    m->base.ops = &unigram_ops;
    int rc = 0;
    json_t *vocab = json_object_get(model, "vocab"), *unk = json_object_get(model, "unk_id");
    size_t n = json_array_size(vocab);
    if (!json_is_array(vocab) || n == 0 || n >= HFTOK_MAX_IDS) {
        rc = engine_error_set(err, ENGINE_EFORMAT, "%s: model.vocab must be a list of 1 to %u [piece, score] pairs",
                              path, HFTOK_MAX_IDS - 1);
        goto done;
    }
    if (!json_is_integer(unk) || json_integer_value(unk) < 0 || (size_t)json_integer_value(unk) >= n) {
        rc = engine_error_set(err, json_is_null(unk) || !unk ? ENGINE_EUNSUPPORTED : ENGINE_EFORMAT,
                              "%s: model.unk_id must be an index into model.vocab (a Unigram model without one is "
                              "not supported)",
                              path);
        goto done;
    }
    m->unk_id = (int32_t)json_integer_value(unk);
    m->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    m->n = n;
    m->tok_off = malloc(n * sizeof *m->tok_off);
    m->score = malloc(n * sizeof *m->score);
    if (!m->tok_off || !m->score || hftok_strtab_init(&m->vocab, n)) {
        rc = engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    m->min_score = INFINITY;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(vocab, i);
        json_t *p = json_array_get(e, 0), *s = json_array_get(e, 1);
        if (json_array_size(e) != 2 || !json_is_string(p) || !json_is_number(s) ||
            !isfinite(json_number_value(s))) {
            rc = engine_error_set(err, ENGINE_EFORMAT, "%s: model.vocab[%zu] is not [piece, score]", path, i);
            goto done;
        }
        if (hftok_strtab_put(&m->vocab, json_string_value(p), json_string_length(p), (int32_t)i, &m->tok_off[i])) {
            rc = engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        m->score[i] = json_number_value(s);
        if (m->score[i] < m->min_score)
            m->min_score = m->score[i];
    }
    for (unsigned b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_ids[b] = hftok_strtab_get(&m->vocab, name, 6);
    }
    if (build_trie(m))
        rc = engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", path);
done:
    if (rc) {
        unigram_destroy(&m->base);
        return rc;
    }
    *out = &m->base;
    return 0;
}
