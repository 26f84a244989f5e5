/*
 * eval.c - `aiserve eval`: how well a classifier does on labelled data.
 *
 * Reads a TSV whose header names a 'sentence' and a 'label' column (GLUE's
 * layout; other columns are ignored), classifies every row in batches, and
 * reports accuracy, per-class precision / recall / support, the confusion
 * matrix (rows: true label, columns: predicted) and sequences per second of
 * classification alone. A label is an id or a name from id2label. A row the
 * engine rejects (invalid UTF-8) is counted and left out; the exit status is
 * then 1. A file that cannot be read or parsed is exit status 2.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

typedef struct dataset {
    char **sentences;
    size_t *lens;
    int *labels;
    size_t n, cap;
} dataset;

static void dataset_free(dataset *d) {
    for (size_t i = 0; i < d->n; i++)
        free(d->sentences[i]);
    free(d->sentences);
    free(d->lens);
    free(d->labels);
}

/* Splits line in place at tabs; returns the number of fields (at most cap). */
static int split_tabs(char *line, char **fields, int cap) {
    int n = 0;
    fields[n++] = line;
    for (char *p = line; *p && n < cap; p++)
        if (*p == '\t') {
            *p = 0;
            fields[n++] = p + 1;
        }
    return n;
}

static int parse_label(const engine_model *m, const char *s, int *out) {
    const engine_model_info *info = engine_model_get_info(m);
    char *end;
    errno = 0;
    long id = strtol(s, &end, 10);
    if (!errno && end != s && *end == 0 && id >= 0 && id < info->n_labels) {
        *out = (int)id;
        return 0;
    }
    for (int i = 0; i < info->n_labels; i++)
        if (strcmp(s, engine_model_label(m, i)) == 0) {
            *out = i;
            return 0;
        }
    return -1;
}

static int dataset_read(const engine_model *m, const char *path, dataset *d) {
    FILE *f = cli_open(path);
    if (!f)
        return -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int col_sentence = -1, col_label = -1, rc = 0;
    size_t line_no = 0;
    enum { MAX_FIELDS = 64 };
    char *fields[MAX_FIELDS];
    while ((len = getline(&line, &cap, f)) >= 0) {
        line_no++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (line_no > 1 && len == 0)
            continue;
        int n = split_tabs(line, fields, MAX_FIELDS);
        if (line_no == 1) {
            for (int i = 0; i < n; i++) {
                if (strcmp(fields[i], "sentence") == 0)
                    col_sentence = i;
                else if (strcmp(fields[i], "label") == 0)
                    col_label = i;
            }
            if (col_sentence < 0 || col_label < 0) {
                fprintf(stderr, "aiserve: %s: the header needs 'sentence' and 'label' columns\n", path);
                rc = -1;
                break;
            }
            continue;
        }
        int label;
        if (n <= col_sentence || n <= col_label) {
            fprintf(stderr, "aiserve: %s:%zu: %d columns, the header has more\n", path, line_no, n);
            rc = -1;
            break;
        }
        if (parse_label(m, fields[col_label], &label)) {
            fprintf(stderr, "aiserve: %s:%zu: label '%.40s' is neither an id nor a name in id2label\n",
                    path, line_no, fields[col_label]);
            rc = -1;
            break;
        }
        if (d->n == d->cap) {
            size_t nc = d->cap ? 2 * d->cap : 1024;
            char **s = realloc(d->sentences, nc * sizeof *s);
            size_t *l = s ? realloc(d->lens, nc * sizeof *l) : NULL;
            int *lb = l ? realloc(d->labels, nc * sizeof *lb) : NULL;
            if (s)
                d->sentences = s;
            if (l)
                d->lens = l;
            if (!lb) {
                fprintf(stderr, "aiserve: out of memory\n");
                rc = -1;
                break;
            }
            d->labels = lb;
            d->cap = nc;
        }
        if (!(d->sentences[d->n] = strdup(fields[col_sentence]))) {
            fprintf(stderr, "aiserve: out of memory\n");
            rc = -1;
            break;
        }
        d->lens[d->n] = strlen(fields[col_sentence]);
        d->labels[d->n++] = label;
    }
    free(line);
    cli_close(f);
    if (!rc && d->n == 0 && col_sentence >= 0) {
        fprintf(stderr, "aiserve: %s: no rows\n", path);
        rc = -1;
    }
    return rc;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Classifies rows [first, first + n) into pred (-1 for a rejected row). */
static int classify_rows(engine_model *m, const dataset *d, size_t first, size_t n, float *logits,
                         int *pred) {
    const int k = engine_model_get_info(m)->n_labels;
    engine_error err;
    int rc = engine_classify(m, (const char *const *)d->sentences + first, d->lens + first, n, logits, NULL,
                             &err);
    if (rc == ENGINE_EINPUT && n > 1) { /* find the bad rows one by one */
        int status = 0;
        for (size_t i = 0; i < n; i++)
            status |= classify_rows(m, d, first + i, 1, logits, pred + i);
        return status;
    }
    if (rc == ENGINE_EINPUT) {
        fprintf(stderr, "aiserve: %s: row %zu rejected: %s\n", "eval", first + 1, err.message);
        pred[0] = -1;
        return EXIT_INPUT;
    }
    if (rc) {
        fprintf(stderr, "aiserve: %s\n", err.message);
        return EXIT_LOAD;
    }
    for (size_t i = 0; i < n; i++) {
        int best = 0;
        for (int j = 1; j < k; j++)
            if (logits[i * k + j] > logits[i * k + best])
                best = j;
        pred[i] = best;
    }
    return 0;
}

static void report(const engine_model *m, const cli_args *a, const dataset *d, const long *conf,
                   size_t rejected, double seconds) {
    const int k = engine_model_get_info(m)->n_labels;
    long correct = 0, total = 0;
    for (int t = 0; t < k; t++)
        for (int p = 0; p < k; p++) {
            total += conf[t * k + p];
            correct += t == p ? conf[t * k + p] : 0;
        }
    const double accuracy = total ? (double)correct / (double)total : 0.0;
    const double rate = seconds > 0 ? (double)total / seconds : 0.0;
    if (!a->json_format) {
        printf("model       %s\n", a->model_dir);
        printf("data        %s (%zu rows, %zu rejected)\n", a->data, d->n, rejected);
        printf("accuracy    %.4f (%ld/%ld)\n\n", accuracy, correct, total);
        printf("%-16s %10s %10s %10s\n", "label", "precision", "recall", "support");
    }
    json_t *per_class = json_object(), *matrix = json_array(), *labels = json_array();
    for (int c = 0; c < k; c++) {
        long tp = conf[c * k + c], predicted = 0, support = 0;
        json_t *row = json_array();
        for (int i = 0; i < k; i++) {
            predicted += conf[i * k + c];
            support += conf[c * k + i];
            json_array_append_new(row, json_integer(conf[c * k + i]));
        }
        /* undefined (nothing predicted / no example) is shown as - and null */
        double precision = predicted ? (double)tp / (double)predicted : -1;
        double recall = support ? (double)tp / (double)support : -1;
        const char *name = engine_model_label(m, c);
        if (!a->json_format) {
            char ps[16] = "-", rs[16] = "-";
            if (precision >= 0)
                snprintf(ps, sizeof ps, "%.4f", precision);
            if (recall >= 0)
                snprintf(rs, sizeof rs, "%.4f", recall);
            printf("%-16s %10s %10s %10ld\n", name, ps, rs, support);
        }
        json_object_set_new(per_class, name,
                            json_pack("{s:o,s:o,s:I}", "precision",
                                      precision >= 0 ? json_real(precision) : json_null(), "recall",
                                      recall >= 0 ? json_real(recall) : json_null(), "support",
                                      (json_int_t)support));
        json_array_append_new(matrix, row);
        json_array_append_new(labels, json_string(name));
    }
    if (a->json_format) {
        cli_print_json(json_pack("{s:s,s:s,s:I,s:I,s:I,s:f,s:o,s:o,s:o,s:s,s:f,s:f,s:i,s:i}", "model",
                                 a->model_dir, "data", a->data, "rows", (json_int_t)d->n, "evaluated",
                                 (json_int_t)total, "rejected", (json_int_t)rejected, "accuracy", accuracy,
                                 "labels", labels, "per_class", per_class, "confusion_matrix", matrix,
                                 "confusion_matrix_axes", "rows: true label, columns: predicted label",
                                 "seconds", seconds, "sequences_per_second", rate, "threads",
                                 a->n_threads, "batch_size", a->batch_size));
        return;
    }
    printf("\nconfusion matrix (rows: true label, columns: predicted)\n%-16s", "");
    for (int p = 0; p < k; p++)
        printf(" %10.10s", engine_model_label(m, p));
    printf("\n");
    for (int t = 0; t < k; t++) {
        printf("%-16.16s", engine_model_label(m, t));
        for (int p = 0; p < k; p++)
            printf(" %10ld", conf[t * k + p]);
        printf("\n");
    }
    printf("\nthroughput  %.1f sequences/s (%d threads, batch %d, %.3f s)\n", rate, a->n_threads,
           a->batch_size, seconds);
    json_decref(per_class);
    json_decref(matrix);
    json_decref(labels);
}

int cli_eval(engine_model *m, const cli_args *a) {
    const engine_model_info *info = engine_model_get_info(m);
    if (info->task != ENGINE_TASK_CLASSIFY || info->multi_label || info->problem_type == ENGINE_PROBLEM_REGRESSION) {
        fprintf(stderr, "aiserve: %s: eval needs a single-label classifier (not multi-label, not regression)\n",
                a->model_dir);
        return EXIT_LOAD;
    }
    dataset d = {0};
    if (dataset_read(m, a->data, &d)) {
        dataset_free(&d);
        return EXIT_LOAD;
    }
    const int k = info->n_labels;
    float *logits = malloc((size_t)a->batch_size * k * sizeof(float));
    int *pred = malloc(d.n * sizeof(int));
    long *conf = calloc((size_t)k * k, sizeof(long));
    int status = 0;
    double seconds = 0;
    if (!logits || !pred || !conf) {
        fprintf(stderr, "aiserve: out of memory\n");
        status = EXIT_LOAD;
    }
    for (size_t i = 0; !status || status == EXIT_INPUT; i += (size_t)a->batch_size) {
        if (i >= d.n)
            break;
        size_t n = d.n - i < (size_t)a->batch_size ? d.n - i : (size_t)a->batch_size;
        double t0 = now_seconds();
        int rc = classify_rows(m, &d, i, n, logits, pred + i);
        seconds += now_seconds() - t0;
        status = rc > status ? rc : status;
    }
    if (status != EXIT_LOAD) {
        size_t rejected = 0;
        for (size_t i = 0; i < d.n; i++) {
            if (pred[i] < 0)
                rejected++;
            else
                conf[d.labels[i] * k + pred[i]]++;
        }
        report(m, a, &d, conf, rejected, seconds);
    }
    free(logits);
    free(pred);
    free(conf);
    dataset_free(&d);
    return status;
}
