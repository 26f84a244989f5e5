/*
 * predict.c - serving_predict, the prediction every front end makes: the
 * version choice, the first job, a cascade's second job, a shadow copy, and
 * one on_done per request (serving.h has the policy).
 *
 * Design:
 *  - serving_resolve picks and holds the version in one pass under the
 *    repository lock (serving_choose, repository.c) and checks the task.
 *  - serving_predict submits the first job. Its on_done (on the first
 *    version's batcher thread) takes each text's best label; when the
 *    request takes a cascade, the texts below the threshold go to the
 *    cascade's second version as a second job, whose on_done (on that
 *    version's batcher) puts their answers in place. Acquiring a version
 *    and submitting to another version's scheduler from a batcher is fine:
 *    on_done runs outside every scheduler lock, and nothing that holds the
 *    repository lock waits for a batcher.
 *  - Last, for its share of requests, a copy of the texts goes to the
 *    shadow version as a background job of its own that nobody waits for
 *    (shadow_send), and then the caller's on_done runs, exactly once; the
 *    request is not touched after it.
 *  - References: the request holds `first` and `then` until
 *    serving_request_fini, which never runs on a batcher thread, so this
 *    file never drops a version's last reference on that version's own
 *    batcher (freeing a version joins its batcher); shadow_send says why
 *    its early release is safe too.
 *
 * Counted in aiserve_cascade_texts_total
 * {model, result=first|escalated|error} and aiserve_shadow_predictions_total
 * {model, version, result=agree|disagree|error}.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serving_int.h"

/* The index of the largest of p[0..k): the predicted label. */
static int best_label(const float *p, int k) {
    int best = 0;
    for (int j = 1; j < k; j++)
        if (p[j] > p[best])
            best = j;
    return best;
}

static void count_cascade(const serving_request *r, const char *result, double n) {
    if (n <= 0)
        return;
    const char *labels[] = {serving_version_model(r->first), result};
    metric_add(metric_series(serving_repo_cascade_metric(r->repo_), labels), n);
}

static void count_shadow(metric_family *f, const char *model, long version, const char *result, double n) {
    if (n <= 0)
        return;
    char ver[24];
    snprintf(ver, sizeof ver, "%ld", version);
    const char *labels[] = {model, ver, result};
    metric_add(metric_series(f, labels), n);
}

void serving_request_init(serving_request *r) { memset(r, 0, sizeof *r); }

int serving_resolve(serving_repo *repo, serving_request *r, serving_error *err) {
    if (r->first)
        return serving_error_set(err, SERVING_EINPUT, "the request is resolved already");
    const int classify = r->task == SERVING_TASK_CLASSIFY;
    const char *user = r->user_id && r->user_id_len ? r->user_id : NULL;
    int rc = serving_choose(repo, r->model, r->version, r->version_ref, user, user ? r->user_id_len : 0,
                            r->allow_cascade && classify && !r->query, &r->first, &r->cascade, &r->shadow, err);
    if (rc != 0)
        return rc;
    if (r->query) /* a pair's score: no shadow copy compares labels of pairs */
        memset(&r->shadow, 0, sizeof r->shadow);
    const engine_model_info *info = serving_version_info(r->first);
    const char *model = serving_version_model(r->first);
    if (classify && (info->task != ENGINE_TASK_CLASSIFY || info->n_labels <= 0))
        rc = serving_error_set(err, SERVING_EUNSUPPORTED, "model '%s' is an embedding model; it does not predict labels",
                               model);
    else if (!classify && info->task != ENGINE_TASK_EMBED)
        rc = serving_error_set(err, SERVING_EUNSUPPORTED, "model '%s' is a classifier; it does not compute embeddings",
                               model);
    if (rc != 0) {
        serving_version_release(r->first); /* the caller's thread: never a batcher */
        r->first = NULL;
        memset(&r->cascade, 0, sizeof r->cascade);
        memset(&r->shadow, 0, sizeof r->shadow);
        return rc;
    }
    r->repo_ = repo;
    return 0;
}

/* ---- shadow copies ---------------------------------------------------------- */

typedef struct shadow_copy {
    serving_job job;
    metric_family *counter;   /* the registry's: valid after the repository is gone */
    serving_version *version; /* the candidate, not held: alive while its batcher runs on_shadow_done */
    size_t n;
    char **texts;
    size_t *lens;
    char **primary;           /* the label each text was answered with */
    float *probs;
} shadow_copy;

static void shadow_free(shadow_copy *sc) {
    for (size_t i = 0; i < sc->n; i++) {
        free(sc->texts[i]);
        free(sc->primary[i]);
    }
    free(sc->texts);
    free(sc->lens);
    free(sc->primary);
    free(sc->probs);
    free(sc);
}

static void on_shadow_done(serving_job *job, void *user) {
    shadow_copy *sc = user;
    const char *model = serving_version_model(sc->version);
    long version = serving_version_number(sc->version);
    if (job->status != 0) {
        count_shadow(sc->counter, model, version, "error", (double)sc->n);
    } else {
        const int K = serving_version_info(sc->version)->n_labels;
        double agree = 0;
        for (size_t i = 0; i < sc->n; i++) {
            const char *label = serving_version_label(sc->version, best_label(sc->probs + i * (size_t)K, K));
            agree += label && strcmp(label, sc->primary[i]) == 0;
        }
        count_shadow(sc->counter, model, version, "agree", agree);
        count_shadow(sc->counter, model, version, "disagree", (double)sc->n - agree);
    }
    shadow_free(sc);
}

void serving_shadow_tally_get(serving_repo *repo, const char *model, long version, serving_shadow_tally *out) {
    metric_family *f = serving_repo_shadow_metric(repo);
    char ver[24];
    snprintf(ver, sizeof ver, "%ld", version);
    out->agree = metric_value(metric_get(f, model, ver, "agree", NULL));
    out->disagree = metric_value(metric_get(f, model, ver, "disagree", NULL));
    out->error = metric_value(metric_get(f, model, ver, "error", NULL));
}

/* Sends a copy of r's texts, with the labels they were answered with, to
 * the shadow version sh as background work. */
static void shadow_send(serving_request *r, serving_shadow sh) {
    metric_family *counter = serving_repo_shadow_metric(r->repo_);
    const char *model = serving_version_model(r->first);
    const size_t n = r->n;
    serving_version *v = NULL;
    serving_error err;
    if (serving_acquire(r->repo_, model, sh.version, &v, &err) != 0) {
        count_shadow(counter, model, sh.version, "error", (double)n);
        r->n_shadowed = n;
        return;
    }
    const int KS = serving_version_info(v)->n_labels;
    shadow_copy *sc = calloc(1, sizeof *sc);
    int ok = sc && KS > 0;
    if (ok) {
        sc->counter = counter;
        sc->version = v;
        sc->texts = calloc(n, sizeof *sc->texts);
        sc->lens = calloc(n, sizeof *sc->lens);
        sc->primary = calloc(n, sizeof *sc->primary);
        sc->probs = calloc(n * (size_t)KS, sizeof *sc->probs);
        ok = sc->texts && sc->lens && sc->primary && sc->probs;
    }
    for (size_t i = 0; ok && i < n; i++) {
        const char *label = serving_version_label(r->results[i].version, r->results[i].label);
        sc->n = i + 1; /* what shadow_free frees */
        sc->texts[i] = strndup(r->texts[i], r->lens[i]);
        sc->lens[i] = r->lens[i];
        sc->primary[i] = strdup(label ? label : "");
        ok = sc->texts[i] && sc->primary[i];
    }
    if (ok) {
        sc->job = (serving_job){.texts = (const char *const *)sc->texts, .lens = sc->lens, .n = n,
                                .probs = sc->probs, .on_done = on_shadow_done, .user = sc, .background = 1};
        ok = serving_submit(v, &sc->job) == 0;
    }
    if (!ok) {
        count_shadow(counter, model, sh.version, "error", (double)n);
        if (sc)
            shadow_free(sc);
    }
    r->n_shadowed = n; /* sent, or counted as errors */
    /* The queued copy does not hold v; releasing it here is safe:
     *  - this is not v's batcher: v is not `first` (shadow_maybe), and when
     *    v is `then` and this is its batcher, the request still holds
     *    `then`, so this release is not the last;
     *  - if it is the last (v was unloaded meanwhile), freeing v stops its
     *    scheduler, which answers the copy ESTOPPED (counted as errors)
     *    before the batcher is joined, so on_shadow_done never sees v
     *    freed; and joining v's batcher from here cannot deadlock, as no
     *    batcher ever waits for another. */
    serving_version_release(v);
}

static void shadow_maybe(serving_request *r) {
    const serving_shadow sh = r->shadow; /* as it was when the version was chosen */
    if (!r->allow_shadow || !r->results || !sh.version || sh.version == serving_version_number(r->first) ||
        serving_random_percent() >= (unsigned)sh.percent)
        return;
    shadow_send(r, sh);
}

/* ---- stages -------------------------------------------------------------------- */

/* The request is answered: its shadow share, then on_done, last. */
static void finish(serving_request *r) {
    if (r->status == 0)
        shadow_maybe(r);
    r->on_done(r, r->user);
}

static void on_then_done(serving_job *job, void *user) {
    serving_request *r = user;
    r->infer_us += job->infer_us;
    if (job->status != 0) { /* the first stage's answers stand */
        count_cascade(r, "error", (double)job->n);
    } else {
        const int K = serving_version_info(r->then)->n_labels;
        for (size_t k = 0; k < job->n; k++) {
            const float *p = r->out2_ + k * (size_t)K;
            int best = best_label(p, K);
            r->results[r->idx2_[k]] = (serving_text_result){
                .label = best, .confidence = p[best], .version = r->then, .probs = p,
                .logits = r->logits2_ ? r->logits2_ + k * (size_t)K : NULL};
        }
        r->n_escalated = job->n;
        count_cascade(r, "escalated", (double)job->n);
    }
    finish(r);
}

/* Sends the texts the first version is unsure of to the cascade's second
 * version. 1 when that job is out (on_then_done finishes the request). */
static int escalate(serving_request *r) {
    const size_t n = r->n;
    r->idx2_ = malloc(n * sizeof *r->idx2_);
    r->texts2_ = malloc(n * sizeof *r->texts2_);
    r->lens2_ = malloc(n * sizeof *r->lens2_);
    if (!r->idx2_ || !r->texts2_ || !r->lens2_) { /* answered by the first version alone */
        count_cascade(r, "error", (double)n);
        return 0;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if ((double)r->results[i].confidence < r->cascade.threshold) {
            r->idx2_[m] = i;
            r->texts2_[m] = r->texts[i];
            r->lens2_[m] = r->lens[i];
            m++;
        }
    }
    count_cascade(r, "first", (double)(n - m));
    if (m == 0)
        return 0;
    serving_error err;
    if (serving_acquire(r->repo_, serving_version_model(r->first), r->cascade.then, &r->then, &err) != 0) {
        count_cascade(r, "error", (double)m);
        return 0;
    }
    const int K2 = serving_version_info(r->then)->n_labels;
    r->out2_ = K2 > 0 ? calloc(m * (size_t)K2, sizeof *r->out2_) : NULL;
    r->logits2_ = K2 > 0 && r->want_logits ? calloc(m * (size_t)K2, sizeof *r->logits2_) : NULL;
    if (r->out2_ && (r->logits2_ || !r->want_logits)) {
        r->job2_ = (serving_job){.texts = r->texts2_, .lens = r->lens2_, .n = m, .probs = r->out2_,
                                 .logits = r->logits2_,
                                 .deadline_us = r->deadline_us, .background = r->background,
                                 .on_done = on_then_done, .user = r};
        if (serving_submit(r->then, &r->job2_) == 0)
            return 1;
    }
    count_cascade(r, "error", (double)m);
    return 0;
}

static void on_first_done(serving_job *job, void *user) {
    serving_request *r = user;
    r->status = job->status;
    snprintf(r->error, sizeof r->error, "%s", job->error);
    r->batch_size = job->batch_size;
    r->queue_wait_us = job->queue_wait_us;
    r->infer_us = job->infer_us;
    r->n_tokens = job->n_tokens;
    if (r->status == 0 && r->results) {
        const int K = serving_version_info(r->first)->n_labels;
        for (size_t i = 0; i < r->n; i++) {
            const float *p = r->out + i * (size_t)K;
            int best = best_label(p, K);
            r->results[i] = (serving_text_result){.label = best, .confidence = p[best], .version = r->first,
                                                  .probs = p, .logits = r->logits_ ? r->logits_ + i * (size_t)K : NULL};
        }
        if (r->cascade.first && escalate(r))
            return;
    }
    finish(r);
}

int serving_predict(serving_repo *repo, serving_request *r) {
    serving_error err = {0};
    int rc = 0;
    if (r->n == 0)
        rc = serving_error_set(&err, SERVING_EINPUT, "a prediction needs at least one text");
    else if (!r->first)
        rc = serving_resolve(repo, r, &err);
    if (rc == 0) {
        const engine_model_info *info = serving_version_info(r->first);
        const int classify = r->task == SERVING_TASK_CLASSIFY;
        const size_t width = (size_t)(classify ? info->n_labels : info->hidden);
        r->out = calloc(r->n * width, sizeof *r->out);
        r->results = classify ? calloc(r->n, sizeof *r->results) : NULL;
        r->logits_ = classify && r->want_logits ? calloc(r->n * width, sizeof *r->logits_) : NULL;
        if (!r->out || (classify && (!r->results || (r->want_logits && !r->logits_))))
            rc = serving_error_set(&err, SERVING_ENOMEM, "out of memory");
    }
    if (rc == 0) {
        r->job_ = (serving_job){.texts = r->texts, .lens = r->lens, .n = r->n, .query = r->query,
                                .query_len = r->query_len, .deadline_us = r->deadline_us,
                                .background = r->background, .probs = r->out, .logits = r->logits_,
                                .on_done = on_first_done,
                                .user = r};
        rc = serving_submit(r->first, &r->job_);
        if (rc != 0)
            serving_error_set(&err, rc, "model '%s': %s", serving_version_model(r->first),
                              serving_status_message(rc));
    }
    if (rc != 0) {
        r->status = rc;
        snprintf(r->error, sizeof r->error, "%.255s", err.message);
    }
    return rc;
}

void serving_request_fini(serving_request *r) {
    serving_version_release(r->first);
    serving_version_release(r->then);
    free(r->out);
    free(r->results);
    free(r->idx2_);
    free(r->texts2_);
    free(r->lens2_);
    free(r->out2_);
    free(r->logits_);
    free(r->logits2_);
    memset(r, 0, sizeof *r);
}
