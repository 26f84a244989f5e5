/*
 * kernels_bf16_avx512.c - bf16 linear layers with AVX512-BF16 (vdpbf16ps).
 *
 * Compiled with -mavx512bf16 and the AVX-512 base flags (this file only);
 * kernels_bf16_avx512() returns NULL on a CPU without them.
 *
 *  - round: vcvtneps2bf16, 16 floats at a time (round to nearest even,
 *    subnormals to zero: kernels_f32_to_bf16 is its scalar twin).
 *  - gemm: the weight is packed as 64-byte vectors of 16 output channels x
 *    2 consecutive k (kernels.h), so one vdpbf16ps multiplies a pair of
 *    bf16 inputs of a row, broadcast to every lane, with 2 weights of 16
 *    channels and adds both products to 16 fp32 accumulators. A register
 *    block of 6 rows x 64 channels, as the int8 kernel, and rows in blocks
 *    that stay in L2.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define BF16_MB 144 /* rows per block: 144 x 6 KiB of bf16 inputs stay in L2 */

/* acc += the products of the bf16 pairs of a and b in each lane, in place
 * (see dpbusd in kernels_q8_avx512.c: GCC 12 spills the accumulators of
 * the intrinsic's non-destructive form). */
static inline __m512 dpbf16(__m512 acc, __m512i a, __m512i b) {
    __asm__("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "vm"(b));
    return acc;
}

static inline __mmask16 mask16(int left) {
    return left >= 16 ? (__mmask16)0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1u);
}

static void avx512_bf16_round(const float *x, int m, int k, int ldx, uint16_t *xb, int ldb, int k_pad) {
    for (int r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * ldx;
        uint16_t *br = xb + (size_t)r * ldb;
        for (int t = 0; t < k; t += 16) {
            const __mmask16 mk = mask16(k - t);
            __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, xr + t));
            _mm256_mask_storeu_epi16(br + t, mk, (__m256i)h);
        }
        for (int t = k; t < k_pad; t++)
            br[t] = 0;
    }
}

static inline __attribute__((always_inline)) void bf16_block(const int mr, const int nv, int groups,
                                                             const uint16_t *x, int ldb, const uint16_t *w,
                                                             size_t bstride, const float *bias, float *c,
                                                             int ldc, int ncols) {
    __m512 acc[6][4];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            acc[r][v] = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++) {
        __m512i wv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            wv[v] = _mm512_load_si512(w + v * bstride + (size_t)g * 32);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            int32_t pair;
            memcpy(&pair, x + (size_t)r * ldb + 2 * (size_t)g, sizeof pair);
            const __m512i xv = _mm512_set1_epi32(pair);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                acc[r][v] = dpbf16(acc[r][v], xv, wv[v]);
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        const __mmask16 mk = mask16(ncols - 16 * v);
        const __m512 bv = bias ? _mm512_maskz_loadu_ps(mk, bias + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++)
            _mm512_mask_storeu_ps(c + (size_t)r * ldc + 16 * v, mk, _mm512_add_ps(acc[r][v], bv));
    }
}

#define BF16_CASE(MR, NV)                                                            \
    case (MR) * 8 + (NV):                                                            \
        bf16_block(MR, NV, groups, x, ldb, w, bstride, bias, c, ldc, ncols);         \
        break;
#define BF16_CASES(MR) BF16_CASE(MR, 1) BF16_CASE(MR, 2) BF16_CASE(MR, 3) BF16_CASE(MR, 4)

static void bf16_block_any(int mr, int nv, int groups, const uint16_t *x, int ldb, const uint16_t *w,
                           size_t bstride, const float *bias, float *c, int ldc, int ncols) {
    switch (mr * 8 + nv) {
        BF16_CASES(1)
        BF16_CASES(2)
        BF16_CASES(3)
        BF16_CASES(4)
        BF16_CASES(5)
        BF16_CASES(6)
    }
}

static void avx512_bf16_gemm(int m, const uint16_t *xb, int ldb, const kernel_packed *w, int n0, int n1,
                             const float *bias, float *c, int ldc) {
    const int groups = w->k_pad / 2;
    const size_t bstride = 16 * (size_t)w->k_pad; /* elements per 16-channel block */
    const uint16_t *wd = w->data;
    for (int mb = 0; mb < m; mb += BF16_MB) {
        const int me = m - mb < BF16_MB ? m : mb + BF16_MB;
        for (int j = n0; j < n1; j += 64) {
            const int ncols = n1 - j < 64 ? n1 - j : 64, nv = (ncols + 15) / 16;
            const uint16_t *wp = wd + (size_t)(j / 16) * bstride;
            for (int i = mb; i < me; i += 6)
                bf16_block_any(me - i < 6 ? me - i : 6, nv, groups, xb + (size_t)i * ldb, ldb, wp, bstride,
                               bias ? bias + j : NULL, c + (size_t)i * ldc + j, ldc, ncols);
        }
    }
}

static const kernel_bf16_ops avx512_bf16_ops = {
    .name = "avx512-bf16", .round = avx512_bf16_round, .gemm = avx512_bf16_gemm};

const kernel_bf16_ops *kernels_bf16_avx512(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bf16"))
        return &avx512_bf16_ops;
    return NULL;
}
