/*
 * test_serving.c - the serving module through its public header, on the
 * tiny fixture models: how a repository directory is scanned (names,
 * versions, what is ignored), which version serves and what a broken one
 * reports, consistent listings while loading, the default model, acquire's errors, scheduler results equal to
 * a direct engine call under concurrent submitters and split batches, the
 * queue bound, deadlines, unsupported tasks, a bad text that must not fail
 * its neighbours, references that outlive the repository, shutdown with
 * queued work, and the metrics the traffic leaves behind. Then
 * serving_predict on the bundled sentiment model as several versions:
 * version choice (pins, aliases, the split's hash, the cascade), cascades
 * and shadow copies with their counters, task checks, embeddings.
 *
 * Each test builds its own repository under a fresh temporary directory,
 * with symlinks to tests/fixtures/models/<name> (or models/sentiment/1) as
 * version directories, and removes it afterwards. Waits are bounded generously (the CI machine may be
 * heavily loaded); nothing asserts how fast anything is.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "engine.h"
#include "obs.h"
#include "serving.h"

#define FIXTURES AISERVE_SOURCE_DIR "/tests/fixtures/models"
/* Upper bound for anything the test waits for (loading, a batch). */
#define WAIT_US (120u * 1000000u)
#define PROB_TOL 1e-6f

/* ---- temporary repositories ---- */

typedef struct repo_dir {
    char root[256];
} repo_dir;

static void repo_dir_init(repo_dir *d) {
    snprintf(d->root, sizeof d->root, "/tmp/aiserve-serving-XXXXXX");
    assert_non_null(mkdtemp(d->root));
}

static const char *repo_path(const repo_dir *d, const char *rel) {
    static char path[8][2048];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, sizeof path[0], "%s/%s", d->root, rel);
    return p;
}

/* mkdir -p for a path relative to the root. */
static void repo_mkdir(const repo_dir *d, const char *rel) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", d->root, rel);
    for (char *p = path + strlen(d->root) + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(path, 0755);
            *p = '/';
        }
    }
    if (mkdir(path, 0755) != 0) {
        struct stat sb;
        assert_int_equal(stat(path, &sb), 0);
        assert_true(S_ISDIR(sb.st_mode));
    }
}

/* <root>/<model>/<version> -> tests/fixtures/models/<fixture> */
static void repo_link(const repo_dir *d, const char *model, const char *version, const char *fixture) {
    repo_mkdir(d, model);
    char rel[512], target[1024];
    snprintf(rel, sizeof rel, "%s/%s", model, version);
    snprintf(target, sizeof target, "%s/%s", FIXTURES, fixture);
    assert_int_equal(symlink(target, repo_path(d, rel)), 0);
}

static void repo_write(const repo_dir *d, const char *rel, const char *text) {
    FILE *f = fopen(repo_path(d, rel), "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A copy of a fixture whose config.json is damaged: every other file is a
 * symlink to the fixture's, config.json is cut off mid-object. */
static void repo_broken(const repo_dir *d, const char *model, const char *version, const char *fixture) {
    char rel[512];
    snprintf(rel, sizeof rel, "%s/%s", model, version);
    repo_mkdir(d, rel);
    static const char *const files[] = {"model.safetensors", "vocab.txt", "tokenizer_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char target[1024], link[1024];
        snprintf(target, sizeof target, "%s/%s/%s", FIXTURES, fixture, files[i]);
        snprintf(link, sizeof link, "%s/%s", rel, files[i]);
        assert_int_equal(symlink(target, repo_path(d, link)), 0);
    }
    char cfg[1024];
    snprintf(cfg, sizeof cfg, "%s/config.json", rel);
    repo_write(d, cfg, "{\"architectures\": [\"DistilBertForSequenceClassification\"], \"dim\": ");
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void repo_dir_remove(repo_dir *d) {
    nftw(d->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- repositories ---- */

static serving_options options(const repo_dir *d) {
    return (serving_options){.repository = d->root,
                             .engine_threads = 1,
                             .max_batch_size = 4,
                             .max_queue_delay_us = 1000,
                             .max_queue_size = 1000};
}

static void sleep_us(long us) {
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static void wait_settled(serving_repo *r) {
    uint64_t until = serving_now_us() + WAIT_US;
    while (!serving_repo_is_settled(r)) {
        if (serving_now_us() > until)
            fail_msg("the repository did not settle");
        sleep_us(1000);
    }
}

/* Creates and starts a repository over d and waits until it settled. */
static serving_repo *repo_open(const serving_options *o, metrics_registry *m) {
    serving_repo *r = NULL;
    serving_error err = {0};
    int rc = serving_repo_create(o, m, &r, &err);
    if (rc)
        fail_msg("serving_repo_create: %s", err.message);
    assert_int_equal(serving_repo_start(r), 0);
    wait_settled(r);
    return r;
}

static serving_version *acquire_ok(serving_repo *r, const char *model, long version) {
    serving_version *v = NULL;
    serving_error err = {0};
    int rc = serving_acquire(r, model, version, &v, &err);
    if (rc)
        fail_msg("acquire %s/%ld: %s %s", model ? model : "(default)", version,
                 serving_status_name(rc), err.message);
    assert_non_null(v);
    return v;
}

static void acquire_fails(serving_repo *r, const char *model, long version, int want,
                          const char *fragment) {
    serving_version *v = (serving_version *)&v; /* must be reset to NULL */
    serving_error err = {0};
    int rc = serving_acquire(r, model, version, &v, &err);
    if (rc != want)
        fail_msg("acquire %s/%ld: got %s, want %s", model ? model : "(default)", version,
                 serving_status_name(rc), serving_status_name(want));
    assert_null(v);
    assert_int_equal(err.status, want);
    if (fragment && !strstr(err.message, fragment))
        fail_msg("'%s' not in '%s'", fragment, err.message);
}

static serving_version_status *list(serving_repo *r, size_t *n) {
    serving_version_status *l = NULL;
    assert_int_equal(serving_repo_list(r, &l, n), 0);
    assert_non_null(l);
    return l;
}

/* ---- jobs ---- */

/* Counts completions; on_done only locks, counts and signals. */
typedef struct tracker {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int n_done;
} tracker;

typedef struct test_job {
    serving_job job;
    tracker *t;
    atomic_int calls;
    int seq; /* order of completion among all jobs of the test binary */
    const char *texts[16];
    size_t lens[16];
    float probs[16 * 8];
} test_job;

static void tracker_init(tracker *t) {
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, NULL);
    t->n_done = 0;
}

static void tracker_fini(tracker *t) {
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->cond);
}

static atomic_int completions;

static void on_done(serving_job *job, void *user) {
    test_job *tj = user;
    (void)job;
    tj->seq = atomic_fetch_add(&completions, 1);
    atomic_fetch_add(&tj->calls, 1);
    pthread_mutex_lock(&tj->t->lock);
    tj->t->n_done++;
    pthread_cond_broadcast(&tj->t->cond);
    pthread_mutex_unlock(&tj->t->lock);
}

/* Returns 0 once n jobs completed, -1 after WAIT_US. Any thread. */
static int tracker_wait(tracker *t, int n) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += WAIT_US / 1000000u;
    int ok = 0;
    pthread_mutex_lock(&t->lock);
    while (t->n_done < n)
        if (pthread_cond_timedwait(&t->cond, &t->lock, &ts) != 0)
            break;
    ok = t->n_done >= n;
    pthread_mutex_unlock(&t->lock);
    return ok ? 0 : -1;
}

static void job_fill(test_job *tj, tracker *t, const char *const *texts, size_t n) {
    assert_true(n <= 16);
    memset(tj, 0, sizeof *tj);
    tj->t = t;
    atomic_init(&tj->calls, 0);
    for (size_t i = 0; i < n; i++) {
        tj->texts[i] = texts[i];
        tj->lens[i] = strlen(texts[i]);
    }
    tj->job = (serving_job){.texts = tj->texts, .lens = tj->lens, .n = n, .probs = tj->probs,
                            .on_done = on_done, .user = tj};
}

static const char *const pool[] = {
    "this movie was wonderful",
    "terrible, boring and far too long",
    "ok",
    "I would watch it again tomorrow, with friends, and with popcorn",
    "Ünïcödé text, with accents: café, naïve, résumé",
    "meh.",
    "the plot made no sense at all but the music was lovely",
    "",
    "!!!",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "The Quick Brown Fox Jumps Over The Lazy Dog",
    "日本語のテキスト",
};
#define POOL_N (sizeof pool / sizeof pool[0])

/* Checks job probs against engine_classify of the same texts on `ref`. */
static void assert_probs_match(engine_model *ref, const test_job *tj) {
    const engine_model_info *info = engine_model_get_info(ref);
    size_t K = (size_t)info->n_labels;
    float want[16 * 8];
    engine_error err = {0};
    int rc = engine_classify(ref, tj->texts, tj->lens, tj->job.n, NULL, want, &err);
    if (rc)
        fail_msg("engine_classify: %s", err.message);
    for (size_t i = 0; i < tj->job.n * K; i++)
        if (fabsf(want[i] - tj->probs[i]) > PROB_TOL)
            fail_msg("prob %zu: scheduler %.9g, engine %.9g", i, (double)tj->probs[i], (double)want[i]);
}

/* ---- metrics text ---- */

/* Sum of the samples on lines that start with `prefix`. */
static double sum_samples(const char *text, const char *prefix, int *n_lines) {
    double sum = 0;
    int n = 0;
    size_t k = strlen(prefix);
    for (const char *line = text; line && *line;) {
        if (strncmp(line, prefix, k) == 0) {
            const char *sp = strchr(line, ' ');
            const char *nl = strchr(line, '\n');
            if (sp && (!nl || sp < nl)) {
                sum += strtod(sp + 1, NULL);
                n++;
            }
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    if (n_lines)
        *n_lines = n;
    return sum;
}

/* The value of the sample whose series is exactly `series`; fails if absent. */
static double sample(const char *text, const char *series) {
    size_t k = strlen(series);
    for (const char *line = text; line && *line;) {
        if (strncmp(line, series, k) == 0 && line[k] == ' ')
            return strtod(line + k + 1, NULL);
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    fail_msg("no sample %s", series);
    return NAN;
}

/* ======================================================================== */

static void test_status_names(void **state) {
    (void)state;
    assert_string_equal(serving_status_name(SERVING_OK), "SERVING_OK");
    assert_string_equal(serving_status_name(SERVING_EFULL), "SERVING_EFULL");
    assert_string_equal(serving_status_name(SERVING_EIO), "SERVING_EIO");
    assert_string_equal(serving_status_name(-1000), "SERVING_UNKNOWN");
    assert_string_equal(serving_status_message(SERVING_ETIMEOUT), "the request's deadline passed");
    assert_non_null(serving_status_message(12345));
    assert_string_equal(serving_state_name(SERVING_STATE_LOADING), "loading");
    assert_string_equal(serving_state_name(SERVING_STATE_AVAILABLE), "available");
    assert_string_equal(serving_state_name(SERVING_STATE_UNLOADING), "unloading");
    assert_string_equal(serving_state_name(SERVING_STATE_FAILED), "failed");
}

static void test_missing_repository(void **state) {
    (void)state;
    metrics_registry *m = metrics_registry_create();
    serving_options o = {.repository = "/nonexistent/aiserve-repository", .max_batch_size = 1,
                         .max_queue_size = 1};
    serving_repo *r = (serving_repo *)&o;
    serving_error err = {0};
    assert_int_equal(serving_repo_create(&o, m, &r, &err), SERVING_EIO);
    assert_null(r);
    assert_int_equal(err.status, SERVING_EIO);
    assert_non_null(strstr(err.message, "/nonexistent/aiserve-repository"));
    serving_repo_destroy(NULL);
    metrics_registry_destroy(m);
}

/* What the scan takes and ignores, the state before and after loading, the
 * newest version serving, and what the listing says about it. */
static void test_scan_and_load(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link(&d, "sentiment", "1", "distilbert-f32");
    repo_link(&d, "sentiment", "2", "distilbert-f16");
    repo_link(&d, "sentiment", "010", "distilbert-bf16");   /* leading zero */
    repo_link(&d, "sentiment", "0", "distilbert-bf16");     /* not positive */
    repo_link(&d, "sentiment", "v3", "distilbert-bf16");    /* not an integer */
    repo_link(&d, "sentiment", ".4", "distilbert-bf16");    /* dotfile */
    repo_link(&d, "sentiment", "+5", "distilbert-bf16");    /* sign */
    repo_link(&d, "sentiment", "1234567890", "distilbert-bf16"); /* too long */
    repo_write(&d, "sentiment/7", "a file, not a directory\n");
    repo_link(&d, "toxic", "3", "bert-multilabel");
    repo_link(&d, ".hidden", "1", "distilbert-f32");         /* dotfile model */
    repo_link(&d, "bad name", "1", "distilbert-f32");        /* invalid character */
    repo_mkdir(&d, "noversions/latest");                     /* no version dirs */
    repo_write(&d, "README", "not a model\n");

    metrics_registry *m = metrics_registry_create();
    serving_options o = options(&d);
    serving_repo *r = NULL;
    serving_error err = {0};
    assert_int_equal(serving_repo_create(&o, m, &r, &err), 0);

    /* Scanned, not loaded: every version loading, nothing ready. */
    size_t n = 0;
    serving_version_status *l = list(r, &n);
    assert_int_equal(n, 3);
    assert_string_equal(l[0].model, "sentiment");
    assert_int_equal(l[0].version, 1);
    assert_string_equal(l[1].model, "sentiment");
    assert_int_equal(l[1].version, 2);
    assert_string_equal(l[2].model, "toxic");
    assert_int_equal(l[2].version, 3);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(l[i].state, SERVING_STATE_LOADING);
        assert_int_equal(l[i].has_info, 0);
    }
    free(l);
    assert_int_equal(serving_repo_is_ready(r), 0);
    assert_int_equal(serving_repo_is_settled(r), 0);
    acquire_fails(r, "sentiment", 0, SERVING_ENOTREADY, "loading");
    acquire_fails(r, "noversions", 0, SERVING_ENOTFOUND, "noversions");
    acquire_fails(r, ".hidden", 0, SERVING_ENOTFOUND, NULL);
    /* Two models, none configured: the default is "sentiment". */
    assert_string_equal(serving_repo_default_model(r), "sentiment");

    assert_int_equal(serving_repo_start(r), 0);
    assert_int_equal(serving_repo_start(r), 0); /* a second start is a no-op */
    wait_settled(r);
    assert_int_equal(serving_repo_is_ready(r), 1);

    /* The newest version serves; the older one, never tried, is not listed. */
    l = list(r, &n);
    assert_int_equal(n, 2);
    assert_string_equal(l[0].model, "sentiment");
    assert_int_equal(l[0].version, 2);
    assert_int_equal(l[0].state, SERVING_STATE_AVAILABLE);
    assert_string_equal(l[0].error, "");
    assert_true(l[0].load_seconds > 0);
    assert_int_equal(l[0].has_info, 1);
    assert_string_equal(l[0].architecture, "DistilBertForSequenceClassification");
    assert_string_equal(l[0].info.architecture, "DistilBertForSequenceClassification");
    assert_string_equal(l[0].model_type, "distilbert");
    assert_string_equal(l[0].dtype, "F16");
    assert_int_equal(l[0].info.task, ENGINE_TASK_CLASSIFY);
    assert_int_equal(l[0].info.n_labels, 2);
    assert_int_equal(l[0].n_labels_listed, 2);
    assert_string_equal(l[0].labels[0], "NEGATIVE");
    assert_string_equal(l[0].labels[1], "POSITIVE");
    assert_string_equal(l[1].model, "toxic");
    assert_int_equal(l[1].version, 3);
    assert_int_equal(l[1].state, SERVING_STATE_AVAILABLE);
    assert_int_equal(l[1].info.n_labels, 3);
    assert_int_equal(l[1].info.multi_label, 1);
    assert_int_equal(l[1].n_labels_listed, 3);
    assert_string_equal(l[1].labels[2], "off_topic");
    free(l);

    serving_version *v = acquire_ok(r, NULL, 0); /* the default model, newest */
    assert_string_equal(serving_version_model(v), "sentiment");
    assert_int_equal(serving_version_number(v), 2);
    assert_int_equal(serving_version_info(v)->n_labels, 2);
    assert_string_equal(serving_version_label(v, 1), "POSITIVE");
    assert_null(serving_version_label(v, 2));
    assert_int_equal(serving_queue_depth(v), 0);
    serving_version_retain(v);
    serving_version_release(v);
    serving_version_release(v);
    v = acquire_ok(r, "sentiment", 2);
    serving_version_release(v);
    v = acquire_ok(r, "toxic", 3);
    assert_string_equal(serving_version_label(v, 0), "toxic");
    serving_version_release(v);

    acquire_fails(r, "sentiment", 1, SERVING_ENOVERSION, "version 1"); /* never loaded, dropped */
    acquire_fails(r, "sentiment", 10, SERVING_ENOVERSION, "version 10");
    acquire_fails(r, "toxic", 2, SERVING_ENOVERSION, NULL);
    acquire_fails(r, "nope", 0, SERVING_ENOTFOUND, "'nope'");
    acquire_fails(r, "nope", 1, SERVING_ENOTFOUND, NULL);

    serving_repo_destroy(r);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}


/* Creates a repository over d with the given default model (scan only). */
static serving_repo *repo_scan(const repo_dir *d, const char *default_model, metrics_registry *m) {
    serving_options o = options(d);
    o.default_model = default_model;
    serving_repo *r = NULL;
    serving_error err = {0};
    int rc = serving_repo_create(&o, m, &r, &err);
    if (rc)
        fail_msg("serving_repo_create: %s", err.message);
    return r;
}

/* Configured, else the only model, else "sentiment". One registry per
 * repository: the serving families can be registered once per registry. */
static void test_default_model_rules(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link(&d, "only", "1", "distilbert-f32");

    metrics_registry *m = metrics_registry_create();
    serving_repo *r = repo_scan(&d, NULL, m);
    assert_string_equal(serving_repo_default_model(r), "only");
    serving_repo_destroy(r);
    metrics_registry_destroy(m);

    m = metrics_registry_create();
    r = repo_scan(&d, "", m); /* "" is not configured */
    assert_string_equal(serving_repo_default_model(r), "only");
    serving_repo_destroy(r);
    metrics_registry_destroy(m);

    m = metrics_registry_create();
    r = repo_scan(&d, "other", m); /* configured wins, even over the only model */
    assert_string_equal(serving_repo_default_model(r), "other");
    acquire_fails(r, NULL, 0, SERVING_ENOTFOUND, "'other'");
    serving_repo_destroy(r);
    metrics_registry_destroy(m);

    repo_link(&d, "second", "1", "distilbert-f32");
    m = metrics_registry_create();
    r = repo_scan(&d, NULL, m); /* two models, no "sentiment" among them */
    assert_string_equal(serving_repo_default_model(r), "sentiment");
    acquire_fails(r, NULL, 0, SERVING_ENOTFOUND, "'sentiment'");
    serving_repo_destroy(r);
    metrics_registry_destroy(m);

    m = metrics_registry_create();
    r = repo_scan(&d, "second", m);
    assert_string_equal(serving_repo_default_model(r), "second");
    serving_repo_destroy(r);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);

    /* An empty repository: "sentiment", settles, never ready. */
    repo_dir_init(&d);
    m = metrics_registry_create();
    serving_options o = options(&d);
    r = repo_open(&o, m);
    assert_string_equal(serving_repo_default_model(r), "sentiment");
    assert_int_equal(serving_repo_is_ready(r), 0);
    size_t n = 1;
    serving_version_status *l = list(r, &n);
    assert_int_equal(n, 0);
    free(l);
    serving_repo_destroy(r);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}

/* The newest version is broken: it is FAILED with a message and the next
 * older one serves. A model with no loadable version keeps the repository
 * from being ready and answers ENOTREADY. */
static void test_broken_versions(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link(&d, "fallback", "1", "distilbert-f32");
    repo_link(&d, "fallback", "2", "distilbert-relu-3label");
    repo_broken(&d, "fallback", "3", "distilbert-f32");
    repo_broken(&d, "dead", "1", "bert-f32");
    repo_mkdir(&d, "dead/2"); /* an empty version directory */

    metrics_registry *m = metrics_registry_create();
    serving_options o = options(&d);
    serving_repo *r = repo_open(&o, m);
    assert_int_equal(serving_repo_is_settled(r), 1);
    assert_int_equal(serving_repo_is_ready(r), 0);

    size_t n = 0;
    serving_version_status *l = list(r, &n);
    assert_int_equal(n, 4);
    /* Sorted by model, then oldest version first. */
    assert_string_equal(l[0].model, "dead");
    assert_int_equal(l[0].version, 1);
    assert_int_equal(l[0].state, SERVING_STATE_FAILED);
    assert_true(strlen(l[0].error) > 0);
    assert_non_null(strstr(l[0].error, "config.json"));
    assert_int_equal(l[0].has_info, 0);
    assert_string_equal(l[1].model, "dead");
    assert_int_equal(l[1].version, 2);
    assert_int_equal(l[1].state, SERVING_STATE_FAILED);
    assert_true(strlen(l[1].error) > 0);
    assert_string_equal(l[2].model, "fallback");
    assert_int_equal(l[2].version, 2);
    assert_int_equal(l[2].state, SERVING_STATE_AVAILABLE);
    assert_int_equal(l[2].info.n_labels, 3);
    assert_string_equal(l[3].model, "fallback");
    assert_int_equal(l[3].version, 3);
    assert_int_equal(l[3].state, SERVING_STATE_FAILED);
    assert_non_null(strstr(l[3].error, "config.json"));
    free(l);

    serving_version *v = acquire_ok(r, "fallback", 0);
    assert_int_equal(serving_version_number(v), 2);
    serving_version_release(v);
    acquire_fails(r, "fallback", 3, SERVING_ENOTREADY, "no loadable version");
    acquire_fails(r, "fallback", 1, SERVING_ENOVERSION, NULL);
    acquire_fails(r, "fallback", 4, SERVING_ENOVERSION, NULL);
    acquire_fails(r, "dead", 0, SERVING_ENOTREADY, "no loadable version");
    acquire_fails(r, "dead", 1, SERVING_ENOTREADY, NULL);
    acquire_fails(r, "missing", 0, SERVING_ENOTFOUND, NULL);

    /* The state gauge says the same. */
    char *text = metrics_render(m, NULL);
    assert_non_null(text);
    assert_true(sample(text, "aiserve_model_state{model=\"fallback\",version=\"3\",state=\"failed\"}") == 1);
    assert_true(sample(text, "aiserve_model_state{model=\"fallback\",version=\"3\",state=\"loading\"}") == 0);
    assert_true(sample(text, "aiserve_model_state{model=\"fallback\",version=\"2\",state=\"available\"}") == 1);
    assert_true(sample(text, "aiserve_model_state{model=\"dead\",version=\"1\",state=\"failed\"}") == 1);
    free(text);

    serving_repo_destroy(r);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}

/* Listing while the loader works (as /v1/models may during startup): every
 * snapshot is consistent, and states only move forward. */
static void test_list_while_loading(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link(&d, "a", "1", "distilbert-f32");
    repo_broken(&d, "a", "2", "distilbert-f32");
    repo_broken(&d, "b", "1", "bert-f32");
    repo_link(&d, "c", "1", "bert-f16");
    metrics_registry *m = metrics_registry_create();
    serving_options o = options(&d);
    serving_repo *r = NULL;
    serving_error err = {0};
    assert_int_equal(serving_repo_create(&o, m, &r, &err), 0);
    assert_int_equal(serving_repo_start(r), 0);
    uint64_t until = serving_now_us() + WAIT_US;
    int settled = 0, snapshots = 0;
    while (!settled) {
        settled = serving_repo_is_settled(r); /* one more listing after it settled */
        size_t n = 0;
        serving_version_status *l = list(r, &n);
        for (size_t i = 0; i < n; i++) {
            switch (l[i].state) {
            case SERVING_STATE_LOADING:
                assert_int_equal(l[i].has_info, 0);
                break;
            case SERVING_STATE_AVAILABLE:
                assert_int_equal(l[i].has_info, 1);
                assert_true(l[i].info.n_labels > 0);
                break;
            case SERVING_STATE_FAILED:
                assert_non_null(strstr(l[i].error, "config.json"));
                break;
            default:
                fail_msg("%s/%ld is %s while loading", l[i].model, l[i].version,
                         serving_state_name(l[i].state));
            }
        }
        free(l);
        snapshots++;
        if (serving_now_us() > until)
            fail_msg("the repository did not settle");
    }
    assert_true(snapshots >= 1);
    size_t n = 0;
    serving_version_status *l = list(r, &n);
    assert_int_equal(n, 4);
    assert_int_equal(l[0].state, SERVING_STATE_AVAILABLE); /* a/1 */
    assert_int_equal(l[1].state, SERVING_STATE_FAILED);    /* a/2 */
    assert_int_equal(l[2].state, SERVING_STATE_FAILED);    /* b/1 */
    assert_int_equal(l[3].state, SERVING_STATE_AVAILABLE); /* c/1 */
    free(l);
    serving_repo_destroy(r);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}

/* ---- scheduler against the engine ---- */

#define N_SUBMITTERS 4
#define JOBS_PER_SUBMITTER 12

typedef struct submitter {
    serving_version *v;
    tracker *t;
    test_job *jobs;
    int index;
    int rc; /* first failing serving_submit status, or 0 */
} submitter;

static void *submit_main(void *arg) {
    submitter *s = arg;
    for (int j = 0; j < JOBS_PER_SUBMITTER; j++) {
        test_job *tj = &s->jobs[j];
        size_t n = 1 + (size_t)(s->index * 7 + j * 3) % 10; /* 1..10 texts */
        const char *texts[16];
        for (size_t i = 0; i < n; i++)
            texts[i] = pool[(size_t)(s->index + j + i * 5) % POOL_N];
        job_fill(tj, s->t, texts, n);
        int rc = serving_submit(s->v, &tj->job);
        if (rc && !s->rc)
            s->rc = rc;
        if (j % 3 == 0)
            sleep_us(200); /* let some batches form between arrivals */
    }
    return NULL;
}

static void test_scheduler_matches_engine(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link(&d, "m", "1", "distilbert-relu-3label");
    metrics_registry *m = metrics_registry_create();
    serving_options o = options(&d); /* max_batch_size 4 */
    serving_repo *r = repo_open(&o, m);
    serving_version *v = acquire_ok(r, "m", 0);

    engine_model *ref = NULL;
    engine_options eo = {.n_threads = 1};
    engine_error eerr = {0};
    assert_int_equal(engine_model_load(FIXTURES "/distilbert-relu-3label", &eo, &ref, &eerr), 0);

    tracker t;
    tracker_init(&t);
    test_job *jobs = calloc(N_SUBMITTERS * JOBS_PER_SUBMITTER, sizeof *jobs);
    assert_non_null(jobs);
    submitter subs[N_SUBMITTERS];
    pthread_t threads[N_SUBMITTERS];
    for (int i = 0; i < N_SUBMITTERS; i++) {
        subs[i] = (submitter){.v = v, .t = &t, .jobs = jobs + i * JOBS_PER_SUBMITTER, .index = i};
        assert_int_equal(pthread_create(&threads[i], NULL, submit_main, &subs[i]), 0);
    }
    for (int i = 0; i < N_SUBMITTERS; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(subs[i].rc, 0);
    }
    const int total = N_SUBMITTERS * JOBS_PER_SUBMITTER;
    if (tracker_wait(&t, total) != 0)
        fail_msg("only %d of %d jobs completed", t.n_done, total);

    int max_seen = 0;
    for (int i = 0; i < total; i++) {
        const test_job *tj = &jobs[i];
        assert_int_equal(tj->job.status, 0);
        assert_string_equal(tj->job.error, "");
        assert_true(tj->job.batch_size >= 1);
        assert_true(tj->job.batch_size <= o.max_batch_size);
        assert_true(tj->job.n_tokens > 0 || tj->job.n < 4);
        if (tj->job.batch_size > max_seen)
            max_seen = tj->job.batch_size;
        assert_probs_match(ref, tj);
    }
    /* Jobs of up to 10 texts had to be split, so full batches happened. */
    assert_int_equal(max_seen, o.max_batch_size);
    assert_int_equal(serving_queue_depth(v), 0);

    serving_version_release(v);
    serving_repo_destroy(r);
    /* The batcher is joined: no completion can still be on its way. */
    for (int i = 0; i < total; i++)
        assert_int_equal(atomic_load(&jobs[i].calls), 1);
    assert_int_equal(t.n_done, total);
    free(jobs);
    tracker_fini(&t);
    engine_model_free(ref);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}

/* One text the engine refuses (invalid UTF-8) fails its own job only, both
 * inside one batch and when the job spans two batches. */
static void test_bad_text_isolated(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link(&d, "m", "1", "distilbert-f32");
    metrics_registry *m = metrics_registry_create();
    serving_options o = options(&d);
    o.max_batch_size = 4;
    o.max_queue_delay_us = 60 * 1000000; /* batches start only when full */
    serving_repo *r = repo_open(&o, m);
    serving_version *v = acquire_ok(r, "m", 0);
    engine_model *ref = NULL;
    engine_options eo = {.n_threads = 1};
    engine_error eerr = {0};
    assert_int_equal(engine_model_load(FIXTURES "/distilbert-f32", &eo, &ref, &eerr), 0);

    tracker t;
    tracker_init(&t);
    static test_job a, b, c, e, f;
    const char *ta[] = {pool[0], pool[1]};
    const char *tb[] = {"fine", "\xff\xfe broken"};
    const char *tc[] = {pool[2], pool[3], pool[4], pool[5], pool[6], pool[7]};
    const char *te[] = {pool[8], "\xc3", pool[9], pool[10], pool[11]};
    const char *tf[] = {pool[1]};
    /* Batch 1: a (2) + b (2). */
    job_fill(&a, &t, ta, 2);
    job_fill(&b, &t, tb, 2);
    assert_int_equal(serving_submit(v, &a.job), 0);
    assert_int_equal(serving_submit(v, &b.job), 0);
    if (tracker_wait(&t, 2) != 0)
        fail_msg("the first batch did not complete");
    assert_int_equal(a.job.status, 0);
    assert_probs_match(ref, &a);
    assert_int_equal(b.job.status, SERVING_EINPUT);
    assert_true(strlen(b.job.error) > 0);

    /* c (6 texts) rides batches 2 and 3 whole; e (5 texts, bad second
     * text) fails in batch 3 and its last 3 texts come through in batch 4
     * with f (1 text), which must still succeed. */
    job_fill(&c, &t, tc, 6);
    job_fill(&e, &t, te, 5);
    job_fill(&f, &t, tf, 1);
    assert_int_equal(serving_submit(v, &c.job), 0);
    assert_int_equal(serving_submit(v, &e.job), 0);
    assert_int_equal(serving_submit(v, &f.job), 0);
    if (tracker_wait(&t, 5) != 0)
        fail_msg("only %d of 5 jobs completed", t.n_done);
    assert_int_equal(c.job.status, 0);
    assert_int_equal(c.job.batch_size, 4);
    assert_probs_match(ref, &c);
    assert_int_equal(e.job.status, SERVING_EINPUT);
    assert_true(strlen(e.job.error) > 0);
    assert_int_equal(f.job.status, 0);
    assert_int_equal(f.job.batch_size, 4);
    assert_probs_match(ref, &f);

    serving_version_release(v);
    serving_repo_destroy(r);
    assert_int_equal(atomic_load(&a.calls), 1);
    assert_int_equal(atomic_load(&b.calls), 1);
    assert_int_equal(atomic_load(&c.calls), 1);
    assert_int_equal(atomic_load(&e.calls), 1);
    assert_int_equal(atomic_load(&f.calls), 1);
    tracker_fini(&t);
    engine_model_free(ref);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}

/* The queue holds at most max_queue_size texts; an empty queue takes a
 * larger job; refused jobs never complete; queued ones complete with
 * ESTOPPED when the repository goes away. */
static void test_queue_bound_and_stop(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link(&d, "a", "1", "distilbert-f32");
    repo_link(&d, "b", "1", "distilbert-f32");
    metrics_registry *m = metrics_registry_create();
    serving_options o = options(&d);
    o.max_batch_size = 64;
    o.max_queue_size = 4;
    o.max_queue_delay_us = 60 * 1000000; /* nothing leaves the queue during the test */
    serving_repo *r = repo_open(&o, m);
    serving_version *va = acquire_ok(r, "a", 0);
    serving_version *vb = acquire_ok(r, "b", 0);

    tracker t;
    tracker_init(&t);
    static test_job j[8];
    const char *texts[10];
    for (size_t i = 0; i < 10; i++)
        texts[i] = pool[i % POOL_N];
    job_fill(&j[0], &t, texts, 0);
    assert_int_equal(serving_submit(va, &j[0].job), SERVING_EINPUT); /* no texts */
    job_fill(&j[0], &t, texts, 3);
    job_fill(&j[1], &t, texts, 1);
    job_fill(&j[2], &t, texts, 1);
    job_fill(&j[3], &t, texts, 2);
    assert_int_equal(serving_submit(va, &j[0].job), 0);
    assert_int_equal(serving_submit(va, &j[1].job), 0); /* 4 of 4 */
    assert_int_equal(serving_submit(va, &j[2].job), SERVING_EFULL);
    assert_int_equal(serving_submit(va, &j[3].job), SERVING_EFULL);
    assert_int_equal(serving_queue_depth(va), 4);

    job_fill(&j[4], &t, texts, 10); /* larger than the bound, empty queue */
    job_fill(&j[5], &t, texts, 1);
    assert_int_equal(serving_submit(vb, &j[4].job), 0);
    assert_int_equal(serving_submit(vb, &j[5].job), SERVING_EFULL);
    assert_int_equal(serving_queue_depth(vb), 10);

    char *text = metrics_render(m, NULL);
    assert_true(sample(text, "aiserve_queue_depth{model=\"a\",version=\"1\"}") == 4);
    assert_true(sample(text, "aiserve_queue_depth{model=\"b\",version=\"1\"}") == 10);
    free(text);

    /* Still queued: nothing completed yet. */
    pthread_mutex_lock(&t.lock);
    assert_int_equal(t.n_done, 0);
    pthread_mutex_unlock(&t.lock);

    serving_version_release(va);
    serving_version_release(vb);
    serving_repo_destroy(r);
    assert_int_equal(t.n_done, 3);
    for (int i = 0; i < 6; i++) {
        int accepted = i == 0 || i == 1 || i == 4;
        assert_int_equal(atomic_load(&j[i].calls), accepted);
        if (accepted) {
            assert_int_equal(j[i].job.status, SERVING_ESTOPPED);
            assert_true(strlen(j[i].job.error) > 0);
        }
    }
    tracker_fini(&t);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}

/* Background jobs (batch jobs) run only when no online job waits: with an
 * online job waiting for its batch to fill (2 s), two 16-text background
 * jobs submitted behind it do not start, and a second online job submitted
 * after them joins the first one's batch and both finish before any
 * background text runs; then the background jobs run, in batches of at
 * most max_batch_size, with the engine's answers; they are not bounded by
 * max_queue_size and do not count in the online queue's depth. */
static void test_background_yields_to_online(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link(&d, "a", "1", "distilbert-f32");
    metrics_registry *m = metrics_registry_create();
    serving_options o = options(&d);
    o.max_batch_size = 2;
    o.max_queue_size = 4;
    o.max_queue_delay_us = 2 * 1000000;
    serving_repo *r = repo_open(&o, m);
    serving_version *v = acquire_ok(r, "a", 0);
    engine_model *ref = NULL;
    engine_options eo = {.n_threads = 1};
    engine_error eerr = {0};
    assert_int_equal(engine_model_load(FIXTURES "/distilbert-f32", &eo, &ref, &eerr), 0);

    tracker t;
    tracker_init(&t);
    static test_job j[4], alone;
    const char *texts[16];
    for (size_t i = 0; i < 16; i++)
        texts[i] = pool[(i + 1) % POOL_N];
    /* No online traffic yet: a background job's batches are full. */
    job_fill(&alone, &t, texts, 4);
    alone.job.background = 1;
    assert_int_equal(serving_submit(v, &alone.job), 0);
    assert_int_equal(tracker_wait(&t, 1), 0);
    assert_int_equal(alone.job.status, 0);
    assert_int_equal(alone.job.batch_size, 2); /* two full batches, not four of one */
    assert_probs_match(ref, &alone);

    job_fill(&j[0], &t, texts, 1);  /* online, waits for company */
    job_fill(&j[1], &t, texts, 16); /* background */
    job_fill(&j[2], &t, texts, 16); /* background */
    job_fill(&j[3], &t, texts + 3, 1); /* online: fills the batch */
    j[1].job.background = j[2].job.background = 1;
    assert_int_equal(serving_submit(v, &j[0].job), 0);
    assert_int_equal(serving_submit(v, &j[1].job), 0); /* 16 > max_queue_size: not bounded */
    assert_int_equal(serving_submit(v, &j[2].job), 0);
    assert_true(serving_queue_depth(v) <= 1);
    assert_int_equal(serving_submit(v, &j[3].job), 0);
    assert_int_equal(tracker_wait(&t, 5), 0);
    /* Completion order: both online jobs before either background job. */
    assert_true(j[0].seq < j[1].seq && j[0].seq < j[2].seq);
    assert_true(j[3].seq < j[1].seq && j[3].seq < j[2].seq);
    assert_int_equal(j[0].job.batch_size, 2);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(j[i].job.status, 0);
        assert_probs_match(ref, &j[i]);
    }
    /* With online traffic about, background batches hold a quarter of
     * max_batch_size (rounded up): 1. */
    assert_int_equal(j[1].job.batch_size, 1);
    assert_int_equal(j[2].job.batch_size, 1);
    serving_version_release(v);
    serving_repo_destroy(r);
    engine_model_free(ref);
    tracker_fini(&t);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}

/* A job whose deadline passed before it started is answered ETIMEOUT
 * without computing anything; its neighbours are not affected. */
static void test_deadline(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link(&d, "m", "1", "distilbert-f32");
    metrics_registry *m = metrics_registry_create();
    serving_options o = options(&d);
    o.max_batch_size = 4;
    o.max_queue_delay_us = 60 * 1000000; /* the batch starts when 4 texts wait */
    serving_repo *r = repo_open(&o, m);
    serving_version *v = acquire_ok(r, "m", 0);

    tracker t;
    tracker_init(&t);
    static test_job ok1, late, ok2;
    const char *texts[] = {pool[0], pool[1], pool[2]};
    job_fill(&ok1, &t, texts, 1);
    job_fill(&late, &t, texts, 2);
    job_fill(&ok2, &t, texts, 3);
    late.job.deadline_us = serving_now_us() - 1;            /* already past */
    ok2.job.deadline_us = serving_now_us() + 3600000000ull; /* an hour away */
    assert_int_equal(serving_submit(v, &ok1.job), 0);
    assert_int_equal(serving_submit(v, &late.job), 0);
    assert_int_equal(serving_queue_depth(v), 3);
    assert_int_equal(serving_submit(v, &ok2.job), 0); /* 6 texts: a batch starts */
    if (tracker_wait(&t, 3) != 0)
        fail_msg("only %d of 3 jobs completed", t.n_done);
    assert_int_equal(ok1.job.status, 0);
    assert_int_equal(ok2.job.status, 0);
    assert_int_equal(late.job.status, SERVING_ETIMEOUT);
    assert_non_null(strstr(late.job.error, "deadline"));
    assert_int_equal(late.job.batch_size, 0);
    assert_int_equal(late.job.n_tokens, 0);
    /* ok1 and ok2's 4 texts filled one batch once late's 2 were dropped. */
    assert_int_equal(ok1.job.batch_size, 4);
    assert_int_equal(ok2.job.batch_size, 4);

    char *text = metrics_render(m, NULL);
    assert_true(sample(text, "aiserve_queue_timeouts_total{model=\"m\",version=\"1\"}") == 1);
    assert_true(sample(text, "aiserve_batches_total{model=\"m\",version=\"1\"}") == 1);
    free(text);

    serving_version_release(v);
    serving_repo_destroy(r);
    assert_int_equal(atomic_load(&ok1.calls), 1);
    assert_int_equal(atomic_load(&late.calls), 1);
    assert_int_equal(atomic_load(&ok2.calls), 1);
    tracker_fini(&t);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}

/* An embedding model loads (its warm-up embeds) but takes no classify jobs. */
static void test_embedding_through_scheduler(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link(&d, "embed", "1", "bert-base-embed");
    metrics_registry *m = metrics_registry_create();
    serving_options o = options(&d);
    serving_repo *r = repo_open(&o, m);
    assert_int_equal(serving_repo_is_ready(r), 1);
    serving_version *v = acquire_ok(r, NULL, 0);
    const engine_model_info *info = serving_version_info(v);
    assert_int_equal(info->task, ENGINE_TASK_EMBED);
    assert_int_equal(info->n_labels, 0);
    assert_null(serving_version_label(v, 0));

    /* No sentence-transformers files: mean pooling, L2-normalised, as
     * engine_embed computes it. */
    tracker t;
    tracker_init(&t);
    static test_job j;
    job_fill(&j, &t, pool, 3);
    const size_t H = (size_t)info->hidden;
    float *out = calloc(3 * H, sizeof *out), *want = calloc(3 * H, sizeof *want);
    j.job.probs = out;
    assert_int_equal(serving_submit(v, &j.job), 0);
    assert_int_equal(tracker_wait(&t, 1), 0);
    assert_int_equal(j.job.status, 0);
    assert_true(j.job.n_tokens > 3); /* counted for the embeddings API's usage */
    engine_model *ref = NULL;
    engine_options eo = {.n_threads = 1};
    engine_error eerr = {0};
    assert_int_equal(engine_model_load(FIXTURES "/bert-base-embed", &eo, &ref, &eerr), 0);
    assert_int_equal(engine_embed(ref, j.texts, j.lens, 3, ENGINE_POOL_MEAN, 1, want, &eerr), 0);
    for (size_t i = 0; i < 3 * H; i++)
        if (fabsf(out[i] - want[i]) > 1e-5f)
            fail_msg("embedding %zu: %g, engine %g", i, (double)out[i], (double)want[i]);
    engine_model_free(ref);
    free(out);
    free(want);
    serving_version_release(v);
    serving_repo_destroy(r);
    tracker_fini(&t);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}

/* ---- references outliving the repository ---- */

typedef struct holder {
    serving_version *v;
    atomic_int destroying; /* set just before serving_repo_destroy */
    int submit_rc, job_status, calls;
    char model[128];
    long number;
} holder;

static void *holder_main(void *arg) {
    holder *h = arg;
    while (!atomic_load(&h->destroying))
        sleep_us(100);
    sleep_us(50000); /* let the destroy get well under way */
    snprintf(h->model, sizeof h->model, "%s", serving_version_model(h->v));
    h->number = serving_version_number(h->v);
    (void)serving_version_info(h->v)->n_labels;
    (void)serving_version_label(h->v, 0);
    tracker t;
    tracker_init(&t);
    test_job *j = calloc(1, sizeof *j);
    if (j) {
        job_fill(j, &t, pool, 3);
        h->submit_rc = serving_submit(h->v, &j->job);
        if (h->submit_rc == 0 && tracker_wait(&t, 1) == 0)
            h->job_status = j->job.status;
        else
            h->job_status = 1; /* never completed */
    }
    serving_version_release(h->v);
    h->calls = j ? atomic_load(&j->calls) : -1;
    free(j);
    tracker_fini(&t);
    return NULL;
}

/* The repository is destroyed while another thread still holds a version:
 * nothing is freed under it, and its last release frees the rest (ASan
 * checks both). */
static void test_reference_outlives_destroy(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link(&d, "m", "1", "distilbert-f32");
    metrics_registry *m = metrics_registry_create();
    serving_options o = options(&d);
    serving_repo *r = repo_open(&o, m);
    holder *h = calloc(1, sizeof *h);
    assert_non_null(h);
    h->v = acquire_ok(r, "m", 1);
    atomic_init(&h->destroying, 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, holder_main, h), 0);
    atomic_store(&h->destroying, 1);
    serving_repo_destroy(r);
    pthread_join(th, NULL);
    assert_string_equal(h->model, "m");
    assert_int_equal(h->number, 1);
    /* Either the version still served (the repository let go of it and the
     * holder's reference kept it whole), or destroy stopped its scheduler
     * first and the submit was refused or answered ESTOPPED. */
    if (h->submit_rc == 0) {
        assert_int_equal(h->calls, 1);
        assert_true(h->job_status == 0 || h->job_status == SERVING_ESTOPPED);
    } else {
        assert_int_equal(h->submit_rc, SERVING_ESTOPPED);
        assert_int_equal(h->calls, 0);
    }
    free(h);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}

/* Destroying the repository with work queued answers every queued job
 * ESTOPPED exactly once, including one of several texts. */
static void test_destroy_with_queued_jobs(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link(&d, "m", "1", "distilbert-relu-3label");
    metrics_registry *m = metrics_registry_create();
    serving_options o = options(&d);
    o.max_batch_size = 32;
    o.max_queue_delay_us = 60 * 1000000;
    serving_repo *r = repo_open(&o, m);
    serving_version *v = acquire_ok(r, "m", 0);
    tracker t;
    tracker_init(&t);
    static test_job j[3];
    for (int i = 0; i < 3; i++) {
        job_fill(&j[i], &t, pool, (size_t)(1 + i * 4));
        assert_int_equal(serving_submit(v, &j[i].job), 0);
    }
    assert_int_equal(serving_queue_depth(v), 1 + 5 + 9);
    serving_version_release(v);
    serving_repo_destroy(r);
    assert_int_equal(t.n_done, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(atomic_load(&j[i].calls), 1);
        assert_int_equal(j[i].job.status, SERVING_ESTOPPED);
        assert_non_null(strstr(j[i].job.error, "shutting down"));
    }
    tracker_fini(&t);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}

/* After known traffic: predictions add up to the texts classified, per
 * label as the returned probabilities say, and batches were counted. */
static void test_metrics_after_traffic(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link(&d, "m", "1", "distilbert-relu-3label");
    metrics_registry *m = metrics_registry_create();
    serving_options o = options(&d);
    serving_repo *r = repo_open(&o, m);
    serving_version *v = acquire_ok(r, "m", 0);

    tracker t;
    tracker_init(&t);
    static test_job j[5];
    size_t n_texts = 0;
    for (int i = 0; i < 5; i++) {
        const char *texts[16];
        size_t n = (size_t)(1 + i * 2); /* 1 3 5 7 9 */
        for (size_t k = 0; k < n; k++)
            texts[k] = pool[(k + (size_t)i) % POOL_N];
        job_fill(&j[i], &t, texts, n);
        assert_int_equal(serving_submit(v, &j[i].job), 0);
        n_texts += n;
    }
    if (tracker_wait(&t, 5) != 0)
        fail_msg("only %d of 5 jobs completed", t.n_done);
    double per_label[3] = {0};
    size_t tokens = 0;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(j[i].job.status, 0);
        tokens += j[i].job.n_tokens;
        for (size_t k = 0; k < j[i].job.n; k++) {
            const float *p = j[i].probs + k * 3;
            int best = 0;
            for (int c = 1; c < 3; c++)
                if (p[c] > p[best])
                    best = c;
            per_label[best] += 1;
        }
    }

    char *text = metrics_render(m, NULL);
    assert_non_null(text);
    int n_lines = 0;
    double predicted = sum_samples(text, "aiserve_predictions_total{model=\"m\",version=\"1\",", &n_lines);
    assert_true(predicted == (double)n_texts);
    assert_true(n_lines >= 1);
    static const char *const labels[] = {"negative", "neutral", "positive"};
    for (int c = 0; c < 3; c++) {
        char series[160];
        snprintf(series, sizeof series,
                 "aiserve_predictions_total{model=\"m\",version=\"1\",label=\"%s\"}", labels[c]);
        int present = 0;
        double got = sum_samples(text, series, &present);
        assert_true(got == per_label[c]);
    }
    double batches = sample(text, "aiserve_batches_total{model=\"m\",version=\"1\"}");
    assert_true(batches > 0);
    assert_true(batches >= (double)((n_texts + 3) / 4)); /* at most 4 texts per batch */
    assert_true(batches <= (double)n_texts);
    assert_true(sample(text, "aiserve_batch_size_count{model=\"m\",version=\"1\"}") == batches);
    assert_true(sample(text, "aiserve_batch_size_sum{model=\"m\",version=\"1\"}") == (double)n_texts);
    assert_true(sample(text, "aiserve_inference_seconds_count{model=\"m\",version=\"1\"}") == batches);
    assert_true(sample(text, "aiserve_queue_wait_seconds_count{model=\"m\",version=\"1\"}") == 5);
    assert_true(sample(text, "aiserve_tokens_total{model=\"m\",version=\"1\"}") >= (double)tokens);
    assert_true(sample(text, "aiserve_tokens_total{model=\"m\",version=\"1\"}") >= 2.0 * (double)n_texts);
    assert_true(sample(text, "aiserve_queue_depth{model=\"m\",version=\"1\"}") == 0);
    assert_true(sample(text, "aiserve_queue_timeouts_total{model=\"m\",version=\"1\"}") == 0);
    assert_true(sample(text, "aiserve_model_state{model=\"m\",version=\"1\",state=\"available\"}") == 1);
    assert_true(sample(text, "aiserve_model_load_seconds{model=\"m\",version=\"1\"}") > 0);
    free(text);

    serving_version_release(v);
    serving_repo_destroy(r);
    tracker_fini(&t);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}

/* ---- serving_predict ---- */

#define MODELS AISERVE_SOURCE_DIR "/models"

/* <root>/<model>/<version> -> the bundled sentiment model. */
static void repo_link_sentiment(const repo_dir *d, const char *model, const char *version) {
    repo_mkdir(d, model);
    char rel[512];
    snprintf(rel, sizeof rel, "%s/%s", model, version);
    assert_int_equal(symlink(MODELS "/sentiment/1", repo_path(d, rel)), 0);
}

static const char *const reviews[] = {
    "a wonderful , moving film .", "dull and far too long .", "it 's fine .", "the best film of the year",
    "i hated every minute", "a masterpiece of tedium", "charming and funny", "not good , not bad",
};
#define N_REVIEWS (sizeof reviews / sizeof reviews[0])

static serving_request classify_request(const char *model, long version, const char *ref) {
    serving_request r;
    serving_request_init(&r);
    r.model = model;
    r.version = version;
    r.version_ref = ref;
    r.task = SERVING_TASK_CLASSIFY;
    return r;
}

/* serving_resolve that must succeed: the version it chose (r stays resolved). */
static long resolve_ok(serving_repo *repo, serving_request *r) {
    serving_error err = {0};
    int rc = serving_resolve(repo, r, &err);
    if (rc)
        fail_msg("serving_resolve: %s %s", serving_status_name(rc), err.message);
    assert_non_null(r->first);
    return serving_version_number(r->first);
}

static void resolve_fails(serving_repo *repo, serving_request *r, int want, const char *fragment) {
    serving_error err = {0};
    int rc = serving_resolve(repo, r, &err);
    if (rc != want)
        fail_msg("serving_resolve: got %s, want %s (%s)", serving_status_name(rc), serving_status_name(want),
                 err.message);
    assert_int_equal(err.status, want);
    if (fragment && !strstr(err.message, fragment))
        fail_msg("'%s' not in '%s'", fragment, err.message);
}

static void on_request_done(serving_request *r, void *user) {
    (void)r;
    tracker *t = user;
    pthread_mutex_lock(&t->lock);
    t->n_done++;
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->lock);
}

/* serving_predict on texts, waited for: the request's status (r is left
 * for the caller to read and finish). */
static int predict_wait(serving_repo *repo, serving_request *r, tracker *t, const char *const *texts, size_t n) {
    static size_t lens[64];
    assert_true(n <= 64);
    for (size_t i = 0; i < n; i++)
        lens[i] = strlen(texts[i]);
    r->texts = texts;
    r->lens = lens;
    r->n = n;
    r->on_done = on_request_done;
    r->user = t;
    pthread_mutex_lock(&t->lock);
    int before = t->n_done;
    pthread_mutex_unlock(&t->lock);
    int rc = serving_predict(repo, r);
    if (rc)
        return rc;
    if (tracker_wait(t, before + 1) != 0)
        fail_msg("the request was never answered");
    return r->status;
}

static double series_value(metrics_registry *m, const char *series) {
    char *text = metrics_render(m, NULL);
    assert_non_null(text);
    double v = sum_samples(text, series, NULL); /* 0 when absent */
    free(text);
    return v;
}

/* Polls until the series reaches at least want (a shadow copy nobody
 * waits for), then returns its value. */
static double series_reaches(metrics_registry *m, const char *series, double want) {
    uint64_t until = serving_now_us() + WAIT_US;
    double v;
    while ((v = series_value(m, series)) < want) {
        if (serving_now_us() > until)
            fail_msg("%s is %g, never %g", series, v, want);
        sleep_us(1000);
    }
    return v;
}

/* The split's bucket of a user, as serving.h defines it. */
static unsigned user_bucket(const char *model, const char *user) {
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, model, strlen(model) + 1);
    XXH3_64bits_update(&st, user, strlen(user));
    return (unsigned)(XXH3_64bits_digest(&st) % 100);
}

/* Which version serving_resolve chooses: pins (numbers, aliases), the
 * split by user (the documented hash) or at random, the cascade's first
 * version (also when pinned) while it is available, the shadow noted, the
 * task checked; and its errors. */
static void test_predict_resolve(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link_sentiment(&d, "sentiment", "1");
    repo_link_sentiment(&d, "sentiment", "2");
    repo_link(&d, "embed", "1", "bert-base-embed");
    metrics_registry *m = metrics_registry_create();
    serving_options o = options(&d);
    o.version_policy = "all";
    serving_repo *repo = repo_open(&o, m);
    serving_error err = {0};

    serving_request r = classify_request(NULL, 0, NULL); /* the default model, newest version */
    assert_int_equal(resolve_ok(repo, &r), 2);
    assert_string_equal(serving_version_model(r.first), "sentiment");
    assert_int_equal(r.cascade.first, 0);
    assert_int_equal(r.shadow.version, 0);
    resolve_fails(repo, &r, SERVING_EINPUT, "resolved already");
    serving_request_fini(&r);

    assert_int_equal(serving_set_alias(repo, "sentiment", "production", 1, &err), 0);
    static const struct {
        long version;
        const char *ref;
        long want;
    } pins[] = {{1, NULL, 1}, {0, "1", 1}, {0, "2", 2}, {0, "production", 1}, {2, "production", 2}};
    for (size_t i = 0; i < sizeof pins / sizeof pins[0]; i++) {
        r = classify_request("sentiment", pins[i].version, pins[i].ref);
        assert_int_equal(resolve_ok(repo, &r), pins[i].want);
        serving_request_fini(&r);
    }
    r = classify_request("sentiment", 0, "staging");
    resolve_fails(repo, &r, SERVING_ENOVERSION, "model 'sentiment' has no version or alias 'staging'");
    assert_null(r.first);
    r = classify_request("sentiment", 0, "7");
    resolve_fails(repo, &r, SERVING_ENOVERSION, "model 'sentiment' has no version 7");
    r = classify_request("sentiment", 7, NULL);
    resolve_fails(repo, &r, SERVING_ENOVERSION, "no version 7");
    r = classify_request("nope", 0, NULL);
    resolve_fails(repo, &r, SERVING_ENOTFOUND, "model 'nope' not found");

    /* The split: each user where the hash puts them, every time; a pin
     * wins; no user: at random. */
    serving_split split = {.n = 2, .version = {1, 2}, .weight = {30, 70}};
    assert_int_equal(serving_set_split(repo, "sentiment", &split, &err), 0);
    int seen[3] = {0}, anon[3] = {0};
    for (int u = 0; u < 200; u++) {
        char user[32];
        snprintf(user, sizeof user, "user-%d", u);
        long want = user_bucket("sentiment", user) < 30 ? 1 : 2;
        for (int again = 0; again < 2; again++) {
            r = classify_request("sentiment", 0, NULL);
            r.user_id = user;
            r.user_id_len = strlen(user);
            assert_int_equal(resolve_ok(repo, &r), want);
            serving_request_fini(&r);
        }
        seen[want]++;
        r = classify_request("sentiment", 3 - want, NULL);
        r.user_id = user;
        r.user_id_len = strlen(user);
        assert_int_equal(resolve_ok(repo, &r), 3 - want);
        serving_request_fini(&r);
        r = classify_request("sentiment", 0, NULL);
        anon[resolve_ok(repo, &r)]++;
        serving_request_fini(&r);
    }
    assert_true(seen[1] > 0 && seen[2] > 0);
    assert_true(anon[1] > 0 && anon[2] > 0);

    /* The cascade: taken without a pin, or pinned on its first version,
     * when the request may take it; not for another pin; not once its
     * first version cannot answer. */
    serving_cascade cascade = {.first = 1, .then = 2, .threshold = 0.75};
    assert_int_equal(serving_set_cascade(repo, "sentiment", &cascade, &err), 0);
    serving_shadow shadow = {.version = 2, .percent = 10};
    assert_int_equal(serving_set_shadow(repo, "sentiment", &shadow, &err), 0);
    static const struct {
        long version;
        int allow_cascade;
        long want;
        int takes;
    } cases[] = {{0, 1, 1, 1}, {1, 1, 1, 1}, {2, 1, 2, 0}, {1, 0, 1, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        r = classify_request("sentiment", cases[i].version, NULL);
        r.allow_cascade = cases[i].allow_cascade;
        assert_int_equal(resolve_ok(repo, &r), cases[i].want);
        assert_int_equal(r.cascade.first, cases[i].takes ? 1 : 0);
        if (cases[i].takes) {
            assert_int_equal(r.cascade.then, 2);
            assert_true(r.cascade.threshold == 0.75);
        }
        assert_int_equal(r.shadow.version, 2);
        assert_int_equal(r.shadow.percent, 10);
        serving_request_fini(&r);
    }
    assert_int_equal(serving_set_split(repo, "sentiment", &(serving_split){0}, &err), 0);
    r = classify_request("sentiment", 0, NULL); /* no cascade asked: the newest */
    assert_int_equal(resolve_ok(repo, &r), 2);
    assert_int_equal(r.cascade.first, 0);
    serving_request_fini(&r);
    assert_int_equal(serving_admin_version(repo, "sentiment", 1, 0, &err), 0); /* unloading: cannot answer */
    r = classify_request("sentiment", 0, NULL);
    r.allow_cascade = 1;
    assert_int_equal(resolve_ok(repo, &r), 2);
    assert_int_equal(r.cascade.first, 0);
    serving_request_fini(&r);

    /* The task. */
    r = classify_request("embed", 0, NULL);
    resolve_fails(repo, &r, SERVING_EUNSUPPORTED, "model 'embed' is an embedding model; it does not predict labels");
    assert_null(r.first);
    r = classify_request("sentiment", 0, NULL);
    r.task = SERVING_TASK_EMBED;
    resolve_fails(repo, &r, SERVING_EUNSUPPORTED, "model 'sentiment' is a classifier; it does not compute embeddings");
    assert_null(r.first);

    serving_repo_destroy(repo);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}

/* The repository the cascade and shadow tests share: sentiment versions 1
 * and 2 (the same weights) and 3 (a 3-label fixture), all loaded. */
typedef struct three_versions {
    repo_dir d;
    metrics_registry *m;
    serving_repo *repo;
} three_versions;

static void three_versions_open(three_versions *f) {
    repo_dir_init(&f->d);
    repo_link_sentiment(&f->d, "sentiment", "1");
    repo_link_sentiment(&f->d, "sentiment", "2");
    repo_link(&f->d, "sentiment", "3", "distilbert-relu-3label");
    f->m = metrics_registry_create();
    serving_options o = options(&f->d);
    o.version_policy = "all";
    f->repo = repo_open(&o, f->m);
}

/* The repository first (it may be gone already: NULL), then its metrics. */
static void three_versions_close(three_versions *f) {
    serving_repo_destroy(f->repo);
    metrics_registry_destroy(f->m);
    repo_dir_remove(&f->d);
}

/* A cascade through serving_predict: at threshold 1 every text is answered
 * by the second version (with its own label ids, when its labels differ),
 * at a threshold below every confidence none is; a second version that
 * cannot answer leaves the first answers; each counted. And n == 0. */
static void test_predict_cascade(void **state) {
    (void)state;
    three_versions f;
    three_versions_open(&f);
    serving_repo *repo = f.repo;
    metrics_registry *m = f.m;
    serving_error err = {0};
    tracker t;
    tracker_init(&t);

    /* What each version answers alone. */
    engine_model *ref2 = NULL, *ref3 = NULL;
    engine_options eo = {.n_threads = 1};
    engine_error eerr = {0};
    assert_int_equal(engine_model_load(MODELS "/sentiment/1", &eo, &ref2, &eerr), 0);
    assert_int_equal(engine_model_load(FIXTURES "/distilbert-relu-3label", &eo, &ref3, &eerr), 0);
    size_t lens[N_REVIEWS];
    for (size_t i = 0; i < N_REVIEWS; i++)
        lens[i] = strlen(reviews[i]);
    float p2[N_REVIEWS * 2], p3[N_REVIEWS * 3];
    assert_int_equal(engine_classify(ref2, reviews, lens, N_REVIEWS, NULL, p2, &eerr), 0);
    assert_int_equal(engine_classify(ref3, reviews, lens, N_REVIEWS, NULL, p3, &eerr), 0);
    for (size_t i = 0; i < N_REVIEWS; i++) /* so that threshold 1 escalates every text */
        assert_true(p2[2 * i] < 1.0f && p2[2 * i + 1] < 1.0f);

    /* Threshold 1: everything goes on to version 2. */
    serving_cascade cascade = {.first = 1, .then = 2, .threshold = 1.0};
    assert_int_equal(serving_set_cascade(repo, "sentiment", &cascade, &err), 0);
    float l2[N_REVIEWS * 2];
    assert_int_equal(engine_classify(ref2, reviews, lens, N_REVIEWS, l2, p2, &eerr), 0);
    serving_request r = classify_request("sentiment", 0, NULL);
    r.allow_cascade = 1;
    r.want_logits = 1;
    assert_int_equal(predict_wait(repo, &r, &t, reviews, N_REVIEWS), 0);
    assert_int_equal(serving_version_number(r.first), 1);
    assert_non_null(r.then);
    assert_int_equal(serving_version_number(r.then), 2);
    assert_int_equal(r.n_escalated, N_REVIEWS);
    for (size_t i = 0; i < N_REVIEWS; i++) {
        int best = p2[2 * i + 1] > p2[2 * i];
        assert_ptr_equal(r.results[i].version, r.then);
        assert_int_equal(r.results[i].label, best);
        assert_true(fabsf(r.results[i].confidence - p2[2 * i + best]) <= PROB_TOL);
        assert_true(fabsf(r.out[2 * i] - p2[2 * i]) <= PROB_TOL); /* out: the first version's */
        /* probs and logits: the answering version's, as the engine computes them */
        for (int k = 0; k < 2; k++) {
            assert_true(fabsf(r.results[i].probs[k] - p2[2 * i + k]) <= PROB_TOL);
            assert_true(fabsf(r.results[i].logits[k] - l2[2 * i + k]) <= 1e-4f);
        }
        assert_true(r.results[i].probs[best] == r.results[i].confidence);
    }
    serving_request_fini(&r);
    assert_true(series_value(m, "aiserve_cascade_texts_total{model=\"sentiment\",result=\"escalated\"}") ==
                N_REVIEWS);
    assert_true(series_value(m, "aiserve_cascade_texts_total{model=\"sentiment\",result=\"first\"}") == 0);

    /* A threshold below every confidence: nothing escalates; also when the
     * request is pinned to the cascade's first version. */
    cascade.threshold = 1e-6;
    assert_int_equal(serving_set_cascade(repo, "sentiment", &cascade, &err), 0);
    for (long pin = 0; pin <= 1; pin++) {
        r = classify_request("sentiment", pin, NULL);
        r.allow_cascade = 1;
        assert_int_equal(predict_wait(repo, &r, &t, reviews, N_REVIEWS), 0);
        assert_int_equal(r.cascade.first, 1);
        assert_null(r.then);
        assert_int_equal(r.n_escalated, 0);
        for (size_t i = 0; i < N_REVIEWS; i++) {
            assert_ptr_equal(r.results[i].version, r.first);
            assert_int_equal(r.results[i].label, p2[2 * i + 1] > p2[2 * i]);
        }
        serving_request_fini(&r);
    }
    assert_true(series_value(m, "aiserve_cascade_texts_total{model=\"sentiment\",result=\"first\"}") ==
                2 * N_REVIEWS);
    assert_true(series_value(m, "aiserve_cascade_texts_total{model=\"sentiment\",result=\"escalated\"}") ==
                N_REVIEWS);

    /* A second version with other labels: the label ids are its own. */
    cascade = (serving_cascade){.first = 1, .then = 3, .threshold = 1.0};
    assert_int_equal(serving_set_cascade(repo, "sentiment", &cascade, &err), 0);
    r = classify_request("sentiment", 0, NULL);
    r.allow_cascade = 1;
    assert_int_equal(predict_wait(repo, &r, &t, reviews, N_REVIEWS), 0);
    assert_int_equal(serving_version_number(r.then), 3);
    for (size_t i = 0; i < N_REVIEWS; i++) {
        const float *p = p3 + 3 * i;
        int best = p[1] > p[0] ? (p[2] > p[1] ? 2 : 1) : (p[2] > p[0] ? 2 : 0);
        assert_ptr_equal(r.results[i].version, r.then);
        assert_int_equal(r.results[i].label, best);
        assert_string_equal(serving_version_label(r.results[i].version, r.results[i].label),
                            engine_model_label(ref3, best));
    }
    serving_request_fini(&r);

    /* The second version cannot answer: the first answers stand. */
    assert_int_equal(serving_admin_version(repo, "sentiment", 3, 0, &err), 0);
    r = classify_request("sentiment", 0, NULL);
    r.allow_cascade = 1;
    assert_int_equal(predict_wait(repo, &r, &t, reviews, N_REVIEWS), 0);
    assert_int_equal(r.n_escalated, 0);
    for (size_t i = 0; i < N_REVIEWS; i++)
        assert_ptr_equal(r.results[i].version, r.first);
    serving_request_fini(&r);
    assert_true(series_value(m, "aiserve_cascade_texts_total{model=\"sentiment\",result=\"error\"}") == N_REVIEWS);
    assert_int_equal(t.n_done, 5);

    /* No texts: refused at once, on_done never runs. */
    r = classify_request("sentiment", 0, NULL);
    assert_int_equal(predict_wait(repo, &r, &t, reviews, 0), SERVING_EINPUT);
    assert_int_equal(r.status, SERVING_EINPUT);
    assert_non_null(strstr(r.error, "at least one text"));
    serving_request_fini(&r);
    assert_int_equal(t.n_done, 5);

    engine_model_free(ref2);
    engine_model_free(ref3);
    three_versions_close(&f);
    tracker_fini(&t);
}

/* Shadow copies through serving_predict: at 100 % every text of every
 * request is compared (the same weights agree; other labels disagree; a
 * shadow version that cannot answer is an error), but not the requests the
 * shadow version answered itself nor those that do not allow it. */
static void test_predict_shadow(void **state) {
    (void)state;
    three_versions f;
    three_versions_open(&f);
    serving_repo *repo = f.repo;
    metrics_registry *m = f.m;
    serving_error err = {0};
    tracker t;
    tracker_init(&t);
    static const char agree2[] = "aiserve_shadow_predictions_total{model=\"sentiment\",version=\"2\",result=\"agree\"}";

    serving_shadow shadow = {.version = 2, .percent = 100};
    assert_int_equal(serving_set_shadow(repo, "sentiment", &shadow, &err), 0);
    for (int k = 0; k < 5; k++) {
        serving_request r = classify_request("sentiment", 1, NULL);
        r.allow_shadow = 1;
        assert_int_equal(predict_wait(repo, &r, &t, reviews, N_REVIEWS), 0);
        for (size_t i = 0; i < N_REVIEWS; i++)
            assert_ptr_equal(r.results[i].version, r.first); /* never the shadow's answer */
        serving_request_fini(&r);
    }
    assert_true(series_reaches(m, agree2, 5 * N_REVIEWS) == 5 * N_REVIEWS);
    /* Answered by the shadow version, or not allowing shadows: no copy.
     * Copies run in order on version 2, so once the last request's copy is
     * counted, a copy of these would have been too. */
    serving_request r = classify_request("sentiment", 2, NULL);
    r.allow_shadow = 1;
    assert_int_equal(predict_wait(repo, &r, &t, reviews, N_REVIEWS), 0);
    serving_request_fini(&r);
    r = classify_request("sentiment", 1, NULL);
    assert_int_equal(predict_wait(repo, &r, &t, reviews, N_REVIEWS), 0);
    serving_request_fini(&r);
    r = classify_request("sentiment", 1, NULL);
    r.allow_shadow = 1;
    assert_int_equal(predict_wait(repo, &r, &t, reviews, 3), 0);
    serving_request_fini(&r);
    assert_true(series_reaches(m, agree2, 5 * N_REVIEWS + 3) == 5 * N_REVIEWS + 3);
    assert_true(series_value(m, "aiserve_shadow_predictions_total{model=\"sentiment\",version=\"2\",result=\"disagree\"}") == 0);
    assert_true(series_value(m, "aiserve_shadow_predictions_total{model=\"sentiment\",version=\"2\",result=\"error\"}") == 0);

    /* Labels are compared by name: version 3's never match. */
    shadow.version = 3;
    assert_int_equal(serving_set_shadow(repo, "sentiment", &shadow, &err), 0);
    r = classify_request("sentiment", 1, NULL);
    r.allow_shadow = 1;
    assert_int_equal(predict_wait(repo, &r, &t, reviews, 4), 0);
    serving_request_fini(&r);
    series_reaches(m, "aiserve_shadow_predictions_total{model=\"sentiment\",version=\"3\",result=\"disagree\"}", 4);
    assert_true(series_value(m, "aiserve_shadow_predictions_total{model=\"sentiment\",version=\"3\",result=\"agree\"}") == 0);

    /* A shadow version that cannot answer: errors, counted before on_done. */
    assert_int_equal(serving_admin_version(repo, "sentiment", 3, 0, &err), 0);
    r = classify_request("sentiment", 1, NULL);
    r.allow_shadow = 1;
    assert_int_equal(predict_wait(repo, &r, &t, reviews, 4), 0);
    serving_request_fini(&r);
    assert_true(series_value(m, "aiserve_shadow_predictions_total{model=\"sentiment\",version=\"3\",result=\"error\"}") == 4);

    /* The repository goes with a copy queued or running: it is answered
     * (computed, or ESTOPPED: an error) before the version is freed, and
     * counted in the registry, which outlives the repository. */
    shadow.version = 2;
    assert_int_equal(serving_set_shadow(repo, "sentiment", &shadow, &err), 0);
    const double before = series_value(m, agree2);
    r = classify_request("sentiment", 1, NULL);
    r.allow_shadow = 1;
    assert_int_equal(predict_wait(repo, &r, &t, reviews, N_REVIEWS), 0);
    serving_request_fini(&r);
    serving_repo_destroy(repo);
    f.repo = NULL;
    assert_true(series_value(m, agree2) - before +
                    series_value(m, "aiserve_shadow_predictions_total{model=\"sentiment\",version=\"2\",result=\"error\"}") ==
                N_REVIEWS);
    tracker_fini(&t);
    three_versions_close(&f);
}

/* serving_options.model_dir: one Hugging Face directory served as version 1
 * of a model named after it (or as asked), nothing scanned; its answers and
 * logits are the engine's, and results without want_logits have none. */
static void test_single_model_directory(void **state) {
    (void)state;
    metrics_registry *m = metrics_registry_create();
    serving_options o = {.model_dir = FIXTURES "/distilbert-relu-3label", .engine_threads = 1,
                         .max_batch_size = 4, .max_queue_size = 100, .poll_interval_us = 1000};
    serving_repo *repo = repo_open(&o, m);
    assert_string_equal(serving_repo_default_model(repo), "distilbert-relu-3label");
    serving_version_status *list = NULL;
    size_t n = 0;
    assert_int_equal(serving_repo_list(repo, &list, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(list[0].version, 1);
    assert_int_equal(list[0].state, SERVING_STATE_AVAILABLE);
    free(list);

    engine_model *ref = NULL;
    engine_options eo = {.n_threads = 1};
    engine_error eerr = {0};
    assert_int_equal(engine_model_load(FIXTURES "/distilbert-relu-3label", &eo, &ref, &eerr), 0);
    size_t lens[4];
    for (size_t i = 0; i < 4; i++)
        lens[i] = strlen(reviews[i]);
    float logits[4 * 3], probs[4 * 3];
    assert_int_equal(engine_classify(ref, reviews, lens, 4, logits, probs, &eerr), 0);

    tracker t;
    tracker_init(&t);
    for (int want = 0; want <= 1; want++) {
        serving_request r = classify_request(NULL, 0, NULL); /* the default model: the directory's */
        r.want_logits = want;
        assert_int_equal(predict_wait(repo, &r, &t, reviews, 4), 0);
        assert_int_equal(serving_version_number(r.first), 1);
        for (size_t i = 0; i < 4; i++) {
            for (int k = 0; k < 3; k++) {
                assert_true(r.results[i].probs[k] == r.out[3 * i + k]);
                assert_true(fabsf(r.results[i].probs[k] - probs[3 * i + k]) <= PROB_TOL);
                if (want)
                    assert_true(fabsf(r.results[i].logits[k] - logits[3 * i + k]) <= 1e-4f);
            }
            if (!want)
                assert_null(r.results[i].logits);
        }
        serving_request_fini(&r);
    }
    /* Named as asked; the admin API finds nothing else to load. */
    serving_repo_destroy(repo);
    metrics_registry_destroy(m); /* one repository per registry */
    m = metrics_registry_create();
    o.default_model = "reviews";
    repo = repo_open(&o, m);
    serving_error err = {0};
    assert_string_equal(serving_repo_default_model(repo), "reviews");
    assert_int_equal(serving_admin_version(repo, "reviews", 2, 1, &err), SERVING_ENOVERSION);
    serving_version_release(acquire_ok(repo, "reviews", 1));
    serving_repo_destroy(repo);
    metrics_registry_destroy(m);
    engine_model_free(ref);
    tracker_fini(&t);
}

/* An embeddings request through serving_predict: one vector per text, as
 * the scheduler computes it, and no per-text labels. */
static void test_predict_embeddings(void **state) {
    (void)state;
    repo_dir d;
    repo_dir_init(&d);
    repo_link(&d, "embed", "1", "bert-base-embed");
    metrics_registry *m = metrics_registry_create();
    serving_options o = options(&d);
    serving_repo *repo = repo_open(&o, m);
    tracker t;
    tracker_init(&t);
    serving_request r;
    serving_request_init(&r);
    r.task = SERVING_TASK_EMBED;
    r.allow_cascade = r.allow_shadow = 1;
    assert_int_equal(predict_wait(repo, &r, &t, reviews, 3), 0);
    assert_null(r.results);
    const size_t H = (size_t)serving_version_info(r.first)->hidden;
    engine_model *ref = NULL;
    engine_options eo = {.n_threads = 1};
    engine_error eerr = {0};
    assert_int_equal(engine_model_load(FIXTURES "/bert-base-embed", &eo, &ref, &eerr), 0);
    float *want = calloc(3 * H, sizeof *want);
    size_t lens[3] = {strlen(reviews[0]), strlen(reviews[1]), strlen(reviews[2])};
    assert_int_equal(engine_embed(ref, reviews, lens, 3, ENGINE_POOL_MEAN, 1, want, &eerr), 0);
    for (size_t i = 0; i < 3 * H; i++)
        if (fabsf(r.out[i] - want[i]) > 1e-5f)
            fail_msg("embedding %zu: %g, engine %g", i, (double)r.out[i], (double)want[i]);
    free(want);
    engine_model_free(ref);
    serving_request_fini(&r);
    serving_repo_destroy(repo);
    tracker_fini(&t);
    metrics_registry_destroy(m);
    repo_dir_remove(&d);
}

int main(void) {
    /* The loader logs each load; keep the test's output readable unless
     * AISERVE_TEST_LOG asks for the lines. */
    int devnull = -1;
    if (!getenv("AISERVE_TEST_LOG")) {
        devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (devnull >= 0)
            log_set_output(devnull);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_missing_repository),
        cmocka_unit_test(test_scan_and_load),
        cmocka_unit_test(test_default_model_rules),
        cmocka_unit_test(test_broken_versions),
        cmocka_unit_test(test_list_while_loading),
        cmocka_unit_test(test_scheduler_matches_engine),
        cmocka_unit_test(test_bad_text_isolated),
        cmocka_unit_test(test_queue_bound_and_stop),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_background_yields_to_online),
        cmocka_unit_test(test_embedding_through_scheduler),
        cmocka_unit_test(test_reference_outlives_destroy),
        cmocka_unit_test(test_destroy_with_queued_jobs),
        cmocka_unit_test(test_metrics_after_traffic),
        cmocka_unit_test(test_predict_resolve),
        cmocka_unit_test(test_predict_cascade),
        cmocka_unit_test(test_predict_shadow),
        cmocka_unit_test(test_predict_embeddings),
        cmocka_unit_test(test_single_model_directory),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (devnull >= 0) {
        log_set_output(1);
        close(devnull);
    }
    return rc;
}
