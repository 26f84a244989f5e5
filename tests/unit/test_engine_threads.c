/*
 * test_engine_threads.c - one loaded model, many calling threads: every
 * call gets exactly the answer it gets alone, whatever else runs at the
 * same time (classify and embed interleaved, batches of different sizes),
 * and a bad text in one thread's batch changes nothing for the others.
 */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine.h"

#define MODEL AISERVE_SOURCE_DIR "/tests/fixtures/models/distilbert-f32"
#define N_THREADS 4
#define N_ROUNDS 25
#define MAX_TEXTS 16

typedef struct shared {
    engine_model *model;
    const char *texts[MAX_TEXTS];
    size_t lens[MAX_TEXTS];
    int n_texts, n_labels, hidden;
    float logits[MAX_TEXTS][8];
    float *mean; /* n_texts x hidden, computed alone */
} shared;

typedef struct worker {
    shared *sh;
    int id;
    int mismatches;
} worker;

static void *worker_main(void *p) {
    worker *wk = p;
    shared *sh = wk->sh;
    float logits[MAX_TEXTS * 8];
    float *emb = malloc(sizeof(float) * MAX_TEXTS * (size_t)sh->hidden);
    for (int round = 0; round < N_ROUNDS; round++) {
        int first = (wk->id + round) % sh->n_texts;
        int n = 1 + (wk->id * 7 + round) % (sh->n_texts - first);
        engine_error err;
        if ((wk->id + round) % 3 == 0) {
            /* a batch with one invalid text: rejected whole, nobody else hurt */
            const char *bad[2] = {sh->texts[first], "bad \xC3\x28 text"};
            size_t bad_lens[2] = {sh->lens[first], 11};
            if (engine_classify(sh->model, bad, bad_lens, 2, logits, NULL, &err) != ENGINE_EINPUT)
                wk->mismatches++;
        } else if ((wk->id + round) % 2 == 0) {
            if (engine_embed(sh->model, sh->texts + first, sh->lens + first, (size_t)n, ENGINE_POOL_MEAN, 0,
                             emb, &err))
                wk->mismatches++;
            for (int i = 0; i < n; i++)
                for (int j = 0; j < sh->hidden; j++)
                    if (fabsf(emb[(size_t)i * sh->hidden + j] - sh->mean[(size_t)(first + i) * sh->hidden + j]) >
                        1e-5f)
                        wk->mismatches++;
        } else {
            if (engine_classify(sh->model, sh->texts + first, sh->lens + first, (size_t)n, logits, NULL,
                                &err))
                wk->mismatches++;
            for (int i = 0; i < n; i++)
                for (int j = 0; j < sh->n_labels; j++)
                    if (fabsf(logits[i * sh->n_labels + j] - sh->logits[first + i][j]) > 1e-5f)
                        wk->mismatches++;
        }
    }
    free(emb);
    return NULL;
}

static void test_concurrent_calls_on_one_model(void **state) {
    (void)state;
    shared sh = {0};
    engine_error err;
    engine_options opts = {.n_threads = 2};
    assert_int_equal(engine_model_load(MODEL, &opts, &sh.model, &err), 0);
    const engine_model_info *info = engine_model_get_info(sh.model);
    sh.n_labels = info->n_labels;
    sh.hidden = info->hidden;
    json_t *exp = json_load_file(MODEL "/expected.json", JSON_ALLOW_NUL, NULL);
    assert_non_null(exp);
    json_t *cases = json_object_get(exp, "cases");
    sh.n_texts = (int)json_array_size(cases) < MAX_TEXTS ? (int)json_array_size(cases) : MAX_TEXTS;
    for (int i = 0; i < sh.n_texts; i++) {
        json_t *t = json_object_get(json_array_get(cases, (size_t)i), "text");
        sh.texts[i] = json_string_value(t);
        sh.lens[i] = json_string_length(t);
    }
    /* answers alone, one text at a time */
    sh.mean = malloc(sizeof(float) * (size_t)sh.n_texts * sh.hidden);
    for (int i = 0; i < sh.n_texts; i++) {
        assert_int_equal(engine_classify(sh.model, &sh.texts[i], &sh.lens[i], 1, sh.logits[i], NULL, &err), 0);
        assert_int_equal(engine_embed(sh.model, &sh.texts[i], &sh.lens[i], 1, ENGINE_POOL_MEAN, 0,
                                      sh.mean + (size_t)i * sh.hidden, &err),
                         0);
    }
    pthread_t threads[N_THREADS];
    worker workers[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
        workers[t] = (worker){.sh = &sh, .id = t};
        assert_int_equal(pthread_create(&threads[t], NULL, worker_main, &workers[t]), 0);
    }
    int mismatches = 0;
    for (int t = 0; t < N_THREADS; t++) {
        pthread_join(threads[t], NULL);
        mismatches += workers[t].mismatches;
    }
    assert_int_equal(mismatches, 0);
    free(sh.mean);
    json_decref(exp);
    engine_model_free(sh.model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_calls_on_one_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
