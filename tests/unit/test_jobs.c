/*
 * test_jobs.c - the jobs module through jobs.h, on the bundled sentiment
 * model: a job's results equal the engine's argmax and probability for
 * each input, in order, across chunks; pages of results; owners; the input
 * and per-owner limits; a job stored by one process and run by the next
 * (resume); cancel before and after the end; retention; submissions through
 * the writer thread, and the ones still queued when it closes; listing an
 * owner's jobs newest first in pages (both kinds, never another owner's,
 * never one retention deleted, synchronously and through jobs_async); and a
 * data directory that is in use or holds something that is not a database.
 * A cascade and a shadow configured for the model apply to jobs: results
 * record the version a cascade escalated them to, and both are counted.
 * The store-neutral tests run twice: on SQLite and on a real redis-server
 * started here; three more are Redis's own (a queue shared by two instances,
 * a lease left by a dead one; Redis unreachable; a listed job whose hash is
 * gone), one SQLite's (a database from before results had a version, and
 * before the owners' index).
 *
 * Each test has its own temporary data directory. Waits are bounded
 * generously; nothing asserts how fast anything is.
 */
#define _GNU_SOURCE
#include <ftw.h>
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

#include "engine.h"
#include "jobs.h"
#include "serving.h"
#include "redis_server.h"
#include <hiredis/hiredis.h>
#include <sqlite3.h>

#define MODELS AISERVE_SOURCE_DIR "/models"
#define WAIT_MS 120000

typedef struct fixture {
    char dir[64];
    metrics_registry *m;
    serving_repo *repo;
    bool redis;              /* the Redis store instead of SQLite */
    char url[64], prefix[32];
    kv_redis_options ro;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/aiserve-jobs-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->m = metrics_registry_create();
    serving_options o = {.repository = MODELS, .engine_threads = 1, .max_batch_size = 8,
                         .max_queue_delay_us = 0, .max_queue_size = 1000};
    serving_error err = {0};
    assert_int_equal(serving_repo_create(&o, f->m, &f->repo, &err), 0);
    assert_int_equal(serving_repo_start(f->repo), 0);
    for (int i = 0; i < WAIT_MS && !serving_repo_is_settled(f->repo); i++)
        sleep_ms(1);
    assert_true(serving_repo_is_ready(f->repo));
    *state = f;
    return 0;
}

/* The same, on the Redis store: a fresh key prefix per test. */
static int setup_redis(void **state) {
    setup(state);
    fixture *f = *state;
    f->redis = true;
    snprintf(f->url, sizeof f->url, "redis://127.0.0.1:%d", redis_port);
    snprintf(f->prefix, sizeof f->prefix, "t%ld.%d:", (long)getpid(), rand());
    f->ro = (kv_redis_options){.url = f->url, .key_prefix = f->prefix};
    return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state) {
    fixture *f = *state;
    serving_repo_destroy(f->repo);
    metrics_registry_destroy(f->m);
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static jobs_options options(fixture *f) {
    return (jobs_options){.data_dir = f->dir, .repo = f->repo, .max_inputs = 1000, .max_active_per_owner = 2,
                          .retention_us = 3600ull * 1000000u, .chunk_size = 8, .metrics = f->m,
                          .redis = f->redis ? &f->ro : NULL, .lease_us = 1000000};
}

static jobs *open_ok(const jobs_options *o) {
    jobs *j = NULL;
    char err[512] = "";
    int rc = jobs_open(o, &j, err, sizeof err);
    if (rc != JOBS_OK)
        fail_msg("jobs_open: %s", err);
    return j;
}

static const char *const sentences[] = {
    "a wonderful , moving film .", "dull and far too long .", "it 's fine .", "the best film of the year",
    "i hated every minute", "a masterpiece of tedium", "charming and funny", "not good , not bad",
    "utterly forgettable", "a joy from start to finish", "the plot makes no sense",
};
#define N_SENT (sizeof sentences / sizeof sentences[0])

static void texts_of(size_t n, const char **texts, size_t *lens) {
    for (size_t i = 0; i < n; i++) {
        texts[i] = sentences[(i * 7) % N_SENT];
        lens[i] = strlen(texts[i]);
    }
}

static void submit_ok(jobs *j, const char *owner, size_t n, char id[JOBS_ID_MAX]) {
    const char *texts[64];
    size_t lens[64];
    char err[512] = "";
    assert_true(n <= 64);
    texts_of(n, texts, lens);
    int rc = jobs_submit(j, JOBS_KIND_V1, owner, NULL, texts, lens, n, id, err, sizeof err);
    if (rc != JOBS_OK)
        fail_msg("jobs_submit: %s", err);
    assert_int_equal(strncmp(id, "batch_", 6), 0);
    assert_int_equal(strlen(id), 30);
}

static jobs_info wait_status(jobs *j, const char *id, const char *owner, const char *want) {
    jobs_info info;
    for (int i = 0; i < WAIT_MS / 5; i++) {
        assert_int_equal(jobs_get(j, id, owner, &info), JOBS_OK);
        if (strcmp(info.status, want) == 0)
            return info;
        sleep_ms(5);
    }
    fail_msg("job %s is %s, never %s", id, info.status, want);
    return info;
}

/* The job's results, in order, are the engine's argmax and its probability
 * for each of its n inputs (texts_of), each answered by `version` (0: the
 * job's own). */
static void assert_results_equal_engine(jobs *j, const char *id, const char *owner, size_t n_inputs,
                                        long version) {
    engine_model *ref = NULL;
    engine_options eo = {.n_threads = 1};
    engine_error eerr = {0};
    assert_int_equal(engine_model_load(MODELS "/sentiment/1", &eo, &ref, &eerr), 0);
    const char *texts[64];
    size_t lens[64];
    assert_true(n_inputs <= 64);
    texts_of(n_inputs, texts, lens);
    float probs[64 * 2];
    assert_int_equal(engine_classify(ref, texts, lens, n_inputs, NULL, probs, &eerr), 0);
    jobs_result *r = NULL;
    size_t n = 0;
    assert_int_equal(jobs_results(j, id, owner, 0, 100, &r, &n), JOBS_OK);
    assert_int_equal(n, n_inputs);
    for (size_t i = 0; i < n; i++) {
        int best = probs[2 * i + 1] > probs[2 * i] ? 1 : 0;
        assert_int_equal(r[i].label, best);
        assert_true(r[i].confidence == (double)probs[2 * i + best]);
        assert_int_equal(r[i].version, version);
    }
    free(r);
    engine_model_free(ref);
}

/* Lists owner's jobs after `after` (limit at a time) and checks the page:
 * the ids want[0..n), in that order, and whether more follow. */
static void assert_list(jobs *j, const char *owner, const char *after, size_t limit, size_t n,
                        char (*want)[JOBS_ID_MAX], bool more) {
    jobs_info *page = NULL;
    size_t got = 99;
    bool has_more = !more;
    assert_int_equal(jobs_list(j, owner, after, limit, &page, &got, &has_more), JOBS_OK);
    assert_int_equal(got, n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(page[i].id, want[i]);
    assert_int_equal(has_more, more);
    free(page);
}

/* ---- tests ---------------------------------------------------------------- */

static void test_results_equal_engine(void **state) {
    fixture *f = *state;
    jobs_options o = options(f);
    jobs *j = open_ok(&o);
    assert_int_equal(jobs_start(j), JOBS_OK);
    char id[JOBS_ID_MAX];
    submit_ok(j, "alice", 30, id); /* 4 chunks of 8 */
    jobs_info info = wait_status(j, id, "alice", "completed");
    assert_int_equal(info.total, 30);
    assert_int_equal(info.done, 30);
    assert_int_equal(info.version, 1);
    assert_string_equal(info.model, "sentiment");
    assert_true(info.created_ms > 0 && info.started_ms >= info.created_ms && info.finished_ms >= info.started_ms);

    assert_results_equal_engine(j, id, "alice", 30, 0);
    jobs_result *all = NULL, *r = NULL;
    size_t n_all = 0, n = 0;
    assert_int_equal(jobs_results(j, id, "alice", 0, 30, &all, &n_all), JOBS_OK);
    /* Pages across chunk edges; past the end; another owner. */
    static const size_t pages[][2] = {{25, 10}, {7, 2}, {8, 9}, {0, 1}, {29, 1}};
    for (size_t p = 0; p < sizeof pages / sizeof pages[0]; p++) {
        assert_int_equal(jobs_results(j, id, "alice", pages[p][0], pages[p][1], &r, &n), JOBS_OK);
        assert_int_equal(n, pages[p][0] + pages[p][1] > 30 ? 30 - pages[p][0] : pages[p][1]);
        for (size_t i = 0; i < n; i++)
            assert_true(r[i].label == all[pages[p][0] + i].label &&
                        r[i].confidence == all[pages[p][0] + i].confidence);
        free(r);
    }
    free(all);
    assert_int_equal(jobs_results(j, id, "alice", 30, 10, &r, &n), JOBS_OK);
    assert_int_equal(n, 0);
    assert_null(r);
    assert_int_equal(jobs_results(j, id, "bob", 0, 10, &r, &n), JOBS_ENOTFOUND);
    assert_int_equal(jobs_get(j, id, "bob", &info), JOBS_ENOTFOUND);
    assert_int_equal(jobs_cancel(j, id, "bob"), JOBS_ENOTFOUND);
    assert_int_equal(jobs_cancel(j, id, "alice"), JOBS_EFINISHED);
    assert_int_equal(jobs_get(j, "batch_nope", "alice", &info), JOBS_ENOTFOUND);
    jobs_close(j);
}

static void test_limits(void **state) {
    fixture *f = *state;
    jobs_options o = options(f);
    o.max_inputs = 10;
    jobs *j = open_ok(&o); /* not started: jobs stay queued */
    const char *texts[64];
    size_t lens[64];
    texts_of(11, texts, lens);
    char id[JOBS_ID_MAX], err[512];
    assert_int_equal(jobs_submit(j, JOBS_KIND_V1, "a", NULL, texts, lens, 0, id, err, sizeof err), JOBS_EINVAL);
    assert_int_equal(jobs_submit(j, JOBS_KIND_V1, "a", NULL, texts, lens, 11, id, err, sizeof err), JOBS_EINVAL);
    assert_non_null(strstr(err, "limit is 10"));
    assert_int_equal(jobs_submit(j, JOBS_KIND_V1, "a", "nope", texts, lens, 1, id, err, sizeof err),
                     JOBS_ENOMODEL);
    submit_ok(j, "a", 1, id);
    submit_ok(j, "a", 1, id);
    assert_int_equal(jobs_submit(j, JOBS_KIND_V1, "a", NULL, texts, lens, 1, id, err, sizeof err), JOBS_ELIMIT);
    submit_ok(j, "b", 1, id); /* per owner */
    /* A cancelled job no longer counts. */
    char first[JOBS_ID_MAX];
    submit_ok(j, "c", 1, first);
    submit_ok(j, "c", 1, id);
    assert_int_equal(jobs_cancel(j, first, "c"), JOBS_OK);
    assert_int_equal(jobs_cancel(j, first, "c"), JOBS_EFINISHED);
    submit_ok(j, "c", 1, id);
    jobs_close(j);
}

static void test_resume_in_next_process_and_cancel(void **state) {
    fixture *f = *state;
    jobs_options o = options(f);
    jobs *j = open_ok(&o);
    char kept[JOBS_ID_MAX], dropped[JOBS_ID_MAX];
    submit_ok(j, "", 20, kept);
    submit_ok(j, "", 20, dropped);
    assert_int_equal(jobs_cancel(j, dropped, ""), JOBS_OK);
    jobs_close(j); /* stored, never run */
    /* Another process on the same directory while this one runs: refused
     * (SQLite); with Redis, instances share the queue. */
    j = open_ok(&o);
    if (!f->redis) {
        jobs *other = NULL;
        char err[512] = "";
        assert_int_equal(jobs_open(&o, &other, err, sizeof err), JOBS_EDB);
        assert_null(other);
        assert_non_null(strstr(err, "in use by another aiserve process"));
    }
    assert_int_equal(jobs_start(j), JOBS_OK);
    jobs_info info = wait_status(j, kept, "", "completed");
    assert_int_equal(info.done, 20);
    assert_int_equal(jobs_get(j, dropped, "", &info), JOBS_OK);
    assert_string_equal(info.status, "cancelled");
    assert_int_equal(info.done, 0);
    jobs_result *r = NULL;
    size_t n = 0;
    assert_int_equal(jobs_results(j, dropped, "", 0, 20, &r, &n), JOBS_OK);
    assert_int_equal(n, 20);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(r[i].label, -1); /* never computed */
    free(r);
    jobs_close(j);
}

static void test_retention(void **state) {
    fixture *f = *state;
    jobs_options o = options(f);
    o.retention_us = 200000;
    jobs *j = open_ok(&o);
    assert_int_equal(jobs_start(j), JOBS_OK);
    char id[JOBS_ID_MAX];
    submit_ok(j, "", 3, id);
    wait_status(j, id, "", "completed");
    jobs_info info;
    int rc = JOBS_OK;
    for (int i = 0; i < WAIT_MS / 10 && rc == JOBS_OK; i++) {
        rc = jobs_get(j, id, "", &info);
        sleep_ms(10);
    }
    assert_int_equal(rc, JOBS_ENOTFOUND);
    /* Gone from the owner's list too; in Redis the sweep (not a listing)
     * empties the list's sets, so they do not grow with expired jobs. */
    if (f->redis) {
        redisContext *c = redisConnect("127.0.0.1", redis_port);
        assert_true(c && !c->err);
        long long held = -1;
        for (int i = 0; i < WAIT_MS / 10 && held != 0; i++) {
            redisReply *r = redisCommand(c, "EXISTS %sbatch:jobs: %sbatch:expiring", f->prefix, f->prefix);
            held = r->integer;
            freeReplyObject(r);
            if (held)
                sleep_ms(10);
        }
        assert_int_equal(held, 0);
        redisFree(c);
    }
    assert_list(j, "", NULL, 10, 0, NULL, false);
    jobs_close(j);
}

static atomic_int async_calls;

static void on_stored(jobs_req *req) {
    (void)req;
    atomic_fetch_add(&async_calls, 1);
}

static void test_async_submit(void **state) {
    fixture *f = *state;
    jobs_options o = options(f);
    const char *texts[4];
    size_t lens[4];
    texts_of(4, texts, lens);
    /* Queued before the writer runs, answered when it starts. */
    jobs *j = open_ok(&o);
    jobs_req a = {.op = JOBS_OP_SUBMIT, .kind = JOBS_KIND_SEED, .owner = "", .texts = texts, .lens = lens, .n = 4,
                         .cb = on_stored};
    jobs_req bad = a;
    bad.n = 0;
    atomic_store(&async_calls, 0);
    jobs_async(j, &a);
    jobs_async(j, &bad);
    assert_int_equal(atomic_load(&async_calls), 0);
    assert_int_equal(jobs_start(j), JOBS_OK);
    for (int i = 0; i < WAIT_MS && atomic_load(&async_calls) < 2; i++)
        sleep_ms(1);
    assert_int_equal(atomic_load(&async_calls), 2);
    assert_int_equal(a.status, JOBS_OK);
    assert_int_equal(bad.status, JOBS_EINVAL);
    jobs_info info = wait_status(j, a.id, "", "completed");
    assert_int_equal(info.kind, JOBS_KIND_SEED);
    jobs_close(j);
    /* Still queued when it closes without ever starting: refused, once. */
    j = open_ok(&o);
    jobs_req late = a;
    jobs_async(j, &late);
    jobs_close(j);
    assert_int_equal(atomic_load(&async_calls), 3);
    assert_int_equal(late.status, JOBS_EUNAVAILABLE);
}

/* An owner's jobs, newest first, in pages: both kinds, whatever their
 * state; never another owner's; `after` must be one of the owner's. */
static void test_list(void **state) {
    fixture *f = *state;
    jobs_options o = options(f);
    o.max_active_per_owner = 10;
    jobs *j = open_ok(&o); /* not started: jobs stay queued */
    char ids[6][JOBS_ID_MAX], newest[6][JOBS_ID_MAX], bobs[1][JOBS_ID_MAX];
    for (int i = 0; i < 5; i++)
        submit_ok(j, "alice", 1, ids[i]);
    const char *text = "a seed job";
    size_t len = strlen(text);
    char err[512] = "";
    assert_int_equal(jobs_submit(j, JOBS_KIND_SEED, "alice", NULL, &text, &len, 1, ids[5], err, sizeof err),
                     JOBS_OK);
    submit_ok(j, "bob", 1, bobs[0]);
    assert_int_equal(jobs_cancel(j, ids[2], "alice"), JOBS_OK);
    for (int i = 0; i < 6; i++)
        memcpy(newest[i], ids[5 - i], JOBS_ID_MAX);

    assert_list(j, "alice", NULL, 100, 6, newest, false);
    assert_list(j, "alice", "", 6, 6, newest, false); /* "" is from the newest too; exactly all: no more */
    assert_list(j, "alice", NULL, 2, 2, newest, true);
    assert_list(j, "alice", newest[1], 2, 2, newest + 2, true);
    assert_list(j, "alice", newest[3], 2, 2, newest + 4, false);
    assert_list(j, "alice", newest[5], 2, 0, NULL, false);
    assert_list(j, "bob", NULL, 10, 1, bobs, false);
    assert_list(j, "", NULL, 10, 0, NULL, false);

    jobs_info *page = NULL;
    size_t n = 0;
    bool more = false;
    assert_int_equal(jobs_list(j, "alice", NULL, 6, &page, &n, &more), JOBS_OK);
    assert_int_equal(page[0].kind, JOBS_KIND_SEED);
    assert_string_equal(page[3].status, "cancelled");
    assert_true(page[3].finished_ms > 0);
    assert_string_equal(page[5].status, "queued");
    assert_int_equal(page[5].total, 1);
    assert_string_equal(page[5].model, "sentiment");
    assert_true(page[5].created_ms > 0 && page[5].created_ms <= page[0].created_ms);
    jobs_info one;
    assert_int_equal(jobs_get(j, ids[0], "alice", &one), JOBS_OK); /* what jobs_get says, field for field */
    assert_memory_equal(&page[5], &one, sizeof one);
    free(page);
    /* Another owner's job, an unknown one, or no room: refused. */
    assert_int_equal(jobs_list(j, "bob", ids[0], 10, &page, &n, &more), JOBS_ENOTFOUND);
    assert_int_equal(jobs_list(j, "alice", bobs[0], 10, &page, &n, &more), JOBS_ENOTFOUND);
    assert_int_equal(jobs_list(j, "alice", "batch_000000000000000000000000", 10, &page, &n, &more),
                     JOBS_ENOTFOUND);
    assert_null(page);
    assert_int_equal(n, 0);
    assert_int_equal(jobs_list(j, "alice", NULL, 0, &page, &n, &more), JOBS_EINVAL);

    /* Through jobs_async (the reader thread), as the HTTP layer asks. */
    assert_int_equal(jobs_start(j), JOBS_OK);
    jobs_req req = {.op = JOBS_OP_LIST, .owner = "alice", .limit = 3, .cb = on_stored};
    memcpy(req.id, newest[0], JOBS_ID_MAX);
    atomic_store(&async_calls, 0);
    jobs_async(j, &req);
    for (int i = 0; i < WAIT_MS && atomic_load(&async_calls) < 1; i++)
        sleep_ms(1);
    assert_int_equal(atomic_load(&async_calls), 1);
    assert_int_equal(req.status, JOBS_OK);
    assert_int_equal(req.n_jobs, 3);
    assert_true(req.more);
    for (int i = 0; i < 3; i++)
        assert_string_equal(req.jobs[i].id, newest[1 + i]);
    free(req.jobs);
    jobs_req bad = {.op = JOBS_OP_LIST, .owner = "bob", .limit = 3, .cb = on_stored};
    memcpy(bad.id, newest[0], JOBS_ID_MAX);
    jobs_async(j, &bad);
    for (int i = 0; i < WAIT_MS && atomic_load(&async_calls) < 2; i++)
        sleep_ms(1);
    assert_int_equal(bad.status, JOBS_ENOTFOUND);
    assert_null(bad.jobs);
    jobs_close(j);
}

/* Redis only: a job whose hash is gone before the sweep came (expired a
 * moment ago, or evicted) is not listed, leaves its owner's list at the
 * listing, and is no cursor. */
static void test_redis_list_skips_gone_jobs(void **state) {
    fixture *f = *state;
    jobs_options o = options(f);
    o.max_active_per_owner = 10;
    jobs *j = open_ok(&o);
    char ids[3][JOBS_ID_MAX], kept[2][JOBS_ID_MAX];
    for (int i = 0; i < 3; i++)
        submit_ok(j, "alice", 1, ids[i]);
    redisContext *c = redisConnect("127.0.0.1", redis_port);
    assert_true(c && !c->err);
    redisReply *r = redisCommand(c, "DEL %sbatch:job:%s", f->prefix, ids[1]);
    freeReplyObject(r);
    memcpy(kept[0], ids[2], JOBS_ID_MAX);
    memcpy(kept[1], ids[0], JOBS_ID_MAX);
    assert_list(j, "alice", NULL, 1, 1, kept, true);
    assert_list(j, "alice", kept[0], 1, 1, kept + 1, false); /* over the gone one */
    r = redisCommand(c, "ZCARD %sbatch:jobs:alice", f->prefix);
    assert_int_equal(r->integer, 2);
    freeReplyObject(r);
    jobs_info *page = NULL;
    size_t n = 0;
    bool more = false;
    assert_int_equal(jobs_list(j, "alice", ids[1], 10, &page, &n, &more), JOBS_ENOTFOUND);
    redisFree(c);
    jobs_close(j);
}

static void test_bad_directory(void **state) {
    fixture *f = *state;
    char path[128];
    snprintf(path, sizeof path, "%s/jobs.db", f->dir);
    static const char junk[] = "this is not SQLite, this is not SQLite, this is not SQLite, this is not SQLite";
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fwrite(junk, 1, sizeof junk, fp);
    fclose(fp);
    jobs_options o = options(f);
    jobs *j = NULL;
    char err[512] = "";
    assert_int_equal(jobs_open(&o, &j, err, sizeof err), JOBS_EDB);
    assert_null(j);
    assert_non_null(strstr(err, "jobs.db"));
    char back[sizeof junk] = "";
    fp = fopen(path, "r");
    assert_int_equal(fread(back, 1, sizeof back, fp), sizeof junk);
    fclose(fp);
    assert_memory_equal(back, junk, sizeof junk); /* left as it was */
    o.data_dir = "";
    assert_int_equal(jobs_open(&o, &j, err, sizeof err), JOBS_EINVAL);
    o.data_dir = "/proc/aiserve-cannot-be-made";
    assert_int_equal(jobs_open(&o, &j, err, sizeof err), JOBS_EDB);
}

/* A value of the rendered metrics: the line that starts with `series`. */
static double metric_in(metrics_registry *m, const char *series) {
    size_t len = 0;
    char *text = metrics_render(m, &len);
    assert_non_null(text);
    double v = -1;
    for (char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, series, strlen(series)) == 0 && line[strlen(series)] == ' ')
            v = strtod(line + strlen(series) + 1, NULL);
    free(text);
    return v;
}

/* Polls the series until it is want (work nobody waits for: shadow copies). */
static void metric_reaches(metrics_registry *m, const char *series, double want) {
    double v = -1;
    for (int i = 0; i < WAIT_MS / 5 && (v = metric_in(m, series)) != want; i++)
        sleep_ms(5);
    if (v != want)
        fail_msg("%s is %g, never %g", series, v, want);
}

/* Replaces the fixture's repository by one with versions 1 and 2 of
 * sentiment, both the bundled model (and a new registry: one repository
 * per registry). */
static void two_versions(fixture *f) {
    serving_repo_destroy(f->repo);
    metrics_registry_destroy(f->m);
    char repo[128], model[160], version[200];
    snprintf(repo, sizeof repo, "%s/repo", f->dir);
    snprintf(model, sizeof model, "%s/sentiment", repo);
    assert_int_equal(mkdir(repo, 0700), 0);
    assert_int_equal(mkdir(model, 0700), 0);
    for (int v = 1; v <= 2; v++) {
        snprintf(version, sizeof version, "%s/%d", model, v);
        assert_int_equal(symlink(MODELS "/sentiment/1", version), 0);
    }
    f->m = metrics_registry_create();
    serving_options o = {.repository = repo, .engine_threads = 1, .max_batch_size = 8, .max_queue_delay_us = 0,
                         .max_queue_size = 1000, .version_policy = "all"};
    serving_error err = {0};
    assert_int_equal(serving_repo_create(&o, f->m, &f->repo, &err), 0);
    assert_int_equal(serving_repo_start(f->repo), 0);
    for (int i = 0; i < WAIT_MS && !serving_repo_is_settled(f->repo); i++)
        sleep_ms(1);
    assert_true(serving_repo_is_ready(f->repo));
}

/* A cascade (1, then 2 below confidence 1: every input) and a shadow (2,
 * every chunk) configured for the model apply to a job: it runs on the
 * cascade's first version, each result records version 2 and the engine's
 * answer, and both are counted. */
static void test_cascade_and_shadow_apply(void **state) {
    fixture *f = *state;
    two_versions(f);
    serving_error serr = {0};
    serving_cascade cascade = {.first = 1, .then = 2, .threshold = 1.0};
    assert_int_equal(serving_set_cascade(f->repo, "sentiment", &cascade, &serr), 0);
    serving_shadow shadow = {.version = 2, .percent = 100};
    assert_int_equal(serving_set_shadow(f->repo, "sentiment", &shadow, &serr), 0);
    jobs_options o = options(f);
    jobs *j = open_ok(&o);
    assert_int_equal(jobs_start(j), JOBS_OK);
    char id[JOBS_ID_MAX];
    submit_ok(j, "alice", 20, id); /* 3 chunks of 8 */
    jobs_info info = wait_status(j, id, "alice", "completed");
    assert_int_equal(info.version, 1);
    assert_results_equal_engine(j, id, "alice", 20, 2); /* every confidence is below 1: all escalated */
    assert_true(metric_in(f->m, "aiserve_cascade_texts_total{model=\"sentiment\",result=\"escalated\"}") == 20);
    assert_true(metric_in(f->m, "aiserve_cascade_texts_total{model=\"sentiment\",result=\"first\"}") == -1);
    metric_reaches(f->m, "aiserve_shadow_predictions_total{model=\"sentiment\",version=\"2\",result=\"agree\"}", 20);

    /* Without the cascade, the results are the job's version's (0). */
    assert_int_equal(serving_set_cascade(f->repo, "sentiment", &(serving_cascade){0}, &serr), 0);
    submit_ok(j, "alice", 5, id);
    info = wait_status(j, id, "alice", "completed");
    assert_int_equal(info.version, 2);
    assert_results_equal_engine(j, id, "alice", 5, 0);
    jobs_close(j);
}

/* A jobs.db from before results recorded a version: opened, its results
 * table gains the column (0 in the old rows), old results read, new jobs
 * store theirs; opening it again changes nothing. */
static void test_sqlite_migrates_results(void **state) {
    fixture *f = *state;
    char path[128];
    snprintf(path, sizeof path, "%s/jobs.db", f->dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char sql[2048];
    snprintf(sql, sizeof sql,
             "CREATE TABLE jobs (id TEXT PRIMARY KEY, owner TEXT NOT NULL, model TEXT NOT NULL,"
             "  version INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL, kind INTEGER NOT NULL,"
             "  total INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL,"
             "  started_ms INTEGER NOT NULL DEFAULT 0, finished_ms INTEGER NOT NULL DEFAULT 0,"
             "  error TEXT NOT NULL DEFAULT '');"
             "CREATE TABLE inputs (job TEXT NOT NULL, idx INTEGER NOT NULL, text TEXT NOT NULL,"
             "  PRIMARY KEY (job, idx)) WITHOUT ROWID;"
             "CREATE TABLE results (job TEXT NOT NULL, idx INTEGER NOT NULL, label INTEGER NOT NULL,"
             "  confidence REAL NOT NULL, PRIMARY KEY (job, idx)) WITHOUT ROWID;"
             "INSERT INTO jobs VALUES ('batch_old', 'alice', 'sentiment', 1, 'completed', 2, 2, 2, %lld, %lld, "
             "  %lld, '');"
             "INSERT INTO inputs VALUES ('batch_old', 0, 'fine'), ('batch_old', 1, 'awful');"
             "INSERT INTO results VALUES ('batch_old', 0, 1, 0.75), ('batch_old', 1, 0, 0.5);",
             (long long)time(NULL) * 1000, (long long)time(NULL) * 1000, (long long)time(NULL) * 1000);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    jobs_options o = options(f);
    /* Listed, newest first: the old job, then the first round's after it. */
    char listed[2][JOBS_ID_MAX] = {"", "batch_old"};
    for (int open = 0; open < 2; open++) {
        jobs *j = open_ok(&o);
        assert_list(j, "alice", NULL, 10, 1 + (size_t)open, listed + 1 - open, false);
        assert_int_equal(jobs_start(j), JOBS_OK);
        jobs_result *r = NULL;
        size_t n = 0;
        assert_int_equal(jobs_results(j, "batch_old", "alice", 0, 10, &r, &n), JOBS_OK);
        assert_int_equal(n, 2);
        assert_true(r[0].label == 1 && r[0].confidence == 0.75 && r[0].version == 0);
        assert_true(r[1].label == 0 && r[1].confidence == 0.5 && r[1].version == 0);
        free(r);
        char id[JOBS_ID_MAX];
        submit_ok(j, "alice", 10, id);
        if (open == 0)
            memcpy(listed[0], id, JOBS_ID_MAX);
        wait_status(j, id, "alice", "completed");
        assert_results_equal_engine(j, id, "alice", 10, 0);
        jobs_close(j);
    }
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM pragma_table_info('results') WHERE name = 'version'",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    /* The old database gained the owners' index. */
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master WHERE name = 'jobs_by_owner'", -1,
                                        &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* Redis only: a job submitted on one instance is run by another and read
 * on the first; a chunk leased by an instance that died (its lease left to
 * expire) goes back on the queue and is done once. */
static void test_redis_shared_queue_and_expired_lease(void **state) {
    fixture *f = *state;
    jobs_options o = options(f);
    jobs *a = open_ok(&o); /* never started: it only accepts and answers */
    metrics_registry *mb = metrics_registry_create();
    o.metrics = mb;
    jobs *b = open_ok(&o);
    char id[JOBS_ID_MAX];
    submit_ok(a, "alice", 40, id); /* 5 chunks of 8 */

    /* The dead instance: it took a chunk and leased it, then vanished. */
    redisContext *rc = redisConnect("127.0.0.1", redis_port);
    assert_true(rc && !rc->err);
    redisReply *r = redisCommand(rc, "RPOP %sbatch:queue", f->prefix);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    char task[64];
    snprintf(task, sizeof task, "%s", r->str);
    freeReplyObject(r);
    assert_non_null(strstr(task, id));
    r = redisCommand(rc, "ZADD %sbatch:leases 0 %s", f->prefix, task);
    freeReplyObject(r);

    assert_int_equal(jobs_start(b), JOBS_OK);
    jobs_info info = wait_status(a, id, "alice", "completed");
    assert_int_equal(info.done, 40); /* every chunk once */
    assert_int_equal(info.version, 1);
    assert_results_equal_engine(a, id, "alice", 40, 0);
    assert_true(metric_in(mb, "aiserve_batch_lease_expiries_total") == 1);
    assert_true(metric_in(mb, "aiserve_batch_inputs_processed_total") == 40);
    /* Nothing left behind: no task, no lease, no inputs. */
    r = redisCommand(rc, "EXISTS %sbatch:queue %sbatch:leases %sbatch:in:%s", f->prefix, f->prefix, f->prefix, id);
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
    redisFree(rc);
    jobs_close(b);
    jobs_close(a);
    metrics_registry_destroy(mb);
}

static void test_redis_unreachable(void **state) {
    fixture *f = *state;
    snprintf(f->url, sizeof f->url, "redis://127.0.0.1:%d", free_port()); /* nothing listens */
    jobs_options o = options(f);
    jobs *j = open_ok(&o); /* opens: Redis may come later */
    assert_int_equal(jobs_start(j), JOBS_OK);
    const char *texts[1] = {"fine"};
    size_t lens[1] = {4};
    char id[JOBS_ID_MAX], err[512] = "";
    assert_int_equal(jobs_submit(j, JOBS_KIND_V1, "", NULL, texts, lens, 1, id, err, sizeof err),
                     JOBS_EUNAVAILABLE);
    assert_non_null(strstr(err, "cannot connect"));
    jobs_info info;
    assert_int_equal(jobs_get(j, "batch_000000000000000000000000", "", &info), JOBS_EUNAVAILABLE);
    jobs_close(j);
    j = NULL;
    snprintf(f->url, sizeof f->url, "http://127.0.0.1");
    assert_int_equal(jobs_open(&o, &j, err, sizeof err), JOBS_EINVAL);
    assert_null(j);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    redis_port = free_port();
    redis_start();
    srand((unsigned)time(NULL));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_results_equal_engine, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_resume_in_next_process_and_cancel, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_retention, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_async_submit, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_cascade_and_shadow_apply, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_redis_shared_queue_and_expired_lease, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_redis_unreachable, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_list, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_redis_list_skips_gone_jobs, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_results_equal_engine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_in_next_process_and_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_submit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cascade_and_shadow_apply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sqlite_migrates_results, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_directory, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (redis_pid)
        redis_kill();
    return failed;
}
