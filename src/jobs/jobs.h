/*
 * jobs.h - the jobs module's one public header: asynchronous batch jobs
 * (the seed's /batch_predict and /v1/batch), persisted so that nothing is
 * lost or done twice across a crash, run through the same schedulers as
 * online requests at background priority.
 *
 * Model (what a user sees):
 *  - A job is a list of texts for one model, owned by the API key that
 *    submitted it ("" when the server has no keys). Its id is "batch_" and
 *    24 hex digits of random bytes. Status: queued -> running ->
 *    completed | failed | cancelled.
 *  - A result per input, in input order: the label id and its probability.
 *    The job's version is chosen when it starts, as serving_resolve chooses
 *    one for a request without a pin (the cascade's first version, a
 *    split's, sticky per job: the job id is the user; or the newest
 *    available), and kept in the job, so every input of one job sees that
 *    version first. Each chunk is a background serving_predict request
 *    pinned to it: a cascade whose first version it is escalates unsure
 *    inputs to its second version (the result then records that version,
 *    and the label id is that version's), and the model's shadow gets its
 *    share of chunks.
 *  - Jobs of other owners do not exist for a caller (JOBS_ENOTFOUND), and
 *    are never listed (jobs_list: an owner's jobs, newest first, in pages).
 *
 * Two stores, one behaviour:
 *
 *  - SQLite (WAL, synchronous=FULL) in <data_dir>/jobs.db, for one
 *    instance: jobs(id, owner, model, version, status, total, done, ...),
 *    inputs(job, idx, text), results(job, idx, label, confidence, version)
 *    (a database from before results had a version gains the column at
 *    open, 0 in old rows; one from before listing gains the index on
 *    owner).
 *    Submitting writes the job and every input in one transaction: a job
 *    that is visible is whole. The worker computes a chunk (chunk_size
 *    inputs from `done`), then writes its results and advances `done` in
 *    one transaction; a crash (kill -9) loses at most the chunk in flight,
 *    computed again on restart. An flock on <data_dir>/jobs.db.lock keeps
 *    one process per data directory; a database that is not SQLite, fails
 *    its integrity check, or is locked is an error at open.
 *
 *  - Redis (opts.redis), shared by every instance that names the same
 *    Redis: a job is split into chunks, each a task on one queue list; an
 *    instance's worker takes a task and leases it (a sorted set of lease
 *    expiries, renewed while the chunk waits or runs), then stores the
 *    chunk's results with HSETNX and advances `done` in one Lua script.
 *    A lease that expires (its instance died) is put back on the queue by
 *    whichever instance notices first. Any instance accepts a job, any
 *    instance's worker runs its chunks, any instance answers for it.
 *    Finished jobs expire after the retention. redis_jobs.c has the keys.
 *
 * Threads: one worker thread (jobs_start) runs chunks oldest job first,
 * each chunk a background serving_predict request (serving.h), so it only
 * takes batches that online traffic leaves free. Event loops use
 * jobs_async, which never waits: submissions go to a writer thread, reads
 * and cancels to a reader thread (a status poll never waits behind a
 * 100,000-input upload). The synchronous functions may be called from any
 * other thread.
 */
#ifndef AISERVE_JOBS_H
#define AISERVE_JOBS_H

#include <stdbool.h>
#include "status.h"
#include <stddef.h>
#include <stdint.h>

#include "obs.h"
#include "serving.h"
#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

#define JOBS_STATUS_MAP(X)                                       \
    X(JOBS_OK, 0, "success")                                     \
    X(JOBS_EINVAL, -1, "invalid job")                            \
    X(JOBS_ENOTFOUND, -2, "no such job")                         \
    X(JOBS_ELIMIT, -3, "too many unfinished jobs for this key")  \
    X(JOBS_ENOMODEL, -4, "no such model")                        \
    X(JOBS_EDB, -5, "the job database failed")                   \
    X(JOBS_ENOMEM, -6, "out of memory")                          \
    X(JOBS_EFINISHED, -7, "the job has already finished")        \
    X(JOBS_EUNAVAILABLE, -8, "the job queue (Redis) is unavailable")

typedef enum jobs_status { JOBS_STATUS_MAP(STATUS_ENUM_ROW) } jobs_status;

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
    /* The Redis that holds the shared queue (url, key_prefix, timeouts);
     * NULL: SQLite under data_dir. Borrowed for jobs_open. */
    const kv_redis_options *redis;
    uint64_t lease_us;        /* Redis: how long a chunk stays leased without renewal; 0: 30 s */
} jobs_options;

typedef struct jobs jobs;

/* SQLite: opens (creating if needed) <data_dir>/jobs.db and checks it;
 * jobs that were running when the last process stopped are resumed by the
 * worker. Redis: checks the URL; a Redis that does not answer is logged,
 * not an error (while it is away, the functions below fail with
 * JOBS_EUNAVAILABLE and the worker waits). Returns JOBS_OK, or JOBS_EDB /
 * JOBS_EINVAL with a message in err[cap]. */
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
 * (n is 0 or over max_inputs), JOBS_ENOMODEL, JOBS_ELIMIT, JOBS_EDB or
 * JOBS_EUNAVAILABLE (Redis store), with a
 * message in err. Nothing is stored on failure. */
int jobs_submit(jobs *j, jobs_kind kind, const char *owner, const char *model, const char *const *texts,
                const size_t *lens, size_t n, char id_out[JOBS_ID_MAX], char *err, size_t cap);

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

/* The job, if owner owns it: JOBS_OK, JOBS_ENOTFOUND, JOBS_EDB or
 * JOBS_EUNAVAILABLE (Redis store: also below). */
int jobs_get(jobs *j, const char *id, const char *owner, jobs_info *out);

typedef struct jobs_result {
    int label;        /* -1: no result (not computed); else a label id of the version that answered */
    double confidence;
    long version;     /* the version that answered when it is not the job's (a cascade escalated the
                         input); 0: the job's */
} jobs_result;

/* Results [offset, offset + limit) of a job owner owns, into a malloc'd
 * array (*out, *n; caller frees): fewer at the end. JOBS_OK,
 * JOBS_ENOTFOUND, JOBS_EDB. */
int jobs_results(jobs *j, const char *id, const char *owner, size_t offset, size_t limit, jobs_result **out,
                 size_t *n);

/* A page of the jobs owner owns, newest first (in the order the store
 * accepted them): up to limit (>= 1) jobs, those accepted before `after`
 * when it is a job id (NULL or "": from the newest), into a malloc'd array
 * (*out, *n; caller frees; NULL when none), and *more: whether older jobs
 * follow. Every kind of job is listed (the seed's too). Jobs another owner
 * owns, or that retention deleted, are never listed. JOBS_OK,
 * JOBS_ENOTFOUND (`after` is not a job owner owns), JOBS_EINVAL (limit 0),
 * JOBS_EDB, JOBS_EUNAVAILABLE. */
int jobs_list(jobs *j, const char *owner, const char *after, size_t limit, jobs_info **out, size_t *n,
              bool *more);

/* Cancels a queued or running job: JOBS_OK, JOBS_EFINISHED (it already
 * ended; nothing changes), JOBS_ENOTFOUND, JOBS_EDB. The worker stops at
 * its next chunk; results computed so far are kept. */
int jobs_cancel(jobs *j, const char *id, const char *owner);

/* Redis store: false while the queue's Redis fails (the last command of any
 * jobs thread did), with the reason in reason[cap]; SQLite: always true.
 * Any thread. */
bool jobs_queue_ok(jobs *j, char *reason, size_t cap);
const char *jobs_store_name(const jobs *j); /* "sqlite" or "redis" */

/* ---- the same, for event loops ------------------------------------------- */

typedef enum jobs_op { JOBS_OP_SUBMIT, JOBS_OP_GET, JOBS_OP_RESULTS, JOBS_OP_CANCEL, JOBS_OP_LIST } jobs_op;

/* One call of the functions above, run off the caller's thread. The
 * request and everything it points to are borrowed until cb runs; cb runs
 * exactly once, on a jobs thread (or, for requests still queued at
 * jobs_close, on the closing thread with JOBS_EUNAVAILABLE), and must only
 * hand the request back to its owner. */
typedef struct jobs_req jobs_req;
struct jobs_req {
    jobs_op op;
    const char *owner;       /* every op */
    char id[JOBS_ID_MAX];    /* GET, RESULTS, CANCEL: the job; SUBMIT: filled with the new id;
                                LIST: `after` ("" for the newest) */
    /* SUBMIT */
    jobs_kind kind;
    const char *model;
    const char *const *texts;
    const size_t *lens;
    size_t n;
    /* RESULTS: offset and limit; LIST: limit */
    size_t offset, limit;
    void (*cb)(jobs_req *req);
    void *ud;
    /* Filled before cb. */
    int status;              /* the function's result */
    char error[512];         /* its message, when it has one */
    jobs_info info;          /* on JOBS_OK: the job after the op (SUBMIT: as stored: queued, nothing done) */
    jobs_result *results;    /* RESULTS: malloc'd, n_results of them; the owner frees */
    size_t n_results;
    jobs_info *jobs;         /* LIST: malloc'd, n_jobs of them (NULL when none); the owner frees */
    size_t n_jobs;
    bool more;               /* LIST: older jobs follow */
    jobs_req *next_;         /* private */
};
void jobs_async(jobs *j, jobs_req *req);

#ifdef __cplusplus
}
#endif

#endif /* AISERVE_JOBS_H */
