/*
 * bench_peak.c - the CPU's arithmetic ceilings, and the engine's linear-layer
 * kernels measured against them: how much of a benchmark case's time is
 * left to win in the products, and how much lies elsewhere.
 *
 *  - Peaks: one tight loop per instruction (16 independent accumulators in
 *    registers, no memory operand: nothing but the execution units limits
 *    it) on 1 thread and on every CPU at once (one pthread each), the best
 *    of three tries (other work only lowers a ceiling): fp32 FMA
 *    (vfmadd231ps, 2 flops a lane), bf16 pairs (vdpbf16ps, 4 flops a
 *    32-bit lane), int8 quads (vpdpbusd, 8 ops a 32-bit lane), each at the
 *    vector width of the kernel set the engine picks on this CPU (zmm with
 *    AVX-512, ymm with AVX2 / AVX-VNNI). A kind whose kernels have no such
 *    instruction here (bf16 widened for FMA, int8 on vpmaddubsw, the
 *    scalar set) has no peak, and its kernels no share.
 *  - Kernels: the engine's own fp32 (kernels_linear), bf16 and int8 linear
 *    products (kernels_bf16_for / kernels_q8_for of the best fp32 set, the
 *    ones `quantization` picks) on DistilBERT-base's three weight shapes
 *    (K x N: 768x768, 768x3072, 3072x768) at 16, 512 and 2048 rows, on one
 *    thread, as Gop/s and as a share of the matching 1-thread peak.
 *    Random data; the int8 inputs quantised once outside the timing.
 *  - One JSON line each: {"runtime":"peak","case":"peak_int8",...} and
 *    {"runtime":"kernel","case":"int8_m512_k768_n768",...,"of_peak"}.
 *
 * A benchmark, not a test: nothing asserts on a number.
 * Usage: bench_peak [--seconds S]   (default 0.3 per measurement)
 */
#define _GNU_SOURCE /* CPU_COUNT via sched.h */

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- peaks ---------------------------------------------------------------- */

/* 16 independent accumulators (registers 0-15), two constant operands (30,
 * 31): throughput, never latency, bounds the loop. */
#define ACC16(op, r)                                                                                      \
    op " %%" r "30, %%" r "31, %%" r "0\n\t" op " %%" r "30, %%" r "31, %%" r "1\n\t" op " %%" r          \
       "30, %%" r "31, %%" r "2\n\t" op " %%" r "30, %%" r "31, %%" r "3\n\t" op " %%" r "30, %%" r      \
       "31, %%" r "4\n\t" op " %%" r "30, %%" r "31, %%" r "5\n\t" op " %%" r "30, %%" r "31, %%" r       \
       "6\n\t" op " %%" r "30, %%" r "31, %%" r "7\n\t" op " %%" r "30, %%" r "31, %%" r "8\n\t" op       \
       " %%" r "30, %%" r "31, %%" r "9\n\t" op " %%" r "30, %%" r "31, %%" r "10\n\t" op " %%" r        \
       "30, %%" r "31, %%" r "11\n\t" op " %%" r "30, %%" r "31, %%" r "12\n\t" op " %%" r "30, %%" r    \
       "31, %%" r "13\n\t" op " %%" r "30, %%" r "31, %%" r "14\n\t" op " %%" r "30, %%" r "31, %%" r    \
       "15\n\t"

/* ymm forms use registers 0-15 and 14/15 as the constants (VEX encodes
 * only 16 registers). */
#define ACC14Y(op)                                                                                       \
    op " %%ymm14, %%ymm15, %%ymm0\n\t" op " %%ymm14, %%ymm15, %%ymm1\n\t" op                             \
       " %%ymm14, %%ymm15, %%ymm2\n\t" op " %%ymm14, %%ymm15, %%ymm3\n\t" op                              \
       " %%ymm14, %%ymm15, %%ymm4\n\t" op " %%ymm14, %%ymm15, %%ymm5\n\t" op                              \
       " %%ymm14, %%ymm15, %%ymm6\n\t" op " %%ymm14, %%ymm15, %%ymm7\n\t" op                              \
       " %%ymm14, %%ymm15, %%ymm8\n\t" op " %%ymm14, %%ymm15, %%ymm9\n\t" op                              \
       " %%ymm14, %%ymm15, %%ymm10\n\t" op " %%ymm14, %%ymm15, %%ymm11\n\t" op                            \
       " %%ymm14, %%ymm15, %%ymm12\n\t" op " %%ymm14, %%ymm15, %%ymm13\n\t"

#define CLOBBER_ZMM                                                                                      \
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",       \
        "xmm12", "xmm13", "xmm14", "xmm15", "xmm30", "xmm31"

/* Each loop runs `iters` blocks and returns how many instructions that was. */
__attribute__((target("avx512f"))) static long loop_fma_zmm(long iters) {
    for (long i = 0; i < iters; i++)
        __asm__ volatile(ACC16("vfmadd231ps", "zmm")::: CLOBBER_ZMM);
    return iters * 16;
}
__attribute__((target("avx512f,avx512bf16"))) static long loop_bf16_zmm(long iters) {
    for (long i = 0; i < iters; i++)
        __asm__ volatile(ACC16("vdpbf16ps", "zmm")::: CLOBBER_ZMM);
    return iters * 16;
}
__attribute__((target("avx512f,avx512vnni"))) static long loop_int8_zmm(long iters) {
    for (long i = 0; i < iters; i++)
        __asm__ volatile(ACC16("vpdpbusd", "zmm")::: CLOBBER_ZMM);
    return iters * 16;
}
__attribute__((target("avx2,fma"))) static long loop_fma_ymm(long iters) {
    for (long i = 0; i < iters; i++)
        __asm__ volatile(ACC14Y("vfmadd231ps")::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",
                         "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    return iters * 14;
}
__attribute__((target("avx2,avxvnni"))) static long loop_int8_ymm(long iters) {
    for (long i = 0; i < iters; i++)
        __asm__ volatile(ACC14Y("%{vex%} vpdpbusd")::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",
                         "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    return iters * 14;
}

typedef struct peak_kind {
    const char *name;       /* "fp32", "bf16", "int8" */
    const char *insn;       /* what the loop runs */
    long (*loop)(long);     /* NULL when the CPU lacks it */
    double ops_per_insn;    /* flops or int ops one instruction does */
} peak_kind;

typedef struct peak_arg {
    long (*loop)(long);
    double seconds;
    double insns_per_s;
} peak_arg;

static void *peak_thread(void *p) {
    peak_arg *a = p;
    long n = 0;
    a->loop(100000); /* warm up: clocks and the vector units' power state */
    const double t0 = now_s();
    double t;
    do {
        n += a->loop(1000000);
    } while ((t = now_s() - t0) < a->seconds);
    a->insns_per_s = (double)n / t;
    return NULL;
}

/* Instructions a second summed over `threads` threads running the loop at once. */
static double run_peak(long (*loop)(long), int threads, double seconds) {
    pthread_t tid[256];
    peak_arg args[256];
    double total = 0;
    for (int i = 0; i < threads; i++) {
        args[i] = (peak_arg){.loop = loop, .seconds = seconds};
        if (pthread_create(&tid[i], NULL, peak_thread, &args[i]) != 0) {
            threads = i;
            break;
        }
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        total += args[i].insns_per_s;
    }
    return total;
}

/* ---- the engine's kernels ------------------------------------------------- */

static float *random_floats(size_t n, unsigned *seed) {
    float *m = kernels_weights_alloc(n * sizeof *m);
    if (!m) {
        fprintf(stderr, "bench_peak: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 1103515245u + 12345u;
        m[i] = (float)((*seed >> 16) & 0x7fff) / 32768.0f - 0.5f;
    }
    return m;
}

typedef struct kernel_case {
    const kernel_ops *ops;
    const kernel_q8_ops *q8;
    const kernel_bf16_ops *bf16;
    const char *mode; /* fp32, bf16, int8 */
    int m, n, k;
    const float *x, *w, *bias;
    float *c;
    kernel_packed packed;
    void *xp;         /* int8: u8 rows, bf16: bf16 rows */
    float *xscale;
    int32_t *xzero;
} kernel_case;

static void kernel_run(kernel_case *kc) {
    if (!strcmp(kc->mode, "fp32"))
        kernels_linear(kc->x, kc->m, kc->k, kc->w, kc->bias, kc->n, kc->c, 0, kc->n, kc->ops);
    else if (!strcmp(kc->mode, "int8"))
        kc->q8->gemm(kc->m, kc->xp, kc->packed.k_pad, kc->xscale, kc->xzero, &kc->packed, 0, kc->n, kc->bias,
                     kc->c, kc->n);
    else
        kc->bf16->gemm(kc->m, kc->xp, kc->packed.k_pad, &kc->packed, 0, kc->n, kc->bias, kc->c, kc->n);
}

/* Median ms of the case's product over at least `seconds` and 3 runs. */
static double time_kernel(kernel_case *kc, double seconds) {
    enum { MAX_RUNS = 2000 };
    static double ms[MAX_RUNS];
    int runs = 0;
    kernel_run(kc);
    const double start = now_s();
    while (runs < MAX_RUNS && (runs < 3 || now_s() - start < seconds)) {
        const double t0 = now_s();
        kernel_run(kc);
        ms[runs++] = (now_s() - t0) * 1e3;
    }
    for (int i = 1; i < runs; i++) /* insertion sort: runs is small */
        for (int j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
            double t = ms[j];
            ms[j] = ms[j - 1];
            ms[j - 1] = t;
        }
    return ms[runs / 2];
}

static int prepare(kernel_case *kc) {
    if (!strcmp(kc->mode, "fp32"))
        return 0;
    const int is_q8 = !strcmp(kc->mode, "int8");
    if ((is_q8 ? kernels_pack_q8(kc->w, kc->n, kc->k, kc->q8->weight_max, &kc->packed)
               : kernels_pack_bf16(kc->w, kc->n, kc->k, &kc->packed)) != 0)
        return -1;
    const size_t kp = (size_t)kc->packed.k_pad;
    kc->xp = kernels_weights_alloc((size_t)kc->m * kp * (is_q8 ? 1 : 2));
    kc->xscale = malloc((size_t)kc->m * sizeof(float));
    kc->xzero = malloc((size_t)kc->m * sizeof(int32_t));
    if (!kc->xp || !kc->xscale || !kc->xzero)
        return -1;
    if (is_q8)
        kc->q8->quantize(kc->x, kc->m, kc->k, kc->k, kc->xp, (int)kp, (int)kp, kc->xscale, kc->xzero);
    else
        kc->bf16->round(kc->x, kc->m, kc->k, kc->k, kc->xp, (int)kp, (int)kp);
    return 0;
}

static void release(kernel_case *kc) {
    if (kc->packed.data)
        kernels_packed_fini(&kc->packed);
    free(kc->xp);
    free(kc->xscale);
    free(kc->xzero);
}

int main(int argc, char **argv) {
    double seconds = 0.3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else {
            fprintf(stderr, "usage: bench_peak [--seconds S]\n");
            return 2;
        }
    }
    /* Each peak at the instruction the engine's chosen kernel set uses. */
    const kernel_ops *ops = kernels_best();
    const char *q8_name = kernels_q8_for(ops)->name, *bf16_name = kernels_bf16_for(ops)->name;
    const int zmm = !strcmp(ops->name, "avx512");
    peak_kind kinds[] = {
        {"fp32", zmm ? "vfmadd231ps zmm" : "vfmadd231ps ymm",
         zmm ? loop_fma_zmm : !strcmp(ops->name, "avx2") ? loop_fma_ymm : NULL, zmm ? 32 : 16},
        {"bf16", "vdpbf16ps zmm", !strcmp(bf16_name, "avx512-bf16") ? loop_bf16_zmm : NULL, 64},
        {"int8", !strcmp(q8_name, "avx512-vnni") ? "vpdpbusd zmm" : "vpdpbusd ymm (AVX-VNNI)",
         !strcmp(q8_name, "avx512-vnni") ? loop_int8_zmm : !strcmp(q8_name, "avx-vnni") ? loop_int8_ymm : NULL,
         !strcmp(q8_name, "avx512-vnni") ? 128 : 64},
    };
    cpu_set_t set;
    const int n_cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    double peak1[3] = {0};
    for (int i = 0; i < 3; i++) {
        if (!kinds[i].loop)
            continue;
        const int counts[2] = {1, n_cpus};
        for (int c = 0; c < (n_cpus > 1 ? 2 : 1); c++) {
            /* The best of three: a ceiling, which other work only lowers. */
            double ips = 0;
            for (int rep = 0; rep < 3; rep++) {
                const double r = run_peak(kinds[i].loop, counts[c], seconds / 3);
                ips = r > ips ? r : ips;
            }
            const double gops = ips * kinds[i].ops_per_insn / 1e9;
            if (c == 0)
                peak1[i] = gops;
            printf("{\"runtime\":\"peak\",\"case\":\"peak_%s\",\"insn\":\"%s\",\"threads\":%d,"
                   "\"insns_per_s\":%.4g,\"gops\":%.1f}\n",
                   kinds[i].name, kinds[i].insn, counts[c], ips, gops);
            fflush(stdout);
        }
    }

    static const int rows[] = {16, 512, 2048};
    static const int shapes[][2] = {{768, 768}, {768, 3072}, {3072, 768}}; /* K -> N */
    unsigned seed = 7;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int k = shapes[s][0], n = shapes[s][1];
        float *w = random_floats((size_t)n * k, &seed), *bias = random_floats((size_t)n, &seed);
        for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
            const int m = rows[r];
            float *x = random_floats((size_t)m * k, &seed), *c = random_floats((size_t)m * n, &seed);
            for (int kind = 0; kind < 3; kind++) {
                kernel_case kc = {.ops = ops, .q8 = kernels_q8_for(ops), .bf16 = kernels_bf16_for(ops),
                                  .mode = kinds[kind].name, .m = m, .n = n, .k = k, .x = x, .w = w,
                                  .bias = bias, .c = c};
                if (prepare(&kc) != 0) {
                    fprintf(stderr, "bench_peak: out of memory\n");
                    return 1;
                }
                const double ms = time_kernel(&kc, seconds), gops = 2.0 * m * n * k / (ms * 1e-3) / 1e9;
                const char *name = kind == 0 ? ops->name : kind == 1 ? kc.bf16->name : kc.q8->name;
                char of_peak[32] = "null"; /* no peak loop for this kind on this CPU */
                if (peak1[kind] > 0)
                    snprintf(of_peak, sizeof of_peak, "%.3f", gops / peak1[kind]);
                printf("{\"runtime\":\"kernel\",\"case\":\"%s_m%d_k%d_n%d\",\"mode\":\"%s\",\"kernels\":\"%s\","
                       "\"threads\":1,\"m\":%d,\"n\":%d,\"k\":%d,\"ms_median\":%.4f,\"gops\":%.1f,\"of_peak\":%s}\n",
                       kinds[kind].name, m, k, n, kinds[kind].name, name, m, n, k, ms, gops, of_peak);
                fflush(stdout);
                release(&kc);
            }
            free(x);
            free(c);
        }
        free(w);
        free(bias);
    }
    return 0;
}
