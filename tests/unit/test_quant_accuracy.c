/*
 * test_quant_accuracy.c - the accuracy report of the reduced-precision
 * modes (docs/engine.md, "Reduced precision"), and the accuracy
 * targets as a test.
 *
 * Run it alone to read the report: build/tests/test_quant_accuracy (or
 * ctest -R test_quant_accuracy -V). For none, bf16 and int8 it prints
 *  - the bundled model (models/sentiment/1) on SST-2 dev (the shared
 *    data set next to the repository, as tests/cli uses it): accuracy,
 *    label agreement with fp32, the largest logit difference from fp32;
 *  - the golden fixtures (tests/fixtures/models, PyTorch fp32 values): the
 *    largest logit difference on the classifiers, the smallest cosine of
 *    the mean embedding on the embedding models;
 *  - the CPU, the kernels that ran and the weights' memory.
 * and checks: SST-2 dev accuracy within 0.5 points of fp32 and label
 * agreement of at least 99% in both reduced modes. Without the SST-2 file
 * that part is skipped.
 */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "engine.h"

#define MODEL_DIR AISERVE_SOURCE_DIR "/models/sentiment/1"
#define DEV_TSV AISERVE_SOURCE_DIR "/../shared/data/sst2/dev.tsv"
#define FIXTURE_ROOT AISERVE_SOURCE_DIR "/tests/fixtures/models"

static const engine_quantization modes[3] = {ENGINE_QUANT_NONE, ENGINE_QUANT_BF16, ENGINE_QUANT_INT8};

static engine_model *load(const char *dir, engine_quantization q) {
    engine_options opts = {.n_threads = 2, .quantization = q};
    engine_model *m = NULL;
    engine_error err = {0};
    if (engine_model_load(dir, &opts, &m, &err))
        fail_msg("%s (%s): %s", dir, engine_quantization_name(q), err.message);
    return m;
}

static void print_cpu(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            printf("CPU:%s", strchr(line, ':') + 1);
            break;
        }
    if (f)
        fclose(f);
}

/* SST-2 dev: sentences and 0/1 labels (columns named in the header). */
typedef struct dataset {
    char **texts;
    size_t *lens;
    int *labels;
    size_t n;
} dataset;

static int dataset_read(dataset *d) {
    memset(d, 0, sizeof *d);
    FILE *f = fopen(DEV_TSV, "r");
    if (!f)
        return -1;
    char *line = NULL;
    size_t cap = 0, alloc = 0;
    ssize_t len;
    int col_text = -1, col_label = -1;
    for (int row = 0; (len = getline(&line, &cap, f)) > 0; row++) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        char *fields[8];
        int nf = 0;
        for (char *p = line, *tab; nf < 8; p = tab + 1) {
            fields[nf++] = p;
            if (!(tab = strchr(p, '\t')))
                break;
            *tab = 0;
        }
        if (row == 0) {
            for (int i = 0; i < nf; i++) {
                col_text = strcmp(fields[i], "sentence") == 0 ? i : col_text;
                col_label = strcmp(fields[i], "label") == 0 ? i : col_label;
            }
            assert_true(col_text >= 0 && col_label >= 0);
            continue;
        }
        if (nf <= col_text || nf <= col_label)
            continue;
        if (d->n == alloc) {
            alloc = alloc ? 2 * alloc : 1024;
            d->texts = realloc(d->texts, alloc * sizeof *d->texts);
            d->lens = realloc(d->lens, alloc * sizeof *d->lens);
            d->labels = realloc(d->labels, alloc * sizeof *d->labels);
        }
        d->texts[d->n] = strdup(fields[col_text]);
        d->lens[d->n] = strlen(fields[col_text]);
        d->labels[d->n] = atoi(fields[col_label]);
        d->n++;
    }
    free(line);
    fclose(f);
    return 0;
}

static void dataset_free(dataset *d) {
    for (size_t i = 0; i < d->n; i++)
        free(d->texts[i]);
    free(d->texts), free(d->lens), free(d->labels);
}

static void test_sst2_dev(void **state) {
    (void)state;
    dataset d;
    if (dataset_read(&d)) {
        printf("SST-2 dev (%s) not found: skipped\n", DEV_TSV);
        skip();
    }
    print_cpu();
    printf("\nmodels/sentiment/1 on SST-2 dev (%zu sentences), 2 threads, batches of 32:\n", d.n);
    printf("| mode | kernels | weights in memory | accuracy | labels as fp32 | max logit diff from fp32 |\n");
    printf("|---|---|---|---|---|---|\n");
    float *logits[3];
    double accuracy[3], agree[3];
    for (int q = 0; q < 3; q++) {
        engine_model *m = load(MODEL_DIR, modes[q]);
        const engine_model_info *info = engine_model_get_info(m);
        assert_int_equal(info->n_labels, 2);
        logits[q] = malloc(sizeof(float) * 2 * d.n);
        engine_error err = {0};
        for (size_t i = 0; i < d.n; i += 32) {
            size_t n = d.n - i < 32 ? d.n - i : 32;
            int rc = engine_classify(m, (const char *const *)d.texts + i, d.lens + i, n, logits[q] + 2 * i, NULL,
                                     &err);
            if (rc)
                fail_msg("sentence %zu: %s", i, err.message);
        }
        size_t right = 0, same = 0;
        double max_diff = 0;
        for (size_t i = 0; i < d.n; i++) {
            const float *l = logits[q] + 2 * i, *r = logits[0] + 2 * i;
            int label = l[1] > l[0], ref = r[1] > r[0];
            right += label == d.labels[i];
            same += label == ref;
            for (int j = 0; j < 2; j++)
                max_diff = fmax(max_diff, fabs((double)l[j] - r[j]));
        }
        accuracy[q] = (double)right / (double)d.n;
        agree[q] = (double)same / (double)d.n;
        printf("| %s | %s | %.2f MB | %.2f%% | %.2f%% | %.4f |\n", engine_quantization_name(info->quantization),
               info->kernels, (double)info->weight_memory_bytes / 1e6, 100 * accuracy[q], 100 * agree[q], max_diff);
        engine_model_free(m);
    }
    for (int q = 1; q < 3; q++) { /* the targets */
        if (!(fabs(accuracy[q] - accuracy[0]) <= 0.005 && agree[q] >= 0.99))
            fail_msg("%s: accuracy %.4f against fp32 %.4f, agreement %.4f", engine_quantization_name(modes[q]),
                     accuracy[q], accuracy[0], agree[q]);
        free(logits[q]);
    }
    free(logits[0]);
    dataset_free(&d);
}

static double cosine(const float *a, const double *b, size_t n) {
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        ab += a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += b[i] * b[i];
    }
    return ab / sqrt(aa * bb);
}

static int compare_names(const void *a, const void *b) { return strcmp(a, b); }

/* Against the PyTorch fp32 goldens: logits of the classifiers, mean
 * embeddings of the embedding models. */
static void test_golden_fixtures(void **state) {
    (void)state;
    static char names[64][256];
    size_t n_names = 0;
    DIR *dir = opendir(FIXTURE_ROOT);
    assert_non_null(dir);
    for (struct dirent *e; (e = readdir(dir)) != NULL && n_names < 64;)
        if (e->d_name[0] != '.')
            snprintf(names[n_names++], sizeof names[0], "%s", e->d_name);
    closedir(dir);
    qsort(names, n_names, sizeof names[0], compare_names);
    printf("\ngolden fixtures (PyTorch fp32): largest |logit - golden| on classifiers, smallest cosine of\n"
           "the mean embedding to the golden one on embedding models:\n");
    printf("| fixture | none | bf16 | int8 |\n|---|---|---|---|\n");
    for (size_t f = 0; f < n_names; f++) {
        char path[1400];
        snprintf(path, sizeof path, "%s/%.255s/expected.json", FIXTURE_ROOT, names[f]);
        json_t *root = json_load_file(path, JSON_ALLOW_NUL, NULL);
        assert_non_null(root);
        json_t *cases = json_object_get(root, "cases");
        const size_t n = json_array_size(cases);
        const char **texts = calloc(n, sizeof *texts);
        size_t *lens = calloc(n, sizeof *lens);
        for (size_t i = 0; i < n; i++) {
            json_t *t = json_object_get(json_array_get(cases, i), "text");
            texts[i] = json_string_value(t);
            lens[i] = json_string_length(t);
        }
        snprintf(path, sizeof path, "%s/%.255s", FIXTURE_ROOT, names[f]);
        printf("| %s", names[f]);
        for (int q = 0; q < 3; q++) {
            engine_model *m = load(path, modes[q]);
            const engine_model_info *info = engine_model_get_info(m);
            const int classify = info->n_labels > 0;
            const size_t dim = classify ? (size_t)info->n_labels : (size_t)info->hidden;
            float *out = malloc(sizeof(float) * n * dim);
            double *want = malloc(sizeof(double) * dim);
            engine_error err = {0};
            int rc = classify ? engine_classify(m, texts, lens, n, out, NULL, &err)
                              : engine_embed(m, texts, lens, n, ENGINE_POOL_MEAN, 0, out, &err);
            assert_int_equal(rc, 0);
            double worst = classify ? 0 : 1;
            for (size_t i = 0; i < n; i++) {
                json_t *w = json_object_get(json_array_get(cases, i), classify ? "logits" : "mean");
                for (size_t j = 0; j < dim; j++)
                    want[j] = json_number_value(json_array_get(w, j));
                if (classify)
                    for (size_t j = 0; j < dim; j++)
                        worst = fmax(worst, fabs(out[i * dim + j] - want[j]));
                else
                    worst = fmin(worst, cosine(out + i * dim, want, dim));
            }
            printf(classify ? " | %.2g" : " | cos %.6f", worst);
            free(out), free(want);
            engine_model_free(m);
        }
        printf(" |\n");
        free(texts), free(lens);
        json_decref(root);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sst2_dev),
        cmocka_unit_test(test_golden_fixtures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
