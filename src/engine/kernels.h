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
 *  - Reduced precision (int8, bf16; the second half of this header) has
 *    its own sets in the same scheme: references and packing in
 *    kernels_lowp.c, SIMD in kernels_q8_avx512.c, kernels_q8_avx2.c,
 *    kernels_bf16_avx512.c, kernels_bf16_avx2.c, chosen to go with the
 *    fp32 set (kernels_q8_for, kernels_bf16_for) and tested in
 *    tests/unit/test_kernels_lowp.c.
 *  - All kernels are pure functions of their arguments: any thread.
 */
#ifndef AISERVE_KERNELS_H
#define AISERVE_KERNELS_H

#include <math.h>
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
    /* dst[c][r] = alpha * src[r][c] for r < rows, c < cols (src rows of lds
     * floats, dst rows of ldd >= rows floats), and dst[c][r] = 0 for rows <= r
     * < ldd: attention's keys, transposed so that Q K^T runs on gemm_nn.
     * NULL in a set whose gemm_nt is the faster way to Q K^T (avx2, whose
     * gemm_nn is OpenBLAS's; scalar). */
    void (*transpose)(const float *src, int rows, int cols, int lds, float alpha, float *dst, int ldd);
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

/* ---- reduced precision: int8 and bf16 linear layers ---------------------
 *
 * A linear layer's weight (n outputs x k inputs) is packed once, at load,
 * for products that broadcast a few consecutive values of an input row and
 * multiply them with 16 output channels at once, which is what vpdpbusd
 * (4 int8 pairs per 32-bit lane) and vdpbf16ps (2 bf16 pairs per lane)
 * compute. Blocks of 16 output channels; within a block, groups of `kg`
 * consecutive k per channel (kg = 4 for int8, 2 for bf16): element (j, t)
 * of the weight sits at
 *
 *     [j / 16][t / kg][j % 16][t % kg]       (64 bytes per (block, group))
 *
 * n is padded to a multiple of 16 and k to a multiple of kg with zeros, so
 * no kernel needs a k tail and output tails are masked stores.
 *
 * int8 (as ONNX Runtime's and PyTorch's dynamic quantisation): weights
 * symmetric per output channel, w[j][t] ~ scale[j] * q[j][t] with q in
 * [-qmax, qmax]; activations asymmetric per row (token), quantised at run
 * time to u8: x[r][t] ~ xs[r] * (xq[r][t] - xz[r]), the range widened to
 * include 0 so that 0 is exact. qmax is 127 where the CPU has an exact
 * u8 x s8 dot product (VNNI), 64 on plain AVX2, whose vpmaddubsw saturates
 * 16-bit pair sums beyond 2 x 255 x 64 (as ONNX Runtime's reduce_range:
 * 7-bit weights off VNNI); the kernel set says which (weight_max) and the
 * weights are packed for it. Products accumulate in int32 (exact:
 * |sum| <= 255 * 127 * k < 2^31 for k < 66000), then
 *     y[r][j] = fmaf((float)(acc - xz[r] * wsum[j]), xs[r] * scale[j], bias[j])
 * with wsum[j] = sum_t q[j][t]. Every int8 kernel set computes exactly this
 * (the same int32 accumulator and the same float operations), so they agree
 * bit for bit with the scalar reference on the same packed weight.
 *
 * bf16: weights rounded to bf16 (round to nearest even) at load, input rows
 * rounded to bf16 once per layer, products of bf16 pairs accumulated in
 * fp32 (exact products; sums rounded in fp32, in an order that may differ
 * between sets), then + bias. */

typedef struct kernel_packed {
    int n, k;        /* the weight's shape */
    int k_pad;       /* k rounded up to a multiple of 4 (int8) or 2 (bf16) */
    int qmax;        /* int8: the largest |q| (127, or 64 for plain AVX2); 0 for bf16 */
    void *data;      /* int8_t or bf16 bits (uint16_t), (n rounded up to 16) x k_pad, 64-byte aligned */
    float *scale;    /* int8: per output channel (n rounded up to 16); NULL for bf16 */
    int32_t *wsum;   /* int8: sum of each channel's q (zero-point term); NULL for bf16 */
} kernel_packed;

/* Quantises (int8, to [-qmax, qmax]: a kernel set's weight_max) or rounds
 * (bf16) the F32 weight w (n x k, row-major) into *p. Returns 0, or -1 when
 * out of memory (p then holds nothing). Free with kernels_packed_fini. */
int kernels_pack_q8(const float *w, int n, int k, int qmax, kernel_packed *p);
int kernels_pack_bf16(const float *w, int n, int k, kernel_packed *p);
void kernels_packed_fini(kernel_packed *p);
/* Bytes a packed weight occupies (data, scales and sums). */
size_t kernels_packed_bytes(const kernel_packed *p);

/* Memory for packed or converted weights: 64-byte aligned, on 2 MiB pages
 * when large. Freed with free(); NULL when out of memory. */
void *kernels_weights_alloc(size_t bytes);

/* Scale, its inverse and zero point of an int8 activation row whose values
 * span [lo, hi] (widened to include 0). Every int8 set calls this one
 * function, so they agree on every row. */
void kernels_q8_row_params(float lo, float hi, float *scale, float *inv, int32_t *zero);

/* One activation value to u8: clamped in float first (so a huge or NaN
 * value converts to a defined integer), rounded to nearest even (the SIMD
 * sets' default rounding), shifted by the zero point, saturated to u8. */
static inline uint8_t kernels_q8_quantize_value(float x, float inv, int32_t zero) {
    float v = x * inv;
    v = v > -256.0f ? v : -256.0f; /* NaN -> -256, as max_ps(v, -256) */
    v = v < 256.0f ? v : 256.0f;
    int32_t q = (int32_t)nearbyintf(v) + zero;
    return (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
}

/* float -> bf16 bits, round to nearest even, NaN kept quiet, inputs below
 * FLT_MIN flushed to signed zero (as vcvtneps2bf16 does). */
uint16_t kernels_f32_to_bf16(float x);

typedef struct kernel_q8_ops {
    const char *name;
    int weight_max; /* the largest |q| of a weight gemm takes: 127, or 64 (plain AVX2) */
    /* Quantises rows of x (m x k, leading dimension ldx floats) to q (m x
     * k_pad bytes, leading dimension ldq; bytes k..k_pad are set to 0) with
     * per-row scale and zero point. */
    void (*quantize)(const float *x, int m, int k, int ldx, uint8_t *q, int ldq, int k_pad,
                     float *scale, int32_t *zero);
    /* C[r][j] for r < m, n0 <= j < n1 (the formula above); n0 a multiple of
     * 16, n1 <= w->n; w->qmax <= weight_max. xq from quantize with k_pad =
     * w->k_pad. bias (full length) may be NULL. Writes nothing else in C. */
    void (*gemm)(int m, const uint8_t *xq, int ldq, const float *xscale, const int32_t *xzero,
                 const kernel_packed *w, int n0, int n1, const float *bias, float *c, int ldc);
} kernel_q8_ops;

typedef struct kernel_bf16_ops {
    const char *name;
    /* Rounds rows of x (m x k) to bf16 rows xb (m x k_pad, leading dimension
     * ldb elements; elements k..k_pad are set to 0). */
    void (*round)(const float *x, int m, int k, int ldx, uint16_t *xb, int ldb, int k_pad);
    /* C[r][j] = sum_t xb[r][t] w[j][t] (+ bias[j]) for r < m, n0 <= j < n1;
     * n0 a multiple of 16. */
    void (*gemm)(int m, const uint16_t *xb, int ldb, const kernel_packed *w, int n0, int n1,
                 const float *bias, float *c, int ldc);
} kernel_bf16_ops;

const kernel_q8_ops *kernels_q8_scalar(void);
const kernel_q8_ops *kernels_q8_avx512(void);  /* AVX512-VNNI vpdpbusd; NULL without */
const kernel_q8_ops *kernels_q8_avxvnni(void); /* AVX-VNNI (VEX vpdpbusd, 256-bit); NULL without */
const kernel_q8_ops *kernels_q8_avx2(void);    /* AVX2 vpmaddubsw, 7-bit weights; NULL without */
const kernel_bf16_ops *kernels_bf16_scalar(void);
const kernel_bf16_ops *kernels_bf16_avx512(void); /* AVX512-BF16 vdpbf16ps; NULL without */
const kernel_bf16_ops *kernels_bf16_avx2(void);   /* widens bf16 to fp32 for FMA; NULL without AVX2 */

/* The reduced-precision kernels that go with an fp32 set (the same family,
 * so AISERVE_KERNELS forces them too): the scalar set gets the scalar
 * references; avx2 gets AVX-VNNI or AVX2 int8 and the widening bf16
 * products; avx512 gets AVX512-VNNI and AVX512-BF16 where the CPU has them,
 * else what avx2 gets. Never NULL. */
const kernel_q8_ops *kernels_q8_for(const kernel_ops *ops);
const kernel_bf16_ops *kernels_bf16_for(const kernel_ops *ops);

#endif
