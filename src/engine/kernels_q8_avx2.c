/*
 * kernels_q8_avx2.c - int8 linear layers for CPUs without AVX512-VNNI:
 * AVX-VNNI (the VEX-encoded, 256-bit vpdpbusd of Alder Lake, Sapphire
 * Rapids, Zen 5) where the CPU has it, else plain AVX2.
 *
 * Compiled with -mavx2 -mfma (this file only); the AVX-VNNI kernel alone is
 * compiled for "avxvnni" by a target attribute, and each getter returns NULL
 * on a CPU without its instructions.
 *
 *  - AVX2: vpmaddubsw multiplies u8 inputs with s8 weights and adds pairs
 *    into 16 bits, saturating: exact only while 2 x 255 x |w| <= 32767, so
 *    this set takes weights quantised to [-64, 64] (weight_max 64, as ONNX
 *    Runtime's reduce_range off VNNI; kernels.h). vpmaddwd by ones then
 *    adds the pairs of each channel's 4 k into int32: one lane a channel,
 *    as vpdpbusd. (Widening both sides to 16 bits for vpmaddwd keeps 8-bit
 *    weights but ran at 75 G ops/s here, slower than fp32 on OpenBLAS; 7-bit
 *    inputs instead of weights cost more accuracy.) Register block: 4 rows
 *    x 16 channels.
 *  - AVX-VNNI: as the AVX-512 kernel with 8 channels a vector, 8-bit
 *    weights; register block 6 rows x 16 channels.
 * Both read the same packed weight (kernels.h) and share the epilogue.
 */
#include <cpuid.h>
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define Q8_MB 192 /* rows per block (L2), as in kernels_q8_avx512.c */

static inline __m256i mask8(int left) {
    int k = left >= 8 ? 8 : left;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static void avx2_q8_quantize(const float *x, int m, int k, int ldx, uint8_t *q, int ldq, int k_pad,
                             float *scale, int32_t *zero) {
    const __m256 lo_clamp = _mm256_set1_ps(-256.0f), hi_clamp = _mm256_set1_ps(256.0f);
    const __m256i zero_i = _mm256_setzero_si256(), max_u8 = _mm256_set1_epi32(255);
    for (int r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * ldx;
        uint8_t *qr = q + (size_t)r * ldq;
        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
        for (int t = 0; t < k; t += 8) {
            __m256 v = _mm256_maskload_ps(xr + t, mask8(k - t)); /* tail lanes are 0: in range anyway */
            lo = _mm256_min_ps(v, lo); /* a NaN in v keeps lo, as the reference's compare */
            hi = _mm256_max_ps(v, hi);
        }
        float l[8], h[8], min = 0, max = 0, inv;
        _mm256_storeu_ps(l, lo);
        _mm256_storeu_ps(h, hi);
        for (int i = 0; i < 8; i++) {
            min = l[i] < min ? l[i] : min;
            max = h[i] > max ? h[i] : max;
        }
        kernels_q8_row_params(min, max, &scale[r], &inv, &zero[r]);
        const __m256 vinv = _mm256_set1_ps(inv);
        const __m256i vz = _mm256_set1_epi32(zero[r]);
        for (int t = 0; t < k; t += 8) {
            __m256 v = _mm256_mul_ps(_mm256_maskload_ps(xr + t, mask8(k - t)), vinv);
            v = _mm256_min_ps(_mm256_max_ps(v, lo_clamp), hi_clamp);
            __m256i i = _mm256_add_epi32(_mm256_cvtps_epi32(v), vz);
            i = _mm256_min_epi32(_mm256_max_epi32(i, zero_i), max_u8);
            __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
            __m128i b8 = _mm_packus_epi16(w16, w16);
            if (k - t >= 8) {
                _mm_storel_epi64((__m128i *)(qr + t), b8);
            } else {
                uint8_t tmp[16];
                _mm_storeu_si128((__m128i *)tmp, b8);
                memcpy(qr + t, tmp, (size_t)(k - t));
            }
        }
        memset(qr + k, 0, (size_t)(k_pad - k));
    }
}

/* Output of 8 channels of one row from their int32 sums: the reference's
 * fmaf((float)(acc - xz * wsum), xs * scale, bias). */
static inline __attribute__((always_inline)) void q8_store8(__m256i acc, int32_t xz, float xs, const float *ws,
                                                            const int32_t *wsum, const float *bias, float *c,
                                                            int ncols) {
    const __m256i mk = mask8(ncols);
    __m256i corr = _mm256_mullo_epi32(_mm256_set1_epi32(xz), _mm256_load_si256((const __m256i *)wsum));
    __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, corr));
    __m256 s = _mm256_mul_ps(_mm256_set1_ps(xs), _mm256_load_ps(ws));
    __m256 b = bias ? _mm256_maskload_ps(bias, mk) : _mm256_setzero_ps();
    _mm256_maskstore_ps(c, mk, _mm256_fmadd_ps(f, s, b));
}

/* ---- AVX2: vpmaddubsw, weights in [-64, 64] ------------------------------------ */

/* C[mr x 16] for one 16-channel block; w points at the block's group 0. */
static inline __attribute__((always_inline)) void maddubs_block(const int mr, int groups, const uint8_t *x,
                                                                int ldq, const int8_t *w, const float *xs,
                                                                const int32_t *xz, const float *ws,
                                                                const int32_t *wsum, const float *bias,
                                                                float *c, int ldc, int ncols) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++)
        acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int g = 0; g < groups; g++) {
        const __m256i w0 = _mm256_load_si256((const __m256i *)(w + (size_t)g * 64));
        const __m256i w1 = _mm256_load_si256((const __m256i *)(w + (size_t)g * 64 + 32));
#pragma GCC unroll 4
        for (int r = 0; r < mr; r++) {
            int32_t quad;
            memcpy(&quad, x + (size_t)r * ldq + 4 * (size_t)g, sizeof quad);
            const __m256i xb = _mm256_set1_epi32(quad);
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(xb, w0), ones));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(xb, w1), ones));
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < mr; r++) {
        float *cr = c + (size_t)r * ldc;
        q8_store8(acc[r][0], xz[r], xs[r], ws, wsum, bias, cr, ncols);
        if (ncols > 8)
            q8_store8(acc[r][1], xz[r], xs[r], ws + 8, wsum + 8, bias ? bias + 8 : NULL, cr + 8, ncols - 8);
    }
}

static void avx2_q8_gemm(int m, const uint8_t *xq, int ldq, const float *xscale, const int32_t *xzero,
                         const kernel_packed *w, int n0, int n1, const float *bias, float *c, int ldc) {
    const int groups = w->k_pad / 4;
    const size_t bstride = 16 * (size_t)w->k_pad;
    for (int mb = 0; mb < m; mb += Q8_MB) {
        const int me = m - mb < Q8_MB ? m : mb + Q8_MB;
        for (int j = n0; j < n1; j += 16) {
            const int ncols = n1 - j < 16 ? n1 - j : 16;
            const int8_t *wp = (const int8_t *)w->data + (size_t)(j / 16) * bstride;
            for (int i = mb; i < me; i += 4) {
                const uint8_t *x = xq + (size_t)i * ldq;
                const float *xs = xscale + i, *ws = w->scale + j, *b = bias ? bias + j : NULL;
                const int32_t *xz = xzero + i, *wsum = w->wsum + j;
                float *cc = c + (size_t)i * ldc + j;
                switch (me - i < 4 ? me - i : 4) {
                case 4:
                    maddubs_block(4, groups, x, ldq, wp, xs, xz, ws, wsum, b, cc, ldc, ncols);
                    break;
                case 3:
                    maddubs_block(3, groups, x, ldq, wp, xs, xz, ws, wsum, b, cc, ldc, ncols);
                    break;
                case 2:
                    maddubs_block(2, groups, x, ldq, wp, xs, xz, ws, wsum, b, cc, ldc, ncols);
                    break;
                default:
                    maddubs_block(1, groups, x, ldq, wp, xs, xz, ws, wsum, b, cc, ldc, ncols);
                }
            }
        }
    }
}

/* ---- AVX-VNNI ------------------------------------------------------------------ */

/* These functions alone may use AVX-VNNI (a target attribute: GCC and clang
 * both take it, where only GCC knows the pragma). */
#define AVXVNNI __attribute__((target("avxvnni")))

/* C[mr x 16] for one 16-channel block; w points at the block's group 0. */
static inline __attribute__((always_inline)) AVXVNNI void vnni_block(const int mr, int groups, const uint8_t *x,
                                                             int ldq, const int8_t *w, const float *xs,
                                                             const int32_t *xz, const float *ws,
                                                             const int32_t *wsum, const float *bias,
                                                             float *c, int ldc, int ncols) {
    __m256i acc[6][2];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++)
        acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int g = 0; g < groups; g++) {
        const __m256i w0 = _mm256_load_si256((const __m256i *)(w + (size_t)g * 64));
        const __m256i w1 = _mm256_load_si256((const __m256i *)(w + (size_t)g * 64 + 32));
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            int32_t quad;
            memcpy(&quad, x + (size_t)r * ldq + 4 * (size_t)g, sizeof quad);
            const __m256i xb = _mm256_set1_epi32(quad);
            acc[r][0] = _mm256_dpbusd_avx_epi32(acc[r][0], xb, w0);
            acc[r][1] = _mm256_dpbusd_avx_epi32(acc[r][1], xb, w1);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        float *cr = c + (size_t)r * ldc;
        q8_store8(acc[r][0], xz[r], xs[r], ws, wsum, bias, cr, ncols);
        if (ncols > 8)
            q8_store8(acc[r][1], xz[r], xs[r], ws + 8, wsum + 8, bias ? bias + 8 : NULL, cr + 8, ncols - 8);
    }
}

#define VNNI_CASE(MR)                                                                           \
    case MR:                                                                                    \
        vnni_block(MR, groups, x, ldq, wp, xs, xz, ws, wsum, b, cc, ldc, ncols);                \
        break;

static AVXVNNI void avxvnni_q8_gemm(int m, const uint8_t *xq, int ldq, const float *xscale, const int32_t *xzero,
                            const kernel_packed *w, int n0, int n1, const float *bias, float *c, int ldc) {
    const int groups = w->k_pad / 4;
    const size_t bstride = 16 * (size_t)w->k_pad;
    for (int mb = 0; mb < m; mb += Q8_MB) {
        const int me = m - mb < Q8_MB ? m : mb + Q8_MB;
        for (int j = n0; j < n1; j += 16) {
            const int ncols = n1 - j < 16 ? n1 - j : 16;
            const int8_t *wp = (const int8_t *)w->data + (size_t)(j / 16) * bstride;
            for (int i = mb; i < me; i += 6) {
                const uint8_t *x = xq + (size_t)i * ldq;
                const float *xs = xscale + i, *ws = w->scale + j, *b = bias ? bias + j : NULL;
                const int32_t *xz = xzero + i, *wsum = w->wsum + j;
                float *cc = c + (size_t)i * ldc + j;
                switch (me - i < 6 ? me - i : 6) {
                    VNNI_CASE(6)
                    VNNI_CASE(5)
                    VNNI_CASE(4)
                    VNNI_CASE(3)
                    VNNI_CASE(2)
                    VNNI_CASE(1)
                }
            }
        }
    }
}

static const kernel_q8_ops avx2_q8_ops = {
    .name = "avx2", .weight_max = 64, .quantize = avx2_q8_quantize, .gemm = avx2_q8_gemm};
static const kernel_q8_ops avxvnni_q8_ops = {
    .name = "avx-vnni", .weight_max = 127, .quantize = avx2_q8_quantize, .gemm = avxvnni_q8_gemm};

static int has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

const kernel_q8_ops *kernels_q8_avx2(void) { return has_avx2() ? &avx2_q8_ops : NULL; }

/* AVX-VNNI is CPUID leaf 7, sub-leaf 1, EAX bit 4 (read directly: clang 14's
 * __builtin_cpu_supports does not know the name). */
static int has_avxvnni(void) {
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 4 & 1);
}

const kernel_q8_ops *kernels_q8_avxvnni(void) { return has_avx2() && has_avxvnni() ? &avxvnni_q8_ops : NULL; }
