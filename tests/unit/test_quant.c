/*
 * test_quant.c - the int8 and bf16 modes (engine_options.quantization) on
 * whole models, against the same model in fp32.
 *
 * For every fixture model under tests/fixtures/models/ and each reduced
 * mode, with the fixture's texts:
 *  - classifiers: logits within the mode's tolerance of fp32's and the same
 *    labels (argmax; for multi-label models the sign of every logit);
 *  - every model: mean and CLS embeddings with cosine to fp32's above the
 *    mode's bound;
 *  - the texts packed in one batch give what each gives alone (the packed,
 *    padding-free batch works in reduced precision), also in a batch large
 *    enough for the row-split forward on 3 threads;
 *  - engine_model_info: the mode runs, and the weights take less memory
 *    than fp32's by at least what packing the encoder's linear layers must
 *    save (exactly that for F32 checkpoints).
 * And the fallbacks, forced through AISERVE_KERNELS: scalar kernels run
 * int8 and bf16 as fp32 with a note; avx2 runs bf16 by widening and int8
 * with 7-bit weights (unless the CPU has AVX-VNNI), each with a note. Names
 * parse and print. The worst differences seen are printed.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "engine.h"
#include "model_fixtures.h"

/* Tolerances against fp32, about 2.5x the worst seen on the fixtures
 * (printed at the end of the run): int8 logits 0.105 (distilbert-f32,
 * logits near 1), cosine 0.99945; with the 7-bit weights of plain AVX2
 * (AISERVE_KERNELS=avx2 here) 0.233 and 0.99825; bf16 logits 0.028,
 * cosine 0.99996. The fixtures are tiny random models (hidden 32), where
 * 8-bit values cost more than on trained ones; a PyTorch simulation of the
 * same int8 scheme (fake-quantised weights per channel, inputs per token)
 * gives the same 0.105 on distilbert-f32, so this is the scheme's error,
 * not the engine's. docs/engine.md has the figures on the bundled model. */
typedef struct mode_bounds {
    engine_quantization mode;
    const char *kernels; /* NULL: any kernels */
    double logit_tol;    /* max |logit - fp32 logit| */
    double min_cosine;   /* embeddings against fp32 */
} mode_bounds;

static const mode_bounds bounds[] = {
    {ENGINE_QUANT_INT8, "avx2", 0.6, 0.995}, /* 7-bit weights */
    {ENGINE_QUANT_INT8, NULL, 0.25, 0.998},
    {ENGINE_QUANT_BF16, NULL, 0.07, 0.9999},
};

static const mode_bounds *bounds_for(const engine_model_info *info) {
    for (size_t i = 0; i < sizeof bounds / sizeof *bounds; i++)
        if (bounds[i].mode == info->quantization && (!bounds[i].kernels || !strcmp(bounds[i].kernels, info->kernels)))
            return &bounds[i];
    fail_msg("no bounds for %s on %s", engine_quantization_name(info->quantization), info->kernels);
    return NULL;
}

static const engine_quantization modes[] = {ENGINE_QUANT_INT8, ENGINE_QUANT_BF16};

typedef struct worst {
    double logit_diff, cosine;
} worst;
static worst g_worst[3] = {{0, 1}, {0, 1}, {0, 1}}; /* by engine_quantization */

static engine_model *load(const char *dir, engine_quantization q, int threads) {
    engine_options opts = {.n_threads = threads, .quantization = q};
    engine_model *m = NULL;
    engine_error err = {0};
    int rc = engine_model_load(dir, &opts, &m, &err);
    if (rc)
        fail_msg("%s (%s): load: %s: %s", dir, engine_quantization_name(q), engine_status_name(rc), err.message);
    return m;
}

static double cosine(const float *a, const float *b, int n) {
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return ab / sqrt(aa * bb);
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        best = x[i] > x[best] ? i : best;
    return best;
}

/* Each text alone gives what the packed batch `got` (n x dim) holds for it. */
static void check_alone(engine_model *m, const fixture *fx, const float *got, int dim, int classify) {
    float *one = malloc(sizeof(float) * (size_t)dim);
    engine_error err = {0};
    for (size_t i = 0; i < fx->n; i++) {
        int rc = classify ? engine_classify(m, &fx->texts[i], &fx->lens[i], 1, one, NULL, &err)
                          : engine_embed(m, &fx->texts[i], &fx->lens[i], 1, ENGINE_POOL_MEAN, 0, one, &err);
        assert_int_equal(rc, 0);
        for (int j = 0; j < dim; j++)
            if (!(fabsf(one[j] - got[i * (size_t)dim + j]) <= 1e-6f * (1 + fabsf(one[j]))))
                fail_msg("%s: text %zu alone: [%d] = %.7g, in the batch %.7g", fx->dir, i, j, (double)one[j],
                         (double)got[i * (size_t)dim + j]);
    }
    free(one);
}

/* Bytes of one n x k weight stored as `q`: packed int8 is n and k rounded
 * up to 16 and 4, plus a float scale and an int32 sum a channel; bf16 is
 * 2 bytes a weight with n and k rounded up to 16 and 2; fp32 is 4 bytes. */
static uint64_t weight_bytes(uint64_t n, uint64_t k, engine_quantization q) {
    const uint64_t n_pad = (n + 15) / 16 * 16;
    switch (q) {
    case ENGINE_QUANT_INT8:
        return n_pad * ((k + 3) / 4 * 4) + n_pad * 8;
    case ENGINE_QUANT_BF16:
        return n_pad * ((k + 1) / 2 * 2) * 2;
    default:
        return n * k * 4;
    }
}

/* Bytes of the encoder's linear weights (Q, K, V, O, FFN up, FFN down). */
static uint64_t linear_bytes(const engine_model_info *info, engine_quantization q) {
    const uint64_t H = (uint64_t)info->hidden, F = (uint64_t)info->intermediate;
    return (uint64_t)info->n_layers * (4 * weight_bytes(H, H, q) + weight_bytes(F, H, q) + weight_bytes(H, F, q));
}

/* Returns 1 when the mode fell back (a CPU without AVX2: test_fallbacks
 * covers it), else checks it and returns 0. */
static int check_mode(const fixture *fx, engine_quantization mode, engine_model *ref) {
    engine_model *m = load(fx->dir, mode, 2);
    const engine_model_info *ri = engine_model_get_info(ref), *info = engine_model_get_info(m);
    const uint64_t linear_f32 = linear_bytes(ri, ENGINE_QUANT_NONE);
    if (info->quantization != mode) {
        assert_non_null(info->quantization_note);
        engine_model_free(m);
        return 1;
    }
    const mode_bounds *mb = bounds_for(info);
    /* At least the F32 linear weights minus their packed form are saved
     * (exactly that for F32 checkpoints; F16 / BF16 ones also keep their
     * embedding tables in place instead of widened). */
    const uint64_t packed = linear_bytes(info, mb->mode);
    if (!(info->weight_memory_bytes < ri->weight_memory_bytes &&
          ri->weight_memory_bytes - info->weight_memory_bytes >= linear_f32 - packed))
        fail_msg("%s: %s weights take %llu bytes, fp32 %llu: less saved than packing the linear layers "
                 "(%llu bytes in F32, %llu packed) must save",
                 fx->dir, engine_quantization_name(mb->mode), (unsigned long long)info->weight_memory_bytes,
                 (unsigned long long)ri->weight_memory_bytes, (unsigned long long)linear_f32,
                 (unsigned long long)packed);
    worst *w = &g_worst[mb->mode];
    engine_error err = {0};
    const int H = info->hidden, K = info->n_labels;
    if (K > 0) {
        float *a = malloc(sizeof(float) * fx->n * K), *b = malloc(sizeof(float) * fx->n * K);
        assert_int_equal(engine_classify(ref, fx->texts, fx->lens, fx->n, a, NULL, &err), 0);
        assert_int_equal(engine_classify(m, fx->texts, fx->lens, fx->n, b, NULL, &err), 0);
        for (size_t i = 0; i < fx->n; i++) {
            for (int j = 0; j < K; j++) {
                double d = fabs((double)a[i * K + j] - b[i * K + j]);
                w->logit_diff = d > w->logit_diff ? d : w->logit_diff;
                if (!(d <= mb->logit_tol))
                    fail_msg("%s: %s: case %zu logit %d = %.6g, fp32 %.6g", fx->dir,
                             engine_quantization_name(mb->mode), i, j, (double)b[i * K + j], (double)a[i * K + j]);
                if (info->multi_label && (a[i * K + j] > 0) != (b[i * K + j] > 0))
                    fail_msg("%s: %s: case %zu label %d differs from fp32", fx->dir,
                             engine_quantization_name(mb->mode), i, j);
            }
            if (!info->multi_label && argmax(a + i * K, K) != argmax(b + i * K, K))
                fail_msg("%s: %s: case %zu label differs from fp32", fx->dir, engine_quantization_name(mb->mode), i);
        }
        check_alone(m, fx, b, K, 1);
        free(a), free(b);
    }
    static const engine_pooling pools[] = {ENGINE_POOL_MEAN, ENGINE_POOL_CLS};
    float *a = malloc(sizeof(float) * fx->n * H), *b = malloc(sizeof(float) * fx->n * H);
    for (size_t p = 0; p < 2; p++) {
        assert_int_equal(engine_embed(ref, fx->texts, fx->lens, fx->n, pools[p], 0, a, &err), 0);
        assert_int_equal(engine_embed(m, fx->texts, fx->lens, fx->n, pools[p], 0, b, &err), 0);
        for (size_t i = 0; i < fx->n; i++) {
            double c = cosine(a + i * H, b + i * H, H);
            w->cosine = c < w->cosine ? c : w->cosine;
            if (!(c >= mb->min_cosine))
                fail_msg("%s: %s: case %zu %s embedding cosine to fp32 %.6f", fx->dir,
                         engine_quantization_name(mb->mode), i, p ? "CLS" : "mean", c);
        }
        if (pools[p] == ENGINE_POOL_MEAN)
            check_alone(m, fx, b, H, 0);
    }
    free(a), free(b);
    engine_model_free(m);

    /* Many copies of the texts: over 768 tokens, the row-split forward. */
    m = load(fx->dir, mode, 3);
    const size_t copies = 8, n = copies * fx->n;
    const char **texts = malloc(n * sizeof *texts);
    size_t *lens = malloc(n * sizeof *lens);
    for (size_t i = 0; i < n; i++)
        texts[i] = fx->texts[i % fx->n], lens[i] = fx->lens[i % fx->n];
    float *big = malloc(sizeof(float) * n * H);
    engine_stats stats = {0};
    if (K > 0) {
        assert_int_equal(engine_classify_stats(m, texts, lens, n, big, NULL, &stats, &err), 0);
        assert_true(stats.n_tokens >= 768);
        check_alone(m, fx, big + (n - fx->n) * K, K, 1);
    }
    assert_int_equal(engine_embed(m, texts, lens, n, ENGINE_POOL_MEAN, 0, big, &err), 0);
    check_alone(m, fx, big + (n - fx->n) * H, H, 0);
    free(texts), free(lens), free(big);
    engine_model_free(m);
    return 0;
}


static void test_fixture(void **state) {
    const char *name = *state;
    fixture fx;
    fixture_open(&fx, name);
    engine_model *ref = load(fx.dir, ENGINE_QUANT_NONE, 2);
    assert_int_equal(engine_model_get_info(ref)->quantization, ENGINE_QUANT_NONE);
    int fell_back = 0;
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++)
        fell_back |= check_mode(&fx, modes[i], ref);
    engine_model_free(ref);
    fixture_close(&fx);
    if (fell_back)
        skip();
}

/* Loads `dir` asking for `q` with AISERVE_KERNELS=forced. */
static engine_model *load_forced(const char *dir, engine_quantization q, const char *forced) {
    setenv("AISERVE_KERNELS", forced, 1);
    engine_model *m = load(dir, q, 1);
    unsetenv("AISERVE_KERNELS");
    return m;
}

static void test_fallbacks(void **state) {
    (void)state;
    const char *dir = FIXTURE_ROOT "/distilbert-f32";
    const char *text = "a fine film";
    const size_t len = strlen(text);
    float want[2], got[2];
    engine_error err = {0};

    /* Scalar kernels: int8 and bf16 load as fp32, and say so. */
    engine_model *ref = load_forced(dir, ENGINE_QUANT_NONE, "scalar");
    assert_int_equal(engine_classify(ref, &text, &len, 1, want, NULL, &err), 0);
    const engine_quantization asked[] = {ENGINE_QUANT_INT8, ENGINE_QUANT_BF16};
    for (size_t i = 0; i < 2; i++) {
        engine_model *m = load_forced(dir, asked[i], "scalar");
        const engine_model_info *info = engine_model_get_info(m);
        assert_int_equal(info->quantization, ENGINE_QUANT_NONE);
        assert_string_equal(info->kernels, "scalar");
        assert_non_null(info->quantization_note);
        assert_non_null(strstr(info->quantization_note, engine_quantization_name(asked[i])));
        assert_int_equal(info->weight_memory_bytes, engine_model_get_info(ref)->weight_memory_bytes);
        assert_int_equal(engine_classify(m, &text, &len, 1, got, NULL, &err), 0);
        assert_memory_equal(want, got, sizeof want);
        engine_model_free(m);
    }
    engine_model_free(ref);

    /* AVX2 without AVX512-BF16: bf16 by widening (a note), int8 on AVX2 or AVX-VNNI. */
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return;
    ref = load(dir, ENGINE_QUANT_NONE, 1);
    assert_int_equal(engine_classify(ref, &text, &len, 1, want, NULL, &err), 0);
    engine_model *m = load_forced(dir, ENGINE_QUANT_BF16, "avx2");
    const engine_model_info *info = engine_model_get_info(m);
    assert_int_equal(info->quantization, ENGINE_QUANT_BF16);
    assert_string_equal(info->kernels, "avx2");
    assert_non_null(info->quantization_note);
    assert_non_null(strstr(info->quantization_note, "AVX512-BF16"));
    assert_true(info->weight_memory_bytes < engine_model_get_info(ref)->weight_memory_bytes);
    assert_int_equal(engine_classify(m, &text, &len, 1, got, NULL, &err), 0);
    for (int j = 0; j < 2; j++)
        assert_true(fabsf(got[j] - want[j]) <= bounds_for(info)->logit_tol);
    engine_model_free(m);
    m = load_forced(dir, ENGINE_QUANT_INT8, "avx2");
    info = engine_model_get_info(m);
    assert_int_equal(info->quantization, ENGINE_QUANT_INT8);
    if (strcmp(info->kernels, "avx2") == 0) { /* 7-bit weights, and a note that says so */
        assert_non_null(info->quantization_note);
        assert_non_null(strstr(info->quantization_note, "7 bits"));
    } else {
        assert_string_equal(info->kernels, "avx-vnni");
        assert_null(info->quantization_note);
    }
    assert_int_equal(engine_classify(m, &text, &len, 1, got, NULL, &err), 0);
    for (int j = 0; j < 2; j++)
        assert_true(fabsf(got[j] - want[j]) <= bounds_for(info)->logit_tol);
    engine_model_free(m);
    engine_model_free(ref);
}

static void test_names(void **state) {
    (void)state;
    engine_quantization q = ENGINE_QUANT_INT8;
    engine_error err = {0};
    const char *names[] = {"none", "bf16", "int8"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(engine_quantization_parse(names[i], &q, &err), 0);
        assert_string_equal(engine_quantization_name(q), names[i]);
    }
    assert_int_equal(engine_quantization_parse("fp16", &q, &err), ENGINE_EARG);
    assert_non_null(strstr(err.message, "fp16"));
    assert_non_null(strstr(err.message, "int8"));
    assert_int_equal(engine_quantization_parse("INT8", &q, &err), ENGINE_EARG);
    assert_int_equal(engine_quantization_parse(NULL, &q, &err), ENGINE_EARG);
    assert_string_equal(engine_quantization_name((engine_quantization)7), "?");
    engine_options defaults = {0};
    assert_int_equal(defaults.quantization, ENGINE_QUANT_NONE);
}

static int teardown_print(void **state) {
    (void)state;
    printf("worst against fp32 on the fixtures: int8 logits %.4g, cosine %.6f; bf16 logits %.4g, cosine %.6f\n",
           g_worst[ENGINE_QUANT_INT8].logit_diff, g_worst[ENGINE_QUANT_INT8].cosine,
           g_worst[ENGINE_QUANT_BF16].logit_diff, g_worst[ENGINE_QUANT_BF16].cosine);
    return 0;
}

int main(void) {
    static char names[MAX_FIXTURES][256];
    static struct CMUnitTest tests[MAX_FIXTURES + 2];
    const int n_fixtures = fixture_names("test_quant", names);
    if (n_fixtures < 0)
        return 1;
    size_t n = 0;
    for (; n < (size_t)n_fixtures; n++)
        tests[n] = (struct CMUnitTest){.name = names[n], .test_func = test_fixture, .initial_state = names[n]};
    tests[n++] = (struct CMUnitTest){.name = "fallbacks", .test_func = test_fallbacks};
    tests[n++] = (struct CMUnitTest){.name = "names", .test_func = test_names};
    return _cmocka_run_group_tests("test_quant", tests, n, NULL, teardown_print);
}
