/*
 * test_kernels_lowp.c - the reduced-precision kernels (int8, bf16) against
 * their scalar references, and the references against first principles.
 *
 *  - Packing: the int8 weight is symmetric per channel (|q| <= qmax, 127 or
 *    64; the largest |w| of a channel maps to qmax, every value within half
 *    a step);
 *    the packed layout is the one kernels.h draws (checked through the
 *    scalar product against an accumulator the test computes itself).
 *  - int8 sets (AVX512-VNNI, AVX-VNNI, AVX2) quantise rows to the same bytes,
 *    scales and zero points as the scalar reference and, on weights packed
 *    for them (8-bit, or 7-bit for AVX2), give the same int32 accumulators (with unit scales the output is the accumulator,
 *    checked exactly against a 64-bit sum, extreme values included) and
 *    bit-identical outputs, on odd shapes: m = 1, row tails, n and k not
 *    multiples of the vector width, column slices starting at 16, more rows
 *    than a row block; nothing is written outside the slice.
 *  - bf16: rounding equals the scalar reference on ordinary and special
 *    values (ties, NaN, infinities, subnormals); the AVX2 widening product
 *    equals the reference bit for bit (same order of sums), the AVX512-BF16
 *    one within a bound of fp32 sum rounding.
 * A set the CPU lacks is skipped.
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

#include "kernels.h"

static float frand(unsigned *seed, float scale) {
    *seed = *seed * 1664525u + 1013904223u;
    return ((float)(*seed >> 8) / (float)(1u << 24) * 2.0f - 1.0f) * scale;
}

static void fill(float *x, size_t n, unsigned seed, float scale) {
    for (size_t i = 0; i < n; i++)
        x[i] = frand(&seed, scale);
}

static const int ms[] = {1, 5, 6, 7, 64, 200}; /* 200: past a 192-row block */
static const int ns[] = {1, 3, 8, 16, 17, 33, 65, 130};
static const int ks[] = {1, 3, 4, 5, 17, 64, 100, 768, 771};
#define COUNT(a) (sizeof(a) / sizeof *(a))

/* The int8 value of weight (j, t) as the test computes it from the scale. */
static int8_t expect_q(const float *w, int k, const kernel_packed *p, int j, int t) {
    float v = nearbyintf(w[(size_t)j * k + t] * (1.0f / p->scale[j])); /* as packing computes it */
    return (int8_t)(v > p->qmax ? p->qmax : v < -p->qmax ? -p->qmax : v);
}

static void check_pack(int qmax) {
    const int n = 19, k = 37;
    float *w = malloc(sizeof(float) * n * k);
    fill(w, (size_t)n * k, 3, 0.5f);
    for (int t = 0; t < k; t++)
        w[4 * k + t] = 0; /* an all-zero channel */
    kernel_packed p;
    assert_int_equal(kernels_pack_q8(w, n, k, qmax, &p), 0);
    assert_int_equal(p.k_pad, 40);
    assert_int_equal(p.qmax, qmax);
    assert_true(((uintptr_t)p.data & 63) == 0);
    assert_int_equal(kernels_packed_bytes(&p), 32 * 40 + 32 * 8);
    const int8_t *q = p.data;
    for (int j = 0; j < n; j++) {
        float max = 0;
        int32_t sum = 0;
        int top = 0;
        for (int t = 0; t < k; t++)
            max = fmaxf(max, fabsf(w[(size_t)j * k + t]));
        if (max == 0)
            assert_true(p.scale[j] == 1.0f);
        else
            assert_true(fabsf(p.scale[j] - max / (float)qmax) <= 1e-7f * max);
        for (int t = 0; t < p.k_pad; t++) {
            /* [j / 16][t / 4][j % 16][t % 4] */
            int8_t got = q[(j / 16) * 16 * p.k_pad + (t / 4) * 64 + (j % 16) * 4 + t % 4];
            if (t >= k) {
                assert_int_equal(got, 0);
                continue;
            }
            assert_int_equal(got, expect_q(w, k, &p, j, t));
            assert_true(abs(got) <= qmax);
            assert_true(fabsf(got * p.scale[j] - w[(size_t)j * k + t]) <= 0.5001f * p.scale[j]);
            sum += got;
            top |= abs(got) == qmax;
        }
        assert_int_equal(p.wsum[j], sum);
        assert_true(top == (max > 0)); /* the largest weight maps to +-qmax */
    }
    kernels_packed_fini(&p);
    free(w);
}

static void test_q8_pack(void **state) {
    (void)state;
    check_pack(127);
    check_pack(64);
}

/* Quantised rows: the same bytes, scales and zero points as the reference;
 * and the reference within half a step of every input. */
static void check_quantize(const kernel_q8_ops *set, const float *x, int m, int k, int ldx) {
    const kernel_q8_ops *ref = kernels_q8_scalar();
    const int k_pad = (k + 3) / 4 * 4, ldq = k_pad + 8;
    uint8_t *q1 = malloc((size_t)m * ldq), *q2 = malloc((size_t)m * ldq);
    float *s1 = malloc(sizeof(float) * m), *s2 = malloc(sizeof(float) * m);
    int32_t *z1 = malloc(sizeof(int32_t) * m), *z2 = malloc(sizeof(int32_t) * m);
    memset(q1, 0xaa, (size_t)m * ldq);
    memset(q2, 0xaa, (size_t)m * ldq);
    ref->quantize(x, m, k, ldx, q1, ldq, k_pad, s1, z1);
    set->quantize(x, m, k, ldx, q2, ldq, k_pad, s2, z2);
    assert_memory_equal(q1, q2, (size_t)m * ldq); /* padding 0, past k_pad untouched */
    assert_memory_equal(s1, s2, sizeof(float) * m);
    assert_memory_equal(z1, z2, sizeof(int32_t) * m);
    for (int r = 0; r < m; r++)
        for (int t = 0; t < k; t++) {
            float back = s1[r] * ((float)q1[(size_t)r * ldq + t] - (float)z1[r]);
            assert_true(fabsf(back - x[(size_t)r * ldx + t]) <= 0.5001f * s1[r]);
        }
    free(q1), free(q2), free(s1), free(s2), free(z1), free(z2);
}

static void check_q8_set(const kernel_q8_ops *set) {
    const kernel_q8_ops *ref = kernels_q8_scalar();
    for (size_t a = 0; a < COUNT(ms); a++)
        for (size_t b = 0; b < COUNT(ns); b++)
            for (size_t c = 0; c < COUNT(ks); c++) {
                const int m = ms[a], n = ns[b], k = ks[c], ldx = k + 3, ldc = n + 5;
                float *x = malloc(sizeof(float) * m * ldx), *w = malloc(sizeof(float) * n * k);
                float *bias = malloc(sizeof(float) * n);
                fill(x, (size_t)m * ldx, (unsigned)(m * 7 + k), 2.0f);
                for (int r = 0; r < m; r += 3) /* rows that are all >= 0, as after GELU */
                    for (int t = 0; t < k; t++)
                        x[(size_t)r * ldx + t] = fabsf(x[(size_t)r * ldx + t]) - 0.1f;
                fill(w, (size_t)n * k, (unsigned)(n * 13 + k), 0.1f);
                fill(bias, (size_t)n, 9, 1.0f);
                check_quantize(set, x, m, k, ldx);

                kernel_packed p;
                assert_int_equal(kernels_pack_q8(w, n, k, set->weight_max, &p), 0);
                const int ldq = p.k_pad + 4;
                uint8_t *xq = malloc((size_t)m * ldq);
                float *xs = malloc(sizeof(float) * m);
                int32_t *xz = malloc(sizeof(int32_t) * m);
                ref->quantize(x, m, k, ldx, xq, ldq, p.k_pad, xs, xz);
                float *c1 = malloc(sizeof(float) * m * ldc), *c2 = malloc(sizeof(float) * m * ldc);
                /* the whole product, then a slice from column 16 without bias */
                for (int pass = 0; pass < 2; pass++) {
                    const int n0 = pass ? 16 : 0;
                    const float *bb = pass ? NULL : bias;
                    if (n0 >= n)
                        break;
                    for (size_t i = 0; i < (size_t)m * ldc; i++)
                        c1[i] = c2[i] = -7.0f;
                    ref->gemm(m, xq, ldq, xs, xz, &p, n0, n, bb, c1, ldc);
                    set->gemm(m, xq, ldq, xs, xz, &p, n0, n, bb, c2, ldc);
                    if (memcmp(c1, c2, sizeof(float) * m * ldc) != 0)
                        fail_msg("%s: m %d n %d k %d n0 %d: output differs from the scalar reference",
                                 set->name, m, n, k, n0);
                    for (int r = 0; r < m; r++)
                        for (int j = 0; j < ldc; j++)
                            if (j < n0 || j >= n)
                                assert_true(c2[(size_t)r * ldc + j] == -7.0f);
                }
                /* The reference is close to the float product it stands for. */
                ref->gemm(m, xq, ldq, xs, xz, &p, 0, n, bias, c1, ldc);
                for (int r = 0; r < m; r++)
                    for (int j = 0; j < n; j++) {
                        double exact = bias[j], mag = 0;
                        for (int t = 0; t < k; t++) {
                            exact += (double)x[(size_t)r * ldx + t] * w[(size_t)j * k + t];
                            mag += fabs((double)w[(size_t)j * k + t]);
                        }
                        /* half a step of the input times sum |w|, half a step of w times sum |x|
                         * (|x| <= 2) */
                        double bound = 0.5 * xs[r] * mag + 0.5 * p.scale[j] * 2.0 * k + 1e-4 * (fabs(exact) + 1);
                        assert_true(fabs(c1[(size_t)r * ldc + j] - exact) <= bound);
                    }
                kernels_packed_fini(&p);
                free(x), free(w), free(bias), free(xq), free(xs), free(xz), free(c1), free(c2);
            }
}

/* With unit scales and no bias the output is the int32 accumulator minus
 * the zero-point term; check it against a 64-bit sum, extreme values too
 * (255 x 127 over k = 3072 is 99,486,720: exact in int32 and in float). */
static void check_q8_accumulators(const kernel_q8_ops *set) {
    static const int kk[] = {3, 64, 771, 3072};
    for (size_t c = 0; c < COUNT(kk); c++) {
        const int m = 7, n = 40, k = kk[c], k_pad = (k + 3) / 4 * 4;
        float *w = malloc(sizeof(float) * n * k);
        unsigned seed = (unsigned)k;
        for (int j = 0; j < n; j++)
            for (int t = 0; t < k; t++)
                w[(size_t)j * k + t] = j < 4 ? (j % 2 ? -1.0f : 1.0f) : frand(&seed, 1.0f);
        kernel_packed p; /* channels 0-3 all +-weight_max */
        assert_int_equal(kernels_pack_q8(w, n, k, set->weight_max, &p), 0);
        for (int j = 0; j < n; j++)
            p.scale[j] = 1.0f;
        uint8_t *xq = malloc((size_t)m * k_pad);
        float xs[7];
        int32_t xz[7];
        for (int r = 0; r < m; r++) {
            xs[r] = 1.0f;
            xz[r] = r == 1 ? 255 : r * 11;
            for (int t = 0; t < k_pad; t++)
                xq[(size_t)r * k_pad + t] =
                    t >= k ? 0 : r == 0 ? 255 : (uint8_t)((seed = seed * 1664525u + 1013904223u) >> 24);
        }
        float *got = malloc(sizeof(float) * m * n);
        set->gemm(m, xq, k_pad, xs, xz, &p, 0, n, NULL, got, n);
        const int8_t *q = p.data;
        for (int r = 0; r < m; r++)
            for (int j = 0; j < n; j++) {
                int64_t acc = 0;
                for (int t = 0; t < k; t++)
                    acc += (int64_t)xq[(size_t)r * k_pad + t] *
                           q[(j / 16) * 16 * p.k_pad + (t / 4) * 64 + (j % 16) * 4 + t % 4];
                acc -= (int64_t)xz[r] * p.wsum[j];
                if (got[(size_t)r * n + j] != (float)acc)
                    fail_msg("%s: k %d row %d col %d: accumulator %.1f, expected %lld", set->name, k, r, j,
                             (double)got[(size_t)r * n + j], (long long)acc);
            }
        kernels_packed_fini(&p);
        free(w), free(xq), free(got);
    }
}

/* A set's accumulators exactly, then its outputs against the float
 * product; a set the CPU lacks (NULL) skips the test. */
static void check_q8(const kernel_q8_ops *set) {
    if (!set)
        skip();
    check_q8_accumulators(set);
    check_q8_set(set);
}

static void test_q8_scalar(void **state) {
    (void)state;
    check_q8(kernels_q8_scalar());
}

static void test_q8_avx512(void **state) {
    (void)state;
    check_q8(kernels_q8_avx512());
}

static void test_q8_avxvnni(void **state) {
    (void)state;
    check_q8(kernels_q8_avxvnni());
}

static void test_q8_avx2(void **state) {
    (void)state;
    check_q8(kernels_q8_avx2());
}

/* Quantising a constant row, a zero row and a row with a NaN: defined
 * results, the same in every set. */
static void test_q8_quantize_edges(void **state) {
    (void)state;
    float x[4][20];
    for (int t = 0; t < 20; t++) {
        x[0][t] = 3.0f;
        x[1][t] = 0.0f;
        x[2][t] = (float)t - 10.0f;
        x[3][t] = t == 5 ? NAN : 1.0f;
    }
    const kernel_q8_ops *sets[] = {kernels_q8_scalar(), kernels_q8_avx512(), kernels_q8_avxvnni(),
                                   kernels_q8_avx2()};
    for (size_t i = 0; i < COUNT(sets); i++)
        if (sets[i])
            check_quantize(sets[i], &x[0][0], 3, 20, 20); /* finite rows: exact and close */
    uint8_t q[20];
    float s;
    int32_t z;
    kernels_q8_scalar()->quantize(&x[0][0], 1, 20, 20, q, 20, 20, &s, &z);
    assert_int_equal(z, 0); /* [0, 3]: zero point 0, 3 -> 255 */
    assert_int_equal(q[0], 255);
    kernels_q8_scalar()->quantize(&x[1][0], 1, 20, 20, q, 20, 20, &s, &z);
    assert_true(s == 1.0f && z == 0 && q[7] == 0);
    for (size_t i = 0; i < COUNT(sets); i++) { /* NaN: ignored by the range, quantised to 0 */
        if (!sets[i])
            continue;
        uint8_t want[20];
        float ws;
        int32_t wz;
        kernels_q8_scalar()->quantize(&x[3][0], 1, 20, 20, want, 20, 20, &ws, &wz);
        sets[i]->quantize(&x[3][0], 1, 20, 20, q, 20, 20, &s, &z);
        assert_memory_equal(q, want, 20);
        assert_true(s == ws && z == wz && q[5] == 0 && q[6] == 255);
    }
}

/* ---- bf16 -------------------------------------------------------------------- */

static float bits_float(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static void test_bf16_rounding(void **state) {
    (void)state;
    /* 1 + 2^-8 is a tie: rounds to even (1.0); 1 + 3 * 2^-8 rounds up */
    assert_int_equal(kernels_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(kernels_f32_to_bf16(bits_float(0x3f808000u)), 0x3f80);
    assert_int_equal(kernels_f32_to_bf16(bits_float(0x3f818000u)), 0x3f82);
    assert_int_equal(kernels_f32_to_bf16(bits_float(0x3f808001u)), 0x3f81);
    assert_int_equal(kernels_f32_to_bf16(-2.0f), 0xc000);
    assert_int_equal(kernels_f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(kernels_f32_to_bf16(bits_float(0x7f7fffffu)), 0x7f80); /* FLT_MAX rounds to inf */
    assert_int_equal(kernels_f32_to_bf16(bits_float(0x80000001u)), 0x8000); /* subnormal -> -0 */
    assert_true((kernels_f32_to_bf16(NAN) & 0x7fc0) == 0x7fc0);
    assert_int_equal(kernels_f32_to_bf16(bits_float(0x7f800001u)), 0x7fc0); /* signalling NaN quietened */

    /* Every set rounds rows as the reference does, specials included. */
    enum { K = 1000 };
    float *x = malloc(sizeof(float) * K);
    unsigned seed = 1;
    for (int t = 0; t < K; t++) {
        seed = seed * 1664525u + 1013904223u;
        x[t] = bits_float(t % 7 == 0 ? (seed & 0xffff8000u) | 0x8000u : seed); /* ties and any bits */
    }
    x[0] = INFINITY, x[1] = -INFINITY, x[2] = NAN, x[3] = bits_float(0x00000010u), x[4] = 0.0f;
    const kernel_bf16_ops *sets[] = {kernels_bf16_avx512(), kernels_bf16_avx2()};
    uint16_t want[K + 2], got[K + 2];
    for (int len = 1; len <= K; len += len < 40 ? 1 : 137) {
        kernels_bf16_scalar()->round(x, 1, len, len, want, K + 2, len + len % 2);
        for (size_t i = 0; i < COUNT(sets); i++) {
            if (!sets[i])
                continue;
            memset(got, 0xee, sizeof got);
            sets[i]->round(x, 1, len, len, got, K + 2, len + len % 2);
            assert_memory_equal(want, got, sizeof(uint16_t) * (size_t)(len + len % 2));
            assert_int_equal(got[len + len % 2], 0xeeee); /* nothing past k_pad */
        }
    }
    free(x);
}

static float bf16_value(uint16_t h) { return bits_float((uint32_t)h << 16); }

/* exact: bit-identical to the reference; else within fp32 rounding of the
 * sums (the order may differ), which is tiny against bf16's own error. */
static void check_bf16_set(const kernel_bf16_ops *set, int exact) {
    const kernel_bf16_ops *ref = kernels_bf16_scalar();
    for (size_t a = 0; a < COUNT(ms); a++)
        for (size_t b = 0; b < COUNT(ns); b++)
            for (size_t c = 0; c < COUNT(ks); c++) {
                const int m = ms[a], n = ns[b], k = ks[c], ldx = k + 3, ldc = n + 5;
                float *x = malloc(sizeof(float) * m * ldx), *w = malloc(sizeof(float) * n * k);
                float *bias = malloc(sizeof(float) * n);
                fill(x, (size_t)m * ldx, (unsigned)(m * 5 + k), 2.0f);
                fill(w, (size_t)n * k, (unsigned)(n * 3 + k), 0.1f);
                fill(bias, (size_t)n, 4, 1.0f);
                kernel_packed p;
                assert_int_equal(kernels_pack_bf16(w, n, k, &p), 0);
                assert_null(p.scale);
                const int ldb = p.k_pad + 2;
                uint16_t *xb = malloc(sizeof(uint16_t) * m * ldb);
                ref->round(x, m, k, ldx, xb, ldb, p.k_pad);
                float *c1 = malloc(sizeof(float) * m * ldc), *c2 = malloc(sizeof(float) * m * ldc);
                for (int pass = 0; pass < 2; pass++) {
                    const int n0 = pass ? 16 : 0;
                    const float *bb = pass ? NULL : bias;
                    if (n0 >= n)
                        break;
                    for (size_t i = 0; i < (size_t)m * ldc; i++)
                        c1[i] = c2[i] = -7.0f;
                    ref->gemm(m, xb, ldb, &p, n0, n, bb, c1, ldc);
                    set->gemm(m, xb, ldb, &p, n0, n, bb, c2, ldc);
                    for (int r = 0; r < m; r++)
                        for (int j = 0; j < ldc; j++) {
                            float g = c2[(size_t)r * ldc + j], want = c1[(size_t)r * ldc + j];
                            if (j < n0 || j >= n) {
                                assert_true(g == -7.0f);
                                continue;
                            }
                            /* products are exact; two orders of k fp32 additions differ by at
                             * most 2 k u sum |terms|, u = 2^-24 */
                            double mag = bb ? fabs(bb[j]) : 0;
                            for (int t = 0; t < k; t++)
                                mag += fabs((double)bf16_value(xb[(size_t)r * ldb + t]) * w[(size_t)j * k + t]);
                            double tol = exact ? 0 : 2.0 * (k + 1) * 0x1p-24 * mag;
                            if (!(fabs((double)g - want) <= tol))
                                fail_msg("%s: m %d n %d k %d: C[%d][%d] = %.9g, reference %.9g", set->name, m,
                                         n, k, r, j, (double)g, (double)want);
                        }
                }
                /* The reference is close to the float product: bf16 keeps 8 bits. */
                ref->gemm(m, xb, ldb, &p, 0, n, bias, c1, ldc);
                for (int r = 0; r < m; r++)
                    for (int j = 0; j < n; j++) {
                        double exactv = bias[j], mag = 0;
                        for (int t = 0; t < k; t++) {
                            exactv += (double)x[(size_t)r * ldx + t] * w[(size_t)j * k + t];
                            mag += fabs((double)x[(size_t)r * ldx + t] * w[(size_t)j * k + t]);
                        }
                        assert_true(fabs(c1[(size_t)r * ldc + j] - exactv) <= 2 * 0x1p-8 * mag + 1e-5);
                    }
                kernels_packed_fini(&p);
                free(x), free(w), free(bias), free(xb), free(c1), free(c2);
            }
}

static void test_bf16_scalar(void **state) {
    (void)state;
    check_bf16_set(kernels_bf16_scalar(), 1);
}

static void test_bf16_avx512(void **state) {
    (void)state;
    if (!kernels_bf16_avx512())
        skip();
    check_bf16_set(kernels_bf16_avx512(), 0);
}

static void test_bf16_avx2(void **state) {
    (void)state;
    if (!kernels_bf16_avx2())
        skip();
    check_bf16_set(kernels_bf16_avx2(), 1);
}

/* The reduced-precision sets follow the fp32 set, so AISERVE_KERNELS
 * forces them too. */
static void test_sets_follow_fp32_set(void **state) {
    (void)state;
    assert_ptr_equal(kernels_q8_for(kernels_scalar()), kernels_q8_scalar());
    assert_ptr_equal(kernels_bf16_for(kernels_scalar()), kernels_bf16_scalar());
    if (kernels_avx2()) {
        const kernel_q8_ops *q = kernels_q8_for(kernels_avx2());
        assert_true(q == kernels_q8_avxvnni() || (!kernels_q8_avxvnni() && q == kernels_q8_avx2()));
        assert_ptr_equal(kernels_bf16_for(kernels_avx2()), kernels_bf16_avx2());
    }
    if (kernels_avx512() && kernels_q8_avx512())
        assert_ptr_equal(kernels_q8_for(kernels_avx512()), kernels_q8_avx512());
    if (kernels_avx512() && kernels_bf16_avx512())
        assert_ptr_equal(kernels_bf16_for(kernels_avx512()), kernels_bf16_avx512());
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_q8_pack),
        cmocka_unit_test(test_q8_scalar),
        cmocka_unit_test(test_q8_avx512),
        cmocka_unit_test(test_q8_avxvnni),
        cmocka_unit_test(test_q8_avx2),
        cmocka_unit_test(test_q8_quantize_edges),
        cmocka_unit_test(test_bf16_rounding),
        cmocka_unit_test(test_bf16_scalar),
        cmocka_unit_test(test_bf16_avx512),
        cmocka_unit_test(test_bf16_avx2),
        cmocka_unit_test(test_sets_follow_fp32_set),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
