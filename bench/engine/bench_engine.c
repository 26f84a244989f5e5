/*
 * bench_engine.c - the C engine on the engine benchmark's cases, through its
 * public API only (engine.h), as the server calls it.
 *
 *  - engine_model_load with engine_options.n_threads = --threads (default 2)
 *    and .quantization = --quantization (none, bf16 or int8; default none),
 *    then, on each case's texts, engine_classify for a classifier or
 *    engine_embed for an embedding model (pooled and normalised as its
 *    sentence-transformers files say: what the server computes), a case
 *    with "batch_size", the offline run, as consecutive calls of that many
 *    texts, timed as a whole. The engine takes text, so its times include
 *    tokenization (ORT's and PyTorch's do not) and it packs the batch
 *    without padding.
 *  - The runtime's name is "aiserve" for none, "aiserve-bf16" and
 *    "aiserve-int8" for the others; every line also says what runs
 *    ("quantization", "kernels": after the engine's fallback on a CPU that
 *    lacks the instructions) and the engine's note when it fell back.
 *  - Before timing, every text is tokenized with engine_tokenize and compared
 *    with the case's token ids from cases.json, so all runtimes provably see
 *    the same input; a mismatch is reported on stderr and ends the run.
 *  - Timing: --warmup runs (fewer once they take --seconds, at least one),
 *    then runs until both --min-runs runs and --seconds have passed; median
 *    and p90 of the calls. One JSON line per case on stdout:
 *    {"runtime":"aiserve","case","batch","seq","ms_median","ms_p90",
 *    "seqs_per_s","gflops",...}; GFLOP/s uses the useful-FLOP count from
 *    cases.json, the same for every runtime.
 *  - --load: process start (--t0-ns: CLOCK_REALTIME ns taken just before
 *    exec) to the end of the first result (classification or embedding) of
 *    one text, and VmRSS after load and after that first inference.
 *
 * A benchmark, not a test: nothing here asserts on time.
 *
 * Usage: bench_engine --model-dir DIR (--cases cases.json | --load)
 *        [--quantization none|bf16|int8] [--threads 2] [--seconds 2]
 *        [--min-runs 3] [--warmup 2] [--t0-ns N]
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */

#include "engine.h"

#include <jansson.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct bench_args {
    const char *model_dir;
    const char *cases;
    engine_quantization quantization;
    int load;
    int threads;
    double seconds;
    int min_runs;
    int warmup;
    long long t0_ns; /* 0: main()'s start */
} bench_args;

static long long realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static double vm_rss_mb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double mb = NAN;
    if (!f)
        return mb;
    while (fgets(line, sizeof line, f)) {
        long kb;
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) {
            mb = (double)kb / 1024.0;
            break;
        }
    }
    fclose(f);
    return mb;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *sorted, size_t n)
{
    return n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0;
}

static double percentile(const double *sorted, size_t n, double q)
{
    long i = (long)ceil(q * (double)n) - 1;
    if (i < 0)
        i = 0;
    if (i > (long)n - 1)
        i = (long)n - 1;
    return sorted[i];
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_engine --model-dir DIR (--cases cases.json | --load) "
                    "[--quantization none|bf16|int8] [--threads 2] [--seconds 2] [--min-runs 3] "
                    "[--warmup 2] [--t0-ns N]\n");
    exit(2);
}

static bench_args parse_args(int argc, char **argv)
{
    bench_args a = {.threads = 2, .seconds = 2.0, .min_runs = 3, .warmup = 2};
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (!strcmp(k, "--load")) {
            a.load = 1;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(k, "--model-dir"))
            a.model_dir = v;
        else if (!strcmp(k, "--cases"))
            a.cases = v;
        else if (!strcmp(k, "--quantization")) {
            engine_error err = {0};
            if (engine_quantization_parse(v, &a.quantization, &err) != 0) {
                fprintf(stderr, "bench_engine: --quantization: %s\n", err.message);
                exit(2);
            }
        } else if (!strcmp(k, "--threads"))
            a.threads = atoi(v);
        else if (!strcmp(k, "--seconds"))
            a.seconds = atof(v);
        else if (!strcmp(k, "--min-runs"))
            a.min_runs = atoi(v);
        else if (!strcmp(k, "--warmup"))
            a.warmup = atoi(v);
        else if (!strcmp(k, "--t0-ns"))
            a.t0_ns = atoll(v);
        else
            usage();
    }
    if (!a.model_dir || (!a.cases && !a.load))
        usage();
    if (a.min_runs < 1)
        a.min_runs = 1;
    return a;
}

/* The runtime's name and what runs, for every JSON line (see the header). */
static char runtime_name[32];
static char runtime_fields[512];

static void describe_runtime(const engine_model *model, engine_quantization asked) {
    const engine_model_info *info = engine_model_get_info(model);
    snprintf(runtime_name, sizeof runtime_name, "aiserve%s%s", asked == ENGINE_QUANT_NONE ? "" : "-",
             asked == ENGINE_QUANT_NONE ? "" : engine_quantization_name(asked));
    json_t *note = info->quantization_note ? json_string(info->quantization_note) : json_null();
    char *note_text = json_dumps(note, JSON_ENCODE_ANY);
    snprintf(runtime_fields, sizeof runtime_fields, "\"quantization\":\"%s\",\"kernels\":\"%s\",\"note\":%s",
             engine_quantization_name(info->quantization), info->kernels ? info->kernels : "",
             note_text ? note_text : "null");
    free(note_text);
    json_decref(note);
    if (info->quantization_note)
        fprintf(stderr, "bench_engine: %s\n", info->quantization_note);
}

/* One case from cases.json: texts borrowed from the JSON document. */
typedef struct bench_case {
    const char *name;
    int batch, seq;
    int per_call; /* texts per engine_classify call: batch_size, else batch */
    long long tokens;
    double useful_flops;
    const char **texts;
    size_t *lens;
    json_t *ids; /* array of arrays of token ids */
} bench_case;

/* Checks that the engine tokenizes each text of `c` to exactly its ids. */
static int check_tokens(const engine_model *model, const bench_case *c)
{
    int32_t ids[1024];
    for (int i = 0; i < c->batch; i++) {
        json_t *want = json_array_get(c->ids, (size_t)i);
        size_t n = 0;
        engine_error err = {0};
        if (engine_tokenize(model, c->texts[i], c->lens[i], 0, ids, 1024, &n, &err) != 0) {
            fprintf(stderr, "bench_engine: %s text %d: %s\n", c->name, i, err.message);
            return -1;
        }
        int same = n == json_array_size(want);
        for (size_t j = 0; same && j < n; j++)
            same = ids[j] == (int32_t)json_integer_value(json_array_get(want, j));
        if (!same) {
            fprintf(stderr, "bench_engine: %s text %d: the engine's %zu tokens differ from "
                            "cases.json's %zu\n", c->name, i, n, json_array_size(want));
            return -1;
        }
    }
    return 0;
}

/* Floats one text's result takes: its logits, or its embedding. */
static int result_width(const engine_model_info *info)
{
    return info->task == ENGINE_TASK_EMBED ? info->hidden : info->n_labels > 0 ? info->n_labels : 1;
}

/* The model's forward on n texts, as the server runs it: engine_classify,
 * or engine_embed with the pooling and normalisation the model's files ask
 * for. Writes n * result_width floats to out. */
static int run_texts(engine_model *model, const char *const *texts, const size_t *lens, size_t n,
                     float *out, engine_error *err)
{
    const engine_model_info *info = engine_model_get_info(model);
    if (info->task == ENGINE_TASK_EMBED)
        return engine_embed(model, texts, lens, n, info->pooling, info->normalize, out, err);
    return engine_classify(model, texts, lens, n, out, NULL, err);
}

/* One run of a case: its texts in calls of c->per_call. */
static int run_case(engine_model *model, const bench_case *c, float *out, int width)
{
    engine_error err = {0};
    for (int i = 0; i < c->batch; i += c->per_call) {
        size_t n = (size_t)(c->batch - i < c->per_call ? c->batch - i : c->per_call);
        if (run_texts(model, c->texts + i, c->lens + i, n, out + (size_t)i * (size_t)width, &err)) {
            fprintf(stderr, "bench_engine: %s: %s\n", c->name, err.message);
            return -1;
        }
    }
    return 0;
}

static int bench_case_run(engine_model *model, const bench_case *c, const bench_args *a,
                          float *out, int width)
{
    enum { MAX_RUNS = 100000 };
    static double ms[MAX_RUNS];
    size_t runs = 0;

    double warm = now_ms();
    for (int i = 0; i < a->warmup && (i < 1 || now_ms() - warm < a->seconds * 1e3); i++) {
        if (run_case(model, c, out, width))
            return -1;
    }
    double start = now_ms();
    while (runs < MAX_RUNS && ((int)runs < a->min_runs || now_ms() - start < a->seconds * 1e3)) {
        double t0 = now_ms();
        if (run_case(model, c, out, width))
            return -1;
        ms[runs++] = now_ms() - t0;
    }
    qsort(ms, runs, sizeof ms[0], cmp_double);
    double med = median(ms, runs);
    printf("{\"runtime\":\"%s\",%s,\"case\":\"%s\",\"batch\":%d,\"seq\":%d,"
           "\"ms_median\":%.4f,\"ms_p90\":%.4f,\"seqs_per_s\":%.2f,\"gflops\":%.2f,"
           "\"tokens\":%lld,\"padded_tokens\":%lld,\"runs\":%zu,\"threads\":%d}\n",
           runtime_name, runtime_fields, c->name, c->batch, c->seq, med, percentile(ms, runs, 0.9),
           c->batch / (med * 1e-3), c->useful_flops / (med * 1e-3) / 1e9, c->tokens, c->tokens,
           runs, a->threads);
    fflush(stdout);
    return 0;
}

static int bench_cases(engine_model *model, const bench_args *a)
{
    json_error_t jerr;
    json_t *doc = json_load_file(a->cases, 0, &jerr);
    if (!doc) {
        fprintf(stderr, "bench_engine: %s:%d: %s\n", a->cases, jerr.line, jerr.text);
        return -1;
    }
    const engine_model_info *info = engine_model_get_info(model);
    json_t *cases = json_object_get(doc, "cases");
    int rc = 0;
    for (size_t ci = 0; rc == 0 && ci < json_array_size(cases); ci++) {
        json_t *jc = json_array_get(cases, ci);
        json_t *texts = json_object_get(jc, "texts");
        bench_case c = {
            .name = json_string_value(json_object_get(jc, "name")),
            .batch = (int)json_array_size(texts),
            .seq = (int)json_integer_value(json_object_get(jc, "seq")),
            .tokens = json_integer_value(json_object_get(jc, "tokens")),
            .useful_flops = json_number_value(json_object_get(jc, "useful_flops")),
            .ids = json_object_get(jc, "input_ids"),
        };
        json_int_t per_call = json_integer_value(json_object_get(jc, "batch_size"));
        c.per_call = per_call > 0 && per_call < c.batch ? (int)per_call : c.batch;
        c.texts = calloc((size_t)c.batch, sizeof *c.texts);
        c.lens = calloc((size_t)c.batch, sizeof *c.lens);
        float *out = calloc((size_t)c.batch * (size_t)result_width(info), sizeof *out);
        if (!c.name || !c.texts || !c.lens || !out) {
            fprintf(stderr, "bench_engine: malformed case %zu or out of memory\n", ci);
            rc = -1;
        }
        for (int i = 0; rc == 0 && i < c.batch; i++) {
            c.texts[i] = json_string_value(json_array_get(texts, (size_t)i));
            c.lens[i] = c.texts[i] ? strlen(c.texts[i]) : 0;
        }
        if (rc == 0)
            rc = check_tokens(model, &c);
        if (rc == 0)
            rc = bench_case_run(model, &c, a, out, result_width(info));
        free(c.texts);
        free(c.lens);
        free(out);
    }
    json_decref(doc);
    return rc;
}

int main(int argc, char **argv)
{
    long long start_ns = realtime_ns();
    bench_args a = parse_args(argc, argv);
    long long t0_ns = a.t0_ns ? a.t0_ns : start_ns;

    engine_options opts = {.n_threads = a.threads, .quantization = a.quantization};
    engine_model *model = NULL;
    engine_error err = {0};
    if (engine_model_load(a.model_dir, &opts, &model, &err) != 0) {
        fprintf(stderr, "bench_engine: %s\n", err.message);
        return 1;
    }
    describe_runtime(model, a.quantization);

    int rc = 0;
    if (a.load) {
        double rss_load = vm_rss_mb();
        long long loaded_ns = realtime_ns();
        /* One short text, as a first request would be. */
        const char *text = "the quick brown fox jumps over the lazy dog and runs away again";
        size_t len = strlen(text);
        float *out = calloc((size_t)result_width(engine_model_get_info(model)), sizeof *out);
        if (!out || run_texts(model, &text, &len, 1, out, &err) != 0) {
            fprintf(stderr, "bench_engine: first result: %s\n", out ? err.message : "out of memory");
            rc = 1;
        } else {
            long long first_ns = realtime_ns();
            printf("{\"runtime\":\"%s\",%s,\"case\":\"load\",\"load_ms\":%.3f,"
                   "\"first_inference_ms\":%.3f,\"rss_after_load_mb\":%.1f,"
                   "\"rss_after_first_mb\":%.1f,\"threads\":%d}\n",
                   runtime_name, runtime_fields, (double)(loaded_ns - t0_ns) / 1e6, (double)(first_ns - t0_ns) / 1e6, rss_load,
                   vm_rss_mb(), a.threads);
        }
        free(out);
    } else {
        rc = bench_cases(model, &a) ? 1 : 0;
    }
    engine_model_free(model);
    return rc;
}
