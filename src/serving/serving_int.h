/*
 * serving_int.h - what repository.c and scheduler.c share inside the
 * serving module. Not a public header.
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
    engine_model *engine;   /* AVAILABLE: loaded */
    sched *sched;
    sched_metrics metrics;
    serving_version *next;  /* the model's versions, newest first */
};

/* Called when the last reference goes (repository.c). */
void serving_version_free(serving_version *v);

#endif /* AISERVE_SERVING_INT_H */
