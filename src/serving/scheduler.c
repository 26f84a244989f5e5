/*
 * scheduler.c - one version's bounded queue and dynamic batcher.
 *
 * Design:
 *  - Jobs (one per request, each with n texts) wait in a FIFO. The queue is
 *    bounded in texts (max_queue_size): a job that does not fit is refused
 *    at once, so the caller can shed load instead of queueing without bound.
 *  - One batcher thread takes texts from the head of the queue, up to
 *    max_batch_size per engine call. A job may ride in several batches (its
 *    texts are taken in order); a batch may hold texts of many jobs. When the
 *    queue holds fewer texts than a full batch, the batcher waits until the
 *    oldest job has waited max_queue_delay_us, as Triton's dynamic batcher.
 *  - A job whose deadline passed before any of its texts started is answered
 *    SERVING_ETIMEOUT without computing anything.
 *  - The engine call runs outside the queue lock; submitting never waits for
 *    inference.
 *  - Background jobs (batch jobs) wait in a second FIFO that is neither
 *    bounded nor delayed: when the online queue is empty, the batcher gives
 *    the next batch to the first background job, then puts it back at the
 *    front of its FIFO; online jobs that arrive meanwhile wait for at most
 *    that one batch, which holds at most a quarter of max_batch_size texts
 *    while online jobs have arrived in the last second (a short forward
 *    pass: online latency first, batch throughput second), and a full batch
 *    when none have.
 *  - If the engine refuses a batch (it should not: texts were validated), the
 *    jobs of that batch are retried one by one so that one bad job cannot
 *    fail its neighbours.
 *
 * Threads: sched_submit and sched_depth from any thread; on_done callbacks
 * run on the batcher thread, outside the lock.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serving_int.h"

struct sched {
    engine_model *model;
    int n_labels;
    int embed;                 /* an embedding model: outputs are vectors */
    sched_embed embed_opts;
    int width;                 /* floats per text: n_labels, or hidden for embeddings */
    int max_length;            /* the model's, for counting an embedding's tokens */
    int max_batch;
    int64_t max_delay_us;
    size_t max_queue;
    sched_metrics metrics;

    pthread_mutex_t lock;
    pthread_cond_t wake;       /* work arrived or stopping */
    serving_job *head, *tail;
    size_t queued_texts;       /* texts not yet taken by a batch (online queue) */
    serving_job *bg_head, *bg_tail; /* background jobs: run only when head is empty */
    uint64_t last_online_us;   /* when the last online job arrived (0: never) */
    int stopping;
    int refusing;              /* sched_cancel: no new jobs */
    pthread_t thread;

    /* Batcher-only scratch, sized for max_batch texts. */
    const char **texts;
    size_t *lens;
    const char **queries;      /* a batch of pairs: each text's query (serving_job.query) */
    size_t *query_lens;
    float *probs;
    float *logits;             /* classifiers: the logits beside probs */
    struct slice { serving_job *job; size_t first, count; } *slices;
};

#define ONLINE_RECENT_US 1000000u /* online traffic this recent keeps background batches short */

uint64_t serving_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void finish(serving_job *job, int status, const char *message) {
    job->status = status;
    if (status && job->error[0] == '\0')
        snprintf(job->error, sizeof job->error, "%s", message ? message : serving_status_message(status));
    job->on_done(job, job->user);
}

/* Waits on the condition variable until the monotonic time `until_us`. */
static void wait_until(sched *s, uint64_t until_us) {
    struct timespec ts = {.tv_sec = (time_t)(until_us / 1000000u),
                          .tv_nsec = (long)(until_us % 1000000u) * 1000};
    pthread_cond_timedwait(&s->wake, &s->lock, &ts);
}

/* Runs texts [offset, offset + n) of the batch through the engine (as pairs
 * with their queries when `pairs`). Returns 0 or the engine's status (with
 * err filled). */
static int run_texts(sched *s, int pairs, size_t n, size_t offset, engine_stats *stats, engine_error *err) {
    const char **texts = s->texts + offset;
    const size_t *lens = s->lens + offset;
    float *out = s->probs + offset * (size_t)s->width;
    if (pairs)
        return engine_classify_pairs(s->model, s->queries + offset, s->query_lens + offset, texts, lens, n,
                                     s->logits + offset * (size_t)s->width, out, stats, err);
    if (!s->embed)
        return engine_classify_stats(s->model, texts, lens, n, s->logits + offset * (size_t)s->width, out, stats,
                                     err);
    int rc = engine_embed(s->model, texts, lens, n, s->embed_opts.pooling, s->embed_opts.normalize, out, err);
    /* The engine does not report an embedding's tokens: count them (the
     * usage an embeddings client is told). */
    static __thread int32_t ids[8192];
    for (size_t i = 0; rc == 0 && stats && i < n; i++) {
        size_t n_ids = 0;
        if (engine_tokenize(s->model, texts[i], lens[i], s->max_length, ids, sizeof ids / sizeof ids[0], &n_ids,
                            err) == 0)
            stats->n_tokens += n_ids;
    }
    return rc;
}

static void deliver(sched *s, struct slice *sl, size_t offset, int batch_texts, uint64_t infer_us,
                    size_t tokens_share) {
    serving_job *job = sl->job;
    const size_t K = (size_t)s->width;
    memcpy(job->probs + sl->first * K, s->probs + offset * K, sl->count * K * sizeof(float));
    if (job->logits && !s->embed)
        memcpy(job->logits + sl->first * K, s->logits + offset * K, sl->count * K * sizeof(float));
    for (size_t i = 0; !s->embed && i < sl->count; i++) {
        const float *p = s->probs + (offset + i) * K;
        size_t best = 0;
        for (size_t j = 1; j < K; j++)
            if (p[j] > p[best])
                best = j;
        if (best < (size_t)s->metrics.n_labels && s->metrics.predictions[best])
            metric_inc(s->metrics.predictions[best]);
        metric_observe(s->metrics.confidence, p[best]);
    }
    if (batch_texts > job->batch_size)
        job->batch_size = batch_texts;
    job->infer_us += infer_us;
    job->n_tokens += tokens_share;
    job->n_done_ += sl->count;
    if (job->n_done_ == job->n)
        finish(job, 0, NULL);
}

/* A batch the engine refused: run each job's slice alone, so only the job
 * whose text is at fault fails. */
static void run_slices_alone(sched *s, int pairs, size_t n_slices, int batch_texts) {
    size_t offset = 0;
    for (size_t k = 0; k < n_slices; k++) {
        struct slice *sl = &s->slices[k];
        engine_stats stats = {0};
        engine_error err = {0};
        uint64_t t0 = serving_now_us();
        int rc = run_texts(s, pairs, sl->count, offset, &stats, &err);
        uint64_t dt = serving_now_us() - t0;
        if (rc) {
            serving_job *job = sl->job;
            /* The job may still have texts queued: mark it failed; it is
             * finished when its last slice comes through (below or later). */
            if (job->status == 0) {
                job->status = rc == ENGINE_EINPUT ? SERVING_EINPUT : SERVING_EINTERNAL;
                snprintf(job->error, sizeof job->error, "%.250s", err.message);
            }
            job->n_done_ += sl->count;
            if (job->n_done_ == job->n)
                finish(job, job->status, NULL);
        } else {
            /* deliver() reads from s->probs (and logits) at `offset`, where this call wrote. */
            if (sl->job->status != 0) {
                sl->job->n_done_ += sl->count;
                if (sl->job->n_done_ == sl->job->n)
                    finish(sl->job, sl->job->status, NULL);
            } else {
                deliver(s, sl, offset, batch_texts, dt, stats.n_tokens);
            }
        }
        offset += sl->count;
    }
}

static void *batcher_main(void *arg) {
    sched *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->stopping && !s->head && !s->bg_head)
            pthread_cond_wait(&s->wake, &s->lock);
        if (s->stopping)
            break;
        serving_job *background = NULL;
        if (!s->head) {
            /* Nothing online: one background job gets this batch (a quarter
             * of max_batch of its texts, at once), then goes back to the
             * front of its queue, so online work that arrives meanwhile is
             * next. */
            background = s->bg_head;
            s->bg_head = background->qnext_;
            if (!s->bg_head)
                s->bg_tail = NULL;
            background->qnext_ = NULL;
            s->head = s->tail = background;
            s->queued_texts += background->n - background->next_;
        } else {
            /* Let the batch fill, up to max_queue_delay_us after the oldest
             * job arrived (or at once when it is already full). */
            uint64_t fill_until = s->head->enqueued_us_ + (uint64_t)s->max_delay_us;
            while (!s->stopping && s->head && s->queued_texts < (size_t)s->max_batch &&
                   serving_now_us() < fill_until)
                wait_until(s, fill_until);
            if (s->stopping)
                break;
        }

        /* Take up to max_batch texts; expire jobs whose deadline passed
         * before they started. */
        uint64_t now = serving_now_us();
        serving_job *expired = NULL;
        size_t n_texts = 0, n_slices = 0;
        int pairs = -1; /* a batch is all single texts or all pairs (their engine calls differ) */
        /* While online traffic is about (an online job in the last
         * ONLINE_RECENT_US), a background batch is a quarter of a full one:
         * an online job that arrives while it runs waits for a short
         * forward pass. With no online traffic it is full. */
        size_t limit = (size_t)s->max_batch;
        if (background && s->last_online_us && now - s->last_online_us < ONLINE_RECENT_US)
            limit = (limit + 3) / 4;
        while (s->head && n_texts < limit) {
            serving_job *job = s->head;
            if (job->next_ == 0 && job->deadline_us && now >= job->deadline_us) {
                s->head = job->qnext_;
                s->queued_texts -= job->n;
                job->qnext_ = expired;
                expired = job;
                continue;
            }
            if (pairs >= 0 && pairs != (job->query != NULL))
                break; /* the next batch takes it */
            pairs = job->query != NULL;
            if (job->next_ == 0)
                job->queue_wait_us = now - job->enqueued_us_;
            size_t take = job->n - job->next_;
            if (take > limit - n_texts)
                take = limit - n_texts;
            for (size_t i = 0; i < take; i++) {
                s->texts[n_texts + i] = job->texts[job->next_ + i];
                s->lens[n_texts + i] = job->lens[job->next_ + i];
                s->queries[n_texts + i] = job->query;
                s->query_lens[n_texts + i] = job->query_len;
            }
            s->slices[n_slices++] = (struct slice){job, job->next_, take};
            job->next_ += take;
            n_texts += take;
            s->queued_texts -= take;
            if (job->next_ == job->n) {
                s->head = job->qnext_;
                if (!s->head)
                    s->tail = NULL;
            }
        }
        if (!s->head)
            s->tail = NULL;
        if (background && s->head == background) { /* texts left: back to its queue's front */
            s->head = s->tail = NULL;
            s->queued_texts -= background->n - background->next_;
            background->qnext_ = s->bg_head;
            s->bg_head = background;
            if (!s->bg_tail)
                s->bg_tail = background;
        }
        metric_set(s->metrics.queue_depth, (double)s->queued_texts);
        pthread_mutex_unlock(&s->lock);

        while (expired) {
            serving_job *job = expired;
            expired = job->qnext_;
            metric_inc(s->metrics.timeouts);
            finish(job, SERVING_ETIMEOUT, "the request waited in the queue past its deadline");
        }
        if (n_texts > 0) {
            for (size_t k = 0; k < n_slices; k++)
                if (s->slices[k].first == 0)
                    metric_observe(s->metrics.queue_wait, (double)s->slices[k].job->queue_wait_us / 1e6);
            engine_stats stats = {0};
            engine_error err = {0};
            uint64_t t0 = serving_now_us();
            int rc = run_texts(s, pairs == 1, n_texts, 0, &stats, &err);
            uint64_t dt = serving_now_us() - t0;
            metric_inc(s->metrics.batches);
            metric_observe(s->metrics.batch_size, (double)n_texts);
            metric_observe(s->metrics.inference, (double)dt / 1e6);
            if (rc == 0) {
                metric_add(s->metrics.tokens, (double)stats.n_tokens);
                size_t offset = 0;
                for (size_t k = 0; k < n_slices; k++) {
                    /* Tokens are shared out by text count; exact per job
                     * counts would need a second tokenization. */
                    size_t share = stats.n_tokens * s->slices[k].count / n_texts;
                    struct slice sl = s->slices[k];
                    if (sl.job->status != 0) { /* failed in an earlier batch */
                        sl.job->n_done_ += sl.count;
                        if (sl.job->n_done_ == sl.job->n)
                            finish(sl.job, sl.job->status, NULL);
                    } else {
                        deliver(s, &sl, offset, (int)n_texts, dt, share);
                    }
                    offset += sl.count;
                }
            } else {
                run_slices_alone(s, pairs == 1, n_slices, (int)n_texts);
            }
        }
        pthread_mutex_lock(&s->lock);
    }
    /* Stopping: everything still queued is answered ESTOPPED. A job that
     * already rode in a batch has texts left; it fails as a whole. */
    if (s->tail) /* online first, then background */
        s->tail->qnext_ = s->bg_head;
    else
        s->head = s->bg_head;
    serving_job *rest = s->head;
    s->head = s->tail = s->bg_head = s->bg_tail = NULL;
    s->queued_texts = 0;
    pthread_mutex_unlock(&s->lock);
    while (rest) {
        serving_job *job = rest;
        rest = job->qnext_;
        job->error[0] = '\0'; /* an earlier slice's failure is superseded */
        finish(job, SERVING_ESTOPPED, NULL);
    }
    return NULL;
}

int sched_create(engine_model *model, const serving_options *opts, const sched_metrics *metrics,
                 const sched_embed *embed, sched **out) {
    *out = NULL;
    sched *s = calloc(1, sizeof *s);
    if (!s)
        return SERVING_ENOMEM;
    s->model = model;
    const engine_model_info *info = engine_model_get_info(model);
    s->n_labels = info->n_labels;
    s->embed = info->task == ENGINE_TASK_EMBED;
    if (embed)
        s->embed_opts = *embed;
    s->width = s->embed ? info->hidden : s->n_labels;
    s->max_length = info->max_length;
    s->max_batch = opts->max_batch_size > 0 ? opts->max_batch_size : 1;
    s->max_delay_us = opts->max_queue_delay_us > 0 ? opts->max_queue_delay_us : 0;
    s->max_queue = opts->max_queue_size > 0 ? (size_t)opts->max_queue_size : 1;
    s->metrics = *metrics;
    const size_t B = (size_t)s->max_batch;
    s->texts = calloc(B, sizeof *s->texts);
    s->lens = calloc(B, sizeof *s->lens);
    s->queries = calloc(B, sizeof *s->queries);
    s->query_lens = calloc(B, sizeof *s->query_lens);
    s->probs = calloc(B * (size_t)(s->width > 0 ? s->width : 1), sizeof *s->probs);
    s->logits = s->embed ? NULL : calloc(B * (size_t)(s->width > 0 ? s->width : 1), sizeof *s->logits);
    s->slices = calloc(B, sizeof *s->slices);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int ok = s->texts && s->lens && s->queries && s->query_lens && s->probs && (s->embed || s->logits) && s->slices &&
             pthread_mutex_init(&s->lock, NULL) == 0 && pthread_cond_init(&s->wake, &ca) == 0;
    pthread_condattr_destroy(&ca);
    if (!ok || pthread_create(&s->thread, NULL, batcher_main, s) != 0) {
        free(s->texts);
        free(s->lens);
        free(s->queries);
        free(s->query_lens);
        free(s->probs);
        free(s->logits);
        free(s->slices);
        free(s);
        return SERVING_ENOMEM;
    }
    *out = s;
    return 0;
}

int sched_submit(sched *s, serving_job *job) {
    if (job->n == 0)
        return SERVING_EINPUT;
    if (s->width <= 0)
        return SERVING_EUNSUPPORTED;
    job->status = 0;
    job->error[0] = '\0';
    job->batch_size = 0;
    job->queue_wait_us = job->infer_us = 0;
    job->n_tokens = 0;
    job->next_ = job->n_done_ = 0;
    job->qnext_ = NULL;
    pthread_mutex_lock(&s->lock);
    if (s->stopping || s->refusing) {
        pthread_mutex_unlock(&s->lock);
        return SERVING_ESTOPPED;
    }
    job->enqueued_us_ = serving_now_us();
    if (job->background) { /* unbounded here: the job system bounds what it submits */
        if (s->bg_tail)
            s->bg_tail->qnext_ = job;
        else
            s->bg_head = job;
        s->bg_tail = job;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    /* An empty queue takes any job, even one larger than the bound, so a
     * request within the per-request input limit can always run. */
    if (s->head && s->queued_texts + job->n > s->max_queue) {
        pthread_mutex_unlock(&s->lock);
        return SERVING_EFULL;
    }
    if (s->tail)
        s->tail->qnext_ = job;
    else
        s->head = job;
    s->tail = job;
    s->queued_texts += job->n;
    s->last_online_us = job->enqueued_us_;
    metric_set(s->metrics.queue_depth, (double)s->queued_texts);
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

void sched_cancel(sched *s) {
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->refusing = 1;
    /* Take every job none of whose texts has started. A job already split
     * across batches (at most the head) stays: the batcher finishes it. */
    serving_job *taken = NULL, **tail_taken = &taken;
    serving_job **pp = &s->head, *last = NULL;
    while (*pp) {
        serving_job *job = *pp;
        if (job->next_ == 0) {
            *pp = job->qnext_;
            s->queued_texts -= job->n;
            job->qnext_ = NULL;
            *tail_taken = job;
            tail_taken = &job->qnext_;
        } else {
            last = job;
            pp = &job->qnext_;
        }
    }
    s->tail = last;
    /* Background jobs that have not started go too; one that has (at
     * the front) is finished by the batcher, as above. */
    serving_job **bp = &s->bg_head, *bg_last = NULL;
    while (*bp) {
        serving_job *job = *bp;
        if (job->next_ == 0) {
            *bp = job->qnext_;
            job->qnext_ = NULL;
            *tail_taken = job;
            tail_taken = &job->qnext_;
        } else {
            bg_last = job;
            bp = &job->qnext_;
        }
    }
    s->bg_tail = bg_last;
    metric_set(s->metrics.queue_depth, (double)s->queued_texts);
    pthread_mutex_unlock(&s->lock);
    while (taken) {
        serving_job *job = taken;
        taken = job->qnext_;
        finish(job, SERVING_ESTOPPED, NULL);
    }
}

size_t sched_depth(sched *s) {
    pthread_mutex_lock(&s->lock);
    size_t n = s->queued_texts;
    pthread_mutex_unlock(&s->lock);
    return n;
}

void sched_destroy(sched *s) {
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = 1;
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->wake);
    free(s->texts);
    free(s->lens);
    free(s->queries);
    free(s->query_lens);
    free(s->probs);
    free(s->logits);
    free(s->slices);
    free(s);
}
