/*
 * semantic.c - the semantic cache's index (gateway_int.h): answers keyed by
 * the embedding of their prompt, found by cosine similarity.
 *
 * Design:
 *  - Vectors are stored unit length, so similarity is a dot product; a
 *    lookup scans every live entry (exact, no approximate index): at 10,000
 *    entries of 384 floats that is about 4 M multiply-adds, well under a
 *    millisecond, next to an upstream call of hundreds.
 *  - Entries sit in insertion order (a ring); past max_entries or
 *    max_bytes the oldest go first, and an entry past its ttl is skipped
 *    by lookups and dropped when the ring reaches it.
 *
 * Threads: any; one mutex per index (lookups and inserts are short).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "gateway_int.h"

typedef struct entry {
    uint64_t tag;    /* what else decides the answer (sampling fields, tools, ...), hashed */
    float *vec;
    size_t dim;
    char *body;
    size_t len;
    uint64_t at_us;
} entry;

struct gw_semindex {
    gw_semantic cfg;
    pthread_mutex_t lock;
    entry *ring;
    size_t head, n; /* oldest at head */
    size_t bytes;
};

#define ENTRY_OVERHEAD 64

static size_t charge(const entry *e) { return e->dim * sizeof(float) + e->len + ENTRY_OVERHEAD; }

gw_semindex *gw_semindex_new(const gw_semantic *cfg) {
    gw_semindex *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->cfg = *cfg;
    x->ring = calloc(cfg->max_entries ? cfg->max_entries : 1, sizeof *x->ring);
    if (!x->ring) {
        free(x);
        return NULL;
    }
    pthread_mutex_init(&x->lock, NULL);
    return x;
}

static void drop_oldest(gw_semindex *x) {
    entry *e = &x->ring[x->head];
    x->bytes -= charge(e);
    free(e->vec);
    free(e->body);
    memset(e, 0, sizeof *e);
    x->head = (x->head + 1) % x->cfg.max_entries;
    x->n--;
}

void gw_semindex_free(gw_semindex *x) {
    if (!x)
        return;
    while (x->n)
        drop_oldest(x);
    free(x->ring);
    pthread_mutex_destroy(&x->lock);
    free(x);
}

int gw_semindex_find(gw_semindex *x, uint64_t tag, const float *vec, size_t dim, uint64_t now_us, char **body,
                     size_t *len, double *similarity) {
    pthread_mutex_lock(&x->lock);
    while (x->n && now_us - x->ring[x->head].at_us > x->cfg.ttl_us) /* expired at the old end */
        drop_oldest(x);
    long best = -1;
    double best_sim = x->cfg.threshold;
    for (size_t k = 0; k < x->n; k++) {
        const entry *e = &x->ring[(x->head + k) % x->cfg.max_entries];
        if (e->dim != dim || e->tag != tag)
            continue;
        double dot = 0;
        for (size_t i = 0; i < dim; i++)
            dot += (double)e->vec[i] * vec[i];
        if (dot >= best_sim) {
            best_sim = dot;
            best = (long)((x->head + k) % x->cfg.max_entries);
        }
    }
    int found = 0;
    if (best >= 0 && (*body = malloc(x->ring[best].len + 1))) {
        memcpy(*body, x->ring[best].body, x->ring[best].len);
        (*body)[x->ring[best].len] = 0;
        *len = x->ring[best].len;
        *similarity = best_sim;
        found = 1;
    }
    pthread_mutex_unlock(&x->lock);
    return found;
}

void gw_semindex_add(gw_semindex *x, uint64_t tag, const float *vec, size_t dim, const char *body, size_t len,
                     uint64_t now_us) {
    entry e = {.tag = tag, .vec = malloc(dim * sizeof(float)), .dim = dim, .body = malloc(len + 1), .len = len,
               .at_us = now_us};
    if (!e.vec || !e.body || charge(&e) > x->cfg.max_bytes) {
        free(e.vec);
        free(e.body);
        return;
    }
    memcpy(e.vec, vec, dim * sizeof(float));
    memcpy(e.body, body, len);
    e.body[len] = 0;
    pthread_mutex_lock(&x->lock);
    while (x->n && (x->n == x->cfg.max_entries || x->bytes + charge(&e) > x->cfg.max_bytes))
        drop_oldest(x);
    x->ring[(x->head + x->n) % x->cfg.max_entries] = e;
    x->n++;
    x->bytes += charge(&e);
    pthread_mutex_unlock(&x->lock);
}

size_t gw_semindex_entries(gw_semindex *x) {
    pthread_mutex_lock(&x->lock);
    size_t n = x->n;
    pthread_mutex_unlock(&x->lock);
    return n;
}
