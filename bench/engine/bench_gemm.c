/*
 * bench_gemm.c - OpenBLAS's own SGEMM throughput on the model's shapes: the
 * ceiling the engine's linear layers can reach on this machine.
 *
 *  - A Linear layer is y = x W^T with x [M, K] (M = tokens in the batch) and
 *    W [N, K] as stored in the checkpoint, so each shape runs as
 *    cblas_sgemm(RowMajor, NoTrans, Trans, M, N, K), the call the engine makes.
 *  - Shapes: K x N in {768x768 (attention projections), 768x3072 (FFN up),
 *    3072x768 (FFN down)} for every M the engine benchmark's cases produce,
 *    plus a 2048 square for reference; at 2 threads and at 1 thread
 *    (openblas_set_num_threads), since the engine runs OpenBLAS
 *    single-threaded inside each of its own compute threads.
 *  - Prints a first line with OpenBLAS's build config and chosen kernel set
 *    (corename; OPENBLAS_CORETYPE overrides it), then one JSON line per shape:
 *    {"runtime":"openblas","case","corename","threads","m","n","k",
 *    "ms_median","gflops"}. A benchmark, not a test: nothing asserts on time.
 *
 * Usage: bench_gemm [--seconds S] [--threads LIST]   (defaults 0.3 and "2,1")
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, strtok_r */

#include <cblas.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static float *random_matrix(size_t n, unsigned *seed)
{
    float *m = malloc(n * sizeof *m);
    if (!m) {
        fprintf(stderr, "bench_gemm: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        *seed = *seed * 1103515245u + 12345u;
        m[i] = (float)((*seed >> 16) & 0x7fff) / 32768.0f - 0.5f;
    }
    return m;
}

/* Times C[M,N] = A[M,K] * B[N,K]^T (B transposed when trans_b, else B[K,N])
 * for at least `seconds` and 3 runs after one warm-up; returns the median ms. */
static double time_sgemm(int m, int n, int k, int trans_b, double seconds)
{
    unsigned seed = 42;
    float *a = random_matrix((size_t)m * k, &seed);
    float *b = random_matrix((size_t)n * k, &seed);
    float *c = random_matrix((size_t)m * n, &seed);
    enum CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
    int ldb = trans_b ? k : n;
    enum { MAX_RUNS = 1000 };
    static double ms[MAX_RUNS];
    int runs = 0;

    cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, m, n, k, 1.0f, a, k, b, ldb, 0.0f, c, n);
    double start = now_s();
    while (runs < MAX_RUNS && (runs < 3 || now_s() - start < seconds)) {
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, m, n, k, 1.0f, a, k, b, ldb, 0.0f, c, n);
        ms[runs++] = (now_s() - t0) * 1e3;
    }
    qsort(ms, (size_t)runs, sizeof ms[0], cmp_double);
    free(a);
    free(b);
    free(c);
    return ms[runs / 2];
}

static void report(const char *name, int threads, int m, int n, int k, double ms)
{
    double gflops = 2.0 * m * n * k / (ms * 1e-3) / 1e9;
    printf("{\"runtime\":\"openblas\",\"case\":\"%s\",\"corename\":\"%s\",\"threads\":%d,"
           "\"m\":%d,\"n\":%d,\"k\":%d,\"ms_median\":%.4f,\"gflops\":%.2f}\n",
           name, openblas_get_corename(), threads, m, n, k, ms, gflops);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    double seconds = 0.3;
    const char *thread_list = "2,1";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            thread_list = argv[++i];
        } else {
            fprintf(stderr, "usage: bench_gemm [--seconds S] [--threads 2,1]\n");
            return 2;
        }
    }

    /* Token counts of the engine benchmark's cases (batch x seq and the mixed
     * batch's ~2200), and the model's three weight shapes (K -> N). */
    static const int ms_tokens[] = {16, 64, 128, 512, 1024, 2048, 4096};
    static const int shapes[][2] = {{768, 768}, {768, 3072}, {3072, 768}};

    printf("{\"runtime\":\"openblas\",\"info\":\"config\",\"config\":\"%s\",\"corename\":\"%s\"}\n",
           openblas_get_config(), openblas_get_corename());

    char list[64];
    snprintf(list, sizeof list, "%s", thread_list);
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        int threads = atoi(tok);
        if (threads <= 0)
            continue;
        openblas_set_num_threads(threads);
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int k = shapes[s][0], n = shapes[s][1];
            for (size_t i = 0; i < sizeof ms_tokens / sizeof ms_tokens[0]; i++) {
                int m = ms_tokens[i];
                char name[64];
                snprintf(name, sizeof name, "linear_m%d_k%d_n%d", m, k, n);
                report(name, threads, m, n, k, time_sgemm(m, n, k, 1, seconds));
            }
        }
        report("square_2048", threads, 2048, 2048, 2048,
               time_sgemm(2048, 2048, 2048, 0, seconds));
    }
    return 0;
}
