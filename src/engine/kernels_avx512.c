/*
 * kernels_avx512.c - AVX-512 (F/BW/DQ/VL) elementwise kernels.
 *
 * Compiled with -mavx512f and friends (CMake sets the flags for this file
 * only); kernels_avx512() returns NULL on a CPU without them, so nothing
 * here runs where it cannot. Tails use masked loads and stores.
 * exp: Cephes-style range reduction and degree-6 polynomial (~1 ulp);
 * erf: Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7). Checked against the
 * scalar kernels in tests/unit/test_kernels.c.
 *
 * GEMM (gemm_nt, C = alpha X W^T + bias) reads PyTorch's [out, in] weight
 * in place, as dot products along k: a register block of 24 accumulators
 * (6 rows of X x 4 rows of W, 16 k at a time), reduced across lanes once
 * per k block. Blocking: k in blocks of 768 (partial sums added into C);
 * rows of X in blocks of 144 (in L2), and each 4-row slice of W (12 KB)
 * stays in L1 while a block's rows pass it. Single-thread on the
 * DistilBERT shapes: about 200 GFLOP/s at 128 rows, 150-180 at 1024.
 *
 * gemm_nn (attention: Q K^T against a transposed K, and P V) broadcasts
 * one value of A and streams rows of B, for n a multiple of 16: no lane
 * reduction, so it suits the short k (a head's 64 values) of attention,
 * where gemm_nt's reductions would cost as much as its products.
 */
#include <immintrin.h>
#include <math.h>

#include "kernels.h"

static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.33654f)), _mm512_set1_ps(88.72283f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 erf512(__m512 x) {
    __m512 ax = _mm512_abs_ps(x);
    __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f),
                             _mm512_fmadd_ps(ax, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f)));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    p = _mm512_mul_ps(p, t);
    __m512 e = exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), ax), ax));
    __m512 y = _mm512_fnmadd_ps(p, e, _mm512_set1_ps(1.0f));
    /* copy the sign of x */
    __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), sign));
}

static inline __mmask16 tail_mask(size_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

static void avx512_gelu(float *x, size_t n) {
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    const __m512 rsqrt2 = _mm512_set1_ps(0.70710678118654752f);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 g = _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, erf512(_mm512_mul_ps(v, rsqrt2))));
        _mm512_mask_storeu_ps(x + i, m, g);
    }
}

static void avx512_gelu_tanh(float *x, size_t n) {
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 inner = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                                     _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), v),
                                                     _mm512_mul_ps(v, v), v));
        /* tanh(y) = 1 - 2 / (exp(2y) + 1) */
        __m512 th = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(exp512(_mm512_mul_ps(two, inner)), one)));
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, th)));
    }
}

static void avx512_softmax(float *x, size_t n) {
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, x + i));
    }
    __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512 sum = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mx));
        sum = _mm512_mask_add_ps(sum, m, sum, e);
        _mm512_mask_storeu_ps(x + i, m, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
    }
}

static void avx512_layernorm(float *x, const float *residual, const float *gamma, const float *beta,
                             size_t n, float eps) {
    __m512 sum = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        if (residual) {
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, residual + i));
            _mm512_mask_storeu_ps(x + i, m, v);
        }
        sum = _mm512_add_ps(sum, v);
    }
    float mean = _mm512_reduce_add_ps(sum) / (float)n;
    __m512 vm = _mm512_set1_ps(mean), sq = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), vm);
        sq = _mm512_fmadd_ps(d, d, sq);
    }
    float inv = 1.0f / sqrtf(_mm512_reduce_add_ps(sq) / (float)n + eps);
    __m512 vi = _mm512_set1_ps(inv);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm), vi);
        __m512 y = _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(m, gamma + i), _mm512_maskz_loadu_ps(m, beta + i));
        _mm512_mask_storeu_ps(x + i, m, y);
    }
}

static void avx512_add(float *y, const float *b, size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + i), _mm512_maskz_loadu_ps(m, b + i)));
    }
}

/* ---- GEMM --------------------------------------------------------------- */

#define GEMM_KC 768 /* k per block: partial sums are added into C */
#define GEMM_MB 144 /* rows of X per block, kept in L2 (measured best of 48..240) */

/* Sums each of a0..a3 across its 16 lanes: returns {sum a0, .., sum a3}. */
static inline __m128 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    __m512 x = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    __m512 y = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    __m512 z = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x), _mm512_castps_pd(y))),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x), _mm512_castps_pd(y))));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(z), _mm512_extractf32x8_ps(z, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* C[mr x 4] (=|+=) alpha * X[mr x kc] W[4 x kc]^T (+ bias). mr is a
 * compile-time constant at every call site, so the loops unroll and the
 * accumulators live in registers. */
static inline __attribute__((always_inline)) void gemm_block(const int mr, int kc,
                                                             float alpha, const float *x, int ldx,
                                                             const float *w, int ldw, const float *bias,
                                                             int accumulate, float *c, int ldc,
                                                             const float *prefetch) {
    __m512 acc[6][4];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            acc[r][j] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k += 16) {
        const __mmask16 m = kc - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (kc - k)) - 1u);
        __m512 wv[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            wv[j] = _mm512_maskz_loadu_ps(m, w + (size_t)j * ldw + k);
        if (prefetch) /* the next slice of W, one line per row per step */
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++)
                _mm_prefetch((const char *)(prefetch + (size_t)j * ldw + k), _MM_HINT_T0);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + (size_t)r * ldx + k);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++)
                acc[r][j] = _mm512_fmadd_ps(xv, wv[j], acc[r][j]);
        }
    }
    /* One lane reduction per row, then alpha, and the bias (first k block)
     * or what C holds (later ones), four outputs at a time. */
    const __m128 va = _mm_set1_ps(alpha);
    const __m128 vb = bias && !accumulate ? _mm_loadu_ps(bias) : _mm_setzero_ps();
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        float *cr = c + (size_t)r * ldc;
        __m128 s = reduce4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
        _mm_storeu_ps(cr, _mm_fmadd_ps(s, va, accumulate ? _mm_loadu_ps(cr) : vb));
    }
}

#define GEMM_CASE(MR)                                                                      \
    case MR:                                                                               \
        gemm_block(MR, kc, alpha, x, ldx, w, ldw, bias, accumulate, c, ldc, prefetch);  \
        break;

/* mr rows of X against one 4-row slice of W. */
static void gemm_rows_6x4(int mr, int kc, float alpha, const float *x, int ldx, const float *w, int ldw,
                          const float *bias, int accumulate, float *c, int ldc, const float *prefetch) {
    switch (mr) {
        GEMM_CASE(6)
        GEMM_CASE(5)
        GEMM_CASE(4)
        GEMM_CASE(3)
        GEMM_CASE(2)
        GEMM_CASE(1)
    }
}

/* C[m x 1] (=|+=) alpha * X[m x kc] w[kc] (+ bias): the columns of an
 * output width that is not a multiple of 4 (a 2-label classifier head).
 * Each row's dot product is computed alone, so a text's logits are the
 * same bits whatever else shares its batch (OpenBLAS picks other kernels,
 * with another summation order, for other row counts). */
static void gemm_column(int m, int kc, float alpha, const float *x, int ldx, const float *w, const float *bias,
                        int accumulate, float *c, int ldc) {
    for (int r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * ldx;
        __m512 acc = _mm512_setzero_ps();
        for (int k = 0; k < kc; k += 16) {
            const __mmask16 mk = tail_mask((size_t)(kc - k));
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, xr + k), _mm512_maskz_loadu_ps(mk, w + k), acc);
        }
        float *cr = c + (size_t)r * ldc;
        const float base = accumulate ? *cr : bias ? *bias : 0.0f;
        *cr = fmaf(_mm512_reduce_add_ps(acc), alpha, base);
    }
}

static void avx512_gemm_nt(int m, int n, int k, float alpha, const float *x, int ldx, const float *w,
                           int ldw, const float *bias, float *c, int ldc) {
    if (k <= 0) {
        kernels_gemm_nt_blas(m, n, k, alpha, x, ldx, w, ldw, bias, c, ldc);
        return;
    }
    const int n4 = n - n % 4;
    for (int j = n4; j < n; j++)
        for (int kb = 0; kb < k; kb += GEMM_KC)
            gemm_column(m, k - kb < GEMM_KC ? k - kb : GEMM_KC, alpha, x + kb, ldx, w + (size_t)j * ldw + kb,
                        bias ? bias + j : NULL, kb > 0, c + j, ldc);
    n = n4;
    /* Blocks of GEMM_MB rows of X stay in L2; each 4-row slice of W is read
     * once per block and stays in L1 while the block's rows pass it. */
    for (int kb = 0; kb < k; kb += GEMM_KC) {
        const int kc = k - kb < GEMM_KC ? k - kb : GEMM_KC, accumulate = kb > 0;
        for (int mb = 0; mb < m; mb += GEMM_MB) {
            const int me = m - mb < GEMM_MB ? m : mb + GEMM_MB;
            for (int nb = 0; nb < n; nb += 4) {
                const float *wp = w + (size_t)nb * ldw + kb;
                /* The first pass over a slice pulls the next slice toward L1:
                 * each row of W is only a few KB, too short for the hardware
                 * prefetcher to hide DRAM latency at every new slice. */
                const float *next = nb + 4 < n ? wp + 4 * (size_t)ldw : NULL;
                for (int i = mb; i < me; i += 6)
                    gemm_rows_6x4(me - i < 6 ? me - i : 6, kc, alpha, x + (size_t)i * ldx + kb, ldx, wp, ldw,
                                  bias ? bias + nb : NULL, accumulate, c + (size_t)i * ldc + nb, ldc,
                                  i == mb ? next : NULL);
            }
        }
    }
}

/* C[mr x 16*nv] = P[mr x k] V[k x 16*nv], nv and mr compile-time constants. */
static inline __attribute__((always_inline)) void gemm_nn_block(const int mr, const int nv, int k,
                                                                const float *a, int lda, const float *b,
                                                                int ldb, float *c, int ldc) {
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++)
            acc[r][j] = _mm512_setzero_ps();
    for (int t = 0; t < k; t++) {
        __m512 bv[4];
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++)
            bv[j] = _mm512_loadu_ps(b + (size_t)t * ldb + 16 * j);
#pragma GCC unroll 4
        for (int r = 0; r < mr; r++) {
            __m512 p = _mm512_set1_ps(a[(size_t)r * lda + t]);
#pragma GCC unroll 4
            for (int j = 0; j < nv; j++)
                acc[r][j] = _mm512_fmadd_ps(p, bv[j], acc[r][j]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nv; j++)
            _mm512_storeu_ps(c + (size_t)r * ldc + 16 * j, acc[r][j]);
}

#define GEMM_NN_ROWS(nv)                                                                       \
    do {                                                                                       \
        int i = 0;                                                                             \
        for (; i + 4 <= m; i += 4)                                                             \
            gemm_nn_block(4, nv, k, a + (size_t)i * lda, lda, b, ldb, c + (size_t)i * ldc, ldc); \
        for (; i < m; i++)                                                                     \
            gemm_nn_block(1, nv, k, a + (size_t)i * lda, lda, b, ldb, c + (size_t)i * ldc, ldc); \
    } while (0)

/* C[m x 16 nv] for one strip of columns. */
static void gemm_nn_strip(int nv, int m, int k, const float *a, int lda, const float *b, int ldb, float *c,
                          int ldc) {
    switch (nv) {
    case 1:
        GEMM_NN_ROWS(1);
        break;
    case 2:
        GEMM_NN_ROWS(2);
        break;
    case 3:
        GEMM_NN_ROWS(3);
        break;
    default:
        GEMM_NN_ROWS(4);
    }
}

/* n a multiple of 16: strips of 64 columns (A's rows stay in L1 across
 * them); other n: OpenBLAS. */
static void avx512_gemm_nn(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                           float *c, int ldc) {
    if (n % 16 != 0) {
        kernels_gemm_nn_blas(m, n, k, a, lda, b, ldb, c, ldc);
        return;
    }
    for (int j = 0; j < n; j += 64)
        gemm_nn_strip(n - j >= 64 ? 4 : (n - j) / 16, m, k, a, lda, b + j, ldb, c + j, ldc);
}

/* In-register transpose of 16 rows of 16 floats: pairs of rows interleaved
 * (unpack), then pairs of pairs (shuffle), then 128-bit lanes across four
 * and two rows (shuffle_f32x4): row i of the result is column i. */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
        r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
    }
}

/* 16 x 16 blocks through registers; rows past `rows` load as zeros, which
 * are the padding dst wants; columns in blocks of 16 with a masked tail. */
static void avx512_transpose(const float *src, int rows, int cols, int lds, float alpha, float *dst, int ldd) {
    const __m512 va = _mm512_set1_ps(alpha);
    for (int c0 = 0; c0 < cols; c0 += 16) {
        const __mmask16 cm = tail_mask((size_t)(cols - c0));
        for (int r0 = 0; r0 < ldd; r0 += 16) {
            __m512 v[16];
            for (int i = 0; i < 16; i++)
                v[i] = r0 + i < rows ? _mm512_mul_ps(va, _mm512_maskz_loadu_ps(cm, src + (size_t)(r0 + i) * lds + c0))
                                     : _mm512_setzero_ps();
            transpose16(v);
            const __mmask16 rm = tail_mask((size_t)(ldd - r0));
            for (int i = 0; i < 16 && c0 + i < cols; i++)
                _mm512_mask_storeu_ps(dst + (size_t)(c0 + i) * ldd + r0, rm, v[i]);
        }
    }
}

static const kernel_ops avx512_ops = {
    .name = "avx512",
    .gelu = avx512_gelu,
    .gelu_tanh = avx512_gelu_tanh,
    .softmax = avx512_softmax,
    .layernorm = avx512_layernorm,
    .add = avx512_add,
    .gemm_nt = avx512_gemm_nt,
    .gemm_nn = avx512_gemm_nn,
    .transpose = avx512_transpose,
};

const kernel_ops *kernels_avx512(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return &avx512_ops;
    return NULL;
}
