/*
 * serving_int.h - what repository.c, scheduler.c and predict.c share
 * inside the serving module. Not a public header.
 */
#ifndef AISERVE_SERVING_INT_H
#define AISERVE_SERVING_INT_H

#include <stdatomic.h>

#include "serving.h"

int serving_error_set(serving_error *err, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The series one version's scheduler updates; looked up once at load. */
typedef struct sched_metrics {
    metric *queue_depth;    /* gauge, texts waiting */
    metric *queue_wait;     /* histogram, seconds */
    metric *batch_size;     /* histogram, texts per engine call */
    metric *inference;      /* histogram, seconds per engine call */
    metric *tokens;         /* counter */
    metric *batches;        /* counter */
    metric *timeouts;       /* counter, jobs expired in the queue */
    metric **predictions;   /* per label id, counter */
    metric *confidence;     /* histogram, the predicted label's probability */
    int n_labels;
} sched_metrics;

typedef struct sched sched;

/* Starts the batcher thread for `model` (borrowed; must outlive the
 * scheduler). `metrics` is copied (its predictions array is borrowed). */
/* How an embedding model's batcher pools and normalises (ignored for
 * classifiers). */
typedef struct sched_embed {
    engine_pooling pooling;
    int normalize;
} sched_embed;

int sched_create(engine_model *model, const serving_options *opts, const sched_metrics *metrics,
                 const sched_embed *embed, sched **out);
int sched_submit(sched *s, serving_job *job);
size_t sched_depth(sched *s);
/* Refuses new jobs (SERVING_ESTOPPED) and answers every queued job that has
 * not started with SERVING_ESTOPPED at once; the batch being computed
 * finishes normally. Any thread. */
void sched_cancel(sched *s);
/* Refuses new jobs, completes queued ones with SERVING_ESTOPPED, joins the
 * batcher. NULL is fine. */
void sched_destroy(sched *s);

struct serving_version {
    atomic_int refs;        /* the repository's own reference counts as one */
    serving_repo *repo;
    char model[128];
    long number;
    char dir[4096];
    serving_state state;    /* under the repository lock */
    char error[512];
    double load_seconds;
    char sha256[65];        /* of model.safetensors, hex; "" until hashed (under the lock) */
    int admin;              /* the admin API: 1 load (whatever the policy), -1 unload, 0 the policy decides */
    int cancelled;          /* serving_repo_cancel_queued stopped its scheduler (under the lock) */
    engine_model *engine;   /* AVAILABLE: loaded */
    sched *sched;
    sched_metrics metrics;
    serving_version *next;  /* the model's versions, newest first */
};

/* Called when the last reference goes (repository.c). */
void serving_version_free(serving_version *v);

/* ---- what predict.c takes from repository.c ---- */

/* The version a request gets, chosen in one pass under the repository lock
 * (model NULL or "": the default model): `version`, else `ref` (a version
 * number or an alias), is the pin; else, with allow_cascade, the cascade's
 * first version when it is available; else the traffic split's (bucket:
 * XXH3-64 of the model's name, a NUL and `user`, modulo 100; a random one
 * without a user); else the newest available. A pin equal to the cascade's
 * first version takes the cascade too when allow_cascade is set. Fills
 * *out (held), *cascade (first 0: not taken) and *shadow (the model's).
 * Errors as serving_acquire's, and SERVING_ENOVERSION for a ref that is
 * neither a version number nor one of the model's aliases. */
int serving_choose(serving_repo *r, const char *model, long version, const char *ref, const char *user,
                   size_t user_len, int allow_cascade, serving_version **out, serving_cascade *cascade,
                   serving_shadow *shadow, serving_error *err);

/* 0..99, uniformly, from a per-thread xorshift: the split's bucket for a
 * request without a user, the shadow's coin. */
unsigned serving_random_percent(void);

/* The counters predict.c adds to, registered by serving_repo_create; owned
 * by the metrics registry (they outlive the repository). */
metric_family *serving_repo_cascade_metric(serving_repo *r);
metric_family *serving_repo_shadow_metric(serving_repo *r);

#endif /* AISERVE_SERVING_INT_H */
