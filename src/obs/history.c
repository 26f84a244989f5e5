/*
 * history.c - the last minutes of chosen metrics, one sample a second, for
 * the operator console (obs.h has the contract).
 *
 * Layout: one ring of sample times shared by every tracked series, and per
 * series a ring of floats of the same length (1 per sample for counters
 * and gauges; 5 for histograms: count, mean, p50, p90, p99). A tick writes
 * one slot of each. Series are found by walking each family from the last
 * series seen (families only ever grow), so a tick costs the tracked series
 * and nothing more; a series that appears after the first tick started
 * from zero in the interval before it, so its first rate is not lost.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "obs.h"

enum { K_RATE, K_VALUE, K_HIST };
enum { H_COUNT, H_MEAN, H_P50, H_P90, H_P99, H_WIDTH };
static const char *const hist_keys[H_WIDTH] = {"count", "mean", "p50", "p90", "p99"};
static const double hist_q[H_WIDTH] = {0, 0, 0.5, 0.9, 0.99};

typedef struct tracked_family {
    char *name;
    metric_family *f;     /* NULL until registered */
    const metric *last;   /* the last series looked at */
    int kind;
    int n_bounds;
    const double *bounds;
    uint64_t *agg;        /* histogram: this tick's deltas summed over its series */
    double agg_sum;
    int agg_track;        /* the aggregate's track, -1 before the family is found */
} tracked_family;

typedef struct track {
    int family;            /* index in h->families */
    const metric *m;       /* NULL: the family's aggregate */
    double prev;           /* counter value, or histogram sum, at the previous tick */
    uint64_t *prev_buckets;
    int have_prev;
    float *v;              /* seconds x width */
} track;

struct obs_history {
    pthread_mutex_t lock;
    metrics_registry *r;
    tracked_family *families;
    int n_families;
    int seconds, max_series;
    int64_t *t;            /* sample times, ms; a ring */
    int head, n;           /* next slot to write; slots filled */
    int64_t last_ms;
    int ticks;
    track *tracks;
    int n_tracks;
    long dropped;
    uint64_t *scratch;     /* bucket counts of one series */
    int scratch_len;
};

static int width(int kind) { return kind == K_HIST ? H_WIDTH : 1; }

void obs_history_destroy(obs_history *h) {
    if (!h)
        return;
    for (int i = 0; i < h->n_families; i++) {
        free(h->families[i].name);
        free(h->families[i].agg);
    }
    for (int i = 0; i < h->n_tracks; i++) {
        free(h->tracks[i].prev_buckets);
        free(h->tracks[i].v);
    }
    free(h->families);
    free(h->tracks);
    free(h->t);
    free(h->scratch);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

obs_history *obs_history_create(metrics_registry *r, const char *const *families, int n_families,
                                int seconds, int max_series) {
    if (seconds < 1 || max_series < 1 || n_families < 0)
        return NULL;
    obs_history *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    pthread_mutex_init(&h->lock, NULL);
    h->r = r;
    h->seconds = seconds;
    h->max_series = max_series;
    h->t = calloc((size_t)seconds, sizeof *h->t);
    h->families = calloc((size_t)n_families + 1, sizeof *h->families);
    h->tracks = calloc((size_t)max_series, sizeof *h->tracks);
    if (!h->t || !h->families || !h->tracks) {
        obs_history_destroy(h);
        return NULL;
    }
    for (int i = 0; i < n_families; i++) {
        if (!(h->families[i].name = strdup(families[i]))) {
            obs_history_destroy(h);
            return NULL;
        }
        h->families[i].agg_track = -1;
        h->n_families++;
    }
    return h;
}

/* A new track for series m (NULL: the aggregate) of family fi, its ring all
 * NaN; prev is zero when the series is new since the last tick. -1 when
 * the cap is reached or out of memory. */
static int add_track(obs_history *h, int fi, const metric *m) {
    if (h->n_tracks == h->max_series) {
        h->dropped++;
        return -1;
    }
    tracked_family *tf = &h->families[fi];
    track *t = &h->tracks[h->n_tracks];
    memset(t, 0, sizeof *t);
    t->family = fi;
    t->m = m;
    size_t n = (size_t)h->seconds * (size_t)width(tf->kind);
    t->v = malloc(n * sizeof *t->v);
    if (tf->kind == K_HIST)
        t->prev_buckets = calloc((size_t)tf->n_bounds + 1, sizeof *t->prev_buckets);
    if (!t->v || (tf->kind == K_HIST && !t->prev_buckets)) {
        free(t->v);
        free(t->prev_buckets);
        h->dropped++;
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        t->v[i] = NAN;
    t->have_prev = h->ticks > 0; /* it was not there at the last tick: it was zero */
    return h->n_tracks++;
}

/* Looks the family up (once registered) and tracks the series it gained. */
static void discover(obs_history *h, int fi) {
    tracked_family *tf = &h->families[fi];
    if (!tf->f) {
        if (!(tf->f = metrics_find(h->r, tf->name)))
            return;
        const char *type = metric_family_type(tf->f);
        tf->kind = strcmp(type, "counter") == 0 ? K_RATE : strcmp(type, "gauge") == 0 ? K_VALUE : K_HIST;
        tf->n_bounds = metric_family_bounds(tf->f, &tf->bounds);
        if (tf->kind == K_HIST) {
            tf->agg = calloc((size_t)tf->n_bounds + 1, sizeof *tf->agg);
            if (tf->n_bounds + 1 > h->scratch_len) {
                uint64_t *s = realloc(h->scratch, ((size_t)tf->n_bounds + 1) * sizeof *s);
                if (s) {
                    h->scratch = s;
                    h->scratch_len = tf->n_bounds + 1;
                }
            }
            if (!tf->agg || h->scratch_len < tf->n_bounds + 1) {
                tf->f = NULL; /* tried again at the next tick */
                free(tf->agg);
                tf->agg = NULL;
                return;
            }
            const char *const *names;
            if (metric_family_labels(tf->f, &names) > 0) /* else its one series is the whole */
                tf->agg_track = add_track(h, fi, NULL);
        }
    }
    for (const metric *m = tf->last ? metric_next(tf->last) : metric_family_first(tf->f); m; m = metric_next(m)) {
        add_track(h, fi, m);
        tf->last = m;
    }
}

/* The q-quantile of the observations in counts (bucket i up to bounds[i],
 * the last one +Inf), linear within its bucket; NaN when there are none. */
static double quantile(double q, const uint64_t *counts, const double *bounds, int n_bounds, uint64_t total) {
    if (total == 0)
        return NAN;
    double rank = q * (double)total, below = 0;
    for (int i = 0; i <= n_bounds; i++) {
        if (counts[i] == 0 || below + (double)counts[i] < rank) {
            below += (double)counts[i];
            continue;
        }
        if (i == n_bounds) /* +Inf: the highest finite bound, as Prometheus answers */
            return n_bounds ? bounds[n_bounds - 1] : NAN;
        double lower = i == 0 ? (bounds[0] > 0 ? 0 : bounds[0]) : bounds[i - 1];
        return lower + (bounds[i] - lower) * (rank - below) / (double)counts[i];
    }
    return n_bounds ? bounds[n_bounds - 1] : NAN;
}

static void put_hist(float *out, const uint64_t *delta, double dsum, const tracked_family *tf) {
    uint64_t total = 0;
    for (int i = 0; i <= tf->n_bounds; i++)
        total += delta[i];
    out[H_COUNT] = (float)total;
    out[H_MEAN] = total ? (float)(dsum / (double)total) : NAN;
    for (int k = H_P50; k < H_WIDTH; k++)
        out[k] = (float)quantile(hist_q[k], delta, tf->bounds, tf->n_bounds, total);
}

void obs_history_tick(obs_history *h, int64_t now_ms) {
    if (!h)
        return;
    metrics_collect(h->r);
    pthread_mutex_lock(&h->lock);
    double dt = h->ticks ? (double)(now_ms - h->last_ms) / 1000.0 : 0;
    int slot = h->head;
    h->t[slot] = now_ms;
    h->head = (h->head + 1) % h->seconds;
    if (h->n < h->seconds)
        h->n++;
    for (int fi = 0; fi < h->n_families; fi++) {
        discover(h, fi);
        tracked_family *tf = &h->families[fi];
        if (!tf->f)
            continue;
        if (tf->agg) {
            memset(tf->agg, 0, ((size_t)tf->n_bounds + 1) * sizeof *tf->agg);
            tf->agg_sum = 0;
        }
        for (int ti = 0; ti < h->n_tracks; ti++) {
            track *t = &h->tracks[ti];
            if (t->family != fi || !t->m)
                continue;
            float *out = t->v + (size_t)slot * (size_t)width(tf->kind);
            if (tf->kind == K_VALUE) {
                out[0] = (float)metric_value(t->m);
            } else if (tf->kind == K_RATE) {
                double cur = metric_value(t->m);
                out[0] = t->have_prev && dt > 0 ? (float)((cur - t->prev) / dt) : NAN;
                t->prev = cur;
                t->have_prev = 1;
            } else {
                double sum = 0;
                metric_histogram_buckets(t->m, h->scratch, &sum);
                int valid = t->have_prev;
                for (int i = 0; i <= tf->n_bounds; i++) {
                    uint64_t d = h->scratch[i] - t->prev_buckets[i];
                    t->prev_buckets[i] = h->scratch[i];
                    h->scratch[i] = d;
                    if (valid)
                        tf->agg[i] += d;
                }
                double dsum = sum - t->prev;
                t->prev = sum;
                t->have_prev = 1;
                if (valid) {
                    tf->agg_sum += dsum;
                    put_hist(out, h->scratch, dsum, tf);
                } else {
                    for (int k = 0; k < H_WIDTH; k++)
                        out[k] = NAN;
                }
            }
        }
        if (tf->agg_track >= 0 && h->ticks > 0)
            put_hist(h->tracks[tf->agg_track].v + (size_t)slot * H_WIDTH, tf->agg, tf->agg_sum, tf);
    }
    h->last_ms = now_ms;
    h->ticks++;
    pthread_mutex_unlock(&h->lock);
}

/* Whether name is in the comma-separated list (NULL or "": everything). */
static int wanted(const char *only, const char *name) {
    if (!only || !*only)
        return 1;
    size_t n = strlen(name);
    for (const char *p = only; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, name, n) == 0)
            return 1;
        p += len + (p[len] == ',');
    }
    return 0;
}

static json_t *number(float v) { return isnan(v) ? json_null() : json_real(v); }

char *obs_history_json(obs_history *h, int64_t since_ms, const char *only, size_t *len) {
    if (len)
        *len = 0;
    if (!h)
        return NULL;
    pthread_mutex_lock(&h->lock);
    /* The kept slots oldest first, from the first one after since_ms. */
    int first = (h->head - h->n + h->seconds) % h->seconds, skip = 0;
    while (skip < h->n && h->t[(first + skip) % h->seconds] <= since_ms)
        skip++;
    int count = h->n - skip;
    first = (first + skip) % h->seconds;
    json_t *t = json_array(), *series = json_array();
    for (int i = 0; i < count; i++)
        json_array_append_new(t, json_integer(h->t[(first + i) % h->seconds]));
    for (int ti = 0; ti < h->n_tracks; ti++) {
        const track *tr = &h->tracks[ti];
        const tracked_family *tf = &h->families[tr->family];
        if (!wanted(only, tf->name))
            continue;
        int w = width(tf->kind), any = 0;
        for (int i = 0; i < count * w && !any; i++) {
            float v = tr->v[(size_t)((first + i / w) % h->seconds) * (size_t)w + (size_t)(i % w)];
            any = !isnan(v) && v != 0;
        }
        if (!any && tf->kind != K_VALUE) /* no events at all: left out (a reader takes it as 0) */
            continue;
        json_t *labels = json_null();
        if (tr->m) {
            const char *const *names;
            int n_labels = metric_family_labels(tf->f, &names);
            const char *const *values = metric_label_values(tr->m);
            labels = json_object();
            for (int i = 0; i < n_labels; i++)
                json_object_set_new(labels, names[i], json_string(values[i]));
        }
        json_t *s = json_pack("{s:s, s:s, s:o}", "name", tf->name, "type", metric_family_type(tf->f), "labels",
                              labels);
        for (int k = 0; k < w; k++) {
            json_t *values = json_array();
            for (int i = 0; i < count; i++)
                json_array_append_new(values, number(tr->v[(size_t)((first + i) % h->seconds) * (size_t)w + (size_t)k]));
            json_object_set_new(s, tf->kind == K_HIST ? hist_keys[k] : tf->kind == K_RATE ? "rate" : "value",
                                values);
        }
        json_array_append_new(series, s);
    }
    json_t *doc = json_pack("{s:i, s:i, s:o, s:o, s:I}", "interval_ms", 1000, "seconds", h->seconds, "t", t,
                            "series", series, "dropped_series", (json_int_t)h->dropped);
    pthread_mutex_unlock(&h->lock);
    char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(5)) : NULL;
    json_decref(doc);
    if (text && len)
        *len = strlen(text);
    return text;
}
