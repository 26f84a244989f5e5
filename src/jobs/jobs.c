/*
 * jobs.c - batch jobs: the store-neutral parts (options, threads, the
 * requests of jobs_async, the chunk computation) and the SQLite store
 * (jobs.h has the model and the guarantees; redis_jobs.c the Redis store).
 *
 *  - SQLite connections to <data_dir>/jobs.db: `api` (the synchronous
 *    functions and the writer thread, under api_lock), `reader` (the reader
 *    thread) and `work` (the worker). WAL lets readers read while the
 *    worker writes; busy_timeout covers the moments two write.
 *  - The SQLite worker: pick the oldest unfinished job; pin its model
 *    version on first start (serving_resolve's choice); read the next chunk
 *    of inputs after `done`; run it as a background serving_predict request
 *    pinned to that version (cascade and shadow included) and wait for it;
 *    then, in one transaction, insert the chunk's results (with the version
 *    that answered each, when a cascade escalated it) and advance `done` --
 *    but only while the job is still running (a cancel in between rolls the
 *    chunk back). When nothing is left, wait for a submission's kick (or
 *    200 ms).
 *  - Retention: finished jobs older than retention_us are deleted with their
 *    inputs and results, from the worker, at most once a second.
 *  - Listing: an owner's jobs newest first by rowid (the order they were
 *    stored), through the index jobs_by_owner; `after` is a job's rowid.
 *
 * Threads: as jobs.h says. The worker is the only writer of results and of
 * `done`; the API writes new jobs and cancellations.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "jobs_int.h"

const char *const jobs_states[5] = {"queued", "running", "completed", "failed", "cancelled"};

static const status_row status_rows[] = {JOBS_STATUS_MAP(STATUS_TABLE_ROW)};

const char *jobs_status_message(int status) { return status_message(status_rows, STATUS_COUNT(status_rows), status); }

int64_t jobs_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
    "CREATE TABLE IF NOT EXISTS jobs ("
    "  id TEXT PRIMARY KEY, owner TEXT NOT NULL, model TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 0,"
    "  status TEXT NOT NULL, kind INTEGER NOT NULL, total INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL, started_ms INTEGER NOT NULL DEFAULT 0,"
    "  finished_ms INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '');"
    "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, created_ms);"
    /* An owner's jobs in the order they were stored (an index's entries end
     * with the rowid): jobs_list's pages. Databases from before it gain it
     * at open. */
    "CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs(owner);"
    "CREATE TABLE IF NOT EXISTS inputs (job TEXT NOT NULL, idx INTEGER NOT NULL, text TEXT NOT NULL,"
    "  PRIMARY KEY (job, idx)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS results (job TEXT NOT NULL, idx INTEGER NOT NULL, label INTEGER NOT NULL,"
    "  confidence REAL NOT NULL, version INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (job, idx)) WITHOUT ROWID;";

/* A database made before results recorded the version that answered gains
 * the column (0, the job's version, in the rows it has). */
static int migrate(sqlite3 *db) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT 1 FROM pragma_table_info('results') WHERE name = 'version'", -1, &st,
                                NULL);
    int has = rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    if (rc == SQLITE_OK && !has)
        rc = sqlite3_exec(db, "ALTER TABLE results ADD COLUMN version INTEGER NOT NULL DEFAULT 0", NULL, NULL, NULL);
    return rc;
}

static int open_db(const char *path, sqlite3 **out, char *err, size_t cap) {
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_busy_timeout(db, 10000);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, schema, NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = migrate(db);
    if (rc != SQLITE_OK) {
        snprintf(err, cap, "%s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return JOBS_EDB;
    }
    *out = db;
    return JOBS_OK;
}

static int check_integrity(sqlite3 *db, const char *path, char *err, size_t cap) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, NULL);
    if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        const char *r = (const char *)sqlite3_column_text(st, 0);
        if (r && strcmp(r, "ok") == 0) {
            sqlite3_finalize(st);
            return JOBS_OK;
        }
        snprintf(err, cap, "%s fails its integrity check (%.200s); move it away to start with no jobs", path,
                 r ? r : "?");
    } else {
        snprintf(err, cap, "%s: %s", path, sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    return JOBS_EDB;
}

static void register_metrics(jobs *j, metrics_registry *m) {
    if (!m)
        return;
    metric_family *f = metrics_gauge(m, "aiserve_batch_jobs", "Batch jobs held, by state (finished ones until "
                                     "retention deletes them)", 1, (const char *[]){"state"});
    for (int i = 0; i < 5; i++)
        j->by_state[i] = metric_get(f, jobs_states[i], NULL);
    f = metrics_counter(m, "aiserve_batch_inputs_processed_total", "Batch job inputs computed and stored", 0,
                        NULL);
    j->inputs_processed = f ? metric_series(f, NULL) : NULL;
    f = metrics_counter(m, "aiserve_batch_jobs_finished_total", "Batch jobs that ended, by how", 1,
                        (const char *[]){"state"});
    for (int i = 0; i < 3; i++)
        j->jobs_finished[i] = metric_get(f, jobs_states[2 + i], NULL);
    f = metrics_gauge(m, "aiserve_batch_queue_inputs", "Inputs of unfinished batch jobs not yet computed", 0,
                      NULL);
    j->queue_inputs = f ? metric_series(f, NULL) : NULL;
    f = metrics_histogram(m, "aiserve_batch_job_duration_seconds",
                          "From a batch job's submission to its completion", 0, NULL,
                          (const double[]){0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400}, 11);
    j->duration = f ? metric_series(f, NULL) : NULL;
    f = metrics_counter(m, "aiserve_batch_lease_expiries_total",
                        "Chunks of batch jobs whose lease expired (their instance died or stalled) and that this "
                        "instance put back on the shared queue (Redis store only)",
                        0, NULL);
    j->lease_expiries = f ? metric_series(f, NULL) : NULL;
}

void jobs_count_finished(jobs *j, const char *state, int64_t created_ms, int64_t finished_ms) {
    for (int i = 0; i < 3; i++)
        if (strcmp(state, jobs_states[2 + i]) == 0)
            metric_inc(j->jobs_finished[i]);
    if (strcmp(state, "completed") == 0)
        metric_observe(j->duration, (double)(finished_ms - created_ms) / 1000.0);
}

void jobs_set_gauges(jobs *j, const double count[5], double remaining_inputs) {
    for (int i = 0; i < 5; i++)
        metric_set(j->by_state[i], count[i]);
    metric_set(j->queue_inputs, remaining_inputs);
}

static int open_sqlite(jobs *j, char *err, size_t cap) {
    if (mkdir(j->opts.data_dir, 0700) != 0 && errno != EEXIST)
        return snprintf(err, cap, "cannot create %s: %s", j->opts.data_dir, strerror(errno)), JOBS_EDB;
    char path[4200], lock_path[4300];
    snprintf(path, sizeof path, "%s/jobs.db", j->opts.data_dir);
    snprintf(lock_path, sizeof lock_path, "%s.lock", path);
    int rc = JOBS_OK;
    j->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (j->lock_fd < 0)
        rc = JOBS_EDB, snprintf(err, cap, "cannot open %s: %s", lock_path, strerror(errno));
    else if (flock(j->lock_fd, LOCK_EX | LOCK_NB) != 0)
        rc = JOBS_EDB, snprintf(err, cap,
                                "%s is in use by another aiserve process (%s held); give each instance its own "
                                "batch.data_dir, or share jobs through Redis",
                                path, lock_path);
    if (rc == JOBS_OK)
        rc = open_db(path, &j->api.db, err, cap);
    if (rc == JOBS_OK)
        rc = check_integrity(j->api.db, path, err, cap);
    if (rc == JOBS_OK)
        rc = open_db(path, &j->reader.db, err, cap);
    if (rc == JOBS_OK)
        rc = open_db(path, &j->work.db, err, cap);
    return rc;
}

static int open_links(jobs *j, const kv_redis_options *ro, char *err, size_t cap) {
    jobs_conn *conns[3] = {&j->api, &j->reader, &j->work};
    for (int i = 0; i < 3; i++)
        if (kv_redis_link_create(ro, &conns[i]->link, err, cap) != KV_OK)
            return JOBS_EINVAL;
    rjobs_check(j);
    return JOBS_OK;
}

int jobs_open(const jobs_options *opts, jobs **out, char *err, size_t cap) {
    *out = NULL;
    if (!opts || (!opts->redis && (!opts->data_dir || !*opts->data_dir)) || !opts->repo || opts->max_inputs < 1 ||
        opts->max_active_per_owner < 1)
        return snprintf(err, cap, "jobs: invalid options"), JOBS_EINVAL;
    jobs *j = calloc(1, sizeof *j);
    if (!j)
        return snprintf(err, cap, "out of memory"), JOBS_ENOMEM;
    j->opts = *opts;
    j->opts.redis = NULL; /* borrowed for this call only */
    j->redis = opts->redis != NULL;
    if (!j->opts.chunk_size)
        j->opts.chunk_size = 32;
    if (!j->opts.lease_us)
        j->opts.lease_us = 30000000u;
    j->lock_fd = -1;
    pthread_mutex_init(&j->api_lock, NULL);
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->wake, NULL);
    pthread_mutex_init(&j->chunk_lock, NULL);
    pthread_cond_init(&j->chunk_done, NULL);
    pthread_mutex_init(&j->health_lock, NULL);
    int rc = j->redis ? open_links(j, opts->redis, err, cap) : open_sqlite(j, err, cap);
    j->opts.data_dir = NULL; /* borrowed too; only open_sqlite needs it */
    if (rc != JOBS_OK) {
        jobs_close(j);
        return rc;
    }
    register_metrics(j, opts->metrics);
    *out = j;
    return JOBS_OK;
}

/* ---- the API --------------------------------------------------------------- */

void jobs_new_id(char id[JOBS_ID_MAX]) {
    unsigned char b[12];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) /* never on Linux >= 3.17 with a seeded pool */
        for (size_t i = 0; i < sizeof b; i++)
            b[i] = (unsigned char)random();
    int n = snprintf(id, JOBS_ID_MAX, "batch_");
    for (size_t i = 0; i < sizeof b; i++)
        n += snprintf(id + n, (size_t)(JOBS_ID_MAX - n), "%02x", b[i]);
}

static void kick(jobs *j) {
    pthread_mutex_lock(&j->lock);
    j->kicked = true;
    pthread_cond_broadcast(&j->wake);
    pthread_mutex_unlock(&j->lock);
}

int jobs_check_submit(jobs *j, size_t n, const char *model, char model_name[256], char *err, size_t cap) {
    if (n == 0)
        return snprintf(err, cap, "a job needs at least one input"), JOBS_EINVAL;
    if (n > j->opts.max_inputs)
        return snprintf(err, cap, "the job has %zu inputs; the limit is %zu", n, j->opts.max_inputs),
               JOBS_EINVAL;
    serving_version *v = NULL;
    serving_error serr = {0};
    int src = serving_acquire(j->opts.repo, model, 0, &v, &serr);
    if (src == SERVING_ENOTFOUND)
        return snprintf(err, cap, "%s", serr.message), JOBS_ENOMODEL;
    snprintf(model_name, 256, "%s",
             v ? serving_version_model(v) : model ? model : serving_repo_default_model(j->opts.repo));
    if (v)
        serving_version_release(v);
    return JOBS_OK;
}

#define DB_FAIL(db) (snprintf(err, cap, "job database: %s", sqlite3_errmsg(db)), JOBS_EDB)

static int sqlite_submit(jobs *j, sqlite3 *db, jobs_kind kind, const char *owner, const char *model_name,
                         const char *const *texts, const size_t *lens, size_t n, char id_out[JOBS_ID_MAX],
                         char *err, size_t cap) {
    int rc = JOBS_OK;
    sqlite3_stmt *st = NULL;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return DB_FAIL(db);
    /* Concurrent jobs per owner, counted inside the transaction. */
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM jobs WHERE owner = ?1 AND status IN ('queued', 'running')",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = DB_FAIL(db);
        goto rollback;
    }
    sqlite3_bind_text(st, 1, owner, -1, SQLITE_STATIC);
    int active = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
    sqlite3_finalize(st);
    st = NULL;
    if (active >= j->opts.max_active_per_owner) {
        rc = JOBS_ELIMIT;
        snprintf(err, cap, "%d jobs of this key are unfinished; the limit is %d (wait for one, or cancel one)",
                 active, j->opts.max_active_per_owner);
        goto rollback;
    }
    jobs_new_id(id_out);
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO jobs (id, owner, model, status, kind, total, created_ms) "
                           "VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6)",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = DB_FAIL(db);
        goto rollback;
    }
    sqlite3_bind_text(st, 1, id_out, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, model_name, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, (int)kind);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)n);
    sqlite3_bind_int64(st, 6, jobs_now_ms());
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = DB_FAIL(db);
        goto rollback;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(db, "INSERT INTO inputs (job, idx, text) VALUES (?1, ?2, ?3)", -1, &st, NULL) !=
        SQLITE_OK) {
        rc = DB_FAIL(db);
        goto rollback;
    }
    for (size_t i = 0; i < n; i++) {
        sqlite3_bind_text(st, 1, id_out, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)i);
        sqlite3_bind_text(st, 3, texts[i], (int)lens[i], SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE) {
            rc = DB_FAIL(db);
            goto rollback;
        }
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        rc = DB_FAIL(db);
        goto rollback;
    }
    return JOBS_OK;
rollback:
    sqlite3_finalize(st);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static int conn_submit(jobs *j, jobs_conn *c, jobs_kind kind, const char *owner, const char *model,
                       const char *const *texts, const size_t *lens, size_t n, char id_out[JOBS_ID_MAX], char *err,
                       size_t cap) {
    char model_name[256];
    int rc = jobs_check_submit(j, n, model, model_name, err, cap);
    if (rc != JOBS_OK)
        return rc;
    if (!owner)
        owner = "";
    rc = j->redis ? rjobs_submit(j, c->link, kind, owner, model_name, texts, lens, n, id_out, err, cap)
                  : sqlite_submit(j, c->db, kind, owner, model_name, texts, lens, n, id_out, err, cap);
    if (rc == JOBS_OK)
        kick(j);
    return rc;
}

static void info_from_row(sqlite3_stmt *st, jobs_info *out) {
    memset(out, 0, sizeof *out);
    snprintf(out->id, sizeof out->id, "%s", (const char *)sqlite3_column_text(st, 0));
    snprintf(out->model, sizeof out->model, "%s", (const char *)sqlite3_column_text(st, 1));
    out->version = (long)sqlite3_column_int64(st, 2);
    snprintf(out->status, sizeof out->status, "%s", (const char *)sqlite3_column_text(st, 3));
    out->kind = (jobs_kind)sqlite3_column_int(st, 4);
    out->total = (size_t)sqlite3_column_int64(st, 5);
    out->done = (size_t)sqlite3_column_int64(st, 6);
    out->created_ms = sqlite3_column_int64(st, 7);
    out->started_ms = sqlite3_column_int64(st, 8);
    out->finished_ms = sqlite3_column_int64(st, 9);
    snprintf(out->error, sizeof out->error, "%s", (const char *)sqlite3_column_text(st, 10));
}

#define INFO_COLUMNS "id, model, version, status, kind, total, done, created_ms, started_ms, finished_ms, error"

static int conn_get(jobs *j, jobs_conn *c, const char *id, const char *owner, jobs_info *out, char *err,
                    size_t cap) {
    if (!owner)
        owner = "";
    if (j->redis)
        return rjobs_get(j, c->link, id, owner, out, err, cap);
    sqlite3_stmt *st = NULL;
    int rc = JOBS_ENOTFOUND;
    if (sqlite3_prepare_v2(c->db, "SELECT " INFO_COLUMNS " FROM jobs WHERE id = ?1 AND owner = ?2", -1, &st,
                           NULL) != SQLITE_OK) {
        rc = DB_FAIL(c->db);
    } else {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
        int s = sqlite3_step(st);
        if (s == SQLITE_ROW) {
            info_from_row(st, out);
            rc = JOBS_OK;
        } else if (s != SQLITE_DONE) {
            rc = DB_FAIL(c->db);
        }
    }
    sqlite3_finalize(st);
    return rc;
}

/* Appends a row to a growing array of jobs (*out, *n); false when out of
 * memory. */
static bool append_info(sqlite3_stmt *st, jobs_info **out, size_t *n, size_t *cap) {
    if (*n == *cap) {
        size_t more = *cap ? 2 * *cap : 16;
        jobs_info *grown = realloc(*out, more * sizeof *grown);
        if (!grown)
            return false;
        *out = grown;
        *cap = more;
    }
    info_from_row(st, &(*out)[(*n)++]);
    return true;
}

/* SQLite's jobs_list: an owner's jobs by rowid, which grows with every job
 * stored (a deleted largest one's rowid comes back, still above the rest). */
static int sqlite_list(sqlite3 *db, const char *owner, const char *after, size_t limit, jobs_info **out,
                       size_t *n, bool *more, char *err, size_t cap) {
    sqlite3_stmt *st = NULL;
    sqlite3_int64 below = INT64_MAX;
    int rc = JOBS_OK;
    if (*after) {
        if (sqlite3_prepare_v2(db, "SELECT rowid FROM jobs WHERE id = ?1 AND owner = ?2", -1, &st, NULL) !=
            SQLITE_OK)
            return DB_FAIL(db);
        sqlite3_bind_text(st, 1, after, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
        int s = sqlite3_step(st);
        if (s == SQLITE_ROW)
            below = sqlite3_column_int64(st, 0);
        else if (s == SQLITE_DONE)
            rc = JOBS_ENOTFOUND, snprintf(err, cap, "no job %s of this owner", after);
        else
            rc = DB_FAIL(db);
        sqlite3_finalize(st);
        if (rc != JOBS_OK)
            return rc;
    }
    if (sqlite3_prepare_v2(db,
                           "SELECT " INFO_COLUMNS " FROM jobs WHERE owner = ?1 AND rowid < ?2 "
                           "ORDER BY rowid DESC LIMIT ?3",
                           -1, &st, NULL) != SQLITE_OK)
        return DB_FAIL(db);
    sqlite3_bind_text(st, 1, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, below);
    sqlite3_bind_int64(st, 3, limit < (size_t)INT64_MAX ? (sqlite3_int64)limit + 1 : INT64_MAX); /* one more: *more */
    size_t room = 0;
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == limit) {
            *more = true;
            continue;
        }
        if (!append_info(st, out, n, &room)) {
            rc = JOBS_ENOMEM, snprintf(err, cap, "out of memory");
            break;
        }
    }
    if (rc == JOBS_OK && s != SQLITE_DONE)
        rc = DB_FAIL(db);
    sqlite3_finalize(st);
    return rc;
}

static int conn_list(jobs *j, jobs_conn *c, const char *owner, const char *after, size_t limit, jobs_info **out,
                     size_t *n, bool *more, char *err, size_t cap) {
    *out = NULL;
    *n = 0;
    *more = false;
    if (limit == 0)
        return snprintf(err, cap, "a page holds at least one job"), JOBS_EINVAL;
    int rc = j->redis ? rjobs_list(j, c->link, owner ? owner : "", after ? after : "", limit, out, n, more, err, cap)
                      : sqlite_list(c->db, owner ? owner : "", after ? after : "", limit, out, n, more, err, cap);
    if (rc != JOBS_OK) {
        free(*out);
        *out = NULL;
        *n = 0;
        *more = false;
    }
    return rc;
}

static int sqlite_results(sqlite3 *db, const char *id, size_t offset, size_t limit, jobs_result *r, char *err,
                          size_t cap) {
    sqlite3_stmt *st = NULL;
    int rc = JOBS_OK;
    if (sqlite3_prepare_v2(db,
                           "SELECT idx, label, confidence, version FROM results WHERE job = ?1 AND idx >= ?2 AND "
                           "idx < ?3",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = DB_FAIL(db);
    } else {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)offset);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)(offset + limit));
        int s;
        while ((s = sqlite3_step(st)) == SQLITE_ROW) {
            size_t k = (size_t)sqlite3_column_int64(st, 0) - offset;
            if (k < limit)
                r[k] = (jobs_result){.label = sqlite3_column_int(st, 1), .confidence = sqlite3_column_double(st, 2),
                                     .version = (long)sqlite3_column_int64(st, 3)};
        }
        if (s != SQLITE_DONE)
            rc = DB_FAIL(db);
    }
    sqlite3_finalize(st);
    return rc;
}

static int conn_results(jobs *j, jobs_conn *c, const char *id, const char *owner, size_t offset, size_t limit,
                        jobs_info *info, jobs_result **out, size_t *n, char *err, size_t cap) {
    *out = NULL;
    *n = 0;
    int rc = conn_get(j, c, id, owner, info, err, cap);
    if (rc != JOBS_OK)
        return rc;
    if (offset >= info->total || limit == 0)
        return JOBS_OK;
    if (limit > info->total - offset)
        limit = info->total - offset;
    jobs_result *r = malloc(limit * sizeof *r);
    if (!r)
        return snprintf(err, cap, "out of memory"), JOBS_ENOMEM;
    for (size_t i = 0; i < limit; i++)
        r[i] = (jobs_result){.label = -1};
    rc = j->redis ? rjobs_results(j, c->link, info, offset, limit, r, err, cap)
                  : sqlite_results(c->db, id, offset, limit, r, err, cap);
    if (rc != JOBS_OK) {
        free(r);
        return rc;
    }
    *out = r;
    *n = limit;
    return JOBS_OK;
}

static int conn_cancel(jobs *j, jobs_conn *c, const char *id, const char *owner, char *err, size_t cap) {
    if (!owner)
        owner = "";
    int rc;
    if (j->redis) {
        rc = rjobs_cancel(j, c->link, id, owner, err, cap);
    } else {
        jobs_info info;
        rc = conn_get(j, c, id, owner, &info, err, cap);
        if (rc != JOBS_OK)
            return rc;
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(c->db,
                               "UPDATE jobs SET status = 'cancelled', finished_ms = ?3 "
                               "WHERE id = ?1 AND owner = ?2 AND status IN ('queued', 'running')",
                               -1, &st, NULL) != SQLITE_OK) {
            rc = DB_FAIL(c->db);
        } else {
            sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 3, jobs_now_ms());
            if (sqlite3_step(st) != SQLITE_DONE)
                rc = DB_FAIL(c->db);
            else if (sqlite3_changes(c->db) == 0)
                rc = JOBS_EFINISHED;
        }
        sqlite3_finalize(st);
    }
    if (rc == JOBS_OK)
        jobs_count_finished(j, "cancelled", 0, 0);
    return rc;
}

/* The synchronous API: the `api` connection, under api_lock. */

int jobs_submit(jobs *j, jobs_kind kind, const char *owner, const char *model, const char *const *texts,
                const size_t *lens, size_t n, char id_out[JOBS_ID_MAX], char *err, size_t cap) {
    pthread_mutex_lock(&j->api_lock);
    int rc = conn_submit(j, &j->api, kind, owner, model, texts, lens, n, id_out, err, cap);
    pthread_mutex_unlock(&j->api_lock);
    return rc;
}

int jobs_get(jobs *j, const char *id, const char *owner, jobs_info *out) {
    char err[256];
    pthread_mutex_lock(&j->api_lock);
    int rc = conn_get(j, &j->api, id, owner, out, err, sizeof err);
    pthread_mutex_unlock(&j->api_lock);
    return rc;
}

int jobs_results(jobs *j, const char *id, const char *owner, size_t offset, size_t limit, jobs_result **out,
                 size_t *n) {
    char err[256];
    jobs_info info;
    pthread_mutex_lock(&j->api_lock);
    int rc = conn_results(j, &j->api, id, owner, offset, limit, &info, out, n, err, sizeof err);
    pthread_mutex_unlock(&j->api_lock);
    return rc;
}

int jobs_list(jobs *j, const char *owner, const char *after, size_t limit, jobs_info **out, size_t *n,
              bool *more) {
    char err[256];
    pthread_mutex_lock(&j->api_lock);
    int rc = conn_list(j, &j->api, owner, after, limit, out, n, more, err, sizeof err);
    pthread_mutex_unlock(&j->api_lock);
    return rc;
}

int jobs_cancel(jobs *j, const char *id, const char *owner) {
    char err[256];
    pthread_mutex_lock(&j->api_lock);
    int rc = conn_cancel(j, &j->api, id, owner, err, sizeof err);
    pthread_mutex_unlock(&j->api_lock);
    return rc;
}

bool jobs_queue_ok(jobs *j, char *reason, size_t cap) {
    if (!atomic_load(&j->queue_down))
        return true;
    pthread_mutex_lock(&j->health_lock);
    snprintf(reason, cap, "%s", j->queue_error);
    pthread_mutex_unlock(&j->health_lock);
    return false;
}

const char *jobs_store_name(const jobs *j) { return j->redis ? "redis" : "sqlite"; }

/* Runs one request of jobs_async on connection c; then its callback. */
static void run_request(jobs *j, jobs_conn *c, jobs_req *r) {
    r->error[0] = 0;
    r->results = NULL;
    r->n_results = 0;
    r->jobs = NULL;
    r->n_jobs = 0;
    r->more = false;
    char *err = r->error;
    size_t cap = sizeof r->error;
    switch (r->op) {
    case JOBS_OP_SUBMIT:
        r->status = conn_submit(j, c, r->kind, r->owner, r->model, r->texts, r->lens, r->n, r->id, err, cap);
        if (r->status == JOBS_OK && (r->status = conn_get(j, c, r->id, r->owner, &r->info, err, cap)) == JOBS_OK) {
            /* As stored: the worker may have begun since. */
            snprintf(r->info.status, sizeof r->info.status, "queued");
            r->info.done = 0;
            r->info.version = 0;
            r->info.started_ms = r->info.finished_ms = 0;
        }
        break;
    case JOBS_OP_GET:
        r->status = conn_get(j, c, r->id, r->owner, &r->info, err, cap);
        break;
    case JOBS_OP_RESULTS:
        r->status = conn_results(j, c, r->id, r->owner, r->offset, r->limit, &r->info, &r->results, &r->n_results,
                                 err, cap);
        break;
    case JOBS_OP_CANCEL:
        r->status = conn_cancel(j, c, r->id, r->owner, err, cap);
        if (r->status == JOBS_OK)
            r->status = conn_get(j, c, r->id, r->owner, &r->info, err, cap);
        break;
    case JOBS_OP_LIST:
        r->status = conn_list(j, c, r->owner, r->id, r->limit, &r->jobs, &r->n_jobs, &r->more, err, cap);
        break;
    default:
        r->status = JOBS_EINVAL;
        snprintf(err, cap, "unknown operation");
        break;
    }
    r->cb(r);
}

/* ---- the worker ------------------------------------------------------------- */

bool jobs_is_stopping(jobs *j) {
    pthread_mutex_lock(&j->lock);
    bool s = j->stopping;
    pthread_mutex_unlock(&j->lock);
    return s;
}

static struct timespec deadline_in(int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L)
        ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    return ts;
}

void jobs_nap(jobs *j, int ms) {
    struct timespec ts = deadline_in(ms);
    pthread_mutex_lock(&j->lock);
    while (!j->stopping && !j->kicked)
        if (pthread_cond_timedwait(&j->wake, &j->lock, &ts) != 0)
            break;
    j->kicked = false;
    pthread_mutex_unlock(&j->lock);
}

static void on_chunk_done(serving_request *r, void *user) {
    (void)r;
    jobs *j = user;
    pthread_mutex_lock(&j->chunk_lock);
    j->chunk_finished = true;
    pthread_cond_signal(&j->chunk_done);
    pthread_mutex_unlock(&j->chunk_lock);
}

int jobs_resolve(jobs *j, const char *id, const char *model, long version, serving_request *r,
                 serving_error *err) {
    r->model = model;
    r->version = version;
    r->user_id = id;
    r->user_id_len = strlen(id);
    r->task = SERVING_TASK_CLASSIFY;
    r->allow_cascade = 1;
    r->allow_shadow = 1;
    r->background = 1;
    return serving_resolve(j->opts.repo, r, err);
}

int jobs_compute(jobs *j, serving_request *r, char **texts, const size_t *lens, size_t n, jobs_result *out,
                 void (*waiting)(void *ud), void *ud, int period_ms, char *err, size_t cap) {
    r->texts = (const char *const *)texts;
    r->lens = lens;
    r->n = n;
    r->on_done = on_chunk_done;
    r->user = j;
    j->chunk_finished = false;
    if (serving_predict(j->opts.repo, r) != 0) /* stopping, or refused: later */
        return 1;
    pthread_mutex_lock(&j->chunk_lock);
    while (!j->chunk_finished) {
        if (!waiting) {
            pthread_cond_wait(&j->chunk_done, &j->chunk_lock);
            continue;
        }
        struct timespec ts = deadline_in(period_ms);
        if (pthread_cond_timedwait(&j->chunk_done, &j->chunk_lock, &ts) != 0 && !j->chunk_finished) {
            pthread_mutex_unlock(&j->chunk_lock);
            waiting(ud);
            pthread_mutex_lock(&j->chunk_lock);
        }
    }
    pthread_mutex_unlock(&j->chunk_lock);
    if (r->status == SERVING_ESTOPPED)
        return 1;
    if (r->status != 0) {
        snprintf(err, cap, "%s", r->error[0] ? r->error : "inference failed");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const serving_text_result *t = &r->results[i];
        out[i] = (jobs_result){.label = t->label, .confidence = (double)t->confidence,
                               .version = t->version == r->first ? 0 : serving_version_number(t->version)};
    }
    return 0;
}

static int exec_sql(sqlite3 *db, const char *sql, const char *id, int64_t a, const char *text) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, a);
        if (text)
            sqlite3_bind_text(st, 3, text, -1, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
    }
    sqlite3_finalize(st);
    return rc;
}

static void fail_job(jobs *j, const char *id, const char *why) {
    if (exec_sql(j->work.db,
                 "UPDATE jobs SET status = 'failed', finished_ms = ?2, error = ?3 WHERE id = ?1 AND status = 'running'",
                 id, jobs_now_ms(), why) == SQLITE_OK &&
        sqlite3_changes(j->work.db) > 0)
        jobs_count_finished(j, "failed", 0, 0);
    log_event(LOG_ERROR, "batch_job_failed", "id", json_string(id), "error", json_string(why), NULL);
}

/* Refreshes the gauges from the database (worker connection). */
static void update_gauges(jobs *j) {
    if (!j->by_state[0])
        return;
    double count[5] = {0}, remaining = 0;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(j->work.db, "SELECT status, count(*), sum(total - done) FROM jobs GROUP BY status", -1,
                           &st, NULL) == SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *s = (const char *)sqlite3_column_text(st, 0);
            for (int i = 0; i < 5; i++)
                if (s && strcmp(s, jobs_states[i]) == 0) {
                    count[i] = sqlite3_column_double(st, 1);
                    if (i < 2)
                        remaining += sqlite3_column_double(st, 2);
                }
        }
    }
    sqlite3_finalize(st);
    jobs_set_gauges(j, count, remaining);
}

static void purge_expired(jobs *j) {
    sqlite3 *db = j->work.db;
    int64_t cutoff = jobs_now_ms() - (int64_t)(j->opts.retention_us / 1000);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT id FROM jobs WHERE status IN ('completed', 'failed', 'cancelled') "
                           "AND finished_ms > 0 AND finished_ms <= ?1 LIMIT 100",
                           -1, &st, NULL) != SQLITE_OK)
        return;
    sqlite3_bind_int64(st, 1, cutoff);
    char ids[100][JOBS_ID_MAX];
    int n = 0;
    while (n < 100 && sqlite3_step(st) == SQLITE_ROW)
        snprintf(ids[n++], JOBS_ID_MAX, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    for (int i = 0; i < n; i++) {
        sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        int ok = exec_sql(db, "DELETE FROM results WHERE job = ?1 AND ?2 >= 0", ids[i], 0, NULL) == SQLITE_OK &&
                 exec_sql(db, "DELETE FROM inputs WHERE job = ?1 AND ?2 >= 0", ids[i], 0, NULL) == SQLITE_OK &&
                 exec_sql(db, "DELETE FROM jobs WHERE id = ?1 AND ?2 >= 0", ids[i], 0, NULL) == SQLITE_OK;
        sqlite3_exec(db, ok ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL);
        if (ok)
            log_event(LOG_INFO, "batch_job_purged", "id", json_string(ids[i]), NULL);
    }
}

/* Stores a chunk's results and advances `done`, in one transaction, only
 * while the job still runs from where the chunk began. */
static int store_chunk(sqlite3 *db, const jobs_info *info, const jobs_result *res, size_t n, bool finished,
                       int64_t t) {
    sqlite3_stmt *st = NULL;
    int ok = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
    if (ok && sqlite3_prepare_v2(db,
                                 "INSERT INTO results (job, idx, label, confidence, version) "
                                 "VALUES (?1, ?2, ?3, ?4, ?5)",
                                 -1, &st, NULL) == SQLITE_OK) {
        for (size_t i = 0; i < n && ok; i++) {
            sqlite3_bind_text(st, 1, info->id, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, (sqlite3_int64)(info->done + i));
            sqlite3_bind_int(st, 3, res[i].label);
            sqlite3_bind_double(st, 4, res[i].confidence);
            sqlite3_bind_int64(st, 5, (sqlite3_int64)res[i].version);
            ok = sqlite3_step(st) == SQLITE_DONE;
            sqlite3_reset(st);
        }
        sqlite3_finalize(st);
    } else {
        ok = 0;
    }
    if (ok && sqlite3_prepare_v2(db,
                                 "UPDATE jobs SET done = done + ?2, status = ?3, finished_ms = ?4 "
                                 "WHERE id = ?1 AND status = 'running' AND done = ?5",
                                 -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, info->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)n);
        sqlite3_bind_text(st, 3, finished ? "completed" : "running", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, finished ? t : 0);
        sqlite3_bind_int64(st, 5, (sqlite3_int64)info->done);
        ok = sqlite3_step(st) == SQLITE_DONE && sqlite3_changes(db) == 1;
        sqlite3_finalize(st);
    } else {
        ok = 0;
    }
    sqlite3_exec(db, ok ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL);
    return ok;
}

/* Runs one chunk of the oldest unfinished job. Returns 1 when it did some
 * work, 0 when there was nothing to do (or it should wait). */
static int run_one_chunk(jobs *j) {
    sqlite3 *db = j->work.db;
    sqlite3_stmt *st = NULL;
    jobs_info info;
    if (sqlite3_prepare_v2(db,
                           "SELECT " INFO_COLUMNS " FROM jobs WHERE status IN ('queued', 'running') "
                           "ORDER BY created_ms, rowid LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        return 0;
    int found = sqlite3_step(st) == SQLITE_ROW;
    if (found)
        info_from_row(st, &info);
    sqlite3_finalize(st);
    if (!found)
        return 0;

    /* The version: pinned at the first start, so a job sees one version
     * first. */
    serving_request req;
    serving_request_init(&req);
    serving_error serr = {0};
    int rc = jobs_resolve(j, info.id, info.model, info.version, &req, &serr);
    if (rc == SERVING_ENOTREADY) /* models still loading: later */
        return 0;
    if (rc != 0) {
        if (strcmp(info.status, "queued") == 0)
            exec_sql(db, "UPDATE jobs SET status = 'running', started_ms = ?2 WHERE id = ?1", info.id,
                     jobs_now_ms(), NULL);
        fail_job(j, info.id, serr.message[0] ? serr.message : "the model version is gone");
        return 1;
    }
    if (strcmp(info.status, "queued") == 0) {
        info.version = serving_version_number(req.first);
        sqlite3_stmt *up = NULL;
        if (sqlite3_prepare_v2(db,
                               "UPDATE jobs SET status = 'running', started_ms = ?2, version = ?3 "
                               "WHERE id = ?1 AND status = 'queued'",
                               -1, &up, NULL) == SQLITE_OK) {
            sqlite3_bind_text(up, 1, info.id, -1, SQLITE_STATIC);
            sqlite3_bind_int64(up, 2, jobs_now_ms());
            sqlite3_bind_int64(up, 3, info.version);
            sqlite3_step(up);
        }
        sqlite3_finalize(up);
        log_event(LOG_INFO, "batch_job_started", "id", json_string(info.id), "model", json_string(info.model),
                  "version", json_integer(info.version), "inputs", json_integer((json_int_t)info.total), NULL);
    }

    /* The next chunk's inputs. */
    size_t cap = j->opts.chunk_size, n = 0;
    char **texts = calloc(cap, sizeof *texts);
    size_t *lens = calloc(cap, sizeof *lens);
    jobs_result *res = calloc(cap, sizeof *res);
    if (!texts || !lens || !res) {
        free(texts), free(lens), free(res);
        serving_request_fini(&req);
        return 0;
    }
    if (sqlite3_prepare_v2(db, "SELECT text FROM inputs WHERE job = ?1 AND idx >= ?2 ORDER BY idx LIMIT ?3", -1,
                           &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, info.id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)info.done);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)cap);
        while (n < cap && sqlite3_step(st) == SQLITE_ROW) {
            lens[n] = (size_t)sqlite3_column_bytes(st, 0);
            texts[n] = strndup((const char *)sqlite3_column_text(st, 0), lens[n]);
            if (!texts[n])
                break;
            n++;
        }
    }
    sqlite3_finalize(st);

    int did = 1;
    char why[256];
    if (n == 0) {
        fail_job(j, info.id, "the job's inputs are missing from the database");
    } else if ((rc = jobs_compute(j, &req, texts, lens, n, res, NULL, NULL, 0, why, sizeof why)) == 1) {
        did = 0; /* stopping, or refused: try again later */
    } else if (rc != 0) {
        fail_job(j, info.id, why);
    } else {
        bool finished = info.done + n >= info.total;
        int64_t t = jobs_now_ms();
        if (store_chunk(db, &info, res, n, finished, t)) {
            metric_add(j->inputs_processed, (double)n);
            if (finished) {
                jobs_count_finished(j, "completed", info.created_ms, t);
                log_event(LOG_INFO, "batch_job_completed", "id", json_string(info.id), "inputs",
                          json_integer((json_int_t)info.total), "seconds",
                          json_real((double)(t - info.created_ms) / 1000.0), NULL);
            }
        }
    }
    for (size_t i = 0; i < n; i++)
        free(texts[i]);
    free(texts), free(lens), free(res);
    serving_request_fini(&req);
    return did;
}

static void *sqlite_worker_main(void *arg) {
    jobs *j = arg;
    uint64_t last_purge = 0;
    while (!jobs_is_stopping(j)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t now = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
        if (now - last_purge >= 1000) {
            purge_expired(j);
            update_gauges(j);
            last_purge = now;
        }
        if (!run_one_chunk(j)) {
            update_gauges(j);
            jobs_nap(j, 200);
        }
    }
    return NULL;
}

/* ---- jobs_async's threads ----------------------------------------------------- */

typedef struct api_thread {
    jobs *j;
    jobs_queue *q;
    jobs_conn *c;
    pthread_mutex_t *conn_lock; /* the writer shares `api` with the synchronous functions */
} api_thread;

static void *api_main(void *arg) {
    api_thread t = *(api_thread *)arg;
    free(arg);
    jobs *j = t.j;
    pthread_mutex_lock(&j->lock);
    for (;;) {
        while (!j->stopping && !t.q->head)
            pthread_cond_wait(&j->wake, &j->lock);
        if (!t.q->head) /* stopping, nothing left */
            break;
        jobs_req *r = t.q->head;
        t.q->head = r->next_;
        if (!t.q->head)
            t.q->tail = NULL;
        pthread_mutex_unlock(&j->lock);
        if (t.conn_lock)
            pthread_mutex_lock(t.conn_lock);
        run_request(j, t.c, r);
        if (t.conn_lock)
            pthread_mutex_unlock(t.conn_lock);
        pthread_mutex_lock(&j->lock);
    }
    pthread_mutex_unlock(&j->lock);
    return NULL;
}

void jobs_async(jobs *j, jobs_req *req) {
    req->next_ = NULL;
    pthread_mutex_lock(&j->lock);
    jobs_queue *q = req->op == JOBS_OP_SUBMIT ? &j->writes : &j->reads;
    if (q->tail)
        q->tail->next_ = req;
    else
        q->head = req;
    q->tail = req;
    pthread_cond_broadcast(&j->wake);
    pthread_mutex_unlock(&j->lock);
}

static int start_api_thread(jobs *j, pthread_t *th, jobs_queue *q, jobs_conn *c, pthread_mutex_t *conn_lock) {
    api_thread *t = malloc(sizeof *t);
    if (!t)
        return -1;
    *t = (api_thread){.j = j, .q = q, .c = c, .conn_lock = conn_lock};
    if (pthread_create(th, NULL, api_main, t) != 0) {
        free(t);
        return -1;
    }
    return 0;
}

int jobs_start(jobs *j) {
    if (start_api_thread(j, &j->writer, &j->writes, &j->api, &j->api_lock) != 0)
        return JOBS_ENOMEM;
    j->writer_started = true;
    if (start_api_thread(j, &j->reader_thread, &j->reads, &j->reader, NULL) != 0)
        return JOBS_ENOMEM;
    j->reader_started = true;
    if (pthread_create(&j->worker, NULL, j->redis ? rjobs_worker_main : sqlite_worker_main, j) != 0)
        return JOBS_ENOMEM;
    j->worker_started = true;
    return JOBS_OK;
}

static void refuse_queued(jobs_queue *q) {
    while (q->head) { /* never started: refuse what came */
        jobs_req *r = q->head;
        q->head = r->next_;
        r->status = JOBS_EUNAVAILABLE;
        r->results = NULL;
        r->n_results = 0;
        r->jobs = NULL;
        r->n_jobs = 0;
        r->more = false;
        snprintf(r->error, sizeof r->error, "the batch job system is shutting down");
        r->cb(r);
    }
    q->tail = NULL;
}

static void close_conn(jobs_conn *c) {
    sqlite3_close(c->db);
    kv_redis_link_destroy(c->link);
}

void jobs_close(jobs *j) {
    if (!j)
        return;
    pthread_mutex_lock(&j->lock);
    j->stopping = true;
    pthread_cond_broadcast(&j->wake);
    pthread_mutex_unlock(&j->lock);
    if (j->worker_started)
        pthread_join(j->worker, NULL);
    if (j->writer_started) /* it stores what is queued, then stops */
        pthread_join(j->writer, NULL);
    if (j->reader_started)
        pthread_join(j->reader_thread, NULL);
    refuse_queued(&j->writes);
    refuse_queued(&j->reads);
    close_conn(&j->work);
    close_conn(&j->reader);
    close_conn(&j->api);
    if (j->lock_fd >= 0)
        close(j->lock_fd);
    pthread_mutex_destroy(&j->api_lock);
    pthread_mutex_destroy(&j->lock);
    pthread_cond_destroy(&j->wake);
    pthread_mutex_destroy(&j->chunk_lock);
    pthread_cond_destroy(&j->chunk_done);
    pthread_mutex_destroy(&j->health_lock);
    free(j);
}
