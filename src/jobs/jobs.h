/*
 * jobs.h - the jobs module's one public header: asynchronous batch jobs
 * (the seed's /batch_predict and /v1/batch), persisted in SQLite so that
 * nothing is lost or done twice across a crash, run through the same
 * schedulers as online requests at background priority.
 *
 * Model (what a user sees):
 *  - A job is a list of texts for one model, owned by the API key that
 *    submitted it ("" when the server has no keys). Its id is "batch_" and
 *    24 hex digits of random bytes. Status: queued -> running ->
 *    completed | failed | cancelled.
 *  - A result per input, in input order: the label id and its probability,
 *    computed by the model's newest available version when the job started
 *    (kept in the job, so every input of one job sees one version).
 *  - Jobs of other owners do not exist for a caller (JOBS_ENOTFOUND).
 *
 * Persistence (SQLite, WAL, synchronous=FULL) in <data_dir>/jobs.db:
 *  - jobs(id, owner, model, version, status, total, done, created_ms,
 *    started_ms, finished_ms, error, kind); inputs(job, idx, text);
 *    results(job, idx, label, confidence).
 *  - Submitting writes the job and every input in one transaction: a job
 *    that is visible is whole.
 *  - The worker computes a chunk (at most chunk_size inputs from `done`),
 *    then writes its results and advances `done` in one transaction. A
 *    crash (kill -9) at any moment loses at most the chunk in flight, which
 *    is computed again on restart: nothing lost, nothing stored twice.
 *  - An flock on <data_dir>/jobs.db.lock: one process per data directory.
 *  - A database that is not SQLite, fails its integrity check, or is locked
 *    by another process is an error at open, never silently replaced.
 *
 * Threads: one worker thread (jobs_start) runs jobs oldest first, one
 * chunk at a time, each chunk a background serving_job (serving.h), so it
 * only takes batches that online traffic leaves free. The API functions may
 * be called from any thread (they share one connection under a mutex).
 */
#ifndef AISERVE_JOBS_H
#define AISERVE_JOBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "obs.h"
#include "serving.h"

#ifdef __cplusplus
extern "C" {
#endif

#define JOBS_STATUS_MAP(X)                                              \
    X(OK, 0, "success")                                                 \
    X(EINVAL, -1, "invalid job")                                        \
    X(ENOTFOUND, -2, "no such job")                                     \
    X(ELIMIT, -3, "too many unfinished jobs for this key")              \
    X(ENOMODEL, -4, "no such model")                                    \
    X(EDB, -5, "the job database failed")                               \
    X(ENOMEM, -6, "out of memory")                                      \
    X(EFINISHED, -7, "the job has already finished")

typedef enum jobs_status {
#define JOBS_STATUS_ENUM(name, code, msg) JOBS_##name = code,
    JOBS_STATUS_MAP(JOBS_STATUS_ENUM)
#undef JOBS_STATUS_ENUM
} jobs_status;

const char *jobs_status_message(int status); /* never NULL */

#define JOBS_ID_MAX 32 /* "batch_" + 24 hex + NUL fits */

typedef struct jobs_options {
    const char *data_dir;     /* created (0700) when missing */
    serving_repo *repo;       /* borrowed; outlives the jobs system */
    size_t max_inputs;        /* per job; >= 1 */
    int max_active_per_owner; /* queued + running jobs per owner; >= 1 */
    uint64_t retention_us;    /* finished jobs (and results) are deleted this long after they finish */
    size_t chunk_size;        /* inputs per committed chunk; 0: 32 */
    metrics_registry *metrics;/* may be NULL */
} jobs_options;

typedef struct jobs jobs;

/* Opens (creating if needed) <data_dir>/jobs.db and checks it. Jobs that
 * were running when the last process stopped are resumed by the worker.
 * Returns JOBS_OK, or JOBS_EDB / JOBS_EINVAL with a message in err[cap]. */
int jobs_open(const jobs_options *opts, jobs **out, char *err, size_t cap);

/* Starts the worker thread. JOBS_OK or JOBS_ENOMEM. */
int jobs_start(jobs *j);

/* Stops the worker (a chunk in flight is finished or abandoned: it is
 * computed again on the next start) and closes the database. NULL is fine. */
void jobs_close(jobs *j);

/* Kinds of job: which API created it (the answers' shapes differ). */
typedef enum jobs_kind { JOBS_KIND_SEED = 1, JOBS_KIND_V1 = 2 } jobs_kind;

/* Stores a new job of n texts (texts[i] of lens[i] bytes, valid UTF-8,
 * checked by the caller) for `model` (NULL: the default model), owned by
 * owner ("" for none). Returns JOBS_OK with the id in id_out; JOBS_EINVAL
 * (n is 0 or over max_inputs), JOBS_ENOMODEL, JOBS_ELIMIT, JOBS_EDB, with a
 * message in err. Nothing is stored on failure. */
int jobs_submit(jobs *j, jobs_kind kind, const char *owner, const char *model, const char *const *texts,
                const size_t *lens, size_t n, char id_out[JOBS_ID_MAX], char *err, size_t cap);

/* jobs_submit off the caller's thread: for event loops, which must not wait
 * on the disk (storing 100,000 inputs takes most of a second). The request
 * and everything it points to are borrowed until cb runs; cb runs exactly
 * once, on the jobs system's writer thread (or, for requests still queued
 * at jobs_close, on the closing thread with JOBS_EDB), and must only hand
 * the request back to its owner. */
typedef struct jobs_submit_req jobs_submit_req;
struct jobs_submit_req {
    jobs_kind kind;
    const char *owner, *model;
    const char *const *texts;
    const size_t *lens;
    size_t n;
    void (*cb)(jobs_submit_req *req);
    void *ud;
    /* Filled before cb: jobs_submit's result, id and message. */
    int status;
    char id[JOBS_ID_MAX];
    char error[512];
    jobs_submit_req *next_; /* private */
};
void jobs_submit_async(jobs *j, jobs_submit_req *req);

typedef struct jobs_info {
    char id[JOBS_ID_MAX];
    char model[256];
    long version;       /* 0 until it started */
    char status[16];    /* queued, running, completed, failed, cancelled */
    jobs_kind kind;
    size_t total, done;
    int64_t created_ms, started_ms, finished_ms; /* Unix time in ms; 0: not yet */
    char error[256];
} jobs_info;

/* The job, if owner owns it: JOBS_OK, JOBS_ENOTFOUND, JOBS_EDB. */
int jobs_get(jobs *j, const char *id, const char *owner, jobs_info *out);

typedef struct jobs_result {
    int label;        /* -1: no result (not computed) */
    double confidence;
} jobs_result;

/* Results [offset, offset + limit) of a job owner owns, into a malloc'd
 * array (*out, *n; caller frees): fewer at the end. JOBS_OK,
 * JOBS_ENOTFOUND, JOBS_EDB. */
int jobs_results(jobs *j, const char *id, const char *owner, size_t offset, size_t limit, jobs_result **out,
                 size_t *n);

/* Cancels a queued or running job: JOBS_OK, JOBS_EFINISHED (it already
 * ended; nothing changes), JOBS_ENOTFOUND, JOBS_EDB. The worker stops at
 * its next chunk; results computed so far are kept. */
int jobs_cancel(jobs *j, const char *id, const char *owner);

#ifdef __cplusplus
}
#endif

#endif /* AISERVE_JOBS_H */
