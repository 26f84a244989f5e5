/*
 * test_obs.c - the obs module as Prometheus and a log reader see it: the
 * exact exposition text of a small registry (types, labels, escaping,
 * cumulative buckets, number formats), name rules, exact totals under
 * concurrent updates, one series per label set under concurrent lookup,
 * plausible process metrics, promtool's verdict when it is installed, and
 * log lines that are whole, valid JSON objects with the right fields.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "obs.h"

#define N_THREADS 4
#define N_UPDATES 100000

/* ---- helpers ---- */

static char *render(metrics_registry *r) {
    size_t len = 0;
    char *text = metrics_render(r, &len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    return text;
}

static void assert_text_equal(const char *got, const char *want) {
    if (strcmp(got, want) != 0) {
        fprintf(stderr, "--- want\n%s--- got\n%s---\n", want, got); /* print_error truncates */
        fail();
    }
}

/* The value on the line that starts with `series` followed by a space, or
 * NaN. Safe off the test's main thread (never fails). */
static double find_sample(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *line = text; line && *line;) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return NAN;
}

static double sample_value(const char *text, const char *series) {
    double v = find_sample(text, series);
    if (isnan(v)) {
        print_error("no sample %s in\n%s\n", series, text);
        fail();
    }
    return v;
}

static int count_lines_with(const char *text, const char *prefix) {
    int n = 0;
    size_t k = strlen(prefix);
    for (const char *line = text; line && *line;) {
        if (strncmp(line, prefix, k) == 0)
            n++;
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return n;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- registration ---- */

static void test_names_validated(void **state) {
    (void)state;
    metrics_registry *r = metrics_registry_create();
    assert_non_null(r);
    const char *bad_names[] = {"", "1abc", "a-b", "a b", "a.b", "é", "x\n"};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++)
        assert_null(metrics_counter(r, bad_names[i], "h", 0, NULL));
    assert_null(metrics_counter(r, NULL, "h", 0, NULL));
    assert_non_null(metrics_gauge(r, "ns:sub_system:value", "colons are allowed", 0, NULL));
    assert_non_null(metrics_gauge(r, "_leading_underscore", "h", 0, NULL));

    const char *bad_labels[][1] = {{"__reserved"}, {"a:b"}, {"1a"}, {""}, {"a-b"}, {NULL}};
    for (size_t i = 0; i < sizeof bad_labels / sizeof bad_labels[0]; i++)
        assert_null(metrics_counter(r, "bad_label_total", "h", 1, bad_labels[i]));
    const char *dup[] = {"a", "a"};
    assert_null(metrics_counter(r, "dup_label_total", "h", 2, dup));
    assert_null(metrics_counter(r, "neg_labels_total", "h", -1, NULL));
    assert_null(metrics_counter(r, "null_labels_total", "h", 1, NULL));
    const char *le[] = {"le"};
    assert_null(metrics_histogram(r, "le_seconds", "h", 1, le, NULL, 0));
    assert_non_null(metrics_gauge(r, "le_allowed_outside_histograms", "h", 1, le));

    /* Duplicates, including the sample names a histogram renders. */
    assert_non_null(metrics_counter(r, "requests_total", "h", 0, NULL));
    assert_null(metrics_counter(r, "requests_total", "h", 0, NULL));
    assert_null(metrics_gauge(r, "requests_total", "h", 0, NULL));
    assert_non_null(metrics_histogram(r, "latency_seconds", "h", 0, NULL, NULL, 0));
    assert_null(metrics_counter(r, "latency_seconds_count", "h", 0, NULL));
    assert_null(metrics_gauge(r, "latency_seconds_bucket", "h", 0, NULL));
    assert_non_null(metrics_gauge(r, "depth_count", "h", 0, NULL));
    assert_null(metrics_histogram(r, "depth", "h", 0, NULL, NULL, 0));

    /* Bounds: strictly increasing and finite; a trailing +Inf is implicit. */
    const double not_increasing[] = {1, 1, 2};
    const double with_nan[] = {1, NAN};
    const double with_inf[] = {0.5, 1, INFINITY};
    assert_null(metrics_histogram(r, "b1_seconds", "h", 0, NULL, not_increasing, 3));
    assert_null(metrics_histogram(r, "b2_seconds", "h", 0, NULL, with_nan, 2));
    assert_null(metrics_histogram(r, "b3_seconds", "h", 0, NULL, not_increasing, -1));
    metric_family *h = metrics_histogram(r, "b4_seconds", "h", 0, NULL, with_inf, 3);
    assert_non_null(h);
    char *text = render(r);
    assert_int_equal(count_lines_with(text, "b4_seconds_bucket{"), 3); /* 0.5, 1.0, +Inf */
    free(text);

    /* A failed registration gives NULLs that every update accepts. */
    metric *m = metric_series(NULL, NULL);
    assert_null(m);
    metric_inc(m);
    metric_add(m, 1);
    metric_set(m, 1);
    metric_observe(m, 1);
    assert_true(metric_value(m) == 0);
    metrics_registry_destroy(r);
    metrics_registry_destroy(NULL);
}

/* ---- exact exposition ---- */

static void test_render_exact(void **state) {
    (void)state;
    metrics_registry *r = metrics_registry_create();
    metric_family *started = metrics_counter(r, "app_started_total", "Starts.", 0, NULL);
    const char *req_labels[] = {"endpoint", "status"};
    metric_family *req = metrics_counter(r, "app_requests_total", "Requests served.", 2, req_labels);
    metric_family *temp = metrics_gauge(r, "app_temperature_celsius", "Temperature.", 0, NULL);
    const char *model_label[] = {"model"};
    metric_family *state_g = metrics_gauge(r, "app_model_state", "Model state.", 1, model_label);
    const char *ep_label[] = {"endpoint"};
    const double bounds[] = {0.25, 1, 5};
    metric_family *lat = metrics_histogram(r, "app_latency_seconds", "Latency.", 1, ep_label, bounds, 3);
    const double one[] = {1};
    metric_family *queue = metrics_histogram(r, "app_queue_seconds", "Queue wait.", 0, NULL, one, 1);
    metric_family *unused = metrics_counter(r, "app_errors_total", "Errors.", 1, model_label);
    assert_non_null(started);
    assert_non_null(req);
    assert_non_null(temp);
    assert_non_null(state_g);
    assert_non_null(lat);
    assert_non_null(queue);
    assert_non_null(unused);

    metric *predict_ok = metric_get(req, "/predict", "200", NULL);
    for (int i = 0; i < 3; i++)
        metric_inc(predict_ok);
    metric_add(metric_get(req, "/health", "200", NULL), 2);
    assert_ptr_equal(metric_get(req, "/predict", "200", NULL), predict_ok);
    const char *values[] = {"/predict", "200"};
    assert_ptr_equal(metric_series(req, values), predict_ok);
    assert_null(metric_get(req, "/predict", NULL));             /* too few values */
    assert_null(metric_get(req, "/predict", "200", "x", NULL)); /* too many */

    metric_set(metric_series(temp, NULL), 21.5);
    metric_set(metric_get(state_g, "a", NULL), -3);
    metric *b = metric_get(state_g, "b", NULL);
    metric_set(b, 0.1);
    metric_add(b, 1);
    metric_dec(b);
    metric *lp = metric_get(lat, "/predict", NULL);
    metric_observe(lp, 0.125);
    metric_observe(lp, 0.25); /* le is inclusive */
    metric_observe(lp, 0.5);
    metric_observe(lp, 8);
    metric_observe(lp, NAN); /* dropped */

    const char *want =
        "# HELP app_started_total Starts.\n"
        "# TYPE app_started_total counter\n"
        "app_started_total 0\n"
        "# HELP app_requests_total Requests served.\n"
        "# TYPE app_requests_total counter\n"
        "app_requests_total{endpoint=\"/predict\",status=\"200\"} 3\n"
        "app_requests_total{endpoint=\"/health\",status=\"200\"} 2\n"
        "# HELP app_temperature_celsius Temperature.\n"
        "# TYPE app_temperature_celsius gauge\n"
        "app_temperature_celsius 21.5\n"
        "# HELP app_model_state Model state.\n"
        "# TYPE app_model_state gauge\n"
        "app_model_state{model=\"a\"} -3\n"
        "app_model_state{model=\"b\"} 0.10000000000000009\n" /* 0.1 + 1 - 1, exactly */
        "# HELP app_latency_seconds Latency.\n"
        "# TYPE app_latency_seconds histogram\n"
        "app_latency_seconds_bucket{endpoint=\"/predict\",le=\"0.25\"} 2\n"
        "app_latency_seconds_bucket{endpoint=\"/predict\",le=\"1.0\"} 3\n"
        "app_latency_seconds_bucket{endpoint=\"/predict\",le=\"5.0\"} 3\n"
        "app_latency_seconds_bucket{endpoint=\"/predict\",le=\"+Inf\"} 4\n"
        "app_latency_seconds_sum{endpoint=\"/predict\"} 8.875\n"
        "app_latency_seconds_count{endpoint=\"/predict\"} 4\n"
        "# HELP app_queue_seconds Queue wait.\n"
        "# TYPE app_queue_seconds histogram\n"
        "app_queue_seconds_bucket{le=\"1.0\"} 0\n"
        "app_queue_seconds_bucket{le=\"+Inf\"} 0\n"
        "app_queue_seconds_sum 0\n"
        "app_queue_seconds_count 0\n"
        "# HELP app_errors_total Errors.\n"
        "# TYPE app_errors_total counter\n";
    char *text = render(r);
    assert_text_equal(text, want);
    free(text);

    uint64_t count;
    double sum;
    metric_histogram_read(lp, &count, &sum);
    assert_int_equal(count, 4);
    assert_true(sum == 8.875);
    assert_true(metric_value(lp) == 4);
    assert_true(metric_value(predict_ok) == 3);
    metrics_registry_destroy(r);
}

static void test_counter_and_type_rules(void **state) {
    (void)state;
    metrics_registry *r = metrics_registry_create();
    metric *c = metric_series(metrics_counter(r, "c_total", "h", 0, NULL), NULL);
    metric *g = metric_series(metrics_gauge(r, "g", "h", 0, NULL), NULL);
    metric *h = metric_series(metrics_histogram(r, "h_seconds", "h", 0, NULL, NULL, 0), NULL);
    metric_add(c, 2.5);
    metric_add(c, -1);   /* counters never go down */
    metric_add(c, NAN);  /* nor become NaN */
    metric_dec(c);
    metric_observe(c, 1); /* wrong type: ignored */
    assert_true(metric_value(c) == 2.5);
    metric_set(c, 10); /* a mirrored total */
    assert_true(metric_value(c) == 10);
    metric_add(g, -4);
    metric_inc(g);
    assert_true(metric_value(g) == -3);
    metric_inc(h);
    metric_set(h, 5);
    assert_true(metric_value(h) == 0);
    metrics_registry_destroy(r);
}

static void test_label_escaping_and_utf8(void **state) {
    (void)state;
    metrics_registry *r = metrics_registry_create();
    const char *labels[] = {"path"};
    metric_family *f = metrics_counter(r, "esc_total", "Back\\slash, \"quotes\" and\nnewline.", 1, labels);
    metric_inc(metric_get(f, "a\\b\"c\nd", NULL));
    metric_inc(metric_get(f, "caf\xc3\xa9 \xe2\x9c\x93", NULL)); /* valid UTF-8 kept */
    metric *bad1 = metric_get(f, "x\xffy", NULL);
    metric *bad2 = metric_get(f, "x\xfey", NULL); /* scrubs to the same value */
    assert_ptr_equal(bad1, bad2);
    metric_inc(bad1);
    metric_inc(bad2);
    metric_inc(metric_get(f, "", NULL)); /* empty is a value like any other */
    const char *want = "# HELP esc_total Back\\\\slash, \"quotes\" and\\nnewline.\n"
                       "# TYPE esc_total counter\n"
                       "esc_total{path=\"a\\\\b\\\"c\\nd\"} 1\n"
                       "esc_total{path=\"caf\xc3\xa9 \xe2\x9c\x93\"} 1\n"
                       "esc_total{path=\"x\xef\xbf\xbdy\"} 2\n"
                       "esc_total{path=\"\"} 1\n";
    char *text = render(r);
    assert_text_equal(text, want);
    free(text);
    assert_null(metric_get(f, NULL));
    const char *null_value[] = {NULL};
    assert_null(metric_series(f, null_value));
    metrics_registry_destroy(r);
}

static void test_number_formats(void **state) {
    (void)state;
    struct {
        double v;
        const char *want;
    } cases[] = {
        {0, "0"},
        {42, "42"},
        {-7, "-7"},
        {1e15, "1000000000000000"},
        {4611686018427387904.0, "4611686018427387904"},
        {1e20, "1e+20"},
        {0.1, "0.1"},
        {21.5, "21.5"},
        {1.0 / 3, "0.3333333333333333"},
        {0.1 + 0.2, "0.30000000000000004"},
        {1e-7, "1e-07"},
        {1.5e300, "1.5e+300"},
        {INFINITY, "+Inf"},
        {-INFINITY, "-Inf"},
        {NAN, "NaN"},
    };
    char buf[40];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        metrics_format_value(cases[i].v, buf, sizeof buf);
        if (strcmp(buf, cases[i].want) != 0) {
            print_error("format(%.17g): want %s got %s\n", cases[i].v, cases[i].want, buf);
            fail();
        }
    }
    /* Every finite double reads back exactly. */
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double v;
        memcpy(&v, &x, sizeof v);
        if (!isfinite(v))
            continue;
        size_t n = metrics_format_value(v, buf, sizeof buf);
        assert_true(n < 32);
        double back = strtod(buf, NULL);
        if (memcmp(&back, &v, sizeof v) != 0) {
            print_error("%.17g formatted as %s\n", v, buf);
            fail();
        }
    }
    /* Truncation keeps the NUL. */
    assert_int_equal(metrics_format_value(123456, buf, 4), 3);
    assert_string_equal(buf, "123");

    /* Gauges render through the same formatter. */
    metrics_registry *r = metrics_registry_create();
    metric *g = metric_series(metrics_gauge(r, "big_bytes", "h", 0, NULL), NULL);
    metric_set(g, 123456789012.0);
    char *text = render(r);
    assert_true(strstr(text, "\nbig_bytes 123456789012\n") != NULL);
    free(text);
    metrics_registry_destroy(r);
}

static void test_bucket_helpers_and_le_format(void **state) {
    (void)state;
    assert_int_equal(metrics_n_latency_buckets, 14);
    assert_true(metrics_latency_buckets[0] == 0.005 && metrics_latency_buckets[13] == 10);
    double out[4];
    assert_int_equal(metrics_exponential_buckets(0.001, 2, 4, out), 0);
    assert_true(out[0] == 0.001 && out[1] == 0.002 && out[2] == 0.004 && out[3] == 0.008);
    assert_int_equal(metrics_exponential_buckets(0, 2, 4, out), -1);
    assert_int_equal(metrics_exponential_buckets(1, 1, 4, out), -1);
    assert_int_equal(metrics_exponential_buckets(1, 2, 0, out), -1);
    assert_int_equal(metrics_linear_buckets(1, 2, 3, out), 0);
    assert_true(out[0] == 1 && out[1] == 3 && out[2] == 5);
    assert_int_equal(metrics_linear_buckets(1, 0, 3, out), -1);

    metrics_registry *r = metrics_registry_create();
    const double bounds[] = {1e-5, 0.005, 1, 2.5, 10, 1e6, 1.5e6};
    metric_family *f = metrics_histogram(r, "le_seconds", "h", 0, NULL, bounds, 7);
    metric_observe(metric_series(f, NULL), 3);
    metric_family *d = metrics_histogram(r, "default_seconds", "h", 0, NULL, NULL, 99);
    assert_non_null(d);
    char *text = render(r);
    const char *want = "# HELP le_seconds h\n"
                       "# TYPE le_seconds histogram\n"
                       "le_seconds_bucket{le=\"1e-05\"} 0\n"
                       "le_seconds_bucket{le=\"0.005\"} 0\n"
                       "le_seconds_bucket{le=\"1.0\"} 0\n"
                       "le_seconds_bucket{le=\"2.5\"} 0\n"
                       "le_seconds_bucket{le=\"10.0\"} 1\n"
                       "le_seconds_bucket{le=\"1e+06\"} 1\n"
                       "le_seconds_bucket{le=\"1.5e+06\"} 1\n"
                       "le_seconds_bucket{le=\"+Inf\"} 1\n"
                       "le_seconds_sum 3\n"
                       "le_seconds_count 1\n";
    assert_int_equal(strncmp(text, want, strlen(want)), 0);
    /* NULL bounds: prometheus_client's defaults, as it prints them. */
    const char *defaults[] = {"0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5",
                              "0.75", "1.0", "2.5", "5.0", "7.5", "10.0", "+Inf"};
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++) {
        char line[80];
        snprintf(line, sizeof line, "default_seconds_bucket{le=\"%s\"} 0\n", defaults[i]);
        assert_non_null(strstr(text, line));
    }
    free(text);
    metrics_registry_destroy(r);
}

/* ---- collectors ---- */

typedef struct collect_log {
    char order[8];
    int n;
    metric *gauge;
} collect_log;

static void collect_a(void *ud) {
    collect_log *c = ud;
    if (c->n < 7)
        c->order[c->n++] = 'a';
    metric_set(c->gauge, 7);
}

static void collect_b(void *ud) {
    collect_log *c = ud;
    if (c->n < 7)
        c->order[c->n++] = 'b';
}

static int freed_count;
static void count_free(void *ud) {
    (void)ud;
    freed_count++;
}

static void test_collectors(void **state) {
    (void)state;
    metrics_registry *r = metrics_registry_create();
    collect_log c = {{0}, 0, NULL};
    c.gauge = metric_series(metrics_gauge(r, "queue_depth", "h", 0, NULL), NULL);
    assert_int_equal(metrics_on_collect(r, collect_a, &c), 0);
    assert_int_equal(metrics_on_collect_owned(r, collect_b, &c, count_free), 0);
    char *text = render(r);
    assert_string_equal(c.order, "ab");
    assert_true(sample_value(text, "queue_depth") == 7);
    free(text);
    freed_count = 0;
    metrics_registry_destroy(r);
    assert_int_equal(freed_count, 1);

    /* An empty registry renders as an empty string. */
    r = metrics_registry_create();
    size_t len = 99;
    text = metrics_render(r, &len);
    assert_non_null(text);
    assert_int_equal(len, 0);
    free(text);
    metrics_registry_destroy(r);
}

/* ---- threads ---- */

typedef struct update_ctx {
    metric *counter, *hist, *gauge;
    metrics_registry *r;
    _Atomic int done;
    int renders, inconsistent;
} update_ctx;

static void *update_main(void *p) {
    update_ctx *u = p;
    for (int i = 0; i < N_UPDATES; i++) {
        metric_inc(u->counter);
        metric_observe(u->hist, (i % 3) * 0.5);
        metric_add(u->gauge, 1);
    }
    return NULL;
}

/* Renders while updates run: every render's _count equals its +Inf bucket. */
static void *render_main(void *p) {
    update_ctx *u = p;
    while (!atomic_load(&u->done)) {
        char *text = metrics_render(u->r, NULL);
        if (!text)
            continue;
        double inf = find_sample(text, "work_seconds_bucket{le=\"+Inf\"}");
        double count = find_sample(text, "work_seconds_count");
        u->renders++;
        if (!(inf == count)) /* also catches a missing line (NaN) */
            u->inconsistent++;
        free(text);
    }
    return NULL;
}

static void test_concurrent_updates_exact(void **state) {
    (void)state;
    metrics_registry *r = metrics_registry_create();
    const double bounds[] = {0.25, 0.75};
    update_ctx u = {
        .counter = metric_series(metrics_counter(r, "work_total", "h", 0, NULL), NULL),
        .hist = metric_series(metrics_histogram(r, "work_seconds", "h", 0, NULL, bounds, 2), NULL),
        .gauge = metric_series(metrics_gauge(r, "work_gauge", "h", 0, NULL), NULL),
        .r = r,
    };
    pthread_t threads[N_THREADS], renderer;
    assert_int_equal(pthread_create(&renderer, NULL, render_main, &u), 0);
    for (int t = 0; t < N_THREADS; t++)
        assert_int_equal(pthread_create(&threads[t], NULL, update_main, &u), 0);
    for (int t = 0; t < N_THREADS; t++)
        pthread_join(threads[t], NULL);
    atomic_store(&u.done, 1);
    pthread_join(renderer, NULL);
    assert_int_equal(u.inconsistent, 0);

    assert_true(metric_value(u.counter) == N_THREADS * N_UPDATES);
    assert_true(metric_value(u.gauge) == N_THREADS * N_UPDATES);
    uint64_t count;
    double sum;
    metric_histogram_read(u.hist, &count, &sum);
    assert_int_equal(count, N_THREADS * N_UPDATES);
    /* Per thread: 33333 observations of 0.5 and 33333 of 1.0, all exact. */
    assert_true(sum == N_THREADS * 49999.5);
    char *text = render(r);
    assert_true(sample_value(text, "work_seconds_bucket{le=\"0.25\"}") == N_THREADS * 33334);
    assert_true(sample_value(text, "work_seconds_bucket{le=\"0.75\"}") == N_THREADS * 66667);
    assert_true(sample_value(text, "work_seconds_bucket{le=\"+Inf\"}") == N_THREADS * N_UPDATES);
    assert_true(sample_value(text, "work_seconds_count") == N_THREADS * N_UPDATES);
    assert_true(sample_value(text, "work_total") == N_THREADS * N_UPDATES);
    free(text);
    metrics_registry_destroy(r);
}

#define N_KEYS 1000

typedef struct lookup_ctx {
    metric_family *f;
    pthread_barrier_t *barrier;
    metric *got[N_KEYS];
} lookup_ctx;

static void *lookup_main(void *p) {
    lookup_ctx *c = p;
    pthread_barrier_wait(c->barrier);
    for (int i = 0; i < N_KEYS; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        c->got[i] = metric_get(c->f, key, NULL);
        metric_inc(c->got[i]);
    }
    return NULL;
}

static void test_concurrent_series_creation(void **state) {
    (void)state;
    metrics_registry *r = metrics_registry_create();
    const char *labels[] = {"key"};
    metric_family *f = metrics_counter(r, "keys_total", "h", 1, labels);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, N_THREADS);
    static lookup_ctx ctx[N_THREADS];
    pthread_t threads[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
        ctx[t].f = f;
        ctx[t].barrier = &barrier;
        assert_int_equal(pthread_create(&threads[t], NULL, lookup_main, &ctx[t]), 0);
    }
    for (int t = 0; t < N_THREADS; t++)
        pthread_join(threads[t], NULL);
    pthread_barrier_destroy(&barrier);
    for (int i = 0; i < N_KEYS; i++) {
        assert_non_null(ctx[0].got[i]);
        for (int t = 1; t < N_THREADS; t++)
            assert_ptr_equal(ctx[t].got[i], ctx[0].got[i]);
        assert_true(metric_value(ctx[0].got[i]) == N_THREADS);
    }
    char *text = render(r);
    assert_int_equal(count_lines_with(text, "keys_total{"), N_KEYS);
    free(text);
    metrics_registry_destroy(r);
}

/* ---- log capture ---- */

static int cap_r = -1, cap_w = -1;

static void capture_start(void) {
    int fds[2];
    assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
    cap_r = fds[0];
    cap_w = fds[1];
    log_set_output(cap_w);
}

static void capture_stop(void) {
    log_set_output(1);
    close(cap_w);
    close(cap_r);
    cap_r = cap_w = -1;
}

/* Reads what is in the pipe now (waiting up to 1 s for the first byte). */
static char *capture_read(void) {
    static char buf[65536];
    size_t len = 0;
    struct pollfd pfd = {.fd = cap_r, .events = POLLIN};
    int timeout = 1000;
    while (len + 1 < sizeof buf && poll(&pfd, 1, timeout) > 0) {
        ssize_t n = read(cap_r, buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        timeout = 50;
    }
    buf[len] = '\0';
    return buf;
}

/* Parses one line (without its newline) as a JSON object. */
static json_t *parse_line(const char *line, size_t len) {
    json_error_t err;
    json_t *obj = json_loadb(line, len, 0, &err);
    if (!obj || !json_is_object(obj)) {
        print_error("not a JSON object (%s): %.*s\n", err.text, (int)len, line);
        fail();
    }
    return obj;
}

static json_t *read_one_line(void) {
    char *text = capture_read();
    char *nl = strchr(text, '\n');
    assert_non_null(nl);
    assert_int_equal(nl[1], '\0'); /* exactly one line */
    return parse_line(text, (size_t)(nl - text));
}

/* ---- process metrics ---- */

static void test_process_metrics(void **state) {
    (void)state;
    metrics_registry *r = metrics_registry_create();
    assert_int_equal(metrics_register_process(r), 0);
    assert_int_equal(metrics_register_process(r), -1); /* names taken */
    volatile double burn = 0;
    for (int i = 0; i < 2000000; i++)
        burn += i * 0.5;
    assert_true(burn > 0); /* CPU time was spent (and the loop is used) */
    char *text = render(r);
    const char *types[] = {"# TYPE process_cpu_seconds_total counter", "# TYPE process_resident_memory_bytes gauge",
                           "# TYPE process_virtual_memory_bytes gauge", "# TYPE process_open_fds gauge",
                           "# TYPE process_max_fds gauge", "# TYPE process_start_time_seconds gauge"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        assert_non_null(strstr(text, types[i]));
    double rss = sample_value(text, "process_resident_memory_bytes");
    double vsz = sample_value(text, "process_virtual_memory_bytes");
    double start = sample_value(text, "process_start_time_seconds");
    double fds = sample_value(text, "process_open_fds");
    double max_fds = sample_value(text, "process_max_fds");
    double cpu = sample_value(text, "process_cpu_seconds_total");
    assert_true(rss > 1e6);
    assert_true(vsz >= rss);
    assert_true(fds >= 3 && fds <= max_fds);
    assert_true(cpu >= 0 && cpu < 3600);
    /* Started within the last few minutes (boot time in /proc has 1 s
     * resolution, the start tick 10 ms). */
    double now = now_seconds();
    if (!(start <= now + 2 && start > now - 600)) {
        print_error("start %.3f, now %.3f\n", start, now);
        fail();
    }
    free(text);

    /* open_fds follows the process. */
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    text = render(r);
    assert_true(sample_value(text, "process_open_fds") == fds + 1);
    free(text);
    close(fd);
    metrics_registry_destroy(r);
}

/* ---- promtool ---- */

static void test_promtool_accepts_output(void **state) {
    (void)state;
    if (access("/usr/bin/promtool", X_OK) != 0) {
        print_message("promtool not installed; skipping\n");
        skip();
    }
    metrics_registry *r = metrics_registry_create();
    const char *labels[] = {"endpoint", "status"};
    metric_family *req = metrics_counter(r, "aiserve_test_requests_total", "Requests, \"quoted\"\nand escaped \\.", 2, labels);
    metric_inc(metric_get(req, "/predict", "200", NULL));
    metric_add(metric_get(req, "we\"ird\\path\n", "500", NULL), 3);
    metric_set(metric_series(metrics_gauge(r, "aiserve_test_queue_depth", "Queue depth.", 0, NULL), NULL), 0.1);
    metric_set(metric_series(metrics_gauge(r, "aiserve_test_weird_value", "Special values.", 0, NULL), NULL), NAN);
    metric_family *h = metrics_histogram(r, "aiserve_test_latency_seconds", "Latency.", 1, labels, NULL, 0);
    metric_observe(metric_get(h, "/predict", NULL), 0.3);
    metric_observe(metric_get(h, "/predict", NULL), 42);
    metric_family *h2 = metrics_histogram(r, "aiserve_test_size_bytes", "Sizes.", 0, NULL, NULL, 0);
    (void)h2;
    metrics_counter(r, "aiserve_test_unused_total", "Never touched.", 1, labels);
    assert_int_equal(metrics_register_process(r), 0);
    char *text = render(r);

    char out_path[] = "/tmp/aiserve-promtool-XXXXXX";
    int out_fd = mkstemp(out_path);
    assert_true(out_fd >= 0);
    close(out_fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "/usr/bin/promtool check metrics >%s 2>&1", out_path);
    FILE *p = popen(cmd, "w");
    assert_non_null(p);
    fwrite(text, 1, strlen(text), p);
    int status = pclose(p);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char report[4096] = {0};
        FILE *f = fopen(out_path, "r");
        if (f) {
            size_t n = fread(report, 1, sizeof report - 1, f);
            report[n] = '\0';
            fclose(f);
        }
        print_error("promtool rejected:\n%s\n--- input\n%s\n", report, text);
        unlink(out_path);
        fail();
    }
    unlink(out_path);
    free(text);
    metrics_registry_destroy(r);
}

/* ---- logging ---- */

static void test_log_levels(void **state) {
    (void)state;
    struct {
        const char *s;
        log_level want;
    } ok[] = {{"debug", LOG_DEBUG}, {"DEBUG", LOG_DEBUG}, {"Info", LOG_INFO}, {"warn", LOG_WARN},
              {"WARNING", LOG_WARN}, {"error", LOG_ERROR}, {"CRITICAL", LOG_ERROR}, {"fatal", LOG_ERROR}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        log_level l = LOG_DEBUG;
        assert_int_equal(log_level_parse(ok[i].s, &l), 0);
        assert_int_equal(l, ok[i].want);
    }
    log_level l = LOG_INFO;
    assert_int_equal(log_level_parse("verbose", &l), -1);
    assert_int_equal(log_level_parse("", &l), -1);
    assert_int_equal(log_level_parse(NULL, &l), -1);
    assert_int_equal(log_level_parse(" info", &l), -1);
    assert_int_equal(l, LOG_INFO);
    assert_string_equal(log_level_name(LOG_DEBUG), "debug");
    assert_string_equal(log_level_name(LOG_INFO), "info");
    assert_string_equal(log_level_name(LOG_WARN), "warning");
    assert_string_equal(log_level_name(LOG_ERROR), "error");
    assert_string_equal(log_level_name((log_level)42), "unknown");
}

static void test_log_line_fields(void **state) {
    (void)state;
    capture_start();
    log_set_level(LOG_INFO);
    double before = now_seconds();
    log_event(LOG_INFO, "model_loaded", "model", json_string("sentiment"), "version", json_integer(3),
              "ready", json_true(), "latency_ms", json_real(12.345), "nothing", NULL, NULL);
    json_t *obj = read_one_line();

    /* time, level, msg first, then the fields in order. */
    const char *order[] = {"time", "level", "msg", "model", "version", "ready", "latency_ms", "nothing"};
    size_t i = 0;
    for (void *it = json_object_iter(obj); it; it = json_object_iter_next(obj, it), i++) {
        assert_true(i < sizeof order / sizeof order[0]);
        assert_string_equal(json_object_iter_key(it), order[i]);
    }
    assert_int_equal(i, sizeof order / sizeof order[0]);

    const char *t = json_string_value(json_object_get(obj, "time"));
    assert_non_null(t);
    assert_int_equal(strlen(t), 24); /* 2026-11-27T10:52:29.123Z */
    struct tm tm = {0};
    int ms = -1;
    assert_int_equal(sscanf(t, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                            &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms),
                     7);
    assert_int_equal(t[23], 'Z');
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    double logged = (double)timegm(&tm) + ms / 1000.0;
    assert_true(logged >= before - 0.002 && logged <= now_seconds() + 0.002);

    assert_string_equal(json_string_value(json_object_get(obj, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(obj, "msg")), "model_loaded");
    assert_string_equal(json_string_value(json_object_get(obj, "model")), "sentiment");
    assert_int_equal(json_integer_value(json_object_get(obj, "version")), 3);
    assert_true(json_is_true(json_object_get(obj, "ready")));
    assert_true(json_real_value(json_object_get(obj, "latency_ms")) == 12.345);
    assert_true(json_is_null(json_object_get(obj, "nothing")));
    json_decref(obj);

    /* Fields cannot replace time/level/msg; msg is escaped and scrubbed. */
    json_t *fields = json_pack("{s:s, s:s, s:i}", "msg", "spoof", "level", "debug", "n", 1);
    log_json(LOG_ERROR, "quote \" backslash \\ newline \n tab \t bad \xff end", fields);
    obj = read_one_line();
    assert_string_equal(json_string_value(json_object_get(obj, "level")), "error");
    assert_string_equal(json_string_value(json_object_get(obj, "msg")),
                        "quote \" backslash \\ newline \n tab \t bad \xef\xbf\xbd end");
    assert_string_equal(json_string_value(json_object_get(obj, "fields.msg")), "spoof");
    assert_string_equal(json_string_value(json_object_get(obj, "fields.level")), "debug");
    json_decref(obj);

    /* No fields; NULL msg; a non-object fields value. */
    log_json(LOG_WARN, NULL, NULL);
    obj = read_one_line();
    assert_int_equal(json_object_size(obj), 3);
    assert_string_equal(json_string_value(json_object_get(obj, "msg")), "");
    assert_string_equal(json_string_value(json_object_get(obj, "level")), "warning");
    json_decref(obj);
    log_json(LOG_INFO, "odd", json_integer(5));
    obj = read_one_line();
    assert_int_equal(json_integer_value(json_object_get(obj, "fields")), 5);
    json_decref(obj);
    capture_stop();
}

static void test_log_level_filtering(void **state) {
    (void)state;
    capture_start();
    log_set_level(LOG_WARN);
    assert_int_equal(log_get_level(), LOG_WARN);
    assert_false(log_enabled(LOG_DEBUG));
    assert_false(log_enabled(LOG_INFO));
    assert_true(log_enabled(LOG_WARN));
    assert_true(log_enabled(LOG_ERROR));
    /* Disabled lines still take their fields (ASan would see a leak). */
    log_event(LOG_INFO, "hidden", "k", json_string("v"), NULL);
    log_json(LOG_DEBUG, "hidden", json_pack("{s:i}", "k", 1));
    log_event(LOG_WARN, "shown", "k", json_string("v"), NULL);
    json_t *obj = read_one_line();
    assert_string_equal(json_string_value(json_object_get(obj, "msg")), "shown");
    json_decref(obj);
    log_set_level(LOG_DEBUG);
    log_event(LOG_DEBUG, "debug_now", NULL);
    obj = read_one_line();
    assert_string_equal(json_string_value(json_object_get(obj, "level")), "debug");
    json_decref(obj);
    log_set_level(LOG_INFO);
    capture_stop();
}

static void test_log_full_pipe_drops(void **state) {
    (void)state;
    capture_start();
    assert_int_equal(fcntl(cap_w, F_SETFL, O_NONBLOCK), 0);
    char junk[4096];
    memset(junk, 'x', sizeof junk);
    while (write(cap_w, junk, sizeof junk) > 0) {
    }
    assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
    uint64_t before = log_dropped_lines();
    double t0 = now_seconds();
    log_event(LOG_ERROR, "nobody_reads", NULL);
    assert_true(now_seconds() - t0 < 0.5);
    assert_int_equal(log_dropped_lines(), before + 1);
    capture_stop();
}

static void test_series_limit_warns(void **state) {
    (void)state;
    capture_start();
    metrics_registry *r = metrics_registry_create();
    const char *labels[] = {"id"};
    metric_family *f = metrics_counter(r, "ids_total", "h", 1, labels);
    char key[16];
    for (int i = 0; i < METRICS_MAX_SERIES; i++) {
        snprintf(key, sizeof key, "%d", i);
        assert_non_null(metric_get(f, key, NULL));
    }
    assert_null(metric_get(f, "one_too_many", NULL));
    assert_null(metric_get(f, "two_too_many", NULL));
    assert_non_null(metric_get(f, "7", NULL)); /* existing series still found */
    json_t *obj = read_one_line();             /* one warning per family */
    assert_string_equal(json_string_value(json_object_get(obj, "msg")), "metric_series_limit");
    assert_string_equal(json_string_value(json_object_get(obj, "metric")), "ids_total");
    json_decref(obj);
    metrics_registry_destroy(r);
    capture_stop();
}

#define LOG_THREADS 4
#define LOG_LINES 1000

typedef struct reader_ctx {
    int fd;
    char *buf;
    size_t len, cap;
} reader_ctx;

static void *reader_main(void *p) {
    reader_ctx *c = p;
    for (;;) {
        if (c->len + 65536 > c->cap) {
            c->cap = c->cap * 2 + 65536;
            c->buf = realloc(c->buf, c->cap);
            if (!c->buf)
                return NULL;
        }
        ssize_t n = read(c->fd, c->buf + c->len, c->cap - c->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return NULL;
        c->len += (size_t)n;
    }
}

static void *logger_main(void *p) {
    int id = (int)(intptr_t)p;
    char *pad = malloc(8192);
    for (int i = 0; i < LOG_LINES; i++) {
        size_t n = (size_t)(i * 37 + id * 101) % 8000; /* up to about twice PIPE_BUF */
        memset(pad, 'a' + id, n);
        pad[n] = '\0';
        log_event(LOG_INFO, "tick", "thread", json_integer(id), "seq", json_integer(i), "pad",
                  json_string(pad), NULL);
    }
    free(pad);
    return NULL;
}

static void test_log_concurrent_lines_whole(void **state) {
    (void)state;
    capture_start();
    reader_ctx rc = {.fd = cap_r};
    pthread_t reader, threads[LOG_THREADS];
    assert_int_equal(pthread_create(&reader, NULL, reader_main, &rc), 0);
    uint64_t dropped = log_dropped_lines();
    for (int t = 0; t < LOG_THREADS; t++)
        assert_int_equal(pthread_create(&threads[t], NULL, logger_main, (void *)(intptr_t)t), 0);
    for (int t = 0; t < LOG_THREADS; t++)
        pthread_join(threads[t], NULL);
    log_set_output(1);
    close(cap_w); /* the reader sees EOF */
    pthread_join(reader, NULL);
    close(cap_r);
    cap_r = cap_w = -1;
    assert_int_equal(log_dropped_lines(), dropped);
    assert_non_null(rc.buf);

    int next_seq[LOG_THREADS] = {0};
    int lines = 0;
    for (size_t at = 0; at < rc.len;) {
        char *nl = memchr(rc.buf + at, '\n', rc.len - at);
        assert_non_null(nl);
        size_t len = (size_t)(nl - (rc.buf + at));
        json_t *obj = parse_line(rc.buf + at, len);
        int id = (int)json_integer_value(json_object_get(obj, "thread"));
        int seq = (int)json_integer_value(json_object_get(obj, "seq"));
        assert_true(id >= 0 && id < LOG_THREADS);
        assert_int_equal(seq, next_seq[id]); /* one thread's lines stay in order */
        next_seq[id]++;
        const char *pad = json_string_value(json_object_get(obj, "pad"));
        assert_non_null(pad);
        for (const char *q = pad; *q; q++)
            assert_int_equal(*q, 'a' + id);
        json_decref(obj);
        lines++;
        at += len + 1;
    }
    assert_int_equal(lines, LOG_THREADS * LOG_LINES);
    free(rc.buf);
}


/* ---- history ---------------------------------------------------------- */

static json_t *history(obs_history *h, int64_t since, const char *only) {
    size_t len = 0;
    char *text = obs_history_json(h, since, only, &len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    json_error_t err;
    json_t *doc = json_loads(text, 0, &err);
    free(text);
    assert_non_null(doc);
    return doc;
}

/* The series named with the label value given (NULL: labels null). */
static json_t *series_of(json_t *doc, const char *name, const char *label, const char *value) {
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(doc, "series"), i, s) {
        if (strcmp(json_string_value(json_object_get(s, "name")), name) != 0)
            continue;
        json_t *labels = json_object_get(s, "labels");
        if (!label ? json_is_null(labels) || json_object_size(labels) == 0
                   : json_is_object(labels) && json_object_get(labels, label) &&
                         strcmp(json_string_value(json_object_get(labels, label)), value) == 0)
            return s;
    }
    return NULL;
}

static double at(json_t *s, const char *key, size_t i) {
    json_t *v = json_array_get(json_object_get(s, key), i);
    return json_is_null(v) ? NAN : json_number_value(v);
}

static void test_history_samples(void **state) {
    (void)state;
    metrics_registry *r = metrics_registry_create();
    metric *hits = metric_get(metrics_counter(r, "hits_total", "", 1, (const char *[]){"route"}), "/a", NULL);
    metric *depth = metric_series(metrics_gauge(r, "depth", "", 0, NULL), NULL);
    double bounds[] = {0.1, 0.2, 0.4};
    metric_family *lat = metrics_histogram(r, "lat_seconds", "", 1, (const char *[]){"route"}, bounds, 3);
    metric *lat_a = metric_get(lat, "/a", NULL);
    const char *names[] = {"hits_total", "depth", "lat_seconds", "later_total"};
    obs_history *h = obs_history_create(r, names, 4, 3, 64);
    assert_non_null(h);

    metric_add(hits, 5);
    metric_set(depth, 7);
    obs_history_tick(h, 10000); /* first tick: no rate yet */
    metric_add(hits, 10);
    for (int i = 0; i < 10; i++)
        metric_observe(lat_a, 0.15); /* all in (0.1, 0.2] */
    metric *lat_b = metric_get(lat, "/b", NULL); /* appears between ticks: counted from zero */
    for (int i = 0; i < 10; i++)
        metric_observe(lat_b, 0.35);
    metric *later = metric_series(metrics_counter(r, "later_total", "", 0, NULL), NULL);
    metric_add(later, 4);
    obs_history_tick(h, 12000); /* 2 s later */

    json_t *doc = history(h, 0, NULL);
    assert_int_equal(json_array_size(json_object_get(doc, "t")), 2);
    json_t *s = series_of(doc, "hits_total", "route", "/a");
    assert_non_null(s);
    assert_true(isnan(at(s, "rate", 0)));
    assert_true(fabs(at(s, "rate", 1) - 5.0) < 1e-6); /* 10 in 2 s */
    assert_true(fabs(at(series_of(doc, "depth", NULL, NULL), "value", 0) - 7) < 1e-6);
    assert_true(fabs(at(series_of(doc, "later_total", NULL, NULL), "rate", 1) - 2.0) < 1e-6);
    json_t *a = series_of(doc, "lat_seconds", "route", "/a");
    assert_true(fabs(at(a, "count", 1) - 10) < 1e-6);
    assert_true(fabs(at(a, "mean", 1) - 0.15) < 1e-5);
    assert_true(fabs(at(a, "p50", 1) - 0.15) < 1e-5); /* halfway through (0.1, 0.2] */
    json_t *b = series_of(doc, "lat_seconds", "route", "/b");
    assert_true(fabs(at(b, "count", 1) - 10) < 1e-6);
    json_t *all = series_of(doc, "lat_seconds", NULL, NULL); /* both routes */
    assert_true(fabs(at(all, "count", 1) - 20) < 1e-6);
    assert_true(fabs(at(all, "p50", 1) - 0.2) < 1e-5);
    assert_true(fabs(at(all, "p99", 1) - (0.2 + 0.2 * 0.98)) < 1e-5);
    json_decref(doc);

    /* The ring keeps 3 samples; since and only filter. */
    obs_history_tick(h, 13000);
    obs_history_tick(h, 14000);
    doc = history(h, 12500, "depth");
    json_t *t = json_object_get(doc, "t");
    assert_int_equal(json_array_size(t), 2);
    assert_int_equal(json_integer_value(json_array_get(t, 0)), 13000);
    assert_int_equal(json_array_size(json_object_get(doc, "series")), 1);
    assert_true(fabs(at(series_of(doc, "depth", NULL, NULL), "value", 1) - 7) < 1e-6);
    json_decref(doc);
    doc = history(h, 0, NULL);
    assert_int_equal(json_array_size(json_object_get(doc, "t")), 3);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(doc, "t"), 0)), 12000);
    json_decref(doc);
    obs_history_destroy(h);
    metrics_registry_destroy(r);
}

/* Series past max_series are dropped and counted: memory stays bounded. */
static void test_history_bounded(void **state) {
    (void)state;
    metrics_registry *r = metrics_registry_create();
    metric_family *f = metrics_counter(r, "many_total", "", 1, (const char *[]){"k"});
    const char *names[] = {"many_total"};
    obs_history *h = obs_history_create(r, names, 1, 900, 8);
    for (int i = 0; i < 20; i++) {
        char v[16];
        snprintf(v, sizeof v, "%d", i);
        metric_inc(metric_get(f, v, NULL));
    }
    metric *s0 = metric_get(f, "0", NULL);
    for (int i = 0; i < 2000; i++) {
        metric_inc(s0);
        metric_inc(metric_get(f, "19", NULL)); /* not tracked: over the cap */
        obs_history_tick(h, 1000 * (int64_t)i);
    }
    json_t *doc = history(h, 0, NULL);
    /* Only the series that moved is listed: the others were 0 all along. */
    assert_int_equal(json_array_size(json_object_get(doc, "series")), 1);
    assert_true(fabs(at(series_of(doc, "many_total", "k", "0"), "rate", 899) - 1.0) < 1e-6);
    assert_null(series_of(doc, "many_total", "k", "19"));
    assert_int_equal(json_integer_value(json_object_get(doc, "dropped_series")), 12);
    assert_int_equal(json_array_size(json_object_get(doc, "t")), 900);
    json_decref(doc);
    obs_history_destroy(h);
    metrics_registry_destroy(r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_validated),
        cmocka_unit_test(test_render_exact),
        cmocka_unit_test(test_counter_and_type_rules),
        cmocka_unit_test(test_label_escaping_and_utf8),
        cmocka_unit_test(test_number_formats),
        cmocka_unit_test(test_bucket_helpers_and_le_format),
        cmocka_unit_test(test_collectors),
        cmocka_unit_test(test_concurrent_updates_exact),
        cmocka_unit_test(test_concurrent_series_creation),
        cmocka_unit_test(test_process_metrics),
        cmocka_unit_test(test_promtool_accepts_output),
        cmocka_unit_test(test_log_levels),
        cmocka_unit_test(test_log_line_fields),
        cmocka_unit_test(test_log_level_filtering),
        cmocka_unit_test(test_log_full_pipe_drops),
        cmocka_unit_test(test_series_limit_warns),
        cmocka_unit_test(test_log_concurrent_lines_whole),
        cmocka_unit_test(test_history_samples),
        cmocka_unit_test(test_history_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
