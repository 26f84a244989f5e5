/*
 * kernels_lowp.c - reduced-precision linear layers: weight packing at load,
 * the scalar reference kernels for int8 and bf16, and the choice of SIMD
 * kernels that go with an fp32 kernel set (layouts and formulas:
 * kernels.h).
 *
 * The references are written for clarity, one output at a time; the SIMD
 * sets (kernels_q8_avx512.c, kernels_q8_avx2.c, kernels_bf16_avx512.c,
 * kernels_bf16_avx2.c) are tested against them in
 * tests/unit/test_kernels_lowp.c. Packing is scalar: it runs once per
 * weight at load.
 */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

void *kernels_weights_alloc(size_t bytes) {
    /* Large tensors on 2 MiB pages where the kernel allows: one fault per
     * 2 MiB instead of one per 4 KiB at load, and fewer TLB misses while
     * the products stream them. Only the whole 2 MiB pages the data fills:
     * a huge page for the tail would make it resident in full (2.4 MB of
     * FFN weight in int8 took 4 MB). */
    const size_t huge = (size_t)2 << 20;
    bytes = (bytes + 63) / 64 * 64;
    if (bytes < huge)
        return aligned_alloc(64, bytes ? bytes : 64);
    void *p = aligned_alloc(huge, (bytes + huge - 1) / huge * huge);
#ifdef MADV_HUGEPAGE
    if (p)
        madvise(p, bytes / huge * huge, MADV_HUGEPAGE);
#endif
    return p;
}

static int round_up(int x, int to) { return (x + to - 1) / to * to; }

/* Offset of weight element (j, t) in the packed layout with groups of kg. */
static size_t packed_index(int j, int t, int k_pad, int kg) {
    return (size_t)(j / 16) * 16 * (size_t)k_pad + (size_t)(t / kg) * 16 * kg + (size_t)(j % 16) * kg +
           (size_t)(t % kg);
}

static int pack_alloc(kernel_packed *p, int n, int k, int kg, size_t elem_bytes) {
    memset(p, 0, sizeof *p);
    p->n = n;
    p->k = k;
    p->k_pad = round_up(k, kg);
    size_t bytes = (size_t)round_up(n, 16) * (size_t)p->k_pad * elem_bytes;
    p->data = kernels_weights_alloc(bytes);
    if (!p->data)
        return -1;
    memset(p->data, 0, bytes); /* padding channels and k are zero weights */
    return 0;
}

int kernels_pack_q8(const float *w, int n, int k, int qmax, kernel_packed *p) {
    if (pack_alloc(p, n, k, 4, 1))
        return -1;
    p->qmax = qmax;
    const float fmax_q = (float)qmax;
    const int n_pad = round_up(n, 16);
    p->scale = aligned_alloc(64, (size_t)n_pad * sizeof(float));
    p->wsum = aligned_alloc(64, (size_t)n_pad * sizeof(int32_t));
    if (!p->scale || !p->wsum) {
        kernels_packed_fini(p);
        return -1;
    }
    int8_t *q = p->data;
    for (int j = 0; j < n_pad; j++) {
        p->scale[j] = 1.0f;
        p->wsum[j] = 0;
        if (j >= n)
            continue;
        const float *row = w + (size_t)j * k;
        float max = 0;
        for (int t = 0; t < k; t++)
            max = fabsf(row[t]) > max ? fabsf(row[t]) : max;
        /* Symmetric, [-qmax, qmax]: a zero row keeps scale 1 and all-zero q. */
        if (max > 0 && isfinite(max))
            p->scale[j] = max / fmax_q;
        const float inv = 1.0f / p->scale[j];
        int32_t sum = 0;
        for (int t = 0; t < k; t++) {
            float v = nearbyintf(row[t] * inv);
            v = v > fmax_q ? fmax_q : v < -fmax_q ? -fmax_q : v;
            int8_t qv = (int8_t)(v == v ? v : 0.0f);
            q[packed_index(j, t, p->k_pad, 4)] = qv;
            sum += qv;
        }
        p->wsum[j] = sum;
    }
    return 0;
}

uint16_t kernels_f32_to_bf16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    if ((bits & 0x7f800000u) == 0) /* zero or subnormal: signed zero */
        return (uint16_t)((bits >> 16) & 0x8000u);
    if ((bits & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it, quiet */
        return (uint16_t)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u); /* round to nearest even (infinity stays) */
    return (uint16_t)(bits >> 16);
}

static float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

int kernels_pack_bf16(const float *w, int n, int k, kernel_packed *p) {
    if (pack_alloc(p, n, k, 2, sizeof(uint16_t)))
        return -1;
    uint16_t *d = p->data;
    for (int j = 0; j < n; j++)
        for (int t = 0; t < k; t++)
            d[packed_index(j, t, p->k_pad, 2)] = kernels_f32_to_bf16(w[(size_t)j * k + t]);
    return 0;
}

void kernels_packed_fini(kernel_packed *p) {
    free(p->data);
    free(p->scale);
    free(p->wsum);
    memset(p, 0, sizeof *p);
}

size_t kernels_packed_bytes(const kernel_packed *p) {
    if (!p->data)
        return 0;
    const size_t n_pad = (size_t)round_up(p->n, 16);
    if (p->scale) /* int8 */
        return n_pad * (size_t)p->k_pad + n_pad * (sizeof(float) + sizeof(int32_t));
    return n_pad * (size_t)p->k_pad * sizeof(uint16_t);
}

void kernels_q8_row_params(float lo, float hi, float *scale, float *inv, int32_t *zero) {
    lo = lo < 0 ? lo : 0; /* 0 is always in range, and exact */
    hi = hi > 0 ? hi : 0;
    float s = (hi - lo) / 255.0f;
    if (!(s > 0) || !isfinite(s)) {
        *scale = 1.0f, *inv = 1.0f, *zero = 0;
        return;
    }
    *scale = s;
    *inv = 1.0f / s;
    float z = nearbyintf(-lo * *inv);
    *zero = z < 0 ? 0 : z > 255 ? 255 : (int32_t)z;
}

/* ---- scalar references --------------------------------------------------- */

static void scalar_q8_quantize(const float *x, int m, int k, int ldx, uint8_t *q, int ldq, int k_pad,
                               float *scale, int32_t *zero) {
    for (int r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * ldx;
        uint8_t *qr = q + (size_t)r * ldq;
        float lo = 0, hi = 0, inv;
        for (int t = 0; t < k; t++) {
            lo = xr[t] < lo ? xr[t] : lo;
            hi = xr[t] > hi ? xr[t] : hi;
        }
        kernels_q8_row_params(lo, hi, &scale[r], &inv, &zero[r]);
        for (int t = 0; t < k; t++)
            qr[t] = kernels_q8_quantize_value(xr[t], inv, zero[r]);
        memset(qr + k, 0, (size_t)(k_pad - k));
    }
}

static void scalar_q8_gemm(int m, const uint8_t *xq, int ldq, const float *xscale, const int32_t *xzero,
                           const kernel_packed *w, int n0, int n1, const float *bias, float *c, int ldc) {
    const int8_t *wq = w->data;
    for (int r = 0; r < m; r++)
        for (int j = n0; j < n1; j++) {
            int32_t acc = 0;
            for (int t = 0; t < w->k_pad; t++)
                acc += (int32_t)xq[(size_t)r * ldq + t] * wq[packed_index(j, t, w->k_pad, 4)];
            c[(size_t)r * ldc + j] = fmaf((float)(acc - xzero[r] * w->wsum[j]), xscale[r] * w->scale[j],
                                          bias ? bias[j] : 0.0f);
        }
}

static void scalar_bf16_round(const float *x, int m, int k, int ldx, uint16_t *xb, int ldb, int k_pad) {
    for (int r = 0; r < m; r++) {
        for (int t = 0; t < k; t++)
            xb[(size_t)r * ldb + t] = kernels_f32_to_bf16(x[(size_t)r * ldx + t]);
        for (int t = k; t < k_pad; t++)
            xb[(size_t)r * ldb + t] = 0;
    }
}

static void scalar_bf16_gemm(int m, const uint16_t *xb, int ldb, const kernel_packed *w, int n0, int n1,
                             const float *bias, float *c, int ldc) {
    const uint16_t *wb = w->data;
    for (int r = 0; r < m; r++)
        for (int j = n0; j < n1; j++) {
            float acc = 0;
            for (int t = 0; t < w->k_pad; t++) /* products of bf16 values are exact in fp32 */
                acc += bf16_to_float(xb[(size_t)r * ldb + t]) * bf16_to_float(wb[packed_index(j, t, w->k_pad, 2)]);
            c[(size_t)r * ldc + j] = acc + (bias ? bias[j] : 0.0f);
        }
}

static const kernel_q8_ops q8_scalar = {
    .name = "scalar", .weight_max = 127, .quantize = scalar_q8_quantize, .gemm = scalar_q8_gemm};
static const kernel_bf16_ops bf16_scalar = {
    .name = "scalar", .round = scalar_bf16_round, .gemm = scalar_bf16_gemm};

const kernel_q8_ops *kernels_q8_scalar(void) { return &q8_scalar; }
const kernel_bf16_ops *kernels_bf16_scalar(void) { return &bf16_scalar; }

const kernel_q8_ops *kernels_q8_for(const kernel_ops *ops) {
    if (ops == kernels_scalar())
        return &q8_scalar;
    const kernel_q8_ops *q = ops == kernels_avx512() ? kernels_q8_avx512() : NULL;
    if (!q)
        q = kernels_q8_avxvnni();
    if (!q)
        q = kernels_q8_avx2();
    return q ? q : &q8_scalar;
}

const kernel_bf16_ops *kernels_bf16_for(const kernel_ops *ops) {
    if (ops == kernels_scalar())
        return &bf16_scalar;
    const kernel_bf16_ops *b = ops == kernels_avx512() ? kernels_bf16_avx512() : NULL;
    if (!b)
        b = kernels_bf16_avx2();
    return b ? b : &bf16_scalar;
}
