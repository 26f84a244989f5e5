/*
 * shadow.c - shadow traffic: a share of a model's predictions is also run
 * on a candidate version (serving_set_shadow), whose answers are only
 * compared with what the client got, never returned. The copy goes to the
 * candidate's scheduler as background work after the primary answer is
 * built, so it never slows or delays that answer, and it takes only
 * capacity online requests leave free. Each text's comparison is counted
 * in aiserve_shadow_predictions_total{model,version,result=agree|disagree|
 * error} (labels compared by name, so versions with different label ids
 * still compare).
 *
 * http_shadow_maybe: loop thread. on_shadow_done: the candidate's batcher
 * thread, which keeps that version alive while it runs.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

typedef struct shadow_job {
    serving_job job;
    http_server *server;
    serving_version *version; /* the candidate; alive while its batcher runs on_shadow_done */
    size_t n;
    const char **texts;
    size_t *lens;
    char (*primary)[64];      /* the label the client got, per text */
    float *probs;
} shadow_job;

/* A no-op: serving registers and counts aiserve_shadow_predictions_total
 * (src/serving/predict.c); this file goes once HTTP calls serving_predict. */
static void count(http_server *s, const char *model, long version, const char *result, double n) {
    (void)s, (void)model, (void)version, (void)result, (void)n;
}

static void shadow_free(shadow_job *sj) {
    for (size_t i = 0; i < sj->n; i++)
        free((char *)sj->texts[i]);
    free(sj->texts);
    free(sj->lens);
    free(sj->primary);
    free(sj->probs);
    free(sj);
}

static void on_shadow_done(serving_job *job, void *user) {
    shadow_job *sj = user;
    const char *model = serving_version_model(sj->version);
    long version = serving_version_number(sj->version);
    if (job->status != 0) {
        count(sj->server, model, version, "error", (double)sj->n);
    } else {
        const int K = serving_version_info(sj->version)->n_labels;
        double agree = 0;
        for (size_t i = 0; i < sj->n; i++) {
            const char *label = serving_version_label(sj->version, http_best_label(sj->probs + i * (size_t)K, K));
            agree += label && strcmp(label, sj->primary[i]) == 0;
        }
        if (agree > 0)
            count(sj->server, model, version, "agree", agree);
        if ((double)sj->n - agree > 0)
            count(sj->server, model, version, "disagree", (double)sj->n - agree);
    }
    shadow_free(sj);
}

static unsigned coin(void) {
    static __thread uint64_t x;
    if (!x)
        x = (http_now_us() * 0x9e3779b97f4a7c15ull) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return (unsigned)(x % 100);
}

void http_shadow_maybe(http_call *call) {
    http_server *s = call->loop->server;
    const serving_shadow sh = call->shadow; /* as it was when the version was chosen */
    const char *model = serving_version_model(call->version);
    if (call->embed || !sh.version || sh.version == serving_version_number(call->version) ||
        coin() >= (unsigned)sh.percent)
        return;
    serving_version *v = NULL;
    serving_error err;
    if (serving_acquire(s->repo, model, sh.version, &v, &err) != 0) {
        count(s, model, sh.version, "error", (double)call->job.n);
        return;
    }
    const int K = serving_version_info(call->version)->n_labels;
    const int KS = serving_version_info(v)->n_labels;
    size_t n = call->job.n;
    shadow_job *sj = calloc(1, sizeof *sj);
    int ok = sj && KS > 0;
    if (ok) {
        sj->server = s;
        sj->version = v;
        sj->texts = calloc(n, sizeof *sj->texts);
        sj->lens = calloc(n, sizeof *sj->lens);
        sj->primary = calloc(n, sizeof *sj->primary);
        sj->probs = calloc(n * (size_t)KS, sizeof *sj->probs);
        ok = sj->texts && sj->lens && sj->primary && sj->probs;
    }
    for (size_t i = 0; ok && i < n; i++) {
        sj->texts[i] = strndup(call->texts[i], call->lens[i]);
        sj->lens[i] = call->lens[i];
        ok = sj->texts[i] != NULL;
        sj->n = i + 1;
        const char *label = serving_version_label(call->version, http_best_label(call->probs + i * (size_t)K, K));
        http_copy(sj->primary[i], sizeof sj->primary[i], label ? label : "");
    }
    if (ok) {
        sj->job = (serving_job){.texts = sj->texts, .lens = sj->lens, .n = n, .probs = sj->probs,
                                .on_done = on_shadow_done, .user = sj, .background = 1};
        ok = serving_submit(v, &sj->job) == 0;
    }
    if (!ok) {
        count(s, model, sh.version, "error", (double)n);
        if (sj)
            shadow_free(sj);
    }
    /* The queued job does not hold the version: if this was its last
     * reference, freeing it answers the job ESTOPPED (counted as errors). */
    serving_version_release(v);
}
