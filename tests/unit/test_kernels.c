/*
 * test_kernels.c - every SIMD kernel set agrees with the scalar reference on
 * odd sizes (tails), the linear-layer slices add up to the full product,
 * half-precision widening is exact, and the thread pool runs every chunk once.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels.h"
#include "threadpool.h"

static const size_t sizes[] = {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 768, 769, 3072};

static float frand(unsigned *seed, float scale) {
    *seed = *seed * 1664525u + 1013904223u;
    return ((float)(*seed >> 8) / (float)(1u << 24) * 2.0f - 1.0f) * scale;
}

static void fill(float *x, size_t n, unsigned seed, float scale) {
    for (size_t i = 0; i < n; i++)
        x[i] = frand(&seed, scale);
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        m = d > m ? d : m;
    }
    return m;
}

static void check_set(const kernel_ops *simd) {
    const kernel_ops *ref = kernels_scalar();
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        size_t n = sizes[si];
        /* one float of canary past the end: kernels must not write it */
        float *a = malloc((n + 1) * sizeof(float)), *b = malloc((n + 1) * sizeof(float));
        float *g = malloc(n * sizeof(float)), *be = malloc(n * sizeof(float));
        float *res = malloc(n * sizeof(float));
        fill(g, n, 7, 1.0f);
        fill(be, n, 8, 0.5f);
        fill(res, n, 9, 2.0f);

        fill(a, n, (unsigned)n, 6.0f);
        memcpy(b, a, n * sizeof(float));
        a[n] = b[n] = 12345.0f;
        ref->gelu(a, n);
        simd->gelu(b, n);
        assert_true(max_abs_diff(a, b, n) < 2e-6 * 6);
        assert_true(b[n] == 12345.0f);

        fill(a, n, (unsigned)n + 1, 6.0f);
        memcpy(b, a, n * sizeof(float));
        ref->gelu_tanh(a, n);
        simd->gelu_tanh(b, n);
        assert_true(max_abs_diff(a, b, n) < 2e-6 * 6);

        fill(a, n, (unsigned)n + 2, 20.0f);
        memcpy(b, a, n * sizeof(float));
        ref->softmax(a, n);
        simd->softmax(b, n);
        assert_true(max_abs_diff(a, b, n) < 1e-6);
        assert_true(b[n] == 12345.0f);

        fill(a, n, (unsigned)n + 3, 3.0f);
        memcpy(b, a, n * sizeof(float));
        ref->layernorm(a, res, g, be, n, 1e-12f);
        simd->layernorm(b, res, g, be, n, 1e-12f);
        assert_true(max_abs_diff(a, b, n) < 1e-4);
        assert_true(b[n] == 12345.0f);

        fill(a, n, (unsigned)n + 4, 3.0f);
        memcpy(b, a, n * sizeof(float));
        ref->add(a, res, n);
        simd->add(b, res, n);
        assert_true(max_abs_diff(a, b, n) == 0);
        free(a), free(b), free(g), free(be), free(res);
    }
}

/* Products on awkward shapes: row tails, k tails, k past one k block,
 * strides wider than the matrices, n not a multiple of the register block. */
static void check_gemm(const kernel_ops *simd) {
    const kernel_ops *ref = kernels_scalar();
    static const int ms[] = {1, 2, 5, 6, 7, 13, 64, 71};
    static const int ns[] = {4, 8, 12, 16, 32, 48, 64, 80, 144, 6, 3}; /* 80, 144: gemm_nn's strips of 64 */
    static const int ks[] = {1, 15, 16, 17, 64, 100, 768, 800, 1601};
    for (size_t a = 0; a < sizeof ms / sizeof *ms; a++)
        for (size_t b = 0; b < sizeof ns / sizeof *ns; b++)
            for (size_t t = 0; t < sizeof ks / sizeof *ks; t++) {
                int m = ms[a], n = ns[b], k = ks[t];
                int ldx = k + 3, ldw = k + 5, ldc = n + 7;
                float *x = malloc(sizeof(float) * m * ldx), *w = malloc(sizeof(float) * n * ldw);
                float *bias = malloc(sizeof(float) * n);
                float *c1 = calloc((size_t)m * ldc, sizeof(float)), *c2 = calloc((size_t)m * ldc, sizeof(float));
                fill(x, (size_t)m * ldx, (unsigned)(m * 31 + k), 1.0f);
                fill(w, (size_t)n * ldw, (unsigned)(n * 17 + k), 1.0f);
                fill(bias, (size_t)n, 5, 1.0f);
                ref->gemm_nt(m, n, k, 0.5f, x, ldx, w, ldw, bias, c1, ldc);
                simd->gemm_nt(m, n, k, 0.5f, x, ldx, w, ldw, bias, c2, ldc);
                double tol = 1e-5 * sqrt((double)k);
                for (int i = 0; i < m; i++) {
                    assert_true(max_abs_diff(c1 + (size_t)i * ldc, c2 + (size_t)i * ldc, (size_t)n) < tol);
                    for (int j = n; j < ldc; j++) /* nothing written past n */
                        assert_true(c2[(size_t)i * ldc + j] == 0.0f);
                }
                /* gemm_nn with the same buffers: A = x (m x k), B = w viewed as k x n */
                if ((size_t)k * n <= (size_t)n * ldw) {
                    memset(c1, 0, sizeof(float) * m * ldc);
                    memset(c2, 0, sizeof(float) * m * ldc);
                    ref->gemm_nn(m, n, k, x, ldx, w, n, c1, ldc);
                    simd->gemm_nn(m, n, k, x, ldx, w, n, c2, ldc);
                    for (int i = 0; i < m; i++) {
                        assert_true(max_abs_diff(c1 + (size_t)i * ldc, c2 + (size_t)i * ldc, (size_t)n) < tol);
                        for (int j = n; j < ldc; j++)
                            assert_true(c2[(size_t)i * ldc + j] == 0.0f);
                    }
                }
                free(x), free(w), free(bias), free(c1), free(c2);
            }
}

/* Attention's key transpose: alpha * src[r][c] at dst[c][r] (one multiply,
 * so exactly), zeros in the padding, nothing written past a row's ldd. */
static void check_transpose(const kernel_ops *simd) {
    static const int rows_list[] = {1, 15, 16, 17, 37, 64, 130};
    static const int cols_list[] = {1, 16, 32, 40, 64};
    for (size_t a = 0; a < sizeof rows_list / sizeof *rows_list; a++)
        for (size_t b = 0; b < sizeof cols_list / sizeof *cols_list; b++)
            for (int pad = 0; pad < 2; pad++) {
                const int rows = rows_list[a], cols = cols_list[b], lds = cols + 5;
                const int ldd = pad ? (rows + 15) / 16 * 16 : rows + 3;
                const size_t n = (size_t)cols * ldd;
                float *src = malloc(sizeof(float) * (size_t)rows * lds), *dst = malloc(sizeof(float) * (n + 1));
                fill(src, (size_t)rows * lds, (unsigned)(rows * 7 + cols), 1.0f);
                fill(dst, n + 1, 3, 9.0f); /* garbage where the padding goes */
                const float canary = dst[n];
                simd->transpose(src, rows, cols, lds, 0.125f, dst, ldd);
                assert_true(dst[n] == canary);
                for (int c = 0; c < cols; c++)
                    for (int r = 0; r < ldd; r++)
                        assert_true(dst[(size_t)c * ldd + r] ==
                                    (r < rows ? 0.125f * src[(size_t)r * lds + c] : 0.0f));
                free(src), free(dst);
            }
}

static void test_avx2_matches_scalar(void **state) {
    (void)state;
    if (!kernels_avx2())
        skip();
    check_set(kernels_avx2());
    check_gemm(kernels_avx2());
}

static void test_avx512_matches_scalar(void **state) {
    (void)state;
    if (!kernels_avx512())
        skip();
    check_set(kernels_avx512());
    check_gemm(kernels_avx512());
    check_transpose(kernels_avx512());
}

static void test_scalar_reference_values(void **state) {
    (void)state;
    /* gelu(1) = 0.8413447, gelu(-1) = -0.1586553 (exact erf form) */
    float x[3] = {1.0f, -1.0f, 0.0f};
    kernels_scalar()->gelu(x, 3);
    assert_true(fabsf(x[0] - 0.8413447f) < 1e-6f);
    assert_true(fabsf(x[1] + 0.1586553f) < 1e-6f);
    assert_true(x[2] == 0.0f);
    float s[3] = {1.0f, 2.0f, 3.0f};
    kernels_scalar()->softmax(s, 3);
    assert_true(fabsf(s[0] - 0.09003057f) < 1e-7f && fabsf(s[2] - 0.66524096f) < 1e-7f);
}

static void test_linear_slices(void **state) {
    (void)state;
    const int m = 5, k = 19, n = 37;
    float *x = malloc(sizeof(float) * m * k), *w = malloc(sizeof(float) * n * k);
    float *bias = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * m * n);
    fill(x, (size_t)m * k, 1, 1.0f);
    fill(w, (size_t)n * k, 2, 1.0f);
    fill(bias, (size_t)n, 3, 1.0f);
    int cuts[] = {0, 16, 17, 37};
    for (int c = 0; c < 3; c++)
        kernels_linear(x, m, k, w, bias, n, y, cuts[c], cuts[c + 1], kernels_best());
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double ref = bias[j];
            for (int t = 0; t < k; t++)
                ref += (double)x[i * k + t] * w[j * k + t];
            assert_true(fabs(ref - y[i * n + j]) < 1e-5);
        }
    free(x), free(w), free(bias), free(y);
}

static void test_half_widening(void **state) {
    (void)state;
    /* little-endian bytes, deliberately at an odd address */
    uint8_t raw[1 + 2 * 6];
    const uint16_t f16[6] = {0x3c00, 0xc000, 0x0001, 0x7bff, 0x7c00, 0x0000};
    const float want[6] = {1.0f, -2.0f, 5.9604645e-8f, 65504.0f, INFINITY, 0.0f};
    for (int i = 0; i < 6; i++) {
        raw[1 + 2 * i] = (uint8_t)f16[i];
        raw[2 + 2 * i] = (uint8_t)(f16[i] >> 8);
    }
    float out[6];
    kernels_f16_to_f32(raw + 1, out, 6);
    for (int i = 0; i < 6; i++)
        assert_true(out[i] == want[i]);
    const uint16_t bf16[2] = {0x3f80, 0xc0a0}; /* 1.0, -5.0 */
    for (int i = 0; i < 2; i++) {
        raw[1 + 2 * i] = (uint8_t)bf16[i];
        raw[2 + 2 * i] = (uint8_t)(bf16[i] >> 8);
    }
    kernels_bf16_to_f32(raw + 1, out, 2);
    assert_true(out[0] == 1.0f && out[1] == -5.0f);
}

/* The F16C path against the scalar one on every half bit pattern (NaNs
 * need only stay NaN), from an odd address and with a ragged tail. */
static void test_half_widening_f16c(void **state) {
    (void)state;
#if defined(__x86_64__)
    if (!__builtin_cpu_supports("avx2")) /* implies F16C; see kernels.c */
        skip();
    const size_t n = 65536 + 5;
    uint8_t *raw = malloc(2 * n + 1);
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    assert_non_null(raw);
    for (size_t i = 0; i < n; i++) {
        raw[1 + 2 * i] = (uint8_t)(i & 0xff);
        raw[2 + 2 * i] = (uint8_t)((i >> 8) & 0xff);
    }
    kernels_f16_to_f32_scalar(raw + 1, a, n);
    kernels_f16_to_f32_f16c(raw + 1, b, n);
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]))
            assert_true(isnan(b[i]));
        else
            assert_memory_equal(&a[i], &b[i], sizeof(float));
    }
    for (size_t len = 0; len < 17; len++) { /* every tail length */
        kernels_f16_to_f32_f16c(raw + 1, b, len);
        for (size_t i = 0; i < len; i++)
            assert_true(isnan(a[i]) ? isnan(b[i]) : a[i] == b[i]);
    }
    free(raw), free(a), free(b);
#else
    skip();
#endif
}

typedef struct count_ctx {
    _Atomic int hits[64];
    _Atomic int bad_thread;
} count_ctx;

static void count_chunk(void *p, int chunk, int thread) {
    count_ctx *c = p;
    if (thread < 0 || thread >= 3)
        c->bad_thread = 1;
    c->hits[chunk]++;
}

static void test_threadpool_runs_every_chunk_once(void **state) {
    (void)state;
    threadpool *pool = threadpool_create(3);
    assert_non_null(pool);
    assert_int_equal(threadpool_size(pool), 3);
    count_ctx c = {0};
    for (int r = 0; r < 2000; r++)
        threadpool_run(pool, 1 + r % 64, count_chunk, &c);
    for (int i = 0; i < 64; i++) { /* chunk i ran once in every region with more than i chunks */
        int want = 0;
        for (int r = 0; r < 2000; r++)
            want += i < 1 + r % 64;
        assert_int_equal(c.hits[i], want);
    }
    assert_int_equal(c.bad_thread, 0);
    threadpool_destroy(pool);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalar_reference_values),
        cmocka_unit_test(test_avx2_matches_scalar),
        cmocka_unit_test(test_avx512_matches_scalar),
        cmocka_unit_test(test_linear_slices),
        cmocka_unit_test(test_half_widening),
        cmocka_unit_test(test_half_widening_f16c),
        cmocka_unit_test(test_threadpool_runs_every_chunk_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
