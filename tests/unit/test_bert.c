/*
 * test_bert.c - the packed forward pass alone, fed the golden token ids of
 * every fixture model (so a tokenizer bug cannot hide a forward bug, and
 * vice versa): logits and pooled states match the PyTorch reference within
 * the fixture's tolerance, for every kernel set and 1 or 3 threads, with all
 * texts packed in one batch.
 */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bert.h"
#include "kernels.h"
#include "model_config.h"
#include "safetensors.h"

#define FIXTURES AISERVE_SOURCE_DIR "/tests/fixtures/models"

static double worst_error;

static double check_close(json_t *want, const float *got, size_t n, double tol, const char *what,
                          const char *model, size_t case_idx) {
    assert_int_equal(json_array_size(want), n);
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(json_number_value(json_array_get(want, i)) - got[i]);
        worst = d > worst ? d : worst;
        if (d > tol) {
            print_error("%s case %zu %s[%zu]: want %.7g got %.7g\n", model, case_idx, what, i,
                        json_number_value(json_array_get(want, i)), got[i]);
            fail();
        }
    }
    return worst;
}

/* Checks one fixture model with its cases packed in one batch, repeated
 * `repeat` times (a large batch takes the row-split path of the forward). */
static void check_model(const char *name, const kernel_ops *ops, int n_threads, int repeat) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/%s", FIXTURES, name);
    model_config cfg;
    engine_error err = {0};
    assert_int_equal(model_config_load(dir, &cfg, &err), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    safetensors *st;
    assert_int_equal(safetensors_open(path, &st, &err), 0);
    bert_weights w;
    if (bert_weights_bind(&w, &cfg, st, &err))
        print_error("%s\n", err.message);
    assert_int_equal(err.status, 0);
    snprintf(path, sizeof path, "%s/expected.json", dir);
    json_t *exp = json_load_file(path, JSON_ALLOW_NUL, NULL);
    assert_non_null(exp);
    double tol = json_number_value(json_object_get(exp, "tolerance"));
    json_t *cases = json_object_get(exp, "cases");
    const size_t n_cases = json_array_size(cases), n = n_cases * (size_t)repeat;

    int32_t *ids = malloc(sizeof(int32_t) * n * 1024);
    int *offsets = malloc(sizeof(int) * (n + 1));
    offsets[0] = 0;
    for (size_t c = 0; c < n; c++) {
        json_t *jids = json_object_get(json_array_get(cases, c % n_cases), "ids");
        for (size_t t = 0; t < json_array_size(jids); t++)
            ids[offsets[c] + t] = (int32_t)json_integer_value(json_array_get(jids, t));
        offsets[c + 1] = offsets[c] + (int)json_array_size(jids);
    }
    bert_batch batch = {.ids = ids, .offsets = offsets, .n_seqs = (int)n, .n_tokens = offsets[n]};
    const size_t H = (size_t)cfg.hidden;
    float *hidden = malloc(sizeof(float) * (size_t)batch.n_tokens * H);
    threadpool *pool = threadpool_create(n_threads);
    float *scratch = aligned_alloc(64, (bert_scratch_floats(&cfg, &batch, n_threads) * sizeof(float) + 63) / 64 * 64);
    bert_encode(&w, &cfg, &batch, pool, ops, hidden, scratch);
    free(scratch);
    float *logits = malloc(sizeof(float) * n * (size_t)(cfg.n_labels + 1));
    if (cfg.task == ENGINE_TASK_CLASSIFY)
        assert_int_equal(bert_classify_head(&w, &cfg, &batch, hidden, ops, logits, &err), 0);
    for (size_t c = 0; c < n; c++) {
        json_t *jc = json_array_get(cases, c % n_cases);
        const float *cls = hidden + (size_t)offsets[c] * H;
        double e = check_close(json_object_get(jc, "cls"), cls, H, tol, "cls", name, c);
        worst_error = e > worst_error ? e : worst_error;
        if (cfg.task == ENGINE_TASK_CLASSIFY) {
            e = check_close(json_object_get(jc, "logits"), logits + c * (size_t)cfg.n_labels,
                            (size_t)cfg.n_labels, tol, "logits", name, c);
            worst_error = e > worst_error ? e : worst_error;
        }
    }
    threadpool_destroy(pool);
    free(logits);
    free(hidden);
    free(ids);
    free(offsets);
    json_decref(exp);
    bert_weights_fini(&w);
    safetensors_close(st);
    model_config_fini(&cfg);
}

static void for_each_model(const kernel_ops *ops, int n_threads, int repeat) {
    DIR *d = opendir(FIXTURES);
    assert_non_null(d);
    struct dirent *e;
    int n_models = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        check_model(e->d_name, ops, n_threads, repeat);
        n_models++;
    }
    closedir(d);
    assert_true(n_models >= 6);
}

static void test_scalar_one_thread(void **state) {
    (void)state;
    for_each_model(kernels_scalar(), 1, 1);
}

static void test_best_kernels_three_threads(void **state) {
    (void)state;
    for_each_model(kernels_best(), 3, 1);
    printf("worst absolute error against the reference: %.3g\n", worst_error);
}

static void test_large_batch_row_split(void **state) {
    (void)state;
    /* 14 cases x 12 repeats is over 768 tokens for every fixture */
    for_each_model(kernels_best(), 2, 12);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalar_one_thread),
        cmocka_unit_test(test_best_kernels_three_threads),
        cmocka_unit_test(test_large_batch_row_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
