/*
 * kernels_q8_avx512.c - int8 linear layers with AVX512-VNNI (vpdpbusd).
 *
 * Compiled with -mavx512vnni and the AVX-512 base flags (this file only);
 * kernels_q8_avx512() returns NULL on a CPU without them.
 *
 *  - quantize: per row, min/max, then x * inv rounded to nearest even +
 *    zero point, saturated to u8 (kernels_q8_quantize_value, 16 at a time).
 *  - gemm: the weight is packed as 64-byte vectors of 16 output channels x
 *    4 consecutive k (kernels.h), so one vpdpbusd multiplies 4 u8 inputs
 *    of a row, broadcast to every lane, with 4 s8 weights of 16 channels
 *    and adds the 16 int32 sums to an accumulator: no lane reduction. A
 *    register block of 6 rows x 64 channels (24 accumulators) reads each
 *    weight vector once for 6 rows; the epilogue applies the zero-point
 *    correction, both scales and the bias in the reference's order, so the
 *    output is bit for bit the scalar reference's.
 *  - Rows in blocks of Q8_MB whose quantised inputs stay in L2 while the
 *    64-channel weight panels pass them.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define Q8_MB 192 /* rows per block: 192 x 3072 bytes of input stay in L2 */

/* acc += the 4-byte dot products of u8 `u` and s8 `s` in each lane. The
 * intrinsic's non-destructive form makes GCC (12) copy and spill the 24
 * accumulators of a register block; the instruction itself accumulates in
 * place, which this says. */
static inline __m512i dpbusd(__m512i acc, __m512i u, __m512i s) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "vm"(s));
    return acc;
}

static inline __mmask16 mask16(int left) {
    return left >= 16 ? (__mmask16)0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1u);
}

static void avx512_q8_quantize(const float *x, int m, int k, int ldx, uint8_t *q, int ldq, int k_pad,
                               float *scale, int32_t *zero) {
    const __m512 lo_clamp = _mm512_set1_ps(-256.0f), hi_clamp = _mm512_set1_ps(256.0f);
    const __m512i zero_i = _mm512_setzero_si512(), max_u8 = _mm512_set1_epi32(255);
    for (int r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * ldx;
        uint8_t *qr = q + (size_t)r * ldq;
        __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
        for (int t = 0; t < k; t += 16) {
            __m512 v = _mm512_maskz_loadu_ps(mask16(k - t), xr + t); /* tail lanes are 0: in range anyway */
            lo = _mm512_min_ps(v, lo); /* a NaN in v keeps lo, as the reference's compare */
            hi = _mm512_max_ps(v, hi);
        }
        float inv;
        kernels_q8_row_params(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi), &scale[r], &inv, &zero[r]);
        const __m512 vinv = _mm512_set1_ps(inv);
        const __m512i vz = _mm512_set1_epi32(zero[r]);
        for (int t = 0; t < k; t += 16) {
            const __mmask16 mk = mask16(k - t);
            __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xr + t), vinv);
            v = _mm512_min_ps(_mm512_max_ps(v, lo_clamp), hi_clamp);
            __m512i i = _mm512_add_epi32(_mm512_cvtps_epi32(v), vz);
            i = _mm512_min_epi32(_mm512_max_epi32(i, zero_i), max_u8);
            _mm512_mask_cvtepi32_storeu_epi8(qr + t, mk, i);
        }
        memset(qr + k, 0, (size_t)(k_pad - k));
    }
}

/* C[mr x up to 16 nv] for one register block; mr and nv are compile-time
 * constants at every call site, so the loops unroll into registers. */
static inline __attribute__((always_inline)) void q8_block(const int mr, const int nv, int groups,
                                                           const uint8_t *x, int ldq, const int8_t *w,
                                                           size_t bstride, const float *xs, const int32_t *xz,
                                                           const float *ws, const int32_t *wsum,
                                                           const float *bias, float *c, int ldc, int ncols,
                                                           const int8_t *next, int next_nv) {
    __m512i acc[6][4];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            acc[r][v] = _mm512_setzero_si512();
    for (int g = 0; g < groups; g++) {
        __m512i wv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            wv[v] = _mm512_load_si512(w + v * bstride + (size_t)g * 64);
        for (int v = 0; v < next_nv; v++) /* the next panel toward L1, a line per block per step */
            _mm_prefetch((const char *)(next + v * bstride + (size_t)g * 64), _MM_HINT_T0);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            int32_t quad;
            memcpy(&quad, x + (size_t)r * ldq + 4 * (size_t)g, sizeof quad);
            const __m512i xb = _mm512_set1_epi32(quad);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                acc[r][v] = dpbusd(acc[r][v], xb, wv[v]);
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        const __mmask16 mk = mask16(ncols - 16 * v);
        const __m512 wsv = _mm512_load_ps(ws + 16 * v);
        const __m512i sumv = _mm512_load_si512(wsum + 16 * v);
        const __m512 bv = bias ? _mm512_maskz_loadu_ps(mk, bias + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            __m512i corr = _mm512_mullo_epi32(_mm512_set1_epi32(xz[r]), sumv);
            __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][v], corr));
            __m512 s = _mm512_mul_ps(_mm512_set1_ps(xs[r]), wsv);
            _mm512_mask_storeu_ps(c + (size_t)r * ldc + 16 * v, mk, _mm512_fmadd_ps(f, s, bv));
        }
    }
}

#define Q8_CASE(MR, NV)                                                                                  \
    case (MR) * 8 + (NV):                                                                                \
        q8_block(MR, NV, groups, x, ldq, w, bstride, xs, xz, ws, wsum, bias, c, ldc, ncols, next, next_nv); \
        break;
#define Q8_CASES(MR) Q8_CASE(MR, 1) Q8_CASE(MR, 2) Q8_CASE(MR, 3) Q8_CASE(MR, 4)

static void q8_block_any(int mr, int nv, int groups, const uint8_t *x, int ldq, const int8_t *w, size_t bstride,
                         const float *xs, const int32_t *xz, const float *ws, const int32_t *wsum,
                         const float *bias, float *c, int ldc, int ncols, const int8_t *next, int next_nv) {
    switch (mr * 8 + nv) {
        Q8_CASES(1)
        Q8_CASES(2)
        Q8_CASES(3)
        Q8_CASES(4)
        Q8_CASES(5)
        Q8_CASES(6)
    }
}

static void avx512_q8_gemm(int m, const uint8_t *xq, int ldq, const float *xscale, const int32_t *xzero,
                           const kernel_packed *w, int n0, int n1, const float *bias, float *c, int ldc) {
    const int groups = w->k_pad / 4;
    const size_t bstride = 16 * (size_t)w->k_pad;
    const int8_t *wd = w->data;
    for (int mb = 0; mb < m; mb += Q8_MB) {
        const int me = m - mb < Q8_MB ? m : mb + Q8_MB;
        for (int j = n0; j < n1; j += 64) {
            const int ncols = n1 - j < 64 ? n1 - j : 64, nv = (ncols + 15) / 16;
            const int8_t *wp = wd + (size_t)(j / 16) * bstride;
            /* The first pass over a panel pulls the next one in: with few
             * rows the products wait on memory for every new panel. */
            const int next_nv = j + 64 < n1 ? (n1 - j - 64 < 64 ? (n1 - j - 64 + 15) / 16 : 4) : 0;
            for (int i = mb; i < me; i += 6)
                q8_block_any(me - i < 6 ? me - i : 6, nv, groups, xq + (size_t)i * ldq, ldq, wp, bstride,
                             xscale + i, xzero + i, w->scale + j, w->wsum + j, bias ? bias + j : NULL,
                             c + (size_t)i * ldc + j, ldc, ncols, wp + 4 * bstride, i == mb ? next_nv : 0);
        }
    }
}

static const kernel_q8_ops avx512_q8_ops = {
    .name = "avx512-vnni", .weight_max = 127, .quantize = avx512_q8_quantize, .gemm = avx512_q8_gemm};

const kernel_q8_ops *kernels_q8_avx512(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni"))
        return &avx512_q8_ops;
    return NULL;
}
