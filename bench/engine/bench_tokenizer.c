/*
 * bench_tokenizer.c - WordPiece tokenizer throughput on one core.
 *
 *  - Reads the sentences of a TSV file (first column, header skipped; by
 *    default the shared SST-2 training set beside the repository) and the
 *    uncased BERT vocabulary, pins itself to the CPU it starts on, and
 *    encodes every sentence with max_length 512, over and over until
 *    --seconds have passed (after one warm-up pass).
 *  - MB/s counts input bytes (10^6 per MB) over encode time only; the loop
 *    does nothing else, so it is the tokenizer's own speed.
 *  - One JSON line on stdout: git revision, CPU, threads (always 1), bytes,
 *    texts, tokens, seconds, mb_per_s, texts_per_s, tokens_per_s.
 *
 * A benchmark, not a test: nothing here asserts on time.
 *
 * Usage: bench_tokenizer [--tsv FILE] [--vocab vocab.txt] [--cased] [--seconds 3]
 */
#define _GNU_SOURCE /* sched_setaffinity, sched_getcpu */

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "wordpiece.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len = (size_t)n;
    }
    return buf;
}

static void first_line(const char *cmd, char *out, size_t cap) {
    snprintf(out, cap, "unknown");
    FILE *p = popen(cmd, "r");
    if (!p)
        return;
    if (fgets(out, (int)cap, p))
        out[strcspn(out, "\n")] = '\0';
    pclose(p);
}

int main(int argc, char **argv) {
    const char *tsv = AISERVE_SOURCE_DIR "/../shared/data/sst2/train.tsv";
    const char *vocab = AISERVE_SOURCE_DIR "/../shared/data/bert-base-uncased-vocab.txt";
    double seconds = 3;
    int cased = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tsv") && i + 1 < argc)
            tsv = argv[++i];
        else if (!strcmp(argv[i], "--vocab") && i + 1 < argc)
            vocab = argv[++i];
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--cased"))
            cased = 1;
        else {
            fprintf(stderr, "usage: bench_tokenizer [--tsv FILE] [--vocab vocab.txt] [--cased] [--seconds 3]\n");
            return 2;
        }
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(sched_getcpu(), &set);
    sched_setaffinity(0, sizeof set, &set);

    size_t len = 0;
    char *text = read_all(tsv, &len);
    if (!text) {
        fprintf(stderr, "bench_tokenizer: cannot read %s\n", tsv);
        return 1;
    }
    /* Sentences: first column of each line after the header. */
    size_t n_texts = 0, cap = 1024, bytes = 0;
    const char **texts = malloc(cap * sizeof *texts);
    size_t *lens = malloc(cap * sizeof *lens);
    char *line = strchr(text, '\n');
    while (line && *++line) {
        char *end = strchr(line, '\n');
        size_t ll = end ? (size_t)(end - line) : strlen(line);
        char *tab = memchr(line, '\t', ll);
        if (n_texts == cap) {
            cap *= 2;
            texts = realloc(texts, cap * sizeof *texts);
            lens = realloc(lens, cap * sizeof *lens);
        }
        texts[n_texts] = line;
        lens[n_texts] = tab ? (size_t)(tab - line) : ll;
        bytes += lens[n_texts++];
        line = end;
    }
    wordpiece_options opts;
    wordpiece_options_init(&opts);
    opts.do_lower_case = !cased;
    wordpiece *wp = NULL;
    engine_error err;
    if (wordpiece_load_vocab(vocab, &opts, &wp, &err)) {
        fprintf(stderr, "bench_tokenizer: %s\n", err.message);
        return 1;
    }
    int32_t ids[512];
    size_t n_ids, tokens = 0, passes = 0;
    for (size_t i = 0; i < n_texts; i++) /* warm-up */
        wordpiece_encode(wp, texts[i], lens[i], 512, ids, 512, &n_ids, &err);
    double t0 = now_s(), t1;
    do {
        for (size_t i = 0; i < n_texts; i++) {
            if (wordpiece_encode(wp, texts[i], lens[i], 512, ids, 512, &n_ids, &err)) {
                fprintf(stderr, "bench_tokenizer: text %zu: %s\n", i, err.message);
                return 1;
            }
            tokens += n_ids;
        }
        passes++;
        t1 = now_s();
    } while (t1 - t0 < seconds);
    double dt = t1 - t0;
    char rev[64], cpu[256];
    first_line("git -C " AISERVE_SOURCE_DIR " rev-parse --short HEAD 2>/dev/null", rev, sizeof rev);
    first_line("sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1", cpu, sizeof cpu);
    printf("{\"bench\":\"tokenizer\",\"git_revision\":\"%s\",\"cpu\":\"%s\",\"threads\":1,"
           "\"vocab\":\"%s\",\"bytes\":%zu,\"texts\":%zu,\"tokens\":%zu,\"seconds\":%.3f,"
           "\"mb_per_s\":%.1f,\"texts_per_s\":%.0f,\"tokens_per_s\":%.0f}\n",
           rev, cpu, cased ? "cased" : "uncased", bytes * passes, n_texts * passes, tokens, dt,
           (double)(bytes * passes) / dt / 1e6, (double)(n_texts * passes) / dt, (double)tokens / dt);
    wordpiece_destroy(wp);
    free(texts);
    free(lens);
    free(text);
    return 0;
}
