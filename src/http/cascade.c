/*
 * cascade.c - cascades (serving_set_cascade): a model answered by a cheap
 * version first; the texts it is not sure of (confidence below the
 * threshold) go on to a second version, and the client gets, per text, the
 * answer of the last version that saw it. Escalation is counted in
 * aiserve_cascade_texts_total{model, result=first|escalated|error}.
 *
 * A request takes the cascade when it names no version (path,
 * X-Model-Version), is a /predict-style request, and the cascade's first
 * version can answer (serving_acquire_request decides, with the version):
 * the first stage is its ordinary prediction on that version; then http_cascade_escalate sends the unsure texts to `then` as
 * a second job on the same call (answered through the loop's done list
 * again), and http_cascade_result picks each text's answer.
 *
 * Loop thread only.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

struct http_cascade {
    serving_cascade cfg;
    int stage;                /* 1: first stage; 2: second job sent; 3: second job back */
    serving_version *then;    /* held while the second job runs */
    size_t m;                 /* texts escalated */
    size_t *idx;              /* their indices */
    int *slot;                /* per text: its index in the second job, or -1 */
    const char **texts;
    size_t *lens;
    float *probs;             /* m x then's labels */
    serving_job job;
};

/* A no-op: serving registers and counts aiserve_cascade_texts_total
 * (src/serving/predict.c); this file goes once HTTP calls serving_predict. */
static void count(http_call *call, const char *result, double n) {
    (void)call, (void)result, (void)n;
}

void http_cascade_begin(http_call *call, const serving_cascade *cfg) {
    call->cascade = calloc(1, sizeof *call->cascade);
    if (!call->cascade) /* out of memory: answered by the first version alone */
        return;
    call->cascade->cfg = *cfg;
    call->cascade->stage = 1;
}

size_t http_cascade_params(http_call *call, char *buf, size_t cap) {
    if (!call->cascade)
        return 0;
    return (size_t)snprintf(buf, cap, "cascade:%ld:%ld:%.17g", call->cascade->cfg.first, call->cascade->cfg.then,
                            call->cascade->cfg.threshold);
}

int http_cascade_escalate(http_call *call) {
    http_cascade *c = call->cascade;
    if (!c || c->stage != 1)
        return 0;
    c->stage = 3; /* whatever happens below, the answer is built next */
    const int K = serving_version_info(call->version)->n_labels;
    size_t n = call->job.n;
    c->slot = malloc(n * sizeof *c->slot);
    c->idx = malloc(n * sizeof *c->idx);
    c->texts = malloc(n * sizeof *c->texts);
    c->lens = malloc(n * sizeof *c->lens);
    if (!c->slot || !c->idx || !c->texts || !c->lens) {
        count(call, "error", (double)n);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        const float *p = call->probs + i * (size_t)K;
        c->slot[i] = -1;
        if ((double)p[http_best_label(p, K)] < c->cfg.threshold) {
            c->slot[i] = (int)c->m;
            c->idx[c->m] = i;
            c->texts[c->m] = call->texts[i];
            c->lens[c->m] = call->lens[i];
            c->m++;
        }
    }
    count(call, "first", (double)(n - c->m));
    if (c->m == 0)
        return 0;
    http_server *s = call->loop->server;
    serving_error err;
    if (serving_acquire(s->repo, serving_version_model(call->version), c->cfg.then, &c->then, &err) != 0) {
        count(call, "error", (double)c->m);
        c->m = 0;
        return 0;
    }
    const int K2 = serving_version_info(c->then)->n_labels;
    c->probs = K2 > 0 ? calloc(c->m * (size_t)K2, sizeof *c->probs) : NULL;
    if (c->probs) {
        c->job = (serving_job){.texts = c->texts, .lens = c->lens, .n = c->m, .probs = c->probs,
                               .deadline_us = call->job.deadline_us, .on_done = http_post_done, .user = call};
        atomic_fetch_add(&s->pending_jobs, 1);
        if (serving_submit(c->then, &c->job) == 0) {
            c->stage = 2;
            return 1; /* back through the done list: http_finish_prediction again */
        }
        atomic_fetch_sub(&s->pending_jobs, 1);
    }
    count(call, "error", (double)c->m);
    c->m = 0;
    return 0;
}

int http_cascade_returned(http_call *call) {
    http_cascade *c = call->cascade;
    if (!c || c->stage != 2)
        return 0;
    c->stage = 3;
    if (c->job.status != 0) { /* the first stage's answers stand */
        count(call, "error", (double)c->m);
        c->m = 0;
    } else {
        count(call, "escalated", (double)c->m);
    }
    return 1;
}

void http_cascade_result(http_call *call, size_t i, const char **label, double *confidence, long *version) {
    http_cascade *c = call->cascade;
    if (c && c->m && c->slot && c->slot[i] >= 0) {
        const int K2 = serving_version_info(c->then)->n_labels;
        const float *p = c->probs + (size_t)c->slot[i] * (size_t)K2;
        int best = http_best_label(p, K2);
        *label = serving_version_label(c->then, best);
        *confidence = (double)p[best];
        *version = serving_version_number(c->then);
        return;
    }
    const int K = serving_version_info(call->version)->n_labels;
    const float *p = call->probs + i * (size_t)K;
    int best = http_best_label(p, K);
    *label = serving_version_label(call->version, best);
    *confidence = (double)p[best];
    *version = serving_version_number(call->version);
}

int http_cascade_used(const http_call *call) { return call->cascade && call->cascade->m > 0; }

void http_cascade_free(http_cascade *c) {
    if (!c)
        return;
    if (c->then)
        serving_version_release(c->then);
    free(c->idx);
    free(c->slot);
    free(c->texts);
    free(c->lens);
    free(c->probs);
    free(c);
}
