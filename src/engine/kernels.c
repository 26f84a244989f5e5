/*
 * kernels.c - scalar reference kernels, run-time dispatch, the GEMM slice
 * through OpenBLAS, and half-precision conversion.
 *
 * The scalar kernels are written for clarity and accuracy (libm erff,
 * expf; LayerNorm statistics in double); SIMD sets are tested against them.
 */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void scalar_gelu(float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

static void scalar_gelu_tanh(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    }
}

static void scalar_softmax(float *x, size_t n) {
    float max = -INFINITY;
    for (size_t i = 0; i < n; i++)
        max = x[i] > max ? x[i] : max;
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (size_t i = 0; i < n; i++)
        x[i] *= inv;
}

static void scalar_layernorm(float *x, const float *residual, const float *gamma, const float *beta,
                             size_t n, float eps) {
    double mean = 0;
    for (size_t i = 0; i < n; i++) {
        if (residual)
            x[i] += residual[i];
        mean += x[i];
    }
    mean /= (double)n;
    double var = 0;
    for (size_t i = 0; i < n; i++)
        var += (x[i] - mean) * (x[i] - mean);
    var /= (double)n;
    float inv = (float)(1.0 / sqrt(var + eps));
    float m = (float)mean;
    for (size_t i = 0; i < n; i++)
        x[i] = (x[i] - m) * inv * gamma[i] + beta[i];
}

static void scalar_add(float *y, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        y[i] += b[i];
}

/* OpenBLAS's OpenMP build takes its thread count from the calling thread's
 * OpenMP setting and resets its global count to it: a thread that never
 * asked for one thread would make every later call fan out. So each thread
 * says so once, before its first call. */
static void blas_single_thread(void) {
    static _Thread_local int done;
    if (!done) {
        openblas_set_num_threads(1);
        done = 1;
    }
}

void kernels_gemm_nt_blas(int m, int n, int k, float alpha, const float *x, int ldx, const float *w,
                          int ldw, const float *bias, float *c, int ldc) {
    if (m <= 0 || n <= 0)
        return;
    blas_single_thread();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, alpha, x, ldx, w, ldw, 0.0f, c, ldc);
    if (bias)
        for (int r = 0; r < m; r++)
            scalar_add(c + (size_t)r * ldc, bias, (size_t)n);
}

void kernels_gemm_nn_blas(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                          float *c, int ldc) {
    if (m <= 0 || n <= 0)
        return;
    blas_single_thread();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

static const kernel_ops scalar_ops = {
    .name = "scalar",
    .gelu = scalar_gelu,
    .gelu_tanh = scalar_gelu_tanh,
    .softmax = scalar_softmax,
    .layernorm = scalar_layernorm,
    .add = scalar_add,
    .gemm_nt = kernels_gemm_nt_blas,
    .gemm_nn = kernels_gemm_nn_blas,
};

const kernel_ops *kernels_scalar(void) { return &scalar_ops; }

const kernel_ops *kernels_best(void) {
    const char *force = getenv("AISERVE_KERNELS");
    if (force && strcmp(force, "scalar") == 0)
        return &scalar_ops;
    const kernel_ops *ops = NULL;
    if (!force || strcmp(force, "avx512") == 0)
        ops = kernels_avx512();
    if (!ops && (!force || strcmp(force, "avx2") == 0 || strcmp(force, "avx512") == 0))
        ops = kernels_avx2();
    return ops ? ops : &scalar_ops;
}

void kernels_linear(const float *x, int m, int k, const float *w, const float *bias, int n,
                    float *y, int n0, int n1, const kernel_ops *ops) {
    if (n1 <= n0 || m <= 0)
        return;
    ops->gemm_nt(m, n1 - n0, k, 1.0f, x, k, w + (size_t)n0 * k, k, bias ? bias + n0 : NULL, y + n0, n);
}

/* IEEE half -> float, exact for every input including subnormals and NaN. */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                mant <<= 1;
                e++;
            } while (!(mant & 0x400u));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
        }
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint16_t load_u16le(const void *src, size_t i) {
    const uint8_t *p = (const uint8_t *)src + 2 * i;
    return (uint16_t)(p[0] | (p[1] << 8));
}

void kernels_f16_to_f32_scalar(const void *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = half_to_float(load_u16le(src, i));
}

void kernels_f16_to_f32(const void *src, float *dst, size_t n) {
#if defined(__x86_64__)
    /* Widening a model's F16 weights is most of its load time without the
     * F16C instruction (about 30 ns a value). */
    /* Every CPU with AVX2 has F16C (Haswell, Piledriver and later); clang
     * cannot ask for "f16c" by name. */
    if (__builtin_cpu_supports("avx2")) {
        kernels_f16_to_f32_f16c(src, dst, n);
        return;
    }
#endif
    kernels_f16_to_f32_scalar(src, dst, n);
}

void kernels_bf16_to_f32(const void *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)load_u16le(src, i) << 16;
        memcpy(&dst[i], &bits, sizeof bits);
    }
}
