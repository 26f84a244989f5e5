/*
 * jobs_int.h - what the jobs module's files share: the jobs struct, the
 * store-neutral pieces of the worker (jobs.c), and the Redis store's entry
 * points (redis_jobs.c). Not a public header.
 */
#ifndef AISERVE_JOBS_INT_H
#define AISERVE_JOBS_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include <sqlite3.h>

#include "jobs.h"

/* One thread's way to the store: a SQLite connection or a Redis link. */
typedef struct jobs_conn {
    sqlite3 *db;
    kv_redis_link *link;
} jobs_conn;

typedef struct jobs_queue {
    jobs_req *head, *tail;
} jobs_queue;

struct jobs {
    jobs_options opts;
    bool redis;        /* the store is Redis (opts.redis) */
    int lock_fd;       /* SQLite: the data directory's flock */

    /* api: the synchronous functions and the writer thread, under
     * api_lock; reader: the reader thread's own; work: the worker's own. */
    jobs_conn api, reader, work;
    pthread_mutex_t api_lock;

    pthread_t worker, writer, reader_thread;
    bool worker_started, writer_started, reader_started;
    pthread_mutex_t lock; /* guards stopping, kicked and both queues */
    pthread_cond_t wake;
    bool stopping, kicked;
    jobs_queue writes, reads; /* jobs_async's requests, by thread */

    /* The chunk in flight (worker only, plus its on_done). */
    pthread_mutex_t chunk_lock;
    pthread_cond_t chunk_done;
    bool chunk_finished;

    /* Redis store: how the last command went, on any thread (jobs_queue_ok). */
    _Atomic bool queue_down;
    pthread_mutex_t health_lock; /* guards queue_error */
    char queue_error[200];

    metric *inputs_processed, *jobs_finished[3], *queue_inputs, *duration, *lease_expiries;
    metric *by_state[5];
};

extern const char *const jobs_states[5]; /* queued, running, completed, failed, cancelled */

int64_t jobs_now_ms(void);
void jobs_new_id(char id[JOBS_ID_MAX]);
bool jobs_is_stopping(jobs *j);
void jobs_nap(jobs *j, int ms); /* until kicked, stopping, or ms passed */

/* A submission's checks, the same for both stores: n within limits, the
 * model known. Fills model_name (the default model's when model is NULL).
 * JOBS_OK, JOBS_EINVAL or JOBS_ENOMODEL with a message in err. */
int jobs_check_submit(jobs *j, size_t n, const char *model, char model_name[256], char *err, size_t cap);

/* Resolves r (initialised by the caller, who finishes it with
 * serving_request_fini once this succeeded; on failure r holds nothing) as
 * a chunk of job `id` runs: a background classification pinned to `version`
 * (the job's), or, for a job that has none yet, what serving_resolve
 * chooses without a pin, with the job id as the user (a traffic split is
 * sticky per job); the model's cascade and shadow apply. Returns 0
 * (r->first: the version to pin at the job's first start) or the serving
 * status, with err. */
int jobs_resolve(jobs *j, const char *id, const char *model, long version, serving_request *r,
                 serving_error *err);

/* Runs texts through r (resolved by jobs_resolve) with serving_predict and
 * waits for it, calling waiting(ud) every period_ms meanwhile (lease
 * renewal; NULL for none). Fills out[0..n): each text's label and its
 * probability in the version that answered it, and that version when it is
 * not r->first (the job's). Returns 0, 1 when the server is stopping or
 * refused the work (nothing computed: later), or -1 with the reason in
 * err. */
int jobs_compute(jobs *j, serving_request *r, char **texts, const size_t *lens, size_t n, jobs_result *out,
                 void (*waiting)(void *ud), void *ud, int period_ms, char *err, size_t cap);

/* Metrics for a job that ended (state: completed, failed, cancelled). */
void jobs_count_finished(jobs *j, const char *state, int64_t created_ms, int64_t finished_ms);
void jobs_set_gauges(jobs *j, const double count[5], double remaining_inputs);

/* ---- redis_jobs.c ------------------------------------------------------------- */

void rjobs_check(jobs *j); /* PINGs through the API link; logs when Redis does not answer */
int rjobs_submit(jobs *j, kv_redis_link *l, jobs_kind kind, const char *owner, const char *model_name,
                 const char *const *texts, const size_t *lens, size_t n, char id_out[JOBS_ID_MAX], char *err,
                 size_t cap);
int rjobs_get(jobs *j, kv_redis_link *l, const char *id, const char *owner, jobs_info *out, char *err,
              size_t cap);
/* Fills r[0..limit) (label -1 where not computed) for the job info. */
int rjobs_results(jobs *j, kv_redis_link *l, const jobs_info *info, size_t offset, size_t limit, jobs_result *r,
                  char *err, size_t cap);
int rjobs_cancel(jobs *j, kv_redis_link *l, const char *id, const char *owner, char *err, size_t cap);
/* jobs_list's page (owner and after not NULL; limit >= 1); *out as jobs_list
 * fills it, or NULL on failure. */
int rjobs_list(jobs *j, kv_redis_link *l, const char *owner, const char *after, size_t limit, jobs_info **out,
               size_t *n, bool *more, char *err, size_t cap);
void *rjobs_worker_main(void *arg);

#endif /* AISERVE_JOBS_INT_H */
