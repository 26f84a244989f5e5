/*
 * batch.c - `aiserve batch`: a file of texts through the serving layer,
 * without a server, into a JSON-lines file that an interrupted run can
 * resume.
 *
 *   aiserve batch --model DIR|NAME --input in.jsonl|in.txt --output out.jsonl
 *                 [--version V] [--resume] [--batch-size N] [--threads N]
 *                 [any `aiserve serve` setting: --config FILE, --cascade ...]
 *
 * Design:
 *  - Every text goes through serving_predict, as an HTTP request or a batch
 *    job does, so the model's serving policy applies: --model DIR (a Hugging
 *    Face directory) is served as the one version of one model; --model NAME
 *    is a model of the repository (models.repository), whose version is
 *    chosen once for the run as a batch job's is (--version, else its
 *    cascade's first version, else its traffic split's, else the newest),
 *    with its cascade (models.cascade) and shadow (models.shadow). The
 *    settings come from the same flags, environment and --config file as
 *    `aiserve serve` (core.h); flags this file does not know go there.
 *  - Input line i (0-based, every line counts) gives output line i, in
 *    order: {"index": i, ["id": ...,] then predict's result fields
 *    [, "model_version": V]} or {"index": i, ["id": ...,] "error": "..."}.
 *    The result fields come from cli_prediction_set and are written by
 *    cli_write_json, so they are the bytes `aiserve predict` prints for the
 *    same model. "model_version" (NAME runs only) is the version that
 *    answered the text: the cascade's second when the text was escalated.
 *    An input named *.jsonl or *.json holds one JSON string or {"text": ...,
 *    "id": ...} per line; any other name (and "-", stdin) holds one text per
 *    line. Lines are read with getline: any length, any bytes.
 *  - Batch b always covers input lines [b*N, (b+1)*N) for --batch-size N,
 *    after a resume too: each batch is one request, alone in the version's
 *    queue, and the scheduler's max_batch_size is N, so every text is
 *    computed in the same engine batch as in an uninterrupted run and the
 *    output is the same bytes. A batch's lines are written and flushed
 *    together; a kill loses at most that batch.
 *  - --resume reads the output back: its complete lines must be results 0..K-1
 *    of this input (index in order, id equal to the input's); a torn last
 *    line is dropped and the file is cut back to the last batch boundary at
 *    or below K, from which the run goes on. A NAME run without --version
 *    goes on with the version the kept results were first answered by (the
 *    cascade's first when the kept line was escalated), so a traffic split
 *    cannot switch versions halfway.
 *  - Whatever can be checked without the model (arguments, input, output,
 *    the resume prefix) is checked before it loads.
 *  - Progress goes to stderr: a bar redrawn in place on a terminal, else one
 *    line every AISERVE_PROGRESS_INTERVAL_MS (default 2000); then a summary
 *    (with the cascade's escalations and the shadow's agreement).
 *  - The server's JSON log is off unless --log-level is given (then it goes
 *    to stderr): this command reports on stderr itself.
 *
 * Threads: the calling thread waits for each batch; serving's loader,
 * batcher and compute threads do the work. SIGINT and SIGTERM stop the run
 * after the batch in flight (a second one kills).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
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
#include "obs.h"

enum { EXIT_INTERRUPTED = 130 };

static void usage(FILE *out) {
    fputs("usage: aiserve batch --model DIR|NAME --input FILE --output FILE.jsonl [--version V]\n"
          "                     [--resume] [--batch-size N] [--threads N] [SETTINGS]\n"
          "\n"
          "Classifies every line of FILE and writes one JSON line per input line, in order:\n"
          "  {\"index\": i, \"id\": ..., \"label\", \"confidence\", \"probs\", \"logits\"}\n"
          "or {\"index\": i, \"id\": ..., \"error\": \"...\"} for a line that has no result\n"
          "(an empty text, malformed JSON, invalid UTF-8). i is the 0-based line number;\n"
          "\"id\" is there when the input line has one. With --model NAME each result also\n"
          "has \"model_version\", the version that answered it.\n"
          "\n"
          "options:\n"
          "  --model DIR|NAME   a Hugging Face classifier directory (a path, or a directory\n"
          "                     with config.json), or the name of a model in the model\n"
          "                     repository, served as the server would: its version chosen\n"
          "                     once for the run (its cascade's first, else its traffic\n"
          "                     split's, else the newest), with its cascade and shadow\n"
          "  --version V        NAME only: this version number or alias\n"
          "  --input FILE       *.jsonl or *.json: one JSON string or {\"text\": ..., \"id\": ...}\n"
          "                     per line; any other name: one text per line ('-' is stdin)\n"
          "  --output FILE      JSON-lines results; must not exist or be empty, unless --resume\n"
          "  --resume           continue an interrupted run: keep the results already in\n"
          "                     --output (a torn last line is dropped) and append the rest\n"
          "  --batch-size N     texts per forward pass (default 32; resume with the same N)\n"
          "  --threads N        compute threads (default: models.engine_threads, else the\n"
          "                     number of CPUs)\n"
          "  SETTINGS           any setting of `aiserve serve` (see aiserve serve --help):\n"
          "                     --config FILE, --model-repository DIR, --version-policy P,\n"
          "                     --traffic, --cascade, --shadow, --log-level (the server log\n"
          "                     is off unless given), ...; the environment and the config\n"
          "                     file apply as for the server\n"
          "\n"
          "Progress goes to stderr: a bar on a terminal, else a line every 2 s\n"
          "(AISERVE_PROGRESS_INTERVAL_MS sets the interval in ms; 0 is every batch).\n"
          "exit status: 0 ok, 1 some line got an error result, 2 usage, file or model load\n"
          "error, 130 interrupted (run again with --resume)\n",
          out);
}

typedef struct batch_opts {
    const char *model, *input, *output;
    const char *version;  /* --version, or NULL */
    int model_is_dir;     /* --model names a Hugging Face directory, not a repository's model */
    int resume, batch_size, n_threads; /* n_threads 0: the configuration's */
    double interval_s;    /* < 0: the default for the kind of stderr */
    int log_level_given;  /* --log-level among the settings */
    /* The arguments that are `aiserve serve` settings, for core_config_load. */
    int n_settings;
    char **settings;
} batch_opts;

/* One input line on its way to its output line. */
typedef struct batch_item {
    char *text;      /* owned; NULL when the line never reaches the engine */
    size_t len;
    json_t *id;      /* owned reference, or NULL */
    json_t *result;  /* owned: the prediction's fields, once computed */
    char error[512]; /* non-empty: the line's result is this error */
} batch_item;

static void item_clear(batch_item *it) {
    free(it->text);
    json_decref(it->id);
    json_decref(it->result);
    it->text = NULL;
    it->len = 0;
    it->id = NULL;
    it->result = NULL;
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
    long version;     /* "model_version" of the first kept result that has one; 0: none */
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
    long version = 0;
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
        json_t *mv = json_object_get(res, "model_version");
        if (version == 0 && json_is_integer(mv) && json_integer_value(mv) > 0)
            version = (long)json_integer_value(mv);
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
    rp->version = rp->n_kept ? version : 0;
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

/* The run's serving side: the repository, the pinned version, and one
 * request in flight at a time. */
typedef struct batch_run {
    serving_repo *repo;
    const char *model;        /* the model's name in the repository */
    long version;             /* the run's version: every request pins it */
    int show_version;         /* NAME runs: "model_version" in each result */
    serving_cascade cascade;  /* as resolved (first 0: none) */
    serving_shadow shadow;    /* the same */
    size_t n_escalated, n_shadowed;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done;                 /* the request in flight called back */
} batch_run;

static void on_request_done(serving_request *r, void *user) {
    (void)r;
    batch_run *b = user;
    pthread_mutex_lock(&b->lock);
    b->done = 1;
    pthread_cond_signal(&b->cond);
    pthread_mutex_unlock(&b->lock);
}

/* Runs n texts as one request and waits for it. Returns its status (0 or a
 * negative serving_status, with req->error); the caller finis req. */
static int run_request(batch_run *b, serving_request *req, const char *const *texts, const size_t *lens, size_t n) {
    serving_request_init(req);
    req->model = b->model;
    req->version = b->version;
    req->task = SERVING_TASK_CLASSIFY;
    req->allow_cascade = 1;
    req->allow_shadow = 1;
    req->want_logits = 1;
    req->texts = texts;
    req->lens = lens;
    req->n = n;
    req->on_done = on_request_done;
    req->user = b;
    b->done = 0;
    if (serving_predict(b->repo, req) != 0)
        return req->status;
    pthread_mutex_lock(&b->lock);
    while (!b->done)
        pthread_cond_wait(&b->cond, &b->lock);
    pthread_mutex_unlock(&b->lock);
    b->n_escalated += req->n_escalated;
    b->n_shadowed += req->n_shadowed;
    return req->status;
}

/* Puts the request's answers into the items that have a text, in order.
 * -1 when out of memory. */
static int take_results(const batch_run *b, const serving_request *req, batch_item *items, size_t n) {
    for (size_t i = 0, j = 0; i < n; i++) {
        if (!items[i].text)
            continue;
        const serving_text_result *t = &req->results[j++];
        const int K = serving_version_info(t->version)->n_labels;
        const char *label = serving_version_label(t->version, cli_argmax(t->logits, K));
        items[i].result = cli_prediction_set(json_object(), label ? label : "", K, t->logits, t->probs);
        if (!items[i].result)
            return -1;
        if (b->show_version)
            json_object_set_new(items[i].result, "model_version", json_integer(serving_version_number(t->version)));
    }
    return 0;
}

/* Classifies the items that have a text, as one request. When serving
 * refuses the batch for its input (invalid UTF-8), each text goes alone, so
 * the one at fault gets the message as its error and the others still get
 * results. Returns 0, or -1 after a failure that is not the input's
 * (reported). */
static int batch_predict(batch_run *b, batch_item *items, size_t n, const char **texts, size_t *lens) {
    size_t n_texts = 0;
    for (size_t i = 0; i < n; i++)
        if (items[i].text) {
            texts[n_texts] = items[i].text;
            lens[n_texts++] = items[i].len;
        }
    if (n_texts == 0)
        return 0;
    serving_request req;
    int rc = run_request(b, &req, texts, lens, n_texts);
    if (rc == 0 && take_results(b, &req, items, n) != 0)
        rc = SERVING_ENOMEM;
    for (size_t i = 0; rc == SERVING_EINPUT && i < n; i++) {
        if (!items[i].text)
            continue;
        serving_request_fini(&req);
        const char *text = items[i].text;
        rc = run_request(b, &req, &text, &items[i].len, 1);
        if (rc == SERVING_EINPUT)
            item_fail(&items[i], "%s", req.error);
        else if (rc == 0 && take_results(b, &req, &items[i], 1) != 0)
            rc = SERVING_ENOMEM;
        rc = rc == 0 ? SERVING_EINPUT : rc; /* go on with the next text */
    }
    if (rc == SERVING_EINPUT)
        rc = 0;
    if (rc)
        fprintf(stderr, "aiserve: %s\n", req.error[0] ? req.error : serving_status_message(rc));
    serving_request_fini(&req);
    return rc ? -1 : 0;
}

/* Writes the batch's result lines, items[i] being input line first + i.
 * Returns 0 or -1 when the output cannot be written. */
static int batch_write(FILE *out, const batch_item *items, size_t n, size_t first, size_t *n_errors) {
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "index", json_integer((json_int_t)(first + i)));
        if (items[i].id)
            json_object_set(o, "id", items[i].id);
        if (items[i].error[0]) {
            json_object_set_new(o, "error", json_string(items[i].error));
            ++*n_errors;
        } else {
            json_object_update(o, items[i].result);
        }
        rc |= cli_write_json(out, o);
    }
    return rc | fflush(out);
}

/* 1 when the `aiserve serve` setting written as arg (no '=' in it) takes
 * the next argument as its value, as core_config_load reads flags. */
static int setting_takes_next(const char *arg, const char *next) {
    if (!next)
        return 0;
    if (strcmp(arg, "--config") == 0)
        return strncmp(next, "--", 2) != 0;
    for (size_t i = 0; i < core_config_n_settings(); i++) {
        core_setting_info info;
        if (core_config_setting_info(i, &info) != 0 || strcmp(info.flag, arg) != 0)
            continue;
        int ignored;
        if (strcmp(info.type, "bool") == 0)
            return core_parse_bool(next, &ignored) == 0;
        return strncmp(next, "--", 2) != 0;
    }
    if (strncmp(arg, "--no-", 5) == 0)
        return 0;
    return strncmp(next, "--", 2) != 0; /* unknown: core_config_load reports it, value and all */
}

/* Takes this command's own options out of argv and leaves the rest, the
 * `aiserve serve` settings, in o->settings (in order). */
static int parse_opts(int argc, char **argv, batch_opts *o) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"input", required_argument, 0, 'i'},
        {"output", required_argument, 0, 'o'},     {"resume", no_argument, 0, 'r'},
        {"batch-size", required_argument, 0, 'b'}, {"threads", required_argument, 0, 't'},
        {"version", required_argument, 0, 'v'},    {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    *o = (batch_opts){.batch_size = 32, .interval_s = -1};
    /* Split: ours into `own` (argv[0] first, for getopt), the rest into settings. */
    char **own = calloc((size_t)argc + 1, sizeof *own);
    o->settings = calloc((size_t)argc + 1, sizeof *o->settings);
    if (!own || !o->settings)
        return free(own), fprintf(stderr, "aiserve: out of memory\n"), -1;
    int n_own = 0;
    own[n_own++] = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        size_t flag_len = strcspn(arg, "=");
        const struct option *mine = NULL;
        for (const struct option *p = opts; p->name && strncmp(arg, "--", 2) == 0; p++)
            if (strlen(p->name) == flag_len - 2 && strncmp(arg + 2, p->name, flag_len - 2) == 0)
                mine = p;
        if (mine || strcmp(arg, "-h") == 0 || strncmp(arg, "--", 2) != 0) {
            own[n_own++] = argv[i];
            if (mine && mine->has_arg && !arg[flag_len] && i + 1 < argc)
                own[n_own++] = argv[++i];
            continue;
        }
        char flag[128];
        snprintf(flag, sizeof flag, "%.*s", (int)(flag_len < 100 ? flag_len : 100), arg);
        o->log_level_given |= strcmp(flag, "--log-level") == 0;
        o->settings[o->n_settings++] = argv[i];
        if (!arg[flag_len] && setting_takes_next(flag, i + 1 < argc ? argv[i + 1] : NULL))
            o->settings[o->n_settings++] = argv[++i];
    }
    int c, rc = 0;
    optind = 1;
    opterr = 0;
    while (rc == 0 && (c = getopt_long(n_own, own, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            o->model = optarg;
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
        case 'v':
            o->version = optarg;
            break;
        case 'b':
            if (cli_parse_int(optarg, 1, 4096, &o->batch_size))
                rc = (fprintf(stderr, "aiserve batch: --batch-size must be 1..4096\n"), -1);
            break;
        case 't':
            if (cli_parse_int(optarg, 1, 256, &o->n_threads))
                rc = (fprintf(stderr, "aiserve batch: --threads must be 1..256\n"), -1);
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case ':':
            rc = (fprintf(stderr, "aiserve batch: %s needs a value\n", own[optind - 1]), -1);
            break;
        default:
            rc = (fprintf(stderr, "aiserve batch: unknown option %s (see aiserve batch --help)\n",
                         own[optind - 1]), -1);
        }
    }
    if (rc == 0 && optind < n_own)
        rc = (fprintf(stderr, "aiserve batch: unexpected argument '%s' (texts come from --input)\n",
                     own[optind]), -1);
    free(own);
    if (rc)
        return rc;
    if (!o->model || !o->input || !o->output)
        return fprintf(stderr, "aiserve batch: needs --model DIR|NAME, --input FILE and --output FILE "
                       "(see aiserve batch --help)\n"), -1;
    if (strcmp(o->output, "-") == 0)
        return fprintf(stderr, "aiserve batch: --output must be a file (--resume reads it back)\n"), -1;
    /* A path, or a directory holding a Hugging Face model: that model alone. */
    char cfg[4096];
    snprintf(cfg, sizeof cfg, "%s/config.json", o->model);
    o->model_is_dir = strchr(o->model, '/') != NULL || access(cfg, F_OK) == 0;
    if (o->model_is_dir && o->version)
        return fprintf(stderr, "aiserve batch: --version needs --model NAME, a model of the repository; "
                       "%s is a model directory\n", o->model), -1;
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

/* Why model's versions are not available, from the repository's list (the
 * load error of the newest failed version), into why; 0 when none failed. */
static int load_failure(serving_repo *repo, const char *model, char *why, size_t cap) {
    serving_version_status *list = NULL;
    size_t n = 0;
    int found = 0;
    if (serving_repo_list(repo, &list, &n) != 0)
        return 0;
    for (size_t i = n; i-- > 0 && !found;)
        if (strcmp(list[i].model, model) == 0 && list[i].state == SERVING_STATE_FAILED && list[i].error[0])
            found = snprintf(why, cap, "%s", list[i].error) > 0;
    free(list);
    return found;
}

/* Loads the model as the settings say and fixes the run's version (batch.c's
 * design). Returns 0, or -1 after reporting why. Signals are blocked: the
 * threads serving starts inherit that. */
static int run_open(batch_run *b, const batch_opts *o, const core_config *cfg, const resume_point *rp,
                    metrics_registry *metrics) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    serving_options so = {
        .repository = cfg->model_repository,
        .model_dir = o->model_is_dir ? o->model : NULL,
        .default_model = o->model_is_dir ? NULL : cfg->default_model,
        .engine_threads = o->n_threads ? o->n_threads : cfg->engine_threads ? cfg->engine_threads
                                                        : cpus > 0 && cpus <= 256 ? (int)cpus : 1,
        .max_batch_size = o->batch_size,
        .max_queue_delay_us = 0,
        .max_queue_size = o->batch_size,
        .version_policy = o->model_is_dir ? NULL : cfg->version_policy,
        .quantization = cfg->quantization,
    };
    serving_error err = {0};
    char why[512];
    if (serving_repo_create(&so, metrics, &b->repo, &err) != 0)
        return fprintf(stderr, "aiserve: %s\n", err.message), -1;
    if (!o->model_is_dir && cli_apply_policy(b->repo, cfg, why, sizeof why) != 0)
        return fprintf(stderr, "aiserve: %s\n", why), -1;
    if (serving_repo_start(b->repo) != 0)
        return fprintf(stderr, "aiserve: out of memory\n"), -1;
    while (!serving_repo_is_settled(b->repo))
        nanosleep(&(struct timespec){.tv_nsec = 5000000}, NULL);
    b->model = o->model_is_dir ? serving_repo_default_model(b->repo) : o->model;
    b->show_version = !o->model_is_dir;

    /* The run's version: as asked; on a resume, the one the kept results
     * were answered by (a cascade's first for an escalated one). */
    serving_request req;
    serving_request_init(&req);
    req.model = b->model;
    req.version_ref = o->version;
    req.task = SERVING_TASK_CLASSIFY;
    req.allow_cascade = 1;
    serving_cascade c = {0};
    if (!o->version && rp->version > 0) {
        serving_get_cascade(b->repo, b->model, &c);
        req.version = c.first && rp->version == c.then ? c.first : rp->version;
    }
    int rc = serving_resolve(b->repo, &req, &err);
    if (rc != 0) {
        if (rc == SERVING_ENOTREADY && load_failure(b->repo, b->model, why, sizeof why))
            fprintf(stderr, "aiserve: %s\n", why);
        else if (rc == SERVING_EUNSUPPORTED)
            fprintf(stderr, "aiserve: %s (batch classifies)\n", err.message);
        else
            fprintf(stderr, "aiserve: %s%s\n", err.message,
                    req.version ? " (the version the results already in --output came from)" : "");
        return -1;
    }
    b->version = serving_version_number(req.first);
    b->cascade = req.cascade;
    b->shadow = req.shadow;
    serving_request_fini(&req);
    if (b->show_version) {
        char extra[256] = "";
        size_t at = 0;
        if (b->cascade.first)
            at += (size_t)snprintf(extra + at, sizeof extra - at, ", cascade to version %ld below %g",
                                   b->cascade.then, b->cascade.threshold);
        if (b->shadow.version && b->shadow.version != b->version)
            snprintf(extra + at, sizeof extra - at, ", shadow version %ld for %d%%", b->shadow.version,
                     b->shadow.percent);
        fprintf(stderr, "batch: model %s version %ld%s\n", b->model, b->version, extra);
    }
    return 0;
}

/* Waits for the shadow copies sent to be compared (or a stop signal), then
 * puts the comparison into line. */
static void shadow_report(batch_run *b, char *line, size_t cap) {
    serving_shadow_tally t;
    for (;;) {
        serving_shadow_tally_get(b->repo, b->model, b->shadow.version, &t);
        if (t.agree + t.disagree + t.error >= (double)b->n_shadowed || stop_signal)
            break;
        nanosleep(&(struct timespec){.tv_nsec = 5000000}, NULL);
    }
    double compared = t.agree + t.disagree;
    snprintf(line, cap, "batch: shadow version %ld agreed on %.0f of %.0f texts (%.1f%%)%s\n", b->shadow.version,
             t.agree, compared, compared > 0 ? 100 * t.agree / compared : 0.0,
             t.error > 0 ? "; some copies failed" : "");
}

int cli_batch(int argc, char **argv) {
    batch_opts o;
    core_config cfg;
    core_error cerr;
    if (parse_opts(argc, argv, &o)) {
        free(o.settings);
        return EXIT_LOAD;
    }
    extern char **environ;
    int cfg_rc = core_config_load(&cfg, o.n_settings, o.settings, environ, NULL, &cerr);
    free(o.settings);
    if (cfg_rc != 0) {
        fprintf(stderr, "aiserve batch: %s\n", cerr.message);
        return EXIT_LOAD;
    }
    batch_reader r = {0};
    struct stat in_st;
    size_t total = 0, n_pending = 0, bs = (size_t)o.batch_size;
    int has_total = 0, status = EXIT_LOAD, mask_saved = 0;
    sigset_t old_mask;
    resume_point rp = {0};
    batch_run b = {0};
    pthread_mutex_init(&b.lock, NULL);
    pthread_cond_init(&b.cond, NULL);
    metrics_registry *metrics = metrics_registry_create();
    int devnull = -1;
    FILE *out = NULL;
    batch_item *items = calloc(bs, sizeof *items);
    const char **texts = calloc(bs, sizeof *texts);
    size_t *lens = calloc(bs, sizeof *lens);
    if (!items || !texts || !lens || !metrics) {
        fprintf(stderr, "aiserve: out of memory\n");
        goto done;
    }
    if (input_open(&o, &r, &in_st, &total, &has_total) || output_check(&o, &in_st))
        goto done;
    if (o.resume && resume_scan(&o, &r, items, &n_pending, &rp))
        goto done;

    /* Serving's threads start in run_open and inherit this mask, so a stop
     * signal always reaches this thread and can cut short a read blocked on
     * a pipe. */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, &old_mask);
    mask_saved = 1;
    if (o.log_level_given) {
        log_set_output(STDERR_FILENO);
        log_set_level((log_level)cfg.log_level);
    } else if ((devnull = open("/dev/null", O_WRONLY | O_CLOEXEC)) >= 0) {
        log_set_output(devnull);
    }
    if (run_open(&b, &o, &cfg, &rp, metrics))
        goto done;
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
        if (batch_predict(&b, items, n, texts, lens)) {
            status = EXIT_LOAD;
            break;
        }
        if (batch_write(out, items, n, done, &n_errors)) {
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
    char shadow_line[256] = "";
    if (status == 0 && b.n_shadowed && !stop_signal)
        shadow_report(&b, shadow_line, sizeof shadow_line);
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
        if (b.cascade.first)
            fprintf(stderr, "batch: cascade sent %zu of %zu texts to version %ld\n", b.n_escalated,
                    done - p.first, b.cascade.then);
        fputs(shadow_line, stderr);
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
    serving_repo_destroy(b.repo);
    metrics_registry_destroy(metrics);
    pthread_mutex_destroy(&b.lock);
    pthread_cond_destroy(&b.cond);
    if (devnull >= 0) {
        log_set_output(STDOUT_FILENO);
        close(devnull);
    }
    return status;
}
