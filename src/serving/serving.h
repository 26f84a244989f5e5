/*
 * serving.h - the serving module's one public header: the model repository,
 * loaded model versions, and the scheduler in front of each version.
 *
 * Vocabulary (TF Serving / Triton):
 *  - repository: a directory laid out as <repository>/<model>/<version>/,
 *    each version a Hugging Face model directory, version a positive integer.
 *  - version: one loaded model directory (an engine_model) plus its
 *    scheduler. Only the repository owns versions; everyone else borrows a
 *    counted reference (serving_acquire / serving_version_release) for the
 *    duration of one request, so a version is never freed while in use.
 *  - scheduler: per version, a bounded FIFO of jobs (texts) and one batcher
 *    thread that packs up to max_batch_size texts into one engine call,
 *    waiting at most max_queue_delay_us for a batch to fill. A full queue
 *    refuses work (SERVING_EFULL: the caller sheds load); a job whose
 *    deadline passed before it started is answered SERVING_ETIMEOUT.
 *
 * Version states:
 *
 *     LOADING --load + warm-up ok--> AVAILABLE --shutdown--> UNLOADING
 *        \--load or warm-up failed--> FAILED (error kept, older version tried)
 *
 * Threads: every function here may be called from any thread. Job
 * completion callbacks run on the version's batcher thread, outside every
 * scheduler lock, and must not block: they hand the job back to its owner
 * (post to a queue and wake it), or submit follow-up work to other versions
 * as serving_predict does (a cascade's second stage, a shadow copy). They
 * must never drop the last reference of their own version (freeing a
 * version joins its batcher).
 *
 * This header must not grow HTTP or JSON concepts.
 */
#ifndef AISERVE_SERVING_H
#define AISERVE_SERVING_H

#include "status.h"
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "obs.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One list generates the enum, the names and the default messages. */
#define SERVING_STATUS_MAP(X)                                            \
    X(SERVING_OK, 0, "success")                                          \
    X(SERVING_ENOTFOUND, -1, "no such model")                            \
    X(SERVING_ENOVERSION, -2, "no such model version")                   \
    X(SERVING_ENOTREADY, -3, "the model is not loaded yet")              \
    X(SERVING_EFULL, -4, "the model's queue is full")                    \
    X(SERVING_ETIMEOUT, -5, "the request's deadline passed")             \
    X(SERVING_ESTOPPED, -6, "the model is shutting down")                \
    X(SERVING_EINPUT, -7, "invalid input")                               \
    X(SERVING_EUNSUPPORTED, -8, "the model does not support this task")  \
    X(SERVING_EINTERNAL, -9, "inference failed")                         \
    X(SERVING_ENOMEM, -10, "out of memory")                              \
    X(SERVING_EIO, -11, "cannot read the model repository")

typedef enum serving_status { SERVING_STATUS_MAP(STATUS_ENUM_ROW) } serving_status;

const char *serving_status_name(int status);    /* "SERVING_EFULL"; never NULL */
const char *serving_status_message(int status); /* never NULL */

typedef struct serving_error {
    int status;
    char message[512];
} serving_error;

typedef enum serving_state {
    SERVING_STATE_LOADING = 0,
    SERVING_STATE_AVAILABLE = 1,
    SERVING_STATE_UNLOADING = 2,
    SERVING_STATE_FAILED = 3,
} serving_state;
const char *serving_state_name(serving_state s); /* "loading", "available", ... */

typedef struct serving_options {
    const char *repository;    /* directory; copied */
    /* Instead of a repository: one Hugging Face model directory, served as
     * the model default_model (NULL or "": the directory's name, or "model"
     * when that is not a valid model name), version 1. Nothing is polled. */
    const char *model_dir;
    const char *default_model; /* NULL or "": the only model, else "sentiment" */
    int engine_threads;        /* compute threads per version; <= 0: 1 */
    /* Added to the nice value of each version's batcher and compute
     * threads (the loader thread's, which they inherit), up to 19; <= 0:
     * they keep the caller's priority. */
    int engine_nice;
    int max_batch_size;        /* texts per engine call, >= 1 */
    int64_t max_queue_delay_us;/* how long the batcher waits for a batch to fill */
    int max_queue_size;        /* texts waiting per version before EFULL */
    /* Which versions of each model are loaded (TF Serving's version
     * policy): "latest" or "latest:N" (the N newest; when none of them
     * loads, older ones are tried until one does), "all", or
     * "specific:V[,V...]" (only those, no fallback). NULL or "": latest:1.
     * serving_repo_create refuses anything else (SERVING_EINPUT). */
    const char *version_policy;
    /* How each version runs (engine_options.quantization): comma-separated
     * entries MODE, MODEL=MODE or MODEL@VERSION=MODE (MODE none, bf16 or
     * int8), the most specific one that matches winning; NULL or "": none
     * for all. serving_repo_create refuses a malformed list (SERVING_EINPUT). */
    const char *quantization;
    /* How often the repository is looked at again after the first load:
     * new versions and models are loaded (warm-up included) before they
     * serve, versions the policy drops or whose directory is gone are
     * unloaded once no request holds them. 0: never. */
    uint64_t poll_interval_us;
} serving_options;

typedef struct serving_repo serving_repo;
typedef struct serving_version serving_version;

/* Scans the repository (no loading yet) and registers the serving metrics
 * in `metrics` (borrowed; must outlive the repository and every version
 * reference; one repository per registry: a second one finds the metric
 * names taken and fails with SERVING_ENOMEM). Fails with
 * SERVING_EIO when the directory cannot be read. Owned by the caller,
 * freed with serving_repo_destroy. */
int serving_repo_create(const serving_options *opts, metrics_registry *metrics,
                        serving_repo **out, serving_error *err);

/* Starts the loader thread: the newest version of each model is loaded and
 * warmed up, off the caller's thread; a version that fails is reported and
 * the next older one is tried. Returns 0 or SERVING_ENOMEM. */
int serving_repo_start(serving_repo *repo);

/* 1 once the loader finished and every model has an available version. */
int serving_repo_is_ready(serving_repo *repo);
/* 1 once the loader finished (whatever the outcome). */
int serving_repo_is_settled(serving_repo *repo);

/* Stops the loader and drops the repository's references. A version
 * nobody else holds is freed at once (its queued jobs complete with
 * SERVING_ESTOPPED); a version a caller still holds lives on until that
 * caller's serving_version_release, so every reference must be released
 * before the metrics registry is destroyed. NULL is fine. */
void serving_repo_destroy(serving_repo *repo);

/* For a shutdown that ran out of time: every scheduler refuses new jobs and
 * answers its queued jobs SERVING_ESTOPPED at once (their on_done runs on
 * the calling thread); batches being computed finish. Any thread. */
void serving_repo_cancel_queued(serving_repo *repo);

/* The model that requests without a model name go to; borrowed. */
const char *serving_repo_default_model(serving_repo *repo);

/* Borrows the version `version` of `model` (NULL: the default model;
 * version 0: the newest available one). Fails with SERVING_ENOTFOUND,
 * SERVING_ENOVERSION or SERVING_ENOTREADY (the model exists but no version
 * is available yet). The reference must be given back with
 * serving_version_release. */
int serving_acquire(serving_repo *repo, const char *model, long version,
                    serving_version **out, serving_error *err);
void serving_version_retain(serving_version *v);
void serving_version_release(serving_version *v);

/* Borrowed for as long as the reference is held. */
const char *serving_version_model(const serving_version *v);
long serving_version_number(const serving_version *v);
const engine_model_info *serving_version_info(const serving_version *v);
const char *serving_version_label(const serving_version *v, int id);
/* 1 when the version's tokenizer keeps nothing of text (len bytes of
 * UTF-8): the model would see an empty input (engine_text_is_blank). */
int serving_version_text_is_blank(const serving_version *v, const char *text, size_t len);

/* A snapshot of every model version the repository knows. */
typedef struct serving_version_status {
    char model[128];
    long version;
    serving_state state;
    char error[512];           /* FAILED: why */
    double load_seconds;       /* AVAILABLE: load + warm-up time */
    int has_info;              /* info below is valid (loaded once) */
    engine_model_info info;    /* its strings are copied below */
    char architecture[96];
    char model_type[32];
    char dtype[16];
    char labels[16][64];       /* first 16 labels */
    int n_labels_listed;
    char sha256[65];           /* SHA-256 of model.safetensors (hex), once hashed after the load; else "" */
} serving_version_status;

/* Fills a malloc'd array (caller frees) sorted by model then version. */
int serving_repo_list(serving_repo *repo, serving_version_status **out, size_t *n);

/* The admin API: load (load != 0) or unload version of model, whatever
 * the version policy says (until the process restarts). Asynchronous: the
 * loader thread does it at once (loading: warm-up, then available;
 * unloading: no new requests, freed once idle). SERVING_ENOTFOUND,
 * SERVING_ENOVERSION (not in the repository), SERVING_ENOTREADY (the
 * first load is not finished, or the version is still unloading). */
int serving_admin_version(serving_repo *repo, const char *model, long version, int load, serving_error *err);

/* ---- traffic splits (A/B) ------------------------------------------------
 *
 * A model may split the requests that name no version between versions by
 * weight (percent, summing to 100). A request with a user id is assigned by
 * a stable hash of the model's name and the id (XXH3-64, the same on every
 * instance and after every restart): bucket = hash % 100, and the buckets
 * are the versions' weights laid end to end in version order. Without a
 * user id the bucket is random. A version of the split that is not
 * available (still loading, failed, unloaded) is skipped for the newest
 * available one. No split: the newest available version. */

#define SERVING_MAX_SPLIT 16

typedef struct serving_split {
    size_t n;                        /* 0: no split */
    long version[SERVING_MAX_SPLIT]; /* ascending */
    int weight[SERVING_MAX_SPLIT];   /* 0..100, summing to 100 */
} serving_split;

/* Sets (n > 0) or clears (n == 0) model's split. Refuses (SERVING_EINPUT,
 * with the reason in err; the old split stays) weights that are not 0..100
 * or do not sum to 100, a version listed twice, or a version the model does
 * not have (any state); SERVING_ENOTFOUND for an unknown model. */
int serving_set_split(serving_repo *repo, const char *model, const serving_split *split, serving_error *err);

/* The model's split (n 0: none). SERVING_ENOTFOUND for an unknown model. */
int serving_get_split(serving_repo *repo, const char *model, serving_split *out);

/* ---- shadow traffic ---------------------------------------------------------
 *
 * A share of a model's requests can also be sent to a candidate version
 * whose answers are only compared, never returned (serving_predict does the
 * sending, as background work). */

typedef struct serving_shadow {
    long version; /* 0: none */
    int percent;  /* 0..100 of the requests */
} serving_shadow;

/* Sets (version > 0, percent 1..100) or clears (version 0) model's shadow.
 * SERVING_EINPUT (bad percent, no such version) with err, SERVING_ENOTFOUND
 * for an unknown model. */
int serving_set_shadow(serving_repo *repo, const char *model, const serving_shadow *shadow, serving_error *err);
int serving_get_shadow(serving_repo *repo, const char *model, serving_shadow *out);

/* What aiserve_shadow_predictions_total counted so far for shadow version
 * `version` of model: texts it agreed on, disagreed on, failed. */
typedef struct serving_shadow_tally {
    double agree, disagree, error;
} serving_shadow_tally;
void serving_shadow_tally_get(serving_repo *repo, const char *model, long version, serving_shadow_tally *out);

/* ---- cascades ---------------------------------------------------------------
 *
 * "Ask version `first`; when its confidence in a text is below `threshold`,
 * ask version `then`" (serving_predict runs it). */

typedef struct serving_cascade {
    long first, then; /* 0: none */
    double threshold; /* 0 < threshold <= 1 */
} serving_cascade;

/* Sets (first and then > 0, different) or clears (first 0) model's
 * cascade. SERVING_EINPUT (bad threshold, unknown or equal versions) with
 * err, SERVING_ENOTFOUND for an unknown model. */
int serving_set_cascade(serving_repo *repo, const char *model, const serving_cascade *c, serving_error *err);
int serving_get_cascade(serving_repo *repo, const char *model, serving_cascade *out);

/* ---- aliases --------------------------------------------------------------
 *
 * Names for versions of a model ("production", "staging", any name of
 * [A-Za-z][A-Za-z0-9._-]{0,63} that is not a number), usable wherever a
 * version is. In memory. */

#define SERVING_MAX_ALIASES 16
#define SERVING_ALIAS_MAX 64

typedef struct serving_alias {
    char name[SERVING_ALIAS_MAX + 1];
    long version;
} serving_alias;

/* 1 when s is a valid alias name. */
int serving_alias_name_valid(const char *s);

/* Points alias at version (a version the model has, any state), or
 * removes it (version 0; SERVING_ENOVERSION when there was none).
 * SERVING_EINPUT (bad name, too many aliases, no such version) with err,
 * SERVING_ENOTFOUND for an unknown model. */
int serving_set_alias(serving_repo *repo, const char *model, const char *alias, long version, serving_error *err);

/* The model's aliases into out[cap] (*n set). SERVING_ENOTFOUND for an
 * unknown model. */
int serving_get_aliases(serving_repo *repo, const char *model, serving_alias *out, size_t cap, size_t *n);

/* A unit of work for a version's scheduler. The caller owns the job and
 * every buffer it points to until on_done has run. */
typedef struct serving_job serving_job;
struct serving_job {
    /* Filled by the caller. */
    const char *const *texts;  /* n UTF-8 texts */
    const size_t *lens;
    size_t n;
    /* Non-NULL: each text is scored as the pair (query, text), as a
     * cross-encoder (reranker) reads a query and a document
     * (engine_classify_pairs); classifiers only. A batch holds single texts
     * or pairs, never both. */
    const char *query;
    size_t query_len;
    uint64_t deadline_us;      /* core clock (CLOCK_MONOTONIC, us); 0: none */
    /* Background work (batch jobs, shadow requests): queued apart and run
     * only when no online job waits, one batch at a time (a quarter of
     * max_batch_size of its texts while online jobs arrived in the last
     * second, else max_batch_size), so online latency sees at most one
     * short batch of it. Not counted against max_queue_size; never refused
     * as full. */
    int background;
    float *probs;              /* n x n_labels (classifiers) or n x hidden (embedding models: each
                                  text's vector, pooled and normalised as the model's
                                  sentence-transformers files say), written by the scheduler */
    float *logits;             /* classifiers: NULL, or n x n_labels for the logits the probs came from */
    void (*on_done)(serving_job *job, void *user); /* batcher thread, exactly once */
    void *user;
    /* Filled by the scheduler before on_done. */
    int status;                /* 0 or a negative serving_status */
    char error[256];
    int batch_size;            /* largest engine batch (texts) this job rode in */
    uint64_t queue_wait_us;    /* submit to the start of its first batch */
    uint64_t infer_us;         /* summed engine time of its batches */
    size_t n_tokens;           /* tokens of this job's texts */
    /* Private to the scheduler. */
    size_t next_, n_done_;
    uint64_t enqueued_us_;
    serving_job *qnext_;
};

/* Queues the job on version v. Returns 0, and then on_done runs exactly
 * once on the batcher thread; or SERVING_EFULL / SERVING_ESTOPPED /
 * SERVING_EUNSUPPORTED (a model with no output) / SERVING_EINPUT (n == 0), and
 * then on_done never runs. */
int serving_submit(serving_version *v, serving_job *job);

/* Texts waiting in v's queue. */
size_t serving_queue_depth(serving_version *v);

/* Monotonic clock in microseconds, the one serving_job deadlines use. */
uint64_t serving_now_us(void);

/* ---- predictions: the one call every front end uses -------------------------
 *
 * serving_predict takes a model name, an optional pinned version or alias,
 * a user id, texts and a priority, and does the serving policy itself
 * (predict.c):
 *
 *   resolve   the version: pinned (number or alias), else the cascade's
 *             first version when the request may take the model's cascade
 *             and that version is available, else the traffic split's
 *             (sticky by user), else the newest available. A request pinned
 *             to the cascade's first version takes the cascade too when it
 *             may (batch jobs pin one version per job and keep the
 *             cascade); a front end whose pins must skip the cascade clears
 *             allow_cascade when it pins. The task is checked against the
 *             model's (SERVING_EUNSUPPORTED: a classifier asked for
 *             embeddings or the reverse).
 *   first     one job on that version's scheduler.
 *   cascade   (classifiers, when taken) texts whose confidence is below the
 *             threshold go to the cascade's second version as a second job;
 *             each text keeps the answer of the last version that saw it.
 *             When the second version fails, the first answers stand.
 *             Counted in aiserve_cascade_texts_total{model,result=first|
 *             escalated|error}.
 *   shadow    (classifiers, when asked and the model has one, for its share
 *             of requests, unless the shadow version answered first) a copy
 *             of the texts goes to the shadow version as background work;
 *             its labels are compared by name with the answers and counted
 *             in aiserve_shadow_predictions_total{model,version,result=
 *             agree|disagree|error}; never returned, never waited for.
 *   on_done   exactly once, with per-text results and the versions that
 *             served them.
 *
 * HTTP resolves first (serving_resolve), because the response cache is keyed
 * by the version that answers; batch jobs and the CLI call serving_predict
 * directly, which resolves when the caller has not.
 *
 * Ownership: the caller owns the request struct and everything its inputs
 * point to until on_done has run; serving owns what it fills (versions held,
 * out, results) until serving_request_fini. The repository must outlive the
 * request until its on_done has run (shadow copies, which nobody waits for,
 * need only the metrics registry). Threads: any thread for resolve and
 * predict; on_done runs on a batcher thread (or on the thread of
 * serving_repo_cancel_queued) and must not block; fini on any thread except
 * a batcher's (releasing a version may join its batcher). */

typedef enum serving_task {
    SERVING_TASK_CLASSIFY = 0, /* labels and probabilities */
    SERVING_TASK_EMBED = 1,    /* one vector per text (embedding models) */
} serving_task;

/* One text's answer. */
typedef struct serving_text_result {
    int label;                      /* the label id in `version` */
    float confidence;               /* its probability */
    const serving_version *version; /* the version that answered this text (first, or then when escalated;
                                       held by the request) */
    const float *probs;             /* that version's n_labels probabilities for the text (in out, or in
                                       the second stage's buffer); owned by the request */
    const float *logits;            /* the logits they came from when want_logits, else NULL */
} serving_text_result;

typedef struct serving_request serving_request;
struct serving_request {
    /* ---- filled by the caller (after serving_request_init) ---- */
    const char *model;         /* NULL or "": the default model */
    long version;              /* pinned version number; 0: none */
    const char *version_ref;   /* when version is 0, a pinned version as text: a number or an alias;
                                  NULL / "": none */
    const char *user_id;       /* sticky split assignment (X-User-ID); NULL: a random bucket */
    size_t user_id_len;
    serving_task task;
    int allow_cascade;         /* take the model's cascade (no pin, or a pin on its first version) */
    int allow_shadow;          /* send the model's shadow share */
    int background;            /* serving_job.background: batch work (both stages) */
    int want_logits;           /* classifiers: also keep each text's logits (results[i].logits) */
    const char *const *texts;  /* n UTF-8 texts, borrowed until on_done */
    const size_t *lens;
    size_t n;
    const char *query;         /* NULL, or each text is paired with it (serving_job.query); borrowed.
                                  Pairs take no cascade and no shadow. */
    size_t query_len;
    uint64_t deadline_us;      /* serving_now_us clock, for both stages; 0: none */
    void (*on_done)(serving_request *r, void *user);
    void *user;

    /* ---- filled by serving_resolve ---- */
    serving_version *first;    /* the version that answers first; held until fini */
    serving_cascade cascade;   /* first != 0: this request takes that cascade */
    serving_shadow shadow;     /* the model's shadow when resolved (version 0: none) */

    /* ---- filled before on_done ---- */
    int status;                /* 0 or a negative serving_status (of the first stage: a failed
                                  second stage leaves the first answers, and status 0) */
    char error[256];
    float *out;                /* n x width of `first` (n_labels probabilities, or hidden for
                                  embeddings), as `first` computed them; owned until fini */
    serving_text_result *results; /* n (classifiers; NULL for embeddings); owned until fini */
    serving_version *then;     /* the cascade's second version, held once some text was below the
                                  threshold (NULL: none was, or it could not be acquired) */
    size_t n_escalated;        /* texts answered by `then` (0 when its job failed) */
    size_t n_shadowed;         /* texts copied to the shadow version (their outcome is counted in
                                  aiserve_shadow_predictions_total, see serving_shadow_tally) */
    int batch_size;            /* first stage: largest engine batch its texts rode in */
    uint64_t queue_wait_us;    /* first stage */
    uint64_t infer_us;         /* both stages */
    size_t n_tokens;           /* first stage */

    /* ---- private to serving ---- */
    serving_repo *repo_;
    serving_job job_;          /* the first stage */
    serving_job job2_;         /* the cascade's second stage */
    size_t *idx2_;             /* its texts' indices in texts */
    const char **texts2_;
    size_t *lens2_;
    float *out2_;              /* its probabilities, n2 x then's labels */
    float *logits_, *logits2_; /* want_logits: the two stages' logits */
};

/* Zeroes r. */
void serving_request_init(serving_request *r);

/* Chooses and holds the version (r->first) and notes the cascade and shadow
 * the request takes. Returns 0, or SERVING_ENOTFOUND, SERVING_ENOVERSION
 * (no such version or alias), SERVING_ENOTREADY, SERVING_EUNSUPPORTED (the
 * model's task is not r->task), with err filled (and r->first NULL).
 * Calling it again once it succeeded is an error (SERVING_EINPUT). */
int serving_resolve(serving_repo *repo, serving_request *r, serving_error *err);

/* Runs the request (resolving first when the caller has not). Returns 0,
 * and then on_done runs exactly once; or an error (the resolve errors,
 * SERVING_EFULL, SERVING_ESTOPPED, SERVING_EINPUT for n == 0,
 * SERVING_ENOMEM), with r->status and r->error set, and then on_done never
 * runs. */
int serving_predict(serving_repo *repo, serving_request *r);

/* Releases the versions and frees what serving filled; zeroes r. r may be
 * reused after serving_request_init. Not on a batcher thread. */
void serving_request_fini(serving_request *r);

#ifdef __cplusplus
}
#endif

#endif /* AISERVE_SERVING_H */
