/*
 * batch.c - `aiserve batch`: a file of texts through the engine, without a
 * server, into a JSON-lines file that an interrupted run can resume.
 *
 *   aiserve batch --model DIR --input in.jsonl|in.txt --output out.jsonl
 *                 [--resume] [--batch-size N] [--threads N]
 *
 * Design:
 *  - Input line i (0-based, every line counts) gives output line i, in
 *    order: {"index": i, ["id": ...,] then predict's result fields} or
 *    {"index": i, ["id": ...,] "error": "..."}. The result fields come from
 *    cli_prediction_set and are written by cli_write_json, so they are the
 *    bytes `aiserve predict` prints. An input named *.jsonl or *.json holds
 *    one JSON string or {"text": ..., "id": ...} per line; any other name
 *    (and "-", stdin) holds one text per line. Lines are read with getline:
 *    any length, any bytes.
 *  - Batch b always covers input lines [b*N, (b+1)*N) for --batch-size N,
 *    after a resume too, so every text is computed in the same batch as in
 *    an uninterrupted run and the output is the same bytes. A batch's lines
 *    are written and flushed together; a kill loses at most that batch.
 *  - --resume reads the output back: its complete lines must be results 0..K-1
 *    of this input (index in order, id equal to the input's); a torn last
 *    line is dropped and the file is cut back to the last batch boundary at
 *    or below K, from which the run goes on.
 *  - Whatever can be checked without the model (arguments, input, output,
 *    the resume prefix) is checked before it loads.
 *  - Progress goes to stderr: a bar redrawn in place on a terminal, else one
 *    line every AISERVE_PROGRESS_INTERVAL_MS (default 2000); then a summary.
 *
 * Threads: the calling thread only, plus the engine's compute pool. SIGINT
 * and SIGTERM stop the run after the batch in flight (a second one kills).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

enum { EXIT_INTERRUPTED = 130 };

static void usage(FILE *out) {
    fputs("usage: aiserve batch --model DIR --input FILE --output FILE.jsonl [--resume]\n"
          "                     [--batch-size N] [--threads N]\n"
          "\n"
          "Classifies every line of FILE and writes one JSON line per input line, in order:\n"
          "  {\"index\": i, \"id\": ..., \"label\", \"confidence\", \"probs\", \"logits\"}\n"
          "or {\"index\": i, \"id\": ..., \"error\": \"...\"} for a line that has no result\n"
          "(an empty text, malformed JSON, invalid UTF-8). i is the 0-based line number;\n"
          "\"id\" is there when the input line has one.\n"
          "\n"
          "options:\n"
          "  --model DIR        Hugging Face classifier directory\n"
          "  --input FILE       *.jsonl or *.json: one JSON string or {\"text\": ..., \"id\": ...}\n"
          "                     per line; any other name: one text per line ('-' is stdin)\n"
          "  --output FILE      JSON-lines results; must not exist or be empty, unless --resume\n"
          "  --resume           continue an interrupted run: keep the results already in\n"
          "                     --output (a torn last line is dropped) and append the rest\n"
          "  --batch-size N     texts per forward pass (default 32; resume with the same N)\n"
          "  --threads N        compute threads (default: the number of CPUs)\n"
          "\n"
          "Progress goes to stderr: a bar on a terminal, else a line every 2 s\n"
          "(AISERVE_PROGRESS_INTERVAL_MS sets the interval in ms; 0 is every batch).\n"
          "exit status: 0 ok, 1 some line got an error result, 2 usage, file or model load\n"
          "error, 130 interrupted (run again with --resume)\n",
          out);
}

typedef struct batch_opts {
    const char *model_dir, *input, *output;
    int resume, batch_size, n_threads;
    double interval_s; /* < 0: the default for the kind of stderr */
} batch_opts;

/* One input line on its way to its output line. */
typedef struct batch_item {
    char *text;      /* owned; NULL when the line never reaches the engine */
    size_t len;
    json_t *id;      /* owned reference, or NULL */
    char error[512]; /* non-empty: the line's result is this error */
} batch_item;

static void item_clear(batch_item *it) {
    free(it->text);
    json_decref(it->id);
    it->text = NULL;
    it->len = 0;
    it->id = NULL;
    it->error[0] = 0;
}

/* Sets the item's error. Bytes outside printable ASCII become '?': the
 * message may quote input (jansson's "near '...'"), and the output must
 * stay valid UTF-8 JSON whatever the input was. */
static void item_fail(batch_item *it, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(it->error, sizeof it->error, fmt, ap);
    va_end(ap);
    for (char *p = it->error; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            *p = '?';
}

/* An empty text is an error result rather than a skipped line, so that
 * output line i always answers input line i. Returns -1 when out of memory. */
static int item_set_text(batch_item *it, const char *s, size_t len) {
    if (len == 0) {
        item_fail(it, "empty text");
        return 0;
    }
    it->text = malloc(len + 1);
    if (!it->text)
        return -1;
    memcpy(it->text, s, len);
    it->text[len] = 0;
    it->len = len;
    return 0;
}

static int item_parse_json(batch_item *it, const char *line, size_t len) {
    if (len == 0) {
        item_fail(it, "empty line");
        return 0;
    }
    json_error_t jerr;
    json_t *v = json_loadb(line, len, JSON_DECODE_ANY, &jerr);
    if (!v) {
        item_fail(it, "invalid JSON: %s (column %d)", jerr.text, jerr.column);
        return 0;
    }
    const json_t *text = v;
    if (json_is_object(v)) {
        json_t *id = json_object_get(v, "id");
        if (id)
            it->id = json_incref(id);
        text = json_object_get(v, "text");
    }
    int rc = 0;
    if (json_is_string(text))
        rc = item_set_text(it, json_string_value(text), json_string_length(text));
    else if (json_is_object(v))
        item_fail(it, "the object has no \"text\" string");
    else
        item_fail(it, "expected a JSON string or an object with \"text\"");
    json_decref(v);
    return rc;
}

/* Set by SIGINT/SIGTERM; the run stops before the next batch. The handler
 * is installed without SA_RESTART so that a read blocked on a pipe returns. */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig) {
    stop_signal = sig;
}

/* The input, read one line at a time. */
typedef struct batch_reader {
    FILE *f;
    const char *path;
    int is_jsonl;
    char *line; /* getline's buffer */
    size_t cap;
} batch_reader;

/* Reads the next line into *it (cleared first). Returns 1, 0 at the end of
 * the input or when a stop signal came, or -1 after a read error or running
 * out of memory (reported). */
static int reader_next(batch_reader *r, batch_item *it) {
    item_clear(it);
    errno = 0;
    ssize_t n = getline(&r->line, &r->cap, r->f);
    if (n < 0) {
        if (stop_signal || (feof(r->f) && !ferror(r->f)))
            return 0;
        fprintf(stderr, "aiserve: %s: cannot read: %s\n", r->path, strerror(errno ? errno : EIO));
        return -1;
    }
    size_t len = (size_t)n;
    if (len > 0 && r->line[len - 1] == '\n')
        len--;
    if (len > 0 && r->line[len - 1] == '\r')
        len--;
    int rc = r->is_jsonl ? item_parse_json(it, r->line, len) : item_set_text(it, r->line, len);
    if (rc) {
        fprintf(stderr, "aiserve: out of memory\n");
        return -1;
    }
    return 1;
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

/* Counts getline's lines in a regular file and rewinds it; -1 on a read
 * error. */
static int count_lines(FILE *f, size_t *out) {
    char buf[1 << 16];
    size_t n, lines = 0;
    char last = '\n';
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        for (const char *p = buf, *end = buf + n; (p = memchr(p, '\n', (size_t)(end - p))); p++)
            lines++;
        last = buf[n - 1];
    }
    if (ferror(f) || fseek(f, 0, SEEK_SET))
        return -1;
    *out = lines + (last != '\n');
    return 0;
}

/* Where --resume picks the run up. */
typedef struct resume_point {
    size_t n_kept;    /* results kept: a multiple of the batch size */
    off_t kept_bytes; /* their length; the output is cut back to it */
    size_t n_errors;  /* error results among them */
} resume_point;

/* Reads the results already in `path` against the input. On success returns
 * 0, fills *rp, leaves the reader after the last complete result and puts
 * the items past rp->n_kept (fewer than a batch) in items[0..*n_pending). A
 * prefix that is not this run's is one line on stderr and -1. */
static int resume_scan(const batch_opts *o, batch_reader *r, batch_item *items, size_t *n_pending,
                       resume_point *rp) {
    *n_pending = 0;
    FILE *f = fopen(o->output, "rb");
    if (!f)
        return errno == ENOENT ? 0 : (fprintf(stderr, "aiserve: %s: cannot open: %s\n", o->output,
                                              strerror(errno)), -1);
    char *line = NULL;
    size_t cap = 0, k = 0, n_errors = 0, bs = (size_t)o->batch_size;
    off_t offset = 0;
    ssize_t n;
    int rc = 0;
    /* A line without its newline can only be the last one: a torn write. */
    while (rc == 0 && (n = getline(&line, &cap, f)) > 0 && line[n - 1] == '\n') {
        if (k % bs == 0) {
            *rp = (resume_point){.n_kept = k, .kept_bytes = offset, .n_errors = n_errors};
            *n_pending = 0;
        }
        int got = reader_next(r, &items[*n_pending]);
        if (got <= 0) {
            if (got == 0)
                fprintf(stderr, "aiserve: %s has more lines than %s; it is not this input's "
                        "output (remove it to start over)\n", o->output, o->input);
            rc = -1;
            break;
        }
        json_t *res = json_loadb(line, (size_t)n - 1, 0, NULL);
        json_t *index = json_object_get(res, "index"), *id = json_object_get(res, "id");
        const batch_item *it = &items[*n_pending];
        if (!json_is_integer(index) || json_integer_value(index) != (json_int_t)k) {
            fprintf(stderr, "aiserve: %s:%zu: not a result line with \"index\": %zu; it is not "
                    "this run's output (remove it to start over)\n", o->output, k + 1, k);
            rc = -1;
        } else if (!(id == NULL && it->id == NULL) && !(id && it->id && json_equal(id, it->id))) {
            fprintf(stderr, "aiserve: %s:%zu: its \"id\" differs from line %zu of %s; it is not "
                    "this input's output (remove it to start over)\n", o->output, k + 1, k + 1,
                    o->input);
            rc = -1;
        }
        n_errors += json_object_get(res, "error") != NULL;
        json_decref(res);
        offset += (off_t)n;
        ++*n_pending;
        k++;
    }
    if (rc == 0 && ferror(f)) {
        fprintf(stderr, "aiserve: %s: cannot read: %s\n", o->output, strerror(errno));
        rc = -1;
    }
    if (rc == 0 && k % bs == 0) {
        *rp = (resume_point){.n_kept = k, .kept_bytes = offset, .n_errors = n_errors};
        *n_pending = 0;
    }
    free(line);
    fclose(f);
    return rc;
}

/* Progress on stderr. */
typedef struct progress {
    int is_tty, has_total, drawn;
    size_t total, first; /* first: results kept from an earlier run */
    double t_start, t_next, interval_s;
} progress;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void format_rate(char *buf, size_t cap, double rate) {
    snprintf(buf, cap, rate >= 10 ? "%.0f texts/s" : "%.1f texts/s", rate);
}

static void format_eta(char *buf, size_t cap, double s) {
    long t = (long)(s + 0.5);
    if (t < 60)
        snprintf(buf, cap, "ETA %ld s", t);
    else if (t < 3600)
        snprintf(buf, cap, "ETA %ld min %02ld s", t / 60, t % 60);
    else
        snprintf(buf, cap, "ETA %ld h %02ld min", t / 3600, t / 60 % 60);
}

/* Shows `done` results when the interval has passed, or always if force. */
static void progress_show(progress *p, size_t done, int force) {
    double now = now_s();
    if (!force && now < p->t_next)
        return;
    p->t_next = now + p->interval_s;
    double elapsed = now - p->t_start;
    double rate = elapsed > 0 ? (double)(done - p->first) / elapsed : 0;
    char srate[32], seta[48] = "ETA ?";
    format_rate(srate, sizeof srate, rate);
    if (!p->has_total) {
        fprintf(stderr, p->is_tty ? "\r%zu done, %s\033[K" : "batch: %zu done, %s\n", done, srate);
        p->drawn = p->is_tty;
        return;
    }
    size_t left = p->total > done ? p->total - done : 0;
    double frac = p->total ? (double)(p->total - left) / (double)p->total : 1;
    if (rate > 0)
        format_eta(seta, sizeof seta, (double)left / rate);
    if (p->is_tty) {
        enum { WIDTH = 24 };
        char bar[WIDTH + 1];
        int full = (int)(frac * WIDTH);
        for (int i = 0; i < WIDTH; i++)
            bar[i] = i < full ? '#' : '.';
        bar[WIDTH] = 0;
        fprintf(stderr, "\r[%s] %zu/%zu %5.1f%%  %s  %s\033[K", bar, done, p->total, 100 * frac,
                srate, seta);
        p->drawn = 1;
    } else {
        fprintf(stderr, "batch: %zu/%zu (%.1f%%), %s, %s\n", done, p->total, 100 * frac, srate,
                seta);
    }
}

/* Ends the bar's line so that what follows starts on its own. */
static void progress_end_line(progress *p) {
    if (p->drawn)
        fputc('\n', stderr);
    p->drawn = 0;
}

/* Classifies the items that have a text into logits/probs, n_labels per
 * item at the item's rank among those. A text the engine rejects for its
 * input (invalid UTF-8) gets the engine's message as its error and the
 * others still get results. Returns 0, or -1 after a failure that is not
 * the input's (reported). */
static int batch_classify(engine_model *m, batch_item *items, size_t n, const char **texts,
                          size_t *lens, float *logits, float *probs) {
    size_t k = (size_t)engine_model_get_info(m)->n_labels, n_texts = 0;
    for (size_t i = 0; i < n; i++)
        if (items[i].text) {
            texts[n_texts] = items[i].text;
            lens[n_texts++] = items[i].len;
        }
    if (n_texts == 0)
        return 0;
    engine_error err;
    int rc = engine_classify(m, texts, lens, n_texts, logits, probs, &err);
    if (rc == ENGINE_EINPUT) {
        for (size_t i = 0, j = 0; i < n; i++) {
            if (!items[i].text)
                continue;
            rc = n_texts == 1 ? rc
                              : engine_classify(m, &texts[j], &lens[j], 1, logits + j * k,
                                                probs + j * k, &err);
            if (rc == ENGINE_EINPUT)
                item_fail(&items[i], "%s", err.message);
            else if (rc)
                break;
            j++;
        }
        rc = rc == ENGINE_EINPUT ? 0 : rc;
    }
    if (rc)
        fprintf(stderr, "aiserve: %s\n", err.message);
    return rc ? -1 : 0;
}

/* Writes the batch's result lines, items[i] being input line first + i.
 * Returns 0 or -1 when the output cannot be written. */
static int batch_write(FILE *out, const engine_model *m, const batch_item *items, size_t n,
                       size_t first, const float *logits, const float *probs, size_t *n_errors) {
    size_t k = (size_t)engine_model_get_info(m)->n_labels;
    int rc = 0;
    for (size_t i = 0, j = 0; i < n; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "index", json_integer((json_int_t)(first + i)));
        if (items[i].id)
            json_object_set(o, "id", items[i].id);
        if (items[i].error[0]) {
            json_object_set_new(o, "error", json_string(items[i].error));
            ++*n_errors;
        } else {
            cli_prediction_set(o, m, logits + j * k, probs + j * k);
        }
        j += items[i].text != NULL;
        rc |= cli_write_json(out, o);
    }
    return rc | fflush(out);
}

static int parse_opts(int argc, char **argv, batch_opts *o) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"input", required_argument, 0, 'i'},
        {"output", required_argument, 0, 'o'},     {"resume", no_argument, 0, 'r'},
        {"batch-size", required_argument, 0, 'b'}, {"threads", required_argument, 0, 't'},
        {"help", no_argument, 0, 'h'},             {0, 0, 0, 0},
    };
    long n_cpus = sysconf(_SC_NPROCESSORS_ONLN);
    *o = (batch_opts){.batch_size = 32, .n_threads = n_cpus > 0 && n_cpus <= 256 ? (int)n_cpus : 1,
                      .interval_s = -1};
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            o->model_dir = optarg;
            break;
        case 'i':
            o->input = optarg;
            break;
        case 'o':
            o->output = optarg;
            break;
        case 'r':
            o->resume = 1;
            break;
        case 'b':
            if (cli_parse_int(optarg, 1, 4096, &o->batch_size))
                return fprintf(stderr, "aiserve batch: --batch-size must be 1..4096\n"), -1;
            break;
        case 't':
            if (cli_parse_int(optarg, 1, 256, &o->n_threads))
                return fprintf(stderr, "aiserve batch: --threads must be 1..256\n"), -1;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case ':':
            return fprintf(stderr, "aiserve batch: %s needs a value\n", argv[optind - 1]), -1;
        default:
            return fprintf(stderr, "aiserve batch: unknown option %s (see aiserve batch --help)\n",
                           argv[optind - 1]), -1;
        }
    }
    if (optind < argc)
        return fprintf(stderr, "aiserve batch: unexpected argument '%s' (texts come from --input)\n",
                       argv[optind]), -1;
    if (!o->model_dir || !o->input || !o->output)
        return fprintf(stderr, "aiserve batch: needs --model DIR, --input FILE and --output FILE "
                       "(see aiserve batch --help)\n"), -1;
    if (strcmp(o->output, "-") == 0)
        return fprintf(stderr, "aiserve batch: --output must be a file (--resume reads it back)\n"), -1;
    const char *env = getenv("AISERVE_PROGRESS_INTERVAL_MS");
    int ms;
    if (env && *env) {
        if (cli_parse_int(env, 0, 86400000, &ms))
            return fprintf(stderr, "aiserve batch: AISERVE_PROGRESS_INTERVAL_MS must be a number of "
                           "milliseconds\n"), -1;
        o->interval_s = ms / 1000.0;
    }
    return 0;
}

/* Opens the input and counts its lines when it is a regular file (*total
 * stays 0 and *has_total 0 for a pipe). Returns 0 or -1 (reported). */
static int input_open(const batch_opts *o, batch_reader *r, struct stat *st, size_t *total,
                      int *has_total) {
    int is_stdin = strcmp(o->input, "-") == 0;
    *r = (batch_reader){.f = is_stdin ? stdin : fopen(o->input, "rb"), .path = o->input,
                        .is_jsonl = has_suffix(o->input, ".jsonl") || has_suffix(o->input, ".json")};
    if (!r->f || fstat(fileno(r->f), st))
        return fprintf(stderr, "aiserve: %s: cannot open: %s\n", o->input, strerror(errno)), -1;
    if (S_ISDIR(st->st_mode))
        return fprintf(stderr, "aiserve: %s: is a directory\n", o->input), -1;
    *has_total = S_ISREG(st->st_mode);
    if (*has_total && count_lines(r->f, total))
        return fprintf(stderr, "aiserve: %s: cannot read: %s\n", o->input, strerror(errno)), -1;
    return 0;
}

/* Checks what is at --output before anything is computed. */
static int output_check(const batch_opts *o, const struct stat *in_st) {
    struct stat st;
    if (stat(o->output, &st))
        return errno == ENOENT ? 0
                               : (fprintf(stderr, "aiserve: %s: %s\n", o->output, strerror(errno)), -1);
    if (S_ISDIR(st.st_mode))
        return fprintf(stderr, "aiserve: %s: is a directory\n", o->output), -1;
    if (st.st_dev == in_st->st_dev && st.st_ino == in_st->st_ino)
        return fprintf(stderr, "aiserve: %s is the input too\n", o->output), -1;
    if (o->resume && !S_ISREG(st.st_mode))
        return fprintf(stderr, "aiserve: %s: --resume needs a regular file\n", o->output), -1;
    if (!o->resume && S_ISREG(st.st_mode) && st.st_size > 0)
        return fprintf(stderr, "aiserve: %s already holds results; pass --resume to continue that "
                       "run, or remove the file\n", o->output), -1;
    return 0;
}

/* Opens the output for appending after the kept results. */
static FILE *output_open(const batch_opts *o, const resume_point *rp) {
    int fd = open(o->output, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        fprintf(stderr, "aiserve: %s: cannot open: %s\n", o->output, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (S_ISREG(st.st_mode)) {
        /* Something may have written to it since output_check. */
        if (st.st_size < rp->kept_bytes || (!o->resume && st.st_size > 0)) {
            fprintf(stderr, "aiserve: %s changed while starting; not touching it\n", o->output);
            close(fd);
            return NULL;
        }
        if (ftruncate(fd, rp->kept_bytes) || lseek(fd, 0, SEEK_END) < 0) {
            fprintf(stderr, "aiserve: %s: %s\n", o->output, strerror(errno));
            close(fd);
            return NULL;
        }
    }
    FILE *f = fdopen(fd, "w");
    if (!f) {
        fprintf(stderr, "aiserve: %s: %s\n", o->output, strerror(errno));
        close(fd);
        return NULL;
    }
    /* Big enough that a batch usually leaves in one write(). */
    setvbuf(f, NULL, _IOFBF, 1 << 18);
    return f;
}

/* Flushes, syncs (regular files) and closes the output; -1 on failure
 * (reported). */
static int output_close(FILE *f, const char *path) {
    struct stat st;
    int rc = fflush(f);
    if (rc == 0 && fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode))
        rc = fsync(fileno(f));
    int err = errno;
    rc |= fclose(f);
    if (rc)
        fprintf(stderr, "aiserve: %s: cannot write: %s\n", path, strerror(err ? err : errno));
    return rc ? -1 : 0;
}

int cli_batch(int argc, char **argv) {
    batch_opts o;
    if (parse_opts(argc, argv, &o))
        return EXIT_LOAD;
    batch_reader r = {0};
    struct stat in_st;
    size_t total = 0, n_pending = 0, bs = (size_t)o.batch_size;
    int has_total = 0, status = EXIT_LOAD, mask_saved = 0;
    sigset_t old_mask;
    resume_point rp = {0};
    engine_model *m = NULL;
    FILE *out = NULL;
    batch_item *items = calloc(bs, sizeof *items);
    const char **texts = calloc(bs, sizeof *texts);
    size_t *lens = calloc(bs, sizeof *lens);
    float *logits = NULL, *probs = NULL;
    if (!items || !texts || !lens) {
        fprintf(stderr, "aiserve: out of memory\n");
        goto done;
    }
    if (input_open(&o, &r, &in_st, &total, &has_total) || output_check(&o, &in_st))
        goto done;
    if (o.resume && resume_scan(&o, &r, items, &n_pending, &rp))
        goto done;

    /* The engine's compute threads start in engine_model_load and inherit
     * this mask, so a stop signal always reaches this thread and can cut
     * short a read blocked on a pipe. */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, &old_mask);
    mask_saved = 1;
    engine_error err;
    engine_options eopts = {.n_threads = o.n_threads};
    if (engine_model_load(o.model_dir, &eopts, &m, &err)) {
        fprintf(stderr, "aiserve: %s\n", err.message);
        goto done;
    }
    const engine_model_info *info = engine_model_get_info(m);
    if (info->task != ENGINE_TASK_CLASSIFY) {
        fprintf(stderr, "aiserve: %s: %s has no classification head; batch classifies\n",
                o.model_dir, info->architecture);
        goto done;
    }
    logits = malloc(bs * (size_t)info->n_labels * sizeof *logits);
    probs = malloc(bs * (size_t)info->n_labels * sizeof *probs);
    if (!logits || !probs) {
        fprintf(stderr, "aiserve: out of memory\n");
        goto done;
    }
    if (!(out = output_open(&o, &rp)))
        goto done;

    struct sigaction sa = {.sa_handler = on_stop_signal, .sa_flags = SA_RESETHAND},
                     old_int, old_term;
    sigemptyset(&sa.sa_mask);
    stop_signal = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    mask_saved = 0;

    progress p = {.is_tty = isatty(STDERR_FILENO), .has_total = has_total, .total = total,
                  .first = rp.n_kept, .t_start = now_s()};
    p.interval_s = o.interval_s >= 0 ? o.interval_s : p.is_tty ? 0.1 : 2.0;
    p.t_next = p.t_start + p.interval_s;
    size_t done = rp.n_kept, n_errors = rp.n_errors;
    int at_end = 0;
    status = 0;
    while (!at_end && !stop_signal) {
        size_t n = n_pending;
        n_pending = 0;
        while (n < bs) {
            int got = reader_next(&r, &items[n]);
            if (got < 0)
                status = EXIT_LOAD;
            if (got <= 0)
                break;
            n++;
        }
        /* Stopped while reading: the part of a batch read so far is dropped
         * (a resume reads it again). */
        if (status || stop_signal)
            break;
        at_end = n < bs;
        if (n == 0)
            break;
        if (batch_classify(m, items, n, texts, lens, logits, probs)) {
            status = EXIT_LOAD;
            break;
        }
        if (batch_write(out, m, items, n, done, logits, probs, &n_errors)) {
            fprintf(stderr, "aiserve: %s: cannot write: %s\n", o.output, strerror(errno));
            status = EXIT_LOAD;
            break;
        }
        done += n;
        progress_show(&p, done, 0);
    }
    if (output_close(out, o.output))
        status = EXIT_LOAD;
    out = NULL;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);

    if (status == 0 && stop_signal && !at_end) {
        progress_end_line(&p);
        fprintf(stderr, "batch: interrupted after %zu texts; run the same command with --resume "
                "to continue\n", done);
        status = EXIT_INTERRUPTED;
    } else if (status == 0) {
        if (p.is_tty)
            progress_show(&p, done, 1);
        progress_end_line(&p);
        double elapsed = now_s() - p.t_start;
        char srate[32], resumed[64] = "";
        format_rate(srate, sizeof srate, elapsed > 0 ? (double)(done - p.first) / elapsed : 0);
        if (o.resume)
            snprintf(resumed, sizeof resumed, ", resumed at %zu", p.first);
        fprintf(stderr, "batch: done, %zu texts, %zu errors, %.1f s, %s%s\n", done, n_errors,
                elapsed, srate, resumed);
        status = n_errors ? EXIT_INPUT : 0;
    } else {
        progress_end_line(&p);
    }

done:
    if (mask_saved)
        pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    if (out)
        fclose(out);
    if (r.f && r.f != stdin)
        fclose(r.f);
    free(r.line);
    for (size_t i = 0; items && i < bs; i++)
        item_clear(&items[i]);
    free(items);
    free(texts);
    free(lens);
    free(logits);
    free(probs);
    engine_model_free(m);
    return status;
}
