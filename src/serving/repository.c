/*
 * repository.c - the model repository: finds <repository>/<model>/<version>/
 * directories, loads the newest version of each model on a loader thread,
 * and hands out counted references to loaded versions.
 *
 * Design:
 *  - serving_repo_create only scans: model names must be 1-127 characters of
 *    [A-Za-z0-9._-] not starting with '.', versions positive decimal
 *    integers; anything else in the directory is ignored (and logged).
 *  - The loader thread loads, for each model, its newest version; when that
 *    fails (bad files, failed warm-up) the failure is kept with its message
 *    and the next older version is tried. A version serves only after it
 *    loaded and answered a warm-up batch.
 *  - The repository holds one reference to each version; serving_acquire
 *    adds one under the lock, serving_version_release drops one, and the
 *    last release frees the engine model and stops its scheduler. Nothing
 *    is freed while a request holds it.
 *
 * Threads: all functions from any thread; state under repo->lock.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <sys/stat.h>

#include <openssl/evp.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "serving_int.h"

typedef struct repo_model {
    char name[128];
    serving_version *versions; /* newest first */
    serving_split split;       /* under the repository lock */
    serving_alias aliases[SERVING_MAX_ALIASES]; /* the same */
    serving_shadow shadow;     /* the same */
    serving_cascade cascade;   /* the same */
    size_t n_aliases;
    struct repo_model *next;
} repo_model;

#define SERVING_MAX_SPECIFIC 64

struct serving_repo {
    serving_options opts;
    /* The version policy: the `latest` newest (0 with n_specific 0: all),
     * or the specific versions listed. */
    int latest;
    long specific[SERVING_MAX_SPECIFIC];
    size_t n_specific;
    char repository[4096];
    char default_model[128];
    char quantization[2048];  /* serving_options.quantization, checked */
    metrics_registry *metrics;
    metric_family *f_queue_depth, *f_queue_wait, *f_batch_size, *f_inference, *f_tokens,
        *f_batches, *f_timeouts, *f_predictions, *f_confidence, *f_state, *f_load_seconds;
    metric_family *f_cascade, *f_shadow; /* counted by predict.c */

    pthread_mutex_t lock;
    repo_model *models; /* sorted by name */
    int loader_started, settled, stop;
    int kicked;                /* the admin API asked the watcher to look now */
    int single;                /* serving_options.model_dir: nothing to scan */
    pthread_t loader;
    pthread_cond_t wake;       /* the loader's poll wait; signalled at stop */
};

static const status_row status_rows[] = {SERVING_STATUS_MAP(STATUS_TABLE_ROW)};

const char *serving_status_name(int status) {
    return status_name(status_rows, STATUS_COUNT(status_rows), status, "SERVING_UNKNOWN");
}
const char *serving_status_message(int status) {
    return status_message(status_rows, STATUS_COUNT(status_rows), status);
}

const char *serving_state_name(serving_state s) {
    switch (s) {
    case SERVING_STATE_LOADING: return "loading";
    case SERVING_STATE_AVAILABLE: return "available";
    case SERVING_STATE_UNLOADING: return "unloading";
    case SERVING_STATE_FAILED: return "failed";
    }
    return "unknown";
}

int serving_error_set(serving_error *err, int status, const char *fmt, ...) {
    if (err) {
        err->status = status;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return status;
}

static int is_hidden(const struct serving_version *v);
static repo_model *find_model_locked(serving_repo *r, const char *name);

static int valid_model_name(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n >= 128 || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
            return 0;
    return 1;
}

/* A positive decimal integer without sign or leading zeros; 0 otherwise. */
/* A version number at the start of s ("12," -> 12, *end at ','): digits
 * only, no leading zero, at most 18 of them; 0 when there is none. */
static long parse_version_prefix(const char *s, char **end) {
    size_t n = strspn(s, "0123456789");
    *end = (char *)s + n;
    if (n == 0 || n > 18 || s[0] == '0')
        return 0;
    return strtol(s, NULL, 10);
}

static long parse_version(const char *s) {
    if (!s[0] || s[0] == '0' || strlen(s) > 9)
        return 0;
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        v = v * 10 + (*p - '0');
    }
    return v;
}

static int is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static void set_state_metric(serving_repo *r, serving_version *v) {
    char ver[32];
    snprintf(ver, sizeof ver, "%ld", v->number);
    static const serving_state states[] = {SERVING_STATE_LOADING, SERVING_STATE_AVAILABLE,
                                           SERVING_STATE_UNLOADING, SERVING_STATE_FAILED};
    for (size_t i = 0; i < 4; i++) {
        const char *labels[] = {v->model, ver, serving_state_name(states[i])};
        metric *m = metric_series(r->f_state, labels);
        if (m)
            metric_set(m, v->state == states[i] ? 1.0 : 0.0);
    }
}

static void free_models(serving_repo *r) {
    repo_model *m = r->models;
    while (m) {
        repo_model *next = m->next;
        serving_version *v = m->versions;
        while (v) {
            serving_version *vn = v->next;
            serving_version_release(v);
            v = vn;
        }
        free(m);
        m = next;
    }
    r->models = NULL;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds version `number` in directory dir to m, keeping newest first (a
 * path too long is skipped). 0 or SERVING_ENOMEM. */
static int add_version(serving_repo *r, repo_model *m, long number, const char *dir) {
    serving_version *v = calloc(1, sizeof *v);
    if (!v)
        return SERVING_ENOMEM;
    atomic_init(&v->refs, 1);
    v->repo = r;
    snprintf(v->model, sizeof v->model, "%s", m->name);
    v->number = number;
    if ((size_t)snprintf(v->dir, sizeof v->dir, "%.4000s", dir) >= sizeof v->dir) {
        free(v);
        return 0;
    }
    v->state = SERVING_STATE_LOADING;
    serving_version **pp = &m->versions;
    while (*pp && (*pp)->number > number)
        pp = &(*pp)->next;
    v->next = *pp;
    *pp = v;
    return 0;
}

/* Adds the versions of one model directory, newest first. */
static int scan_model(serving_repo *r, const char *name, repo_model **out) {
    char path[4096 + 256];
    snprintf(path, sizeof path, "%s/%s", r->repository, name);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    repo_model *m = calloc(1, sizeof *m);
    if (!m) {
        closedir(d);
        return SERVING_ENOMEM;
    }
    snprintf(m->name, sizeof m->name, "%s", name);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        long number = parse_version(e->d_name);
        char vdir[sizeof path + 32];
        if (number <= 0 || (size_t)snprintf(vdir, sizeof vdir, "%s/%s", path, e->d_name) >= sizeof vdir ||
            !is_dir(vdir))
            continue;
        if (add_version(r, m, number, vdir) != 0) {
            closedir(d);
            *out = m;
            return SERVING_ENOMEM;
        }
    }
    closedir(d);
    *out = m;
    return 0;
}

/* The repository of serving_options.model_dir: one model, version 1. */
static int single_model(serving_repo *r, const char *dir, repo_model **out) {
    repo_model *m = *out = calloc(1, sizeof *m);
    if (!m)
        return SERVING_ENOMEM;
    snprintf(m->name, sizeof m->name, "%s", r->default_model);
    return add_version(r, m, 1, dir);
}

/* Parses a version policy (serving.h) into r. 0, or -1 with err set. */
static int parse_policy(serving_repo *r, const char *text, serving_error *err) {
    r->latest = 1;
    r->n_specific = 0;
    if (!text || !*text || strcmp(text, "latest") == 0)
        return 0;
    if (strcmp(text, "all") == 0) {
        r->latest = 0;
        return 0;
    }
    char *end;
    if (strncmp(text, "latest:", 7) == 0) {
        long n = parse_version_prefix(text + 7, &end);
        if (n >= 1 && n <= 1000 && !*end) {
            r->latest = (int)n;
            return 0;
        }
    } else if (strncmp(text, "specific:", 9) == 0) {
        const char *p = text + 9;
        r->latest = 0;
        for (;;) {
            long v = parse_version_prefix(p, &end);
            if (v <= 0 || r->n_specific == SERVING_MAX_SPECIFIC || (*end && *end != ','))
                break;
            r->specific[r->n_specific++] = v;
            if (!*end)
                return 0;
            p = end + 1;
        }
        r->n_specific = 0;
    }
    r->latest = 1;
    return serving_error_set(err, SERVING_EINPUT,
                             "version policy '%.100s': write latest, latest:N, all, or specific:1,3 (at most %d "
                             "versions)", text, SERVING_MAX_SPECIFIC), -1;
}

/* Whether the loader should try v, given what it tried and loaded so far. */
static int policy_wants(const serving_repo *r, const serving_version *v, int attempted, int loaded) {
    if (r->n_specific) {
        for (size_t i = 0; i < r->n_specific; i++)
            if (r->specific[i] == v->number)
                return 1;
        return 0;
    }
    if (r->latest == 0) /* all */
        return 1;
    return attempted < r->latest || loaded == 0;
}

/* One entry of serving_options.quantization (e[0..n)): MODE, MODEL=MODE or
 * MODEL@VERSION=MODE. Fills model ("" for every model), *version (0 for
 * every version) and *mode; 0, or -1 when malformed. */
static int quant_entry(const char *e, size_t n, char model[128], long *version, engine_quantization *mode) {
    char item[256];
    if (n >= sizeof item)
        return -1;
    memcpy(item, e, n);
    item[n] = '\0';
    char *eq = strrchr(item, '='), *name = eq ? item : NULL;
    engine_error err;
    if (engine_quantization_parse(eq ? eq + 1 : item, mode, &err) != 0)
        return -1;
    model[0] = '\0';
    *version = 0;
    if (!name)
        return 0;
    *eq = '\0';
    char *at = strchr(name, '@');
    if (at) {
        *at = '\0';
        char *end;
        *version = strtol(at + 1, &end, 10);
        if (end == at + 1 || *end || *version <= 0)
            return -1;
    }
    size_t len = strlen(name);
    if (len == 0 || len >= 128)
        return -1;
    memcpy(model, name, len + 1);
    return 0;
}

/* The quantization for a version: the most specific entry that matches
 * (MODEL@VERSION, then MODEL, then a bare MODE), else none. */
static engine_quantization quant_for(const serving_repo *r, const char *model, long version) {
    engine_quantization best = ENGINE_QUANT_NONE, mode;
    int best_rank = 0;
    for (const char *p = r->quantization; *p;) {
        size_t n = strcspn(p, ",");
        char name[128];
        long v;
        size_t lead = strspn(p, " ");
        if (n > lead && quant_entry(p + lead, n - lead, name, &v, &mode) == 0) {
            int rank = !name[0] ? 1 : v == 0 ? (strcmp(name, model) == 0 ? 2 : 0)
                                              : (strcmp(name, model) == 0 && v == version ? 3 : 0);
            if (rank > best_rank) {
                best_rank = rank;
                best = mode;
            }
        }
        p += n + (p[n] == ',');
    }
    return best;
}

int serving_repo_create(const serving_options *opts, metrics_registry *metrics,
                        serving_repo **out, serving_error *err) {
    *out = NULL;
    serving_repo *r = calloc(1, sizeof *r);
    if (!r)
        return serving_error_set(err, SERVING_ENOMEM, "out of memory");
    r->opts = *opts;
    r->opts.version_policy = NULL;
    if (parse_policy(r, opts->version_policy, err) != 0) {
        free(r);
        return SERVING_EINPUT;
    }
    const char *q = opts->quantization ? opts->quantization : "";
    if (strlen(q) >= sizeof r->quantization) {
        free(r);
        return serving_error_set(err, SERVING_EINPUT, "the quantization list is too long");
    }
    for (const char *p = q; *p;) {
        size_t n = strcspn(p, ","), lead = strspn(p, " ");
        char name[128];
        long v;
        engine_quantization mode;
        if (n <= lead || quant_entry(p + lead, n - lead, name, &v, &mode) != 0) {
            free(r);
            return serving_error_set(err, SERVING_EINPUT,
                                     "quantization entry '%.*s' is not MODE, MODEL=MODE or MODEL@VERSION=MODE "
                                     "with MODE none, bf16 or int8", (int)(n > 100 ? 100 : n), p);
        }
        p += n + (p[n] == ',');
    }
    snprintf(r->quantization, sizeof r->quantization, "%s", q);
    r->opts.quantization = r->quantization;
    snprintf(r->repository, sizeof r->repository, "%s", opts->repository ? opts->repository : ".");
    r->opts.repository = r->repository;
    r->metrics = metrics;
    pthread_mutex_init(&r->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->wake, &ca);
    pthread_condattr_destroy(&ca);

    const char *mv[] = {"model", "version"};
    const char *mvl[] = {"model", "version", "label"};
    const char *mvs[] = {"model", "version", "state"};
    double size_buckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
    double wait_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                             0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    r->f_queue_depth = metrics_gauge(metrics, "aiserve_queue_depth",
                                     "Texts waiting in the model version's queue", 2, mv);
    r->f_queue_wait = metrics_histogram(metrics, "aiserve_queue_wait_seconds",
                                        "Time a request waited in the queue before its first batch",
                                        2, mv, wait_buckets, 17);
    r->f_batch_size = metrics_histogram(metrics, "aiserve_batch_size",
                                        "Texts per engine call (dynamic batch size)", 2, mv,
                                        size_buckets, 11);
    r->f_inference = metrics_histogram(metrics, "aiserve_inference_seconds",
                                       "Engine time per batch (tokenize, forward, head)", 2, mv,
                                       wait_buckets, 17);
    r->f_tokens = metrics_counter(metrics, "aiserve_tokens_total",
                                  "Tokens run through the model, [CLS]/[SEP] included", 2, mv);
    r->f_batches = metrics_counter(metrics, "aiserve_batches_total", "Engine calls", 2, mv);
    r->f_timeouts = metrics_counter(metrics, "aiserve_queue_timeouts_total",
                                    "Requests whose deadline passed while queued", 2, mv);
    r->f_predictions = metrics_counter(metrics, "aiserve_predictions_total",
                                       "Texts classified, by predicted label", 3, mvl);
    double confidence_buckets[] = {0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99};
    r->f_confidence = metrics_histogram(metrics, "aiserve_prediction_confidence",
                                        "Probability of the predicted label, per text classified", 2, mv,
                                        confidence_buckets, 7);
    r->f_state = metrics_gauge(metrics, "aiserve_model_state",
                               "1 for the state each model version is in", 3, mvs);
    r->f_load_seconds = metrics_gauge(metrics, "aiserve_model_load_seconds",
                                      "Time to load and warm up the model version", 2, mv);
    r->f_cascade = metrics_counter(metrics, "aiserve_cascade_texts_total",
                                   "Texts of cascaded predictions: answered by the first version, "
                                   "escalated to the second (confidence below the threshold), or "
                                   "left with the first's answer because the second failed",
                                   2, (const char *[]){"model", "result"});
    r->f_shadow = metrics_counter(metrics, "aiserve_shadow_predictions_total",
                                  "Texts of shadow traffic compared with the answer the client got: the "
                                  "shadow version agreed (same label), disagreed, or failed",
                                  3, (const char *[]){"model", "version", "result"});
    if (!r->f_queue_depth || !r->f_queue_wait || !r->f_batch_size || !r->f_inference ||
        !r->f_tokens || !r->f_batches || !r->f_timeouts || !r->f_predictions || !r->f_confidence || !r->f_state ||
        !r->f_load_seconds || !r->f_cascade || !r->f_shadow) {
        pthread_mutex_destroy(&r->lock);
        free(r);
        return serving_error_set(err, SERVING_ENOMEM, "cannot register the serving metrics");
    }

    if (opts->model_dir && opts->model_dir[0]) {
        /* One model directory: named as asked, else after the directory. */
        const char *base = strrchr(opts->model_dir, '/');
        base = base && base[1] ? base + 1 : opts->model_dir;
        const char *name = opts->default_model && opts->default_model[0] ? opts->default_model : base;
        snprintf(r->default_model, sizeof r->default_model, "%s", valid_model_name(name) ? name : "model");
        r->opts.poll_interval_us = 0;
        snprintf(r->repository, sizeof r->repository, "%s", opts->model_dir);
        r->single = 1;
        if (single_model(r, opts->model_dir, &r->models) != 0) {
            serving_repo_destroy(r);
            return serving_error_set(err, SERVING_ENOMEM, "out of memory");
        }
        set_state_metric(r, r->models->versions);
        *out = r;
        return 0;
    }

    DIR *d = opendir(r->repository);
    if (!d) {
        int e = errno;
        pthread_mutex_destroy(&r->lock);
        free(r);
        return serving_error_set(err, SERVING_EIO, "cannot read model repository %s: %s",
                                 opts->repository, strerror(e));
    }
    char **names = NULL;
    size_t n_names = 0, cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (!valid_model_name(e->d_name))
            continue;
        char path[4096 + 256];
        snprintf(path, sizeof path, "%s/%s", r->repository, e->d_name);
        if (!is_dir(path))
            continue;
        if (n_names == cap) {
            cap = cap ? cap * 2 : 8;
            char **nn = realloc(names, cap * sizeof *names);
            if (!nn) {
                rc = SERVING_ENOMEM;
                break;
            }
            names = nn;
        }
        if (!(names[n_names] = strdup(e->d_name))) {
            rc = SERVING_ENOMEM;
            break;
        }
        n_names++;
    }
    closedir(d);
    if (n_names)
        qsort(names, n_names, sizeof *names, cmp_str);
    repo_model **tail = &r->models;
    for (size_t i = 0; i < n_names && rc == 0; i++) {
        repo_model *m = NULL;
        rc = scan_model(r, names[i], &m);
        if (m && m->versions) {
            *tail = m;
            tail = &m->next;
            for (serving_version *v = m->versions; v; v = v->next)
                set_state_metric(r, v);
        } else if (m) {
            free(m);
        }
    }
    for (size_t i = 0; i < n_names; i++)
        free(names[i]);
    free(names);
    if (rc) {
        serving_repo_destroy(r);
        return serving_error_set(err, rc, "out of memory scanning %s", opts->repository);
    }

    /* The default model: as configured, else the only one, else "sentiment". */
    if (opts->default_model && opts->default_model[0])
        snprintf(r->default_model, sizeof r->default_model, "%s", opts->default_model);
    else if (r->models && !r->models->next)
        snprintf(r->default_model, sizeof r->default_model, "%s", r->models->name);
    else
        snprintf(r->default_model, sizeof r->default_model, "sentiment");
    *out = r;
    return 0;
}

static void version_metrics(serving_repo *r, serving_version *v, const engine_model_info *info) {
    char ver[32];
    snprintf(ver, sizeof ver, "%ld", v->number);
    const char *mv[] = {v->model, ver};
    sched_metrics *sm = &v->metrics;
    sm->queue_depth = metric_series(r->f_queue_depth, mv);
    sm->queue_wait = metric_series(r->f_queue_wait, mv);
    sm->batch_size = metric_series(r->f_batch_size, mv);
    sm->inference = metric_series(r->f_inference, mv);
    sm->tokens = metric_series(r->f_tokens, mv);
    sm->batches = metric_series(r->f_batches, mv);
    sm->timeouts = metric_series(r->f_timeouts, mv);
    sm->n_labels = info->n_labels;
    if (info->n_labels > 0)
        sm->confidence = metric_series(r->f_confidence, mv);
    if (info->n_labels > 0) {
        sm->predictions = calloc((size_t)info->n_labels, sizeof *sm->predictions);
        for (int i = 0; sm->predictions && i < info->n_labels; i++) {
            const char *label = engine_model_label(v->engine, i);
            const char *mvl[] = {v->model, ver, label ? label : "?"};
            sm->predictions[i] = metric_series(r->f_predictions, mvl);
        }
        if (!sm->predictions)
            sm->n_labels = 0;
    }
}

/* Loads one version and warms it up. Returns 0 with *seconds set, or -1
 * with error[] filled. Writes only fields that nobody reads before the
 * version turns AVAILABLE (engine, sched, metrics); error and load time are
 * published by the caller under the lock. */
static int load_version(serving_repo *r, serving_version *v, char *error, size_t error_cap,
                        double *seconds) {
    uint64_t t0 = serving_now_us();
    engine_options eo = {.n_threads = r->opts.engine_threads, .quantization = quant_for(r, v->model, v->number)};
    engine_error eerr = {0};
    engine_model *model = NULL;
    if (engine_model_load(v->dir, &eo, &model, &eerr) != 0) {
        snprintf(error, error_cap, "%s", eerr.message);
        return -1;
    }
    const engine_model_info *info = engine_model_get_info(model);
    /* Warm-up: one real batch, which also sizes the engine's scratch. */
    static const char warm[] = "aiserve warm-up request";
    const char *texts[] = {warm};
    size_t lens[] = {sizeof warm - 1};
    int rc;
    if (info->task == ENGINE_TASK_CLASSIFY) {
        float probs[64];
        float *p = info->n_labels <= 64 ? probs : malloc((size_t)info->n_labels * sizeof(float));
        rc = p ? engine_classify(model, texts, lens, 1, NULL, p, &eerr) : ENGINE_ENOMEM;
        if (p != probs)
            free(p);
    } else {
        float *out = malloc((size_t)info->hidden * sizeof(float));
        rc = out ? engine_embed(model, texts, lens, 1, ENGINE_POOL_MEAN, 1, out, &eerr) : ENGINE_ENOMEM;
        free(out);
    }
    if (rc) {
        snprintf(error, error_cap, "warm-up failed: %.480s", eerr.message);
        engine_model_free(model);
        return -1;
    }
    /* pooling and normalisation as the model's sentence-transformers files
     * say (the engine reads them: modules.json, the Pooling config) */
    sched_embed embed = {info->pooling, info->normalize};
    v->engine = model;
    version_metrics(r, v, info);
    if (sched_create(model, &r->opts, &v->metrics, &embed, &v->sched) != 0) {
        snprintf(error, error_cap, "cannot start the scheduler: out of memory");
        free(v->metrics.predictions);
        v->metrics.predictions = NULL;
        v->engine = NULL;
        engine_model_free(model);
        return -1;
    }
    *seconds = (double)(serving_now_us() - t0) / 1e6;
    char ver[32];
    snprintf(ver, sizeof ver, "%ld", v->number);
    const char *mv[] = {v->model, ver};
    metric_set(metric_series(r->f_load_seconds, mv), *seconds);
    return 0;
}

/* SHA-256 of dir/model.safetensors as hex into out[65]; "" on failure.
 * Runs on the loader thread after a version serves (it never delays one). */
static void hash_weights(const char *dir, char out[65]) {
    out[0] = 0;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "rb");
    EVP_MD_CTX *ctx = f ? EVP_MD_CTX_new() : NULL;
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        if (f)
            fclose(f);
        return;
    }
    static __thread unsigned char buf[1 << 16];
    size_t n;
    int ok = 1;
    while (ok && (n = fread(buf, 1, sizeof buf, f)) > 0)
        ok = EVP_DigestUpdate(ctx, buf, n) == 1;
    unsigned char md[32];
    unsigned int len = 0;
    ok = ok && !ferror(f) && EVP_DigestFinal_ex(ctx, md, &len) == 1 && len == 32;
    EVP_MD_CTX_free(ctx);
    fclose(f);
    for (unsigned i = 0; ok && i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* Hashes the weights of every AVAILABLE version that has no hash yet. */
static void hash_available(serving_repo *r) {
    for (repo_model *m = r->models; m; m = m->next) {
        for (;;) {
            pthread_mutex_lock(&r->lock);
            serving_version *v = m->versions;
            while (v && !(v->state == SERVING_STATE_AVAILABLE && !v->sha256[0]))
                v = v->next;
            if (v)
                atomic_fetch_add(&v->refs, 1);
            int stop = r->stop;
            pthread_mutex_unlock(&r->lock);
            if (!v)
                break;
            char hex[65];
            if (!stop)
                hash_weights(v->dir, hex);
            pthread_mutex_lock(&r->lock);
            snprintf(v->sha256, sizeof v->sha256, "%s", !stop && hex[0] ? hex : "-");
            pthread_mutex_unlock(&r->lock);
            serving_version_release(v);
            if (stop)
                return;
        }
    }
}

/* ---- watching the repository (after the first load) ------------------------ */

/* A version found by the watcher that the policy does not want (yet): kept
 * in the list so it is not "found" again, but neither listed nor served. */
static int is_hidden(const serving_version *v) {
    return v->state == SERVING_STATE_LOADING && v->load_seconds < 0;
}

/* Loads v (LOADING) off the lock and records the outcome. */
static int load_and_record(serving_repo *r, serving_version *v) {
    char error[sizeof v->error] = "";
    double seconds = 0;
    int rc = load_version(r, v, error, sizeof error, &seconds);
    pthread_mutex_lock(&r->lock);
    v->state = rc == 0 ? SERVING_STATE_AVAILABLE : SERVING_STATE_FAILED;
    memcpy(v->error, error, sizeof error);
    v->load_seconds = seconds;
    pthread_mutex_unlock(&r->lock);
    set_state_metric(r, v);
    if (rc != 0) {
        log_event(LOG_ERROR, "model_load_failed", "model", json_string(v->model), "version",
                  json_integer(v->number), "path", json_string(v->dir), "error", json_string(error), NULL);
        return rc;
    }
    const engine_model_info *info = engine_model_get_info(v->engine);
    log_event(LOG_INFO, "model_loaded", "model", json_string(v->model), "version", json_integer(v->number),
              "path", json_string(v->dir), "load_seconds", json_real(seconds), "quantization",
              json_string(engine_quantization_name(info->quantization)), "kernels",
              json_string(info->kernels ? info->kernels : ""), "weight_memory_bytes",
              json_integer((json_int_t)info->weight_memory_bytes), NULL);
    if (info->quantization_note) /* the mode asked for is not what runs */
        log_event(LOG_WARN, "quantization_fallback", "model", json_string(v->model), "version",
                  json_integer(v->number), "message", json_string(info->quantization_note), NULL);
    return rc;
}

/* Adds the version directories of m that appeared since the last look (as
 * LOADING), and marks listed versions whose directory went away UNLOADING.
 * Caller holds the lock. */
static void rescan_model(serving_repo *r, repo_model *m) {
    repo_model *fresh = NULL;
    if (r->single || scan_model(r, m->name, &fresh) != 0 || !fresh)
        return;
    for (serving_version *v = m->versions; v; v = v->next) {
        serving_version *f = fresh->versions;
        while (f && f->number != v->number)
            f = f->next;
        if (!f && v->state != SERVING_STATE_UNLOADING) {
            if (v->state == SERVING_STATE_AVAILABLE)
                log_event(LOG_INFO, "model_unloading", "model", json_string(v->model), "version",
                          json_integer(v->number), "reason", json_string("its directory is gone"), NULL);
            v->state = SERVING_STATE_UNLOADING;
        }
    }
    while (fresh->versions) {
        serving_version *f = fresh->versions;
        fresh->versions = f->next;
        serving_version *v = m->versions;
        while (v && v->number != f->number)
            v = v->next;
        if (v) { /* known already */
            serving_version_release(f);
            continue;
        }
        serving_version **pp = &m->versions; /* newest first */
        while (*pp && (*pp)->number > f->number)
            pp = &(*pp)->next;
        f->next = *pp;
        *pp = f;
        log_event(LOG_INFO, "model_version_found", "model", json_string(f->model), "version",
                  json_integer(f->number), "path", json_string(f->dir), NULL);
    }
    free(fresh);
}

/* Whether the policy wants new version v of m loaded now. Caller holds the
 * lock. */
static int watch_wants(const serving_repo *r, const repo_model *m, const serving_version *v) {
    if (v->admin)
        return v->admin > 0;
    if (r->n_specific || r->latest == 0)
        return policy_wants(r, v, 0, 0);
    int newer = 0; /* versions above v that serve or may: latest:N counts them */
    for (const serving_version *o = m->versions; o; o = o->next)
        if (o->number > v->number && o->state != SERVING_STATE_FAILED && o->state != SERVING_STATE_UNLOADING &&
            !(o->state == SERVING_STATE_LOADING && o->load_seconds < 0))
            newer++;
    return newer < r->latest;
}

/* After loads: AVAILABLE versions the policy no longer wants (latest:N:
 * beyond the N newest available) become UNLOADING; UNLOADING versions that
 * nobody holds any more leave the list and are freed. */
static void retire(serving_repo *r, repo_model *m) {
    serving_version *freed = NULL;
    pthread_mutex_lock(&r->lock);
    if (r->latest > 0 && !r->n_specific) {
        int kept = 0;
        for (serving_version *v = m->versions; v; v = v->next) {
            if (v->state != SERVING_STATE_AVAILABLE || v->admin > 0) /* loaded by the admin API: stays */
                continue;
            if (++kept > r->latest) {
                v->state = SERVING_STATE_UNLOADING;
                log_event(LOG_INFO, "model_unloading", "model", json_string(v->model), "version",
                          json_integer(v->number), "reason", json_string("a newer version serves"), NULL);
            }
        }
    }
    serving_version **pp = &m->versions;
    while (*pp) {
        serving_version *v = *pp;
        if (v->state == SERVING_STATE_UNLOADING && atomic_load(&v->refs) == 1) {
            *pp = v->next;
            v->next = freed;
            freed = v;
        } else {
            pp = &v->next;
        }
    }
    pthread_mutex_unlock(&r->lock);
    while (freed) { /* the list's reference was the last: off the lock */
        serving_version *v = freed;
        freed = v->next;
        set_state_metric(r, v);
        log_event(LOG_INFO, "model_unloaded", "model", json_string(v->model), "version", json_integer(v->number),
                  NULL);
        serving_version_release(v);
    }
}

/* Every poll_interval_us: new version directories (and models) are loaded
 * as the policy says, warmed up, and only then served; versions the policy
 * drops, or whose directory is gone, stop taking requests at once and are
 * freed when the last request holding them is done. A version that fails
 * is reported and never retried (until the process restarts); what served
 * before keeps serving. */
static void watch(serving_repo *r) {
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (r->opts.poll_interval_us % 1000000u) * 1000u;
        ts.tv_sec += (time_t)(r->opts.poll_interval_us / 1000000u) + (time_t)(ns / 1000000000u);
        ts.tv_nsec = (long)(ns % 1000000000u);
        pthread_mutex_lock(&r->lock);
        while (!r->stop && !r->kicked) {
            int rc = r->opts.poll_interval_us ? pthread_cond_timedwait(&r->wake, &r->lock, &ts)
                                              : pthread_cond_wait(&r->wake, &r->lock);
            if (rc != 0)
                break; /* the poll interval passed */
        }
        r->kicked = 0;
        if (r->stop) {
            pthread_mutex_unlock(&r->lock);
            return;
        }
        for (repo_model *m = r->models; m; m = m->next)
            rescan_model(r, m);
        /* New models. */
        DIR *d = r->single ? NULL : opendir(r->repository);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            repo_model *m = r->models, *last = NULL;
            while (m && strcmp(m->name, e->d_name) != 0)
                last = m, m = m->next;
            if (m || !valid_model_name(e->d_name))
                continue;
            repo_model *fresh = NULL;
            if (scan_model(r, e->d_name, &fresh) == 0 && fresh && fresh->versions) {
                if (last)
                    last->next = fresh;
                else
                    r->models = fresh;
                log_event(LOG_INFO, "model_found", "model", json_string(fresh->name), NULL);
            } else if (fresh) {
                while (fresh->versions) {
                    serving_version *v = fresh->versions;
                    fresh->versions = v->next;
                    serving_version_release(v);
                }
                free(fresh);
            }
        }
        if (d)
            closedir(d);
        pthread_mutex_unlock(&r->lock);

        for (repo_model *m = r->models; m; m = m->next) {
            for (;;) { /* the newest wanted LOADING version, one at a time */
                pthread_mutex_lock(&r->lock);
                serving_version *next = NULL;
                for (serving_version *v = m->versions; v && !next; v = v->next)
                    if (v->state == SERVING_STATE_LOADING && v->load_seconds >= 0 && watch_wants(r, m, v))
                        next = v;
                for (serving_version *v = m->versions; v && !next; v = v->next)
                    if (v->state == SERVING_STATE_LOADING)
                        v->load_seconds = -1; /* not wanted now: skipped until the policy changes */
                int stop = r->stop;
                pthread_mutex_unlock(&r->lock);
                if (!next || stop)
                    break;
                load_and_record(r, next);
            }
            retire(r, m);
        }
        hash_available(r);
    }
}

static void *loader_main(void *arg) {
    serving_repo *r = arg;
    /* A thread's nice value is inherited by the threads it creates, so
     * every version's batcher and compute workers (started below) run at
     * this thread's. engine_nice > 0 lowers it: inference then yields to
     * the event loops, and to every other process on the host, which on a
     * shared host costs most of the throughput (docs/engine.md, Threads);
     * hence 0 by default. Linux: PRIO_PROCESS with 0 names the calling
     * thread. */
    if (r->opts.engine_nice > 0) {
        errno = 0;
        int level = getpriority(PRIO_PROCESS, 0);
        if (errno == 0) {
            level += r->opts.engine_nice;
            if (setpriority(PRIO_PROCESS, 0, level > 19 ? 19 : level) != 0)
                log_event(LOG_WARN, "engine_nice_failed", "errno", json_integer(errno), NULL);
        }
    }
    for (repo_model *m = r->models; m; m = m->next) {
        int attempted = 0, loaded = 0;
        for (serving_version *v = m->versions; v; v = v->next) {
            pthread_mutex_lock(&r->lock);
            int stop = r->stop;
            pthread_mutex_unlock(&r->lock);
            if (stop)
                break;
            if (!policy_wants(r, v, attempted, loaded))
                continue;
            attempted++;
            loaded += load_and_record(r, v) == 0;
        }
        /* Versions the policy did not try are not "loading" any more: they
         * are simply not served (and not listed). */
        pthread_mutex_lock(&r->lock);
        serving_version *prev = NULL, *v = m->versions;
        while (v) {
            serving_version *next = v->next;
            if (v->state == SERVING_STATE_LOADING && !r->stop) {
                if (prev)
                    prev->next = next;
                else
                    m->versions = next;
                serving_version_release(v);
            } else {
                prev = v;
            }
            v = next;
        }
        pthread_mutex_unlock(&r->lock);
    }
    pthread_mutex_lock(&r->lock);
    r->settled = 1;
    pthread_mutex_unlock(&r->lock);
    hash_available(r);
    watch(r); /* polls every poll_interval_us; with 0, only when the admin API asks */
    return NULL;
}

int serving_repo_start(serving_repo *r) {
    if (r->loader_started)
        return 0;
    if (pthread_create(&r->loader, NULL, loader_main, r) != 0)
        return SERVING_ENOMEM;
    r->loader_started = 1;
    return 0;
}

int serving_repo_is_settled(serving_repo *r) {
    pthread_mutex_lock(&r->lock);
    int s = r->settled;
    pthread_mutex_unlock(&r->lock);
    return s;
}

int serving_repo_is_ready(serving_repo *r) {
    pthread_mutex_lock(&r->lock);
    int ready = r->settled && r->models != NULL;
    for (repo_model *m = r->models; ready && m; m = m->next) {
        int any = 0;
        for (serving_version *v = m->versions; v; v = v->next)
            any |= v->state == SERVING_STATE_AVAILABLE;
        ready = any;
    }
    pthread_mutex_unlock(&r->lock);
    return ready;
}

const char *serving_repo_default_model(serving_repo *r) {
    return r->default_model;
}

void serving_repo_destroy(serving_repo *r) {
    if (!r)
        return;
    if (r->loader_started) {
        pthread_mutex_lock(&r->lock);
        r->stop = 1;
        pthread_cond_broadcast(&r->wake);
        pthread_mutex_unlock(&r->lock);
        pthread_join(r->loader, NULL);
    }
    pthread_mutex_lock(&r->lock);
    for (repo_model *m = r->models; m; m = m->next)
        for (serving_version *v = m->versions; v; v = v->next)
            if (v->state == SERVING_STATE_AVAILABLE)
                v->state = SERVING_STATE_UNLOADING;
    pthread_mutex_unlock(&r->lock);
    for (repo_model *m = r->models; m; m = m->next)
        for (serving_version *v = m->versions; v; v = v->next)
            set_state_metric(r, v);
    free_models(r);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->wake);
    free(r);
}

/* Off the repository lock, one version at a time: the jobs it answers run
 * their on_done on this thread, and a serving_predict request's on_done
 * may acquire a version (a cascade's second stage, a shadow). */
void serving_repo_cancel_queued(serving_repo *r) {
    for (;;) {
        serving_version *next = NULL;
        pthread_mutex_lock(&r->lock);
        for (repo_model *m = r->models; m && !next; m = m->next)
            for (serving_version *v = m->versions; v && !next; v = v->next)
                if (v->state == SERVING_STATE_AVAILABLE && v->sched && !v->cancelled)
                    next = v;
        if (next) {
            next->cancelled = 1;
            atomic_fetch_add(&next->refs, 1);
        }
        pthread_mutex_unlock(&r->lock);
        if (!next)
            return;
        sched_cancel(next->sched);
        serving_version_release(next);
    }
}

/* serving_acquire with the lock held and the model found (m may be NULL). */
static int acquire_locked(serving_repo *r, repo_model *m, const char *model, long version, serving_version **out,
                          serving_error *err) {
    if (!m)
        return serving_error_set(err, SERVING_ENOTFOUND, "model '%.100s' not found", model);
    serving_version *found = NULL;
    int any_version = 0, loading = 0;
    for (serving_version *v = m->versions; v; v = v->next) {
        if (is_hidden(v) || (version && v->number != version))
            continue;
        any_version = 1;
        loading |= v->state == SERVING_STATE_LOADING;
        if (v->state == SERVING_STATE_AVAILABLE) {
            found = v;
            break;
        }
    }
    if (found) {
        atomic_fetch_add(&found->refs, 1);
        *out = found;
        return 0;
    }
    if (version && !any_version)
        return serving_error_set(err, SERVING_ENOVERSION, "model '%s' has no version %ld", m->name, version);
    if (loading || !r->settled)
        return serving_error_set(err, SERVING_ENOTREADY, "model '%s' is still loading", m->name);
    return serving_error_set(err, SERVING_ENOTREADY, "model '%s' has no loadable version", m->name);
}

int serving_acquire(serving_repo *r, const char *model, long version, serving_version **out,
                    serving_error *err) {
    *out = NULL;
    if (!model)
        model = r->default_model;
    pthread_mutex_lock(&r->lock);
    int rc = acquire_locked(r, find_model_locked(r, model), model, version, out, err);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

void serving_version_retain(serving_version *v) {
    atomic_fetch_add(&v->refs, 1);
}

void serving_version_release(serving_version *v) {
    if (v && atomic_fetch_sub(&v->refs, 1) == 1)
        serving_version_free(v);
}

void serving_version_free(serving_version *v) {
    sched_destroy(v->sched);
    engine_model_free(v->engine);
    free(v->metrics.predictions);
    free(v);
}

const char *serving_version_model(const serving_version *v) { return v->model; }
long serving_version_number(const serving_version *v) { return v->number; }
const engine_model_info *serving_version_info(const serving_version *v) {
    return engine_model_get_info(v->engine);
}
const char *serving_version_label(const serving_version *v, int id) {
    return engine_model_label(v->engine, id);
}
int serving_version_text_is_blank(const serving_version *v, const char *text, size_t len) {
    return engine_text_is_blank(v->engine, text, len);
}

int serving_submit(serving_version *v, serving_job *job) {
    if (!v->sched)
        return SERVING_EUNSUPPORTED;
    return sched_submit(v->sched, job);
}

size_t serving_queue_depth(serving_version *v) {
    return v->sched ? sched_depth(v->sched) : 0;
}

int serving_repo_list(serving_repo *r, serving_version_status **out, size_t *n) {
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&r->lock);
    size_t count = 0;
    for (repo_model *m = r->models; m; m = m->next)
        for (serving_version *v = m->versions; v; v = v->next)
            count++;
    serving_version_status *list = calloc(count ? count : 1, sizeof *list);
    if (!list) {
        pthread_mutex_unlock(&r->lock);
        return SERVING_ENOMEM;
    }
    size_t i = 0;
    for (repo_model *m = r->models; m; m = m->next) {
        /* Oldest first inside a model, as a listing reads. */
        size_t first = i;
        for (serving_version *v = m->versions; v; v = v->next) {
            if (is_hidden(v))
                continue;
            serving_version_status *s = &list[i++];
            snprintf(s->model, sizeof s->model, "%s", v->model);
            s->version = v->number;
            s->state = v->state;
            snprintf(s->error, sizeof s->error, "%s", v->error);
            s->load_seconds = v->load_seconds;
            if (v->sha256[0] && v->sha256[0] != '-')
                memcpy(s->sha256, v->sha256, sizeof s->sha256);
            if (v->state == SERVING_STATE_AVAILABLE && v->engine) {
                const engine_model_info *info = engine_model_get_info(v->engine);
                s->has_info = 1;
                s->info = *info;
                snprintf(s->architecture, sizeof s->architecture, "%s", info->architecture);
                snprintf(s->model_type, sizeof s->model_type, "%s", info->model_type);
                snprintf(s->dtype, sizeof s->dtype, "%s", info->dtype);
                s->info.architecture = s->architecture;
                s->info.model_type = s->model_type;
                s->info.dtype = s->dtype;
                for (int k = 0; k < info->n_labels && k < 16; k++) {
                    const char *l = engine_model_label(v->engine, k);
                    snprintf(s->labels[k], sizeof s->labels[k], "%s", l ? l : "");
                    s->n_labels_listed = k + 1;
                }
            }
        }
        for (size_t a = first, b = i; b > a + 1; a++, b--) {
            serving_version_status t = list[a];
            list[a] = list[b - 1];
            list[b - 1] = t;
        }
    }
    pthread_mutex_unlock(&r->lock);
    *out = list;
    *n = i; /* hidden versions are not listed */
    return 0;
}

/* ---- traffic splits --------------------------------------------------------- */

/* Whether m lists `number` (hidden versions do not count). Lock held. */
static int has_version_locked(const repo_model *m, long number) {
    for (const serving_version *v = m->versions; v; v = v->next)
        if (v->number == number && !is_hidden(v))
            return 1;
    return 0;
}

static repo_model *find_model_locked(serving_repo *r, const char *name) {
    repo_model *m = r->models;
    while (m && strcmp(m->name, name) != 0)
        m = m->next;
    return m;
}

int serving_set_split(serving_repo *r, const char *model, const serving_split *split, serving_error *err) {
    if (!split || split->n > SERVING_MAX_SPLIT)
        return serving_error_set(err, SERVING_EINPUT, "a split has 0 to %d versions", SERVING_MAX_SPLIT);
    serving_split sorted = *split;
    int sum = 0;
    for (size_t i = 0; i < sorted.n; i++) {
        if (sorted.weight[i] < 0 || sorted.weight[i] > 100)
            return serving_error_set(err, SERVING_EINPUT, "version %ld: a weight is a percentage, 0 to 100",
                                     sorted.version[i]);
        sum += sorted.weight[i];
        for (size_t j = i; j > 0 && sorted.version[j - 1] > sorted.version[j]; j--) { /* insertion sort */
            long v = sorted.version[j];
            int w = sorted.weight[j];
            sorted.version[j] = sorted.version[j - 1], sorted.weight[j] = sorted.weight[j - 1];
            sorted.version[j - 1] = v, sorted.weight[j - 1] = w;
        }
    }
    for (size_t i = 1; i < sorted.n; i++)
        if (sorted.version[i] == sorted.version[i - 1])
            return serving_error_set(err, SERVING_EINPUT, "version %ld is listed twice", sorted.version[i]);
    if (sorted.n && sum != 100)
        return serving_error_set(err, SERVING_EINPUT, "the weights sum to %d; they must sum to 100", sum);
    pthread_mutex_lock(&r->lock);
    repo_model *m = find_model_locked(r, model);
    int rc = 0;
    if (!m)
        rc = serving_error_set(err, SERVING_ENOTFOUND, "model '%.100s' not found", model);
    for (size_t i = 0; rc == 0 && i < sorted.n; i++)
        if (!has_version_locked(m, sorted.version[i]))
            rc = serving_error_set(err, SERVING_EINPUT, "model '%s' has no version %ld", m->name,
                                   sorted.version[i]);
    if (rc == 0)
        m->split = sorted;
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int serving_get_split(serving_repo *r, const char *model, serving_split *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&r->lock);
    repo_model *m = find_model_locked(r, model ? model : r->default_model);
    if (m)
        *out = m->split;
    pthread_mutex_unlock(&r->lock);
    return m ? 0 : SERVING_ENOTFOUND;
}

unsigned serving_random_percent(void) {
    static __thread uint64_t x;
    if (!x)
        x = ((serving_now_us() * 0x9e3779b97f4a7c15ull) ^ (uint64_t)(uintptr_t)&x) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return (unsigned)(x % 100);
}

/* Whether m's version `number` can answer now. Lock held. */
static int available_locked(const repo_model *m, long number) {
    for (const serving_version *v = m->versions; v; v = v->next)
        if (v->number == number && v->state == SERVING_STATE_AVAILABLE)
            return 1;
    return 0;
}

/* The index of model m's alias `name`, or m->n_aliases when it has none.
 * Lock held. */
static size_t alias_index_locked(const repo_model *m, const char *name) {
    size_t at = 0;
    while (at < m->n_aliases && strcmp(m->aliases[at].name, name) != 0)
        at++;
    return at;
}

/* The split's version for `user` (NULL: a random bucket), or 0 when that
 * version cannot answer now (the newest available then). Lock held. */
static long split_version_locked(const repo_model *m, const char *user, size_t user_len) {
    unsigned bucket;
    if (user && user_len) { /* XXH3-64 of "model\0user": stable everywhere */
        XXH3_state_t st;
        XXH3_64bits_reset(&st);
        XXH3_64bits_update(&st, m->name, strlen(m->name) + 1);
        XXH3_64bits_update(&st, user, user_len);
        bucket = (unsigned)(XXH3_64bits_digest(&st) % 100);
    } else {
        bucket = serving_random_percent();
    }
    long version = 0;
    unsigned edge = 0;
    for (size_t i = 0; i < m->split.n && !version; i++) {
        edge += (unsigned)m->split.weight[i];
        if (bucket < edge)
            version = m->split.version[i];
    }
    return available_locked(m, version) ? version : 0;
}

int serving_choose(serving_repo *r, const char *model, long version, const char *ref, const char *user,
                   size_t user_len, int allow_cascade, serving_version **out, serving_cascade *cascade,
                   serving_shadow *shadow, serving_error *err) {
    *out = NULL;
    memset(cascade, 0, sizeof *cascade);
    memset(shadow, 0, sizeof *shadow);
    if (!model || !*model)
        model = r->default_model;
    pthread_mutex_lock(&r->lock);
    repo_model *m = find_model_locked(r, model);
    int rc = 0;
    if (m && !version && ref && *ref) { /* a number, else an alias */
        version = parse_version(ref);
        size_t at = version ? 0 : alias_index_locked(m, ref);
        if (!version && at < m->n_aliases)
            version = m->aliases[at].version;
        if (!version)
            rc = serving_error_set(err, SERVING_ENOVERSION, "model '%s' has no version or alias '%.64s'", m->name,
                                   ref);
    }
    if (m && rc == 0) {
        if (allow_cascade && m->cascade.first &&
            (version ? version == m->cascade.first : available_locked(m, m->cascade.first))) {
            *cascade = m->cascade; /* the first stage: its `first` version */
            version = m->cascade.first;
        } else if (!version && m->split.n) {
            version = split_version_locked(m, user, user_len);
        }
        *shadow = m->shadow;
    }
    if (rc == 0)
        rc = acquire_locked(r, m, model, version, out, err);
    if (rc != 0)
        memset(cascade, 0, sizeof *cascade);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

metric_family *serving_repo_cascade_metric(serving_repo *r) { return r->f_cascade; }
metric_family *serving_repo_shadow_metric(serving_repo *r) { return r->f_shadow; }

/* ---- aliases ------------------------------------------------------------------ */

int serving_alias_name_valid(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > SERVING_ALIAS_MAX || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z')))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
              s[i] == '.' || s[i] == '_' || s[i] == '-'))
            return 0;
    return 1;
}

int serving_set_alias(serving_repo *r, const char *model, const char *alias, long version, serving_error *err) {
    if (!serving_alias_name_valid(alias))
        return serving_error_set(err, SERVING_EINPUT,
                                 "an alias is a letter, then up to 63 letters, digits, '.', '_' or '-'");
    pthread_mutex_lock(&r->lock);
    repo_model *m = find_model_locked(r, model);
    int rc = 0;
    if (!m) {
        rc = serving_error_set(err, SERVING_ENOTFOUND, "model '%.100s' not found", model);
        goto out;
    }
    size_t at = alias_index_locked(m, alias);
    if (version == 0) {
        if (at == m->n_aliases) {
            rc = serving_error_set(err, SERVING_ENOVERSION, "model '%s' has no alias '%s'", m->name, alias);
        } else {
            m->aliases[at] = m->aliases[--m->n_aliases];
        }
        goto out;
    }
    serving_version *v = m->versions;
    while (v && v->number != version)
        v = v->next;
    if (!v) {
        rc = serving_error_set(err, SERVING_EINPUT, "model '%s' has no version %ld", m->name, version);
    } else if (at == m->n_aliases && m->n_aliases == SERVING_MAX_ALIASES) {
        rc = serving_error_set(err, SERVING_EINPUT, "model '%s' has %d aliases, the most it may have", m->name,
                               SERVING_MAX_ALIASES);
    } else {
        if (at == m->n_aliases)
            m->n_aliases++;
        snprintf(m->aliases[at].name, sizeof m->aliases[at].name, "%s", alias);
        m->aliases[at].version = version;
    }
out:
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int serving_get_aliases(serving_repo *r, const char *model, serving_alias *out, size_t cap, size_t *n) {
    *n = 0;
    pthread_mutex_lock(&r->lock);
    repo_model *m = find_model_locked(r, model ? model : r->default_model);
    for (size_t i = 0; m && i < m->n_aliases && i < cap; i++)
        out[(*n)++] = m->aliases[i];
    pthread_mutex_unlock(&r->lock);
    return m ? 0 : SERVING_ENOTFOUND;
}

/* ---- shadow traffic -------------------------------------------------------------- */

int serving_set_shadow(serving_repo *r, const char *model, const serving_shadow *shadow, serving_error *err) {
    if (shadow->version < 0 || (shadow->version && (shadow->percent < 1 || shadow->percent > 100)))
        return serving_error_set(err, SERVING_EINPUT, "percent is 1 to 100 (version 0 turns the shadow off)");
    pthread_mutex_lock(&r->lock);
    repo_model *m = find_model_locked(r, model);
    int rc = 0;
    if (!m) {
        rc = serving_error_set(err, SERVING_ENOTFOUND, "model '%.100s' not found", model);
    } else if (shadow->version && !has_version_locked(m, shadow->version)) {
        rc = serving_error_set(err, SERVING_EINPUT, "model '%s' has no version %ld", m->name, shadow->version);
    }
    if (rc == 0)
        m->shadow = shadow->version ? *shadow : (serving_shadow){0};
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int serving_get_shadow(serving_repo *r, const char *model, serving_shadow *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&r->lock);
    repo_model *m = find_model_locked(r, model ? model : r->default_model);
    if (m)
        *out = m->shadow;
    pthread_mutex_unlock(&r->lock);
    return m ? 0 : SERVING_ENOTFOUND;
}

/* ---- cascades ---------------------------------------------------------------------- */

int serving_set_cascade(serving_repo *r, const char *model, const serving_cascade *c, serving_error *err) {
    if (c->first && (c->then <= 0 || c->then == c->first || !(c->threshold > 0 && c->threshold <= 1)))
        return serving_error_set(err, SERVING_EINPUT,
                                 "a cascade needs two different versions and a threshold above 0, at most 1");
    pthread_mutex_lock(&r->lock);
    repo_model *m = find_model_locked(r, model);
    int rc = 0;
    if (!m)
        rc = serving_error_set(err, SERVING_ENOTFOUND, "model '%.100s' not found", model);
    for (int k = 0; rc == 0 && c->first && k < 2; k++)
        if (!has_version_locked(m, k ? c->then : c->first))
            rc = serving_error_set(err, SERVING_EINPUT, "model '%s' has no version %ld", m->name,
                                   k ? c->then : c->first);
    if (rc == 0)
        m->cascade = c->first ? *c : (serving_cascade){0};
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int serving_get_cascade(serving_repo *r, const char *model, serving_cascade *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&r->lock);
    repo_model *m = find_model_locked(r, model ? model : r->default_model);
    if (m)
        *out = m->cascade;
    pthread_mutex_unlock(&r->lock);
    return m ? 0 : SERVING_ENOTFOUND;
}

/* ---- the admin API: load and unload ------------------------------------------------ */

int serving_admin_version(serving_repo *r, const char *model, long version, int load, serving_error *err) {
    pthread_mutex_lock(&r->lock);
    repo_model *m = find_model_locked(r, model);
    serving_version *v = m ? m->versions : NULL;
    while (v && v->number != version)
        v = v->next;
    if (m && !v && r->settled) { /* a directory the policy left out, or new: look again */
        rescan_model(r, m);
        for (v = m->versions; v && v->number != version;)
            v = v->next;
    }
    int rc = 0;
    if (!m) {
        rc = serving_error_set(err, SERVING_ENOTFOUND, "model '%.100s' not found", model);
    } else if (!v) {
        rc = serving_error_set(err, SERVING_ENOVERSION, "model '%s' has no version %ld", m->name, version);
    } else if (!r->settled) {
        rc = serving_error_set(err, SERVING_ENOTREADY, "the repository is still loading; try again");
    } else if (load) {
        v->admin = 1;
        if (v->state == SERVING_STATE_FAILED || is_hidden(v)) { /* try (again) */
            v->state = SERVING_STATE_LOADING;
            v->load_seconds = 0;
            v->error[0] = 0;
        } else if (v->state == SERVING_STATE_UNLOADING) {
            rc = serving_error_set(err, SERVING_ENOTREADY, "version %ld is unloading; load it again once it is gone",
                                   version);
        }
    } else {
        v->admin = -1;
        if (v->state == SERVING_STATE_AVAILABLE) {
            v->state = SERVING_STATE_UNLOADING;
            log_event(LOG_INFO, "model_unloading", "model", json_string(v->model), "version", json_integer(v->number),
                      "reason", json_string("the admin API"), NULL);
        } else if (v->state == SERVING_STATE_LOADING) {
            v->load_seconds = -1; /* hidden: not loaded */
        }
    }
    if (rc == 0) {
        r->kicked = 1;
        pthread_cond_broadcast(&r->wake);
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}
