/*
 * kernels.h - the engine's numeric kernels: GEMM for linear layers and the
 * elementwise work between them (bias, GELU, softmax, residual LayerNorm).
 *
 * Design:
 *  - Matrix products come in two shapes: gemm_nt (C = alpha X W^T + bias, a
 *    linear layer with PyTorch's [out, in] weight, read in place; also
 *    Q K^T) and gemm_nn (C = A B, attention's P V). The scalar set calls
 *    OpenBLAS, always single-threaded inside the engine's threads, so its
 *    threads never stack on the engine's; the AVX-512 set has its own
 *    register-blocked kernels (OpenBLAS's are AVX2 at best on the CPUs
 *    where OPENBLAS_CORETYPE must pin Haswell) and falls back to the scalar
 *    set for shapes they do not cover.
 *  - Kernels exist once per instruction set (kernels.c scalar,
 *    kernels_avx2.c, kernels_avx512.c), each in its own file compiled with
 *    its own flags; kernels_best() picks one by CPU features at run time.
 *    The scalar set always builds and is the reference the others are
 *    tested against (tests/unit/test_kernels.c).
 *  - All kernels are pure functions of their arguments: any thread.
 */
#ifndef AISERVE_KERNELS_H
#define AISERVE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

typedef struct kernel_ops {
    const char *name;
    /* x[i] = gelu(x[i]) with the exact erf form, 0.5 x (1 + erf(x / sqrt 2)) */
    void (*gelu)(float *x, size_t n);
    /* tanh approximation (gelu_new) */
    void (*gelu_tanh)(float *x, size_t n);
    /* x = softmax(x) over one row */
    void (*softmax)(float *x, size_t n);
    /* x = LayerNorm(x + residual) * gamma + beta over one row; residual may be NULL */
    void (*layernorm)(float *x, const float *residual, const float *gamma, const float *beta,
                      size_t n, float eps);
    /* y[i] += b[i] */
    void (*add)(float *y, const float *b, size_t n);
    /* C[m x n] = alpha * X[m x k] * W[n x k]^T (+ bias[n] if not NULL);
     * leading dimensions in floats. */
    void (*gemm_nt)(int m, int n, int k, float alpha, const float *x, int ldx, const float *w,
                    int ldw, const float *bias, float *c, int ldc);
    /* C[m x n] = A[m x k] * B[k x n] */
    void (*gemm_nn)(int m, int n, int k, const float *a, int lda, const float *b, int ldb, float *c,
                    int ldc);
} kernel_ops;

const kernel_ops *kernels_scalar(void);
const kernel_ops *kernels_avx2(void);   /* NULL when the CPU lacks AVX2+FMA */
const kernel_ops *kernels_avx512(void); /* NULL when the CPU lacks AVX-512F/BW/DQ/VL */
/* The widest set this CPU supports; AISERVE_KERNELS=scalar|avx2|avx512 in the
 * environment forces one (for tests and benchmarks). */
const kernel_ops *kernels_best(void);

/* y[:, n0:n1] = x @ w[n0:n1, :]^T (+ bias[n0:n1]), a slice of a linear layer
 * with weight w (n x k, row-major, as PyTorch stores it), x (m x k), y (m x n). */
void kernels_linear(const float *x, int m, int k, const float *w, const float *bias, int n,
                    float *y, int n0, int n1, const kernel_ops *ops);

/* The scalar set's products, for SIMD sets to fall back on. */
void kernels_gemm_nt_blas(int m, int n, int k, float alpha, const float *x, int ldx, const float *w,
                          int ldw, const float *bias, float *c, int ldc);
void kernels_gemm_nn_blas(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                          float *c, int ldc);

/* Widen half-precision weights to F32; src needs no alignment. */
void kernels_f16_to_f32(const void *src, float *dst, size_t n); /* F16C when the CPU has it */
void kernels_f16_to_f32_scalar(const void *src, float *dst, size_t n);
void kernels_f16_to_f32_f16c(const void *src, float *dst, size_t n); /* x86 with F16C only */
void kernels_bf16_to_f32(const void *src, float *dst, size_t n);

#endif
