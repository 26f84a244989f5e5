/*
 * kernels_avx2.c - AVX2 + FMA elementwise kernels (8 floats a vector).
 *
 * The same algorithms as kernels_avx512.c (Cephes exp, A&S 7.1.26 erf) for
 * CPUs without AVX-512. Compiled with -mavx2 -mfma for this file only;
 * kernels_avx2() returns NULL on a CPU without them. Tails use maskload /
 * maskstore so no kernel reads past the end of a row.
 */
#include <immintrin.h>
#include <math.h>

#include "kernels.h"

static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.72283f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n by building the exponent bits; n is in [-126, 128] after the clamp */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126)), 23);
    return _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), _mm256_set1_ps(2.0f));
}

static inline __m256 erf256(__m256 x) {
    __m256 signbit = _mm256_set1_ps(-0.0f);
    __m256 ax = _mm256_andnot_ps(signbit, x);
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f),
                             _mm256_fmadd_ps(ax, _mm256_set1_ps(0.3275911f), _mm256_set1_ps(1.0f)));
    __m256 p = _mm256_set1_ps(1.061405429f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
    p = _mm256_mul_ps(p, t);
    __m256 e = exp256(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), ax), ax));
    __m256 y = _mm256_fnmadd_ps(p, e, _mm256_set1_ps(1.0f));
    return _mm256_or_ps(y, _mm256_and_ps(signbit, x));
}

static inline __m256i tail_mask(size_t left) {
    int k = left >= 8 ? 8 : (int)left;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static void avx2_gelu(float *x, size_t n) {
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256 rsqrt2 = _mm256_set1_ps(0.70710678118654752f);
    for (size_t i = 0; i < n; i += 8) {
        __m256i m = tail_mask(n - i);
        __m256 v = _mm256_maskload_ps(x + i, m);
        __m256 g = _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, erf256(_mm256_mul_ps(v, rsqrt2))));
        _mm256_maskstore_ps(x + i, m, g);
    }
}

static void avx2_gelu_tanh(float *x, size_t n) {
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
    for (size_t i = 0; i < n; i += 8) {
        __m256i m = tail_mask(n - i);
        __m256 v = _mm256_maskload_ps(x + i, m);
        __m256 inner = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f),
                                     _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), v),
                                                     _mm256_mul_ps(v, v), v));
        __m256 th = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(exp256(_mm256_mul_ps(two, inner)), one)));
        _mm256_maskstore_ps(x + i, m, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, th)));
    }
}

static void avx2_softmax(float *x, size_t n) {
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (size_t i = 0; i < n; i += 8) {
        __m256i m = tail_mask(n - i);
        __m256 v = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_maskload_ps(x + i, m),
                                    _mm256_castsi256_ps(m));
        vmax = _mm256_max_ps(vmax, v);
    }
    __m256 mx = _mm256_set1_ps(hmax(vmax));
    __m256 sum = _mm256_setzero_ps();
    for (size_t i = 0; i < n; i += 8) {
        __m256i m = tail_mask(n - i);
        __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), mx)), _mm256_castsi256_ps(m));
        sum = _mm256_add_ps(sum, e);
        _mm256_maskstore_ps(x + i, m, e);
    }
    __m256 inv = _mm256_set1_ps(1.0f / hsum(sum));
    for (size_t i = 0; i < n; i += 8) {
        __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(x + i, m, _mm256_mul_ps(_mm256_maskload_ps(x + i, m), inv));
    }
}

static void avx2_layernorm(float *x, const float *residual, const float *gamma, const float *beta,
                           size_t n, float eps) {
    __m256 sum = _mm256_setzero_ps();
    for (size_t i = 0; i < n; i += 8) {
        __m256i m = tail_mask(n - i);
        __m256 v = _mm256_maskload_ps(x + i, m);
        if (residual) {
            v = _mm256_add_ps(v, _mm256_maskload_ps(residual + i, m));
            _mm256_maskstore_ps(x + i, m, v);
        }
        sum = _mm256_add_ps(sum, v);
    }
    __m256 vm = _mm256_set1_ps(hsum(sum) / (float)n), sq = _mm256_setzero_ps();
    for (size_t i = 0; i < n; i += 8) {
        __m256i m = tail_mask(n - i);
        __m256 d = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), vm), _mm256_castsi256_ps(m));
        sq = _mm256_fmadd_ps(d, d, sq);
    }
    __m256 vi = _mm256_set1_ps(1.0f / sqrtf(hsum(sq) / (float)n + eps));
    for (size_t i = 0; i < n; i += 8) {
        __m256i m = tail_mask(n - i);
        __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), vm), vi);
        __m256 y = _mm256_fmadd_ps(d, _mm256_maskload_ps(gamma + i, m), _mm256_maskload_ps(beta + i, m));
        _mm256_maskstore_ps(x + i, m, y);
    }
}

static void avx2_add(float *y, const float *b, size_t n) {
    for (size_t i = 0; i < n; i += 8) {
        __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(y + i, m, _mm256_add_ps(_mm256_maskload_ps(y + i, m), _mm256_maskload_ps(b + i, m)));
    }
}

static const kernel_ops avx2_ops = {
    .name = "avx2",
    .gelu = avx2_gelu,
    .gelu_tanh = avx2_gelu_tanh,
    .softmax = avx2_softmax,
    .layernorm = avx2_layernorm,
    .add = avx2_add,
    .gemm_nt = kernels_gemm_nt_blas,
    .gemm_nn = kernels_gemm_nn_blas,
};

const kernel_ops *kernels_avx2(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return &avx2_ops;
    return NULL;
}

/* F16 -> F32 with F16C (vcvtph2ps), 8 values a step; the tail goes through
 * the same instruction on a zero-padded copy. Bit-exact with the scalar
 * half_to_float (both are exact conversions). Little-endian only, as x86. */
void kernels_f16_to_f32_f16c(const void *src, float *dst, size_t n) {
    const unsigned char *s = src;
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 2 * i))));
    if (i < n) {
        unsigned char tail[16] = {0};
        float out[8];
        for (size_t k = 0; k < 2 * (n - i); k++)
            tail[k] = s[2 * i + k];
        _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)tail)));
        for (size_t k = 0; k < n - i; k++)
            dst[i + k] = out[k];
    }
}
