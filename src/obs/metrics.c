/*
 * metrics.c - the Prometheus registry and its text exposition (see obs.h).
 *
 * Design:
 *  - Families and series live on append-only singly linked lists whose
 *    `next` pointers are published with release stores after the node is
 *    fully built; the renderer walks them with acquire loads and no lock.
 *    Nothing is unlinked before metrics_registry_destroy.
 *  - Registration takes the registry mutex (name checks, list append).
 *    Series lookup takes the family mutex (hash table of label values).
 *    Updates take no lock at all: a series' value is an _Atomic uint64_t
 *    holding a double's bits (add = CAS loop); a histogram keeps one atomic
 *    counter per bucket (not cumulative) and its sum as double bits.
 *  - Render reads each bucket once and accumulates, then writes _count as
 *    that running total, so _count always equals the +Inf bucket even while
 *    observations land; _sum may be a moment ahead or behind.
 *  - Each series is aligned to a cache line so that two hot series never
 *    share one; its label set is escaped once, at creation.
 * Threading: any thread may call anything except destroy; renders are
 * serialised by their own mutex so collectors never run concurrently.
 */
#include "obs.h"
#include "obs_int.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double metrics_latency_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
                                          0.5,   0.75, 1.0,   2.5,  5.0,   7.5, 10.0};
const int metrics_n_latency_buckets = (int)(sizeof metrics_latency_buckets / sizeof metrics_latency_buckets[0]);

enum { TYPE_COUNTER, TYPE_GAUGE, TYPE_HISTOGRAM };
static const char *const type_names[] = {"counter", "gauge", "histogram"};
static const char *const histogram_suffixes[] = {"_bucket", "_sum", "_count"};

struct metric {
    /* Counter/gauge value, or histogram sum, as the bits of a double. */
    _Alignas(64) _Atomic uint64_t value;
    metric_family *family;
    _Atomic(metric *) next; /* creation order; published with release */
    metric *hnext;          /* hash chain; under the family mutex */
    uint64_t hash;
    char **values;          /* n_labels scrubbed copies */
    char *labels_text;      /* `a="x",b="y"` escaped, "" without labels */
    _Atomic uint64_t buckets[]; /* histogram: n_bounds + 1 (last is +Inf), not cumulative */
};

struct metric_family {
    _Atomic(metric_family *) next; /* registration order */
    metrics_registry *registry;
    int type;
    char *name;
    char *help_text; /* escaped */
    int n_labels;
    char **label_names;
    double *bounds;
    int n_bounds;
    char **le_text; /* n_bounds + 1 formatted le values, the last "+Inf" */
    metric *only;   /* the one series of a family without labels */

    pthread_mutex_t lock; /* guards everything below */
    metric **table;
    size_t table_size, n_series;
    _Atomic(metric *) first;
    metric *last;
    int limit_logged;
};

typedef struct collector {
    _Atomic(struct collector *) next;
    void (*fn)(void *ud);
    void *ud;
    void (*ud_free)(void *ud);
} collector;

struct metrics_registry {
    pthread_mutex_t lock;        /* registration and the collector list */
    pthread_mutex_t render_lock; /* one render at a time */
    _Atomic(metric_family *) first;
    metric_family *last;
    _Atomic(collector *) collectors;
    collector *last_collector;
};

/* ---- doubles in atomics ---- */

static inline uint64_t d2b(double d) {
    uint64_t b;
    memcpy(&b, &d, sizeof b);
    return b;
}

static inline double b2d(uint64_t b) {
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

static inline void atomic_add_double(_Atomic uint64_t *a, double v) {
    uint64_t old = atomic_load_explicit(a, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(a, &old, d2b(b2d(old) + v), memory_order_relaxed,
                                                  memory_order_relaxed)) {
    }
}

/* ---- text buffer ---- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* Appends s with the exposition escapes: always \\ and \n, and \" when
 * `quote` (label values; HELP text leaves quotes alone). */
static void sb_put_escaped(sbuf *b, const char *s, int quote) {
    const char *run = s;
    for (; *s; s++) {
        const char *esc = NULL;
        if (*s == '\\')
            esc = "\\\\";
        else if (*s == '\n')
            esc = "\\n";
        else if (*s == '"' && quote)
            esc = "\\\"";
        if (esc) {
            sb_put(b, run, (size_t)(s - run));
            sb_put(b, esc, 2);
            run = s + 1;
        }
    }
    sb_put(b, run, (size_t)(s - run));
}

/* strdup of s with invalid UTF-8 replaced by U+FFFD; NULL on ENOMEM. */
static char *dup_scrubbed(const char *s) {
    size_t n = strlen(s);
    if (log_utf8_valid_prefix(s, n) == n)
        return strdup(s);
    char *out = malloc(3 * n + 1);
    if (!out)
        return NULL;
    out[log_utf8_scrub(s, n, out)] = '\0';
    return out;
}

/* ---- number formatting ---- */

size_t metrics_format_value(double v, char *buf, size_t cap) {
    char tmp[40];
    if (isnan(v)) {
        strcpy(tmp, "NaN");
    } else if (isinf(v)) {
        strcpy(tmp, v > 0 ? "+Inf" : "-Inf");
    } else if (v == floor(v) && fabs(v) < 9.2e18) {
        snprintf(tmp, sizeof tmp, "%.0f", v); /* exact: an integer below 2^63 */
    } else {
        /* %g strips trailing zeros, so the first precision that round-trips
         * gives the shortest form (15 digits always suffice when any shorter
         * form does). */
        for (int p = 15; p <= 17; p++) {
            snprintf(tmp, sizeof tmp, "%.*g", p, v);
            if (strtod(tmp, NULL) == v)
                break;
        }
    }
    if (cap == 0)
        return 0;
    size_t n = strlen(tmp);
    if (n >= cap)
        n = cap - 1;
    memcpy(buf, tmp, n);
    buf[n] = '\0';
    return n;
}

/* An le value as prometheus_client's floatToGoString writes it: "0.005",
 * "1.0", "10.0", "1e+06", "+Inf". Dashboards and alert rules written for the
 * Python service select buckets by these strings. */
static void format_le(double v, char *buf, size_t cap) {
    if (isinf(v)) {
        snprintf(buf, cap, "%s", v > 0 ? "+Inf" : "-Inf");
    } else if (v >= 1e6 && v < 1e16) {
        char tmp[40];
        for (int p = 0; p <= 17; p++) {
            snprintf(tmp, sizeof tmp, "%.*e", p, v);
            if (strtod(tmp, NULL) == v)
                break;
        }
        snprintf(buf, cap, "%s", tmp);
    } else if (v == floor(v) && fabs(v) < 1e16) {
        snprintf(buf, cap, "%.0f.0", v);
    } else {
        metrics_format_value(v, buf, cap);
    }
}

/* ---- buckets ---- */

int metrics_exponential_buckets(double start, double factor, int n, double *out) {
    if (!out || n < 1 || !(start > 0) || !(factor > 1) || !isfinite(start) || !isfinite(factor))
        return -1;
    double b = start;
    for (int i = 0; i < n; i++, b *= factor)
        out[i] = b;
    return 0;
}

int metrics_linear_buckets(double start, double width, int n, double *out) {
    if (!out || n < 1 || !(width > 0) || !isfinite(start) || !isfinite(width))
        return -1;
    for (int i = 0; i < n; i++)
        out[i] = start + width * i;
    return 0;
}

/* ---- names ---- */

static int valid_metric_name(const char *s) {
    if (!s || !*s)
        return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(p != s && c >= '0' && c <= '9'))
            return 0;
    }
    return 1;
}

static int valid_label_name(const char *s) {
    if (!s || !*s || (s[0] == '_' && s[1] == '_'))
        return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!alpha && !(p != s && c >= '0' && c <= '9'))
            return 0;
    }
    return 1;
}

/* Does family f render a line or a TYPE named `s`? */
static int family_owns_name(const metric_family *f, const char *s) {
    size_t n = strlen(f->name);
    if (strncmp(s, f->name, n) != 0)
        return 0;
    if (s[n] == '\0')
        return 1;
    if (f->type != TYPE_HISTOGRAM)
        return 0;
    for (size_t i = 0; i < sizeof histogram_suffixes / sizeof histogram_suffixes[0]; i++)
        if (strcmp(s + n, histogram_suffixes[i]) == 0)
            return 1;
    return 0;
}

/* Does the new family `name` of `type` collide with a registered one?
 * Caller holds r->lock. */
static int name_taken(metrics_registry *r, const char *name, int type) {
    char buf[512];
    for (metric_family *f = atomic_load_explicit(&r->first, memory_order_relaxed); f;
         f = atomic_load_explicit(&f->next, memory_order_relaxed)) {
        if (family_owns_name(f, name))
            return 1;
        if (type != TYPE_HISTOGRAM)
            continue;
        for (size_t i = 0; i < sizeof histogram_suffixes / sizeof histogram_suffixes[0]; i++) {
            snprintf(buf, sizeof buf, "%s%s", name, histogram_suffixes[i]);
            if (family_owns_name(f, buf))
                return 1;
        }
    }
    return 0;
}

/* ---- series ---- */

static uint64_t hash_values(char *const *values, int n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (int i = 0; i < n; i++) {
        for (const unsigned char *p = (const unsigned char *)values[i]; *p; p++)
            h = (h ^ *p) * 1099511628211ULL;
        h = (h ^ 0xff) * 1099511628211ULL; /* separator: 0xff never occurs in UTF-8 */
    }
    return h;
}

static void series_free(metric *m, int n_labels) {
    if (!m)
        return;
    if (m->values)
        for (int i = 0; i < n_labels; i++)
            free(m->values[i]);
    free(m->values);
    free(m->labels_text);
    free(m);
}

/* Builds a series for label values that are already scrubbed (copied). */
static metric *series_new(metric_family *f, char *const *values, uint64_t hash) {
    size_t n_buckets = f->type == TYPE_HISTOGRAM ? (size_t)f->n_bounds + 1 : 0;
    sbuf text = {0};
    void *mem = NULL;
    if (posix_memalign(&mem, 64, sizeof(metric) + n_buckets * sizeof(_Atomic uint64_t)) != 0)
        return NULL;
    metric *m = mem;
    memset(m, 0, sizeof *m);
    atomic_init(&m->value, d2b(0.0));
    for (size_t i = 0; i < n_buckets; i++)
        atomic_init(&m->buckets[i], 0);
    atomic_init(&m->next, NULL);
    m->family = f;
    m->hash = hash;
    m->values = calloc((size_t)f->n_labels + 1, sizeof *m->values);
    if (!m->values)
        goto fail;
    for (int i = 0; i < f->n_labels; i++) {
        m->values[i] = strdup(values[i]);
        if (!m->values[i])
            goto fail;
        if (i)
            sb_puts(&text, ",");
        sb_puts(&text, f->label_names[i]);
        sb_puts(&text, "=\"");
        sb_put_escaped(&text, values[i], 1);
        sb_puts(&text, "\"");
    }
    sb_put(&text, "", 0);
    if (text.oom || !text.p)
        goto fail;
    m->labels_text = text.p;
    return m;
fail:
    free(text.p);
    series_free(m, f->n_labels);
    return NULL;
}

/* Appends m to the family's creation-order list. Caller holds f->lock. */
static void series_publish(metric_family *f, metric *m) {
    if (f->last)
        atomic_store_explicit(&f->last->next, m, memory_order_release);
    else
        atomic_store_explicit(&f->first, m, memory_order_release);
    f->last = m;
}

static int table_grow(metric_family *f) {
    size_t size = f->table_size ? f->table_size * 2 : 16;
    metric **table = calloc(size, sizeof *table);
    if (!table)
        return -1;
    for (size_t i = 0; i < f->table_size; i++) {
        metric *m = f->table[i];
        while (m) {
            metric *next = m->hnext;
            m->hnext = table[m->hash & (size - 1)];
            table[m->hash & (size - 1)] = m;
            m = next;
        }
    }
    free(f->table);
    f->table = table;
    f->table_size = size;
    return 0;
}

metric *metric_series(metric_family *f, const char *const *label_values) {
    if (!f)
        return NULL;
    if (f->n_labels == 0)
        return f->only;
    if (!label_values)
        return NULL;

    /* Values as they will be stored: usually the caller's own strings;
     * scrubbed copies only when one is not valid UTF-8. */
    char *values[METRICS_MAX_LABELS];
    char *scrubbed[METRICS_MAX_LABELS] = {0};
    metric *found = NULL;
    int limit_hit = 0;
    for (int i = 0; i < f->n_labels; i++) {
        const char *v = label_values[i];
        if (!v)
            goto out;
        size_t n = strlen(v);
        if (log_utf8_valid_prefix(v, n) == n) {
            values[i] = (char *)v;
        } else {
            if (!(scrubbed[i] = dup_scrubbed(v)))
                goto out;
            values[i] = scrubbed[i];
        }
    }
    uint64_t hash = hash_values(values, f->n_labels);

    pthread_mutex_lock(&f->lock);
    if (f->table_size) {
        for (metric *m = f->table[hash & (f->table_size - 1)]; m; m = m->hnext) {
            if (m->hash != hash)
                continue;
            int same = 1;
            for (int i = 0; i < f->n_labels && same; i++)
                same = strcmp(m->values[i], values[i]) == 0;
            if (same) {
                found = m;
                break;
            }
        }
    }
    if (!found) {
        if (f->n_series >= METRICS_MAX_SERIES) {
            limit_hit = !f->limit_logged;
            f->limit_logged = 1;
        } else if (f->n_series < f->table_size || table_grow(f) == 0) {
            metric *m = series_new(f, values, hash);
            if (m) {
                size_t slot = hash & (f->table_size - 1);
                m->hnext = f->table[slot];
                f->table[slot] = m;
                f->n_series++;
                series_publish(f, m);
                found = m;
            }
        }
    }
    pthread_mutex_unlock(&f->lock);
    if (limit_hit)
        log_event(LOG_WARN, "metric_series_limit", "metric", json_string(f->name), "limit",
                  json_integer(METRICS_MAX_SERIES), NULL);
out:
    for (int i = 0; i < f->n_labels; i++)
        free(scrubbed[i]);
    return found;
}

metric *metric_get(metric_family *f, ...) {
    if (!f)
        return NULL;
    const char *values[METRICS_MAX_LABELS + 1];
    va_list ap;
    va_start(ap, f);
    int n = 0;
    for (; n <= f->n_labels; n++) {
        values[n] = va_arg(ap, const char *);
        if (!values[n])
            break;
    }
    va_end(ap);
    if (n != f->n_labels)
        return NULL;
    return metric_series(f, values);
}

/* ---- updates ---- */

void metric_inc(metric *m) { metric_add(m, 1.0); }

void metric_dec(metric *m) {
    if (m && m->family->type == TYPE_GAUGE)
        atomic_add_double(&m->value, -1.0);
}

void metric_add(metric *m, double v) {
    if (!m)
        return;
    if (m->family->type == TYPE_GAUGE || (m->family->type == TYPE_COUNTER && v >= 0))
        atomic_add_double(&m->value, v);
}

void metric_set(metric *m, double v) {
    if (m && m->family->type != TYPE_HISTOGRAM)
        atomic_store_explicit(&m->value, d2b(v), memory_order_relaxed);
}

void metric_observe(metric *m, double v) {
    if (!m || m->family->type != TYPE_HISTOGRAM || isnan(v))
        return;
    const metric_family *f = m->family;
    int lo = 0, hi = f->n_bounds; /* first bound >= v; n_bounds is +Inf */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (v <= f->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&m->buckets[lo], 1, memory_order_relaxed);
    atomic_add_double(&m->value, v);
}

double metric_value(const metric *m) {
    if (!m)
        return 0;
    if (m->family->type == TYPE_HISTOGRAM) {
        uint64_t count;
        metric_histogram_read(m, &count, NULL);
        return (double)count;
    }
    return b2d(atomic_load_explicit(&m->value, memory_order_relaxed));
}

void metric_histogram_read(const metric *m, uint64_t *count, double *sum) {
    uint64_t c = 0;
    double s = 0;
    if (m && m->family->type == TYPE_HISTOGRAM) {
        for (int i = 0; i <= m->family->n_bounds; i++)
            c += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
        s = b2d(atomic_load_explicit(&m->value, memory_order_relaxed));
    }
    if (count)
        *count = c;
    if (sum)
        *sum = s;
}

/* ---- reading (history.c) ---- */

metric_family *metrics_find(metrics_registry *r, const char *name) {
    for (metric_family *f = r ? atomic_load_explicit(&r->first, memory_order_acquire) : NULL; f;
         f = atomic_load_explicit(&f->next, memory_order_acquire))
        if (strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

const char *metric_family_type(const metric_family *f) { return type_names[f->type]; }

int metric_family_labels(const metric_family *f, const char *const **names) {
    *names = (const char *const *)f->label_names;
    return f->n_labels;
}

int metric_family_bounds(const metric_family *f, const double **bounds) {
    *bounds = f->bounds;
    return f->type == TYPE_HISTOGRAM ? f->n_bounds : 0;
}

const metric *metric_family_first(const metric_family *f) {
    return atomic_load_explicit(&f->first, memory_order_acquire);
}

const metric *metric_next(const metric *m) { return atomic_load_explicit(&m->next, memory_order_acquire); }

const char *const *metric_label_values(const metric *m) { return (const char *const *)m->values; }

void metric_histogram_buckets(const metric *m, uint64_t *counts, double *sum) {
    if (m->family->type != TYPE_HISTOGRAM)
        return;
    for (int i = 0; i <= m->family->n_bounds; i++)
        counts[i] = atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
    if (sum)
        *sum = b2d(atomic_load_explicit(&m->value, memory_order_relaxed));
}

/* ---- registry ---- */

metrics_registry *metrics_registry_create(void) {
    metrics_registry *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    pthread_mutex_init(&r->lock, NULL);
    pthread_mutex_init(&r->render_lock, NULL);
    atomic_init(&r->first, NULL);
    atomic_init(&r->collectors, NULL);
    return r;
}

static void family_free(metric_family *f) {
    if (!f)
        return;
    for (metric *m = atomic_load_explicit(&f->first, memory_order_relaxed); m;) {
        metric *next = atomic_load_explicit(&m->next, memory_order_relaxed);
        series_free(m, f->n_labels);
        m = next;
    }
    if (f->label_names)
        for (int i = 0; i < f->n_labels; i++)
            free(f->label_names[i]);
    if (f->le_text)
        for (int i = 0; i <= f->n_bounds; i++)
            free(f->le_text[i]);
    free(f->label_names);
    free(f->le_text);
    free(f->bounds);
    free(f->table);
    free(f->name);
    free(f->help_text);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

void metrics_registry_destroy(metrics_registry *r) {
    if (!r)
        return;
    for (collector *c = atomic_load_explicit(&r->collectors, memory_order_relaxed); c;) {
        collector *next = atomic_load_explicit(&c->next, memory_order_relaxed);
        if (c->ud_free)
            c->ud_free(c->ud);
        free(c);
        c = next;
    }
    for (metric_family *f = atomic_load_explicit(&r->first, memory_order_relaxed); f;) {
        metric_family *next = atomic_load_explicit(&f->next, memory_order_relaxed);
        family_free(f);
        f = next;
    }
    pthread_mutex_destroy(&r->lock);
    pthread_mutex_destroy(&r->render_lock);
    free(r);
}

/* Builds and publishes a family; NULL on invalid arguments, a taken name or
 * ENOMEM. */
static metric_family *family_register(metrics_registry *r, int type, const char *name, const char *help,
                                      int n_labels, const char *const *label_names,
                                      const double *bounds, int n_bounds) {
    if (!r || !valid_metric_name(name) || strlen(name) > 400 || n_labels < 0 ||
        n_labels > METRICS_MAX_LABELS || (n_labels > 0 && !label_names))
        return NULL;
    for (int i = 0; i < n_labels; i++) {
        if (!valid_label_name(label_names[i]))
            return NULL;
        if (type == TYPE_HISTOGRAM && strcmp(label_names[i], "le") == 0)
            return NULL;
        for (int j = 0; j < i; j++)
            if (strcmp(label_names[i], label_names[j]) == 0)
                return NULL;
    }
    if (type == TYPE_HISTOGRAM) {
        if (!bounds) {
            bounds = metrics_latency_buckets;
            n_bounds = metrics_n_latency_buckets;
        }
        if (n_bounds < 0)
            return NULL;
        if (n_bounds > 0 && isinf(bounds[n_bounds - 1]) && bounds[n_bounds - 1] > 0)
            n_bounds--; /* +Inf is implicit */
        for (int i = 0; i < n_bounds; i++)
            if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
                return NULL;
    } else {
        n_bounds = 0;
    }

    metric_family *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    pthread_mutex_init(&f->lock, NULL);
    atomic_init(&f->next, NULL);
    atomic_init(&f->first, NULL);
    f->registry = r;
    f->type = type;
    f->n_labels = n_labels;
    f->n_bounds = n_bounds;
    f->name = strdup(name);
    f->label_names = calloc((size_t)n_labels + 1, sizeof *f->label_names);
    if (!f->name || !f->label_names)
        goto fail;
    for (int i = 0; i < n_labels; i++)
        if (!(f->label_names[i] = strdup(label_names[i])))
            goto fail;
    {
        char *h = dup_scrubbed(help ? help : "");
        sbuf text = {0};
        if (h)
            sb_put_escaped(&text, h, 0);
        sb_put(&text, "", 0);
        free(h);
        if (!h || text.oom) {
            free(text.p);
            goto fail;
        }
        f->help_text = text.p;
    }
    if (type == TYPE_HISTOGRAM) {
        f->bounds = malloc(((size_t)n_bounds + 1) * sizeof *f->bounds);
        f->le_text = calloc((size_t)n_bounds + 1, sizeof *f->le_text);
        if (!f->bounds || !f->le_text)
            goto fail;
        for (int i = 0; i <= n_bounds; i++) {
            char le[48];
            f->bounds[i] = i < n_bounds ? bounds[i] : INFINITY;
            format_le(f->bounds[i], le, sizeof le);
            if (!(f->le_text[i] = strdup(le)))
                goto fail;
        }
    }
    if (n_labels == 0) {
        f->only = series_new(f, NULL, 0);
        if (!f->only)
            goto fail;
        series_publish(f, f->only);
        f->n_series = 1;
    }

    pthread_mutex_lock(&r->lock);
    if (name_taken(r, name, type)) {
        pthread_mutex_unlock(&r->lock);
        goto fail;
    }
    if (r->last)
        atomic_store_explicit(&r->last->next, f, memory_order_release);
    else
        atomic_store_explicit(&r->first, f, memory_order_release);
    r->last = f;
    pthread_mutex_unlock(&r->lock);
    return f;
fail:
    family_free(f);
    return NULL;
}

metric_family *metrics_counter(metrics_registry *r, const char *name, const char *help, int n_labels,
                               const char *const *label_names) {
    return family_register(r, TYPE_COUNTER, name, help, n_labels, label_names, NULL, 0);
}

metric_family *metrics_gauge(metrics_registry *r, const char *name, const char *help, int n_labels,
                             const char *const *label_names) {
    return family_register(r, TYPE_GAUGE, name, help, n_labels, label_names, NULL, 0);
}

metric_family *metrics_histogram(metrics_registry *r, const char *name, const char *help,
                                 int n_labels, const char *const *label_names,
                                 const double *upper_bounds, int n_bounds) {
    return family_register(r, TYPE_HISTOGRAM, name, help, n_labels, label_names, upper_bounds,
                           n_bounds);
}

int metrics_on_collect_owned(metrics_registry *r, void (*fn)(void *ud), void *ud,
                             void (*ud_free)(void *ud)) {
    if (!r || !fn)
        return -1;
    collector *c = calloc(1, sizeof *c);
    if (!c)
        return -1;
    atomic_init(&c->next, NULL);
    c->fn = fn;
    c->ud = ud;
    c->ud_free = ud_free;
    pthread_mutex_lock(&r->lock);
    if (r->last_collector)
        atomic_store_explicit(&r->last_collector->next, c, memory_order_release);
    else
        atomic_store_explicit(&r->collectors, c, memory_order_release);
    r->last_collector = c;
    pthread_mutex_unlock(&r->lock);
    return 0;
}

int metrics_on_collect(metrics_registry *r, void (*fn)(void *ud), void *ud) {
    return metrics_on_collect_owned(r, fn, ud, NULL);
}

/* ---- exposition ---- */

/* name{labels,extra} or name{labels} or name{extra} or name. */
static void put_series_name(sbuf *b, const char *name, const char *suffix, const metric *m,
                            const char *le) {
    sb_puts(b, name);
    sb_puts(b, suffix);
    int has_labels = m->labels_text[0] != '\0';
    if (!has_labels && !le)
        return;
    sb_puts(b, "{");
    sb_puts(b, m->labels_text);
    if (le) {
        sb_puts(b, has_labels ? ",le=\"" : "le=\"");
        sb_puts(b, le);
        sb_puts(b, "\"");
    }
    sb_puts(b, "}");
}

static void put_value_line(sbuf *b, double v) {
    char num[40];
    sb_puts(b, " ");
    sb_put(b, num, metrics_format_value(v, num, sizeof num));
    sb_puts(b, "\n");
}

static void put_count_line(sbuf *b, uint64_t v) {
    char num[32];
    int n = snprintf(num, sizeof num, " %llu\n", (unsigned long long)v);
    sb_put(b, num, (size_t)n);
}

static void render_family(sbuf *b, const metric_family *f) {
    sb_puts(b, "# HELP ");
    sb_puts(b, f->name);
    sb_puts(b, " ");
    sb_puts(b, f->help_text);
    sb_puts(b, "\n# TYPE ");
    sb_puts(b, f->name);
    sb_puts(b, " ");
    sb_puts(b, type_names[f->type]);
    sb_puts(b, "\n");
    for (const metric *m = atomic_load_explicit(&f->first, memory_order_acquire); m;
         m = atomic_load_explicit(&m->next, memory_order_acquire)) {
        if (f->type != TYPE_HISTOGRAM) {
            put_series_name(b, f->name, "", m, NULL);
            put_value_line(b, b2d(atomic_load_explicit(&m->value, memory_order_relaxed)));
            continue;
        }
        uint64_t cumulative = 0;
        for (int i = 0; i <= f->n_bounds; i++) {
            cumulative += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
            put_series_name(b, f->name, "_bucket", m, f->le_text[i]);
            put_count_line(b, cumulative);
        }
        put_series_name(b, f->name, "_sum", m, NULL);
        put_value_line(b, b2d(atomic_load_explicit(&m->value, memory_order_relaxed)));
        put_series_name(b, f->name, "_count", m, NULL);
        put_count_line(b, cumulative);
    }
}

static void run_collectors(metrics_registry *r) {
    for (collector *c = atomic_load_explicit(&r->collectors, memory_order_acquire); c;
         c = atomic_load_explicit(&c->next, memory_order_acquire))
        c->fn(c->ud);
}

void metrics_collect(metrics_registry *r) {
    if (!r)
        return;
    pthread_mutex_lock(&r->render_lock);
    run_collectors(r);
    pthread_mutex_unlock(&r->render_lock);
}

char *metrics_render(metrics_registry *r, size_t *len) {
    if (len)
        *len = 0;
    if (!r)
        return NULL;
    pthread_mutex_lock(&r->render_lock);
    run_collectors(r);
    sbuf b = {0};
    sb_put(&b, "", 0); /* an empty registry is "", not NULL */
    for (metric_family *f = atomic_load_explicit(&r->first, memory_order_acquire); f;
         f = atomic_load_explicit(&f->next, memory_order_acquire))
        render_family(&b, f);
    pthread_mutex_unlock(&r->render_lock);
    if (b.oom) {
        free(b.p);
        errno = ENOMEM;
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.p;
}
