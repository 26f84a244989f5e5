/*
 * kernels_bf16_avx2.c - bf16 linear layers for CPUs without AVX512-BF16:
 * the bf16 weights are widened to fp32 in registers and multiplied with FMA.
 *
 * Compiled with -mavx2 -mfma (this file only); kernels_bf16_avx2() returns
 * NULL on a CPU without them. The weights keep half the memory of fp32
 * and the results are those of the bf16 mode (inputs rounded to bf16,
 * exact products, fp32 sums, in k order: bit for bit the scalar
 * reference); the speed is about fp32's, faster where the weights' memory
 * traffic dominates (small batches), slower where the widening does.
 *
 *  - round: round to nearest even with integer operations, subnormals to
 *    zero, NaN kept quiet (kernels_f32_to_bf16, 8 at a time).
 *  - gemm: a packed 32-bit lane holds one channel's pair (k, k+1) of bf16;
 *    shifting it left by 16 gives the fp32 value at k, masking the low half
 *    the one at k+1. Register block: 4 rows x 16 channels.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define BF16_MB 144 /* rows per block (L2), as in kernels_bf16_avx512.c */

static inline __m256i mask8(int left) {
    int k = left >= 8 ? 8 : left;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static void avx2_bf16_round(const float *x, int m, int k, int ldx, uint16_t *xb, int ldb, int k_pad) {
    const __m256i exp_mask = _mm256_set1_epi32(0x7f800000), abs_mask = _mm256_set1_epi32(0x7fffffff);
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff);
    const __m256i quiet = _mm256_set1_epi32(0x40), sign = _mm256_set1_epi32(0x8000);
    for (int r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * ldx;
        uint16_t *br = xb + (size_t)r * ldb;
        for (int t = 0; t < k; t += 8) {
            __m256i bits = _mm256_castps_si256(_mm256_maskload_ps(xr + t, mask8(k - t)));
            __m256i hi = _mm256_srli_epi32(bits, 16);
            __m256i rne = _mm256_srli_epi32(
                _mm256_add_epi32(bits, _mm256_add_epi32(bias, _mm256_and_si256(hi, one))), 16);
            __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(bits, abs_mask), exp_mask);
            __m256i is_small = _mm256_cmpeq_epi32(_mm256_and_si256(bits, exp_mask), _mm256_setzero_si256());
            __m256i out = _mm256_blendv_epi8(rne, _mm256_or_si256(hi, quiet), is_nan);
            out = _mm256_blendv_epi8(out, _mm256_and_si256(hi, sign), is_small);
            __m128i h8 = _mm_packus_epi32(_mm256_castsi256_si128(out), _mm256_extracti128_si256(out, 1));
            if (k - t >= 8) {
                _mm_storeu_si128((__m128i *)(br + t), h8);
            } else {
                uint16_t tmp[8];
                _mm_storeu_si128((__m128i *)tmp, h8);
                memcpy(br + t, tmp, (size_t)(k - t) * sizeof *tmp);
            }
        }
        for (int t = k; t < k_pad; t++)
            br[t] = 0;
    }
}

static inline __attribute__((always_inline)) void widen_block(const int mr, int groups, const uint16_t *x,
                                                              int ldb, const uint16_t *w, const float *bias,
                                                              float *c, int ldc, int ncols) {
    const __m256i high = _mm256_set1_epi32((int)0xffff0000u);
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++)
        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int g = 0; g < groups; g++) {
        const __m256i v0 = _mm256_load_si256((const __m256i *)(w + (size_t)g * 32));
        const __m256i v1 = _mm256_load_si256((const __m256i *)(w + (size_t)g * 32 + 16));
        const __m256 e0 = _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16));
        const __m256 o0 = _mm256_castsi256_ps(_mm256_and_si256(v0, high));
        const __m256 e1 = _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16));
        const __m256 o1 = _mm256_castsi256_ps(_mm256_and_si256(v1, high));
#pragma GCC unroll 4
        for (int r = 0; r < mr; r++) {
            /* the row's pair (k, k+1), widened in vector registers as the weights */
            float pair;
            memcpy(&pair, x + (size_t)r * ldb + 2 * (size_t)g, sizeof pair);
            const __m256i xv = _mm256_castps_si256(_mm256_broadcast_ss(&pair));
            const __m256 x0 = _mm256_castsi256_ps(_mm256_slli_epi32(xv, 16));
            const __m256 x1 = _mm256_castsi256_ps(_mm256_and_si256(xv, high));
            acc[r][0] = _mm256_fmadd_ps(x1, o0, _mm256_fmadd_ps(x0, e0, acc[r][0]));
            acc[r][1] = _mm256_fmadd_ps(x1, o1, _mm256_fmadd_ps(x0, e1, acc[r][1]));
        }
    }
#pragma GCC unroll 2
    for (int v = 0; v < 2; v++) {
        if (ncols <= 8 * v)
            break;
        const __m256i mk = mask8(ncols - 8 * v);
        const __m256 bv = bias ? _mm256_maskload_ps(bias + 8 * v, mk) : _mm256_setzero_ps();
#pragma GCC unroll 4
        for (int r = 0; r < mr; r++)
            _mm256_maskstore_ps(c + (size_t)r * ldc + 8 * v, mk, _mm256_add_ps(acc[r][v], bv));
    }
}

static void avx2_bf16_gemm(int m, const uint16_t *xb, int ldb, const kernel_packed *w, int n0, int n1,
                           const float *bias, float *c, int ldc) {
    const int groups = w->k_pad / 2;
    const size_t bstride = 16 * (size_t)w->k_pad;
    for (int mb = 0; mb < m; mb += BF16_MB) {
        const int me = m - mb < BF16_MB ? m : mb + BF16_MB;
        for (int j = n0; j < n1; j += 16) {
            const int ncols = n1 - j < 16 ? n1 - j : 16;
            const uint16_t *wp = (const uint16_t *)w->data + (size_t)(j / 16) * bstride;
            const float *b = bias ? bias + j : NULL;
            for (int i = mb; i < me; i += 4) {
                const uint16_t *x = xb + (size_t)i * ldb;
                float *cc = c + (size_t)i * ldc + j;
                switch (me - i < 4 ? me - i : 4) {
                case 4:
                    widen_block(4, groups, x, ldb, wp, b, cc, ldc, ncols);
                    break;
                case 3:
                    widen_block(3, groups, x, ldb, wp, b, cc, ldc, ncols);
                    break;
                case 2:
                    widen_block(2, groups, x, ldb, wp, b, cc, ldc, ncols);
                    break;
                default:
                    widen_block(1, groups, x, ldb, wp, b, cc, ldc, ncols);
                }
            }
        }
    }
}

static const kernel_bf16_ops avx2_bf16_ops = {.name = "avx2", .round = avx2_bf16_round, .gemm = avx2_bf16_gemm};

const kernel_bf16_ops *kernels_bf16_avx2(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return &avx2_bf16_ops;
    return NULL;
}
